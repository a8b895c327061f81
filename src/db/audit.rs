//! The Audit table as stored: when, which director, and a sealed entry (the
//! action and its details, a Fernet token under the at-rest key). The
//! registry seals and opens entries; this module only stores them.

use rusqlite::Connection;

use super::DbResult;

/// One audit row, as stored.
#[derive(Debug, Clone)]
pub struct StoredEntry {
    pub at: i64,
    pub actor_id: i64,
    /// Fernet token under the at-rest key.
    pub entry: String,
}

/// Stores one entry sealed under key epoch `key_epoch`.
pub fn insert(conn: &Connection, at: i64, actor_id: i64, entry: &str, key_epoch: u32) -> DbResult<()> {
    conn.execute(
        "INSERT INTO Audit (At, ActorId, Entry, KeyEpoch) VALUES (?1, ?2, ?3, ?4)",
        rusqlite::params![at, actor_id, entry, key_epoch],
    )?;
    Ok(())
}

/// Every entry, oldest first.
pub fn all(conn: &Connection) -> DbResult<Vec<StoredEntry>> {
    let mut stmt = conn.prepare("SELECT At, ActorId, Entry FROM Audit ORDER BY RowId")?;
    let rows =
        stmt.query_map([], |row| Ok(StoredEntry { at: row.get(0)?, actor_id: row.get(1)?, entry: row.get(2)? }))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}
