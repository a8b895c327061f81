//! Password hashing with Argon2id (RFC 9106) at OWASP's recommended minimum:
//! 19 MiB of memory, 2 passes, 1 lane, a random 16-byte salt, stored as a PHC
//! string (`$argon2id$v=19$m=19456,t=2,p=1$...`).
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

fn hasher() -> Argon2<'static> {
    let params = Params::new(MEMORY_KIB, PASSES, LANES, None).expect("OWASP parameters are valid Argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes `password` with a fresh random salt into a PHC string.
pub fn hash(password: &[u8]) -> Result<String, HashError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(HashError::Random)?;
    hasher().hash_password_with_salt(password, &salt).map(|phc| phc.to_string()).map_err(HashError::Argon2)
}

/// True when `password` matches `phc`. A malformed PHC string is a mismatch.
pub fn verify(password: &[u8], phc: &str) -> bool {
    hasher().verify_password(password, phc).is_ok()
}

/// Burns one verification's worth of work and returns false: used when the
/// name is unknown so the answer takes as long as for a known name.
pub fn verify_unknown(password: &[u8]) -> bool {
    let _ = verify(password, DUMMY_PHC);
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_then_verify() {
        let phc = hash(b"correct horse").expect("hash");
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify(b"correct horse", &phc));
        assert!(!verify(b"correct horsf", &phc));
        assert!(!verify(b"x", "not a phc string"));
    }

    #[test]
    fn salts_differ() {
        assert_ne!(hash(b"same").expect("hash"), hash(b"same").expect("hash"));
    }

    #[test]
    fn dummy_hash_is_well_formed_and_same_cost() {
        // If the dummy string were malformed, verify would return early and
        // unknown names would answer faster than known ones.
        assert!(argon2::password_hash::phc::PasswordHash::new(DUMMY_PHC).is_ok());
        assert!(DUMMY_PHC.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(!verify_unknown(b"anything"));
    }
}
