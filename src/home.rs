//! The spyctl home directory and the secret files in it.
//!
//! The home holds `spyctl.db`, `master.key`, `session` and the Boss's received
//! files. It is created 0700 on first use; every file holding a secret is
//! created 0600 (with `O_EXCL`, then renamed into place) and a secret file that
//! group or others can read is refused, the way `ssh` refuses a loose key.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::crypto::MasterKey;
use crate::error::{Error, Result};

pub const DB_FILE: &str = "spyctl.db";
pub const MASTER_KEY_FILE: &str = "master.key";
pub const SESSION_FILE: &str = "session";
pub const FILES_DIR: &str = "files";

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
        default_home().map(|dir| Home { dir }).ok_or_else(|| {
            Error::new("cannot find a home directory for spyctl").hint("pass --home DIR or set SPYCTL_HOME")
        })
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

    /// Creates the directory (0700) if it does not exist.
    pub fn ensure(&self) -> Result<()> {
        if self.dir.is_dir() {
            return Ok(());
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| Error::new(format!("cannot create home {}: {e}", self.dir.display())))
    }

    /// True when a database exists here (nothing is created).
    pub fn has_db(&self) -> bool {
        self.db_path().is_file()
    }

    /// Loads the master key, creating the home and a fresh key on first use.
    pub fn load_or_create_master_key(&self) -> Result<MasterKey> {
        self.ensure()?;
        let path = self.master_key_path();
        if !path.exists() {
            let key = MasterKey::generate()?;
            write_secret_file(&path, key.to_hex().as_bytes())?;
            tracing::info!(path = %path.display(), "created a new master key");
        }
        self.load_master_key()
    }

    /// Loads an existing master key; never creates one.
    pub fn load_master_key(&self) -> Result<MasterKey> {
        let path = self.master_key_path();
        let text = read_secret_file(&path).map_err(|e| {
            if !path.exists() && !self.has_db() {
                Error::new(format!("no spyctl database in {}", self.dir.display())).hint("run `spyctl db init` first")
            } else if !path.exists() {
                Error::new(format!("{} is missing; the database cannot be read without it", path.display()))
                    .hint("restore master.key from your backup")
            } else {
                e
            }
        })?;
        MasterKey::from_hex(&text)
            .map_err(|e| Error::new(format!("{}: {e}", path.display())).hint("restore master.key from your backup"))
    }
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

/// Refuses a secret file that group or others may read or write.
pub fn check_private(path: &Path) -> Result<()> {
    let meta = fs::metadata(path).map_err(|e| Error::new(format!("cannot read {}: {e}", path.display())))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::new(format!(
            "{} is accessible by other users (mode {mode:04o}); refusing to use it",
            path.display()
        ))
        .hint(format!("run `chmod 600 {}`", path.display())));
    }
    Ok(())
}

/// Reads a secret file after checking it is private. The text is wiped on drop.
pub fn read_secret_file(path: &Path) -> Result<Zeroizing<String>> {
    check_private(path)?;
    let bytes = fs::read(path).map_err(|e| Error::new(format!("cannot read {}: {e}", path.display())))?;
    String::from_utf8(bytes).map(Zeroizing::new).map_err(|_| Error::new(format!("{} is not text", path.display())))
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
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::new(format!("cannot write {}: {e}", path.display()))
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
        assert_eq!(first.to_hex().as_str(), again.to_hex().as_str());
    }

    #[test]
    fn world_readable_key_is_refused_with_fix() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let home = Home::at(tmp.path());
        home.load_or_create_master_key().expect("create");
        fs::set_permissions(home.master_key_path(), fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = home.load_master_key().err().expect("refused");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
