//! `db init` and `db query`: the course's two SQL scripts (DDL, then DML), each statement
//! printed with its rows affected and its cursor's rows as a table. Nothing is
//! lost by accident: a plain `db init` never drops a table that holds rows,
//! `--force` is confirmed and writes a backup first, and ad-hoc reads run
//! under time, row and memory limits.

use rusqlite::types::ValueRef;
use rusqlite::{Connection, ToSql};

use crate::db::demo::{DELETE_ONE, SELECT_ALL, SELECT_BOTH, SELECT_COLUMNS, SELECT_ROWS, UPDATE_ONE, statement, title};
use crate::db::limits::{LimitError, ReadLimits};
use crate::db::{self, DbError};
use crate::error::{Error, Hint, Result};
use crate::output::Rows;
use crate::registry::{self, DEMO_DELETED, DEMO_NEW_ALIAS, DEMO_NEW_LEVEL, DEMO_PROMOTED, RegistryKeys};

use super::{Ctx, prompt};

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
    collect(conn, sql, params, keys, raw, None)
}

/// [`select`], stopping with a [`LimitError`] when the result passes `limits`
/// (already installed on `conn` by [`db::limits::apply`]).
fn collect(
    conn: &Connection,
    sql: &str,
    params: &[(&str, &dyn ToSql)],
    keys: &RegistryKeys,
    raw: bool,
    limits: Option<&ReadLimits>,
) -> Result<Rows> {
    let limited = |e: rusqlite::Error| -> Error {
        match limits.and_then(|l| db::limits::breached(&e, l)) {
            Some(limit) => DbError::Limit(limit).into(),
            None => e.into(),
        }
    };
    let mut stmt = conn.prepare(sql).map_err(limited)?;
    let columns: Vec<String> = stmt.column_names().map(|c| c.to_string()).collect();
    let decrypt: Vec<bool> =
        columns.iter().map(|c| !raw && registry::ENCRYPTED_COLUMNS.contains(&c.as_str())).collect();
    let mut rows = stmt.query(params).map_err(limited)?;
    let mut out = Rows { columns, rows: Vec::new() };
    let mut kept_bytes = 0usize;
    while let Some(row) = rows.next().map_err(limited)? {
        if let Some(limits) = limits
            && out.rows.len() >= limits.max_rows
        {
            return Err(DbError::Limit(LimitError::Rows(limits.max_rows)).into());
        }
        let mut cells = Vec::with_capacity(decrypt.len());
        for (i, decrypt) in decrypt.iter().enumerate() {
            let value = row.get_ref(i)?;
            kept_bytes += match value {
                ValueRef::Text(t) => t.len(),
                ValueRef::Blob(b) => 2 * b.len() + 3,
                _ => 8,
            };
            if let Some(limits) = limits
                && kept_bytes > limits.max_result_bytes
            {
                return Err(DbError::Limit(LimitError::ResultSize(limits.max_result_bytes)).into());
            }
            let cell = match value {
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

/// A checked `db init` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitRequest {
    force: bool,
    /// With `force`: ask on the terminal before discarding anything.
    ask: bool,
    raw: bool,
}

impl InitRequest {
    /// `--force` discards data, so it is confirmed: by `--yes`, or by typing
    /// `yes` on the terminal. Without a terminal and without `--yes` there is
    /// no one to ask, and guessing "yes" is how data gets lost.
    pub fn check(force: bool, yes: bool, raw: bool, stdin_is_terminal: bool) -> Result<InitRequest> {
        if force && !yes && !stdin_is_terminal {
            return Err(Error::usage(format!(
                "db init --force deletes every agent, message and received file and asks first, \
                 but stdin is not a terminal ({})",
                Hint::PassYes
            )));
        }
        Ok(InitRequest { force, ask: force && !yes, raw })
    }

    /// A plain `db init` (the demo, in its own fresh home).
    pub fn fresh() -> InitRequest {
        InitRequest { force: false, ask: false, raw: false }
    }
}

pub fn init(ctx: &mut Ctx<'_>, req: InitRequest) -> Result<()> {
    let raw = req.raw;
    ctx.home.ensure()?;
    // Decide before touching the key: a refused init must change nothing.
    let conn = db::create(&ctx.home.db_path())?;
    let holding = db::tables_with_rows(&conn)?;
    if !holding.is_empty() && !req.force {
        let tables: Vec<String> = holding.iter().map(|(name, rows)| format!("{name} ({rows} rows)")).collect();
        return Err(Error::failed(format!(
            "{} already holds data in {}; nothing was changed",
            ctx.home.db_path().display(),
            tables.join(", ")
        ))
        .hint(Hint::PassForceToReinit));
    }
    let files = ctx.home.files_dir();
    let mut backup = None;
    if req.ask
        && !prompt::confirm(&format!(
            "db init --force deletes every agent, message and received file in {} \
             (a backup is written first). Type yes to go on: ",
            ctx.home.dir().display()
        ))?
    {
        return Err(Error::failed("not confirmed; nothing was changed"));
    }
    // From here until the new tables are committed, one write lock keeps
    // every other writer (a running Boss) out: nothing can be committed
    // after the backup is taken and before the tables are dropped, so
    // whatever was acknowledged is in the backup or in the new database.
    let mut writer = db::create(&ctx.home.db_path())?;
    let tx = writer.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let holding = db::tables_with_rows(&tx)?;
    if !holding.is_empty() && !req.force {
        return Err(Error::failed(format!(
            "{} gained data while this init started; nothing was changed",
            ctx.home.db_path().display()
        ))
        .hint(Hint::PassForceToReinit));
    }
    if req.force {
        let has_files = std::fs::read_dir(&files).is_ok_and(|mut d| d.next().is_some());
        if !holding.is_empty() || has_files {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            // Read through the other connection: WAL lets it read the
            // committed state, which the lock now holds still.
            let dir = crate::backup::write(&ctx.home, &conn, now)
                .map_err(|e| Error::from(e).context("db init --force stopped before changing anything"))?;
            backup = Some(dir);
        }
    }
    let master = ctx.home.load_or_create_master_key()?;
    // The Boss's identity is independent of master.key and of the database:
    // made once, kept across `db init --force`.
    let identity = ctx.home.load_or_create_identity()?.public().fingerprint();
    let (added, keyring) = registry::init_with_samples(&tx, &master)?;
    tx.commit()?;
    // Every row of the new database is tagged: record it, so an attacker who
    // can write only spyctl.db cannot pass tampered rows off as untagged.
    ctx.home.record_tagged(keyring.database_id())?;
    let keys = RegistryKeys::derive(&keyring);
    if backup.is_some() && files.exists() {
        // The Files table is gone, so the files it listed are orphans; their
        // copies are in the backup.
        if let Err(e) = std::fs::remove_dir_all(&files) {
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
        return ctx.json(serde_json::json!({
            "steps": steps,
            "sample_logins": passwords,
            "backup": backup,
            "boss_fingerprint": identity,
        }));
    }
    if let Some(dir) = &backup {
        ctx.show(&format!(
            "Backup of the old database and received files: {} (it opens with this home's master.key)",
            dir.display()
        ))?;
    }
    for (i, step) in steps.iter().enumerate() {
        if step.result.is_some() || !ctx.quiet {
            print_step(ctx, i + 1, step)?;
        }
    }
    // Space held back so a director can still log in on a full disk.
    ctx.home.ensure_reserve();
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
    ctx.say(&format!("Boss identity: {identity} (identity.key; agents compare it when they join)"))?;
    ctx.say("Next: spyctl login --name \"Ethan Hunt\"")
}

/// The second script: delete one row, update one row, four SELECTs.
pub fn demo_script(ctx: &mut Ctx<'_>, raw: bool) -> Result<()> {
    let super::session::Opened { mut conn, keys, .. } = super::session::Opened::open(ctx)?;
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

/// `db query --sql`: one read-only statement on a read-only connection,
/// under `limits` (time, rows, memory), each breach one clear error.
pub fn ad_hoc(ctx: &mut Ctx<'_>, sql: &str, raw: bool, limits: &ReadLimits) -> Result<()> {
    let master = ctx.home.load_master_key()?;
    let mut conn = db::open_read_only(&ctx.home.db_path())?;
    let keys = RegistryKeys::derive(&crate::epochs::open_keyring(&master, &conn)?);
    db::limits::apply(&mut conn, limits)?;
    let stmt = conn.prepare(sql).map_err(|e| match e {
        rusqlite::Error::MultipleStatement => Error::failed("--sql takes one statement"),
        other => match db::limits::breached(&other, limits) {
            Some(limit) => DbError::Limit(limit).into(),
            None => Error::failed(format!("the query does not compile: {other}")),
        },
    })?;
    if !stmt.readonly() || stmt.column_count() == 0 {
        return Err(Error::failed("only read-only queries (SELECT ...) may be run with --sql; nothing was changed"));
    }
    drop(stmt);
    let rows = collect(&conn, sql, &[], &keys, raw, Some(limits))?;
    if ctx.json {
        return ctx.json(serde_json::json!({ "sql": sql, "rows": rows.to_json_objects() }));
    }
    ctx.show(&rows.to_table())?;
    ctx.say(&format!("({} row{})", rows.rows.len(), if rows.rows.len() == 1 { "" } else { "s" }))
}
