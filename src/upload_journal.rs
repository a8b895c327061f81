//! The sender's upload journal: what `send --file` needs to resume an
//! interrupted upload after a crash, a lost connection or a Boss restart.
//!
//! One small file per unfinished upload in `uploads/` in the sender's home
//! (the directory 0700, each file 0600, never followed through a link),
//! named by a hash of the agent id and the file's canonical path, holding
//! only the upload's `file_id`, the file's size and its SHA-256. No file
//! content, no file name and no path is stored: the name says which local
//! file the entry belongs to only to someone who already knows the path (and
//! the agent id) to hash. It is written (temp file, fsync, rename, directory
//! fsync) before the first chunk goes out and removed once the Boss has the
//! file; a journal lost or damaged costs only a resend from byte 0.
//!
//! Where an upload stands is the Boss's to say (the offset query): the
//! journal keeps no offset, so it is never ahead of or behind the Boss.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The directory's name in the sender's home.
pub const UPLOADS_DIR: &str = "uploads";

/// One unfinished upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The `file_id` its chunks carry.
    pub file_id: String,
    /// The local file's size and SHA-256 (hex) when the upload began: a
    /// file that no longer matches both is sent again from 0, under a new id.
    pub size: u64,
    pub sha256: String,
}

/// The journal in one home.
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    pub fn in_home(home: &Path) -> Journal {
        Journal { dir: home.join(UPLOADS_DIR) }
    }

    /// The entry name of `path` sent as agent `agent_id`: 64 hex digits.
    /// The path is made absolute and canonical, so `./a` and `a` are one file.
    pub fn key(agent_id: i64, path: &Path) -> io::Result<String> {
        let canonical = fs::canonicalize(path)?;
        let mut hasher = Sha256::new();
        hasher.update(format!("spyctl/v1/upload-journal\n{agent_id}\n").as_bytes());
        hasher.update(std::os::unix::ffi::OsStrExt::as_bytes(canonical.as_os_str()));
        Ok(hex::encode(hasher.finalize()))
    }

    fn entry_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    /// The entry under `key`, if any. One that does not parse (a torn
    /// write, say) counts as none: the upload then starts over.
    pub fn load(&self, key: &str) -> io::Result<Option<Entry>> {
        let file = match open_no_follow(&self.entry_path(key), false) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut text = Vec::new();
        file.take(4096).read_to_end(&mut text)?;
        Ok(serde_json::from_slice(&text).ok())
    }

    /// Writes `entry` under `key` durably (0600, atomically replacing any).
    pub fn save(&self, key: &str, entry: &Entry) -> io::Result<()> {
        self.ensure_dir()?;
        let target = self.entry_path(key);
        let temp = self.dir.join(format!(".{key}.{}.tmp", std::process::id()));
        let _ = fs::remove_file(&temp);
        let written = (|| {
            let mut file = open_no_follow(&temp, true)?;
            file.write_all(&serde_json::to_vec(entry).map_err(io::Error::other)?)?;
            file.sync_all()?;
            fs::rename(&temp, &target)?;
            File::open(&self.dir)?.sync_all()
        })();
        if written.is_err() {
            let _ = fs::remove_file(&temp);
        }
        written
    }

    /// Forgets `key` (the upload finished, or cannot be resumed).
    pub fn remove(&self, key: &str) -> io::Result<()> {
        match fs::remove_file(self.entry_path(key)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Creates `uploads/` (0700) if needed and refuses it if it is a link
    /// or not a directory.
    fn ensure_dir(&self) -> io::Result<()> {
        match fs::DirBuilder::new().mode(0o700).create(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        if !fs::symlink_metadata(&self.dir)?.is_dir() {
            return Err(io::Error::other(format!("{} is not a directory", self.dir.display())));
        }
        Ok(())
    }
}

/// Opens an entry without following a link: for reading, or created new
/// (0600, `O_EXCL`) for writing.
fn open_no_follow(path: &Path, create: bool) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
    if create {
        options.write(true).create_new(true).mode(0o600);
    } else {
        options.read(true);
    }
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn entries_round_trip_privately_and_hold_no_name_or_path() {
        let home = tempfile::tempdir().expect("tempdir");
        let sent = home.path().join("operation-lighthouse.pdf");
        fs::write(&sent, b"plans").expect("file");
        let journal = Journal::in_home(home.path());
        let key = Journal::key(6, &sent).expect("key");
        assert_eq!(key, Journal::key(6, &home.path().join(".").join("operation-lighthouse.pdf")).expect("key"));
        assert_ne!(key, Journal::key(7, &sent).expect("key"), "per agent");
        assert_eq!(journal.load(&key).expect("load"), None);
        let entry = Entry { file_id: "f1".into(), size: 5, sha256: "ab".repeat(32) };
        journal.save(&key, &entry).expect("save");
        assert_eq!(journal.load(&key).expect("load"), Some(entry));
        let dir = home.path().join(UPLOADS_DIR);
        assert_eq!(fs::metadata(&dir).expect("dir").permissions().mode() & 0o777, 0o700);
        let files: Vec<_> = fs::read_dir(&dir).expect("dir").map(|e| e.expect("entry").path()).collect();
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(fs::metadata(&files[0]).expect("entry").permissions().mode() & 0o777, 0o600);
        let text = fs::read_to_string(&files[0]).expect("entry");
        assert!(!text.contains("lighthouse") && !text.contains("plans"), "{text}");
        // A torn entry counts as none; a removed one is gone.
        fs::write(&files[0], b"{\"file_id\":").expect("tear");
        assert_eq!(journal.load(&key).expect("load"), None);
        journal.remove(&key).expect("remove");
        journal.remove(&key).expect("removing twice is fine");
        assert!(fs::read_dir(&dir).expect("dir").next().is_none());
    }

    #[test]
    fn a_linked_entry_is_not_followed() {
        let home = tempfile::tempdir().expect("tempdir");
        let journal = Journal::in_home(home.path());
        journal.ensure_dir().expect("dir");
        let elsewhere = home.path().join("elsewhere.json");
        fs::write(&elsewhere, br#"{"file_id":"x","size":1,"sha256":"00"}"#).expect("file");
        std::os::unix::fs::symlink(&elsewhere, journal.entry_path("k")).expect("link");
        assert!(journal.load("k").is_err(), "read through a link");
    }
}
