//! `boss inbox` at scale: newest first, `--limit`, `--since`, `--oldest-first`,
//! `show ID` for a whole long message, `--json` exact, and memory that does
//! not grow with the inbox (entries are streamed, one in memory at a time).
//! Messages are inserted straight into the database, sealed with the wire
//! key the Boss derives, as the Boss would have stored them.

use std::io::Read;
use std::process::Stdio;

use rusqlite::{Connection, OpenFlags, params};
use serde_json::Value;
use spyctl::crypto::{KeyRing, MasterKey};
use spyctl::net::protocol::{self, Header, Kind};

use crate::support::{DIRECTOR, TestHome, fails, ok};

fn keyring(home: &TestHome) -> KeyRing {
    let text = std::fs::read_to_string(home.path().join("master.key")).expect("master.key");
    let conn = Connection::open_with_flags(home.db_path(), OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open db");
    MasterKey::from_hex(&text).expect("master key").bind(&spyctl::db::database_id(&conn).expect("database id"))
}

/// Stores `texts` from agent 1 as (message id, received at, text).
fn store(home: &TestHome, texts: &[(&str, i64, &str)]) {
    let key = keyring(home).agent_wire_key(1);
    let mut conn = Connection::open(home.db_path()).expect("open db");
    let tx = conn.transaction().expect("transaction");
    for (id, at, text) in texts {
        let header = Header { id: id.to_string(), kind: Kind::Text };
        let token = key.seal(&protocol::encode_message(&header, text.as_bytes()));
        tx.execute(
            "INSERT INTO Messages (AgentId, MessageId, ReceivedAt, Token) VALUES (1, ?1, ?2, ?3)",
            params![id, at, token],
        )
        .expect("insert");
    }
    tx.commit().expect("commit");
}

fn json_ids(home: &TestHome, args: &[&str]) -> Vec<String> {
    let mut all = vec!["--json", "boss", "inbox"];
    all.extend_from_slice(args);
    let out: Value = serde_json::from_str(&ok(home.run(&all))).expect("inbox --json");
    out.as_array().expect("array").iter().map(|e| e["id"].as_str().expect("id").to_string()).collect()
}

#[test]
fn the_inbox_is_newest_first_paged_and_shows_a_long_message_whole() {
    let home = TestHome::initialised();
    let long = format!("Begin.{}End of the long report.", " filler".repeat(2000));
    store(
        &home,
        &[("m1", 1_000, "first"), ("m2", 2_000, "second\nline two"), ("m3", 3_000, &long), ("m4", 4_000, "fourth")],
    );
    home.login(DIRECTOR);

    assert_eq!(json_ids(&home, &[]), ["m4", "m3", "m2", "m1"], "newest first");
    assert_eq!(json_ids(&home, &["--limit", "2"]), ["m4", "m3"]);
    assert_eq!(json_ids(&home, &["--oldest-first", "--limit", "3"]), ["m1", "m2", "m3"]);
    assert_eq!(json_ids(&home, &["--since", "1970-01-01 00:33:20"]), ["m4", "m3", "m2"], "2000 s and later");
    assert_eq!(json_ids(&home, &["--since", "1d"]), Vec::<String>::new(), "nothing from the last day");
    // --json is exact: the long message whole, newlines kept.
    let out: Value = serde_json::from_str(&ok(home.run(&["--json", "boss", "inbox", "--all"]))).expect("json");
    assert_eq!(out[1]["content"], long.as_str());
    assert_eq!(out[2]["content"], "second\nline two");

    // The table shortens the long one and says how to see it whole.
    let table = ok(home.run(&["boss", "inbox"]));
    assert!(!table.contains("End of the long report"), "{table}");
    assert!(table.contains("4 item(s).") && table.contains("boss inbox show ID"), "{table}");
    assert!(table.contains("m3"), "the table shows ids: {table}");
    let whole = ok(home.run(&["boss", "inbox", "show", "m3"]));
    assert!(whole.contains("Begin.") && whole.contains("End of the long report."), "{whole}");
    let two_lines = ok(home.run(&["boss", "inbox", "show", "m2"]));
    assert!(two_lines.contains("second\nline two\n"), "{two_lines}");
    let shown: Value = serde_json::from_str(&ok(home.run(&["--json", "boss", "inbox", "show", "m3"]))).expect("json");
    assert_eq!(shown[0]["content"], long.as_str());

    // Bad input: one clear line, a non-zero exit.
    let err = fails(home.run(&["boss", "inbox", "show", "nope"]), 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no message or file with id nope") && err.contains("Id column"), "{err}");
    let err = fails(home.run(&["boss", "inbox", "--since", "last tuesday"]), 2);
    assert!(err.contains("--since") && err.contains("30m"), "{err}");
    fails(home.run(&["boss", "inbox", "--limit", "0"]), 2);
}

/// Peak resident memory (VmHWM) of a running process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    line.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()).expect("VmHWM kB") * 1024
}

/// `--json boss inbox --all` over 48 messages of 700 kB (33 MB of text):
/// when its first byte of output arrives, the process has never held as
/// much as the text itself. (Reading everything first, as the inbox did,
/// peaks at several times the text before it writes a byte.) The long-run
/// figures, at 200 and 2,000 messages, are in BENCHMARKS.md.
#[test]
fn the_inbox_streams_with_memory_below_the_size_of_the_messages() {
    let count = crate::support::env_count("INBOX_SCALE_MESSAGES", 48);
    let size = 700_000;
    let home = TestHome::initialised();
    let body = "The eagle has landed. ".repeat(size / 22 + 1)[..size].to_string();
    let ids: Vec<String> = (0..count).map(|i| format!("big{i}")).collect();
    let texts: Vec<(&str, i64, &str)> = ids.iter().enumerate().map(|(i, id)| (id.as_str(), i as i64, &*body)).collect();
    store(&home, &texts);
    home.login(DIRECTOR);

    let mut child =
        home.cmd(&["--json", "boss", "inbox", "--all"]).stdout(Stdio::piped()).spawn().expect("spawn inbox");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).expect("first byte");
    let peak = peak_rss(child.id());
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).expect("the rest");
    assert!(child.wait().expect("wait").success());
    let entries: Value = serde_json::from_slice(&[&first[..], &rest].concat()).expect("json");
    assert_eq!(entries.as_array().expect("array").len(), count);
    let text_bytes = (count * size) as u64;
    println!("FIGURE inbox: {count} messages of {size} bytes, peak RSS {} MiB at the first output byte", peak >> 20);
    assert!(peak < text_bytes, "peak RSS {} MiB for {} MiB of messages", peak >> 20, text_bytes >> 20);
}
