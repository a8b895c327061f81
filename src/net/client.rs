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
use crate::crypto::FernetKey;

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

/// What one attempt ended with.
enum Attempt {
    Done(Delivered),
    Retry(String),
    Fail(SendError),
}

impl<'k> Sender<'k> {
    pub fn new(config: ClientConfig, agent_id: i64, key: &'k FernetKey) -> Self {
        Sender { config, agent_id, key, conn: None }
    }

    /// Sends one message and waits until the Boss has stored it.
    pub fn send(&mut self, header: &Header, body: &[u8]) -> Result<Delivered, SendError> {
        let plaintext = protocol::encode_message(header, body);
        let mut last = String::new();
        let mut backoff = self.config.backoff;
        for attempt in 1..=self.config.attempts.max(1) {
            if attempt > 1 {
                std::thread::sleep(backoff);
                backoff = backoff.saturating_mul(2);
            }
            match self.attempt(&header.id, &plaintext) {
                Attempt::Done(mut d) => {
                    d.attempts = attempt;
                    return Ok(d);
                }
                Attempt::Fail(e) => return Err(e),
                Attempt::Retry(why) => {
                    tracing::debug!(attempt, error = %why, "send attempt failed; retrying");
                    self.conn = None;
                    last = why;
                }
            }
        }
        Err(SendError::Unreachable { addr: self.config.addr.clone(), attempts: self.config.attempts.max(1), last })
    }

    fn attempt(&mut self, id: &str, plaintext: &[u8]) -> Attempt {
        // Sealed per attempt: a retry minutes later is still fresh.
        let line = protocol::format_request(self.agent_id, &self.key.seal(plaintext));
        let reply = match self.round_trip(line.as_bytes()) {
            Ok(r) => r,
            Err(e) => return Attempt::Retry(e.to_string()),
        };
        match protocol::parse_reply(&reply) {
            Ok(Reply::Ack { token }) => match self.verify_ack(id, token) {
                Ok(d) => Attempt::Done(d),
                Err(e) => Attempt::Fail(e),
            },
            Ok(Reply::Err { code, text }) if code.is_retryable() => {
                Attempt::Retry(format!("{}: {text}", code.as_str()))
            }
            Ok(Reply::Err { code, text }) => Attempt::Fail(SendError::Refused { code, text }),
            Err(e) => Attempt::Fail(SendError::BadAck(e.0)),
        }
    }

    fn verify_ack(&self, id: &str, token: &[u8]) -> Result<Delivered, SendError> {
        // The ACK must be fresh too: an old ACK replayed by a third party proves nothing.
        let opened = self
            .key
            .open(token, Some(300))
            .map_err(|e| SendError::BadAck(format!("{e} (not sealed under this agent's key)")))?;
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

    /// Writes one line and reads one reply line (bounded in length).
    fn round_trip(&mut self, line: &[u8]) -> io::Result<Vec<u8>> {
        if self.conn.as_ref().is_some_and(|c| !is_reusable(c)) {
            // The Boss closed the kept connection (idle timeout, shutdown); its
            // goodbye line is not the answer to this request: start afresh.
            self.conn = None;
        }
        if self.conn.is_none() {
            self.conn = Some(BufReader::new(self.connect()?));
        }
        let conn = self.conn.as_mut().expect("connected above");
        conn.get_mut().write_all(line)?;
        let mut reply = Vec::new();
        let n = conn.by_ref().take(protocol::MAX_LINE_BYTES as u64).read_until(b'\n', &mut reply)?;
        if n == 0 || reply.last() != Some(&b'\n') {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the Boss closed the connection"));
        }
        Ok(reply)
    }
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

/// Sends a file as chunks of [`protocol::CHUNK_BYTES`], in order, each its own
/// message with its own id; the last carries the SHA-256 of the whole file.
/// `progress` is told the bytes acknowledged so far. Returns the last ACK.
pub fn send_file(
    sender: &mut Sender<'_>,
    path: &std::path::Path,
    name: &str,
    mut progress: impl FnMut(u64, u64),
) -> Result<Delivered, FileSendError> {
    use sha2::{Digest, Sha256};
    // First pass: the hash, so the last chunk can carry it without buffering the file.
    let mut file = std::fs::File::open(path).map_err(FileSendError::Read)?;
    let size = file.metadata().map_err(FileSendError::Read)?.len();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; protocol::CHUNK_BYTES];
    loop {
        let n = file.read(&mut buf).map_err(FileSendError::Read)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let sha256 = hex::encode(hasher.finalize());

    let mut file = std::fs::File::open(path).map_err(FileSendError::Read)?;
    let file_id = protocol::random_id();
    let mut chunk = vec![0u8; protocol::CHUNK_BYTES];
    let mut offset = 0u64;
    loop {
        let want = (size - offset).min(protocol::CHUNK_BYTES as u64) as usize;
        file.read_exact(&mut chunk[..want]).map_err(FileSendError::Read)?;
        let last = offset + want as u64 == size;
        let header = Header {
            id: protocol::random_id(),
            kind: protocol::Kind::FileChunk(protocol::FileChunk {
                file_id: file_id.clone(),
                name: name.to_string(),
                offset,
                size,
                sha256: last.then(|| sha256.clone()),
            }),
        };
        let delivered = sender.send(&header, &chunk[..want]).map_err(FileSendError::Send)?;
        offset += want as u64;
        progress(offset, size);
        if last {
            return Ok(delivered);
        }
    }
}
