//! A file's chunks over v2 sessions (`send --protocol v2 --file`; PROTOCOL.md
//! "Files over v2"): chunks of at most [`v2::FILE_CHUNK_BYTES`], up to
//! [`FILE_WINDOW`] in flight, each an `M` frame answered in order by an
//! authenticated `A` frame whose receipt is checked against the pinned Boss
//! key. A lost connection is answered as v1's is: a new session, the Boss's
//! committed offset (`Q`), and on from there, so what the Boss holds is
//! never sent again.

use std::collections::VecDeque;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::client::{ChunkReader, Delivered, FileSendError, FileSent, MessageSigner, ResumeFrom, Upload};
use super::protocol::{self, Committed};
use super::v2;
use super::v2_client::{V2Client, V2Error};
use crate::crypto::{IdentityKeys, PublicIdentity};

/// Chunks a v2 upload keeps in flight: 8 of 60 KiB, 480 KiB, so an
/// interruption re-sends at most what one v1 chunk (512 KiB) would, while
/// the Boss can write the chunks that arrive back to back and sync them
/// once (PROTOCOL.md, "Files over v2").
pub const FILE_WINDOW: usize = 8;

/// An enrolled agent's uploads over v2: the session (opened on first use,
/// again after a lost connection) and what signs and checks its messages.
pub struct V2Uploader<'k> {
    addr: String,
    timeout: Duration,
    /// Sessions tried in a row without the Boss gaining a byte.
    attempts: u32,
    me: &'k IdentityKeys,
    boss: &'k PublicIdentity,
    agent_id: i64,
    signer: MessageSigner<'k>,
    session: Option<V2Client>,
    /// The Boss's clock minus ours, when the first handshake found them
    /// more than [`v2::MAX_SKEW_SECS`] apart (for the caller to say so).
    pub skew: Option<i64>,
}

impl<'k> V2Uploader<'k> {
    /// Opens the first session at once, so a wrong Boss or a skewed clock is
    /// known before the file is hashed.
    pub fn connect(
        addr: &str,
        timeout: Duration,
        attempts: u32,
        me: &'k IdentityKeys,
        boss: &'k PublicIdentity,
        agent_id: i64,
    ) -> Result<Self, V2Error> {
        let session = V2Client::connect(addr, timeout, me, boss, agent_id)?;
        Ok(V2Uploader {
            addr: addr.to_string(),
            timeout,
            attempts: attempts.max(1),
            me,
            boss,
            agent_id,
            signer: MessageSigner::new(me, boss.ed25519, agent_id),
            skew: session.skew,
            session: Some(session),
        })
    }

    fn session(&mut self) -> Result<&mut V2Client, V2Error> {
        if self.session.is_none() {
            self.session = Some(V2Client::connect(&self.addr, self.timeout, self.me, self.boss, self.agent_id)?);
        }
        Ok(self.session.as_mut().expect("just opened"))
    }

    /// Writes one chunk (signed if it is the last) without waiting.
    fn write_chunk(&mut self, header: &protocol::Header, body: &[u8]) -> Result<(), FileSendError> {
        let plaintext = self.signer.encode(header, body);
        let written = self.session().and_then(|session| session.write_message(&plaintext));
        written.map_err(|e| self.lost(e))
    }

    /// Reads the answer to the oldest chunk in flight and checks it: it
    /// names that chunk's id, and its receipt is the pinned Boss's over
    /// that chunk's bytes.
    fn read_ack(&mut self, sent: &InFlight) -> Result<Delivered, FileSendError> {
        let answer = self.session().and_then(V2Client::read_ack);
        let (ack, reply) = answer.map_err(|e| self.lost(e))?;
        if ack.id != sent.id {
            return Err(self.lost(V2Error::Unauthenticated("an ACK for another message")));
        }
        let receipt = self.signer.check_receipt(&ack, &sent.body_sha256).map_err(FileSendError::Send)?;
        Ok(Delivered { status: ack.status, reply, attempts: 1, receipt: Some(receipt) })
    }

    /// Drops the session after a failed exchange (its nonces can no longer
    /// be trusted to match the Boss's).
    fn lost(&mut self, e: V2Error) -> FileSendError {
        self.session = None;
        FileSendError::V2(e)
    }

    /// One pass from `from` to the end, on the current (or a new) session,
    /// up to [`FILE_WINDOW`] chunks in flight.
    fn stream(
        &mut self,
        upload: &Upload<'_>,
        from: u64,
        bytes_sent: &mut u64,
        held: &mut dyn FnMut(u64),
    ) -> Result<Delivered, FileSendError> {
        let mut reader = ChunkReader::open(upload, from, v2::FILE_CHUNK_BYTES).map_err(FileSendError::Read)?;
        let mut in_flight = VecDeque::with_capacity(FILE_WINDOW);
        let mut last = None;
        loop {
            while in_flight.len() < FILE_WINDOW {
                let Some((header, body)) = reader.next_chunk().map_err(FileSendError::Read)? else { break };
                *bytes_sent += body.len() as u64;
                let end = match &header.kind {
                    protocol::Kind::FileChunk(chunk) => chunk.offset + body.len() as u64,
                    _ => 0,
                };
                super::client::log_chunk_queued(end - body.len() as u64, end);
                self.write_chunk(&header, &body)?;
                in_flight.push_back(InFlight { id: header.id, body_sha256: hex::encode(Sha256::digest(&body)), end });
            }
            let Some(sent) = in_flight.pop_front() else { break };
            last = Some(self.read_ack(&sent)?);
            held(sent.end);
        }
        last.ok_or_else(|| FileSendError::Read(std::io::Error::other("nothing was sent")))
    }
}

/// A chunk written and not yet answered.
struct InFlight {
    id: String,
    /// What the Boss's receipt must name.
    body_sha256: String,
    /// Where the chunk ends in the file.
    end: u64,
}

/// Whether a failure is worth a new session and an offset query: the
/// connection went, or the Boss asked to be tried again.
fn interrupted(e: &FileSendError) -> bool {
    match e {
        FileSendError::V2(V2Error::Io(_) | V2Error::Closed | V2Error::Busy(_)) => true,
        FileSendError::V2(V2Error::Refused { code, .. }) => code.is_retryable(),
        _ => false,
    }
}

impl crate::resumable::FileTransport for V2Uploader<'_> {
    fn chunk_bytes(&self) -> usize {
        v2::FILE_CHUNK_BYTES
    }

    fn query_offset(&mut self, file_id: &str) -> Result<Committed, FileSendError> {
        let answer = self.session().and_then(|session| session.query_offset(file_id));
        answer.map_err(|e| {
            self.session = None;
            FileSendError::V2(e)
        })
    }

    /// As v1's [`super::client::send_file`], with [`FILE_WINDOW`] chunks in flight: after
    /// an interruption, a backoff, then the committed offset, up to the
    /// attempts in a row without progress.
    fn send_file(
        &mut self,
        upload: &Upload<'_>,
        start: u64,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<FileSent, FileSendError> {
        tracing::debug!(resumed_from = start, "file upload starts (v2)");
        let mut backoff = Duration::from_millis(100);
        let (mut from, mut bytes_sent, mut interruptions, mut stalled) = (start, 0u64, 0u32, 0u32);
        loop {
            let mut held = from;
            let result = self.stream(upload, from, &mut bytes_sent, &mut |acked| {
                held = acked;
                progress(acked, upload.size);
            });
            let failure = match result {
                Ok(delivered) => return Ok(FileSent { delivered, bytes_sent, interruptions }),
                Err(e) if interrupted(&e) => e,
                Err(e) => return Err(e),
            };
            stalled = if held > from { 1 } else { stalled + 1 };
            // The offset query may itself find the Boss gone: it counts as
            // one more try without progress.
            let resumed = loop {
                if stalled >= self.attempts {
                    return Err(failure);
                }
                interruptions += 1;
                tracing::debug!(error = %failure, held, "v2 upload interrupted; asking the Boss where to resume");
                std::thread::sleep(backoff);
                backoff = backoff.saturating_mul(2).min(Duration::from_secs(5));
                match crate::resumable::FileTransport::query_offset(self, &upload.file_id) {
                    Ok(committed) => break committed,
                    Err(e) if interrupted(&e) => stalled += 1,
                    Err(e) => return Err(e),
                }
            };
            match super::client::resume_point(&resumed, upload.size, &upload.sha256, v2::FILE_CHUNK_BYTES) {
                ResumeFrom::Offset(offset) => from = offset,
                ResumeFrom::Done { size, sha256 } => {
                    let delivered = super::client::already_received(size, &sha256);
                    return Ok(FileSent { delivered, bytes_sent, interruptions });
                }
                ResumeFrom::Mismatch(why) => {
                    return Err(FileSendError::Read(std::io::Error::other(format!("cannot resume: {why}"))));
                }
            }
            tracing::debug!(resumed_from = from, "v2 upload resumed");
        }
    }
}
