//! The Boss's answer to each `MSG` line: authenticate the agent's token,
//! check freshness, file the message durably, and reply with an ACK sealed
//! under the same agent key.
//!
//! An unknown agent and a bad MAC get the same `ERR auth` after the same work
//! (the MAC is checked before the agent's row is read), so a prober learns
//! nothing about which agent ids exist. A resent message id (a retry, or a
//! replay within the TTL) is stored once and acknowledged as `duplicate`.
//! Agents' keys and checked rows come from the per-agent cache
//! (`agent_keys`, through [`BossService::keys_for`]); a write authorised from
//! it is confirmed by the writer when the registry may have changed.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

use crate::crypto::{FernetKey, IdentityKeys, MasterKey, PublicIdentity, TokenError};
use crate::db::{self, DbError, identities, messages};
use crate::net::protocol::{self, AckStatus, ErrorCode, Kind};
use crate::net::server::{Answer, LineHandler, Peer};
use crate::registry::RegistryKeys;

use super::agent_keys::{AgentEntry, AgentKeys, RowStatus};
use super::files::{ChunkError, ChunkOutcome, FileAssembler, Quota};
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
}

impl Default for BossConfig {
    fn default() -> Self {
        BossConfig {
            ttl_secs: 300,
            max_file_bytes: 1 << 30,
            quota: Quota { max_stored_bytes: 4 << 30, max_partial_uploads: 8, min_free_bytes: 256 << 20 },
            partial_expiry: std::time::Duration::from_secs(60 * 60),
        }
    }
}

/// An `ERR` to send: its code and human text.
type Refusal = (ErrorCode, String);

/// How far [`BossService::prepare`] got with a line.
enum Step {
    /// The answer is ready (a file chunk written and synced); `new` says
    /// whether the chunk added bytes (a resent earlier chunk does not).
    Reply { line: String, new: bool },
    /// The answer is an ACK once this write is committed.
    Commit(PendingAck),
    /// The registry changed under the agent cache: authorise the line again.
    Stale,
}

/// How many times a line is authorised again after the registry changed
/// under it before the client is told to try later.
const STALE_RETRIES: u32 = 3;

/// An ACK waiting for its write's commit.
struct PendingAck {
    write: Write,
    /// The cache entry and which of its candidate keys opened the line: the
    /// ACK is sealed under the same key.
    entry: Arc<AgentEntry>,
    key: usize,
    agent_id: i64,
    /// For the log line.
    what: &'static str,
    id: String,
    reply: String,
}

/// The Boss's line handler.
pub struct BossService {
    /// Per-agent keys and checked rows, and the master secret they come from.
    agent_keys: AgentKeys,
    /// The Boss's own identity (identity.key): channel keys with enrolled agents.
    identity: IdentityKeys,
    keys: RegistryKeys,
    /// Agent lookups (exists? alias?) are tiny reads; one connection suffices.
    reader: Mutex<Connection>,
    /// `JOIN`, `JOIN2` and `WHOIS` lines (enrolment by one-time code).
    enrolment: super::enroll::Enrolment,
    store: Store,
    files: FileAssembler,
    config: BossConfig,
}

impl BossService {
    pub fn new(
        master: MasterKey,
        identity: IdentityKeys,
        db_path: &Path,
        files_root: &Path,
        store: Store,
        config: BossConfig,
    ) -> Result<Self, DbError> {
        let reader = db::open_read_only(db_path)?;
        let keyring = master.bind(&db::database_id(&reader)?);
        let files = FileAssembler::new(files_root.to_path_buf(), keyring.files_key()).with_quota(config.quota);
        // Partials left by a Boss that stopped: the running sweeper
        // ([`Self::sweep_partials`]) only starts counting from now.
        let swept = files.sweep_stale(config.partial_expiry);
        if swept > 0 {
            tracing::info!(swept, "removed expired partial uploads");
        }
        let enrolment = super::enroll::Enrolment::new(db_path, RegistryKeys::derive(&keyring), identity.public())?;
        Ok(BossService {
            enrolment,
            keys: RegistryKeys::derive(&keyring),
            agent_keys: AgentKeys::new(keyring),
            identity,
            reader: Mutex::new(reader),
            store,
            files,
            config,
        })
    }

    pub fn identity(&self) -> PublicIdentity {
        self.identity.public()
    }

    /// How long a partial upload may sit untouched.
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

    /// The cache entry for agent `agent_id`: the candidate keys its lines
    /// may be sealed under (try each; the ACK is sealed under the one that
    /// opened), its key generation and enrolled identity. The one place the
    /// Boss gets an agent's wire keys; an id with no agent gets a stand-in
    /// whose key opens nothing, at the same cost.
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

    /// An enrolled agent's text message must carry a signature by its current
    /// key over the canonical statement (PROTOCOL.md): checked before storing.
    fn check_signature(
        &self,
        identity: &identities::StoredIdentity,
        id: &str,
        body: &[u8],
        plaintext: &[u8],
        peer: &Peer,
    ) -> Result<messages::MessageSignature, Refusal> {
        let refuse = |why: &str| {
            tracing::info!(conn = peer.id, agent = identity.agent_id, "refused: {why}");
            (ErrorCode::Auth, why.to_string())
        };
        let sig = protocol::decode_signature(plaintext)
            .map_err(|e| (ErrorCode::BadRequest, e.0))?
            .ok_or_else(|| refuse("an enrolled agent must sign every message"))?;
        let statement = crate::crypto::identity::statement(
            &self.identity.public().ed25519,
            identity.agent_id,
            id,
            "text",
            body,
            sig.time,
        );
        identity
            .public
            .verify(&statement, &sig.signature)
            .map_err(|_| refuse("the message's signature does not verify"))?;
        Ok(messages::MessageSignature {
            signature: sig.signature.to_vec(),
            signed_at: sig.time as i64,
            signer_row: identity.row_id,
        })
    }

    fn ack(key: &FernetKey, id: &str, status: AckStatus, reply: &str) -> String {
        protocol::format_ack(&key.seal(&protocol::encode_ack(id, status, reply)))
    }

    /// Everything for one line up to the database write: authenticate, check
    /// freshness, decode, write file chunks. Returns the reply, or the write
    /// the reply waits for.
    fn prepare(&self, line: &[u8], peer: &Peer) -> Result<Step, Refusal> {
        if super::enroll::is_enrolment_line(line) {
            // Enrolment steps are not stored work: they do not keep a connection alive.
            return self.enrolment.handle(line, peer).map(|line| Step::Reply { line, new: false });
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
        // a stand-in key) and one MAC check per candidate key, so neither
        // the answer nor its timing tells a known id from an unknown one.
        // Only the current generation's key is a candidate: a revoked key,
        // or a line sealed under one, is refused. An enrolled agent's one
        // candidate is the channel key of the two identities.
        let entry = self.keys_for(agent_id).map_err(internal)?;
        let mut opened = Err(TokenError::Invalid);
        let mut opened_by = 0;
        for (i, candidate) in entry.candidates().iter().enumerate() {
            opened = candidate.open(request.token, Some(self.config.ttl_secs));
            if !matches!(opened, Err(TokenError::Invalid)) {
                opened_by = i;
                break;
            }
        }
        if let Err(TokenError::Invalid) = opened {
            // The cache may not have the agent's newest key yet: refused only
            // once the registry agrees (the same reads for any id).
            if !self.agent_keys.confirm(agent_id, &entry, &self.reader).map_err(internal)? {
                return Ok(Step::Stale);
            }
            tracing::debug!(conn = peer.id, agent = agent_id, "refused: auth");
            return Err(auth_failed());
        }
        // Sealed under agent N's key, which only the master secret makes: now
        // it is safe to spend work on the agent. An id with no agent (removed
        // since) is still `auth`, and only a key holder can reach this branch.
        let checked = match self.agent_keys.row_status(&entry, &self.reader, &self.keys).map_err(internal)? {
            RowStatus::Good(checked) => checked,
            RowStatus::Missing => {
                tracing::debug!(conn = peer.id, agent = agent_id, "refused: auth (no such agent)");
                return Err(auth_failed());
            }
            RowStatus::Tampered(e) => {
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
        let (header, body) = protocol::decode_message(&opened.plaintext).map_err(|e| (ErrorCode::BadRequest, e.0))?;
        let now = crate::crypto::fernet::unix_now() as i64;
        match &header.kind {
            Kind::Text => Ok(Step::Commit(PendingAck {
                write: Write {
                    op: WriteOp::Message(messages::StoredMessage {
                        agent_id,
                        message_id: header.id.clone(),
                        received_at: now,
                        token: String::from_utf8_lossy(request.token).into_owned(),
                        signature: match &entry.enrolled {
                            Some(identity) => {
                                Some(self.check_signature(identity, &header.id, body, &opened.plaintext, peer)?)
                            }
                            None => None,
                        },
                    }),
                    guard: guard(),
                },
                entry: entry.clone(),
                key: opened_by,
                agent_id,
                what: "text message",
                id: header.id,
                reply: format!("Message received. Good work, {alias}."),
            })),
            Kind::FileChunk(chunk) => {
                if self.config.max_file_bytes == 0 {
                    return Err((ErrorCode::Forbidden, "this Boss does not accept files".into()));
                }
                if chunk.size > self.config.max_file_bytes {
                    return Err((
                        ErrorCode::TooLong,
                        format!("files are limited to {} bytes", self.config.max_file_bytes),
                    ));
                }
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
                let key = &entry.candidates()[opened_by];
                // A file already received is answered from its row: a replayed
                // chunk of it costs a lookup, never a read or a hash of the file.
                if let Some((size, sha256)) = self.completed_file(agent_id, &chunk.file_id)? {
                    let line = Self::ack(
                        key,
                        &header.id,
                        AckStatus::Duplicate,
                        &format!("File already received: {size} bytes, SHA-256 {sha256}."),
                    );
                    // A repeat, not new work: it does not keep the connection alive.
                    return Ok(Step::Reply { line, new: false });
                }
                let outcome = self.files.write_chunk(agent_id, chunk, body).map_err(|e| match e {
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
                        let new = stored;
                        let line = Self::ack(
                            key,
                            &header.id,
                            AckStatus::Stored,
                            &format!("{received} of {} bytes", chunk.size),
                        );
                        Ok(Step::Reply { line, new })
                    }
                    ChunkOutcome::Complete { stored_as, sha256, size } => Ok(Step::Commit(PendingAck {
                        write: Write {
                            op: WriteOp::File(messages::StoredFile {
                                agent_id,
                                file_id: chunk.file_id.clone(),
                                name: self.keys.conceal(&chunk.name),
                                size: size as i64,
                                sha256,
                                stored_as,
                                received_at: now,
                            }),
                            guard: guard(),
                        },
                        entry: entry.clone(),
                        key: opened_by,
                        agent_id,
                        what: "file received",
                        reply: format!("File received: {} bytes, SHA-256 verified. Good work, {alias}.", chunk.size),
                        id: header.id,
                    })),
                }
            }
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
    fn handle_batch(&self, lines: &[&[u8]], peer: &Peer) -> Vec<Answer> {
        self.answer(lines, peer, STALE_RETRIES)
    }
}

impl BossService {
    /// [`LineHandler::handle_batch`], with `retries` left for lines whose
    /// authorisation the registry overtook ([`Step::Stale`], [`Written::Stale`]):
    /// those are answered as if they had arrived after the change.
    fn answer(&self, lines: &[&[u8]], peer: &Peer, retries: u32) -> Vec<Answer> {
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
        // Lines that were all refused cost the writer nothing.
        if !pending.is_empty() {
            type Ack = (usize, Arc<AgentEntry>, usize, i64, &'static str, String, String);
            let (writes, acks): (Vec<Write>, Vec<Ack>) = pending
                .into_iter()
                .map(|(i, p)| (p.write, (i, p.entry, p.key, p.agent_id, p.what, p.id, p.reply)))
                .unzip();
            for (result, (i, entry, key, agent_id, what, id, reply)) in
                self.store.write_all(writes).into_iter().zip(acks)
            {
                let key = &entry.candidates()[key];
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
                        tracing::debug!(conn = peer.id, agent = agent_id, msg = %id, ?status, "{what}");
                        let line = Self::ack(key, &id, status, &reply);
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
