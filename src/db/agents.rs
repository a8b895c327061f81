//! The Agents table as stored: encrypted name and alias, Argon2id hash, blind
//! index. Values go in and out exactly as stored; the registry decrypts.

use rusqlite::{Connection, OptionalExtension, Row, named_params};

use super::{DbError, DbResult};

/// The insert statement (sql/insert_agent.sql), also printed by `db init`.
pub const INSERT_SQL: &str = include_str!("../../sql/insert_agent.sql");

/// One Agents row, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAgent {
    pub id: i64,
    /// Fernet token under the at-rest key.
    pub name: String,
    /// Fernet token under the at-rest key.
    pub alias: String,
    pub level: u8,
    /// Argon2id PHC string.
    pub password_hash: String,
    pub name_index: String,
    /// Bumped by each revocation; part of the wire key's derivation.
    pub key_generation: u32,
    /// Whether the hash was made with the pepper.
    pub password_peppered: bool,
    /// The row's integrity tag (None only between migration and tagging).
    pub row_mac: Option<String>,
    /// The key epoch of the name, alias, blind index and tag.
    pub key_epoch: u32,
    /// The key epoch whose pepper made the password hash (a hash is only
    /// redone at a login, when the password is at hand).
    pub pepper_epoch: u32,
}

/// A row to insert (no id yet).
pub struct NewStoredAgent<'a> {
    pub name: &'a str,
    pub alias: &'a str,
    pub level: u8,
    pub password_hash: &'a str,
    pub name_index: &'a str,
    /// The epoch every sealed, indexed or peppered value above was made in.
    pub key_epoch: u32,
}

/// The columns every query below returns, in `from_row`'s order.
macro_rules! select_agents {
    ($rest:literal) => {
        concat!(
            "SELECT AgentId, AgentName, AgentAlias, AgentSecurityLevel, LoginPassword, AgentNameIndex, KeyGeneration, \
             PasswordPeppered, RowMac, KeyEpoch, PepperEpoch FROM Agents ",
            $rest
        )
    };
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<StoredAgent> {
    Ok(StoredAgent {
        id: row.get(0)?,
        name: row.get(1)?,
        alias: row.get(2)?,
        level: row.get(3)?,
        password_hash: row.get(4)?,
        name_index: row.get(5)?,
        key_generation: row.get(6)?,
        password_peppered: row.get(7)?,
        row_mac: row.get(8)?,
        key_epoch: row.get(9)?,
        pepper_epoch: row.get(10)?,
    })
}

/// Inserts one agent and returns its new AgentId. A name already present (same
/// blind index) is [`DbError::Duplicate`].
pub fn insert(conn: &Connection, agent: &NewStoredAgent<'_>) -> DbResult<i64> {
    conn.execute(
        INSERT_SQL,
        named_params! {
            ":name": agent.name,
            ":alias": agent.alias,
            ":level": agent.level,
            ":password": agent.password_hash,
            ":name_index": agent.name_index,
            ":key_epoch": agent.key_epoch,
        },
    )
    .map_err(DbError::from)?;
    Ok(conn.last_insert_rowid())
}

pub fn by_id(conn: &Connection, id: i64) -> DbResult<Option<StoredAgent>> {
    // Cached: the Boss looks an agent up for every message.
    Ok(conn.prepare_cached(select_agents!("WHERE AgentId = ?1"))?.query_row([id], from_row).optional()?)
}

pub fn by_name_index(conn: &Connection, name_index: &str) -> DbResult<Option<StoredAgent>> {
    Ok(conn
        .prepare_cached(select_agents!("WHERE AgentNameIndex = ?1"))?
        .query_row([name_index], from_row)
        .optional()?)
}

/// The agent whose blind index is any of `indexes` (one per live key epoch:
/// a row not yet rewrapped carries its old epoch's index).
pub fn by_any_name_index(conn: &Connection, indexes: &[String]) -> DbResult<Option<StoredAgent>> {
    for index in indexes {
        if let Some(found) = by_name_index(conn, index)? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// Agents at or below `max_level`, by id.
pub fn at_or_below(conn: &Connection, max_level: u8) -> DbResult<Vec<StoredAgent>> {
    let mut stmt = conn.prepare(select_agents!("WHERE AgentSecurityLevel <= ?1 ORDER BY AgentId"))?;
    let rows = stmt.query_map([max_level], from_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Agent `id`'s key generation, or None if there is no such agent: one
/// aggregate row either way, so the work does not depend on which.
pub fn generation_of(conn: &Connection, id: i64) -> DbResult<Option<u32>> {
    let (count, generation): (i64, u32) = conn
        .prepare_cached("SELECT COUNT(*), coalesce(MAX(KeyGeneration), 0) FROM Agents WHERE AgentId = ?1")?
        .query_row([id], |row| Ok((row.get(0)?, row.get(1)?)))?;
    Ok((count > 0).then_some(generation))
}

/// Every agent's id and key generation: all the Boss's agent cache reads
/// before a line's MAC is checked (never the rest of a row).
pub fn key_generations(conn: &Connection) -> DbResult<Vec<(i64, u32)>> {
    let mut stmt = conn.prepare("SELECT AgentId, KeyGeneration FROM Agents")?;
    let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Sets a row's integrity tag.
pub fn set_row_mac(conn: &Connection, id: i64, row_mac: &str) -> DbResult<()> {
    conn.execute("UPDATE Agents SET RowMac = ?2 WHERE AgentId = ?1", rusqlite::params![id, row_mac])?;
    Ok(())
}

/// Replaces a password hash (re-hashed with the newest pepper after a login).
pub fn set_password(conn: &Connection, id: i64, hash: &str, peppered: bool, pepper_epoch: u32) -> DbResult<()> {
    conn.execute(
        "UPDATE Agents SET LoginPassword = ?2, PasswordPeppered = ?3, PepperEpoch = ?4 WHERE AgentId = ?1",
        rusqlite::params![id, hash, peppered, pepper_epoch],
    )?;
    Ok(())
}

/// Rewrap: the row's sealed name and alias and its blind index, now under
/// `key_epoch` (the caller re-tags the row in the same transaction).
pub fn set_sealed(
    conn: &Connection,
    id: i64,
    name: &str,
    alias: &str,
    name_index: &str,
    key_epoch: u32,
) -> DbResult<()> {
    conn.execute(
        "UPDATE Agents SET AgentName = ?2, AgentAlias = ?3, AgentNameIndex = ?4, KeyEpoch = ?5 WHERE AgentId = ?1",
        rusqlite::params![id, name, alias, name_index, key_epoch],
    )?;
    Ok(())
}

/// Records the epoch of the wire key last exported for the agent
/// (`agent key export`), so `key status` can name who still holds an old one.
pub fn set_wire_epoch(conn: &Connection, id: i64, epoch: u32) -> DbResult<()> {
    conn.execute("UPDATE Agents SET WireEpoch = ?2 WHERE AgentId = ?1", rusqlite::params![id, epoch])?;
    Ok(())
}

/// Every agent, by id.
pub fn all(conn: &Connection) -> DbResult<Vec<StoredAgent>> {
    let mut stmt = conn.prepare(select_agents!("ORDER BY AgentId"))?;
    let rows = stmt.query_map([], from_row)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Deletes one agent; true if there was one.
pub fn delete(conn: &Connection, id: i64) -> DbResult<bool> {
    Ok(conn.execute("DELETE FROM Agents WHERE AgentId = ?1", [id])? == 1)
}

pub fn set_level(conn: &Connection, id: i64, level: u8) -> DbResult<bool> {
    Ok(conn.execute("UPDATE Agents SET AgentSecurityLevel = ?2 WHERE AgentId = ?1", rusqlite::params![id, level])? == 1)
}

/// Moves the agent to its next key generation and returns it.
pub fn bump_key_generation(conn: &Connection, id: i64) -> DbResult<u32> {
    Ok(conn.query_row(
        "UPDATE Agents SET KeyGeneration = KeyGeneration + 1 WHERE AgentId = ?1 RETURNING KeyGeneration",
        [id],
        |row| row.get(0),
    )?)
}

pub fn count(conn: &Connection) -> DbResult<i64> {
    Ok(conn.query_row("SELECT COUNT(*) FROM Agents", [], |row| row.get(0))?)
}

/// The highest AgentId ever handed out (0 for none), from SQLite's
/// AUTOINCREMENT record or the table itself, whichever is higher.
pub fn id_high_water(conn: &Connection) -> DbResult<i64> {
    let exists = |name: &str| -> DbResult<bool> {
        Ok(conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
            [name],
            |row| row.get(0),
        )?)
    };
    let mut high = 0;
    if exists("sqlite_sequence")? {
        let seq: Option<i64> =
            conn.query_row("SELECT seq FROM sqlite_sequence WHERE name = 'Agents'", [], |row| row.get(0)).optional()?;
        high = high.max(seq.unwrap_or(0));
    }
    if exists("Agents")? {
        let max: Option<i64> = conn.query_row("SELECT MAX(AgentId) FROM Agents", [], |row| row.get(0))?;
        high = high.max(max.unwrap_or(0));
    }
    Ok(high)
}

/// Makes the next AgentId at least `high + 1` (after the table was dropped and
/// recreated, which forgets its AUTOINCREMENT record).
pub fn keep_ids_above(conn: &Connection, high: i64) -> DbResult<()> {
    if high > 0 {
        conn.execute("DELETE FROM sqlite_sequence WHERE name = 'Agents'", [])?;
        conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('Agents', ?1)", [high])?;
    }
    Ok(())
}
