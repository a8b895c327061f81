//! `boss serve` and `boss inbox`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::auth::roles::Action;
use crate::boss::{Boss, BossConfig, inbox};
use crate::cli::ServeArgs;
use crate::error::{Error, Hint, Result};
use crate::net::server::Limits;
use crate::output::{Rows, utc_time};

use super::Ctx;
use super::session::require;

pub fn serve(ctx: &mut Ctx<'_>, args: ServeArgs) -> Result<()> {
    if args.max_connections == 0 || args.idle_timeout == 0 || args.line_deadline == 0 || args.ttl == 0 {
        return Err(Error::usage("--max-connections, --idle-timeout, --line-deadline and --ttl must be at least 1"));
    }
    let limits = Limits {
        max_connections: args.max_connections,
        idle_timeout: Duration::from_secs(args.idle_timeout),
        line_deadline: Duration::from_secs(args.line_deadline),
        ..Limits::default()
    };
    let config = BossConfig { ttl_secs: args.ttl, max_file_bytes: args.max_file_bytes };
    let boss = Boss::bind(&ctx.home, &args.bind, limits, config)?;
    let addr = boss.local_addr();
    let fingerprint = boss.identity().fingerprint();

    // Ctrl-C / SIGTERM: stop accepting, finish in-flight lines, commit, exit 0.
    let mut signals =
        Signals::new([SIGINT, SIGTERM]).map_err(|e| Error::caused("cannot install signal handlers", e))?;
    let signal_handle = signals.handle();
    let shutdown = boss.shutdown_handle();
    let watcher = std::thread::spawn(move || {
        for signal in signals.forever() {
            if !shutdown.is_stopping() {
                tracing::info!(signal, "shutting down: finishing in-flight messages (Ctrl-C again to force)");
                shutdown.shutdown();
            } else if signal == SIGINT {
                // A second Ctrl-C: the operator does not want to wait. Committed
                // messages are safe; unacknowledged ones will be retried by senders.
                // (A repeated SIGTERM, as service managers send, just keeps waiting.)
                tracing::warn!("forced exit");
                std::process::exit(130);
            }
        }
    });

    if ctx.json {
        ctx.json(serde_json::json!({ "listening": addr.to_string(), "boss_fingerprint": fingerprint }))?;
    } else {
        // Always printed (even with -q): scripts read the port from it.
        crate::output::line(ctx.out, &format!("Boss listening on {addr} (Ctrl-C to stop)"))?;
        ctx.say(&format!("Boss identity: {fingerprint}"))?;
    }
    ctx.out.flush().ok();
    let stats = boss.run();
    signal_handle.close();
    let _ = watcher.join();
    ctx.say(&format!(
        "Boss stopped: {} connection(s), {} line(s), {} refused as busy.",
        stats.connections.load(Ordering::Relaxed),
        stats.lines.load(Ordering::Relaxed),
        stats.refused_busy.load(Ordering::Relaxed)
    ))
}

pub fn inbox(ctx: &mut Ctx<'_>) -> Result<()> {
    let gate = require(ctx, Action::ReadInbox)?;
    let identity = ctx.home.has_identity().then(|| ctx.home.load_identity()).transpose()?;
    let entries = inbox::read(&gate.conn, &gate.keyring, identity.as_ref())?;
    if ctx.json {
        return ctx.json(serde_json::json!(entries));
    }
    let mut rows = Rows::new(&["Received (UTC)", "Agent", "Kind", "Message / file", "Size", "Signature"]);
    for e in &entries {
        let who = match &e.agent_name {
            Some(name) => format!("{} ({name})", e.agent_id),
            None => format!("{} (removed)", e.agent_id),
        };
        let content = match &e.stored_as {
            Some(path) => format!("{} -> files/{path}", e.content),
            None => e.content.clone(),
        };
        rows.push(vec![
            utc_time(e.received_at),
            who,
            e.kind.into(),
            content,
            e.size.map(|s| s.to_string()).unwrap_or_default(),
            e.signature.clone(),
        ]);
    }
    ctx.show(&rows.to_table())?;
    ctx.say(&format!("{} item(s).", entries.len()))
}

/// `boss verify ID`: opens the stored message and checks its signature again
/// with the key it names (revoked since, or not). Fails unless it verifies.
pub fn verify(ctx: &mut Ctx<'_>, id: &str) -> Result<()> {
    use crate::boss::verify::{self, SignatureStatus};
    let gate = require(ctx, Action::ReadInbox)?;
    let identity = ctx.home.has_identity().then(|| ctx.home.load_identity()).transpose()?;
    let found = crate::db::messages::by_message_id(&gate.conn, id)?;
    if found.is_empty() {
        return Err(Error::failed(format!("no message with id {}", crate::output::visible(id))).hint(Hint::SeeInbox));
    }
    let mut results = Vec::new();
    for m in &found {
        let checked = verify::check(&gate.conn, &gate.keyring, identity.as_ref(), m)?;
        results.push((m.agent_id, checked.status));
    }
    if ctx.json {
        let list: Vec<_> = results
            .iter()
            .map(|(agent, status)| serde_json::json!({ "agent_id": agent, "id": id, "signature": status.label() }))
            .collect();
        ctx.json(serde_json::json!(list))?;
    } else {
        for (agent, status) in &results {
            ctx.show(&format!("message {} from agent {agent}: {}", crate::output::visible(id), status.label()))?;
        }
    }
    match results.iter().find(|(_, s)| !matches!(s, SignatureStatus::Verified { .. })) {
        None => Ok(()),
        Some((agent, SignatureStatus::Unsigned)) => Err(Error::failed(format!(
            "message {} from agent {agent} is not signed (it came over the v1 PSK channel)",
            crate::output::visible(id)
        ))),
        Some((agent, status)) => {
            Err(Error::failed(format!("message {} from agent {agent}: {}", crate::output::visible(id), status.label())))
        }
    }
}
