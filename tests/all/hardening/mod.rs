//! Hardening against the real `spyctl` binary and a real `boss serve` on
//! loopback, one file per theme: load, kill -9 during ingest, hostile input,
//! slow clients, and bad command-line input. This file holds what they share.
//!
//! `cargo test` runs short versions. `just hardening` runs the long ones with
//! the counts from `HARDENING_*` variables (see `scripts/hardening-long.sh`)
//! and prints every figure; with `HARDENING_REPORT=FILE` the figures are also
//! appended to FILE. No test asserts a speed except one explicit bound: slow
//! clients must not delay a normal sender's ACK past 1 s. Percentiles in the
//! figures are [`spyctl::stats::percentile`], as in `boss bench`.

mod cli_input;
mod crash;
mod flood;
mod hostile;
mod load;
mod slow;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::TestRng;
use rusqlite::{Connection, OpenFlags};
use sha2::{Digest, Sha256};
use spyctl::crypto::{KeyRing, MasterKey};
use spyctl::net::client::ClientConfig;
use spyctl::net::protocol::{Header, Kind};

use crate::support::{TestHome, seeded_rng};

/// Prints a measured figure and appends it to `$HARDENING_REPORT` if set.
fn figure(text: &str) {
    println!("FIGURE {text}");
    if let Ok(path) = std::env::var("HARDENING_REPORT")
        && let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path)
    {
        let _ = writeln!(f, "{text}");
    }
}

/// A generator for hostile input and crash timing: seeded from
/// `HARDENING_SEED` if set (to replay a failure), else at random; the seed is
/// printed either way. `stream` keeps each caller's sequence apart.
fn hardening_rng(stream: u64) -> TestRng {
    let seed = std::env::var("HARDENING_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).expect("os rng");
        u64::from_le_bytes(b)
    });
    println!("SEED HARDENING_SEED={seed} (stream {stream})");
    seeded_rng(seed.rotate_left(17) ^ stream)
}

/// The home's keys, as the Boss derives them: master.key bound to the
/// database's identifier.
fn master_of(home: &TestHome) -> KeyRing {
    let text = std::fs::read_to_string(home.path().join("master.key")).expect("master.key");
    let conn = Connection::open_with_flags(home.db_path(), OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open db");
    let database_id = spyctl::db::database_id(&conn).expect("database id");
    MasterKey::from_hex(&text).expect("master key parses").bind(&database_id)
}

fn agent_ids(home: &TestHome) -> Vec<i64> {
    let conn = Connection::open_with_flags(home.db_path(), OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open db");
    let mut stmt = conn.prepare("SELECT AgentId FROM Agents ORDER BY AgentId").expect("prepare");
    stmt.query_map([], |r| r.get(0)).expect("query").collect::<Result<Vec<i64>, _>>().expect("ids")
}

/// Every (AgentId, MessageId) in Messages, with how often each occurs.
fn stored_message_ids(db: &Path) -> HashMap<(i64, String), usize> {
    let conn = Connection::open(db).expect("open db");
    let mut stmt = conn.prepare("SELECT AgentId, MessageId FROM Messages").expect("prepare");
    let mut out = HashMap::new();
    for row in stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))).expect("query") {
        *out.entry(row.expect("row")).or_insert(0) += 1;
    }
    out
}

fn integrity_check(db: &Path) -> String {
    let conn = Connection::open(db).expect("open db");
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).expect("integrity_check")
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn client_config(addr: &str) -> ClientConfig {
    ClientConfig { addr: addr.to_string(), timeout: Duration::from_secs(10), ..ClientConfig::default() }
}

fn text_header(id: &str) -> Header {
    Header { id: id.to_string(), kind: Kind::Text }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn random_vec(rng: &mut TestRng, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    rng.fill_bytes(&mut out);
    out
}
