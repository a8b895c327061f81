//! The Boss's per-agent cache: for each agent, the keys its lines may be
//! sealed under (derived once, not per line), and, once one of its lines has
//! proved itself, its row as checked (integrity tag verified, alias opened).
//!
//! Why it is correct without reading the database per line: every entry
//! belongs to a *registry epoch*, which the database writer advances whenever
//! it finds that another connection has committed since its last transaction
//! (SQLite's `PRAGMA data_version` on its own connection, read inside its
//! write transaction: see `store`). A write authorised from an entry carries
//! the entry's epoch and what the entry saw ([`Snapshot`]); when the writer's
//! epoch has moved on, it re-reads the agent's row and identity in the same
//! transaction and, if they changed, writes nothing and answers
//! [`super::store::Written::Stale`], and the service authorises the line
//! again from a fresh cache. So a revocation committed by `spyctl agent
//! revoke` in another process refuses the next line from the old key, as
//! before; only the Boss's own message commits (which cannot change the
//! registry) leave the cache alone. Lines answered without a commit (file
//! chunks) re-read the row and identity before anything is written.
//!
//! Known and unknown ids cost the same before the MAC: the whole registry's
//! ids and key generations (and current identities) are loaded at once, so a
//! line for any id is one map lookup and one MAC check, with a key that opens
//! nothing standing in for an id with no agent. The agent's row is read only
//! after a MAC has verified, as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use rusqlite::Connection;

use crate::crypto::identity::Side;
use crate::crypto::{FernetKey, IdentityKeys, KeyRing};

/// One key a line may be sealed under, and the master-key epoch it comes
/// from (None for an enrolled agent's channel key, which is not derived
/// from master.key).
pub struct Candidate {
    pub epoch: Option<u32>,
    pub key: Arc<FernetKey>,
}
use crate::db::agents::{self, StoredAgent};
use crate::db::identities::{self, StoredIdentity};
use crate::db::{DbError, DbResult};
use crate::registry::{self, RegistryKeys};

/// What an authorisation saw of an agent in the registry: the writer checks
/// it still holds before committing a write authorised in an older epoch.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub agent_id: i64,
    pub row: StoredAgent,
    pub identity: Option<StoredIdentity>,
}

impl Snapshot {
    /// Whether the agent's row and current identity are still exactly what
    /// was seen (run inside the writer's transaction, or on the reader).
    pub fn still_current(&self, conn: &Connection) -> DbResult<bool> {
        Ok(agents::by_id(conn, self.agent_id)?.as_ref() == Some(&self.row)
            && identities::current(conn, self.agent_id)? == self.identity)
    }
}

/// One agent as the cache knows it, in one registry epoch.
pub struct AgentEntry {
    pub agent_id: i64,
    /// The registry epoch this entry was read in.
    pub epoch: u64,
    /// The reader connection's `PRAGMA data_version` when the entry was
    /// read (None for the stand-in made before any load).
    version: Option<i64>,
    /// False for the stand-in answering ids with no agent.
    pub exists: bool,
    pub generation: u32,
    /// The agent's current identity, if it is enrolled.
    pub enrolled: Option<StoredIdentity>,
    /// The keys a line may be sealed under, in the order to try them.
    candidates: Arc<[Candidate]>,
    /// The row, checked, once a line has proved itself (kept only when good).
    checked: OnceLock<Arc<Checked>>,
}

impl AgentEntry {
    /// The keys to try on a line claiming this agent, in order.
    pub fn candidates(&self) -> &[Candidate] {
        &self.candidates
    }
}

/// An agent's row that passed its checks, with its alias opened.
pub struct Checked {
    pub seen: Arc<Snapshot>,
    pub alias: String,
}

/// The agent's row, as read after a line's MAC verified.
pub enum RowStatus {
    Good(Arc<Checked>),
    /// No such agent now (deleted since the entry was read).
    Missing,
    /// The row's key generation is not the entry's: revoked in between.
    Moved,
    /// The row fails its integrity check.
    Tampered(registry::RegistryError),
}

struct Cache {
    /// None until loaded, and after [`AgentKeys::invalidate`].
    epoch: Option<u64>,
    agents: HashMap<i64, Arc<AgentEntry>>,
    /// Answers every id with no agent in this epoch.
    nobody: Arc<AgentEntry>,
}

/// The cache and the secrets its keys are derived from.
pub struct AgentKeys {
    /// Replaced whole when the live key epochs change (`key rotate`).
    keyring: RwLock<Arc<KeyRing>>,
    cache: RwLock<Cache>,
}

impl AgentKeys {
    pub fn new(keyring: KeyRing) -> AgentKeys {
        let nobody = Arc::new(stand_in(&keyring, u64::MAX, None));
        AgentKeys {
            keyring: RwLock::new(Arc::new(keyring)),
            cache: RwLock::new(Cache { epoch: None, agents: HashMap::new(), nobody }),
        }
    }

    pub fn keyring(&self) -> Arc<KeyRing> {
        Arc::clone(&self.keyring.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Uses `keyring` (new live key epochs) from now on. Every entry goes,
    /// keys kept across reloads included: they came from the old epochs.
    pub fn replace_keyring(&self, keyring: KeyRing) {
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        cache.nobody = Arc::new(stand_in(&keyring, u64::MAX, None));
        cache.agents.clear();
        cache.epoch = None;
        *self.keyring.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keyring);
    }

    /// The keys agent `agent_id`'s lines may be sealed under, derived in ONE
    /// place: generation `generation`'s wire key for a v1 agent, the channel
    /// key of the two identities for an enrolled one. (Key epochs, when they
    /// A v1 agent gets one candidate per live key epoch, newest first (a
    /// key exported before the last `key rotate` works until its epoch is
    /// retired), and [`stand_in`] gets as many, so unknown ids still cost
    /// what known ones do.
    fn derive(
        keyring: &KeyRing,
        boss: &IdentityKeys,
        agent_id: i64,
        generation: u32,
        enrolled: Option<&StoredIdentity>,
    ) -> Arc<[Candidate]> {
        match enrolled {
            // A low-order point gives no key: nothing opens, as before.
            Some(identity) => boss
                .channel_key(Side::Boss, &identity.public, agent_id)
                .into_iter()
                .map(|key| Candidate { epoch: None, key: Arc::new(key) })
                .collect(),
            None => keyring
                .agent_wire_keys(agent_id, generation)
                .into_iter()
                .map(|(epoch, key)| Candidate { epoch: Some(epoch), key: Arc::new(key) })
                .collect(),
        }
    }

    /// The entry for `agent_id` in registry epoch `epoch` (the stand-in if
    /// there is no such agent), loading the whole registry's keys first if
    /// the cache is from another epoch.
    pub fn lookup(
        &self,
        agent_id: i64,
        epoch: u64,
        reader: &Mutex<Connection>,
        boss: &IdentityKeys,
    ) -> DbResult<Arc<AgentEntry>> {
        {
            let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
            if cache.epoch == Some(epoch) {
                return Ok(cache.agents.get(&agent_id).unwrap_or(&cache.nobody).clone());
            }
        }
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        if cache.epoch != Some(epoch) {
            let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
            let (agents, version) = self.load(&conn, epoch, &cache.agents, boss)?;
            cache.agents = agents;
            cache.nobody = Arc::new(stand_in(&self.keyring(), epoch, Some(version)));
            cache.epoch = Some(epoch);
            tracing::debug!(epoch, agents = cache.agents.len(), "agent key cache loaded");
        }
        Ok(cache.agents.get(&agent_id).unwrap_or(&cache.nobody).clone())
    }

    /// Every agent's id, key generation and current identity, in one read
    /// transaction; keys whose inputs did not change are kept from `old`.
    fn load(
        &self,
        conn: &Connection,
        epoch: u64,
        old: &HashMap<i64, Arc<AgentEntry>>,
        boss: &IdentityKeys,
    ) -> DbResult<(HashMap<i64, Arc<AgentEntry>>, i64)> {
        let tx = conn.unchecked_transaction()?;
        let version = data_version(&tx)?;
        let generations = agents::key_generations(&tx)?;
        let mut enrolled: HashMap<i64, StoredIdentity> =
            identities::all_current(&tx)?.into_iter().map(|i| (i.agent_id, i)).collect();
        tx.finish()?;
        let keyring = self.keyring();
        let mut agents = HashMap::with_capacity(generations.len());
        for (agent_id, generation) in generations {
            let identity = enrolled.remove(&agent_id);
            let candidates = match old.get(&agent_id) {
                Some(e) if e.generation == generation && e.enrolled == identity => e.candidates.clone(),
                _ => Self::derive(&keyring, boss, agent_id, generation, identity.as_ref()),
            };
            let entry = AgentEntry {
                agent_id,
                epoch,
                version: Some(version),
                exists: true,
                generation,
                enrolled: identity,
                candidates,
                checked: OnceLock::new(),
            };
            agents.insert(agent_id, Arc::new(entry));
        }
        Ok((agents, version))
    }

    /// Whether `entry` (looked up for `agent_id`) still says what the registry says of it (there
    /// is one or not, its key generation, its identity), read now. A line
    /// none of whose candidate keys opened asks this before it is refused:
    /// the agent may have a key the cache has not seen yet (a revocation's
    /// new generation, an enrolment) while the writer has had no commit to
    /// notice the change by. When no connection has committed since the
    /// entry was read (the reader's `PRAGMA data_version` is unchanged: a
    /// Boss refusing lines while nothing is stored) the entry is current and
    /// nothing more is read; otherwise the agent's key generation and
    /// identity are read, the same two reads for any id.
    pub fn confirm(&self, agent_id: i64, entry: &AgentEntry, reader: &Mutex<Connection>) -> DbResult<bool> {
        let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
        if entry.version.is_some() && entry.version == Some(data_version(&conn)?) {
            return Ok(true);
        }
        let tx = conn.unchecked_transaction()?;
        let generation = agents::generation_of(&tx, agent_id)?;
        let identity = identities::current(&tx, agent_id)?;
        tx.finish()?;
        let known = if entry.exists { Some(entry.generation) } else { None };
        Ok(generation == known && identity == entry.enrolled)
    }

    /// Forgets every entry: the next lookup reloads.
    pub fn invalidate(&self) {
        self.cache.write().unwrap_or_else(|p| p.into_inner()).epoch = None;
    }

    /// The agent's row, read and checked the first time a line of the entry
    /// proves itself; a good result is kept with the entry.
    pub fn row_status(
        &self,
        entry: &AgentEntry,
        reader: &Mutex<Connection>,
        keys: &RegistryKeys,
    ) -> Result<RowStatus, DbError> {
        if let Some(checked) = entry.checked.get() {
            return Ok(RowStatus::Good(checked.clone()));
        }
        let row = {
            let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
            agents::by_id(&conn, entry.agent_id)?
        };
        let Some(row) = row.filter(|_| entry.exists) else { return Ok(RowStatus::Missing) };
        // A row changed without the key (a rolled-back revocation, say) is
        // not trusted, whatever the token.
        if let Err(e) = registry::check_row(keys, &row) {
            return Ok(RowStatus::Tampered(e));
        }
        if row.key_generation != entry.generation {
            return Ok(RowStatus::Moved);
        }
        let alias = keys.reveal(&row.alias).unwrap_or_else(|_| format!("agent {}", entry.agent_id));
        let seen = Arc::new(Snapshot { agent_id: entry.agent_id, row, identity: entry.enrolled.clone() });
        let checked = Arc::new(Checked { seen, alias });
        Ok(RowStatus::Good(entry.checked.get_or_init(|| checked).clone()))
    }
}

/// The entry for ids with no agent: one key (as many candidates as an agent
/// has) that opens nothing a client can make, derived from the master secret
/// under a label used for nothing else and never sent anywhere, so the line
/// costs one MAC check as a known id's does and gets the same `auth`.
fn stand_in(keyring: &KeyRing, epoch: u64, version: Option<i64>) -> AgentEntry {
    AgentEntry {
        agent_id: 0,
        epoch,
        version,
        exists: false,
        generation: 0,
        enrolled: None,
        candidates: keyring
            .epochs()
            .map(|epoch| {
                let okm = keyring.derive_at(epoch, NO_SUCH_AGENT).expect("a live epoch of this ring");
                Candidate { epoch: Some(epoch), key: Arc::new(FernetKey::from_bytes(&okm)) }
            })
            .collect(),
        checked: OnceLock::new(),
    }
}

/// The connection's `PRAGMA data_version`: changes when another connection
/// has committed since this one last looked.
fn data_version(conn: &Connection) -> DbResult<i64> {
    Ok(conn.query_row("PRAGMA data_version", [], |row| row.get(0))?)
}

/// HKDF label of the stand-in key (not a wire key: never leaves the Boss).
const NO_SUCH_AGENT: &str = "spyctl/v1/boss/no-such-agent";
