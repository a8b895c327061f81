//! Agents' public identities (with their history) and one-time enrolment
//! codes: the AgentIdentities and EnrolCodes tables. Values go in as given:
//! the code's hash arrives already sealed.

use rusqlite::{Connection, OptionalExtension, params};

use super::DbResult;
use crate::crypto::PublicIdentity;
use crate::crypto::identity::Verifier;

/// One AgentIdentities row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredIdentity {
    pub row_id: i64,
    pub agent_id: i64,
    pub public: PublicIdentity,
    /// `public`'s Ed25519 key decoded once (None if it is not a curve point,
    /// which enrolment refuses): the Boss checks every signature with it.
    pub verifier: Option<Verifier>,
    pub enrolled_at: i64,
    /// When a newer enrolment or a revocation replaced it.
    pub revoked_at: Option<i64>,
}

const COLUMNS: &str = "RowId, AgentId, X25519, Ed25519, EnrolledAt, RevokedAt";

fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredIdentity> {
    let key = |i: usize| -> rusqlite::Result<[u8; 32]> {
        let bytes: Vec<u8> = row.get(i)?;
        bytes.try_into().map_err(|_| rusqlite::Error::InvalidColumnType(i, "key".into(), rusqlite::types::Type::Blob))
    };
    let public = PublicIdentity { x25519: key(2)?, ed25519: key(3)? };
    Ok(StoredIdentity {
        row_id: row.get(0)?,
        agent_id: row.get(1)?,
        verifier: Verifier::new(&public.ed25519).ok(),
        public,
        enrolled_at: row.get(4)?,
        revoked_at: row.get(5)?,
    })
}

/// The agent's current (unrevoked) identity.
pub fn current(conn: &Connection, agent_id: i64) -> DbResult<Option<StoredIdentity>> {
    Ok(conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM AgentIdentities WHERE AgentId = ?1 AND RevokedAt IS NULL"))?
        .query_row([agent_id], from_row)
        .optional()?)
}

/// One identity by its row, revoked or not.
pub fn by_row(conn: &Connection, row_id: i64) -> DbResult<Option<StoredIdentity>> {
    Ok(conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM AgentIdentities WHERE RowId = ?1"))?
        .query_row([row_id], from_row)
        .optional()?)
}

/// Every current identity.
pub fn all_current(conn: &Connection) -> DbResult<Vec<StoredIdentity>> {
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM AgentIdentities WHERE RevokedAt IS NULL"))?;
    let rows = stmt.query_map([], from_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Records a new current identity for the agent, retiring the one before
/// (kept, with `RevokedAt`). Returns the new row. Run inside a transaction.
pub fn enrol(conn: &Connection, agent_id: i64, public: &PublicIdentity, now: i64) -> DbResult<i64> {
    revoke(conn, agent_id, now)?;
    conn.execute(
        "INSERT INTO AgentIdentities (AgentId, X25519, Ed25519, EnrolledAt) VALUES (?1, ?2, ?3, ?4)",
        params![agent_id, &public.x25519[..], &public.ed25519[..], now],
    )?;
    Ok(conn.last_insert_rowid())
}

/// Retires the agent's current identity, if any, and drops any live code.
/// True if there was an identity.
pub fn revoke(conn: &Connection, agent_id: i64, now: i64) -> DbResult<bool> {
    let changed = conn.execute(
        "UPDATE AgentIdentities SET RevokedAt = ?2 WHERE AgentId = ?1 AND RevokedAt IS NULL",
        params![agent_id, now],
    )?;
    Ok(changed > 0)
}

/// Stores the agent's one live code (replacing an earlier one).
pub fn put_code(
    conn: &Connection,
    agent_id: i64,
    sealed_hash: &str,
    expires_at: i64,
    issued_by: i64,
    key_epoch: u32,
) -> DbResult<()> {
    conn.execute(
        "INSERT OR REPLACE INTO EnrolCodes (AgentId, CodeHash, ExpiresAt, IssuedBy, KeyEpoch) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![agent_id, sealed_hash, expires_at, issued_by, key_epoch],
    )?;
    Ok(())
}

/// Removes and returns the agent's code (sealed hash, expiry): a code is
/// used up by the first attempt, whatever its outcome.
pub fn take_code(conn: &Connection, agent_id: i64) -> DbResult<Option<(String, i64)>> {
    Ok(conn
        .query_row("DELETE FROM EnrolCodes WHERE AgentId = ?1 RETURNING CodeHash, ExpiresAt", [agent_id], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()?)
}

/// Whether the agent has a live code (for tests and `agent list`).
pub fn has_code(conn: &Connection, agent_id: i64) -> DbResult<bool> {
    Ok(conn.query_row("SELECT COUNT(*) FROM EnrolCodes WHERE AgentId = ?1", [agent_id], |row| row.get::<_, i64>(0))?
        > 0)
}
