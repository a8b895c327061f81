//! The Boss channel end to end: a real `spyctl boss serve` on 127.0.0.1 port 0,
//! real `spyctl send` processes, raw protocol clients written here (to send what
//! `spyctl send` never would: duplicates, stale or forged tokens, garbage, half
//! files), and a Python client written from PROTOCOL.md alone.

use std::io::Write;
use std::net::{Shutdown, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, params};
use serde_json::Value;
use sha2::{Digest, Sha256};
use spyctl::crypto::FernetKey;
use spyctl::net::ids::random_id;
use spyctl::net::protocol::{self, AckStatus, CHUNK_BYTES, ErrorCode, FileChunk, Header, Kind, MAX_LINE_BYTES};

use crate::support::{
    Answer, Boss, DIRECTOR, FIELD_AGENT, RawClient, TestHome, fails, good_work, ok, random_bytes, stderr, stdout,
};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn unix_now() -> u64 {
    spyctl::crypto::fernet::unix_now()
}

/// Logs in as the field agent and returns their AgentId (from `whoami --json`).
fn login_field_agent(home: &TestHome) -> i64 {
    home.login(FIELD_AGENT);
    let who: Value = serde_json::from_str(&ok(home.run(&["--json", "whoami"]))).expect("whoami --json");
    who["agent"]["id"].as_i64().expect("agent id")
}

/// An initialised home with the field agent logged in, and a running Boss.
fn setup() -> (TestHome, i64, Boss) {
    let home = TestHome::initialised();
    let agent = login_field_agent(&home);
    let boss = home.boss(&[]);
    (home, agent, boss)
}

/// `agent key export` as the director (this replaces the session) into `out`;
/// returns the key as parsed from the file.
fn export_key(home: &TestHome, agent_id: i64, out: &Path) -> FernetKey {
    home.login(DIRECTOR);
    ok(home.run(&["agent", "key", "export", &agent_id.to_string(), "--out", out.to_str().expect("utf-8 path")]));
    let mode = std::fs::metadata(out).expect("key file").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "exported key file mode");
    let text = std::fs::read_to_string(out).expect("read key file");
    FernetKey::from_base64(&text).expect("exported key parses")
}

/// The agent's wire key, exported into the home (the session is the director's afterwards).
fn agent_key(home: &TestHome, agent_id: i64) -> FernetKey {
    export_key(home, agent_id, &home.path().join(format!("agent-{agent_id}.key")))
}

/// `boss inbox --json` as the director (this replaces the session).
fn inbox(home: &TestHome) -> Vec<Value> {
    home.login(DIRECTOR);
    let out = ok(home.run(&["--json", "boss", "inbox", "--all", "--oldest-first"]));
    match serde_json::from_str(&out).unwrap_or_else(|e| panic!("inbox --json is not JSON ({e}): {out}")) {
        Value::Array(entries) => entries,
        other => panic!("inbox --json is not an array: {other}"),
    }
}

fn inbox_texts(entries: &[Value]) -> Vec<String> {
    entries.iter().filter(|e| e["kind"] == "text").map(|e| e["content"].as_str().expect("content").into()).collect()
}

fn db(home: &TestHome) -> Connection {
    Connection::open_with_flags(home.db_path(), OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open spyctl.db")
}

/// Rows in Messages for (agent, message id).
fn stored_count(home: &TestHome, agent_id: i64, message_id: &str) -> i64 {
    db(home)
        .query_row(
            "SELECT COUNT(*) FROM Messages WHERE AgentId = ?1 AND MessageId = ?2",
            params![agent_id, message_id],
            |row| row.get(0),
        )
        .expect("count Messages")
}

fn table_count(home: &TestHome, table: &str) -> i64 {
    db(home).query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| row.get(0)).expect("count")
}

/// Names in `<home>/files/<agent>/`, sorted.
fn agent_files(home: &TestHome, agent_id: i64) -> Vec<String> {
    let dir = home.path().join("files").join(agent_id.to_string());
    let mut names: Vec<String> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries.map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// A text message's plaintext, sealed now.
fn text_token(key: &FernetKey, id: &str, text: &str) -> String {
    key.seal(&protocol::encode_message(&Header { id: id.into(), kind: Kind::Text }, text.as_bytes()))
}

/// Opens an `ACK` with `key`, checks it names `id`, returns status and reply text.
#[track_caller]
fn open_ack(key: &FernetKey, reply: &Answer, id: &str) -> (AckStatus, String) {
    let Answer::Ack(token) = reply else { panic!("expected an ACK, got {reply:?}") };
    let opened = key.open(token, Some(300)).expect("the ACK is sealed under the agent's key");
    let (header, text) = protocol::decode_ack(&opened.plaintext).expect("ACK plaintext");
    assert_eq!(header.v, protocol::VERSION);
    assert_eq!(header.id, id, "the ACK echoes the message id");
    (header.status, text)
}

/// A port nothing listens on (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

// ---------------------------------------------------------------------------
// 1. Text
// ---------------------------------------------------------------------------

#[test]
fn text_message_is_acknowledged_and_shows_in_the_inbox() {
    let (home, agent, boss) = setup();
    let text = "Package delivered to the safe house \u{2014} caf\u{e9} at 06:00 \u{1f575}";

    let out = ok(home.run(&["send", text, "--addr", &boss.addr]));
    assert!(out.contains(&good_work(FIELD_AGENT)), "reply printed: {out}");
    assert!(out.contains("stored"), "status printed: {out}");

    let json = ok(home.run(&["--json", "send", "Second report", "--addr", &boss.addr]));
    let sent: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("send --json ({e}): {json}"));
    assert_eq!(sent["status"], "stored");
    assert_eq!(sent["attempts"], 1);
    assert_eq!(sent["reply"], good_work(FIELD_AGENT));

    // A field agent cannot read the inbox.
    let err = stderr(&home.run(&["boss", "inbox"]));
    assert!(!err.is_empty() && !err.contains("panicked"), "{err}");
    assert!(!home.run(&["boss", "inbox"]).status.success());

    let entries = inbox(&home);
    assert_eq!(inbox_texts(&entries), [text, "Second report"]);
    for e in &entries {
        assert_eq!(e["agent_id"], agent);
        assert_eq!(e["agent_name"], FIELD_AGENT.name);
        assert_eq!(e["kind"], "text");
    }
    let table = ok(home.run(&["boss", "inbox"]));
    assert!(table.contains("Second report") && table.contains(FIELD_AGENT.name), "{table}");
    assert!(table.contains("2 item(s)"), "{table}");

    boss.stop_clean();
}

// ---------------------------------------------------------------------------
// 2. Stdin lines over one connection
// ---------------------------------------------------------------------------

#[test]
fn stdin_lines_are_sent_over_one_connection() {
    let (home, agent, boss) = setup();
    let out = ok(home.run_stdin(&["send", "--addr", &boss.addr], b"first line\nsecond line\n\nthird line\n"));
    let acks: Vec<&str> = out.lines().filter(|l| l.contains("Good work")).collect();
    assert_eq!(acks.len(), 3, "one ACK per non-empty line:\n{out}");
    assert!(acks.iter().all(|l| l.contains("stored")), "{out}");

    // With --json: JSON Lines, one compact object per message, in order.
    let out = ok(home.run_stdin(&["--json", "send", "--addr", &boss.addr], b"fourth line\n\nfifth line\n"));
    let records: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object per line ({e}):\n{out}")))
        .collect();
    assert_eq!(records.len(), 2, "one record per non-empty line:\n{out}");
    for record in &records {
        assert_eq!(record["sent"], "text");
        assert_eq!(record["status"], "stored");
        assert_eq!(record["attempts"], 1);
        assert_eq!(record["reply"], good_work(FIELD_AGENT));
    }

    let boss_out = boss.stop_clean().stdout;
    assert!(boss_out.contains("2 connection(s), 5 line(s)"), "summary: {boss_out}");

    let entries = inbox(&home);
    assert_eq!(inbox_texts(&entries), ["first line", "second line", "third line", "fourth line", "fifth line"]);
    assert!(entries.iter().all(|e| e["agent_id"] == agent));
}

// ---------------------------------------------------------------------------
// 3. A multi-MiB file
// ---------------------------------------------------------------------------

#[test]
fn multi_mib_file_arrives_intact() {
    let (home, agent, boss) = setup();
    let data = random_bytes(3 * 1024 * 1024 + 123, 0xF11E_5EED_0000_0003);
    let path = home.path().join("dossier.bin");
    std::fs::write(&path, &data).expect("write upload");

    let json = ok(home.run(&["--json", "send", "--file", path.to_str().unwrap(), "--addr", &boss.addr]));
    let sent: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("send --json ({e}): {json}"));
    assert_eq!(sent["status"], "stored");
    assert_eq!(sent["sent"], "dossier.bin");
    let reply = sent["reply"].as_str().expect("reply");
    assert!(reply.contains(&data.len().to_string()) && reply.contains("SHA-256 verified"), "{reply:?}");

    let files = agent_files(&home, agent);
    assert_eq!(files.len(), 1, "one file, no leftovers: {files:?}");
    // Stored under its file id only: the name lives encrypted in the database.
    assert!(!files[0].contains("dossier") && !files[0].starts_with('.'), "{files:?}");
    let raw = std::fs::read(home.path().join("files").join(agent.to_string()).join(&files[0])).expect("read");
    assert!(!raw.windows(64).any(|w| data.windows(64).next() == Some(w)), "the stored bytes are not the plaintext");
    let received = crate::support::stored_file(&home, agent, &files[0]);
    assert_eq!(received.len(), data.len());
    assert_eq!(sha256_hex(&received), sha256_hex(&data));

    let sha_in_db: String = db(&home).query_row("SELECT Sha256 FROM Files", [], |r| r.get(0)).expect("Files row");
    assert_eq!(sha_in_db, sha256_hex(&data));

    let entries = inbox(&home);
    let file = entries.iter().find(|e| e["kind"] == "file").expect("the file is listed");
    assert_eq!(file["content"], "dossier.bin");
    assert_eq!(file["size"], data.len() as u64);
    assert_eq!(file["stored_as"], format!("{agent}/{}", files[0]));
    assert_eq!(file["agent_id"], agent);
    let table = ok(home.run(&["boss", "inbox"]));
    assert!(table.contains("dossier.bin") && table.contains(&data.len().to_string()), "{table}");
}

// ---------------------------------------------------------------------------
// 4. Duplicates and replays
// ---------------------------------------------------------------------------

#[test]
fn an_ack_waits_for_its_commit_while_another_process_holds_the_write_lock() {
    // The Boss's writer sends the ACK itself after the group commit; the ACK
    // for `stored` is sealed before it. Another process (an `agent revoke`,
    // say) holds the write lock: the commit waits (within the busy timeout),
    // and so must the ACK.
    let (home, agent, boss) = setup();
    let key = agent_key(&home, agent);
    let id = random_id();
    let holder = Connection::open(home.db_path()).expect("open spyctl.db");
    holder.execute_batch("BEGIN IMMEDIATE").expect("take the write lock");
    let mut conn = RawClient::connect(&boss.addr);
    conn.send(protocol::format_request(agent, &text_token(&key, &id, "Only once it is on disk")).as_bytes());
    conn.stream().set_read_timeout(Some(Duration::from_millis(700))).expect("timeout");
    let mut first = [0u8; 1];
    match conn.stream().peek(&mut first) {
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
        other => panic!("an answer came while the commit could not happen: {other:?}"),
    }
    assert_eq!(stored_count(&home, agent, &id), 0);
    holder.execute_batch("ROLLBACK").expect("release the write lock");
    conn.stream().set_read_timeout(Some(Duration::from_secs(15))).expect("timeout");
    let (status, _) = open_ack(&key, &conn.read_reply(), &id);
    assert_eq!(status, AckStatus::Stored);
    assert_eq!(stored_count(&home, agent, &id), 1, "ACKed, so committed");
}

#[test]
fn resent_and_replayed_messages_are_stored_once() {
    let (home, agent, boss) = setup();
    let key = agent_key(&home, agent);
    let id = random_id();

    let mut conn = RawClient::connect(&boss.addr);
    let first = text_token(&key, &id, "Rendezvous at midnight");
    let (status, reply) = open_ack(&key, &conn.msg(agent, &first), &id);
    assert_eq!(status, AckStatus::Stored);
    assert_eq!(reply, good_work(FIELD_AGENT));

    // A retry: same id, re-sealed (a different token).
    let retry = text_token(&key, &id, "Rendezvous at midnight");
    assert_ne!(retry, first);
    let (status, _) = open_ack(&key, &conn.msg(agent, &retry), &id);
    assert_eq!(status, AckStatus::Duplicate);

    // A replay of the identical first line, from a new connection.
    let mut replayer = RawClient::connect(&boss.addr);
    let (status, _) = open_ack(&key, &replayer.msg(agent, &first), &id);
    assert_eq!(status, AckStatus::Duplicate);

    // The same id with other contents changes nothing either.
    let (status, _) = open_ack(&key, &conn.msg(agent, &text_token(&key, &id, "Abort")), &id);
    assert_eq!(status, AckStatus::Duplicate);

    assert_eq!(stored_count(&home, agent, &id), 1);
    assert_eq!(table_count(&home, "Messages"), 1);
    let stored: String = db(&home)
        .query_row("SELECT Token FROM Messages WHERE MessageId = ?1", [&id], |r| r.get(0))
        .expect("stored token");
    assert_eq!(stored, first, "the first token is what the Boss keeps");
    assert_eq!(inbox_texts(&inbox(&home)), ["Rendezvous at midnight"]);

    // A `spyctl send` after all that still stores a new message.
    home.login(FIELD_AGENT);
    ok(home.run(&["send", "Still here", "--addr", &boss.addr]));
    assert_eq!(table_count(&home, "Messages"), 2);
}

// ---------------------------------------------------------------------------
// 5. Freshness
// ---------------------------------------------------------------------------

#[test]
fn stale_and_future_tokens_are_refused_as_expired() {
    let (home, agent, boss) = setup();
    let key = agent_key(&home, agent);
    let mut conn = RawClient::connect(&boss.addr);
    let seal_at = |id: &str, when: u64| {
        key.seal_with(
            &protocol::encode_message(&Header { id: id.into(), kind: Kind::Text }, b"time-travel"),
            when,
            [7u8; 16],
        )
    };
    let now = unix_now();

    let old = random_id();
    let reply = conn.msg(agent, &seal_at(&old, now - 1000));
    assert!(reply.code() == Some(ErrorCode::Expired), "1000 s old: {reply:?}");
    let future = random_id();
    let reply = conn.msg(agent, &seal_at(&future, now + 3600));
    assert!(reply.code() == Some(ErrorCode::Expired), "an hour ahead: {reply:?}");

    // The window itself is open: a little old, or a little ahead (clock skew), is fine.
    let recent = random_id();
    assert_eq!(open_ack(&key, &conn.msg(agent, &seal_at(&recent, now - 200)), &recent).0, AckStatus::Stored);
    let skewed = random_id();
    assert_eq!(open_ack(&key, &conn.msg(agent, &seal_at(&skewed, now + 30)), &skewed).0, AckStatus::Stored);

    assert_eq!(stored_count(&home, agent, &old), 0);
    assert_eq!(stored_count(&home, agent, &future), 0);
    assert_eq!(table_count(&home, "Messages"), 2);
}

// ---------------------------------------------------------------------------
// 6. Forgeries and unknown agents
// ---------------------------------------------------------------------------

#[test]
fn tampered_tokens_and_unknown_agents_get_the_same_auth_error() {
    let (home, agent, boss) = setup();
    let key = agent_key(&home, agent);
    let mut conn = RawClient::connect(&boss.addr);
    let id = random_id();
    let token = text_token(&key, &id, "Authentic orders");
    let data_len = token.trim_end_matches('=').len();

    let mut replies = Vec::new();
    // One character changed: version, timestamp, IV, ciphertext and MAC regions.
    for position in [0, 5, 15, 40, data_len / 2, data_len - 20, data_len - 2] {
        let mut forged = token.clone().into_bytes();
        forged[position] = if forged[position] == b'A' { b'B' } else { b'A' };
        replies.push((format!("char {position} flipped"), conn.msg(agent, std::str::from_utf8(&forged).unwrap())));
    }
    // Unknown agent 9999: with a genuine token of another agent, and with a
    // valid-looking token under a random key.
    replies.push(("agent 9999, agent's token".into(), conn.msg(9999, &token)));
    let stranger = FernetKey::generate().expect("random key");
    replies.push(("agent 9999, random key".into(), conn.msg(9999, &text_token(&stranger, &id, "hi"))));
    // A known agent, the wrong key.
    replies.push(("right agent, wrong key".into(), conn.msg(agent, &text_token(&stranger, &id, "hi"))));

    let reference = &replies[0].1;
    assert!(reference.code() == Some(ErrorCode::Auth), "{reference:?}");
    for (what, reply) in &replies {
        assert_eq!(reply, reference, "{what}: must be indistinguishable from a bad MAC");
    }
    assert_eq!(table_count(&home, "Messages"), 0);

    // The untouched token still goes through on the same connection.
    assert_eq!(open_ack(&key, &conn.msg(agent, &token), &id).0, AckStatus::Stored);
    drop(boss);
}

/// Before its MAC is checked, a line costs the same for a known and an
/// unknown id: one read of the agent's key generation (one integer row
/// either way), a key derivation and a MAC check, and never a read of the
/// agent's row. Shown by taking the row's other columns away under the
/// running Boss: the generation read still works for both ids, so both bad
/// MACs get `auth`; an authentic line then reaches the row read, which fails.
#[test]
fn a_bad_mac_is_refused_before_the_agent_row_is_read() {
    let (home, agent, boss) = setup();
    let key = agent_key(&home, agent);
    let writer = Connection::open(home.db_path()).expect("open spyctl.db");
    writer.execute_batch("ALTER TABLE Agents RENAME COLUMN AgentAlias TO AliasAway").expect("rename");
    let mut conn = RawClient::connect(&boss.addr);
    let stranger = FernetKey::generate().expect("random key");
    for id in [agent, 999_999] {
        let reply = conn.msg(id, &text_token(&stranger, &random_id(), "probe"));
        assert_eq!(reply.code(), Some(ErrorCode::Auth), "agent {id}: {reply:?}");
    }
    // An authentic line does reach the row read, which fails: a column is gone.
    let reply = conn.msg(agent, &text_token(&key, &random_id(), "real"));
    assert_eq!(reply.code(), Some(ErrorCode::Internal), "{reply:?}");
    writer.execute_batch("ALTER TABLE Agents RENAME COLUMN AliasAway TO AgentAlias").expect("rename back");
    boss.stop_clean();
}

/// The Boss keeps agents' keys and checked rows between lines (issue 15);
/// a revocation committed by another process still refuses the very next
/// line from the old key, a text line and a file chunk alike, on a
/// connection whose earlier lines were accepted, and nothing of it is kept.
#[test]
fn a_revocation_in_another_process_refuses_the_next_line_of_a_running_boss() {
    let (home, agent, boss) = setup();
    let old = agent_key(&home, agent);
    let mut conn = RawClient::connect(&boss.addr);
    for text in ["first", "second"] {
        assert!(conn.msg(agent, &text_token(&old, &random_id(), text)).is_ack(), "{text}");
    }
    ok(home.run(&["agent", "revoke", &agent.to_string()]));
    let reply = conn.msg(agent, &text_token(&old, &random_id(), "after the revocation"));
    assert_eq!(reply.code(), Some(ErrorCode::Auth), "{reply:?}");
    let data = random_bytes(1000, 0x15);
    let reply = conn.msg(agent, &chunk_token(&old, &random_id(), 0, &data, None));
    assert_eq!(reply.code(), Some(ErrorCode::Auth), "{reply:?}");
    assert!(agent_files(&home, agent).is_empty(), "no chunk of the old key was written");
    let new = export_key(&home, agent, &home.path().join("new.key"));
    assert!(conn.msg(agent, &text_token(&new, &random_id(), "with the new key")).is_ack());
    assert_eq!(inbox_texts(&inbox(&home)), ["first", "second", "with the new key"]);
    boss.stop_clean();
}

/// A row changed without the key under a running Boss whose cache holds it
/// (here a raised level) is refused at the next line, as at the first.
#[test]
fn a_row_tampered_under_a_running_boss_is_refused_at_the_next_line() {
    let (home, agent, boss) = setup();
    let key = agent_key(&home, agent);
    let mut conn = RawClient::connect(&boss.addr);
    assert!(conn.msg(agent, &text_token(&key, &random_id(), "before")).is_ack());
    let writer = Connection::open(home.db_path()).expect("open spyctl.db");
    writer.execute("UPDATE Agents SET AgentSecurityLevel = 5 WHERE AgentId = ?1", [agent]).expect("raise");
    let reply = conn.msg(agent, &text_token(&key, &random_id(), "after"));
    assert_eq!(reply.code(), Some(ErrorCode::Auth), "{reply:?}");
    let stopped = boss.stop();
    assert!(stopped.log_tail.contains("integrity"), "the Boss logs why: {}", stopped.log_tail);
}

// ---------------------------------------------------------------------------
// 7. Garbage from one client does not disturb another
// ---------------------------------------------------------------------------

#[test]
fn garbage_gets_err_while_another_client_is_served() {
    let (home, agent, boss) = setup();
    let mut bad = RawClient::connect(&boss.addr);

    // Random bytes (no newline inside), then a newline.
    let mut noise: Vec<u8> = random_bytes(4096, 0xBAD_F00D).into_iter().filter(|b| *b != b'\n').collect();
    noise.push(b'\n');
    bad.send(&noise);
    assert!(bad.read_reply().code() == Some(ErrorCode::BadRequest));
    // Non-UTF-8 inside an otherwise well-formed request.
    bad.send(b"MSG 6 gAAAA\xff\xfe\xc3\x28\n");
    assert!(bad.read_reply().code() == Some(ErrorCode::BadRequest));
    for line in [&b"HELLO BOSS\n"[..], b"MSG\n", b"MSG 01 abc\n", b"MSG -6 abc\n", b"MSG 6\n", b"\n"] {
        let reply = bad.ask(line);
        assert!(reply.code() == Some(ErrorCode::BadRequest), "{:?} -> {reply:?}", String::from_utf8_lossy(line));
    }
    // Not a token at all, for a real agent: auth.
    assert!(bad.ask(format!("MSG {agent} not-a-token\n").as_bytes()).code() == Some(ErrorCode::Auth));

    // Start an oversized line and leave it hanging: the connection thread is
    // mid-line while a real `spyctl send` comes in.
    let big = vec![b'A'; MAX_LINE_BYTES + 10];
    bad.send(&big[..256 * 1024]);
    let out = ok(home.run(&["send", "Still operational", "--addr", &boss.addr]));
    assert!(out.contains("Good work"), "{out}");

    // Finish the oversized line: ERR too_long, then the Boss hangs up.
    let mut writer = bad.try_clone_stream();
    let rest = big[256 * 1024..].to_vec();
    let pusher = std::thread::spawn(move || {
        // The Boss stops reading at the cap, so this write may fail: that is the point.
        let _ = writer.write_all(&rest);
        let _ = writer.shutdown(Shutdown::Write);
    });
    let reply = bad.read_reply();
    assert!(reply.code() == Some(ErrorCode::TooLong), "{reply:?}");
    assert!(bad.is_closed(), "the Boss closes the connection after too_long");
    pusher.join().expect("pusher");

    // And the Boss still serves.
    ok(home.run(&["send", "After the storm", "--addr", &boss.addr]));
    boss.stop_clean();
    assert_eq!(inbox_texts(&inbox(&home)), ["Still operational", "After the storm"]);
}

#[test]
fn connection_cap_idle_timeout_and_line_deadline() {
    let home = TestHome::initialised();
    let agent = login_field_agent(&home);
    let boss = home.boss(&["--max-connections", "1", "--idle-timeout", "1", "--line-deadline", "1"]);
    // Exporting the key logs in as the director; `send` below is the field agent again.
    let key = agent_key(&home, agent);
    home.login(FIELD_AGENT);

    // One connection, live and accepted (a message stored): a newcomer cannot
    // take its slot. (An unproven one would be closed to make room.)
    let mut first = RawClient::connect(&boss.addr);
    let id = random_id();
    assert_eq!(open_ack(&key, &first.msg(agent, &text_token(&key, &id, "Holding")), &id).0, AckStatus::Stored);
    // A second one is turned away.
    let mut second = RawClient::connect(&boss.addr);
    assert!(second.read_reply().code() == Some(ErrorCode::Busy));
    assert!(second.is_closed());
    // The first goes idle past 1 s and is closed with a reason.
    assert_eq!(first.read_reply(), Answer::Err(ErrorCode::BadRequest, "idle timeout".into()));
    assert!(first.is_closed());

    // A line started but not finished within 1 s. The slot frees a moment after
    // the close above, so `busy` here only means "again".
    let mut tries = 0;
    let reply = loop {
        let mut slow = RawClient::connect(&boss.addr);
        slow.send(b"MSG 6 gAAAA");
        let reply = slow.read_reply();
        assert!(slow.is_closed());
        tries += 1;
        if reply.code() != Some(ErrorCode::Busy) || tries == 1000 {
            break reply;
        }
    };
    assert_eq!(reply, Answer::Err(ErrorCode::BadRequest, "line not completed in time".into()));

    // `busy` is retried by `spyctl send`; with the slot free it goes through.
    let out = ok(home.run(&["send", "One at a time", "--addr", &boss.addr]));
    assert!(out.contains("Good work"), "{out}");
    let boss_out = boss.stop_clean().stdout;
    assert!(boss_out.contains("refused as busy") && !boss_out.contains(" 0 refused"), "{boss_out}");
    assert!(inbox(&home).iter().all(|m| m["agent_id"].as_i64() == Some(agent)));
}

/// Lines the Boss refuses do not restart the idle timer; accepted ones do. A
/// client sending garbage every 0.4 s is closed about 1 s after it connected
/// (`--idle-timeout 1`), also when each write leaves the next line started;
/// one sending valid messages at the same pace keeps its connection for as
/// long as it likes.
#[test]
fn only_accepted_lines_keep_a_connection_past_the_idle_timeout() {
    let home = TestHome::initialised();
    let agent = login_field_agent(&home);
    let key = agent_key(&home, agent);
    let boss = home.boss(&["--idle-timeout", "1"]);
    let pace = Duration::from_millis(400);
    let bound = Duration::from_secs(5);

    // Writes `first`, then `then` every `pace`, one refused line each; returns
    // how long the Boss let the connection live.
    let addr = boss.addr.as_str();
    let garbage_sender = move |first: &'static [u8], then: &'static [u8]| {
        move || {
            let mut bad = RawClient::connect(addr);
            let started = Instant::now();
            let mut refused = 0;
            loop {
                assert!(started.elapsed() < bound, "still connected after {bound:?} ({refused} ERR answers)");
                // Once the Boss has hung up, the write or the read fails, or the
                // read finds the idle goodbye (or EOF) first.
                let chunk = if refused == 0 { first } else { then };
                if !bad.write(chunk) {
                    break;
                }
                match bad.read_reply() {
                    Answer::Closed => break,
                    Answer::Err(ErrorCode::BadRequest, text) if text == "idle timeout" => break,
                    reply => {
                        assert!(reply.code() == Some(ErrorCode::BadRequest), "{reply:?}");
                        refused += 1;
                    }
                }
                std::thread::sleep(pace);
            }
            assert!(refused >= 2, "the garbage lines were answered before the close: {refused}");
            assert!(bad.is_closed(), "the Boss closed the garbage sender");
            started.elapsed()
        }
    };

    std::thread::scope(|s| {
        // Whole lines; and lines that always leave the next one started, so
        // the Boss never waits for a line to begin.
        let garbage = s.spawn(garbage_sender(b"HELLO BOSS\n", b"HELLO BOSS\n"));
        let pipelined = s.spawn(garbage_sender(b"HELLO BOSS\nHEL", b"LO BOSS\nHEL"));

        // Valid messages at the same pace, over one connection, for 3 idle timeouts.
        let mut good = RawClient::connect(&boss.addr);
        let started = Instant::now();
        let mut sent = 0;
        while started.elapsed() < Duration::from_secs(3) {
            let id = random_id();
            let reply = good.msg(agent, &text_token(&key, &id, &format!("Still here, report {sent}")));
            assert_eq!(
                open_ack(&key, &reply, &id).0,
                AckStatus::Stored,
                "message {sent} after {:?}",
                started.elapsed()
            );
            sent += 1;
            std::thread::sleep(pace);
        }
        assert!(sent >= 6, "{sent} messages");

        for sender in [garbage, pipelined] {
            let closed_after = sender.join().expect("garbage sender");
            assert!(closed_after < bound, "{closed_after:?}");
        }
    });

    boss.stop_clean();
}

/// A `duplicate` ACK is not new work, so it does not restart the idle timer:
/// a connection that stores one message and then replays its line every
/// 0.3 s (as someone holding one captured line, or one agent's key, could)
/// is closed about 1 s after the message was stored (`--idle-timeout 1`).
#[test]
fn duplicates_do_not_keep_a_connection_past_the_idle_timeout() {
    let home = TestHome::initialised();
    let agent = login_field_agent(&home);
    let key = agent_key(&home, agent);
    let boss = home.boss(&["--idle-timeout", "1"]);
    let bound = Duration::from_secs(5);
    let mut conn = RawClient::connect(&boss.addr);
    let id = random_id();
    let line = protocol::format_request(agent, &text_token(&key, &id, "Once"));
    assert_eq!(open_ack(&key, &conn.ask(line.as_bytes()), &id).0, AckStatus::Stored);
    let stored_at = Instant::now();
    let mut duplicates = 0;
    loop {
        assert!(stored_at.elapsed() < bound, "still connected after {bound:?} ({duplicates} duplicate ACKs)");
        std::thread::sleep(Duration::from_millis(300));
        if !conn.write(line.as_bytes()) {
            break;
        }
        match conn.read_reply() {
            Answer::Closed => break,
            Answer::Err(ErrorCode::BadRequest, text) if text == "idle timeout" => break,
            reply => {
                assert_eq!(open_ack(&key, &reply, &id).0, AckStatus::Duplicate);
                duplicates += 1;
            }
        }
    }
    let lived = stored_at.elapsed();
    println!(
        "FIGURE duplicates: closed {lived:?} after the stored message, {duplicates} duplicate ACKs (--idle-timeout 1)"
    );
    assert!(duplicates >= 2, "the replays were answered before the close: {duplicates}");
    assert!(lived < Duration::from_millis(2500), "closed {lived:?} after the last stored message");
    assert_eq!(stored_count(&home, agent, &id), 1);
    boss.stop_clean();
}

/// `send` against a Boss at its connection cap: the hint says so, instead of
/// suggesting the Boss is not running.
#[test]
fn a_busy_boss_gets_its_own_hint() {
    let home = TestHome::initialised();
    let agent = login_field_agent(&home);
    let key = agent_key(&home, agent);
    let boss = home.boss(&["--max-connections", "1"]);
    // Hold the only slot with an accepted connection (an unproven one would
    // be closed to make room for the sender).
    let mut holder = RawClient::connect(&boss.addr);
    let id = random_id();
    assert_eq!(open_ack(&key, &holder.msg(agent, &text_token(&key, &id, "Mine")), &id).0, AckStatus::Stored);

    let err = fails(home.run(&["send", "Let me in", "--addr", &boss.addr, "--attempts", "2", "--timeout", "2"]), 1);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line:\n{err}");
    assert!(lines[0].contains("busy"), "names the refusal: {err}");
    assert!(lines[0].contains("connection limit") && lines[0].contains("--max-connections"), "{err}");
    assert!(!lines[0].contains("boss serve"), "the Boss is running: {err}");
    drop(holder);
    boss.stop_clean();
    assert_eq!(table_count(&home, "Messages"), 1, "only the holder's message");
}

// ---------------------------------------------------------------------------
// 8. Shutdown, and no server at all
// ---------------------------------------------------------------------------

#[test]
fn sigterm_stops_cleanly_after_committing() {
    let (home, agent, boss) = setup();
    let key = agent_key(&home, agent);
    let id = random_id();
    // ACKed over a connection that is still open when SIGTERM arrives.
    let mut conn = RawClient::connect(&boss.addr);
    assert_eq!(open_ack(&key, &conn.msg(agent, &text_token(&key, &id, "Last words")), &id).0, AckStatus::Stored);

    let stopped = boss.stop();
    assert_eq!(stopped.status.code(), Some(0), "exit status; log:\n{}", stopped.log_tail);
    assert!(stopped.stdout.contains("Boss stopped: 1 connection(s), 1 line(s)"), "{}", stopped.stdout);
    assert!(stopped.panics.is_empty(), "{:?}", stopped.panics);
    assert!(conn.is_closed(), "open connections are closed at shutdown");

    assert_eq!(stored_count(&home, agent, &id), 1);
    assert_eq!(inbox_texts(&inbox(&home)), ["Last words"]);
}

#[test]
fn a_line_in_flight_at_sigterm_is_finished_and_stored() {
    let (home, agent, boss) = setup();
    let key = agent_key(&home, agent);
    let id = random_id();
    let line = protocol::format_request(agent, &text_token(&key, &id, "Caught in the door"));
    let mut conn = RawClient::connect(&boss.addr);
    // A first round trip: the connection is accepted and its thread is blocked in
    // read(), so the partial line below is consumed at once, before any stop check.
    // (Bytes the thread has not read yet when the stop flag is seen are dropped
    // with the connection.)
    let warm = random_id();
    assert_eq!(open_ack(&key, &conn.msg(agent, &text_token(&key, &warm, "Warm-up")), &warm).0, AckStatus::Stored);
    conn.send(&line.as_bytes()[..20]);

    boss.signal("TERM");
    // Give the signal a moment to land before the line is finished. Either order
    // must end the same way (ACK, stored, exit 0); the pause makes the
    // interesting order (stop flag already set) the likely one.
    std::thread::sleep(Duration::from_millis(300));
    conn.send(&line.as_bytes()[20..]);
    assert_eq!(open_ack(&key, &conn.read_reply(), &id).0, AckStatus::Stored);
    assert!(conn.is_closed());

    // stop() signals again (harmless to a process already on its way out) and reaps it.
    let stopped = boss.stop();
    assert_eq!(stopped.status.code(), Some(0), "{}", stopped.log_tail);
    assert_eq!(stored_count(&home, agent, &id), 1);
}

#[test]
fn send_without_a_server_fails_with_one_clear_line() {
    let home = TestHome::initialised();
    login_field_agent(&home);
    let addr = format!("127.0.0.1:{}", free_port());
    let err = fails(home.run(&["send", "Anyone there?", "--addr", &addr]), 1);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line:\n{err}");
    assert!(lines[0].contains(&addr), "names the address: {err}");
    assert!(lines[0].contains("boss serve"), "says how to start the Boss: {err}");
    assert_eq!(table_count(&home, "Messages"), 0);
}

// ---------------------------------------------------------------------------
// 9. Another machine: an exported key file
// ---------------------------------------------------------------------------

#[test]
fn exported_key_works_from_another_home() {
    let (home, agent, boss) = setup();
    let elsewhere = TestHome::new();
    let key_path = elsewhere.path().join("agent.key");
    export_key(&home, agent, &key_path);
    let key_arg = key_path.to_str().unwrap();
    let agent_arg = agent.to_string();

    let out = ok(elsewhere.run(&[
        "send",
        "From the field laptop",
        "--agent-id",
        &agent_arg,
        "--key-file",
        key_arg,
        "--addr",
        &boss.addr,
    ]));
    assert!(out.contains(&good_work(FIELD_AGENT)) && out.contains("stored"), "{out}");
    assert!(!elsewhere.db_path().exists(), "the other machine needs no database");
    assert!(!elsewhere.path().join("master.key").exists(), "nor a master key");

    // A key file others can read is refused, with the fix.
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = fails(
        elsewhere.run(&["send", "leaky", "--agent-id", &agent_arg, "--key-file", key_arg, "--addr", &boss.addr]),
        1,
    );
    assert!(err.contains("chmod 600"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).expect("chmod");

    // The right key under another agent id, and a wrong key: auth refusals.
    let wrong_id = if agent == 1 { "2" } else { "1" };
    let err = fails(
        elsewhere.run(&["send", "imposter", "--agent-id", wrong_id, "--key-file", key_arg, "--addr", &boss.addr]),
        1,
    );
    assert!(err.contains("auth"), "{err}");
    let wrong_key = elsewhere.path().join("wrong.key");
    std::fs::write(&wrong_key, format!("{}\n", FernetKey::generate().unwrap().to_base64().as_str())).unwrap();
    std::fs::set_permissions(&wrong_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = fails(
        elsewhere.run(&[
            "send",
            "imposter",
            "--agent-id",
            &agent_arg,
            "--key-file",
            wrong_key.to_str().unwrap(),
            "--addr",
            &boss.addr,
        ]),
        1,
    );
    assert!(err.contains("auth"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    assert_eq!(inbox_texts(&inbox(&home)), ["From the field laptop"]);
}

// ---------------------------------------------------------------------------
// 10. A file cut off midway
// ---------------------------------------------------------------------------

fn chunk_token(key: &FernetKey, file_id: &str, offset: usize, data: &[u8], sha256: Option<String>) -> String {
    let end = (offset + CHUNK_BYTES).min(data.len());
    let header = Header {
        id: random_id(),
        kind: Kind::FileChunk(FileChunk {
            file_id: file_id.into(),
            name: "plans.pdf".into(),
            offset: offset as u64,
            size: data.len() as u64,
            sha256,
        }),
    };
    key.seal(&protocol::encode_message(&header, &data[offset..end]))
}

#[test]
fn a_file_cut_off_midway_never_shows_as_received() {
    let (home, agent, boss) = setup();
    let key = agent_key(&home, agent);
    let data = random_bytes(CHUNK_BYTES + 1000, 0xC0FF_EE00_0000_0010);
    let file_id = random_id();

    let mut conn = RawClient::connect(&boss.addr);
    let token = chunk_token(&key, &file_id, 0, &data, None);
    let reply = conn.msg(agent, &token);
    assert!(reply.is_ack(), "{reply:?}");
    drop(conn); // the sender vanishes before the last chunk

    assert_eq!(
        agent_files(&home, agent),
        [format!(".{file_id}.part"), format!(".{file_id}.pin")],
        "only the partial file and its pinned size and name"
    );
    assert!(inbox(&home).is_empty(), "a half file is not in the inbox");
    assert_eq!(table_count(&home, "Files"), 0);

    // A chunk past what the Boss holds is refused.
    let mut conn = RawClient::connect(&boss.addr);
    let other_id = random_id();
    let reply = conn.msg(agent, &chunk_token(&key, &other_id, CHUNK_BYTES, &data, Some(sha256_hex(&data))));
    assert!(reply.code() == Some(ErrorCode::BadRequest), "{reply:?}");

    // The last chunk with the wrong hash: refused, the partial file dropped.
    let reply = conn.msg(agent, &chunk_token(&key, &file_id, CHUNK_BYTES, &data, Some(sha256_hex(b"other"))));
    assert!(reply.code() == Some(ErrorCode::BadRequest), "{reply:?}");
    assert!(agent_files(&home, agent).is_empty(), "{:?}", agent_files(&home, agent));
    assert!(inbox(&home).is_empty());

    // Sent again whole, with a new file id, it arrives.
    let fresh = random_id();
    assert!(conn.msg(agent, &chunk_token(&key, &fresh, 0, &data, None)).is_ack());
    let reply = conn.msg(agent, &chunk_token(&key, &fresh, CHUNK_BYTES, &data, Some(sha256_hex(&data))));
    assert!(reply.is_ack(), "{reply:?}");
    assert_eq!(agent_files(&home, agent), std::slice::from_ref(&fresh));
    let entries = inbox(&home);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["content"], "plans.pdf");
    assert_eq!(entries[0]["size"], data.len() as u64);
    drop(boss);
}

// ---------------------------------------------------------------------------
// 11. A client written from PROTOCOL.md, in Python
// ---------------------------------------------------------------------------

#[test]
fn python_client_from_protocol_md_gets_an_ack() {
    let (home, agent, boss) = setup();
    let key_path = home.path().join("python-agent.key");
    export_key(&home, agent, &key_path);
    let text = "Greetings from Python \u{2615}";

    let script = PathBuf::from(ROOT).join("tests/python/boss_client.py");
    let out = Command::new(crate::python_interop::python())
        .arg(&script)
        .args([&boss.addr, &agent.to_string(), key_path.to_str().unwrap(), text])
        .env_remove("PYTHONPATH")
        .env("PYTHONNOUSERSITE", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run boss_client.py");
    let printed = ok(out);
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines, ["stored", good_work(FIELD_AGENT).as_str()], "{printed}");
    assert_eq!(inbox_texts(&inbox(&home)), [text]);

    // The same client reports a refusal by its code.
    let out = Command::new(crate::python_interop::python())
        .arg(&script)
        .args([&boss.addr, "9999", key_path.to_str().unwrap(), "who am I"])
        .stdin(Stdio::null())
        .output()
        .expect("run boss_client.py");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("ERR auth"), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());
    drop(boss);
}

/// A file over `--max-file-bytes` gets `too_long` on its first chunk and the
/// connection stays open (only a line over 1 MiB closes it).
#[test]
fn a_file_over_the_limit_keeps_the_connection_as_protocol_md_says() {
    let home = TestHome::initialised();
    let agent = login_field_agent(&home);
    let key = agent_key(&home, agent);
    let boss = home.boss(&["--max-file-bytes", "100"]);
    let mut conn = RawClient::connect(&boss.addr);
    let data = random_bytes(1000, 0x5EED_0000_0000_0021);
    let reply = conn.msg(agent, &chunk_token(&key, &random_id(), 0, &data, Some(sha256_hex(&data))));
    assert_eq!(reply.code(), Some(ErrorCode::TooLong), "{reply:?}");
    let id = random_id();
    assert_eq!(open_ack(&key, &conn.msg(agent, &text_token(&key, &id, "Still open")), &id).0, AckStatus::Stored);
    boss.stop_clean();
}

/// Once a file is complete, its first chunk resent gets `duplicate`; a text
/// id is deduplicated after its token's TTL too (`--ttl 1`, resent re-sealed
/// 2 s later).
#[test]
fn completed_files_and_old_text_ids_are_duplicates_as_protocol_md_says() {
    let home = TestHome::initialised();
    let agent = login_field_agent(&home);
    let key = agent_key(&home, agent);
    let boss = home.boss(&["--ttl", "1"]);
    let mut conn = RawClient::connect(&boss.addr);
    let id = random_id();
    assert_eq!(open_ack(&key, &conn.msg(agent, &text_token(&key, &id, "First")), &id).0, AckStatus::Stored);

    let data = random_bytes(CHUNK_BYTES + 10, 0x5EED_0000_0000_0022);
    let file_id = random_id();
    assert!(conn.msg(agent, &chunk_token(&key, &file_id, 0, &data, None)).is_ack());
    let last = chunk_token(&key, &file_id, CHUNK_BYTES, &data, Some(sha256_hex(&data)));
    assert!(conn.msg(agent, &last).is_ack());
    let first_again = chunk_token(&key, &file_id, 0, &data, None);
    let opened = match conn.msg(agent, &first_again) {
        Answer::Ack(token) => key.open(&token, None).expect("ACK opens"),
        other => panic!("expected an ACK, got {other:?}"),
    };
    assert_eq!(protocol::decode_ack(&opened.plaintext).expect("ACK").0.status, AckStatus::Duplicate);

    std::thread::sleep(Duration::from_secs(2));
    let again = text_token(&key, &id, "First, again");
    assert_eq!(open_ack(&key, &conn.msg(agent, &again), &id).0, AckStatus::Duplicate);
    assert_eq!(stored_count(&home, agent, &id), 1);
    boss.stop_clean();
}

#[test]
fn a_replayed_earlier_chunk_does_not_spoil_the_upload() {
    let (home, agent, boss) = setup();
    let key = agent_key(&home, agent);
    let data = random_bytes(2 * CHUNK_BYTES + 777, 0x5EED_0000_0000_0011);
    let file_id = random_id();
    let mut conn = RawClient::connect(&boss.addr);

    let first = chunk_token(&key, &file_id, 0, &data, None);
    assert!(conn.msg(agent, &first).is_ack());
    assert!(conn.msg(agent, &chunk_token(&key, &file_id, CHUNK_BYTES, &data, None)).is_ack());
    // Someone replays the first chunk's line (a valid, fresh token): it must change nothing.
    let mut replayer = RawClient::connect(&boss.addr);
    assert!(replayer.msg(agent, &first).is_ack());
    // The sender carries on with the last chunk.
    let reply = conn.msg(agent, &chunk_token(&key, &file_id, 2 * CHUNK_BYTES, &data, Some(sha256_hex(&data))));
    assert!(reply.is_ack(), "the upload was spoiled by a replay: {reply:?}");

    let files = agent_files(&home, agent);
    assert_eq!(files, [file_id.to_string()]);
    let received = crate::support::stored_file(&home, agent, &files[0]);
    assert_eq!(sha256_hex(&received), sha256_hex(&data));
    assert_eq!(inbox(&home).len(), 1);
    drop(boss);
}

#[test]
fn pipelined_and_concurrent_senders_are_all_stored_once() {
    let (home, agent, boss) = setup();
    let key = std::sync::Arc::new(agent_key(&home, agent));

    // Pipelining: three requests in one write, three ACKs back in request order.
    let ids: Vec<String> = (0..3).map(|_| random_id()).collect();
    let batch: String = ids
        .iter()
        .map(|id| protocol::format_request(agent, &text_token(&key, id, &format!("pipelined {id}"))))
        .collect();
    let mut conn = RawClient::connect(&boss.addr);
    conn.send(batch.as_bytes());
    for id in &ids {
        assert_eq!(open_ack(&key, &conn.read_reply(), id).0, AckStatus::Stored);
    }

    // One write mixing a new message, garbage, the same message again and a
    // bad MAC: the Boss answers them together (one commit) but each in order,
    // and the repeat inside the same batch is a duplicate.
    let fresh = random_id();
    let token = text_token(&key, &fresh, "mixed batch");
    let mut tampered = token.clone().into_bytes();
    let mid = tampered.len() / 2;
    tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
    let mixed = format!(
        "{}garbage\n{}{}",
        protocol::format_request(agent, &token),
        protocol::format_request(agent, &text_token(&key, &fresh, "mixed batch")),
        protocol::format_request(agent, &String::from_utf8(tampered).expect("ascii")),
    );
    conn.send(mixed.as_bytes());
    assert_eq!(open_ack(&key, &conn.read_reply(), &fresh).0, AckStatus::Stored);
    assert!(conn.read_reply().code() == Some(ErrorCode::BadRequest));
    assert_eq!(open_ack(&key, &conn.read_reply(), &fresh).0, AckStatus::Duplicate);
    assert!(conn.read_reply().code() == Some(ErrorCode::Auth));

    // Eight connections at once, 25 messages each, every id sent twice.
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (key, addr) = (key.clone(), boss.addr.clone());
            std::thread::spawn(move || {
                let mut conn = RawClient::connect(&addr);
                for i in 0..25 {
                    let id = format!("t{t}-m{i}");
                    let first = open_ack(&key, &conn.msg(agent, &text_token(&key, &id, &id)), &id).0;
                    let again = open_ack(&key, &conn.msg(agent, &text_token(&key, &id, &id)), &id).0;
                    assert_eq!((first, again), (AckStatus::Stored, AckStatus::Duplicate), "{id}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("sender thread");
    }
    // 3 pipelined + 1 from the mixed batch + 8 x 25.
    assert_eq!(table_count(&home, "Messages"), 3 + 1 + 8 * 25);
    let out = boss.stop_clean().stdout;
    assert!(out.contains("9 connection(s), 407 line(s)"), "{out}");
}

/// The README's first command: the whole tour runs and exits 0, through
/// every step, including v2's listen, chat and the resumed upload (each
/// step fails the demo itself if it does not behave).
#[test]
fn the_demo_tours_every_step_and_exits_zero() {
    let home = TestHome::new();
    let out = ok(home.run(&["demo"]));
    for step in 1..=18 {
        assert!(out.contains(&format!("Step {step}:")), "step {step} missing:\n{out}");
    }
    for seen in [
        "queued for agent",
        "agent 6's listener: order from agent 1: Meet at the bridge at midnight.",
        "[director 1] Report your position.",
        "[agent 6] At the safe house. All quiet.",
        "Resuming at byte",
        "File received: 4194304 bytes, SHA-256 verified.",
        "verified ",
    ] {
        assert!(out.contains(seen), "{seen:?} missing:\n{out}");
    }
}
