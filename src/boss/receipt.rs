//! Signed receipts (issue 13): every ACK to an enrolled agent carries the
//! Boss's Ed25519 signature over a canonical receipt statement
//! ([`crate::crypto::identity::receipt`], PROTOCOL.md "Signed receipts"), so
//! the agent holds proof, checkable against the Boss key it pinned at
//! `join`, that the Boss filed this message with this content.
//!
//! [`AckKey`] travels with an ACK from the moment its line is opened until
//! the reply is sealed (possibly after a group commit): the Fernet key, and
//! for an enrolled agent what its receipt names.

use sha2::{Digest, Sha256};

use std::sync::Arc;

use crate::crypto::identity::receipt;
use crate::crypto::{FernetKey, IdentityKeys};
use crate::net::protocol::{self, AckStatus};

/// What seals an ACK: the agent's Fernet key and, for an enrolled agent,
/// the facts its receipt names.
pub struct AckKey {
    fernet: Arc<FernetKey>,
    receipt: Option<ReceiptFacts>,
}

/// The parts of a receipt known when the line is read.
struct ReceiptFacts {
    agent_id: i64,
    body_sha256: String,
}

impl AckKey {
    /// An ACK key for a v1 (PSK) agent: no receipt.
    pub fn plain(fernet: Arc<FernetKey>) -> Self {
        AckKey { fernet, receipt: None }
    }

    /// An ACK key for an enrolled agent's `MSG` with this body: its ACKs
    /// carry a signed receipt.
    pub fn signed(fernet: Arc<FernetKey>, agent_id: i64, body: &[u8]) -> Self {
        AckKey { fernet, receipt: Some(ReceiptFacts { agent_id, body_sha256: hex::encode(Sha256::digest(body)) }) }
    }

    /// The `ACK <token>` line: sealed under the agent's key, with a receipt
    /// signed by `boss` when the agent is enrolled.
    pub fn ack(&self, boss: &IdentityKeys, id: &str, status: AckStatus, reply: &str) -> String {
        protocol::format_ack(&self.fernet.seal(&self.plaintext(boss, id, status, reply)))
    }

    /// The ACK's plaintext (header with the signed receipt, if any, and the
    /// reply): sealed by [`Self::ack`] for v1, sent in a Noise frame for v2.
    pub fn plaintext(&self, boss: &IdentityKeys, id: &str, status: AckStatus, reply: &str) -> Vec<u8> {
        match &self.receipt {
            None => protocol::encode_ack(id, status, reply),
            Some(facts) => {
                let time = crate::crypto::fernet::unix_now();
                let statement =
                    receipt(&boss.public().ed25519, facts.agent_id, id, &facts.body_sha256, status.as_str(), time);
                let signature = boss.sign(&statement);
                protocol::encode_signed_ack(id, status, reply, Some((time, &signature)))
            }
        }
    }
}
