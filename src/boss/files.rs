//! Assembling uploaded files from chunks, crash-safely.
//!
//! Chunks of one file arrive in order (each is its own message) and are written
//! into `files/<agent>/.<file-id>.part` at their offset, then `fdatasync`ed
//! before the chunk is acknowledged (the first chunk also syncs the directory,
//! so the new part file's entry is as durable as its bytes). Writing at an
//! offset is idempotent, so a retried chunk is harmless. When the last chunk lands, the SHA-256 of the
//! whole part file is checked and the file is renamed to its final name
//! (`<file-id>`) and the directory synced: a file is either complete
//! under its final name or not there at all. The inbox lists only files whose
//! row the writer committed after the rename.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::net::protocol::FileChunk;

/// Where one chunk left its file.
#[derive(Debug, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// More chunks are expected; this many bytes are on disk.
    Partial { received: u64 },
    /// The file is complete, hash-checked and in place.
    Complete { stored_as: String, sha256: String },
}

/// Why a chunk was refused.
#[derive(Debug)]
pub enum ChunkError {
    /// The sender broke the rules (order, hash); the text says how.
    Rejected(String),
    /// The Boss could not read or write its files; the sender may try again.
    Io(std::io::Error),
}

impl std::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChunkError::Rejected(why) => f.write_str(why),
            ChunkError::Io(_) => f.write_str("cannot store the file chunk"),
        }
    }
}

impl std::error::Error for ChunkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ChunkError::Io(e) => Some(e),
            ChunkError::Rejected(_) => None,
        }
    }
}

pub struct FileAssembler {
    root: PathBuf,
    /// One upload is written at a time. Chunks are large and each is synced,
    /// so the lock costs little and keeps the part-file logic single-threaded.
    lock: Mutex<()>,
}

impl FileAssembler {
    pub fn new(root: PathBuf) -> Self {
        FileAssembler { root, lock: Mutex::new(()) }
    }

    /// Deletes partial uploads untouched for `max_age`: a sender that gave up
    /// must not hold disk space forever. Returns how many were removed.
    pub fn sweep_stale(&self, max_age: std::time::Duration) -> usize {
        let _guard = self.lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Ok(agents) = fs::read_dir(&self.root) else { return 0 };
        let mut removed = 0;
        for agent_dir in agents.flatten() {
            let Ok(entries) = fs::read_dir(agent_dir.path()) else { continue };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let is_part = name.to_str().is_some_and(|n| n.starts_with('.') && n.ends_with(".part"));
                let stale = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > max_age);
                if is_part && stale && fs::remove_file(entry.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        removed
    }

    /// The final path (relative to the files root) a completed file gets: the
    /// file id only, so the sender's file name (which can be telling) is kept
    /// solely encrypted in the Files table, never in a path.
    pub fn final_relative(agent_id: i64, chunk: &FileChunk) -> String {
        format!("{agent_id}/{}", chunk.file_id)
    }

    /// Writes one chunk; see the module docs for the rules.
    pub fn write_chunk(&self, agent_id: i64, chunk: &FileChunk, body: &[u8]) -> Result<ChunkOutcome, ChunkError> {
        let _guard = self.lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let dir = self.root.join(agent_id.to_string());
        // An agent's first upload also adds the agent's directory to the root.
        let new_dir = !dir.exists();
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(io_err)?;
        let relative = Self::final_relative(agent_id, chunk);
        let final_path = self.root.join(&relative);
        // The leading dot keeps partial names apart from final ones, which
        // are the bare file id (no dots possible): `.<id>.part` vs `<id>`.
        let part_path = dir.join(format!(".{}.part", chunk.file_id));
        let end = chunk.offset + body.len() as u64;

        if final_path.exists() && !part_path.exists() {
            // Completed earlier (a retried last chunk after a crash or lost ACK).
            let sha256 = hash_file(&final_path).map_err(io_err)?;
            if Some(&sha256) == chunk.sha256.as_ref() || chunk.sha256.is_none() {
                return Ok(ChunkOutcome::Complete { stored_as: relative, sha256 });
            }
            return Err(ChunkError::Rejected("that file id is already complete with other contents".into()));
        }

        let part = if chunk.offset == 0 {
            OpenOptions::new().write(true).read(true).create(true).truncate(false).mode(0o600).open(&part_path)
        } else {
            OpenOptions::new().write(true).read(true).open(&part_path)
        };
        let part = match part {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ChunkError::Rejected(
                    "no upload in progress for this file; start again at offset 0".into(),
                ));
            }
            Err(e) => return Err(io_err(e)),
        };
        let have = part.metadata().map_err(io_err)?.len();
        if chunk.offset > have {
            return Err(ChunkError::Rejected(format!("chunk out of order: expected offset {have}")));
        }
        // Writing past the end extends the file. A resent or replayed earlier chunk
        // rewrites its bytes in place and must not cut off the chunks after it.
        part.write_all_at(body, chunk.offset).map_err(io_err)?;
        part.sync_data().map_err(io_err)?;

        if end < chunk.size {
            if chunk.offset == 0 {
                // Chunk 0 may have created the part file: a new directory entry,
                // which its ACK promises will survive a crash. Synced on every
                // chunk 0, so a retry after a failed sync still makes it durable.
                sync_dir(&dir).map_err(io_err)?;
                if new_dir {
                    sync_dir(&self.root).map_err(io_err)?;
                }
            }
            return Ok(ChunkOutcome::Partial { received: have.max(end) });
        }
        let expected = chunk.sha256.as_deref().unwrap_or_default();
        let sha256 = hash_file(&part_path).map_err(io_err)?;
        if sha256 != expected {
            let _ = fs::remove_file(&part_path);
            return Err(ChunkError::Rejected("the file's SHA-256 does not match; send the whole file again".into()));
        }
        fs::rename(&part_path, &final_path).map_err(io_err)?;
        sync_dir(&dir).map_err(io_err)?;
        if new_dir {
            sync_dir(&self.root).map_err(io_err)?;
        }
        Ok(ChunkOutcome::Complete { stored_as: relative, sha256 })
    }
}

fn io_err(e: std::io::Error) -> ChunkError {
    ChunkError::Io(e)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Hex SHA-256 of a file's contents.
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(offset: u64, size: u64, sha256: Option<String>) -> FileChunk {
        FileChunk { file_id: "f1".into(), name: "a.txt".into(), offset, size, sha256 }
    }

    #[test]
    fn in_order_chunks_complete_and_retries_are_harmless() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let files = FileAssembler::new(tmp.path().to_path_buf());
        let data = b"hello, boss!";
        let sha = hex::encode(Sha256::digest(data));
        assert_eq!(
            files.write_chunk(7, &chunk(0, 12, None), &data[..5]).ok(),
            Some(ChunkOutcome::Partial { received: 5 })
        );
        // Retry of the first chunk.
        assert_eq!(
            files.write_chunk(7, &chunk(0, 12, None), &data[..5]).ok(),
            Some(ChunkOutcome::Partial { received: 5 })
        );
        // Out of order.
        assert!(matches!(
            files.write_chunk(7, &chunk(8, 12, Some(sha.clone())), &data[8..]),
            Err(ChunkError::Rejected(_))
        ));
        let done = files.write_chunk(7, &chunk(5, 12, Some(sha.clone())), &data[5..]).expect("completes");
        let ChunkOutcome::Complete { stored_as, sha256 } = done else { panic!("not complete") };
        assert_eq!(sha256, sha);
        assert_eq!(fs::read(tmp.path().join(&stored_as)).expect("final file"), data);
        assert!(!tmp.path().join("7/.f1.part").exists());
        // The last chunk again (lost ACK): still complete, same file.
        let again = files.write_chunk(7, &chunk(5, 12, Some(sha.clone())), &data[5..]).expect("idempotent");
        assert!(matches!(again, ChunkOutcome::Complete { .. }));
    }

    #[test]
    fn sweep_removes_only_stale_partials() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let files = FileAssembler::new(tmp.path().to_path_buf());
        files.write_chunk(3, &chunk(0, 12, None), b"hello").expect("partial");
        let data = b"abc";
        let sha = hex::encode(Sha256::digest(data));
        let done = FileChunk { file_id: "f2".into(), name: "b".into(), offset: 0, size: 3, sha256: Some(sha) };
        files.write_chunk(3, &done, data).expect("complete");
        assert_eq!(files.sweep_stale(std::time::Duration::from_secs(3600)), 0, "fresh partials stay");
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(files.sweep_stale(std::time::Duration::from_millis(1)), 1);
        assert!(!tmp.path().join("3/.f1.part").exists());
        assert!(tmp.path().join("3/f2").exists(), "complete files are never swept");
    }

    #[test]
    fn bad_hash_leaves_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let files = FileAssembler::new(tmp.path().to_path_buf());
        let err = files.write_chunk(1, &chunk(0, 3, Some("00".repeat(32))), b"abc");
        assert!(matches!(err, Err(ChunkError::Rejected(_))));
        assert_eq!(fs::read_dir(tmp.path().join("1")).expect("dir").count(), 0);
    }
}
