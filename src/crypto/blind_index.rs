//! Blind indexes: deterministic, keyed fingerprints of encrypted values, so the
//! database can answer "is there an agent named X?" without holding X.
//!
//! `index(v) = hex(HMAC-SHA256(blind-index key, normalize(v)))`, where
//! `normalize` trims surrounding whitespace and applies Unicode default case
//! folding, so "Ethan Hunt", " ethan hunt " and "ETHAN HUNT" are one agent.
//! Equal names give equal indexes: that equality is what a stolen database
//! reveals (see SECURITY.md), and nothing more without the key.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// The HMAC key for blind indexes. No `Debug`; wiped on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct BlindIndexKey([u8; 32]);

impl BlindIndexKey {
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        BlindIndexKey(*bytes)
    }

    /// The blind index of `value`, as 64 lowercase hex digits.
    pub fn index(&self, value: &str) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(normalize(value).as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

/// The form a name is compared in: trimmed and Unicode case-folded.
pub fn normalize(value: &str) -> String {
    caseless::default_case_fold_str(value.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_and_space_insensitive() {
        let key = BlindIndexKey::from_bytes(&[3u8; 32]);
        assert_eq!(key.index("Ethan Hunt"), key.index("  ETHAN HUNT\t"));
        assert_eq!(key.index("STRASSE"), key.index("straße"));
        assert_ne!(key.index("Ethan Hunt"), key.index("Ethan Hunter"));
    }

    #[test]
    fn keyed() {
        let a = BlindIndexKey::from_bytes(&[3u8; 32]);
        let b = BlindIndexKey::from_bytes(&[4u8; 32]);
        assert_ne!(a.index("Ethan Hunt"), b.index("Ethan Hunt"));
        assert_eq!(a.index("x").len(), 64);
    }
}
