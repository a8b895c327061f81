//! Files against replays and lies: a chunk of a file already received is
//! answered from its stored record (no read, no hash: the stored file can even
//! be gone), the first chunk pins the size and name, and the 512 KiB chunk
//! cap is enforced.

use sha2::{Digest, Sha256};
use spyctl::crypto::FernetKey;
use spyctl::net::ids::random_id;
use spyctl::net::protocol::{self, CHUNK_BYTES, ErrorCode, FileChunk, Header, Kind};

use crate::support::{Answer, DIRECTOR, FIELD_AGENT, RawClient, TestHome, ok};

/// The field agent's id and exported wire key, and a running Boss.
fn setup() -> (TestHome, i64, FernetKey, crate::support::Boss) {
    let home = TestHome::initialised();
    home.login(FIELD_AGENT);
    let who: serde_json::Value = serde_json::from_str(&ok(home.run(&["--json", "whoami"]))).expect("whoami");
    let agent = who["agent"]["id"].as_i64().expect("id");
    home.login(DIRECTOR);
    let out = home.path().join("agent.key");
    ok(home.run(&["agent", "key", "export", &agent.to_string(), "--out", out.to_str().expect("utf-8")]));
    let key = FernetKey::from_base64(&std::fs::read_to_string(out).expect("key")).expect("key");
    let boss = home.boss(&[]);
    (home, agent, key, boss)
}

fn chunk_line(key: &FernetKey, agent: i64, file: FileChunk, body: &[u8]) -> String {
    let header = Header { id: random_id(), kind: Kind::FileChunk(file) };
    protocol::format_request(agent, &key.seal(&protocol::encode_message(&header, body)))
}

fn whole(file_id: &str, data: &[u8]) -> FileChunk {
    FileChunk {
        file_id: file_id.into(),
        name: "report.txt".into(),
        offset: 0,
        size: data.len() as u64,
        sha256: Some(hex::encode(Sha256::digest(data))),
    }
}

#[test]
fn a_replayed_chunk_of_a_received_file_is_answered_from_its_record() {
    let (home, agent, key, boss) = setup();
    let data = b"the whole file, in one chunk".to_vec();
    let line = chunk_line(&key, agent, whole("done1", &data), &data);
    let mut raw = RawClient::connect(&boss.addr);
    assert!(raw.ask(line.as_bytes()).is_ack(), "stored");
    // The stored file is gone (moved away by the operator, say): a replay
    // that re-read or re-hashed it would fail; one answered from the row does not.
    let stored = home.path().join(format!("files/{agent}/done1"));
    std::fs::remove_file(&stored).expect("move the stored file away");
    let Answer::Ack(token) = raw.ask(line.as_bytes()) else { panic!("the replay was not acknowledged") };
    let opened = key.open(&token, None).expect("ACK under the agent's key");
    let (header, reply) = protocol::decode_ack(&opened.plaintext).expect("ack");
    assert_eq!(header.status, protocol::AckStatus::Duplicate, "{reply}");
    assert!(reply.contains(&format!("{} bytes", data.len())), "{reply}");
    assert!(!stored.exists(), "the replay wrote nothing");
    boss.stop();
}

#[test]
fn later_chunks_must_agree_with_the_first_and_chunks_are_capped() {
    let (_home, agent, key, boss) = setup();
    let mut raw = RawClient::connect(&boss.addr);
    let data = vec![42u8; 20];
    let first = FileChunk { sha256: None, ..whole("pinned", &data) };
    assert!(raw.ask(chunk_line(&key, agent, first, &data[..10]).as_bytes()).is_ack());
    // The last chunk claims the file is 600,000 bytes long: refused.
    let liar = FileChunk { offset: 10, size: 600_000, ..whole("pinned", &data) };
    let answer = raw.ask(chunk_line(&key, agent, liar, &data[10..]).as_bytes());
    assert_eq!(answer.code(), Some(ErrorCode::BadRequest), "{answer:?}");
    // A 600 KiB chunk is over the cap: refused, nothing stored.
    let big = vec![1u8; 600 * 1024];
    let answer = raw.ask(chunk_line(&key, agent, whole("big", &big), &big).as_bytes());
    assert_eq!(answer.code(), Some(ErrorCode::BadRequest), "{answer:?}");
    assert!(big.len() > CHUNK_BYTES);
    // The honest last chunk still completes the pinned upload.
    let honest = FileChunk { offset: 10, ..whole("pinned", &data) };
    assert!(raw.ask(chunk_line(&key, agent, honest, &data[10..]).as_bytes()).is_ack());
    boss.stop();
}

#[test]
fn received_files_are_encrypted_at_rest_and_leave_only_through_inbox_get() {
    let (home, agent, _key, boss) = setup();
    let plans = home.path().join("plans.txt");
    let content = "Operation Lighthouse: the drop is at pier 9, midnight.\n".repeat(20_000);
    std::fs::write(&plans, &content).expect("write plans");
    home.login(FIELD_AGENT);
    let sent: serde_json::Value = serde_json::from_str(&ok(home.run(&[
        "--json",
        "send",
        "--addr",
        &boss.addr,
        "--file",
        plans.to_str().expect("utf-8"),
    ])))
    .expect("json");
    assert_eq!(sent["status"], "stored");
    boss.stop();

    // Nothing under files/ holds the plaintext, or any 32-byte piece of it.
    let stored_dir = home.path().join(format!("files/{agent}"));
    let names: Vec<_> =
        std::fs::read_dir(&stored_dir).expect("files/<agent>").map(|e| e.expect("entry").path()).collect();
    assert_eq!(names.len(), 1, "{names:?}");
    let raw = std::fs::read(&names[0]).expect("stored");
    assert!(!raw.windows(32).any(|w| w == &content.as_bytes()[..32]), "plaintext under files/");
    let id = names[0].file_name().and_then(|n| n.to_str()).expect("id").to_string();

    home.login(DIRECTOR);
    let out = home.path().join("exported.txt");
    let out_str = out.to_str().expect("utf-8");
    let said = ok(home.run(&["boss", "inbox", "get", &id, "--out", out_str]));
    assert!(said.contains("verified"), "{said}");
    assert_eq!(std::fs::read_to_string(&out).expect("exported"), content);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&out).expect("meta").permissions().mode() & 0o777, 0o600);
    let err = crate::support::fails(home.run(&["boss", "inbox", "get", &id, "--out", out_str]), 1);
    assert!(err.contains("exists"), "{err}");

    // One flipped byte in the stored ciphertext: refused, nothing left behind.
    let mut flipped = raw.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    std::fs::write(&names[0], &flipped).expect("flip");
    let err = crate::support::fails(home.run(&["boss", "inbox", "get", &id, "--out", out_str, "--force"]), 1);
    assert!(err.contains("integrity"), "{err}");
    assert!(!out.exists(), "nothing is left at PATH");

    // Only directors export.
    home.login(FIELD_AGENT);
    let err = crate::support::fails(home.run(&["boss", "inbox", "get", &id, "--out", out_str]), 1);
    assert!(err.contains("refused"), "{err}");
}

fn text_line(key: &FernetKey, agent: i64, text: &str) -> String {
    let header = Header { id: random_id(), kind: Kind::Text };
    protocol::format_request(agent, &key.seal(&protocol::encode_message(&header, text.as_bytes())))
}

fn first_chunk(file_id: &str, size: u64) -> FileChunk {
    FileChunk { file_id: file_id.into(), name: "big.bin".into(), offset: 0, size, sha256: None }
}

/// The field agent's id and key, and a Boss started with `flags`.
fn setup_with(flags: &[&str]) -> (TestHome, i64, FernetKey, crate::support::Boss) {
    let (home, agent, key, boss) = setup();
    boss.stop();
    let boss = home.boss(flags);
    (home, agent, key, boss)
}

#[test]
fn quotas_refuse_a_new_upload_with_forbidden_naming_the_flag() {
    let (_home, agent, key, boss) =
        setup_with(&["--max-stored-bytes", "2500000", "--max-partial-uploads", "3", "--min-free-bytes", "0"]);
    let mut raw = RawClient::connect(&boss.addr);
    let body = [1u8; 10];
    for id in ["q1", "q2"] {
        assert!(raw.ask(chunk_line(&key, agent, first_chunk(id, 1_000_000), &body).as_bytes()).is_ack(), "{id}");
    }
    // 2,000,000 pinned + 1,000,000 more would pass 2,500,000.
    let answer = raw.ask(chunk_line(&key, agent, first_chunk("q3", 1_000_000), &body).as_bytes());
    assert_eq!(answer.code(), Some(ErrorCode::Forbidden), "{answer:?}");
    assert!(format!("{answer:?}").contains("--max-stored-bytes"), "{answer:?}");
    // A small third upload fits the bytes; a fourth passes the count.
    assert!(raw.ask(chunk_line(&key, agent, first_chunk("q4", 100), &body).as_bytes()).is_ack());
    let answer = raw.ask(chunk_line(&key, agent, first_chunk("q5", 100), &body).as_bytes());
    assert_eq!(answer.code(), Some(ErrorCode::Forbidden), "{answer:?}");
    assert!(format!("{answer:?}").contains("--max-partial-uploads"), "{answer:?}");
    // A later chunk of an upload already admitted still goes on.
    let next = FileChunk { offset: 10, ..first_chunk("q1", 1_000_000) };
    assert!(raw.ask(chunk_line(&key, agent, next, &body).as_bytes()).is_ack());
    assert!(raw.ask(text_line(&key, agent, "quota full, still talking").as_bytes()).is_ack());
    assert!(boss.stop().panics.is_empty());
}

#[test]
fn below_the_free_space_guard_uploads_are_refused_and_text_still_works() {
    // More free space than any test disk has: the guard is always hit.
    let (_home, agent, key, boss) = setup_with(&["--min-free-bytes", "9000000000000000000"]);
    let mut raw = RawClient::connect(&boss.addr);
    let data = b"a small file".to_vec();
    let answer = raw.ask(chunk_line(&key, agent, whole("nospace", &data), &data).as_bytes());
    assert_eq!(answer.code(), Some(ErrorCode::Forbidden), "{answer:?}");
    assert!(format!("{answer:?}").contains("--min-free-bytes"), "{answer:?}");
    assert!(raw.ask(text_line(&key, agent, "the disk is full but I am not").as_bytes()).is_ack());
    assert!(boss.stop().panics.is_empty());
}

#[test]
fn an_abandoned_upload_expires_while_the_boss_runs() {
    let (home, agent, key, boss) = setup_with(&["--partial-expiry", "1", "--min-free-bytes", "0"]);
    let mut raw = RawClient::connect(&boss.addr);
    assert!(raw.ask(chunk_line(&key, agent, first_chunk("gone", 1000), &[1u8; 10]).as_bytes()).is_ack());
    let part = home.path().join(format!("files/{agent}/.gone.part"));
    let pin = home.path().join(format!("files/{agent}/.gone.pin"));
    assert!(part.exists() && pin.exists());
    // Expiry 1 s, swept every 250 ms: gone within a few seconds, Boss still up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while (part.exists() || pin.exists()) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!part.exists() && !pin.exists(), "the abandoned upload was not swept");
    assert!(boss.stop().panics.is_empty());
}
