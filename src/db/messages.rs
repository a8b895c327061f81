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
    /// the AgentIdentities row of the key that made it (boxed, as in
    /// [`StoredFile`]: v1 messages should not pay for it in the write queue).
    pub signature: Option<Box<MessageSignature>>,
    /// The key epoch of the wire key the token is sealed under; None for a
    /// token under an enrolled agent's channel key (not from master.key).
    pub key_epoch: Option<u32>,
}

/// The signature kept with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageSignature {
    pub signature: Vec<u8>,
    pub signed_at: i64,
    pub signer_row: i64,
    /// The global signature minisign checks; None for rows stored before it.
    pub trusted: Option<Vec<u8>>,
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
    /// An enrolled agent's file: the signatures over its statement (boxed:
    /// most files travel unsigned through the Boss's write queue, which
    /// should not grow for them).
    pub signature: Option<Box<MessageSignature>>,
    /// The key epoch of `name`'s token.
    pub key_epoch: u32,
}

/// Inserts unless (agent, message id) is already there. True if it was new.
pub fn insert_message(conn: &Connection, msg: &StoredMessage) -> DbResult<bool> {
    // Cached: the Boss's writer runs this for every message.
    let changed = conn
        .prepare_cached(
            "INSERT INTO Messages (AgentId, MessageId, ReceivedAt, Token, Signature, SignedAt, SignerRow, TrustedSignature,
                                   KeyEpoch)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
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
            msg.signature.as_ref().and_then(|s| s.trusted.as_deref()),
            msg.key_epoch,
        ])?;
    Ok(changed == 1)
}

/// Inserts unless (agent, file id) is already there. True if it was new.
pub fn insert_file(conn: &Connection, file: &StoredFile) -> DbResult<bool> {
    let sig = file.signature.as_ref();
    let changed = conn.execute(
        "INSERT INTO Files (AgentId, FileId, FileName, Size, Sha256, StoredAs, ReceivedAt,
                            Signature, SignedAt, SignerRow, TrustedSignature, KeyEpoch)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
         ON CONFLICT (AgentId, FileId) DO NOTHING",
        params![
            file.agent_id,
            file.file_id,
            file.name,
            file.size,
            file.sha256,
            file.stored_as,
            file.received_at,
            sig.map(|s| s.signature.as_slice()),
            sig.map(|s| s.signed_at),
            sig.map(|s| s.signer_row),
            sig.and_then(|s| s.trusted.as_deref()),
            file.key_epoch,
        ],
    )?;
    Ok(changed == 1)
}

/// Which table an inbox key points into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboxTable {
    Messages,
    Files,
}

/// One inbox row's place: its table and RowId.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxKey {
    pub table: InboxTable,
    pub row_id: i64,
}

/// Calls `each` with the keys of messages and files received at or after
/// `since`, newest first (or oldest first), at most `limit` of them. Only
/// keys are sorted, never tokens, so a listing costs memory for its keys
/// alone; each row is then read whole with [`message_at`] or [`file_at`].
/// On equal times a file sorts after a message oldest first, before it
/// newest first, so the two orders are exact reverses.
pub fn inbox_keys<E: From<super::DbError>>(
    conn: &Connection,
    since: i64,
    limit: Option<u64>,
    oldest_first: bool,
    mut each: impl FnMut(InboxKey) -> Result<(), E>,
) -> Result<(), E> {
    let order = if oldest_first { "ReceivedAt, Kind, RowId" } else { "ReceivedAt DESC, Kind DESC, RowId DESC" };
    let sql = format!(
        "SELECT 0 AS Kind, RowId, ReceivedAt FROM Messages WHERE ReceivedAt >= ?1
         UNION ALL SELECT 1, RowId, ReceivedAt FROM Files WHERE ReceivedAt >= ?1
         ORDER BY {order} LIMIT ?2"
    );
    // SQLite reads a negative LIMIT as no limit.
    let limit = limit.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
    let mut stmt = conn.prepare(&sql).map_err(super::DbError::from)?;
    let mut rows = stmt.query(params![since, limit]).map_err(super::DbError::from)?;
    while let Some(row) = rows.next().map_err(super::DbError::from)? {
        let kind: i64 = row.get(0).map_err(super::DbError::from)?;
        let table = if kind == 0 { InboxTable::Messages } else { InboxTable::Files };
        each(InboxKey { table, row_id: row.get(1).map_err(super::DbError::from)? })?;
    }
    Ok(())
}

/// The keys of the messages and files whose message or file id is `id`
/// (one per agent that used it), oldest first.
pub fn inbox_keys_for_id(conn: &Connection, id: &str) -> DbResult<Vec<InboxKey>> {
    let mut stmt = conn.prepare(
        "SELECT 0 AS Kind, RowId, ReceivedAt FROM Messages WHERE MessageId = ?1
         UNION ALL SELECT 1, RowId, ReceivedAt FROM Files WHERE FileId = ?1
         ORDER BY ReceivedAt, Kind, RowId",
    )?;
    let rows = stmt.query_map([id], |row| {
        let kind: i64 = row.get(0)?;
        let table = if kind == 0 { InboxTable::Messages } else { InboxTable::Files };
        Ok(InboxKey { table, row_id: row.get(1)? })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

const MESSAGE_COLUMNS: &str =
    "AgentId, MessageId, ReceivedAt, Token, Signature, SignedAt, SignerRow, TrustedSignature, KeyEpoch";

/// The four signature columns starting at `first`: `Signature, SignedAt,
/// SignerRow, TrustedSignature`.
fn signature_columns(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Option<MessageSignature>> {
    Ok(match (row.get::<_, Option<Vec<u8>>>(first)?, row.get::<_, Option<i64>>(first + 1)?, row.get(first + 2)?) {
        (Some(signature), Some(signed_at), Some(signer_row)) => {
            Some(MessageSignature { signature, signed_at, signer_row, trusted: row.get(first + 3)? })
        }
        _ => None,
    })
}

fn message_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredMessage> {
    Ok(StoredMessage {
        agent_id: row.get(0)?,
        message_id: row.get(1)?,
        received_at: row.get(2)?,
        token: row.get(3)?,
        signature: signature_columns(row, 4)?.map(Box::new),
        key_epoch: row.get(8)?,
    })
}

/// The messages with this message id (one per sender at most).
pub fn by_message_id(conn: &Connection, message_id: &str) -> DbResult<Vec<StoredMessage>> {
    let mut stmt =
        conn.prepare(&format!("SELECT {MESSAGE_COLUMNS} FROM Messages WHERE MessageId = ?1 ORDER BY RowId"))?;
    let rows = stmt.query_map([message_id], message_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// The message at `row_id`, if any.
pub fn message_at(conn: &Connection, row_id: i64) -> DbResult<Option<StoredMessage>> {
    use rusqlite::OptionalExtension;
    Ok(conn
        .prepare_cached(&format!("SELECT {MESSAGE_COLUMNS} FROM Messages WHERE RowId = ?1"))?
        .query_row([row_id], message_row)
        .optional()?)
}

/// The file at `row_id`, if any.
pub fn file_at(conn: &Connection, row_id: i64) -> DbResult<Option<StoredFile>> {
    use rusqlite::OptionalExtension;
    Ok(conn
        .prepare_cached(&format!("SELECT {FILE_COLUMNS} FROM Files WHERE RowId = ?1"))?
        .query_row([row_id], file_from_row)
        .optional()?)
}

const FILE_COLUMNS: &str = "AgentId, FileId, FileName, Size, Sha256, StoredAs, ReceivedAt, \
                            Signature, SignedAt, SignerRow, TrustedSignature, KeyEpoch";

/// A Files row selected as [`FILE_COLUMNS`].
fn file_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredFile> {
    Ok(StoredFile {
        agent_id: row.get(0)?,
        file_id: row.get(1)?,
        name: row.get(2)?,
        size: row.get(3)?,
        sha256: row.get(4)?,
        stored_as: row.get(5)?,
        received_at: row.get(6)?,
        signature: signature_columns(row, 7)?.map(Box::new),
        key_epoch: row.get(11)?,
    })
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
    let mut stmt = conn.prepare(&format!("SELECT {FILE_COLUMNS} FROM Files WHERE FileId = ?1 ORDER BY RowId"))?;
    let rows = stmt.query_map([file_id], file_from_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// (AgentId, FileId) of every completed file, in RowId order (`key rotate`
/// re-seals each one under the newest epoch).
pub fn all_file_ids(conn: &Connection) -> DbResult<Vec<(i64, String)>> {
    let mut stmt = conn.prepare("SELECT AgentId, FileId FROM Files ORDER BY RowId")?;
    let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}
