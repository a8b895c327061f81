//! Chat lines between an enrolled agent and the directors (`spyctl chat`):
//! sealed under the agent's channel key for the ChatLines table, opened again
//! for delivery. The relaying itself (who is connected, pushing to them) is
//! `boss::v2`; the writes go through the group-commit writer (`service`).

use rusqlite::Connection;

use crate::crypto::FernetKey;
use crate::db::chat::{self, StoredChatLine};
use crate::db::{DbError, identities};
use crate::net::v2::ChatLine;

/// Most lines handed over per backlog read.
const BACKLOG_BATCH: usize = 256;

/// A line typed by `sender` in the chat of `agent` (going to the agent if
/// `to_agent`), sealed for storing.
pub fn seal(key: &FernetKey, agent: i64, sender: i64, to_agent: bool, text: &str) -> (StoredChatLine, ChatLine) {
    let line = ChatLine {
        id: crate::net::ids::random_id(),
        at: crate::crypto::fernet::unix_now() as i64,
        from: sender,
        text: text.to_string(),
    };
    let stored = StoredChatLine {
        agent_id: agent,
        line_id: line.id.clone(),
        created_at: line.at,
        sender,
        to_agent,
        sealed: key.seal(text.as_bytes()),
    };
    (stored, line)
}

/// The undelivered lines of the agent's chat going one way, opened, oldest
/// first. A line that does not open (written under an earlier enrolment's
/// key) is skipped and reported in the log, never shown as garbage.
pub fn backlog(
    conn: &Connection,
    key: &FernetKey,
    identity: &identities::StoredIdentity,
    to_agent: bool,
) -> Result<Vec<ChatLine>, DbError> {
    let mut out = Vec::new();
    for stored in chat::pending(conn, identity.agent_id, to_agent, BACKLOG_BATCH)? {
        let text = key.open(stored.sealed.as_bytes(), None).ok().and_then(|o| String::from_utf8(o.plaintext).ok());
        match text {
            Some(text) => out.push(ChatLine { id: stored.line_id, at: stored.created_at, from: stored.sender, text }),
            None => tracing::warn!(agent = identity.agent_id, line = %stored.line_id, "a chat line does not open"),
        }
    }
    Ok(out)
}
