//! `send`: a text, each line of stdin, or a file, to the Boss; waits for and
//! verifies each acknowledgement. A file upload that was cut off resumes
//! from what the Boss holds, through the home's upload journal.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::SendArgs;
use crate::crypto::identity::Side;
use crate::crypto::{IdentityKeys, PublicIdentity};
use crate::error::{Error, Hint, Result};
use crate::net::client::{ClientConfig, Delivered, MessageSigner, Sender};
use crate::net::ids::random_id;
use crate::net::protocol::{AckStatus, Header, Kind};

use crate::resumable::{self, FileTransport, Plan};

use super::Ctx;
use super::session::{Identity, identity_key};

/// What `send` sends.
pub enum Payload {
    Text(String),
    /// A regular file; `name` is what the Boss records (sealed) for it.
    File {
        path: PathBuf,
        name: String,
        size: u64,
    },
    /// Each non-empty line of stdin, over one connection.
    StdinLines,
}

/// A checked `send`: every flag validated, the file found, before any work.
pub struct SendRequest {
    /// `--addr` or `SPYCTL_ADDR`; None: the joined address, else [`crate::cli::DEFAULT_ADDR`].
    pub addr: Option<String>,
    pub identity: Identity,
    pub timeout: Duration,
    pub attempts: u32,
    pub payload: Payload,
    pub protocol: crate::cli::Protocol,
}

impl SendRequest {
    pub fn check(args: SendArgs) -> Result<SendRequest> {
        if args.timeout == 0 || args.attempts == 0 {
            return Err(Error::usage("--timeout and --attempts must be at least 1"));
        }
        let identity = Identity::check(&args.to)?;
        let payload = match (args.text, args.file) {
            (Some(text), _) if text.trim().is_empty() => {
                return Err(Error::failed("nothing to send: the message is empty"));
            }
            (Some(text), _) => Payload::Text(text),
            (None, Some(path)) => {
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .ok_or_else(|| Error::failed(format!("{} has no usable file name", path.display())))?
                    .to_string();
                let meta = std::fs::metadata(&path)
                    .map_err(|e| Error::caused(format!("cannot read {}", path.display()), e))?;
                if !meta.is_file() {
                    return Err(Error::failed(format!("{} is not a regular file", path.display())));
                }
                Payload::File { size: meta.len(), path, name }
            }
            (None, None) => Payload::StdinLines,
        };
        Ok(SendRequest {
            addr: args.to.addr,
            identity,
            timeout: Duration::from_secs(args.timeout),
            attempts: args.attempts,
            payload,
            protocol: args.protocol,
        })
    }
}

/// How `--json` prints each result: one pretty object for a single send, or
/// one compact object per line (JSON Lines) when stdin lines are sent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum JsonStyle {
    Single,
    Lines,
}

fn report(ctx: &mut Ctx<'_>, what: &str, delivered: &Delivered, style: JsonStyle) -> Result<()> {
    report_with(ctx, what, delivered, style, serde_json::Map::new())
}

/// [`report`] with `extra` fields in the JSON.
fn report_with(
    ctx: &mut Ctx<'_>,
    what: &str,
    delivered: &Delivered,
    style: JsonStyle,
    extra: serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    if ctx.json {
        let mut value = serde_json::json!({
            "sent": what,
            "status": delivered.status,
            "reply": delivered.reply,
            "attempts": delivered.attempts,
        });
        value.as_object_mut().expect("an object").extend(extra);
        if let Some(receipt) = &delivered.receipt {
            // Already checked against the pinned Boss key.
            value["receipt"] =
                serde_json::json!({ "statement": receipt.statement, "signature": hex::encode(receipt.signature) });
        }
        return match style {
            JsonStyle::Single => ctx.json(value),
            JsonStyle::Lines => ctx.json_line(value),
        };
    }
    let status = match delivered.status {
        AckStatus::Stored => "stored",
        AckStatus::Duplicate => "already stored (duplicate)",
    };
    ctx.show(&format!("Boss: {} [{status}]", crate::output::visible(&delivered.reply)))
}

/// `send --file` over v1 or v2 (`transport`): resumes an interrupted upload
/// of the same file (see [`crate::resumable`]) and says where it started.
/// `protocol` is added to the JSON when it is not v1's.
pub(super) fn send_file(
    ctx: &mut Ctx<'_>,
    transport: &mut dyn FileTransport,
    agent_id: i64,
    path: &Path,
    name: &str,
    protocol: Option<&str>,
) -> Result<()> {
    // The journal lives in the sender's home. A sender with a key file and
    // no home still sends (no home is made for it), but cannot resume
    // across runs.
    let home = ctx.home.dir().is_dir().then(|| ctx.home.dir().to_path_buf());
    if home.is_none() {
        ctx.say(&format!(
            "No home at {} to keep a resume journal in: an interrupted upload will start over.",
            ctx.home.dir().display()
        ))?;
    }
    let prepared = resumable::prepare(home.as_deref(), agent_id, transport, path)?;
    let restarted = match &prepared.plan {
        Plan::Fresh { restarted: Some(why) } => {
            ctx.say(&format!("Starting over from byte 0: {why}."))?;
            Some(*why)
        }
        Plan::Resume { offset } => {
            let size = prepared.size;
            ctx.say(&format!("Resuming at byte {offset} of {size}: the Boss holds the bytes before it."))?;
            None
        }
        Plan::Fresh { restarted: None } | Plan::Received { .. } => None,
    };
    let bar = crate::progress::bar(prepared.size, ctx.quiet || ctx.json);
    if let Plan::Resume { offset } = prepared.plan {
        bar.set_position(offset);
    }
    let outcome = prepared.send(transport, name, |done, _| bar.set_position(done));
    bar.finish_and_clear();
    let outcome = outcome?;
    let mut extra = serde_json::Map::new();
    extra.insert("resumed_from".into(), outcome.resumed_from.into());
    extra.insert("bytes_sent".into(), outcome.bytes_sent.into());
    extra.insert("interruptions".into(), outcome.interruptions.into());
    if let Some(why) = restarted {
        extra.insert("restarted".into(), why.into());
    }
    if let Some(protocol) = protocol {
        extra.insert("protocol".into(), protocol.into());
    }
    report_with(ctx, name, &outcome.delivered, JsonStyle::Single, extra)
}

/// A joined agent's home (no database, a pinned Boss): its identity, the
/// pinned Boss, its agent id and the address it joined.
pub(super) struct Joined {
    pub keys: IdentityKeys,
    pub boss: PublicIdentity,
    pub agent_id: i64,
    pub addr: String,
}

impl Joined {
    /// Checks the Boss at `addr` against the pin, then gives the channel key.
    pub fn channel(&self, addr: &str, timeout: Duration) -> Result<crate::crypto::FernetKey> {
        crate::net::join::check_boss(addr, timeout, &self.boss)?;
        self.keys
            .channel_key(Side::Agent, &self.boss, self.agent_id)
            .ok_or_else(|| Error::failed("boss.pin holds no usable keys").hint(Hint::JoinAgain))
    }

    /// Signs each message and checks each receipt, as this agent.
    pub fn signer(&self) -> MessageSigner<'_> {
        MessageSigner::new(&self.keys, self.boss.ed25519, self.agent_id)
    }
}

pub(super) fn joined(ctx: &Ctx<'_>, identity: &Identity) -> Result<Option<Joined>> {
    if !matches!(identity, Identity::LoggedIn) || ctx.home.has_db() {
        return Ok(None);
    }
    let Some(pin) = ctx.home.load_pin()? else { return Ok(None) };
    let boss = pin.boss().ok_or_else(|| Error::failed("boss.pin holds no usable keys").hint(Hint::JoinAgain))?;
    Ok(Some(Joined { keys: ctx.home.load_identity()?, boss, agent_id: pin.agent_id, addr: pin.addr }))
}

pub fn send(ctx: &mut Ctx<'_>, request: SendRequest) -> Result<()> {
    // From a joined home: the channel key of the two identities, every text
    // signed, and the Boss checked against the pinned keys before anything
    // is sent. Otherwise the v1 PSK channel, as before.
    let joined = joined(ctx, &request.identity)?;
    // A joined home sends where it joined unless told otherwise.
    let addr = match (request.addr.clone(), &joined) {
        (Some(addr), _) => addr,
        (None, Some(j)) => j.addr.clone(),
        (None, None) => crate::cli::DEFAULT_ADDR.to_string(),
    };
    if request.protocol == crate::cli::Protocol::V2 {
        let Some(joined) = &joined else {
            return Err(Error::failed(
                "--protocol v2 needs an enrolled identity: run it in a home made by `spyctl join`",
            )
            .hint(Hint::AgentHome));
        };
        return super::send_v2::send(ctx, &request, &addr, &joined.keys, &joined.boss, joined.agent_id);
    }
    let (agent_id, key) = match &joined {
        Some(j) => (j.agent_id, j.channel(&addr, request.timeout)?),
        None => identity_key(ctx, &request.identity)?,
    };
    let signer = joined.as_ref().map(Joined::signer);
    let config = ClientConfig { addr, timeout: request.timeout, attempts: request.attempts, ..ClientConfig::default() };
    let mut sender = Sender::new(config, agent_id, &key).with_signer(signer);

    match request.payload {
        Payload::File { path, name, .. } => send_file(ctx, &mut sender, agent_id, &path, &name, None),
        Payload::Text(text) => {
            let header = Header { id: random_id(), kind: Kind::Text };
            let delivered = sender.send(&header, text.as_bytes())?;
            report(ctx, "text", &delivered, JsonStyle::Single)
        }
        Payload::StdinLines => {
            let stdin = std::io::stdin();
            let mut sent = 0usize;
            for line in stdin.lock().lines() {
                let line = line.map_err(|e| Error::caused("cannot read stdin", e))?;
                if line.trim().is_empty() {
                    continue;
                }
                let header = Header { id: random_id(), kind: Kind::Text };
                let delivered = sender
                    .send(&header, line.as_bytes())
                    .map_err(|e| Error::from(e).context(format!("after {sent} message(s)")))?;
                report(ctx, "text", &delivered, JsonStyle::Lines)?;
                sent += 1;
            }
            if sent == 0 {
                return Err(
                    Error::failed("nothing to send: no TEXT, no --file, and no lines on stdin").hint(Hint::SendExample)
                );
            }
            Ok(())
        }
    }
}
