//! The Fernet spec's test vectors (`tests/vectors/fernet`), one named test per
//! invalid case, plus property tests: random round trips, every single-bit flip
//! refused, and hostile tokens (garbage, edits, truncations, extensions) always
//! refused with the one opaque error.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE;
use proptest::prelude::*;
use serde_json::Value;
use spyctl::crypto::{FernetKey, TokenError};

fn load(name: &str) -> Vec<Value> {
    let path = format!("{}/tests/vectors/fernet/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str::<Value>(&text)
        .expect("vector file is JSON")
        .as_array()
        .expect("vector file is a list")
        .clone()
}

/// Parses the vectors' RFC 3339 times (`1985-10-26T01:20:00-07:00`) to Unix seconds.
fn rfc3339(text: &str) -> u64 {
    let (date, rest) = text.split_once('T').expect("T");
    let mut d = date.split('-').map(|p| p.parse::<i64>().expect("date"));
    let (y, m, day) = (d.next().unwrap(), d.next().unwrap(), d.next().unwrap());
    let (clock, sign, offset) = match rest.rfind(['+', '-']) {
        Some(i) => (&rest[..i], if &rest[i..=i] == "-" { -1 } else { 1 }, &rest[i + 1..]),
        None => (rest.trim_end_matches('Z'), 1, "00:00"),
    };
    let mut c = clock.split(':').map(|p| p.parse::<i64>().expect("time"));
    let (hh, mm, ss) = (c.next().unwrap(), c.next().unwrap(), c.next().unwrap());
    let mut o = offset.split(':').map(|p| p.parse::<i64>().expect("offset"));
    let offset_secs = sign * (o.next().unwrap() * 3600 + o.next().unwrap() * 60);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    (days * 86400 + hh * 3600 + mm * 60 + ss - offset_secs) as u64
}

#[test]
fn rfc3339_parser_matches_known_instant() {
    // 1985-10-26T08:20:00Z is 499162800.
    assert_eq!(rfc3339("1985-10-26T01:20:00-07:00"), 499_162_800);
}

fn key(case: &Value) -> FernetKey {
    FernetKey::from_base64(case["secret"].as_str().expect("secret")).expect("vector key")
}

#[test]
fn generate_vectors() {
    let cases = load("generate.json");
    assert!(!cases.is_empty());
    for case in cases {
        let iv: Vec<u8> = case["iv"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u8).collect();
        let token = key(&case).seal_with(
            case["src"].as_str().unwrap().as_bytes(),
            rfc3339(case["now"].as_str().unwrap()),
            iv.try_into().expect("16-byte iv"),
        );
        assert_eq!(token, case["token"].as_str().unwrap());
    }
}

#[test]
fn verify_vectors() {
    let cases = load("verify.json");
    assert!(!cases.is_empty());
    for case in cases {
        let opened = key(&case)
            .open_at(
                case["token"].as_str().unwrap().as_bytes(),
                case["ttl_sec"].as_u64(),
                rfc3339(case["now"].as_str().unwrap()),
            )
            .expect("verify vector opens");
        assert_eq!(opened.plaintext, case["src"].as_str().unwrap().as_bytes());
    }
}

/// Runs the invalid case whose `desc` is `desc`, which must exist.
fn invalid_case(desc: &str) -> TokenError {
    let case = load("invalid.json")
        .into_iter()
        .find(|c| c["desc"] == desc)
        .unwrap_or_else(|| panic!("no invalid vector {desc:?}"));
    key(&case)
        .open_at(
            case["token"].as_str().unwrap().as_bytes(),
            case["ttl_sec"].as_u64(),
            rfc3339(case["now"].as_str().unwrap()),
        )
        .err()
        .unwrap_or_else(|| panic!("invalid vector {desc:?} was accepted"))
}

#[test]
fn invalid_incorrect_mac() {
    assert_eq!(invalid_case("incorrect mac"), TokenError::Invalid);
}

#[test]
fn invalid_too_short() {
    assert_eq!(invalid_case("too short"), TokenError::Invalid);
}

#[test]
fn invalid_base64() {
    assert_eq!(invalid_case("invalid base64"), TokenError::Invalid);
}

#[test]
fn invalid_payload_size_not_block_multiple() {
    assert_eq!(invalid_case("payload size not multiple of block size"), TokenError::Invalid);
}

#[test]
fn invalid_payload_padding() {
    assert_eq!(invalid_case("payload padding error"), TokenError::Invalid);
}

#[test]
fn invalid_far_future_timestamp() {
    assert_eq!(invalid_case("far-future TS (unacceptable clock skew)"), TokenError::Expired);
}

#[test]
fn invalid_expired_ttl() {
    assert_eq!(invalid_case("expired TTL"), TokenError::Expired);
}

#[test]
fn invalid_incorrect_iv() {
    assert_eq!(invalid_case("incorrect IV (causes padding error)"), TokenError::Invalid);
}

#[test]
fn every_invalid_vector_has_a_named_test() {
    let named = [
        "incorrect mac",
        "too short",
        "invalid base64",
        "payload size not multiple of block size",
        "payload padding error",
        "far-future TS (unacceptable clock skew)",
        "expired TTL",
        "incorrect IV (causes padding error)",
    ];
    for case in load("invalid.json") {
        let desc = case["desc"].as_str().unwrap();
        assert!(named.contains(&desc), "invalid vector {desc:?} has no named test");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn seal_open_round_trip(plaintext in proptest::collection::vec(any::<u8>(), 0..=100 * 1024), key_bytes in any::<[u8; 32]>()) {
        let key = FernetKey::from_bytes(&key_bytes);
        let token = key.seal(&plaintext);
        let opened = key.open(token.as_bytes(), Some(60)).expect("own token opens");
        prop_assert_eq!(opened.plaintext, plaintext);
    }

    #[test]
    fn garbage_never_opens(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let key = FernetKey::from_bytes(&[1u8; 32]);
        prop_assert!(key.open(&bytes, None).is_err());
    }
}

/// Every single-bit flip of a token, in its text form and in its decoded bytes,
/// is refused.
#[test]
fn every_bit_flip_is_refused() {
    let key = FernetKey::from_bytes(&[9u8; 32]);
    for plaintext in [&b""[..], b"attack at dawn", &[0x55u8; 40][..]] {
        let token = key.seal(plaintext);
        let text = token.as_bytes().to_vec();
        for i in 0..text.len() * 8 {
            let mut flipped = text.clone();
            flipped[i / 8] ^= 1 << (i % 8);
            assert!(key.open(&flipped, None).is_err(), "text bit {i} flip accepted");
        }
        let raw = URL_SAFE.decode(&text).unwrap();
        for i in 0..raw.len() * 8 {
            let mut flipped = raw.clone();
            flipped[i / 8] ^= 1 << (i % 8);
            let again = URL_SAFE.encode(&flipped);
            assert_eq!(key.open(again.as_bytes(), None).err(), Some(TokenError::Invalid), "byte bit {i} flip accepted");
        }
    }
}

// Hostile tokens: the Fernet fuzz target's properties. `HARDENING_PROPTEST_CASES`
// raises the count for long runs (`scripts/hardening-long.sh`).
proptest! {
    #![proptest_config(ProptestConfig::with_cases(crate::support::env_count("HARDENING_PROPTEST_CASES", 256) as u32))]

    #[test]
    fn fernet_open_never_panics_and_never_accepts_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let key = FernetKey::from_bytes(&[3u8; 32]);
        prop_assert!(key.open(&bytes, None).is_err());
        // The same bytes as a well-formed base64 string of the right shape.
        let mut raw = vec![0x80];
        raw.extend_from_slice(&bytes);
        prop_assert_eq!(key.open(URL_SAFE.encode(&raw).as_bytes(), None).err(), Some(TokenError::Invalid));
    }

    #[test]
    fn fernet_mutated_tokens_are_refused(plain in proptest::collection::vec(any::<u8>(), 0..512),
                                         edits in proptest::collection::vec((any::<usize>(), 1u8..=255), 1..8),
                                         cut in any::<usize>(), extend in proptest::collection::vec(any::<u8>(), 1..40)) {
        let key = FernetKey::from_bytes(&[4u8; 32]);
        let raw = URL_SAFE.decode(key.seal(&plain)).unwrap();
        let mut edited = raw.clone();
        for (pos, x) in &edits {
            let p = pos % edited.len();
            edited[p] ^= x;
        }
        if edited != raw {
            prop_assert_eq!(key.open(URL_SAFE.encode(&edited).as_bytes(), None).err(), Some(TokenError::Invalid));
        }
        let short = &raw[..cut % raw.len()];
        prop_assert_eq!(key.open(URL_SAFE.encode(short).as_bytes(), None).err(), Some(TokenError::Invalid));
        let mut long = raw.clone();
        long.extend_from_slice(&extend);
        prop_assert_eq!(key.open(URL_SAFE.encode(&long).as_bytes(), None).err(), Some(TokenError::Invalid));
    }
}
