//! The Boss's answer to each `MSG` line: authenticate the agent's token,
//! check freshness, file the message durably, and reply with an ACK sealed
//! under the same agent key.
//!
//! An unknown agent and a bad MAC get the same `ERR auth` after the same work
//! (the MAC is checked before the agent is looked up), so a prober learns
//! nothing about which agent ids exist. A resent message id (a retry, or a
//! replay within the TTL) is stored once and acknowledged as `duplicate`.
//! Agents' keys and checked rows come from the per-agent cache
//! (`agent_keys`, through [`BossService::keys_for`]); a write authorised from
//! it is confirmed by the writer when the registry may have changed.

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use rusqlite::Connection;

use crate::crypto::{IdentityKeys, KeyRing, MasterKeys, PublicIdentity, TokenError};
use crate::db::{self, DbError, identities, messages};
use crate::net::protocol::{self, AckStatus, ErrorCode, Kind};
use crate::net::reply::{Redo, Reply};
use crate::net::server::{Answer, LineHandler, Peer};
use crate::net::v2;
use crate::registry::RegistryKeys;

use super::agent_keys::{AgentEntry, AgentKeys, RowStatus};
use super::files::{ChunkError, ChunkOutcome, FileAssembler, Quota};
use super::receipt::AckKey;
use super::store::{Guard, Store, Write, WriteOp, Written};

/// Settings the operator chooses.
#[derive(Debug, Clone)]
pub struct BossConfig {
    /// Oldest token accepted, in seconds.
    pub ttl_secs: u64,
    /// Largest file accepted; 0 refuses files.
    pub max_file_bytes: u64,
    /// What one agent's uploads may hold, and the free space kept on the disk.
    pub quota: Quota,
    /// Partial uploads untouched this long are removed, at start and then
    /// periodically while the Boss runs.
    pub partial_expiry: std::time::Duration,
    /// Whether v1 `MSG` lines (the Fernet PSK channel) are served; enrolment
    /// lines and v2 sessions are served either way.
    pub v1: bool,
    /// Failed v2 handshakes one address may cost per second (0: no limit).
    pub failed_handshakes_per_second: u32,
}

impl Default for BossConfig {
    fn default() -> Self {
        BossConfig {
            ttl_secs: 300,
            max_file_bytes: 1 << 30,
            quota: Quota { max_stored_bytes: 4 << 30, max_partial_uploads: 8, min_free_bytes: 256 << 20 },
            partial_expiry: std::time::Duration::from_secs(60 * 60),
            v1: true,
            failed_handshakes_per_second: super::handshake_budget::DEFAULT_PER_SECOND,
        }
    }
}

/// An `ERR` to send: its code and human text.
type Refusal = (ErrorCode, String);

/// A v2 message's answer: its ACK's JSON and whether it added anything, or
/// its refusal.
pub(super) type V2Answer = Result<(Vec<u8>, bool), Refusal>;

/// How far [`BossService::prepare`] got with a line.
#[expect(
    clippy::large_enum_variant,
    reason = "a Step lives for one line in one batch; boxing the ACK would add an allocation per message"
)]
enum Step {
    /// The answer is ready (a file chunk written and synced); `new` says
    /// whether the chunk added bytes (a resent earlier chunk does not).
    Reply { line: String, new: bool },
    /// The answer is an ACK once this write is committed.
    Commit(PendingAck),
    /// The registry (or the live key epochs) changed under the agent cache:
    /// authorise the line again.
    Stale,
}

/// What a file chunk came to ([`BossService::file_chunk`]), before either
/// protocol words its ACK.
enum ChunkStep {
    /// Answer now: the chunk is written and synced, or the file was recorded
    /// before; `new` says whether the chunk added bytes.
    Answer { status: AckStatus, reply: String, new: bool },
    /// The chunk completed the file: its record is this write, and the ACK
    /// (`reply`) waits for its commit.
    Complete { op: WriteOp, reply: String },
}

/// Who sent a file chunk, as the file's record names them.
struct FileReceipt<'a> {
    agent_id: i64,
    /// For the reply to the last chunk.
    alias: &'a str,
    /// An enrolled agent's identity: its last chunk must be signed.
    enrolled: Option<&'a identities::StoredIdentity>,
    /// Conceals the file's name at rest.
    registry: &'a RegistryKeys,
    /// Unix seconds, the record's time of receipt.
    now: i64,
}

/// How many times a line is authorised again after the registry changed
/// under it before the client is told to try later.
const STALE_RETRIES: u32 = 3;

/// What [`BossService::prepare_v2_text`] made of a v2 message.
#[expect(
    clippy::large_enum_variant,
    reason = "lives for one frame of one batch; boxing the text would add an allocation per message"
)]
pub(super) enum V2Prepared {
    /// A text, authorised, waiting for its commit.
    Text(V2Text),
    /// Not a text (a file chunk): its plaintext, for its own path.
    Other(Vec<u8>),
}

/// A v2 text message authorised ([`BossService::prepare_v2_text`]) and
/// waiting for its commit; its plaintext is kept to authorise it again if
/// the registry overtakes it.
pub(super) struct V2Text {
    write: Write,
    ack_key: AckKey,
    id: String,
    reply: String,
    plaintext: Vec<u8>,
}

/// An ACK waiting for its write's commit.
struct PendingAck {
    write: Write,
    rest: AckParts,
}

/// What sealing an ACK needs, besides the commit's outcome.
struct AckParts {
    key: AckKey,
    agent_id: i64,
    /// For the log line.
    what: &'static str,
    id: String,
    reply: String,
}

/// The registry's keys of every live key epoch, swapped whole when they
/// change (the wire keys live in the agent cache, which is reset then too).
struct EpochKeys {
    registry: RegistryKeys,
    /// `db::epochs::fingerprint` when these were loaded.
    fingerprint: String,
}

/// The Boss's line handler.
pub struct BossService {
    /// Replaced when `key rotate` or `key retire` (another process) changes
    /// the live epochs: see [`Self::refresh_keys`].
    keys: RwLock<Arc<EpochKeys>>,
    /// Reloads master.key (with the home's checks) when the epochs change.
    load_master: Box<dyn Fn() -> Option<MasterKeys> + Send + Sync>,
    /// When an auth failure last made the Boss look for new key epochs.
    last_key_check: Mutex<std::time::Instant>,
    /// Per-agent keys and checked rows, and the master secrets they come from.
    agent_keys: AgentKeys,
    /// The Boss's own identity (identity.key): channel keys with enrolled agents.
    identity: Arc<IdentityKeys>,
    /// Agent lookups (exists? alias?) are tiny reads; one connection suffices.
    reader: Mutex<Connection>,
    /// `JOIN`, `JOIN2` and `WHOIS` lines (enrolment by one-time code).
    enrolment: super::enroll::Enrolment,
    /// Protocol v2 sessions (Noise), one per connection that shook hands.
    v2: super::v2::V2Sessions,
    store: Store,
    files: FileAssembler,
    config: BossConfig,
    /// The database, for the dispatcher's own watching connection.
    db_path: std::path::PathBuf,
    /// `files/`, whose `orders/` holds the files orders carry.
    files_root: std::path::PathBuf,
}

impl BossService {
    /// `keyring` is the database's keys now; `load_master` reads master.key
    /// again when a rotation adds an epoch.
    pub fn new(
        keyring: KeyRing,
        load_master: Box<dyn Fn() -> Option<MasterKeys> + Send + Sync>,
        identity: IdentityKeys,
        db_path: &Path,
        files_root: &Path,
        store: Store,
        config: BossConfig,
    ) -> Result<Self, DbError> {
        let reader = db::open_read_only(db_path)?;
        let fingerprint = db::epochs::fingerprint(&reader)?;
        let files = FileAssembler::new(files_root.to_path_buf(), keyring.files_keys()).with_quota(config.quota);
        // Partials left by a Boss that stopped: the running sweeper
        // ([`Self::sweep_partials`]) only starts counting from now.
        let swept = files.sweep_stale(config.partial_expiry);
        if swept > 0 {
            tracing::info!(swept, "removed expired partial uploads");
        }
        let enrolment = super::enroll::Enrolment::new(db_path, identity.public())?;
        let registry = RegistryKeys::derive(&keyring);
        Ok(BossService {
            enrolment,
            v2: super::v2::V2Sessions::new(config.failed_handshakes_per_second),
            keys: RwLock::new(Arc::new(EpochKeys { registry, fingerprint })),
            load_master,
            last_key_check: Mutex::new(std::time::Instant::now()),
            agent_keys: AgentKeys::new(keyring),
            identity: Arc::new(identity),
            reader: Mutex::new(reader),
            store,
            files,
            config,
            db_path: db_path.to_path_buf(),
            files_root: files_root.to_path_buf(),
        })
    }

    pub fn identity(&self) -> PublicIdentity {
        self.identity.public()
    }

    fn current_keys(&self) -> Arc<EpochKeys> {
        Arc::clone(&self.keys.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Picks up a key rotation or retirement made by another process: if the
    /// live epochs changed, reads master.key again and swaps every key (wire,
    /// registry, files) at once. Called about once a second by the sweeper
    /// thread. Keeps the old keys, loudly, if master.key lacks a live epoch.
    pub fn refresh_keys(&self) -> bool {
        let fingerprint = {
            let reader = self.reader.lock().unwrap_or_else(|p| p.into_inner());
            match db::epochs::fingerprint(&reader) {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the key epochs");
                    return false;
                }
            }
        };
        let current = self.current_keys();
        if current.fingerprint == fingerprint {
            return false;
        }
        let live = {
            let reader = self.reader.lock().unwrap_or_else(|p| p.into_inner());
            db::live_epochs(&reader)
        };
        let keyring = match (live, (self.load_master)()) {
            (Ok(live), Some(master)) => match master.bind(self.agent_keys.keyring().database_id(), &live) {
                Ok(keyring) => keyring,
                Err(e) => {
                    tracing::error!(error = %e, "key epochs changed but master.key cannot follow; keeping the old keys");
                    return false;
                }
            },
            _ => {
                tracing::error!("key epochs changed but master.key or the epochs cannot be read; keeping the old keys");
                return false;
            }
        };
        self.files.set_keys(keyring.files_keys());
        let registry = RegistryKeys::derive(&keyring);
        let epochs: Vec<u32> = keyring.epochs().collect();
        self.agent_keys.replace_keyring(keyring);
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(EpochKeys { registry, fingerprint });
        tracing::info!(?epochs, "key epochs changed: now accepting keys of these epochs, writing under the newest");
        true
    }

    /// Whether the keys were swapped (by any thread) since `seen` was taken.
    fn keys_changed_since(&self, seen: &Arc<EpochKeys>) -> bool {
        !Arc::ptr_eq(seen, &self.current_keys())
    }

    /// [`Self::refresh_keys`], unless it ran in the last 100 ms; true if the
    /// keys changed.
    fn refresh_keys_soon(&self) -> bool {
        {
            let mut last = self.last_key_check.lock().unwrap_or_else(|p| p.into_inner());
            if last.elapsed() < std::time::Duration::from_millis(100) {
                return false;
            }
            *last = std::time::Instant::now();
        }
        self.refresh_keys()
    }

    /// How long a partial upload may sit untouched.
    /// A watch on the outbox for orders queued by other processes.
    pub fn outbox_watch(&self) -> Result<super::orders::OutboxWatch, super::orders::OrderError> {
        super::orders::OutboxWatch::open(&self.db_path)
    }

    /// Whether any agent listens for orders over v2 now.
    pub fn has_listeners(&self) -> bool {
        self.v2.has_listeners()
    }

    /// Pushes newly queued orders to the agents listening over v2; false if
    /// a busy session was skipped (try again shortly).
    pub fn push_orders(&self) -> bool {
        self.v2.push_orders(self)
    }

    pub fn partial_expiry(&self) -> std::time::Duration {
        self.config.partial_expiry
    }

    /// Removes partial uploads untouched for `--partial-expiry`: an abandoned
    /// upload must not hold its share of the quota (or the disk) until the
    /// next restart.
    pub fn sweep_partials(&self) {
        let swept = self.files.sweep_stale(self.config.partial_expiry);
        if swept > 0 {
            tracing::info!(swept, "removed expired partial uploads");
        }
    }

    /// The agent's stored (encrypted) alias, or None if no such agent (now).
    /// Called only once the token's MAC has verified.
    fn stored_alias(&self, agent_id: i64) -> Result<Option<db::agents::StoredAgent>, DbError> {
        let reader = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        db::agents::by_id(&reader, agent_id)
    }

    /// The cache entry for agent `agent_id`: the candidate keys its lines
    /// may be sealed under (try each; the ACK is sealed under the one that
    /// opened), its key generation and enrolled identity. The one place the
    /// Boss gets an agent's wire keys; an id with no agent gets a stand-in
    /// whose keys open nothing, at the same cost.
    fn keys_for(&self, agent_id: i64) -> Result<Arc<AgentEntry>, DbError> {
        self.agent_keys.lookup(agent_id, self.store.registry_epoch(), &self.reader, &self.identity)
    }

    /// The size and SHA-256 of agent `agent_id`'s completed file `file_id`.
    fn completed_file(&self, agent_id: i64, file_id: &str) -> Result<Option<(i64, String)>, Refusal> {
        let reader = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        messages::file_record(&reader, agent_id, file_id).map_err(|e| {
            tracing::error!(error = %e, "file lookup failed");
            (ErrorCode::Internal, "try again later".to_string())
        })
    }

    /// Where agent `agent_id`'s upload `file_id` stands (the offset query):
    /// recorded files from their row, else what the part file durably holds.
    /// Only ever about the asking agent's own uploads.
    pub(super) fn committed_offset(&self, agent_id: i64, file_id: &str) -> Result<protocol::Committed, Refusal> {
        if let Some((size, sha256)) = self.completed_file(agent_id, file_id)? {
            return Ok(protocol::Committed::Complete { size: size.max(0) as u64, sha256 });
        }
        self.files.committed(agent_id, file_id).map_err(|e| match e {
            ChunkError::Rejected(why) | ChunkError::Refused(why) => (ErrorCode::BadRequest, why),
            ChunkError::Io(why) => {
                tracing::error!(error = %why, "offset query failed");
                (ErrorCode::Internal, "could not read the upload; try again".to_string())
            }
        })
    }

    /// A v2 offset query (frame `Q`) from agent `agent_id`'s session: the
    /// plaintext of a v1 offset query, answered with the plaintext of the v1
    /// offset ACK (frame `U`).
    pub(super) fn offset_query(&self, agent_id: i64, plaintext: &[u8], peer: &Peer) -> Result<Vec<u8>, Refusal> {
        let (header, _) = protocol::decode_message(plaintext).map_err(|e| (ErrorCode::BadRequest, e.0))?;
        let Kind::Offset { file_id } = &header.kind else {
            return Err((ErrorCode::BadRequest, "a Q frame carries an offset query".into()));
        };
        let committed = self.committed_offset(agent_id, file_id)?;
        tracing::debug!(conn = peer.id, agent = agent_id, file = %file_id, ?committed, "offset query (v2)");
        Ok(protocol::encode_offset_reply(&header.id, &committed))
    }

    /// The Boss's own identity keys (the v2 handshake's static key).
    pub(super) fn identity_keys(&self) -> &IdentityKeys {
        &self.identity
    }

    /// A v2 message (frame `M`) from a session whose handshake proved
    /// `identity`: the same checks as a v1 line after its MAC (the agent row
    /// and its tag, the identity still current, the signature), stored
    /// through the same group-commit writer. A text is sealed at rest under
    /// the channel key as v1 messages of enrolled agents are; a file chunk
    /// goes through v1's file path ([`Self::file_chunk`]), its body at most
    /// [`v2::FILE_CHUNK_BYTES`]. Returns the ACK's JSON (with the signed
    /// receipt) and whether the message added anything. With `owed`, a
    /// middle chunk may come back unsynced (its part file in `owed`): the
    /// caller syncs it before the ACK goes out.
    pub(super) fn accept_v2_message(
        &self,
        agent_id: i64,
        identity: &identities::StoredIdentity,
        plaintext: &[u8],
        peer: &Peer,
        owed: Option<&mut Option<std::fs::File>>,
    ) -> Result<(Vec<u8>, bool), Refusal> {
        let auth_failed = || (ErrorCode::Auth, "authentication failed".to_string());
        let internal = |e: &dyn std::fmt::Display| {
            tracing::error!(error = %e, "v2: lookup failed");
            (ErrorCode::Internal, "try again later".to_string())
        };
        // Revoked or re-enrolled since the handshake: this session is over.
        let current = self.enrolled(agent_id).map_err(|e| internal(&e))?;
        if current.as_ref().map(|c| c.row_id) != Some(identity.row_id) {
            return Err((ErrorCode::Auth, "this identity is no longer enrolled".into()));
        }
        let row = self.stored_alias(agent_id).map_err(|e| internal(&e))?.ok_or_else(auth_failed)?;
        let mut keys = self.current_keys();
        if keys.registry.at(row.key_epoch).is_none() {
            // Whoever swaps the keys (this thread or the poller), take the newest.
            self.refresh_keys();
            keys = self.current_keys();
        }
        if let Err(e) = crate::registry::check_row(&keys.registry, &row) {
            tracing::error!(agent = agent_id, error = %e, "refused: agent row fails its integrity check");
            return Err(auth_failed());
        }
        let alias = keys.registry.reveal(&row.alias).unwrap_or_else(|_| format!("agent {agent_id}"));
        let (header, body) = protocol::decode_message(plaintext).map_err(|e| (ErrorCode::BadRequest, e.0))?;
        if let Kind::FileChunk(chunk) = &header.kind {
            // Before any signature check or key derivation: the cheap refusals first.
            if body.len() > v2::FILE_CHUNK_BYTES {
                let why = format!("a v2 file chunk is at most {} bytes", v2::FILE_CHUNK_BYTES);
                return Err((ErrorCode::TooLong, why));
            }
            self.check_file_limits(chunk)?;
        }
        let signature = match &header.kind {
            Kind::Text => {
                Some(self.check_signature(identity, super::verify::Subject::text(&header.id, body), plaintext, peer)?)
            }
            Kind::FileChunk(_) => None,
            Kind::Offset { .. } => {
                return Err((ErrorCode::BadRequest, "an offset query goes in a Q frame".into()));
            }
        };
        // The channel key from the agent cache when it holds this identity
        // (the usual case), else derived now.
        let entry = self.keys_for(agent_id).map_err(|e| internal(&e))?;
        let key = match (&entry.enrolled, entry.candidates().first()) {
            (Some(cached), Some(candidate)) if cached.row_id == identity.row_id => Arc::clone(&candidate.key),
            _ => Arc::new(
                self.identity
                    .channel_key(crate::crypto::identity::Side::Boss, &identity.public, agent_id)
                    .ok_or_else(auth_failed)?,
            ),
        };
        let now = crate::crypto::fernet::unix_now() as i64;
        // The same signed receipt as a v1 ACK to an enrolled agent:
        // evidence the agent can keep, beyond this session.
        let ack_key = AckKey::signed(Arc::clone(&key), agent_id, body);
        let (op, what, reply) = match &header.kind {
            Kind::FileChunk(chunk) => {
                let who =
                    FileReceipt { agent_id, alias: &alias, enrolled: Some(identity), registry: &keys.registry, now };
                match self.file_chunk(&who, chunk, body, plaintext, peer, owed)? {
                    ChunkStep::Answer { status, reply, new } => {
                        return Ok((ack_key.plaintext(&self.identity, &header.id, status, &reply), new));
                    }
                    ChunkStep::Complete { op, reply } => (op, "file received (v2)", reply),
                }
            }
            _ => (
                WriteOp::Message(messages::StoredMessage {
                    agent_id,
                    message_id: header.id.clone(),
                    received_at: now,
                    token: key.seal(plaintext),
                    signature,
                    key_epoch: None,
                }),
                "text message (v2)",
                format!("Message received. Good work, {alias}."),
            ),
        };
        // No cache guard: the identity was read just above, in this call.
        match self.store.write_all(vec![Write { op, guard: None }]).pop() {
            Some(Ok(written)) => {
                let added = written == Written::Added;
                let status = if added { AckStatus::Stored } else { AckStatus::Duplicate };
                tracing::info!(conn = peer.id, agent = agent_id, msg = %header.id, ?status, "{what}");
                Ok((ack_key.plaintext(&self.identity, &header.id, status, &reply), added))
            }
            Some(Err(e)) => {
                tracing::error!(error = %e, "store failed");
                Err((ErrorCode::Internal, "could not store the message; try again".into()))
            }
            None => Err((ErrorCode::Internal, "could not store the message; try again".into())),
        }
    }

    /// A v2 text message (frame `M`) from the session of `identity`,
    /// authorised from the agent cache as a v1 line is (no database read
    /// per message once the cache is loaded): the cached identity must be
    /// the session's, the cached row must pass its checks, and the signature
    /// must verify. Returns the write and its ACK-to-be, or the plaintext
    /// back when the message is not a text (a file chunk or an offset query: those keep
    /// their own path, [`Self::accept_v2_message`]). The write carries the
    /// cache entry's guard, so a revocation or re-enrolment committed by
    /// another process since the cache was read makes it
    /// [`Written::Stale`] in the writer's transaction, and
    /// [`Self::commit_v2_texts`] authorises it again from a fresh cache.
    pub(super) fn prepare_v2_text(
        &self,
        identity: &identities::StoredIdentity,
        plaintext: Vec<u8>,
        peer: &Peer,
    ) -> Result<V2Prepared, Refusal> {
        let agent_id = identity.agent_id;
        let (header, body) = protocol::decode_message(&plaintext).map_err(|e| (ErrorCode::BadRequest, e.0))?;
        if !matches!(header.kind, Kind::Text) {
            return Ok(V2Prepared::Other(plaintext));
        }
        let internal = |e: DbError| {
            tracing::error!(error = %e, "v2: agent lookup failed");
            (ErrorCode::Internal, "try again later".to_string())
        };
        let gone = || (ErrorCode::Auth, "this identity is no longer enrolled".to_string());
        let auth_failed = || (ErrorCode::Auth, "authentication failed".to_string());
        // At most one reload: the cache may be older than the session (an
        // enrolment the writer has not noticed yet) or than a key rotation.
        let mut reloaded = false;
        let (entry, checked) = loop {
            let keys = self.current_keys();
            let entry = self.keys_for(agent_id).map_err(internal)?;
            let same = entry.enrolled.as_ref().map(|e| e.row_id) == Some(identity.row_id);
            if !same {
                if reloaded || self.agent_keys.confirm(agent_id, &entry, &self.reader).map_err(internal)? {
                    return Err(gone());
                }
                self.agent_keys.invalidate();
                reloaded = true;
                continue;
            }
            match self.agent_keys.row_status(&entry, &self.reader, &keys.registry).map_err(internal)? {
                RowStatus::Good(checked) => break (entry, checked),
                RowStatus::Missing | RowStatus::Moved => return Err(auth_failed()),
                RowStatus::Tampered(e) => {
                    // Or rewrapped under a key epoch this Boss has not loaded yet.
                    if !reloaded && (self.refresh_keys() || self.keys_changed_since(&keys)) {
                        self.agent_keys.invalidate();
                        reloaded = true;
                        continue;
                    }
                    tracing::error!(agent = agent_id, error = %e, "refused: agent row fails its integrity check");
                    return Err(auth_failed());
                }
            }
        };
        let signature =
            self.check_signature(identity, super::verify::Subject::text(&header.id, body), &plaintext, peer)?;
        // The channel key, derived once per cache load, not per message.
        let key = entry.candidates().first().map(|c| Arc::clone(&c.key)).ok_or_else(auth_failed)?;
        let ack_key = AckKey::signed(Arc::clone(&key), agent_id, body);
        let write = Write {
            op: WriteOp::Message(messages::StoredMessage {
                agent_id,
                message_id: header.id.clone(),
                received_at: crate::crypto::fernet::unix_now() as i64,
                token: key.seal(&plaintext),
                signature: Some(signature),
                key_epoch: None,
            }),
            guard: Some(Guard { epoch: entry.epoch, seen: checked.seen.clone() }),
        };
        let reply = format!("Message received. Good work, {}.", checked.alias);
        Ok(V2Prepared::Text(V2Text { write, ack_key, id: header.id, reply, plaintext }))
    }

    /// Commits a session's pipelined v2 texts as ONE job of the group-commit
    /// writer (one transaction, one fsync, shared with other sessions'
    /// jobs), then words each ACK: one result per text, in order, each
    /// after its own durable commit. A text whose authorisation the
    /// registry overtook ([`Written::Stale`]) is authorised again from a
    /// fresh cache, up to [`STALE_RETRIES`] times.
    pub(super) fn commit_v2_texts(
        &self,
        identity: &identities::StoredIdentity,
        texts: Vec<V2Text>,
        peer: &Peer,
    ) -> Vec<V2Answer> {
        let mut results: Vec<Option<V2Answer>> = (0..texts.len()).map(|_| None).collect();
        let mut todo: Vec<(usize, V2Text)> = texts.into_iter().enumerate().collect();
        for round in 0..=STALE_RETRIES {
            if todo.is_empty() {
                break;
            }
            let (writes, rest): (Vec<Write>, Vec<_>) =
                todo.into_iter().map(|(i, t)| (t.write, (i, t.ack_key, t.id, t.reply, t.plaintext))).unzip();
            let mut stale = Vec::new();
            for (result, (i, ack_key, id, reply, plaintext)) in self.store.write_all(writes).into_iter().zip(rest) {
                results[i] = Some(match result {
                    Ok(Written::Stale) => {
                        stale.push((i, plaintext));
                        continue;
                    }
                    Ok(written) => {
                        let added = written == Written::Added;
                        let status = if added { AckStatus::Stored } else { AckStatus::Duplicate };
                        // Per message at debug only: the server counts lines each second.
                        tracing::debug!(conn = peer.id, agent = identity.agent_id, msg = %id, ?status, "text message (v2)");
                        Ok((ack_key.plaintext(&self.identity, &id, status, &reply), added))
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "store failed");
                        Err((ErrorCode::Internal, "could not store the message; try again".into()))
                    }
                });
            }
            todo = Vec::new();
            if stale.is_empty() {
                break;
            }
            if round == STALE_RETRIES {
                tracing::warn!(lines = stale.len(), "the registry kept changing under these v2 messages; refused");
                for (i, _) in stale {
                    results[i] = Some(Err((ErrorCode::Internal, "try again later".into())));
                }
                break;
            }
            // The registry changed under the cache: reload it and authorise again.
            self.agent_keys.invalidate();
            for (i, plaintext) in stale {
                match self.prepare_v2_text(identity, plaintext, peer) {
                    Ok(V2Prepared::Text(text)) => todo.push((i, text)),
                    Ok(V2Prepared::Other(_)) => results[i] = Some(Err((ErrorCode::Internal, "internal error".into()))),
                    Err(refusal) => results[i] = Some(Err(refusal)),
                }
            }
        }
        results.into_iter().map(|r| r.unwrap_or_else(|| Err((ErrorCode::Internal, "internal error".into())))).collect()
    }

    /// One step of order delivery over v2: marks `stored` delivered (the
    /// agent has them on its disk) through the group-commit writer, then
    /// returns the orders still pending (opened under `key`, the agent's
    /// channel key, which its session holds) and whether any was newly
    /// confirmed.
    pub(super) fn orders_step(
        &self,
        identity: &identities::StoredIdentity,
        key: &crate::crypto::FernetKey,
        stored: &[String],
    ) -> Result<(Vec<super::orders::Order>, bool), Refusal> {
        let internal = |e: &dyn std::fmt::Display| {
            tracing::error!(error = %e, "orders step failed");
            (ErrorCode::Internal, "try again later".to_string())
        };
        let current = self.enrolled(identity.agent_id).map_err(|e| internal(&e))?;
        if current.as_ref().map(|c| c.row_id) != Some(identity.row_id) {
            return Err((ErrorCode::Auth, "this identity is no longer enrolled".into()));
        }
        let mut confirmed = false;
        if !stored.is_empty() {
            let at = crate::crypto::fernet::unix_now() as i64;
            let op = WriteOp::OrdersDelivered { agent_id: identity.agent_id, ids: stored.to_vec(), at };
            match self.store.write_all(vec![Write { op, guard: None }]).pop() {
                Some(Ok(written)) => confirmed = written == Written::Added,
                Some(Err(e)) => return Err(internal(&e)),
                None => return Err(internal(&"the writer stopped")),
            }
            tracing::info!(agent = identity.agent_id, orders = stored.len(), "orders delivered");
        }
        let reader = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let orders = super::orders::offer_under(&reader, key, identity.agent_id).map_err(|e| internal(&e))?;
        Ok((orders, confirmed))
    }

    /// `G`: up to `count` chunks of an order's file for the agent whose
    /// order carries it (PROTOCOL.md, "Files with orders").
    pub(super) fn order_file_chunks(
        &self,
        identity: &identities::StoredIdentity,
        ask: &crate::net::v2::FileAsk,
        count: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, Refusal> {
        let file = self.order_file(identity, &ask.file)?;
        let chunk = super::order_files::CHUNK as u64;
        if ask.offset >= file.size || !ask.offset.is_multiple_of(chunk) {
            let why = format!("G asks from a multiple of {chunk} below the file's size ({})", file.size);
            return Err((ErrorCode::BadRequest, why));
        }
        super::order_files::serve(&self.files_root, &self.files.keys(), &file, ask.offset, count).map_err(|e| {
            tracing::error!(error = %e, file = %ask.file, "cannot serve an order's file");
            (ErrorCode::Internal, "the order's file cannot be read; try again later".to_string())
        })
    }

    /// `N`: the agent holds the whole file with `done.sha256`; recorded as
    /// delivered to it if that is the file's hash.
    pub(super) fn order_file_done(
        &self,
        identity: &identities::StoredIdentity,
        done: &crate::net::v2::FileDone,
    ) -> Result<(), Refusal> {
        let file = self.order_file(identity, &done.file)?;
        if file.sha256 != done.sha256 {
            return Err((ErrorCode::BadRequest, "that is not the file's SHA-256".into()));
        }
        let at = crate::crypto::fernet::unix_now() as i64;
        let op = WriteOp::OrderFileDelivered { agent_id: identity.agent_id, file_id: file.file_id, at };
        match self.store.write_all(vec![Write { op, guard: None }]).pop() {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => {
                tracing::error!(error = %e, "recording a delivered file failed");
                Err((ErrorCode::Internal, "try again later".into()))
            }
            None => Err((ErrorCode::Internal, "try again later".into())),
        }
    }

    /// The order file `file_id`, if one of this (still enrolled) agent's
    /// orders carries it; any other id is refused alike.
    fn order_file(
        &self,
        identity: &identities::StoredIdentity,
        file_id: &str,
    ) -> Result<crate::db::order_files::FileRow, Refusal> {
        let reader = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let current = identities::current(&reader, identity.agent_id);
        if current.as_ref().ok().and_then(|c| c.as_ref()).map(|c| c.row_id) != Some(identity.row_id) {
            return Err((ErrorCode::Auth, "this identity is no longer enrolled".into()));
        }
        match crate::db::order_files::for_agent(&reader, identity.agent_id, file_id) {
            Ok(Some(file)) => Ok(file),
            Ok(None) => Err((ErrorCode::Forbidden, "no order of yours carries that file".into())),
            Err(e) => {
                tracing::error!(error = %e, "order file lookup failed");
                Err((ErrorCode::Internal, "try again later".into()))
            }
        }
    }

    /// The agent's channel key (for its orders and chat lines at rest).
    pub(super) fn channel_key(&self, identity: &identities::StoredIdentity) -> Option<crate::crypto::FernetKey> {
        self.identity.channel_key(crate::crypto::identity::Side::Boss, &identity.public, identity.agent_id)
    }

    /// Stores one chat line through the group-commit writer.
    pub(super) fn chat_write(&self, op: WriteOp) -> Result<(), Refusal> {
        match self.store.write_all(vec![Write { op, guard: None }]).pop() {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => {
                tracing::error!(error = %e, "chat write failed");
                Err((ErrorCode::Internal, "could not store the chat line; try again".into()))
            }
            None => Err((ErrorCode::Internal, "could not store the chat line; try again".into())),
        }
    }

    /// The chat lines waiting for one side of the agent's chat (`key`: the
    /// agent's channel key, which the session holds).
    pub(super) fn chat_backlog(
        &self,
        key: &crate::crypto::FernetKey,
        identity: &identities::StoredIdentity,
        to_agent: bool,
    ) -> Result<Vec<crate::net::v2::ChatLine>, Refusal> {
        let reader = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        super::chat::backlog(&reader, key, identity, to_agent).map_err(|e| {
            tracing::error!(error = %e, "chat backlog read failed");
            (ErrorCode::Internal, "try again later".to_string())
        })
    }

    /// The agent's current identity, if it is enrolled.
    pub(super) fn enrolled(&self, agent_id: i64) -> Result<Option<identities::StoredIdentity>, DbError> {
        let reader = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        identities::current(&reader, agent_id)
    }

    /// An enrolled agent's text message, and its file's last chunk, must
    /// carry both signatures by its current key over the canonical statement
    /// (PROTOCOL.md): checked before storing ([`super::verify::check_sent`]).
    fn check_signature(
        &self,
        identity: &identities::StoredIdentity,
        subject: super::verify::Subject<'_>,
        plaintext: &[u8],
        peer: &Peer,
    ) -> Result<Box<messages::MessageSignature>, Refusal> {
        let sig = protocol::decode_signature(plaintext).map_err(|e| (ErrorCode::BadRequest, e.0))?;
        let checked = super::verify::check_sent(&self.identity.public().ed25519, identity, subject, sig);
        checked.map(Box::new).map_err(|why| {
            tracing::info!(conn = peer.id, agent = identity.agent_id, "refused: {why}");
            (ErrorCode::Auth, why.to_string())
        })
    }

    fn ack(&self, key: &AckKey, id: &str, status: AckStatus, reply: &str) -> String {
        key.ack(&self.identity, id, status, reply)
    }

    /// Everything for one line up to the database write: authenticate, check
    /// freshness, decode, write file chunks. Returns the reply, or the write
    /// the reply waits for.
    fn prepare(&self, line: &[u8], peer: &Peer) -> Result<Step, Refusal> {
        if super::enroll::is_enrolment_line(line) {
            // Enrolment steps are not stored work: they do not keep a connection alive.
            let keys = self.current_keys();
            return self.enrolment.handle(line, peer, &keys.registry).map(|line| Step::Reply { line, new: false });
        }
        if !self.config.v1 {
            return Err((ErrorCode::Forbidden, "v1 is switched off on this Boss: use protocol v2".into()));
        }
        let request = protocol::parse_request(line).map_err(|e| (ErrorCode::BadRequest, e.0))?;
        let agent_id = request.agent_id;
        let auth_failed = || (ErrorCode::Auth, "authentication failed".to_string());
        let internal = |e: DbError| {
            tracing::error!(error = %e, "agent lookup failed");
            (ErrorCode::Internal, "try again later".to_string())
        };
        // The MAC is checked before anything depends on whether agent N
        // exists: a bad MAC costs one cache lookup (an id with no agent gets
        // a stand-in with as many keys) and one MAC check per candidate key,
        // so neither the answer nor its timing tells a known id from an
        // unknown one. Only the current generation's keys are candidates (one
        // per live key epoch): a revoked key, or a line sealed under one, is
        // refused. An enrolled agent's one candidate is the channel key.
        let keys = self.current_keys();
        let entry = self.keys_for(agent_id).map_err(internal)?;
        let mut opened = Err(TokenError::Invalid);
        let mut opened_by = 0;
        for (i, candidate) in entry.candidates().iter().enumerate() {
            opened = candidate.key.open(request.token, Some(self.config.ttl_secs));
            if !matches!(opened, Err(TokenError::Invalid)) {
                opened_by = i;
                break;
            }
        }
        if let Err(TokenError::Invalid) = opened {
            // A key of an epoch added a moment ago (`key rotate` in another
            // process, not yet polled): look once more, at most every 100 ms,
            // so a forged line cannot make the Boss re-read master.key at will.
            if self.refresh_keys_soon() || self.keys_changed_since(&keys) {
                return Ok(Step::Stale);
            }
            // The cache may not have the agent's newest key yet: refused only
            // once the registry agrees (the same reads for any id).
            if !self.agent_keys.confirm(agent_id, &entry, &self.reader).map_err(internal)? {
                return Ok(Step::Stale);
            }
            tracing::debug!(conn = peer.id, agent = agent_id, "refused: auth");
            return Err(auth_failed());
        }
        let candidate = &entry.candidates()[opened_by];
        let key_epoch = candidate.epoch;
        // Sealed under agent N's key, which only its secrets make: now it is
        // safe to spend work on the agent. An id with no agent (removed since)
        // is still `auth`, and only a key holder can reach this branch.
        let checked = match self.agent_keys.row_status(&entry, &self.reader, &keys.registry).map_err(internal)? {
            RowStatus::Good(checked) => checked,
            RowStatus::Missing => {
                tracing::debug!(conn = peer.id, agent = agent_id, "refused: auth (no such agent)");
                return Err(auth_failed());
            }
            RowStatus::Tampered(e) => {
                // Or rewrapped a moment ago under a key epoch this Boss has
                // not loaded yet (`key rotate` in another process): look now.
                if self.refresh_keys() || self.keys_changed_since(&keys) {
                    return Ok(Step::Stale);
                }
                tracing::error!(agent = agent_id, error = %e, "refused: agent row fails its integrity check");
                return Err(auth_failed());
            }
            // Revoked between the two reads: the key it was checked under is gone.
            RowStatus::Moved => return Err(auth_failed()),
        };
        let opened = match opened {
            Ok(o) => o,
            Err(TokenError::Invalid) => return Err(auth_failed()),
            Err(TokenError::Expired) => {
                tracing::debug!(conn = peer.id, agent = agent_id, "refused: expired");
                return Err((
                    ErrorCode::Expired,
                    format!("the token is outside the {} s freshness window", self.config.ttl_secs),
                ));
            }
        };
        let alias = checked.alias.as_str();
        let guard = || Some(Guard { epoch: entry.epoch, seen: checked.seen.clone() });
        let enrolled = &entry.enrolled;
        let key = Arc::clone(&candidate.key);
        let (header, body) = protocol::decode_message(&opened.plaintext).map_err(|e| (ErrorCode::BadRequest, e.0))?;
        // An enrolled agent's ACKs carry a receipt the Boss signs.
        let key = match &enrolled {
            Some(_) => AckKey::signed(key, agent_id, body),
            None => AckKey::plain(key),
        };
        let now = crate::crypto::fernet::unix_now() as i64;
        match &header.kind {
            Kind::Offset { file_id } => {
                // A question, not stored work: sealed under the key that
                // opened it, no receipt (nothing was filed), and not new
                // work for the connection's idle timer.
                let committed = self.committed_offset(agent_id, file_id)?;
                tracing::debug!(conn = peer.id, agent = agent_id, file = %file_id, ?committed, "offset query");
                let reply = protocol::encode_offset_reply(&header.id, &committed);
                Ok(Step::Reply { line: protocol::format_ack(&candidate.key.seal(&reply)), new: false })
            }
            Kind::Text => Ok(Step::Commit(PendingAck {
                write: Write {
                    op: WriteOp::Message(messages::StoredMessage {
                        agent_id,
                        message_id: header.id.clone(),
                        received_at: now,
                        token: String::from_utf8_lossy(request.token).into_owned(),
                        signature: match enrolled {
                            Some(identity) => Some(self.check_signature(
                                identity,
                                super::verify::Subject::text(&header.id, body),
                                &opened.plaintext,
                                peer,
                            )?),
                            None => None,
                        },
                        key_epoch,
                    }),
                    guard: guard(),
                },
                rest: AckParts {
                    key,
                    agent_id,
                    what: "text message",
                    id: header.id,
                    reply: format!("Message received. Good work, {alias}."),
                },
            })),
            Kind::FileChunk(chunk) => {
                self.check_file_limits(chunk)?;
                // A chunk is answered (and written) without waiting for a
                // commit, so the writer cannot confirm the cache entry it was
                // authorised on: confirm it here, against the registry now.
                let current = {
                    let reader = self.reader.lock().unwrap_or_else(|p| p.into_inner());
                    checked.seen.still_current(&reader).map_err(internal)?
                };
                if !current {
                    return Ok(Step::Stale);
                }
                let received =
                    FileReceipt { agent_id, alias, enrolled: enrolled.as_ref(), registry: &keys.registry, now };
                match self.file_chunk(&received, chunk, body, &opened.plaintext, peer, None)? {
                    ChunkStep::Answer { status, reply, new } => {
                        Ok(Step::Reply { line: self.ack(&key, &header.id, status, &reply), new })
                    }
                    ChunkStep::Complete { op, reply } => Ok(Step::Commit(PendingAck {
                        write: Write { op, guard: guard() },
                        rest: AckParts { key, agent_id, what: "file received", reply, id: header.id },
                    })),
                }
            }
        }
    }

    /// The limits on any file chunk, whatever carries it: files accepted at
    /// all, and the declared size within `--max-file-bytes`.
    fn check_file_limits(&self, chunk: &protocol::FileChunk) -> Result<(), Refusal> {
        if self.config.max_file_bytes == 0 {
            return Err((ErrorCode::Forbidden, "this Boss does not accept files".into()));
        }
        if chunk.size > self.config.max_file_bytes {
            return Err((ErrorCode::TooLong, format!("files are limited to {} bytes", self.config.max_file_bytes)));
        }
        Ok(())
    }

    /// One authenticated file chunk of `who`, from v1 or v2 (the caller has
    /// checked the limits and that its authorisation is current): a chunk
    /// of a file already recorded is answered from its row; the last chunk
    /// of an enrolled agent must carry its signature over the whole file;
    /// the chunk is written and synced. Returns the answer, or the completed
    /// file's write that the answer waits for. Each protocol formats its
    /// own ACK from it. With `owed`, a middle chunk's sync may be left to the
    /// caller ([`FileAssembler::write_chunk_deferred`]), who must make it
    /// before the answer goes out.
    fn file_chunk(
        &self,
        who: &FileReceipt<'_>,
        chunk: &protocol::FileChunk,
        body: &[u8],
        plaintext: &[u8],
        peer: &Peer,
        owed: Option<&mut Option<std::fs::File>>,
    ) -> Result<ChunkStep, Refusal> {
        let agent_id = who.agent_id;
        // A file already received is answered from its row: a replayed
        // chunk of it costs a lookup, never a read or a hash of the file.
        if let Some((size, sha256)) = self.completed_file(agent_id, &chunk.file_id)? {
            let reply = format!("File already received: {size} bytes, SHA-256 {sha256}.");
            // A repeat, not new work: it does not keep the connection alive.
            return Ok(ChunkStep::Answer { status: AckStatus::Duplicate, reply, new: false });
        }
        // An enrolled agent signs the whole file with its last chunk:
        // checked before that chunk is written, so an unsigned file
        // never completes.
        let signature = match (who.enrolled, &chunk.sha256) {
            (Some(identity), Some(sha256)) => Some(self.check_signature(
                identity,
                super::verify::Subject::file(&chunk.file_id, sha256),
                plaintext,
                peer,
            )?),
            _ => None,
        };
        let written = match owed {
            Some(owed) => self.files.write_chunk_deferred(agent_id, chunk, body, owed),
            None => self.files.write_chunk(agent_id, chunk, body),
        };
        let outcome = written.map_err(|e| match e {
            ChunkError::Rejected(why) => (ErrorCode::BadRequest, why),
            ChunkError::Refused(why) => {
                tracing::info!(conn = peer.id, agent = agent_id, "refused: {why}");
                (ErrorCode::Forbidden, why)
            }
            ChunkError::Io(why) => {
                tracing::error!(error = %why, "file write failed");
                (ErrorCode::Internal, "could not store the chunk; try again".to_string())
            }
        })?;
        match outcome {
            ChunkOutcome::Partial { received, stored } => {
                tracing::debug!(conn = peer.id, agent = agent_id, file = %chunk.file_id, received, "file chunk");
                // Only a chunk that added bytes is new work; a resend
                // (even of the latest chunk) is a repeat.
                let reply = format!("{received} of {} bytes", chunk.size);
                Ok(ChunkStep::Answer { status: AckStatus::Stored, reply, new: stored })
            }
            ChunkOutcome::Complete { stored_as, sha256, size } => Ok(ChunkStep::Complete {
                op: WriteOp::File(messages::StoredFile {
                    agent_id,
                    file_id: chunk.file_id.clone(),
                    name: who.registry.conceal(&chunk.name),
                    size: size as i64,
                    sha256,
                    stored_as,
                    received_at: who.now,
                    key_epoch: who.registry.newest().epoch,
                    signature,
                }),
                reply: format!("File received: {} bytes, SHA-256 verified. Good work, {}.", chunk.size, who.alias),
            }),
        }
    }
}

impl LineHandler for BossService {
    fn handle(&self, line: &[u8], peer: &Peer) -> Answer {
        self.handle_batch(&[line], peer).pop().unwrap_or_else(|| Answer::refused(ErrorCode::Internal, "internal error"))
    }

    /// Every line's write goes to the store in one job, so a client's
    /// pipelined messages share one commit. Only an ACK for new work (a
    /// message or chunk stored) is accepted, which restarts the connection's
    /// idle timer; a `duplicate` ACK is not (a replayed line must not hold a
    /// slot), and an ERR is refused. Refusals are logged per line at debug
    /// only: the server counts them and logs a summary each second.
    fn closed(&self, peer: &Peer) {
        self.v2.closed(self, peer);
    }

    fn handle_batch(&self, lines: &[&[u8]], peer: &Peer) -> Vec<Answer> {
        // v2 lines (PROTOCOL.md, "Version 2") go through their connection's
        // Noise session, in order, a session's pipelined texts committed
        // together; v1 lines as before.
        if lines.iter().all(|line| crate::net::v2::is_v2_line(line)) {
            return self.v2.handle_batch(self, lines, peer);
        }
        if lines.iter().any(|line| crate::net::v2::is_v2_line(line)) {
            let mut answers = Vec::with_capacity(lines.len());
            for line in lines {
                let answer = if crate::net::v2::is_v2_line(line) {
                    // A session writes its frames to the socket at once: the
                    // answers of the lines before this one go out first.
                    write_ahead(&mut answers, peer);
                    self.v2.handle(self, line, peer)
                } else {
                    self.answer(&[line], peer, STALE_RETRIES)
                        .pop()
                        .unwrap_or_else(|| Answer::refused(ErrorCode::Internal, "internal error"))
                };
                answers.push(answer);
            }
            return answers;
        }
        self.answer(lines, peer, STALE_RETRIES)
    }

    /// v1 lines whose ACKs wait for a commit are submitted to the writer,
    /// which seals nothing and waits for nothing on this thread: the ACK
    /// for `stored` is sealed here before the commit (a duplicate, rare, is
    /// sealed by the writer after it), and the writer sends the answers
    /// ([`crate::net::reply`]). Everything else is answered at once.
    fn handle_batch_deferred(&self, lines: &[&[u8]], peer: &Peer, reply: Reply) {
        if lines.iter().any(|line| crate::net::v2::is_v2_line(line)) {
            return reply.send(self.handle_batch(lines, peer));
        }
        let Prepared { mut answers, pending, stale } = self.prepare_all(lines, peer);
        if pending.is_empty() || !stale.is_empty() {
            // Nothing waits for the writer, or some line must be authorised
            // again first: the ordinary path, on this thread.
            return reply.send(self.complete(lines, peer, answers, pending, stale, STALE_RETRIES));
        }
        let mut writes = Vec::with_capacity(pending.len());
        let mut acks = Vec::with_capacity(pending.len());
        for (i, p) in pending {
            let stored_ack = self.ack(&p.rest.key, &p.rest.id, AckStatus::Stored, &p.rest.reply);
            writes.push(p.write);
            acks.push(DeferredAck { index: i, line: lines[i].to_vec(), stored_ack, pending: p.rest });
        }
        let identity = Arc::clone(&self.identity);
        let conn = peer.id;
        self.store.submit(writes, move |results| {
            let mut redo = Vec::new();
            for (result, ack) in results.into_iter().zip(acks) {
                let DeferredAck { index, line, stored_ack, pending } = ack;
                answers[index] = match result {
                    Ok(Written::Stale) => {
                        redo.push((index, line));
                        None
                    }
                    Ok(Written::Added) => {
                        tracing::debug!(conn, agent = pending.agent_id, msg = %pending.id, status = ?AckStatus::Stored, "{}", pending.what);
                        Some(Answer::accepted(stored_ack))
                    }
                    Ok(Written::Already) => {
                        tracing::debug!(conn, agent = pending.agent_id, msg = %pending.id, status = ?AckStatus::Duplicate, "{}", pending.what);
                        let line = pending.key.ack(&identity, &pending.id, AckStatus::Duplicate, &pending.reply);
                        Some(Answer::repeated(line))
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "store failed");
                        Some(Answer::refused(ErrorCode::Internal, "could not store the message; try again"))
                    }
                };
            }
            if redo.is_empty() {
                let answers = answers
                    .into_iter()
                    .map(|answer| answer.unwrap_or_else(|| Answer::refused(ErrorCode::Internal, "internal error")))
                    .collect();
                reply.send(answers);
            } else {
                reply.redo(Redo { answers, lines: redo });
            }
        });
    }
}

/// Writes the answers of a mixed v1/v2 batch so far to the connection's
/// socket, keeping their outcomes with empty lines: a v2 frame answered next
/// is written at once by its session ([`Peer::socket`]), and must not
/// overtake them. Without a socket (in-process callers) there is nothing to
/// overtake. A failed write leaves them to the connection thread, which then
/// finds the socket broken too.
fn write_ahead(answers: &mut [Answer], peer: &Peer) {
    let Some(socket) = &peer.socket else { return };
    let pending: String = answers.iter().map(|answer| answer.line.as_str()).collect();
    if pending.is_empty() {
        return;
    }
    if std::io::Write::write_all(&mut &**socket, pending.as_bytes()).is_ok() {
        for answer in answers.iter_mut() {
            answer.line.clear();
        }
    }
}

/// A line's ACK waiting in the writer: where it goes in the batch, the line
/// (to authorise it again if the registry overtook it), the ACK already
/// sealed for `stored`, and what sealing a `duplicate` one needs.
struct DeferredAck {
    index: usize,
    line: Vec<u8>,
    stored_ack: String,
    pending: AckParts,
}

/// Every line of a batch after [`BossService::prepare`]: the answers known
/// now, the writes to commit, and the lines to authorise again.
struct Prepared {
    answers: Vec<Option<Answer>>,
    pending: Vec<(usize, PendingAck)>,
    stale: Vec<usize>,
}

impl BossService {
    /// Prepares every line of a batch.
    fn prepare_all(&self, lines: &[&[u8]], peer: &Peer) -> Prepared {
        let mut answers: Vec<Option<Answer>> = Vec::with_capacity(lines.len());
        let mut pending = Vec::new();
        let mut stale = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            answers.push(match self.prepare(line, peer) {
                Ok(Step::Reply { line, new: true }) => Some(Answer::accepted(line)),
                Ok(Step::Reply { line, new: false }) => Some(Answer::repeated(line)),
                Ok(Step::Commit(ack)) => {
                    pending.push((i, ack));
                    None
                }
                Ok(Step::Stale) => {
                    stale.push(i);
                    None
                }
                Err((code, text)) => {
                    if code == ErrorCode::BadRequest {
                        tracing::debug!(conn = peer.id, error = %text, "refused: bad request");
                    }
                    Some(Answer::refused(code, &text))
                }
            });
        }
        Prepared { answers, pending, stale }
    }

    /// v1 lines, with `retries` left for lines whose authorisation the
    /// registry overtook ([`Step::Stale`], [`Written::Stale`]): those are
    /// answered as if they had arrived after the change. Every write goes to
    /// the store in one job, so a client's pipelined messages share a commit.
    fn answer(&self, lines: &[&[u8]], peer: &Peer, retries: u32) -> Vec<Answer> {
        let Prepared { answers, pending, stale } = self.prepare_all(lines, peer);
        self.complete(lines, peer, answers, pending, stale, retries)
    }

    /// Commits the batch's writes (waiting for the writer), seals their
    /// ACKs, and answers the stale lines again.
    fn complete(
        &self,
        lines: &[&[u8]],
        peer: &Peer,
        mut answers: Vec<Option<Answer>>,
        pending: Vec<(usize, PendingAck)>,
        mut stale: Vec<usize>,
        retries: u32,
    ) -> Vec<Answer> {
        // Lines that were all refused cost the writer nothing.
        if !pending.is_empty() {
            let (writes, acks): (Vec<Write>, Vec<(usize, AckParts)>) =
                pending.into_iter().map(|(i, p)| (p.write, (i, p.rest))).unzip();
            for (result, (i, p)) in self.store.write_all(writes).into_iter().zip(acks) {
                answers[i] = match result {
                    Ok(Written::Stale) => {
                        stale.push(i);
                        None
                    }
                    Ok(written) => {
                        let added = written == Written::Added;
                        let status = if added { AckStatus::Stored } else { AckStatus::Duplicate };
                        // Per line at debug only: the server logs a count of
                        // lines stored each second at info.
                        tracing::debug!(conn = peer.id, agent = p.agent_id, msg = %p.id, ?status, "{}", p.what);
                        let line = self.ack(&p.key, &p.id, status, &p.reply);
                        Some(if added { Answer::accepted(line) } else { Answer::repeated(line) })
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "store failed");
                        Some(Answer::refused(ErrorCode::Internal, "could not store the message; try again"))
                    }
                };
            }
        }
        if !stale.is_empty() {
            stale.sort_unstable();
            let again: Vec<Answer> = if retries == 0 {
                tracing::warn!(lines = stale.len(), "the registry kept changing under these lines; refused");
                stale.iter().map(|_| Answer::refused(ErrorCode::Internal, "try again later")).collect()
            } else {
                // The epoch has moved on (or a chunk found the registry
                // changed): the next lookup reloads the cache.
                self.agent_keys.invalidate();
                let lines: Vec<&[u8]> = stale.iter().map(|&i| lines[i]).collect();
                self.answer(&lines, peer, retries - 1)
            };
            for (i, answer) in stale.into_iter().zip(again) {
                answers[i] = Some(answer);
            }
        }
        answers
            .into_iter()
            .map(|answer| answer.unwrap_or_else(|| Answer::refused(ErrorCode::Internal, "internal error")))
            .collect()
    }
}
