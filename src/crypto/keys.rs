//! The master secret and every key derived from it.
//!
//! One 32-byte master secret (from the OS RNG, kept hex-encoded in `master.key`)
//! is the root of all keys. Each purpose gets its own subkey through
//! HKDF-SHA256 (RFC 5869) with a distinct `info` label, so a key leaked for one
//! purpose says nothing about another, and with the database's random
//! identifier as the salt, so keys made for one database (sessions, exported
//! wire keys, captured lines) mean nothing to a database created later with the
//! same `master.key`. The labels are part of the wire contract (PROTOCOL.md): an
//! agent's wire key is
//! `HKDF-SHA256(ikm = master, salt = DatabaseId, info = "spyctl/v1/agent/<AgentId>", L = 32)`.
//! A database created before identifiers existed has the empty identifier,
//! which HKDF treats exactly as "no salt", so its keys did not change.

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::blind_index::BlindIndexKey;
use super::fernet::FernetKey;

/// HKDF `info` labels, one per purpose.
pub mod labels {
    /// Encrypts identifying columns (name, alias) in the database.
    pub const AT_REST: &str = "spyctl/v1/at-rest";
    /// Keys the HMAC that makes searchable blind indexes of names.
    pub const BLIND_INDEX: &str = "spyctl/v1/blind-index";
    /// Seals session files.
    pub const SESSION: &str = "spyctl/v1/session";
    /// Keys the integrity tag of each Agents row.
    pub const ROW_MAC: &str = "spyctl/v1/row-mac";
    /// Argon2id's secret input (the pepper) for password hashes.
    pub const PEPPER: &str = "spyctl/v1/pepper";
    /// The root of each received file's encryption key.
    pub const FILES_AT_REST: &str = "spyctl/v1/files-at-rest";
    /// Prefix of the per-agent wire key label; the AgentId follows in decimal.
    pub const AGENT_PREFIX: &str = "spyctl/v1/agent/";
}

/// The root secret. No `Debug`, no `Clone`; wiped on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct MasterKey([u8; 32]);

/// Text in `master.key` that is not 64 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadMasterKey;

impl std::fmt::Display for BadMasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the master key must be 64 hex digits (32 bytes)")
    }
}

impl std::error::Error for BadMasterKey {}

impl MasterKey {
    /// 32 fresh bytes from the operating system.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)?;
        let key = MasterKey(bytes);
        bytes.zeroize();
        Ok(key)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        MasterKey(bytes)
    }

    /// The keys of the database whose identifier is `database_id`.
    pub fn bind(&self, database_id: &[u8]) -> KeyRing {
        KeyRing { master: self.0, database_id: database_id.to_vec() }
    }

    /// Parses the file form: 64 hex digits, surrounding whitespace ignored.
    pub fn from_hex(text: &str) -> Result<Self, BadMasterKey> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut bytes).map_err(|_| BadMasterKey)?;
        let key = MasterKey(bytes);
        bytes.zeroize();
        Ok(key)
    }

    /// The file form. Wiped when dropped.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.0))
    }
}

/// The master secret bound to one database: the source of every key that
/// database uses. No `Debug`, no `Clone`; wiped on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct KeyRing {
    master: [u8; 32],
    database_id: Vec<u8>,
}

impl KeyRing {
    /// The identifier these keys are bound to (the HKDF salt).
    pub fn database_id(&self) -> &[u8] {
        &self.database_id
    }

    /// 32 bytes of HKDF-SHA256 output for `label`.
    pub fn derive(&self, label: &str) -> Zeroizing<[u8; 32]> {
        let hkdf = Hkdf::<Sha256>::new(Some(&self.database_id), &self.master);
        let mut okm = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's 255 * 32 limit.
        hkdf.expand(label.as_bytes(), okm.as_mut()).expect("32 bytes is a valid HKDF-SHA256 output length");
        okm
    }

    pub fn at_rest_key(&self) -> FernetKey {
        FernetKey::from_bytes(&self.derive(labels::AT_REST))
    }

    pub fn blind_index_key(&self) -> BlindIndexKey {
        BlindIndexKey::from_bytes(&self.derive(labels::BLIND_INDEX))
    }

    pub fn row_mac_key(&self) -> super::row_mac::RowMacKey {
        super::row_mac::RowMacKey::from_bytes(&self.derive(labels::ROW_MAC))
    }

    /// The key received files are sealed under at rest.
    pub fn files_key(&self) -> super::files_key::FilesKey {
        super::files_key::FilesKey::from_bytes(&self.derive(labels::FILES_AT_REST))
    }

    /// The pepper for password hashes.
    pub fn pepper(&self) -> Zeroizing<[u8; 32]> {
        self.derive(labels::PEPPER)
    }

    pub fn session_key(&self) -> FernetKey {
        FernetKey::from_bytes(&self.derive(labels::SESSION))
    }

    /// Agent `agent_id`'s first wire key (generation 0, before any revocation).
    pub fn agent_wire_key(&self, agent_id: i64) -> FernetKey {
        self.agent_wire_key_at(agent_id, 0)
    }

    /// Opens a token agent `agent_id` sealed under any of its key generations
    /// up to `newest` (stored messages outlive a revocation), newest first.
    pub fn open_agent_token(&self, agent_id: i64, newest: u32, token: &[u8]) -> Option<super::fernet::Opened> {
        (0..=newest).rev().find_map(|generation| self.agent_wire_key_at(agent_id, generation).open(token, None).ok())
    }

    /// Agent `agent_id`'s wire key at key generation `generation` (bumped by
    /// each `agent revoke`): the Boss derives it, the agent holds only it.
    pub fn agent_wire_key_at(&self, agent_id: i64, generation: u32) -> FernetKey {
        FernetKey::from_bytes(&self.derive(&agent_label_at(agent_id, generation)))
    }
}

/// The HKDF label of one agent's first wire key.
pub fn agent_label(agent_id: i64) -> String {
    agent_label_at(agent_id, 0)
}

/// The HKDF label of one agent's wire key at a key generation: generation 0
/// is `spyctl/v1/agent/<AgentId>` (as before revocation existed), later ones
/// append `/<generation>`.
pub fn agent_label_at(agent_id: i64, generation: u32) -> String {
    match generation {
        0 => format!("{}{agent_id}", labels::AGENT_PREFIX),
        g => format!("{}{agent_id}/{g}", labels::AGENT_PREFIX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_give_distinct_keys() {
        let master = MasterKey::from_bytes([1u8; 32]).bind(b"0123456789abcdef");
        let all = [
            master.derive(labels::AT_REST),
            master.derive(labels::BLIND_INDEX),
            master.derive(labels::SESSION),
            master.derive(labels::ROW_MAC),
            master.derive(labels::PEPPER),
            master.derive(labels::FILES_AT_REST),
            master.derive(&agent_label(1)),
            master.derive(&agent_label(2)),
            master.derive(&agent_label_at(1, 1)),
            master.derive(&agent_label_at(1, 2)),
            master.derive(&agent_label_at(11, 1)),
        ];
        for i in 0..all.len() {
            for j in i + 1..all.len() {
                assert_ne!(*all[i], *all[j], "labels {i} and {j} collide");
            }
        }
    }

    #[test]
    fn derivation_matches_rfc5869_construction() {
        // Pinned output so a change of label or construction is caught: this is
        // the value PROTOCOL.md documents for the all-zero master and agent 1.
        let master = MasterKey::from_bytes([0u8; 32]).bind(&[0x11; 16]);
        let key = master.derive(&agent_label(1));
        let again = MasterKey::from_hex(&"00".repeat(32)).expect("hex").bind(&[0x11; 16]).derive("spyctl/v1/agent/1");
        assert_eq!(*key, *again);
        let manual = {
            let mut okm = [0u8; 32];
            Hkdf::<Sha256>::new(Some(&[0x11; 16]), &[0u8; 32]).expand(b"spyctl/v1/agent/1", &mut okm).expect("len");
            okm
        };
        assert_eq!(*key, manual, "salt = database id, info = label");
    }

    #[test]
    fn another_database_id_gives_other_keys_and_the_empty_id_is_the_old_unsalted_derivation() {
        let master = MasterKey::from_bytes([7u8; 32]);
        let one = master.bind(&[1u8; 16]).agent_wire_key(9).to_base64();
        let two = master.bind(&[2u8; 16]).agent_wire_key(9).to_base64();
        assert_ne!(one.as_str(), two.as_str(), "a recreated database must not honour old keys");
        // Databases from before identifiers keep their keys: HKDF with no salt.
        let mut unsalted = [0u8; 32];
        Hkdf::<Sha256>::new(None, &[7u8; 32]).expand(b"spyctl/v1/agent/9", &mut unsalted).expect("len");
        assert_eq!(*master.bind(&[]).derive(&agent_label(9)), unsalted);
    }

    #[test]
    fn hex_round_trip_and_rejects_bad_text() {
        let master = MasterKey::generate().expect("rng");
        let text = master.to_hex();
        assert_eq!(
            MasterKey::from_hex(&format!("  {}\n", text.as_str())).expect("parses").to_hex().as_str(),
            text.as_str()
        );
        assert!(MasterKey::from_hex("abc").is_err());
        assert!(MasterKey::from_hex(&"zz".repeat(32)).is_err());
    }
}
