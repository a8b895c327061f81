//! The ChatLines table: lines relayed between an agent and the directors
//! (`spyctl chat`), kept sealed until the other side has received them.
//! Values go in and out as stored; sealing and opening happen in `boss::chat`.

use rusqlite::{Connection, params};

use super::DbResult;

/// One chat line as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredChatLine {
    pub agent_id: i64,
    pub line_id: String,
    pub created_at: i64,
    /// Who typed it (the agent's or the director's AgentId).
    pub sender: i64,
    /// Whether it goes to the agent (from a director) or from it.
    pub to_agent: bool,
    /// Fernet token of the text under the agent's channel key.
    pub sealed: String,
}

/// Adds a line; false if its id was already stored.
pub fn insert(conn: &Connection, line: &StoredChatLine) -> DbResult<bool> {
    let changed = conn.execute(
        "INSERT OR IGNORE INTO ChatLines (AgentId, LineId, CreatedAt, Sender, ToAgent, Sealed) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![line.agent_id, line.line_id, line.created_at, line.sender, line.to_agent, line.sealed],
    )?;
    Ok(changed > 0)
}

/// Up to `limit` lines of the agent's chat going one way and not yet delivered, oldest first.
pub fn pending(conn: &Connection, agent_id: i64, to_agent: bool, limit: usize) -> DbResult<Vec<StoredChatLine>> {
    let mut stmt = conn.prepare_cached(
        "SELECT AgentId, LineId, CreatedAt, Sender, ToAgent, Sealed FROM ChatLines \
         WHERE AgentId = ?1 AND ToAgent = ?2 AND DeliveredAt IS NULL ORDER BY RowId LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![agent_id, to_agent, limit as i64], |row| {
        Ok(StoredChatLine {
            agent_id: row.get(0)?,
            line_id: row.get(1)?,
            created_at: row.get(2)?,
            sender: row.get(3)?,
            to_agent: row.get(4)?,
            sealed: row.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Marks the agent's lines `ids` going one way (`to_agent`) delivered (those
/// not already): the receiving side confirmed showing them. Returns how many
/// changed; an id of the other direction or another chat changes nothing.
pub fn mark_delivered(conn: &Connection, agent_id: i64, to_agent: bool, ids: &[String], now: i64) -> DbResult<usize> {
    let mut stmt = conn.prepare_cached(
        "UPDATE ChatLines SET DeliveredAt = ?3 \
         WHERE AgentId = ?1 AND LineId = ?2 AND ToAgent = ?4 AND DeliveredAt IS NULL",
    )?;
    let mut changed = 0;
    for id in ids {
        changed += stmt.execute(params![agent_id, id, now, to_agent])?;
    }
    Ok(changed)
}
