//! `agent add`, `agent list`, `agent key export`, and the director commands
//! `agent delete`, `agent set-level`, `agent revoke`, `agent audit`. Every one
//! of them stops at the caller's own level (the registry enforces it).

use std::path::Path;

use crate::auth::roles::{Action, Role};
use crate::cli::AgentAddArgs;
use crate::error::{Error, Hint, Result};
use crate::home;
use crate::output::{Rows, visible};
use crate::registry::{self, AuditAction, NewAgent};

use super::session::{Gate, require};
use super::{Ctx, prompt};

pub fn add(ctx: &mut Ctx<'_>, args: AgentAddArgs) -> Result<()> {
    // Refuse a non-director before asking for anything.
    let mut gate = require(ctx, Action::AddAgent)?;
    // Check the fields before asking for a password that would be thrown away.
    let level = registry::validate_identity(&args.name, &args.alias, args.level)?;
    let password = prompt::password(args.password_stdin, "New agent's password: ")?;
    let agent = NewAgent { name: args.name, alias: args.alias, level, password };
    add_as(ctx, &mut gate, &agent)
}

/// Adds an agent as the logged-in director (the demo's way in).
pub fn add_agent(ctx: &mut Ctx<'_>, agent: &NewAgent) -> Result<()> {
    let mut gate = require(ctx, Action::AddAgent)?;
    add_as(ctx, &mut gate, agent)
}

/// Adds a checked agent through an open gate and prints the result.
fn add_as(ctx: &mut Ctx<'_>, gate: &mut Gate, agent: &NewAgent) -> Result<()> {
    let id = registry::add(&mut gate.conn, &gate.keys, &gate.agent, agent)?;
    let added = registry::get(&gate.conn, &gate.keys, id)?.ok_or_else(|| Error::failed("the new agent vanished"))?;
    if ctx.json {
        return ctx.json(serde_json::json!({ "added": added }));
    }
    ctx.say(&format!("Agent added: AgentId {id}."))?;
    let mut rows = Rows::new(&["AgentId", "Name", "Alias", "Level", "Role"]);
    rows.push(vec![
        added.id.to_string(),
        added.name,
        added.alias,
        added.level.to_string(),
        Role::of_level(added.level).name().into(),
    ]);
    ctx.show(&rows.to_table())
}

pub fn list(ctx: &mut Ctx<'_>) -> Result<()> {
    let gate = require(ctx, Action::ListAgents)?;
    let agents = registry::visible_to(&gate.conn, &gate.keys, gate.agent.level)?;
    // Enrolled agents' identity fingerprints, where known.
    let fingerprints: std::collections::HashMap<i64, String> = crate::db::identities::all_current(&gate.conn)?
        .into_iter()
        .map(|i| (i.agent_id, i.public.fingerprint()))
        .collect();
    if ctx.json {
        let listed: Vec<serde_json::Value> = agents
            .iter()
            .map(|a| {
                let mut value = serde_json::json!(a);
                value["fingerprint"] = serde_json::json!(fingerprints.get(&a.id));
                value
            })
            .collect();
        return ctx.json(serde_json::json!(listed));
    }
    let mut rows = Rows::new(&["AgentId", "Name", "Alias", "Level", "Role", "Identity"]);
    for a in &agents {
        rows.push(vec![
            a.id.to_string(),
            a.name.clone(),
            a.alias.clone(),
            a.level.to_string(),
            Role::of_level(a.level).name().into(),
            fingerprints.get(&a.id).cloned().unwrap_or_else(|| "-".into()),
        ]);
    }
    ctx.show(&rows.to_table())?;
    ctx.say(&format!("{} agent(s) at or below level {}.", agents.len(), gate.agent.level))
}

pub fn export_key(ctx: &mut Ctx<'_>, agent_id: i64, out: &Path, force: bool) -> Result<()> {
    let mut gate = require(ctx, Action::ExportKey)?;
    let agent = registry::get(&gate.conn, &gate.keys, agent_id)?
        .ok_or_else(|| Error::failed(format!("no agent with AgentId {agent_id}")).hint(Hint::SeeAgentList))?;
    registry::check_ceiling(&gate.agent, agent.level)?;
    if out.exists() && !force {
        return Err(
            Error::failed(format!("{} exists; nothing was written", out.display())).hint(Hint::PassForceToOverwrite)
        );
    }
    let key = gate.keyring.agent_wire_key_at(agent_id, agent.key_generation);
    registry::record_export(&mut gate.conn, &gate.keys, &gate.agent, &agent)?;
    let mut text = key.to_base64();
    text.push('\n');
    home::write_secret_file(out, text.as_bytes())?;
    if ctx.json {
        return ctx.json(serde_json::json!({ "agent_id": agent_id, "key_file": out }));
    }
    ctx.say(&format!(
        "Wrote {}'s wire key to {} (0600). Send with: spyctl send --agent-id {agent_id} --key-file {} --addr HOST:PORT \"...\"",
        visible(&agent.name),
        out.display(),
        out.display()
    ))
}

/// `agent delete N`: removes the agent; its sessions and key stop working at once.
pub fn delete(ctx: &mut Ctx<'_>, agent_id: i64) -> Result<()> {
    let mut gate = require(ctx, Action::ManageAgents)?;
    let removed = registry::delete(&mut gate.conn, &gate.keys, &gate.agent, agent_id)?;
    if ctx.json {
        return ctx.json(serde_json::json!({ "deleted": removed }));
    }
    ctx.say(&format!("Agent {agent_id} ({}) deleted.", visible(&removed.name)))
}

/// `agent set-level N L`: moves the agent; takes effect on its next command.
pub fn set_level(ctx: &mut Ctx<'_>, agent_id: i64, level: i64) -> Result<()> {
    let level = registry::check_level(level)?;
    let mut gate = require(ctx, Action::ManageAgents)?;
    let moved = registry::set_level(&mut gate.conn, &gate.keys, &gate.agent, agent_id, level)?;
    if ctx.json {
        return ctx.json(serde_json::json!({ "agent": moved }));
    }
    ctx.say(&format!(
        "Agent {agent_id} ({}) is now level {level}, a {}.",
        visible(&moved.name),
        Role::of_level(level).name()
    ))
}

/// `agent revoke N`: a new wire key at once; the old key, sessions and
/// captured lines are refused from now on.
pub fn revoke(ctx: &mut Ctx<'_>, agent_id: i64) -> Result<()> {
    let mut gate = require(ctx, Action::ManageAgents)?;
    let generation = registry::revoke(&mut gate.conn, &gate.keys, &gate.agent, agent_id)?;
    if ctx.json {
        return ctx.json(serde_json::json!({ "revoked": agent_id, "key_generation": generation }));
    }
    ctx.say(&format!(
        "Agent {agent_id}'s key and sessions are revoked (key generation {generation}). \
         Export its new key with: spyctl agent key export {agent_id} --out FILE"
    ))
}

/// `agent enroll N`: a one-time code for agent N (at or below the caller's level).
pub fn enroll(ctx: &mut Ctx<'_>, agent_id: i64, ttl_minutes: u64) -> Result<()> {
    let mut gate = require(ctx, Action::ManageAgents)?;
    let (code, expires_at) = registry::issue_code(&mut gate.conn, &gate.keys, &gate.agent, agent_id, ttl_minutes * 60)?;
    let boss = ctx.home.load_or_create_identity()?.public().fingerprint();
    let code = zeroize::Zeroizing::new(code.to_string());
    if ctx.json {
        return ctx.json(serde_json::json!({
            "agent_id": agent_id,
            "code": code.as_str(),
            "expires_at": expires_at,
            "boss_fingerprint": boss,
        }));
    }
    ctx.show(code.as_str())?;
    ctx.say(&format!(
        "One-time code for agent {agent_id}: it works once, dies after one wrong try and expires at {} UTC.\n\
         On the agent's own machine: spyctl join {} --addr HOST:PORT\n\
         The agent should see the Boss's identity {boss}.",
        crate::output::utc_time(expires_at),
        code.as_str()
    ))
}

/// `agent audit`: who did what to which agent, when.
pub fn audit(ctx: &mut Ctx<'_>) -> Result<()> {
    let gate = require(ctx, Action::ManageAgents)?;
    let entries = registry::audit_log(&gate.conn, &gate.keys)?;
    if ctx.json {
        return ctx.json(serde_json::json!(entries));
    }
    let mut rows = Rows::new(&["When (UTC)", "Director", "Action", "Agent", "Details"]);
    for entry in &entries {
        let (action, target, details) = match &entry.action {
            AuditAction::Add { target, level } => ("add", Some(target), format!("level {level}")),
            AuditAction::Delete { target } => ("delete", Some(target), String::new()),
            AuditAction::SetLevel { target, from, to } => ("set-level", Some(target), format!("{from} -> {to}")),
            AuditAction::Revoke { target, generation } => {
                ("revoke", Some(target), format!("key generation {generation}"))
            }
            AuditAction::Enroll { target, expires_at } => {
                ("enroll", Some(target), format!("code expires {} UTC", crate::output::utc_time(*expires_at)))
            }
            AuditAction::ExportKey { target, generation } => {
                ("export key", Some(target), format!("key generation {generation}"))
            }
            AuditAction::RotateKeys { epoch } => ("key rotate", None, format!("new key epoch {epoch}")),
            AuditAction::RetireKeys { epoch } => ("key retire", None, format!("key epoch {epoch} retired")),
        };
        rows.push(vec![
            crate::output::utc_time(entry.at),
            entry.actor_id.to_string(),
            action.into(),
            target.map_or_else(|| "-".to_string(), i64::to_string),
            details,
        ]);
    }
    ctx.show(&rows.to_table())?;
    ctx.say(&format!("{} entr{}.", entries.len(), if entries.len() == 1 { "y" } else { "ies" }))
}
