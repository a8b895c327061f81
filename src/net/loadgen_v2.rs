//! `boss bench --protocol v2`: the load generator over Noise sessions. Each
//! sender thread is one enrolled agent's connection (persistent: one
//! handshake, then its share of messages; per-message: a handshake for every
//! message), every text signed as `send` signs it. Reports in the same shape
//! as v1's [`super::loadgen`] so the two sit side by side.

use std::collections::VecDeque;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use super::client::MessageSigner;
use super::ids::random_id;
use super::loadgen::{LoadConfig, LoadReport, Mode, share, summarize};
use super::protocol::{Header, Kind};
use super::v2_client::{V2Client, V2Error};
use crate::crypto::{IdentityKeys, PublicIdentity};

/// One sender's results: v1's tally, plus its handshakes.
#[derive(Default)]
struct Tally {
    load: super::loadgen::Tally,
    /// Handshake times, microseconds (one per connection opened).
    handshakes: Vec<u64>,
}

/// What a v2 run measured: the usual report plus the handshakes' latency.
pub struct V2Report {
    pub load: LoadReport,
    pub handshake: super::loadgen::Latency,
}

/// Runs the benchmark as enrolled agent `agent_id` (identity `me`) against
/// the Boss whose pinned identity is `boss`; persistent sessions keep up to
/// `config.pipeline` messages in flight (answers come back in order).
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
                                tally.load.failed += 1;
                                tally.load.first_error.get_or_insert_with(|| e.to_string());
                                None
                            }
                        }
                    };
                    let mut session = None;
                    // Messages written and not yet answered, oldest first:
                    // their ids and when each was queued.
                    let mut in_flight: VecDeque<(String, Instant)> = VecDeque::new();
                    let mut queued = 0;
                    while queued < count || !in_flight.is_empty() {
                        if session.is_none() || (config.mode == Mode::PerMessage && in_flight.is_empty()) {
                            session = connect(&mut tally);
                        }
                        let Some(client) = session.as_mut() else { break };
                        // Fill the pipeline (one at a time unless --pipeline N).
                        let mut wrote = Ok(());
                        while queued < count && in_flight.len() < config.pipeline.max(1) && wrote.is_ok() {
                            let header = Header { id: random_id(), kind: Kind::Text };
                            let began = Instant::now();
                            wrote = client.write_message(&signer.encode(&header, body.as_bytes()));
                            in_flight.push_back((header.id, began));
                            queued += 1;
                        }
                        let answered = wrote.and_then(|()| client.read_ack()).and_then(|(ack, reply)| {
                            let (id, _) = in_flight.front().expect("a message is in flight");
                            if &ack.id != id {
                                return Err(V2Error::Unauthenticated("an ACK for another message"));
                            }
                            // Every receipt checked, as `send` checks it.
                            signer
                                .check_receipt(&ack, body_sha256)
                                .map(|_| (ack, reply))
                                .map_err(|_| V2Error::Unauthenticated("a receipt that does not verify"))
                        });
                        match answered {
                            Ok((ack, _)) => {
                                let (_, began) = in_flight.pop_front().expect("a message is in flight");
                                tally.load.record(began.elapsed(), ack.status);
                                on_ack();
                            }
                            Err(e) => {
                                // The failing message and every one behind it.
                                tally.load.failed += in_flight.len().max(1) as u64;
                                tally.load.first_error.get_or_insert_with(|| e.to_string());
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
    let mut handshakes: Vec<u64> = tallies.iter().flat_map(|t| t.handshakes.iter().copied()).collect();
    let load = super::loadgen::Tally::report(tallies.into_iter().map(|t| t.load), elapsed, config.messages);
    V2Report { load, handshake: summarize(&mut handshakes) }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
