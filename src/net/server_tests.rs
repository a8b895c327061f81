//! The server's limits, tested in process: an echo handler on `127.0.0.1:0`,
//! short limits, and the shutdown handle, so each test takes milliseconds and
//! waits on events (a reply, a closed socket, `run` returning), never on a
//! sleep. Each test fails if its limit is taken out: without it the awaited
//! event does not come and a bounded wait gives up. End-to-end tests with the
//! real binary stay in `tests/`.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::protocol;
use super::reply::{Redo, Reply};
use super::server::{Answer, Limits, LineHandler, Peer, Server, ShutdownHandle, Stats};

/// Longest any test waits for an event before calling it missing. Far above
/// the limits under test (at most 300 ms), far below the defaults they
/// replace (5 s and more), so a removed limit shows as a timeout.
const PATIENCE: Duration = Duration::from_secs(4);

/// Answers `ECHO <line>`; `REFUSE` is answered but not accepted (it does not
/// restart the idle timer); `PANIC` panics; with a [`Gate`], `WAIT` first
/// reports [`Event::Started`], then waits until the test releases it. A batch
/// with a `LATER` line is answered from another thread 20 ms later (as the
/// Boss's writer answers after a commit), one with a `SLOW` line [`SLOW`]
/// later (a commit that waits for the disk); a batch with a `REDO` line is
/// handed back to the connection's thread to answer (as lines the registry
/// overtook are).
struct Echo {
    gate: Option<Gate>,
}

struct Gate {
    events: mpsc::Sender<Event>,
    release: Mutex<Receiver<()>>,
}

/// What a test waits for: a handler holding a `WAIT` line, or what a client
/// reader thread saw.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    Started,
    Line(String),
    Closed,
}

impl Echo {
    fn new() -> Echo {
        Echo { gate: None }
    }

    /// An echo handler whose `WAIT` lines block: returns it, the channel its
    /// events go to (for a client's reader too), and the sender that lets
    /// each `WAIT` finish.
    fn gated() -> (Echo, mpsc::Sender<Event>, Receiver<Event>, mpsc::Sender<()>) {
        let (events_tx, events) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let gate = Gate { events: events_tx.clone(), release: Mutex::new(release_rx) };
        (Echo { gate: Some(gate) }, events_tx, events, release)
    }
}

impl LineHandler for Echo {
    fn handle(&self, line: &[u8], _peer: &Peer) -> Answer {
        match line {
            b"PANIC" => panic!("the handler was asked to panic"),
            b"REFUSE" => Answer::refused(protocol::ErrorCode::BadRequest, "refused"),
            _ => {
                if let (b"WAIT", Some(gate)) = (line, &self.gate) {
                    gate.events.send(Event::Started).unwrap();
                    gate.release.lock().unwrap().recv_timeout(PATIENCE).unwrap();
                }
                Answer::accepted(format!("ECHO {}\n", String::from_utf8_lossy(line)))
            }
        }
    }

    fn handle_batch_deferred(&self, lines: &[&[u8]], peer: &Peer, reply: Reply) {
        if lines.iter().any(|line| line.starts_with(b"REDO")) {
            let redo = Redo {
                answers: vec![None; lines.len()],
                lines: lines.iter().map(|l| l.to_vec()).enumerate().collect(),
            };
            std::thread::spawn(move || reply.redo(redo));
        } else if let Some(delay) = lines.iter().find_map(|line| answer_delay(line)) {
            let answers = self.handle_batch(lines, peer);
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                reply.send(answers);
            });
        } else {
            reply.send(self.handle_batch(lines, peer));
        }
    }
}

/// How long a `SLOW` batch waits for its answer: longer than the idle
/// timeout the tests that use it set.
const SLOW: Duration = Duration::from_millis(600);

/// How long after it is handled a batch with this line is answered (from
/// another thread), if it is answered later at all.
fn answer_delay(line: &[u8]) -> Option<Duration> {
    if line.starts_with(b"LATER") {
        Some(Duration::from_millis(20))
    } else if line.starts_with(b"SLOW") {
        Some(SLOW)
    } else {
        None
    }
}

/// A server running on its own thread.
struct Running {
    addr: SocketAddr,
    shutdown: ShutdownHandle,
    done: Receiver<Stats>,
}

fn start(limits: Limits, handler: Echo) -> Running {
    let server = Server::bind("127.0.0.1:0", limits).expect("bind");
    let addr = server.local_addr();
    let shutdown = server.shutdown_handle();
    let (tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(server.run(&handler));
    });
    Running { addr, shutdown, done }
}

impl Running {
    fn connect(&self) -> Client {
        let stream = TcpStream::connect(self.addr).expect("connect");
        stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
        Client { reader: BufReader::new(stream.try_clone().expect("clone")), stream }
    }

    /// Asks the server to stop and waits for `run` to return.
    fn stop(self) -> Stats {
        self.shutdown.shutdown();
        self.stopped()
    }

    /// Waits for `run` to return (after a shutdown asked for elsewhere).
    fn stopped(self) -> Stats {
        match self.done.recv_timeout(PATIENCE) {
            Ok(stats) => stats,
            Err(RecvTimeoutError::Timeout) => panic!("the server did not stop within {PATIENCE:?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("the server thread panicked"),
        }
    }
}

struct Client {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// The next line from the server, or `None` once it has closed the
    /// connection. A read timeout fails the test: the awaited event never came.
    fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(line),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
            Err(e) => panic!("no reply within {PATIENCE:?}: {e}"),
        }
    }

    fn ask(&mut self, line: &str) -> Option<String> {
        self.send(line.as_bytes());
        self.line()
    }
}

/// Limits far from the ones a test checks, so only that one can fire.
fn relaxed() -> Limits {
    Limits {
        max_connections: 16,
        max_per_address: 16,
        max_line_bytes: 1024,
        idle_timeout: Duration::from_secs(60),
        line_deadline: Duration::from_secs(60),
        poll: Duration::from_millis(10),
        drain_grace: Duration::from_secs(60),
    }
}

#[test]
fn echo_answers_each_line_and_pipelined_lines_in_order() {
    let server = start(relaxed(), Echo::new());
    let mut client = server.connect();
    assert_eq!(client.ask("hello\n").as_deref(), Some("ECHO hello\n"));
    client.send(b"one\ntwo\nthree\n");
    for word in ["one", "two", "three"] {
        assert_eq!(client.line(), Some(format!("ECHO {word}\n")));
    }
    let stats = server.stop();
    assert_eq!(stats.lines.load(std::sync::atomic::Ordering::Relaxed), 4);
}

#[test]
fn answers_sent_later_from_another_thread_keep_the_order_of_the_lines() {
    let server = start(relaxed(), Echo::new());
    let mut client = server.connect();
    // Pipelined: whether these arrive as one batch or several, a batch
    // answered at once must not overtake one answered later. The pauses let
    // the server read each line as its own batch (if it does not, the order
    // holds trivially).
    for line in ["LATER one\n", "two\n", "LATER three\n", "four\n"] {
        client.send(line.as_bytes());
        std::thread::sleep(Duration::from_millis(5));
    }
    for word in ["LATER one", "two", "LATER three", "four"] {
        assert_eq!(client.line(), Some(format!("ECHO {word}\n")));
    }
    let stats = server.stop();
    assert_eq!(stats.lines.load(std::sync::atomic::Ordering::Relaxed), 4);
}

#[test]
fn lines_handed_back_by_the_handler_are_answered_on_the_connection_thread() {
    let server = start(relaxed(), Echo::new());
    let mut client = server.connect();
    // The client waits; only the connection thread's own wake-up (its poll
    // interval) can answer the handed-back line.
    assert_eq!(client.ask("REDO me\n").as_deref(), Some("ECHO REDO me\n"));
    assert_eq!(client.ask("after\n").as_deref(), Some("ECHO after\n"));
    server.stop();
}

#[test]
fn a_connection_past_the_cap_is_answered_busy_and_closed() {
    let server = start(Limits { max_connections: 1, ..relaxed() }, Echo::new());
    // The holder has had an answer, so its thread is counted as live.
    let mut holder = server.connect();
    assert_eq!(holder.ask("mine\n").as_deref(), Some("ECHO mine\n"));
    let mut extra = server.connect();
    let busy = extra.line().expect("an answer");
    assert!(busy.starts_with("ERR busy "), "{busy}");
    assert_eq!(extra.line(), None, "closed after busy");
    // The holder is unaffected.
    assert_eq!(holder.ask("still\n").as_deref(), Some("ECHO still\n"));
    let stats = server.stop();
    assert_eq!(stats.refused_busy.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn a_newcomer_takes_the_slot_of_a_connection_without_an_accepted_line() {
    let server = start(Limits { max_connections: 2, ..relaxed() }, Echo::new());
    let mut holder = server.connect();
    assert_eq!(holder.ask("mine\n").as_deref(), Some("ECHO mine\n"));
    // Admitted (it has an answer), but nothing it sent was accepted.
    let mut unproven = server.connect();
    assert_eq!(unproven.ask("REFUSE\n").as_deref(), Some("ERR bad_request refused\n"));
    // Both slots are taken: the newcomer gets the unproven one's.
    let mut newcomer = server.connect();
    assert_eq!(newcomer.ask("hello\n").as_deref(), Some("ECHO hello\n"));
    let goodbye = unproven.line().expect("a goodbye");
    assert!(goodbye.starts_with("ERR busy "), "{goodbye}");
    assert_eq!(unproven.line(), None, "closed after busy");
    // The accepted connection was never a candidate.
    assert_eq!(holder.ask("still\n").as_deref(), Some("ECHO still\n"));
    let stats = server.stop();
    assert_eq!(stats.evicted.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(stats.refused_busy.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[test]
fn a_connection_closed_for_a_newcomer_still_answers_a_line_that_had_arrived() {
    let (echo, _, events, release) = Echo::gated();
    let server = start(Limits { max_connections: 1, ..relaxed() }, echo);
    let mut first = server.connect();
    first.send(b"WAIT\n");
    assert_eq!(events.recv_timeout(PATIENCE), Ok(Event::Started), "the handler has the line");
    // Arrives whole while the first line is handled: not yet read.
    first.send(b"queued\n");
    // Nothing of `first` has been accepted yet, so the newcomer takes its slot.
    let mut newcomer = server.connect();
    assert_eq!(newcomer.ask("hello\n").as_deref(), Some("ECHO hello\n"));
    release.send(()).unwrap();
    assert_eq!(first.line().as_deref(), Some("ECHO WAIT\n"));
    assert_eq!(first.line().as_deref(), Some("ECHO queued\n"), "a line already there is answered");
    let goodbye = first.line().expect("a goodbye");
    assert!(goodbye.starts_with("ERR busy "), "{goodbye}");
    assert_eq!(first.line(), None);
    server.stop();
}

#[test]
fn a_client_holding_an_answer_sent_from_another_thread_finds_its_connection_accepted() {
    // The connection thread sleeps in its read (a long poll) when another
    // thread sends the answer: the connection must be ranked accepted by
    // then, or a newcomer arriving before the thread wakes takes its slot.
    let server = start(Limits { max_connections: 1, poll: Duration::from_secs(1), ..relaxed() }, Echo::new());
    let mut holder = server.connect();
    assert_eq!(holder.ask("LATER mine\n").as_deref(), Some("ECHO LATER mine\n"));
    let mut extra = server.connect();
    let busy = extra.line().expect("an answer");
    assert!(busy.starts_with("ERR busy "), "{busy}");
    assert_eq!(extra.line(), None, "closed after busy");
    assert_eq!(holder.ask("still\n").as_deref(), Some("ECHO still\n"));
    let stats = server.stop();
    assert_eq!(stats.evicted.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[test]
fn one_address_holds_at_most_its_share_and_accepted_connections_keep_theirs() {
    let server = start(Limits { max_per_address: 1, ..relaxed() }, Echo::new());
    let mut holder = server.connect();
    assert_eq!(holder.ask("mine\n").as_deref(), Some("ECHO mine\n"));
    // Fifteen slots are free, but not for this address, and the one it holds is accepted.
    let mut extra = server.connect();
    let busy = extra.line().expect("an answer");
    assert!(busy.starts_with("ERR busy "), "{busy}");
    assert_eq!(extra.line(), None);
    assert_eq!(holder.ask("still\n").as_deref(), Some("ECHO still\n"));
    server.stop();
}

#[test]
fn a_line_at_the_cap_is_refused_as_too_long_and_closed() {
    let server = start(Limits { max_line_bytes: 16, ..relaxed() }, Echo::new());
    let mut client = server.connect();
    // 15 bytes and the newline: exactly the cap, accepted.
    assert_eq!(client.ask("abcdefghijklmno\n").as_deref(), Some("ECHO abcdefghijklmno\n"));
    // 16 bytes and no newline yet: refused before the buffer grows further.
    // (Exactly 16, so nothing is left unread to turn the close into a reset.)
    client.send(&[b'x'; 16]);
    assert_eq!(client.line().as_deref(), Some("ERR too_long lines are limited to 16 bytes\n"));
    assert_eq!(client.line(), None);
    server.stop();
}

#[test]
fn a_line_not_finished_before_its_deadline_is_refused_and_closed() {
    let server = start(Limits { line_deadline: Duration::from_millis(100), ..relaxed() }, Echo::new());
    let mut client = server.connect();
    client.send(b"half a li");
    assert_eq!(client.line().as_deref(), Some("ERR bad_request line not completed in time\n"));
    assert_eq!(client.line(), None);
    server.stop();
}

#[test]
fn a_quiet_connection_is_closed_when_idle() {
    let server = start(Limits { idle_timeout: Duration::from_millis(100), ..relaxed() }, Echo::new());
    let mut client = server.connect();
    assert_eq!(client.line().as_deref(), Some("ERR bad_request idle timeout\n"));
    assert_eq!(client.line(), None);
    server.stop();
}

#[test]
fn a_connection_is_not_closed_idle_while_its_accepted_line_waits_for_the_answer() {
    // The idle timer runs out while the line is still with the handler (a
    // slow commit). Its answer stores work, which restarts the timer: the
    // connection must live on, not be closed idle right after that answer.
    let idle_timeout = Duration::from_millis(250);
    assert!(SLOW > idle_timeout);
    let server = start(Limits { idle_timeout, ..relaxed() }, Echo::new());
    let mut client = server.connect();
    assert_eq!(client.ask("SLOW one\n").as_deref(), Some("ECHO SLOW one\n"));
    assert_eq!(client.ask("two\n").as_deref(), Some("ECHO two\n"));
    server.stop();
}

#[test]
fn refused_lines_do_not_restart_the_idle_timer() {
    let server = start(Limits { idle_timeout: Duration::from_millis(300), ..relaxed() }, Echo::new());
    let mut client = server.connect();
    // Refused lines, back to back: if each restarted the timer, this would
    // go on until PATIENCE runs out.
    let began = Instant::now();
    let goodbye = loop {
        let reply = client.ask("REFUSE\n").expect("an answer before the close");
        if reply != "ERR bad_request refused\n" {
            break reply;
        }
        assert!(began.elapsed() < PATIENCE, "refused lines kept the connection alive");
    };
    assert_eq!(goodbye, "ERR bad_request idle timeout\n");
    server.stop();
}

#[test]
fn shutdown_closes_quiet_connections_and_run_returns() {
    let server = start(relaxed(), Echo::new());
    let mut client = server.connect();
    assert_eq!(client.ask("hi\n").as_deref(), Some("ECHO hi\n"));
    // The connection is quiet; its 60 s idle timeout must not hold shutdown.
    server.stop();
    assert_eq!(client.line(), None);
}

#[test]
fn shutdown_finishes_the_line_in_hand_and_lines_already_sent() {
    let (echo, _, events, release) = Echo::gated();
    let server = start(relaxed(), echo);
    let mut client = server.connect();
    client.send(b"WAIT\n");
    assert_eq!(events.recv_timeout(PATIENCE), Ok(Event::Started), "the handler has the line");
    // Sent while the first is being handled and before shutdown: in flight.
    client.send(b"after\n");
    server.shutdown.shutdown();
    release.send(()).unwrap();
    assert_eq!(client.line().as_deref(), Some("ECHO WAIT\n"));
    assert_eq!(client.line().as_deref(), Some("ECHO after\n"), "a line already sent is drained");
    assert_eq!(client.line(), None, "then the connection closes");
    server.stopped();
}

#[test]
fn shutdown_and_eviction_send_the_answer_of_a_batch_still_in_flight_before_closing() {
    // Shutdown: the connection is quiet while its line waits for the answer.
    let server = start(relaxed(), Echo::new());
    let mut client = server.connect();
    // Served (not still in the listen backlog when shutdown starts).
    assert_eq!(client.ask("hi\n").as_deref(), Some("ECHO hi\n"));
    client.send(b"SLOW stop\n");
    server.shutdown.shutdown();
    assert_eq!(client.line().as_deref(), Some("ECHO SLOW stop\n"));
    assert_eq!(client.line(), None, "then the connection closes");
    server.stopped();
    // Eviction: nothing of the first connection is answered yet, so a
    // newcomer takes its slot; its answer still goes out before the goodbye.
    let server = start(Limits { max_connections: 1, ..relaxed() }, Echo::new());
    let mut first = server.connect();
    first.send(b"SLOW evicted\n");
    let mut newcomer = server.connect();
    assert_eq!(newcomer.ask("hello\n").as_deref(), Some("ECHO hello\n"));
    assert_eq!(first.line().as_deref(), Some("ECHO SLOW evicted\n"));
    let goodbye = first.line().expect("a goodbye");
    assert!(goodbye.starts_with("ERR busy "), "{goodbye}");
    assert_eq!(first.line(), None);
    server.stop();
}

#[test]
fn a_client_that_keeps_sending_cannot_hold_shutdown_open() {
    let (echo, reader_events, events, release) = Echo::gated();
    let server = start(Limits { drain_grace: Duration::from_millis(100), ..relaxed() }, echo);
    let Client { mut stream, mut reader } = server.connect();
    let reader_thread = std::thread::spawn(move || {
        let mut line = String::new();
        while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
            let _ = reader_events.send(Event::Line(std::mem::take(&mut line)));
        }
        let _ = reader_events.send(Event::Closed);
    });
    stream.write_all(b"WAIT\n").unwrap();
    assert_eq!(events.recv_timeout(PATIENCE), Ok(Event::Started));
    server.shutdown.shutdown();
    // Each round: while the handler holds one line, the next is sent, so
    // whenever the server looks for unread bytes it finds some. Only the
    // drain grace can end this.
    let began = Instant::now();
    'rounds: loop {
        assert!(began.elapsed() < PATIENCE, "a client that keeps sending held shutdown open");
        stream.write_all(b"WAIT\n").unwrap();
        release.send(()).unwrap();
        loop {
            match events.recv_timeout(PATIENCE).expect("an event") {
                Event::Started => continue 'rounds,
                Event::Closed => break 'rounds,
                Event::Line(_) => {}
            }
        }
    }
    server.stopped();
    reader_thread.join().expect("reader thread");
}

#[test]
fn a_panicking_handler_is_answered_internal_and_the_server_goes_on() {
    let server = start(relaxed(), Echo::new());
    let mut client = server.connect();
    assert_eq!(client.ask("PANIC\n").as_deref(), Some("ERR internal internal error\n"));
    assert_eq!(client.line(), None);
    let mut next = server.connect();
    assert_eq!(next.ask("fine\n").as_deref(), Some("ECHO fine\n"));
    server.stop();
}
