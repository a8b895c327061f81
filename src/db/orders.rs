//! The Orders table: each agent's outbox of sealed orders (`spyctl order`),
//! offered on every fetch until the agent confirms it stored them. Values go
//! in and out as stored; sealing and opening happen in `boss::orders`.

use rusqlite::{Connection, params};

use super::DbResult;

/// One order as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOrder {
    pub agent_id: i64,
    pub order_id: String,
    pub created_at: i64,
    pub issued_by: i64,
    /// Fernet token of the text under the agent's channel key.
    pub sealed: String,
}

pub fn insert(conn: &Connection, order: &StoredOrder) -> DbResult<()> {
    conn.execute(
        "INSERT INTO Orders (AgentId, OrderId, CreatedAt, IssuedBy, Sealed) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![order.agent_id, order.order_id, order.created_at, order.issued_by, order.sealed],
    )?;
    Ok(())
}

/// Up to `limit` orders for the agent not yet confirmed, oldest first.
pub fn pending(conn: &Connection, agent_id: i64, limit: usize) -> DbResult<Vec<StoredOrder>> {
    let mut stmt = conn.prepare_cached(
        "SELECT AgentId, OrderId, CreatedAt, IssuedBy, Sealed FROM Orders \
         WHERE AgentId = ?1 AND DeliveredAt IS NULL ORDER BY RowId LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![agent_id, limit as i64], |row| {
        Ok(StoredOrder {
            agent_id: row.get(0)?,
            order_id: row.get(1)?,
            created_at: row.get(2)?,
            issued_by: row.get(3)?,
            sealed: row.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Marks the agent's orders `ids` delivered (those not already); returns how many changed.
pub fn mark_delivered(conn: &Connection, agent_id: i64, ids: &[String], now: i64) -> DbResult<usize> {
    let mut stmt = conn.prepare_cached(
        "UPDATE Orders SET DeliveredAt = ?3 WHERE AgentId = ?1 AND OrderId = ?2 AND DeliveredAt IS NULL",
    )?;
    let mut changed = 0;
    for id in ids {
        changed += stmt.execute(params![agent_id, id, now])?;
    }
    Ok(changed)
}
