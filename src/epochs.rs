//! Key epochs (`spyctl key status | rotate | retire`): binding a home's
//! master secrets to a database, adding an epoch, rewrapping everything
//! stored under an older one, and retiring an epoch nothing uses any more.
//!
//! The order of every step is chosen so a crash at any point loses nothing:
//! - **rotate** writes the new secret to master.key first (atomically), then
//!   records the epoch in the database. A crash between the two leaves a
//!   secret nobody used; the next rotation replaces it.
//! - **rewrap** moves rows in small IMMEDIATE transactions (each row's new
//!   value and its KeyEpoch change together), so the Boss's writer waits at
//!   most one batch, and a rewrap stopped half-way is simply run again
//!   (`key rotate --resume`). Files are re-sealed beside the old one and
//!   renamed over it.
//! - **retire** re-checks, inside one IMMEDIATE transaction, that no row
//!   uses the epoch and marks it retired; only then is its secret removed
//!   from master.key. Triggers (sql/epoch_guards.sql) refuse rows under a
//!   retired epoch from a process that has not noticed yet.
//!
//! Knows nothing of the CLI: the caller loads and saves master.key.

use rusqlite::{Connection, TransactionBehavior};

use crate::boss::files::{ChunkError, FileAssembler};
use crate::crypto::{FernetKey, KeyRing, MasterKey, MasterKeys, MissingEpoch};
use crate::db::epochs::{self as stored, EpochRow, EpochUse, SealedColumn};
use crate::db::{self, DbError, agents, messages};
use crate::registry::{self, RegistryError, RegistryKeys};

/// Rows per rewrap transaction: small enough that a Boss's commit waits a
/// few milliseconds at most, large enough that 10,000 messages take tens of
/// transactions, not thousands.
pub const DEFAULT_BATCH: usize = 256;

/// What went wrong with key epochs.
#[derive(Debug)]
pub enum EpochError {
    Db(DbError),
    Registry(RegistryError),
    /// The database uses an epoch master.key does not hold.
    Missing(MissingEpoch),
    /// master.key's secret for this epoch is not the one the database was
    /// written with (its check value differs): another home's key.
    WrongKey(u32),
    /// The OS random number generator failed.
    Random(getrandom::Error),
    /// A received file could not be re-sealed.
    Files(ChunkError),
    /// Reading the files directory failed.
    Io(std::io::Error),
    /// `retire` of the epoch new writes use.
    Newest(u32),
    /// `retire` of an epoch that is not live.
    NotLive(u32),
    /// `retire` while something still needs the epoch.
    InUse {
        epoch: u32,
        usage: Box<EpochUse>,
        files: usize,
    },
}

impl std::fmt::Display for EpochError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EpochError::Db(_) => f.write_str("the key epochs cannot be read or written"),
            EpochError::Registry(_) => f.write_str("an agent row cannot be rewrapped"),
            EpochError::Missing(m) => m.fmt(f),
            EpochError::WrongKey(epoch) => {
                write!(f, "master.key's secret for key epoch {epoch} is not the one this database was written with")
            }
            EpochError::Random(_) => f.write_str("the operating system's random number generator failed"),
            EpochError::Files(_) => f.write_str("a received file cannot be re-sealed"),
            EpochError::Io(_) => f.write_str("the received files cannot be listed"),
            EpochError::Newest(epoch) => {
                write!(f, "key epoch {epoch} is the newest: new writes use it, so it cannot be retired")
            }
            EpochError::NotLive(epoch) => write!(f, "key epoch {epoch} is not a live epoch of this database"),
            EpochError::InUse { epoch, usage, files } => {
                write!(f, "key epoch {epoch} is still in use: {}", describe_use(usage, *files))
            }
        }
    }
}

impl std::error::Error for EpochError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EpochError::Db(e) => Some(e),
            EpochError::Registry(e) => Some(e),
            EpochError::Random(e) => Some(e),
            EpochError::Files(e) => Some(e),
            EpochError::Io(e) => Some(e),
            EpochError::Missing(_)
            | EpochError::WrongKey(_)
            | EpochError::Newest(_)
            | EpochError::NotLive(_)
            | EpochError::InUse { .. } => None,
        }
    }
}

impl From<DbError> for EpochError {
    fn from(e: DbError) -> Self {
        EpochError::Db(e)
    }
}

impl From<rusqlite::Error> for EpochError {
    fn from(e: rusqlite::Error) -> Self {
        EpochError::Db(e.into())
    }
}

impl From<RegistryError> for EpochError {
    fn from(e: RegistryError) -> Self {
        EpochError::Registry(e)
    }
}

/// One line naming what still uses an epoch.
pub fn describe_use(usage: &EpochUse, files: usize) -> String {
    let mut parts = Vec::new();
    let mut part = |n: i64, what: &str| {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    };
    part(usage.agents, "agent rows");
    part(usage.audit, "audit entries");
    part(usage.messages, "messages");
    part(usage.file_names, "file names");
    part(usage.enrol_codes, "enrolment codes");
    part(usage.sealed_peppers, "sealed peppers of retired epochs");
    part(files as i64, "stored or partial files");
    if parts.is_empty() { "nothing".to_string() } else { parts.join(", ") }
}

/// The keys of the database behind `conn`: every live epoch's secret from
/// `master`, bound to the database's identifier, each checked against the
/// check value the database recorded for it.
pub fn open_keyring(master: &MasterKeys, conn: &Connection) -> Result<KeyRing, EpochError> {
    let database_id = db::database_id(conn)?;
    let live = db::live_epochs(conn)?;
    let keyring = master.bind(&database_id, &live).map_err(EpochError::Missing)?;
    check_values(&keyring, &recorded(conn)?)?;
    Ok(keyring)
}

/// Every KeyEpochs row (none for a database from before epochs).
fn recorded(conn: &Connection) -> Result<Vec<EpochRow>, EpochError> {
    let version: i32 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if version < 6 { Ok(Vec::new()) } else { Ok(stored::all(conn)?) }
}

fn check_values(keyring: &KeyRing, rows: &[EpochRow]) -> Result<(), EpochError> {
    for row in rows.iter().filter(|r| r.retired_at.is_none()) {
        if let (Some(expected), Some(actual)) = (&row.key_check, keyring.check_value(row.epoch))
            && *expected != actual
        {
            return Err(EpochError::WrongKey(row.epoch));
        }
    }
    Ok(())
}

/// Step one of a rotation: a fresh secret as the next epoch (above every
/// epoch the file or the database has seen), added to `master`. The caller
/// saves master.key, then calls [`record_rotation`].
pub fn add_epoch(master: &mut MasterKeys, conn: &Connection) -> Result<u32, EpochError> {
    let highest_recorded = recorded(conn)?.iter().map(|r| r.epoch).max().unwrap_or(0);
    let next = master.newest_epoch().max(highest_recorded) + 1;
    master.insert(next, MasterKey::generate().map_err(EpochError::Random)?);
    Ok(next)
}

/// Step two: records the new epoch (and the epochs before it, with their
/// check values, if this is the database's first rotation). Returns the
/// database's keys with the new epoch as the newest.
pub fn record_rotation(master: &MasterKeys, conn: &mut Connection, epoch: u32) -> Result<KeyRing, EpochError> {
    let database_id = db::database_id(conn)?;
    let mut live = db::live_epochs(conn)?;
    live.push(epoch);
    let keyring = master.bind(&database_id, &live).map_err(EpochError::Missing)?;
    let now = crate::crypto::fernet::unix_now() as i64;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for live_epoch in keyring.epochs() {
        stored::add(&tx, live_epoch, now, keyring.check_value(live_epoch).as_deref())?;
    }
    tx.commit()?;
    Ok(keyring)
}

/// What a rewrap moved to the newest epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RewrapReport {
    pub epoch: u32,
    pub agents: usize,
    pub messages: usize,
    pub audit: usize,
    pub file_names: usize,
    pub enrol_codes: usize,
    /// Peppers of retired epochs (kept for password hashes not yet redone).
    pub peppers: usize,
    pub files: usize,
    /// Messages no live key opens (from an agent whose key generation is
    /// lost with its row, say): left as they are, and named by `key status`.
    pub unopenable: usize,
    pub transactions: usize,
}

impl RewrapReport {
    pub fn rows(&self) -> usize {
        self.agents + self.messages + self.audit + self.file_names + self.enrol_codes + self.peppers
    }
}

/// How far a rewrap has got (for a progress line).
pub trait RewrapProgress {
    fn batch_done(&mut self, report: &RewrapReport);
}

impl<F: FnMut(&RewrapReport)> RewrapProgress for F {
    fn batch_done(&mut self, report: &RewrapReport) {
        self(report)
    }
}

/// Moves everything stored under an older live epoch to the newest, online:
/// agent rows, messages, audit entries, file names, enrolment codes, then the
/// received files themselves. Each batch of at most `batch` rows is its own
/// short transaction, so a Boss keeps committing in between.
pub fn rewrap(
    conn: &mut Connection,
    keyring: &KeyRing,
    files: &FileAssembler,
    batch: usize,
    progress: &mut dyn RewrapProgress,
) -> Result<RewrapReport, EpochError> {
    let batch = batch.max(1);
    let keys = RegistryKeys::derive(keyring);
    let newest = keyring.newest_epoch();
    let mut report = RewrapReport { epoch: newest, ..RewrapReport::default() };

    // Agents.
    let mut after = 0;
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let ids = stored::agents_to_rewrap(&tx, newest, after, batch)?;
        for id in &ids {
            report.agents += usize::from(registry::rewrap_agent(&tx, &keys, *id)?);
        }
        tx.commit()?;
        let Some(last) = ids.last() else { break };
        after = *last;
        report.transactions += 1;
        progress.batch_done(&report);
    }

    // Messages, under each agent's wire key of its epoch and generation.
    let mut after = 0;
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let rows = stored::messages_to_rewrap(&tx, newest, after, batch)?;
        for row in &rows {
            // A deleted agent's generation is gone with its row: try the
            // first few, since a revocation rarely happens more often.
            let tries = agents::by_id(&tx, row.agent_id)?.map_or(MAX_GENERATIONS_OF_DELETED, |a| a.key_generation);
            match keyring.open_agent_token_with(row.agent_id, tries, row.key_epoch, row.token.as_bytes()) {
                Some((opened, used_generation)) => {
                    let plaintext = zeroize::Zeroizing::new(opened.plaintext);
                    let key = keyring.agent_wire_key_at(row.agent_id, used_generation);
                    // The original time is kept, as `MultiFernet.rotate` does.
                    let token = key.seal_dated(&plaintext, opened.timestamp);
                    stored::set_message_token(&tx, row.row_id, &token, newest)?;
                    report.messages += 1;
                }
                None => report.unopenable += 1,
            }
        }
        tx.commit()?;
        let Some(last) = rows.last() else { break };
        after = last.row_id;
        report.transactions += 1;
        progress.batch_done(&report);
    }

    // Audit entries, file names and enrolment codes: one at-rest token each.
    let from: Vec<FernetKey> = keyring.epochs().map(|e| FernetKey::from_bytes(&at_rest(keyring, e))).collect();
    let from_refs: Vec<&FernetKey> = from.iter().collect();
    let to = &from[0];
    for column in SealedColumn::ALL {
        let mut after = 0;
        loop {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let rows = stored::sealed_to_rewrap(&tx, column, newest, after, batch)?;
            for row in &rows {
                let token = to.rotate(row.token.as_bytes(), &from_refs).map_err(|_| RegistryError::Undecryptable)?;
                stored::set_sealed(&tx, column, row.row_id, &token, newest)?;
                *match column {
                    SealedColumn::AuditEntry => &mut report.audit,
                    SealedColumn::FileName => &mut report.file_names,
                    SealedColumn::EnrolCode => &mut report.enrol_codes,
                    SealedColumn::RetiredPepper => &mut report.peppers,
                } += 1;
            }
            tx.commit()?;
            let Some(last) = rows.last() else { break };
            after = last.row_id;
            report.transactions += 1;
            progress.batch_done(&report);
        }
    }

    // The received files' contents: re-sealed one by one (no transaction:
    // the Files row does not change, the file's header names its epoch).
    files.set_keys(keyring.files_keys());
    for (agent_id, file_id) in messages::all_file_ids(conn)? {
        if files.reseal(agent_id, &file_id).map_err(EpochError::Files)? {
            report.files += 1;
            progress.batch_done(&report);
        }
    }
    // The files orders carry (files/orders/), the same way.
    for file_id in crate::db::order_files::all_ids(conn)? {
        if crate::boss::order_files::reseal(files.root(), &files.keys(), &file_id).map_err(EpochError::Io)? {
            report.files += 1;
            progress.batch_done(&report);
        }
    }
    Ok(report)
}

/// How many key generations of a deleted agent a rewrap tries.
const MAX_GENERATIONS_OF_DELETED: u32 = 16;

fn at_rest(keyring: &KeyRing, epoch: u32) -> zeroize::Zeroizing<[u8; 32]> {
    keyring.derive_at(epoch, crate::crypto::keys::labels::AT_REST).expect("a live epoch of this ring")
}

/// One epoch as `key status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EpochStatus {
    pub epoch: u32,
    /// None for the implicit epoch 0 of a database never rotated.
    pub created_at: Option<i64>,
    pub retired_at: Option<i64>,
    pub newest: bool,
    /// Whether master.key holds the secret (a retired epoch's is removed).
    pub in_master_key: bool,
    pub usage: EpochUse,
    /// Stored and partial files sealed under the epoch.
    pub files: usize,
}

/// Every epoch of the database (the implicit epoch 0 included), with what
/// uses each; also how many files under `files/` have an unreadable header.
pub fn status(
    conn: &Connection,
    master: &MasterKeys,
    files: &FileAssembler,
) -> Result<(Vec<EpochStatus>, usize), EpochError> {
    let mut rows = recorded(conn)?;
    if rows.is_empty() {
        rows.push(EpochRow { epoch: 0, created_at: 0, retired_at: None, key_check: None });
    }
    let on_disk = files.epochs_on_disk().map_err(EpochError::Io)?;
    let in_file = master.epochs();
    let newest = rows.iter().filter(|r| r.retired_at.is_none()).map(|r| r.epoch).max();
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        out.push(EpochStatus {
            epoch: row.epoch,
            created_at: (row.created_at > 0).then_some(row.created_at),
            retired_at: row.retired_at,
            newest: Some(row.epoch) == newest,
            in_master_key: in_file.contains(&row.epoch),
            usage: stored::usage(conn, row.epoch)?,
            files: on_disk.get(&Some(row.epoch)).copied().unwrap_or(0),
        });
    }
    Ok((out, on_disk.get(&None).copied().unwrap_or(0)))
}

/// Marks `epoch` retired if nothing uses it any more; the caller then
/// removes its secret from master.key. Login records of the epoch (failures
/// of names no agent has) are dropped with it. Password hashes made with the
/// epoch's pepper cannot be redone without their passwords, so the pepper
/// alone is kept, sealed under the newest epoch's at-rest key, until each of
/// those agents logs in. Returns the agents whose last exported wire key was
/// of this epoch: those keys stop working now.
pub fn retire(
    conn: &mut Connection,
    keyring: &KeyRing,
    files: &FileAssembler,
    epoch: u32,
) -> Result<Vec<i64>, EpochError> {
    if epoch == keyring.newest_epoch() {
        return Err(EpochError::Newest(epoch));
    }
    if !keyring.epochs().any(|e| e == epoch) {
        return Err(EpochError::NotLive(epoch));
    }
    let on_disk = files.epochs_on_disk().map_err(EpochError::Io)?.get(&Some(epoch)).copied().unwrap_or(0);
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let usage = stored::usage(&tx, epoch)?;
    if usage.rows() > 0 || on_disk > 0 {
        return Err(EpochError::InUse { epoch, usage: Box::new(usage), files: on_disk });
    }
    stored::drop_login_records(&tx, epoch)?;
    if usage.passwords > 0 {
        let keys = RegistryKeys::derive(keyring);
        let pepper = keyring.derive_at(epoch, crate::crypto::keys::labels::PEPPER).ok_or(EpochError::NotLive(epoch))?;
        let sealed = keys.conceal(&zeroize::Zeroizing::new(hex::encode(pepper.as_ref())));
        stored::seal_pepper(&tx, epoch, &sealed, keyring.newest_epoch())?;
    }
    stored::retire(&tx, epoch, crate::crypto::fernet::unix_now() as i64)?;
    tx.commit()?;
    Ok(usage.exported_to)
}
