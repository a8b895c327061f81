//! Signed receipts (issue 13): each ACK to an enrolled agent carries the
//! Boss's Ed25519 signature over a canonical receipt; `send` checks it
//! against the Boss key pinned at `join` and `send --json` prints it. A
//! stand-in Boss on 127.0.0.1 port 0 that holds the channel key but answers
//! without a valid receipt is refused.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

use sha2::{Digest, Sha256};
use spyctl::crypto::fernet::unix_now;
use spyctl::crypto::identity::{Side, receipt, verify_ed25519};
use spyctl::crypto::{FernetKey, IdentityKeys};
use spyctl::net::protocol::{self, AckStatus};

use crate::identities::{AGENT, boss_home, enroll, join, json, one_line};
use crate::support::*;

fn identity_of(home: &TestHome) -> IdentityKeys {
    IdentityKeys::from_file_text(&std::fs::read_to_string(home.path().join("identity.key")).expect("identity.key"))
        .expect("identity")
}

#[test]
fn a_joined_agents_send_json_prints_a_receipt_signed_by_the_pinned_boss_key() {
    let (home, boss) = boss_home();
    let agent = TestHome::new();
    ok(join(&agent, &enroll(&home, AGENT), &boss.addr));
    let sent = json(agent.run(&["--json", "send", "--addr", &boss.addr, "Package delivered"]));
    let statement = sent["receipt"]["statement"].as_str().expect("receipt statement").to_string();
    let signature = hex::decode(sent["receipt"]["signature"].as_str().expect("signature")).expect("hex");
    let boss_ed = identity_of(&home).public().ed25519;
    verify_ed25519(&boss_ed, statement.as_bytes(), &signature).expect("signed by the Boss's key");
    let id = json(home.run(&["--json", "boss", "inbox"]))[0]["id"].as_str().expect("id").to_string();
    let lines: Vec<&str> = statement.lines().collect();
    assert_eq!(
        lines[..6],
        [
            "spyctl/v2/receipt".to_string(),
            format!("boss {}", hex::encode(boss_ed)),
            format!("agent {AGENT}"),
            format!("id {id}"),
            format!("sha256 {}", hex::encode(Sha256::digest(b"Package delivered"))),
            "status stored".to_string(),
        ]
    );
    assert!(lines[6].starts_with("time "), "{statement}");
    // A file's chunks get receipts too; the v1 channel gets none.
    let path = agent.path().join("f.bin");
    std::fs::write(&path, random_bytes(70_000, 3)).expect("write");
    let sent = json(agent.run(&["--json", "send", "--addr", &boss.addr, "--file", path.to_str().expect("utf-8")]));
    assert!(sent["receipt"]["statement"].as_str().is_some_and(|s| s.starts_with("spyctl/v2/receipt\n")), "{sent}");
    let v1 = json(home.run(&["--json", "send", "--addr", &boss.addr, "over v1"]));
    assert!(v1.get("receipt").is_none(), "{v1}");
    boss.stop_clean();
}

/// How the stand-in Boss answers a `MSG`.
#[derive(Clone, Copy)]
enum Answer {
    Unsigned,
    SignedByAnotherKey,
    SignedForAnotherStatus,
}

/// A stand-in Boss with the real Boss's public keys (so `WHOIS` matches the
/// pin) and its channel key, answering each `MSG` as `answer` says.
fn stand_in(boss_keys: IdentityKeys, agent_public: spyctl::crypto::PublicIdentity, answer: Answer) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        let channel: FernetKey = boss_keys.channel_key(Side::Boss, &agent_public, AGENT).expect("channel");
        let me = boss_keys.public();
        let other = IdentityKeys::generate().expect("rng");
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let mut writer = stream.try_clone().expect("clone");
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                let reply = if line == "WHOIS" {
                    format!("BOSS {} {}\n", hex::encode(me.x25519), hex::encode(me.ed25519))
                } else {
                    let request = protocol::parse_request(line.as_bytes()).expect("MSG");
                    let opened = channel.open(request.token, None).expect("opens");
                    let (header, body) = protocol::decode_message(&opened.plaintext).expect("message");
                    let time = unix_now();
                    let sha = hex::encode(Sha256::digest(body));
                    let plaintext = match answer {
                        Answer::Unsigned => protocol::encode_ack(&header.id, AckStatus::Stored, "ok"),
                        Answer::SignedByAnotherKey => {
                            let st = receipt(&me.ed25519, AGENT, &header.id, &sha, "stored", time);
                            let sig = other.sign(&st);
                            protocol::encode_signed_ack(&header.id, AckStatus::Stored, "ok", Some((time, &sig)))
                        }
                        Answer::SignedForAnotherStatus => {
                            let st = receipt(&me.ed25519, AGENT, &header.id, &sha, "duplicate", time);
                            let sig = boss_keys.sign(&st);
                            protocol::encode_signed_ack(&header.id, AckStatus::Stored, "ok", Some((time, &sig)))
                        }
                    };
                    protocol::format_ack(&channel.seal(&plaintext))
                };
                if writer.write_all(reply.as_bytes()).is_err() {
                    break;
                }
            }
        }
    });
    addr
}

#[test]
fn send_refuses_an_ack_without_a_receipt_signed_by_the_pinned_boss_key() {
    let (home, boss) = boss_home();
    let agent = TestHome::new();
    ok(join(&agent, &enroll(&home, AGENT), &boss.addr));
    boss.stop_clean();
    let agent_public = identity_of(&agent).public();
    for (what, answer) in [
        ("unsigned", Answer::Unsigned),
        ("signed by another key", Answer::SignedByAnotherKey),
        ("signed for another status", Answer::SignedForAnotherStatus),
    ] {
        let addr = stand_in(identity_of(&home), agent_public, answer);
        let err = one_line(agent.run(&["send", "--addr", &addr, "hello"]));
        assert!(err.contains("receipt"), "{what}: {err}");
    }
}

/// `boss bench` from a joined home measures what it sends: every message
/// signed, every receipt checked (BENCHMARKS.md compares it with v1).
#[test]
fn boss_bench_from_a_joined_home_signs_every_message_and_checks_every_receipt() {
    let (home, boss) = boss_home();
    let agent = TestHome::new();
    ok(join(&agent, &enroll(&home, AGENT), &boss.addr));
    let report = json(agent.run(&["--json", "boss", "bench", "-c", "2", "-n", "20", "--pipeline", "4"]));
    assert_eq!((report["stored"].as_u64(), report["signed"].as_bool()), (Some(20), Some(true)), "{report}");
    let inbox = json(home.run(&["--json", "boss", "inbox", "--all"]));
    let fp = json(agent.run(&["--json", "whoami"]))["fingerprint"].as_str().expect("fp").to_string();
    let all = inbox.as_array().expect("inbox");
    assert_eq!(all.len(), 20);
    assert!(all.iter().all(|e| e["signature"] == format!("verified {fp}").as_str()), "{inbox}");
    boss.stop_clean();
}
