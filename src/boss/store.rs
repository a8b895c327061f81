//! The Boss's single database writer, with group commit.
//!
//! Connection threads hand their writes to one writer thread. The writer
//! takes everything queued, runs it in one transaction and commits once (one
//! WAL fsync with `synchronous=FULL`), then answers each request: either by
//! waking the connection thread that waits for it ([`Store::write_all`]), or
//! by running the answer itself ([`Store::submit`]: for v1 lines it seals and
//! sends the ACKs, so the connection thread goes back to reading at once and
//! no second thread hand-off per message is needed). Under load many
//! messages share one fsync; every ACK still follows its own message's commit.
//!
//! The writer also keeps the *registry epoch* the agent cache
//! (`agent_keys`) relies on: inside each write transaction it reads SQLite's
//! `PRAGMA data_version`, which changes only when another connection (another
//! process's `agent revoke`, say) has committed since this connection last
//! looked, and then advances the epoch. A write authorised from an older
//! epoch is committed only if the agent's row and identity are still what the
//! authorisation saw, checked in the same transaction (no other commit can
//! come between: the transaction holds the write lock).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use rusqlite::{Connection, TransactionBehavior};

use super::agent_keys::Snapshot;
use crate::db::{self, DbError, messages};

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 512;
/// Requests that may wait for the writer before senders block.
const QUEUE_DEPTH: usize = 4096;

/// One write.
pub enum WriteOp {
    Message(messages::StoredMessage),
    File(messages::StoredFile),
    /// An agent confirmed storing these orders (v2): they leave its outbox.
    /// "New" if at least one was still pending.
    OrdersDelivered {
        agent_id: i64,
        ids: Vec<String>,
        at: i64,
    },
    /// A chat line to relay, sealed (v2 `chat`). "New" unless its id was stored.
    ChatLine(crate::db::chat::StoredChatLine),
    /// Chat lines going one way (`to_agent`) that the receiving side
    /// confirmed it has shown (a `K` on its chat session).
    ChatDelivered {
        agent_id: i64,
        to_agent: bool,
        ids: Vec<String>,
        at: i64,
    },
    /// An agent holds an order's whole file with the right SHA-256 (v2 `N`).
    OrderFileDelivered {
        agent_id: i64,
        file_id: String,
        at: i64,
    },
}

/// What a write was authorised on: the registry epoch of the agent cache
/// entry, and what it saw of the agent.
pub struct Guard {
    pub epoch: u64,
    pub seen: Arc<Snapshot>,
}

/// A write and, if it was authorised from the agent cache, its guard.
pub struct Write {
    pub op: WriteOp,
    pub guard: Option<Guard>,
}

/// What became of one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Committed: a new row.
    Added,
    /// Committed: the row was already there (a resent id).
    Already,
    /// Not written: the agent's row or identity changed since the write was
    /// authorised. Authorise it again from the current registry.
    Stale,
}

/// Why a write was not committed, or the writer could not start.
#[derive(Debug)]
pub enum StoreError {
    /// The database could not be opened for writing.
    Open(DbError),
    /// The writer thread could not be started.
    Spawn(std::io::Error),
    /// The writer has stopped (the Boss is shutting down).
    Stopped,
    /// The transaction holding this write failed; every write in it failed
    /// with the same error, hence shared.
    Commit(Arc<DbError>),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Open(e) => e.fmt(f),
            StoreError::Spawn(_) => f.write_str("cannot start the database writer thread"),
            StoreError::Stopped => f.write_str("the database writer has stopped"),
            StoreError::Commit(_) => f.write_str("the group commit failed"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            // Shown as its own text above, so its causes come next.
            StoreError::Open(e) => e.source(),
            StoreError::Spawn(e) => Some(e),
            StoreError::Commit(e) => Some(e.as_ref()),
            StoreError::Stopped => None,
        }
    }
}

/// What became of one write, or why the transaction holding it failed.
pub type WriteResult = Result<Written, StoreError>;

/// One or more writes from one connection, answered together.
struct Job {
    ops: Vec<Write>,
    done: Done,
}

/// How a job's results reach its connection.
enum Done {
    /// The connection thread waits on this channel ([`Store::write_all`]).
    Wait(SyncSender<Vec<WriteResult>>),
    /// The writer calls this itself ([`Store::submit`]): the connection
    /// thread does not wait, so no thread hand-off comes back.
    Call(Completion),
}

/// The code that answers a submitted job, called exactly once: with the
/// results after the commit, or with [`StoreError::Stopped`] for each write if
/// the job is dropped unanswered (the writer stopped), so nobody waits
/// forever for an answer that cannot come.
pub struct Completion {
    then: Option<Box<dyn FnOnce(Vec<WriteResult>) + Send>>,
    count: usize,
}

impl Completion {
    fn finish(mut self, results: Vec<WriteResult>) {
        if let Some(then) = self.then.take() {
            // The writer must outlive a bug in one connection's answer.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| then(results))).is_err() {
                tracing::error!("answering a group commit panicked; that connection is closed");
            }
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some(then) = self.then.take() {
            let stopped = (0..self.count).map(|_| Err(StoreError::Stopped)).collect();
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| then(stopped)));
        }
    }
}

/// A handle to the writer thread; cheap to clone, one per connection thread.
#[derive(Clone)]
pub struct Store {
    queue: SyncSender<Job>,
    /// Advanced by the writer when another connection has committed.
    epoch: Arc<AtomicU64>,
}

/// Owns the writer thread; dropping every [`Store`] and calling
/// [`StoreThread::join`] drains the queue and stops it.
pub struct StoreThread {
    handle: JoinHandle<()>,
}

impl StoreThread {
    pub fn join(self) {
        if self.handle.join().is_err() {
            tracing::error!("the database writer thread panicked");
        }
    }
}

/// Opens the database and starts the writer.
pub fn start(db_path: &Path) -> Result<(Store, StoreThread), StoreError> {
    let conn = db::open(db_path).map_err(StoreError::Open)?;
    let (queue, jobs) = mpsc::sync_channel(QUEUE_DEPTH);
    let epoch = Arc::new(AtomicU64::new(0));
    let watch = Watch { epoch: epoch.clone(), version: None };
    let handle = std::thread::Builder::new()
        .name("db-writer".into())
        .spawn(move || writer_loop(conn, jobs, watch))
        .map_err(StoreError::Spawn)?;
    Ok((Store { queue, epoch }, StoreThread { handle }))
}

impl Store {
    /// The registry epoch: changes when the writer has seen another
    /// connection's commit (see the module comment).
    pub fn registry_epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Queues several writes and waits until they are committed (or failed);
    /// one result per write, in order.
    pub fn write_all(&self, ops: Vec<Write>) -> Vec<WriteResult> {
        let count = ops.len();
        let stopped = || (0..count).map(|_| Err(StoreError::Stopped)).collect();
        let (done, answer) = mpsc::sync_channel(1);
        if self.queue.send(Job { ops, done: Done::Wait(done) }).is_err() {
            return stopped();
        }
        answer.recv().unwrap_or_else(|_| stopped())
    }

    /// Queues several writes without waiting: once they are committed (or
    /// failed), the writer thread calls `then` with one result per write, in
    /// order. `then` runs on the writer, between group commits: it must be
    /// quick and must never block (no socket write that can wait).
    pub fn submit(&self, ops: Vec<Write>, then: impl FnOnce(Vec<WriteResult>) + Send + 'static) {
        let count = ops.len();
        let completion = Completion { then: Some(Box::new(then)), count };
        // A refused send drops the job, and with it the completion, which
        // then answers every write with `Stopped`.
        let _ = self.queue.send(Job { ops, done: Done::Call(completion) });
    }
}

/// The writer's view of other connections' commits.
struct Watch {
    epoch: Arc<AtomicU64>,
    /// `PRAGMA data_version` when last read; None before the first
    /// transaction (which therefore advances the epoch: the Boss's own
    /// start-up writes came from other connections).
    version: Option<i64>,
}

impl Watch {
    /// Reads the connection's data version inside its write transaction and
    /// advances the epoch if another connection committed since the last
    /// read; returns the epoch now.
    fn check(&mut self, tx: &Connection) -> Result<u64, DbError> {
        // Cached: the writer runs this in every group commit.
        let version: i64 = tx.prepare_cached("PRAGMA data_version")?.query_row([], |row| row.get(0))?;
        if self.version != Some(version) {
            self.version = Some(version);
            self.epoch.fetch_add(1, Ordering::SeqCst);
        }
        Ok(self.epoch.load(Ordering::SeqCst))
    }
}

fn writer_loop(mut conn: Connection, jobs: Receiver<Job>, mut watch: Watch) {
    // Ends when every Store handle is dropped and the queue is empty.
    while let Ok(first) = jobs.recv() {
        let mut writes = first.ops.len();
        let mut batch = vec![first];
        while writes < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => {
                    writes += job.ops.len();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        let mut results = commit_batch(&mut conn, &mut watch, batch.iter().flat_map(|job| job.ops.iter())).into_iter();
        tracing::debug!(writes, jobs = batch.len(), "group commit");
        for job in batch {
            let answer: Vec<WriteResult> = results.by_ref().take(job.ops.len()).collect();
            match job.done {
                // The sender may have gone (connection dropped); the rows are stored anyway.
                Done::Wait(done) => {
                    let _ = done.send(answer);
                }
                Done::Call(completion) => completion.finish(answer),
            }
        }
    }
}

/// Applies the batch in one transaction. If the commit fails, every write in
/// it fails: nothing is acknowledged that is not on disk.
fn commit_batch<'a>(
    conn: &mut Connection,
    watch: &mut Watch,
    ops: impl Iterator<Item = &'a Write> + Clone,
) -> Vec<WriteResult> {
    let count = ops.clone().count();
    let mut attempt = || -> Result<Vec<Written>, DbError> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let epoch = watch.check(&tx)?;
        let mut added = Vec::with_capacity(count);
        for write in ops.clone() {
            if let Some(guard) = &write.guard
                && guard.epoch != epoch
                && !guard.seen.still_current(&tx)?
            {
                added.push(Written::Stale);
                continue;
            }
            let new = match &write.op {
                WriteOp::Message(m) => messages::insert_message(&tx, m)?,
                WriteOp::File(f) => messages::insert_file(&tx, f)?,
                WriteOp::OrdersDelivered { agent_id, ids, at } => {
                    crate::db::orders::mark_delivered(&tx, *agent_id, ids, *at)? > 0
                }
                WriteOp::ChatLine(line) => crate::db::chat::insert(&tx, line)?,
                WriteOp::ChatDelivered { agent_id, to_agent, ids, at } => {
                    crate::db::chat::mark_delivered(&tx, *agent_id, *to_agent, ids, *at)? > 0
                }
                WriteOp::OrderFileDelivered { agent_id, file_id, at } => {
                    crate::db::order_files::mark_delivered(&tx, *agent_id, file_id, *at)?
                }
            };
            added.push(if new { Written::Added } else { Written::Already });
        }
        tx.commit()?;
        Ok(added)
    };
    match attempt() {
        Ok(added) => added.into_iter().map(Ok).collect(),
        Err(e) => {
            tracing::error!(error = %e, writes = count, "group commit failed");
            let shared = Arc::new(e);
            (0..count).map(|_| Err(StoreError::Commit(shared.clone()))).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::agents;

    fn message(agent_id: i64, id: &str) -> WriteOp {
        WriteOp::Message(messages::StoredMessage {
            agent_id,
            message_id: id.into(),
            received_at: 0,
            token: "token".into(),
            signature: None,
            key_epoch: Some(0),
        })
    }

    /// A write authorised before another connection changed the agent's
    /// row is not committed (the writer's epoch moved on and the row is not
    /// what was seen); one authorised on the current row is, whatever the
    /// epoch.
    #[test]
    fn a_write_authorised_before_another_connections_change_is_stale() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("spyctl.db");
        let mut other = db::create(&path).expect("create");
        let tx = other.transaction().expect("tx");
        db::apply_schema(&tx, &[9; db::DATABASE_ID_BYTES]).expect("schema");
        tx.commit().expect("commit");
        let agent = agents::NewStoredAgent {
            name: "n",
            alias: "a",
            level: 1,
            password_hash: "h",
            name_index: "i",
            key_epoch: 0,
        };
        let id = agents::insert(&other, &agent).expect("insert");
        let seen = |conn: &Connection| {
            Arc::new(Snapshot {
                agent_id: id,
                row: agents::by_id(conn, id).expect("read").expect("row"),
                identity: None,
            })
        };
        let (store, thread) = start(&path).expect("start");
        let before = seen(&other);
        let epoch = store.registry_epoch();
        let write = |guard_epoch, seen: &Arc<Snapshot>, msg: &str| {
            store
                .write_all(vec![Write {
                    op: message(id, msg),
                    guard: Some(Guard { epoch: guard_epoch, seen: seen.clone() }),
                }])
                .pop()
                .expect("one result")
                .expect("committed")
        };
        // An old epoch, but the row is as seen: written.
        assert_eq!(write(epoch, &before, "m1"), Written::Added);
        let current = store.registry_epoch();
        assert_ne!(current, epoch, "the first transaction starts a new epoch");
        assert_eq!(write(current, &before, "m2"), Written::Added);
        // Another connection revokes (bumps the generation): a write
        // authorised in the epoch before is stale, and nothing is written.
        agents::bump_key_generation(&other, id).expect("revoke");
        assert_eq!(write(current, &before, "m3"), Written::Stale);
        assert!(store.registry_epoch() > current, "the writer saw the other connection's commit");
        // Authorised again on the row as it is now: written.
        assert_eq!(write(current, &seen(&other), "m3"), Written::Added);
        let count: i64 = other.query_row("SELECT COUNT(*) FROM Messages", [], |r| r.get(0)).expect("count");
        assert_eq!(count, 3, "m1, m2 and m3 once");
        drop(store);
        thread.join();
    }
}
