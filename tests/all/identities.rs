//! Agent identities end to end (issue 13): a Boss home and a separate agent
//! home (a second "machine"), a real `boss serve` on 127.0.0.1 port 0,
//! enrolment by one-time code over SPAKE2, the Boss pinned in the agent's
//! home, and signed messages that nobody else can make, not even with
//! `master.key` and every key of the Boss.

use rusqlite::Connection;
use serde_json::Value;
use spyctl::crypto::fernet::unix_now;
use spyctl::crypto::identity::{Side, statement};
use spyctl::crypto::minisign::sign_statement;
use spyctl::crypto::{FernetKey, IdentityKeys, MasterKey, PublicIdentity};
use spyctl::net::protocol::{self, ErrorCode, Header, Kind, MessageSig};

use crate::support::*;

/// The agent every test enrols: field agent 6 (Jason Bourne, level 2).
pub(crate) const AGENT: i64 = 6;

/// A Boss home (initialised, director logged in) with its server running.
pub(crate) fn boss_home() -> (TestHome, Boss) {
    let home = TestHome::initialised();
    home.login(DIRECTOR);
    let boss = home.boss(&[]);
    (home, boss)
}

/// `agent enroll N --json` -> the code.
pub(crate) fn enroll(home: &TestHome, agent: i64) -> String {
    let out: Value =
        serde_json::from_str(&ok(home.run(&["--json", "agent", "enroll", &agent.to_string()]))).expect("enroll --json");
    out["code"].as_str().expect("code").to_string()
}

/// `join CODE --addr ADDR` in `agent`'s home.
pub(crate) fn join(agent: &TestHome, code: &str, addr: &str) -> std::process::Output {
    agent.run(&["join", code, "--addr", addr])
}

/// A Boss home (director logged in) serving with `flags`, and agent 6's own
/// home joined to it: the setup of every v2 test.
pub(crate) fn enrolled_with(flags: &[&str]) -> (TestHome, Boss, TestHome) {
    let home = TestHome::initialised();
    home.login(DIRECTOR);
    let boss = home.boss(flags);
    let agent = TestHome::new();
    ok(join(&agent, &enroll(&home, AGENT), &boss.addr));
    (home, boss, agent)
}

/// [`enrolled_with`] a Boss on its default flags.
pub(crate) fn enrolled() -> (TestHome, Boss, TestHome) {
    enrolled_with(&[])
}

pub(crate) fn json(out: std::process::Output) -> Value {
    serde_json::from_str(&ok(out)).expect("json")
}

/// The only line of a failure's stderr.
#[track_caller]
pub(crate) fn one_line(out: std::process::Output) -> String {
    let err = fails(out, 1);
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    err
}

pub(crate) fn count(home: &TestHome, sql: &str) -> i64 {
    Connection::open(home.db_path()).expect("open").query_row(sql, [], |r| r.get(0)).expect("count")
}

fn identities(home: &TestHome) -> i64 {
    count(home, "SELECT COUNT(*) FROM AgentIdentities")
}

pub(crate) fn messages(home: &TestHome) -> i64 {
    count(home, "SELECT COUNT(*) FROM Messages")
}

/// The agent home's identity, read as an attacker on that machine could.
pub(crate) fn public_of(home: &TestHome) -> PublicIdentity {
    let text = std::fs::read_to_string(home.path().join("identity.key")).expect("identity.key");
    IdentityKeys::from_file_text(&text).expect("identity").public()
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("meta").permissions().mode() & 0o777
}

#[test]
fn an_agent_joins_from_its_own_home_and_sends_signed_messages_with_no_key_file_copied() {
    let (home, boss) = boss_home();
    let boss_fp = json(home.run(&["--json", "whoami"]))["boss_fingerprint"].as_str().expect("boss fp").to_string();
    let code = enroll(&home, AGENT);
    assert!(code.starts_with("6-") && code.split('-').count() == 4, "{code}");
    assert_eq!(count(&home, "SELECT COUNT(*) FROM EnrolCodes"), 1);
    // The database and its write-ahead log (where a fresh row may still be).
    let wal = home.path().join("spyctl.db-wal");
    for file in [home.db_path(), wal] {
        assert!(!file_contains(&file, code.as_bytes()), "the code is stored in plaintext in {}", file.display());
    }

    let agent = TestHome::new();
    let joined = json(agent.run(&["--json", "join", &code, "--addr", &boss.addr]));
    assert_eq!(joined["agent_id"], AGENT);
    assert_eq!(joined["boss_fingerprint"], boss_fp.as_str(), "the agent sees the Boss's real fingerprint");
    // Keys were born here and stay private; nothing of the Boss's home is here.
    assert_eq!(mode(&agent.path().join("identity.key")), 0o600);
    assert_eq!(mode(&agent.path().join("boss.pin")), 0o600);
    assert!(!agent.path().join("master.key").exists() && !agent.path().join("spyctl.db").exists());
    assert_eq!(count(&home, "SELECT COUNT(*) FROM EnrolCodes"), 0, "the code is used up");

    // Both sides show the same fingerprint for the agent.
    let me = json(agent.run(&["--json", "whoami"]));
    let fp = me["fingerprint"].as_str().expect("fingerprint").to_string();
    assert_eq!(fp, public_of(&agent).fingerprint());
    let list = json(home.run(&["--json", "agent", "list"]));
    let row = list.as_array().expect("list").iter().find(|a| a["id"] == AGENT).expect("agent 6 listed").clone();
    assert_eq!(row["fingerprint"], fp.as_str());

    // Send from the joined home: signed, verified, stored with its signature.
    let sent = json(agent.run(&["--json", "send", "--addr", &boss.addr, "Package delivered"]));
    assert_eq!(sent["status"], "stored");
    let inbox = json(home.run(&["--json", "boss", "inbox"]));
    let item = &inbox.as_array().expect("inbox")[0];
    assert_eq!(item["content"], "Package delivered");
    assert_eq!(item["signature"], format!("verified {fp}"));
    let id = item["id"].as_str().expect("id").to_string();
    let verified = ok(home.run(&["boss", "verify", &id]));
    assert!(verified.contains(&format!("verified {fp}")), "{verified}");
    assert_eq!(count(&home, "SELECT COUNT(Signature) FROM Messages"), 1);
    boss.stop_clean();
}

#[test]
fn a_wrong_code_enrols_nothing_reveals_nothing_and_kills_the_real_one() {
    let (home, boss) = boss_home();
    let code = enroll(&home, AGENT);
    let mut words: Vec<&str> = code.split('-').collect();
    let wrong_word = if words[3] == "acid" { "acorn" } else { "acid" };
    words[3] = wrong_word;
    let wrong = words.join("-");
    let agent = TestHome::new();
    let err = one_line(join(&agent, &wrong, &boss.addr));
    assert!(err.contains("the code is wrong, expired or already used"), "{err}");
    assert!(!agent.path().join("boss.pin").exists(), "nothing pinned");
    // The real code died with the failed try.
    let err = one_line(join(&agent, &code, &boss.addr));
    assert!(err.contains("the code is wrong, expired or already used"), "{err}");
    // A guess for an agent that has no code gets the very same answer.
    let guessed = one_line(join(&agent, "7-acid-acorn-actor", &boss.addr));
    assert_eq!(guessed, err, "a prober must not tell a dead code from no code");
    assert_eq!(identities(&home), 0, "nothing enrolled");
    boss.stop_clean();
}

#[test]
fn a_reused_code_is_refused_and_the_first_enrolment_stands() {
    let (home, boss) = boss_home();
    let code = enroll(&home, AGENT);
    let first = TestHome::new();
    ok(join(&first, &code, &boss.addr));
    let second = TestHome::new();
    let err = one_line(join(&second, &code, &boss.addr));
    assert!(err.contains("already used"), "{err}");
    assert_eq!(identities(&home), 1);
    let list = json(home.run(&["--json", "agent", "list"]));
    let row = list.as_array().expect("list").iter().find(|a| a["id"] == AGENT).expect("agent 6").clone();
    assert_eq!(row["fingerprint"], public_of(&first).fingerprint().as_str());
    boss.stop_clean();
}

#[test]
fn an_expired_code_is_refused() {
    let (home, boss) = boss_home();
    let code = enroll(&home, AGENT);
    Connection::open(home.db_path()).expect("open").execute("UPDATE EnrolCodes SET ExpiresAt = 1", []).expect("age it");
    let agent = TestHome::new();
    let err = one_line(join(&agent, &code, &boss.addr));
    assert!(err.contains("expired"), "{err}");
    assert_eq!(identities(&home), 0);
    boss.stop_clean();
}

#[test]
fn malformed_codes_get_one_line_and_contact_nobody() {
    let agent = TestHome::new();
    for bad in [
        "",
        "6",
        "6-acid-acorn",
        "6-acid-acorn-actor-adobe",
        "0-acid-acorn-actor",
        "six-acid-acorn-actor",
        "6-acid-acorn-xyzzy",
    ] {
        // Port 9 (discard) is never our Boss: a malformed code fails first.
        let err = one_line(join(&agent, bad, "127.0.0.1:9"));
        assert!(err.contains("malformed code"), "{bad:?}: {err}");
    }
    assert!(!agent.path().join("boss.pin").exists());
}

#[test]
fn a_boss_whose_keys_differ_from_the_pinned_ones_is_refused_naming_both_and_gets_nothing() {
    let (home, boss) = boss_home();
    let agent = TestHome::new();
    ok(join(&agent, &enroll(&home, AGENT), &boss.addr));
    let pinned = json(agent.run(&["--json", "whoami"]))["boss_fingerprint"].as_str().expect("fp").to_string();

    // Another Boss (another home, another identity) on another port.
    let (other_home, other) = boss_home();
    let other_fp = json(other_home.run(&["--json", "whoami"]))["boss_fingerprint"].as_str().expect("fp").to_string();
    assert_ne!(pinned, other_fp);
    let err = one_line(agent.run(&["send", "--addr", &other.addr, "for the impostor"]));
    assert!(err.contains(&pinned) && err.contains(&other_fp), "both fingerprints: {err}");
    assert_eq!(messages(&other_home), 0, "nothing sent");
    // Joining it with a valid code of its own is refused the same way, before
    // the agent's keys are sent: nothing enrolled there.
    let err = one_line(join(&agent, &enroll(&other_home, AGENT), &other.addr));
    assert!(err.contains(&pinned) && err.contains(&other_fp), "both fingerprints: {err}");
    assert_eq!(identities(&other_home), 0);
    // The real Boss still works.
    ok(agent.run(&["send", "--addr", &boss.addr, "still here"]));
    assert_eq!(messages(&home), 1);
    other.stop_clean();
    boss.stop_clean();
}

/// Seals a text message for agent 6 under `key`, signed by `signer` if given.
fn forged_line(key: &FernetKey, boss_ed25519: &[u8; 32], signer: Option<&IdentityKeys>, body: &str) -> String {
    let header = Header { id: spyctl::net::ids::random_id(), kind: Kind::Text };
    let plaintext = match signer {
        Some(keys) => {
            let time = unix_now();
            let st = statement(boss_ed25519, AGENT, &header.id, "text", body.as_bytes(), time);
            let sigs = sign_statement(keys, &st);
            let sig = MessageSig { time, signature: sigs.signature, trusted: Some(sigs.trusted) };
            protocol::encode_signed_message(&header, body.as_bytes(), &sig)
        }
        None => protocol::encode_message(&header, body.as_bytes()),
    };
    key.seal(&plaintext)
}

#[test]
fn holding_master_key_and_every_boss_key_still_cannot_make_a_message_that_verifies_as_the_agent() {
    let (home, boss) = boss_home();
    let agent = TestHome::new();
    ok(join(&agent, &enroll(&home, AGENT), &boss.addr));
    let victim = public_of(&agent);

    // Everything the Boss's machine holds.
    let master = MasterKey::from_hex(&std::fs::read_to_string(home.path().join("master.key")).expect("master.key"))
        .expect("master");
    let db_id: Vec<u8> = Connection::open(home.db_path())
        .expect("open")
        .query_row("SELECT Value FROM Meta WHERE Name = 'database-id'", [], |r| r.get(0))
        .expect("database id");
    let boss_keys =
        IdentityKeys::from_file_text(&std::fs::read_to_string(home.path().join("identity.key")).expect("key"))
            .expect("boss identity");
    let boss_ed = boss_keys.public().ed25519;
    // The Boss side of the channel key is computable from the Boss's keys...
    let channel = boss_keys.channel_key(Side::Boss, &victim, AGENT).expect("channel");
    let psk = master.bind(&db_id).agent_wire_key(AGENT);
    let stranger = IdentityKeys::generate().expect("rng");

    let mut raw = RawClient::connect(&boss.addr);
    let attempts = [
        ("the v1 key from master.key", forged_line(&psk, &boss_ed, None, "forged 1")),
        ("the channel key, unsigned", forged_line(&channel, &boss_ed, None, "forged 2")),
        ("the channel key, signed by the Boss's Ed25519 key", {
            // ...but no key the Boss holds signs as the agent.
            forged_line(&channel, &boss_ed, Some(&boss_keys), "forged 3")
        }),
        ("the channel key, signed by a fresh key", forged_line(&channel, &boss_ed, Some(&stranger), "forged 4")),
    ];
    for (what, token) in &attempts {
        let answer = raw.msg(AGENT, token);
        assert_eq!(answer.code(), Some(ErrorCode::Auth), "{what}: {answer:?}");
    }
    assert_eq!(messages(&home), 0, "nothing forged was stored");

    // Rewriting the stored signature (write access to the database) does
    // not make `boss verify` pass either.
    ok(agent.run(&["send", "--addr", &boss.addr, "genuine"]));
    let id: String = Connection::open(home.db_path())
        .expect("open")
        .query_row("SELECT MessageId FROM Messages", [], |r| r.get(0))
        .expect("id");
    ok(home.run(&["boss", "verify", &id]));
    let forged_sig = boss_keys.sign(b"anything");
    Connection::open(home.db_path())
        .expect("open")
        .execute("UPDATE Messages SET Signature = ?1", [&forged_sig[..]])
        .expect("tamper");
    let err = one_line(home.run(&["boss", "verify", &id]));
    assert!(err.contains("INVALID"), "{err}");
    boss.stop_clean();
}

#[test]
fn revoking_an_enrolled_agent_refuses_its_next_line_and_old_signatures_verify_as_since_revoked() {
    let (home, boss) = boss_home();
    let agent = TestHome::new();
    ok(join(&agent, &enroll(&home, AGENT), &boss.addr));
    ok(agent.run(&["send", "--addr", &boss.addr, "before"]));
    ok(home.run(&["agent", "revoke", &AGENT.to_string()]));
    let err = one_line(agent.run(&["send", "--addr", &boss.addr, "after"]));
    assert!(err.contains("auth"), "{err}");
    assert_eq!(messages(&home), 1);
    let inbox = json(home.run(&["--json", "boss", "inbox"]));
    let label = inbox[0]["signature"].as_str().expect("label");
    assert!(label.ends_with("(since-revoked key)"), "{label}");
    // Re-enrolment with a new code works again.
    ok(join(&agent, &enroll(&home, AGENT), &boss.addr));
    ok(agent.run(&["send", "--addr", &boss.addr, "again"]));
    assert_eq!(identities(&home), 2, "the revoked key stays in the history");
    boss.stop_clean();
}

#[test]
fn directors_enrol_only_at_or_below_their_level_and_others_not_at_all() {
    let home = TestHome::initialised();
    home.login(sample_at(4, ""));
    let err = one_line(home.run(&["agent", "enroll", "1"]));
    assert!(err.contains("level"), "{err}");
    home.login(HANDLER);
    fails(home.run(&["agent", "enroll", &AGENT.to_string()]), 1);
    assert_eq!(count(&home, "SELECT COUNT(*) FROM EnrolCodes"), 0);
}

/// PyPI `spake2` (python-spake2 0.9) and the Rust `spake2` crate agree: a
/// client written from PROTOCOL.md in Python (tests/python/join_client.py,
/// with `cryptography` for X25519, Ed25519, HKDF and Fernet) enrols against
/// the real Boss and sends a signed message that the Boss verifies.
#[test]
fn a_python_client_with_pypi_spake2_enrols_and_sends_a_signed_message() {
    let (home, boss) = boss_home();
    let code = enroll(&home, AGENT);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/join_client.py");
    let python = crate::python_interop::python();
    let out = crate::python_interop::python_command(python)
        .args([script, &boss.addr, &code, "Hello from Python"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run python");
    let printed = ok(out);
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 3, "{printed}");
    assert_eq!(lines[2], "stored");
    let boss_fp = json(home.run(&["--json", "whoami"]))["boss_fingerprint"].as_str().expect("fp").to_string();
    assert_eq!(lines[1], boss_fp, "Python computes the same Boss fingerprint");
    let inbox = json(home.run(&["--json", "boss", "inbox"]));
    assert_eq!(inbox[0]["content"], "Hello from Python");
    assert_eq!(inbox[0]["signature"], format!("verified {}", lines[0]), "same agent fingerprint on both sides");
    boss.stop_clean();
}

/// `send` in a joined home goes to the address it joined unless `--addr`
/// (or `SPYCTL_ADDR`) says otherwise.
#[test]
fn a_joined_home_sends_to_the_address_it_joined_by_default() {
    let (home, boss) = boss_home();
    let agent = TestHome::new();
    ok(join(&agent, &enroll(&home, AGENT), &boss.addr));
    let sent = json(agent.run(&["--json", "send", "no address given"]));
    assert_eq!(sent["status"], "stored");
    assert_eq!(json(home.run(&["--json", "boss", "inbox"]))[0]["content"], "no address given");
    // An explicit address still wins: here, one where nobody listens.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let nobody = closed.local_addr().expect("addr").to_string();
    drop(closed);
    let err = one_line(agent.run(&["send", "--addr", &nobody, "--attempts", "1", "elsewhere"]));
    assert!(err.contains(&nobody), "{err}");
    let err = one_line(
        agent.cmd(&["send", "--attempts", "1", "from env"]).env("SPYCTL_ADDR", &nobody).output().expect("run"),
    );
    assert!(err.contains(&nobody), "{err}");
    assert_eq!(messages(&home), 1);
    boss.stop_clean();
}
