//! Agents' signatures: checking one as it arrives ([`check_sent`], before
//! the Boss stores a message or completes a file), and checking a stored one
//! again (`boss inbox`, `boss verify`, `boss export`): open its token with the
//! key it arrived under (files: take the recorded SHA-256), rebuild the
//! canonical statement, and verify the kept signatures with the kept public
//! key (which may since have been revoked).

use std::borrow::Cow;

use rusqlite::Connection;
use sha2::{Digest, Sha256};

use crate::crypto::identity::{Side, statement_for_sha256};
use crate::crypto::minisign::{self, StatementSignatures};
use crate::crypto::{IdentityKeys, KeyRing, PublicIdentity};
use crate::db::messages::{MessageSignature, StoredFile, StoredMessage};
use crate::db::{DbError, agents, identities};
use crate::net::protocol::{self, MessageSig};

/// What a statement is about: a text message (by its id and body) or a whole
/// file (by its file id and SHA-256).
pub struct Subject<'a> {
    kind: &'static str,
    id: &'a str,
    sha256: Cow<'a, str>,
}

impl<'a> Subject<'a> {
    pub fn text(id: &'a str, body: &[u8]) -> Self {
        Subject { kind: "text", id, sha256: Cow::Owned(hex::encode(Sha256::digest(body))) }
    }

    pub fn file(file_id: &'a str, sha256_hex: &'a str) -> Self {
        Subject { kind: "file", id: file_id, sha256: Cow::Borrowed(sha256_hex) }
    }

    fn statement(&self, boss_ed25519: &[u8; 32], agent_id: i64, time: u64) -> Vec<u8> {
        statement_for_sha256(boss_ed25519, agent_id, self.id, self.kind, &self.sha256, time)
    }
}

/// Checks what an enrolled agent sent: both signatures (the statement's and
/// minisign's global one) must be there, and the statement's must verify
/// under its current key. The error is the reason to log and to answer with
/// `ERR auth`.
///
/// The global signature is kept unchecked here: it signs `signature ||
/// trusted comment`, which says nothing the statement signature does not,
/// and only minisign needs it. `boss verify`, `boss inbox` and `boss export`
/// check it (see [`GlobalSignature`]); a bad one spoils only that agent's
/// own export. Checking it here would be a second Ed25519 verification per
/// message (~46 µs, BENCHMARKS.md "Identities").
pub fn check_sent(
    boss_ed25519: &[u8; 32],
    identity: &identities::StoredIdentity,
    subject: Subject<'_>,
    sig: Option<MessageSig>,
) -> Result<MessageSignature, &'static str> {
    let sig = sig.ok_or("an enrolled agent must sign every message and file")?;
    let trusted = sig.trusted.ok_or("the signature has no tsig (the global signature minisign checks)")?;
    let statement = subject.statement(boss_ed25519, identity.agent_id, sig.time);
    identity
        .verifier
        .ok_or("its key is not a valid Ed25519 key")?
        .verify(&statement, &sig.signature)
        .map_err(|_| "the signature does not verify")?;
    let signed_at = i64::try_from(sig.time).map_err(|_| "the signature's time is out of range")?;
    Ok(MessageSignature {
        signature: sig.signature.to_vec(),
        signed_at,
        signer_row: identity.row_id,
        trusted: Some(trusted.to_vec()),
    })
}

/// What `boss export` writes beside the body: the statement, its
/// signatures and the key that made them, all checked.
pub struct Evidence {
    pub statement: Vec<u8>,
    pub signatures: StatementSignatures,
    pub signer: PublicIdentity,
}

/// minisign's global signature kept with a verified statement signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlobalSignature {
    /// It verifies: the entry can be exported for `minisign -V`.
    Verified,
    /// None was kept (sent before exports existed).
    Missing,
    /// It does not verify (the agent's client sent a bad one): the message
    /// is still the agent's, but it cannot be exported for minisign.
    Bad,
}

/// What a message's signature says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureStatus {
    /// Sent over the v1 PSK channel: authenticated, not signed.
    Unsigned,
    /// Signed by the agent key with this fingerprint (revoked since, or not).
    Verified { fingerprint: String, revoked: bool, global: GlobalSignature },
    /// A signature is stored but does not verify (or its key is unknown).
    Invalid(&'static str),
}

impl SignatureStatus {
    pub fn label(&self) -> String {
        match self {
            SignatureStatus::Unsigned => "unsigned".into(),
            SignatureStatus::Verified { fingerprint, revoked, global } => {
                let revoked = if *revoked { " (since-revoked key)" } else { "" };
                let global = match global {
                    GlobalSignature::Verified | GlobalSignature::Missing => "",
                    GlobalSignature::Bad => "; its minisign global signature does NOT verify",
                };
                format!("verified {fingerprint}{revoked}{global}")
            }
            SignatureStatus::Invalid(why) => format!("INVALID: {why}"),
        }
    }
}

/// A stored message opened: its body (if this home can open it), its
/// signature's status, and (verified, with the global signature kept) what
/// an export needs.
pub struct Checked {
    pub body: Option<Vec<u8>>,
    pub status: SignatureStatus,
    pub evidence: Option<Evidence>,
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
        return Ok(Checked { body: body.map(|(_, b)| b), status: SignatureStatus::Unsigned, evidence: None });
    };
    let invalid = |why| Ok(Checked { body: None, status: SignatureStatus::Invalid(why), evidence: None });
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
    let (status, evidence) = check_stored(&boss.public().ed25519, &signer, Subject::text(&header.id, &body), sig);
    Ok(Checked { body: Some(body), status, evidence })
}

/// Checks a stored file's signature (over the SHA-256 recorded when it
/// arrived; `boss export` then compares the decrypted file with that hash).
pub fn check_file(
    conn: &Connection,
    boss: Option<&PublicIdentity>,
    f: &StoredFile,
) -> Result<(SignatureStatus, Option<Evidence>), DbError> {
    let Some(sig) = &f.signature else { return Ok((SignatureStatus::Unsigned, None)) };
    let invalid = |why| Ok((SignatureStatus::Invalid(why), None));
    let Some(signer) = identities::by_row(conn, sig.signer_row)? else {
        return invalid("its key is not in AgentIdentities");
    };
    if signer.agent_id != f.agent_id {
        return invalid("its key belongs to another agent");
    }
    let Some(boss) = boss else { return invalid("this home has no Boss identity to check it with") };
    Ok(check_stored(&boss.ed25519, &signer, Subject::file(&f.file_id, &f.sha256), sig))
}

/// The statement rebuilt and its kept signatures verified with the kept key.
fn check_stored(
    boss_ed25519: &[u8; 32],
    signer: &identities::StoredIdentity,
    subject: Subject<'_>,
    sig: &MessageSignature,
) -> (SignatureStatus, Option<Evidence>) {
    let Ok(signed_at) = u64::try_from(sig.signed_at) else { return (SignatureStatus::Invalid("bad time"), None) };
    let statement = subject.statement(boss_ed25519, signer.agent_id, signed_at);
    if minisign::verify_statement(&signer.public, &statement, &sig.signature, None).is_err() {
        return (SignatureStatus::Invalid("the signature does not verify"), None);
    }
    let (global, evidence) = match sig.trusted.as_deref() {
        None => (GlobalSignature::Missing, None),
        Some(trusted) => {
            let ok = minisign::verify_statement(&signer.public, &statement, &sig.signature, Some(trusted)).is_ok();
            // Verified, so both have their lengths.
            match (ok, <[u8; 64]>::try_from(sig.signature.as_slice()), <[u8; 64]>::try_from(trusted)) {
                (true, Ok(signature), Ok(trusted)) => (
                    GlobalSignature::Verified,
                    Some(Evidence {
                        statement,
                        signatures: StatementSignatures { signature, trusted },
                        signer: signer.public,
                    }),
                ),
                _ => (GlobalSignature::Bad, None),
            }
        }
    };
    let status = SignatureStatus::Verified {
        fingerprint: signer.public.fingerprint(),
        revoked: signer.revoked_at.is_some(),
        global,
    };
    (status, evidence)
}
