//! The master secret and every key derived from it.
//!
//! One 32-byte master secret (from the OS RNG, kept hex-encoded in `master.key`)
//! is the root of all keys. Each purpose gets its own subkey through
//! HKDF-SHA256 (RFC 5869) with a distinct `info` label, so a key leaked for one
//! purpose says nothing about another, and with the database's random
//! identifier as the salt, so keys made for one database (sessions, exported
//! wire keys, captured lines) mean nothing to a database created later with the
//! same `master.key`. The labels are part of the wire contract (PROTOCOL.md): an
//! agent's wire key is
//! `HKDF-SHA256(ikm = master, salt = DatabaseId, info = "spyctl/v1/agent/<AgentId>", L = 32)`.
//! A database created before identifiers existed has the empty identifier,
//! which HKDF treats exactly as "no salt", so its keys did not change.
//!
//! **Epochs.** `spyctl key rotate` adds a new master secret (a key epoch);
//! `master.key` then holds one `<epoch> <hex>` line per epoch (the original
//! single-line form is epoch 0). A [`KeyRing`] holds every live epoch of one
//! database: new writes use the newest, reads accept any live one, and each
//! row records the epoch it was written under so rewrap and retire can count.

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::blind_index::BlindIndexKey;
use super::fernet::FernetKey;

/// HKDF `info` labels, one per purpose.
pub mod labels {
    /// Encrypts identifying columns (name, alias) in the database.
    pub const AT_REST: &str = "spyctl/v1/at-rest";
    /// Keys the HMAC that makes searchable blind indexes of names.
    pub const BLIND_INDEX: &str = "spyctl/v1/blind-index";
    /// Seals session files.
    pub const SESSION: &str = "spyctl/v1/session";
    /// Keys the integrity tag of each Agents row.
    pub const ROW_MAC: &str = "spyctl/v1/row-mac";
    /// Argon2id's secret input (the pepper) for password hashes.
    pub const PEPPER: &str = "spyctl/v1/pepper";
    /// The root of each received file's encryption key.
    pub const FILES_AT_REST: &str = "spyctl/v1/files-at-rest";
    /// A short check value per epoch, stored in KeyEpochs (never a key).
    pub const KEY_CHECK: &str = "spyctl/v1/key-check";
    /// Prefix of the per-agent wire key label; the AgentId follows in decimal.
    pub const AGENT_PREFIX: &str = "spyctl/v1/agent/";
}

/// The root secret. No `Debug`, no `Clone`; wiped on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct MasterKey([u8; 32]);

/// Text in `master.key` that is not 64 hex digits (or `<epoch> <hex>` lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadMasterKey;

impl std::fmt::Display for BadMasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "the master key must be 64 hex digits (32 bytes), or one `<epoch> <64 hex digits>` line per key epoch",
        )
    }
}

impl std::error::Error for BadMasterKey {}

impl MasterKey {
    /// 32 fresh bytes from the operating system.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)?;
        let key = MasterKey(bytes);
        bytes.zeroize();
        Ok(key)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        MasterKey(bytes)
    }

    /// The keys of the database whose identifier is `database_id`, with this
    /// secret as its only epoch (0).
    pub fn bind(&self, database_id: &[u8]) -> KeyRing {
        KeyRing { epochs: vec![(0, self.0)], database_id: database_id.to_vec() }
    }

    /// Parses the file form: 64 hex digits, surrounding whitespace ignored.
    pub fn from_hex(text: &str) -> Result<Self, BadMasterKey> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut bytes).map_err(|_| BadMasterKey)?;
        let key = MasterKey(bytes);
        bytes.zeroize();
        Ok(key)
    }

    /// The file form. Wiped when dropped.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.0))
    }
}

/// Every master secret of a home, by epoch (`master.key`). Wiped on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct MasterKeys {
    /// Ascending by epoch, no duplicates.
    epochs: Vec<(u32, [u8; 32])>,
}

/// The epoch a database uses and `master.key` does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MissingEpoch(pub u32);

impl std::fmt::Display for MissingEpoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "master.key does not hold key epoch {}, which the database still uses", self.0)
    }
}

impl std::error::Error for MissingEpoch {}

impl MasterKeys {
    /// Parses `master.key`: either the original single hex line (epoch 0) or
    /// one `<epoch> <hex>` line per epoch.
    pub fn from_text(text: &str) -> Result<Self, BadMasterKey> {
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        if let [only] = lines.as_slice()
            && !only.contains(' ')
        {
            return Ok(MasterKeys { epochs: vec![(0, MasterKey::from_hex(only)?.0)] });
        }
        let mut epochs = Vec::with_capacity(lines.len());
        for line in lines {
            let (epoch, hex_text) = line.split_once(' ').ok_or(BadMasterKey)?;
            let epoch: u32 = epoch.parse().map_err(|_| BadMasterKey)?;
            epochs.push((epoch, MasterKey::from_hex(hex_text)?.0));
        }
        epochs.sort_by_key(|(e, _)| *e);
        if epochs.is_empty() || epochs.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(BadMasterKey);
        }
        Ok(MasterKeys { epochs })
    }

    /// The file form: the single-line form while only epoch 0 exists (so a
    /// home that never rotated keeps the file older versions read), else
    /// one `<epoch> <hex>` line per epoch. Wiped when dropped.
    pub fn to_text(&self) -> Zeroizing<String> {
        if let [(0, key)] = self.epochs.as_slice() {
            return Zeroizing::new(format!("{}\n", hex::encode(key)));
        }
        let mut text = Zeroizing::new(String::new());
        for (epoch, key) in &self.epochs {
            text.push_str(&format!("{epoch} {}\n", hex::encode(key)));
        }
        text
    }

    /// The epochs this file holds, ascending.
    pub fn epochs(&self) -> Vec<u32> {
        self.epochs.iter().map(|(e, _)| *e).collect()
    }

    pub fn newest_epoch(&self) -> u32 {
        self.epochs.last().map_or(0, |(e, _)| *e)
    }

    /// Adds `key` as epoch `epoch` (replacing one the database never
    /// recorded, left by an interrupted rotation).
    pub fn insert(&mut self, epoch: u32, key: MasterKey) {
        self.epochs.retain(|(e, _)| *e != epoch);
        self.epochs.push((epoch, key.0));
        self.epochs.sort_by_key(|(e, _)| *e);
    }

    /// Drops the secret of `epoch` (after `key retire`).
    pub fn remove(&mut self, epoch: u32) {
        if let Some(at) = self.epochs.iter().position(|(e, _)| *e == epoch) {
            self.epochs[at].1.zeroize();
            self.epochs.remove(at);
        }
    }

    /// The keys of the database `database_id` whose live epochs are `live`
    /// (from its KeyEpochs table; `[0]` for a database from before epochs).
    pub fn bind(&self, database_id: &[u8], live: &[u32]) -> Result<KeyRing, MissingEpoch> {
        let mut epochs = Vec::with_capacity(live.len());
        for epoch in live {
            let (_, key) = self.epochs.iter().find(|(e, _)| e == epoch).ok_or(MissingEpoch(*epoch))?;
            epochs.push((*epoch, *key));
        }
        epochs.sort_by_key(|(e, _)| std::cmp::Reverse(*e));
        epochs.dedup_by_key(|(e, _)| *e);
        if epochs.is_empty() {
            return Err(MissingEpoch(0));
        }
        Ok(KeyRing { epochs, database_id: database_id.to_vec() })
    }
}

/// The master secrets bound to one database: the source of every key that
/// database uses, one set per live key epoch. No `Debug`, no `Clone`; wiped
/// on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct KeyRing {
    /// Live epochs, newest first (never empty).
    epochs: Vec<(u32, [u8; 32])>,
    database_id: Vec<u8>,
}

impl KeyRing {
    /// The identifier these keys are bound to (the HKDF salt).
    pub fn database_id(&self) -> &[u8] {
        &self.database_id
    }

    /// The epoch new writes use.
    pub fn newest_epoch(&self) -> u32 {
        self.epochs[0].0
    }

    /// Every live epoch, newest first.
    pub fn epochs(&self) -> impl Iterator<Item = u32> + '_ {
        self.epochs.iter().map(|(e, _)| *e)
    }

    /// A check value for one epoch's secret (stored in KeyEpochs), so a
    /// `master.key` from another home is named as such instead of every
    /// value failing to open. `None` for an epoch this ring does not hold.
    pub fn check_value(&self, epoch: u32) -> Option<String> {
        self.derive_at(epoch, labels::KEY_CHECK).map(|okm| hex::encode(&okm[..8]))
    }

    /// 32 bytes of HKDF-SHA256 output for `label` under the newest epoch.
    pub fn derive(&self, label: &str) -> Zeroizing<[u8; 32]> {
        hkdf_expand(&self.epochs[0].1, &self.database_id, label)
    }

    /// The same under `epoch`, if it is live.
    pub fn derive_at(&self, epoch: u32, label: &str) -> Option<Zeroizing<[u8; 32]>> {
        let (_, master) = self.epochs.iter().find(|(e, _)| *e == epoch)?;
        Some(hkdf_expand(master, &self.database_id, label))
    }

    pub fn at_rest_key(&self) -> FernetKey {
        FernetKey::from_bytes(&self.derive(labels::AT_REST))
    }

    pub fn blind_index_key(&self) -> BlindIndexKey {
        BlindIndexKey::from_bytes(&self.derive(labels::BLIND_INDEX))
    }

    pub fn row_mac_key(&self) -> super::row_mac::RowMacKey {
        super::row_mac::RowMacKey::from_bytes(&self.derive(labels::ROW_MAC))
    }

    /// The keys received files are sealed under at rest, one per live
    /// epoch (new files under the newest).
    pub fn files_keys(&self) -> super::files_key::FilesKeys {
        super::files_key::FilesKeys::new(
            self.each(labels::FILES_AT_REST)
                .map(|(e, okm)| (e, super::files_key::FilesKey::from_bytes(&okm)))
                .collect(),
        )
    }

    /// The session key of every live epoch, newest first.
    pub fn session_keys(&self) -> Vec<FernetKey> {
        self.each(labels::SESSION).map(|(_, okm)| FernetKey::from_bytes(&okm)).collect()
    }

    /// `label`'s key under each live epoch, newest first.
    fn each<'a>(&'a self, label: &'a str) -> impl Iterator<Item = (u32, Zeroizing<[u8; 32]>)> + 'a {
        self.epochs.iter().map(move |(e, master)| (*e, hkdf_expand(master, &self.database_id, label)))
    }

    /// The pepper for password hashes.
    pub fn pepper(&self) -> Zeroizing<[u8; 32]> {
        self.derive(labels::PEPPER)
    }

    pub fn session_key(&self) -> FernetKey {
        FernetKey::from_bytes(&self.derive(labels::SESSION))
    }

    /// Agent `agent_id`'s first wire key (generation 0, before any revocation).
    pub fn agent_wire_key(&self, agent_id: i64) -> FernetKey {
        self.agent_wire_key_at(agent_id, 0)
    }

    /// Opens a token agent `agent_id` sealed under any of its key generations
    /// up to `newest` (stored messages outlive a revocation), in the epoch
    /// `epoch` the row records, newest generation first.
    pub fn open_agent_token(
        &self,
        agent_id: i64,
        newest: u32,
        epoch: u32,
        token: &[u8],
    ) -> Option<super::fernet::Opened> {
        self.open_agent_token_with(agent_id, newest, epoch, token).map(|(opened, _)| opened)
    }

    /// As [`open_agent_token`](Self::open_agent_token), also saying which
    /// generation's key opened it (rewrap reseals under the same generation).
    pub fn open_agent_token_with(
        &self,
        agent_id: i64,
        newest: u32,
        epoch: u32,
        token: &[u8],
    ) -> Option<(super::fernet::Opened, u32)> {
        (0..=newest).rev().find_map(|generation| {
            let key = self.agent_wire_key_in(epoch, agent_id, generation)?;
            key.open(token, None).ok().map(|opened| (opened, generation))
        })
    }

    /// Agent `agent_id`'s wire key at key generation `generation` (bumped by
    /// each `agent revoke`) in the newest epoch: the Boss derives it, the
    /// agent holds only it.
    pub fn agent_wire_key_at(&self, agent_id: i64, generation: u32) -> FernetKey {
        FernetKey::from_bytes(&self.derive(&agent_label_at(agent_id, generation)))
    }

    /// The same key in epoch `epoch`, if it is live.
    pub fn agent_wire_key_in(&self, epoch: u32, agent_id: i64, generation: u32) -> Option<FernetKey> {
        self.derive_at(epoch, &agent_label_at(agent_id, generation)).map(|okm| FernetKey::from_bytes(&okm))
    }

    /// The agent's wire key at `generation` under every live epoch, newest
    /// first: what the Boss tries on an incoming line (an agent may hold a
    /// key exported before the last rotation until that epoch is retired).
    pub fn agent_wire_keys(&self, agent_id: i64, generation: u32) -> Vec<(u32, FernetKey)> {
        let label = agent_label_at(agent_id, generation);
        self.epochs
            .iter()
            .map(|(e, master)| (*e, FernetKey::from_bytes(&hkdf_expand(master, &self.database_id, &label))))
            .collect()
    }
}

/// HKDF-SHA256 (salt = the database id, info = `label`), 32 bytes.
fn hkdf_expand(master: &[u8; 32], database_id: &[u8], label: &str) -> Zeroizing<[u8; 32]> {
    let hkdf = Hkdf::<Sha256>::new(Some(database_id), master);
    let mut okm = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's 255 * 32 limit.
    hkdf.expand(label.as_bytes(), okm.as_mut()).expect("32 bytes is a valid HKDF-SHA256 output length");
    okm
}

/// The HKDF label of one agent's first wire key.
pub fn agent_label(agent_id: i64) -> String {
    agent_label_at(agent_id, 0)
}

/// The HKDF label of one agent's wire key at a key generation: generation 0
/// is `spyctl/v1/agent/<AgentId>` (as before revocation existed), later ones
/// append `/<generation>`.
pub fn agent_label_at(agent_id: i64, generation: u32) -> String {
    match generation {
        0 => format!("{}{agent_id}", labels::AGENT_PREFIX),
        g => format!("{}{agent_id}/{g}", labels::AGENT_PREFIX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_give_distinct_keys() {
        let master = MasterKey::from_bytes([1u8; 32]).bind(b"0123456789abcdef");
        let all = [
            master.derive(labels::AT_REST),
            master.derive(labels::BLIND_INDEX),
            master.derive(labels::SESSION),
            master.derive(labels::ROW_MAC),
            master.derive(labels::PEPPER),
            master.derive(labels::FILES_AT_REST),
            master.derive(&agent_label(1)),
            master.derive(&agent_label(2)),
            master.derive(&agent_label_at(1, 1)),
            master.derive(&agent_label_at(1, 2)),
            master.derive(&agent_label_at(11, 1)),
        ];
        for i in 0..all.len() {
            for j in i + 1..all.len() {
                assert_ne!(*all[i], *all[j], "labels {i} and {j} collide");
            }
        }
    }

    #[test]
    fn derivation_matches_rfc5869_construction() {
        // Pinned output so a change of label or construction is caught: this is
        // the value PROTOCOL.md documents for the all-zero master and agent 1.
        let master = MasterKey::from_bytes([0u8; 32]).bind(&[0x11; 16]);
        let key = master.derive(&agent_label(1));
        let again = MasterKey::from_hex(&"00".repeat(32)).expect("hex").bind(&[0x11; 16]).derive("spyctl/v1/agent/1");
        assert_eq!(*key, *again);
        let manual = {
            let mut okm = [0u8; 32];
            Hkdf::<Sha256>::new(Some(&[0x11; 16]), &[0u8; 32]).expand(b"spyctl/v1/agent/1", &mut okm).expect("len");
            okm
        };
        assert_eq!(*key, manual, "salt = database id, info = label");
    }

    #[test]
    fn another_database_id_gives_other_keys_and_the_empty_id_is_the_old_unsalted_derivation() {
        let master = MasterKey::from_bytes([7u8; 32]);
        let one = master.bind(&[1u8; 16]).agent_wire_key(9).to_base64();
        let two = master.bind(&[2u8; 16]).agent_wire_key(9).to_base64();
        assert_ne!(one.as_str(), two.as_str(), "a recreated database must not honour old keys");
        // Databases from before identifiers keep their keys: HKDF with no salt.
        let mut unsalted = [0u8; 32];
        Hkdf::<Sha256>::new(None, &[7u8; 32]).expand(b"spyctl/v1/agent/9", &mut unsalted).expect("len");
        assert_eq!(*master.bind(&[]).derive(&agent_label(9)), unsalted);
    }

    #[test]
    fn hex_round_trip_and_rejects_bad_text() {
        let master = MasterKey::generate().expect("rng");
        let text = master.to_hex();
        assert_eq!(
            MasterKey::from_hex(&format!("  {}\n", text.as_str())).expect("parses").to_hex().as_str(),
            text.as_str()
        );
        assert!(MasterKey::from_hex("abc").is_err());
        assert!(MasterKey::from_hex(&"zz".repeat(32)).is_err());
    }
}
