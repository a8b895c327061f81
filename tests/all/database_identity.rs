//! Keys belong to one database, not to a row number: after `rm spyctl.db`
//! and `db init` with the same `master.key`, nothing made for the earlier
//! database (a session, an exported wire key, a captured line) is honoured.

use spyctl::crypto::FernetKey;
use spyctl::net::ids::random_id;
use spyctl::net::protocol::{self, ErrorCode, Header, Kind};

use crate::support::{DIRECTOR, FIELD_AGENT, RawClient, TestHome, fails, ok};

/// The AgentId of `name` in `home`, from `agent list --json` (as a director).
fn agent_id(home: &TestHome, name: &str) -> i64 {
    home.login(DIRECTOR);
    let list: serde_json::Value = serde_json::from_str(&ok(home.run(&["--json", "agent", "list"]))).expect("json");
    list.as_array().expect("array").iter().find(|a| a["name"] == name).expect("listed")["id"].as_i64().expect("id")
}

fn sealed_line(key: &FernetKey, agent_id: i64, text: &str) -> String {
    let plaintext = protocol::encode_message(&Header { id: random_id(), kind: Kind::Text }, text.as_bytes());
    protocol::format_request(agent_id, &key.seal(&plaintext))
}

#[test]
fn a_recreated_database_honours_no_session_key_or_line_made_for_the_old_one() {
    let home = TestHome::initialised();
    let field_id = agent_id(&home, FIELD_AGENT.name);
    let key_file = home.path().join("field.key");
    let key_path = key_file.to_str().expect("utf-8 path");
    ok(home.run(&["agent", "key", "export", &field_id.to_string(), "--out", key_path]));
    let old_key = FernetKey::from_base64(&std::fs::read_to_string(&key_file).expect("key file")).expect("key");
    home.login(FIELD_AGENT);
    let session = home.path().join("session");
    let old_session = std::fs::read(&session).expect("session");
    // A line captured while the old database was live.
    let captured = sealed_line(&old_key, field_id, "captured before the database was recreated");

    // The same master.key, a new database: the same AgentId exists again.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(home.path().join(format!("spyctl.db{suffix}")));
    }
    ok(home.run(&["db", "init"]));
    assert_eq!(agent_id(&home, FIELD_AGENT.name), field_id, "the same AgentId exists in the new database");

    // The old session is refused.
    std::fs::write(&session, &old_session).expect("put the old session back");
    let err = fails(home.run(&["whoami"]), 1);
    assert!(err.contains("invalid"), "the old session is refused: {err}");

    // The captured line and the old exported key are refused by the Boss.
    let boss = home.boss(&[]);
    let mut raw = RawClient::connect(&boss.addr);
    assert_eq!(raw.ask(captured.as_bytes()).code(), Some(ErrorCode::Auth), "the captured line is refused");
    let id = field_id.to_string();
    let send = ["send", "--addr", &boss.addr, "--agent-id", &id, "--key-file", key_path, "--attempts", "1", "hi"];
    let err = fails(home.run(&send), 1);
    assert!(err.contains("auth"), "the old exported key is refused: {err}");

    // The new database's key for the same AgentId differs, and works.
    home.login(DIRECTOR);
    let new_key_file = home.path().join("field-new.key");
    let new_path = new_key_file.to_str().expect("utf-8 path");
    ok(home.run(&["agent", "key", "export", &id, "--out", new_path]));
    assert_ne!(
        std::fs::read_to_string(&key_file).expect("old"),
        std::fs::read_to_string(&new_key_file).expect("new"),
        "the new database derives another wire key for the same AgentId"
    );
    ok(home.run(&["send", "--addr", &boss.addr, "--agent-id", &id, "--key-file", new_path, "hello again"]));
    boss.stop();
}
