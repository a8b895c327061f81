//! The OrderFiles and OrderAttachments tables: files that travel with orders
//! (`spyctl order --file`), one stored copy per file, one sealed attachment
//! per (agent, order). Values go in and out as stored; sealing and opening
//! happen in `boss::order_files`.

use rusqlite::{Connection, OptionalExtension, params};

use super::DbResult;

/// A stored file's facts (its plaintext's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRow {
    pub file_id: String,
    pub size: u64,
    pub sha256: String,
}

pub fn insert_file(conn: &Connection, file: &FileRow, now: i64) -> DbResult<()> {
    conn.execute(
        "INSERT INTO OrderFiles (FileId, Size, Sha256, CreatedAt) VALUES (?1, ?2, ?3, ?4)",
        params![file.file_id, file.size as i64, file.sha256, now],
    )?;
    Ok(())
}

/// Attaches `file_id` to the agent's order, with its sealed description.
pub fn attach(conn: &Connection, agent_id: i64, order_id: &str, file_id: &str, sealed: &str) -> DbResult<()> {
    conn.execute(
        "INSERT INTO OrderAttachments (AgentId, OrderId, FileId, Sealed) VALUES (?1, ?2, ?3, ?4)",
        params![agent_id, order_id, file_id, sealed],
    )?;
    Ok(())
}

/// The sealed description of the file the agent's order carries, if any.
pub fn sealed_for_order(conn: &Connection, agent_id: i64, order_id: &str) -> DbResult<Option<String>> {
    let mut stmt = conn.prepare_cached("SELECT Sealed FROM OrderAttachments WHERE AgentId = ?1 AND OrderId = ?2")?;
    Ok(stmt.query_row(params![agent_id, order_id], |row| row.get(0)).optional()?)
}

/// The file, if one of the agent's orders carries it (what the agent may
/// download).
pub fn for_agent(conn: &Connection, agent_id: i64, file_id: &str) -> DbResult<Option<FileRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT f.FileId, f.Size, f.Sha256 FROM OrderAttachments a JOIN OrderFiles f ON f.FileId = a.FileId \
         WHERE a.AgentId = ?1 AND a.FileId = ?2",
    )?;
    let row = stmt
        .query_row(params![agent_id, file_id], |row| {
            Ok(FileRow { file_id: row.get(0)?, size: row.get::<_, i64>(1)? as u64, sha256: row.get(2)? })
        })
        .optional()?;
    Ok(row)
}

/// Records the file delivered to the agent; true if it was not already.
pub fn mark_delivered(conn: &Connection, agent_id: i64, file_id: &str, now: i64) -> DbResult<bool> {
    let changed = conn.execute(
        "UPDATE OrderAttachments SET DeliveredAt = ?3 WHERE AgentId = ?1 AND FileId = ?2 AND DeliveredAt IS NULL",
        params![agent_id, file_id, now],
    )?;
    Ok(changed > 0)
}

/// Every stored file's id (for a key rotation's re-seal).
pub fn all_ids(conn: &Connection) -> DbResult<Vec<String>> {
    let mut stmt = conn.prepare("SELECT FileId FROM OrderFiles ORDER BY FileId")?;
    let ids = stmt.query_map([], |row| row.get(0))?.collect::<Result<_, _>>()?;
    Ok(ids)
}
