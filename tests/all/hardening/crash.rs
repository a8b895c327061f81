//! Crash: kill -9 the Boss repeatedly during text and file ingest, restart it
//! on the same home, resend what was not ACKed; every ACKed message survives
//! exactly once and a file cut by a crash is never listed.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::TestRng;
use rusqlite::Connection;
use spyctl::net::client::{ClientConfig, SendError, Sender};
use spyctl::net::protocol::{self, AckStatus, FileChunk, Header, Kind};
use spyctl::stats::percentile;

use super::{
    agent_ids, client_config, figure, hardening_rng, integrity_check, master_of, ms, random_vec, sha256_hex,
    stored_message_ids, text_header,
};
use crate::support::{DIRECTOR, TestHome, env_count, ok};

/// One file upload as the crash test's file sender drives it.
struct Upload {
    file_id: String,
    name: String,
    content: Vec<u8>,
    /// Chunks ACKed so far.
    acked_chunks: usize,
    /// Message id of each chunk (fixed, so a resend after a crash reuses it).
    chunk_ids: Vec<String>,
    /// Whether the last chunk has ever been written to a socket.
    last_sent: bool,
}

impl Upload {
    fn new(rng: &mut TestRng, n: usize) -> Upload {
        // 2.5 chunks: two full 512 KiB chunks and a half one.
        let content = random_vec(rng, protocol::CHUNK_BYTES * 2 + protocol::CHUNK_BYTES / 2);
        let chunks = content.len().div_ceil(protocol::CHUNK_BYTES);
        Upload {
            file_id: format!("crashfile-{n}-{:x}", rng.next_u64()),
            name: format!("dossier-{n}.bin"),
            content,
            acked_chunks: 0,
            chunk_ids: (0..chunks).map(|c| format!("crashchunk-{n}-{c}-{:x}", rng.next_u64())).collect(),
            last_sent: false,
        }
    }

    fn complete(&self) -> bool {
        self.acked_chunks == self.chunk_ids.len()
    }

    /// Sends the next chunk; Err when the Boss went away.
    fn send_next(&mut self, sender: &mut Sender<'_>) -> Result<AckStatus, SendError> {
        let c = self.acked_chunks;
        let offset = c * protocol::CHUNK_BYTES;
        let end = (offset + protocol::CHUNK_BYTES).min(self.content.len());
        let last = end == self.content.len();
        let header = Header {
            id: self.chunk_ids[c].clone(),
            kind: Kind::FileChunk(FileChunk {
                file_id: self.file_id.clone(),
                name: self.name.clone(),
                offset: offset as u64,
                size: self.content.len() as u64,
                sha256: last.then(|| sha256_hex(&self.content)),
            }),
        };
        if last {
            self.last_sent = true;
        }
        let d = sender.send(&header, &self.content[offset..end])?;
        self.acked_chunks += 1;
        Ok(d.status)
    }
}

/// Per text sender: the next sequence number and the message in flight when
/// the Boss died (resent with the same id next round).
#[derive(Default)]
struct TextSenderState {
    next: usize,
    pending: Option<String>,
}

#[derive(Default)]
struct CrashLedger {
    /// Every (agent, id) ever written to a socket.
    sent: HashSet<(i64, String)>,
    /// Every (agent, id) the Boss ACKed.
    acked: HashSet<(i64, String)>,
    /// Resends after a crash that came back `duplicate`: committed, ACK lost.
    committed_unacked: usize,
    /// Resends after a crash that came back `stored`: never committed.
    lost_before_commit: usize,
}

fn files_rows(db: &Path) -> HashMap<String, (i64, String, String)> {
    let conn = Connection::open(db).expect("open db");
    let mut stmt = conn.prepare("SELECT FileId, Size, Sha256, StoredAs FROM Files").expect("prepare");
    stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, (r.get(1)?, r.get(2)?, r.get(3)?))))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

/// kill -9 the Boss repeatedly during ingest, restart it on the same home
/// (new port), senders resend what was not ACKed with the same ids: every
/// ACKed message is present once, the database passes integrity_check, and a
/// file cut by a crash is never listed as complete.
#[test]
fn crash_kill9_during_ingest_keeps_every_acked_message_once() {
    let crashes = env_count("HARDENING_CRASHES", 3);
    let text_senders = env_count("HARDENING_CRASH_SENDERS", 4);
    let home = TestHome::initialised();
    let agents = agent_ids(&home);
    let master = master_of(&home);
    let file_agent = agents[0];
    let mut rng = hardening_rng(2);
    let ledger = Mutex::new(CrashLedger::default());
    let mut states: Vec<TextSenderState> = (0..text_senders).map(|_| TextSenderState::default()).collect();
    let mut uploads_done: Vec<Upload> = Vec::new();
    let mut abandoned: Vec<Upload> = Vec::new();
    let mut upload = Upload::new(&mut rng, 0);
    let mut files_started = 1;
    let mut unacked_at_kill = 0;
    let mut restart_times = Vec::new();

    for round in 0..=crashes {
        let crash = round < crashes;
        let t_start = Instant::now();
        // Every crash round abandons an upload on purpose; the per-agent cap on
        // partial uploads (tested in boss_files) must not stop the resumed one.
        let boss = home.boss_logging(&["--max-partial-uploads", "1000"], "spyctl=warn");
        restart_times.push(t_start.elapsed());
        let addr = boss.addr.clone();
        let stop = AtomicBool::new(false);
        let final_per_sender = 5;
        let mut cut = crash.then(|| Upload::new(&mut rng, 1000 + round));
        std::thread::scope(|s| {
            for (t, state) in states.iter_mut().enumerate() {
                let (addr, ledger, master, stop) = (&addr, &ledger, &master, &stop);
                let agent = agents[t % agents.len()];
                s.spawn(move || {
                    let key = master.agent_wire_key(agent);
                    // One attempt: a dead Boss is noticed at once; the resend happens next round.
                    let config = ClientConfig { attempts: 1, ..client_config(addr) };
                    let mut sender = Sender::new(config, agent, &key);
                    let mut sent_this_round = 0;
                    loop {
                        if stop.load(Ordering::SeqCst) || (!crash && sent_this_round >= final_per_sender) {
                            break;
                        }
                        let (id, resend) = match state.pending.take() {
                            Some(id) => (id, true),
                            None => {
                                state.next += 1;
                                (format!("crash-{t}-{}", state.next), false)
                            }
                        };
                        ledger.lock().unwrap().sent.insert((agent, id.clone()));
                        match sender.send(&text_header(&id), format!("crash test {id}").as_bytes()) {
                            Ok(d) => {
                                let mut l = ledger.lock().unwrap();
                                l.acked.insert((agent, id));
                                if resend {
                                    match d.status {
                                        AckStatus::Duplicate => l.committed_unacked += 1,
                                        AckStatus::Stored => l.lost_before_commit += 1,
                                    }
                                }
                                sent_this_round += 1;
                            }
                            Err(e) => {
                                assert!(crash, "sender {t} failed in the final round: {e}");
                                state.pending = Some(id);
                                break;
                            }
                        }
                    }
                });
            }
            // The file sender: chunks in order, resumed across crashes. In a crash
            // round it first starts an upload it will never finish (cut for sure).
            let cut_ref = cut.as_mut();
            let upload = &mut upload;
            let (addr, master, stop) = (&addr, &master, &stop);
            let file_thread = s.spawn(move || {
                let key = master.agent_wire_key(file_agent);
                let config = ClientConfig { attempts: 1, ..client_config(addr) };
                let mut sender = Sender::new(config, file_agent, &key);
                if let Some(cut) = cut_ref {
                    let _ = cut.send_next(&mut sender);
                }
                let mut finished = Vec::new();
                while !stop.load(Ordering::SeqCst) && !upload.complete() {
                    if let Err(e) = upload.send_next(&mut sender) {
                        assert!(crash, "file sender failed in the final round: {e}");
                        break;
                    }
                    if upload.complete() {
                        finished.push(upload.file_id.clone());
                    }
                }
                finished
            });
            if crash {
                // Let ingest get going, then pull the plug at a random moment.
                std::thread::sleep(Duration::from_millis(150 + rng.random_range(0..500) as u64));
                // Senders are mid-flight when the signal lands; they stop after it.
                boss.signal("KILL");
                stop.store(true, Ordering::SeqCst);
            }
            let _ = file_thread.join().expect("file sender");
        });
        abandoned.extend(cut);
        if crash {
            boss.kill9();
            unacked_at_kill += states.iter().filter(|s| s.pending.is_some()).count();
        } else {
            boss.stop_clean();
        }

        // After every round: the database is sound and holds every ACK once.
        let db = home.db_path();
        assert_eq!(integrity_check(&db), "ok", "after round {round}");
        let stored = stored_message_ids(&db);
        {
            let l = ledger.lock().unwrap();
            assert!(stored.values().all(|n| *n == 1), "a message stored twice after round {round}");
            for id in &l.acked {
                assert!(stored.contains_key(id), "ACKed {id:?} missing after crash {round}");
            }
            for id in stored.keys() {
                assert!(l.sent.contains(id), "stored {id:?} was never sent");
            }
        }
        // Files: only whole, hash-checked files are listed; a cut one never is.
        let rows = files_rows(&db);
        let files_root = home.path().join("files");
        for (fid, (size, sha, stored_as)) in &rows {
            assert!(files_root.join(stored_as).is_file(), "listed file exists: {fid}");
            let agent: i64 = stored_as.split('/').next().and_then(|a| a.parse().ok()).expect("files/<agent>/<id>");
            let bytes = crate::support::stored_file(&home, agent, fid);
            assert_eq!(bytes.len() as i64, *size, "{fid}");
            assert_eq!(&sha256_hex(&bytes), sha, "{fid}");
        }
        for done in &uploads_done {
            assert!(rows.contains_key(&done.file_id), "completed file {} not listed", done.file_id);
        }
        if !upload.last_sent {
            assert!(!rows.contains_key(&upload.file_id), "a file cut by the crash is listed as complete");
            let final_path = files_root.join(file_agent.to_string()).join(&upload.file_id);
            assert!(!final_path.exists(), "a file cut by the crash sits under its final name");
        }
        for a in &abandoned {
            assert!(!rows.contains_key(&a.file_id), "abandoned upload {} listed as complete", a.file_id);
        }
        if upload.complete() {
            let finished = std::mem::replace(&mut upload, Upload::new(&mut rng, files_started));
            files_started += 1;
            uploads_done.push(finished);
        } else if crash && round % 2 == 1 && !upload.last_sent {
            // Every other crash, give up on the cut upload and start another file.
            let cut = std::mem::replace(&mut upload, Upload::new(&mut rng, files_started));
            files_started += 1;
            abandoned.push(cut);
        }
    }

    // Final round left nothing pending.
    assert!(states.iter().all(|s| s.pending.is_none()));
    let stored = stored_message_ids(&home.db_path());
    let l = ledger.lock().unwrap();
    assert_eq!(stored.len(), l.acked.len(), "rows vs ACKed messages");
    assert_eq!(l.acked, l.sent, "every message sent was finally ACKed");

    // The inbox (what a director sees) agrees: whole files only, no duplicates.
    home.login(DIRECTOR);
    let inbox: serde_json::Value =
        serde_json::from_str(&ok(home.run(&["--json", "boss", "inbox", "--all"]))).expect("json");
    let entries = inbox.as_array().expect("array");
    let files: Vec<&serde_json::Value> = entries.iter().filter(|e| e["kind"] == "file").collect();
    assert_eq!(entries.len() - files.len(), l.acked.len(), "inbox messages");
    let inbox_file_ids: HashSet<&str> = files.iter().map(|f| f["id"].as_str().unwrap_or_default()).collect();
    let rows = files_rows(&home.db_path());
    assert_eq!(inbox_file_ids.len(), rows.len());
    for a in &abandoned {
        assert!(!inbox_file_ids.contains(a.file_id.as_str()), "cut upload in the inbox");
    }
    for done in &uploads_done {
        let (_, _, stored_as) = &rows[&done.file_id];
        let agent: i64 = stored_as.split('/').next().and_then(|a| a.parse().ok()).expect("files/<agent>/<id>");
        assert_eq!(crate::support::stored_file(&home, agent, &done.file_id), done.content);
    }

    figure(&format!(
        "crash: {crashes} x kill -9 during ingest ({text_senders} text senders + 1 file sender): {} msgs ACKed, \
         all present once; {unacked_at_kill} sends cut by the kills, resent with the same id: {} committed-but-unACKed (resend -> duplicate), {} lost before commit (resend -> stored); \
         {} files completed, {} cut uploads abandoned and never listed; integrity_check ok every round; \
         restart to listening median {:.0} ms",
        l.acked.len(),
        l.committed_unacked,
        l.lost_before_commit,
        uploads_done.len(),
        abandoned.len(),
        ms({
            let mut r = restart_times.clone();
            r.sort();
            percentile(&r, 50.0)
        })
    ));
}
