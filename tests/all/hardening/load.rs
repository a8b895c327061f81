//! Load: N senders x M messages through the real client against one Boss,
//! every message stored exactly once; ACK latency percentiles as a figure.

use std::time::{Duration, Instant};

use rusqlite::Connection;
use spyctl::crypto::FernetKey;
use spyctl::net::client::Sender;
use spyctl::net::protocol::{self, AckStatus};
use spyctl::stats::percentile;

use super::{agent_ids, client_config, figure, integrity_check, master_of, ms, stored_message_ids, text_header};
use crate::support::{DIRECTOR, TestHome, env_count, ok};

/// N senders x M messages against one Boss: every message ACKed `stored`,
/// stored exactly once (rows and ids checked), the server still serving.
#[test]
fn load_concurrent_senders_every_message_stored_once() {
    let senders = env_count("HARDENING_SENDERS", 8);
    let per_sender = env_count("HARDENING_MESSAGES", 50);
    let home = TestHome::initialised();
    let agents = agent_ids(&home);
    let master = master_of(&home);
    // The exported key file (what a remote agent holds) is the key the Boss derives.
    home.login(DIRECTOR);
    let key_file = home.path().join("agent.key");
    ok(home.run(&["agent", "key", "export", &agents[1].to_string(), "--out", key_file.to_str().unwrap()]));
    let exported = FernetKey::from_base64(&std::fs::read_to_string(&key_file).unwrap()).expect("key file");
    assert_eq!(exported.to_base64().as_str(), master.agent_wire_key(agents[1]).to_base64().as_str());

    let max_conn = (senders + 16).to_string();
    // Every sender comes from 127.0.0.1: one address may hold every slot.
    let boss = home.boss_logging(&["--max-connections", &max_conn, "--max-per-address", &max_conn], "spyctl=warn");
    let addr = boss.addr.clone();
    let started = Instant::now();
    let latencies: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..senders)
            .map(|t| {
                let agent = agents[t % agents.len()];
                let addr = addr.clone();
                let master = &master;
                s.spawn(move || {
                    let key = master.agent_wire_key(agent);
                    let mut sender = Sender::new(client_config(&addr), agent, &key);
                    let mut lat = Vec::with_capacity(per_sender);
                    for i in 0..per_sender {
                        let t0 = Instant::now();
                        let d = sender
                            .send(
                                &text_header(&format!("load-{t}-{i}")),
                                format!("load {i} from sender {t}").as_bytes(),
                            )
                            .unwrap_or_else(|e| panic!("sender {t} message {i}: {e}"));
                        lat.push(t0.elapsed());
                        assert_eq!(d.status, AckStatus::Stored, "sender {t} message {i}");
                    }
                    lat
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("sender thread")).collect()
    });
    let elapsed = started.elapsed();
    let total = senders * per_sender;

    // Still serving: a new message is stored, a resent one is a duplicate.
    let key = master.agent_wire_key(agents[0]);
    let mut after = Sender::new(client_config(&boss.addr), agents[0], &key);
    assert_eq!(after.send(&text_header("after-load"), b"still there?").expect("after").status, AckStatus::Stored);
    assert_eq!(
        after.send(&text_header("load-0-0"), b"load 0 from sender 0").expect("dup").status,
        AckStatus::Duplicate
    );
    boss.stop_clean();

    let stored = stored_message_ids(&home.db_path());
    assert_eq!(stored.len(), total + 1, "distinct rows");
    assert!(stored.values().all(|n| *n == 1), "a message stored twice");
    for t in 0..senders {
        for i in 0..per_sender {
            let id = (agents[t % agents.len()], format!("load-{t}-{i}"));
            assert!(stored.contains_key(&id), "missing {id:?}");
        }
    }
    // Every stored token opens under its sender's key and names its row's id.
    let conn = Connection::open(home.db_path()).unwrap();
    let mut stmt = conn.prepare("SELECT AgentId, MessageId, Token FROM Messages").unwrap();
    let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)));
    for row in rows.unwrap() {
        let (agent, id, token) = row.unwrap();
        let opened = master.agent_wire_key(agent).open(token.as_bytes(), None).expect("stored token opens");
        assert_eq!(protocol::decode_message(&opened.plaintext).expect("header").0.id, id);
    }
    assert_eq!(integrity_check(&home.db_path()), "ok");

    let mut sorted = latencies;
    sorted.sort();
    figure(&format!(
        "load: {senders} senders x {per_sender} msgs = {total} msgs in {:.2} s = {:.0} msgs/s; \
         ACK latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (debug={})",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        ms(percentile(&sorted, 50.0)),
        ms(percentile(&sorted, 99.0)),
        ms(percentile(&sorted, 100.0)),
        cfg!(debug_assertions)
    ));
}
