//! Checking a stored message's signature again (`boss inbox`, `boss verify`):
//! open its token with the key it arrived under, rebuild the canonical
//! statement from what the token holds, and verify the kept signature with
//! the kept public key (which may since have been revoked).

use rusqlite::Connection;

use crate::crypto::identity::{Side, statement};
use crate::crypto::{IdentityKeys, KeyRing};
use crate::db::messages::StoredMessage;
use crate::db::{DbError, agents, identities};
use crate::net::protocol;

/// What a message's signature says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureStatus {
    /// Sent over the v1 PSK channel: authenticated, not signed.
    Unsigned,
    /// Signed by the agent key with this fingerprint (revoked since, or not).
    Verified { fingerprint: String, revoked: bool },
    /// A signature is stored but does not verify (or its key is unknown).
    Invalid(&'static str),
}

impl SignatureStatus {
    pub fn label(&self) -> String {
        match self {
            SignatureStatus::Unsigned => "unsigned".into(),
            SignatureStatus::Verified { fingerprint, revoked: false } => format!("verified {fingerprint}"),
            SignatureStatus::Verified { fingerprint, revoked: true } => {
                format!("verified {fingerprint} (since-revoked key)")
            }
            SignatureStatus::Invalid(why) => format!("INVALID: {why}"),
        }
    }
}

/// A stored message opened: its body (if this home can open it) and its
/// signature's status.
pub struct Checked {
    pub body: Option<Vec<u8>>,
    pub status: SignatureStatus,
}

/// Opens and checks one stored message. `boss` is the Boss's identity (None
/// in a home that has none: signed messages then cannot be opened).
pub fn check(
    conn: &Connection,
    keyring: &KeyRing,
    boss: Option<&IdentityKeys>,
    m: &StoredMessage,
) -> Result<Checked, DbError> {
    let body_of = |plaintext: &[u8]| protocol::decode_message(plaintext).ok().map(|(h, b)| (h, b.to_vec()));
    let Some(sig) = &m.signature else {
        // Sealed under the generation current when it arrived: any up to now.
        let newest = agents::by_id(conn, m.agent_id)?.map_or(0, |a| a.key_generation);
        // A row written before key epochs existed records epoch 0.
        let epoch = m.key_epoch.unwrap_or(0);
        let body =
            keyring.open_agent_token(m.agent_id, newest, epoch, m.token.as_bytes()).and_then(|o| body_of(&o.plaintext));
        return Ok(Checked { body: body.map(|(_, b)| b), status: SignatureStatus::Unsigned });
    };
    let invalid = |why| Ok(Checked { body: None, status: SignatureStatus::Invalid(why) });
    let Some(signer) = identities::by_row(conn, sig.signer_row)? else {
        return invalid("its key is not in AgentIdentities");
    };
    if signer.agent_id != m.agent_id {
        return invalid("its key belongs to another agent");
    }
    let Some(boss) = boss else { return invalid("this home has no Boss identity to open it with") };
    let Some(key) = boss.channel_key(Side::Boss, &signer.public, m.agent_id) else {
        return invalid("its key gives no channel");
    };
    let Some((header, body)) = key.open(m.token.as_bytes(), None).ok().and_then(|o| body_of(&o.plaintext)) else {
        return invalid("its token does not open");
    };
    let Ok(signed_at) = u64::try_from(sig.signed_at) else { return invalid("bad time") };
    let statement = statement(&boss.public().ed25519, m.agent_id, &header.id, "text", &body, signed_at);
    let status = match signer.public.verify(&statement, &sig.signature) {
        Ok(()) => {
            SignatureStatus::Verified { fingerprint: signer.public.fingerprint(), revoked: signer.revoked_at.is_some() }
        }
        Err(_) => SignatureStatus::Invalid("the signature does not verify"),
    };
    Ok(Checked { body: Some(body), status })
}
