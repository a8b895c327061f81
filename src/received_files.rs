//! The files an agent's orders carry, in its home (`spyctl orders`,
//! `listen`; PROTOCOL.md "Files with orders"): `received/` (0700), one
//! sealed file per order file, never plaintext.
//!
//! - `received/<FileId>.part`: the download so far, a [`SealedFile`] (STREAM
//!   over AES-256-GCM) under the identity's received-files key
//!   ([`IdentityKeys::received_files_key`]) with the label
//!   `spyctl/v2/received-file/<AgentId>/<FileId>`, one segment per chunk.
//!   Its whole segments, synced, are the durable offset a download resumes
//!   from; a segment cut short by a kill is cut off first.
//! - `received/<FileId>`: the complete copy, renamed from the part only after
//!   every segment opened and the size and SHA-256 matched the order.
//! - `received/<FileId>.told`: empty; the Boss acknowledged the delivery.
//!
//! Every open is relative to the directory's descriptor, without following
//! a link, and new files are 0600. Handing the plaintext out
//! ([`ReceivedFiles::save`]) checks every tag and the SHA-256 before the
//! copy gets the name asked for, and never replaces an existing file.

use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags};
use sha2::{Digest, Sha256};

use crate::boss::sealed_file::{FilesKeys, Layout, SealedError, SealedFile};
use crate::crypto::IdentityKeys;
use crate::net::v2::OrderFile;

/// The directory's name in the agent's home.
pub const DIR: &str = "received";

/// Where one order file stands in this home.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Missing,
    /// This many bytes held (whole segments).
    Partial(u64),
    Complete,
}

impl State {
    /// `complete`, `partial N/M bytes` or `missing`.
    pub fn describe(&self, size: u64) -> String {
        match self {
            State::Missing => "missing".to_string(),
            State::Partial(held) => format!("partial {held}/{size} bytes"),
            State::Complete => "complete".to_string(),
        }
    }
}

/// Why handing a file out failed.
#[derive(Debug)]
pub enum SaveError {
    /// Not downloaded (completely) yet.
    NotHere,
    /// The stored copy fails its tags or its SHA-256: it was changed on disk.
    /// It has been removed, so the next `orders` downloads it again.
    Tampered,
    /// Something already has the name asked for.
    Exists,
    Io(std::io::Error),
}

impl std::fmt::Display for SaveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SaveError::NotHere => f.write_str("the file is not complete in this home yet; run `spyctl orders` first"),
            SaveError::Tampered => f.write_str(
                "the stored copy fails its integrity check (changed on disk); nothing was written, and it was \
                 removed: run `spyctl orders` to download it again",
            ),
            SaveError::Exists => f.write_str("refusing to overwrite an existing file; name a new path"),
            SaveError::Io(_) => f.write_str("cannot write the file"),
        }
    }
}

impl std::error::Error for SaveError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SaveError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for SaveError {
    fn from(e: std::io::Error) -> Self {
        SaveError::Io(e)
    }
}

/// This home's `received/`, opened.
pub struct ReceivedFiles {
    dir: OwnedFd,
    keys: FilesKeys,
    agent_id: i64,
}

/// A partial download open for appending.
pub struct Part<'r> {
    file: File,
    sealed: SealedFile<'r>,
    layout: Layout,
    size: u64,
}

impl Part<'_> {
    /// Plaintext bytes held.
    pub fn held(&self) -> u64 {
        self.layout.plaintext_len
    }

    /// Appends the chunk that starts at [`Self::held`] (sealed as the last
    /// segment if it ends the file). The caller syncs.
    pub fn append(&mut self, bytes: &[u8]) -> Result<(), SealedError> {
        let last = self.layout.plaintext_len + bytes.len() as u64 == self.size;
        self.sealed.append(&self.file, &self.layout, last, bytes)?;
        self.layout = SealedFile::grown(&self.layout, bytes.len());
        Ok(())
    }

    /// Makes what was appended durable: the new resume point.
    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

fn open_at(dir: &OwnedFd, name: &str, flags: OFlags) -> std::io::Result<File> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(0o600))?;
    let stat = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile || stat.st_nlink != 1 {
        return Err(std::io::Error::other(format!("received/{name} is not a regular file with one link")));
    }
    Ok(File::from(fd))
}

fn exists(dir: &OwnedFd, name: &str) -> std::io::Result<bool> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(_) => Ok(true),
        Err(rustix::io::Errno::NOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

impl ReceivedFiles {
    /// Opens (creating, 0700) `received/` in `home`, never through a link.
    pub fn open(home: &Path, me: &IdentityKeys, agent_id: i64) -> std::io::Result<ReceivedFiles> {
        let home = rustix::fs::open(home, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        match rustix::fs::mkdirat(&home, DIR, Mode::from_raw_mode(0o700)) {
            Ok(()) => rustix::fs::fsync(&home)?,
            Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let dir = rustix::fs::openat(&home, DIR, flags, Mode::empty())?;
        Ok(ReceivedFiles { dir, keys: FilesKeys::single(me.received_files_key()), agent_id })
    }

    fn sealed(&self, file: &OrderFile) -> SealedFile<'_> {
        SealedFile::labelled(&self.keys, format!("spyctl/v2/received-file/{}/{}", self.agent_id, file.id))
    }

    /// Refuses a description whose id could name anything but a file here.
    fn check_id(file: &OrderFile) -> std::io::Result<()> {
        if crate::net::protocol::valid_id(&file.id) {
            Ok(())
        } else {
            Err(std::io::Error::other("an order names a file id that is not a plain id"))
        }
    }

    pub fn state(&self, file: &OrderFile) -> std::io::Result<State> {
        Self::check_id(file)?;
        if exists(&self.dir, &file.id)? {
            return Ok(State::Complete);
        }
        match open_at(&self.dir, &format!("{}.part", file.id), OFlags::RDONLY) {
            Ok(part) => {
                let held = SealedFile::whole_segments(&part).ok().flatten().map_or(0, |l| l.plaintext_len);
                Ok(State::Partial(held))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::Missing),
            Err(e) => Err(e),
        }
    }

    /// Whether the Boss acknowledged this file's delivery.
    pub fn told(&self, file: &OrderFile) -> std::io::Result<bool> {
        Self::check_id(file)?;
        exists(&self.dir, &format!("{}.told", file.id))
    }

    pub fn mark_told(&self, file: &OrderFile) -> std::io::Result<()> {
        Self::check_id(file)?;
        open_at(&self.dir, &format!("{}.told", file.id), OFlags::WRONLY | OFlags::CREATE)?;
        Ok(())
    }

    /// The partial download, created if new; a last segment cut short (or a
    /// header cut short) is cut off, so it resumes from whole segments.
    pub fn part(&self, file: &OrderFile) -> Result<Part<'_>, SealedError> {
        Self::check_id(file)?;
        let name = format!("{}.part", file.id);
        let created = !exists(&self.dir, &name)?;
        let handle = open_at(&self.dir, &name, OFlags::RDWR | OFlags::CREATE)?;
        let sealed = self.sealed(file);
        let layout = match SealedFile::whole_segments(&handle)? {
            Some(layout) => {
                if handle.metadata()?.len() > layout.end {
                    handle.set_len(layout.end)?;
                    handle.sync_data()?;
                }
                layout
            }
            None => {
                sealed.start(&handle)?;
                handle.sync_data()?;
                SealedFile::layout(&handle)?
            }
        };
        if created {
            rustix::fs::fsync(&self.dir).map_err(std::io::Error::from)?;
        }
        if layout.plaintext_len > file.size {
            return Err(SealedError::Corrupt);
        }
        Ok(Part { file: handle, sealed, layout, size: file.size })
    }

    /// Checks the whole part (every tag, the size, the SHA-256) and, if it
    /// holds the file, renames it to its final name. `false`: it does not.
    pub fn finish(&self, file: &OrderFile) -> std::io::Result<bool> {
        Self::check_id(file)?;
        let part_name = format!("{}.part", file.id);
        let part = open_at(&self.dir, &part_name, OFlags::RDONLY)?;
        if !self.holds(&part, file)? {
            return Ok(false);
        }
        rustix::fs::renameat(&self.dir, part_name.as_str(), &self.dir, file.id.as_str())?;
        rustix::fs::fsync(&self.dir)?;
        Ok(true)
    }

    /// Whether `stored` opens whole and is the file the order describes.
    fn holds(&self, stored: &File, file: &OrderFile) -> std::io::Result<bool> {
        let mut hash = Sha256::new();
        match self.sealed(file).read(stored, |plaintext| {
            hash.update(plaintext);
            Ok(())
        }) {
            Ok(len) => Ok(len == file.size && hex::encode(hash.finalize()) == file.sha256),
            Err(SealedError::Corrupt) => Ok(false),
            Err(SealedError::Io(e)) => Err(e),
        }
    }

    /// Removes every trace of the file (a copy that failed its check).
    pub fn discard(&self, file: &OrderFile) {
        if Self::check_id(file).is_err() {
            return;
        }
        for name in [format!("{}.part", file.id), file.id.clone(), format!("{}.told", file.id)] {
            let _ = rustix::fs::unlinkat(&self.dir, name.as_str(), AtFlags::empty());
        }
    }

    /// Writes the plaintext to `out` (0600, new, never through a link at
    /// its last component): into a temporary name beside it first, checked
    /// (tags, size, SHA-256) and synced, then renamed without replacing
    /// anything. A copy that fails its check is removed from this home.
    pub fn save(&self, file: &OrderFile, out: &Path) -> Result<(), SaveError> {
        Self::check_id(file)?;
        if self.state(file)? != State::Complete {
            return Err(SaveError::NotHere);
        }
        let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let name = out.file_name().ok_or_else(|| std::io::Error::other("--out names no file"))?;
        let parent = rustix::fs::open(parent, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(std::io::Error::from)?;
        if exists(&parent, &name.to_string_lossy())? {
            return Err(SaveError::Exists);
        }
        let stored = open_at(&self.dir, &file.id, OFlags::RDONLY)?;
        let temp = format!(".{}.saving", file.id);
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut writer = File::from(
            rustix::fs::openat(&parent, temp.as_str(), flags, Mode::from_raw_mode(0o600))
                .map_err(std::io::Error::from)?,
        );
        let mut hash = Sha256::new();
        let read = self.sealed(file).read(&stored, |plaintext| {
            hash.update(plaintext);
            writer.write_all(plaintext)
        });
        let good = match read {
            Ok(len) => len == file.size && hex::encode(hash.finalize()) == file.sha256,
            Err(SealedError::Corrupt) => false,
            Err(SealedError::Io(e)) => {
                let _ = rustix::fs::unlinkat(&parent, temp.as_str(), AtFlags::empty());
                return Err(e.into());
            }
        };
        if !good {
            let _ = rustix::fs::unlinkat(&parent, temp.as_str(), AtFlags::empty());
            self.discard(file);
            return Err(SaveError::Tampered);
        }
        let placed = writer.sync_all().and_then(|()| {
            Ok(rustix::fs::renameat_with(&parent, temp.as_str(), &parent, name, RenameFlags::NOREPLACE)?)
        });
        if let Err(e) = placed {
            let _ = rustix::fs::unlinkat(&parent, temp.as_str(), AtFlags::empty());
            return Err(if e.kind() == std::io::ErrorKind::AlreadyExists { SaveError::Exists } else { e.into() });
        }
        rustix::fs::fsync(&parent).map_err(std::io::Error::from)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(data: &[u8]) -> (tempfile::TempDir, ReceivedFiles, OrderFile) {
        let tmp = tempfile::tempdir().expect("tmp");
        let me = IdentityKeys::generate().expect("identity");
        let received = ReceivedFiles::open(tmp.path(), &me, 6).expect("open");
        let file = OrderFile {
            id: "f1".into(),
            name: "plans".into(),
            size: data.len() as u64,
            sha256: hex::encode(Sha256::digest(data)),
        };
        (tmp, received, file)
    }

    #[test]
    fn a_download_resumes_after_a_torn_segment_and_saves_only_a_checked_copy() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 253) as u8).collect();
        let (tmp, received, file) = setup(&data);
        let mut part = received.part(&file).expect("part");
        part.append(&data[..2000]).expect("append");
        part.sync().expect("sync");
        // A kill in the middle of the next segment: a few bytes of it.
        let path = tmp.path().join("received/f1.part");
        let whole = std::fs::metadata(&path).expect("meta").len();
        let mut raw = std::fs::OpenOptions::new().append(true).open(&path).expect("open");
        raw.write_all(&[0, 0, 4, 0, 9, 9]).expect("torn");
        drop((raw, part));
        assert_eq!(received.state(&file).expect("state"), State::Partial(2000));
        let mut part = received.part(&file).expect("resume");
        assert_eq!((part.held(), std::fs::metadata(&path).expect("meta").len()), (2000, whole), "torn tail cut");
        part.append(&data[2000..]).expect("append");
        part.sync().expect("sync");
        assert!(received.finish(&file).expect("finish"));
        assert_eq!(received.state(&file).expect("state"), State::Complete);
        let raw = std::fs::read(tmp.path().join("received/f1")).expect("raw");
        assert!(!raw.windows(32).any(|w| w == &data[100..132]), "plaintext at rest");
        let out = tmp.path().join("out.bin");
        received.save(&file, &out).expect("save");
        assert_eq!(std::fs::read(&out).expect("out"), data);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&out).expect("meta").permissions().mode() & 0o777, 0o600);
        assert!(matches!(received.save(&file, &out), Err(SaveError::Exists)), "never overwrites");
        // One flipped byte in the complete copy: refused, nothing written.
        let mut bad = raw.clone();
        let at = bad.len() - 20;
        bad[at] ^= 0x40;
        std::fs::write(tmp.path().join("received/f1"), &bad).expect("tamper");
        let other = tmp.path().join("other.bin");
        assert!(matches!(received.save(&file, &other), Err(SaveError::Tampered)));
        assert!(!other.exists() && !tmp.path().join(".f1.saving").exists(), "nothing of it handed out");
        assert_eq!(received.state(&file).expect("state"), State::Missing, "discarded for a new download");
    }

    #[test]
    fn a_part_that_does_not_hash_right_is_not_finished() {
        let data = b"the real contents".to_vec();
        let (_tmp, received, mut file) = setup(&data);
        file.sha256 = hex::encode(Sha256::digest(b"something else"));
        let mut part = received.part(&file).expect("part");
        part.append(&data).expect("append");
        part.sync().expect("sync");
        assert!(!received.finish(&file).expect("finish"));
        assert_eq!(received.state(&file).expect("state"), State::Partial(data.len() as u64));
    }
}
