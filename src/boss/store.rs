//! The Boss's single database writer, with group commit.
//!
//! Connection threads hand their writes to one writer thread and block until
//! it answers. The writer takes everything queued, runs it in one transaction
//! and commits once (one WAL fsync with `synchronous=FULL`), then answers each
//! request. Under load many messages share one fsync; every ACK still follows
//! its own message's commit.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use rusqlite::{Connection, TransactionBehavior};

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

/// Whether the write added a row (false: it was already there).
pub type WriteResult = Result<bool, StoreError>;

/// One or more writes from one connection, answered together.
struct Job {
    ops: Vec<WriteOp>,
    done: SyncSender<Vec<WriteResult>>,
}

/// A handle to the writer thread; cheap to clone, one per connection thread.
#[derive(Clone)]
pub struct Store {
    queue: SyncSender<Job>,
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
    let handle = std::thread::Builder::new()
        .name("db-writer".into())
        .spawn(move || writer_loop(conn, jobs))
        .map_err(StoreError::Spawn)?;
    Ok((Store { queue }, StoreThread { handle }))
}

impl Store {
    /// Queues several writes and waits until they are committed (or failed);
    /// one result per write, in order.
    pub fn write_all(&self, ops: Vec<WriteOp>) -> Vec<WriteResult> {
        let count = ops.len();
        let stopped = || (0..count).map(|_| Err(StoreError::Stopped)).collect();
        let (done, answer) = mpsc::sync_channel(1);
        if self.queue.send(Job { ops, done }).is_err() {
            return stopped();
        }
        answer.recv().unwrap_or_else(|_| stopped())
    }
}

fn writer_loop(mut conn: Connection, jobs: Receiver<Job>) {
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
        let mut results = commit_batch(&mut conn, batch.iter().flat_map(|job| job.ops.iter())).into_iter();
        tracing::debug!(writes, jobs = batch.len(), "group commit");
        for job in batch {
            let answer: Vec<WriteResult> = results.by_ref().take(job.ops.len()).collect();
            // The sender may have gone (connection dropped); the rows are stored anyway.
            let _ = job.done.send(answer);
        }
    }
}

/// Applies the batch in one transaction. If the commit fails, every write in
/// it fails: nothing is acknowledged that is not on disk.
fn commit_batch<'a>(conn: &mut Connection, ops: impl Iterator<Item = &'a WriteOp> + Clone) -> Vec<WriteResult> {
    let count = ops.clone().count();
    let mut attempt = || -> Result<Vec<bool>, DbError> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut added = Vec::with_capacity(count);
        for op in ops.clone() {
            added.push(match op {
                WriteOp::Message(m) => messages::insert_message(&tx, m)?,
                WriteOp::File(f) => messages::insert_file(&tx, f)?,
                WriteOp::OrdersDelivered { agent_id, ids, at } => {
                    crate::db::orders::mark_delivered(&tx, *agent_id, ids, *at)? > 0
                }
            });
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
