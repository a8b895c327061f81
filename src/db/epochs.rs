//! The KeyEpochs table and the per-epoch bookkeeping of every table that
//! holds something made under a master-derived key: which epochs exist, how
//! many rows still use each, and the batches a rewrap reads and rewrites.
//! Values go in and out as stored; `crate::keys_rotation` does the crypto.

use rusqlite::{Connection, OptionalExtension, params};

use super::DbResult;

/// One KeyEpochs row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochRow {
    pub epoch: u32,
    pub created_at: i64,
    pub retired_at: Option<i64>,
    pub key_check: Option<String>,
}

/// Records a new epoch (or the first one of a database: `db init`, or the
/// implicit epoch 0 at the first rotation).
pub fn add(conn: &Connection, epoch: u32, now: i64, key_check: Option<&str>) -> DbResult<()> {
    conn.execute(
        "INSERT INTO KeyEpochs (Epoch, CreatedAt, KeyCheck) VALUES (?1, ?2, ?3)
         ON CONFLICT (Epoch) DO UPDATE SET KeyCheck = coalesce(KeyCheck, excluded.KeyCheck)",
        params![epoch, now, key_check],
    )?;
    Ok(())
}

/// Every recorded epoch, oldest first.
pub fn all(conn: &Connection) -> DbResult<Vec<EpochRow>> {
    let mut stmt = conn.prepare("SELECT Epoch, CreatedAt, RetiredAt, KeyCheck FROM KeyEpochs ORDER BY Epoch")?;
    let rows = stmt.query_map([], |row| {
        Ok(EpochRow { epoch: row.get(0)?, created_at: row.get(1)?, retired_at: row.get(2)?, key_check: row.get(3)? })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Marks an epoch retired; true if it was live.
pub fn retire(conn: &Connection, epoch: u32, now: i64) -> DbResult<bool> {
    Ok(conn
        .execute("UPDATE KeyEpochs SET RetiredAt = ?2 WHERE Epoch = ?1 AND RetiredAt IS NULL", params![epoch, now])?
        == 1)
}

/// A text that changes whenever the set of live epochs changes: a running
/// Boss polls it to pick up a rotation or a retirement.
pub fn fingerprint(conn: &Connection) -> DbResult<String> {
    Ok(conn
        .prepare_cached(
            "SELECT coalesce(group_concat(Epoch || ':' || coalesce(RetiredAt, '-'), ','), '') \
             FROM (SELECT Epoch, RetiredAt FROM KeyEpochs ORDER BY Epoch)",
        )?
        .query_row([], |row| row.get(0))?)
}

/// How many rows still use `epoch`, per kind of use.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct EpochUse {
    /// Agents rows whose name, alias, index and tag are under the epoch.
    pub agents: i64,
    /// Password hashes made with the epoch's pepper (redone at a login).
    pub passwords: i64,
    /// Agents with this epoch's pepper, by id (for a refusal that names them).
    pub password_agents: Vec<i64>,
    pub audit: i64,
    pub messages: i64,
    /// Files rows whose name token is under the epoch.
    pub file_names: i64,
    pub enrol_codes: i64,
    /// Login failure and lockout records (short-lived; `retire` drops them).
    pub login_records: i64,
    /// Agents whose last exported wire key is of this epoch.
    pub exported_to: Vec<i64>,
    /// Peppers of retired epochs sealed under this one.
    pub sealed_peppers: i64,
}

impl EpochUse {
    /// Rows a rewrap can move and a retirement must wait for. Password
    /// hashes are not among them (only a login can redo one: `retire` keeps
    /// the epoch's pepper sealed instead), nor login records and exported
    /// keys, which live outside the database's control.
    pub fn rows(&self) -> i64 {
        self.agents + self.audit + self.messages + self.file_names + self.enrol_codes + self.sealed_peppers
    }
}

fn count(conn: &Connection, sql: &str, epoch: u32) -> DbResult<i64> {
    Ok(conn.query_row(sql, [epoch], |row| row.get(0))?)
}

fn ids(conn: &Connection, sql: &str, epoch: u32) -> DbResult<Vec<i64>> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map([epoch], |row| row.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// What still uses `epoch`.
pub fn usage(conn: &Connection, epoch: u32) -> DbResult<EpochUse> {
    let password_agents = ids(conn, "SELECT AgentId FROM Agents WHERE PepperEpoch = ?1 ORDER BY AgentId", epoch)?;
    Ok(EpochUse {
        agents: count(conn, "SELECT count(*) FROM Agents WHERE KeyEpoch = ?1", epoch)?,
        passwords: password_agents.len() as i64,
        password_agents,
        audit: count(conn, "SELECT count(*) FROM Audit WHERE KeyEpoch = ?1", epoch)?,
        messages: count(conn, "SELECT count(*) FROM Messages WHERE KeyEpoch = ?1", epoch)?,
        file_names: count(conn, "SELECT count(*) FROM Files WHERE KeyEpoch = ?1", epoch)?,
        enrol_codes: count(conn, "SELECT count(*) FROM EnrolCodes WHERE KeyEpoch = ?1", epoch)?,
        login_records: count(
            conn,
            "SELECT (SELECT count(*) FROM LoginFailures WHERE KeyEpoch = ?1) + \
             (SELECT count(*) FROM LoginLockouts WHERE KeyEpoch = ?1)",
            epoch,
        )?,
        exported_to: ids(conn, "SELECT AgentId FROM Agents WHERE WireEpoch = ?1 ORDER BY AgentId", epoch)?,
        sealed_peppers: count(
            conn,
            "SELECT count(*) FROM KeyEpochs WHERE KeyEpoch = ?1 AND PepperSealed IS NOT NULL",
            epoch,
        )?,
    })
}

/// Keeps a retiring epoch's pepper, sealed under a live epoch (`key_epoch`).
pub fn seal_pepper(conn: &Connection, epoch: u32, sealed: &str, key_epoch: u32) -> DbResult<()> {
    conn.execute(
        "UPDATE KeyEpochs SET PepperSealed = ?2, KeyEpoch = ?3 WHERE Epoch = ?1",
        params![epoch, sealed, key_epoch],
    )?;
    Ok(())
}

/// A retired epoch's sealed pepper, if one was kept.
pub fn sealed_pepper(conn: &Connection, epoch: u32) -> DbResult<Option<String>> {
    Ok(conn
        .query_row("SELECT PepperSealed FROM KeyEpochs WHERE Epoch = ?1", [epoch], |row| row.get(0))
        .optional()?
        .flatten())
}

/// Forgets the sealed peppers no password hash needs any more.
pub fn drop_unused_peppers(conn: &Connection) -> DbResult<usize> {
    Ok(conn.execute(
        "UPDATE KeyEpochs SET PepperSealed = NULL, KeyEpoch = NULL WHERE PepperSealed IS NOT NULL \
         AND Epoch NOT IN (SELECT PepperEpoch FROM Agents)",
        [],
    )?)
}

/// Drops the login records of a retired epoch: failures and lockouts of
/// names no agent has (an agent's own records move with its row's rewrap).
pub fn drop_login_records(conn: &Connection, epoch: u32) -> DbResult<usize> {
    Ok(conn.execute("DELETE FROM LoginFailures WHERE KeyEpoch = ?1", [epoch])?
        + conn.execute("DELETE FROM LoginLockouts WHERE KeyEpoch = ?1", [epoch])?)
}

/// A message whose token a rewrap reseals.
#[derive(Debug, Clone)]
pub struct MessageToRewrap {
    pub row_id: i64,
    pub agent_id: i64,
    pub token: String,
    pub key_epoch: u32,
}

/// Up to `limit` messages after RowId `after` under an epoch other than
/// `newest`, by RowId.
pub fn messages_to_rewrap(conn: &Connection, newest: u32, after: i64, limit: usize) -> DbResult<Vec<MessageToRewrap>> {
    let mut stmt = conn.prepare_cached(
        "SELECT RowId, AgentId, Token, KeyEpoch FROM Messages \
         WHERE KeyEpoch IS NOT NULL AND KeyEpoch <> ?1 AND RowId > ?2 ORDER BY RowId LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![newest, after, limit as i64], |row| {
        Ok(MessageToRewrap { row_id: row.get(0)?, agent_id: row.get(1)?, token: row.get(2)?, key_epoch: row.get(3)? })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn set_message_token(conn: &Connection, row_id: i64, token: &str, key_epoch: u32) -> DbResult<()> {
    conn.prepare_cached("UPDATE Messages SET Token = ?2, KeyEpoch = ?3 WHERE RowId = ?1")?
        .execute(params![row_id, token, key_epoch])?;
    Ok(())
}

/// A row holding one at-rest token (Audit entry, file name, enrolment code).
#[derive(Debug, Clone)]
pub struct SealedValue {
    pub row_id: i64,
    pub token: String,
}

/// The tables whose one at-rest column a rewrap reseals, and that column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealedColumn {
    AuditEntry,
    FileName,
    EnrolCode,
    RetiredPepper,
}

impl SealedColumn {
    pub const ALL: [SealedColumn; 4] =
        [SealedColumn::AuditEntry, SealedColumn::FileName, SealedColumn::EnrolCode, SealedColumn::RetiredPepper];

    /// (table, key column, sealed column); fixed names, never user input.
    fn names(self) -> (&'static str, &'static str, &'static str) {
        match self {
            SealedColumn::AuditEntry => ("Audit", "RowId", "Entry"),
            SealedColumn::FileName => ("Files", "RowId", "FileName"),
            SealedColumn::EnrolCode => ("EnrolCodes", "AgentId", "CodeHash"),
            // KeyEpoch there is NULL when no pepper is kept, which `<>` skips.
            SealedColumn::RetiredPepper => ("KeyEpochs", "Epoch", "PepperSealed"),
        }
    }
}

/// Up to `limit` rows of `column`'s table after key `after` under an epoch
/// other than `newest`.
pub fn sealed_to_rewrap(
    conn: &Connection,
    column: SealedColumn,
    newest: u32,
    after: i64,
    limit: usize,
) -> DbResult<Vec<SealedValue>> {
    let (table, key, value) = column.names();
    let mut stmt = conn.prepare(&format!(
        "SELECT {key}, {value} FROM {table} WHERE KeyEpoch <> ?1 AND {key} > ?2 ORDER BY {key} LIMIT ?3"
    ))?;
    let rows = stmt.query_map(params![newest, after, limit as i64], |row| {
        Ok(SealedValue { row_id: row.get(0)?, token: row.get(1)? })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn set_sealed(conn: &Connection, column: SealedColumn, row_id: i64, token: &str, key_epoch: u32) -> DbResult<()> {
    let (table, key, value) = column.names();
    conn.execute(
        &format!("UPDATE {table} SET {value} = ?2, KeyEpoch = ?3 WHERE {key} = ?1"),
        params![row_id, token, key_epoch],
    )?;
    Ok(())
}

/// AgentIds of up to `limit` agents after `after` whose row is under an
/// epoch other than `newest`.
pub fn agents_to_rewrap(conn: &Connection, newest: u32, after: i64, limit: usize) -> DbResult<Vec<i64>> {
    let mut stmt =
        conn.prepare("SELECT AgentId FROM Agents WHERE KeyEpoch <> ?1 AND AgentId > ?2 ORDER BY AgentId LIMIT ?3")?;
    let rows = stmt.query_map(params![newest, after, limit as i64], |row| row.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}
