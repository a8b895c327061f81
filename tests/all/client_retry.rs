//! `spyctl send` retries with the same message id when an answer is lost: a
//! proxy in front of the real Boss forwards the first request, swallows the
//! Boss's ACK and drops the connection; the retry must be acknowledged as a
//! duplicate and the message stored exactly once.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;

use spyctl::net::protocol::{self, Reply};

use crate::support::{FIELD_AGENT, TestHome, ok};

/// Relays one request line to `boss` and returns the Boss's reply line.
fn relay_line(line: &str, boss: &str) -> String {
    let mut upstream = TcpStream::connect(boss).expect("connect boss");
    upstream.write_all(line.as_bytes()).expect("forward");
    let mut reply = String::new();
    BufReader::new(upstream).read_line(&mut reply).expect("boss reply");
    reply
}

#[test]
fn lost_ack_is_retried_with_the_same_id_and_stored_once() {
    let home = TestHome::initialised();
    home.login(FIELD_AGENT);
    let boss = home.boss(&[]);
    let proxy = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let proxy_addr = proxy.local_addr().expect("addr").to_string();
    let boss_addr = boss.addr.clone();

    let relay = thread::spawn(move || {
        let mut seen = Vec::new();
        // First connection: forward the request, swallow the ACK, hang up.
        let (first, _) = proxy.accept().expect("accept 1");
        let mut line = String::new();
        BufReader::new(first.try_clone().expect("clone")).read_line(&mut line).expect("request 1");
        seen.push(relay_line(&line, &boss_addr));
        drop(first);
        // Second connection (the retry): relay faithfully.
        let (mut second, _) = proxy.accept().expect("accept 2");
        let mut line = String::new();
        BufReader::new(second.try_clone().expect("clone")).read_line(&mut line).expect("request 2");
        let reply = relay_line(&line, &boss_addr);
        second.write_all(reply.as_bytes()).expect("reply to client");
        seen.push(reply);
        seen
    });

    let out = ok(home.run(&["send", "--addr", &proxy_addr, "--attempts", "3", "--json", "Meet at the bridge."]));
    let replies = relay.join().expect("relay");
    let acked = |r: &String| matches!(protocol::parse_reply(r.as_bytes()), Ok(Reply::Ack { .. }));
    assert!(replies.iter().all(acked), "{replies:?}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(json["status"], "duplicate", "the retry must reuse the message id: {json}");
    assert_eq!(json["attempts"], 2);

    let conn = rusqlite::Connection::open(home.db_path()).expect("db");
    let rows: i64 = conn.query_row("SELECT COUNT(*) FROM Messages", [], |r| r.get(0)).expect("count");
    assert_eq!(rows, 1, "stored exactly once");
}
