//! Files that travel with orders (`spyctl order --file`; PROTOCOL.md "Files
//! with orders"): the Boss's one sealed copy of each under
//! `files/orders/<FileId>`, written by the director's process, and the
//! chunks the Boss serves from it to the agents whose orders carry it.
//!
//! The copy is a [`SealedFile`] (STREAM over AES-256-GCM) under the Boss's
//! files-at-rest key with its own HKDF label, `spyctl/v1/order-file/<FileId>`,
//! so it can never pass for an upload (or another order's file). Every
//! segment but the last holds exactly [`CHUNK`] bytes: chunk `i` of the
//! download is segment `i`, found by arithmetic and opened (its tag checked)
//! on its own.
//!
//! The source is opened without following a symlink at its last component
//! and must be a regular file of 1 byte to [`MAX_FILE_BYTES`]. Nothing is
//! visible under its final name until [`Prepared::publish`], which the
//! caller runs inside the transaction that queues the orders.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use sha2::{Digest, Sha256};

use super::sealed_file::{FilesKeys, Header, SealedError, SealedFile, TAG_BYTES};
use crate::db::order_files::FileRow;
use crate::net::v2::OrderFile;

/// The directory under `files/` that holds the order files.
pub const DIR: &str = "orders";
/// Bytes per chunk on the wire and per segment at rest.
pub const CHUNK: usize = crate::net::v2::FILE_CHUNK_BYTES;
/// The largest file an order may carry.
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// Why a file could not be attached or served.
#[derive(Debug)]
pub enum OrderFileError {
    /// The source is unusable (missing, a link, not a regular file, empty,
    /// too large): the one line to show.
    Source(String),
    Io(std::io::Error),
    Sealed(SealedError),
}

impl std::fmt::Display for OrderFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OrderFileError::Source(why) => f.write_str(why),
            OrderFileError::Io(_) => f.write_str("cannot write or read the order's file under files/orders"),
            OrderFileError::Sealed(e) => write!(f, "the order's stored file: {e}"),
        }
    }
}

impl std::error::Error for OrderFileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OrderFileError::Io(e) => Some(e),
            OrderFileError::Sealed(e) => Some(e),
            OrderFileError::Source(_) => None,
        }
    }
}

impl From<std::io::Error> for OrderFileError {
    fn from(e: std::io::Error) -> Self {
        OrderFileError::Io(e)
    }
}

impl From<rustix::io::Errno> for OrderFileError {
    fn from(e: rustix::io::Errno) -> Self {
        OrderFileError::Io(e.into())
    }
}

impl From<SealedError> for OrderFileError {
    fn from(e: SealedError) -> Self {
        OrderFileError::Sealed(e)
    }
}

/// The HKDF info label of an order file's key.
fn label(file_id: &str) -> String {
    format!("spyctl/v1/order-file/{file_id}")
}

/// A file's base name as the agent sees it: no `/`, no control characters,
/// at most 255 bytes.
pub fn sanitise_name(path: &Path) -> String {
    let base = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut name = String::new();
    for c in base.chars() {
        let c = if c == '/' || c.is_control() { '_' } else { c };
        if name.len() + c.len_utf8() > crate::net::protocol::MAX_FILE_NAME_BYTES {
            break;
        }
        name.push(c);
    }
    if name.is_empty() || name == "." || name == ".." { "file".to_string() } else { name }
}

/// A sealed copy written under a temporary name, not yet an order's.
pub struct Prepared {
    pub row: FileRow,
    pub name: String,
    dir: OwnedFd,
    temp: String,
}

impl Prepared {
    /// What the orders carry.
    pub fn describe(&self) -> OrderFile {
        OrderFile {
            id: self.row.file_id.clone(),
            name: self.name.clone(),
            size: self.row.size,
            sha256: self.row.sha256.clone(),
        }
    }

    /// Gives the copy its final name and syncs the directory. Run inside
    /// the transaction that queues the orders, before its commit.
    pub fn publish(&self) -> std::io::Result<()> {
        rustix::fs::renameat(&self.dir, &self.temp, &self.dir, &self.row.file_id)?;
        rustix::fs::fsync(&self.dir)?;
        Ok(())
    }

    /// Removes the copy under either name (the orders were not queued).
    pub fn discard(&self) {
        let _ = rustix::fs::unlinkat(&self.dir, &self.temp, AtFlags::empty());
        let _ = rustix::fs::unlinkat(&self.dir, &self.row.file_id, AtFlags::empty());
    }
}

/// Opens a directory under `parent`, creating it 0700 if asked, never
/// following a link.
fn open_dir(parent: impl AsFd, name: &str, create: bool) -> std::io::Result<OwnedFd> {
    if create {
        match rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(rustix::fs::openat(parent, name, flags, Mode::empty())?)
}

/// `files/orders/`, opened without following links (created if asked).
fn orders_dir(files_dir: &Path, create: bool) -> std::io::Result<OwnedFd> {
    let parent = files_dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = files_dir.file_name().and_then(OsStr::to_str).unwrap_or("files");
    let home = rustix::fs::open(parent, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    let files = open_dir(&home, name, create)?;
    open_dir(&files, DIR, create)
}

/// Opens the source for reading: no link at the last component, a regular
/// file, 1 byte to [`MAX_FILE_BYTES`]. Each refusal is one clear line.
pub fn open_source(source: &Path) -> Result<(File, u64), OrderFileError> {
    let shown = source.display();
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = match rustix::fs::open(source, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Err(OrderFileError::Source(format!("{shown}: no such file"))),
        Err(rustix::io::Errno::LOOP) => {
            return Err(OrderFileError::Source(format!("{shown} is a symbolic link; name the file itself")));
        }
        Err(rustix::io::Errno::ACCESS) => return Err(OrderFileError::Source(format!("{shown}: permission denied"))),
        Err(e) => return Err(OrderFileError::Source(format!("{shown}: cannot open ({e})"))),
    };
    let stat = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(OrderFileError::Source(format!("{shown} is not a regular file")));
    }
    let size = stat.st_size as u64;
    if size == 0 {
        return Err(OrderFileError::Source(format!("{shown} is empty; an order's file has at least one byte")));
    }
    if size > MAX_FILE_BYTES {
        return Err(OrderFileError::Source(format!(
            "{shown} is {size} bytes; an order's file is at most {MAX_FILE_BYTES} bytes (1 GiB)"
        )));
    }
    // Back to blocking reads (NONBLOCK only kept a FIFO from hanging the open).
    rustix::fs::fcntl_setfl(&fd, OFlags::empty())?;
    Ok((File::from(fd), size))
}

/// Seals `source` into `files/orders/.<id>.writing`, one [`CHUNK`] per
/// segment, hashing as it goes, and syncs it.
pub fn prepare(files_dir: &Path, keys: &FilesKeys, source: &Path) -> Result<Prepared, OrderFileError> {
    let (mut input, size) = open_source(source)?;
    let name = sanitise_name(source);
    let file_id = crate::net::ids::random_id();
    let dir = orders_dir(files_dir, true)?;
    let temp = format!(".{file_id}.writing");
    let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let out = File::from(rustix::fs::openat(&dir, temp.as_str(), flags, Mode::from_raw_mode(0o600))?);
    let prepared = Prepared { row: FileRow { file_id: file_id.clone(), size, sha256: String::new() }, name, dir, temp };
    match seal_into(&mut input, size, &out, keys, &file_id) {
        Ok(sha256) => Ok(Prepared { row: FileRow { sha256, ..prepared.row.clone() }, ..prepared }),
        Err(e) => {
            prepared.discard();
            Err(e)
        }
    }
}

fn seal_into(
    input: &mut File,
    size: u64,
    out: &File,
    keys: &FilesKeys,
    file_id: &str,
) -> Result<String, OrderFileError> {
    let sealed = SealedFile::labelled(keys, label(file_id));
    sealed.start(out)?;
    let mut layout = SealedFile::layout(out)?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    while layout.plaintext_len < size {
        let want = CHUNK.min((size - layout.plaintext_len) as usize);
        input.read_exact(&mut buf[..want]).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => OrderFileError::Source("the file shrank while it was read".into()),
            _ => OrderFileError::Io(e),
        })?;
        hash.update(&buf[..want]);
        let last = layout.plaintext_len + want as u64 == size;
        sealed.append(out, &layout, last, &buf[..want])?;
        layout = SealedFile::grown(&layout, want);
    }
    out.sync_all()?;
    Ok(hex::encode(hash.finalize()))
}

/// Up to `count` chunks of `file` from `offset` (a multiple of [`CHUNK`],
/// below the size), each opened from its own segment.
pub fn serve(
    files_dir: &Path,
    keys: &FilesKeys,
    file: &FileRow,
    offset: u64,
    count: usize,
) -> Result<Vec<(u64, Vec<u8>)>, OrderFileError> {
    let dir = orders_dir(files_dir, false)?;
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let stored = File::from(rustix::fs::openat(&dir, file.file_id.as_str(), flags, Mode::empty())?);
    let header = Header::read(&stored)?;
    let sealed = SealedFile::labelled(keys, label(&file.file_id));
    let mut out = Vec::with_capacity(count);
    let mut at_plain = offset;
    let mut index = offset / CHUNK as u64;
    let mut at = header.len + index * (4 + CHUNK + TAG_BYTES) as u64;
    while out.len() < count && at_plain < file.size {
        let want = CHUNK.min((file.size - at_plain) as usize);
        let last = at_plain + want as u64 == file.size;
        let segment = u32::try_from(index).map_err(|_| SealedError::Corrupt)?;
        let (plaintext, next) = sealed.open_segment(&stored, &header, segment, at, last)?;
        if plaintext.len() != want {
            return Err(SealedError::Corrupt.into());
        }
        out.push((at_plain, plaintext));
        at_plain += want as u64;
        index += 1;
        at = next;
    }
    Ok(out)
}

/// Re-seals one stored copy under the newest epoch of `keys` (a key
/// rotation), segment by segment with the same boundaries, into
/// `.<id>.reseal`, synced, then renamed over it. False if it already was.
/// A Boss serving it meanwhile opens either the old or the new file; both
/// open while the old epoch is live.
pub fn reseal(files_dir: &Path, keys: &FilesKeys, file_id: &str) -> std::io::Result<bool> {
    if !crate::net::protocol::valid_id(file_id) {
        return Err(std::io::Error::other("an order file id that is not a plain id"));
    }
    let dir = orders_dir(files_dir, false)?;
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let old = File::from(rustix::fs::openat(&dir, file_id, flags, Mode::empty())?);
    if Header::read(&old).map_err(std::io::Error::other)?.epoch == keys.newest().0 {
        return Ok(false);
    }
    let temp = format!(".{file_id}.reseal");
    let _ = rustix::fs::unlinkat(&dir, temp.as_str(), AtFlags::empty());
    let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let new = File::from(rustix::fs::openat(&dir, temp.as_str(), flags, Mode::from_raw_mode(0o600))?);
    let resealed = SealedFile::labelled(keys, label(file_id)).reseal(&old, &new);
    if let Err(e) = resealed.map_err(std::io::Error::other).and_then(|_| new.sync_all()) {
        let _ = rustix::fs::unlinkat(&dir, temp.as_str(), AtFlags::empty());
        return Err(e);
    }
    rustix::fs::renameat(&dir, temp.as_str(), &dir, file_id)?;
    rustix::fs::fsync(&dir)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::FilesKey;

    #[test]
    fn a_file_is_sealed_in_chunk_segments_and_served_from_any_chunk() {
        let tmp = tempfile::tempdir().expect("tmp");
        let source = tmp.path().join("plans.bin");
        let data: Vec<u8> = (0..(CHUNK * 2 + 100)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&source, &data).expect("source");
        let keys = FilesKeys::single(FilesKey::from_bytes(&[3u8; 32]));
        let files = tmp.path().join("files");
        let prepared = prepare(&files, &keys, &source).expect("prepare");
        prepared.publish().expect("publish");
        assert_eq!(prepared.row.size, data.len() as u64);
        assert_eq!(prepared.row.sha256, hex::encode(Sha256::digest(&data)));
        let all = serve(&files, &keys, &prepared.row, 0, 8).expect("serve");
        assert_eq!(all.iter().map(|(o, _)| *o).collect::<Vec<_>>(), [0, CHUNK as u64, 2 * CHUNK as u64]);
        assert_eq!(all.into_iter().flat_map(|(_, b)| b).collect::<Vec<_>>(), data);
        let tail = serve(&files, &keys, &prepared.row, 2 * CHUNK as u64, 8).expect("serve the last");
        assert_eq!(tail[0].1, data[2 * CHUNK..]);
        let stored = files.join(DIR).join(&prepared.row.file_id);
        let raw = std::fs::read(&stored).expect("raw");
        assert!(!raw.windows(64).any(|w| w == &data[1000..1064]), "plaintext at rest");
        // A flipped byte in the second segment fails that chunk, not silently.
        let mut bad = raw.clone();
        let at = HEADER_AT + 4 + CHUNK + TAG_BYTES + 4 + 10;
        bad[at] ^= 1;
        std::fs::write(&stored, &bad).expect("tamper");
        assert!(serve(&files, &keys, &prepared.row, CHUNK as u64, 1).is_err());
        assert!(serve(&files, &keys, &prepared.row, 0, 1).is_ok(), "the first segment is intact");
    }

    const HEADER_AT: usize = super::super::sealed_file::HEADER_BYTES as usize;

    #[test]
    fn names_lose_control_characters_and_bad_sources_are_refused_with_one_line() {
        assert_eq!(sanitise_name(Path::new("/tmp/a\u{1b}[31mb\n.txt")), "a_[31mb_.txt");
        assert_eq!(sanitise_name(Path::new("/")), "file");
        assert_eq!(sanitise_name(Path::new(&"é".repeat(200))).len(), 254);
        let tmp = tempfile::tempdir().expect("tmp");
        let keys = FilesKeys::single(FilesKey::from_bytes(&[3u8; 32]));
        let files = tmp.path().join("files");
        let empty = tmp.path().join("empty");
        std::fs::write(&empty, b"").expect("empty");
        let real = tmp.path().join("real");
        std::fs::write(&real, b"x").expect("real");
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).expect("link");
        for (source, says) in [
            (tmp.path().join("missing"), "no such file"),
            (tmp.path().to_path_buf(), "not a regular file"),
            (link, "symbolic link"),
            (empty, "is empty"),
        ] {
            match prepare(&files, &keys, &source) {
                Err(OrderFileError::Source(why)) => assert!(why.contains(says) && !why.contains('\n'), "{why}"),
                other => panic!("{source:?}: {:?}", other.map(|p| p.row)),
            }
        }
        let left: Vec<_> = std::fs::read_dir(files.join(DIR)).map(|d| d.flatten().collect()).unwrap_or_default();
        assert!(left.is_empty(), "nothing is left behind: {left:?}");
    }
}
