//! `login`, `logout`, `whoami`, and the gate every role-checked command
//! passes: a valid session whose agent still exists, at its current level.

use rusqlite::Connection;

use crate::auth::roles::{self, Action, Role};
use crate::auth::session::{self, Claims};
use crate::cli::LoginArgs;
use crate::crypto::fernet::unix_now;
use crate::crypto::{FernetKey, MasterKey};
use crate::db;
use crate::error::{Error, Result};
use crate::registry::{self, Agent, LoginError, RegistryKeys};

use super::{Ctx, prompt};

/// An open database, the home's keys, and the logged-in agent as it is now.
pub struct Gate {
    pub conn: Connection,
    pub master: MasterKey,
    pub keys: RegistryKeys,
    pub agent: Agent,
}

/// Opens the home and checks the session. The agent is re-read from the
/// database, so a deleted or demoted agent loses access at once.
pub fn require_login(ctx: &Ctx<'_>) -> Result<Gate> {
    let master = ctx.home.load_master_key()?;
    let conn = db::open(&ctx.home.db_path())?;
    let claims = session::read(&ctx.home.session_path(), &master.session_key(), unix_now())?;
    let keys = RegistryKeys::derive(&master);
    let agent = registry::get(&conn, &keys, claims.agent_id)?
        .ok_or_else(|| Error::new("your agent record no longer exists").hint("run `spyctl login` again"))?;
    Ok(Gate { conn, master, keys, agent })
}

/// [`require_login`], then a role check for `action`.
pub fn require(ctx: &Ctx<'_>, action: Action) -> Result<Gate> {
    let gate = require_login(ctx)?;
    if !roles::allows(gate.agent.level, action) {
        return Err(Error::new(format!(
            "refused: a {} (level {}) may not {}",
            Role::of_level(gate.agent.level).name(),
            gate.agent.level,
            action.describe()
        ))
        .hint("log in as a director (level 4-5)"));
    }
    Ok(gate)
}

/// Who is sending (`send`, `boss bench`): an agent id with its exported key
/// file, which needs no database, or else the logged-in agent.
pub fn sender_identity(ctx: &Ctx<'_>, to: &crate::cli::SenderArgs) -> Result<(i64, FernetKey)> {
    if let (Some(agent_id), Some(path)) = (to.agent_id, &to.key_file) {
        if agent_id < 1 {
            return Err(Error::usage("--agent-id must be a positive AgentId"));
        }
        let text = crate::home::read_secret_file(path)?;
        let key = FernetKey::from_base64(&text).map_err(|e| Error::new(format!("{}: {e}", path.display())))?;
        return Ok((agent_id, key));
    }
    let gate = require(ctx, Action::Send)?;
    Ok((gate.agent.id, gate.master.agent_wire_key(gate.agent.id)))
}

pub fn login(ctx: &mut Ctx<'_>, args: LoginArgs) -> Result<()> {
    // Fail on a missing home before prompting for anything.
    ctx.home.load_master_key()?;
    db::open(&ctx.home.db_path())?;
    let name = match args.name {
        Some(n) => n,
        None if args.password_stdin => {
            return Err(Error::usage("--password-stdin needs --name (stdin carries the password)"));
        }
        None => prompt::visible("Agent name: ")?,
    };
    let password = prompt::password(args.password_stdin, "Password: ")?;
    login_as(ctx, &name, &password, args.ttl)
}

/// Checks the credentials, writes the session and greets the agent.
pub fn login_as(ctx: &mut Ctx<'_>, name: &str, password: &str, ttl: u64) -> Result<()> {
    let master = ctx.home.load_master_key()?;
    let mut conn = db::open(&ctx.home.db_path())?;
    let keys = RegistryKeys::derive(&master);
    let now = unix_now();
    let agent = registry::login(&mut conn, &keys, name, password, now as i64).map_err(|e| match e {
        LoginError::BadCredentials => Error::new("login failed: unknown name or wrong password"),
        LoginError::Locked { until } => Error::new(format!(
            "login refused: too many failed attempts; try again in {} minute(s)",
            ((until - now as i64).max(1) + 59) / 60
        )),
        LoginError::Other(e) => e.into(),
    })?;
    let expires_at =
        now.checked_add(ttl.min(session::MAX_TTL_SECS)).ok_or_else(|| Error::usage("--ttl is out of range"))?;
    let claims = Claims { agent_id: agent.id, level: agent.level, expires_at };
    session::write(&ctx.home.session_path(), &master.session_key(), &claims)?;
    if ctx.json {
        return ctx.json(serde_json::json!({ "agent": agent, "expires_at": claims.expires_at }));
    }
    ctx.say(&format!(
        "Welcome, {}. Logged in as a {} (level {}) until {} UTC.",
        agent.name,
        Role::of_level(agent.level).name(),
        agent.level,
        crate::output::utc_time(claims.expires_at as i64)
    ))
}

pub fn logout(ctx: &mut Ctx<'_>) -> Result<()> {
    let removed = session::remove(&ctx.home.session_path())?;
    if ctx.json {
        return ctx.json(serde_json::json!({ "logged_out": removed }));
    }
    ctx.say(if removed { "Logged out." } else { "You were not logged in." })
}

pub fn whoami(ctx: &mut Ctx<'_>) -> Result<()> {
    let gate = require_login(ctx)?;
    let claims = session::read(&ctx.home.session_path(), &gate.master.session_key(), unix_now())?;
    let role = Role::of_level(gate.agent.level).name();
    if ctx.json {
        return ctx.json(serde_json::json!({
            "agent": gate.agent,
            "role": role,
            "expires_at": claims.expires_at,
        }));
    }
    ctx.show(&format!(
        "{} (alias {}), agent {}, {} (level {}); session ends {} UTC",
        gate.agent.name,
        gate.agent.alias,
        gate.agent.id,
        role,
        gate.agent.level,
        crate::output::utc_time(claims.expires_at as i64)
    ))
}
