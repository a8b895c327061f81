//! The agent registry end to end: `db init`, `db query`, `agent add`,
//! `agent list`, `login`/`logout`/`whoami` and the roles, each through the real
//! `spyctl` binary in a temporary home. The database is checked directly with
//! rusqlite where "nothing changed" or "only this changed" must be proved.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::process::Output;

use rusqlite::Connection;
use serde_json::Value;

use crate::support::{
    DEMO_DELETED, DEMO_NEW_ALIAS, DEMO_PROMOTED, DIRECTOR, FIELD_AGENT, HANDLER, SAMPLE_AGENTS, SampleAgent, TestHome,
    fails, ok, sample_at, sample_named, stderr, stdout,
};

/// The demo script deletes this agent and promotes the other.
const DELETED: &str = DEMO_DELETED;
const PROMOTED: &str = DEMO_PROMOTED;
const PROMOTED_ALIAS: &str = DEMO_NEW_ALIAS;

/// A director below the top level, and a second handler.
const DEPUTY: &SampleAgent = sample_at(4, "");
const SECOND_HANDLER: &SampleAgent = sample_at(3, HANDLER.name);
/// A director-only agent (the lowest level).
const LOWEST: &SampleAgent = sample_at(1, DELETED);

/// An agent the tests add.
const NEW_AGENT: (&str, &str, &str) = ("Felix Leiter", "Langley Liaison", "cia-liaison-1962");

const BOBBY: &str = "Robert'); DROP TABLE Agents;--";

/// One Agents row exactly as stored.
type StoredRow = (i64, String, String, i64, String, String);

fn open_db(home: &TestHome) -> Connection {
    let conn = Connection::open(home.db_path()).expect("open spyctl.db");
    conn.busy_timeout(std::time::Duration::from_secs(10)).expect("busy timeout");
    conn
}

/// Every Agents row as stored (ciphertext, hashes, blind indexes), by id.
fn snapshot(home: &TestHome) -> Vec<StoredRow> {
    let conn = open_db(home);
    let mut stmt = conn
        .prepare(
            "SELECT AgentId, AgentName, AgentAlias, AgentSecurityLevel, LoginPassword, AgentNameIndex \
             FROM Agents ORDER BY AgentId",
        )
        .expect("prepare");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))
        .expect("query")
        .collect::<Result<Vec<_>, _>>()
        .expect("rows")
}

fn count(home: &TestHome) -> i64 {
    open_db(home).query_row("SELECT COUNT(*) FROM Agents", [], |r| r.get(0)).expect("count")
}

/// The names of every table in the database.
fn tables(home: &TestHome) -> BTreeSet<String> {
    let conn = open_db(home);
    let mut stmt = conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").expect("prepare");
    stmt.query_map([], |r| r.get(0)).expect("query").collect::<Result<_, _>>().expect("names")
}

/// Asserts stderr is exactly one `spyctl: error:` line and returns it.
#[track_caller]
fn one_line(err: &str) -> String {
    let line = err.trim_end();
    assert_eq!(line.lines().count(), 1, "expected one error line, got:\n{err}");
    assert!(line.starts_with("spyctl: error: "), "not an error line: {line:?}");
    line.to_string()
}

/// Fails with exit 1 and exactly one error line, which is returned.
#[track_caller]
fn refused(out: Output) -> String {
    one_line(&fails(out, 1))
}

fn add(home: &TestHome, name: &str, alias: &str, level: &str, password: &[u8]) -> Output {
    home.run_stdin(
        &["agent", "add", "--name", name, "--alias", alias, &format!("--level={level}"), "--password-stdin"],
        password,
    )
}

fn login(home: &TestHome, name: &str, password: &str) -> Output {
    home.run_stdin(&["login", "--name", name, "--password-stdin"], format!("{password}\n").as_bytes())
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

/// `agent list --json` for the logged-in agent.
fn list_json(home: &TestHome) -> Vec<Value> {
    let value = json(&ok(home.run(&["--json", "agent", "list"])));
    value.as_array().unwrap_or_else(|| panic!("agent list --json is not an array: {value}")).clone()
}

fn names_of(agents: &[Value]) -> BTreeSet<String> {
    agents.iter().map(|a| a["name"].as_str().expect("name is a string").to_string()).collect()
}

/// Sample names at or below `level`.
fn names_up_to(level: i64) -> BTreeSet<String> {
    SAMPLE_AGENTS.iter().filter(|a| i64::from(a.level) <= level).map(|a| a.name.to_string()).collect()
}

/// Decrypted rows from an ad-hoc `db query --sql ... --json`: column -> value.
fn ad_hoc_rows(home: &TestHome, sql: &str) -> Vec<serde_json::Map<String, Value>> {
    let value = json(&ok(home.run(&["--json", "db", "query", "--sql", sql])));
    value["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("no rows in {value}"))
        .iter()
        .map(|r| r.as_object().expect("row object").clone())
        .collect()
}

/// A SQL file's statement without its comment lines, as the binary prints it.
fn statement(sql: &str) -> String {
    sql.lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n").trim().to_string()
}

fn session_path(home: &TestHome) -> std::path::PathBuf {
    home.path().join("session")
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

// ---------------------------------------------------------------- db init

#[test]
fn db_init_prints_every_sample_decrypted_and_refuses_to_run_twice() {
    let home = TestHome::new();
    let out = ok(home.run(&["db", "init"]));
    for &SampleAgent { name, alias, .. } in SAMPLE_AGENTS {
        assert!(out.contains(name), "db init does not show {name}:\n{out}");
        assert!(out.contains(alias), "db init does not show {alias}:\n{out}");
    }
    assert!(out.contains("(8 rows)"), "{out}");
    assert_eq!(count(&home), 8);
    assert_eq!(mode(&home.db_path()), 0o600, "spyctl.db is not 0600");
    assert_eq!(mode(&home.path().join("master.key")), 0o600, "master.key is not 0600");

    // A second init refuses, and changes not one stored byte (new ciphertext
    // would differ: every token has a random IV).
    let before = snapshot(&home);
    let key = std::fs::read(home.path().join("master.key")).expect("master.key");
    let err = refused(home.run(&["db", "init"]));
    assert!(err.contains("--force"), "the refusal does not mention --force: {err}");
    assert_eq!(snapshot(&home), before, "a refused db init changed the Agents table");
    assert_eq!(std::fs::read(home.path().join("master.key")).expect("master.key"), key);

    // --force starts over: the deleted agent is back, every row is new.
    ok(home.run(&["db", "query"]));
    assert_eq!(count(&home), 7);
    let out = ok(home.run(&["db", "init", "--force", "--yes"]));
    assert!(out.contains(DELETED), "{out}");
    let after = snapshot(&home);
    assert_eq!(after.len(), 8);
    let old_max = before.iter().map(|r| r.0).max().expect("rows");
    for (old, new) in before.iter().zip(&after) {
        // Ids keep counting: a new agent never inherits an old one's wire key.
        assert!(new.0 > old_max, "id {} reused after --force (old max {old_max})", new.0);
        assert_ne!(old.1, new.1, "db init --force kept an old name token");
    }
    assert!(!out.contains(PROMOTED_ALIAS), "the demo's update survived --force:\n{out}");
}

#[test]
fn db_init_raw_shows_ciphertext() {
    let home = TestHome::new();
    let out = ok(home.run(&["db", "init", "--raw"]));
    // The stored rows: from the SELECT to the end of its table. (The separate
    // "Sample logins" table after it prints names and passwords on purpose.)
    let start = out.find("SELECT * FROM Agents").expect("the SELECT is printed");
    let end = start + out[start..].find("(8 rows)").expect("8 rows shown");
    let rows = &out[start..end];
    for &SampleAgent { name, alias, password, .. } in SAMPLE_AGENTS {
        for needle in [name, alias, password] {
            assert!(!rows.to_lowercase().contains(&needle.to_lowercase()), "--raw shows {needle:?}:\n{rows}");
        }
    }
    assert!(rows.matches("gAAAA").count() >= 16, "no Fernet tokens for names and aliases:\n{rows}");
    assert!(rows.contains("$argon2id$"), "no Argon2id hashes:\n{rows}");

    // --raw --json gives the whole tokens: exactly what the file holds.
    let value = json(&ok(home.run(&["--json", "db", "init", "--force", "--yes", "--raw"])));
    let steps = value["steps"].as_array().expect("steps");
    let table = steps.iter().find(|s| s["rows"].is_array()).expect("a step with rows");
    let columns: Vec<&str> =
        table["columns"].as_array().expect("columns").iter().map(|c| c.as_str().unwrap()).collect();
    let name_col = columns.iter().position(|c| *c == "AgentName").expect("AgentName column");
    let alias_col = columns.iter().position(|c| *c == "AgentAlias").expect("AgentAlias column");
    let stored = snapshot(&home);
    let shown = table["rows"].as_array().expect("rows");
    assert_eq!(shown.len(), stored.len());
    for (row, stored) in shown.iter().zip(&stored) {
        assert_eq!(row[name_col].as_str(), Some(stored.1.as_str()));
        assert_eq!(row[alias_col].as_str(), Some(stored.2.as_str()));
        assert!(stored.1.starts_with("gAAAA") && stored.2.starts_with("gAAAA"), "{stored:?}");
    }
}

// --------------------------------------------------------------- db query

#[test]
fn db_query_deletes_one_row_updates_one_and_prints_four_selects() {
    let home = TestHome::initialised();
    let ids = |home: &TestHome| -> Vec<(String, String, String, String)> {
        ad_hoc_rows(home, "SELECT AgentId, AgentName, AgentAlias, AgentSecurityLevel FROM Agents ORDER BY AgentId")
            .iter()
            .map(|r| {
                // Text cells are strings, integer cells JSON numbers.
                let s = |c: &str| match &r[c] {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                (s("AgentId"), s("AgentName"), s("AgentAlias"), s("AgentSecurityLevel"))
            })
            .collect()
    };
    let plain_before = ids(&home);
    let before = snapshot(&home);
    assert_eq!(before.len(), 8);
    let deleted_id = plain_before.iter().find(|r| r.1 == DELETED).expect("deleted agent").0.parse::<i64>().unwrap();
    let promoted_id = plain_before.iter().find(|r| r.1 == PROMOTED).expect("promoted agent").0.parse::<i64>().unwrap();

    let out = ok(home.run(&["db", "query"]));
    let after = snapshot(&home);
    assert_eq!(after.len(), 7, "exactly one row deleted, not all");

    // Byte for byte: one row gone, one row with a new level and alias, the rest untouched.
    let mut changed = 0;
    for old in &before {
        let new = after.iter().find(|r| r.0 == old.0);
        if old.0 == deleted_id {
            assert!(new.is_none(), "{DELETED} was not deleted");
            continue;
        }
        let new = new.unwrap_or_else(|| panic!("agent {} vanished", old.0));
        if old.0 == promoted_id {
            changed += 1;
            assert_eq!(old.3, 2);
            assert_eq!(new.3, 3, "{PROMOTED} was not promoted");
            assert_ne!(new.2, old.2, "{PROMOTED}'s alias did not change");
            assert_eq!((&new.1, &new.4, &new.5), (&old.1, &old.4, &old.5), "other columns changed");
        } else {
            assert_eq!(new, old, "an agent the script should not touch changed");
        }
    }
    assert_eq!(changed, 1);
    let plain_after = ids(&home);
    let harry = plain_after.iter().find(|r| r.1 == PROMOTED).expect("promoted agent still there");
    assert_eq!((harry.2.as_str(), harry.3.as_str()), (PROMOTED_ALIAS, "3"));
    for row in &plain_after {
        if row.1 != PROMOTED {
            assert!(plain_before.contains(row), "{row:?} changed");
        }
    }

    // The printout: both changes with their counts, then four SELECTs, each
    // with its SQL, a table and its row count.
    assert_eq!(out.matches("rows affected: 1").count(), 2, "{out}");
    assert!(out.contains(&statement(include_str!("../../sql/demo_delete.sql"))), "{out}");
    assert!(out.contains(&statement(include_str!("../../sql/demo_update.sql"))), "{out}");
    let sections: Vec<&str> = out.split("\n== ").collect();
    let selects: [(&str, usize, &[&str], &[&str]); 4] = [
        (include_str!("../../sql/demo_select_all.sql"), 7, &["LoginPassword", DIRECTOR.name, LOWEST.name], &[DELETED]),
        (include_str!("../../sql/demo_select_columns.sql"), 7, &[DIRECTOR.alias, PROMOTED_ALIAS], &["LoginPassword"]),
        (include_str!("../../sql/demo_select_rows.sql"), 5, &[DIRECTOR.name, PROMOTED], &[FIELD_AGENT.name]),
        (include_str!("../../sql/demo_select_both.sql"), 2, &[FIELD_AGENT.name, LOWEST.name], &[DIRECTOR.name]),
    ];
    for (sql, rows, present, absent) in selects {
        let sql = statement(sql);
        assert!(sql.starts_with("SELECT"), "{sql}");
        let section =
            sections.iter().find(|s| s.contains(&sql)).unwrap_or_else(|| panic!("SELECT not printed: {sql}\n{out}"));
        assert!(section.contains('╞'), "no table for {sql}:\n{section}");
        let plural = if rows == 1 { "" } else { "s" };
        assert!(section.contains(&format!("({rows} row{plural})")), "{sql} should show {rows} rows:\n{section}");
        for p in present {
            assert!(section.contains(p), "{sql} does not show {p}:\n{section}");
        }
        for a in absent {
            assert!(!section.contains(a), "{sql} shows {a}:\n{section}");
        }
    }
    assert!(out.contains("before the script: 8; after: 7"), "{out}");
}

#[test]
fn db_query_json_has_every_step() {
    let home = TestHome::initialised();
    let value = json(&ok(home.run(&["--json", "db", "query"])));
    assert_eq!(value["agents_before"], 8);
    assert_eq!(value["agents_after"], 7);
    let steps = value["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 6, "delete, update and four SELECTs: {value}");
    for step in steps {
        assert!(step["sql"].as_str().is_some_and(|s| !s.is_empty()), "a step without SQL: {step}");
    }
    assert_eq!(steps[0]["rows_affected"], 1);
    assert_eq!(steps[1]["rows_affected"], 1);
    assert!(steps[0]["sql"].as_str().unwrap().starts_with("DELETE"));
    assert!(steps[1]["sql"].as_str().unwrap().starts_with("UPDATE"));
    let counts: Vec<usize> = steps[2..].iter().map(|s| s["rows"].as_array().expect("rows").len()).collect();
    assert_eq!(counts, [7, 7, 5, 2]);
    for step in &steps[2..] {
        assert!(step["sql"].as_str().unwrap().starts_with("SELECT"));
        let width = step["columns"].as_array().expect("columns").len();
        assert!(step["rows"].as_array().unwrap().iter().all(|r| r.as_array().unwrap().len() == width));
    }
    assert!(steps[2].to_string().contains(PROMOTED_ALIAS), "the SELECT after the update shows the new alias");
    assert!(!steps[2].to_string().contains(DELETED));
}

#[test]
fn db_query_before_db_init_is_one_clear_line() {
    let home = TestHome::new();
    let err = refused(home.run(&["db", "query"]));
    assert!(err.contains("spyctl db init"), "no hint to run db init: {err}");
    let err = refused(home.run(&["db", "query", "--sql", "SELECT 1"]));
    assert!(err.contains("spyctl db init"), "{err}");
    assert_eq!(std::fs::read_dir(home.path()).expect("home").count(), 0, "a failed db query created files");

    // A key but no database file: the same advice.
    ok(home.run(&["db", "init"]));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(home.path().join(format!("spyctl.db{suffix}")));
    }
    let err = refused(home.run(&["db", "query"]));
    assert!(err.contains("spyctl db init"), "{err}");
    assert!(!home.db_path().exists(), "db query created a database");
}

#[test]
fn ad_hoc_select_runs_and_anything_else_is_refused() {
    let home = TestHome::initialised();
    let out = ok(home.run(&["db", "query", "--sql", "SELECT COUNT(*) AS n FROM Agents"]));
    assert!(out.contains("│ 8 "), "{out}");
    let rows = ad_hoc_rows(&home, "SELECT AgentName, AgentSecurityLevel FROM Agents WHERE AgentSecurityLevel >= 4");
    let names: BTreeSet<&str> = rows.iter().map(|r| r["AgentName"].as_str().unwrap()).collect();
    assert_eq!(names, BTreeSet::from([DIRECTOR.name, DEPUTY.name]), "decrypted, filtered rows");

    let before = snapshot(&home);
    let tables_before = tables(&home);
    let other = home.path().join("other.db");
    let copy = home.path().join("copy.db");
    let attach = format!("ATTACH DATABASE '{}' AS other", other.display());
    let vacuum = format!("VACUUM INTO '{}'", copy.display());
    let bad = [
        "DELETE FROM Agents",
        "DROP TABLE Agents",
        "UPDATE Agents SET AgentSecurityLevel = 1",
        "UPDATE Agents SET AgentSecurityLevel = 5 WHERE AgentId = 8",
        "INSERT INTO Agents (AgentName, AgentAlias, AgentSecurityLevel, LoginPassword, AgentNameIndex) \
         VALUES ('a', 'b', 5, 'c', 'd')",
        "DELETE FROM Agents RETURNING AgentId",
        "SELECT 1; DELETE FROM Agents",
        "SELECT 1; DROP TABLE Agents",
        "DELETE FROM Agents; SELECT 1",
        "SELECT 1; SELECT 2",
        "CREATE TABLE Stolen (x)",
        "PRAGMA user_version = 99",
        "PRAGMA journal_mode = DELETE",
        "VACUUM",
        &attach,
        &vacuum,
        "",
        "   ",
        "SELEKT * FROM Agents",
    ];
    for sql in bad {
        let out = home.run(&["db", "query", "--sql", sql]);
        let err = one_line(&fails(out, 1));
        assert!(!err.is_empty(), "{sql}");
        assert_eq!(snapshot(&home), before, "{sql:?} changed the Agents table");
    }
    assert_eq!(tables(&home), tables_before);
    let version: i64 = open_db(&home).query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, i64::from(spyctl::db::SCHEMA_VERSION), "--sql changed user_version");
    assert!(!other.exists() && !copy.exists(), "--sql wrote a file");
}

// -------------------------------------------------------------- agent add

#[test]
fn director_adds_an_agent_who_can_then_log_in() {
    let home = TestHome::initialised();
    home.login(DIRECTOR);
    let (name, alias, password) = NEW_AGENT;
    let out = ok(add(&home, name, alias, "3", format!("{password}\n").as_bytes()));
    assert!(out.contains("AgentId 9"), "the new AgentId is not printed:\n{out}");
    assert!(out.contains(name) && out.contains(alias), "{out}");
    assert_eq!(count(&home), 9);

    let out = ok(login(&home, name, password));
    assert!(out.contains(&format!("Welcome, {name}")), "{out}");
    let who = ok(home.run(&["whoami"]));
    assert!(who.contains(name) && who.contains(alias) && who.contains("level 3"), "{who}");
    // And the new agent, a handler, sees itself but not the directors.
    let seen = names_of(&list_json(&home));
    assert!(seen.contains(name));
    assert!(!seen.contains(DIRECTOR.name));
}

#[test]
fn agent_add_refuses_bad_input_with_one_line_and_changes_nothing() {
    let home = TestHome::initialised();
    home.login(DIRECTOR);
    let before = snapshot(&home);
    let good = b"a-good-password\n".as_slice();
    let long_name = "n".repeat(101);
    let huge = "x".repeat(10_000);
    let long_password = format!("{}\n", "p".repeat(1025));
    let huge_password = format!("{}\n", "p".repeat(1 << 20));
    let cases: Vec<(&str, &str, &str, &[u8], &str)> = vec![
        (DIRECTOR.name, "Another", "3", good, "already exists"),
        (" ethan HUNT ", "Another", "3", good, "already exists"),
        ("ETHAN HUNT", "Another", "3", good, "already exists"),
        ("Q", "Quartermaster", "0", good, "out of range"),
        ("Q", "Quartermaster", "6", good, "out of range"),
        ("Q", "Quartermaster", "-1", good, "out of range"),
        ("", "Quartermaster", "3", good, "empty"),
        ("   ", "Quartermaster", "3", good, "empty"),
        ("Q", "", "3", good, "empty"),
        (&long_name, "Quartermaster", "3", good, "100"),
        ("Q", &long_name, "3", good, "100"),
        (&huge, "Quartermaster", "3", good, "100"),
        ("Q", &huge, "3", good, "100"),
        ("Q\u{7}", "Quartermaster", "3", good, "control"),
        ("Q", "Quarter\nmaster", "3", good, "control"),
        ("Q", "Quartermaster", "3", b"short\n", "too short"),
        ("Q", "Quartermaster", "3", long_password.as_bytes(), "too long"),
        ("Q", "Quartermaster", "3", huge_password.as_bytes(), "too long"),
        ("Q", "Quartermaster", "3", b"", "no password"),
    ];
    for (name, alias, level, password, expect) in cases {
        let out = add(&home, name, alias, level, password);
        let what = format!(
            "name {:?} alias {:?} level {level}",
            name.chars().take(20).collect::<String>(),
            alias.chars().take(20).collect::<String>()
        );
        let err = one_line(&fails(out, 1));
        assert!(err.contains(expect), "{what}: expected {expect:?} in {err}");
        assert_eq!(snapshot(&home), before, "{what} changed the database");
    }
    // Levels that are not numbers or do not fit are usage errors.
    for level in ["abc", "99999999999999999999", "3.5"] {
        let out = add(&home, "Q", "Quartermaster", level, good);
        assert_eq!(out.status.code(), Some(2), "level {level}: {}", stderr(&out));
        assert_eq!(snapshot(&home), before);
    }
    // The limits are not off by one: exactly 100 characters is fine.
    let hundred = "é".repeat(100);
    let out = ok(add(&home, &hundred, &"a".repeat(100), "1", good));
    assert!(out.contains("AgentId 9"), "{out}");
    assert_eq!(count(&home), 9);
}

// ------------------------------------------------------------- agent list

#[test]
fn agent_list_shows_each_role_only_its_level_and_below() {
    let home = TestHome::initialised();
    let err = refused(home.run(&["agent", "list"]));
    assert!(err.contains("spyctl login"), "{err}");

    for (who, level) in [(DIRECTOR, 5), (DEPUTY, 4), (HANDLER, 3), (FIELD_AGENT, 2)] {
        home.login(who);
        let expected = names_up_to(level);
        let text = ok(home.run(&["agent", "list"]));
        for SampleAgent { name, .. } in SAMPLE_AGENTS {
            assert_eq!(text.contains(name), expected.contains(*name), "{} listing {name}:\n{text}", who.name);
        }
        let agents = list_json(&home);
        assert_eq!(names_of(&agents), expected, "{} (level {level})", who.name);
        assert_eq!(agents.len(), expected.len());
        for a in &agents {
            let l = a["level"].as_i64().expect("level");
            assert!(l <= level, "{} sees {a}", who.name);
            let sample = SAMPLE_AGENTS.iter().find(|s| a["name"] == s.name).expect("a sample");
            assert_eq!(l, i64::from(sample.level), "{a}");
            let alias = sample.alias;
            assert_eq!(a["alias"], alias, "{a}");
            assert!(a["id"].is_i64(), "{a}");
            assert!(text.contains(alias));
        }
    }
    ok(home.run(&["logout"]));
    let err = refused(home.run(&["agent", "list"]));
    assert!(err.contains("spyctl login"), "{err}");
}

// ------------------------------------------------- login, logout, whoami

#[test]
fn login_welcomes_refuses_alike_and_logout_ends_the_session() {
    let home = TestHome::initialised();
    let session = session_path(&home);

    let wrong = refused(login(&home, DIRECTOR.name, "not-the-password"));
    assert!(!session.exists(), "a failed login wrote a session");
    let unknown = refused(login(&home, "Austin Powers", DIRECTOR.password));
    assert_eq!(wrong, unknown, "an unknown name and a wrong password must get the same answer");
    assert!(!wrong.contains(DIRECTOR.name) && !unknown.contains("Austin"), "{wrong}");
    assert!(!session.exists());

    // The typed name is matched trimmed and case-folded; the stored name greets.
    let out = ok(login(&home, "  ethan HUNT ", DIRECTOR.password));
    assert!(out.contains(&format!("Welcome, {}", DIRECTOR.name)), "{out}");
    assert_eq!(mode(&session), 0o600, "the session file is not 0600");
    let token = std::fs::read_to_string(&session).expect("session");
    assert!(token.starts_with("gAAAA"), "the session is not a Fernet token: {token}");
    assert!(!token.contains("Ethan"));

    let who = ok(home.run(&["whoami"]));
    assert!(who.contains(DIRECTOR.name) && who.contains(DIRECTOR.alias) && who.contains("level 5"), "{who}");
    let value = json(&ok(home.run(&["--json", "whoami"])));
    assert_eq!(value["agent"]["name"], DIRECTOR.name, "{value}");
    assert_eq!(value["agent"]["level"], 5, "{value}");

    // Logging in as someone else replaces the session, still 0600.
    home.login(FIELD_AGENT);
    assert_eq!(mode(&session), 0o600);
    assert!(ok(home.run(&["whoami"])).contains(FIELD_AGENT.name));

    ok(home.run(&["logout"]));
    assert!(!session.exists(), "logout left the session file");
    let err = refused(home.run(&["whoami"]));
    assert!(err.contains("not logged in") && err.contains("spyctl login"), "{err}");
    ok(home.run(&["logout"]));
}

#[test]
fn five_failures_lock_the_name_even_for_the_right_password() {
    let home = TestHome::initialised();
    let (name, password) = (HANDLER.name, HANDLER.password);
    for attempt in 1..=4 {
        let err = refused(login(&home, name, "wrong-password"));
        assert!(err.contains("unknown name or wrong password"), "attempt {attempt}: {err}");
    }
    refused(login(&home, name, "wrong-password"));
    let err = refused(login(&home, name, password));
    assert!(err.contains("too many failed attempts"), "{err}");
    assert!(!session_path(&home).exists(), "a locked name got a session");
    // The lock is on the name, however it is typed.
    let err = refused(login(&home, " george SMILEY", password));
    assert!(err.contains("too many failed attempts"), "{err}");
    // Other names are not locked.
    home.login(DIRECTOR);

    // Unknown names lock the same way: a lockout reveals nothing.
    for _ in 0..5 {
        refused(login(&home, "Austin Powers", "wrong-password"));
    }
    let err = refused(login(&home, "Austin Powers", "wrong-password"));
    assert!(err.contains("too many failed attempts"), "{err}");

    // A success clears the count: 4 + success + 4 failures do not lock.
    let (emma, emma_password) = (SECOND_HANDLER.name, SECOND_HANDLER.password);
    for _ in 0..4 {
        refused(login(&home, emma, "wrong-password"));
    }
    ok(login(&home, emma, emma_password));
    for _ in 0..4 {
        refused(login(&home, emma, "wrong-password"));
    }
    assert!(ok(login(&home, emma, emma_password)).contains(&format!("Welcome, {emma}")));
}

// ------------------------------------------------------------------ roles

#[test]
fn only_directors_add_agents_and_read_the_inbox() {
    let home = TestHome::initialised();
    let before = snapshot(&home);
    for who in [FIELD_AGENT, HANDLER] {
        home.login(who);
        // Refused before any password is asked for (stdin is empty).
        let err = refused(home.run(&["agent", "add", "--name", "Q", "--alias", "Quartermaster", "--level", "1"]));
        assert!(err.contains("refused") && err.contains("add agents"), "{}: {err}", who.name);
        let err = refused(add(&home, "Q", "Quartermaster", "1", b"a-good-password\n"));
        assert!(err.contains("refused"), "{err}");
        let err = refused(home.run(&["boss", "inbox"]));
        assert!(err.contains("refused") && err.contains("inbox"), "{}: {err}", who.name);
        assert_eq!(snapshot(&home), before);
    }
    home.login(DIRECTOR);
    ok(home.run(&["boss", "inbox"]));
}

#[test]
fn a_deleted_agent_loses_access_at_once() {
    let home = TestHome::initialised();
    home.login(FIELD_AGENT);
    ok(home.run(&["agent", "list"]));
    let id = json(&ok(home.run(&["--json", "whoami"])))["agent"]["id"].as_i64().expect("id");
    open_db(&home).execute("DELETE FROM Agents WHERE AgentId = ?1", [id]).expect("delete");
    let err = refused(home.run(&["agent", "list"]));
    assert!(err.contains("no longer exists"), "{err}");
    refused(home.run(&["whoami"]));

    // A stale session never passes to a newer agent: ids are not reused.
    home.login(sample_named(DELETED));
    let boris = std::fs::read(session_path(&home)).expect("session");
    open_db(&home).execute("DELETE FROM Agents WHERE AgentId = 8", []).expect("delete");
    home.login(DIRECTOR);
    let out = ok(add(&home, NEW_AGENT.0, NEW_AGENT.1, "1", b"a-good-password\n"));
    assert!(out.contains("AgentId 9"), "a deleted agent's id was reused:\n{out}");
    std::fs::write(session_path(&home), &boris).expect("restore");
    let err = refused(home.run(&["agent", "list"]));
    assert!(err.contains("no longer exists"), "{err}");
}

#[test]
fn a_demoted_director_loses_powers_at_once() {
    let home = TestHome::initialised();
    home.login(DIRECTOR);
    assert_eq!(names_of(&list_json(&home)), names_up_to(5));
    // Demoted through the registry (a raw UPDATE would fail the row's
    // integrity tag, which `row_integrity` tests): here, by himself.
    ok(home.run(&["agent", "set-level", "1", "2"]));

    let mut expected = names_up_to(2);
    expected.insert(DIRECTOR.name.to_string());
    assert_eq!(names_of(&list_json(&home)), expected, "the demoted director still sees higher levels");
    let err = refused(add(&home, "Q", "Quartermaster", "1", b"a-good-password\n"));
    assert!(err.contains("refused"), "{err}");
    refused(home.run(&["boss", "inbox"]));
    assert!(ok(home.run(&["whoami"])).contains("level 2"));
    assert_eq!(count(&home), 8);
}

// --------------------------------------------------------------- sessions

#[test]
fn a_tampered_or_loose_session_file_is_refused() {
    let home = TestHome::initialised();
    home.login(DIRECTOR);
    let path = session_path(&home);
    let original = std::fs::read_to_string(&path).expect("session");
    let token = original.trim_end();
    for at in [0, 1, 10, 30, token.len() / 2, token.len() - 20, token.len() - 3] {
        let mut bytes = token.as_bytes().to_vec();
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        std::fs::write(&path, &bytes).expect("tamper");
        let err = refused(home.run(&["whoami"]));
        assert!(err.contains("invalid"), "flip at {at}: {err}");
        refused(home.run(&["agent", "list"]));
    }
    for broken in [&token[..token.len() / 2], "", "not a token"] {
        std::fs::write(&path, broken).expect("write");
        refused(home.run(&["whoami"]));
    }
    // The untouched token still works, so the refusals above were the edits.
    std::fs::write(&path, &original).expect("restore");
    ok(home.run(&["whoami"]));
    // A session file others can read is refused too, as loose (not "invalid"),
    // with the fix, like a loose master.key.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = refused(home.run(&["whoami"]));
    assert!(err.contains(&format!("chmod 600 {}", path.display())), "{err}");
    assert!(err.contains("0644") && !err.contains("invalid"), "{err}");
    refused(home.run(&["agent", "list"]));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    ok(home.run(&["whoami"]));
}

#[test]
fn an_expired_session_is_refused() {
    let home = TestHome::initialised();
    ok(home.run_stdin(
        &["login", "--name", DIRECTOR.name, "--password-stdin", "--ttl", "1"],
        format!("{}\n", DIRECTOR.password).as_bytes(),
    ));
    std::thread::sleep(std::time::Duration::from_millis(2200));
    let err = refused(home.run(&["whoami"]));
    assert!(err.contains("expired"), "{err}");
    refused(home.run(&["agent", "list"]));
}

#[test]
fn a_session_from_another_home_is_refused() {
    let first = TestHome::initialised();
    let second = TestHome::initialised();
    first.login(DIRECTOR);
    // Both homes have an agent 1 (Ethan Hunt): only the key tells them apart.
    std::fs::copy(session_path(&first), session_path(&second)).expect("copy");
    std::fs::set_permissions(session_path(&second), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let err = refused(second.run(&["whoami"]));
    assert!(err.contains("invalid"), "{err}");
    refused(second.run(&["agent", "list"]));
    ok(first.run(&["whoami"]));
}

// ------------------------------------------------------------ leak check

#[test]
fn the_database_files_hold_no_name_alias_or_password() {
    let home = TestHome::initialised();
    home.login(DIRECTOR);
    let (name, alias, password) = NEW_AGENT;
    ok(add(&home, name, alias, "2", format!("{password}\n").as_bytes()));
    refused(login(&home, SECOND_HANDLER.name, "not-emmas-password"));
    ok(home.run(&["db", "query"]));

    let mut needles: Vec<&str> = vec![name, alias, password, PROMOTED_ALIAS, "not-emmas-password"];
    for sample in SAMPLE_AGENTS {
        needles.extend([sample.name, sample.alias, sample.password]);
    }
    let mut checked = 0;
    for suffix in ["", "-wal", "-shm"] {
        let path = home.path().join(format!("spyctl.db{suffix}"));
        let Ok(bytes) = std::fs::read(&path) else { continue };
        checked += 1;
        let lower = bytes.to_ascii_lowercase();
        if suffix.is_empty() {
            // The search can find things: the schema is plaintext.
            assert!(crate::support::file_contains(&path, b"AgentName"), "the schema is not in spyctl.db?");
        }
        for needle in &needles {
            let n = needle.to_ascii_lowercase();
            assert!(
                !lower.windows(n.len()).any(|w| w == n.as_bytes()),
                "{} holds {needle:?} (case-insensitive)",
                path.display()
            );
        }
    }
    assert!(checked >= 1);
    let session = std::fs::read(session_path(&home)).expect("session").to_ascii_lowercase();
    assert!(!session.windows(10).any(|w| w == b"ethan hunt"));
}

// ------------------------------------------------------------ injection

#[test]
fn bobby_tables_round_trips_unchanged() {
    let home = TestHome::initialised();
    home.login(DIRECTOR);
    let tables_before = tables(&home);
    let out = ok(add(&home, BOBBY, "Bobby Tables", "2", b"little-bobby-2007\n"));
    assert!(out.contains(BOBBY) && out.contains("Bobby Tables"), "{out}");

    let agents = list_json(&home);
    let bobby = agents.iter().find(|a| a["alias"] == "Bobby Tables").expect("Bobby is listed");
    assert_eq!(bobby["name"], BOBBY);
    assert_eq!(bobby["level"], 2);
    assert!(ok(home.run(&["agent", "list"])).contains(BOBBY));

    let out = ok(login(&home, BOBBY, "little-bobby-2007"));
    assert!(out.contains(&format!("Welcome, {BOBBY}")), "{out}");
    let who = json(&ok(home.run(&["--json", "whoami"])));
    assert_eq!(who["agent"]["name"], BOBBY);
    assert_eq!(who["agent"]["alias"], "Bobby Tables");
    assert!(names_of(&list_json(&home)).contains(BOBBY));

    assert_eq!(tables(&home), tables_before, "tables changed");
    assert!(tables(&home).contains("Agents"));
    assert_eq!(count(&home), 9);
    let rows = ad_hoc_rows(&home, "SELECT AgentName FROM Agents WHERE AgentSecurityLevel = 2 ORDER BY AgentId");
    assert!(rows.iter().any(|r| r["AgentName"] == BOBBY), "{rows:?}");
}

// ------------------------------------------------------ no secrets in argv

#[test]
fn passwords_are_never_taken_from_argv() {
    let home = TestHome::initialised();
    for args in [&["login", "--help"][..], &["agent", "add", "--help"]] {
        let help = ok(home.run(args));
        assert!(help.contains("--password-stdin"), "{help}");
        for (at, _) in help.match_indices("--password") {
            assert!(help[at..].starts_with("--password-stdin "), "a --password option in {args:?}:\n{help}");
        }
        for line in help.lines().filter(|l| l.contains("--password-stdin")) {
            assert!(!line.contains('<'), "--password-stdin takes a value: {line}");
        }
        assert!(!help.contains("-p,"), "a -p option in {args:?}:\n{help}");
    }
    // And the flags do not exist: clap refuses them as usage errors.
    for args in [
        &["login", "--name", DIRECTOR.name, "--password", DIRECTOR.password][..],
        &["login", "--name", DIRECTOR.name, &format!("--password={}", DIRECTOR.password)],
        &["login", "--name", DIRECTOR.name, "-p", DIRECTOR.password],
        &["login", "--name", DIRECTOR.name, &format!("--password-stdin={}", DIRECTOR.password)],
    ] {
        let out = home.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stdout(&out));
        assert!(!session_path(&home).exists());
    }
    home.login(DIRECTOR);
    let out = home.run(&[
        "agent",
        "add",
        "--name",
        "Q",
        "--alias",
        "Quartermaster",
        "--level",
        "1",
        "--password",
        "pw-on-argv",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(count(&home), 8);
}

/// Parallel guesses cannot slip under the lockout: each attempt is recorded
/// before its password is checked, so a burst of 12 gets at most 5 checks.
#[test]
fn a_burst_of_parallel_guesses_gets_at_most_five_checks() {
    let home = TestHome::initialised();
    let name = SECOND_HANDLER.name;
    let children: Vec<_> = (0..12)
        .map(|_| {
            let mut child = home
                .cmd(&["login", "--name", name, "--password-stdin"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn login");
            use std::io::Write;
            child.stdin.take().expect("stdin").write_all(b"not-her-password\n").expect("write");
            child
        })
        .collect();
    let outputs: Vec<Output> = children.into_iter().map(|c| c.wait_with_output().expect("wait")).collect();
    assert!(outputs.iter().all(|o| o.status.code() == Some(1)), "every wrong guess fails");
    let checked: i64 = open_db(&home).query_row("SELECT COUNT(*) FROM LoginFailures", [], |r| r.get(0)).expect("count");
    assert_eq!(checked, 5, "exactly the threshold of attempts were recorded and checked");
    // The right password is now refused too: the name is locked.
    let err = refused(login(&home, name, SECOND_HANDLER.password));
    assert!(err.contains("too many failed attempts"), "{err}");
}

/// `db init --force` keeps counting AgentIds, so a key exported (or a session
/// written) for an old agent never authenticates a new agent with the same id.
#[test]
fn force_init_never_reuses_agent_ids() {
    let home = TestHome::initialised();
    let high: i64 = open_db(&home).query_row("SELECT MAX(AgentId) FROM Agents", [], |r| r.get(0)).expect("max");
    ok(home.run(&["db", "init", "--force", "--yes"]));
    let low: i64 = open_db(&home).query_row("SELECT MIN(AgentId) FROM Agents", [], |r| r.get(0)).expect("min");
    assert!(low > high, "ids restarted: old max {high}, new min {low}");
}

/// A refused `db init` changes nothing, not even a missing master.key.
#[test]
fn refused_init_does_not_create_a_key() {
    let home = TestHome::initialised();
    std::fs::remove_file(home.path().join("master.key")).expect("rm key");
    let err = refused(home.run(&["db", "init"]));
    assert!(err.contains("--force"), "{err}");
    assert!(!home.path().join("master.key").exists(), "a refused init wrote a new master.key");
}
