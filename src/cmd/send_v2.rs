//! `send --protocol v2`: text or a file over a Noise IK session from a
//! joined home. Parses nothing and prints the same lines as v1's `send`; the
//! session itself is `net::v2_client`, a file's chunks `net::v2_upload`.

use std::io::BufRead;

use crate::crypto::{IdentityKeys, PublicIdentity};
use crate::error::{Error, Hint, Result};
use crate::net::client::MessageSigner;
use crate::net::ids::random_id;
use crate::net::protocol::{AckStatus, Header, Kind};
use crate::net::v2_client::V2Client;
use crate::net::v2_upload::V2Uploader;

use super::Ctx;
use super::send::{Payload, SendRequest};

/// The joined home's identity, pinned Boss and AgentId (`send::joined`),
/// or the error for a home that never joined: v2 needs an enrolled identity.
pub(super) fn joined_identity(ctx: &Ctx<'_>) -> Result<super::send::Joined> {
    super::send::joined(ctx, &super::session::Identity::LoggedIn)?.ok_or_else(|| {
        Error::failed("v2 needs an enrolled identity: run it in a home made by `spyctl join`").hint(Hint::AgentHome)
    })
}

/// Says, on stderr, that this clock is off the Boss's (said before anything
/// can fail on it: the Boss checks signature times).
pub(super) fn warn_skew(skew: Option<i64>) {
    if let Some(skew) = skew {
        eprintln!(
            "spyctl: warning: this machine's clock is {} s {} the Boss's",
            skew.unsigned_abs(),
            if skew > 0 { "behind" } else { "ahead of" }
        );
    }
}

pub fn send(
    ctx: &mut Ctx<'_>,
    request: &SendRequest,
    addr: &str,
    me: &IdentityKeys,
    boss: &PublicIdentity,
    agent_id: i64,
) -> Result<()> {
    let texts: Vec<String> = match &request.payload {
        Payload::Text(text) => vec![text.clone()],
        Payload::StdinLines => std::io::stdin()
            .lock()
            .lines()
            .map(|line| line.map_err(|e| Error::caused("cannot read stdin", e)))
            .filter(|line| !matches!(line, Ok(l) if l.trim().is_empty()))
            .collect::<Result<_>>()?,
        Payload::File { path, name, .. } => {
            let mut uploader = V2Uploader::connect(addr, request.timeout, request.attempts, me, boss, agent_id)?;
            warn_skew(uploader.skew);
            return super::send::send_file(ctx, &mut uploader, agent_id, path, name, Some("v2"));
        }
    };
    if texts.is_empty() {
        return Err(Error::failed("nothing to send: no TEXT and no lines on stdin").hint(Hint::SendExample));
    }
    let mut session = V2Client::connect(addr, request.timeout, me, boss, agent_id)?;
    warn_skew(session.skew);
    let signer = MessageSigner::new(me, boss.ed25519, agent_id);
    for text in &texts {
        let header = Header { id: random_id(), kind: Kind::Text };
        let (ack, reply) = session.send(&signer.encode(&header, text.as_bytes()))?;
        let body_sha256 = {
            use sha2::{Digest, Sha256};
            hex::encode(Sha256::digest(text.as_bytes()))
        };
        let receipt = signer.check_receipt(&ack, &body_sha256)?;
        if ctx.json {
            let value = serde_json::json!({
                "sent": "text",
                "status": ack.status,
                "reply": reply,
                "protocol": "v2",
                "receipt": { "statement": receipt.statement, "signature": hex::encode(receipt.signature) },
            });
            if texts.len() == 1 {
                ctx.json(value)?
            } else {
                ctx.json_line(value)?
            }
            continue;
        }
        let status = match ack.status {
            AckStatus::Stored => "stored",
            AckStatus::Duplicate => "already stored (duplicate)",
        };
        ctx.show(&format!("Boss: {} [{status}, v2]", crate::output::visible(&reply)))?;
    }
    Ok(())
}
