//! The database alone must not make a director: every Agents row carries an
//! integrity tag under a key derived from the master secret, so someone who
//! can write `spyctl.db` but lacks `master.key` cannot raise a level, copy a
//! password hash onto another row, roll back a revocation or pass a tampered
//! row off as one that was never tagged.

use rusqlite::{Connection, params};

use crate::support::{DIRECTOR, FIELD_AGENT, TestHome, fails, ok};

fn db(home: &TestHome) -> Connection {
    Connection::open(home.db_path()).expect("open spyctl.db as a plain file writer")
}

fn id_of(home: &TestHome, name: &str) -> i64 {
    home.login(DIRECTOR);
    let list: serde_json::Value = serde_json::from_str(&ok(home.run(&["--json", "agent", "list"]))).expect("json");
    list.as_array().expect("array").iter().find(|a| a["name"] == name).expect("listed")["id"].as_i64().expect("id")
}

fn login_as(home: &TestHome, name: &str, password: &str) -> std::process::Output {
    home.run_stdin(&["login", "--name", name, "--password-stdin"], format!("{password}\n").as_bytes())
}

#[test]
fn a_level_raised_in_the_database_is_refused_naming_the_row() {
    let home = TestHome::initialised();
    let field = id_of(&home, FIELD_AGENT.name);
    db(&home).execute("UPDATE Agents SET AgentSecurityLevel = 5 WHERE AgentId = ?1", [field]).expect("raise");
    let err = fails(login_as(&home, FIELD_AGENT.name, FIELD_AGENT.password), 1);
    assert!(err.contains(&format!("agent row {field} fails its integrity check")), "{err}");
    assert!(err.contains("backup"), "the hint says what to do: {err}");
    home.login(DIRECTOR);
    let err = fails(home.run(&["agent", "list"]), 1);
    assert!(err.contains(&format!("agent row {field}")), "the director is told which row: {err}");
}

#[test]
fn a_password_hash_copied_onto_another_row_does_not_log_in() {
    let home = TestHome::initialised();
    let field = id_of(&home, FIELD_AGENT.name);
    let director = id_of(&home, DIRECTOR.name);
    db(&home)
        .execute(
            "UPDATE Agents SET LoginPassword = (SELECT LoginPassword FROM Agents WHERE AgentId = ?1) WHERE AgentId = ?2",
            params![director, field],
        )
        .expect("copy the hash");
    std::fs::remove_file(home.path().join("session")).expect("log out");
    let err = fails(login_as(&home, FIELD_AGENT.name, DIRECTOR.password), 1);
    assert!(err.contains("integrity check"), "{err}");
    assert!(!home.path().join("session").exists(), "no session was written");
}

#[test]
fn a_rolled_back_revocation_is_refused_by_the_boss() {
    let home = TestHome::initialised();
    let field = id_of(&home, FIELD_AGENT.name).to_string();
    let old_key = home.path().join("old.key");
    ok(home.run(&["agent", "key", "export", &field, "--out", old_key.to_str().expect("utf-8")]));
    ok(home.run(&["agent", "revoke", &field]));
    db(&home).execute("UPDATE Agents SET KeyGeneration = 0 WHERE AgentId = ?1", [&field]).expect("roll back");
    let boss = home.boss(&[]);
    let args = ["send", "--addr", &boss.addr, "--agent-id", &field, "--key-file", old_key.to_str().expect("utf-8")];
    let err = fails(home.run(&[&args[..], &["--attempts", "1", "back from the dead"]].concat()), 1);
    assert!(err.contains("auth"), "{err}");
    let stopped = boss.stop();
    assert!(stopped.log_tail.contains("integrity"), "the Boss logs why: {}", stopped.log_tail);
}

#[test]
fn a_tampered_row_cannot_be_passed_off_as_never_tagged() {
    let home = TestHome::initialised();
    let field = id_of(&home, FIELD_AGENT.name);
    let conn = db(&home);
    conn.execute("UPDATE Agents SET AgentSecurityLevel = 5, RowMac = NULL WHERE AgentId = ?1", [field]).expect("raise");
    conn.execute("INSERT OR REPLACE INTO Meta (Name, Value) VALUES ('rows-untagged', X'01')", []).expect("mark");
    drop(conn);
    let err = fails(login_as(&home, FIELD_AGENT.name, FIELD_AGENT.password), 1);
    assert!(err.contains("tagged them before"), "{err}");
    let level: i64 = db(&home)
        .query_row("SELECT AgentSecurityLevel FROM Agents WHERE AgentId = ?1", [field], |r| r.get(0))
        .expect("level");
    assert_eq!(level, 5, "nothing was blessed: the row is still the tampered one, and still refused");
    let boss_err = home.run(&["boss", "serve", "--bind", "127.0.0.1:0"]);
    assert!(fails(boss_err, 1).contains("tagged them before"), "the Boss refuses to start on it too");
}
