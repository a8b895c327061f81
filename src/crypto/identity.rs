//! Long-term identities (issue 13): an X25519 key for key agreement and an
//! Ed25519 key for signatures, generated on the machine that uses them and
//! independent of the master secret.
//!
//! The Boss has one (its home's `identity.key`, made at `db init` or on first
//! use); each agent makes its own in its own home (`spyctl join`). Private
//! keys never leave the file they were written to: only public keys cross the
//! wire (PROTOCOL.md, "Enrolment").
//!
//! - **Fingerprints** people read aloud: SHA-256 over
//!   `"spyctl/v2/fingerprint\n" || X25519 public || Ed25519 public`, the first
//!   10 bytes in RFC 4648 base32 (16 letters and digits), in four groups of
//!   four: `ABCD-EFGH-IJKL-MNOP` (80 bits, like a short OpenSSH fingerprint).
//! - **Channel key** of an enrolled agent: `HKDF-SHA256(ikm = X25519(agent,
//!   Boss), salt = Boss X25519 public || agent X25519 public, info =
//!   "spyctl/v2/channel/<AgentId>", L = 32)`: a Fernet key only the two holders
//!   of the private keys can compute; `master.key` alone does not give it.
//! - **Message statements** (RFC 8032 Ed25519, see [`statement`]).

use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use super::fernet::FernetKey;

/// First line of an identity file; the format may change with it.
const FILE_TAG: &str = "spyctl-identity-v1";
/// Prefix of the channel key's HKDF label; the AgentId follows in decimal.
pub const CHANNEL_LABEL_PREFIX: &str = "spyctl/v2/channel/";
/// Domain separation for fingerprints.
const FINGERPRINT_LABEL: &[u8] = b"spyctl/v2/fingerprint\n";

/// The public half of an identity: what is sent, stored and pinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicIdentity {
    pub x25519: [u8; 32],
    pub ed25519: [u8; 32],
}

/// A private identity. No `Debug`, no `Clone`; both keys are wiped on drop
/// (the dalek types zeroize themselves with their `zeroize` feature).
pub struct IdentityKeys {
    x25519: x25519_dalek::StaticSecret,
    ed25519: ed25519_dalek::SigningKey,
    /// Computed once: the Boss names its own key in every statement and
    /// receipt it checks or signs, and an X25519 base-point multiplication
    /// per message is measurable (BENCHMARKS.md, identities).
    public: PublicIdentity,
}

/// An identity file that does not hold an identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadIdentity;

impl std::fmt::Display for BadIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "an identity file is `{FILE_TAG} <64 hex digits> <64 hex digits>`")
    }
}

impl std::error::Error for BadIdentity {}

/// A public key that is not a valid Ed25519 point, or a signature that does
/// not verify: one answer for both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadSignature;

impl std::fmt::Display for BadSignature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the signature does not verify")
    }
}

impl std::error::Error for BadSignature {}

impl IdentityKeys {
    /// Two fresh keys from the operating system's RNG.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut x = Zeroizing::new([0u8; 32]);
        let mut e = Zeroizing::new([0u8; 32]);
        getrandom::fill(x.as_mut())?;
        getrandom::fill(e.as_mut())?;
        Ok(Self::from_secrets(&x, &e))
    }

    fn from_secrets(x25519: &[u8; 32], ed25519: &[u8; 32]) -> Self {
        let x25519 = x25519_dalek::StaticSecret::from(*x25519);
        let ed25519 = ed25519_dalek::SigningKey::from_bytes(ed25519);
        let public = PublicIdentity {
            x25519: x25519_dalek::PublicKey::from(&x25519).to_bytes(),
            ed25519: ed25519.verifying_key().to_bytes(),
        };
        IdentityKeys { x25519, ed25519, public }
    }

    /// The file form: `spyctl-identity-v1 <x25519 secret hex> <ed25519 secret hex>\n`. Wiped on drop.
    pub fn to_file_text(&self) -> Zeroizing<String> {
        let x = Zeroizing::new(self.x25519.to_bytes());
        let e = Zeroizing::new(self.ed25519.to_bytes());
        Zeroizing::new(format!("{FILE_TAG} {} {}\n", hex::encode(x.as_ref()), hex::encode(e.as_ref())))
    }

    pub fn from_file_text(text: &str) -> Result<Self, BadIdentity> {
        let mut parts = text.split_whitespace();
        if parts.next() != Some(FILE_TAG) {
            return Err(BadIdentity);
        }
        let mut x = Zeroizing::new([0u8; 32]);
        let mut e = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(parts.next().ok_or(BadIdentity)?, x.as_mut()).map_err(|_| BadIdentity)?;
        hex::decode_to_slice(parts.next().ok_or(BadIdentity)?, e.as_mut()).map_err(|_| BadIdentity)?;
        if parts.next().is_some() {
            return Err(BadIdentity);
        }
        Ok(Self::from_secrets(&x, &e))
    }

    pub fn public(&self) -> PublicIdentity {
        self.public
    }

    /// The X25519 agreement with `their` key, or None if it is not
    /// contributory (a low-order point: the result would be known to all).
    pub fn agree(&self, their_x25519: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>> {
        let shared = self.x25519.diffie_hellman(&x25519_dalek::PublicKey::from(*their_x25519));
        shared.was_contributory().then(|| Zeroizing::new(shared.to_bytes()))
    }

    /// The X25519 secret, for the Noise handshake (protocol v2), which needs
    /// it as bytes. Wiped when dropped.
    pub(crate) fn x25519_secret(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.x25519.to_bytes())
    }

    /// The key an agent's home seals received orders under (`orders`):
    /// `HKDF-SHA256(ikm = X25519 secret, info = "spyctl/v2/orders-at-rest")`,
    /// so the file means nothing without identity.key.
    pub fn orders_key(&self) -> FernetKey {
        FernetKey::from_bytes(&self.orders_key_bytes())
    }

    fn orders_key_bytes(&self) -> Zeroizing<[u8; 32]> {
        let secret = self.x25519_secret();
        let mut okm = Zeroizing::new([0u8; 32]);
        hkdf::Hkdf::<sha2::Sha256>::new(None, secret.as_ref())
            .expand(b"spyctl/v2/orders-at-rest", okm.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        okm
    }

    /// The key an agent's home seals the files its orders carry under
    /// (`received/`): `HKDF-SHA256(ikm = the orders key, info =
    /// "spyctl/v2/received-files-at-rest")`, the files-at-rest key of a
    /// STREAM per file (`received_files`).
    pub fn received_files_key(&self) -> super::FilesKey {
        let orders = self.orders_key_bytes();
        let mut okm = Zeroizing::new([0u8; 32]);
        hkdf::Hkdf::<sha2::Sha256>::new(None, orders.as_ref())
            .expand(b"spyctl/v2/received-files-at-rest", okm.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        super::FilesKey::from_bytes(&okm)
    }

    /// A plain Ed25519 (RFC 8032) signature over `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        use ed25519_dalek::ed25519::signature::Signer;
        self.ed25519.sign(message).to_bytes()
    }

    /// The channel key between this identity (on `side`) and `peer`, for agent `agent_id`.
    pub fn channel_key(&self, side: Side, peer: &PublicIdentity, agent_id: i64) -> Option<FernetKey> {
        let shared = self.agree(&peer.x25519)?;
        let mine = self.public();
        let (boss, agent) = match side {
            Side::Boss => (mine.x25519, peer.x25519),
            Side::Agent => (peer.x25519, mine.x25519),
        };
        Some(channel_key_from(&shared, &boss, &agent, agent_id))
    }
}

/// Which end of a channel an identity is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Boss,
    Agent,
}

/// `HKDF-SHA256(ikm = shared, salt = boss_x25519 || agent_x25519, info = "spyctl/v2/channel/<AgentId>")`.
pub fn channel_key_from(
    shared: &[u8; 32],
    boss_x25519: &[u8; 32],
    agent_x25519: &[u8; 32],
    agent_id: i64,
) -> FernetKey {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(boss_x25519);
    salt[32..].copy_from_slice(agent_x25519);
    let hkdf = Hkdf::<Sha256>::new(Some(&salt), shared);
    let mut okm = Zeroizing::new([0u8; 32]);
    hkdf.expand(format!("{CHANNEL_LABEL_PREFIX}{agent_id}").as_bytes(), okm.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    FernetKey::from_bytes(&okm)
}

impl PublicIdentity {
    /// The short fingerprint, `ABCD-EFGH-IJKL-MNOP`.
    pub fn fingerprint(&self) -> String {
        let mut hash = Sha256::new();
        hash.update(FINGERPRINT_LABEL);
        hash.update(self.x25519);
        hash.update(self.ed25519);
        let digest = hash.finalize();
        let text = base32(&digest[..10]);
        text.as_bytes().chunks(4).map(|c| std::str::from_utf8(c).unwrap_or_default()).collect::<Vec<_>>().join("-")
    }

    /// Checks an Ed25519 signature by this identity (strict verification:
    /// no small-order keys, canonical signatures only).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), BadSignature> {
        verify_ed25519(&self.ed25519, message, signature)
    }

    /// Whether the Ed25519 half is a usable public key.
    pub fn is_valid(&self) -> bool {
        ed25519_dalek::VerifyingKey::from_bytes(&self.ed25519).is_ok_and(|k| !k.is_weak())
    }
}

/// Checks an Ed25519 signature by the key `ed25519` (strict verification:
/// no small-order keys, canonical signatures only).
pub fn verify_ed25519(ed25519: &[u8; 32], message: &[u8], signature: &[u8]) -> Result<(), BadSignature> {
    Verifier::new(ed25519)?.verify(message, signature)
}

/// An Ed25519 public key decoded once, for checking many signatures by it.
/// Decoding is a point decompression (a field exponentiation); a key that
/// signs every message (an agent's, at the Boss; the Boss's, at a sender
/// checking receipts) is decoded when it is loaded, not per signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verifier(ed25519_dalek::VerifyingKey);

impl Verifier {
    /// Decodes `ed25519`; a key that is not a curve point fails here.
    pub fn new(ed25519: &[u8; 32]) -> Result<Self, BadSignature> {
        ed25519_dalek::VerifyingKey::from_bytes(ed25519).map(Verifier).map_err(|_| BadSignature)
    }

    /// Checks a signature strictly (as [`verify_ed25519`]).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), BadSignature> {
        let signature: [u8; 64] = signature.try_into().map_err(|_| BadSignature)?;
        self.0.verify_strict(message, &ed25519_dalek::Signature::from_bytes(&signature)).map_err(|_| BadSignature)
    }
}

/// RFC 4648 base32 (upper case, no padding) of `bytes`.
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
        buffer &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    buffer.zeroize();
    out
}

/// The canonical statement an enrolled agent signs for one message
/// (PROTOCOL.md, "Signed messages"): seven `\n`-terminated lines.
///
/// ```text
/// spyctl/v2/message
/// boss <Boss Ed25519 public key, 64 lowercase hex>
/// agent <AgentId>
/// id <message id>
/// kind <text|file>
/// sha256 <SHA-256 of the body, 64 lowercase hex>
/// time <unix seconds>
/// ```
pub fn statement(boss_ed25519: &[u8; 32], agent_id: i64, id: &str, kind: &str, body: &[u8], time: u64) -> Vec<u8> {
    statement_for_sha256(boss_ed25519, agent_id, id, kind, &hex::encode(Sha256::digest(body)), time)
}

/// [`statement`] for a body known by its SHA-256 (64 lowercase hex digits):
/// a file's statement names the whole file's hash, which the last chunk
/// carries, so neither side needs the file in memory to sign or verify.
pub fn statement_for_sha256(
    boss_ed25519: &[u8; 32],
    agent_id: i64,
    id: &str,
    kind: &str,
    sha256_hex: &str,
    time: u64,
) -> Vec<u8> {
    format!(
        "spyctl/v2/message\nboss {}\nagent {agent_id}\nid {id}\nkind {kind}\nsha256 {sha256_hex}\ntime {time}\n",
        hex::encode(boss_ed25519),
    )
    .into_bytes()
}

/// The canonical receipt the Boss signs in each ACK to an enrolled agent
/// (PROTOCOL.md, "Signed receipts"): seven `\n`-terminated lines naming the
/// Boss's key, the agent, the message id, the SHA-256 of the body the
/// answered `MSG` carried, how it was filed and when.
pub fn receipt(
    boss_ed25519: &[u8; 32],
    agent_id: i64,
    id: &str,
    body_sha256_hex: &str,
    status: &str,
    time: u64,
) -> Vec<u8> {
    format!(
        "spyctl/v2/receipt\nboss {}\nagent {agent_id}\nid {id}\nsha256 {body_sha256_hex}\nstatus {status}\ntime {time}\n",
        hex::encode(boss_ed25519),
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_matches_rfc4648_vectors() {
        // RFC 4648 section 10.
        for (input, output) in
            [("", ""), ("f", "MY"), ("fo", "MZXQ"), ("foo", "MZXW6"), ("foob", "MZXW6YQ"), ("fooba", "MZXW6YTB")]
        {
            assert_eq!(base32(input.as_bytes()), output);
        }
    }

    #[test]
    fn file_round_trip_and_fingerprint_shape() {
        let keys = IdentityKeys::generate().expect("rng");
        let again = IdentityKeys::from_file_text(&keys.to_file_text()).expect("parses");
        assert_eq!(keys.public(), again.public());
        let fp = keys.public().fingerprint();
        assert_eq!(fp.len(), 19, "{fp}");
        assert_eq!(fp.matches('-').count(), 3);
        assert!(IdentityKeys::from_file_text("spyctl-identity-v1 00").is_err());
        assert!(IdentityKeys::from_file_text(&format!("other {} {}", "00".repeat(32), "00".repeat(32))).is_err());
    }

    #[test]
    fn both_sides_derive_the_same_channel_key_and_nobody_else_does() {
        let boss = IdentityKeys::generate().expect("rng");
        let agent = IdentityKeys::generate().expect("rng");
        let stranger = IdentityKeys::generate().expect("rng");
        let a = agent.channel_key(Side::Agent, &boss.public(), 6).expect("agree");
        let b = boss.channel_key(Side::Boss, &agent.public(), 6).expect("agree");
        assert_eq!(a.to_base64().as_str(), b.to_base64().as_str());
        let other = stranger.channel_key(Side::Agent, &boss.public(), 6).expect("agree");
        assert_ne!(a.to_base64().as_str(), other.to_base64().as_str());
        let other_id = agent.channel_key(Side::Agent, &boss.public(), 7).expect("agree");
        assert_ne!(a.to_base64().as_str(), other_id.to_base64().as_str());
        // A low-order peer key gives no channel.
        let low = PublicIdentity { x25519: [0u8; 32], ed25519: boss.public().ed25519 };
        assert!(agent.channel_key(Side::Agent, &low, 6).is_none());
    }

    #[test]
    fn signatures_verify_only_for_their_key_and_statement() {
        let agent = IdentityKeys::generate().expect("rng");
        let other = IdentityKeys::generate().expect("rng");
        let st = statement(&[1u8; 32], 6, "m1", "text", b"hello", 1_700_000_000);
        let sig = agent.sign(&st);
        agent.public().verify(&st, &sig).expect("verifies");
        assert!(other.public().verify(&st, &sig).is_err());
        let changed = statement(&[1u8; 32], 6, "m1", "text", b"hellp", 1_700_000_000);
        assert!(agent.public().verify(&changed, &sig).is_err());
        assert!(agent.public().verify(&st, &sig[..63]).is_err());
    }
}
