//! The Boss's key for received files at rest, and the STREAM (AES-256-GCM,
//! big-endian 32-bit counter) it gives each file. The file format that uses
//! it lives in `boss::sealed_file`; the construction is described there.

use aead_stream::{NewStream, StreamBE32};
use aes_gcm::Aes256Gcm;
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// The files-at-rest key of every live key epoch, newest first: new files
/// are sealed under the newest, each file's header names the epoch it needs.
pub struct FilesKeys {
    keys: Vec<(u32, FilesKey)>,
}

impl FilesKeys {
    /// `keys` newest first (as `KeyRing::files_keys` gives them); not empty.
    pub fn new(keys: Vec<(u32, FilesKey)>) -> Self {
        assert!(!keys.is_empty(), "a key ring has at least one epoch");
        FilesKeys { keys }
    }

    /// One key as epoch 0 (tests, and callers that never rotate).
    pub fn single(key: FilesKey) -> Self {
        FilesKeys { keys: vec![(0, key)] }
    }

    pub fn newest(&self) -> (u32, &FilesKey) {
        (self.keys[0].0, &self.keys[0].1)
    }

    pub fn at(&self, epoch: u32) -> Option<&FilesKey> {
        self.keys.iter().find(|(e, _)| *e == epoch).map(|(_, k)| k)
    }
}

/// The Boss's key for files at rest (derived from its master secret). No
/// `Debug`; wiped on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct FilesKey([u8; 32]);

impl FilesKey {
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        FilesKey(*bytes)
    }

    /// The STREAM for one file, keyed by its salt and an HKDF `info` label
    /// naming it (`spyctl/v1/file/<AgentId>/<FileId>` for an upload; each
    /// kind of file has its own, so one can never pass for another).
    pub(crate) fn stream_labelled(&self, salt: &[u8], info: &str) -> StreamBE32<Aes256Gcm> {
        let mut okm = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::new(Some(salt), &self.0)
            .expand(info.as_bytes(), okm.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        let key: &aes_gcm::Key<Aes256Gcm> = (&*okm).into();
        StreamBE32::new(key, &Default::default())
    }
}
