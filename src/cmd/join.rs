//! `join`: on the agent's machine, enrol this home with a one-time code
//! (PROTOCOL.md, "Enrolment"). The home's identity is made here if missing
//! and never leaves it; the Boss's public keys are pinned in `boss.pin`.

use std::time::Duration;

use crate::cli::JoinArgs;
use crate::error::{Error, Hint, Result};
use crate::home::BossPin;
use crate::net::join::{self, JoinCode};

use super::Ctx;

pub fn join(ctx: &mut Ctx<'_>, args: JoinArgs) -> Result<()> {
    let code = JoinCode::parse(&args.code).map_err(|e| Error::failed(e.to_string()).hint(Hint::CodeForm))?;
    if ctx.home.has_db() {
        return Err(Error::failed(format!(
            "{} holds a Boss database; an agent joins from its own home",
            ctx.home.dir().display()
        ))
        .hint(Hint::AgentHome));
    }
    let me = ctx.home.load_or_create_identity()?;
    let pinned = ctx.home.load_pin()?.and_then(|pin| pin.boss());
    let started = std::time::Instant::now();
    let boss = join::join(&args.addr, Duration::from_secs(args.timeout), &code, &me, pinned.as_ref())?;
    let elapsed = started.elapsed();
    let now = crate::crypto::fernet::unix_now() as i64;
    ctx.home.write_pin(&BossPin::new(code.agent_id, &boss, &args.addr, now))?;
    let mine = me.public().fingerprint();
    tracing::info!(elapsed_ms = elapsed.as_secs_f64() * 1e3, "enrolment complete");
    if ctx.json {
        return ctx.json(serde_json::json!({
            "agent_id": code.agent_id,
            "fingerprint": mine,
            "boss_fingerprint": boss.fingerprint(),
            "addr": args.addr,
            "elapsed_ms": (elapsed.as_secs_f64() * 1e5).round() / 100.0,
        }));
    }
    ctx.say(&format!(
        "Enrolled as agent {}. Your identity: {mine}. The Boss's identity: {} (pinned in boss.pin).\n\
         Send with: spyctl send --addr {} \"...\"",
        code.agent_id,
        boss.fingerprint(),
        args.addr
    ))
}
