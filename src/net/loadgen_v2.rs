//! `boss bench --protocol v2`: the load generator over Noise sessions. Each
//! sender thread is one enrolled agent's connection (persistent: one
//! handshake, then its share of messages; per-message: a handshake for every
//! message), every text signed as `send` signs it. Reports in the same shape
//! as v1's [`super::loadgen`] so the two sit side by side.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use super::client::MessageSigner;
use super::ids::random_id;
use super::loadgen::{LoadConfig, LoadReport, Mode, share, summarize};
use super::protocol::{AckStatus, Header, Kind};
use super::v2_client::V2Client;
use crate::crypto::{IdentityKeys, PublicIdentity};

/// One sender's results.
#[derive(Default)]
struct Tally {
    stored: u64,
    duplicates: u64,
    failed: u64,
    first_error: Option<String>,
    latencies: Vec<u64>,
    /// Handshake times, microseconds (one per connection opened).
    handshakes: Vec<u64>,
}

/// What a v2 run measured: the usual report plus the handshakes' latency.
pub struct V2Report {
    pub load: LoadReport,
    pub handshake: super::loadgen::Latency,
}

/// Runs the benchmark as enrolled agent `agent_id` (identity `me`) against
/// the Boss whose pinned identity is `boss`. `config.pipeline` must be 1.
pub fn run(
    config: &LoadConfig,
    agent_id: i64,
    me: &IdentityKeys,
    boss: &PublicIdentity,
    on_ack: &(dyn Fn() + Sync),
) -> V2Report {
    let body = "x".repeat(config.size);
    let body_sha256 = {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(body.as_bytes()))
    };
    let start = Barrier::new(config.connections + 1);
    let signer = MessageSigner::new(me, boss.ed25519, agent_id);
    let (tallies, elapsed) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..config.connections)
            .map(|index| {
                let (start, body, signer, body_sha256) = (&start, &body, &signer, &body_sha256);
                scope.spawn(move || {
                    let mut tally = Tally::default();
                    let count = share(config.messages, config.connections, index);
                    start.wait();
                    let connect = |tally: &mut Tally| -> Option<V2Client> {
                        let began = Instant::now();
                        match V2Client::connect(&config.addr, config.timeout, me, boss, agent_id) {
                            Ok(client) => {
                                tally.handshakes.push(micros(began.elapsed()));
                                Some(client)
                            }
                            Err(e) => {
                                tally.failed += 1;
                                tally.first_error.get_or_insert_with(|| e.to_string());
                                None
                            }
                        }
                    };
                    let mut session = None;
                    for _ in 0..count {
                        let began = Instant::now();
                        if session.is_none() || config.mode == Mode::PerMessage {
                            session = connect(&mut tally);
                        }
                        let Some(client) = session.as_mut() else { break };
                        let header = Header { id: random_id(), kind: Kind::Text };
                        let sent = client.send(&signer.encode(&header, body.as_bytes())).and_then(|(ack, reply)| {
                            // Every receipt checked, as `send` checks it.
                            signer.check_receipt(&ack, body_sha256).map(|_| (ack, reply)).map_err(|_| {
                                super::v2_client::V2Error::Unauthenticated("a receipt that does not verify")
                            })
                        });
                        match sent {
                            Ok((ack, _)) => {
                                tally.latencies.push(micros(began.elapsed()));
                                match ack.status {
                                    AckStatus::Stored => tally.stored += 1,
                                    AckStatus::Duplicate => tally.duplicates += 1,
                                }
                                on_ack();
                            }
                            Err(e) => {
                                tally.failed += 1;
                                tally.first_error.get_or_insert_with(|| e.to_string());
                                break;
                            }
                        }
                    }
                    tally
                })
            })
            .collect();
        start.wait();
        let began = Instant::now();
        let tallies: Vec<Tally> = handles.into_iter().map(|h| h.join().unwrap_or_default()).collect();
        (tallies, began.elapsed())
    });
    let mut latencies = Vec::new();
    let mut handshakes = Vec::new();
    let mut load =
        LoadReport { stored: 0, duplicates: 0, failed: 0, first_error: None, elapsed, latency: Default::default() };
    for tally in tallies {
        load.stored += tally.stored;
        load.duplicates += tally.duplicates;
        load.failed += tally.failed;
        if load.first_error.is_none() {
            load.first_error = tally.first_error;
        }
        latencies.extend(tally.latencies);
        handshakes.extend(tally.handshakes);
    }
    load.latency = summarize(&mut latencies);
    V2Report { load, handshake: summarize(&mut handshakes) }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
