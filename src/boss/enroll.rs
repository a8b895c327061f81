//! The Boss's side of enrolment (PROTOCOL.md, "Enrolment"; the agent's side
//! and the transcript are in `net::join`): `JOIN`, `JOIN2` and `WHOIS` lines
//! on the same port as `MSG`.
//!
//! The code is deleted by the first `JOIN` that names its agent, whatever
//! happens next: single use, and one failed try kills it. An agent with no
//! live code (none issued, expired, used) gets a SPAKE2 answer under a random
//! password, so the agent's side fails its confirmation exactly as with a
//! wrong code: a prober learns nothing about which codes exist. State between
//! `JOIN` and `JOIN2` is kept per connection for [`PENDING_TTL`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use zeroize::Zeroizing;

use crate::crypto::identity::Side;
use crate::crypto::{IdentityKeys, PublicIdentity};
use crate::db::{self, DbError, identities};
use crate::net::join::{self, JoinKeys};
use crate::net::protocol::ErrorCode;
use crate::net::server::Peer;
use crate::registry::RegistryKeys;

/// How long a `JOIN` waits for its `JOIN2` on the same connection.
const PENDING_TTL: Duration = Duration::from_secs(60);
/// Most enrolments half done at once.
const MAX_PENDING: usize = 256;

type Refusal = (ErrorCode, String);

/// A `JOIN` answered, waiting for its `JOIN2`.
struct Pending {
    agent_id: i64,
    keys: JoinKeys,
    t1: [u8; 32],
    since: Instant,
}

/// Answers enrolment lines.
pub struct Enrolment {
    /// Codes are taken and identities stored here (rare writes, outside the
    /// message writer's group commits).
    conn: Mutex<Connection>,
    boss: PublicIdentity,
    pending: Mutex<HashMap<u64, Pending>>,
}

/// Whether `line` is an enrolment request rather than a `MSG`.
pub fn is_enrolment_line(line: &[u8]) -> bool {
    line.starts_with(b"JOIN ") || line.starts_with(b"JOIN2 ") || matches!(line, b"WHOIS" | b"WHOIS\r" | b"WHOIS\n")
}

fn bad(text: &str) -> Refusal {
    (ErrorCode::BadRequest, text.to_string())
}

fn internal(e: DbError) -> Refusal {
    tracing::error!(error = %e, "enrolment: database error");
    (ErrorCode::Internal, "try again later".to_string())
}

impl Enrolment {
    pub fn new(db_path: &Path, boss: PublicIdentity) -> Result<Enrolment, DbError> {
        Ok(Enrolment { conn: Mutex::new(db::open(db_path)?), boss, pending: Mutex::new(HashMap::new()) })
    }

    /// Answers one enrolment line; `keys` open the stored code (the Boss's
    /// keys now, which follow a key rotation).
    pub fn handle(&self, line: &[u8], peer: &Peer, keys: &RegistryKeys) -> Result<String, Refusal> {
        let f = join::fields(line).map_err(|e| (ErrorCode::BadRequest, e.0))?;
        match f[..] {
            ["WHOIS"] => Ok(format!("BOSS {} {}\n", hex::encode(self.boss.x25519), hex::encode(self.boss.ed25519))),
            ["JOIN", agent_id, msg_a] => self.join(agent_id, msg_a, peer, keys),
            ["JOIN2", x, ed, signature, confirm] => self.join2(x, ed, signature, confirm, peer),
            _ => Err(bad("expected JOIN <agent-id> <msg>, JOIN2 <x25519> <ed25519> <sig> <confirm>, or WHOIS")),
        }
    }

    /// The password for `agent_id`'s live code, using the code up; a random
    /// one if there is none.
    fn take_password(&self, agent_id: i64, keys: &RegistryKeys) -> Result<Zeroizing<[u8; 32]>, Refusal> {
        let taken = {
            let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
            identities::take_code(&conn, agent_id).map_err(internal)?
        };
        let now = crate::crypto::fernet::unix_now() as i64;
        let mut password = Zeroizing::new([0u8; 32]);
        let real = taken.filter(|(_, expires_at)| *expires_at > now).and_then(|(sealed, _)| {
            let hex_text = Zeroizing::new(keys.reveal(&sealed).ok()?);
            hex::decode_to_slice(hex_text.as_str(), password.as_mut()).ok()
        });
        if real.is_none() {
            getrandom::fill(password.as_mut()).map_err(|_| (ErrorCode::Internal, "try again later".to_string()))?;
        }
        Ok(password)
    }

    fn join(&self, agent_id: &str, msg_a: &str, peer: &Peer, keys: &RegistryKeys) -> Result<String, Refusal> {
        let agent_id = crate::net::protocol::parse_agent_id(agent_id.as_bytes())
            .ok_or_else(|| bad("the agent id must be a positive decimal integer"))?;
        let msg_a: [u8; 33] = join::hex_field(msg_a).map_err(|e| (ErrorCode::BadRequest, e.0))?;
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.retain(|_, p| p.since.elapsed() < PENDING_TTL);
            if pending.len() >= MAX_PENDING {
                return Err((ErrorCode::Busy, "too many enrolments at once; try again shortly".into()));
            }
        }
        let password = self.take_password(agent_id, keys)?;
        let (id_a, id_b) = join::spake_identities(agent_id);
        let (spake, msg_b) =
            spake2::Spake2::<spake2::Ed25519Group>::start_b(&spake2::Password::new(password.as_ref()), &id_a, &id_b);
        let key = Zeroizing::new(spake.finish(&msg_a).map_err(|_| bad("not a SPAKE2 message"))?);
        let keys = JoinKeys::derive(&key);
        let t1 = join::transcript1(agent_id, &msg_a, &msg_b, &self.boss);
        let confirm = join::mac(&keys.boss_confirm, &[&t1]);
        tracing::info!(conn = peer.id, agent = agent_id, "enrolment started (the code, if any, is now used up)");
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer.id, Pending { agent_id, keys, t1, since: Instant::now() });
        Ok(format!(
            "JOIN {} {} {} {}\n",
            hex::encode(&msg_b),
            hex::encode(self.boss.x25519),
            hex::encode(self.boss.ed25519),
            hex::encode(confirm)
        ))
    }

    fn join2(&self, x: &str, ed: &str, signature: &str, confirm: &str, peer: &Peer) -> Result<String, Refusal> {
        let failed = || (ErrorCode::Auth, "enrolment failed".to_string());
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&peer.id);
        let pending = pending
            .filter(|p| p.since.elapsed() < PENDING_TTL)
            .ok_or_else(|| bad("JOIN2 must follow a JOIN on the same connection"))?;
        let agent = join::identity_fields(x, ed).map_err(|e| (ErrorCode::BadRequest, e.0))?;
        let signature: [u8; 64] = join::hex_field(signature).map_err(|e| (ErrorCode::BadRequest, e.0))?;
        let confirm: [u8; 32] = join::hex_field(confirm).map_err(|e| (ErrorCode::BadRequest, e.0))?;
        let t2 = join::transcript2(&pending.t1, &agent);
        if !join::mac_ok(&pending.keys.agent_confirm, &[&t2, &signature], &confirm) {
            tracing::info!(conn = peer.id, agent = pending.agent_id, "enrolment refused: wrong code");
            return Err(failed());
        }
        if agent.verify(&join::possession_statement(&t2), &signature).is_err() {
            tracing::info!(conn = peer.id, agent = pending.agent_id, "enrolment refused: no proof of possession");
            return Err(failed());
        }
        // A low-order X25519 key would make a channel key anyone can compute.
        let probe = IdentityKeys::generate().map_err(|_| (ErrorCode::Internal, "try again later".to_string()))?;
        if probe.channel_key(Side::Boss, &agent, pending.agent_id).is_none() {
            return Err(bad("not a usable X25519 key"));
        }
        let now = crate::crypto::fernet::unix_now() as i64;
        {
            let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(|e| internal(e.into()))?;
            if db::agents::by_id(&tx, pending.agent_id).map_err(internal)?.is_none() {
                return Err(failed());
            }
            identities::enrol(&tx, pending.agent_id, &agent, now).map_err(internal)?;
            tx.commit().map_err(|e| internal(e.into()))?;
        }
        tracing::info!(
            conn = peer.id,
            agent = pending.agent_id,
            fingerprint = %agent.fingerprint(),
            "agent enrolled"
        );
        Ok(format!("JOINED {}\n", hex::encode(join::mac(&pending.keys.done, &[&t2]))))
    }
}
