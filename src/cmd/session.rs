//! `login`, `logout`, `whoami`, and the gate every role-checked command
//! passes: a valid session whose agent still exists, at its current level.

use std::path::PathBuf;

use rusqlite::Connection;

use crate::auth::roles::{self, Action, Role};
use crate::auth::session::{self, Claims};
use crate::cli::{LoginArgs, SenderArgs};
use crate::crypto::fernet::unix_now;
use crate::crypto::{FernetKey, KeyRing};
use crate::db;
use crate::error::{Error, Hint, Result};
use crate::home::Home;
use crate::registry::{self, Agent, LoginError, RegistryKeys};

use super::{Ctx, prompt};
use crate::output::visible;

/// The home opened once: the database, the master key bound to it, and the
/// registry's keys derived from that.
pub struct Opened {
    pub conn: Connection,
    pub keyring: KeyRing,
    pub keys: RegistryKeys,
}

impl Opened {
    pub fn open(ctx: &Ctx<'_>) -> Result<Opened> {
        let master = ctx.home.load_master_key()?;
        let mut conn = db::open(&ctx.home.db_path())?;
        let keyring = crate::epochs::open_keyring(&master, &conn)?;
        let keys = RegistryKeys::derive(&keyring);
        tag_rows_once(&ctx.home, &mut conn, &keyring, &keys)?;
        Ok(Opened { conn, keys, keyring })
    }
}

/// Tags the agent rows of a database migrated from before row tags, the
/// first time this home opens it with the key, and records that it did (see
/// [`registry::seal_untagged_rows`]).
pub fn tag_rows_once(home: &Home, conn: &mut Connection, keyring: &KeyRing, keys: &RegistryKeys) -> Result<()> {
    let id = keyring.database_id();
    let before = home.tagged_before(id)?;
    let tagged = registry::seal_untagged_rows(conn, keys, before)?;
    if tagged > 0 {
        tracing::info!(rows = tagged, "tagged the agent rows of a database from before row tags");
    }
    if !before {
        home.record_tagged(id)?;
    }
    Ok(())
}

/// An open database, the home's keys, the session, and the logged-in agent
/// as it is now.
pub struct Gate {
    pub conn: Connection,
    pub keyring: KeyRing,
    pub keys: RegistryKeys,
    pub claims: Claims,
    pub agent: Agent,
}

/// Opens the home and checks the session. The agent is re-read from the
/// database, so a deleted or demoted agent loses access at once.
pub fn require_login(ctx: &Ctx<'_>) -> Result<Gate> {
    let Opened { conn, keyring, keys } = Opened::open(ctx)?;
    let session_keys = keyring.session_keys();
    let (claims, epoch_index) = session::read_any(&ctx.home.session_path(), &session_keys, unix_now())?;
    if epoch_index > 0 {
        // Sealed before the last `key rotate`: sealed again under the newest
        // epoch now, so the old epoch can be retired without logging out.
        session::write(&ctx.home.session_path(), &session_keys[0], &claims)?;
    }
    let agent = registry::get(&conn, &keys, claims.agent_id)?
        .ok_or_else(|| Error::failed("your agent record no longer exists").hint(Hint::LoginAgain))?;
    if agent.key_generation != claims.key_generation {
        return Err(Error::failed("your session was revoked by a director").hint(Hint::LoginAgain));
    }
    Ok(Gate { conn, keyring, keys, claims, agent })
}

/// [`require_login`], then a role check for `action`.
pub fn require(ctx: &Ctx<'_>, action: Action) -> Result<Gate> {
    let gate = require_login(ctx)?;
    if !roles::allows(gate.agent.level, action) {
        return Err(Error::failed(format!(
            "refused: a {} (level {}) may not {}",
            Role::of_level(gate.agent.level).name(),
            gate.agent.level,
            action.describe()
        ))
        .hint(Hint::LoginAsDirector));
    }
    Ok(gate)
}

/// Who is sending (`send`, `boss bench`), checked.
pub enum Identity {
    /// The logged-in agent, with the key the home derives for it.
    LoggedIn,
    /// An agent id with its exported key file: needs no database.
    KeyFile { agent_id: i64, path: PathBuf },
}

impl Identity {
    pub fn check(to: &SenderArgs) -> Result<Identity> {
        match (to.agent_id, &to.key_file) {
            (Some(agent_id), _) if agent_id < 1 => Err(Error::usage("--agent-id must be a positive AgentId")),
            (Some(agent_id), Some(path)) => Ok(Identity::KeyFile { agent_id, path: path.clone() }),
            // clap requires the two flags together.
            _ => Ok(Identity::LoggedIn),
        }
    }
}

/// The agent id and wire key to send with.
pub fn identity_key(ctx: &Ctx<'_>, identity: &Identity) -> Result<(i64, FernetKey)> {
    match identity {
        Identity::KeyFile { agent_id, path } => {
            let text = crate::home::read_secret_file(path)?;
            let key = FernetKey::from_base64(&text).map_err(|e| Error::caused(path.display().to_string(), e))?;
            Ok((*agent_id, key))
        }
        Identity::LoggedIn => {
            let gate = require(ctx, Action::Send)?;
            Ok((gate.agent.id, gate.keyring.agent_wire_key_at(gate.agent.id, gate.agent.key_generation)))
        }
    }
}

pub fn login(ctx: &mut Ctx<'_>, args: LoginArgs) -> Result<()> {
    if args.name.is_none() && args.password_stdin {
        return Err(Error::usage("--password-stdin needs --name (stdin carries the password)"));
    }
    // On a full disk, give back the home's reserve before the database is
    // opened: the login must record its attempt before checking the password.
    ctx.home.release_reserve_if_full();
    // Fail on a missing home before prompting for anything.
    let mut opened = Opened::open(ctx)?;
    let name = match args.name {
        Some(n) => n,
        None => prompt::visible("Agent name: ")?,
    };
    let password = prompt::password(args.password_stdin, "Password: ")?;
    login_with(ctx, &mut opened, &name, &password, args.ttl)
}

/// Opens the home, then [`login_with`] (the demo logs in this way).
pub fn login_as(ctx: &mut Ctx<'_>, name: &str, password: &str, ttl: u64) -> Result<()> {
    let mut opened = Opened::open(ctx)?;
    login_with(ctx, &mut opened, name, password, ttl)
}

/// Checks the credentials, writes the session and greets the agent.
fn login_with(ctx: &mut Ctx<'_>, opened: &mut Opened, name: &str, password: &str, ttl: u64) -> Result<()> {
    let now = unix_now();
    let agent = registry::login(&mut opened.conn, &opened.keys, name, password, now as i64).map_err(|e| match e {
        LoginError::Locked { until } => Error::failed(format!(
            "login refused: too many failed attempts; try again in {} minute(s)",
            ((until - now as i64).max(1) + 59) / 60
        )),
        other => Error::from(other),
    })?;
    let expires_at =
        now.checked_add(ttl.min(session::MAX_TTL_SECS)).ok_or_else(|| Error::usage("--ttl is out of range"))?;
    let claims = Claims { agent_id: agent.id, level: agent.level, expires_at, key_generation: agent.key_generation };
    session::write(&ctx.home.session_path(), &opened.keyring.session_key(), &claims)?;
    // First use of a home made before the reserve, or space freed since it
    // was released: make it (again) for the next full disk.
    ctx.home.ensure_reserve();
    if ctx.json {
        return ctx.json(serde_json::json!({ "agent": agent, "expires_at": claims.expires_at }));
    }
    ctx.say(&format!(
        "Welcome, {}. Logged in as a {} (level {}) until {} UTC.",
        visible(&agent.name),
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
    // A joined agent's home holds no database: its identity is who it is.
    if !ctx.home.has_db()
        && let Some(pin) = ctx.home.load_pin()?
    {
        let public = ctx.home.load_identity()?.public();
        let mine = public.fingerprint();
        // What `boss export`'s agent.pub must hold for this agent's key.
        let minisign = crate::crypto::minisign::public_key_line(&public.ed25519);
        if ctx.json {
            return ctx.json(serde_json::json!({
                "agent_id": pin.agent_id,
                "fingerprint": mine,
                "minisign_public_key": minisign,
                "boss_fingerprint": pin.boss_fingerprint,
                "boss_addr": pin.addr,
            }));
        }
        ctx.show(&format!(
            "agent {}, identity {mine}; enrolled with the Boss {} at {}",
            pin.agent_id, pin.boss_fingerprint, pin.addr
        ))?;
        return ctx.show(&format!("minisign public key (what `boss export` files must hold): {minisign}"));
    }
    let gate = require_login(ctx)?;
    let boss = ctx.home.has_identity().then(|| ctx.home.load_identity()).transpose()?.map(|k| k.public().fingerprint());
    let claims = &gate.claims;
    let role = Role::of_level(gate.agent.level).name();
    if ctx.json {
        return ctx.json(serde_json::json!({
            "agent": gate.agent,
            "role": role,
            "expires_at": claims.expires_at,
            "boss_fingerprint": boss,
        }));
    }
    ctx.show(&format!(
        "{} (alias {}), agent {}, {} (level {}); session ends {} UTC",
        visible(&gate.agent.name),
        visible(&gate.agent.alias),
        gate.agent.id,
        role,
        gate.agent.level,
        crate::output::utc_time(claims.expires_at as i64)
    ))?;
    match boss {
        Some(fingerprint) => ctx.say(&format!("This home's Boss identity: {fingerprint}")),
        None => Ok(()),
    }
}
