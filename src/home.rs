//! The spyctl home directory and the secret files in it.
//!
//! The home holds `spyctl.db`, `master.key`, `session` and the Boss's received
//! files. It is created 0700 on first use; every file holding a secret is
//! created 0600 (with `O_EXCL`, then renamed into place) and a secret file that
//! group or others can read is refused, the way `ssh` refuses a loose key.
//!
//! Before the home is used it is checked the way sshd's `StrictModes` checks
//! `~/.ssh`: the directory, the database (with its WAL files) and the master
//! key must belong to the user running spyctl (or to root, who could change
//! them anyway) and must not be writable by group or others. Another user who
//! can write there could swap the database, plant a symlink among received
//! files, or replace the key with one they know.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::crypto::identity::BadIdentity;
use crate::crypto::{BadMasterKey, IdentityKeys, MasterKey, MasterKeys, PublicIdentity};

pub const DB_FILE: &str = "spyctl.db";
pub const MASTER_KEY_FILE: &str = "master.key";
pub const SESSION_FILE: &str = "session";
pub const FILES_DIR: &str = "files";
/// The databases whose agent rows this home has tagged (one hex id a line).
pub const TAGGED_FILE: &str = "tagged-databases";
/// This home's own identity (X25519 + Ed25519 private keys): the Boss's in a
/// Boss home, the agent's in a joined agent's home. Independent of master.key.
pub const IDENTITY_FILE: &str = "identity.key";
/// In a joined agent's home: the Boss's public keys, pinned at `spyctl join`.
pub const BOSS_PIN_FILE: &str = "boss.pin";
/// Space held back for logins on a full disk (see [`Home::ensure_reserve`]).
pub const RESERVE_FILE: &str = ".reserve";
/// The reserve's size: far more than one login needs (a WAL header, the
/// `-shm` index, a few pages for the failure record and the session file),
/// little enough to matter to no one.
pub const RESERVE_BYTES: u64 = 2 << 20;

/// What can go wrong finding the home or handling a secret file in it.
#[derive(Debug)]
pub enum HomeError {
    /// Neither --home, SPYCTL_HOME nor a platform data directory is known.
    NoDefaultHome,
    /// The home directory could not be created.
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Neither a database nor a master key is here: nothing was set up yet.
    NoDatabase {
        dir: PathBuf,
    },
    /// The database is here but its master key is gone.
    MasterKeyMissing {
        path: PathBuf,
    },
    /// `master.key` does not hold a key.
    BadMasterKey {
        path: PathBuf,
        source: BadMasterKey,
    },
    /// `identity.key` does not hold an identity.
    BadIdentity {
        path: PathBuf,
        source: BadIdentity,
    },
    /// `boss.pin` does not hold a pinned Boss.
    BadPin {
        path: PathBuf,
    },
    /// Group or others may access a secret file (`mode` holds its bits).
    Loose {
        path: PathBuf,
        mode: u32,
    },
    /// The home, the database or the key belongs to another user (`owner`),
    /// not to the one running spyctl (`uid`) nor to root.
    NotOwned {
        path: PathBuf,
        owner: u32,
        uid: u32,
        dir: bool,
    },
    /// Group or others may write the home directory or a file the home's
    /// safety rests on (`mode` holds its bits).
    Writable {
        path: PathBuf,
        mode: u32,
        dir: bool,
    },
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    NotText {
        path: PathBuf,
    },
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The operating system's random number generator failed.
    Random(getrandom::Error),
}

impl std::fmt::Display for HomeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HomeError::NoDefaultHome => f.write_str("cannot find a home directory for spyctl"),
            HomeError::Create { path, .. } => write!(f, "cannot create home {}", path.display()),
            HomeError::NoDatabase { dir } => write!(f, "no spyctl database in {}", dir.display()),
            HomeError::MasterKeyMissing { path } => {
                write!(f, "{} is missing; the database cannot be read without it", path.display())
            }
            HomeError::BadMasterKey { path, .. } => write!(f, "{} does not hold a master key", path.display()),
            HomeError::BadIdentity { path, .. } => write!(f, "{} does not hold an identity", path.display()),
            HomeError::BadPin { path } => write!(f, "{} does not hold a pinned Boss", path.display()),
            HomeError::Loose { path, mode } => {
                write!(f, "{} is accessible by other users (mode {mode:04o}); refusing to use it", path.display())
            }
            HomeError::NotOwned { path, owner, uid, .. } => {
                write!(f, "{} belongs to user {owner}, not to you (user {uid}); refusing to use it", path.display())
            }
            HomeError::Writable { path, mode, .. } => {
                write!(f, "{} is writable by other users (mode {mode:04o}); refusing to use it", path.display())
            }
            HomeError::Read { path, .. } => write!(f, "cannot read {}", path.display()),
            HomeError::NotText { path } => write!(f, "{} is not text", path.display()),
            HomeError::Write { path, .. } => write!(f, "cannot write {}", path.display()),
            HomeError::Random(_) => f.write_str("the OS random number generator failed"),
        }
    }
}

impl std::error::Error for HomeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HomeError::Create { source, .. } | HomeError::Read { source, .. } | HomeError::Write { source, .. } => {
                Some(source)
            }
            HomeError::BadMasterKey { source, .. } => Some(source),
            HomeError::BadIdentity { source, .. } => Some(source),
            HomeError::Random(source) => Some(source),
            HomeError::NoDefaultHome
            | HomeError::NoDatabase { .. }
            | HomeError::MasterKeyMissing { .. }
            | HomeError::BadPin { .. }
            | HomeError::Loose { .. }
            | HomeError::NotOwned { .. }
            | HomeError::Writable { .. }
            | HomeError::NotText { .. } => None,
        }
    }
}

pub type Result<T, E = HomeError> = std::result::Result<T, E>;

/// A resolved home directory.
#[derive(Debug, Clone)]
pub struct Home {
    dir: PathBuf,
}

impl Home {
    /// `explicit` (from `--home` or `SPYCTL_HOME`), else the platform data dir.
    pub fn resolve(explicit: Option<&Path>) -> Result<Home> {
        if let Some(dir) = explicit {
            return Ok(Home { dir: dir.to_path_buf() });
        }
        default_home().map(|dir| Home { dir }).ok_or(HomeError::NoDefaultHome)
    }

    pub fn at(dir: impl Into<PathBuf>) -> Home {
        Home { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.join(DB_FILE)
    }

    pub fn master_key_path(&self) -> PathBuf {
        self.dir.join(MASTER_KEY_FILE)
    }

    pub fn session_path(&self) -> PathBuf {
        self.dir.join(SESSION_FILE)
    }

    pub fn files_dir(&self) -> PathBuf {
        self.dir.join(FILES_DIR)
    }

    /// Bytes an unprivileged writer may still use on the home's file system,
    /// or None if it cannot be told.
    fn free_bytes(&self) -> Option<u64> {
        let stat = rustix::fs::statvfs(&self.dir).ok()?;
        Some(stat.f_bavail.saturating_mul(stat.f_frsize))
    }

    /// Makes sure the home holds [`RESERVE_FILE`], [`RESERVE_BYTES`] of real
    /// (written, not sparse) bytes, 0600, when the disk has room for it and
    /// more. Best effort: a home without a reserve works as before.
    ///
    /// Why: a login writes before it checks the password (the failure record
    /// that makes the lockout hold, in one IMMEDIATE transaction), so on a
    /// full disk no director could log in to see what happened. The reserve is
    /// space the home owns: [`Home::release_reserve_if_full`] gives it back
    /// when a login might not fit, and it is only made again once the disk
    /// has four times its size free, so it is not retaken while the disk is
    /// still full.
    pub fn ensure_reserve(&self) {
        let path = self.dir.join(RESERVE_FILE);
        if fs::symlink_metadata(&path).is_ok_and(|m| m.is_file() && m.len() == RESERVE_BYTES) {
            return;
        }
        if self.free_bytes().is_none_or(|free| free < 4 * RESERVE_BYTES) {
            return;
        }
        let made = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&path)?;
            // Non-zero bytes, written out: the blocks are really allocated.
            let block = [0x5au8; 64 << 10];
            for _ in 0..RESERVE_BYTES / block.len() as u64 {
                file.write_all(&block)?;
            }
            file.sync_all()
        })();
        if let Err(e) = made {
            // A part-written reserve would hold space without the guarantee.
            let _ = fs::remove_file(&path);
            tracing::debug!(error = %e, "could not make the login reserve");
        }
    }

    /// Deletes the reserve when the disk has less than its size free, so the
    /// login that follows (its failure record, its session, SQLite's WAL and
    /// `-shm`) has room. Called before a login opens the database.
    pub fn release_reserve_if_full(&self) {
        if self.free_bytes().is_some_and(|free| free < RESERVE_BYTES) {
            match fs::remove_file(self.dir.join(RESERVE_FILE)) {
                Ok(()) => tracing::warn!("the disk is full: released the home's login reserve"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(error = %e, "could not release the login reserve"),
            }
        }
    }

    pub fn identity_path(&self) -> PathBuf {
        self.dir.join(IDENTITY_FILE)
    }

    pub fn pin_path(&self) -> PathBuf {
        self.dir.join(BOSS_PIN_FILE)
    }

    /// Creates the directory (0700) if it does not exist, then checks it as
    /// [`check_strict`](Self::check_strict) does.
    pub fn ensure(&self) -> Result<()> {
        if !self.dir.is_dir() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)
                .map_err(|source| HomeError::Create { path: self.dir.clone(), source })?;
        }
        self.check_strict()
    }

    /// Refuses a home another user could change (sshd's `StrictModes`): the
    /// directory, `spyctl.db` with its `-wal` and `-shm` files, and
    /// `master.key` must belong to us or root and not be writable by group or
    /// others. What does not exist yet is skipped, so a missing home still
    /// gets its own error. Symlinks are followed: a home that is a link to a
    /// directory we own is fine; the check is on what would be used.
    pub fn check_strict(&self) -> Result<()> {
        let uid = rustix::process::geteuid().as_raw();
        check_owned_and_closed(&self.dir, true, uid)?;
        let db = self.db_path();
        let mut wal = db.clone().into_os_string();
        wal.push("-wal");
        let mut shm = db.clone().into_os_string();
        shm.push("-shm");
        for file in
            [db, PathBuf::from(wal), PathBuf::from(shm), self.master_key_path(), self.identity_path(), self.pin_path()]
        {
            check_owned_and_closed(&file, false, uid)?;
        }
        Ok(())
    }

    /// True when a database exists here (nothing is created).
    pub fn has_db(&self) -> bool {
        self.db_path().is_file()
    }

    /// Whether this home recorded tagging the rows of database `database_id`.
    /// Kept outside the database so that someone who can write only the
    /// database cannot make it look untagged again.
    pub fn tagged_before(&self, database_id: &[u8]) -> Result<bool> {
        let path = self.dir.join(TAGGED_FILE);
        match read_secret_file(&path) {
            Ok(text) => Ok(text.lines().any(|line| line.trim() == tagged_line(database_id))),
            Err(HomeError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Records that the rows of database `database_id` are tagged.
    pub fn record_tagged(&self, database_id: &[u8]) -> Result<()> {
        if self.tagged_before(database_id)? {
            return Ok(());
        }
        let path = self.dir.join(TAGGED_FILE);
        let mut text = match read_secret_file(&path) {
            Ok(text) => text.to_string(),
            Err(HomeError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        text.push_str(&tagged_line(database_id));
        text.push('\n');
        write_secret_file(&path, text.as_bytes())
    }

    /// Loads the master key, creating the home and a fresh key on first use.
    pub fn load_or_create_master_key(&self) -> Result<MasterKeys> {
        self.ensure()?;
        let path = self.master_key_path();
        if !path.exists() {
            let key = MasterKey::generate().map_err(HomeError::Random)?;
            write_secret_file(&path, key.to_hex().as_bytes())?;
            tracing::info!(path = %path.display(), "created a new master key");
        }
        self.load_master_key()
    }

    /// Loads an existing master key after checking the home
    /// ([`check_strict`](Self::check_strict)); never creates one. Every command
    /// that uses the home loads the key first, so this is where the check runs.
    pub fn load_master_key(&self) -> Result<MasterKeys> {
        self.check_strict()?;
        let path = self.master_key_path();
        let text = read_secret_file(&path).map_err(|e| match e {
            HomeError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                if self.has_db() {
                    HomeError::MasterKeyMissing { path: path.clone() }
                } else {
                    HomeError::NoDatabase { dir: self.dir.clone() }
                }
            }
            other => other,
        })?;
        MasterKeys::from_text(&text).map_err(|source| HomeError::BadMasterKey { path, source })
    }

    /// Replaces master.key with `keys` (0600, written beside it and renamed
    /// over it, so a crash leaves the old file or the new one).
    pub fn save_master_keys(&self, keys: &MasterKeys) -> Result<()> {
        write_secret_file(&self.master_key_path(), keys.to_text().as_bytes())
    }
}

impl Home {
    /// This home's identity, made (0600) on first use: the Boss's at `db init`
    /// or when it first serves, an agent's at `spyctl join`.
    pub fn load_or_create_identity(&self) -> Result<IdentityKeys> {
        self.ensure()?;
        let path = self.identity_path();
        if !path.exists() {
            let keys = IdentityKeys::generate().map_err(HomeError::Random)?;
            write_secret_file(&path, keys.to_file_text().as_bytes())?;
            tracing::info!(path = %path.display(), fingerprint = %keys.public().fingerprint(), "created a new identity");
            return Ok(keys);
        }
        self.load_identity()
    }

    /// This home's identity, if it has one (checked like master.key).
    pub fn load_identity(&self) -> Result<IdentityKeys> {
        self.check_strict()?;
        let path = self.identity_path();
        let text = read_secret_file(&path)?;
        IdentityKeys::from_file_text(&text).map_err(|source| HomeError::BadIdentity { path, source })
    }

    pub fn has_identity(&self) -> bool {
        self.identity_path().is_file()
    }

    /// The Boss this (agent's) home joined, if any.
    pub fn load_pin(&self) -> Result<Option<BossPin>> {
        let path = self.pin_path();
        if !path.exists() {
            return Ok(None);
        }
        self.check_strict()?;
        let text = read_secret_file(&path)?;
        serde_json::from_str::<BossPin>(&text)
            .ok()
            .filter(BossPin::is_valid)
            .map(Some)
            .ok_or(HomeError::BadPin { path })
    }

    /// Pins the Boss (0600, atomically).
    pub fn write_pin(&self, pin: &BossPin) -> Result<()> {
        let text = serde_json::to_string_pretty(pin).expect("a pin serialises");
        write_secret_file(&self.pin_path(), format!("{text}\n").as_bytes())
    }
}

/// What `spyctl join` pins in the agent's home: who this agent is to the Boss
/// and the Boss's public keys (hex). Later commands refuse a Boss whose keys
/// differ, naming both fingerprints.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BossPin {
    pub agent_id: i64,
    pub boss_x25519: String,
    pub boss_ed25519: String,
    pub boss_fingerprint: String,
    /// The address joined, the default for `send --addr`.
    pub addr: String,
    pub enrolled_at: i64,
}

impl BossPin {
    pub fn new(agent_id: i64, boss: &PublicIdentity, addr: &str, enrolled_at: i64) -> BossPin {
        BossPin {
            agent_id,
            boss_x25519: hex::encode(boss.x25519),
            boss_ed25519: hex::encode(boss.ed25519),
            boss_fingerprint: boss.fingerprint(),
            addr: addr.to_string(),
            enrolled_at,
        }
    }

    /// The pinned public keys.
    pub fn boss(&self) -> Option<PublicIdentity> {
        let mut x25519 = [0u8; 32];
        let mut ed25519 = [0u8; 32];
        hex::decode_to_slice(&self.boss_x25519, &mut x25519).ok()?;
        hex::decode_to_slice(&self.boss_ed25519, &mut ed25519).ok()?;
        Some(PublicIdentity { x25519, ed25519 })
    }

    fn is_valid(&self) -> bool {
        self.agent_id > 0 && self.boss().is_some()
    }
}

/// A database id as the tagged-databases file writes it (`-` for the empty
/// id of databases from before identifiers).
fn tagged_line(database_id: &[u8]) -> String {
    if database_id.is_empty() { "-".to_string() } else { hex::encode(database_id) }
}

fn default_home() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("spyctl"));
    }
    let home = PathBuf::from(std::env::var_os("HOME").filter(|h| !h.is_empty())?);
    if cfg!(target_os = "macos") {
        Some(home.join("Library/Application Support/spyctl"))
    } else {
        Some(home.join(".local/share/spyctl"))
    }
}

/// One step of [`Home::check_strict`] for `path` (a directory if `dir`).
fn check_owned_and_closed(path: &Path, dir: bool, uid: u32) -> Result<()> {
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(HomeError::Read { path: path.to_path_buf(), source }),
    };
    // Root may own it, as sshd allows: root can change anything anyway, and a
    // root-owned file another user cannot write is no risk to us.
    let owner = meta.uid();
    if owner != uid && owner != 0 {
        return Err(HomeError::NotOwned { path: path.to_path_buf(), owner, uid, dir });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(HomeError::Writable { path: path.to_path_buf(), mode, dir });
    }
    Ok(())
}

/// Refuses a secret file that group or others may read or write.
pub fn check_private(path: &Path) -> Result<()> {
    let meta = fs::metadata(path).map_err(|source| HomeError::Read { path: path.to_path_buf(), source })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(HomeError::Loose { path: path.to_path_buf(), mode });
    }
    Ok(())
}

/// Reads a secret file after checking it is private. The text is wiped on drop.
pub fn read_secret_file(path: &Path) -> Result<Zeroizing<String>> {
    check_private(path)?;
    let bytes = fs::read(path).map_err(|source| HomeError::Read { path: path.to_path_buf(), source })?;
    String::from_utf8(bytes).map(Zeroizing::new).map_err(|_| HomeError::NotText { path: path.to_path_buf() })
}

/// Writes a secret file atomically: a 0600 temp file created with O_EXCL, fsync,
/// rename over the target. A crash leaves the old file or the new, never half.
pub fn write_secret_file(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("secret");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let result = (|| -> std::io::Result<()> {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Ok(dir) = fs::File::open(dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    })();
    result.map_err(|source| {
        let _ = fs::remove_file(&tmp);
        HomeError::Write { path: path.to_path_buf(), source }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_private_and_reloads() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let home = Home::at(tmp.path().join("h"));
        let first = home.load_or_create_master_key().expect("create");
        let mode = fs::metadata(home.master_key_path()).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = home.load_master_key().expect("load");
        assert_eq!(first.to_text().as_str(), again.to_text().as_str());
    }

    #[test]
    fn world_readable_key_is_refused_with_fix() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let home = Home::at(tmp.path());
        home.load_or_create_master_key().expect("create");
        fs::set_permissions(home.master_key_path(), fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = home.load_master_key().err().expect("refused");
        assert!(matches!(&err, HomeError::Loose { mode: 0o644, .. }), "{err}");
    }

    #[test]
    fn a_home_or_database_others_may_write_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let home = Home::at(tmp.path());
        home.load_or_create_master_key().expect("create");
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o777)).expect("chmod home");
        let err = home.load_master_key().err().expect("refused");
        assert!(matches!(&err, HomeError::Writable { mode: 0o777, dir: true, .. }), "{err}");
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).expect("chmod home back");
        home.load_master_key().expect("a home others may only read is fine");
        fs::write(home.db_path(), b"").expect("db");
        fs::set_permissions(home.db_path(), fs::Permissions::from_mode(0o620)).expect("chmod db");
        let err = home.check_strict().expect_err("refused");
        assert!(matches!(&err, HomeError::Writable { mode: 0o620, dir: false, .. }), "{err}");
    }
}
