//! Nobody grants more than they hold: directors add, export, delete,
//! re-level and revoke only at or below their own level; `agent revoke`
//! replaces a wire key at once (old key, sessions and captured lines refused);
//! every such act lands in the sealed audit log that `agent audit` lists.

use std::path::Path;

use spyctl::net::protocol::ErrorCode;
use spyctl::registry::SampleAgent;

use crate::support::{DIRECTOR, FIELD_AGENT, RawClient, TestHome, fails, file_contains, ok, sample_named};

/// The level-4 sample director.
fn deputy() -> &'static SampleAgent {
    sample_named("Natasha Romanoff")
}

/// AgentId and level of `name`, as the level-5 director sees them.
fn find(home: &TestHome, name: &str) -> Option<(i64, u8)> {
    home.login(DIRECTOR);
    let list: serde_json::Value = serde_json::from_str(&ok(home.run(&["--json", "agent", "list"]))).expect("json");
    list.as_array()
        .expect("array")
        .iter()
        .find(|a| a["name"] == name)
        .map(|a| (a["id"].as_i64().expect("id"), u8::try_from(a["level"].as_u64().expect("level")).expect("small")))
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

#[test]
fn a_director_never_acts_above_their_own_level() {
    let home = TestHome::initialised();
    let (top_id, _) = find(&home, DIRECTOR.name).expect("the level-5 director");
    let (field_id, _) = find(&home, FIELD_AGENT.name).expect("a field agent");
    home.login(deputy());
    let top = top_id.to_string();
    let field = field_id.to_string();
    let out = home.run_stdin(
        &["agent", "add", "--name", "Mole", "--alias", "Mole", "--level", "5", "--password-stdin"],
        b"a-long-enough-password\n",
    );
    assert!(fails(out, 1).contains("above your own level"));
    let key = home.path().join("top.key");
    assert!(fails(home.run(&["agent", "key", "export", &top, "--out", path_str(&key)]), 1).contains("above"));
    assert!(!key.exists(), "no key was written");
    for args in [
        vec!["agent", "delete", &top],
        vec!["agent", "set-level", &top, "1"],
        vec!["agent", "revoke", &top],
        vec!["agent", "set-level", &field, "5"],
    ] {
        let err = fails(home.run(&args), 1);
        assert!(err.contains("above your own level"), "{args:?}: {err}");
    }
    // Within the ceiling it works: the deputy may move a field agent to 4.
    ok(home.run(&["agent", "set-level", &field, "4"]));
    assert_eq!(find(&home, DIRECTOR.name), Some((top_id, 5)), "the level-5 director is untouched");
    assert_eq!(find(&home, "Mole"), None);
    assert_eq!(find(&home, FIELD_AGENT.name), Some((field_id, 4)));
    // Field agents and handlers manage nobody.
    home.login(FIELD_AGENT);
    let err = fails(home.run(&["agent", "delete", &top]), 1);
    assert!(err.contains("refused"), "{err}");
}

#[test]
fn revoke_replaces_the_key_at_once_and_every_act_is_audited() {
    let home = TestHome::initialised();
    let (field_id, _) = find(&home, FIELD_AGENT.name).expect("field agent");
    let id = field_id.to_string();
    let old_key = home.path().join("old.key");
    ok(home.run(&["agent", "key", "export", &id, "--out", path_str(&old_key)]));
    let old_wire =
        spyctl::crypto::FernetKey::from_base64(&std::fs::read_to_string(&old_key).expect("key")).expect("key");
    let captured = {
        let header = spyctl::net::protocol::Header {
            id: spyctl::net::ids::random_id(),
            kind: spyctl::net::protocol::Kind::Text,
        };
        let plaintext = spyctl::net::protocol::encode_message(&header, b"sealed before the revocation");
        spyctl::net::protocol::format_request(field_id, &old_wire.seal(&plaintext))
    };
    home.login(FIELD_AGENT);
    let field_session = std::fs::read(home.path().join("session")).expect("session");

    home.login(DIRECTOR);
    ok(home.run(&["agent", "revoke", &id]));
    let boss = home.boss(&[]);
    let mut raw = RawClient::connect(&boss.addr);
    assert_eq!(raw.ask(captured.as_bytes()).code(), Some(ErrorCode::Auth), "a line sealed before is refused");
    let send_with = |key: &Path| {
        home.run(&[
            "send",
            "--addr",
            &boss.addr,
            "--agent-id",
            &id,
            "--key-file",
            path_str(key),
            "--attempts",
            "1",
            "hi",
        ])
    };
    assert!(fails(send_with(&old_key), 1).contains("auth"), "the old key is refused");
    let new_key = home.path().join("new.key");
    ok(home.run(&["agent", "key", "export", &id, "--out", path_str(&new_key)]));
    ok(send_with(&new_key));
    std::fs::write(home.path().join("session"), &field_session).expect("the agent's old session");
    assert!(fails(home.run(&["whoami"]), 1).contains("revoked"), "the old session is refused");
    home.login(FIELD_AGENT);
    ok(home.run(&["whoami"]));
    boss.stop();

    home.login(DIRECTOR);
    let (smart_id, _) = find(&home, "Maxwell Smart").expect("sample");
    ok(home.run(&["agent", "set-level", &id, "1"]));
    ok(home.run(&["agent", "delete", &smart_id.to_string()]));
    assert_eq!(find(&home, "Maxwell Smart"), None);
    let (director_id, _) = find(&home, DIRECTOR.name).expect("director");

    let log: serde_json::Value = serde_json::from_str(&ok(home.run(&["--json", "agent", "audit"]))).expect("json");
    let actions: Vec<(String, i64, i64)> = log
        .as_array()
        .expect("array")
        .iter()
        .map(|e| {
            (
                e["action"].as_str().expect("action").to_string(),
                e["actor_id"].as_i64().expect("actor"),
                e["target"].as_i64().expect("target"),
            )
        })
        .collect();
    let expected = [
        ("export-key", field_id),
        ("revoke", field_id),
        ("export-key", field_id),
        ("set-level", field_id),
        ("delete", smart_id),
    ];
    assert_eq!(
        actions,
        expected.iter().map(|(a, t)| (a.to_string(), director_id, *t)).collect::<Vec<_>>(),
        "who, what, to whom, in order"
    );
    assert!(ok(home.run(&["agent", "audit"])).contains("revoke"), "the table lists it");
    for needle in [&b"revoke"[..], b"set-level", b"export-key"] {
        assert!(!file_contains(&home.db_path(), needle), "the audit entry is sealed at rest");
    }
    home.login(FIELD_AGENT);
    assert!(fails(home.run(&["agent", "audit"]), 1).contains("refused"), "only directors read the audit log");
}
