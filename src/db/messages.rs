//! The Boss's inbox tables: Messages (tokens as received) and Files (completed
//! uploads). Inserts are idempotent on (AgentId, MessageId) and (AgentId, FileId).

use rusqlite::{Connection, params};

use super::DbResult;

/// A text message as stored.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub agent_id: i64,
    pub message_id: String,
    pub received_at: i64,
    pub token: String,
}

/// A completed file as stored.
#[derive(Debug, Clone)]
pub struct StoredFile {
    pub agent_id: i64,
    pub file_id: String,
    /// Fernet token of the file's name under the at-rest key.
    pub name: String,
    pub size: i64,
    pub sha256: String,
    /// Path relative to the home's files/ directory.
    pub stored_as: String,
    pub received_at: i64,
}

/// Inserts unless (agent, message id) is already there. True if it was new.
pub fn insert_message(conn: &Connection, msg: &StoredMessage) -> DbResult<bool> {
    // Cached: the Boss's writer runs this for every message.
    let changed = conn
        .prepare_cached(
            "INSERT INTO Messages (AgentId, MessageId, ReceivedAt, Token) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (AgentId, MessageId) DO NOTHING",
        )?
        .execute(params![msg.agent_id, msg.message_id, msg.received_at, msg.token])?;
    Ok(changed == 1)
}

/// Inserts unless (agent, file id) is already there. True if it was new.
pub fn insert_file(conn: &Connection, file: &StoredFile) -> DbResult<bool> {
    let changed = conn.execute(
        "INSERT INTO Files (AgentId, FileId, FileName, Size, Sha256, StoredAs, ReceivedAt)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (AgentId, FileId) DO NOTHING",
        params![file.agent_id, file.file_id, file.name, file.size, file.sha256, file.stored_as, file.received_at],
    )?;
    Ok(changed == 1)
}

/// The size and SHA-256 of a completed file, if (agent, file id) has one.
pub fn file_record(conn: &Connection, agent_id: i64, file_id: &str) -> DbResult<Option<(i64, String)>> {
    use rusqlite::OptionalExtension;
    Ok(conn
        .prepare_cached("SELECT Size, Sha256 FROM Files WHERE AgentId = ?1 AND FileId = ?2")?
        .query_row(params![agent_id, file_id], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?)
}

/// Every completed file with this file id (normally one).
pub fn files_with_id(conn: &Connection, file_id: &str) -> DbResult<Vec<StoredFile>> {
    let mut stmt = conn.prepare(
        "SELECT AgentId, FileId, FileName, Size, Sha256, StoredAs, ReceivedAt FROM Files WHERE FileId = ?1 ORDER BY RowId",
    )?;
    let rows = stmt.query_map([file_id], |row| {
        Ok(StoredFile {
            agent_id: row.get(0)?,
            file_id: row.get(1)?,
            name: row.get(2)?,
            size: row.get(3)?,
            sha256: row.get(4)?,
            stored_as: row.get(5)?,
            received_at: row.get(6)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

pub fn all_messages(conn: &Connection) -> DbResult<Vec<StoredMessage>> {
    let mut stmt =
        conn.prepare("SELECT AgentId, MessageId, ReceivedAt, Token FROM Messages ORDER BY ReceivedAt, RowId")?;
    let rows = stmt.query_map([], |row| {
        Ok(StoredMessage {
            agent_id: row.get(0)?,
            message_id: row.get(1)?,
            received_at: row.get(2)?,
            token: row.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

pub fn all_files(conn: &Connection) -> DbResult<Vec<StoredFile>> {
    let mut stmt = conn.prepare(
        "SELECT AgentId, FileId, FileName, Size, Sha256, StoredAs, ReceivedAt FROM Files ORDER BY ReceivedAt, RowId",
    )?;
    let rows = stmt.query_map([], |row| {
        Ok(StoredFile {
            agent_id: row.get(0)?,
            file_id: row.get(1)?,
            name: row.get(2)?,
            size: row.get(3)?,
            sha256: row.get(4)?,
            stored_as: row.get(5)?,
            received_at: row.get(6)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}
