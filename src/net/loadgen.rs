//! The load generator behind `spyctl boss bench` (like redis-benchmark or
//! pgbench): N sender threads push M messages of S bytes through the real
//! client ([`Sender`]: sealed tokens, ACKs opened and matched to their message
//! id), over one persistent connection each or one connection per message,
//! and time every round trip. No clap here; `cmd/bench.rs` owns flags and
//! printing.
//!
//! A message's latency runs from just before its token is sealed to just after
//! its ACK is verified, so it includes both sides' crypto, the Boss's group
//! commit (fsync) and, in per-message mode, the TCP connect. Retries are off:
//! a failure is counted, never hidden behind a second attempt.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use super::client::{ClientConfig, MessageSigner, SendError, Sender};
use super::ids::random_id;
use super::protocol::{AckStatus, Header, Kind};
use crate::crypto::FernetKey;

/// How senders use connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One connection per sender, reused for all its messages.
    Persistent,
    /// A fresh connection for every message (connect, send, ACK, close).
    PerMessage,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Persistent => "persistent",
            Mode::PerMessage => "per-message",
        }
    }
}

/// One benchmark run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub addr: String,
    /// Concurrent senders, each on its own thread.
    pub connections: usize,
    /// Messages in total, split evenly over the senders (the first senders
    /// take one more when it does not divide).
    pub messages: u64,
    /// Body bytes per message (ASCII text).
    pub size: usize,
    pub mode: Mode,
    /// Messages in flight per persistent connection (1: wait for each ACK
    /// before sending the next, as `spyctl send TEXT` does).
    pub pipeline: usize,
    /// Per-round-trip timeout.
    pub timeout: Duration,
}

/// Latency summary, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Latency {
    pub min: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
    pub mean: u64,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// Messages acknowledged as `stored`.
    pub stored: u64,
    /// Messages acknowledged as `duplicate` (should be 0: every id is fresh).
    pub duplicates: u64,
    /// Messages that failed (refused, bad ACK, unreachable).
    pub failed: u64,
    /// The first failure, for the error message.
    pub first_error: Option<String>,
    /// From the moment every sender was ready to the last ACK.
    pub elapsed: Duration,
    /// Over acknowledged messages only.
    pub latency: Latency,
}

impl LoadReport {
    /// Acknowledged messages per second of wall time.
    pub fn msgs_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 { (self.stored + self.duplicates) as f64 / secs } else { 0.0 }
    }
}

/// The nearest-rank percentile (`p` in 0..=100) of sorted samples; 0 if none.
/// The definition lives in [`crate::stats::percentile`], shared with the tests.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    crate::stats::percentile(sorted, p)
}

/// Summarises latencies (any order; sorted in place).
pub fn summarize(samples: &mut [u64]) -> Latency {
    if samples.is_empty() {
        return Latency::default();
    }
    samples.sort_unstable();
    let sum: u128 = samples.iter().map(|s| u128::from(*s)).sum();
    Latency {
        min: samples[0],
        p50: percentile(samples, 50.0),
        p90: percentile(samples, 90.0),
        p99: percentile(samples, 99.0),
        max: samples[samples.len() - 1],
        mean: (sum / samples.len() as u128) as u64,
    }
}

/// How many messages sender `index` of `senders` sends out of `total`.
pub fn share(total: u64, senders: usize, index: usize) -> u64 {
    let senders = senders.max(1) as u64;
    let index = index as u64;
    total / senders + u64::from(index < total % senders)
}

/// One sender thread's tally (v1 and v2 load generators alike).
#[derive(Default)]
pub(super) struct Tally {
    pub(super) stored: u64,
    pub(super) duplicates: u64,
    pub(super) failed: u64,
    pub(super) first_error: Option<String>,
    pub(super) latencies: Vec<u64>,
}

impl Tally {
    /// The senders' tallies summed into one report.
    pub(super) fn report(tallies: impl IntoIterator<Item = Tally>, elapsed: Duration, capacity: u64) -> LoadReport {
        let mut report =
            LoadReport { stored: 0, duplicates: 0, failed: 0, first_error: None, elapsed, latency: Latency::default() };
        let mut latencies = Vec::with_capacity(capacity.min(10_000_000) as usize);
        for t in tallies {
            report.stored += t.stored;
            report.duplicates += t.duplicates;
            report.failed += t.failed;
            if report.first_error.is_none() {
                report.first_error = t.first_error;
            }
            latencies.extend(t.latencies);
        }
        report.latency = summarize(&mut latencies);
        report
    }

    /// Counts one acknowledged message and its latency.
    pub(super) fn record(&mut self, took: Duration, status: AckStatus) {
        self.latencies.push(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
        match status {
            AckStatus::Stored => self.stored += 1,
            AckStatus::Duplicate => self.duplicates += 1,
        }
    }
}

/// Runs the benchmark as agent `agent_id` with its wire key (an enrolled
/// agent: its channel key, and `signer` signs every message and checks every
/// receipt, as `send` does). `on_ack` is called once per acknowledged
/// message, from the sender threads (progress).
///
/// A sender stops at its first failure (the others go on), so a dead Boss
/// ends the run quickly instead of timing out M times.
pub fn run(
    config: &LoadConfig,
    agent_id: i64,
    key: &FernetKey,
    signer: Option<MessageSigner<'_>>,
    on_ack: &(dyn Fn() + Sync),
) -> LoadReport {
    let senders = config.connections.max(1);
    let body = vec![b'x'; config.size];
    let client =
        ClientConfig { addr: config.addr.clone(), timeout: config.timeout, attempts: 1, ..ClientConfig::default() };
    // Every sender (and this thread) waits here, so setup is not timed.
    let start_line = Barrier::new(senders + 1);
    let (tallies, elapsed) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..senders)
            .map(|i| {
                let (client, body, start_line) = (client.clone(), &body, &start_line);
                let count = share(config.messages, senders, i);
                scope.spawn(move || {
                    start_line.wait();
                    match config.mode {
                        Mode::Persistent => {
                            let sender = Sender::new(client, agent_id, key).with_signer(signer);
                            send_pipelined(sender, config.pipeline, count, body, on_ack)
                        }
                        Mode::PerMessage => send_per_message(client, agent_id, key, signer, count, body, on_ack),
                    }
                })
            })
            .collect();
        start_line.wait();
        let started = Instant::now();
        let tallies: Vec<Tally> = handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| Tally {
                    failed: 1,
                    first_error: Some("a sender thread panicked".into()),
                    ..Tally::default()
                })
            })
            .collect();
        (tallies, started.elapsed())
    });

    Tally::report(tallies, elapsed, config.messages)
}

/// One persistent connection with up to `window` messages in flight (1:
/// each message waits for the previous ACK). A message's latency runs from
/// when it is queued (just before it is sealed and written) to its verified
/// ACK, as in [`send_per_message`].
fn send_pipelined(mut sender: Sender<'_>, window: usize, count: u64, body: &[u8], on_ack: &(dyn Fn() + Sync)) -> Tally {
    let mut tally = Tally { latencies: Vec::with_capacity(count.min(1_000_000) as usize), ..Tally::default() };
    let mut started: std::collections::VecDeque<Instant> = std::collections::VecDeque::new();
    let messages = (0..count).map(|_| {
        started.push_back(Instant::now());
        Ok::<_, std::convert::Infallible>((Header { id: random_id(), kind: Kind::Text }, body.to_vec()))
    });
    let mut acked: Vec<(Instant, AckStatus)> = Vec::with_capacity(count.min(1_000_000) as usize);
    let result = sender.send_stream(window, false, messages, |_, _, delivered| {
        acked.push((Instant::now(), delivered.status));
        on_ack();
    });
    // `started` was filled in the order messages were queued, and ACKs come
    // back in that order too.
    for ((done, status), began) in acked.into_iter().zip(started) {
        tally.record(done.duration_since(began), status);
    }
    if let Err(e) = result {
        tally.failed += 1;
        tally.first_error = Some(SendError::from(e).to_string());
    }
    tally
}

/// A fresh connection for every message: connect, send, ACK, close.
fn send_per_message(
    client: ClientConfig,
    agent_id: i64,
    key: &FernetKey,
    signer: Option<MessageSigner<'_>>,
    count: u64,
    body: &[u8],
    on_ack: &(dyn Fn() + Sync),
) -> Tally {
    let mut tally = Tally { latencies: Vec::with_capacity(count.min(1_000_000) as usize), ..Tally::default() };
    for _ in 0..count {
        let header = Header { id: random_id(), kind: Kind::Text };
        let began = Instant::now();
        // Dropping the Sender closes its connection after the ACK.
        let result = Sender::new(client.clone(), agent_id, key).with_signer(signer).send(&header, body);
        let took = began.elapsed();
        match result {
            Ok(delivered) => {
                tally.record(took, delivered.status);
                on_ack();
            }
            Err(e) => {
                tally.failed += 1;
                tally.first_error = Some(e.to_string());
                break;
            }
        }
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let samples: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&samples, 50.0), 50);
        assert_eq!(percentile(&samples, 99.0), 99);
        assert_eq!(percentile(&samples, 100.0), 100);
        assert_eq!(percentile(&samples, 0.0), 1);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
        // Ten samples: p99 is the largest, p50 the fifth.
        let ten: Vec<u64> = (10..20).collect();
        assert_eq!(percentile(&ten, 99.0), 19);
        assert_eq!(percentile(&ten, 50.0), 14);
    }

    #[test]
    fn summary_sorts_and_averages() {
        let mut samples = vec![30, 10, 20, 40];
        let s = summarize(&mut samples);
        assert_eq!((s.min, s.p50, s.max, s.mean), (10, 20, 40, 25));
        assert_eq!(summarize(&mut []), Latency::default());
    }

    #[test]
    fn shares_add_up() {
        for (total, senders) in [(10u64, 3usize), (0, 4), (7, 7), (5, 8), (1000, 64)] {
            let sum: u64 = (0..senders).map(|i| share(total, senders, i)).sum();
            assert_eq!(sum, total, "{total} over {senders}");
            let max = (0..senders).map(|i| share(total, senders, i)).max().unwrap_or(0);
            let min = (0..senders).map(|i| share(total, senders, i)).min().unwrap_or(0);
            assert!(max - min <= 1);
        }
    }
}
