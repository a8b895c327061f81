//! The Boss's end of v2 connections (PROTOCOL.md, "Version 2"): the Noise IK
//! responder, one transport session per connection, and authenticated
//! answers. A session exists only after a handshake whose static key is the
//! enrolled identity the agent claims, or the Boss's own key (a director's
//! `chat N`, run in the Boss's home); it is dropped when its connection
//! closes. Storing goes through the same checks and group-commit writer as
//! v1 (`BossService::accept_v2_message`).
//!
//! A session that listens for orders (`L`) or joins a chat (`J`) becomes
//! *live*: the Boss then writes to it unasked (pushed orders, the other
//! side's chat lines). So every frame of a session, answers included, is
//! sealed and written under the session's lock, in nonce order, and the
//! connection thread gets empty answers to write.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::crypto::{FernetKey, noise};
use crate::db::identities::StoredIdentity;
use crate::net::protocol::ErrorCode;
use crate::net::server::{Answer, Outcome, Peer};
use crate::net::v2::{self, ChatStatus, ChatText, Frame, Hello, JoinChat, LineKind, Welcome};

use super::handshake_budget::HandshakeBudget;
use super::service::{BossService, V2Prepared, V2Text};
use super::store::WriteOp;

/// Who is on the other end of a session.
enum Who {
    /// An enrolled agent, proved by its static key.
    Agent(Box<StoredIdentity>),
    /// The Boss's own static key: a director's `chat N` from the Boss's home
    /// (only that home holds the key). `director` is the AgentId it gave.
    Director { director: i64 },
}

/// What a session is doing.
enum Mode {
    /// Request and answer only (messages, `orders`).
    Requests,
    /// `listen`: orders are pushed as they arrive; `in_flight` were pushed
    /// and are not yet confirmed (nothing more is pushed until they are).
    Listening { in_flight: Vec<String> },
    /// In the chat of `agent` (the agent's own, or a director's with it),
    /// with its channel key, derived once when the session joined (not per
    /// line).
    Chat { agent: Box<StoredIdentity>, key: Arc<FernetKey> },
}

/// One connection's agreed keys and who is on the other end.
struct Session {
    transport: snow::TransportState,
    who: Who,
    mode: Mode,
    socket: Option<Arc<TcpStream>>,
    /// Set when the connection closed or the session failed: pushers that
    /// still hold it write nothing more.
    closed: bool,
    /// Sealed answers to file chunks written without their sync, in order,
    /// and the part files (by file id) that owe it: nothing of them goes out
    /// before the sync ([`Session::flush`]).
    held: Vec<String>,
    unsynced: Vec<std::fs::File>,
    /// An agent session's channel key (its orders at rest), derived at the
    /// first order step and kept for the session.
    channel: Option<Arc<FernetKey>>,
}

impl Session {
    fn agent_side(&self) -> bool {
        matches!(self.who, Who::Agent(_))
    }

    /// Seals `frame` as the session's next `F` line and writes it at once,
    /// under the caller's lock, giving the connection thread an empty answer:
    /// frames then reach the wire in nonce order even when the session turns
    /// live in the middle of a pipelined batch (a pushed frame must never
    /// overtake an answer sealed before it). Without a socket (in-process
    /// callers), the thread writes the returned line.
    fn respond(&mut self, frame: Frame, outcome: Outcome) -> Answer {
        let answer = seal(&mut self.transport, frame, outcome);
        if self.socket.is_none() {
            return answer;
        }
        if !self.push_line(&answer.line) {
            return Answer { line: String::new(), outcome: Outcome::Refused(ErrorCode::Internal) };
        }
        Answer { line: String::new(), outcome: answer.outcome }
    }

    /// Seals and writes `frame` unasked; false (and the connection shut) if
    /// the write failed.
    fn push(&mut self, frame: Frame) -> bool {
        if self.closed {
            return false;
        }
        let line = seal(&mut self.transport, frame, Outcome::Accepted).line;
        self.push_line(&line)
    }

    /// Whether the next file chunk may be written without its sync and its
    /// answer held: only on a request session whose peer has already sent
    /// more (so another answer, synced, follows soon), and up to
    /// [`HELD_CHUNKS`] chunks.
    fn may_hold(&self) -> bool {
        self.held.len() + 1 < HELD_CHUNKS
            && matches!(self.mode, Mode::Requests)
            && self.socket.as_deref().is_some_and(crate::net::has_unread)
    }

    /// Holds the answer to a chunk whose part file owes its sync.
    fn hold(&mut self, frame: Frame, outcome: Outcome, part: std::fs::File) -> Answer {
        let line = seal(&mut self.transport, frame, outcome).line;
        self.held.push(line);
        self.owe(part);
        Answer { line: String::new(), outcome }
    }

    /// Records a part file that owes its sync, once (one sync covers every
    /// chunk written to it).
    fn owe(&mut self, part: std::fs::File) {
        use std::os::unix::fs::MetadataExt;
        let id = |f: &std::fs::File| f.metadata().map(|m| (m.dev(), m.ino())).ok();
        let known = id(&part).is_some_and(|key| self.unsynced.iter().any(|f| id(f) == Some(key)));
        if !known {
            self.unsynced.push(part);
        }
    }

    /// Syncs the part files held answers wait for, then writes those
    /// answers, in order. A failed sync ends the session without them: the
    /// chunks were never acknowledged, and the agent asks for the offset.
    fn flush(&mut self) -> bool {
        for part in self.unsynced.drain(..) {
            if let Err(e) = part.sync_data() {
                tracing::error!(error = %e, "v2: a chunk's sync failed; closing the session");
                self.held.clear();
                if let Some(socket) = &self.socket {
                    let _ = socket.shutdown(Shutdown::Both);
                }
                self.closed = true;
                return false;
            }
        }
        if self.held.is_empty() {
            return true;
        }
        let lines: String = self.held.drain(..).collect();
        self.push_line(&lines)
    }

    fn push_line(&mut self, line: &str) -> bool {
        let Some(socket) = &self.socket else { return false };
        if (&**socket).write_all(line.as_bytes()).is_ok() {
            return true;
        }
        // A peer that stopped reading: end the connection (its thread sees
        // the shut socket and closes) rather than push into it again.
        let _ = socket.shutdown(Shutdown::Both);
        self.closed = true;
        false
    }
}

/// The most file chunks whose answers wait for one sync (PROTOCOL.md,
/// "Files over v2"): as many as a sender may have in flight.
const HELD_CHUNKS: usize = crate::net::v2_upload::FILE_WINDOW;

type Shared = Arc<Mutex<Session>>;

fn lock(session: &Shared) -> MutexGuard<'_, Session> {
    session.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every open v2 session, by connection id, with the indexes the pushers
/// use, and what failed handshakes each address may still cost.
pub struct V2Sessions {
    sessions: Mutex<HashMap<u64, Shared>>,
    /// Listening sessions: connection id to agent.
    listeners: Mutex<HashMap<u64, i64>>,
    /// Chat sessions by agent: connection id and whether it is the agent's side.
    rooms: Mutex<HashMap<i64, Vec<(u64, bool)>>>,
    budget: HandshakeBudget,
}

/// One line, opened ([`V2Sessions::open`]).
#[expect(clippy::large_enum_variant, reason = "lives for one line; boxing would add an allocation per frame")]
enum Opened {
    /// A frame of the connection's session, and the agent it proved.
    Frame { shared: Shared, frame: Frame, identity: Option<StoredIdentity> },
    /// A handshake's first message (no session yet).
    Handshake(Vec<u8>),
    /// Refused before any session: a plain answer.
    Plain(Answer),
    /// Refused within the session: an authenticated error.
    Refused(Shared, ErrorCode, String),
    /// The frame failed its tag: the session ends.
    TagFailed(Shared),
}

/// A session's consecutive text messages, opened and authorised, not yet
/// committed or answered ([`V2Sessions::handle_batch`]).
#[derive(Default)]
struct Run {
    session: Option<(Shared, StoredIdentity)>,
    /// In frame order: a text to commit, or its refusal.
    texts: Vec<Result<V2Text, (ErrorCode, String)>>,
}

impl Run {
    fn push(&mut self, shared: &Shared, identity: StoredIdentity, text: Result<V2Text, (ErrorCode, String)>) {
        self.session.get_or_insert_with(|| (Arc::clone(shared), identity));
        self.texts.push(text);
    }

    /// Commits the run's texts as one writer job, then answers each, in
    /// order: its ACK, or its own error frame.
    fn answer(&mut self, service: &BossService, peer: &Peer, answers: &mut Vec<Answer>) {
        let Some((shared, identity)) = self.session.take() else { return };
        let texts = std::mem::take(&mut self.texts);
        let mut slots = Vec::with_capacity(texts.len());
        let mut to_commit = Vec::new();
        for text in texts {
            slots.push(match text {
                Ok(text) => {
                    to_commit.push(text);
                    None
                }
                Err(refusal) => Some(refusal),
            });
        }
        let mut committed = service.commit_v2_texts(&identity, to_commit, peer).into_iter();
        let mut session = lock(&shared);
        // Held chunk answers were sealed before these: they go out first,
        // after their sync.
        let flushed = session.flush();
        for slot in slots {
            let result = match slot {
                Some(refusal) => Err(refusal),
                None => committed.next().unwrap_or_else(|| Err((ErrorCode::Internal, "internal error".into()))),
            };
            if !flushed {
                answers.push(Answer { line: String::new(), outcome: Outcome::Refused(ErrorCode::Internal) });
                continue;
            }
            answers.push(match result {
                Ok((ack, new)) => {
                    session.respond(Frame::Ack(ack), if new { Outcome::Accepted } else { Outcome::Repeated })
                }
                Err((code, text)) => refuse(&mut session, code, &text),
            });
        }
    }
}

fn plain_refusal(code: ErrorCode, text: &str) -> Answer {
    Answer::refused(code, text)
}

/// An authenticated refusal, after any held answers (sealed before it, so
/// they must reach the wire first).
fn refuse(session: &mut Session, code: ErrorCode, text: &str) -> Answer {
    if !session.flush() {
        return Answer { line: String::new(), outcome: Outcome::Refused(ErrorCode::Internal) };
    }
    session.respond(Frame::Error(code, text.to_string()), Outcome::Refused(code))
}

impl V2Sessions {
    /// Sessions with a budget of `failed_handshakes_per_second` per address.
    pub fn new(failed_handshakes_per_second: u32) -> Self {
        V2Sessions {
            sessions: Mutex::default(),
            listeners: Mutex::default(),
            rooms: Mutex::default(),
            budget: HandshakeBudget::new(failed_handshakes_per_second),
        }
    }

    fn get(&self, conn: u64) -> Option<Shared> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).get(&conn).cloned()
    }

    /// Answers one v2 line from connection `peer`.
    pub fn handle(&self, service: &BossService, line: &[u8], peer: &Peer) -> Answer {
        self.handle_batch(service, &[line], peer)
            .pop()
            .unwrap_or_else(|| Answer { line: String::new(), outcome: Outcome::Refused(ErrorCode::Internal) })
    }

    /// Answers the v2 lines connection `peer` has already sent, in order.
    /// Consecutive text messages (`M`) of an agent's session form a *run*:
    /// each is authorised as it is opened, and the run is committed as one
    /// job of the group-commit writer (one transaction, one fsync, shared
    /// with other sessions' jobs) before its ACKs are sealed, in frame
    /// order, each after its own durable commit, as v1 answers the lines of
    /// a batch. A refused message of a run gets its own error frame in its
    /// place and stops none of the others. Any other frame first answers
    /// the run before it.
    pub fn handle_batch(&self, service: &BossService, lines: &[&[u8]], peer: &Peer) -> Vec<Answer> {
        let mut answers = Vec::with_capacity(lines.len());
        let mut run = Run::default();
        for line in lines {
            match self.open(line, peer) {
                Opened::Frame { shared, frame: Frame::Message(body), identity: Some(identity) } => {
                    match service.prepare_v2_text(&identity, body, peer) {
                        Ok(V2Prepared::Text(text)) => run.push(&shared, identity, Ok(text)),
                        Err(refusal) => run.push(&shared, identity, Err(refusal)),
                        // A file chunk or a stray query: its own path, unchanged.
                        Ok(V2Prepared::Other(body)) => {
                            run.answer(service, peer, &mut answers);
                            let frame = Frame::Message(body);
                            answers.push(self.dispatch(service, &shared, frame, Some(identity), peer));
                        }
                    }
                }
                Opened::Frame { shared, frame, identity } => {
                    run.answer(service, peer, &mut answers);
                    answers.push(self.dispatch(service, &shared, frame, identity, peer));
                }
                Opened::Plain(answer) => {
                    run.answer(service, peer, &mut answers);
                    answers.push(answer);
                }
                Opened::Refused(shared, code, text) => {
                    run.answer(service, peer, &mut answers);
                    answers.push(refuse(&mut lock(&shared), code, &text));
                }
                Opened::Handshake(message) => {
                    run.answer(service, peer, &mut answers);
                    answers.push(self.handshake(service, &message, peer));
                }
                Opened::TagFailed(shared) => {
                    run.answer(service, peer, &mut answers);
                    // Someone else's bytes, or a replay: the session is over
                    // (its receiving nonce can no longer be trusted to
                    // match). The answer is plain, so nothing may be pushed
                    // after it.
                    lock(&shared).closed = true;
                    self.forget(service, peer.id);
                    tracing::debug!(conn = peer.id, "v2: a frame failed its tag; session closed");
                    answers.push(plain_refusal(ErrorCode::Auth, "a frame failed its tag; the v2 session is closed"));
                }
            }
        }
        run.answer(service, peer, &mut answers);
        answers
    }

    /// Opens one line: its session's frame, or what to answer instead. Has
    /// no effect beyond the session's receiving nonce, so the caller can
    /// answer the frames before it first.
    fn open(&self, line: &[u8], peer: &Peer) -> Opened {
        let shared = self.get(peer.id);
        let (kind, message) = match v2::parse_line(line) {
            Ok(parsed) => parsed,
            Err(e) => {
                return match shared {
                    Some(shared) => Opened::Refused(shared, ErrorCode::BadRequest, e.0),
                    None => Opened::Plain(plain_refusal(ErrorCode::BadRequest, &e.0)),
                };
            }
        };
        let shared = match (kind, shared) {
            (LineKind::Handshake, None) => return Opened::Handshake(message),
            (LineKind::Handshake, Some(shared)) => {
                return Opened::Refused(shared, ErrorCode::BadRequest, "the handshake is done".into());
            }
            (LineKind::Transport, None) => {
                return Opened::Plain(plain_refusal(
                    ErrorCode::BadRequest,
                    "no v2 session on this connection: start with NOISE",
                ));
            }
            (LineKind::Transport, Some(shared)) => shared,
        };
        let mut session = lock(&shared);
        let mut plaintext = vec![0u8; message.len()];
        let Ok(n) = session.transport.read_message(&message, &mut plaintext) else {
            drop(session);
            return Opened::TagFailed(shared);
        };
        plaintext.truncate(n);
        let frame = match Frame::decode(&plaintext) {
            Ok(frame) => frame,
            Err(e) => {
                drop(session);
                return Opened::Refused(shared, ErrorCode::BadRequest, e.0);
            }
        };
        let identity = match &session.who {
            Who::Agent(identity) => Some((**identity).clone()),
            Who::Director { .. } => None,
        };
        drop(session);
        Opened::Frame { shared, frame, identity }
    }

    /// Answers one opened frame (every frame but a run's texts).
    fn dispatch(
        &self,
        service: &BossService,
        shared: &Shared,
        frame: Frame,
        identity: Option<StoredIdentity>,
        peer: &Peer,
    ) -> Answer {
        let mut session = lock(shared);
        // Held answers go out before anything else is answered or pushed,
        // and only after their chunks' sync.
        let chunk_frame = matches!((&frame, &identity), (Frame::Message(_), Some(_)));
        if !chunk_frame && !session.flush() {
            return Answer { line: String::new(), outcome: Outcome::Refused(ErrorCode::Internal) };
        }
        match (frame, identity) {
            (Frame::Heartbeat, _) => session.respond(Frame::Heartbeat, Outcome::Accepted),
            (Frame::Join(json), _) => self.join(service, session, peer, &json),
            (Frame::Chat(json), _) => self.chat(service, session, shared, &json),
            (Frame::Message(body), Some(identity)) => {
                let mut owed = None;
                let may_hold = session.may_hold();
                let result =
                    service.accept_v2_message(identity.agent_id, &identity, &body, peer, may_hold.then_some(&mut owed));
                let result =
                    result.map(|(ack, new)| (Frame::Ack(ack), if new { Outcome::Accepted } else { Outcome::Repeated }));
                match (result, owed) {
                    (Ok((frame, outcome)), Some(part)) => session.hold(frame, outcome, part),
                    (result, owed) => {
                        // Nothing is held past an answer that goes out now.
                        if let Some(part) = owed {
                            session.owe(part);
                        }
                        if !session.flush() {
                            return Answer { line: String::new(), outcome: Outcome::Refused(ErrorCode::Internal) };
                        }
                        match result {
                            Ok((frame, outcome)) => session.respond(frame, outcome),
                            Err((code, text)) => refuse(&mut session, code, &text),
                        }
                    }
                }
            }
            (Frame::Stored(json), _) if matches!(session.mode, Mode::Chat { .. }) => {
                confirm_shown(service, &mut session, &json)
            }
            (Frame::Fetch, Some(identity)) => {
                if matches!(session.mode, Mode::Listening { .. }) {
                    return refuse(&mut session, ErrorCode::BadRequest, "a listening session gets orders pushed");
                }
                offer(service, &mut session, &identity, &[])
            }
            (Frame::Stored(json), Some(identity)) => match serde_json::from_slice::<Vec<String>>(&json) {
                Ok(ids) if ids.len() <= 1024 => {
                    if matches!(session.mode, Mode::Listening { .. }) {
                        confirm_pushed(service, &mut session, &identity, &ids)
                    } else {
                        offer(service, &mut session, &identity, &ids)
                    }
                }
                _ => refuse(&mut session, ErrorCode::BadRequest, "K carries a JSON array of at most 1024 order ids"),
            },
            (Frame::Query(query), Some(identity)) => match service.offset_query(identity.agent_id, &query, peer) {
                // A question, not stored work: it does not keep the connection alive.
                Ok(reply) => session.respond(Frame::Offset(reply), Outcome::Repeated),
                Err((code, text)) => refuse(&mut session, code, &text),
            },
            (Frame::Listen, Some(identity)) => {
                if !matches!(session.mode, Mode::Requests) {
                    return refuse(&mut session, ErrorCode::BadRequest, "this session already listens or chats");
                }
                if session.socket.is_none() {
                    return refuse(&mut session, ErrorCode::Internal, "this server cannot push");
                }
                // Registered before the backlog is read, under the session's
                // lock: an order committed meanwhile is pushed by the
                // dispatcher once this answer is out, never lost.
                session.mode = Mode::Listening { in_flight: Vec::new() };
                self.listeners.lock().unwrap_or_else(|p| p.into_inner()).insert(peer.id, identity.agent_id);
                tracing::debug!(conn = peer.id, agent = identity.agent_id, "v2: listening for orders");
                match orders_step(service, &mut session, &identity, &[]) {
                    Ok((orders, _)) => push_orders(&mut session, orders, true),
                    Err((code, text)) => refuse(&mut session, code, &text),
                }
            }
            (Frame::GetFile(json), Some(identity)) => send_file_chunks(service, &mut session, &identity, &json),
            (Frame::FileDone(json), Some(identity)) => match serde_json::from_slice::<v2::FileDone>(&json) {
                Ok(done) => match service.order_file_done(&identity, &done) {
                    Ok(()) => session.respond(Frame::FileDone(json), Outcome::Accepted),
                    Err((code, text)) => refuse(&mut session, code, &text),
                },
                Err(_) => refuse(&mut session, ErrorCode::BadRequest, "N carries {\"file\":ID,\"sha256\":HEX}"),
            },
            (
                Frame::Message(_)
                | Frame::Fetch
                | Frame::Stored(_)
                | Frame::Listen
                | Frame::Query(_)
                | Frame::GetFile(_)
                | Frame::FileDone(_),
                None,
            ) => refuse(
                &mut session,
                ErrorCode::Forbidden,
                "the Boss's own key chats only: messages and orders are for agents' keys",
            ),
            (
                Frame::Ack(_)
                | Frame::Error(..)
                | Frame::Orders(_)
                | Frame::Push(_)
                | Frame::Offset(_)
                | Frame::FileBytes { .. },
                _,
            ) => refuse(&mut session, ErrorCode::BadRequest, "that frame type goes from the Boss to agents"),
        }
    }

    /// `J`: joins the chat of one agent, answers with its state, hands over
    /// the lines that waited for this side, and tells the other side.
    fn join(&self, service: &BossService, mut session: MutexGuard<'_, Session>, peer: &Peer, json: &[u8]) -> Answer {
        if !matches!(session.mode, Mode::Requests) {
            return refuse(&mut session, ErrorCode::BadRequest, "this session already listens or chats");
        }
        if session.socket.is_none() {
            return refuse(&mut session, ErrorCode::Internal, "this server cannot push");
        }
        let Ok(join) = serde_json::from_slice::<JoinChat>(json) else {
            return refuse(&mut session, ErrorCode::BadRequest, "J carries {} or {\"agent\":N,\"director\":D}");
        };
        let agent = match (&session.who, join.agent) {
            (Who::Agent(identity), None) => (**identity).clone(),
            (Who::Agent(_), Some(_)) => {
                return refuse(&mut session, ErrorCode::Forbidden, "an agent chats in its own chat only");
            }
            (Who::Director { .. }, None) => {
                return refuse(&mut session, ErrorCode::BadRequest, "name the agent to chat with");
            }
            (Who::Director { .. }, Some(agent_id)) => match service.enrolled(agent_id) {
                Ok(Some(identity)) => identity,
                Ok(None) => {
                    let text = format!("agent {agent_id} has no enrolled identity (agent enroll, then join)");
                    return refuse(&mut session, ErrorCode::Forbidden, &text);
                }
                Err(e) => {
                    tracing::error!(error = %e, "identity lookup failed");
                    return refuse(&mut session, ErrorCode::Internal, "try again later");
                }
            },
        };
        if let (Who::Director { director }, Some(given)) = (&mut session.who, join.director) {
            *director = given;
        }
        let Some(key) = service.channel_key(&agent) else {
            return refuse(&mut session, ErrorCode::Auth, "the agent's key is unusable");
        };
        let key = Arc::new(key);
        let agent_id = agent.agent_id;
        let agent_side = session.agent_side();
        session.mode = Mode::Chat { agent: Box::new(agent.clone()), key: Arc::clone(&key) };
        let online = {
            let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
            let room = rooms.entry(agent_id).or_default();
            room.push((peer.id, agent_side));
            room.iter().any(|(_, side)| *side != agent_side)
        };
        tracing::debug!(conn = peer.id, agent = agent_id, agent_side, "v2: joined a chat");
        let status = ChatStatus { agent: agent_id, online, stored: None };
        let answer =
            session.respond(Frame::Join(serde_json::to_vec(&status).expect("a status encodes")), Outcome::Accepted);
        // The lines that waited for this side, oldest first: every line it
        // has not confirmed showing (`K`), so a side cut off before it
        // confirmed gets them again. A line stored while this runs may
        // also be pushed live; the receiver drops the second copy by id.
        match service.chat_backlog(&key, &agent, agent_side) {
            Ok(lines) => {
                for line in lines {
                    if !session.push(Frame::Chat(serde_json::to_vec(&line).expect("a line encodes"))) {
                        break;
                    }
                }
                drop(session);
            }
            Err((code, text)) => {
                session.push(Frame::Error(code, text));
                drop(session);
            }
        }
        self.tell_room(agent_id, !agent_side, true);
        answer
    }

    /// `C`: stores a line sealed, writes it to every session of the other
    /// side, and answers with the chat's state (`stored` = its id).
    fn chat(
        &self,
        service: &BossService,
        mut session: MutexGuard<'_, Session>,
        shared: &Shared,
        json: &[u8],
    ) -> Answer {
        let Mode::Chat { agent, key } = &session.mode else {
            return refuse(&mut session, ErrorCode::BadRequest, "join a chat (J) before sending lines");
        };
        let (agent, key) = ((**agent).clone(), Arc::clone(key));
        let Ok(ChatText { text }) = serde_json::from_slice::<ChatText>(json) else {
            return refuse(&mut session, ErrorCode::BadRequest, "C carries {\"text\":\"...\"}");
        };
        if text.trim().is_empty() || text.len() > v2::MAX_CHAT_BYTES {
            let why = format!("a chat line is 1 to {} bytes of text", v2::MAX_CHAT_BYTES);
            return refuse(&mut session, ErrorCode::TooLong, &why);
        }
        let agent_side = session.agent_side();
        let sender = match &session.who {
            Who::Agent(identity) => identity.agent_id,
            Who::Director { director } => *director,
        };
        let (stored, line) = super::chat::seal(&key, agent.agent_id, sender, !agent_side, &text);
        if let Err((code, why)) = service.chat_write(WriteOp::ChatLine(stored)) {
            return refuse(&mut session, code, &why);
        }
        // Never hold this session's lock while taking another's: two sides
        // sending at once would each wait for the other.
        drop(session);
        let frame = Frame::Chat(serde_json::to_vec(&line).expect("a line encodes"));
        // Written to the other side's sessions, not yet delivered: that
        // waits for the receiver's confirmation (`K`).
        let mut online = false;
        for other in self.room_sessions(agent.agent_id, !agent_side) {
            online |= lock(&other).push(frame.clone());
        }
        let status = ChatStatus { agent: agent.agent_id, online, stored: Some(line.id) };
        lock(shared).respond(Frame::Join(serde_json::to_vec(&status).expect("a status encodes")), Outcome::Accepted)
    }

    /// The sessions on one side of an agent's chat.
    fn room_sessions(&self, agent_id: i64, agent_side: bool) -> Vec<Shared> {
        let conns: Vec<u64> = {
            let rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
            rooms.get(&agent_id).map(|r| r.iter().filter(|(_, s)| *s == agent_side).map(|(c, _)| *c).collect())
        }
        .unwrap_or_default();
        conns.into_iter().filter_map(|c| self.get(c)).collect()
    }

    /// Tells one side of an agent's chat whether the other side is there.
    fn tell_room(&self, agent_id: i64, agent_side: bool, online: bool) {
        let status = ChatStatus { agent: agent_id, online, stored: None };
        let frame = Frame::Join(serde_json::to_vec(&status).expect("a status encodes"));
        for other in self.room_sessions(agent_id, agent_side) {
            lock(&other).push(frame.clone());
        }
    }

    pub fn has_listeners(&self) -> bool {
        !self.listeners.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    /// Pushes new orders to every listening session with nothing in flight.
    /// Called by the dispatcher when the outbox may have changed. A session
    /// busy on its own thread (its lock held, say by a write to a peer that
    /// stopped reading) is skipped, not waited for: returns false if any
    /// was, and the dispatcher tries again at its next tick.
    pub fn push_orders(&self, service: &BossService) -> bool {
        let listening: Vec<u64> = self.listeners.lock().unwrap_or_else(|p| p.into_inner()).keys().copied().collect();
        let mut all = true;
        for conn in listening {
            let Some(shared) = self.get(conn) else { continue };
            let mut session = match shared.try_lock() {
                Ok(session) => session,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {
                    all = false;
                    continue;
                }
            };
            let identity = match (&session.who, &session.mode) {
                (Who::Agent(identity), Mode::Listening { in_flight }) if in_flight.is_empty() && !session.closed => {
                    (**identity).clone()
                }
                _ => continue,
            };
            match orders_step(service, &mut session, &identity, &[]) {
                Ok((orders, _)) if !orders.is_empty() => {
                    push_orders(&mut session, orders, false);
                }
                Ok(_) => {}
                Err((code, text)) => {
                    session.push(Frame::Error(code, text));
                }
            }
        }
        all
    }

    /// Forgets the session of a closed connection, and tells the other side
    /// of its chat if it was the last of its side.
    pub fn closed(&self, service: &BossService, peer: &Peer) {
        self.forget(service, peer.id);
    }

    fn forget(&self, _service: &BossService, conn: u64) {
        let removed = self.sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(&conn);
        if let Some(shared) = removed {
            lock(&shared).closed = true;
        }
        self.listeners.lock().unwrap_or_else(|p| p.into_inner()).remove(&conn);
        let left = {
            let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
            let mut left = None;
            for (agent, room) in rooms.iter_mut() {
                if let Some(i) = room.iter().position(|(c, _)| *c == conn) {
                    let (_, side) = room.remove(i);
                    left = Some((*agent, side, room.iter().any(|(_, s)| *s == side)));
                }
            }
            rooms.retain(|_, room| !room.is_empty());
            left
        };
        if let Some((agent, side, still_there)) = left {
            self.tell_room(agent, !side, still_there);
        }
    }

    /// The responder's half of IK. A first message that does not open under
    /// the Boss's key gets a plain `ERR auth` (nothing was agreed, so nothing
    /// can be authenticated). One that opens completes the handshake either
    /// way, so the agent learns the answer is the Boss's; if its static key
    /// is neither the enrolled key of the agent it names nor the Boss's own
    /// (a director in the Boss's home), an authenticated error follows and
    /// no session is kept.
    fn handshake(&self, service: &BossService, message: &[u8], peer: &Peer) -> Answer {
        // Charged before any DH; given back when a session results, or when
        // the Boss itself failed (the peer should not pay for that).
        if !self.budget.try_charge(peer.addr.ip(), std::time::Instant::now()) {
            tracing::debug!(conn = peer.id, "v2: handshake refused, this address's failed-handshake budget is spent");
            return plain_refusal(
                ErrorCode::Busy,
                "too many v2 handshakes without a session from your address; try again in a second",
            );
        }
        let answer = self.answer_handshake(service, message, peer);
        if matches!(answer.outcome, Outcome::Accepted | Outcome::Refused(ErrorCode::Internal)) {
            self.budget.refund(peer.addr.ip());
        }
        answer
    }

    /// The handshake proper (see [`Self::handshake`]).
    fn answer_handshake(&self, service: &BossService, message: &[u8], peer: &Peer) -> Answer {
        let Ok(mut responder) = noise::responder(service.identity_keys()) else {
            return plain_refusal(ErrorCode::Internal, "try again later");
        };
        let mut payload = vec![0u8; noise::MAX_MESSAGE];
        let Ok(n) = responder.read_message(message, &mut payload) else {
            tracing::debug!(conn = peer.id, "v2: a handshake that does not open under this Boss's key");
            return plain_refusal(ErrorCode::Auth, "handshake failed: not for this Boss's key");
        };
        let Ok(hello) = serde_json::from_slice::<Hello>(&payload[..n]) else {
            return plain_refusal(ErrorCode::BadRequest, "handshake payload is not a hello");
        };
        let their_static: Option<[u8; 32]> = responder.get_remote_static().and_then(|k| k.try_into().ok());
        let who = if their_static == Some(service.identity_keys().public().x25519) {
            Some(Who::Director { director: hello.agent })
        } else {
            match service.enrolled(hello.agent) {
                Ok(found) => found
                    .filter(|identity| Some(identity.public.x25519) == their_static)
                    .map(|identity| Who::Agent(Box::new(identity))),
                Err(e) => {
                    tracing::error!(error = %e, "identity lookup failed");
                    return plain_refusal(ErrorCode::Internal, "try again later");
                }
            }
        };
        let welcome = serde_json::to_vec(&Welcome { time: crate::crypto::fernet::unix_now() }).expect("encodes");
        let mut buf = vec![0u8; noise::MAX_MESSAGE];
        let Ok(n) = responder.write_message(&welcome, &mut buf) else {
            return plain_refusal(ErrorCode::Internal, "try again later");
        };
        let reply = v2::format_line(LineKind::Handshake, &buf[..n]);
        let Ok(mut transport) = responder.into_transport_mode() else {
            return plain_refusal(ErrorCode::Internal, "try again later");
        };
        match who {
            Some(who) => {
                tracing::debug!(conn = peer.id, agent = hello.agent, "v2 session");
                let session = Session {
                    transport,
                    who,
                    mode: Mode::Requests,
                    socket: peer.socket.clone(),
                    closed: false,
                    held: Vec::new(),
                    unsynced: Vec::new(),
                    channel: None,
                };
                self.sessions.lock().unwrap_or_else(|p| p.into_inner()).insert(peer.id, Arc::new(Mutex::new(session)));
                // A finished mutual handshake proves the agent's key: the
                // connection counts as authentic (never evicted for a newcomer).
                Answer { line: reply, outcome: Outcome::Accepted }
            }
            None => {
                tracing::debug!(conn = peer.id, agent = hello.agent, "refused: v2 key not enrolled for this agent");
                let code = ErrorCode::Auth;
                let text = "this key is not enrolled for that agent".to_string();
                let error = seal(&mut transport, Frame::Error(code, text), Outcome::Refused(code));
                Answer { line: reply + &error.line, outcome: Outcome::Refused(code) }
            }
        }
    }
}

/// `K` on a chat session: the receiver has shown these lines. Records them
/// delivered (only lines of this chat going to this side), so they are not
/// offered again; nothing is answered.
fn confirm_shown(service: &BossService, session: &mut Session, json: &[u8]) -> Answer {
    let Mode::Chat { agent, .. } = &session.mode else {
        return refuse(session, ErrorCode::BadRequest, "K confirms lines of a chat this session joined");
    };
    let agent_id = agent.agent_id;
    let ids = match serde_json::from_slice::<Vec<String>>(json) {
        Ok(ids) if ids.len() <= 1024 => ids,
        _ => return refuse(session, ErrorCode::BadRequest, "K carries a JSON array of at most 1024 line ids"),
    };
    let to_agent = session.agent_side();
    let at = crate::crypto::fernet::unix_now() as i64;
    match service.chat_write(WriteOp::ChatDelivered { agent_id, to_agent, ids, at }) {
        Ok(()) => Answer { line: String::new(), outcome: Outcome::Accepted },
        Err((code, text)) => refuse(session, code, &text),
    }
}

/// [`BossService::orders_step`] under the session's channel key, derived
/// once per session.
fn orders_step(
    service: &BossService,
    session: &mut Session,
    identity: &StoredIdentity,
    stored: &[String],
) -> Result<(Vec<super::orders::Order>, bool), (ErrorCode, String)> {
    let key = match &session.channel {
        Some(key) => Arc::clone(key),
        None => {
            let key = service
                .channel_key(identity)
                .ok_or((ErrorCode::Auth, "the agent's key is unusable".to_string()))
                .map(Arc::new)?;
            session.channel = Some(Arc::clone(&key));
            key
        }
    };
    service.orders_step(identity, &key, stored)
}

/// Pushes `orders` to a listening session as one `P` frame and records them
/// in flight. `always`: also when empty (the answer to `L`).
fn push_orders(session: &mut Session, orders: Vec<super::orders::Order>, always: bool) -> Answer {
    if orders.is_empty() && !always {
        return Answer { line: String::new(), outcome: Outcome::Repeated };
    }
    let ids: Vec<String> = orders.iter().map(|o| o.id.clone()).collect();
    let Ok(json) = serde_json::to_vec(&orders) else {
        return refuse(session, ErrorCode::Internal, "cannot encode the orders");
    };
    if let Mode::Listening { in_flight } = &mut session.mode {
        *in_flight = ids;
    }
    session.respond(Frame::Push(json), Outcome::Accepted)
}

/// `K` on a listening session: confirms what was pushed, then pushes the
/// next batch if any is pending.
fn confirm_pushed(service: &BossService, session: &mut Session, identity: &StoredIdentity, ids: &[String]) -> Answer {
    match orders_step(service, session, identity, ids) {
        Ok((orders, confirmed)) => {
            if let Mode::Listening { in_flight } = &mut session.mode {
                in_flight.retain(|id| !ids.contains(id));
                if !in_flight.is_empty() {
                    let outcome = if confirmed { Outcome::Accepted } else { Outcome::Repeated };
                    return Answer { line: String::new(), outcome };
                }
            }
            let answer = push_orders(session, orders, false);
            if confirmed { Answer { outcome: Outcome::Accepted, ..answer } } else { answer }
        }
        Err((code, text)) => refuse(session, code, &text),
    }
}

/// Confirms `stored` (orders the agent has written durably in its home),
/// then offers what is still pending.
fn offer(service: &BossService, session: &mut Session, identity: &StoredIdentity, stored: &[String]) -> Answer {
    let (code, text) = match orders_step(service, session, identity, stored) {
        Ok((orders, confirmed)) => match serde_json::to_vec(&orders) {
            Ok(json) => {
                let outcome = if confirmed { Outcome::Accepted } else { Outcome::Repeated };
                return session.respond(Frame::Orders(json), outcome);
            }
            Err(_) => (ErrorCode::Internal, "cannot encode the orders".to_string()),
        },
        Err(refusal) => refusal,
    };
    refuse(session, code, &text)
}

/// `G`: answers with up to [`HELD_CHUNKS`] `B` frames of an order's file,
/// each sealed and written in order (PROTOCOL.md, "Files with orders").
fn send_file_chunks(service: &BossService, session: &mut Session, identity: &StoredIdentity, json: &[u8]) -> Answer {
    let Ok(ask) = serde_json::from_slice::<v2::FileAsk>(json) else {
        return refuse(session, ErrorCode::BadRequest, "G carries {\"file\":ID,\"offset\":N}");
    };
    let chunks = match service.order_file_chunks(identity, &ask, HELD_CHUNKS) {
        Ok(chunks) => chunks,
        Err((code, text)) => return refuse(session, code, &text),
    };
    let mut lines = String::new();
    for (offset, bytes) in chunks {
        let answer = session.respond(Frame::FileBytes { offset, bytes }, Outcome::Accepted);
        if answer.outcome != Outcome::Accepted {
            return answer;
        }
        lines.push_str(&answer.line);
    }
    Answer { line: lines, outcome: Outcome::Accepted }
}

/// Seals `frame` as the session's next `F` line.
fn seal(transport: &mut snow::TransportState, frame: Frame, outcome: Outcome) -> Answer {
    let plaintext = frame.encode();
    let mut buf = vec![0u8; plaintext.len() + noise::TAG];
    match transport.write_message(&plaintext, &mut buf) {
        Ok(n) => Answer { line: v2::format_line(LineKind::Transport, &buf[..n]), outcome },
        Err(_) => plain_refusal(ErrorCode::Internal, "cannot seal the answer"),
    }
}
