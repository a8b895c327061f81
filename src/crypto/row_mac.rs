//! Row integrity tags: an HMAC-SHA256, under a key derived from the master
//! secret, over the fields of an Agents row that decide what it may do (id,
//! level, key generation, name index, password hash, encrypted name and
//! alias). Whoever can write `spyctl.db` but lacks the key cannot raise a
//! level, copy a password hash onto another row or roll back a revocation
//! without the row failing its check.
//!
//! The message is unambiguous: a domain label, then each field as its length
//! (u64, big-endian) followed by its bytes.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Separates these tags from every other HMAC the project computes.
const DOMAIN: &[u8] = b"spyctl/agent-row/v1";

/// The HMAC key for row tags. No `Debug`; wiped on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct RowMacKey([u8; 32]);

impl RowMacKey {
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        RowMacKey(*bytes)
    }

    fn mac(&self, fields: &[&[u8]]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(DOMAIN);
        for field in fields {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field);
        }
        mac
    }

    /// The tag of `fields`, as 64 lowercase hex digits.
    pub fn tag(&self, fields: &[&[u8]]) -> String {
        hex::encode(self.mac(fields).finalize().into_bytes())
    }

    /// Whether `tag` is the tag of `fields`, compared in constant time.
    pub fn verify(&self, fields: &[&[u8]], tag: &str) -> bool {
        match hex::decode(tag) {
            Ok(bytes) => self.mac(fields).verify_slice(&bytes).is_ok(),
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_change_to_any_field_fails_the_tag() {
        let key = RowMacKey::from_bytes(&[4u8; 32]);
        let fields: [&[u8]; 3] = [b"1", b"5", b"hash"];
        let tag = key.tag(&fields);
        assert!(key.verify(&fields, &tag));
        assert!(!key.verify(&[b"1", b"4", b"hash"], &tag), "a changed level");
        assert!(!key.verify(&[b"15", b"", b"hash"], &tag), "fields cannot slide into each other");
        assert!(!RowMacKey::from_bytes(&[5u8; 32]).verify(&fields, &tag), "another key");
        assert!(!key.verify(&fields, "zz"), "not hex");
        assert!(!key.verify(&fields, ""), "empty");
    }
}
