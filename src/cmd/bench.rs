//! `boss bench`: checks the flags, picks the sending identity (login session,
//! --agent-id/--key-file, or a joined home's signed channel, as `send` does), runs [`crate::net::loadgen`]
//! with a progress bar on stderr, and prints msgs/s and latency percentiles
//! (or `--json`).

use std::time::Duration;

use indicatif::ProgressStyle;

use crate::cli::{BenchArgs, BenchMode};
use crate::error::{Error, Hint, Result};
use crate::net::loadgen::{self, LoadConfig, Mode};
use crate::net::protocol;

use super::Ctx;
use super::session::{Identity, identity_key};

/// Largest body: its token (base64, about 4/3 of it) must fit a protocol line.
const MAX_SIZE: usize = protocol::CHUNK_BYTES;

/// Microseconds as milliseconds with three decimals, for people.
fn ms(us: u64) -> String {
    format!("{:.3} ms", us as f64 / 1000.0)
}

/// `--protocol v2`: the same run over Noise sessions, from a joined home.
fn bench_v2(ctx: &mut Ctx<'_>, config: &LoadConfig) -> Result<()> {
    let super::send::Joined { keys: me, boss, agent_id, .. } = super::send_v2::joined_identity(ctx)?;
    let bar = crate::progress::bar(config.messages, ctx.quiet || ctx.json);
    let report = crate::net::loadgen_v2::run(config, agent_id, &me, &boss, &|| bar.inc(1));
    bar.finish_and_clear();
    let (load, h) = (&report.load, report.handshake);
    let rate = load.msgs_per_sec();
    let l = load.latency;
    if ctx.json {
        ctx.json(serde_json::json!({
            "addr": config.addr,
            "agent_id": agent_id,
            "protocol": "v2",
            "connections": config.connections,
            "messages": config.messages,
            "size": config.size,
            "mode": config.mode.as_str(),
            "stored": load.stored,
            "duplicates": load.duplicates,
            "failed": load.failed,
            "elapsed_secs": load.elapsed.as_secs_f64(),
            "msgs_per_sec": rate,
            "latency_us": { "min": l.min, "p50": l.p50, "p90": l.p90, "p99": l.p99, "max": l.max, "mean": l.mean },
            "handshake_us": { "min": h.min, "p50": h.p50, "p90": h.p90, "p99": h.p99, "max": h.max, "mean": h.mean },
        }))?;
    } else {
        ctx.show(&format!(
            "{} of {} signed message(s) of {} B acknowledged over v2 in {:.3} s, {} {} connection(s)",
            load.stored + load.duplicates,
            config.messages,
            config.size,
            load.elapsed.as_secs_f64(),
            config.connections,
            config.mode.as_str()
        ))?;
        ctx.show(&format!("throughput: {rate:.0} msgs/s"))?;
        ctx.show(&format!("latency: p50 {}  p99 {}  max {}", ms(l.p50), ms(l.p99), ms(l.max)))?;
        ctx.show(&format!("handshake: p50 {}  p99 {}", ms(h.p50), ms(h.p99)))?;
    }
    if load.failed > 0 {
        let first = load.first_error.clone().unwrap_or_default();
        return Err(Error::failed(format!("{} sender(s) stopped on a failure; the first: {first}", load.failed)));
    }
    Ok(())
}

pub fn bench(ctx: &mut Ctx<'_>, args: BenchArgs) -> Result<()> {
    if args.connections == 0 || args.messages == 0 || args.timeout == 0 || args.pipeline == 0 {
        return Err(Error::usage("--connections, --messages, --pipeline and --timeout must be at least 1"));
    }
    if args.pipeline > 1 && args.mode == BenchMode::PerMessage {
        return Err(Error::usage(
            "--pipeline needs --mode persistent (one message per connection has nothing to overlap)",
        ));
    }
    if args.size > MAX_SIZE {
        return Err(Error::usage(format!("--size is limited to {MAX_SIZE} bytes (one protocol line)")));
    }
    // A joined home benchmarks what it sends: the channel key, every
    // message signed and every receipt checked.
    let identity = Identity::check(&args.to)?;
    let joined = super::send::joined(ctx, &identity)?;
    let addr = match (&args.to.addr, &joined) {
        (Some(addr), _) => addr.clone(),
        (None, Some(j)) => j.addr.clone(),
        (None, None) => crate::cli::DEFAULT_ADDR.to_string(),
    };
    let config = LoadConfig {
        addr,
        connections: args.connections,
        messages: args.messages,
        size: args.size,
        mode: match args.mode {
            BenchMode::Persistent => Mode::Persistent,
            BenchMode::PerMessage => Mode::PerMessage,
        },
        pipeline: args.pipeline,
        timeout: Duration::from_secs(args.timeout),
    };
    if args.protocol == crate::cli::Protocol::V2 {
        return bench_v2(ctx, &config);
    }
    let (agent_id, key) = match &joined {
        Some(j) => (j.agent_id, j.channel(&config.addr, Duration::from_secs(args.timeout))?),
        None => identity_key(ctx, &identity)?,
    };

    let bar = crate::progress::bar(args.messages, ctx.quiet || ctx.json);
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} msgs {per_sec} eta {eta}") {
        bar.set_style(style);
    }
    let signer = joined.as_ref().map(super::send::Joined::signer);
    let report = loadgen::run(&config, agent_id, &key, signer, &|| bar.inc(1));
    bar.finish_and_clear();

    let acked = report.stored + report.duplicates;
    let rate = report.msgs_per_sec();
    let l = report.latency;
    if ctx.json {
        ctx.json(serde_json::json!({
            "addr": config.addr,
            "agent_id": agent_id,
            "signed": signer.is_some(),
            "connections": config.connections,
            "messages": config.messages,
            "size": config.size,
            "mode": config.mode.as_str(),
            "pipeline": config.pipeline,
            "stored": report.stored,
            "duplicates": report.duplicates,
            "failed": report.failed,
            "elapsed_secs": report.elapsed.as_secs_f64(),
            "msgs_per_sec": rate,
            "payload_mib_per_sec": rate * config.size as f64 / (1024.0 * 1024.0),
            "latency_us": {
                "min": l.min, "p50": l.p50, "p90": l.p90, "p99": l.p99, "max": l.max, "mean": l.mean,
            },
        }))?;
    } else {
        ctx.show(&format!(
            "{acked} of {} message(s) of {} B acknowledged in {:.3} s over {} {} connection(s), {} in flight each",
            config.messages,
            config.size,
            report.elapsed.as_secs_f64(),
            config.connections,
            config.mode.as_str(),
            config.pipeline,
        ))?;
        ctx.show(&format!(
            "throughput: {rate:.0} msgs/s ({:.2} MiB/s of payload)",
            rate * config.size as f64 / 1048576.0
        ))?;
        ctx.show(&format!(
            "latency: p50 {}  p90 {}  p99 {}  max {}  (min {}, mean {})",
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.max),
            ms(l.min),
            ms(l.mean)
        ))?;
        if report.duplicates > 0 {
            ctx.show(&format!("{} acknowledged as duplicate", report.duplicates))?;
        }
    }
    if report.failed > 0 {
        let first = report.first_error.unwrap_or_default();
        return Err(Error::failed(format!("{} sender(s) stopped on a failure; the first: {first}", report.failed))
            .hint(Hint::BenchConnections));
    }
    Ok(())
}
