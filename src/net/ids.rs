//! Fresh message and file ids. Kept apart from `protocol` because they read
//! the clock and the operating system's random number generator, and the
//! protocol module is pure byte parsing.

/// A fresh id (128 bits, hex) for messages and files, unique and unguessable.
///
/// Laid out like a UUIDv7: 48 bits of Unix milliseconds, then 80 random bits.
/// Ids made close in time sort close together, so the Boss's unique index on
/// (agent, message id) grows at its right edge instead of touching a random
/// page per message: fewer pages written per group commit.
pub fn random_id() -> String {
    let mut bytes = [0u8; 16];
    let millis =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    getrandom::fill(&mut bytes[6..]).expect("the operating system's random number generator failed");
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_valid_distinct_and_time_ordered() {
        let a = random_id();
        let b = random_id();
        assert!(super::super::protocol::valid_id(&a) && a.len() == 32, "{a}");
        assert_ne!(a, b);
        // The first 12 hex digits are the millisecond clock: never backwards.
        assert!(a[..12] <= b[..12], "{a} then {b}");
    }
}
