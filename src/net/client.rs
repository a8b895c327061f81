//! The sending side: connect to the Boss, send `MSG` lines, wait for each
//! answer, verify the ACK is sealed under our key and names our message id.
//!
//! Retries are safe by design: on a timeout, a dropped connection or a
//! retryable `ERR` (busy, internal), the same message id is sent again over a
//! fresh connection, re-sealed so it stays inside the freshness window, and
//! the Boss stores it once (`duplicate` on the second arrival). Files are the
//! exception: after an interruption [`send_file`] asks the Boss for the
//! upload's committed offset ([`Sender::query_offset`]) and goes on from
//! there, so nothing the Boss holds is sent twice.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::ids::random_id;
use super::protocol::{self, AckStatus, ErrorCode, Header, ProtocolError, Reply};
use crate::crypto::{FernetKey, IdentityKeys, TokenError};

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
    /// An enrolled agent's: the Boss's signed receipt, checked against the
    /// pinned Boss key.
    pub receipt: Option<Receipt>,
}

/// A receipt the Boss signed (PROTOCOL.md, "Signed receipts"): the statement
/// and the Ed25519 signature that verified over it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub statement: String,
    pub signature: [u8; 64],
}

/// Why a message was not delivered.
#[derive(Debug)]
pub enum SendError {
    /// Never got through; `last` is the final attempt's failure.
    Unreachable { addr: String, attempts: u32, last: AttemptError },
    /// The Boss answered `ERR` with a code a retry cannot fix.
    Refused { code: ErrorCode, text: String },
    /// The answer was not a valid ACK for this message under our key.
    BadAck(AckError),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The last failure is `source()`, printed after this by the reporter.
            SendError::Unreachable { addr, attempts, .. } => {
                write!(f, "cannot reach the Boss at {addr} after {attempts} attempt(s)")
            }
            SendError::Refused { code, text } => write!(f, "the Boss refused the message ({code}): {text}"),
            SendError::BadAck(_) => f.write_str("the Boss's answer is not a valid acknowledgement"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Unreachable { last, .. } => Some(last),
            // The code is in the text already; callers match the typed field.
            SendError::Refused { .. } => None,
            SendError::BadAck(why) => Some(why),
        }
    }
}

/// Why one attempt failed in a way a later attempt may not: kept typed so a
/// caller can tell a Boss at its connection cap (`busy`) from no Boss at all.
#[derive(Debug)]
pub enum AttemptError {
    /// Connecting, writing or reading failed (refused, reset, timed out).
    Io(io::Error),
    /// The Boss answered with a retryable `ERR` (busy, internal).
    Refused { code: ErrorCode, text: String },
}

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttemptError::Io(e) => e.fmt(f),
            AttemptError::Refused { code, text } => write!(f, "{code}: {text}"),
        }
    }
}

impl std::error::Error for AttemptError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            // Transparent: shown with the inner error's own text.
            AttemptError::Io(e) => e.source(),
            AttemptError::Refused { .. } => None,
        }
    }
}

/// Why an answer is not a valid ACK for the message it answers.
#[derive(Debug)]
pub enum AckError {
    /// The ACK token does not open under this agent's key.
    Token(TokenError),
    /// The reply line or the ACK's header does not follow the protocol.
    Malformed(ProtocolError),
    /// A valid ACK, for another message.
    OtherMessage { expected: String, acked: String },
    /// An ACK to an enrolled agent without the Boss's signed receipt.
    NoReceipt,
    /// A receipt whose signature does not verify under the pinned Boss key.
    BadReceipt,
}

impl std::fmt::Display for AckError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AckError::Token(TokenError::Expired) => {
                f.write_str("it is dated more than 60 s in the future: the Boss's clock is ahead of this machine's")
            }
            AckError::Token(TokenError::Invalid) => f.write_str("it is not sealed under this agent's key"),
            AckError::Malformed(e) => e.fmt(f),
            AckError::OtherMessage { expected, acked } => write!(f, "it acknowledges message {acked}, not {expected}"),
            AckError::NoReceipt => f.write_str("it carries no receipt signed by the Boss"),
            AckError::BadReceipt => f.write_str("its receipt is not signed by the pinned Boss key"),
        }
    }
}

impl std::error::Error for AckError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            // Both are shown in their own words above, so what lies below them follows.
            AckError::Token(e) => e.source(),
            AckError::Malformed(e) => e.source(),
            AckError::OtherMessage { .. } | AckError::NoReceipt | AckError::BadReceipt => None,
        }
    }
}

/// A message queued for sending: its header, the plaintext to seal (sealed
/// afresh on every write, so a resend stays inside the freshness window).
struct Outgoing {
    header: Header,
    plaintext: Vec<u8>,
    /// The request line, sealed ahead while the Boss was busy with the
    /// messages before it; used by the first write only (a resend seals anew).
    sealed_ahead: Option<String>,
    body_len: usize,
    /// An enrolled agent's message: its body's SHA-256 (hex), which the
    /// Boss's receipt must name.
    body_sha256: Option<String>,
}

/// Messages sent and not yet acknowledged, oldest first, and at most one
/// more sealed ahead. The Boss answers in order, so each reply belongs to
/// the front one.
#[derive(Default)]
struct InFlight {
    queue: VecDeque<Outgoing>,
    /// How many of `queue` went out on the current connection.
    written: usize,
    /// How many of `queue` may be on the wire at once (0 counts as 1); any
    /// further one waits, sealed, for the front one's answer.
    on_wire: usize,
}

/// An enrolled agent's signing key and what its statements name: each text
/// message, and each file's last chunk (for the whole file), carries the
/// statement's two signatures (PROTOCOL.md, "Signed messages").
#[derive(Clone, Copy)]
pub struct MessageSigner<'k> {
    keys: &'k IdentityKeys,
    boss_ed25519: [u8; 32],
    /// The pinned Boss key decoded once: every receipt is checked with it.
    boss_verifier: Option<crate::crypto::identity::Verifier>,
    agent_id: i64,
}

impl<'k> MessageSigner<'k> {
    /// Signs as `keys` (agent `agent_id`) for the Boss pinned as `boss_ed25519`.
    pub fn new(keys: &'k IdentityKeys, boss_ed25519: [u8; 32], agent_id: i64) -> Self {
        let boss_verifier = crate::crypto::identity::Verifier::new(&boss_ed25519).ok();
        MessageSigner { keys, boss_ed25519, boss_verifier, agent_id }
    }
}

impl MessageSigner<'_> {
    /// The plaintext of `header` + `body`, signed if it is a text message or
    /// a file's last chunk (the one naming the whole file's SHA-256).
    pub fn encode(&self, header: &Header, body: &[u8]) -> Vec<u8> {
        use crate::crypto::identity::{statement, statement_for_sha256};
        let time = crate::crypto::fernet::unix_now();
        let statement = match &header.kind {
            protocol::Kind::Text => statement(&self.boss_ed25519, self.agent_id, &header.id, "text", body, time),
            protocol::Kind::FileChunk(protocol::FileChunk { file_id, sha256: Some(sha256), .. }) => {
                statement_for_sha256(&self.boss_ed25519, self.agent_id, file_id, "file", sha256, time)
            }
            // Earlier chunks and offset queries are not signed: the channel
            // key authenticates them (PROTOCOL.md, "Signed messages and files").
            protocol::Kind::FileChunk(_) | protocol::Kind::Offset { .. } => {
                return protocol::encode_message(header, body);
            }
        };
        let sigs = crate::crypto::minisign::sign_statement(self.keys, &statement);
        let sig = protocol::MessageSig { time, signature: sigs.signature, trusted: Some(sigs.trusted) };
        protocol::encode_signed_message(header, body, &sig)
    }
}

impl MessageSigner<'_> {
    /// The ACK's receipt, checked: signed by the pinned Boss key over this
    /// agent, message id, body hash, status and the receipt's time.
    pub(crate) fn check_receipt(&self, header: &protocol::AckHeader, body_sha256: &str) -> Result<Receipt, SendError> {
        let bad = SendError::BadAck;
        let (Some(time), Some(sig)) = (header.ts, &header.sig) else { return Err(bad(AckError::NoReceipt)) };
        let mut signature = [0u8; 64];
        hex::decode_to_slice(sig, &mut signature).map_err(|_| bad(AckError::BadReceipt))?;
        let statement = crate::crypto::identity::receipt(
            &self.boss_ed25519,
            self.agent_id,
            &header.id,
            body_sha256,
            header.status.as_str(),
            time,
        );
        // A pinned key that is not a curve point verifies nothing.
        let verifier = self.boss_verifier.ok_or(bad(AckError::BadReceipt))?;
        verifier.verify(&statement, &signature).map_err(|_| bad(AckError::BadReceipt))?;
        Ok(Receipt { statement: String::from_utf8_lossy(&statement).into_owned(), signature })
    }
}

impl InFlight {
    fn push(&mut self, header: Header, body: &[u8], signer: Option<&MessageSigner<'_>>) {
        let (plaintext, body_sha256) = match signer {
            Some(signer) => {
                use sha2::{Digest, Sha256};
                (signer.encode(&header, body), Some(hex::encode(Sha256::digest(body))))
            }
            None => (protocol::encode_message(&header, body), None),
        };
        self.queue.push_back(Outgoing { header, plaintext, sealed_ahead: None, body_len: body.len(), body_sha256 });
    }

    fn on_wire(&self) -> usize {
        self.on_wire.max(1)
    }
}

/// One agent's connection to the Boss, reused across messages.
pub struct Sender<'k> {
    config: ClientConfig,
    agent_id: i64,
    key: &'k FernetKey,
    signer: Option<MessageSigner<'k>>,
    conn: Option<BufReader<TcpStream>>,
    /// File chunk bytes written to the Boss so far, resends included.
    chunk_bytes_written: u64,
}

/// What [`Sender::exchange`] does between writing and reading the reply:
/// prepare the next message while the Boss works on the written ones.
type Ahead<'a, 'k> = &'a mut dyn FnMut(&Sender<'k>, &mut InFlight);

impl<'k> Sender<'k> {
    pub fn new(config: ClientConfig, agent_id: i64, key: &'k FernetKey) -> Self {
        Sender { config, agent_id, key, signer: None, conn: None, chunk_bytes_written: 0 }
    }

    /// Signs every text message (an enrolled agent's sender).
    pub fn with_signer(mut self, signer: Option<MessageSigner<'k>>) -> Self {
        self.signer = signer;
        self
    }

    /// Sends one message and waits until the Boss has stored it.
    pub fn send(&mut self, header: &Header, body: &[u8]) -> Result<Delivered, SendError> {
        let mut in_flight = InFlight::default();
        in_flight.push(header.clone(), body, self.signer.as_ref());
        self.next_ack(&mut in_flight, &mut |_, _| {}).map(|(_, delivered)| delivered)
    }

    /// Sends a stream of messages with up to `window` in flight on one
    /// connection (the Boss answers in order), so sealing, the network and the
    /// Boss's fsync overlap. With `prepare_next` (file chunks: large, so
    /// sealing one takes about as long as the Boss's work on another), the
    /// next message is read and sealed while the Boss works on those; it goes
    /// on the wire only once the front one is answered, so never more than
    /// `window` are on the wire. Without it (small messages, `boss bench`),
    /// a message is taken from `messages` only when it can go on the wire,
    /// so a caller timing from that moment measures the round trip alone. `delivered` is
    /// told of each ACK in order, with the message's header and body length.
    /// Returns the last ACK, or `None` if `messages` yielded nothing. On a
    /// lost connection or a retryable `ERR`, every unacknowledged message is
    /// resent, re-sealed, with its id.
    pub fn send_stream<E>(
        &mut self,
        window: usize,
        prepare_next: bool,
        messages: impl IntoIterator<Item = Result<(Header, Vec<u8>), E>>,
        mut delivered: impl FnMut(&Header, usize, &Delivered),
    ) -> Result<Option<Delivered>, StreamError<E>> {
        let mut messages = messages.into_iter().fuse();
        let mut in_flight = InFlight { on_wire: window.max(1), ..InFlight::default() };
        let mut failed_ahead = None;
        let mut last = None;
        loop {
            while in_flight.queue.len() < in_flight.on_wire() {
                let Some(message) = messages.next() else { break };
                let (header, body) = message.map_err(StreamError::Source)?;
                in_flight.push(header, &body, self.signer.as_ref());
            }
            if in_flight.queue.is_empty() {
                return Ok(last);
            }
            let mut ahead = |sender: &Sender<'k>, in_flight: &mut InFlight| {
                if !prepare_next || in_flight.queue.len() > in_flight.on_wire() || failed_ahead.is_some() {
                    return;
                }
                match messages.next() {
                    Some(Ok((header, body))) => {
                        in_flight.push(header, &body, sender.signer.as_ref());
                        if let Some(next) = in_flight.queue.back_mut() {
                            next.sealed_ahead = Some(sender.request_line(&next.plaintext));
                        }
                    }
                    // Reported once the messages before it are answered.
                    Some(Err(e)) => failed_ahead = Some(e),
                    None => {}
                }
            };
            let (done, ack) = self.next_ack(&mut in_flight, &mut ahead).map_err(StreamError::Send)?;
            delivered(&done.header, done.body_len, &ack);
            last = Some(ack);
            if let Some(e) = failed_ahead.take() {
                return Err(StreamError::Source(e));
            }
        }
    }

    /// Gets the front message acknowledged: writes whatever this connection
    /// has not carried yet and reads one reply. A failure a retry may fix
    /// (lost connection, timeout, retryable `ERR`) starts over on a fresh
    /// connection with everything in flight, after a doubling backoff, up to
    /// the configured attempts.
    fn next_ack(&mut self, in_flight: &mut InFlight, ahead: Ahead<'_, 'k>) -> Result<(Outgoing, Delivered), SendError> {
        let (done, ack, attempts) = self.next_reply(in_flight, ahead, Self::verify_ack)?;
        Ok((done, Delivered { attempts, ..ack }))
    }

    /// Asks the Boss how much of upload `file_id` it durably holds for this
    /// agent (PROTOCOL.md, "Resuming a file"), with the same retries as a
    /// message. The answer must open under this agent's key and echo the
    /// query's fresh id, like an ACK; it carries no receipt.
    pub fn query_offset(&mut self, file_id: &str) -> Result<protocol::Committed, SendError> {
        let mut in_flight = InFlight::default();
        let header = Header { id: random_id(), kind: protocol::Kind::Offset { file_id: file_id.to_string() } };
        // Unsigned whatever the signer: nothing is filed.
        in_flight.push(header, b"", None);
        let (_, committed, _) = self.next_reply(&mut in_flight, &mut |_, _| {}, |sender, done, token| {
            let opened = sender.key.open(token, None).map_err(|e| SendError::BadAck(AckError::Token(e)))?;
            let reply = protocol::decode_offset_reply(&opened.plaintext)
                .map_err(|e| SendError::BadAck(AckError::Malformed(e)))?;
            if reply.id != done.header.id {
                return Err(SendError::BadAck(AckError::OtherMessage {
                    expected: done.header.id.clone(),
                    acked: reply.id,
                }));
            }
            Ok(reply.committed)
        })?;
        Ok(committed)
    }

    /// [`Self::next_ack`] with the ACK's token checked by `verify`; also
    /// returns the attempts it took.
    fn next_reply<T>(
        &mut self,
        in_flight: &mut InFlight,
        ahead: Ahead<'_, 'k>,
        verify: impl Fn(&Self, &Outgoing, &[u8]) -> Result<T, SendError>,
    ) -> Result<(Outgoing, T, u32), SendError> {
        let mut attempt = 1u32;
        let mut backoff = self.config.backoff;
        loop {
            let failure = match self.exchange(in_flight, ahead) {
                Err(e) => AttemptError::Io(e),
                Ok(reply) => match protocol::parse_reply(&reply) {
                    Ok(Reply::Ack { token }) => {
                        let done = in_flight.queue.pop_front().expect("a reply answers a message in flight");
                        in_flight.written -= 1;
                        let checked = verify(self, &done, token)?;
                        return Ok((done, checked, attempt));
                    }
                    Ok(Reply::Err { code, text }) if code.is_retryable() => AttemptError::Refused { code, text },
                    Ok(Reply::Err { code, text }) => return Err(SendError::Refused { code, text }),
                    Err(e) => return Err(SendError::BadAck(AckError::Malformed(e))),
                },
            };
            self.conn = None;
            in_flight.written = 0;
            // Whatever goes out on the next connection is sealed then, after
            // the backoff, not before it: a token stays inside the Boss's
            // freshness window however long the retries take.
            for item in &mut in_flight.queue {
                item.sealed_ahead = None;
            }
            if attempt >= self.config.attempts.max(1) {
                return Err(SendError::Unreachable {
                    addr: self.config.addr.clone(),
                    attempts: attempt,
                    last: failure,
                });
            }
            tracing::debug!(attempt, error = %failure, in_flight = in_flight.queue.len(), "interrupted; resending");
            attempt += 1;
            std::thread::sleep(backoff);
            backoff = backoff.saturating_mul(2);
        }
    }

    /// One exchange: writes each message in flight this connection has not
    /// carried (sealed now), then reads the next reply line.
    /// Writes what may go on the wire and is not on it yet, runs `ahead`
    /// while the Boss works, then reads one reply.
    fn exchange(&mut self, in_flight: &mut InFlight, ahead: Ahead<'_, 'k>) -> io::Result<Vec<u8>> {
        let on_wire = in_flight.on_wire();
        while in_flight.written < in_flight.queue.len().min(on_wire) {
            let item = &mut in_flight.queue[in_flight.written];
            let line = item.sealed_ahead.take().unwrap_or_else(|| self.request_line(&item.plaintext));
            let chunk_bytes = match &item.header.kind {
                protocol::Kind::FileChunk(chunk) => {
                    log_chunk_queued(chunk.offset, chunk.offset + item.body_len as u64);
                    item.body_len
                }
                _ => 0,
            };
            // Behind unanswered requests, bytes waiting on the socket are
            // their replies, so the reuse check applies to the first only.
            self.write_line(line.as_bytes(), in_flight.written == 0)?;
            in_flight.written += 1;
            self.chunk_bytes_written += chunk_bytes as u64;
        }
        ahead(self, in_flight);
        self.read_reply()
    }

    /// The request line carrying `plaintext`, sealed now: what
    /// [`protocol::format_request`] makes, with the token sealed straight
    /// into the line (a file chunk's is ~700 KB, not worth a second copy).
    fn request_line(&self, plaintext: &[u8]) -> String {
        let prefix = format!("MSG {} ", self.agent_id);
        let mut line = String::with_capacity(prefix.len() + FernetKey::token_len(plaintext.len()) + 1);
        line.push_str(&prefix);
        self.key.seal_into(plaintext, &mut line);
        line.push('\n');
        line
    }

    fn verify_ack(&self, done: &Outgoing, token: &[u8]) -> Result<Delivered, SendError> {
        let id = done.header.id.as_str();
        // No TTL: the ACK must echo this message's fresh random id, so an old
        // ACK cannot stand in for it, and the Boss's clock need not match ours.
        let opened = self.key.open(token, None).map_err(|e| SendError::BadAck(AckError::Token(e)))?;
        let (header, reply) =
            protocol::decode_ack(&opened.plaintext).map_err(|e| SendError::BadAck(AckError::Malformed(e)))?;
        if header.id != id {
            return Err(SendError::BadAck(AckError::OtherMessage { expected: id.to_string(), acked: header.id }));
        }
        // An enrolled agent checks the receipt against the Boss key it
        // pinned: nothing else could have signed it.
        let receipt = match (&self.signer, &done.body_sha256) {
            (Some(signer), Some(body_sha256)) => Some(signer.check_receipt(&header, body_sha256)?),
            _ => None,
        };
        Ok(Delivered { status: header.status, reply, attempts: 1, receipt })
    }

    fn connect(&self) -> io::Result<TcpStream> {
        super::try_each_address(self.config.addr.as_str(), |addr| {
            let s = TcpStream::connect_timeout(&addr, self.config.timeout)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(self.config.timeout))?;
            s.set_write_timeout(Some(self.config.timeout))?;
            Ok(s)
        })
    }

    /// Writes one request line, connecting first if needed. `first` says no
    /// earlier request on this connection awaits its answer, so anything
    /// already waiting on a kept connection is unsolicited.
    fn write_line(&mut self, line: &[u8], first: bool) -> io::Result<()> {
        if first && self.conn.as_ref().is_some_and(|c| !is_reusable(c)) {
            // The Boss closed the kept connection (idle timeout, shutdown); its
            // goodbye line is not the answer to this request: start afresh.
            self.conn = None;
        }
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => BufReader::new(self.connect()?),
        };
        self.conn.insert(conn).get_mut().write_all(line)
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
}

/// Why a stream of messages stopped.
#[derive(Debug)]
pub enum StreamError<E> {
    /// The message source failed (e.g. reading the file).
    Source(E),
    Send(SendError),
}

impl<E: std::fmt::Display> std::fmt::Display for StreamError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamError::Source(e) => e.fmt(f),
            StreamError::Send(e) => e.fmt(f),
        }
    }
}

/// Transparent: each variant's message is its inner error's, so its cause
/// is the inner error's cause.
impl<E: std::error::Error> std::error::Error for StreamError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StreamError::Source(e) => e.source(),
            StreamError::Send(e) => e.source(),
        }
    }
}

/// A stream whose source cannot fail can only fail sending.
impl From<StreamError<std::convert::Infallible>> for SendError {
    fn from(e: StreamError<std::convert::Infallible>) -> SendError {
        match e {
            StreamError::Source(never) => match never {},
            StreamError::Send(e) => e,
        }
    }
}

/// Whether a kept connection can carry another request: nothing unsolicited
/// is waiting on it (that would be the Boss's goodbye) and it is not closed.
fn is_reusable(conn: &BufReader<TcpStream>) -> bool {
    conn.buffer().is_empty() && super::peek_unread(conn.get_ref()) == super::Unread::Nothing
}

/// Why a file could not be sent.
#[derive(Debug)]
pub enum FileSendError {
    Read(io::Error),
    Send(SendError),
    /// Over a v2 session (`send --protocol v2 --file`).
    V2(super::v2_client::V2Error),
}

impl std::fmt::Display for FileSendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileSendError::Read(_) => f.write_str("cannot read the file"),
            FileSendError::Send(e) => e.fmt(f),
            FileSendError::V2(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for FileSendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FileSendError::Read(e) => Some(e),
            // Transparent: the message is the send error's own.
            FileSendError::Send(e) => e.source(),
            FileSendError::V2(e) => e.source(),
        }
    }
}

/// Chunks `send --file` keeps in flight: one. An interruption (either side
/// killed, the network cut) then loses at most the one chunk not yet
/// acknowledged, and a resume re-sends at most that chunk (issue 14's bound;
/// four in flight re-sent up to four). The sender still reads and seals the
/// next chunk while the Boss handles this one ([`Sender::send_stream`]); what
/// one on the wire costs is the overlap of the transfer and the Boss's work
/// with the next chunk (BENCHMARKS.md, "Issue 15: the Fernet seal and the
/// 64 MiB v1 file").
pub const FILE_WINDOW: usize = 1;

/// One file to send: where it is, what the Boss records, and the upload it
/// belongs to. `size` and `sha256` are the file's as hashed before sending
/// ([`hash_file`]); the last chunk carries that `sha256`, so a file changed
/// since is refused by the Boss's check, never recorded.
#[derive(Debug, Clone)]
pub struct Upload<'a> {
    pub path: &'a std::path::Path,
    pub name: &'a str,
    pub file_id: String,
    pub size: u64,
    pub sha256: String,
}

/// The size and SHA-256 (hex) of the file at `path`, in one read.
pub fn hash_file(path: &std::path::Path) -> io::Result<(u64, String)> {
    use sha2::{Digest, Sha256};
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// Where an upload resumes, from the Boss's answer to an offset query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeFrom {
    /// Send the chunks from this offset on.
    Offset(u64),
    /// The Boss already recorded this very file: nothing to send.
    Done { size: u64, sha256: String },
    /// The Boss holds another file under this id (its pinned size or its
    /// recorded hash differs): start over under a new id.
    Mismatch(&'static str),
}

/// The resume rule (PROTOCOL.md, "Resuming a file"): nothing held, start at
/// 0; part held, go on from its offset, or if every byte is held but the
/// file is not recorded, send the last chunk (of `chunk_bytes`, the
/// transport's) again (it is what records it); recorded, done if it is this
/// file.
pub fn resume_point(committed: &protocol::Committed, size: u64, sha256: &str, chunk_bytes: usize) -> ResumeFrom {
    match committed {
        protocol::Committed::None => ResumeFrom::Offset(0),
        protocol::Committed::Partial { size: pinned, .. } if *pinned != size => {
            ResumeFrom::Mismatch("the Boss's partial upload has another size")
        }
        protocol::Committed::Partial { offset, .. } if *offset < size => ResumeFrom::Offset(*offset),
        protocol::Committed::Partial { .. } => ResumeFrom::Offset(size.saturating_sub(size.min(chunk_bytes as u64))),
        protocol::Committed::Complete { size: got, sha256: got_sha } if *got == size && got_sha == sha256 => {
            ResumeFrom::Done { size, sha256: sha256.to_string() }
        }
        protocol::Committed::Complete { .. } => ResumeFrom::Mismatch("the Boss recorded another file under this id"),
    }
}

/// What [`send_file`] did.
#[derive(Debug)]
pub struct FileSent {
    /// The last chunk's ACK (or, if the Boss had the file already, a
    /// `duplicate` built from its offset answer, with no receipt).
    pub delivered: Delivered,
    /// Chunk bytes put on the wire, resends after an interruption included.
    pub bytes_sent: u64,
    /// Connections lost (or retryable refusals) it resumed after, in process.
    pub interruptions: u32,
}

/// Sends `upload` from offset `start` as chunks of at most
/// [`protocol::CHUNK_BYTES`], in order, each its own message with its own
/// id, up to `window` in flight; the last carries the whole file's SHA-256.
/// A lost connection or a retryable `ERR` is not answered by resending the
/// chunks in flight blindly: after a backoff it asks the Boss for the
/// committed offset and goes on from there, so what the Boss holds is never
/// sent again (up to the sender's attempts in a row without progress).
/// `progress` is told the bytes the Boss holds so far.
pub fn send_file(
    sender: &mut Sender<'_>,
    upload: &Upload<'_>,
    start: u64,
    window: usize,
    mut progress: impl FnMut(u64, u64),
) -> Result<FileSent, FileSendError> {
    tracing::debug!(resumed_from = start, "file upload starts");
    let attempts = sender.config.attempts.max(1);
    let mut backoff = sender.config.backoff;
    let mut from = start;
    let mut bytes_sent = 0u64;
    let mut interruptions = 0u32;
    let mut stalled = 0u32;
    loop {
        // One attempt per stream: the retry is this loop's, offset-aware.
        sender.config.attempts = 1;
        let mut held = from;
        let result = stream_chunks(sender, upload, from, window, &mut bytes_sent, |acked| {
            held = acked;
            progress(acked, upload.size);
        });
        sender.config.attempts = attempts;
        let failure = match result {
            Ok(delivered) => return Ok(FileSent { delivered, bytes_sent, interruptions }),
            Err(FileSendError::Send(e @ SendError::Unreachable { .. })) => e,
            Err(e) => return Err(e),
        };
        stalled = if held > from { 1 } else { stalled + 1 };
        if stalled >= attempts {
            return Err(FileSendError::Send(failure));
        }
        interruptions += 1;
        tracing::debug!(error = %failure, held, "file upload interrupted; asking the Boss where to resume");
        std::thread::sleep(backoff);
        backoff = backoff.saturating_mul(2).min(Duration::from_secs(5));
        let committed = sender.query_offset(&upload.file_id).map_err(FileSendError::Send)?;
        match resume_point(&committed, upload.size, &upload.sha256, protocol::CHUNK_BYTES) {
            ResumeFrom::Offset(offset) => from = offset,
            ResumeFrom::Done { size, sha256 } => {
                return Ok(FileSent { delivered: already_received(size, &sha256), bytes_sent, interruptions });
            }
            ResumeFrom::Mismatch(why) => {
                return Err(FileSendError::Read(io::Error::other(format!("cannot resume: {why}"))));
            }
        }
        tracing::debug!(resumed_from = from, "file upload resumed");
    }
}

/// The `duplicate` a file the Boss already recorded gets, from its offset
/// answer (sealed under the agent's key; no receipt, nothing was filed now).
pub fn already_received(size: u64, sha256: &str) -> Delivered {
    Delivered {
        status: AckStatus::Duplicate,
        reply: format!("File already received: {size} bytes, SHA-256 {sha256}."),
        attempts: 1,
        receipt: None,
    }
}

/// Logs a file chunk about to be written to the Boss (v1 or v2), at debug
/// under this module's target: the bench and the tests read these lines
/// (after a kill -9 too) as an upper bound of what reached the wire.
pub(crate) fn log_chunk_queued(offset: u64, end: u64) {
    tracing::debug!(offset, end, "file chunk queued");
}

/// Reads an upload's chunks from an offset on, as messages: each its own
/// id, at most `chunk_bytes` of the file, the last naming the whole file's
/// SHA-256. Shared by v1 (chunks of [`protocol::CHUNK_BYTES`]) and v2 (of
/// [`super::v2::FILE_CHUNK_BYTES`]).
pub struct ChunkReader<'u> {
    upload: &'u Upload<'u>,
    file: std::fs::File,
    chunk_bytes: usize,
    read_to: u64,
    done: bool,
}

impl<'u> ChunkReader<'u> {
    pub fn open(upload: &'u Upload<'u>, from: u64, chunk_bytes: usize) -> io::Result<Self> {
        use std::io::Seek;
        let mut file = std::fs::File::open(upload.path)?;
        file.seek(io::SeekFrom::Start(from))?;
        Ok(ChunkReader { upload, file, chunk_bytes, read_to: from, done: false })
    }

    /// The next chunk's header and bytes; None once the last was read. An
    /// empty file is one empty chunk.
    pub fn next_chunk(&mut self) -> io::Result<Option<(Header, Vec<u8>)>> {
        if self.done {
            return Ok(None);
        }
        let size = self.upload.size;
        let want = (size - self.read_to).min(self.chunk_bytes as u64) as usize;
        let mut chunk = vec![0u8; want];
        self.file
            .read_exact(&mut chunk)
            .map_err(|e| io::Error::new(e.kind(), format!("{e} (did the file change while it was being sent?)")))?;
        let offset = self.read_to;
        self.read_to += want as u64;
        self.done = self.read_to == size;
        let sha256 = self.done.then(|| self.upload.sha256.clone());
        let header = Header {
            id: random_id(),
            kind: protocol::Kind::FileChunk(protocol::FileChunk {
                file_id: self.upload.file_id.clone(),
                name: self.upload.name.to_string(),
                offset,
                size,
                sha256,
            }),
        };
        Ok(Some((header, chunk)))
    }
}

/// One pass of [`send_file`] from `from`, on the sender's current settings.
fn stream_chunks(
    sender: &mut Sender<'_>,
    upload: &Upload<'_>,
    from: u64,
    window: usize,
    bytes_sent: &mut u64,
    mut held: impl FnMut(u64),
) -> Result<Delivered, FileSendError> {
    let mut reader = ChunkReader::open(upload, from, protocol::CHUNK_BYTES).map_err(FileSendError::Read)?;
    let chunks = std::iter::from_fn(|| reader.next_chunk().transpose());
    let written_before = sender.chunk_bytes_written;
    let result = sender.send_stream(window, true, chunks, |header, len, _| {
        if let protocol::Kind::FileChunk(chunk) = &header.kind {
            held(chunk.offset + len as u64);
        }
    });
    // Counted as written, not as read: a chunk read ahead and never sent is not.
    *bytes_sent += sender.chunk_bytes_written - written_before;
    let last = result.map_err(|e| match e {
        StreamError::Source(e) => FileSendError::Read(e),
        StreamError::Send(e) => FileSendError::Send(e),
    })?;
    last.ok_or_else(|| FileSendError::Read(io::Error::other("nothing was sent")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::fernet::unix_now;

    #[test]
    fn a_request_line_is_the_protocol_line_around_a_token_that_opens() {
        let key = FernetKey::from_bytes(&[3; 32]);
        let sender = Sender::new(ClientConfig::default(), 42, &key);
        let plaintext = vec![7u8; 100_000];
        let line = sender.request_line(&plaintext);
        let request = protocol::parse_request(line.as_bytes()).expect("a request line");
        assert_eq!(request.agent_id, 42);
        assert_eq!(line, protocol::format_request(42, std::str::from_utf8(request.token).expect("ASCII")));
        assert_eq!(key.open(request.token, None).expect("opens").plaintext, plaintext);
    }

    /// PROTOCOL.md and SECURITY.md say so: the ACK's age is not limited (the
    /// echoed id is what ties it to this message), its future skew is.
    #[test]
    fn an_ack_sealed_an_hour_ago_is_accepted_and_one_from_the_future_is_not() {
        let key = FernetKey::from_bytes(&[3; 32]);
        let sender = Sender::new(ClientConfig::default(), 1, &key);
        let mut in_flight = InFlight::default();
        in_flight.push(Header { id: "m1".into(), kind: protocol::Kind::Text }, b"hi", None);
        let m1 = in_flight.queue.pop_front().expect("queued");
        let ack = protocol::encode_ack("m1", AckStatus::Stored, "Good work.");
        let old = key.seal_with(&ack, unix_now() - 3600, [1; 16]);
        assert_eq!(sender.verify_ack(&m1, old.as_bytes()).expect("an hour-old ACK").reply, "Good work.");
        let ahead = key.seal_with(&ack, unix_now() + 120, [1; 16]);
        assert!(matches!(
            sender.verify_ack(&m1, ahead.as_bytes()),
            Err(SendError::BadAck(AckError::Token(TokenError::Expired)))
        ));
        let other = key.seal_with(&protocol::encode_ack("m2", AckStatus::Stored, "x"), unix_now(), [1; 16]);
        assert!(matches!(
            sender.verify_ack(&m1, other.as_bytes()),
            Err(SendError::BadAck(AckError::OtherMessage { .. }))
        ));
    }
}
