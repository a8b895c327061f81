//! Files over protocol v2 (issue 14, part 5 over Noise): a Boss home and a
//! separate joined agent home, real `boss serve` and `send --protocol v2
//! --file` processes on loopback. A file arrives whole and signed, and
//! `boss inbox get` gives back its bytes; a sender killed mid-upload resumes
//! from the committed offset with at most the chunks in flight (480 KiB) sent again, and a
//! session cut mid-upload is resumed in process on a new one; a chunk
//! larger than a v2 chunk may be is refused, authenticated, and the session
//! goes on.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use spyctl::crypto::IdentityKeys;
use spyctl::net::client::MessageSigner;
use spyctl::net::protocol::{self, ErrorCode, FileChunk, Header, Kind};
use spyctl::net::v2::FILE_CHUNK_BYTES;
use spyctl::net::v2_client::{V2Client, V2Error};
use spyctl::net::v2_upload::FILE_WINDOW;

use crate::identities::enrolled;
use crate::resume_files::{
    AGENT, AtLimit, journal_entries, kill9, last_queued_end, local_file, partial_bytes, recorded, the_one_file_is,
    wait_for_partial,
};
use crate::support::*;

fn identity_of(home: &TestHome) -> IdentityKeys {
    IdentityKeys::from_file_text(&std::fs::read_to_string(home.path().join("identity.key")).expect("identity.key"))
        .expect("identity")
}

/// `send --protocol v2 --file` to the end, and its JSON.
fn send_v2(agent: &TestHome, file: &std::path::Path, addr: &str) -> Value {
    let out =
        ok(agent.run(&["--json", "send", "--protocol", "v2", "--file", file.to_str().expect("utf-8"), "--addr", addr]));
    serde_json::from_str(&out).expect("send --json")
}

#[test]
fn a_file_sent_over_v2_arrives_whole_signed_and_inbox_get_returns_its_bytes() {
    let (home, boss, agent) = enrolled();
    // Not a whole number of v2 chunks: the last one is short.
    let (file, data) = local_file(&agent, 3 * FILE_CHUNK_BYTES + 12_345, 21);
    let sent = send_v2(&agent, &file, &boss.addr);
    assert_eq!(sent["status"], "stored", "{sent}");
    assert_eq!(sent["protocol"], "v2", "{sent}");
    assert_eq!(sent["resumed_from"], 0, "{sent}");
    assert_eq!(sent["bytes_sent"], data.len() as u64, "{sent}");
    assert_eq!(sent["interruptions"], 0, "{sent}");
    assert!(sent["reply"].as_str().is_some_and(|r| r.contains("SHA-256 verified")), "{sent}");
    // The last chunk's receipt, checked by the sender against the pinned key.
    assert!(sent["receipt"]["statement"].as_str().is_some_and(|s| s.contains("status stored")), "{sent}");
    the_one_file_is(&home, &data);
    assert_eq!(journal_entries(&agent), 0, "the journal forgets a finished upload");

    let fp = ok(agent.run(&["--json", "whoami"]));
    let fp = serde_json::from_str::<Value>(&fp).expect("whoami")["fingerprint"].as_str().expect("fp").to_string();
    let inbox: Value = serde_json::from_str(&ok(home.run(&["--json", "boss", "inbox", "--all"]))).expect("inbox");
    let entry = &inbox.as_array().expect("inbox")[0];
    assert_eq!(entry["kind"], "file", "{inbox}");
    assert_eq!(entry["signature"], format!("verified {fp}"), "{inbox}");
    let out = home.path().join("got.bin");
    let said = ok(home.run(&[
        "boss",
        "inbox",
        "get",
        entry["id"].as_str().expect("id"),
        "--out",
        out.to_str().expect("utf-8"),
    ]));
    assert!(said.contains("verified"), "{said}");
    assert!(std::fs::read(&out).expect("exported") == data, "inbox get returns other bytes");

    // The longest name a file may have, of the character JSON doubles: its
    // last chunk's header (with both signatures) still fits beside a full
    // v2 chunk in one frame.
    let name = format!("{}.bin", "\"".repeat(protocol::MAX_FILE_NAME_BYTES - 4));
    let odd = agent.path().join(&name);
    let odd_data = random_bytes(2 * FILE_CHUNK_BYTES, 22);
    std::fs::write(&odd, &odd_data).expect("write");
    let sent = send_v2(&agent, &odd, &boss.addr);
    assert_eq!(sent["status"], "stored", "{sent}");
    let (_, size, sha256) = recorded(&home).into_iter().find(|f| f.1 == odd_data.len() as i64).expect("recorded");
    assert_eq!((size as usize, sha256), (odd_data.len(), hex::encode(Sha256::digest(&odd_data))));
    assert!(boss.panics().is_empty());
    boss.stop_clean();
}

#[test]
fn a_v2_sender_killed_mid_upload_resumes_from_the_committed_offset() {
    let (home, boss, agent) = enrolled();
    let (file, data) = local_file(&agent, 16 << 20, 23);
    let log = agent.path().join("send-v2.log");
    let before = partial_bytes(&home);
    // About 5 MiB of file in 60 KiB frames, then the proxy carries no more:
    // the kill lands mid-upload however slow the machine.
    let paused = crate::resume_files::proxy(&boss.addr, 7_000_000, AtLimit::Pause);
    let mut sender = agent
        .cmd(&["--json", "send", "--protocol", "v2", "--file", file.to_str().expect("utf-8"), "--addr", &paused])
        .env("RUST_LOG", "spyctl::net::client=debug")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn send");
    assert!(wait_for_partial(&home, &mut sender, before, 4 << 20), "the upload ended before the kill");
    kill9(&mut sender);
    let sent_before = last_queued_end(&log);
    assert!(sent_before > 0, "the log names the chunks queued");
    assert_eq!(journal_entries(&agent), 1, "the journal names the unfinished upload");

    let resumed = send_v2(&agent, &file, &boss.addr);
    assert_eq!(resumed["status"], "stored", "{resumed}");
    assert_eq!(resumed["protocol"], "v2", "{resumed}");
    let from = resumed["resumed_from"].as_u64().expect("resumed_from");
    let resent = sent_before.saturating_sub(from);
    eprintln!("v2 sender killed: {sent_before} bytes queued, resumed from {from}, re-sent {resent}");
    assert!(from >= 4 << 20, "resumed from {from}: the Boss held at least 4 MiB at the kill");
    assert_eq!(resumed["bytes_sent"].as_u64(), Some(data.len() as u64 - from), "only what the Boss lacked is sent");
    // At most the chunks in flight: 8 of 60 KiB, less than one v1 chunk.
    assert!((FILE_WINDOW * FILE_CHUNK_BYTES) as u64 <= protocol::CHUNK_BYTES as u64);
    assert!(
        resent <= (FILE_WINDOW * FILE_CHUNK_BYTES) as u64,
        "{resent} bytes re-sent, more than the chunks in flight"
    );
    the_one_file_is(&home, &data);
    assert_eq!(journal_entries(&agent), 0);
    boss.stop_clean();
}

#[test]
fn a_network_cut_mid_v2_upload_is_resumed_in_process_from_the_committed_offset() {
    let (home, boss, agent) = enrolled();
    let (file, data) = local_file(&agent, 8 << 20, 27);
    // The session dies after about 3.3 MB of frames (a 60 KiB chunk is
    // about 82 KB of base64 line): in the middle of a chunk.
    let proxy = crate::resume_files::proxy(&boss.addr, 3_300_000, AtLimit::Cut);
    let sent = send_v2(&agent, &file, &proxy);
    assert_eq!(sent["status"], "stored", "{sent}");
    assert_eq!(sent["resumed_from"], 0, "{sent}");
    assert!(sent["interruptions"].as_u64().is_some_and(|n| n >= 1), "{sent}");
    let bytes_sent = sent["bytes_sent"].as_u64().expect("bytes_sent");
    eprintln!("v2 network cut: {bytes_sent} chunk bytes sent for a {} byte file", data.len());
    assert!(
        bytes_sent <= (data.len() + FILE_WINDOW * FILE_CHUNK_BYTES) as u64,
        "{bytes_sent} bytes sent: more than the file and the chunks in flight the cut lost"
    );
    assert!(bytes_sent > data.len() as u64, "the chunk cut in the middle was sent again");
    the_one_file_is(&home, &data);
    boss.stop_clean();
}

#[test]
fn a_chunk_larger_than_a_v2_chunk_is_refused_authenticated_and_the_session_goes_on() {
    let (home, boss, agent) = enrolled();
    let me = identity_of(&agent);
    let boss_key = identity_of(&home).public();
    let mut session = V2Client::connect(&boss.addr, Duration::from_secs(5), &me, &boss_key, AGENT).expect("handshake");
    let signer = MessageSigner::new(&me, boss_key.ed25519, AGENT);
    let chunk = |file_id: &str, body: &[u8], last: bool| {
        let header = Header {
            id: spyctl::net::ids::random_id(),
            kind: Kind::FileChunk(FileChunk {
                file_id: file_id.into(),
                name: "big.bin".into(),
                offset: 0,
                size: body.len() as u64,
                sha256: last.then(|| hex::encode(Sha256::digest(body))),
            }),
        };
        signer.encode(&header, body)
    };

    // One byte over the v2 chunk size: still one frame, refused by the Boss
    // with an authenticated too_long, and nothing of it is kept.
    let over = random_bytes(FILE_CHUNK_BYTES + 1, 24);
    match session.send(&chunk("over-by-one", &over, true)) {
        Err(V2Error::Refused { code: ErrorCode::TooLong, text }) => assert!(text.contains("61440"), "{text}"),
        other => panic!("expected too_long, got {other:?}"),
    }
    assert_eq!(partial_bytes(&home), 0, "nothing of the refused chunk is stored");

    // More than a Noise message holds: the client refuses before sending.
    let huge = random_bytes(protocol::CHUNK_BYTES, 25);
    assert!(matches!(
        session.send(&chunk("huge", &huge, true)),
        Err(V2Error::Refused { code: ErrorCode::TooLong, .. })
    ));

    // The same session still carries a whole (one-chunk) file.
    let fits = random_bytes(FILE_CHUNK_BYTES, 26);
    let (ack, reply) = session.send(&chunk("fits", &fits, true)).expect("a full v2 chunk is accepted");
    assert_eq!(ack.status, protocol::AckStatus::Stored, "{reply}");
    assert!(reply.contains("SHA-256 verified"), "{reply}");
    let files = recorded(&home);
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0].0, "fits");
    assert!(boss.panics().is_empty());
    boss.stop_clean();
}
