//! Resumable files (issue 14, part 5) end to end: a Boss home and a separate
//! joined agent home, real `boss serve` and `send --file` processes on
//! loopback, and `kill -9` of either side in the middle of an upload. The
//! next `send --file` of the same file asks the Boss for the committed offset
//! and goes on from there; what it re-sends is bounded by what was in flight;
//! the stored file's SHA-256 is the local file's; the inbox holds one file.
//! A file changed between attempts starts over under a new id, and an offset
//! query without the agent's key learns nothing and holds up nobody.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use serde_json::Value;
use sha2::{Digest, Sha256};
use spyctl::crypto::FernetKey;
use spyctl::net::client::FILE_WINDOW;
use spyctl::net::ids::random_id;
use spyctl::net::protocol::{self, CHUNK_BYTES, ErrorCode, Header, Kind};

use crate::identities::enrolled;
use crate::support::*;

pub(crate) const AGENT: i64 = 6;

/// A file of `len` seeded random bytes in the agent's home.
pub(crate) fn local_file(agent: &TestHome, len: usize, seed: u64) -> (PathBuf, Vec<u8>) {
    let data = random_bytes(len, seed);
    let path = agent.path().join("intel.bin");
    std::fs::write(&path, &data).expect("write the file");
    (path, data)
}

/// `send --file` as a child process, its client log (each chunk queued) in `log`.
fn spawn_send(agent: &TestHome, file: &Path, addr: &str, log: &Path) -> Child {
    agent
        .cmd(&["--json", "send", "--file", file.to_str().expect("utf-8"), "--addr", addr])
        .env("RUST_LOG", "spyctl::net::client=debug")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("log"))
        .spawn()
        .expect("spawn send")
}

/// Bytes in agent 6's partial uploads under the Boss's `files/` (sealed:
/// a little more than the plaintext).
pub(crate) fn partial_bytes(boss_home: &TestHome) -> u64 {
    let dir = boss_home.path().join(format!("files/{AGENT}"));
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    })
}

/// Waits until the Boss holds `bytes` more of partial uploads than it did
/// when the sender started (`before`); false if the sender exited first or
/// 60 s passed.
pub(crate) fn wait_for_partial(boss_home: &TestHome, sender: &mut Child, before: u64, bytes: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if partial_bytes(boss_home) >= before + bytes {
            return true;
        }
        if sender.try_wait().expect("try_wait").is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

/// Waits until the Boss's partial uploads have not grown for 300 ms (at
/// most 10 s): whatever was in flight when a sender died has landed.
pub(crate) fn wait_until_settled(boss_home: &TestHome) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut last, mut since) = (partial_bytes(boss_home), Instant::now());
    while Instant::now() < deadline && since.elapsed() < Duration::from_millis(300) {
        std::thread::sleep(Duration::from_millis(20));
        let now = partial_bytes(boss_home);
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
}

/// The end of the last chunk the killed sender queued (each is written to
/// the socket right after): an upper bound of what it put on the wire.
pub(crate) fn last_queued_end(log: &Path) -> u64 {
    std::fs::read_to_string(log)
        .expect("log")
        .lines()
        .filter(|l| l.contains("file chunk queued"))
        .filter_map(|l| l.split("end=").nth(1)?.split_whitespace().next()?.parse().ok())
        .max()
        .unwrap_or(0)
}

pub(crate) fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs `send --file` to the end and returns its JSON.
fn send_to_end(agent: &TestHome, file: &Path, addr: &str) -> Value {
    serde_json::from_str(&ok(agent.run(&["--json", "send", "--file", file.to_str().expect("utf-8"), "--addr", addr])))
        .expect("send --json")
}

/// Agent 6's recorded files: (file id, size, SHA-256).
pub(crate) fn recorded(home: &TestHome) -> Vec<(String, i64, String)> {
    let conn = Connection::open(home.db_path()).expect("open");
    let mut stmt = conn.prepare("SELECT FileId, Size, Sha256 FROM Files WHERE AgentId = ?1").expect("prepare");
    stmt.query_map([AGENT], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect()
}

/// The one recorded file is `data`, byte for byte, as `boss inbox` lists it.
#[track_caller]
pub(crate) fn the_one_file_is(home: &TestHome, data: &[u8]) {
    let files = recorded(home);
    assert_eq!(files.len(), 1, "{files:?}");
    let (file_id, size, sha256) = &files[0];
    assert_eq!(*size as usize, data.len());
    assert_eq!(*sha256, hex::encode(Sha256::digest(data)));
    let stored = stored_file(home, AGENT, file_id);
    assert!(stored == data, "the stored file differs from the sent one");
    let inbox: Value = serde_json::from_str(&ok(home.run(&["--json", "boss", "inbox", "--all"]))).expect("inbox");
    let listed = inbox.as_array().expect("inbox").iter().filter(|m| m["id"] == file_id.as_str()).count();
    assert_eq!(listed, 1, "{inbox}");
    assert!(!home.path().join(format!("files/{AGENT}/.{file_id}.part")).exists(), "no partial left");
}

/// The agent's journal entries (one per unfinished upload).
pub(crate) fn journal_entries(agent: &TestHome) -> usize {
    std::fs::read_dir(agent.path().join("uploads")).map_or(0, |d| d.flatten().count())
}

#[test]
fn a_sender_killed_mid_upload_resumes_from_the_committed_offset() {
    let (home, boss, agent) = enrolled();
    let (file, data) = local_file(&agent, 24 << 20, 14);
    let log = agent.path().join("send-1.log");
    let before = partial_bytes(&home);
    let paused = proxy(&boss.addr, PAUSE_AFTER_V1, AtLimit::Pause);
    let mut sender = spawn_send(&agent, &file, &paused, &log);
    assert!(wait_for_partial(&home, &mut sender, before, 6 << 20), "the upload ended before the kill");
    kill9(&mut sender);
    let sent_before = last_queued_end(&log);
    assert_eq!(journal_entries(&agent), 1, "the journal names the unfinished upload");

    let resumed = send_to_end(&agent, &file, &boss.addr);
    assert_eq!(resumed["status"], "stored", "{resumed}");
    let from = resumed["resumed_from"].as_u64().expect("resumed_from");
    let bytes_sent = resumed["bytes_sent"].as_u64().expect("bytes_sent");
    let resent = sent_before.saturating_sub(from);
    eprintln!(
        "sender killed: {sent_before} bytes queued, resumed from {from}, re-sent {resent} ({:.2} chunks)",
        resent as f64 / CHUNK_BYTES as f64
    );
    assert!(from >= 6 << 20, "resumed from {from}: the Boss held at least 6 MiB at the kill");
    assert_eq!(bytes_sent, data.len() as u64 - from, "only what the Boss lacked is sent");
    assert_eq!(FILE_WINDOW, 1, "one chunk in flight");
    assert!(resent <= CHUNK_BYTES as u64, "{resent} bytes re-sent, more than the one chunk in flight");
    assert!(resumed["receipt"]["statement"].as_str().is_some_and(|s| s.contains("status stored")), "{resumed}");
    the_one_file_is(&home, &data);
    assert_eq!(journal_entries(&agent), 0, "the journal forgets a finished upload");

    // Sending it again starts a new upload: the journal no longer names one.
    let again = send_to_end(&agent, &file, &boss.addr);
    assert_eq!(again["resumed_from"], 0, "{again}");
    assert_eq!(recorded(&home).len(), 2);
    boss.stop_clean();
}

#[test]
fn a_boss_killed_mid_upload_and_restarted_is_resumed() {
    let (home, boss, agent) = enrolled();
    let (file, data) = local_file(&agent, 24 << 20, 15);
    let log = agent.path().join("send-1.log");
    let before = partial_bytes(&home);
    let paused = proxy(&boss.addr, PAUSE_AFTER_V1, AtLimit::Pause);
    let mut sender = spawn_send(&agent, &file, &paused, &log);
    assert!(wait_for_partial(&home, &mut sender, before, 6 << 20), "the upload ended before the kill");
    boss.kill9();
    // With no Boss to resume with, the sender gives up, keeping the journal.
    let out = sender.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let said = std::fs::read_to_string(&log).expect("log");
    assert!(said.contains("run the same `spyctl send --file` again"), "{said}");
    let sent_before = last_queued_end(&log);

    let boss = home.boss(&[]);
    let resumed = send_to_end(&agent, &file, &boss.addr);
    assert_eq!(resumed["status"], "stored", "{resumed}");
    let from = resumed["resumed_from"].as_u64().expect("resumed_from");
    eprintln!("boss killed: {sent_before} bytes queued, resumed from {from}");
    // The Boss was killed once its partial held 6 MiB, possibly in the
    // middle of writing a chunk: that torn segment is cut off at restart.
    assert!(from + CHUNK_BYTES as u64 >= 6 << 20, "resumed from {from}");
    assert!(sent_before.saturating_sub(from) <= CHUNK_BYTES as u64, "more than the one chunk in flight re-sent");
    assert_eq!(resumed["bytes_sent"].as_u64(), Some(data.len() as u64 - from));
    the_one_file_is(&home, &data);
    boss.stop_clean();
}

#[test]
fn a_file_changed_between_attempts_starts_over_and_nothing_corrupt_is_recorded() {
    let (home, boss, agent) = enrolled();
    let (file, first) = local_file(&agent, 24 << 20, 16);
    let log = agent.path().join("send-1.log");
    let before = partial_bytes(&home);
    let paused = proxy(&boss.addr, PAUSE_AFTER_V1, AtLimit::Pause);
    let mut sender = spawn_send(&agent, &file, &paused, &log);
    assert!(wait_for_partial(&home, &mut sender, before, 6 << 20), "the upload ended before the kill");
    kill9(&mut sender);
    // The same path, other contents of the same size: the journal's hash no
    // longer matches, so the held prefix must not be reused.
    let mut changed = first.clone();
    changed[1000] ^= 0xff;
    std::fs::write(&file, &changed).expect("change the file");
    let out = agent.run(&["--json", "send", "--file", file.to_str().expect("utf-8"), "--addr", &boss.addr]);
    let sent: Value = serde_json::from_str(&ok(out)).expect("json");
    assert_eq!(sent["resumed_from"], 0, "{sent}");
    assert_eq!(sent["restarted"], "the file changed since the interrupted send", "{sent}");
    assert_eq!(sent["bytes_sent"].as_u64(), Some(changed.len() as u64));
    the_one_file_is(&home, &changed);
    // And without --json, one line says so.
    let before = partial_bytes(&home);
    let paused = proxy(&boss.addr, PAUSE_AFTER_V1, AtLimit::Pause);
    let mut sender = spawn_send(&agent, &file, &paused, &agent.path().join("send-2.log"));
    assert!(wait_for_partial(&home, &mut sender, before, 2 << 20), "the upload ended before the kill");
    kill9(&mut sender);
    std::fs::write(&file, &first).expect("change it back");
    let said = ok(agent.run(&["send", "--file", file.to_str().expect("utf-8"), "--addr", &boss.addr]));
    assert!(said.contains("Starting over from byte 0: the file changed since the interrupted send."), "{said}");
    assert_eq!(recorded(&home).len(), 2);
    boss.stop_clean();
}

/// An offset query line for `file_id`, sealed under `key`.
fn query_line(key: &FernetKey, agent: i64, file_id: &str) -> String {
    let header = Header { id: random_id(), kind: Kind::Offset { file_id: file_id.into() } };
    protocol::format_request(agent, &key.seal(&protocol::encode_message(&header, b"")))
}

#[test]
fn offset_queries_without_the_key_learn_nothing_and_deny_no_one() {
    let (home, boss, agent) = enrolled();
    let (file, data) = local_file(&agent, 24 << 20, 17);
    let log = agent.path().join("send-1.log");
    let before = partial_bytes(&home);
    let paused = proxy(&boss.addr, PAUSE_AFTER_V1, AtLimit::Pause);
    let mut sender = spawn_send(&agent, &file, &paused, &log);
    assert!(wait_for_partial(&home, &mut sender, before, 2 << 20), "the upload ended before the kill");
    kill9(&mut sender);
    let file_id = std::fs::read_dir(home.path().join(format!("files/{AGENT}")))
        .expect("dir")
        .flatten()
        .find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            Some(name.strip_prefix('.')?.strip_suffix(".part")?.to_string())
        })
        .expect("a partial upload");

    // Keyless: a guessed key, for the real agent, for an agent that does
    // not exist, for the real file id: all the same `ERR auth`, nothing else.
    let wrong = FernetKey::from_bytes(&[7u8; 32]);
    let mut raw = RawClient::connect(&boss.addr);
    let mut answers = Vec::new();
    for (agent_id, id) in [(AGENT, file_id.as_str()), (AGENT, "nope"), (999, file_id.as_str())] {
        answers.push(raw.ask(query_line(&wrong, agent_id, id).as_bytes()));
    }
    for line in [format!("MSG {AGENT} not-a-token\n"), format!("MSG {AGENT} gAAAAA{}\n", "A".repeat(200))] {
        answers.push(raw.ask(line.as_bytes()));
    }
    let first = answers[0].clone();
    assert_eq!(first.code(), Some(ErrorCode::Auth), "{answers:?}");
    assert!(answers.iter().all(|a| *a == first), "the answers differ: {answers:?}");

    // A flood of keyless queries on 8 connections while the real sender
    // resumes: it is not held up, and the upload completes intact.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooders: Vec<_> = (0..8)
        .map(|i| {
            let (addr, stop, line) = (boss.addr.clone(), stop.clone(), query_line(&wrong, AGENT, &file_id));
            std::thread::spawn(move || {
                let mut raw = RawClient::connect(&addr);
                let mut refused = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if !raw.write(line.as_bytes()) {
                        raw = RawClient::connect(&addr);
                        continue;
                    }
                    match raw.read_reply() {
                        Answer::Err(ErrorCode::Auth, _) => refused += 1,
                        // Closed to make room, say: connect again.
                        Answer::Closed => raw = RawClient::connect(&addr),
                        other => panic!("flooder {i}: {other:?}"),
                    }
                }
                refused
            })
        })
        .collect();
    let resumed = send_to_end(&agent, &file, &boss.addr);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let refused: u64 = flooders.into_iter().map(|f| f.join().expect("flooder")).sum();
    eprintln!("{refused} keyless offset queries refused during the resumed upload");
    assert!(refused > 0);
    assert!(resumed["resumed_from"].as_u64().is_some_and(|f| f > 0), "{resumed}");
    the_one_file_is(&home, &data);

    // With a key, an agent asks only about its own uploads: agent 1's
    // exported v1 key and agent 6's file id give "none".
    let out = home.path().join("agent1.key");
    ok(home.run(&["agent", "key", "export", "1", "--out", out.to_str().expect("utf-8")]));
    let key1 = FernetKey::from_base64(&std::fs::read_to_string(&out).expect("key")).expect("key");
    let Answer::Ack(token) = raw.ask(query_line(&key1, 1, &file_id).as_bytes()) else { panic!("no answer") };
    let reply = protocol::decode_offset_reply(&key1.open(&token, None).expect("sealed to agent 1").plaintext)
        .expect("an offset reply");
    assert_eq!(reply.committed, protocol::Committed::None);
    // A malformed query from a key holder: one clear refusal, the Boss goes on.
    let header = br#"{"v":1,"id":"q","kind":"offset","file_id":"../../etc"}"#;
    let mut plain = header.to_vec();
    plain.push(b'\n');
    let answer = raw.ask(protocol::format_request(1, &key1.seal(&plain)).as_bytes());
    assert_eq!(answer.code(), Some(ErrorCode::BadRequest), "{answer:?}");
    assert!(boss.panics().is_empty());
    boss.stop_clean();
}

#[test]
fn the_offset_query_over_v2_reports_the_same_and_refuses_a_bad_query_authenticated() {
    use spyctl::crypto::IdentityKeys;
    use spyctl::net::v2_client::{V2Client, V2Error};
    let (home, boss, agent) = enrolled();
    let (file, data) = local_file(&agent, 24 << 20, 18);
    let before = partial_bytes(&home);
    let paused = proxy(&boss.addr, PAUSE_AFTER_V1, AtLimit::Pause);
    let mut sender = spawn_send(&agent, &file, &paused, &agent.path().join("send-1.log"));
    assert!(wait_for_partial(&home, &mut sender, before, 2 << 20), "the upload ended before the kill");
    kill9(&mut sender);
    // A chunk already on its way (in the proxy or the Boss's socket) may
    // still land after the kill: compare the answers once the partial has
    // stopped growing.
    wait_until_settled(&home);
    let keys = |home: &TestHome| {
        IdentityKeys::from_file_text(&std::fs::read_to_string(home.path().join("identity.key")).expect("identity.key"))
            .expect("identity")
    };
    let mut v2 = V2Client::connect(&boss.addr, Duration::from_secs(5), &keys(&agent), &keys(&home).public(), AGENT)
        .expect("handshake");
    // The v1 answer (the resumed send asks over v1) and the v2 one agree.
    let file_id = recorded(&home).first().map(|f| f.0.clone());
    assert!(file_id.is_none(), "not recorded yet");
    let partial = std::fs::read_dir(home.path().join(format!("files/{AGENT}")))
        .expect("dir")
        .flatten()
        .find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            Some(name.strip_prefix('.')?.strip_suffix(".part")?.to_string())
        })
        .expect("a partial upload");
    let over_v2 = v2.query_offset(&partial).expect("offset over v2");
    let protocol::Committed::Partial { offset, size } = over_v2 else { panic!("{over_v2:?}") };
    assert_eq!(size, data.len() as u64);
    assert!(offset >= 2 << 20, "{offset}");
    assert_eq!(v2.query_offset("never-sent").expect("offset"), protocol::Committed::None);
    // A bad file id: an authenticated bad_request, and the session goes on.
    assert!(matches!(v2.query_offset("../x"), Err(V2Error::Refused { code: ErrorCode::BadRequest, .. })));
    let resumed = send_to_end(&agent, &file, &boss.addr);
    assert_eq!(resumed["resumed_from"].as_u64(), Some(offset), "{resumed}");
    let (file_id, _, sha256) = recorded(&home).pop().expect("recorded");
    assert_eq!(file_id, partial);
    assert_eq!(
        v2.query_offset(&file_id).expect("offset"),
        protocol::Committed::Complete { size: data.len() as u64, sha256 }
    );
    boss.stop_clean();
}

/// What a [`proxy`] does to the first connection that has carried `limit`
/// bytes towards the Boss (the sender's `WHOIS` check comes first, on a
/// short connection of its own; later connections pass untouched).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum AtLimit {
    /// Cut it, both ways: a network cut mid-upload.
    Cut,
    /// Carry nothing more towards the Boss but keep it open, answers still
    /// flowing back, and close the client's side when the Boss's closes: the
    /// upload stops at a known point however slow the machine, so a kill -9
    /// of either side lands mid-upload, never after a fast upload finished.
    Pause,
}

/// A TCP proxy to `target`; see [`AtLimit`].
pub(crate) fn proxy(target: &str, limit: usize, at_limit: AtLimit) -> String {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let target = target.to_string();
    std::thread::spawn(move || {
        let reached = std::sync::Arc::new(AtomicBool::new(false));
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(boss) = TcpStream::connect(&target) else { continue };
            let (mut up_in, mut up_out) = (client.try_clone().expect("clone"), boss.try_clone().expect("clone"));
            let (mut down_in, mut down_out) = (boss, client);
            let reached = reached.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 << 10];
                let mut carried = 0usize;
                let counting = !reached.load(Ordering::SeqCst);
                loop {
                    let room = if counting { limit - carried } else { buf.len() };
                    if room == 0 {
                        reached.store(true, Ordering::SeqCst);
                        if at_limit == AtLimit::Pause {
                            // Hold the connection open, carrying nothing more up.
                            while up_in.read(&mut buf).is_ok_and(|k| k > 0) {}
                        }
                        break;
                    }
                    let want = room.min(buf.len());
                    match up_in.read(&mut buf[..want]) {
                        Ok(k) if k > 0 && up_out.write_all(&buf[..k]).is_ok() => carried += k,
                        _ => break,
                    }
                }
                if at_limit == AtLimit::Cut {
                    let _ = up_in.shutdown(Shutdown::Both);
                }
                let _ = up_out.shutdown(Shutdown::Both);
            });
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(k) = down_in.read(&mut buf) {
                    if k == 0 || down_out.write_all(&buf[..k]).is_err() {
                        break;
                    }
                }
                let _ = down_in.shutdown(Shutdown::Both);
                let _ = down_out.shutdown(Shutdown::Both);
            });
        }
    });
    addr
}

/// Bytes of v1 chunk lines that carry a little over 7 MiB of file through a
/// [`proxy`] that pauses: the Boss then holds at least 6 MiB.
const PAUSE_AFTER_V1: usize = 10_000_000;

#[test]
fn a_network_cut_mid_upload_is_resumed_in_process_from_the_committed_offset() {
    let (home, boss, agent) = enrolled();
    let (file, data) = local_file(&agent, 8 << 20, 19);
    // The connection dies after about 3.3 MiB of request lines (a 512 KiB
    // chunk is about 700 KB of Fernet token): in the middle of a chunk.
    let proxy = proxy(&boss.addr, 3_300_000, AtLimit::Cut);
    let sent = send_to_end(&agent, &file, &proxy);
    assert_eq!(sent["status"], "stored", "{sent}");
    assert_eq!(sent["resumed_from"], 0, "{sent}");
    assert!(sent["interruptions"].as_u64().is_some_and(|n| n >= 1), "{sent}");
    let bytes_sent = sent["bytes_sent"].as_u64().expect("bytes_sent");
    eprintln!("network cut: {bytes_sent} chunk bytes sent for a {} byte file", data.len());
    assert!(
        bytes_sent <= (data.len() + CHUNK_BYTES) as u64,
        "{bytes_sent} bytes sent: more than the file and the one chunk the cut lost"
    );
    assert!(bytes_sent > data.len() as u64, "the chunk cut in the middle was sent again");
    the_one_file_is(&home, &data);
    boss.stop_clean();
}

/// `tests/python/resume_client.py` (written from PROTOCOL.md) as agent 1,
/// with its exported wire key in a directory of its own.
fn python_resume(boss: &Boss, key: &Path, file: &Path, file_id: &str, stop_after: Option<usize>) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/resume_client.py");
    let mut command = crate::python_interop::python_command(crate::python_interop::python());
    command.arg(&script).args([&boss.addr, "1", key.to_str().expect("utf-8"), file.to_str().expect("utf-8"), file_id]);
    if let Some(n) = stop_after {
        command.arg(n.to_string());
    }
    serde_json::from_str(&ok(command.stdin(Stdio::null()).output().expect("run resume_client.py"))).expect("json")
}

#[test]
fn a_python_client_written_from_protocol_md_resumes_an_upload() {
    let (home, boss, _agent) = enrolled();
    let client = TestHome::new();
    let key = client.path().join("agent1.key");
    ok(home.run(&["agent", "key", "export", "1", "--out", key.to_str().expect("utf-8")]));
    let data = random_bytes(3 * CHUNK_BYTES + 100, 20);
    let file = client.path().join("report.bin");
    std::fs::write(&file, &data).expect("file");

    let cut = python_resume(&boss, &key, &file, "py-upload-1", Some(3));
    assert_eq!(cut, serde_json::json!({"state": "none", "resumed_from": 0, "chunks": 3, "status": "stopped"}));
    let resumed = python_resume(&boss, &key, &file, "py-upload-1", None);
    assert_eq!(
        resumed,
        serde_json::json!({"state": "partial", "resumed_from": 3 * CHUNK_BYTES, "chunks": 1, "status": "stored"})
    );
    let again = python_resume(&boss, &key, &file, "py-upload-1", None);
    assert_eq!(again["state"], "complete", "{again}");
    assert_eq!(stored_file(&home, 1, "py-upload-1"), data);
    boss.stop_clean();
}
