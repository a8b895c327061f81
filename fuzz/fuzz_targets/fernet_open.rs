//! Fernet token opening on arbitrary input, two ways:
//! 1. the bytes as a token: never panics, never opens (there is no MAC to forge);
//! 2. the bytes as the signed part of a token given a *valid* MAC, which gets
//!    past the MAC check to the timestamp checks, CBC decryption and PKCS#7
//!    unpadding of arbitrary ciphertext: never panics, and a token that opens
//!    reseals (same timestamp and IV) to exactly itself.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE;
use hmac::{Hmac, KeyInit, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;
use spyctl::crypto::FernetKey;

const KEY: [u8; 32] = [0x42; 32];
const NOW: u64 = 1_800_000_000;
/// Version, timestamp, IV.
const HEADER: usize = 1 + 8 + 16;

fuzz_target!(|data: &[u8]| {
    let key = FernetKey::from_bytes(&KEY);
    assert!(key.open_at(data, Some(60), NOW).is_err(), "arbitrary bytes opened as a token");

    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&KEY[..16]).expect("any key length");
    mac.update(data);
    let mut raw = data.to_vec();
    raw.extend_from_slice(&mac.finalize().into_bytes());
    let token = URL_SAFE.encode(&raw);
    if let Ok(opened) = key.open_at(token.as_bytes(), Some(60), NOW) {
        assert!(data.len() >= HEADER + 16 && data[0] == 0x80 && (data.len() - HEADER) % 16 == 0);
        assert!(opened.plaintext.len() < data.len() - HEADER);
        assert!(opened.timestamp + 60 >= NOW && opened.timestamp <= NOW + 60);
        let iv: [u8; 16] = data[9..HEADER].try_into().expect("16 bytes");
        assert_eq!(key.seal_with(&opened.plaintext, opened.timestamp, iv), token);
    }
});
