//! Enrolled agents' channel keys, derived once per enrolment instead of once
//! per line: an X25519 agreement and an HKDF for every `MSG` was a large part
//! of what a signed message cost the Boss (BENCHMARKS.md, identities).
//!
//! Entries are keyed by the AgentIdentities row and checked against its
//! public key, so a revoked or replaced identity (a new row) never reaches an
//! old key. Which ids are enrolled was already visible in timing (an enrolled
//! id costs an agreement, a v1 id does not); the cache is consulted before the
//! MAC, so it says nothing about whether a token is good. Bounded: when full,
//! it is emptied and refills from the agents that are still sending.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::crypto::identity::Side;
use crate::crypto::{FernetKey, IdentityKeys, PublicIdentity};
use crate::db::identities::StoredIdentity;

/// Most channel keys kept at once.
const CAPACITY: usize = 4096;

/// The Boss's channel keys, by AgentIdentities row.
#[derive(Default)]
pub struct ChannelKeys {
    keys: Mutex<HashMap<i64, (PublicIdentity, Arc<FernetKey>)>>,
}

impl ChannelKeys {
    /// The channel key with `agent`'s identity, or None if its key gives no
    /// channel (a low-order point).
    pub fn get(&self, boss: &IdentityKeys, agent: &StoredIdentity) -> Option<Arc<FernetKey>> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((public, key)) = keys.get(&agent.row_id)
            && *public == agent.public
        {
            return Some(Arc::clone(key));
        }
        let key = Arc::new(boss.channel_key(Side::Boss, &agent.public, agent.agent_id)?);
        if keys.len() >= CAPACITY {
            keys.clear();
        }
        keys.insert(agent.row_id, (agent.public, Arc::clone(&key)));
        Some(key)
    }
}

/// The key a line was opened with: derived for this line (v1), an enrolled
/// agent's shared channel key, or a candidate from the Boss's agent cache.
pub enum WireKey {
    Derived(FernetKey),
    Channel(Arc<FernetKey>),
    Cached(Arc<FernetKey>),
}

impl std::ops::Deref for WireKey {
    type Target = FernetKey;

    fn deref(&self) -> &FernetKey {
        match self {
            WireKey::Derived(key) => key,
            WireKey::Channel(key) | WireKey::Cached(key) => key,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_key_is_the_derived_one_and_a_new_identity_on_the_same_row_gets_its_own() {
        let boss = IdentityKeys::generate().expect("rng");
        let (a, b) = (IdentityKeys::generate().expect("rng"), IdentityKeys::generate().expect("rng"));
        let stored = |keys: &IdentityKeys| StoredIdentity {
            row_id: 1,
            agent_id: 6,
            public: keys.public(),
            enrolled_at: 0,
            revoked_at: None,
        };
        let cache = ChannelKeys::default();
        let first = cache.get(&boss, &stored(&a)).expect("key");
        let direct = a.channel_key(Side::Agent, &boss.public(), 6).expect("key");
        assert_eq!(first.to_base64().as_str(), direct.to_base64().as_str());
        assert!(Arc::ptr_eq(&first, &cache.get(&boss, &stored(&a)).expect("key")), "cached");
        let other = cache.get(&boss, &stored(&b)).expect("key");
        let direct_b = b.channel_key(Side::Agent, &boss.public(), 6).expect("key");
        assert_eq!(other.to_base64().as_str(), direct_b.to_base64().as_str());
    }
}
