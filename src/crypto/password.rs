//! Password hashing with Argon2id (RFC 9106) at OWASP's recommended minimum:
//! 19 MiB of memory, 2 passes, 1 lane, a random 16-byte salt, stored as a PHC
//! string (`$argon2id$v=19$m=19456,t=2,p=1$...`).
//!
//! Hashes are peppered: Argon2's secret input (RFC 9106 section 3.1, `K`) is a
//! key derived from the master secret, so a stolen database alone does not
//! even allow an offline guess, and a hash copied from one row to another is
//! checked under the same pepper (the row MAC stops the copy itself).
//! Hashes made before peppering are still verified without it, until the
//! next successful login re-hashes them.
//!
//! [`verify_unknown`] spends the same work as a real verification, so that a
//! login for a name that does not exist takes as long as a wrong password.

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};

/// Memory cost in KiB (19 MiB).
pub const MEMORY_KIB: u32 = 19 * 1024;
/// Number of passes.
pub const PASSES: u32 = 2;
/// Degree of parallelism.
pub const LANES: u32 = 1;

/// A well-formed PHC string whose hash part is random bytes (no known password
/// maps to it), with the same parameters as real hashes: verifying against it
/// costs what a real verification costs.
const DUMMY_PHC: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c3B5Y3RsLWR1bW15LXNhbHQ$IwPBRlOPL6nkT3ziZL5RPQJwz5RLhhdMcCvGa9gF/8g";

/// Hashing failed: the OS RNG (for the salt) or the hasher itself.
#[derive(Debug)]
pub enum HashError {
    Random(getrandom::Error),
    Argon2(argon2::password_hash::Error),
}

impl std::fmt::Display for HashError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HashError::Random(_) => f.write_str("password hashing failed: no salt from the OS random number generator"),
            HashError::Argon2(_) => f.write_str("password hashing failed"),
        }
    }
}

impl std::error::Error for HashError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HashError::Random(e) => Some(e),
            HashError::Argon2(e) => Some(e),
        }
    }
}

/// The hasher; with `pepper`, Argon2's secret input. A 32-byte pepper is
/// far below Argon2's secret limit, so building it cannot fail.
fn hasher(pepper: Option<&[u8]>) -> Argon2<'_> {
    let params = Params::new(MEMORY_KIB, PASSES, LANES, None).expect("OWASP parameters are valid Argon2 parameters");
    match pepper {
        Some(secret) => Argon2::new_with_secret(secret, Algorithm::Argon2id, Version::V0x13, params)
            .expect("a 32-byte pepper is within Argon2's secret limit"),
        None => Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
    }
}

/// Hashes `password` under `pepper` with a fresh random salt into a PHC string.
pub fn hash(password: &[u8], pepper: &[u8; 32]) -> Result<String, HashError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(HashError::Random)?;
    hasher(Some(pepper)).hash_password_with_salt(password, &salt).map(|phc| phc.to_string()).map_err(HashError::Argon2)
}

/// True when `password` matches `phc`, made under `pepper` (or, for a hash
/// from before peppering, `None`). A malformed PHC string is a mismatch.
pub fn verify(password: &[u8], phc: &str, pepper: Option<&[u8; 32]>) -> bool {
    hasher(pepper.map(|p| &p[..])).verify_password(password, phc).is_ok()
}

/// Burns one verification's worth of work and returns false: used when the
/// name is unknown so the answer takes as long as for a known name.
pub fn verify_unknown(password: &[u8], pepper: &[u8; 32]) -> bool {
    let _ = verify(password, DUMMY_PHC, Some(pepper));
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_then_verify() {
        let pepper = [9u8; 32];
        let phc = hash(b"correct horse", &pepper).expect("hash");
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify(b"correct horse", &phc, Some(&pepper)));
        assert!(!verify(b"correct horsf", &phc, Some(&pepper)));
        assert!(!verify(b"correct horse", &phc, Some(&[8u8; 32])), "another pepper does not verify");
        assert!(!verify(b"correct horse", &phc, None), "the pepper is needed");
        assert!(!verify(b"x", "not a phc string", Some(&pepper)));
    }

    #[test]
    fn salts_differ() {
        assert_ne!(hash(b"same", &[1; 32]).expect("hash"), hash(b"same", &[1; 32]).expect("hash"));
    }

    #[test]
    fn dummy_hash_is_well_formed_and_same_cost() {
        // If the dummy string were malformed, verify would return early and
        // unknown names would answer faster than known ones.
        assert!(argon2::password_hash::phc::PasswordHash::new(DUMMY_PHC).is_ok());
        assert!(DUMMY_PHC.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(!verify_unknown(b"anything", &[0u8; 32]));
    }
}
