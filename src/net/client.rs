//! The sending side: connect to the Boss, send `MSG` lines, wait for each
//! answer, verify the ACK is sealed under our key and names our message id.
//!
//! Retries are safe by design: on a timeout, a dropped connection or a
//! retryable `ERR` (busy, internal), the same message id is sent again over a
//! fresh connection, re-sealed so it stays inside the freshness window, and
//! the Boss stores it once (`duplicate` on the second arrival).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::protocol::{self, AckStatus, ErrorCode, Header, Reply};
use crate::crypto::{FernetKey, TokenError};

/// How to reach the Boss and how hard to try.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub addr: String,
    /// Connect, write and reply timeout per attempt.
    pub timeout: Duration,
    /// Attempts per message, the first included.
    pub attempts: u32,
    /// Wait before the first retry; doubles after each.
    pub backoff: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            addr: "127.0.0.1:5000".into(),
            timeout: Duration::from_secs(10),
            attempts: 5,
            backoff: Duration::from_millis(100),
        }
    }
}

/// A message the Boss has durably stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub status: AckStatus,
    /// The Boss's reply text, from inside the sealed ACK.
    pub reply: String,
    /// Attempts it took (1 if the first went through).
    pub attempts: u32,
}

#[derive(Debug)]
pub enum SendError {
    /// Never got through; `last` is the final attempt's failure.
    Unreachable { addr: String, attempts: u32, last: String },
    /// The Boss answered `ERR` with a code a retry cannot fix.
    Refused { code: ErrorCode, text: String },
    /// The answer was not a valid ACK for this message under our key.
    BadAck(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Unreachable { addr, attempts, last } => {
                write!(f, "cannot reach the Boss at {addr} after {attempts} attempt(s): {last}")
            }
            SendError::Refused { code, text } => write!(f, "the Boss refused the message ({}): {text}", code.as_str()),
            SendError::BadAck(why) => write!(f, "the Boss's answer is not a valid acknowledgement: {why}"),
        }
    }
}

impl std::error::Error for SendError {}

/// One agent's connection to the Boss, reused across messages.
pub struct Sender<'k> {
    config: ClientConfig,
    agent_id: i64,
    key: &'k FernetKey,
    conn: Option<BufReader<TcpStream>>,
}

impl<'k> Sender<'k> {
    pub fn new(config: ClientConfig, agent_id: i64, key: &'k FernetKey) -> Self {
        Sender { config, agent_id, key, conn: None }
    }

    /// Sends one message and waits until the Boss has stored it (a stream of
    /// one: the same retries, re-sealing and ACK checks).
    pub fn send(&mut self, header: &Header, body: &[u8]) -> Result<Delivered, SendError> {
        let mut message = Some((header.clone(), body.to_vec()));
        match self.send_stream(1, || Ok::<_, std::convert::Infallible>(message.take()), |_, _, _| {}) {
            Ok(Some(delivered)) => Ok(delivered),
            Ok(None) => Err(SendError::BadAck("no answer was received".into())),
            Err(StreamError::Send(e)) => Err(e),
            Err(StreamError::Source(never)) => match never {},
        }
    }

    fn verify_ack(&self, id: &str, token: &[u8]) -> Result<Delivered, SendError> {
        // No TTL: the ACK must echo this message's fresh random id, so an old
        // ACK cannot stand in for it, and the Boss's clock need not match ours.
        let opened = self.key.open(token, None).map_err(|e| match e {
            TokenError::Expired => SendError::BadAck(
                "it is dated more than 60 s in the future: the Boss's clock is ahead of this machine's".into(),
            ),
            TokenError::Invalid => SendError::BadAck("it is not sealed under this agent's key".into()),
        })?;
        let (header, reply) = protocol::decode_ack(&opened.plaintext).map_err(|e| SendError::BadAck(e.0))?;
        if header.id != id {
            return Err(SendError::BadAck(format!("it acknowledges message {}, not {id}", header.id)));
        }
        Ok(Delivered { status: header.status, reply, attempts: 1 })
    }

    fn connect(&self) -> io::Result<TcpStream> {
        let addrs: Vec<SocketAddr> = self.config.addr.to_socket_addrs()?.collect();
        let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{} resolves to no address", self.config.addr));
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, self.config.timeout) {
                Ok(s) => {
                    s.set_nodelay(true)?;
                    s.set_read_timeout(Some(self.config.timeout))?;
                    s.set_write_timeout(Some(self.config.timeout))?;
                    return Ok(s);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Writes one request line on an idle connection, connecting first if needed.
    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        if self.conn.as_ref().is_some_and(|c| !is_reusable(c)) {
            // The Boss closed the kept connection (idle timeout, shutdown); its
            // goodbye line is not the answer to this request: start afresh.
            self.conn = None;
        }
        self.write_pipelined(line)
    }

    /// Writes one request line behind others still awaiting their answers
    /// (whose replies may already be waiting, so no reuse check).
    fn write_pipelined(&mut self, line: &[u8]) -> io::Result<()> {
        if self.conn.is_none() {
            self.conn = Some(BufReader::new(self.connect()?));
        }
        self.conn.as_mut().expect("connected above").get_mut().write_all(line)
    }

    /// Reads the next reply line on the current connection.
    fn read_reply(&mut self) -> io::Result<Vec<u8>> {
        let conn = self.conn.as_mut().ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "not connected"))?;
        let mut reply = Vec::new();
        let n = conn.by_ref().take(protocol::MAX_LINE_BYTES as u64).read_until(b'\n', &mut reply)?;
        if n == 0 || reply.last() != Some(&b'\n') {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the Boss closed the connection"));
        }
        Ok(reply)
    }

    /// Sends a stream of messages with up to `window` in flight on one
    /// connection (the Boss answers in order), so sealing, the network and the
    /// Boss's fsync overlap. `next` yields messages until `None`; `delivered`
    /// is told of each ACK in order. On a lost connection or a retryable
    /// `ERR`, every unacknowledged message is resent, re-sealed, with its id.
    pub fn send_stream<E>(
        &mut self,
        window: usize,
        mut next: impl FnMut() -> Result<Option<(Header, Vec<u8>)>, E>,
        mut delivered: impl FnMut(&Header, usize, &Delivered),
    ) -> Result<Option<Delivered>, StreamError<E>> {
        struct InFlight {
            header: Header,
            plaintext: Vec<u8>,
            body_len: usize,
        }
        let window = window.max(1);
        let mut pending: std::collections::VecDeque<InFlight> = std::collections::VecDeque::new();
        let mut written = 0usize; // how many of `pending` went out on this connection
        let mut exhausted = false;
        let mut last_ack = None;
        let mut attempt = 1u32;
        let mut backoff = self.config.backoff;
        loop {
            while !exhausted && pending.len() < window {
                match next().map_err(StreamError::Source)? {
                    Some((header, body)) => {
                        let plaintext = protocol::encode_message(&header, &body);
                        pending.push_back(InFlight { header, plaintext, body_len: body.len() });
                    }
                    None => exhausted = true,
                }
            }
            let Some(front) = pending.front() else { return Ok(last_ack) };
            let front_id = front.header.id.clone();
            let outcome = (|| -> io::Result<Vec<u8>> {
                for item in pending.iter().skip(written) {
                    let line = protocol::format_request(self.agent_id, &self.key.seal(&item.plaintext));
                    if written == 0 {
                        self.write_line(line.as_bytes())?;
                    } else {
                        self.write_pipelined(line.as_bytes())?;
                    }
                    written += 1;
                }
                self.read_reply()
            })();
            let retry_reason = match outcome {
                Err(e) => e.to_string(),
                Ok(reply) => match protocol::parse_reply(&reply) {
                    Ok(Reply::Ack { token }) => {
                        let ack = self.verify_ack(&front_id, token).map_err(StreamError::Send)?;
                        let done = pending.pop_front().expect("front exists");
                        written -= 1;
                        delivered(&done.header, done.body_len, &ack);
                        last_ack = Some(Delivered { attempts: attempt, ..ack });
                        attempt = 1;
                        backoff = self.config.backoff;
                        continue;
                    }
                    Ok(Reply::Err { code, text }) if code.is_retryable() => format!("{}: {text}", code.as_str()),
                    Ok(Reply::Err { code, text }) => return Err(StreamError::Send(SendError::Refused { code, text })),
                    Err(e) => return Err(StreamError::Send(SendError::BadAck(e.0))),
                },
            };
            // Start over on a fresh connection with everything unacknowledged.
            self.conn = None;
            written = 0;
            if attempt >= self.config.attempts.max(1) {
                return Err(StreamError::Send(SendError::Unreachable {
                    addr: self.config.addr.clone(),
                    attempts: attempt,
                    last: retry_reason,
                }));
            }
            tracing::debug!(attempt, error = %retry_reason, in_flight = pending.len(), "stream interrupted; resending");
            attempt += 1;
            std::thread::sleep(backoff);
            backoff = backoff.saturating_mul(2);
        }
    }
}

/// Why a stream of messages stopped.
#[derive(Debug)]
pub enum StreamError<E> {
    /// The message source failed (e.g. reading the file).
    Source(E),
    Send(SendError),
}

/// Whether a kept connection can carry another request: nothing unsolicited
/// is waiting on it (that would be the Boss's goodbye) and it is not closed.
fn is_reusable(conn: &BufReader<TcpStream>) -> bool {
    if !conn.buffer().is_empty() {
        return false;
    }
    let stream = conn.get_ref();
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let mut probe = [0u8; 1];
    let quiet = matches!(stream.peek(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
    stream.set_nonblocking(false).is_ok() && quiet
}

/// Why a file could not be sent.
#[derive(Debug)]
pub enum FileSendError {
    Read(io::Error),
    Send(SendError),
}

impl std::fmt::Display for FileSendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileSendError::Read(e) => write!(f, "cannot read the file: {e}"),
            FileSendError::Send(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for FileSendError {}

/// Chunks kept in flight by [`send_file`]: enough to overlap sealing, the
/// network and the Boss's per-chunk fsync, little enough memory (4 x 512 KiB).
pub const FILE_WINDOW: usize = 4;

/// Sends a file as chunks of [`protocol::CHUNK_BYTES`], in order, each its own
/// message with its own id, [`FILE_WINDOW`] in flight; the last carries the
/// SHA-256 of the whole file, computed as the chunks are read. `progress` is
/// told the bytes acknowledged so far. Returns the last ACK.
pub fn send_file(
    sender: &mut Sender<'_>,
    path: &std::path::Path,
    name: &str,
    mut progress: impl FnMut(u64, u64),
) -> Result<Delivered, FileSendError> {
    use sha2::{Digest, Sha256};
    let mut file = std::fs::File::open(path).map_err(FileSendError::Read)?;
    let size = file.metadata().map_err(FileSendError::Read)?.len();
    let file_id = protocol::random_id();
    let mut hasher = Some(Sha256::new());
    let mut read_to = 0u64;
    let mut acked = 0u64;
    let next_chunk = || -> Result<Option<(Header, Vec<u8>)>, io::Error> {
        // An empty file is one empty chunk; otherwise stop once all is read.
        let Some(running) = hasher.as_mut() else { return Ok(None) };
        let want = (size - read_to).min(protocol::CHUNK_BYTES as u64) as usize;
        let mut chunk = vec![0u8; want];
        file.read_exact(&mut chunk)
            .map_err(|e| io::Error::new(e.kind(), format!("{e} (did the file change while it was being sent?)")))?;
        running.update(&chunk);
        let offset = read_to;
        read_to += want as u64;
        let sha256 = if read_to == size { hasher.take().map(|h| hex::encode(h.finalize())) } else { None };
        let header = Header {
            id: protocol::random_id(),
            kind: protocol::Kind::FileChunk(protocol::FileChunk {
                file_id: file_id.clone(),
                name: name.to_string(),
                offset,
                size,
                sha256,
            }),
        };
        Ok(Some((header, chunk)))
    };
    let last = sender
        .send_stream(FILE_WINDOW, next_chunk, |_, len, _| {
            acked += len as u64;
            progress(acked, size);
        })
        .map_err(|e| match e {
            StreamError::Source(e) => FileSendError::Read(e),
            StreamError::Send(e) => FileSendError::Send(e),
        })?;
    last.ok_or_else(|| FileSendError::Read(io::Error::other("nothing was sent")))
}
