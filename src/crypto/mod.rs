//! Cryptography: Fernet tokens, the master key and its HKDF subkeys, blind
//! indexes and Argon2id password hashes. Knows nothing of the CLI, the
//! database or the network; every primitive comes from a RustCrypto crate.

pub mod blind_index;
pub mod fernet;
pub mod keys;
pub mod password;
pub mod row_mac;

pub use blind_index::BlindIndexKey;
pub use fernet::{FernetKey, TokenError};
pub use keys::{BadMasterKey, KeyRing, MasterKey};
pub use row_mac::RowMacKey;
