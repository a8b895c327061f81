//! `listen` and `chat` over protocol v2 (issue 14, parts 3 and 4), end to
//! end: a Boss home with `boss serve` on loopback, a separate joined agent
//! home, and the real binary in each role with piped stdin and stdout. An
//! order queued while the agent listens reaches it unasked (and a backlog
//! queued before), stored before it is confirmed; chat lines cross both ways
//! between two running processes, are stored sealed, and wait for a side
//! that is away; a forged frame pushed into a live session is refused.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use serde_json::Value;

use crate::identities::enrolled;
use crate::support::*;

const AGENT: i64 = 6;
const WAIT: Duration = Duration::from_secs(20);

fn count(home: &TestHome, sql: &str) -> i64 {
    Connection::open(home.db_path()).expect("open").query_row(sql, [], |r| r.get(0)).expect(sql)
}

/// A running spyctl with its stdin held open and its stdout and stderr read
/// line by line as they come.
struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Receiver<String>,
    err: Receiver<String>,
}

impl Running {
    fn start(home: &TestHome, args: &[&str]) -> Running {
        let mut child = home.spawn_piped(args);
        let stdin = child.stdin.take();
        let lines = |read: Box<dyn std::io::Read + Send>| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(read).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        };
        let out = lines(Box::new(child.stdout.take().expect("stdout")));
        let err = lines(Box::new(child.stderr.take().expect("stderr")));
        Running { child, stdin, out, err }
    }

    /// The next stdout line, waiting at most [`WAIT`].
    #[track_caller]
    fn next_line(&self) -> String {
        self.out.recv_timeout(WAIT).unwrap_or_else(|_| panic!("no output line; stderr: {}", self.stderr_now()))
    }

    /// Waits for a stderr line containing `needle`.
    #[track_caller]
    fn wait_stderr(&self, needle: &str) -> String {
        let start = Instant::now();
        while start.elapsed() < WAIT {
            if let Ok(line) = self.err.recv_timeout(Duration::from_millis(100))
                && line.contains(needle)
            {
                return line;
            }
        }
        panic!("no stderr line with {needle:?}");
    }

    fn stderr_now(&self) -> String {
        self.err.try_iter().collect::<Vec<_>>().join("\n")
    }

    fn type_line(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(format!("{text}\n").as_bytes()).expect("type");
        stdin.flush().expect("flush");
    }

    /// Closes stdin (end of input) and waits for the exit code.
    fn finish(mut self) -> (Option<i32>, String) {
        drop(self.stdin.take());
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return (status.code(), self.stderr_now());
            }
            if start.elapsed() > WAIT {
                let _ = self.child.kill();
                panic!("spyctl did not exit at the end of its input");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Neither the database nor its write-ahead log holds `text`.
#[track_caller]
fn no_plaintext(home: &TestHome, text: &str) {
    for path in [home.db_path(), home.path().join("spyctl.db-wal")] {
        if path.exists() {
            assert!(!file_contains(&path, text.as_bytes()), "{text:?} in {} in plaintext", path.display());
        }
    }
}

#[test]
fn listen_gets_the_backlog_then_an_order_queued_while_it_listens_each_stored_before_confirmed() {
    let (home, boss, agent) = enrolled();
    ok(home.run(&["order", &AGENT.to_string(), "Backlog: check the dead drop"]));
    let listener = Running::start(&agent, &["--json", "listen", "--addr", &boss.addr]);
    let first: Value = serde_json::from_str(&listener.next_line()).expect("json order");
    assert_eq!(first["text"], "Backlog: check the dead drop", "{first}");
    // Queued by another process while the agent listens: pushed unasked.
    ok(home.run(&["order", &AGENT.to_string(), "Live: leave by the east gate"]));
    let second: Value = serde_json::from_str(&listener.next_line()).expect("json order");
    assert_eq!(second["text"], "Live: leave by the east gate", "{second}");
    assert!(second["from"].as_i64().is_some_and(|id| id != AGENT), "from the director: {second}");
    wait_until("both orders confirmed", || {
        count(&home, "SELECT count(*) FROM Orders WHERE DeliveredAt IS NOT NULL") == 2
    });
    // Stored in the agent's home (sealed) before it was confirmed.
    let offline: Value =
        serde_json::from_str(&ok(agent.run(&["--json", "orders", "--offline"]))).expect("offline json");
    assert_eq!(offline["orders"].as_array().map(Vec::len), Some(2), "{offline}");
    assert!(!file_contains(&agent.path().join("orders"), b"east gate"), "the agent's copy is sealed");
    // The Boss going away ends `listen` with one clear line, non-zero.
    boss.stop();
    listener.wait_stderr("the Boss closed the connection");
}

#[test]
fn chat_relays_both_ways_between_two_processes_and_waits_for_a_side_that_is_away() {
    let (home, boss, agent) = enrolled();
    // The director speaks first, while the agent is away: stored, sealed.
    let mut director = Running::start(&home, &["chat", &AGENT.to_string(), "--addr", &boss.addr]);
    director.wait_stderr("Chat with agent 6 open");
    director.type_line("While you were out: the bridge is watched");
    director.wait_stderr("lines are stored and delivered when the agent joins");
    wait_until("the line stored", || count(&home, "SELECT count(*) FROM ChatLines") == 1);
    let mut agent_chat = Running::start(&agent, &["chat", "--addr", &boss.addr]);
    let waiting = agent_chat.next_line();
    assert!(
        waiting.contains("] director ") && waiting.ends_with(": While you were out: the bridge is watched"),
        "{waiting}"
    );
    director.wait_stderr("agent 6 is in the chat");
    // Both ways, each shown on the other side without it typing anything.
    agent_chat.type_line("Copy that, taking the tunnel");
    let heard = director.next_line();
    assert!(heard.ends_with("agent 6: Copy that, taking the tunnel"), "{heard}");
    director.type_line("Good. Burn this channel after");
    let heard = agent_chat.next_line();
    assert!(heard.contains("] director ") && heard.ends_with(": Good. Burn this channel after"), "{heard}");
    // Too long: one clear line, nothing sent, the chat goes on.
    agent_chat.type_line(&"x".repeat(5000));
    agent_chat.wait_stderr("a chat line is at most 4096: not sent");
    agent_chat.type_line("Still here");
    assert!(director.next_line().ends_with("agent 6: Still here"));
    let (code, err) = agent_chat.finish();
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = director.finish();
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(count(&home, "SELECT count(*) FROM ChatLines"), 4);
    assert_eq!(count(&home, "SELECT count(*) FROM ChatLines WHERE DeliveredAt IS NULL"), 0);
    for text in ["bridge is watched", "taking the tunnel", "Burn this channel", "Still here"] {
        no_plaintext(&home, text);
    }
    boss.stop();
}

#[test]
fn chat_refuses_an_unknown_or_unenrolled_agent_and_a_field_agent_in_one_line() {
    let (home, boss, _agent) = enrolled();
    let err = fails(home.run(&["chat", "5", "--addr", &boss.addr]), 1);
    assert!(err.contains("agent 5 has no enrolled identity"), "{err}");
    let err = fails(home.run(&["chat", "99", "--addr", &boss.addr]), 1);
    assert!(err.contains("no agent 99"), "{err}");
    home.login(FIELD_AGENT);
    let err = fails(home.run(&["chat", &AGENT.to_string(), "--addr", &boss.addr]), 1);
    assert!(err.contains("give orders"), "{err}");
    // An agent's home that never joined has no key to chat with.
    let stranger = TestHome::new();
    let err = fails(stranger.run(&["chat", "--addr", &boss.addr]), 1);
    assert!(err.contains("enrolled identity"), "{err}");
    boss.stop();
}

#[test]
fn a_forged_or_injected_frame_in_a_listening_session_is_refused_and_nothing_is_stored() {
    let (home, boss, agent) = enrolled();
    ok(home.run(&["order", &AGENT.to_string(), "Genuine order"]));
    // Line 0 from the Boss is the handshake; line 1 the pushed backlog.
    // Replaced by a frame that is not the Boss's: random bytes, a plain ERR.
    let forged = v2_forged_line();
    for injected in [forged.as_bytes().to_vec(), b"ERR auth your key is revoked".to_vec()] {
        let (addr, _) = crate::protocol_v2::proxy(&boss.addr, Some((1, injected)));
        let out = agent.run(&["listen", "--addr", &addr]);
        let err = fails(out, 1);
        assert!(err.contains("refused an unauthenticated answer"), "{err}");
    }
    assert!(!agent.path().join("orders").exists(), "nothing stored from a forged push");
    assert_eq!(count(&home, "SELECT count(*) FROM Orders WHERE DeliveredAt IS NULL"), 1, "still pending");
    boss.stop();
}

/// An `F` line whose bytes no session key made.
fn v2_forged_line() -> String {
    let noise = random_bytes(64, 14);
    spyctl::net::v2::format_line(spyctl::net::v2::LineKind::Transport, &noise).trim_end().to_string()
}

#[test]
fn only_the_boss_key_joins_another_agents_chat_and_live_frames_out_of_turn_are_refused() {
    use spyctl::crypto::IdentityKeys;
    use spyctl::net::protocol::ErrorCode;
    use spyctl::net::v2::JoinChat;
    use spyctl::net::v2_client::{Pushed, V2Client};
    let (home, boss, agent) = enrolled();
    let agent_home = spyctl::home::Home::at(agent.path());
    let me = agent_home.load_identity().expect("identity");
    let pin = agent_home.load_pin().expect("pin").expect("pinned").boss().expect("keys");
    let connect = |keys: &IdentityKeys, id: i64| {
        V2Client::connect(&boss.addr, Duration::from_secs(5), keys, &pin, id).expect("v2").into_live().expect("live")
    };
    let refused = |next: Pushed| match next {
        Pushed::Refused { code, text } => (code, text),
        other => panic!("expected a refusal, got {other:?}"),
    };
    // An agent's key cannot open another agent's chat.
    let (sender, mut receiver) = connect(&me, AGENT);
    sender.join(&JoinChat { agent: Some(5), director: None }).expect("send");
    let (code, text) = refused(receiver.receive().expect("answer"));
    assert_eq!(code, ErrorCode::Forbidden, "{text}");
    // A chat line before joining is refused, authenticated.
    sender.say("out of turn").expect("send");
    assert_eq!(refused(receiver.receive().expect("answer")).0, ErrorCode::BadRequest);
    // The Boss's own key (a director's chat) cannot listen for an agent's orders.
    let boss_keys = spyctl::home::Home::at(home.path()).load_identity().expect("boss identity");
    let (sender, mut receiver) = connect(&boss_keys, 1);
    sender.listen().expect("send");
    assert_eq!(refused(receiver.receive().expect("answer")).0, ErrorCode::Forbidden);
    assert_eq!(count(&home, "SELECT count(*) FROM ChatLines"), 0, "nothing stored");
    boss.stop();
}

/// A client that pipelines a heartbeat and `L` in one write gets both
/// answers in nonce order: the push that `L` starts never overtakes the
/// answer sealed before it (each opens with the next receiving nonce).
#[test]
fn answers_and_pushes_of_one_pipelined_batch_arrive_in_nonce_order() {
    use spyctl::crypto::noise;
    use spyctl::net::v2::{self, Frame, Hello, LineKind};
    let (home, boss, agent) = enrolled();
    ok(home.run(&["order", &AGENT.to_string(), "Pipelined order"]));
    let agent_home = spyctl::home::Home::at(agent.path());
    let me = agent_home.load_identity().expect("identity");
    let pin = agent_home.load_pin().expect("pin").expect("pinned").boss().expect("keys");
    let mut handshake = noise::initiator(&me, &pin.x25519).expect("initiator");
    let stream = std::net::TcpStream::connect(&boss.addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    let hello =
        serde_json::to_vec(&Hello { v: 2, agent: AGENT, time: spyctl::crypto::fernet::unix_now() }).expect("hello");
    let mut buf = vec![0u8; noise::MAX_MESSAGE];
    let n = handshake.write_message(&hello, &mut buf).expect("message 1");
    writer.write_all(v2::format_line(LineKind::Handshake, &buf[..n]).as_bytes()).expect("send");
    let mut read_line = || {
        let mut line = String::new();
        reader.read_line(&mut line).expect("read");
        v2::parse_line(line.trim_end().as_bytes()).expect("a v2 line").1
    };
    let answer = read_line();
    handshake.read_message(&answer, &mut buf).expect("message 2");
    let mut transport = handshake.into_transport_mode().expect("transport");
    let mut batch = String::new();
    for frame in [Frame::Heartbeat, Frame::Listen] {
        let n = transport.write_message(&frame.encode(), &mut buf).expect("seal");
        batch.push_str(&v2::format_line(LineKind::Transport, &buf[..n]));
    }
    writer.write_all(batch.as_bytes()).expect("pipelined");
    let mut open = |message: Vec<u8>| {
        let mut plain = vec![0u8; message.len()];
        let n = transport.read_message(&message, &mut plain).expect("opens with the next nonce");
        Frame::decode(&plain[..n]).expect("frame")
    };
    assert_eq!(open(read_line()), Frame::Heartbeat);
    match open(read_line()) {
        Frame::Push(json) => assert!(String::from_utf8_lossy(&json).contains("Pipelined order")),
        other => panic!("expected the pushed backlog, got {other:?}"),
    }
    boss.stop();
}

/// An enrolled agent that listens but stops reading, while flooding the Boss
/// with heartbeats, fills its socket until its own connection thread blocks
/// writing an answer (holding its session). The dispatcher skips that
/// session instead of waiting for it, so another listening agent still gets
/// each order (the Boss's write timeout is set far beyond the wait here, so a
/// dispatcher that waited would not deliver the second order in time).
#[test]
fn a_listener_that_stops_reading_does_not_hold_up_another_listeners_orders() {
    use spyctl::crypto::noise;
    use spyctl::net::v2::{self, Frame, Hello, LineKind};
    let home = TestHome::initialised();
    home.login(DIRECTOR);
    let boss = home.boss(&["--line-deadline", "600"]);
    let joined = |id: i64| {
        let code: Value =
            serde_json::from_str(&ok(home.run(&["--json", "agent", "enroll", &id.to_string()]))).expect("enroll");
        let agent = TestHome::new();
        ok(agent.run(&["join", code["code"].as_str().expect("code"), "--addr", &boss.addr]));
        agent
    };
    let (stuck, good) = (joined(5), joined(AGENT));
    // Agent 5: a raw client that listens, then only writes.
    let stuck_home = spyctl::home::Home::at(stuck.path());
    let me = stuck_home.load_identity().expect("identity");
    let pin = stuck_home.load_pin().expect("pin").expect("pinned").boss().expect("keys");
    let mut handshake = noise::initiator(&me, &pin.x25519).expect("initiator");
    let stream = std::net::TcpStream::connect(&boss.addr).expect("connect");
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let hello = serde_json::to_vec(&Hello { v: 2, agent: 5, time: spyctl::crypto::fernet::unix_now() }).expect("hello");
    let mut buf = vec![0u8; noise::MAX_MESSAGE];
    let n = handshake.write_message(&hello, &mut buf).expect("message 1");
    writer.write_all(v2::format_line(LineKind::Handshake, &buf[..n]).as_bytes()).expect("send");
    let mut line = String::new();
    reader.read_line(&mut line).expect("message 2");
    let answer = v2::parse_line(line.trim_end().as_bytes()).expect("v2 line").1;
    handshake.read_message(&answer, &mut buf).expect("opens");
    let mut transport = handshake.into_transport_mode().expect("transport");
    let flood = std::thread::spawn(move || {
        let mut seal = |frame: Frame| {
            let n = transport.write_message(&frame.encode(), &mut buf).expect("seal");
            v2::format_line(LineKind::Transport, &buf[..n])
        };
        let _ = writer.write_all(seal(Frame::Listen).as_bytes());
        // About 13 MiB of heartbeats, never reading an answer: more than the
        // socket buffers on both sides hold.
        let mut chunk = String::new();
        for _ in 0..500_000 {
            chunk.push_str(&seal(Frame::Heartbeat));
            if chunk.len() > 256 * 1024 {
                if writer.write_all(chunk.as_bytes()).is_err() {
                    return;
                }
                chunk.clear();
            }
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    let listener = Running::start(&good, &["--json", "listen", "--addr", &boss.addr]);
    for text in ["First, while agent 5 is stuck", "Second, while agent 5 is stuck"] {
        ok(home.run(&["order", &AGENT.to_string(), text]));
        let got: Value = serde_json::from_str(&listener.next_line()).expect("json order");
        assert_eq!(got["text"], text, "{got}");
    }
    drop(listener);
    // Closing with answers unread resets the connection, which frees the
    // Boss's blocked write (else it would wait out its 600 s timeout).
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let _ = flood.join();
    drop(reader);
    drop(stream);
    boss.stop();
}

/// A relay to `target` for one connection that passes everything the Boss
/// sends but only the first `pass` lines towards the Boss (the handshake and
/// the join): what the client sends after them is lost on the way, and the
/// connection ends when the client's does.
fn swallowing_relay(target: &str, pass: usize) -> String {
    use std::net::{TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let target = target.to_string();
    std::thread::spawn(move || {
        let Ok((client, _)) = listener.accept() else { return };
        let Ok(server) = TcpStream::connect(&target) else { return };
        let (client_r, mut client_w) = (client.try_clone().expect("clone"), client);
        let (mut server_r, mut server_w) = (server.try_clone().expect("clone"), server);
        std::thread::spawn(move || {
            // Lines after the first `pass` are read and dropped; when the
            // client goes, the Boss's side is closed too.
            for (n, line) in BufReader::new(client_r).split(b'\n').map_while(Result::ok).enumerate() {
                if n < pass && server_w.write_all(&[line.as_slice(), b"\n"].concat()).is_err() {
                    break;
                }
            }
            let _ = server_w.shutdown(std::net::Shutdown::Both);
        });
        let _ = std::io::copy(&mut server_r, &mut client_w);
    });
    addr
}

/// A chat line counts as delivered only when the receiving side confirms it
/// has printed it (`K` with the line's id): a receiver cut off after the line
/// reached it but before its confirmation reached the Boss gets the line
/// again when it rejoins; a confirmed line is not offered again. Counting a
/// line delivered when the Boss wrote it to the socket (as before) fails
/// the first half.
#[test]
fn a_chat_line_the_receiver_did_not_confirm_is_offered_again_and_a_confirmed_one_is_not() {
    let (home, boss, agent) = enrolled();
    let mut director = Running::start(&home, &["chat", &AGENT.to_string(), "--addr", &boss.addr]);
    director.wait_stderr("Chat with agent 6 open");
    // The agent joins through a relay that loses everything it sends after the join.
    let relay = swallowing_relay(&boss.addr, 2);
    let cut_off = Running::start(&agent, &["chat", "--addr", &relay]);
    director.wait_stderr("agent 6 is in the chat");
    director.type_line("Meet at the old mill");
    let shown = cut_off.next_line();
    assert!(shown.ends_with(": Meet at the old mill"), "{shown}");
    // Printed, and its confirmation lost on the way: the agent dies now.
    drop(cut_off);
    director.wait_stderr("agent 6 is not in the chat");
    assert_eq!(count(&home, "SELECT count(*) FROM ChatLines WHERE DeliveredAt IS NULL"), 1, "not confirmed");
    // Rejoining directly: the unconfirmed line comes again, and is confirmed.
    let rejoined = Running::start(&agent, &["chat", "--addr", &boss.addr]);
    let again = rejoined.next_line();
    assert!(again.ends_with(": Meet at the old mill"), "{again}");
    wait_until("the line confirmed", || count(&home, "SELECT count(*) FROM ChatLines WHERE DeliveredAt IS NULL") == 0);
    let (code, err) = rejoined.finish();
    assert_eq!(code, Some(0), "{err}");
    // Once more: the confirmed line is not offered; the next line shown is a new one.
    let third = Running::start(&agent, &["chat", "--addr", &boss.addr]);
    third.wait_stderr("a director is in the chat");
    director.type_line("Second line only");
    let next = third.next_line();
    assert!(next.ends_with(": Second line only"), "the confirmed line came again: {next}");
    let (code, err) = third.finish();
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = director.finish();
    assert_eq!(code, Some(0), "{err}");
    boss.stop();
}
