//! Fernet tokens: the one authenticated-encryption format spyctl uses everywhere
//! (names at rest, sessions, every message on the wire).
//!
//! Spec: <https://github.com/fernet/spec/blob/master/Spec.md> (vectors in
//! `tests/vectors/fernet`). A token is
//! `base64url(0x80 | timestamp u64 BE | IV 16 | AES-128-CBC(PKCS#7(plaintext)) | HMAC-SHA256 32)`,
//! the HMAC keyed with the first 16 key bytes and covering everything before it,
//! AES keyed with the last 16 (encrypt-then-MAC).
//!
//! Opening checks the MAC in constant time *before* touching the ciphertext, and
//! every failure (bad base64, bad length, bad MAC, bad padding) is the same
//! [`TokenError::Invalid`], so nothing distinguishes one forgery from another.
//! Only a token whose MAC is good can be reported as [`TokenError::Expired`].

use aes::Aes128;
// SIMD base64 (strict: padding and canonical trailing bits required): on a
// 1 MiB token the scalar encoder cost about as much as the HMAC.
use base64_simd::URL_SAFE;
use block_padding::Pkcs7;
use cbc::cipher::array::Array;
use cbc::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

type HmacSha256 = Hmac<Sha256>;
type Aes128CbcEnc = cbc::Encryptor<Aes128>;
type Aes128CbcDec = cbc::Decryptor<Aes128>;

const VERSION: u8 = 0x80;
const HEADER_LEN: usize = 1 + 8 + 16;
const MAC_LEN: usize = 32;
const BLOCK: usize = 16;
/// Bytes encrypted and MACed per step of [`FernetKey::seal_with`]: small
/// enough to stay in L1/L2 cache between the two passes (a multiple of 16).
const PIECE: usize = 16 * 1024;
/// Smallest possible token: header, one padded block, MAC.
const MIN_RAW_LEN: usize = HEADER_LEN + BLOCK + MAC_LEN;

/// How far in the future a token's timestamp may be, in seconds. The spec calls
/// this the clock-skew allowance; Python's `cryptography.fernet` uses 60.
pub const MAX_CLOCK_SKEW_SECS: u64 = 60;

/// IVs taken from one read of the OS random number generator.
const IVS_PER_READ: usize = 32;

std::thread_local! {
    /// OS randomness not yet used as an IV, and how much of it is used.
    static IV_POOL: std::cell::RefCell<(Zeroizing<[u8; IVS_PER_READ * BLOCK]>, usize)> =
        std::cell::RefCell::new((Zeroizing::new([0u8; IVS_PER_READ * BLOCK]), IVS_PER_READ * BLOCK));
}

/// A fresh random IV: 16 bytes of the OS random number generator, read 32 IVs
/// at a time per thread, so a Boss sealing an ACK per message makes one
/// `getrandom` call per 32 messages instead of one each. Each byte is handed
/// out once; a thread's pool is never shared (spyctl never forks without
/// exec'ing at once).
fn fresh_iv() -> [u8; 16] {
    IV_POOL.with(|pool| {
        let (bytes, used) = &mut *pool.borrow_mut();
        if *used == bytes.len() {
            // The OS RNG failing is not something a caller can recover from; a
            // token with a predictable IV would be worse than stopping.
            getrandom::fill(bytes.as_mut()).expect("the operating system's random number generator failed");
            *used = 0;
        }
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&bytes[*used..*used + BLOCK]);
        // Wiped as it is handed out: the pool holds only IVs still to come.
        bytes[*used..*used + BLOCK].zeroize();
        *used += BLOCK;
        iv
    })
}

/// A 32-byte Fernet key: 16 bytes for HMAC-SHA256, 16 for AES-128.
/// No `Debug`, no `Clone`: key bytes are wiped when the value drops.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct FernetKey {
    signing: [u8; 16],
    encryption: [u8; 16],
}

/// Why a token was refused. `Invalid` covers every forgery or corruption alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Not a token made with this key (or damaged): one opaque answer for all cases.
    Invalid,
    /// Authentic, but older than the TTL or too far in the future.
    Expired,
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenError::Invalid => f.write_str("invalid token"),
            TokenError::Expired => f.write_str("token expired"),
        }
    }
}

impl std::error::Error for TokenError {}

/// A key string that is not 32 bytes of URL-safe base64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadKeyEncoding;

impl std::fmt::Display for BadKeyEncoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a Fernet key is 32 bytes in URL-safe base64 (44 characters)")
    }
}

impl std::error::Error for BadKeyEncoding {}

/// A successfully opened token.
pub struct Opened {
    /// Seconds since the Unix epoch, as written by the sender.
    pub timestamp: u64,
    pub plaintext: Vec<u8>,
}

impl FernetKey {
    /// Builds a key from raw bytes (signing half first, as the spec lays it out).
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        let mut signing = [0u8; 16];
        let mut encryption = [0u8; 16];
        signing.copy_from_slice(&bytes[..16]);
        encryption.copy_from_slice(&bytes[16..]);
        FernetKey { signing, encryption }
    }

    /// A fresh random key from the OS.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::fill(bytes.as_mut())?;
        Ok(Self::from_bytes(&bytes))
    }

    /// Parses the usual text form (what Python's `Fernet.generate_key()` prints).
    pub fn from_base64(text: &str) -> Result<Self, BadKeyEncoding> {
        let raw = Zeroizing::new(URL_SAFE.decode_to_vec(text.trim()).map_err(|_| BadKeyEncoding)?);
        let bytes: &[u8; 32] = raw.as_slice().try_into().map_err(|_| BadKeyEncoding)?;
        Ok(Self::from_bytes(bytes))
    }

    /// The text form, for key files. Wiped when dropped.
    pub fn to_base64(&self) -> Zeroizing<String> {
        let mut raw = Zeroizing::new([0u8; 32]);
        raw[..16].copy_from_slice(&self.signing);
        raw[16..].copy_from_slice(&self.encryption);
        Zeroizing::new(URL_SAFE.encode_to_string(raw.as_ref()))
    }

    /// Encrypts `plaintext` now, with a random IV.
    pub fn seal(&self, plaintext: &[u8]) -> String {
        self.seal_dated(plaintext, unix_now())
    }

    /// Encrypts `plaintext` with a fresh IV and the given timestamp (a
    /// rotated token keeps the time it was first made).
    pub fn seal_dated(&self, plaintext: &[u8], timestamp: u64) -> String {
        self.seal_with(plaintext, timestamp, fresh_iv())
    }

    /// What Python's `MultiFernet.rotate` does: opens `token` under any of
    /// `from` (no TTL: a stored token is as old as it is) and seals its
    /// plaintext again under `self`, keeping the original timestamp, with a
    /// fresh IV. Used by `key rotate` to rewrap stored tokens.
    pub fn rotate(&self, token: &[u8], from: &[&FernetKey]) -> Result<String, TokenError> {
        let opened = from.iter().find_map(|key| key.open(token, None).ok()).ok_or(TokenError::Invalid)?;
        let plaintext = Zeroizing::new(opened.plaintext);
        Ok(self.seal_dated(&plaintext, opened.timestamp))
    }

    /// Encrypts with a given timestamp and IV. Only for test vectors and
    /// benchmarks: real callers use [`FernetKey::seal`].
    pub fn seal_with(&self, plaintext: &[u8], timestamp: u64, iv: [u8; 16]) -> String {
        let mut text = String::new();
        self.seal_with_into(plaintext, timestamp, iv, &mut text);
        text
    }

    /// [`FernetKey::seal`], appending the token to `text` (a request line
    /// being built, so a large token is not copied into it afterwards).
    pub fn seal_into(&self, plaintext: &[u8], text: &mut String) {
        self.seal_with_into(plaintext, unix_now(), fresh_iv(), text);
    }

    /// The length of the token (in base64) that seals `plaintext_len` bytes.
    pub fn token_len(plaintext_len: usize) -> usize {
        URL_SAFE.encoded_length(HEADER_LEN + plaintext_len / BLOCK * BLOCK + BLOCK + MAC_LEN)
    }

    fn seal_with_into(&self, plaintext: &[u8], timestamp: u64, iv: [u8; 16], text: &mut String) {
        let whole_blocks = plaintext.len() / BLOCK * BLOCK;
        text.reserve(Self::token_len(plaintext.len()));
        // The raw token never exists whole: each part of it is made in this
        // small buffer (after the 0-2 bytes of the last part that base64 could
        // not take yet), MACed and base64-appended to `text` while it is in
        // cache. The only large buffer written is the text itself.
        // Sized for the largest part this token has (a piece, the header, or
        // the last block with the MAC), so a short token (an ACK, a 64-byte
        // message) does not allocate and zero a whole 16 KiB piece.
        let largest_part = PIECE.min(whole_blocks).max(HEADER_LEN).max(BLOCK + MAC_LEN);
        let mut part = Base64Carry { bytes: vec![0u8; 2 + largest_part], carried: 0 };
        let header = part.fresh(HEADER_LEN);
        header[0] = VERSION;
        header[1..9].copy_from_slice(&timestamp.to_be_bytes());
        header[9..].copy_from_slice(&iv);
        let mut mac = self.mac_state();
        mac.update(header);
        part.encode_whole_groups(text);

        // The CBC and HMAC states carry across pieces, so this is exactly
        // the spec's encrypt-then-MAC over the whole token.
        let mut cbc = Aes128CbcEnc::new(&self.encryption.into(), &iv.into());
        for piece in plaintext[..whole_blocks].chunks(PIECE) {
            let out = part.fresh(piece.len());
            let (in_blocks, _) = Array::slice_as_chunks(piece);
            let (out_blocks, _) = Array::slice_as_chunks_mut(out);
            cbc.encrypt_blocks_b2b(in_blocks, out_blocks).expect("pieces map to equal-length outputs");
            mac.update(out);
            part.encode_whole_groups(text);
        }
        // The final block: the plaintext's tail plus PKCS#7 padding, then the MAC.
        let tail = &plaintext[whole_blocks..];
        let last = part.fresh(BLOCK);
        last[..tail.len()].copy_from_slice(tail);
        let last = cbc
            .encrypt_padded::<Pkcs7>(last, tail.len())
            // `last` is exactly one block, room for any tail of 0..=15 bytes.
            .expect("one block holds the tail and its padding");
        mac.update(last);
        let tag: [u8; MAC_LEN] = mac.finalize().into_bytes().into();
        part.fresh(MAC_LEN).copy_from_slice(&tag);
        part.encode_rest(text);
    }

    /// Opens a token at the current time. `ttl` is the maximum age in seconds.
    pub fn open(&self, token: &[u8], ttl: Option<u64>) -> Result<Opened, TokenError> {
        self.open_at(token, ttl, unix_now())
    }

    /// Opens a token as if the time were `now`.
    ///
    /// Order matters: decode, check the MAC (constant time), and only then look
    /// at the timestamp and decrypt.
    pub fn open_at(&self, token: &[u8], ttl: Option<u64>, now: u64) -> Result<Opened, TokenError> {
        let raw = URL_SAFE.decode_to_vec(token).map_err(|_| TokenError::Invalid)?;
        if raw.len() < MIN_RAW_LEN || raw[0] != VERSION {
            return Err(TokenError::Invalid);
        }
        let (signed, tag) = raw.split_at(raw.len() - MAC_LEN);
        let mut mac = self.mac_state();
        mac.update(signed);
        mac.verify_slice(tag).map_err(|_| TokenError::Invalid)?;

        let timestamp = u64::from_be_bytes(signed[1..9].try_into().map_err(|_| TokenError::Invalid)?);
        if timestamp > now.saturating_add(MAX_CLOCK_SKEW_SECS) {
            return Err(TokenError::Expired);
        }
        if let Some(ttl) = ttl
            && timestamp.saturating_add(ttl) < now
        {
            return Err(TokenError::Expired);
        }

        let iv: [u8; 16] = signed[9..HEADER_LEN].try_into().map_err(|_| TokenError::Invalid)?;
        let ciphertext = &signed[HEADER_LEN..];
        if ciphertext.len() % BLOCK != 0 {
            return Err(TokenError::Invalid);
        }
        let plaintext = Aes128CbcDec::new(&self.encryption.into(), &iv.into())
            .decrypt_padded_vec::<Pkcs7>(ciphertext)
            .map_err(|_| TokenError::Invalid)?;
        Ok(Opened { timestamp, plaintext })
    }

    fn mac_state(&self) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        <HmacSha256 as KeyInit>::new_from_slice(&self.signing).expect("HMAC takes any key length")
    }
}

/// One part of a token being sealed, after the 0-2 bytes of the part before
/// that did not make a whole 3-byte base64 group.
struct Base64Carry {
    bytes: Vec<u8>,
    /// How many bytes at the front are carried over (then fresh ones follow).
    carried: usize,
}

impl Base64Carry {
    /// Room for `len` fresh bytes right after the carried ones.
    fn fresh(&mut self, len: usize) -> &mut [u8] {
        let start = self.carried;
        self.carried += len;
        &mut self.bytes[start..start + len]
    }

    /// Appends the whole 3-byte groups to `text`; carries the rest over.
    fn encode_whole_groups(&mut self, text: &mut String) {
        let ready = self.carried / 3 * 3;
        URL_SAFE.encode_append(&self.bytes[..ready], text);
        self.bytes.copy_within(ready..self.carried, 0);
        self.carried -= ready;
    }

    /// Appends everything, with base64 padding: the token's end.
    fn encode_rest(self, text: &mut String) {
        URL_SAFE.encode_append(&self.bytes[..self.carried], text);
    }
}

/// Seconds since the Unix epoch; a clock before 1970 counts as 0.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> FernetKey {
        FernetKey::from_bytes(&[7u8; 32])
    }

    #[test]
    fn ivs_from_the_pool_are_all_different_across_refills() {
        let ivs: std::collections::HashSet<[u8; 16]> = (0..IVS_PER_READ * 3 + 5).map(|_| fresh_iv()).collect();
        assert_eq!(ivs.len(), IVS_PER_READ * 3 + 5, "no IV handed out twice");
        // Each sealed token carries its own IV (bytes 9..25 of the raw token).
        let iv_of = |token: &str| URL_SAFE.decode_to_vec(token).expect("base64")[9..25].to_vec();
        assert_ne!(iv_of(&key().seal(b"a")), iv_of(&key().seal(b"a")));
    }

    #[test]
    fn round_trip_empty_and_block_sized() {
        for len in [0usize, 1, 15, 16, 17, 32, 1000] {
            let plaintext = vec![0xabu8; len];
            let token = key().seal(&plaintext);
            let opened = key().open(token.as_bytes(), Some(60)).expect("opens");
            assert_eq!(opened.plaintext, plaintext);
        }
    }

    #[test]
    fn wrong_key_is_invalid() {
        let token = key().seal(b"secret");
        let other = FernetKey::from_bytes(&[8u8; 32]);
        assert_eq!(other.open(token.as_bytes(), None).err(), Some(TokenError::Invalid));
    }

    #[test]
    fn expiry_only_for_authentic_tokens() {
        let token = key().seal_with(b"x", 1000, [0u8; 16]);
        assert_eq!(key().open_at(token.as_bytes(), Some(10), 1011).err(), Some(TokenError::Expired));
        assert!(key().open_at(token.as_bytes(), Some(10), 1010).is_ok());
        // Far future beyond the skew allowance.
        assert_eq!(key().open_at(token.as_bytes(), None, 1000 - 61).err(), Some(TokenError::Expired));
        assert!(key().open_at(token.as_bytes(), None, 1000 - 60).is_ok());
        let other = FernetKey::from_bytes(&[9u8; 32]);
        assert_eq!(other.open_at(token.as_bytes(), Some(10), 5000).err(), Some(TokenError::Invalid));
    }

    #[test]
    fn rotate_keeps_the_plaintext_and_the_original_timestamp_under_the_new_key() {
        let old = key();
        let new = FernetKey::from_bytes(&[9u8; 32]);
        let token = old.seal_with(b"stored secret", 1_000_000, [3u8; 16]);
        let rotated = new.rotate(token.as_bytes(), &[&new, &old]).expect("rotates");
        let opened = new.open(rotated.as_bytes(), None).expect("opens under the new key");
        assert_eq!((opened.plaintext.as_slice(), opened.timestamp), (&b"stored secret"[..], 1_000_000));
        assert!(old.open(rotated.as_bytes(), None).is_err(), "no longer under the old key");
        assert_ne!(rotated, new.rotate(token.as_bytes(), &[&old]).expect("again"), "a fresh IV each time");
        assert_eq!(new.rotate(token.as_bytes(), &[&new]).err(), Some(TokenError::Invalid), "under none of `from`");
    }

    /// The one-pass seal against the spec's steps done one after the other
    /// on whole buffers (CBC with padding, HMAC over everything, base64), at
    /// lengths around the piece size and every base64 alignment.
    #[test]
    fn one_pass_seal_equals_the_spec_steps_done_separately() {
        let iv = [0x5au8; 16];
        for len in [0, 15, 16, PIECE - 1, PIECE, PIECE + 1, PIECE + 16, 3 * PIECE - 7, 3 * PIECE + 32, 5 * PIECE + 2] {
            let plaintext: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let key_bytes: [u8; 32] = std::array::from_fn(|i| i as u8 * 3);
            let key = FernetKey::from_bytes(&key_bytes);
            let mut raw = vec![VERSION];
            raw.extend_from_slice(&1_234_567u64.to_be_bytes());
            raw.extend_from_slice(&iv);
            let encryption: [u8; 16] = key_bytes[16..].try_into().expect("16 bytes");
            raw.extend(Aes128CbcEnc::new(&encryption.into(), &iv.into()).encrypt_padded_vec::<Pkcs7>(&plaintext));
            let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&key_bytes[..16]).expect("any key length");
            mac.update(&raw);
            raw.extend_from_slice(&mac.finalize().into_bytes());
            use base64::Engine as _;
            let expected = base64::engine::general_purpose::URL_SAFE.encode(&raw);
            assert_eq!(expected.len(), FernetKey::token_len(len));
            assert_eq!(key.seal_with(&plaintext, 1_234_567, iv), expected, "plaintext of {len} bytes");
        }
    }

    #[test]
    fn key_text_round_trip() {
        let text = key().to_base64();
        let again = FernetKey::from_base64(&text).expect("parses");
        assert_eq!(again.to_base64().as_str(), text.as_str());
        assert!(FernetKey::from_base64("short").is_err());
    }
}
