//! The Boss's end of v2 connections (PROTOCOL.md, "Version 2"): the Noise IK
//! responder, one transport session per connection, and authenticated
//! answers. A session exists only after a handshake whose static key is the
//! enrolled identity the agent claims; it is dropped when its connection
//! closes. Storing goes through the same checks and group-commit writer as
//! v1 (`BossService::accept_v2_text`).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::crypto::noise;
use crate::db::identities::StoredIdentity;
use crate::net::protocol::ErrorCode;
use crate::net::server::{Answer, Outcome, Peer};
use crate::net::v2::{self, Frame, Hello, LineKind, Welcome};

use super::handshake_budget::HandshakeBudget;
use super::service::BossService;

/// One connection's agreed keys and who is on the other end.
struct Session {
    transport: snow::TransportState,
    identity: StoredIdentity,
}

/// Every open v2 session, by connection id, and what failed handshakes
/// each address may still cost.
pub struct V2Sessions {
    sessions: Mutex<HashMap<u64, Session>>,
    budget: HandshakeBudget,
}

fn plain_refusal(code: ErrorCode, text: &str) -> Answer {
    Answer::refused(code, text)
}

impl V2Sessions {
    /// Sessions with a budget of `failed_handshakes_per_second` per address.
    pub fn new(failed_handshakes_per_second: u32) -> Self {
        V2Sessions { sessions: Mutex::default(), budget: HandshakeBudget::new(failed_handshakes_per_second) }
    }

    /// Answers one v2 line from connection `peer`.
    pub fn handle(&self, service: &BossService, line: &[u8], peer: &Peer) -> Answer {
        // Taken out while in use: a connection's lines come one at a time
        // from its own thread, so nobody else wants it meanwhile.
        let session = self.sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(&peer.id);
        let (kind, message) = match v2::parse_line(line) {
            Ok(parsed) => parsed,
            Err(e) => return self.answer_or_plain(session, peer, ErrorCode::BadRequest, &e.0),
        };
        match (kind, session) {
            (LineKind::Handshake, None) => self.handshake(service, &message, peer),
            (LineKind::Handshake, Some(session)) => {
                self.answer_or_plain(Some(session), peer, ErrorCode::BadRequest, "the handshake is done")
            }
            (LineKind::Transport, None) => {
                plain_refusal(ErrorCode::BadRequest, "no v2 session on this connection: start with NOISE")
            }
            (LineKind::Transport, Some(mut session)) => {
                let mut plaintext = vec![0u8; message.len()];
                let Ok(n) = session.transport.read_message(&message, &mut plaintext) else {
                    // Someone else's bytes, or a replay: the session is over
                    // (its receiving nonce can no longer be trusted to match).
                    tracing::debug!(conn = peer.id, "v2: a frame failed its tag; session closed");
                    return plain_refusal(ErrorCode::Auth, "a frame failed its tag; the v2 session is closed");
                };
                let answer = match Frame::decode(&plaintext[..n]) {
                    Ok(Frame::Message(body)) => {
                        match service.accept_v2_text(session.identity.agent_id, &session.identity, &body, peer) {
                            Ok((ack, true)) => seal(&mut session.transport, Frame::Ack(ack), Outcome::Accepted),
                            Ok((ack, false)) => seal(&mut session.transport, Frame::Ack(ack), Outcome::Repeated),
                            Err((code, text)) => {
                                seal(&mut session.transport, Frame::Error(code, text), Outcome::Refused(code))
                            }
                        }
                    }
                    Ok(Frame::Fetch) => self.offer(service, &mut session, &[]),
                    Ok(Frame::Query(query)) => match service.offset_query(session.identity.agent_id, &query, peer) {
                        Ok(reply) => seal(&mut session.transport, Frame::Offset(reply), Outcome::Repeated),
                        Err((code, text)) => {
                            seal(&mut session.transport, Frame::Error(code, text), Outcome::Refused(code))
                        }
                    },
                    Ok(Frame::Stored(json)) => match serde_json::from_slice::<Vec<String>>(&json) {
                        Ok(ids) if ids.len() <= 1024 => self.offer(service, &mut session, &ids),
                        _ => {
                            let code = ErrorCode::BadRequest;
                            let text = "K carries a JSON array of at most 1024 order ids".to_string();
                            seal(&mut session.transport, Frame::Error(code, text), Outcome::Refused(code))
                        }
                    },
                    Ok(_) | Err(_) => {
                        let code = ErrorCode::BadRequest;
                        seal(
                            &mut session.transport,
                            Frame::Error(code, "expected a message frame".into()),
                            Outcome::Refused(code),
                        )
                    }
                };
                self.put_back(peer, session);
                answer
            }
        }
    }

    /// Confirms `stored` (orders the agent has written durably in its home),
    /// then offers what is still pending.
    fn offer(&self, service: &BossService, session: &mut Session, stored: &[String]) -> Answer {
        let (code, text) = match service.orders_step(&session.identity, stored) {
            Ok((orders, confirmed)) => match serde_json::to_vec(&orders) {
                Ok(json) => {
                    let outcome = if confirmed { Outcome::Accepted } else { Outcome::Repeated };
                    return seal(&mut session.transport, Frame::Orders(json), outcome);
                }
                Err(_) => (ErrorCode::Internal, "cannot encode the orders".to_string()),
            },
            Err(refusal) => refusal,
        };
        seal(&mut session.transport, Frame::Error(code, text), Outcome::Refused(code))
    }

    /// Forgets the session of a closed connection.
    pub fn closed(&self, peer: &Peer) {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(&peer.id);
    }

    fn put_back(&self, peer: &Peer, session: Session) {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).insert(peer.id, session);
    }

    /// An error, sealed if there is a session (and the session kept), else plain.
    fn answer_or_plain(&self, session: Option<Session>, peer: &Peer, code: ErrorCode, text: &str) -> Answer {
        match session {
            Some(mut session) => {
                let answer = seal(&mut session.transport, Frame::Error(code, text.to_string()), Outcome::Refused(code));
                self.put_back(peer, session);
                answer
            }
            None => plain_refusal(code, text),
        }
    }

    /// The responder's half of IK. A first message that does not open under
    /// the Boss's key gets a plain `ERR auth` (nothing was agreed, so nothing
    /// can be authenticated). One that opens completes the handshake either
    /// way, so the agent learns the answer is the Boss's; if its static key
    /// is not the enrolled key of the agent it names, an authenticated error
    /// follows and no session is kept.
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
        let answer = self.respond(service, message, peer);
        if matches!(answer.outcome, Outcome::Accepted | Outcome::Refused(ErrorCode::Internal)) {
            self.budget.refund(peer.addr.ip());
        }
        answer
    }

    /// The handshake proper (see [`Self::handshake`]).
    fn respond(&self, service: &BossService, message: &[u8], peer: &Peer) -> Answer {
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
        let enrolled = match service.enrolled(hello.agent) {
            Ok(found) => found.filter(|identity| Some(identity.public.x25519) == their_static),
            Err(e) => {
                tracing::error!(error = %e, "identity lookup failed");
                return plain_refusal(ErrorCode::Internal, "try again later");
            }
        };
        let welcome = serde_json::to_vec(&Welcome { time: crate::crypto::fernet::unix_now() }).expect("encodes");
        let mut buf = vec![0u8; noise::MAX_MESSAGE];
        let Ok(n) = responder.write_message(&welcome, &mut buf) else {
            return plain_refusal(ErrorCode::Internal, "try again later");
        };
        let reply = v2::format_line(LineKind::Handshake, &buf[..n]);
        let Ok(transport) = responder.into_transport_mode() else {
            return plain_refusal(ErrorCode::Internal, "try again later");
        };
        match enrolled {
            Some(identity) => {
                tracing::debug!(conn = peer.id, agent = hello.agent, "v2 session");
                self.put_back(peer, Session { transport, identity });
                // A finished mutual handshake proves the agent's key: the
                // connection counts as authentic (never evicted for a newcomer).
                Answer { line: reply, outcome: Outcome::Accepted }
            }
            None => {
                tracing::debug!(conn = peer.id, agent = hello.agent, "refused: v2 key not enrolled for this agent");
                let code = ErrorCode::Auth;
                let mut transport = transport;
                let text = "this key is not enrolled for that agent".to_string();
                let error = seal(&mut transport, Frame::Error(code, text), Outcome::Refused(code));
                Answer { line: reply + &error.line, outcome: Outcome::Refused(code) }
            }
        }
    }
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
