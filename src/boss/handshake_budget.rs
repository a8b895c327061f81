//! A per-address budget for v2 handshakes that end without a session.
//!
//! The Boss does about five X25519 operations for a v2 first message before
//! it knows whether the key in it is enrolled, and anyone can make a first
//! message that gets that far (the Boss's public key is public). Each address
//! has a token bucket of failed handshakes: a handshake takes a token before
//! any work, and gives it back if it ends in a session (so enrolled agents,
//! even one connecting per message, never run their bucket down). An address
//! whose bucket is empty gets `ERR busy` at once, for no DH at all, until it
//! refills; other addresses are untouched. IPv6 addresses count per /64
//! (one host usually holds a whole /64).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Addresses tracked at once. Only addresses below a full bucket are kept
/// (a full one is the same as none), so reaching this takes thousands of
/// addresses each failing handshakes every second; past it the budget lets
/// handshakes through rather than refuse addresses it cannot track.
const MAX_TRACKED: usize = 65_536;

/// The budget: `per_second` failed handshakes per address, in bursts of
/// twice that. `per_second == 0` turns it off.
pub struct HandshakeBudget {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The failed handshakes per second an address may cost by default.
pub const DEFAULT_PER_SECOND: u32 = 10;

impl HandshakeBudget {
    pub fn new(per_second: u32) -> Self {
        let per_second = f64::from(per_second);
        HandshakeBudget { per_second, burst: 2.0 * per_second, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one token for a handshake from `ip`; false if it has none left.
    pub fn try_charge(&self, ip: IpAddr, now: Instant) -> bool {
        if self.per_second == 0.0 {
            return true;
        }
        let key = bucket_key(ip);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(&key) {
            buckets.retain(|_, b| self.refilled(*b, now) < self.burst);
            if buckets.len() >= MAX_TRACKED {
                return true;
            }
        }
        let bucket = buckets.entry(key).or_insert(Bucket { tokens: self.burst, at: now });
        let tokens = self.refilled(*bucket, now);
        if tokens < 1.0 {
            *bucket = Bucket { tokens, at: now };
            return false;
        }
        *bucket = Bucket { tokens: tokens - 1.0, at: now };
        true
    }

    /// Gives back the token of a handshake from `ip` that ended in a session.
    pub fn refund(&self, ip: IpAddr) {
        if self.per_second == 0.0 {
            return;
        }
        let key = bucket_key(ip);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bucket) = buckets.get_mut(&key) {
            bucket.tokens = (bucket.tokens + 1.0).min(self.burst);
        }
    }

    fn refilled(&self, bucket: Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        (bucket.tokens + elapsed * self.per_second).min(self.burst)
    }
}

/// The address a bucket belongs to: IPv4 as it is, IPv6 by its /64.
fn bucket_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::V6(octets.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn an_address_gets_its_burst_then_waits_for_the_refill_and_others_are_untouched() {
        let budget = HandshakeBudget::new(10);
        let t0 = Instant::now();
        let attacker = ip("203.0.113.9");
        assert_eq!((0..25).filter(|_| budget.try_charge(attacker, t0)).count(), 20, "a burst of twice the rate");
        assert!(!budget.try_charge(attacker, t0 + Duration::from_millis(50)), "half a token is not one");
        assert!(budget.try_charge(attacker, t0 + Duration::from_millis(150)), "one token back after 100 ms");
        assert!(budget.try_charge(ip("198.51.100.7"), t0), "another address has its own bucket");
    }

    #[test]
    fn a_handshake_that_ends_in_a_session_costs_nothing() {
        let budget = HandshakeBudget::new(1);
        let t0 = Instant::now();
        let agent = ip("192.0.2.1");
        for _ in 0..1000 {
            assert!(budget.try_charge(agent, t0));
            budget.refund(agent);
        }
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let budget = HandshakeBudget::new(1);
        let t0 = Instant::now();
        assert!(budget.try_charge(ip("2001:db8::1"), t0));
        assert!(budget.try_charge(ip("2001:db8::2"), t0));
        assert!(!budget.try_charge(ip("2001:db8::ffff:1"), t0), "the same /64");
        assert!(budget.try_charge(ip("2001:db8:0:1::1"), t0), "another /64");
        assert!(budget.try_charge(ip("::ffff:192.0.2.1"), t0));
        assert!(budget.try_charge(ip("192.0.2.1"), t0));
        assert!(!budget.try_charge(ip("::ffff:192.0.2.1"), t0), "mapped and plain IPv4 share a bucket");
    }

    #[test]
    fn zero_turns_the_budget_off() {
        let budget = HandshakeBudget::new(0);
        let t0 = Instant::now();
        assert!((0..1000).all(|_| budget.try_charge(ip("203.0.113.9"), t0)));
    }
}
