//! PROTOCOL.md's worked examples (v1 tokens; v2 statement, export and
//! receipt), recomputed with spyctl's own code: if the key derivation, header
//! encoding, token format or a signed statement drifts from the document,
//! this fails.

use spyctl::crypto::{FernetKey, MasterKey};
use spyctl::net::protocol::{self, AckStatus, Header, Kind};

const MASTER_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const DATABASE_ID_HEX: &str = "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";
const AGENT_KEY_HEX: &str = "a4941b0e53c92a7603799294b44dd4133a76c6af7dff1af7fca6dcb07eec198e";
const AGENT_KEY_TEXT: &str = "pJQbDlPJKnYDeZKUtE3UEzp2xq99_xr3_KbcsH7sGY4=";
const MESSAGE_ID: &str = "6f1c2a9e8d7b4c3f9a0e1d2c3b4a5968";
const REQUEST_LINE: &str = "MSG 1 gAAAAABrSdIAAAECAwQFBgcICQoLDA0OD8Jq87hm8Mt7GhKRKN3RWdQEy8TWi5_SUpeDAZpKFkFOMPySl6PWxmdRJzAXfU9atToXKC7oLt2KGIG6FDZRNbdd7AbkhdwH8wdsDq-ceGVwFxgz6cmmZgHlPLJkEZCYjhLiB7239VC3LBMKZBG9cBsfaAlb1Ny31DTrt7-PKj0w";
const ACK_LINE: &str = "ACK gAAAAABrSdIBEBESExQVFhcYGRobHB0eH_5XjDG0LQyf8FbQuJAuBpP87x2ZIWRi-Q4_mm5UpIvdtC0KKoC0yta7I37_U_B7J0X-ny3DU0_vnSd4YQZDEyI9s626mwCzhIRrORQZEMPOAONZxSRMf1n9-8DtKOwtOWIGLY21SgSaqO-vE3KidVeqUmWVPflM6gV1nirMflSh1mqkC6BMwKqvw9MHMlK0WQ==";

fn iv(start: u8) -> [u8; 16] {
    std::array::from_fn(|i| start + i as u8)
}

#[test]
fn worked_example_matches_spyctl() {
    let database_id = hex::decode(DATABASE_ID_HEX).expect("hex");
    let master = MasterKey::from_hex(MASTER_HEX).expect("master").bind(&database_id);
    assert_eq!(hex::encode(*master.derive("spyctl/v1/agent/1")), AGENT_KEY_HEX);
    let key = master.agent_wire_key(1);
    assert_eq!(key.to_base64().as_str(), AGENT_KEY_TEXT);

    let plaintext =
        protocol::encode_message(&Header { id: MESSAGE_ID.into(), kind: Kind::Text }, b"The eagle has landed.");
    let token = key.seal_with(&plaintext, 1_800_000_000, iv(0));
    assert_eq!(protocol::format_request(1, &token), format!("{REQUEST_LINE}\n"));

    let ack = protocol::encode_ack(MESSAGE_ID, AckStatus::Stored, "Message received. Good work, Impossible.");
    assert_eq!(protocol::format_ack(&key.seal_with(&ack, 1_800_000_001, iv(16))), format!("{ACK_LINE}\n"));

    // And the ACK opens back to the documented header.
    let parsed = protocol::parse_reply(ACK_LINE.as_bytes()).expect("reply");
    let protocol::Reply::Ack { token } = parsed else { panic!("not an ACK") };
    let opened =
        FernetKey::from_base64(AGENT_KEY_TEXT).expect("key").open_at(token, Some(300), 1_800_000_002).expect("opens");
    let (header, reply) = protocol::decode_ack(&opened.plaintext).expect("ack");
    assert_eq!((header.id.as_str(), header.status), (MESSAGE_ID, AckStatus::Stored));
    assert_eq!(reply, "Message received. Good work, Impossible.");
}

#[test]
fn protocol_md_shows_the_same_values() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/PROTOCOL.md")).expect("PROTOCOL.md");
    for value in [MASTER_HEX, DATABASE_ID_HEX, AGENT_KEY_HEX, AGENT_KEY_TEXT, REQUEST_LINE, ACK_LINE, MESSAGE_ID] {
        assert!(doc.contains(value), "PROTOCOL.md lacks {value}");
    }
    // Every error code the server can send is documented.
    for code in protocol::ErrorCode::ALL {
        assert!(doc.contains(&format!("`{}`", code.as_str())), "PROTOCOL.md lacks error code {}", code.as_str());
    }
}

/// A document's text with every run of whitespace made one space, so a
/// sentence can be found whatever the line breaks.
fn flat(path: &str) -> String {
    let text = std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).expect(path);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The rules PROTOCOL.md states that the server's behaviour decides; each is
/// also checked against a running Boss (`boss_e2e::*_as_protocol_md_says`) or
/// the code it names. The ACK's age is not limited by spyctl, and neither
/// document may say it is.
#[test]
fn protocol_md_states_what_the_boss_does() {
    let doc = flat("PROTOCOL.md");
    for statement in [
        "A file over the Boss's size limit also gets `too_long`, but as the answer to its first chunk: that connection stays open.",
        "deduplication is permanent",
        "once the file is complete, any of its chunks resent (the first as well as the last) gets `duplicate`",
        "A file chunk missing `file_id`, `name`, `offset` or `size` is `bad_request`.",
        "The name recorded is the one on the last chunk",
        "the file's SHA-256 does not match; send the whole file again",
        "at most 9223372036854775807",
        "spyctl puts no age limit on an ACK",
        "lines answered `ERR` or `duplicate` do not restart it",
    ] {
        assert!(doc.contains(statement), "PROTOCOL.md does not state: {statement}");
    }
    assert_eq!(spyctl::net::protocol::parse_agent_id(b"9223372036854775807"), Some(i64::MAX));
    assert_eq!(spyctl::net::protocol::parse_agent_id(b"9223372036854775808"), None);
    for (name, doc) in [("PROTOCOL.md", &doc), ("SECURITY.md", &flat("SECURITY.md"))] {
        assert!(!doc.contains("ACK older than 300 s"), "{name} claims ACKs older than 300 s are refused");
    }
}

/// Version 2's worked example (PROTOCOL.md, "Worked example: a signed message,
/// its export and its receipt"): fixed identities, so every signature is
/// fixed too (Ed25519 is deterministic). Recomputed here; `exports` checks
/// the same files with stock minisign.
pub(crate) mod v2 {
    use spyctl::crypto::IdentityKeys;
    use spyctl::crypto::identity::{receipt, statement};
    use spyctl::crypto::minisign::{public_key_file, sign_statement, signature_file};

    pub const BOSS_SECRETS: &str = "spyctl-identity-v1 \
        202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f \
        404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f";
    pub const AGENT_SECRETS: &str = "spyctl-identity-v1 \
        606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f \
        808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f";
    pub const AGENT: i64 = 6;
    pub const ID: &str = super::MESSAGE_ID;
    pub const BODY: &[u8] = b"The eagle has landed.";
    pub const SIGNED_AT: u64 = 1_800_000_000;
    pub const RECEIPT_AT: u64 = 1_800_000_001;
    pub const COMMENT: &str = "spyctl agent 6";

    /// Everything the example shows, in the order it shows it.
    pub fn values() -> Vec<(&'static str, String)> {
        let boss = IdentityKeys::from_file_text(BOSS_SECRETS).expect("boss");
        let agent = IdentityKeys::from_file_text(AGENT_SECRETS).expect("agent");
        let boss_ed = boss.public().ed25519;
        let st = statement(&boss_ed, AGENT, ID, "text", BODY, SIGNED_AT);
        let sigs = sign_statement(&agent, &st);
        let body_sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(BODY));
        let rc = receipt(&boss_ed, AGENT, ID, &body_sha, "stored", RECEIPT_AT);
        vec![
            ("boss ed25519", hex::encode(boss_ed)),
            ("agent ed25519", hex::encode(agent.public().ed25519)),
            ("statement", String::from_utf8(st.clone()).expect("ascii")),
            ("sig", hex::encode(sigs.signature)),
            ("tsig", hex::encode(sigs.trusted)),
            ("agent.pub", public_key_file(&agent.public().ed25519, COMMENT)),
            ("statement.minisig", signature_file(&agent.public().ed25519, &st, &sigs, COMMENT)),
            ("receipt", String::from_utf8(rc.clone()).expect("ascii")),
            ("receipt sig", hex::encode(boss.sign(&rc))),
        ]
    }
}

#[test]
fn v2_worked_example_matches_spyctl_and_protocol_md() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/PROTOCOL.md")).expect("PROTOCOL.md");
    for (what, value) in v2::values() {
        assert!(doc.contains(&value), "PROTOCOL.md lacks the example's {what}:\n{value}");
    }
}

/// PROTOCOL.md's "Worked example, version 2: a Noise session": the same
/// keys and message as the signature example above, plus two fixed
/// ephemeral keys (real ones are random; Noise's only randomness is the
/// ephemerals, so fixing them fixes every byte).
pub(crate) mod noise_example {
    use spyctl::crypto::IdentityKeys;
    use spyctl::crypto::identity::{receipt, statement};
    use spyctl::crypto::minisign::sign_statement;
    use spyctl::crypto::noise::{PROLOGUE, builder};
    use spyctl::net::protocol::{self, AckStatus, Header, Kind, MessageSig};
    use spyctl::net::v2::{Frame, Hello, LineKind, Welcome, format_line};

    use super::v2::{AGENT, AGENT_SECRETS, BODY, BOSS_SECRETS, ID, RECEIPT_AT, SIGNED_AT};

    pub const AGENT_EPHEMERAL: &str = "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf";
    pub const BOSS_EPHEMERAL: &str = "c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf";
    pub const HANDSHAKE_AT: u64 = 1_800_000_000;
    pub const REPLY: &str = "Message received. Good work, Black Widow.";

    /// The X25519 secret in an identity file's text (its first key).
    pub fn x25519_secret(identity_file: &str) -> [u8; 32] {
        let hex_text = identity_file.split_whitespace().nth(1).expect("x25519 secret");
        hex::decode(hex_text).expect("hex").try_into().expect("32 bytes")
    }

    /// The four plaintexts, in the order they cross the wire.
    pub fn plaintexts() -> [(&'static str, Vec<u8>); 4] {
        let boss = IdentityKeys::from_file_text(BOSS_SECRETS).expect("boss");
        let agent = IdentityKeys::from_file_text(AGENT_SECRETS).expect("agent");
        let boss_ed = boss.public().ed25519;
        let sigs = sign_statement(&agent, &statement(&boss_ed, AGENT, ID, "text", BODY, SIGNED_AT));
        let sig = MessageSig { time: SIGNED_AT, signature: sigs.signature, trusted: Some(sigs.trusted) };
        let header = Header { id: ID.into(), kind: Kind::Text };
        let body_sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(BODY));
        let receipt_sig = boss.sign(&receipt(&boss_ed, AGENT, ID, &body_sha, "stored", RECEIPT_AT));
        let ack = protocol::encode_signed_ack(ID, AckStatus::Stored, REPLY, Some((RECEIPT_AT, &receipt_sig)));
        [
            ("hello", serde_json::to_vec(&Hello { v: 2, agent: AGENT, time: HANDSHAKE_AT }).expect("json")),
            ("welcome", serde_json::to_vec(&Welcome { time: HANDSHAKE_AT }).expect("json")),
            ("message frame", Frame::Message(protocol::encode_signed_message(&header, BODY, &sig)).encode()),
            ("ack frame", Frame::Ack(ack).encode()),
        ]
    }

    /// The four lines spyctl's Noise (snow with spyctl's primitives) makes.
    pub fn lines() -> Vec<String> {
        let boss = IdentityKeys::from_file_text(BOSS_SECRETS).expect("boss");
        let (agent_e, boss_e) = (hex::decode(AGENT_EPHEMERAL).expect("hex"), hex::decode(BOSS_EPHEMERAL).expect("hex"));
        let (agent_s, boss_s) = (x25519_secret(AGENT_SECRETS), x25519_secret(BOSS_SECRETS));
        let boss_x25519 = boss.public().x25519;
        let mut initiator = builder()
            .local_private_key(&agent_s)
            .and_then(|b| b.remote_public_key(&boss_x25519))
            .and_then(|b| b.prologue(PROLOGUE))
            .expect("initiator keys")
            .fixed_ephemeral_key_for_testing_only(&agent_e)
            .build_initiator()
            .expect("initiator");
        let mut responder = builder()
            .local_private_key(&boss_s)
            .and_then(|b| b.prologue(PROLOGUE))
            .expect("responder keys")
            .fixed_ephemeral_key_for_testing_only(&boss_e)
            .build_responder()
            .expect("responder");
        let [(_, hello), (_, welcome), (_, message), (_, ack)] = plaintexts();
        let (mut wire, mut opened) = (vec![0u8; 65_535], vec![0u8; 65_535]);
        let mut lines = Vec::new();
        let n = initiator.write_message(&hello, &mut wire).expect("message 1");
        let got = responder.read_message(&wire[..n], &mut opened).expect("read 1");
        assert_eq!(&opened[..got], hello.as_slice());
        lines.push(format_line(LineKind::Handshake, &wire[..n]));
        let n = responder.write_message(&welcome, &mut wire).expect("message 2");
        let got = initiator.read_message(&wire[..n], &mut opened).expect("read 2");
        assert_eq!(&opened[..got], welcome.as_slice());
        lines.push(format_line(LineKind::Handshake, &wire[..n]));
        let mut agent_side = initiator.into_transport_mode().expect("transport");
        let mut boss_side = responder.into_transport_mode().expect("transport");
        let n = agent_side.write_message(&message, &mut wire).expect("frame");
        let got = boss_side.read_message(&wire[..n], &mut opened).expect("open");
        assert_eq!(&opened[..got], message.as_slice());
        lines.push(format_line(LineKind::Transport, &wire[..n]));
        let n = boss_side.write_message(&ack, &mut wire).expect("frame");
        let got = agent_side.read_message(&wire[..n], &mut opened).expect("open");
        assert_eq!(&opened[..got], ack.as_slice());
        lines.push(format_line(LineKind::Transport, &wire[..n]));
        lines.into_iter().map(|l| l.trim_end().to_string()).collect()
    }
}

/// The Noise example's four lines: spyctl makes them, PROTOCOL.md shows
/// them, and PyPI `noiseprotocol` (an independent Noise implementation,
/// driven by tests/python/noise_worked_example.py) makes the same bytes from
/// the same keys and plaintexts.
#[test]
fn v2_noise_worked_example_matches_spyctl_python_and_protocol_md() {
    use noise_example::*;
    let lines = lines();
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/PROTOCOL.md")).expect("PROTOCOL.md");
    let flat_doc: String = doc.split_whitespace().collect();
    for (i, line) in lines.iter().enumerate() {
        assert!(flat_doc.contains(&line.replace(' ', "")), "PROTOCOL.md lacks line {}:\n{line}", i + 1);
    }
    for (what, plaintext) in plaintexts() {
        let text = String::from_utf8(plaintext).expect("ascii");
        assert!(doc.contains(&text), "PROTOCOL.md lacks the {what} plaintext:\n{text}");
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/noise_worked_example.py");
    let [hello, welcome, message, ack] = plaintexts().map(|(_, p)| hex::encode(p));
    let out = crate::python_interop::python_command(crate::python_interop::python())
        .args([
            script,
            &hex::encode(x25519_secret(v2::AGENT_SECRETS)),
            &hex::encode(x25519_secret(v2::BOSS_SECRETS)),
            AGENT_EPHEMERAL,
            BOSS_EPHEMERAL,
            &hello,
            &welcome,
            &message,
            &ack,
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run python");
    let printed = crate::support::ok(out);
    assert_eq!(printed.lines().collect::<Vec<_>>(), lines, "noiseprotocol makes other bytes");
}
