//! Floods from a client without a key: connections opened in a loop must not
//! lock the agents out (the Boss closes unproven connections to make room,
//! never accepted ones), and refused lines and `busy` connects must not grow
//! the Boss's log with the flood (refusals are summarised once a second).
//! Everything runs on 127.0.0.1, bounded in count and time.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use spyctl::net::client::Sender;
use spyctl::net::protocol::{self, AckStatus, ErrorCode};
use spyctl::stats::percentile;

use super::{agent_ids, client_config, figure, master_of, ms, stored_message_ids, text_header};
use crate::support::{Answer, RawClient, TestHome, env_count};

/// Longest any flood runs, whatever the counts.
const FLOOD_BOUND: Duration = Duration::from_secs(60);

/// Holds up to `keep` connections to `addr`, opening a new one as soon as
/// one is refused or closed, until `stop` (or the bound): a keyless client
/// doing its best to hold every slot. Half its connections stay silent, half
/// start a line they never finish. Returns how many connections it opened.
fn keyless_flooder(addr: &str, keep: usize, stop: &AtomicBool, max_connects: usize) -> usize {
    let started = Instant::now();
    let mut held: Vec<TcpStream> = Vec::new();
    let mut opened = 0;
    while !stop.load(Ordering::SeqCst) && opened < max_connects && started.elapsed() < FLOOD_BOUND {
        // Anything waiting (`busy`, a goodbye) or EOF means the slot is lost.
        held.retain(|conn| matches!(conn.peek(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock));
        if held.len() >= keep {
            std::thread::yield_now();
            continue;
        }
        let Ok(conn) = TcpStream::connect(addr) else {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        opened += 1;
        if opened % 2 == 0 {
            let _ = (&conn).write_all(b"MSG 1 gAAAAAB");
        }
        if conn.set_nonblocking(true).is_ok() {
            held.push(conn);
        }
    }
    opened
}

/// One client without a key, reconnecting in a loop as fast as it can from
/// the agents' own address, while an agent sends 100 messages, each over a
/// fresh connection as `spyctl send` does: every one is stored. (Before the
/// Boss made room by closing unproven connections, the flood held every slot
/// and `send` got `busy`.)
#[test]
fn a_keyless_flood_does_not_lock_out_real_senders() {
    let sends = env_count("HARDENING_FLOOD_SENDS", 100);
    let flooders = 2;
    let cap = 16;
    let home = TestHome::initialised();
    let agents = agent_ids(&home);
    let master = master_of(&home);
    // Per-address cap = the whole cap: everything here comes from 127.0.0.1,
    // so this tests making room at the global cap (the per-address cap makes
    // room the same way, within one address).
    let boss = home
        .boss_logging(&["--max-connections", &cap.to_string(), "--max-per-address", &cap.to_string()], "spyctl=warn");
    let addr = boss.addr.clone();
    let stop = AtomicBool::new(false);
    let agent = agents[1];
    let key = master.agent_wire_key(agent);
    let started = Instant::now();

    let (connects, latencies, failures) = std::thread::scope(|s| {
        let floods: Vec<_> = (0..flooders).map(|_| s.spawn(|| keyless_flooder(&addr, cap, &stop, 1_000_000))).collect();
        // The flood holds every slot before the first send.
        std::thread::sleep(Duration::from_millis(300));
        let mut latencies = Vec::new();
        let mut failures = Vec::new();
        for i in 0..sends {
            assert!(started.elapsed() < FLOOD_BOUND, "sends did not finish within {FLOOD_BOUND:?}");
            let t = Instant::now();
            let mut sender = Sender::new(client_config(&addr), agent, &key);
            match sender.send(&text_header(&format!("flood-{i}")), b"through the flood") {
                Ok(d) if d.status == AckStatus::Stored => latencies.push(t.elapsed()),
                Ok(d) => failures.push(format!("flood-{i}: {:?}", d.status)),
                Err(e) => failures.push(format!("flood-{i}: {e}")),
            }
        }
        stop.store(true, Ordering::SeqCst);
        let connects: usize = floods.into_iter().map(|f| f.join().expect("flooder")).sum();
        (connects, latencies, failures)
    });
    let elapsed = started.elapsed();
    let stopped = boss.stop_clean();

    let stored = stored_message_ids(&home.db_path());
    let stored_sends = (0..sends).filter(|i| stored.contains_key(&(agent, format!("flood-{i}")))).count();
    let mut lat = latencies;
    lat.sort();
    figure(&format!(
        "flood: {flooders} keyless flooders opened {connects} connections in {:.1} s ({:.0}/s) against \
         --max-connections {cap}; {stored_sends} of {sends} real sends stored, {} acknowledged (p50 {:.1} ms, \
         max {:.1} ms); Boss: {}",
        elapsed.as_secs_f64(),
        connects as f64 / elapsed.as_secs_f64(),
        lat.len(),
        ms(percentile(&lat, 50.0)),
        ms(percentile(&lat, 100.0)),
        stopped.stdout.lines().last().unwrap_or_default(),
    ));
    assert!(
        failures.is_empty(),
        "{} of {sends} sends failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(stored_sends, sends);
    assert!(connects > 10 * cap, "the flood did run: {connects} connections");
}

/// The value of `field=` in a log line (quotes stripped), if present.
fn log_field<'l>(line: &'l str, field: &str) -> Option<&'l str> {
    let at = line.find(&format!(" {field}="))? + field.len() + 2;
    let rest = &line[at..];
    let end = rest.find(' ').unwrap_or(rest.len());
    Some(rest[..end].trim_matches('"'))
}

/// The counts the Boss's summaries give for `kind`, added up.
fn summarised(log: &[String], kind: &str) -> u64 {
    log.iter()
        .filter(|l| log_field(l, "kind") == Some(kind))
        .filter_map(|l| log_field(l, "count")?.parse::<u64>().ok())
        .sum()
}

/// A keyless client pipelining refused lines, then connecting in a loop to a
/// Boss whose every slot is held by agents (`busy`), at the Boss's default
/// log level: the log grows by at most a few KB a second, and its summary
/// lines carry counts that add up to what the client was refused.
#[test]
fn refusals_are_summarised_and_do_not_grow_the_log_with_the_flood() {
    let phase = Duration::from_millis(env_count("HARDENING_LOG_FLOOD_MS", 1500) as u64);
    let cap = 4;
    let home = TestHome::initialised();
    let agents = agent_ids(&home);
    let master = master_of(&home);
    let boss = home.boss(&["--max-connections", &cap.to_string(), "--max-per-address", &cap.to_string()]);
    let addr = boss.addr.clone();
    let started = Instant::now();

    // Phase 1: lines sealed under a key the Boss does not hold for agent 1.
    let forged = spyctl::crypto::FernetKey::from_bytes(&[9; 32]);
    let line = protocol::format_request(agents[0], &forged.seal(&protocol::encode_message(&text_header("x"), b"x")));
    let batch = line.repeat(64);
    let mut auth_seen = 0u64;
    let mut conn = RawClient::connect(&addr);
    while started.elapsed() < phase {
        conn.send(batch.as_bytes());
        for _ in 0..64 {
            let reply = conn.read_reply();
            assert_eq!(reply.code(), Some(ErrorCode::Auth), "{reply:?}");
            auth_seen += 1;
        }
    }
    drop(conn);

    // Phase 2: agents hold every slot (each has had a message accepted), so
    // a keyless newcomer has no slot to take: `busy`, over and over.
    let holders: Vec<RawClient> = (0..cap)
        .map(|i| {
            let agent = agents[i % agents.len()];
            let key = master.agent_wire_key(agent);
            let mut holder = RawClient::connect(&addr);
            let token = key.seal(&protocol::encode_message(&text_header(&format!("holder-{i}")), b"here"));
            assert!(holder.msg(agent, &token).is_ack());
            holder
        })
        .collect();
    let busy_started = Instant::now();
    let busy_seen = AtomicUsize::new(0);
    while busy_started.elapsed() < phase {
        let mut newcomer = RawClient::connect(&addr);
        if let Answer::Err(ErrorCode::Busy, _) = newcomer.read_reply() {
            busy_seen.fetch_add(1, Ordering::Relaxed);
        }
    }
    drop(holders);
    let elapsed = started.elapsed();
    let stopped = boss.stop_clean();
    let busy_seen = busy_seen.into_inner() as u64;

    let bytes_per_sec = stopped.log_bytes as f64 / elapsed.as_secs_f64();
    let auth_logged = summarised(&stopped.log, "auth");
    let busy_logged = summarised(&stopped.log, "busy");
    figure(&format!(
        "log under a keyless flood: {auth_seen} refused lines and {busy_seen} busy connects in {:.1} s; \
         Boss log {} lines, {} bytes = {bytes_per_sec:.0} B/s; summaries count {auth_logged} auth, {busy_logged} busy",
        elapsed.as_secs_f64(),
        stopped.log_lines,
        stopped.log_bytes,
    ));
    assert!(auth_seen > 1000 && busy_seen > 100, "the flood did run: {auth_seen} lines, {busy_seen} connects");
    assert!(bytes_per_sec < 4096.0, "the log grew {bytes_per_sec:.0} B/s; last lines:\n{}", stopped.log_tail);
    assert_eq!(auth_logged, auth_seen, "the auth summaries count every refused line");
    assert!(busy_logged >= busy_seen, "the busy summaries count every busy connect: {busy_logged} < {busy_seen}");
}
