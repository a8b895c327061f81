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
//! Layout: `SPYF\x01`, the 16-byte salt, then each segment as its
//! ciphertext length (u32 BE) and the ciphertext (plaintext + 16-byte tag).
//! The lengths are not secret; a changed length misaligns the segments and
//! fails their tags.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;

use aead_stream::StreamPrimitive;

pub use crate::crypto::FilesKey;

const MAGIC: &[u8; 5] = b"SPYF\x01";
const SALT_BYTES: usize = 16;
/// Bytes before the first segment.
pub const HEADER_BYTES: u64 = (MAGIC.len() + SALT_BYTES) as u64;
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

/// One upload being written or read, with its key.
pub struct SealedFile<'k> {
    key: &'k FilesKey,
    agent_id: i64,
    file_id: String,
}

impl<'k> SealedFile<'k> {
    pub fn new(key: &'k FilesKey, agent_id: i64, file_id: &str) -> Self {
        SealedFile { key, agent_id, file_id: file_id.to_string() }
    }

    /// Writes the header (a fresh random salt) into an empty file.
    pub fn start(&self, file: &File) -> Result<(), SealedError> {
        let mut header = Vec::with_capacity(HEADER_BYTES as usize);
        header.extend_from_slice(MAGIC);
        let mut salt = [0u8; SALT_BYTES];
        getrandom::fill(&mut salt).map_err(|e| SealedError::Io(std::io::Error::other(e)))?;
        header.extend_from_slice(&salt);
        file.set_len(0)?;
        file.write_all_at(&header, 0)?;
        Ok(())
    }

    fn salt(file: &File) -> Result<[u8; SALT_BYTES], SealedError> {
        let mut header = [0u8; HEADER_BYTES as usize];
        read_exact_at(file, &mut header, 0)?;
        if &header[..MAGIC.len()] != MAGIC {
            return Err(SealedError::Corrupt);
        }
        let mut salt = [0u8; SALT_BYTES];
        salt.copy_from_slice(&header[MAGIC.len()..]);
        Ok(salt)
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
        Self::salt(file)?;
        let file_len = file.metadata()?.len();
        let mut layout = Layout { plaintext_len: 0, segments: 0, end: HEADER_BYTES };
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

    /// Seals `plaintext` as segment `layout.segments` (the last one if
    /// `last`) and appends it at `layout.end`. The caller syncs.
    pub fn append(&self, file: &File, layout: &Layout, last: bool, plaintext: &[u8]) -> Result<(), SealedError> {
        let salt = Self::salt(file)?;
        let stream = self.key.stream(&salt, self.agent_id, &self.file_id);
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

    /// Reads the whole file back, handing each segment's plaintext to `sink`
    /// in order. Fails unless every segment opens in its place and the last
    /// one is the one sealed as last.
    pub fn read(&self, file: &File, mut sink: impl FnMut(&[u8]) -> std::io::Result<()>) -> Result<u64, SealedError> {
        let salt = Self::salt(file)?;
        let stream = self.key.stream(&salt, self.agent_id, &self.file_id);
        let layout = Self::layout(file)?;
        let mut at = HEADER_BYTES;
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

fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> Result<(), SealedError> {
    file.read_exact_at(buf, offset).map_err(|e| match e.kind() {
        ErrorKind::UnexpectedEof => SealedError::Corrupt,
        _ => SealedError::Io(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(key: &FilesKey, chunks: &[&[u8]]) -> (tempfile::NamedTempFile, File) {
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

    fn read_all(key: &FilesKey, file: &File, agent: i64, id: &str) -> Result<Vec<u8>, SealedError> {
        let mut out = Vec::new();
        SealedFile::new(key, agent, id).read(file, |p| {
            out.extend_from_slice(p);
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn round_trip_and_no_plaintext_on_disk() {
        let key = FilesKey::from_bytes(&[1u8; 32]);
        let (tmp, file) = sealed(&key, &[b"secret plans, part one; ", b"part two"]);
        assert_eq!(read_all(&key, &file, 7, "f1").expect("reads"), b"secret plans, part one; part two");
        let raw = std::fs::read(tmp.path()).expect("raw");
        assert!(!raw.windows(6).any(|w| w == b"secret"), "plaintext on disk");
        let layout = SealedFile::layout(&file).expect("layout");
        assert_eq!((layout.plaintext_len, layout.segments), (32, 2));
    }

    #[test]
    fn a_flipped_bit_a_cut_a_swap_or_another_id_is_detected() {
        let key = FilesKey::from_bytes(&[1u8; 32]);
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
        assert!(read_all(&FilesKey::from_bytes(&[2u8; 32]), &file, 7, "f1").is_err(), "another key");
    }
}
