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
    /// An enrolled agent's message: the signature, its statement's time and
    /// the AgentIdentities row of the key that made it.
    pub signature: Option<MessageSignature>,
}

/// The signature kept with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageSignature {
    pub signature: Vec<u8>,
    pub signed_at: i64,
    pub signer_row: i64,
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
            "INSERT INTO Messages (AgentId, MessageId, ReceivedAt, Token, Signature, SignedAt, SignerRow)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (AgentId, MessageId) DO NOTHING",
        )?
        .execute(params![
            msg.agent_id,
            msg.message_id,
            msg.received_at,
            msg.token,
            msg.signature.as_ref().map(|s| s.signature.as_slice()),
            msg.signature.as_ref().map(|s| s.signed_at),
            msg.signature.as_ref().map(|s| s.signer_row),
        ])?;
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

pub fn all_messages(conn: &Connection) -> DbResult<Vec<StoredMessage>> {
    let mut stmt = conn.prepare(&format!("SELECT {MESSAGE_COLUMNS} FROM Messages ORDER BY ReceivedAt, RowId"))?;
    let rows = stmt.query_map([], message_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

const MESSAGE_COLUMNS: &str = "AgentId, MessageId, ReceivedAt, Token, Signature, SignedAt, SignerRow";

fn message_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredMessage> {
    let signature = match (row.get::<_, Option<Vec<u8>>>(4)?, row.get::<_, Option<i64>>(5)?, row.get(6)?) {
        (Some(signature), Some(signed_at), Some(signer_row)) => {
            Some(MessageSignature { signature, signed_at, signer_row })
        }
        _ => None,
    };
    Ok(StoredMessage {
        agent_id: row.get(0)?,
        message_id: row.get(1)?,
        received_at: row.get(2)?,
        token: row.get(3)?,
        signature,
    })
}

/// The messages with this message id (one per sender at most).
pub fn by_message_id(conn: &Connection, message_id: &str) -> DbResult<Vec<StoredMessage>> {
    let mut stmt =
        conn.prepare(&format!("SELECT {MESSAGE_COLUMNS} FROM Messages WHERE MessageId = ?1 ORDER BY RowId"))?;
    let rows = stmt.query_map([message_id], message_row)?;
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
