//! Received files at rest: every upload is stored encrypted, one STREAM
//! segment per received chunk, so nothing an agent sends sits under `files/`
//! in plaintext.
//!
//! Construction: STREAM (Hoang, Reyhanitabar, Rogaway, Vizar, "Online
//! Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance", 2015) in
//! its big-endian 32-bit-counter form over AES-256-GCM, from RustCrypto's
//! `aead-stream` and `aes-gcm`. Each file gets its own key,
//! `HKDF-SHA256(ikm = the Boss's files-at-rest key, salt = 16 random bytes,
//! info = "spyctl/v1/file/<AgentId>/<FileId>")`, so nonces never repeat across
//! files and a file cannot be passed off as another agent's or another id's.
//! Segment `i` is sealed with nonce `0^7 || i (u32 BE) || last flag`: a
//! flipped bit fails its tag, a reordered segment fails under its wrong
//! counter, and a cut file lacks the segment sealed as last, so each is
//! detected when the file is read back.
//!
//! Layout: `SPYF\x02`, the key epoch (u32 BE) whose files key sealed it,
//! the 16-byte salt, then each segment as its ciphertext length (u32 BE) and
//! the ciphertext (plaintext + 16-byte tag). Files written before key epochs
//! start `SPYF\x01` and the salt, and are epoch 0. The lengths and the epoch
//! are not secret; a changed length misaligns the segments and fails their
//! tags, a changed epoch picks another key and fails every tag.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;

use aead_stream::StreamPrimitive;

pub use crate::crypto::{FilesKey, FilesKeys};

/// The format before key epochs: magic, salt.
const MAGIC_V1: &[u8; 5] = b"SPYF\x01";
/// Magic, epoch, salt.
const MAGIC_V2: &[u8; 5] = b"SPYF\x02";
const SALT_BYTES: usize = 16;
/// Bytes before the first segment in a file this build writes.
pub const HEADER_BYTES: u64 = (MAGIC_V2.len() + 4 + SALT_BYTES) as u64;
/// AES-GCM's tag, added to every segment.
pub const TAG_BYTES: usize = 16;

/// Why a sealed file could not be read or written.
#[derive(Debug)]
pub enum SealedError {
    Io(std::io::Error),
    /// A segment failed its tag, is out of place, or the last is missing:
    /// the file was cut, reordered or changed on disk.
    Corrupt,
}

impl std::fmt::Display for SealedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SealedError::Io(_) => f.write_str("cannot read or write the stored file"),
            SealedError::Corrupt => {
                f.write_str("the stored file fails its integrity check: it was cut, reordered or changed on disk")
            }
        }
    }
}

impl std::error::Error for SealedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SealedError::Io(e) => Some(e),
            SealedError::Corrupt => None,
        }
    }
}

impl From<std::io::Error> for SealedError {
    fn from(e: std::io::Error) -> Self {
        SealedError::Io(e)
    }
}

/// What is in a sealed file so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Plaintext bytes stored.
    pub plaintext_len: u64,
    /// Segments stored.
    pub segments: u32,
    /// Where the next segment goes.
    pub end: u64,
}

/// What a sealed file's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The key epoch whose files key sealed the file.
    pub epoch: u32,
    salt: [u8; SALT_BYTES],
    /// Where the first segment starts.
    pub len: u64,
}

impl Header {
    /// Reads and checks a file's header.
    pub fn read(file: &File) -> Result<Header, SealedError> {
        let mut magic = [0u8; 5];
        read_exact_at(file, &mut magic, 0)?;
        let mut salt = [0u8; SALT_BYTES];
        if &magic == MAGIC_V1 {
            read_exact_at(file, &mut salt, magic.len() as u64)?;
            return Ok(Header { epoch: 0, salt, len: (MAGIC_V1.len() + SALT_BYTES) as u64 });
        }
        if &magic != MAGIC_V2 {
            return Err(SealedError::Corrupt);
        }
        let mut epoch = [0u8; 4];
        read_exact_at(file, &mut epoch, magic.len() as u64)?;
        read_exact_at(file, &mut salt, (magic.len() + 4) as u64)?;
        Ok(Header { epoch: u32::from_be_bytes(epoch), salt, len: HEADER_BYTES })
    }
}

/// One upload being written or read, with the keys of every live epoch.
pub struct SealedFile<'k> {
    keys: &'k FilesKeys,
    /// The HKDF info label of this file's key.
    info: String,
}

impl<'k> SealedFile<'k> {
    pub fn new(keys: &'k FilesKeys, agent_id: i64, file_id: &str) -> Self {
        SealedFile { keys, info: format!("spyctl/v1/file/{agent_id}/{file_id}") }
    }

    /// A file of another kind (an order's file at the Boss, a received one
    /// at an agent), keyed under its own HKDF `info` label.
    pub fn labelled(keys: &'k FilesKeys, info: String) -> Self {
        SealedFile { keys, info }
    }

    /// Writes the header (the newest epoch, a fresh random salt) into an
    /// empty file.
    pub fn start(&self, file: &File) -> Result<(), SealedError> {
        let mut header = Vec::with_capacity(HEADER_BYTES as usize);
        header.extend_from_slice(MAGIC_V2);
        header.extend_from_slice(&self.keys.newest().0.to_be_bytes());
        let mut salt = [0u8; SALT_BYTES];
        getrandom::fill(&mut salt).map_err(|e| SealedError::Io(std::io::Error::other(e)))?;
        header.extend_from_slice(&salt);
        file.set_len(0)?;
        file.write_all_at(&header, 0)?;
        Ok(())
    }

    /// The STREAM of the file whose header is `header`: a file under a
    /// retired (or unknown) epoch opens under no key, like a damaged one.
    fn stream(&self, header: &Header) -> Result<aead_stream::StreamBE32<aes_gcm::Aes256Gcm>, SealedError> {
        let key = self.keys.at(header.epoch).ok_or(SealedError::Corrupt)?;
        Ok(key.stream_labelled(&header.salt, &self.info))
    }

    /// The layout after `layout` gained a segment of `plaintext_len` bytes.
    pub fn grown(layout: &Layout, plaintext_len: usize) -> Layout {
        Layout {
            plaintext_len: layout.plaintext_len + plaintext_len as u64,
            segments: layout.segments + 1,
            end: layout.end + 4 + (plaintext_len + TAG_BYTES) as u64,
        }
    }

    /// Walks the segment lengths (no decryption).
    pub fn layout(file: &File) -> Result<Layout, SealedError> {
        let header = Header::read(file)?;
        let file_len = file.metadata()?.len();
        let mut layout = Layout { plaintext_len: 0, segments: 0, end: header.len };
        while layout.end < file_len {
            let mut len = [0u8; 4];
            read_exact_at(file, &mut len, layout.end)?;
            let len = u64::from(u32::from_be_bytes(len));
            if len < TAG_BYTES as u64 || layout.end + 4 + len > file_len {
                return Err(SealedError::Corrupt);
            }
            layout.plaintext_len += len - TAG_BYTES as u64;
            layout.segments += 1;
            layout.end += 4 + len;
        }
        Ok(layout)
    }

    /// Walks the segments like [`Self::layout`], but stops before a last
    /// segment cut short (its length or its bytes run past the end of the
    /// file), as a Boss killed in the middle of [`Self::append`] leaves it.
    /// Those bytes were never acknowledged: an ACK follows only a whole
    /// segment's sync. `None` when even the header is incomplete.
    pub fn whole_segments(file: &File) -> Result<Option<Layout>, SealedError> {
        let file_len = file.metadata()?.len();
        let header = match Header::read(file) {
            Ok(header) => header,
            // Cut inside the header (a new header is HEADER_BYTES long).
            Err(SealedError::Corrupt) if file_len < HEADER_BYTES => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut layout = Layout { plaintext_len: 0, segments: 0, end: header.len };
        while layout.end + 4 <= file_len {
            let mut len = [0u8; 4];
            read_exact_at(file, &mut len, layout.end)?;
            let len = u64::from(u32::from_be_bytes(len));
            if len < TAG_BYTES as u64 {
                return Err(SealedError::Corrupt);
            }
            if layout.end + 4 + len > file_len {
                break;
            }
            layout.plaintext_len += len - TAG_BYTES as u64;
            layout.segments += 1;
            layout.end += 4 + len;
        }
        Ok(Some(layout))
    }

    /// Seals `plaintext` as segment `layout.segments` (the last one if
    /// `last`) and appends it at `layout.end`. The caller syncs.
    pub fn append(&self, file: &File, layout: &Layout, last: bool, plaintext: &[u8]) -> Result<(), SealedError> {
        let stream = self.stream(&Header::read(file)?)?;
        // One copy of the plaintext, sealed in place (room for the tag kept),
        // then the length and the segment written behind the last one.
        let mut body = Vec::with_capacity(plaintext.len() + TAG_BYTES);
        body.extend_from_slice(plaintext);
        stream.encrypt_in_place(layout.segments, last, &[], &mut body).map_err(|_| SealedError::Corrupt)?;
        let len = u32::try_from(body.len()).map_err(|_| SealedError::Corrupt)?;
        file.write_all_at(&len.to_be_bytes(), layout.end)?;
        file.write_all_at(&body, layout.end + 4)?;
        Ok(())
    }

    /// Re-seals `from` (under whatever live epoch its header names) into the
    /// empty `to` under the newest epoch, segment by segment with the same
    /// boundaries, so nothing but one segment is ever in memory. The caller
    /// syncs `to` and renames it over `from`. Returns the plaintext length.
    pub fn reseal(&self, from: &File, to: &File) -> Result<u64, SealedError> {
        self.start(to)?;
        let mut written = Self::layout(to)?;
        let segments = Self::layout(from)?.segments;
        let mut index = 0;
        self.read(from, |plaintext| {
            index += 1;
            self.append(to, &written, index == segments, plaintext).map_err(|e| match e {
                SealedError::Io(io) => io,
                SealedError::Corrupt => std::io::Error::other("cannot seal a segment"),
            })?;
            written = Self::grown(&written, plaintext.len());
            Ok(())
        })
    }

    /// Reads the whole file back, handing each segment's plaintext to `sink`
    /// in order. Fails unless every segment opens in its place and the last
    /// one is the one sealed as last.
    pub fn read(&self, file: &File, mut sink: impl FnMut(&[u8]) -> std::io::Result<()>) -> Result<u64, SealedError> {
        let header = Header::read(file)?;
        let stream = self.stream(&header)?;
        let layout = Self::layout(file)?;
        let mut at = header.len;
        let mut buffer = Vec::new();
        for index in 0..layout.segments {
            let mut len = [0u8; 4];
            read_exact_at(file, &mut len, at)?;
            let len = u32::from_be_bytes(len) as usize;
            buffer.resize(len, 0);
            read_exact_at(file, &mut buffer, at + 4)?;
            let last = index + 1 == layout.segments;
            stream.decrypt_in_place(index, last, &[], &mut buffer).map_err(|_| SealedError::Corrupt)?;
            sink(&buffer)?;
            at += 4 + len as u64;
        }
        if layout.segments == 0 {
            return Err(SealedError::Corrupt);
        }
        Ok(layout.plaintext_len)
    }
}

impl SealedFile<'_> {
    /// Opens segment `index`, which starts at `at` (its length field), in a
    /// file of `header`: `last` says whether it must be the one sealed last.
    /// Returns the plaintext and where the next segment starts.
    pub fn open_segment(
        &self,
        file: &File,
        header: &Header,
        index: u32,
        at: u64,
        last: bool,
    ) -> Result<(Vec<u8>, u64), SealedError> {
        let stream = self.stream(header)?;
        let mut len = [0u8; 4];
        read_exact_at(file, &mut len, at)?;
        let len = u32::from_be_bytes(len) as usize;
        if !(TAG_BYTES..=(1 << 20)).contains(&len) {
            return Err(SealedError::Corrupt);
        }
        let mut buffer = vec![0u8; len];
        read_exact_at(file, &mut buffer, at + 4)?;
        stream.decrypt_in_place(index, last, &[], &mut buffer).map_err(|_| SealedError::Corrupt)?;
        Ok((buffer, at + 4 + len as u64))
    }
}

fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> Result<(), SealedError> {
    file.read_exact_at(buf, offset).map_err(|e| match e.kind() {
        ErrorKind::UnexpectedEof => SealedError::Corrupt,
        _ => SealedError::Io(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(key: &FilesKeys, chunks: &[&[u8]]) -> (tempfile::NamedTempFile, File) {
        let tmp = tempfile::NamedTempFile::new().expect("tmp");
        let file = tmp.reopen().expect("reopen");
        let writer = SealedFile::new(key, 7, "f1");
        writer.start(&file).expect("start");
        for (i, chunk) in chunks.iter().enumerate() {
            let layout = SealedFile::layout(&file).expect("layout");
            writer.append(&file, &layout, i + 1 == chunks.len(), chunk).expect("append");
        }
        (tmp, file)
    }

    fn read_all(key: &FilesKeys, file: &File, agent: i64, id: &str) -> Result<Vec<u8>, SealedError> {
        let mut out = Vec::new();
        SealedFile::new(key, agent, id).read(file, |p| {
            out.extend_from_slice(p);
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn round_trip_and_no_plaintext_on_disk() {
        let key = FilesKeys::single(FilesKey::from_bytes(&[1u8; 32]));
        let (tmp, file) = sealed(&key, &[b"secret plans, part one; ", b"part two"]);
        assert_eq!(read_all(&key, &file, 7, "f1").expect("reads"), b"secret plans, part one; part two");
        let raw = std::fs::read(tmp.path()).expect("raw");
        assert!(!raw.windows(6).any(|w| w == b"secret"), "plaintext on disk");
        let layout = SealedFile::layout(&file).expect("layout");
        assert_eq!((layout.plaintext_len, layout.segments), (32, 2));
    }

    #[test]
    fn a_flipped_bit_a_cut_a_swap_or_another_id_is_detected() {
        let key = FilesKeys::single(FilesKey::from_bytes(&[1u8; 32]));
        let chunks: [&[u8]; 3] = [b"aaaa", b"bbbb", b"cccc"];
        // Every single-bit flip anywhere in the file.
        let (tmp, _) = sealed(&key, &chunks);
        let good = std::fs::read(tmp.path()).expect("raw");
        for i in 0..good.len() * 8 {
            let mut bad = good.clone();
            bad[i / 8] ^= 1 << (i % 8);
            std::fs::write(tmp.path(), &bad).expect("write");
            let file = File::open(tmp.path()).expect("open");
            assert!(read_all(&key, &file, 7, "f1").is_err(), "bit {i} flipped went unnoticed");
        }
        // Cut after the second segment: its last segment is missing.
        let seg = |i: usize| 4 + chunks[i].len() + TAG_BYTES;
        let cut = HEADER_BYTES as usize + seg(0) + seg(1);
        std::fs::write(tmp.path(), &good[..cut]).expect("write");
        assert!(matches!(read_all(&key, &File::open(tmp.path()).expect("open"), 7, "f1"), Err(SealedError::Corrupt)));
        // The first two segments swapped.
        let h = HEADER_BYTES as usize;
        let mut swapped = good[..h].to_vec();
        swapped.extend_from_slice(&good[h + seg(0)..h + seg(0) + seg(1)]);
        swapped.extend_from_slice(&good[h..h + seg(0)]);
        swapped.extend_from_slice(&good[h + seg(0) + seg(1)..]);
        std::fs::write(tmp.path(), &swapped).expect("write");
        assert!(matches!(read_all(&key, &File::open(tmp.path()).expect("open"), 7, "f1"), Err(SealedError::Corrupt)));
        // The intact file, read as another agent's or under another id or key.
        std::fs::write(tmp.path(), &good).expect("write");
        let file = File::open(tmp.path()).expect("open");
        assert!(read_all(&key, &file, 7, "f1").is_ok());
        assert!(read_all(&key, &file, 8, "f1").is_err(), "another agent");
        assert!(read_all(&key, &file, 7, "f2").is_err(), "another file id");
        assert!(read_all(&FilesKeys::single(FilesKey::from_bytes(&[2u8; 32])), &file, 7, "f1").is_err(), "another key");
    }

    #[test]
    fn a_file_names_its_epoch_older_files_are_epoch_0_and_reseal_moves_one_to_the_newest() {
        let old_keys = FilesKeys::single(FilesKey::from_bytes(&[1u8; 32]));
        let (_tmp, file) = sealed(&old_keys, &[b"first ", b"second"]);
        assert_eq!(Header::read(&file).expect("header").epoch, 0);
        // A file in the format from before epochs (magic 1, no epoch field)
        // is epoch 0 and still reads.
        let v2 = std::fs::read(_tmp.path()).expect("raw");
        let mut v1 = MAGIC_V1.to_vec();
        v1.extend_from_slice(&v2[MAGIC_V2.len() + 4..]);
        let v1_file = tempfile::NamedTempFile::new().expect("tmp");
        std::fs::write(v1_file.path(), &v1).expect("write v1");
        let reopened = File::open(v1_file.path()).expect("open");
        assert_eq!(read_all(&old_keys, &reopened, 7, "f1").expect("v1 reads"), b"first second");

        let both = FilesKeys::new(vec![(1, FilesKey::from_bytes(&[9u8; 32])), (0, FilesKey::from_bytes(&[1u8; 32]))]);
        let target = tempfile::tempfile().expect("tmp");
        let len = SealedFile::new(&both, 7, "f1").reseal(&reopened, &target).expect("reseal");
        assert_eq!(len, 12);
        assert_eq!(Header::read(&target).expect("header").epoch, 1, "sealed under the newest epoch");
        assert_eq!(read_all(&both, &target, 7, "f1").expect("reads"), b"first second");
        assert_eq!(SealedFile::layout(&target).expect("layout").segments, 2, "same segments");
        let only_new = FilesKeys::single(FilesKey::from_bytes(&[9u8; 32]));
        assert!(read_all(&only_new, &target, 7, "f1").is_err(), "epoch 1 is not epoch 0 under the new key");
        let new_as_1 = FilesKeys::new(vec![(1, FilesKey::from_bytes(&[9u8; 32]))]);
        assert_eq!(read_all(&new_as_1, &target, 7, "f1").expect("only epoch 1 needed"), b"first second");
        assert!(read_all(&new_as_1, &reopened, 7, "f1").is_err(), "a retired epoch's file opens under no key");
    }
}
