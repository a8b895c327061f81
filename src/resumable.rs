//! `send --file` that survives interruptions: where an upload starts (a
//! fresh one, the journal's unfinished one from the Boss's committed offset,
//! or nothing to do), and the journal kept in step with the upload
//! (PROTOCOL.md, "Resuming a file").
//!
//! The local file is hashed before anything is sent: the last chunk names
//! that hash, and it is what tells the file the journal names from a file
//! changed since (then the upload starts over under a new id). The journal
//! entry is written before the first chunk and removed once the Boss has the
//! file, or once the Boss refused it outright (it dropped the upload too);
//! after any other failure it stays, so the same command resumes.

use std::path::{Path, PathBuf};

use crate::net::client::{self, Delivered, FileSendError, FileSent, ResumeFrom, SendError, Sender, Upload};
use crate::net::ids::random_id;
use crate::net::protocol::{self, Committed};
use crate::net::v2_client::V2Error;
use crate::upload_journal::{Entry, Journal};

/// What carries an upload: v1's [`Sender`] or a v2 session
/// ([`crate::net::v2_upload::V2Uploader`]). The journal and the resume rule
/// are the same over either.
pub trait FileTransport {
    /// The most file bytes one chunk carries.
    fn chunk_bytes(&self) -> usize;
    /// How much of upload `file_id` the Boss durably holds for this agent.
    fn query_offset(&mut self, file_id: &str) -> Result<Committed, FileSendError>;
    /// Sends `upload` from `start` to the end; `progress` is told the bytes
    /// the Boss holds.
    fn send_file(
        &mut self,
        upload: &Upload<'_>,
        start: u64,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<FileSent, FileSendError>;
}

/// v1: chunks of [`protocol::CHUNK_BYTES`], [`client::FILE_WINDOW`] in flight.
impl FileTransport for Sender<'_> {
    fn chunk_bytes(&self) -> usize {
        protocol::CHUNK_BYTES
    }

    fn query_offset(&mut self, file_id: &str) -> Result<Committed, FileSendError> {
        Sender::query_offset(self, file_id).map_err(FileSendError::Send)
    }

    fn send_file(
        &mut self,
        upload: &Upload<'_>,
        start: u64,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<FileSent, FileSendError> {
        client::send_file(self, upload, start, client::FILE_WINDOW, progress)
    }
}

/// Where an upload starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// From byte 0 under a new file id; `restarted` says why an unfinished
    /// upload of this file was not resumed, if there was one.
    Fresh { restarted: Option<&'static str> },
    /// The journal's upload, from this offset the Boss holds.
    Resume { offset: u64 },
    /// The Boss has already recorded this very file.
    Received { size: u64, sha256: String },
}

/// A checked upload, ready to send.
pub struct Prepared {
    pub plan: Plan,
    pub size: u64,
    path: PathBuf,
    /// None when the sender has no home to keep it in: the upload is then
    /// sent as before, without resume across runs.
    journal: Option<Journal>,
    key: String,
    file_id: String,
    sha256: String,
}

/// What a finished upload did.
#[derive(Debug)]
pub struct Outcome {
    pub delivered: Delivered,
    /// The offset this run started from (the file's size if the Boss had it).
    pub resumed_from: u64,
    /// Chunk bytes this run put on the wire.
    pub bytes_sent: u64,
    /// Interruptions it resumed after without exiting.
    pub interruptions: u32,
}

/// Why an upload stopped.
#[derive(Debug)]
pub enum ResumeError {
    /// The local file could not be read (or hashed).
    Read { path: PathBuf, source: std::io::Error },
    /// The journal (`uploads/` in the home) could not be read or written.
    Journal(std::io::Error),
    /// Sending failed; `resumable` says the journal kept the upload, so the
    /// same command resumes it.
    Send { source: FileSendError, resumable: bool },
}

impl std::fmt::Display for ResumeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResumeError::Read { path, .. } => write!(f, "cannot read {}", path.display()),
            ResumeError::Journal(_) => f.write_str("cannot use the upload journal (uploads/ in the home)"),
            ResumeError::Send { source, .. } => source.fmt(f),
        }
    }
}

impl std::error::Error for ResumeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ResumeError::Read { source, .. } => Some(source),
            ResumeError::Journal(e) => Some(e),
            // Transparent: the message is the send error's own.
            ResumeError::Send { source, .. } => std::error::Error::source(source),
        }
    }
}

/// Hashes the file at `path`, reads the journal of `home` (if there is one)
/// for it (as agent `agent_id`) and, if it names an unfinished upload of
/// this very file, asks the Boss where that upload stands (over
/// `transport`, v1 or v2: the journal is the same).
pub fn prepare(
    home: Option<&Path>,
    agent_id: i64,
    transport: &mut dyn FileTransport,
    path: &Path,
) -> Result<Prepared, ResumeError> {
    let read = |source| ResumeError::Read { path: path.to_path_buf(), source };
    let journal = home.map(Journal::in_home);
    let key = Journal::key(agent_id, path).map_err(read)?;
    let (size, sha256) = client::hash_file(path).map_err(read)?;
    let mut plan = Plan::Fresh { restarted: None };
    let mut file_id = None;
    let entry = match &journal {
        Some(journal) => journal.load(&key).map_err(ResumeError::Journal)?,
        None => None,
    };
    if let Some(entry) = entry {
        if entry.size != size || entry.sha256 != sha256 {
            plan = Plan::Fresh { restarted: Some("the file changed since the interrupted send") };
        } else {
            let committed = transport
                .query_offset(&entry.file_id)
                .map_err(|source| ResumeError::Send { source, resumable: true })?;
            match client::resume_point(&committed, size, &sha256, transport.chunk_bytes()) {
                ResumeFrom::Offset(offset) => {
                    plan = Plan::Resume { offset };
                    file_id = Some(entry.file_id);
                }
                ResumeFrom::Done { size, sha256 } => plan = Plan::Received { size, sha256 },
                ResumeFrom::Mismatch(why) => plan = Plan::Fresh { restarted: Some(why) },
            }
        }
    }
    let file_id = file_id.unwrap_or_else(random_id);
    Ok(Prepared { plan, size, path: path.to_path_buf(), journal, key, file_id, sha256 })
}

impl Prepared {
    /// Writes the journal entry (if there is a journal).
    fn save(&self, entry: &Entry) -> Result<(), ResumeError> {
        self.journal.as_ref().map_or(Ok(()), |j| j.save(&self.key, entry)).map_err(ResumeError::Journal)
    }

    /// Forgets the journal entry (if there is a journal).
    fn forget(&self) -> Result<(), ResumeError> {
        self.journal.as_ref().map_or(Ok(()), |j| j.remove(&self.key)).map_err(ResumeError::Journal)
    }

    /// Sends the upload as planned, recorded as `name`; `progress` is told
    /// the bytes the Boss holds.
    pub fn send(
        self,
        transport: &mut dyn FileTransport,
        name: &str,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<Outcome, ResumeError> {
        let start = match &self.plan {
            Plan::Received { size, sha256 } => {
                self.forget()?;
                return Ok(Outcome {
                    delivered: client::already_received(*size, sha256),
                    resumed_from: *size,
                    bytes_sent: 0,
                    interruptions: 0,
                });
            }
            Plan::Resume { offset } => *offset,
            Plan::Fresh { .. } => 0,
        };
        let entry = Entry { file_id: self.file_id.clone(), size: self.size, sha256: self.sha256.clone() };
        self.save(&entry)?;
        let upload = client::Upload {
            path: &self.path,
            name,
            file_id: self.file_id.clone(),
            size: self.size,
            sha256: self.sha256.clone(),
        };
        match transport.send_file(&upload, start, &mut progress) {
            Ok(sent) => {
                self.forget()?;
                Ok(Outcome {
                    delivered: sent.delivered,
                    resumed_from: start,
                    bytes_sent: sent.bytes_sent,
                    interruptions: sent.interruptions,
                })
            }
            // Refused outright (a hash mismatch: the file changed while it
            // was sent): the Boss dropped the upload, so does the journal.
            Err(source @ FileSendError::Send(SendError::Refused { .. })) => {
                self.forget()?;
                Err(ResumeError::Send { source, resumable: false })
            }
            Err(source @ FileSendError::V2(V2Error::Refused { code, .. })) if !code.is_retryable() => {
                self.forget()?;
                Err(ResumeError::Send { source, resumable: false })
            }
            Err(source) => Err(ResumeError::Send { source, resumable: self.journal.is_some() }),
        }
    }
}
