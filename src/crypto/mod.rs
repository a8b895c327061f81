//! Cryptography: Fernet tokens, the master key and its HKDF subkeys, blind
//! indexes, Argon2id password hashes, and X25519/Ed25519 identities. Knows nothing of the CLI, the
//! database or the network; every primitive comes from a RustCrypto crate.

pub mod blind_index;
pub mod fernet;
pub mod files_key;
pub mod identity;
pub mod keys;
pub mod minisign;
pub mod noise;
pub mod password;
pub mod row_mac;

pub use blind_index::BlindIndexKey;
pub use fernet::{FernetKey, TokenError};
pub use files_key::{FilesKey, FilesKeys};
pub use identity::{IdentityKeys, PublicIdentity};
pub use keys::{BadMasterKey, KeyRing, MasterKey, MasterKeys, MissingEpoch};
pub use row_mac::RowMacKey;
