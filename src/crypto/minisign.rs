//! An agent's statement signatures in minisign's formats, so `boss export`
//! can be checked offline with stock `minisign -V` (no spyctl needed).
//!
//! minisign (<https://jedisct1.github.io/minisign/>) checks two Ed25519
//! signatures by one key: the *signature* over the file (algorithm `Ed`, the
//! legacy form, signs the file's bytes as they are; `ED` signs their
//! BLAKE2b-512), and the *global signature* over `signature || trusted
//! comment`. Both must come from the agent's key, so both are made at send
//! time by the agent (PROTOCOL.md, "Exports that stock minisign verifies"):
//!
//! - the file minisign checks is the canonical statement itself, so the
//!   signature is exactly the statement signature the Boss already verifies
//!   (`Ed`: the statement is a few hundred bytes, so prehashing buys nothing);
//! - the trusted comment is the statement's seven lines joined by single
//!   spaces (no field holds a space or a newline, so this is unambiguous),
//!   and the global signature over it is carried in the header as `tsig`.
//!
//! The Boss holds neither secret, so it cannot make an export that verifies
//! for anything the agent did not sign. Key ids are not signed by minisign;
//! ours is derived from the public key so the two files agree.

use base64_simd::STANDARD;
use sha2::{Digest, Sha256};

use super::identity::{BadSignature, IdentityKeys, PublicIdentity};

/// minisign's algorithm tag for Ed25519 keys and for legacy (unhashed) signatures.
const ED: &[u8; 2] = b"Ed";
/// Domain separation for the key id.
const KEY_ID_LABEL: &[u8] = b"spyctl/v2/minisign-key-id\n";

/// The two signatures an agent makes over one statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatementSignatures {
    /// Ed25519 over the statement (minisign's signature, algorithm `Ed`).
    pub signature: [u8; 64],
    /// Ed25519 over `signature || trusted comment` (minisign's global signature).
    pub trusted: [u8; 64],
}

/// minisign's 8-byte key id for an agent key: the first 8 bytes of
/// `SHA-256("spyctl/v2/minisign-key-id\n" || Ed25519 public)`.
pub fn key_id(ed25519: &[u8; 32]) -> [u8; 8] {
    let digest = Sha256::new().chain_update(KEY_ID_LABEL).chain_update(ed25519).finalize();
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    id
}

/// The trusted comment for a statement: its lines joined by single spaces.
pub fn trusted_comment(statement: &[u8]) -> String {
    String::from_utf8_lossy(statement).trim_end_matches('\n').replace('\n', " ")
}

/// What the global signature signs: `signature || trusted comment`.
fn global_message(signature: &[u8; 64], trusted_comment: &str) -> Vec<u8> {
    let mut message = Vec::with_capacity(64 + trusted_comment.len());
    message.extend_from_slice(signature);
    message.extend_from_slice(trusted_comment.as_bytes());
    message
}

/// Both signatures over `statement` (the agent, at send time).
pub fn sign_statement(keys: &IdentityKeys, statement: &[u8]) -> StatementSignatures {
    let signature = keys.sign(statement);
    let trusted = keys.sign(&global_message(&signature, &trusted_comment(statement)));
    StatementSignatures { signature, trusted }
}

/// Checks the statement signature and, when given, the global signature
/// (strict Ed25519, as [`PublicIdentity::verify`]).
pub fn verify_statement(
    public: &PublicIdentity,
    statement: &[u8],
    signature: &[u8],
    trusted: Option<&[u8]>,
) -> Result<(), BadSignature> {
    public.verify(statement, signature)?;
    match trusted {
        Some(trusted) => verify_global(public, statement, signature, trusted),
        None => Ok(()),
    }
}

/// Checks only the global signature (`trusted`, over `signature ||
/// trusted comment`), for a statement signature already checked.
pub fn verify_global(
    public: &PublicIdentity,
    statement: &[u8],
    signature: &[u8],
    trusted: &[u8],
) -> Result<(), BadSignature> {
    let signature: &[u8; 64] = signature.try_into().map_err(|_| BadSignature)?;
    public.verify(&global_message(signature, &trusted_comment(statement)), trusted)
}

/// The key line of a minisign public key (what `minisign -P` takes):
/// base64 of `Ed || key id || Ed25519 public key`. The agent's home prints
/// it (`whoami`), so a reader can check an export's `agent.pub` against it.
pub fn public_key_line(ed25519: &[u8; 32]) -> String {
    let mut raw = Vec::with_capacity(42);
    raw.extend_from_slice(ED);
    raw.extend_from_slice(&key_id(ed25519));
    raw.extend_from_slice(ed25519);
    STANDARD.encode_to_string(&raw)
}

/// A minisign public key file (`minisign -p FILE`).
pub fn public_key_file(ed25519: &[u8; 32], untrusted_comment: &str) -> String {
    format!("untrusted comment: {}\n{}\n", one_line(untrusted_comment), public_key_line(ed25519))
}

/// A minisign signature file (`minisign -x FILE`, by default `<file>.minisig`)
/// for `statement` signed as [`sign_statement`] does.
pub fn signature_file(
    ed25519: &[u8; 32],
    statement: &[u8],
    signatures: &StatementSignatures,
    untrusted_comment: &str,
) -> String {
    let mut raw = Vec::with_capacity(74);
    raw.extend_from_slice(ED);
    raw.extend_from_slice(&key_id(ed25519));
    raw.extend_from_slice(&signatures.signature);
    format!(
        "untrusted comment: {}\n{}\ntrusted comment: {}\n{}\n",
        one_line(untrusted_comment),
        STANDARD.encode_to_string(&raw),
        trusted_comment(statement),
        STANDARD.encode_to_string(signatures.trusted),
    )
}

/// A comment line must not end the line early.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::identity::statement;

    #[test]
    fn both_signatures_verify_and_each_is_bound_to_the_statement() {
        let agent = IdentityKeys::generate().expect("rng");
        let st = statement(&[7u8; 32], 6, "m1", "text", b"hello", 1_700_000_000);
        let sigs = sign_statement(&agent, &st);
        verify_statement(&agent.public(), &st, &sigs.signature, Some(&sigs.trusted)).expect("verifies");
        let other = statement(&[7u8; 32], 6, "m1", "text", b"hellp", 1_700_000_000);
        let other_sigs = sign_statement(&agent, &other);
        // A global signature made for another statement does not carry over.
        assert!(verify_statement(&agent.public(), &st, &sigs.signature, Some(&other_sigs.trusted)).is_err());
        assert!(verify_statement(&agent.public(), &st, &sigs.signature, Some(&sigs.signature)).is_err());
    }

    #[test]
    fn the_trusted_comment_is_the_statement_on_one_line() {
        let st = statement(&[0u8; 32], 6, "m1", "text", b"", 5);
        let tc = trusted_comment(&st);
        assert!(!tc.contains('\n'));
        assert_eq!(tc.split(' ').count(), 13, "{tc}");
        assert!(tc.starts_with("spyctl/v2/message boss 0000") && tc.ends_with(" time 5"), "{tc}");
    }

    #[test]
    fn files_have_minisign_shapes() {
        let agent = IdentityKeys::generate().expect("rng");
        let ed = agent.public().ed25519;
        let st = statement(&ed, 6, "m1", "text", b"x", 1);
        let sigs = sign_statement(&agent, &st);
        let public = public_key_file(&ed, "spyctl agent 6\nsecond line");
        let lines: Vec<&str> = public.lines().collect();
        assert_eq!(lines.len(), 2);
        let raw = STANDARD.decode_to_vec(lines[1]).expect("base64");
        assert_eq!((&raw[..2], &raw[2..10], &raw[10..]), (&b"Ed"[..], &key_id(&ed)[..], &ed[..]));
        let sig = signature_file(&ed, &st, &sigs, "x");
        let lines: Vec<&str> = sig.lines().collect();
        assert_eq!(lines.len(), 4);
        let raw = STANDARD.decode_to_vec(lines[1]).expect("base64");
        assert_eq!((&raw[..2], &raw[2..10], &raw[10..]), (&b"Ed"[..], &key_id(&ed)[..], &sigs.signature[..]));
        assert_eq!(lines[2], format!("trusted comment: {}", trusted_comment(&st)));
        assert_eq!(STANDARD.decode_to_vec(lines[3]).expect("base64"), sigs.trusted);
    }
}
