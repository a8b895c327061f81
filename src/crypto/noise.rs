//! Protocol v2's handshake: `Noise_IK_25519_AESGCM_SHA256` through the `snow`
//! crate, which runs the Noise state machine (handshake patterns, symmetric
//! state, transport cipher states). This module only hands `snow` its
//! primitives from the RustCrypto generation the rest of spyctl uses
//! (x25519-dalek 3 for DH, aes-gcm 0.11 for the cipher, sha2 0.11 for the
//! hash, the OS RNG through getrandom), so the tree holds one copy of each.
//! Nothing here is a new construction: each trait method is a direct call of
//! the named primitive with the encoding the Noise spec (revision 34, section
//! 12) fixes, e.g. AESGCM's nonce is 32 zero bits then the counter in
//! big-endian.

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{AeadInOut, KeyInit};
use sha2::{Digest, Sha256};
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::CryptoResolver;
use snow::types::{Cipher, Dh, Hash, Random};
use zeroize::Zeroizing;

/// The protocol name: IK (the agent knows the Boss's static key, pinned at
/// enrolment), X25519, AES-256-GCM, SHA-256.
pub const PATTERN: &str = "Noise_IK_25519_AESGCM_SHA256";
/// Bound into the handshake hash: a handshake for anything else fails.
pub const PROLOGUE: &[u8] = b"spyctl/v2";
/// The largest Noise message (the spec's limit).
pub const MAX_MESSAGE: usize = 65_535;
/// AES-GCM's tag.
pub const TAG: usize = 16;

/// Builds `snow` handshake states with spyctl's primitives.
pub fn builder() -> snow::Builder<'static> {
    let params = PATTERN.parse().expect("a valid Noise protocol name");
    snow::Builder::with_resolver(params, Box::new(Resolver))
}

/// The agent's side of a v2 handshake: its identity's X25519 key as the
/// static key, and the Boss's pinned key as the responder's (IK).
pub fn initiator(me: &super::IdentityKeys, boss_x25519: &[u8; 32]) -> Result<snow::HandshakeState, snow::Error> {
    let secret = me.x25519_secret();
    builder().local_private_key(secret.as_ref())?.remote_public_key(boss_x25519)?.prologue(PROLOGUE)?.build_initiator()
}

/// The Boss's side of a v2 handshake, with its identity's X25519 key.
pub fn responder(me: &super::IdentityKeys) -> Result<snow::HandshakeState, snow::Error> {
    let secret = me.x25519_secret();
    builder().local_private_key(secret.as_ref())?.prologue(PROLOGUE)?.build_responder()
}

/// Gives `snow` spyctl's primitives; anything else resolves to none.
struct Resolver;

impl CryptoResolver for Resolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(OsRandom))
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        matches!(choice, DHChoice::Curve25519).then(|| Box::new(X25519::default()) as Box<dyn Dh>)
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        matches!(choice, HashChoice::SHA256).then(|| Box::new(Sha256Hash(Sha256::new())) as Box<dyn Hash>)
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        matches!(choice, CipherChoice::AESGCM).then(|| Box::new(AesGcm(None)) as Box<dyn Cipher>)
    }
}

struct OsRandom;

impl Random for OsRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        getrandom::fill(dest).map_err(|_| snow::Error::Rng)
    }
}

/// An X25519 key pair (the private scalar is clamped by x25519-dalek).
#[derive(Default)]
struct X25519 {
    private: Zeroizing<[u8; 32]>,
    public: [u8; 32],
}

impl X25519 {
    fn secret(&self) -> x25519_dalek::StaticSecret {
        x25519_dalek::StaticSecret::from(*self.private)
    }
}

impl Dh for X25519 {
    fn name(&self) -> &'static str {
        "25519"
    }

    fn pub_len(&self) -> usize {
        32
    }

    fn priv_len(&self) -> usize {
        32
    }

    fn set(&mut self, privkey: &[u8]) {
        self.private.copy_from_slice(&privkey[..32]);
        self.public = x25519_dalek::PublicKey::from(&self.secret()).to_bytes();
    }

    fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
        let mut fresh = Zeroizing::new([0u8; 32]);
        rng.try_fill_bytes(fresh.as_mut())?;
        self.set(fresh.as_ref());
        Ok(())
    }

    fn pubkey(&self) -> &[u8] {
        &self.public
    }

    fn privkey(&self) -> &[u8] {
        self.private.as_ref()
    }

    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        // `snow` hands over its key buffer, which may be longer than 32 bytes.
        let public: [u8; 32] = pubkey.get(..32).and_then(|k| k.try_into().ok()).ok_or(snow::Error::Dh)?;
        let shared = self.secret().diffie_hellman(&x25519_dalek::PublicKey::from(public));
        // An all-zero result means a low-order point: refuse it (the spec
        // allows either; refusing costs nothing and closes a class of tricks).
        if !shared.was_contributory() {
            return Err(snow::Error::Dh);
        }
        out[..32].copy_from_slice(shared.as_bytes());
        Ok(())
    }
}

struct Sha256Hash(Sha256);

impl Hash for Sha256Hash {
    fn name(&self) -> &'static str {
        "SHA256"
    }

    fn block_len(&self) -> usize {
        64
    }

    fn hash_len(&self) -> usize {
        32
    }

    fn reset(&mut self) {
        self.0 = Sha256::new();
    }

    fn input(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    fn result(&mut self, out: &mut [u8]) {
        let digest = std::mem::take(&mut self.0).finalize();
        out[..32].copy_from_slice(&digest);
    }
}

/// AES-256-GCM with the Noise nonce encoding.
struct AesGcm(Option<Aes256Gcm>);

impl AesGcm {
    fn nonce(counter: u64) -> aes_gcm::aead::Nonce<Aes256Gcm> {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&counter.to_be_bytes());
        nonce.into()
    }
}

impl Cipher for AesGcm {
    fn name(&self) -> &'static str {
        "AESGCM"
    }

    fn set(&mut self, key: &[u8; 32]) {
        let key: &aes_gcm::Key<Aes256Gcm> = key.into();
        self.0 = Some(Aes256Gcm::new(key));
    }

    fn encrypt(&self, nonce: u64, authtext: &[u8], plaintext: &[u8], out: &mut [u8]) -> usize {
        let cipher = self.0.as_ref().expect("snow sets the key before it encrypts");
        let len = plaintext.len();
        out[..len].copy_from_slice(plaintext);
        let tag = cipher
            .encrypt_inout_detached(&Self::nonce(nonce), authtext, (&mut out[..len]).into())
            .expect("a Noise message is far below AES-GCM's length limit");
        out[len..len + TAG].copy_from_slice(&tag);
        len + TAG
    }

    fn decrypt(&self, nonce: u64, authtext: &[u8], ciphertext: &[u8], out: &mut [u8]) -> Result<usize, snow::Error> {
        let cipher = self.0.as_ref().ok_or(snow::Error::Decrypt)?;
        let len = ciphertext.len().checked_sub(TAG).ok_or(snow::Error::Decrypt)?;
        let tag: [u8; TAG] = ciphertext[len..].try_into().map_err(|_| snow::Error::Decrypt)?;
        out[..len].copy_from_slice(&ciphertext[..len]);
        cipher.decrypt_inout_detached(&Self::nonce(nonce), authtext, (&mut out[..len]).into(), &tag.into()).map_err(
            |_| {
                out[..len].fill(0);
                snow::Error::Decrypt
            },
        )?;
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keypair() -> (Zeroizing<[u8; 32]>, [u8; 32]) {
        let mut private = Zeroizing::new([0u8; 32]);
        getrandom::fill(private.as_mut()).expect("rng");
        let public = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(*private)).to_bytes();
        (private, public)
    }

    #[test]
    fn an_ik_handshake_gives_both_sides_working_transport_keys() {
        let (boss_private, boss_public) = keypair();
        let (agent_private, agent_public) = keypair();
        let mut initiator = builder()
            .local_private_key(agent_private.as_ref())
            .and_then(|b| b.remote_public_key(&boss_public))
            .and_then(|b| b.prologue(PROLOGUE))
            .and_then(|b| b.build_initiator())
            .expect("initiator");
        let mut responder = builder()
            .local_private_key(boss_private.as_ref())
            .and_then(|b| b.prologue(PROLOGUE))
            .and_then(|b| b.build_responder())
            .expect("responder");
        let (mut buf, mut payload) = (vec![0u8; MAX_MESSAGE], vec![0u8; MAX_MESSAGE]);
        let n = initiator.write_message(b"hello", &mut buf).expect("msg 1");
        let m = responder.read_message(&buf[..n], &mut payload).expect("read 1");
        assert_eq!(&payload[..m], b"hello");
        assert_eq!(responder.get_remote_static(), Some(&agent_public[..]), "the Boss learns the agent's key");
        let n = responder.write_message(b"welcome", &mut buf).expect("msg 2");
        let m = initiator.read_message(&buf[..n], &mut payload).expect("read 2");
        assert_eq!(&payload[..m], b"welcome");
        let mut agent = initiator.into_transport_mode().expect("transport");
        let mut boss = responder.into_transport_mode().expect("transport");
        let n = agent.write_message(b"order received", &mut buf).expect("seal");
        assert_eq!(n, 14 + TAG);
        let m = boss.read_message(&buf[..n], &mut payload).expect("open");
        assert_eq!(&payload[..m], b"order received");
        buf[0] ^= 1;
        let n2 = agent.write_message(b"x", &mut buf).expect("seal");
        buf[0] ^= 1;
        assert!(boss.read_message(&buf[..n2], &mut payload).is_err(), "a flipped bit fails");
    }

    #[test]
    fn a_responder_with_another_static_key_cannot_read_the_first_message() {
        let (_, boss_public) = keypair();
        let (impostor_private, _) = keypair();
        let (agent_private, _) = keypair();
        let mut initiator = builder()
            .local_private_key(agent_private.as_ref())
            .and_then(|b| b.remote_public_key(&boss_public))
            .and_then(|b| b.prologue(PROLOGUE))
            .and_then(|b| b.build_initiator())
            .expect("initiator");
        let mut impostor = builder()
            .local_private_key(impostor_private.as_ref())
            .and_then(|b| b.prologue(PROLOGUE))
            .and_then(|b| b.build_responder())
            .expect("responder");
        let (mut buf, mut payload) = (vec![0u8; MAX_MESSAGE], vec![0u8; MAX_MESSAGE]);
        let n = initiator.write_message(b"", &mut buf).expect("msg 1");
        assert!(impostor.read_message(&buf[..n], &mut payload).is_err());
    }
}
