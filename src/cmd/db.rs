//! `db init` and `db query`: the course's two SQL scripts (DDL, then DML), each statement
//! printed with its rows affected and its cursor's rows as a table.

use rusqlite::types::ValueRef;
use rusqlite::{Connection, ToSql};

use crate::db;
use crate::db::demo::{DELETE_ONE, SELECT_ALL, SELECT_BOTH, SELECT_COLUMNS, SELECT_ROWS, UPDATE_ONE, statement, title};
use crate::error::{Error, Hint, Result};
use crate::output::Rows;
use crate::registry::{self, DEMO_DELETED, DEMO_NEW_ALIAS, DEMO_NEW_LEVEL, DEMO_PROMOTED, RegistryKeys};

use super::Ctx;

/// Named parameters for one statement.
type NamedParams<'a> = &'a [(&'a str, &'a dyn ToSql)];

/// Runs a query and collects its cursor's rows, decrypting encrypted columns
/// unless `raw`.
pub fn select(
    conn: &Connection,
    sql: &str,
    params: &[(&str, &dyn ToSql)],
    keys: &RegistryKeys,
    raw: bool,
) -> Result<Rows> {
    let mut stmt = conn.prepare(sql)?;
    let columns: Vec<String> = stmt.column_names().map(|c| c.to_string()).collect();
    let decrypt: Vec<bool> =
        columns.iter().map(|c| !raw && registry::ENCRYPTED_COLUMNS.contains(&c.as_str())).collect();
    let mut rows = stmt.query(params)?;
    let mut out = Rows { columns, rows: Vec::new() };
    while let Some(row) = rows.next()? {
        let mut cells = Vec::with_capacity(decrypt.len());
        for (i, decrypt) in decrypt.iter().enumerate() {
            let cell = match row.get_ref(i)? {
                ValueRef::Null => serde_json::Value::Null,
                ValueRef::Integer(v) => serde_json::json!(v),
                ValueRef::Real(v) => serde_json::json!(v),
                ValueRef::Text(t) => {
                    let text = String::from_utf8_lossy(t).into_owned();
                    serde_json::Value::String(if *decrypt { keys.reveal(&text).unwrap_or(text) } else { text })
                }
                ValueRef::Blob(b) => serde_json::Value::String(format!("x'{}'", hex::encode(b))),
            };
            cells.push(cell);
        }
        out.push_values(cells);
    }
    Ok(out)
}

/// One printed step of a script.
#[derive(serde::Serialize)]
struct Step {
    title: String,
    sql: String,
    rows_affected: Option<usize>,
    #[serde(flatten)]
    result: Option<Rows>,
}

fn print_step(ctx: &mut Ctx<'_>, number: usize, step: &Step) -> Result<()> {
    ctx.show(&format!("\n== {number}. {}\n{}", step.title, step.sql))?;
    if let Some(n) = step.rows_affected {
        ctx.show(&format!("rows affected: {n}"))?;
    }
    if let Some(rows) = &step.result {
        ctx.show(&rows.to_table())?;
        ctx.show(&format!("({} row{})", rows.rows.len(), if rows.rows.len() == 1 { "" } else { "s" }))?;
    }
    Ok(())
}

pub fn init(ctx: &mut Ctx<'_>, force: bool, raw: bool) -> Result<()> {
    ctx.home.ensure()?;
    // Decide before touching the key: a refused init must change nothing.
    let mut conn = db::create(&ctx.home.db_path())?;
    let had_agents = db::has_agents(&conn)?;
    if had_agents && !force {
        return Err(Error::failed(format!(
            "{} already holds agents; nothing was changed",
            ctx.home.db_path().display()
        ))
        .hint(Hint::PassForceToReinit));
    }
    let master = ctx.home.load_or_create_master_key()?;
    let (added, keyring) = registry::init_with_samples(&mut conn, &master)?;
    let keys = RegistryKeys::derive(&keyring);
    if had_agents {
        // The Files table is gone, so the files it listed are orphans.
        let files = ctx.home.files_dir();
        if files.exists()
            && let Err(e) = std::fs::remove_dir_all(&files)
        {
            tracing::warn!(error = %e, dir = %files.display(), "could not remove the old received files");
        }
    }
    let all = select(&conn, &statement(SELECT_ALL), &[], &keys, raw)?;
    let steps = vec![
        Step {
            title: "DDL: drop and create every table (sql/schema.sql)".into(),
            sql: statement(db::SCHEMA_SQL),
            rows_affected: None,
            result: None,
        },
        Step {
            title: format!("Insert {} sample agents (sql/insert_agent.sql, values as parameters)", added.len()),
            sql: statement(db::agents::INSERT_SQL),
            rows_affected: Some(added.len()),
            result: None,
        },
        Step { title: title(SELECT_ALL), sql: statement(SELECT_ALL), rows_affected: None, result: Some(all) },
    ];
    if ctx.json {
        let passwords: Vec<_> = registry::SAMPLE_AGENTS
            .iter()
            .map(|s| serde_json::json!({ "name": s.name, "level": s.level, "password": s.password }))
            .collect();
        return ctx.json(serde_json::json!({ "steps": steps, "sample_logins": passwords }));
    }
    for (i, step) in steps.iter().enumerate() {
        if step.result.is_some() || !ctx.quiet {
            print_step(ctx, i + 1, step)?;
        }
    }
    ctx.say(&format!(
        "\nDatabase ready at {}. Sample logins (public demo passwords, also in README.md):",
        ctx.home.db_path().display()
    ))?;
    let mut logins = Rows::new(&["Name", "Level", "Password"]);
    for s in registry::SAMPLE_AGENTS {
        logins.push(vec![s.name.into(), s.level.to_string(), s.password.into()]);
    }
    if !ctx.quiet {
        ctx.show(&logins.to_table())?;
    }
    ctx.say("Next: spyctl login --name \"Ethan Hunt\"")
}

/// The second script: delete one row, update one row, four SELECTs.
pub fn demo_script(ctx: &mut Ctx<'_>, raw: bool) -> Result<()> {
    let master = ctx.home.load_master_key()?;
    let mut conn = db::open(&ctx.home.db_path())?;
    let keys = RegistryKeys::derive(&master.bind(&db::database_id(&conn)?));
    let before = db::agents::count(&conn)?;

    // Both changes in one transaction: the script applies whole or not at all.
    let (deleted, updated) = registry::apply_demo_changes(&mut conn, &keys)?;
    let after = db::agents::count(&conn)?;

    let mut steps = vec![
        Step {
            title: format!("{} ({DEMO_DELETED})", title(DELETE_ONE)),
            sql: statement(DELETE_ONE),
            rows_affected: Some(deleted),
            result: None,
        },
        Step {
            title: format!(
                "{} ({DEMO_PROMOTED} -> level {DEMO_NEW_LEVEL}, alias {DEMO_NEW_ALIAS:?})",
                title(UPDATE_ONE)
            ),
            sql: statement(UPDATE_ONE),
            rows_affected: Some(updated),
            result: None,
        },
    ];
    let selects: [(&str, NamedParams<'_>); 4] = [
        (SELECT_ALL, &[]),
        (SELECT_COLUMNS, &[]),
        (SELECT_ROWS, &[(":min_level", &3)]),
        (SELECT_BOTH, &[(":max_level", &2)]),
    ];
    for (sql, params) in selects {
        steps.push(Step {
            title: title(sql),
            sql: statement(sql),
            rows_affected: None,
            result: Some(select(&conn, &statement(sql), params, &keys, raw)?),
        });
    }
    if ctx.json {
        return ctx.json(serde_json::json!({ "agents_before": before, "agents_after": after, "steps": steps }));
    }
    for (i, step) in steps.iter().enumerate() {
        print_step(ctx, i + 1, step)?;
    }
    ctx.say(&format!("\nAgents before the script: {before}; after: {after}."))
}

/// `db query --sql`: one read-only statement on a read-only connection.
pub fn ad_hoc(ctx: &mut Ctx<'_>, sql: &str, raw: bool) -> Result<()> {
    let master = ctx.home.load_master_key()?;
    let conn = db::open_read_only(&ctx.home.db_path())?;
    let keys = RegistryKeys::derive(&master.bind(&db::database_id(&conn)?));
    let stmt = conn.prepare(sql).map_err(|e| match e {
        rusqlite::Error::MultipleStatement => Error::failed("--sql takes one statement"),
        other => Error::failed(format!("the query does not compile: {other}")),
    })?;
    if !stmt.readonly() || stmt.column_count() == 0 {
        return Err(Error::failed("only read-only queries (SELECT ...) may be run with --sql; nothing was changed"));
    }
    drop(stmt);
    let rows = select(&conn, sql, &[], &keys, raw)?;
    if ctx.json {
        return ctx.json(serde_json::json!({ "sql": sql, "rows": rows.to_json_objects() }));
    }
    ctx.show(&rows.to_table())?;
    ctx.say(&format!("({} row{})", rows.rows.len(), if rows.rows.len() == 1 { "" } else { "s" }))
}
