//! The backup `db init --force` writes before it discards anything:
//! `<home>/backups/<UTC timestamp>/spyctl.db` (0600, in 0700 directories),
//! copied with SQLite's online backup API so it is one consistent snapshot
//! even while another process writes, plus a copy of the received files
//! (`files/`). The master key is not copied: `--force` keeps it, and the
//! backup opens only with it.

use std::fs::{self, DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use crate::home::{DB_FILE, FILES_DIR, Home};

/// The directory under the home that holds one directory per backup.
pub const BACKUPS_DIR: &str = "backups";

/// What stopped a backup. The backup is the condition for discarding the
/// data, so any of these stops `db init --force` with nothing changed.
#[derive(Debug)]
pub enum BackupError {
    CreateDir { path: PathBuf, source: std::io::Error },
    Database { path: PathBuf, source: rusqlite::Error },
    CopyFiles { path: PathBuf, source: std::io::Error },
}

impl std::fmt::Display for BackupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackupError::CreateDir { path, .. } => write!(f, "cannot create the backup directory {}", path.display()),
            BackupError::Database { path, .. } => write!(f, "cannot back up the database to {}", path.display()),
            BackupError::CopyFiles { path, .. } => write!(f, "cannot back up the received files to {}", path.display()),
        }
    }
}

impl std::error::Error for BackupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BackupError::CreateDir { source, .. } | BackupError::CopyFiles { source, .. } => Some(source),
            BackupError::Database { source, .. } => Some(source),
        }
    }
}

/// Writes a backup of `conn`'s database and of the home's `files/` into a new
/// directory named for `unix_now` (UTC), and returns that directory.
pub fn write(home: &Home, conn: &Connection, unix_now: i64) -> Result<PathBuf, BackupError> {
    let root = home.dir().join(BACKUPS_DIR);
    make_private_dir(&root, true)?;
    let dir = new_backup_dir(&root, unix_now)?;
    let db = dir.join(DB_FILE);
    // Created 0600 before SQLite opens it, so the copy is never readable by
    // others, not even for a moment (SQLite would follow the umask).
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&db)
        .map_err(|source| BackupError::CreateDir { path: db.clone(), source })?;
    conn.backup(rusqlite::MAIN_DB, &db, None::<fn(rusqlite::backup::Progress)>)
        .map_err(|source| BackupError::Database { path: db.clone(), source })?;
    let files = home.files_dir();
    if files.is_dir() {
        let to = dir.join(FILES_DIR);
        copy_tree(&files, &to).map_err(|source| BackupError::CopyFiles { path: to.clone(), source })?;
    }
    Ok(dir)
}

/// `backups/20261203T162800Z`, or `...Z-2`, `...Z-3` if that second is taken.
fn new_backup_dir(root: &Path, unix_now: i64) -> Result<PathBuf, BackupError> {
    let stamp: String = crate::output::utc_time(unix_now)
        .chars()
        .filter_map(|c| match c {
            '-' | ':' => None,
            ' ' => Some('T'),
            c => Some(c),
        })
        .collect();
    for n in 1..100 {
        let name = if n == 1 { format!("{stamp}Z") } else { format!("{stamp}Z-{n}") };
        let dir = root.join(name);
        match DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(source) => return Err(BackupError::CreateDir { path: dir, source }),
        }
    }
    Err(BackupError::CreateDir {
        path: root.join(format!("{stamp}Z")),
        source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
    })
}

fn make_private_dir(dir: &Path, may_exist: bool) -> Result<(), BackupError> {
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if may_exist && e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(source) => Err(BackupError::CreateDir { path: dir.to_path_buf(), source }),
    }
}

/// Copies regular files and directories (0700) under `from` to `to`. Symbolic
/// links are not followed: the Boss never writes one, so one found there is
/// skipped rather than allowed to pull in a file from elsewhere.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    DirBuilder::new().mode(0o700).create(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            // fs::copy keeps the source's permission bits (0600 for received files).
            fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
