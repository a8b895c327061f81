//! Blind indexes: deterministic, keyed fingerprints of encrypted values, so the
//! database can answer "is there an agent named X?" without holding X.
//!
//! `index(v) = hex(HMAC-SHA256(blind-index key, normalize(v)))`, where
//! `normalize` trims surrounding whitespace and applies Unicode NFKC and
//! default case folding, so "Ethan Hunt", " ethan hunt " and "ETHAN HUNT" are one agent.
//! Equal names give equal indexes: that equality is what a stolen database
//! reveals (see SECURITY.md), and nothing more without the key.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use unicode_normalization::UnicodeNormalization;
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

/// The form a name is compared in: trimmed, then NFKC, Unicode default case
/// folding, NFKC again (Unicode's toNFKC_Casefold, less its removal of
/// default-ignorable characters), so "José" typed with a combining accent, in
/// full-width letters or in another case is the same name.
pub fn normalize(value: &str) -> String {
    let composed: String = value.trim().nfkc().collect();
    caseless::default_case_fold_str(&composed).nfkc().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_and_space_insensitive() {
        let key = BlindIndexKey::from_bytes(&[3u8; 32]);
        assert_eq!(key.index("Ethan Hunt"), key.index("  ETHAN HUNT\t"));
        assert_eq!(key.index("STRASSE"), key.index("straße"));
        // Precomposed é and e + combining acute are one name.
        assert_eq!(key.index("Jos\u{e9} Cruz"), key.index("Jose\u{301} Cruz"));
        assert_eq!(key.index("ＥＴＨＡＮ"), key.index("ethan"), "full-width letters fold too");
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
