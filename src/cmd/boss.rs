//! `boss serve`, `boss inbox` (listing, paged and streamed, `show ID`, `get ID`)
//! and `boss verify ID`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::auth::roles::Action;
use crate::boss::files::{FileAssembler, Quota};
use crate::boss::inbox::{self, InboxQuery};
use crate::boss::{Boss, BossConfig};
use crate::cli::{InboxArgs, InboxCommand, ServeArgs};
use crate::error::{Error, Hint, Result};
use crate::net::server::{Limits, default_per_address};
use crate::output::{JsonArray, Rows, utc_time, visible};

use super::Ctx;
use super::session::require;

pub fn serve(ctx: &mut Ctx<'_>, args: ServeArgs) -> Result<()> {
    if args.max_connections == 0
        || args.max_per_address == Some(0)
        || args.idle_timeout == 0
        || args.line_deadline == 0
        || args.ttl == 0
        || args.max_partial_uploads == 0
        || args.partial_expiry == 0
    {
        return Err(Error::usage(
            "--max-connections, --max-per-address, --idle-timeout, --line-deadline, --ttl, --max-partial-uploads \
             and --partial-expiry must be at least 1",
        ));
    }
    let limits = Limits {
        max_connections: args.max_connections,
        max_per_address: args.max_per_address.unwrap_or_else(|| default_per_address(args.max_connections)),
        idle_timeout: Duration::from_secs(args.idle_timeout),
        line_deadline: Duration::from_secs(args.line_deadline),
        ..Limits::default()
    };
    let config = BossConfig {
        ttl_secs: args.ttl,
        max_file_bytes: args.max_file_bytes,
        quota: Quota {
            max_stored_bytes: args.max_stored_bytes,
            max_partial_uploads: args.max_partial_uploads,
            min_free_bytes: args.min_free_bytes,
        },
        partial_expiry: Duration::from_secs(args.partial_expiry),
        v1: args.v1 == crate::cli::Switch::On,
        failed_handshakes_per_second: args.failed_handshakes,
    };
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
        "Boss stopped: {} connection(s), {} line(s), {} refused as busy, {} closed for newcomers.",
        stats.connections.load(Ordering::Relaxed),
        stats.lines.load(Ordering::Relaxed),
        stats.refused_busy.load(Ordering::Relaxed),
        stats.evicted.load(Ordering::Relaxed)
    ))
}

/// Longest content kept for a table cell: the table shows fewer characters
/// still, and no row holds a long message whole.
const TABLE_CONTENT_CHARS: usize = 200;

/// Characters of content a table cell shows before shortening it (the
/// table's own cell limit).
const TABLE_SHOWN_CHARS: usize = 44;

pub fn inbox(ctx: &mut Ctx<'_>, args: InboxArgs) -> Result<()> {
    match args.command {
        Some(InboxCommand::Show { id }) => return inbox_show(ctx, &id),
        Some(InboxCommand::Get { id, out, force }) => return inbox_get(ctx, &id, &out, force),
        None => {}
    }
    let since = args.since.as_deref().map(|when| parse_since(when, unix_now())).transpose()?;
    let query = InboxQuery { limit: (!args.all).then_some(args.limit), since, oldest_first: args.oldest_first };
    let gate = require(ctx, Action::ReadInbox)?;
    let identity = ctx.home.has_identity().then(|| ctx.home.load_identity()).transpose()?;
    let boss = identity.as_ref();
    if ctx.json {
        // Streamed: each entry is written and dropped before the next is read.
        let mut array = JsonArray::default();
        inbox::for_each(&gate.conn, &gate.keyring, boss, &query, |entry| array.push(ctx.out, &entry))?;
        return array.finish(ctx.out);
    }
    let mut rows = Rows::new(&["Received (UTC)", "Agent", "Kind", "Message / file", "Size", "Id", "Signature"]);
    let mut shortened = 0u64;
    let count = inbox::for_each(&gate.conn, &gate.keyring, boss, &query, |e| {
        let who = match &e.agent_name {
            Some(name) => format!("{} ({name})", e.agent_id),
            None => format!("{} (removed)", e.agent_id),
        };
        let content = match &e.stored_as {
            Some(path) => format!("{} -> files/{path}", e.content),
            None => e.content,
        };
        if content.chars().nth(TABLE_SHOWN_CHARS).is_some() {
            shortened += 1;
        }
        rows.push(vec![
            utc_time(e.received_at),
            who,
            e.kind.into(),
            content.chars().take(TABLE_CONTENT_CHARS).collect(),
            e.size.map(|s| s.to_string()).unwrap_or_default(),
            e.id,
            e.signature,
        ]);
        Ok::<_, Error>(())
    })?;
    ctx.show(&rows.to_table())?;
    ctx.say(&format!("{count} item(s)."))?;
    if shortened > 0 {
        ctx.say(&format!("{shortened} shortened; {}.", Hint::InboxShowWhole))?;
    }
    Ok(())
}

/// `boss inbox show ID`: each entry with that id, whole. Text is shown line by
/// line, each line made safe for the terminal; `--json` is exact.
fn inbox_show(ctx: &mut Ctx<'_>, id: &str) -> Result<()> {
    let gate = require(ctx, Action::ReadInbox)?;
    let identity = ctx.home.has_identity().then(|| ctx.home.load_identity()).transpose()?;
    let found = inbox::find(&gate.conn, &gate.keyring, identity.as_ref(), id)?;
    if found.is_empty() {
        return Err(Error::failed(format!("no message or file with id {}", visible(id))).hint(Hint::SeeInboxIds));
    }
    if ctx.json {
        return ctx.json(serde_json::json!(found));
    }
    for (i, e) in found.iter().enumerate() {
        if i > 0 {
            ctx.show("")?;
        }
        let who = match &e.agent_name {
            Some(name) => format!("{} ({})", e.agent_id, visible(name)),
            None => format!("{} (removed)", e.agent_id),
        };
        ctx.show(&format!("Received (UTC): {}", utc_time(e.received_at)))?;
        ctx.show(&format!("Agent: {who}"))?;
        ctx.show(&format!("Kind: {}", e.kind))?;
        ctx.show(&format!("Id: {}", visible(&e.id)))?;
        if let (Some(size), Some(path)) = (e.size, &e.stored_as) {
            ctx.show(&format!("Size: {size} bytes, in files/{}", visible(path)))?;
            ctx.show(&format!("Name: {}", visible(&e.content)))?;
        } else {
            ctx.show("")?;
            for line in e.content.split('\n') {
                ctx.show(&visible(line))?;
            }
        }
    }
    Ok(())
}

/// `--since WHEN`: a UTC date or time (`2026-12-03`, `2026-12-03 14:00`,
/// `2026-12-03T14:00:05`), or a span before `now` (`90s`, `30m`, `2h`, `7d`).
fn parse_since(when: &str, now: i64) -> Result<i64> {
    let bad = || {
        Error::usage(format!(
            "--since {when:?}: expected a UTC time like 2026-12-03 or 2026-12-03 14:00:00, or a span like 30m, 2h or 7d"
        ))
    };
    let when = when.trim();
    if let Some(unit) = when.chars().last().filter(|c| "smhd".contains(*c)) {
        let n: i64 = when[..when.len() - 1].parse().map_err(|_| bad())?;
        let per = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => 86_400,
        };
        return n.checked_mul(per).filter(|s| *s >= 0).map(|s| now - s).ok_or_else(bad);
    }
    let (date, time) = match when.split_once([' ', 'T']) {
        Some((d, t)) => (d, Some(t)),
        None => (when, None),
    };
    let numbers = |text: &str, sep: char, want: &[usize]| -> Option<Vec<i64>> {
        let parts: Vec<&str> = text.split(sep).collect();
        if !want.contains(&parts.len()) || parts.iter().any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
        {
            return None;
        }
        parts.iter().map(|p| p.parse().ok()).collect()
    };
    let ymd = numbers(date, '-', &[3]).ok_or_else(bad)?;
    let hms = match time {
        Some(t) => numbers(t, ':', &[2, 3]).ok_or_else(bad)?,
        None => vec![0, 0],
    };
    let (y, m, d) = (ymd[0], ymd[1], ymd[2]);
    let (hh, mm, ss) = (hms[0], hms[1], hms.get(2).copied().unwrap_or(0));
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 59 {
        return Err(bad());
    }
    Ok(days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm, the inverse of the one [`utc_time`] uses).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn unix_now() -> i64 {
    crate::crypto::fernet::unix_now() as i64
}

/// `boss inbox get ID --out PATH`: the one way a received file leaves its
/// encryption. Every segment is checked while it is written out, then the
/// SHA-256 is compared with the one recorded on arrival; on any failure the
/// partial output is removed.
pub fn inbox_get(ctx: &mut Ctx<'_>, id: &str, out: &Path, force: bool) -> Result<()> {
    let gate = require(ctx, Action::ReadInbox)?;
    let rows = crate::db::messages::files_with_id(&gate.conn, id)?;
    let record = match rows.as_slice() {
        [] => return Err(Error::failed(format!("no received file has the id {}", visible(id))).hint(Hint::SeeInboxIds)),
        [one] => one,
        _ => return Err(Error::failed(format!("{} agents sent a file with the id {id}", rows.len()))),
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(0o600);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(out).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => {
            Error::failed(format!("{} exists; nothing was written", out.display())).hint(Hint::PassForceToOverwrite)
        }
        _ => Error::caused(format!("cannot create {}", out.display()), e),
    })?;
    let files = FileAssembler::new(ctx.home.files_dir(), gate.keyring.files_keys());
    let written = files.export(record.agent_id, id, &mut file).map_err(Error::from).and_then(|(size, sha256)| {
        if sha256 != record.sha256 || size != record.size as u64 {
            return Err(Error::failed("the stored file does not match the SHA-256 recorded when it arrived"));
        }
        file.sync_all().map_err(|e| Error::caused(format!("cannot write {}", out.display()), e))?;
        Ok((size, sha256))
    });
    let (size, sha256) = match written {
        Ok(done) => done,
        Err(e) => {
            let _ = std::fs::remove_file(out);
            return Err(e.context(format!("nothing was left at {}", out.display())));
        }
    };
    if ctx.json {
        return ctx.json(serde_json::json!({ "id": id, "out": out, "size": size, "sha256": sha256 }));
    }
    ctx.say(&format!("Wrote {} ({size} bytes, SHA-256 {sha256} verified).", out.display()))
}

/// `boss verify ID`: opens the stored message (or takes the stored file's
/// recorded SHA-256) and checks its signature again with the key it names
/// (revoked since, or not). Fails unless every entry with that id verifies.
pub fn verify(ctx: &mut Ctx<'_>, id: &str) -> Result<()> {
    use crate::boss::verify::{self, GlobalSignature, SignatureStatus};
    let gate = require(ctx, Action::ReadInbox)?;
    let identity = ctx.home.has_identity().then(|| ctx.home.load_identity()).transpose()?;
    let mut results = Vec::new();
    for m in &crate::db::messages::by_message_id(&gate.conn, id)? {
        let checked = verify::check(&gate.conn, &gate.keyring, identity.as_ref(), m)?;
        results.push(("message", m.agent_id, checked.status));
    }
    let boss = identity.as_ref().map(crate::crypto::IdentityKeys::public);
    for f in &crate::db::messages::files_with_id(&gate.conn, id)? {
        results.push(("file", f.agent_id, verify::check_file(&gate.conn, boss.as_ref(), f)?.0));
    }
    let id = visible(id);
    if results.is_empty() {
        return Err(Error::failed(format!("no message or file with id {id}")).hint(Hint::SeeInboxIds));
    }
    if ctx.json {
        let list: Vec<_> = results
            .iter()
            .map(|(kind, agent, status)| {
                serde_json::json!({ "agent_id": agent, "id": id, "kind": kind, "signature": status.label() })
            })
            .collect();
        ctx.json(serde_json::json!(list))?;
    } else {
        for (kind, agent, status) in &results {
            ctx.show(&format!("{kind} {id} from agent {agent}: {}", status.label()))?;
        }
    }
    // A kept global signature that does not verify fails too: what is kept must all check.
    let good = |s: &SignatureStatus| {
        matches!(s, SignatureStatus::Verified { global: GlobalSignature::Verified | GlobalSignature::Missing, .. })
    };
    match results.iter().find(|(_, _, s)| !good(s)) {
        None => Ok(()),
        Some((kind, agent, SignatureStatus::Unsigned)) => Err(Error::failed(format!(
            "{kind} {id} from agent {agent} is not signed (it came over the v1 PSK channel)"
        ))),
        Some((kind, agent, status)) => {
            Err(Error::failed(format!("{kind} {id} from agent {agent}: {}", status.label())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_reads_utc_times_and_spans() {
        assert_eq!(parse_since("1970-01-01", 0).unwrap(), 0);
        assert_eq!(parse_since("2026-12-03", 0).unwrap(), 1_796_256_000);
        assert_eq!(parse_since("2026-12-03 14:00", 0).unwrap(), 1_796_256_000 + 14 * 3600);
        assert_eq!(parse_since("2026-12-03T14:00:05", 0).unwrap(), 1_796_256_000 + 14 * 3600 + 5);
        assert_eq!(utc_time(parse_since("2000-02-29 23:59:59", 0).unwrap()), "2000-02-29 23:59:59");
        assert_eq!(parse_since("90s", 1000).unwrap(), 910);
        assert_eq!(parse_since("2h", 10_000).unwrap(), 10_000 - 7200);
        assert_eq!(parse_since("7d", 1_000_000).unwrap(), 1_000_000 - 7 * 86_400);
        for bad in ["", "yesterday", "2026-13-01", "2026-12-03 25:00", "-5m", "5w", "2026-12", "12:00", "2026-1-x"] {
            let err = parse_since(bad, 0).expect_err(bad);
            assert_eq!(err.exit_code(), crate::error::EXIT_USAGE, "{bad}");
        }
    }
}
