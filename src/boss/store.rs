//! The Boss's single database writer, with group commit.
//!
//! Connection threads hand their writes to one writer thread and block until
//! it answers. The writer takes everything queued, runs it in one transaction
//! and commits once (one WAL fsync with `synchronous=FULL`), then answers each
//! request. Under load many messages share one fsync; every ACK still follows
//! its own message's commit.

use std::path::Path;
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
}

/// Whether the write added a row (false: it was already there).
pub type WriteResult = Result<bool, String>;

struct Job {
    op: WriteOp,
    done: SyncSender<WriteResult>,
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
pub fn start(db_path: &Path) -> Result<(Store, StoreThread), DbError> {
    let conn = db::open(db_path)?;
    let (queue, jobs) = mpsc::sync_channel(QUEUE_DEPTH);
    let handle = std::thread::Builder::new()
        .name("db-writer".into())
        .spawn(move || writer_loop(conn, jobs))
        .map_err(|e| DbError::Corrupt(db_path.to_path_buf(), format!("cannot start the writer thread: {e}")))?;
    Ok((Store { queue }, StoreThread { handle }))
}

impl Store {
    /// Queues a write and waits until it is committed (or failed).
    pub fn write(&self, op: WriteOp) -> WriteResult {
        let (done, answer) = mpsc::sync_channel(1);
        self.queue.send(Job { op, done }).map_err(|_| "the database writer has stopped".to_string())?;
        answer.recv().map_err(|_| "the database writer has stopped".to_string())?
    }
}

fn writer_loop(mut conn: Connection, jobs: Receiver<Job>) {
    // Ends when every Store handle is dropped and the queue is empty.
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let results = commit_batch(&mut conn, &batch);
        tracing::debug!(writes = batch.len(), "group commit");
        for (job, result) in batch.into_iter().zip(results) {
            // The sender may have gone (connection dropped); the row is stored anyway.
            let _ = job.done.send(result);
        }
    }
}

/// Applies the batch in one transaction. If the commit fails, every write in
/// it fails: nothing is acknowledged that is not on disk.
fn commit_batch(conn: &mut Connection, batch: &[Job]) -> Vec<WriteResult> {
    let mut attempt = || -> Result<Vec<bool>, DbError> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut added = Vec::with_capacity(batch.len());
        for job in batch {
            added.push(match &job.op {
                WriteOp::Message(m) => messages::insert_message(&tx, m)?,
                WriteOp::File(f) => messages::insert_file(&tx, f)?,
            });
        }
        tx.commit()?;
        Ok(added)
    };
    match attempt() {
        Ok(added) => added.into_iter().map(Ok).collect(),
        Err(e) => {
            tracing::error!(error = %e, writes = batch.len(), "group commit failed");
            batch.iter().map(|_| Err(e.to_string())).collect()
        }
    }
}
