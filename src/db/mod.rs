//! Storage: opening the SQLite database, its pragmas and schema version, and
//! the tables' queries (one module per table group). rusqlite only; no
//! cryptography happens here: callers hand in values already encrypted.

pub mod agents;
pub mod audit;
pub mod chat;
pub mod demo;
pub mod epochs;
pub mod identities;
pub mod limits;
pub mod logins;
pub mod messages;
pub mod order_files;
pub mod orders;

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// The schema this build writes; `PRAGMA user_version` holds it.
pub const SCHEMA_VERSION: i32 = 10;
/// Length of the random identifier `db init` gives each database.
pub const DATABASE_ID_BYTES: usize = 16;
/// The DDL script (`db init`): drop and create every table.
pub const SCHEMA_SQL: &str = include_str!("../../sql/schema.sql");
/// How long a writer waits for another writer's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// What can go wrong opening or using the store.
#[derive(Debug)]
pub enum DbError {
    /// No database file at this path.
    Missing(PathBuf),
    /// The file exists but holds no spyctl tables.
    NotInitialised(PathBuf),
    /// Written by a newer spyctl.
    TooNew {
        found: i32,
    },
    /// Not an SQLite database, or damaged.
    Corrupt {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// The file (or its directory) cannot be opened as needed: permissions,
    /// ownership, a read-only file system. Nothing about the data is wrong.
    CannotOpen {
        path: PathBuf,
        source: OpenCause,
    },
    /// A UNIQUE constraint refused a row.
    Duplicate(rusqlite::Error),
    /// A limited read (`db query --sql`) reached one of its limits.
    Limit(limits::LimitError),
    Sqlite(rusqlite::Error),
}

/// What refused to open the database file: the OS or SQLite.
#[derive(Debug)]
pub enum OpenCause {
    Io(std::io::Error),
    Sqlite(rusqlite::Error),
}

impl std::fmt::Display for OpenCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenCause::Io(e) => e.fmt(f),
            OpenCause::Sqlite(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for OpenCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // Transparent: its Display is the inner error's, so the inner error's
        // own causes come next.
        match self {
            OpenCause::Io(e) => e.source(),
            OpenCause::Sqlite(e) => e.source(),
        }
    }
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DbError::Missing(p) => write!(f, "no database at {}", p.display()),
            DbError::NotInitialised(p) => write!(f, "the database at {} has no spyctl tables", p.display()),
            DbError::TooNew { found } => write!(
                f,
                "the database has schema version {found}, newer than this spyctl understands ({SCHEMA_VERSION})"
            ),
            DbError::Corrupt { path, .. } => write!(f, "{} is not a usable spyctl database", path.display()),
            DbError::CannotOpen { path, .. } => write!(f, "cannot open the database {}", path.display()),
            DbError::Duplicate(_) => f.write_str("a row with the same key already exists"),
            DbError::Limit(limit) => limit.fmt(f),
            DbError::Sqlite(_) => f.write_str("database error"),
        }
    }
}

impl std::error::Error for DbError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DbError::Corrupt { source, .. } | DbError::Duplicate(source) | DbError::Sqlite(source) => Some(source),
            DbError::CannotOpen { source, .. } => Some(source),
            // Transparent: the limit's own text is this error's text.
            DbError::Limit(limit) => std::error::Error::source(limit),
            DbError::Missing(_) | DbError::NotInitialised(_) | DbError::TooNew { .. } => None,
        }
    }
}

impl From<rusqlite::Error> for DbError {
    fn from(err: rusqlite::Error) -> Self {
        if let rusqlite::Error::SqliteFailure(code, _) = &err
            && code.code == rusqlite::ErrorCode::ConstraintViolation
            && code.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
        {
            return DbError::Duplicate(err);
        }
        DbError::Sqlite(err)
    }
}

pub type DbResult<T> = Result<T, DbError>;

/// Opens the database for `db init`, creating an empty 0600 file if needed.
/// The schema is not applied here: see [`apply_schema`].
pub fn create(path: &Path) -> DbResult<Connection> {
    if !path.exists() {
        // Create it ourselves so it is 0600 from the first byte; SQLite would
        // use the umask. Its -wal and -shm files copy these permissions.
        OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| cannot_open(e, path))?;
    } else {
        check_access(path, true)?;
    }
    let conn = Connection::open(path).map_err(|e| corrupt_or(e, path))?;
    configure(&conn, path)?;
    Ok(conn)
}

/// Opens an existing, initialised database for reading and writing, applying
/// forward migrations if it is older than this build.
pub fn open(path: &Path) -> DbResult<Connection> {
    if !path.is_file() {
        return Err(DbError::Missing(path.to_path_buf()));
    }
    check_access(path, true)?;
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|e| corrupt_or(e, path))?;
    // Refuse a file that is not ours before configuring: switching an empty or
    // foreign file to WAL would write to it, and a failed command must not.
    conn.busy_timeout(BUSY_TIMEOUT)?;
    check_version(&conn, path)?;
    configure(&conn, path)?;
    migrate(&conn, path)?;
    Ok(conn)
}

/// Opens an existing database read-only (ad-hoc queries, the inbox reader).
pub fn open_read_only(path: &Path) -> DbResult<Connection> {
    if !path.is_file() {
        return Err(DbError::Missing(path.to_path_buf()));
    }
    check_access(path, false)?;
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|e| corrupt_or(e, path))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    check_version(&conn, path)?;
    conn.pragma_update(None, "query_only", true)?;
    Ok(conn)
}

/// WAL for concurrent readers with one writer; synchronous=FULL so a commit is
/// on disk when it returns (an ACK promises durability); foreign keys on.
fn configure(conn: &Connection, path: &Path) -> DbResult<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String =
        conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0)).map_err(|e| corrupt_or(e, path))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(mode, "could not switch the database to WAL mode");
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(())
}

/// Opens the file as SQLite will (read, and write unless `read_only`) so a
/// permission problem is reported as one, with the OS's own error, before
/// SQLite turns it into a vaguer "unable to open database file".
fn check_access(path: &Path, write: bool) -> DbResult<()> {
    OpenOptions::new().read(true).write(write).open(path).map(drop).map_err(|e| cannot_open(e, path))
}

fn cannot_open(err: std::io::Error, path: &Path) -> DbError {
    DbError::CannotOpen { path: path.to_path_buf(), source: OpenCause::Io(err) }
}

/// Sorts an SQLite error by what the user must do about it: a damaged file,
/// one that cannot be opened or written (permissions, read-only media), or
/// anything else.
fn corrupt_or(err: rusqlite::Error, path: &Path) -> DbError {
    use rusqlite::ErrorCode::{CannotOpen, DatabaseCorrupt, NotADatabase, PermissionDenied, ReadOnly};
    match &err {
        rusqlite::Error::SqliteFailure(code, _) if matches!(code.code, NotADatabase | DatabaseCorrupt) => {
            DbError::Corrupt { path: path.to_path_buf(), source: err }
        }
        rusqlite::Error::SqliteFailure(code, _) if matches!(code.code, CannotOpen | ReadOnly | PermissionDenied) => {
            DbError::CannotOpen { path: path.to_path_buf(), source: OpenCause::Sqlite(err) }
        }
        _ => DbError::from(err),
    }
}

fn user_version(conn: &Connection, path: &Path) -> DbResult<i32> {
    conn.query_row("PRAGMA user_version", [], |row| row.get(0)).map_err(|e| corrupt_or(e, path))
}

fn check_version(conn: &Connection, path: &Path) -> DbResult<i32> {
    let version = user_version(conn, path)?;
    if version > SCHEMA_VERSION {
        return Err(DbError::TooNew { found: version });
    }
    if version == 0 {
        return Err(DbError::NotInitialised(path.to_path_buf()));
    }
    Ok(version)
}

/// Brings an older schema up to [`SCHEMA_VERSION`], one step per version, each
/// in its own transaction. Version 1 is the first, so there is nothing to do
/// yet beyond refusing what this build cannot read.
fn migrate(conn: &Connection, path: &Path) -> DbResult<()> {
    let version = check_version(conn, path)?;
    if version < 2 {
        // Version 2 adds the database identifier. A database from before it
        // gets the empty identifier: HKDF treats an empty salt as no salt, so
        // its keys, stored tokens, sessions and exported wire keys stay valid.
        // (Databases created from now on get random ones at `db init`.)
        let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch("CREATE TABLE IF NOT EXISTS Meta (Name TEXT PRIMARY KEY, Value BLOB NOT NULL)")?;
        tx.execute("INSERT OR IGNORE INTO Meta (Name, Value) VALUES ('database-id', X'')", [])?;
        tx.pragma_update(None, "user_version", 2)?;
        tx.commit()?;
        tracing::info!(path = %path.display(), "database migrated to schema version 2 (database identifier)");
    }
    if version < 3 {
        // Version 3: key generations (for `agent revoke`) and the audit log.
        let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(
            "ALTER TABLE Agents ADD COLUMN KeyGeneration INTEGER NOT NULL DEFAULT 0;
             CREATE TABLE IF NOT EXISTS Audit (RowId INTEGER PRIMARY KEY, At INTEGER NOT NULL,
                                               ActorId INTEGER NOT NULL, Entry TEXT NOT NULL);",
        )?;
        tx.pragma_update(None, "user_version", 3)?;
        tx.commit()?;
        tracing::info!(path = %path.display(), "database migrated to schema version 3 (key generations, audit)");
    }
    if version < 4 {
        // Version 4: row integrity tags and peppered passwords. Computing the
        // tags needs the master key, which this layer never sees: the rows
        // are left untagged and marked so, and the registry tags them the
        // first time it opens the database with the key
        // (`registry::seal_untagged_rows`, which refuses if this database
        // was ever tagged before).
        let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(
            "ALTER TABLE Agents ADD COLUMN PasswordPeppered INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE Agents ADD COLUMN RowMac TEXT;
             INSERT OR REPLACE INTO Meta (Name, Value) VALUES ('rows-untagged', X'01');",
        )?;
        tx.pragma_update(None, "user_version", 4)?;
        tx.commit()?;
        tracing::info!(path = %path.display(), "database migrated to schema version 4 (row integrity tags)");
    }
    if version < 5 {
        // Version 5: agent identities, enrolment codes, message signatures.
        let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(MIGRATE_V5)?;
        tx.pragma_update(None, "user_version", 5)?;
        tx.commit()?;
        tracing::info!(path = %path.display(), "database migrated to schema version 5 (identities, enrolment)");
    }
    if version < 6 {
        let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(MIGRATE_V6)?;
        tx.execute_batch(EPOCH_GUARDS_SQL)?;
        tx.pragma_update(None, "user_version", 6)?;
        tx.commit()?;
        tracing::info!(path = %path.display(), "database migrated to schema version 6 (key epochs)");
    }
    if version < 7 {
        let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(MIGRATE_V7)?;
        tx.pragma_update(None, "user_version", 7)?;
        tx.commit()?;
        tracing::info!(path = %path.display(), "database migrated to schema version 7 (orders)");
    }
    if version < 8 {
        // Version 8 (issue 13, exports and signed files): minisign's global
        // signature beside each message signature, and file signatures.
        let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(MIGRATE_V8)?;
        tx.pragma_update(None, "user_version", 8)?;
        tx.commit()?;
        tracing::info!(path = %path.display(), "database migrated to schema version 8 (signed files, exports)");
    }
    if version < 9 {
        let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(MIGRATE_V9)?;
        tx.pragma_update(None, "user_version", 9)?;
        tx.commit()?;
        tracing::info!(path = %path.display(), "database migrated to schema version 9 (chat)");
    }
    if version < 10 {
        let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(MIGRATE_V10)?;
        tx.pragma_update(None, "user_version", 10)?;
        tx.commit()?;
        tracing::info!(path = %path.display(), "database migrated to schema version 10 (files with orders)");
    }
    Ok(())
}

/// The version-6 step: key epochs. Every existing row was written under the
/// only epoch there was, 0; messages under an enrolled agent's channel key
/// (signed ones) are under no master-derived key at all.
const MIGRATE_V6: &str = "
    CREATE TABLE IF NOT EXISTS KeyEpochs (
        Epoch INTEGER PRIMARY KEY, CreatedAt INTEGER NOT NULL, RetiredAt INTEGER, KeyCheck TEXT,
        PepperSealed TEXT, KeyEpoch INTEGER);
    ALTER TABLE Agents ADD COLUMN KeyEpoch INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE Agents ADD COLUMN PepperEpoch INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE Agents ADD COLUMN WireEpoch INTEGER;
    ALTER TABLE Audit ADD COLUMN KeyEpoch INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE LoginFailures ADD COLUMN KeyEpoch INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE LoginLockouts ADD COLUMN KeyEpoch INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE Messages ADD COLUMN KeyEpoch INTEGER;
    UPDATE Messages SET KeyEpoch = 0 WHERE SignerRow IS NULL;
    ALTER TABLE Files ADD COLUMN KeyEpoch INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE EnrolCodes ADD COLUMN KeyEpoch INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX IF NOT EXISTS MessagesByEpoch ON Messages (KeyEpoch);
";

/// The version-7 step: the agents' outboxes (sql/schema.sql, Orders).
const MIGRATE_V7: &str = "
    CREATE TABLE IF NOT EXISTS Orders (
        RowId INTEGER PRIMARY KEY, AgentId INTEGER NOT NULL, OrderId TEXT NOT NULL, CreatedAt INTEGER NOT NULL,
        IssuedBy INTEGER NOT NULL, Sealed TEXT NOT NULL, DeliveredAt INTEGER, UNIQUE (AgentId, OrderId));
    CREATE INDEX IF NOT EXISTS OrdersPending ON Orders (AgentId, RowId) WHERE DeliveredAt IS NULL;
";

/// The version-9 step: chat lines relayed by the Boss (sql/schema.sql, ChatLines).
const MIGRATE_V9: &str = "
    CREATE TABLE IF NOT EXISTS ChatLines (
        RowId INTEGER PRIMARY KEY, AgentId INTEGER NOT NULL, LineId TEXT NOT NULL, CreatedAt INTEGER NOT NULL,
        Sender INTEGER NOT NULL, ToAgent INTEGER NOT NULL, Sealed TEXT NOT NULL, DeliveredAt INTEGER,
        UNIQUE (AgentId, LineId));
    CREATE INDEX IF NOT EXISTS ChatPending ON ChatLines (AgentId, ToAgent, RowId) WHERE DeliveredAt IS NULL;
";

/// The version-10 step: files that travel with orders (sql/schema.sql,
/// OrderFiles and OrderAttachments).
const MIGRATE_V10: &str = "
    CREATE TABLE IF NOT EXISTS OrderFiles (
        FileId TEXT PRIMARY KEY, Size INTEGER NOT NULL, Sha256 TEXT NOT NULL, CreatedAt INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS OrderAttachments (
        AgentId INTEGER NOT NULL, OrderId TEXT NOT NULL, FileId TEXT NOT NULL REFERENCES OrderFiles (FileId),
        Sealed TEXT NOT NULL, DeliveredAt INTEGER, PRIMARY KEY (AgentId, OrderId), UNIQUE (AgentId, FileId));
";

/// Triggers that refuse a row written under a retired key epoch: the last
/// guard against a process that has not yet noticed a retirement (its key
/// for that epoch is gone from master.key, so the row could never be read).
pub const EPOCH_GUARDS_SQL: &str = include_str!("../../sql/epoch_guards.sql");

/// The version-4 step: the tables and columns of sql/schema.sql it adds.
const MIGRATE_V5: &str = "
    ALTER TABLE Messages ADD COLUMN Signature BLOB;
    ALTER TABLE Messages ADD COLUMN SignedAt INTEGER;
    ALTER TABLE Messages ADD COLUMN SignerRow INTEGER;
    CREATE TABLE IF NOT EXISTS AgentIdentities (
        RowId INTEGER PRIMARY KEY, AgentId INTEGER NOT NULL,
        X25519 BLOB NOT NULL CHECK (length(X25519) = 32), Ed25519 BLOB NOT NULL CHECK (length(Ed25519) = 32),
        EnrolledAt INTEGER NOT NULL, RevokedAt INTEGER);
    CREATE UNIQUE INDEX IF NOT EXISTS AgentIdentitiesCurrent ON AgentIdentities (AgentId) WHERE RevokedAt IS NULL;
    CREATE TABLE IF NOT EXISTS EnrolCodes (
        AgentId INTEGER PRIMARY KEY, CodeHash TEXT NOT NULL, ExpiresAt INTEGER NOT NULL, IssuedBy INTEGER NOT NULL);
";

/// The version-8 step (issue 13's exports and signed files): the columns of
/// sql/schema.sql it adds. Rows stored before it have no global signature: they verify, but cannot be exported.
const MIGRATE_V8: &str = "
    ALTER TABLE Messages ADD COLUMN TrustedSignature BLOB;
    ALTER TABLE Files ADD COLUMN Signature BLOB;
    ALTER TABLE Files ADD COLUMN SignedAt INTEGER;
    ALTER TABLE Files ADD COLUMN SignerRow INTEGER;
    ALTER TABLE Files ADD COLUMN TrustedSignature BLOB;
";

/// Runs the DDL (drop + create every table), records the new database's
/// identifier and stamps the schema version, inside the caller's transaction
/// so a failure leaves the old tables.
pub fn apply_schema(tx: &rusqlite::Transaction<'_>, database_id: &[u8; DATABASE_ID_BYTES]) -> DbResult<()> {
    tx.execute_batch(SCHEMA_SQL)?;
    tx.execute_batch(EPOCH_GUARDS_SQL)?;
    tx.execute("INSERT INTO Meta (Name, Value) VALUES ('database-id', ?1)", [&database_id[..]])?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    Ok(())
}

/// Whether a migration left rows to be tagged by the registry.
pub fn rows_untagged(conn: &Connection) -> DbResult<bool> {
    Ok(conn.query_row("SELECT EXISTS (SELECT 1 FROM Meta WHERE Name = 'rows-untagged')", [], |row| row.get(0))?)
}

/// Clears the mark [`rows_untagged`] reads, inside the caller's transaction.
pub fn clear_rows_untagged(conn: &Connection) -> DbResult<()> {
    conn.execute("DELETE FROM Meta WHERE Name = 'rows-untagged'", [])?;
    Ok(())
}

/// The database's identifier: the salt of every key derived for it. A
/// version-1 database opened read-only (so not migrated) has the empty one,
/// exactly what its migration would give it.
pub fn database_id(conn: &Connection) -> DbResult<Vec<u8>> {
    let version: i32 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if version < 2 {
        return Ok(Vec::new());
    }
    Ok(conn.query_row("SELECT Value FROM Meta WHERE Name = 'database-id'", [], |row| row.get(0))?)
}

/// The database's live key epochs, ascending: `[0]` until the first
/// `key rotate` records any (a database from before epochs, or a fresh one
/// whose home never rotated). Read-only on an unmigrated database too.
pub fn live_epochs(conn: &Connection) -> DbResult<Vec<u32>> {
    let version: i32 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if version < 6 {
        return Ok(vec![0]);
    }
    let epochs: Vec<u32> = conn
        .prepare_cached("SELECT Epoch FROM KeyEpochs WHERE RetiredAt IS NULL ORDER BY Epoch")?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(if epochs.is_empty() { vec![0] } else { epochs })
}

/// Every table that holds at least one row, with its row count, in name
/// order: what a plain `db init` would destroy. SQLite's own `sqlite_*`
/// tables and `Meta` (the database's identity, which `db init` makes anew)
/// are not data.
pub fn tables_with_rows(conn: &Connection) -> DbResult<Vec<(String, i64)>> {
    let names: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT IN ('Meta', 'KeyEpochs') ORDER BY name")?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    let mut holding = Vec::new();
    for name in names {
        // A name from sqlite_master, quoted as an identifier ("" escapes ").
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        let rows: i64 = conn.query_row(&format!("SELECT count(*) FROM {quoted}"), [], |row| row.get(0))?;
        if rows > 0 {
            holding.push((name, rows));
        }
    }
    Ok(holding)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_1_database_migrates_step_by_step_to_the_current_schema() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("spyctl.db");
        let mut conn = create(&path).expect("create");
        let tx = conn.transaction().expect("tx");
        apply_schema(&tx, &[0xAB; DATABASE_ID_BYTES]).expect("schema");
        tx.commit().expect("commit");
        assert_eq!(database_id(&conn).expect("id"), vec![0xAB; DATABASE_ID_BYTES]);
        // What a version-1 database looks like: no Meta or Audit table, no
        // KeyGeneration column, user_version 1.
        conn.execute_batch(
            "DROP TABLE Orders;
             DROP TRIGGER MessagesEpochLive; DROP TRIGGER FilesEpochLive; DROP TRIGGER AgentsEpochLive;
             DROP TRIGGER AgentsEpochLiveOnUpdate; DROP TRIGGER AuditEpochLive; DROP TRIGGER EnrolCodesEpochLive;
             DROP TABLE Meta; DROP TABLE Audit; ALTER TABLE Agents DROP COLUMN KeyGeneration;
             ALTER TABLE Agents DROP COLUMN PasswordPeppered; ALTER TABLE Agents DROP COLUMN RowMac;
             DROP TABLE AgentIdentities; DROP TABLE EnrolCodes; ALTER TABLE Messages DROP COLUMN Signature;
             ALTER TABLE Messages DROP COLUMN SignedAt; ALTER TABLE Messages DROP COLUMN SignerRow;
             DROP INDEX MessagesByEpoch; DROP TABLE KeyEpochs;
             ALTER TABLE Agents DROP COLUMN KeyEpoch; ALTER TABLE Agents DROP COLUMN PepperEpoch;
             ALTER TABLE Agents DROP COLUMN WireEpoch;
             ALTER TABLE LoginFailures DROP COLUMN KeyEpoch; ALTER TABLE LoginLockouts DROP COLUMN KeyEpoch;
             ALTER TABLE Messages DROP COLUMN KeyEpoch; ALTER TABLE Files DROP COLUMN KeyEpoch;
             ALTER TABLE Messages DROP COLUMN TrustedSignature; ALTER TABLE Files DROP COLUMN Signature;
             ALTER TABLE Files DROP COLUMN SignedAt; ALTER TABLE Files DROP COLUMN SignerRow;
             ALTER TABLE Files DROP COLUMN TrustedSignature;
             PRAGMA user_version = 1;",
        )
        .expect("downgrade");
        drop(conn);
        let read_only = open_read_only(&path).expect("open read-only");
        assert_eq!(database_id(&read_only).expect("id before migration"), Vec::<u8>::new());
        drop(read_only);
        let migrated = open(&path).expect("open migrates");
        let version: i32 = migrated.query_row("PRAGMA user_version", [], |r| r.get(0)).expect("version");
        assert_eq!(version, SCHEMA_VERSION);
        assert_eq!(database_id(&migrated).expect("id"), Vec::<u8>::new(), "old databases keep their keys");
        let generations: i64 =
            migrated.query_row("SELECT COUNT(KeyGeneration) FROM Agents", [], |r| r.get(0)).expect("v3 column");
        assert_eq!(generations, 0, "no agents, but the column exists");
        migrated.query_row("SELECT COUNT(*) FROM Audit", [], |r| r.get::<_, i64>(0)).expect("v3 audit table");
        assert!(rows_untagged(&migrated).expect("v4 mark"), "rows wait for the registry to tag them with the key");
        migrated
            .query_row("SELECT COUNT(*), COUNT(Signature) FROM Messages", [], |r| r.get::<_, i64>(0))
            .expect("v4 signature columns");
        migrated.query_row("SELECT COUNT(*) FROM AgentIdentities", [], |r| r.get::<_, i64>(0)).expect("v4 identities");
        migrated.query_row("SELECT COUNT(*) FROM EnrolCodes", [], |r| r.get::<_, i64>(0)).expect("v4 codes");
        assert_eq!(live_epochs(&migrated).expect("v6 epochs"), vec![0], "old rows are epoch 0");
        migrated.query_row("SELECT COUNT(*) FROM Orders", [], |r| r.get::<_, i64>(0)).expect("v7 orders");
        migrated
            .query_row("SELECT COUNT(TrustedSignature) FROM Messages", [], |r| r.get::<_, i64>(0))
            .expect("v8 message column");
        migrated
            .query_row("SELECT COUNT(Signature) + COUNT(TrustedSignature) FROM Files", [], |r| r.get::<_, i64>(0))
            .expect("v8 file columns");
    }
}
