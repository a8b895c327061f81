//! Downloading the file an order carries over a v2 session (PROTOCOL.md,
//! "Files with orders"): `G` from the offset this home holds durably, up to
//! [`FILE_WINDOW`] `B` chunks back, each appended sealed to the partial copy
//! (`received_files`), one sync per window, then the next `G`. A lost
//! connection (a cut, either side killed, a Boss restart) is met with a new
//! session and a `G` from the durable offset again, so at most one window in
//! flight is fetched twice. At the end the whole copy is checked (every tag,
//! size, SHA-256); a copy that fails is discarded and fetched once more,
//! then the download fails. The Boss is told with `N` and answers `N`.

use std::time::Duration;

use super::v2::{FileAsk, FileDone, Frame, OrderFile};
use super::v2_client::{V2Client, V2Error};
use super::v2_upload::FILE_WINDOW;
use crate::received_files::{Part, ReceivedFiles, State};

/// What one download cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Downloaded {
    /// Where this run started (what the home already held).
    pub resumed_from: u64,
    /// Chunk bytes received in this run, re-fetched ones included.
    pub bytes_fetched: u64,
    /// Connections lost and replaced.
    pub interruptions: u32,
    /// Whole downloads thrown away because the copy failed its check.
    pub restarts: u32,
}

/// Why a download failed.
#[derive(Debug)]
pub enum DownloadError {
    V2(V2Error),
    Store(std::io::Error),
    /// The copy failed its SHA-256 (or a tag) twice.
    Mismatch,
}

impl std::fmt::Display for DownloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DownloadError::V2(e) => write!(f, "{e}"),
            DownloadError::Store(_) => f.write_str("cannot write the file under received/"),
            DownloadError::Mismatch => {
                f.write_str("the downloaded copy failed its SHA-256 check twice; it was discarded")
            }
        }
    }
}

impl std::error::Error for DownloadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DownloadError::V2(e) => Some(e),
            DownloadError::Store(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for DownloadError {
    fn from(e: std::io::Error) -> Self {
        DownloadError::Store(e)
    }
}

impl From<crate::boss::sealed_file::SealedError> for DownloadError {
    fn from(e: crate::boss::sealed_file::SealedError) -> Self {
        match e {
            crate::boss::sealed_file::SealedError::Io(e) => DownloadError::Store(e),
            crate::boss::sealed_file::SealedError::Corrupt => {
                DownloadError::Store(std::io::Error::other("the partial copy fails its integrity check"))
            }
        }
    }
}

/// Opens a new session to the Boss.
pub type Connect<'a> = dyn FnMut() -> Result<V2Client, V2Error> + 'a;

/// Downloads (or resumes) `file` into `store` and tells the Boss, trying a
/// new session after a lost one up to `attempts` times in a row without
/// progress. `session` is reused if open, and left open for the caller.
pub fn download(
    session: &mut Option<V2Client>,
    connect: &mut Connect<'_>,
    store: &ReceivedFiles,
    file: &OrderFile,
    attempts: u32,
) -> Result<Downloaded, DownloadError> {
    let mut done = Downloaded::default();
    let mut first = true;
    loop {
        if store.state(file)? == State::Complete {
            break;
        }
        let mut part = store.part(file)?;
        if first {
            done.resumed_from = part.held();
            first = false;
        }
        fetch_rest(session, connect, &mut part, file, attempts, &mut done)?;
        drop(part);
        if store.finish(file)? {
            break;
        }
        tracing::warn!(file = %file.id, "the downloaded copy fails its check; discarding it");
        store.discard(file);
        if done.restarts > 0 {
            return Err(DownloadError::Mismatch);
        }
        done.restarts += 1;
    }
    if !store.told(file)? {
        let json = serde_json::to_vec(&FileDone { file: file.id.clone(), sha256: file.sha256.clone() })
            .expect("a FileDone always encodes");
        with_retries(session, connect, attempts, &mut done, |client| {
            client.write_frame(&Frame::FileDone(json.clone()))?;
            match client.read_frame()? {
                Frame::FileDone(echo) if echo == json => Ok(()),
                Frame::Error(code, text) => Err(V2Error::Refused { code, text }),
                _ => Err(V2Error::Unauthenticated("an unexpected frame where N was due")),
            }
        })?;
        store.mark_told(file)?;
    }
    Ok(done)
}

/// Runs `step` on a session, replacing a lost one (after a backoff) until
/// `attempts` tries in a row fail.
fn with_retries<T>(
    session: &mut Option<V2Client>,
    connect: &mut Connect<'_>,
    attempts: u32,
    done: &mut Downloaded,
    mut step: impl FnMut(&mut V2Client) -> Result<T, V2Error>,
) -> Result<T, DownloadError> {
    let mut backoff = Duration::from_millis(100);
    let mut failed = 0;
    loop {
        let result = match session {
            Some(client) => step(client),
            None => connect().and_then(|client| step(session.insert(client))),
        };
        match result {
            Ok(value) => return Ok(value),
            Err(e) if lost(&e) && failed + 1 < attempts.max(1) => {
                tracing::debug!(error = %e, "the download's session was lost; opening a new one");
                *session = None;
                failed += 1;
                done.interruptions += 1;
                std::thread::sleep(backoff);
                backoff = backoff.saturating_mul(2).min(Duration::from_secs(5));
            }
            Err(e) => {
                *session = None;
                return Err(DownloadError::V2(e));
            }
        }
    }
}

/// Whether a failure is worth a new session.
fn lost(e: &V2Error) -> bool {
    match e {
        V2Error::Io(_) | V2Error::Closed | V2Error::Busy(_) => true,
        V2Error::Refused { code, .. } => code.is_retryable(),
        _ => false,
    }
}

/// What ended one window: the session (worth a new one, maybe) or this
/// home's storage (not).
enum Step {
    Lost(V2Error),
    Store(crate::boss::sealed_file::SealedError),
}

/// Fetches windows until the part holds the whole file, syncing after each
/// (and after a lost session, so what arrived before the loss counts).
fn fetch_rest(
    session: &mut Option<V2Client>,
    connect: &mut Connect<'_>,
    part: &mut Part<'_>,
    file: &OrderFile,
    attempts: u32,
    done: &mut Downloaded,
) -> Result<(), DownloadError> {
    let mut backoff = Duration::from_millis(100);
    let mut failed = 0;
    while part.held() < file.size {
        let before = part.held();
        let client = match session {
            Some(client) => Ok(client),
            None => connect().map(|client| session.insert(client)),
        };
        let result = client.map_err(Step::Lost).and_then(|c| fetch_window(c, part, file, &mut done.bytes_fetched));
        part.sync()?;
        match result {
            Ok(()) => {
                failed = 0;
                backoff = Duration::from_millis(100);
            }
            Err(Step::Lost(e)) if lost(&e) => {
                *session = None;
                failed = if part.held() > before { 1 } else { failed + 1 };
                if failed >= attempts.max(1) {
                    return Err(DownloadError::V2(e));
                }
                tracing::debug!(error = %e, held = part.held(), "the download's session was lost; resuming");
                done.interruptions += 1;
                std::thread::sleep(backoff);
                backoff = backoff.saturating_mul(2).min(Duration::from_secs(5));
            }
            Err(Step::Lost(e)) => {
                *session = None;
                return Err(DownloadError::V2(e));
            }
            Err(Step::Store(e)) => {
                *session = None;
                return Err(e.into());
            }
        }
    }
    Ok(())
}

/// One `G` and its `B` answers, each appended as it arrives.
fn fetch_window(client: &mut V2Client, part: &mut Part<'_>, file: &OrderFile, fetched: &mut u64) -> Result<(), Step> {
    let chunk = super::v2::FILE_CHUNK_BYTES as u64;
    let offset = part.held();
    let ask = serde_json::to_vec(&FileAsk { file: file.id.clone(), offset }).expect("a FileAsk always encodes");
    client.write_frame(&Frame::GetFile(ask)).map_err(Step::Lost)?;
    let due = (file.size - offset).div_ceil(chunk).min(FILE_WINDOW as u64);
    for _ in 0..due {
        match client.read_frame().map_err(Step::Lost)? {
            Frame::FileBytes { offset, bytes } => {
                let expected = chunk.min(file.size - part.held());
                if offset != part.held() || bytes.len() as u64 != expected {
                    return Err(Step::Lost(V2Error::Unauthenticated("a chunk out of place or of the wrong size")));
                }
                *fetched += bytes.len() as u64;
                part.append(&bytes).map_err(Step::Store)?;
            }
            Frame::Error(code, text) => return Err(Step::Lost(V2Error::Refused { code, text })),
            _ => return Err(Step::Lost(V2Error::Unauthenticated("an unexpected frame where a chunk was due"))),
        }
    }
    Ok(())
}
