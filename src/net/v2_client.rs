//! The agent's end of a v2 connection: the Noise IK handshake against the
//! pinned Boss key, then messages out and authenticated answers back on the
//! same connection. A reply that is not an authenticated frame (a plaintext
//! `ERR` injected by someone on the path, a bit flipped) is refused as such,
//! never taken for the Boss's answer.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::protocol::{self, AckHeader, ErrorCode};
use super::v2::{self, ChatLine, ChatStatus, ChatText, Frame, Hello, JoinChat, LineKind, Welcome};
use crate::crypto::{IdentityKeys, PublicIdentity, noise};

/// What went wrong on a v2 connection.
#[derive(Debug)]
pub enum V2Error {
    Io(std::io::Error),
    /// The handshake did not complete: the Boss's static key is not the pinned
    /// one, or the Boss refused before any key was agreed (its words, which
    /// nothing authenticates, are kept for the message).
    Handshake(String),
    /// An answer that failed its tag or was not a frame at all.
    Unauthenticated(&'static str),
    /// The Boss's authenticated refusal.
    Refused {
        code: ErrorCode,
        text: String,
    },
    /// The Boss closed the connection.
    Closed,
    /// The Boss answered the handshake `busy` (unauthenticated: nothing was
    /// agreed yet), still after the retries.
    Busy(String),
}

impl std::fmt::Display for V2Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            V2Error::Io(_) => f.write_str("the v2 connection failed"),
            V2Error::Handshake(why) => write!(f, "the v2 handshake failed: {why}"),
            V2Error::Unauthenticated(what) => write!(f, "refused an unauthenticated answer: {what}"),
            V2Error::Refused { code, text } => write!(f, "the Boss refused the message ({code}): {text}"),
            V2Error::Closed => f.write_str("the Boss closed the v2 connection"),
            V2Error::Busy(text) => {
                write!(f, "the Boss is busy and refused the v2 handshake: {text} (not authenticated)")
            }
        }
    }
}

impl std::error::Error for V2Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            V2Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for V2Error {
    fn from(e: std::io::Error) -> Self {
        V2Error::Io(e)
    }
}

/// How long to wait before each retry of a handshake answered `busy`.
const BUSY_BACKOFF: [Duration; 3] = [Duration::from_millis(250), Duration::from_millis(500), Duration::from_secs(1)];

/// An open, authenticated v2 connection.
pub struct V2Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    transport: snow::TransportState,
    buf: Vec<u8>,
    /// The Boss's clock minus ours, when more than [`v2::MAX_SKEW_SECS`].
    pub skew: Option<i64>,
}

impl V2Client {
    /// Connects and runs the handshake as agent `agent_id` with identity
    /// `me`, requiring the Boss to hold the static key of `boss`.
    pub fn connect(
        addr: &str,
        timeout: Duration,
        me: &IdentityKeys,
        boss: &PublicIdentity,
        agent_id: i64,
    ) -> Result<V2Client, V2Error> {
        // `busy` is the Boss's per-address handshake budget (or its load):
        // worth a few tries with backoff, on a new connection each.
        let mut waits = BUSY_BACKOFF.iter();
        loop {
            let stream = super::try_each_address(addr, |a| TcpStream::connect_timeout(&a, timeout))?;
            stream.set_read_timeout(Some(timeout))?;
            stream.set_write_timeout(Some(timeout))?;
            let _ = stream.set_nodelay(true);
            match (Self::over(stream, me, boss, agent_id), waits.next()) {
                (Err(V2Error::Busy(_)), Some(wait)) => std::thread::sleep(*wait),
                (result, _) => return result,
            }
        }
    }

    /// The handshake over an open stream (tests put a recorder in between).
    pub fn over(
        stream: TcpStream,
        me: &IdentityKeys,
        boss: &PublicIdentity,
        agent_id: i64,
    ) -> Result<V2Client, V2Error> {
        let mut handshake =
            noise::initiator(me, &boss.x25519).map_err(|e| V2Error::Handshake(format!("cannot start: {e}")))?;
        let hello = serde_json::to_vec(&Hello { v: 2, agent: agent_id, time: crate::crypto::fernet::unix_now() })
            .expect("a Hello always encodes");
        let mut buf = vec![0u8; noise::MAX_MESSAGE];
        let n = handshake.write_message(&hello, &mut buf).map_err(|e| V2Error::Handshake(e.to_string()))?;
        let mut writer = stream.try_clone()?;
        writer.write_all(v2::format_line(LineKind::Handshake, &buf[..n]).as_bytes())?;
        let mut reader = BufReader::new(stream);
        let line = read_line(&mut reader)?;
        match protocol::parse_reply(&line) {
            Ok(protocol::Reply::Err { code: ErrorCode::Busy, text }) => return Err(V2Error::Busy(text)),
            Ok(protocol::Reply::Err { code, text }) => {
                return Err(V2Error::Handshake(format!("the Boss answered `{code}: {text}` (not authenticated)")));
            }
            _ => {}
        }
        let (kind, message) = v2::parse_line(&line).map_err(|_| V2Error::Unauthenticated("not a handshake line"))?;
        if kind != LineKind::Handshake {
            return Err(V2Error::Unauthenticated("not a handshake line"));
        }
        let mut payload = vec![0u8; noise::MAX_MESSAGE];
        let n = handshake.read_message(&message, &mut payload).map_err(|_| {
            V2Error::Handshake("the answer does not come from the pinned Boss key (or was changed on the way)".into())
        })?;
        let welcome: Welcome =
            serde_json::from_slice(&payload[..n]).map_err(|_| V2Error::Unauthenticated("a malformed welcome"))?;
        let skew = v2::skew(crate::crypto::fernet::unix_now(), welcome.time);
        let transport = handshake.into_transport_mode().map_err(|e| V2Error::Handshake(e.to_string()))?;
        Ok(V2Client { reader, writer, transport, buf, skew })
    }

    /// Sends one message plaintext (header + body, signed if text) and
    /// returns the Boss's authenticated ACK.
    pub fn send(&mut self, plaintext: &[u8]) -> Result<(AckHeader, String), V2Error> {
        self.write_message(plaintext)?;
        self.read_ack()
    }

    /// Writes one message frame without waiting for its answer (a sender
    /// that keeps several in flight reads them in order with
    /// [`Self::read_ack`]). A frame too large for a Noise message is
    /// refused here, before anything is written.
    pub fn write_message(&mut self, plaintext: &[u8]) -> Result<(), V2Error> {
        let frame = Frame::Message(plaintext.to_vec()).encode();
        if frame.len() + noise::TAG > noise::MAX_MESSAGE {
            return Err(V2Error::Refused { code: ErrorCode::TooLong, text: "a v2 message is at most 64 KiB".into() });
        }
        let n = self.transport.write_message(&frame, &mut self.buf).map_err(|e| V2Error::Handshake(e.to_string()))?;
        self.writer.write_all(v2::format_line(LineKind::Transport, &self.buf[..n]).as_bytes())?;
        Ok(())
    }

    /// Writes several message frames at once, in one write (so they reach
    /// the Boss together, as a sender that fills its pipeline does), without
    /// waiting for their answers. Nothing is written if one is too large.
    pub fn write_messages(&mut self, plaintexts: &[Vec<u8>]) -> Result<(), V2Error> {
        let mut lines = String::new();
        for plaintext in plaintexts {
            let frame = Frame::Message(plaintext.clone()).encode();
            if frame.len() + noise::TAG > noise::MAX_MESSAGE {
                let text = "a v2 message is at most 64 KiB".into();
                return Err(V2Error::Refused { code: ErrorCode::TooLong, text });
            }
        }
        for plaintext in plaintexts {
            let frame = Frame::Message(plaintext.clone()).encode();
            let n =
                self.transport.write_message(&frame, &mut self.buf).map_err(|e| V2Error::Handshake(e.to_string()))?;
            lines.push_str(&v2::format_line(LineKind::Transport, &self.buf[..n]));
        }
        self.writer.write_all(lines.as_bytes())?;
        Ok(())
    }

    /// Reads the Boss's authenticated answer to the oldest message written
    /// and not yet answered.
    pub fn read_ack(&mut self) -> Result<(AckHeader, String), V2Error> {
        match self.read_frame()? {
            Frame::Ack(json) => protocol::decode_ack(&json).map_err(|_| V2Error::Unauthenticated("a malformed ACK")),
            Frame::Error(code, text) => Err(V2Error::Refused { code, text }),
            _ => Err(V2Error::Unauthenticated("an unexpected frame where an ACK was due")),
        }
    }

    /// Asks how much of upload `file_id` the Boss durably holds for this
    /// agent (frame `Q`, answered by `U`; PROTOCOL.md "Resuming a file").
    pub fn query_offset(&mut self, file_id: &str) -> Result<protocol::Committed, V2Error> {
        let id = crate::net::ids::random_id();
        let header = protocol::Header { id: id.clone(), kind: protocol::Kind::Offset { file_id: file_id.to_string() } };
        let frame = Frame::Query(protocol::encode_message(&header, b"")).encode();
        let n = self.transport.write_message(&frame, &mut self.buf).map_err(|e| V2Error::Handshake(e.to_string()))?;
        self.writer.write_all(v2::format_line(LineKind::Transport, &self.buf[..n]).as_bytes())?;
        match self.read_frame()? {
            Frame::Offset(plaintext) => match protocol::decode_offset_reply(&plaintext) {
                Ok(reply) if reply.id == id => Ok(reply.committed),
                _ => Err(V2Error::Unauthenticated("a malformed offset answer")),
            },
            Frame::Error(code, text) => Err(V2Error::Refused { code, text }),
            _ => Err(V2Error::Unauthenticated("an unexpected frame where an offset was due")),
        }
    }

    /// Confirms `stored` (orders now written durably in this home; empty on
    /// the first call) and returns the Boss's next offer of pending orders
    /// (empty when none is left). An order is confirmed only after it is on
    /// disk, so a crash in between means it is offered again, never lost.
    pub fn orders(&mut self, stored: &[String]) -> Result<Vec<v2::Order>, V2Error> {
        let frame = if stored.is_empty() {
            Frame::Fetch
        } else {
            Frame::Stored(serde_json::to_vec(stored).expect("ids always encode"))
        };
        let n = self
            .transport
            .write_message(&frame.encode(), &mut self.buf)
            .map_err(|e| V2Error::Handshake(e.to_string()))?;
        self.writer.write_all(v2::format_line(LineKind::Transport, &self.buf[..n]).as_bytes())?;
        match self.read_frame()? {
            Frame::Orders(json) => {
                serde_json::from_slice(&json).map_err(|_| V2Error::Unauthenticated("a malformed order offer"))
            }
            Frame::Error(code, text) => Err(V2Error::Refused { code, text }),
            _ => Err(V2Error::Unauthenticated("an unexpected frame where orders were due")),
        }
    }

    /// Seals and writes one frame without waiting (the download side,
    /// `v2_download`, reads its answers with [`Self::read_frame`]).
    pub fn write_frame(&mut self, frame: &Frame) -> Result<(), V2Error> {
        let n = self
            .transport
            .write_message(&frame.encode(), &mut self.buf)
            .map_err(|e| V2Error::Handshake(e.to_string()))?;
        self.writer.write_all(v2::format_line(LineKind::Transport, &self.buf[..n]).as_bytes())?;
        Ok(())
    }

    /// Reads and opens the next frame; anything unauthenticated is refused.
    pub fn read_frame(&mut self) -> Result<Frame, V2Error> {
        let line = read_line(&mut self.reader)?;
        open_frame(&mut self.transport, &line)
    }

    /// Turns the session into a live one (`listen`, `chat`): a sending half
    /// and a receiving half that work at the same time from two threads.
    /// Reads then wait without a timeout (the Boss speaks when it has
    /// something); the sender's heartbeat keeps a quiet session open.
    pub fn into_live(self) -> Result<(V2Sender, V2Receiver), V2Error> {
        self.writer.set_read_timeout(None)?;
        let transport = Arc::new(Mutex::new(self.transport));
        let sender = V2Sender { inner: Arc::new(Mutex::new(self.writer)), transport: Arc::clone(&transport) };
        Ok((sender, V2Receiver { reader: self.reader, transport }))
    }
}

/// Opens one transport line with the session's receiving key.
fn open_frame(transport: &mut snow::TransportState, line: &[u8]) -> Result<Frame, V2Error> {
    let (kind, message) = v2::parse_line(line).map_err(|_| V2Error::Unauthenticated("not a v2 frame"))?;
    if kind != LineKind::Transport {
        return Err(V2Error::Unauthenticated("a handshake line after the handshake"));
    }
    let mut plaintext = vec![0u8; message.len()];
    let n = transport
        .read_message(&message, &mut plaintext)
        .map_err(|_| V2Error::Unauthenticated("a frame that fails its tag"))?;
    Frame::decode(&plaintext[..n]).map_err(|_| V2Error::Unauthenticated("a malformed frame"))
}

/// How often a live session's sender says it is still there (well inside
/// the Boss's default idle timeout of 60 s).
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// The sending half of a live session. Cloned for a second sending thread
/// (the heartbeat); each frame is sealed and written under one lock, so
/// frames go out in nonce order.
#[derive(Clone)]
pub struct V2Sender {
    inner: Arc<Mutex<TcpStream>>,
    transport: Arc<Mutex<snow::TransportState>>,
}

impl V2Sender {
    fn send(&self, frame: Frame) -> Result<(), V2Error> {
        let plaintext = frame.encode();
        let mut buf = vec![0u8; plaintext.len() + noise::TAG];
        let mut writer = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let n = {
            let mut transport = self.transport.lock().unwrap_or_else(|p| p.into_inner());
            transport.write_message(&plaintext, &mut buf).map_err(|e| V2Error::Handshake(e.to_string()))?
        };
        writer.write_all(v2::format_line(LineKind::Transport, &buf[..n]).as_bytes())?;
        Ok(())
    }

    /// Asks the Boss to push this agent's orders as they arrive.
    pub fn listen(&self) -> Result<(), V2Error> {
        self.send(Frame::Listen)
    }

    /// Confirms pushed orders, once they are on this home's disk; on a chat
    /// session, the chat lines this side has shown (`K` either way).
    pub fn confirm(&self, stored: &[String]) -> Result<(), V2Error> {
        self.send(Frame::Stored(serde_json::to_vec(stored).expect("ids always encode")))
    }

    pub fn heartbeat(&self) -> Result<(), V2Error> {
        self.send(Frame::Heartbeat)
    }

    /// Joins a chat: `{}` for an agent's own, the agent (and the director's
    /// AgentId) for a director.
    pub fn join(&self, join: &JoinChat) -> Result<(), V2Error> {
        self.send(Frame::Join(serde_json::to_vec(join).expect("a join always encodes")))
    }

    /// Sends one chat line (at most [`v2::MAX_CHAT_BYTES`]).
    pub fn say(&self, text: &str) -> Result<(), V2Error> {
        if text.len() > v2::MAX_CHAT_BYTES {
            let text = format!("a chat line is at most {} bytes", v2::MAX_CHAT_BYTES);
            return Err(V2Error::Refused { code: ErrorCode::TooLong, text });
        }
        let json = serde_json::to_vec(&ChatText { text: text.to_string() }).expect("a line always encodes");
        self.send(Frame::Chat(json))
    }

    /// Sends a heartbeat every [`HEARTBEAT`] from a thread of its own until
    /// the returned guard is dropped; a heartbeat that cannot be sent closes
    /// the session, so the receiving half learns the connection is gone.
    pub fn keep_alive(&self) -> KeepAlive {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let sender = self.clone();
        let thread = std::thread::spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(HEARTBEAT) {
                if sender.heartbeat().is_err() {
                    sender.close();
                    break;
                }
            }
        });
        KeepAlive { stop: Some(stop), thread: Some(thread) }
    }

    /// Ends the session: the receiving half sees it closed.
    pub fn close(&self) {
        let writer = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writer.shutdown(Shutdown::Both);
    }
}

/// The heartbeat thread of a live session; stopped when dropped.
pub struct KeepAlive {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the Boss sent a live session.
#[derive(Debug)]
pub enum Pushed {
    Orders(Vec<v2::Order>),
    Chat(ChatLine),
    Status(ChatStatus),
    Heartbeat,
    /// The Boss's authenticated refusal of something this side sent.
    Refused {
        code: ErrorCode,
        text: String,
    },
}

/// The receiving half of a live session.
pub struct V2Receiver {
    reader: BufReader<TcpStream>,
    transport: Arc<Mutex<snow::TransportState>>,
}

impl V2Receiver {
    /// Waits for the Boss's next frame. Anything unauthenticated, or not a
    /// frame the Boss pushes, is an error: the session is then over.
    pub fn receive(&mut self) -> Result<Pushed, V2Error> {
        let line = read_line(&mut self.reader)?;
        let frame = open_frame(&mut self.transport.lock().unwrap_or_else(|p| p.into_inner()), &line)?;
        match frame {
            Frame::Push(json) => serde_json::from_slice(&json)
                .map(Pushed::Orders)
                .map_err(|_| V2Error::Unauthenticated("a malformed order push")),
            Frame::Chat(json) => serde_json::from_slice(&json)
                .map(Pushed::Chat)
                .map_err(|_| V2Error::Unauthenticated("a malformed chat line")),
            Frame::Join(json) => serde_json::from_slice(&json)
                .map(Pushed::Status)
                .map_err(|_| V2Error::Unauthenticated("a malformed chat status")),
            Frame::Heartbeat => Ok(Pushed::Heartbeat),
            Frame::Error(code, text) => Ok(Pushed::Refused { code, text }),
            _ => Err(V2Error::Unauthenticated("an unexpected frame on a live session")),
        }
    }
}

/// One line without its `\n`; a closed connection is [`V2Error::Closed`].
fn read_line(reader: &mut BufReader<TcpStream>) -> Result<Vec<u8>, V2Error> {
    let mut line = Vec::new();
    // The Boss's line cap bounds what it sends; one extra byte spots a runaway.
    let limit = (v2::max_line_bytes() + 1) as u64;
    let n = reader.by_ref().take(limit).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Err(V2Error::Closed);
    }
    if line.last() != Some(&b'\n') {
        return Err(V2Error::Unauthenticated("an over-long or cut line"));
    }
    line.pop();
    Ok(line)
}
