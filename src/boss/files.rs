//! Assembling uploaded files from chunks, crash-safely.
//!
//! Chunks of one file arrive in order (each is its own message) and are
//! appended to `files/<agent>/.<file-id>.part`, each sealed as one segment of
//! the file's STREAM ([`super::sealed_file`]: nothing is stored in
//! plaintext), then `fdatasync`ed before the chunk is acknowledged (the first
//! chunk also syncs the directory, so the new part file's entry is as durable
//! as its bytes). A resent chunk the file already holds is acknowledged and
//! not written again. When the last chunk lands, the whole file is read back
//! (every segment's tag checked), its SHA-256 compared, and it is renamed to its final name
//! (`<file-id>`) and the directory synced: a file is either complete
//! under its final name or not there at all. The inbox lists only files whose
//! row the writer committed after the rename.
//!
//! How much of an upload is held is what the offset query reports
//! ([`FileAssembler::committed`]): the plaintext of the part file's whole
//! segments, synced first. A Boss killed while appending a chunk can leave
//! that last segment cut short; it was never acknowledged, so it is cut off
//! (before the next chunk is written or the offset reported) rather than
//! failing every later chunk of the upload, and a part file cut inside its
//! header is begun again.
//!
//! The first chunk pins the file's size and name in a small `.<file-id>.pin`
//! beside the part file; every later chunk must state the same, no chunk may
//! be larger than [`CHUNK_BYTES`] or reach past the pinned size, and the size
//! recorded for a completed file is the bytes on disk. Uploads of different
//! agents do not wait for each other: each agent has its own lock, so hashing
//! one agent's finished file never holds up another's chunks.
//!
//! What one agent may hold is bounded ([`Quota`]): a new upload's first chunk
//! is refused (`ERR forbidden`) when the agent already has the most partial
//! uploads allowed, or when its completed files (their sealed bytes on disk)
//! plus its partials' pinned sizes plus this file's would pass its byte quota.
//! Pinned sizes count, not bytes received, so a hundred first chunks cannot
//! reserve more than the quota between them. Every chunk is also refused while
//! the disk holding `files/` has less free space than the guard, so uploads
//! stop before the database (and with it text messages and logins) runs out.
//! The checks run under the agent's lock, so two chunks of one agent cannot
//! both pass a limit only one of them fits.
//!
//! No symlink inside the home is ever followed when writing or hashing: the
//! agent chooses both the bytes and the file id, so a link planted at
//! `files/`, `files/<agent>/` or a part or final name would otherwise send its
//! upload (an `authorized_keys`, say) wherever the link points. Each directory
//! is opened with `O_DIRECTORY | O_NOFOLLOW` relative to its parent's
//! descriptor, each file with `openat(dir, name, O_NOFOLLOW ...)` and must be
//! a regular file with one link; renames and directory syncs use the same
//! descriptors (through `rustix`, since the crate forbids `unsafe`). A link
//! found in any of those places fails the chunk as an I/O error (`ERR
//! internal`) and nothing is written. Only the home itself (the parent of
//! `files/`) is opened by path, following links, as the operator chose it.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::ErrorKind;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use rustix::fs::{AtFlags, CWD, Dir, FileType, Mode, OFlags};
use sha2::{Digest, Sha256};

use super::sealed_file::{FilesKeys, Header, Layout, SealedError, SealedFile};
use crate::net::protocol::{CHUNK_BYTES, Committed, FileChunk};

/// Where one chunk left its file.
#[derive(Debug, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// More chunks are expected; this many bytes are on disk.
    /// `stored` says whether this chunk added bytes (false for a resend).
    Partial { received: u64, stored: bool },
    /// The file is complete, hash-checked and in place; `size` is its bytes on disk.
    Complete { stored_as: String, sha256: String, size: u64 },
}

/// Why a chunk was refused.
#[derive(Debug)]
pub enum ChunkError {
    /// The sender broke the rules (order, hash); the text says how.
    Rejected(String),
    /// A limit the operator set refuses it (quota, free space); the text
    /// names the limit and its `boss serve` flag.
    Refused(String),
    /// The Boss could not read or write its files (or found a symlink or
    /// other non-regular file where it writes); the sender may try again.
    Io(std::io::Error),
}

impl std::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChunkError::Rejected(why) | ChunkError::Refused(why) => f.write_str(why),
            ChunkError::Io(_) => f.write_str("cannot read or write the stored file"),
        }
    }
}

impl std::error::Error for ChunkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ChunkError::Io(e) => Some(e),
            ChunkError::Rejected(_) | ChunkError::Refused(_) => None,
        }
    }
}

/// Bounds on what one agent's uploads may hold (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Completed files' sealed bytes plus partial uploads' pinned sizes.
    pub max_stored_bytes: u64,
    /// Partial uploads (pinned, not yet complete) at once.
    pub max_partial_uploads: usize,
    /// Free bytes the disk holding `files/` keeps after a chunk.
    pub min_free_bytes: u64,
}

impl Quota {
    /// No bounds: what a bare [`FileAssembler::new`] applies.
    pub const UNLIMITED: Quota =
        Quota { max_stored_bytes: u64::MAX, max_partial_uploads: usize::MAX, min_free_bytes: 0 };
}

pub struct FileAssembler {
    root: PathBuf,
    quota: Quota,
    /// Seal every stored byte: new files under the newest epoch, each file
    /// read under the epoch its header names. Replaced whole when a running
    /// Boss picks up a key rotation (an upload under way keeps its epoch).
    keys: RwLock<Arc<FilesKeys>>,
    /// Writers hold it shared; the sweep holds it alone.
    sweep: RwLock<()>,
    /// One lock per agent: one agent's chunks are handled one at a time
    /// (which keeps its part-file logic single-threaded), while other agents
    /// go on in parallel.
    agents: Mutex<HashMap<i64, Arc<Mutex<()>>>>,
    /// The SHA-256 of each upload so far, fed as its chunks are sealed, so
    /// the last chunk needs no second pass over the file. Lost at a restart:
    /// then the stored file is read back and hashed instead.
    running: Mutex<HashMap<(i64, String), RunningHash>>,
}

/// An upload's hash over its first `bytes` plaintext bytes, and where its
/// part file's segments end (so a chunk need not walk them all again).
struct RunningHash {
    bytes: u64,
    hasher: Sha256,
    layout: Layout,
}

/// The directories one chunk is written in, opened without following links.
/// They are reopened for every chunk, so a link swapped in between two chunks
/// is found too.
struct AgentDirs {
    /// The home: the parent of `root`, opened by path.
    home: OwnedFd,
    /// `files/`; `new` when this chunk created it.
    root: OwnedFd,
    root_new: bool,
    /// `files/<agent>/`.
    agent: OwnedFd,
    agent_new: bool,
}

impl AgentDirs {
    /// Makes the new directory entries durable: an ACK promises the part
    /// file survives a crash, and so must the directories leading to it.
    fn sync_new(&self) -> std::io::Result<()> {
        rustix::fs::fsync(&self.agent)?;
        if self.agent_new {
            rustix::fs::fsync(&self.root)?;
        }
        if self.root_new {
            rustix::fs::fsync(&self.home)?;
        }
        Ok(())
    }
}

impl FileAssembler {
    /// `root` is the home's `files/` directory; it need not exist yet.
    pub fn new(root: PathBuf, keys: FilesKeys) -> Self {
        FileAssembler {
            root,
            quota: Quota::UNLIMITED,
            keys: RwLock::new(Arc::new(keys)),
            sweep: RwLock::new(()),
            agents: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
        }
    }

    /// `files/` itself.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// The keys in use now.
    pub(crate) fn keys(&self) -> Arc<FilesKeys> {
        Arc::clone(&self.keys.read().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// Uses `keys` from the next chunk on (after a key rotation or retirement).
    pub fn set_keys(&self, keys: FilesKeys) {
        *self.keys.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(keys);
    }

    /// The same assembler with `quota` applied to every chunk.
    pub fn with_quota(self, quota: Quota) -> Self {
        FileAssembler { quota, ..self }
    }

    /// Refuses the chunk if writing `len` more bytes would leave less free
    /// space than the guard on the disk holding `dir`.
    fn check_free_space(&self, dir: &OwnedFd, len: usize) -> Result<(), ChunkError> {
        if self.quota.min_free_bytes == 0 {
            return Ok(());
        }
        let stat = rustix::fs::fstatvfs(dir).map_err(|e| io_err(e.into()))?;
        // f_bavail: blocks an unprivileged writer may still use (root's
        // reserve excluded), in units of f_frsize.
        let free = stat.f_bavail.saturating_mul(stat.f_frsize);
        if free.saturating_sub(len as u64) < self.quota.min_free_bytes {
            return Err(ChunkError::Refused(format!(
                "the Boss's disk is nearly full ({free} bytes free, it keeps {} free: --min-free-bytes); \
                 uploads are paused, text messages still work",
                self.quota.min_free_bytes
            )));
        }
        Ok(())
    }

    /// Refuses a new upload (its first chunk) that would pass the agent's
    /// partial-upload count or byte quota. `own_pin` is this upload's pin
    /// name: a pin left by an earlier failed first chunk of the same id is
    /// replaced, not counted.
    fn check_quota(&self, agent: &OwnedFd, own_pin: &OsStr, size: u64) -> Result<(), ChunkError> {
        let mut partials = 0usize;
        let mut bytes = 0u64;
        for entry in Dir::read_from(agent).map_err(|e| io_err(e.into()))?.flatten() {
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            let Some(text) = name.to_str() else { continue };
            if text == "." || text == ".." || name == own_pin || text.ends_with(".part") {
                continue;
            }
            if text.starts_with('.') && text.ends_with(".pin") {
                // A partial upload: counted at the size its first chunk pinned.
                partials += 1;
                let mut buf = [0u8; 256];
                let pinned = open_file(agent, name, OFlags::RDONLY)
                    .and_then(|f| f.read_at(&mut buf, 0))
                    .ok()
                    .and_then(|n| Pin::from_text(&buf[..n]));
                bytes = bytes.saturating_add(pinned.map_or(0, |p| p.size));
            } else if !text.starts_with('.') {
                // A completed file: its sealed bytes, what the disk really holds.
                let size = rustix::fs::statat(agent, name, AtFlags::SYMLINK_NOFOLLOW).map_or(0, |s| s.st_size as u64);
                bytes = bytes.saturating_add(size);
            }
        }
        if partials >= self.quota.max_partial_uploads {
            return Err(ChunkError::Refused(format!(
                "this agent already has {partials} unfinished uploads, the most allowed (--max-partial-uploads {}); \
                 finish one first (abandoned ones expire, see --partial-expiry)",
                self.quota.max_partial_uploads
            )));
        }
        if bytes.saturating_add(size) > self.quota.max_stored_bytes {
            return Err(ChunkError::Refused(format!(
                "this agent's quota is full: {bytes} bytes stored or pinned, and {size} more would pass the \
                 {} allowed (--max-stored-bytes)",
                self.quota.max_stored_bytes
            )));
        }
        Ok(())
    }

    /// Opens the home by path and `files/` inside it with no-follow; creates
    /// `files/` (0700) if `create`. `None` when it does not exist and
    /// `create` is false.
    fn open_root(&self, create: bool) -> std::io::Result<Option<(OwnedFd, OwnedFd, bool)>> {
        let parent = self.root.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let name = self.root.file_name().ok_or_else(|| std::io::Error::other("the files directory has no name"))?;
        let home =
            rustix::fs::openat(CWD, parent, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        let created = if create { make_dir(&home, name)? } else { false };
        match open_dir(&home, name) {
            Ok(root) => Ok(Some((home, root, created))),
            Err(e) if !create && e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Opens (creating as needed) `files/` and `files/<agent_id>/`.
    fn agent_dirs(&self, agent_id: i64) -> std::io::Result<AgentDirs> {
        let Some((home, root, root_new)) = self.open_root(true)? else {
            return Err(ErrorKind::NotFound.into());
        };
        let name = agent_id.to_string();
        let agent_new = make_dir(&root, OsStr::new(&name))?;
        let agent = open_dir(&root, OsStr::new(&name))?;
        Ok(AgentDirs { home, root, root_new, agent, agent_new })
    }

    /// Deletes partial uploads untouched for `max_age`: a sender that gave up
    /// must not hold disk space forever. Returns how many were removed. Walks
    /// with the same no-follow opens as writing, so a linked agent directory
    /// cannot make it delete `.part` files elsewhere.
    pub fn sweep_stale(&self, max_age: std::time::Duration) -> usize {
        let _alone = self.sweep.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Ok(Some((_home, root, _))) = self.open_root(false) else { return 0 };
        let Ok(agents) = Dir::read_from(&root) else { return 0 };
        let mut removed = 0;
        for agent in agents.flatten() {
            let name = OsStr::from_bytes(agent.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            let Ok(agent_dir) = open_dir(&root, name) else { continue };
            let Ok(entries) = Dir::read_from(&agent_dir) else { continue };
            for entry in entries.flatten() {
                let name = OsStr::from_bytes(entry.file_name().to_bytes());
                let is_part =
                    name.to_str().is_some_and(|n| n.starts_with('.') && (n.ends_with(".part") || n.ends_with(".pin")));
                if !is_part {
                    continue;
                }
                let stale = open_file(&agent_dir, name, OFlags::RDONLY)
                    .and_then(|f| f.metadata())
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > max_age);
                if stale && rustix::fs::unlinkat(&agent_dir, name, AtFlags::empty()).is_ok() {
                    removed += 1;
                    // Its running hash (kept in memory) goes with it.
                    if let (Some(agent_id), Some(file_id)) = (
                        agent.file_name().to_str().ok().and_then(|a| a.parse::<i64>().ok()),
                        name.to_str().and_then(|n| n.strip_prefix('.')).and_then(|n| n.strip_suffix(".part")),
                    ) {
                        let mut running = self.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                        running.remove(&(agent_id, file_id.to_string()));
                    }
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
        self.write(agent_id, chunk, body, None)
    }

    /// [`Self::write_chunk`], except that a chunk in the middle of its file
    /// (neither the first nor the last) is written without its sync: the
    /// part file is put in `owed`, and the caller must `sync_data` it before
    /// it acknowledges the chunk. One sync then covers several chunks that
    /// arrived back to back (v2 sessions; PROTOCOL.md "Files over v2").
    pub fn write_chunk_deferred(
        &self,
        agent_id: i64,
        chunk: &FileChunk,
        body: &[u8],
        owed: &mut Option<File>,
    ) -> Result<ChunkOutcome, ChunkError> {
        self.write(agent_id, chunk, body, Some(owed))
    }

    fn write(
        &self,
        agent_id: i64,
        chunk: &FileChunk,
        body: &[u8],
        owed: Option<&mut Option<File>>,
    ) -> Result<ChunkOutcome, ChunkError> {
        let _shared = self.sweep.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let agent_lock = {
            let mut agents = self.agents.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            agents.entry(agent_id).or_default().clone()
        };
        let _agent = agent_lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if body.len() > CHUNK_BYTES {
            return Err(ChunkError::Rejected(format!("chunks are limited to {CHUNK_BYTES} bytes")));
        }
        let end = chunk
            .offset
            .checked_add(body.len() as u64)
            .filter(|end| *end <= chunk.size)
            .ok_or_else(|| ChunkError::Rejected("the chunk reaches past the file's declared size".into()))?;
        // The protocol allows only [A-Za-z0-9_-] in ids; checked again here
        // because a `/` or `..` would make the names below paths.
        if !crate::net::protocol::valid_id(&chunk.file_id) {
            return Err(ChunkError::Rejected("invalid file id".into()));
        }
        let dirs = self.agent_dirs(agent_id).map_err(io_err)?;
        let relative = Self::final_relative(agent_id, chunk);
        let final_name = OsStr::new(&chunk.file_id);
        // The leading dot keeps partial names apart from final ones, which
        // are the bare file id (no dots possible): `.<id>.part` vs `<id>`.
        let part_name = format!(".{}.part", chunk.file_id);
        let part_name = OsStr::new(&part_name);
        let pin_name = format!(".{}.pin", chunk.file_id);
        let pin_name = OsStr::new(&pin_name);

        if entry_exists(&dirs.agent, final_name).map_err(io_err)?
            && !entry_exists(&dirs.agent, part_name).map_err(io_err)?
        {
            // Completed, but its row was never committed (a crash between the
            // rename and the commit): the retried last chunk records it now.
            // (A file whose row exists is answered from the row by the Boss,
            // with no file I/O.)
            let done = open_file(&dirs.agent, final_name, OFlags::RDONLY).map_err(io_err)?;
            let (size, sha256) = self.hash_sealed(&done, agent_id, &chunk.file_id)?;
            if Some(&sha256) == chunk.sha256.as_ref() || chunk.sha256.is_none() {
                return Ok(ChunkOutcome::Complete { stored_as: relative, sha256, size });
            }
            return Err(ChunkError::Rejected("that file id is already complete with other contents".into()));
        }
        self.check_free_space(&dirs.agent, body.len())?;
        let pin = Pin::of(chunk);
        if chunk.offset == 0 && !entry_exists(&dirs.agent, part_name).map_err(io_err)? {
            // A new upload: its first chunk pins the size and the name, once
            // the agent's quota has room for it.
            self.check_quota(&dirs.agent, pin_name, chunk.size)?;
            let file =
                open_file(&dirs.agent, pin_name, OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC).map_err(io_err)?;
            file.write_all_at(pin.to_text().as_bytes(), 0).map_err(io_err)?;
            file.sync_data().map_err(io_err)?;
        } else {
            match open_file(&dirs.agent, pin_name, OFlags::RDONLY) {
                Ok(file) => {
                    let mut text = vec![0u8; 256];
                    let n = file.read_at(&mut text, 0).map_err(io_err)?;
                    if Pin::from_text(&text[..n]) != Some(pin) {
                        return Err(ChunkError::Rejected(
                            "this chunk's size or name differs from the first chunk's; send the whole file again with a new file id"
                                .into(),
                        ));
                    }
                }
                // No pin and no part: caught below as "no upload in progress".
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(e)),
            }
        }

        let new_part = chunk.offset == 0 && !entry_exists(&dirs.agent, part_name).map_err(io_err)?;
        let flags = if new_part { OFlags::RDWR | OFlags::CREATE } else { OFlags::RDWR };
        let part = match open_file(&dirs.agent, part_name, flags) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(ChunkError::Rejected(
                    "no upload in progress for this file; start again at offset 0".into(),
                ));
            }
            Err(e) => return Err(io_err(e)),
        };
        let keys = self.keys();
        let sealed = SealedFile::new(&keys, agent_id, &chunk.file_id);
        if new_part {
            sealed.start(&part).map_err(sealed_err)?;
        }
        // The layout this Boss left after the previous chunk, if the file
        // still ends there; else (a restart, a sweep) walk the segments.
        let file_len = part.metadata().map_err(io_err)?.len();
        let known = {
            let running = self.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            running.get(&(agent_id, chunk.file_id.clone())).map(|state| state.layout).filter(|l| l.end == file_len)
        };
        let layout = match known {
            Some(layout) if !new_part => layout,
            _ => match recovered_layout(&part)? {
                Some(layout) => layout,
                // Cut inside its header (a Boss killed as it began the
                // file): nothing of it was acknowledged, so begin it again.
                None => {
                    sealed.start(&part).map_err(sealed_err)?;
                    SealedFile::layout(&part).map_err(sealed_err)?
                }
            },
        };
        let have = layout.plaintext_len;
        if chunk.offset > have {
            return Err(ChunkError::Rejected(format!("chunk out of order: expected offset {have}")));
        }
        let stored = chunk.offset == have && (end > have || new_part);
        // Only a middle chunk's sync may be left to the caller: the first
        // one's also makes the new entries durable, the last one's precedes
        // the rename.
        let defer = owed.is_some() && chunk.offset != 0 && end < chunk.size;
        if stored {
            // The next chunk: sealed as the next segment, the last one if it
            // completes the file.
            sealed.append(&part, &layout, end == chunk.size, body).map_err(sealed_err)?;
            if !defer {
                part.sync_data().map_err(io_err)?;
            }
            let mut running = self.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let key = (agent_id, chunk.file_id.clone());
            let grown = SealedFile::grown(&layout, body.len());
            match running.get_mut(&key) {
                Some(state) if state.bytes == have && !new_part => {
                    state.hasher.update(body);
                    state.bytes = end;
                    state.layout = grown;
                }
                _ if have == 0 => {
                    let mut hasher = Sha256::new();
                    hasher.update(body);
                    running.insert(key, RunningHash { bytes: end, hasher, layout: grown });
                }
                // Chunks before this one arrived before a restart.
                _ => {
                    running.remove(&key);
                }
            }
        } else if end > have {
            return Err(ChunkError::Rejected(format!(
                "chunk overlaps what is stored: send chunks in order, the next at offset {have}"
            )));
        } else if !defer {
            // A resent chunk the file holds already: nothing to write, but
            // its bytes may have come in a chunk whose sync was deferred
            // (another v2 session): its answer promises them on disk.
            part.sync_data().map_err(io_err)?;
        }

        if end < chunk.size {
            if chunk.offset == 0 {
                // Chunk 0 may have created the part file: a new directory entry,
                // which its ACK promises will survive a crash. Synced on every
                // chunk 0, so a retry after a failed sync still makes it durable.
                dirs.sync_new().map_err(io_err)?;
            }
            if let (true, Some(owed)) = (defer, owed) {
                *owed = Some(part);
            }
            return Ok(ChunkOutcome::Partial { received: have.max(end), stored });
        }
        let expected = chunk.sha256.as_deref().unwrap_or_default();
        let hashed = {
            let mut running = self.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            running.remove(&(agent_id, chunk.file_id.clone()))
        };
        let (size, sha256) = match hashed {
            Some(state) if state.bytes == chunk.size => (state.bytes, hex::encode(state.hasher.finalize())),
            _ => self.hash_sealed(&part, agent_id, &chunk.file_id)?,
        };
        if sha256 != expected || size != chunk.size {
            let _ = rustix::fs::unlinkat(&dirs.agent, part_name, AtFlags::empty());
            let _ = rustix::fs::unlinkat(&dirs.agent, pin_name, AtFlags::empty());
            return Err(ChunkError::Rejected("the file's SHA-256 does not match; send the whole file again".into()));
        }
        // renameat replaces whatever is at the final name, a link included,
        // without following it.
        rustix::fs::renameat(&dirs.agent, part_name, &dirs.agent, final_name).map_err(|e| io_err(e.into()))?;
        let _ = rustix::fs::unlinkat(&dirs.agent, pin_name, AtFlags::empty());
        dirs.sync_new().map_err(io_err)?;
        Ok(ChunkOutcome::Complete { stored_as: relative, sha256, size })
    }

    /// How much of agent `agent_id`'s upload `file_id` is durably held (the
    /// offset query, PROTOCOL.md "Resuming a file"): the plaintext bytes of
    /// the part file's whole segments, synced before they are reported, and
    /// the size the first chunk pinned. A last segment cut short by a crash
    /// is dropped first, as the next chunk would drop it. A file renamed
    /// into place but not yet recorded counts as all bytes held. Whether the
    /// file is recorded is the caller's question (the database's).
    pub fn committed(&self, agent_id: i64, file_id: &str) -> Result<Committed, ChunkError> {
        if !crate::net::protocol::valid_id(file_id) {
            return Err(ChunkError::Rejected("invalid file id".into()));
        }
        let _shared = self.sweep.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let agent_lock = {
            let mut agents = self.agents.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            agents.entry(agent_id).or_default().clone()
        };
        let _agent = agent_lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some((_home, root, _)) = self.open_root(false).map_err(io_err)? else { return Ok(Committed::None) };
        let agent = match open_dir(&root, OsStr::new(&agent_id.to_string())) {
            Ok(agent) => agent,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Committed::None),
            Err(e) => return Err(io_err(e)),
        };
        let part_name = format!(".{file_id}.part");
        let pin_name = format!(".{file_id}.pin");
        match open_file(&agent, OsStr::new(&part_name), OFlags::RDWR) {
            Ok(part) => {
                let mut text = vec![0u8; 256];
                let pin = open_file(&agent, OsStr::new(&pin_name), OFlags::RDONLY)
                    .and_then(|f| f.read_at(&mut text, 0))
                    .ok()
                    .and_then(|n| Pin::from_text(&text[..n]));
                // A part file with no pin is not an upload a client can resume.
                let Some(pin) = pin else { return Ok(Committed::None) };
                let offset = recovered_layout(&part)?.map_or(0, |layout| layout.plaintext_len);
                // What is reported must survive a crash, like an ACK.
                part.sync_data().map_err(io_err)?;
                Ok(Committed::Partial { offset, size: pin.size })
            }
            Err(e) if e.kind() == ErrorKind::NotFound => match open_file(&agent, OsStr::new(file_id), OFlags::RDONLY) {
                Ok(done) => {
                    let size = SealedFile::layout(&done).map_err(sealed_err)?.plaintext_len;
                    Ok(Committed::Partial { offset: size, size })
                }
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(Committed::None),
                Err(e) => Err(io_err(e)),
            },
            Err(e) => Err(io_err(e)),
        }
    }

    /// Reads a sealed file back, checking every segment, and returns its
    /// plaintext size and SHA-256 (hex).
    fn hash_sealed(&self, file: &File, agent_id: i64, file_id: &str) -> Result<(u64, String), ChunkError> {
        let mut hasher = Sha256::new();
        let size = SealedFile::new(&self.keys(), agent_id, file_id)
            .read(file, |plaintext| {
                hasher.update(plaintext);
                Ok(())
            })
            .map_err(sealed_err)?;
        Ok((size, hex::encode(hasher.finalize())))
    }

    /// Writes agent `agent_id`'s received file `file_id`, decrypted, to
    /// `out`, checking every segment; returns its size and SHA-256 (hex).
    /// Reads through the same no-follow opens as writing.
    pub fn export(&self, agent_id: i64, file_id: &str, out: &mut dyn Write) -> Result<(u64, String), ChunkError> {
        if !crate::net::protocol::valid_id(file_id) {
            return Err(ChunkError::Rejected("invalid file id".into()));
        }
        let Some((_home, root, _)) = self.open_root(false).map_err(io_err)? else {
            return Err(io_err(ErrorKind::NotFound.into()));
        };
        let agent = open_dir(&root, OsStr::new(&agent_id.to_string())).map_err(io_err)?;
        let file = open_file(&agent, OsStr::new(file_id), OFlags::RDONLY).map_err(io_err)?;
        let mut hasher = Sha256::new();
        let size = SealedFile::new(&self.keys(), agent_id, file_id)
            .read(&file, |plaintext| {
                hasher.update(plaintext);
                out.write_all(plaintext)
            })
            .map_err(sealed_err)?;
        Ok((size, hex::encode(hasher.finalize())))
    }

    /// Re-seals agent `agent_id`'s completed file `file_id` under the newest
    /// key epoch (`key rotate`), if it is under an older one: into a new
    /// file beside it, synced, then renamed over it, so a crash leaves the
    /// old file or the new one, never a mix. True if it was re-sealed.
    pub fn reseal(&self, agent_id: i64, file_id: &str) -> Result<bool, ChunkError> {
        if !crate::net::protocol::valid_id(file_id) {
            return Err(ChunkError::Rejected("invalid file id".into()));
        }
        let keys = self.keys();
        let Some((_home, root, _)) = self.open_root(false).map_err(io_err)? else {
            return Err(io_err(ErrorKind::NotFound.into()));
        };
        let agent = open_dir(&root, OsStr::new(&agent_id.to_string())).map_err(io_err)?;
        let name = OsStr::new(file_id);
        let old = open_file(&agent, name, OFlags::RDONLY).map_err(io_err)?;
        if Header::read(&old).map_err(sealed_err)?.epoch == keys.newest().0 {
            return Ok(false);
        }
        let temp_name = format!(".{file_id}.reseal");
        let temp_name = OsStr::new(&temp_name);
        // A leftover from an interrupted reseal is ours to replace.
        let _ = rustix::fs::unlinkat(&agent, temp_name, AtFlags::empty());
        let new = open_file(&agent, temp_name, OFlags::RDWR | OFlags::CREATE | OFlags::EXCL).map_err(io_err)?;
        let done = SealedFile::new(&keys, agent_id, file_id).reseal(&old, &new).map_err(sealed_err).and_then(|_| {
            new.sync_all().map_err(io_err)?;
            rustix::fs::renameat(&agent, temp_name, &agent, name).map_err(|e| io_err(e.into()))?;
            rustix::fs::fsync(&agent).map_err(|e| io_err(e.into()))
        });
        if done.is_err() {
            let _ = rustix::fs::unlinkat(&agent, temp_name, AtFlags::empty());
        }
        done.map(|()| true)
    }

    /// How many stored files, partial uploads included, each key epoch
    /// seals (`key status`; `key retire` waits for an epoch's count to reach
    /// 0). A file whose header cannot be read counts under `None`.
    pub fn epochs_on_disk(&self) -> std::io::Result<std::collections::BTreeMap<Option<u32>, usize>> {
        let mut counts = std::collections::BTreeMap::new();
        let Some((_home, root, _)) = self.open_root(false)? else { return Ok(counts) };
        for agent in Dir::read_from(&root)?.flatten() {
            let name = OsStr::from_bytes(agent.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            let Ok(agent_dir) = open_dir(&root, name) else { continue };
            for entry in Dir::read_from(&agent_dir)?.flatten() {
                let name = OsStr::from_bytes(entry.file_name().to_bytes());
                let is_data = name
                    .to_str()
                    .is_some_and(|n| n != "." && n != ".." && !n.ends_with(".pin") && !n.ends_with(".reseal"));
                if !is_data {
                    continue;
                }
                let epoch = open_file(&agent_dir, name, OFlags::RDONLY).ok().and_then(|f| Header::read(&f).ok());
                *counts.entry(epoch.map(|h| h.epoch)).or_insert(0) += 1;
            }
        }
        Ok(counts)
    }
}

/// The layout of a part file's whole segments, after cutting off a last
/// segment a crash left short (never acknowledged, see
/// [`SealedFile::whole_segments`]); `None` when its header is incomplete.
fn recovered_layout(part: &File) -> Result<Option<Layout>, ChunkError> {
    let Some(layout) = SealedFile::whole_segments(part).map_err(sealed_err)? else { return Ok(None) };
    if part.metadata().map_err(io_err)?.len() > layout.end {
        part.set_len(layout.end).map_err(io_err)?;
        part.sync_data().map_err(io_err)?;
    }
    Ok(Some(layout))
}

fn sealed_err(e: SealedError) -> ChunkError {
    match e {
        SealedError::Io(e) => ChunkError::Io(e),
        corrupt => ChunkError::Io(std::io::Error::other(corrupt)),
    }
}

/// What the first chunk of an upload fixes: the file's size and (as its
/// SHA-256, so the name itself is never written under `files/`) its name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pin {
    size: u64,
    name_sha256: String,
}

impl Pin {
    fn of(chunk: &FileChunk) -> Pin {
        Pin { size: chunk.size, name_sha256: hex::encode(Sha256::digest(chunk.name.as_bytes())) }
    }

    fn to_text(&self) -> String {
        format!("{} {}\n", self.size, self.name_sha256)
    }

    fn from_text(text: &[u8]) -> Option<Pin> {
        let text = std::str::from_utf8(text).ok()?;
        let (size, name_sha256) = text.trim_end().split_once(' ')?;
        Some(Pin { size: size.parse().ok()?, name_sha256: name_sha256.to_string() })
    }
}

fn io_err(e: std::io::Error) -> ChunkError {
    ChunkError::Io(e)
}

/// Creates directory `name` (0700) in `parent`; true if it was created now.
/// An existing entry of that name is left for [`open_dir`] to judge.
fn make_dir(parent: impl AsFd, name: &OsStr) -> std::io::Result<bool> {
    match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::EXIST) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Opens directory `name` in `parent`, refusing a symlink (`O_NOFOLLOW`
/// fails with `ELOOP`) and anything not a directory (`O_DIRECTORY`).
fn open_dir(parent: impl AsFd, name: &OsStr) -> std::io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(rustix::fs::openat(parent, name, flags, Mode::empty())?)
}

/// Opens file `name` in `dir` with `flags` plus no-follow (new files 0600),
/// and refuses anything but a regular file with one link: a FIFO or device
/// is not an upload, and a hard link would let a chunk rewrite another file
/// in place. `O_NONBLOCK` keeps a planted FIFO from hanging the open.
fn open_file(dir: impl AsFd, name: &OsStr, flags: OFlags) -> std::io::Result<File> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let fd = rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(0o600))?;
    let stat = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile || stat.st_nlink != 1 {
        return Err(std::io::Error::other(format!(
            "{} is not a regular file with a single link; refusing to use it",
            Path::new(name).display()
        )));
    }
    Ok(File::from(fd))
}

/// Whether `dir` has an entry `name` of any type, links included.
fn entry_exists(dir: impl AsFd, name: &OsStr) -> std::io::Result<bool> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(_) => Ok(true),
        Err(rustix::io::Errno::NOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    const TAG: u32 = super::super::sealed_file::TAG_BYTES as u32;

    fn test_key() -> FilesKeys {
        FilesKeys::single(crate::crypto::FilesKey::from_bytes(&[6u8; 32]))
    }

    fn chunk(offset: u64, size: u64, sha256: Option<String>) -> FileChunk {
        FileChunk { file_id: "f1".into(), name: "a.txt".into(), offset, size, sha256 }
    }

    /// v2's group sync: only a chunk in the middle of its file comes back
    /// unsynced (its part file to sync); the first (new entries) and the last
    /// (before the rename) are synced here. Unsynced chunks still count as
    /// held, and the file completes whole.
    #[test]
    fn only_middle_chunks_leave_their_sync_to_the_caller() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let files = FileAssembler::new(tmp.path().to_path_buf(), test_key());
        let data = b"hello, boss! four chunks.";
        let sha = hex::encode(Sha256::digest(data));
        let size = data.len() as u64;
        let mut owed = None;
        let first = files.write_chunk_deferred(7, &chunk(0, size, None), &data[..5], &mut owed).expect("first");
        assert_eq!(first, ChunkOutcome::Partial { received: 5, stored: true });
        assert!(owed.is_none(), "the first chunk is synced before it returns");
        for (from, to) in [(5, 10), (10, 15)] {
            let middle = files.write_chunk_deferred(7, &chunk(from, size, None), &data[from as usize..to], &mut owed);
            assert_eq!(middle.expect("middle"), ChunkOutcome::Partial { received: to as u64, stored: true });
            owed.take().expect("a middle chunk's sync is owed").sync_data().expect("sync");
        }
        assert_eq!(files.committed(7, "f1").expect("query"), Committed::Partial { offset: 15, size });
        let last = files.write_chunk_deferred(7, &chunk(15, size, Some(sha.clone())), &data[15..], &mut owed);
        assert!(matches!(last.expect("last"), ChunkOutcome::Complete { ref sha256, .. } if *sha256 == sha));
        assert!(owed.is_none(), "the last chunk is synced before the rename");
    }

    #[test]
    fn in_order_chunks_complete_and_retries_are_harmless() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let files = FileAssembler::new(tmp.path().to_path_buf(), test_key());
        let data = b"hello, boss!";
        let sha = hex::encode(Sha256::digest(data));
        assert_eq!(
            files.write_chunk(7, &chunk(0, 12, None), &data[..5]).ok(),
            Some(ChunkOutcome::Partial { received: 5, stored: true })
        );
        // Retry of the first chunk: acknowledged, nothing written again.
        assert_eq!(
            files.write_chunk(7, &chunk(0, 12, None), &data[..5]).ok(),
            Some(ChunkOutcome::Partial { received: 5, stored: false })
        );
        // Out of order.
        assert!(matches!(
            files.write_chunk(7, &chunk(8, 12, Some(sha.clone())), &data[8..]),
            Err(ChunkError::Rejected(_))
        ));
        let done = files.write_chunk(7, &chunk(5, 12, Some(sha.clone())), &data[5..]).expect("completes");
        let ChunkOutcome::Complete { stored_as, sha256, size } = done else { panic!("not complete") };
        assert_eq!(sha256, sha);
        assert_eq!(size, 12, "the plaintext size");
        let raw = fs::read(tmp.path().join(&stored_as)).expect("final file");
        assert!(!raw.windows(5).any(|w| w == b"hello"), "stored encrypted, never in plaintext");
        let mut exported = Vec::new();
        assert_eq!(files.export(7, "f1", &mut exported).expect("export"), (12, sha.clone()));
        assert_eq!(exported, data);
        assert!(!tmp.path().join("7/.f1.part").exists());
        // The last chunk again (lost ACK): still complete, same file.
        let again = files.write_chunk(7, &chunk(5, 12, Some(sha.clone())), &data[5..]).expect("idempotent");
        assert!(matches!(again, ChunkOutcome::Complete { .. }));
    }

    #[test]
    fn the_first_chunk_pins_size_and_name_and_chunks_are_capped() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let files = FileAssembler::new(tmp.path().join("files"), test_key());
        let data = vec![7u8; 20];
        let sha = hex::encode(Sha256::digest(&data));
        files.write_chunk(2, &chunk(0, 20, None), &data[..10]).expect("first chunk pins 20 bytes, a.txt");
        // A later chunk that claims another size or name is refused.
        let bigger = FileChunk { size: 600_000, ..chunk(10, 600_000, None) };
        assert!(
            matches!(files.write_chunk(2, &bigger, &data[10..]), Err(ChunkError::Rejected(why)) if why.contains("differs"))
        );
        let renamed = FileChunk { name: "b.txt".into(), ..chunk(10, 20, Some(sha.clone())) };
        assert!(
            matches!(files.write_chunk(2, &renamed, &data[10..]), Err(ChunkError::Rejected(why)) if why.contains("differs"))
        );
        // A chunk past the pinned size, or over the cap, is refused.
        assert!(matches!(
            files.write_chunk(2, &chunk(10, 20, Some(sha.clone())), &[0u8; 11]),
            Err(ChunkError::Rejected(why)) if why.contains("past")
        ));
        let huge = vec![0u8; CHUNK_BYTES + 1];
        let big_file = FileChunk { file_id: "f9".into(), ..chunk(0, 10 << 20, None) };
        assert!(
            matches!(files.write_chunk(2, &big_file, &huge), Err(ChunkError::Rejected(why)) if why.contains("limited"))
        );
        // The agreeing last chunk completes it, with the size on disk.
        let done = files.write_chunk(2, &chunk(10, 20, Some(sha)), &data[10..]).expect("completes");
        assert!(matches!(done, ChunkOutcome::Complete { size: 20, .. }), "{done:?}");
        assert!(!tmp.path().join("files/2/.f1.pin").exists(), "the pin goes with the part file");
    }

    #[test]
    fn an_upload_finished_after_a_restart_is_hashed_from_the_stored_file() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = b"hello, boss!";
        let sha = hex::encode(Sha256::digest(data));
        FileAssembler::new(tmp.path().join("files"), test_key())
            .write_chunk(4, &chunk(0, 12, None), &data[..5])
            .expect("first chunk");
        // A new assembler (the Boss restarted) has no running hash for it.
        let restarted = FileAssembler::new(tmp.path().join("files"), test_key());
        let done = restarted.write_chunk(4, &chunk(5, 12, Some(sha.clone())), &data[5..]).expect("completes");
        assert!(matches!(done, ChunkOutcome::Complete { ref sha256, size: 12, .. } if *sha256 == sha), "{done:?}");
        // And a wrong hash is still caught on that path.
        let other = FileChunk { file_id: "f2".into(), ..chunk(0, 12, None) };
        FileAssembler::new(tmp.path().join("files"), test_key()).write_chunk(4, &other, &data[..5]).expect("first");
        let wrong = FileChunk { file_id: "f2".into(), ..chunk(5, 12, Some("00".repeat(32))) };
        assert!(matches!(restarted.write_chunk(4, &wrong, &data[5..]), Err(ChunkError::Rejected(_))));
    }

    #[test]
    fn the_committed_offset_is_what_the_part_file_holds_and_a_torn_tail_is_dropped() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let files = FileAssembler::new(tmp.path().join("files"), test_key());
        let data = b"hello, boss!";
        let sha = hex::encode(Sha256::digest(data));
        assert_eq!(files.committed(4, "f1").expect("query"), Committed::None, "no files/ yet");
        files.write_chunk(4, &chunk(0, 12, None), &data[..5]).expect("first chunk");
        assert_eq!(files.committed(4, "f1").expect("query"), Committed::Partial { offset: 5, size: 12 });
        assert_eq!(files.committed(5, "f1").expect("query"), Committed::None, "another agent's upload");
        assert!(matches!(files.committed(4, "../f1"), Err(ChunkError::Rejected(_))));
        // A Boss killed while appending the next segment: its length and
        // half its bytes are on disk. Reported and resumed from 5.
        let part = tmp.path().join("files/4/.f1.part");
        let whole_len = fs::metadata(&part).expect("part").len();
        let mut torn = fs::read(&part).expect("part");
        torn.extend_from_slice(&(7u32 + TAG).to_be_bytes());
        torn.extend_from_slice(&[9u8; 10]);
        fs::write(&part, &torn).expect("tear");
        let restarted = FileAssembler::new(tmp.path().join("files"), test_key());
        assert_eq!(restarted.committed(4, "f1").expect("query"), Committed::Partial { offset: 5, size: 12 });
        assert_eq!(fs::metadata(&part).expect("part").len(), whole_len, "the torn tail is cut off");
        // And a chunk arriving over a torn tail (no query first) cuts it too.
        fs::write(&part, &torn).expect("tear again");
        let done = restarted.write_chunk(4, &chunk(5, 12, Some(sha.clone())), &data[5..]).expect("completes");
        assert!(matches!(done, ChunkOutcome::Complete { ref sha256, .. } if *sha256 == sha), "{done:?}");
        // Renamed into place, not yet recorded: every byte is held.
        assert_eq!(restarted.committed(4, "f1").expect("query"), Committed::Partial { offset: 12, size: 12 });
    }

    #[test]
    fn a_part_file_cut_inside_its_header_starts_again() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let files = FileAssembler::new(tmp.path().join("files"), test_key());
        let data = b"hello, boss!";
        files.write_chunk(4, &chunk(0, 12, None), &data[..5]).expect("first chunk");
        fs::write(tmp.path().join("files/4/.f1.part"), b"SPYF").expect("cut in the header");
        let restarted = FileAssembler::new(tmp.path().join("files"), test_key());
        assert_eq!(restarted.committed(4, "f1").expect("query"), Committed::Partial { offset: 0, size: 12 });
        restarted.write_chunk(4, &chunk(0, 12, None), &data[..5]).expect("first chunk again");
        let sha = hex::encode(Sha256::digest(data));
        let done = restarted.write_chunk(4, &chunk(5, 12, Some(sha)), &data[5..]).expect("completes");
        assert!(matches!(done, ChunkOutcome::Complete { size: 12, .. }), "{done:?}");
    }

    #[test]
    fn one_agents_upload_does_not_wait_for_anothers() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let files = FileAssembler::new(tmp.path().join("files"), test_key());
        // Agent 1's lock is held (as while its finished file is hashed)...
        let lock = files.agents.lock().expect("map").entry(1).or_default().clone();
        let _held = lock.lock().expect("agent 1");
        // ...and agent 2's chunk still goes through at once.
        let (done, wait) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            scope.spawn(|| done.send(files.write_chunk(2, &chunk(0, 12, None), b"hello").is_ok()).expect("send"));
            assert_eq!(wait.recv_timeout(std::time::Duration::from_secs(5)), Ok(true), "agent 2 was held up");
        });
    }

    #[test]
    fn sweep_removes_only_stale_partials() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let files = FileAssembler::new(tmp.path().to_path_buf(), test_key());
        files.write_chunk(3, &chunk(0, 12, None), b"hello").expect("partial");
        let data = b"abc";
        let sha = hex::encode(Sha256::digest(data));
        let done = FileChunk { file_id: "f2".into(), name: "b".into(), offset: 0, size: 3, sha256: Some(sha) };
        files.write_chunk(3, &done, data).expect("complete");
        assert_eq!(files.sweep_stale(std::time::Duration::from_secs(3600)), 0, "fresh partials stay");
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(files.running.lock().expect("map").len(), 1, "the partial upload's running hash");
        assert_eq!(files.sweep_stale(std::time::Duration::from_millis(1)), 2, "the part file and its pin");
        assert!(files.running.lock().expect("map").is_empty(), "a swept upload's running hash is dropped too");
        assert!(!tmp.path().join("3/.f1.part").exists());
        assert!(!tmp.path().join("3/.f1.pin").exists());
        assert!(tmp.path().join("3/f2").exists(), "complete files are never swept");
    }

    /// Bytes under `dir`, recursively (what the disk holds for the uploads).
    fn bytes_under(dir: &Path) -> u64 {
        fs::read_dir(dir).map_or(0, |entries| {
            entries
                .flatten()
                .map(|e| {
                    let meta = e.metadata().expect("meta");
                    if meta.is_dir() { bytes_under(&e.path()) } else { meta.len() }
                })
                .sum()
        })
    }

    /// One agent stores 10 files of 64 KiB, then starts 100 uploads declared
    /// at 1 MiB and abandons each after its first 64 KiB chunk. Returns the
    /// bytes on disk and how many first chunks were refused.
    fn ten_files_and_a_hundred_abandoned(files: &FileAssembler, root: &Path) -> (u64, usize) {
        let data = vec![5u8; 64 << 10];
        let mut refused = 0;
        for i in 0..10 {
            match files.write_chunk(9, &whole(&format!("done{i}"), &data), &data) {
                Ok(_) => {}
                Err(ChunkError::Refused(_)) => refused += 1,
                Err(e) => panic!("{e:?}"),
            }
        }
        for i in 0..100 {
            let first =
                FileChunk { file_id: format!("part{i}"), name: "x".into(), offset: 0, size: 1 << 20, sha256: None };
            match files.write_chunk(9, &first, &data) {
                Ok(_) => {}
                Err(ChunkError::Refused(why)) => {
                    assert!(why.contains("--max-"), "the refusal names its flag: {why}");
                    refused += 1
                }
                Err(e) => panic!("{e:?}"),
            }
        }
        (bytes_under(root), refused)
    }

    #[test]
    fn quotas_bound_what_one_agent_stores() {
        let unbounded = tempfile::tempdir().expect("tempdir");
        let files = FileAssembler::new(unbounded.path().join("files"), test_key());
        let (before, refused) = ten_files_and_a_hundred_abandoned(&files, unbounded.path());
        assert_eq!(refused, 0);

        let bounded = tempfile::tempdir().expect("tempdir");
        let quota = Quota { max_stored_bytes: 4 << 20, max_partial_uploads: 8, min_free_bytes: 0 };
        let files = FileAssembler::new(bounded.path().join("files"), test_key()).with_quota(quota);
        let (after, refused) = ten_files_and_a_hundred_abandoned(&files, bounded.path());
        eprintln!("one agent, 10 files + 100 abandoned uploads: {before} bytes on disk unbounded, {after} with quotas");
        assert!(before > 6 << 20, "{before}");
        assert!(after <= quota.max_stored_bytes, "{after} bytes stored past the quota");
        assert!(refused >= 97, "{refused}");
        // Partial count: with room in bytes, the ninth concurrent upload is refused.
        let roomy = tempfile::tempdir().expect("tempdir");
        let quota = Quota { max_stored_bytes: u64::MAX, max_partial_uploads: 8, min_free_bytes: 0 };
        let files = FileAssembler::new(roomy.path().join("files"), test_key()).with_quota(quota);
        for i in 0..8 {
            let first = FileChunk { file_id: format!("p{i}"), ..chunk(0, 12, None) };
            files.write_chunk(1, &first, b"hello").expect("within the count");
        }
        let ninth = FileChunk { file_id: "p8".into(), ..chunk(0, 12, None) };
        assert!(matches!(
            files.write_chunk(1, &ninth, b"hello"),
            Err(ChunkError::Refused(why)) if why.contains("--max-partial-uploads")
        ));
        // Another agent has its own count.
        files.write_chunk(2, &ninth, b"hello").expect("agent 2 is not agent 1");
    }

    #[test]
    fn a_disk_below_the_free_space_guard_refuses_every_chunk() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let quota = Quota { max_stored_bytes: u64::MAX, max_partial_uploads: 8, min_free_bytes: u64::MAX / 2 };
        let files = FileAssembler::new(tmp.path().join("files"), test_key()).with_quota(quota);
        assert!(matches!(
            files.write_chunk(1, &chunk(0, 12, None), b"hello"),
            Err(ChunkError::Refused(why)) if why.contains("--min-free-bytes")
        ));
    }

    #[test]
    fn bad_hash_leaves_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let files = FileAssembler::new(tmp.path().to_path_buf(), test_key());
        let err = files.write_chunk(1, &chunk(0, 3, Some("00".repeat(32))), b"abc");
        assert!(matches!(err, Err(ChunkError::Rejected(_))));
        assert_eq!(fs::read_dir(tmp.path().join("1")).expect("dir").count(), 0);
    }

    /// A home with `files/` inside and a directory outside it, with the
    /// file an attacker wants to overwrite.
    struct Setup {
        _tmp: tempfile::TempDir,
        files: PathBuf,
        outside: PathBuf,
        victim: PathBuf,
    }

    const VICTIM: &[u8] = b"ssh-ed25519 AAAA the owner's key\n";

    fn setup() -> Setup {
        let tmp = tempfile::tempdir().expect("tempdir");
        let home = tmp.path().join("home");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(home.join("files")).expect("home");
        fs::create_dir(&outside).expect("outside");
        let victim = outside.join("authorized_keys");
        fs::write(&victim, VICTIM).expect("victim");
        Setup { files: home.join("files"), outside, victim, _tmp: tmp }
    }

    /// The whole upload of `data` as file id `id`, in one chunk.
    fn whole(id: &str, data: &[u8]) -> FileChunk {
        let sha = hex::encode(Sha256::digest(data));
        FileChunk { file_id: id.into(), name: "x".into(), offset: 0, size: data.len() as u64, sha256: Some(sha) }
    }

    fn outside_unchanged(s: &Setup) {
        assert_eq!(fs::read(&s.victim).expect("victim"), VICTIM, "the file outside the home changed");
        assert_eq!(fs::read_dir(&s.outside).expect("outside").count(), 1, "something was created outside the home");
    }

    #[test]
    fn a_symlinked_files_dir_is_not_followed() {
        let s = setup();
        fs::remove_dir(&s.files).expect("rm files");
        symlink(&s.outside, &s.files).expect("link");
        let files = FileAssembler::new(s.files.clone(), test_key());
        let err = files.write_chunk(7, &whole("authorized_keys", b"evil"), b"evil");
        assert!(matches!(err, Err(ChunkError::Io(_))), "{err:?}");
        outside_unchanged(&s);
    }

    #[test]
    fn a_symlinked_agent_dir_is_not_followed() {
        let s = setup();
        symlink(&s.outside, s.files.join("7")).expect("link");
        let files = FileAssembler::new(s.files.clone(), test_key());
        let err = files.write_chunk(7, &whole("authorized_keys", b"evil"), b"evil");
        assert!(matches!(err, Err(ChunkError::Io(_))), "{err:?}");
        outside_unchanged(&s);
    }

    #[test]
    fn a_symlinked_part_file_is_not_followed_at_any_offset() {
        let s = setup();
        fs::create_dir(s.files.join("7")).expect("agent dir");
        symlink(&s.victim, s.files.join("7/.f1.part")).expect("link");
        let files = FileAssembler::new(s.files.clone(), test_key());
        for offset in [0, 4] {
            let err = files.write_chunk(7, &chunk(offset, 12, None), b"evil");
            assert!(matches!(err, Err(ChunkError::Io(_))), "offset {offset}: {err:?}");
        }
        outside_unchanged(&s);
    }

    #[test]
    fn a_hard_linked_part_file_is_refused() {
        let s = setup();
        fs::create_dir(s.files.join("7")).expect("agent dir");
        // A hard link needs the same file system, so the "victim" is a file
        // beside the agent directory here.
        let victim = s.files.join("victim");
        fs::write(&victim, VICTIM).expect("victim");
        fs::hard_link(&victim, s.files.join("7/.f1.part")).expect("hard link");
        let files = FileAssembler::new(s.files.clone(), test_key());
        let err = files.write_chunk(7, &chunk(4, 12, None), b"evil");
        assert!(matches!(err, Err(ChunkError::Io(_))), "{err:?}");
        assert_eq!(fs::read(&victim).expect("victim"), VICTIM);
    }

    #[test]
    fn a_symlinked_final_name_is_neither_hashed_nor_written_through() {
        let s = setup();
        fs::create_dir(s.files.join("7")).expect("agent dir");
        symlink(&s.victim, s.files.join("7/f1")).expect("link");
        let files = FileAssembler::new(s.files.clone(), test_key());
        // A retried last chunk would hash the final file: not through a link.
        let err = files.write_chunk(7, &whole("f1", VICTIM), VICTIM);
        assert!(matches!(err, Err(ChunkError::Io(_))), "{err:?}");
        outside_unchanged(&s);
    }

    #[test]
    fn the_sweep_does_not_follow_a_symlinked_agent_dir() {
        let s = setup();
        let stale = s.outside.join(".old.part");
        fs::write(&stale, b"not ours").expect("stale");
        symlink(&s.outside, s.files.join("7")).expect("link");
        std::thread::sleep(std::time::Duration::from_millis(20));
        let files = FileAssembler::new(s.files.clone(), test_key());
        assert_eq!(files.sweep_stale(std::time::Duration::from_millis(1)), 0);
        assert!(stale.exists(), "a part file outside the home was deleted");
    }
}
