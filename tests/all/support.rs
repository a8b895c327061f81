//! The test harness every integration test shares: a temporary home and the
//! real `spyctl` binary run in it, the sample agents (from the library, not
//! retyped), the one helper that runs a `boss serve` process on 127.0.0.1
//! port 0, the one raw line client that speaks the protocol to it and hands
//! back typed replies, and deterministic random bytes.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{RngAlgorithm, TestRng};
use spyctl::net::protocol::{self, ErrorCode, Reply};
pub use spyctl::registry::{DEMO_DELETED, DEMO_NEW_ALIAS, DEMO_PROMOTED, SAMPLE_AGENTS, SampleAgent};

/// The first sample agent at `level` (`db init` adds them all) other than
/// `except` (pass "" for none).
pub const fn sample_at(level: u8, except: &str) -> &'static SampleAgent {
    let mut i = 0;
    while i < SAMPLE_AGENTS.len() {
        if SAMPLE_AGENTS[i].level == level && !same(SAMPLE_AGENTS[i].name, except) {
            return &SAMPLE_AGENTS[i];
        }
        i += 1;
    }
    panic!("no sample agent at this level")
}

const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// A sample director (level 5), handler (level 3) and field agent (level 2,
/// not the one the demo script promotes).
pub const DIRECTOR: &SampleAgent = sample_at(5, "");
pub const HANDLER: &SampleAgent = sample_at(3, "");
pub const FIELD_AGENT: &SampleAgent = sample_at(2, DEMO_PROMOTED);

/// The sample agent called `name`.
#[track_caller]
pub fn sample_named(name: &str) -> &'static SampleAgent {
    SAMPLE_AGENTS.iter().find(|a| a.name == name).unwrap_or_else(|| panic!("no sample agent {name:?}"))
}

/// The Boss's reply to a stored text message from `agent`.
pub fn good_work(agent: &SampleAgent) -> String {
    format!("Message received. Good work, {}.", agent.alias)
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_spyctl")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts success and returns stdout; shows both streams on failure.
#[track_caller]
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "expected success, got {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// Asserts failure with exit code `code` and returns stderr.
#[track_caller]
pub fn fails(out: Output, code: i32) -> String {
    assert_eq!(out.status.code(), Some(code), "stdout:\n{}\nstderr:\n{}", stdout(&out), stderr(&out));
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "panic: {err}");
    err
}

/// A temporary spyctl home, removed at the end of the test.
pub struct TestHome {
    pub dir: tempfile::TempDir,
}

impl TestHome {
    pub fn new() -> TestHome {
        TestHome { dir: tempfile::tempdir().expect("tempdir") }
    }

    /// A home after `db init`.
    pub fn initialised() -> TestHome {
        let home = TestHome::new();
        ok(home.run(&["db", "init"]));
        home
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn db_path(&self) -> PathBuf {
        self.path().join("spyctl.db")
    }

    /// `spyctl` with this home, no inherited address, quiet logs.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .env("SPYCTL_HOME", self.path())
            .env_remove("SPYCTL_ADDR")
            .env_remove("SPYCTL_BIND")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("spawn spyctl")
    }

    /// Starts spyctl with stdin, stdout and stderr all piped to the test.
    pub fn spawn_piped(&self, args: &[&str]) -> std::process::Child {
        self.cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn spyctl")
    }

    /// Runs with `input` on stdin.
    pub fn run_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = self.spawn_piped(args);
        let mut stdin = child.stdin.take().expect("stdin");
        let input = input.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let out = child.wait_with_output().expect("wait");
        writer.join().expect("stdin writer");
        out
    }

    /// Logs in (password on stdin) and asserts success.
    #[track_caller]
    pub fn login(&self, who: &SampleAgent) {
        ok(self
            .run_stdin(&["login", "--name", who.name, "--password-stdin"], format!("{}\n", who.password).as_bytes()));
    }

    /// Starts `boss serve` on 127.0.0.1 port 0 with extra flags and the
    /// Boss's default log level.
    pub fn boss(&self, extra: &[&str]) -> Boss {
        Boss::start(self, extra, None)
    }

    /// Starts `boss serve` with extra flags and `RUST_LOG=log_filter`.
    pub fn boss_logging(&self, extra: &[&str], log_filter: &str) -> Boss {
        Boss::start(self, extra, Some(log_filter))
    }
}

/// A count from the environment (long runs set them), else the short default.
pub fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

// ---------------------------------------------------------------------------
// The Boss as a process
// ---------------------------------------------------------------------------

/// A running `spyctl boss serve`, killed on drop if not stopped. Both of its
/// output streams are drained by threads from the start, so a chatty Boss
/// never blocks on a full pipe and its whole log can be checked for panics.
pub struct Boss {
    child: Option<Child>,
    pub addr: String,
    drains: Vec<JoinHandle<()>>,
    log: Arc<Mutex<BossLog>>,
    stdout: Arc<Mutex<String>>,
}

/// Log lines kept whole for [`Stopped::log`]; a flood past this only counts.
const KEPT_LOG_LINES: usize = 20_000;

#[derive(Default)]
struct BossLog {
    lines: usize,
    /// Bytes logged, newlines included.
    bytes: usize,
    /// The first [`KEPT_LOG_LINES`] lines.
    kept: Vec<String>,
    /// Lines that mention a panic, kept whole.
    panics: Vec<String>,
    /// The last lines, for failure messages.
    tail: Vec<String>,
}

/// How a stopped Boss ended.
pub struct Stopped {
    pub status: ExitStatus,
    /// Everything it printed on stdout (the address line, the summary).
    pub stdout: String,
    /// Lines it logged on stderr.
    pub log_lines: usize,
    /// Bytes it logged on stderr.
    pub log_bytes: usize,
    /// The first lines it logged (up to 20,000).
    pub log: Vec<String>,
    /// Logged lines that mention a panic.
    pub panics: Vec<String>,
    /// The last logged lines, for failure messages.
    pub log_tail: String,
}

impl Boss {
    fn start(home: &TestHome, extra: &[&str], log_filter: Option<&str>) -> Boss {
        let mut args = vec!["boss", "serve", "--bind", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut cmd = home.cmd(&args);
        if let Some(filter) = log_filter {
            cmd.env("RUST_LOG", filter);
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn boss serve");
        let log = Arc::new(Mutex::new(BossLog::default()));
        let err = child.stderr.take().expect("stderr");
        let sink = log.clone();
        let stderr_drain = std::thread::spawn(move || {
            for line in BufReader::new(err).split(b'\n') {
                let Ok(line) = line else { break };
                let line = String::from_utf8_lossy(&line).into_owned();
                let mut log = sink.lock().unwrap();
                log.lines += 1;
                log.bytes += line.len() + 1;
                if log.kept.len() < KEPT_LOG_LINES {
                    log.kept.push(line.clone());
                }
                if line.contains("panicked") {
                    log.panics.push(line.clone());
                }
                log.tail.push(line);
                if log.tail.len() > 200 {
                    log.tail.drain(..100);
                }
            }
        });
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut first = String::new();
        out.read_line(&mut first).expect("boss prints its address");
        let Some(addr) = first.split_whitespace().find(|w| w.starts_with("127.0.0.1:")).map(str::to_string) else {
            let _ = child.kill();
            let _ = child.wait();
            let _ = stderr_drain.join();
            panic!("boss did not start: {first:?}; log: {:?}", log.lock().unwrap().tail);
        };
        let stdout = Arc::new(Mutex::new(first));
        let sink = stdout.clone();
        let stdout_drain = std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = out.read_to_string(&mut rest);
            sink.lock().unwrap().push_str(&rest);
        });
        Boss { child: Some(child), addr, drains: vec![stderr_drain, stdout_drain], log, stdout }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends `signal` (`TERM`, `KILL`) without waiting for the exit.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([&format!("-{signal}"), &self.pid().to_string()]).status();
        assert!(status.expect("kill").success(), "kill -{signal}");
    }

    /// Logged lines that mention a panic, so far.
    pub fn panics(&self) -> Vec<String> {
        self.log.lock().unwrap().panics.clone()
    }

    pub fn tail(&self) -> String {
        self.log.lock().unwrap().tail.join("\n")
    }

    /// SIGTERM, wait for the exit (at most 30 s), drain both streams.
    pub fn stop(mut self) -> Stopped {
        self.signal("TERM");
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                break s;
            }
            assert!(Instant::now() < deadline, "boss did not stop within 30 s of SIGTERM; log:\n{}", self.tail());
            std::thread::sleep(Duration::from_millis(20));
        };
        for d in self.drains.drain(..) {
            let _ = d.join();
        }
        let log = self.log.lock().unwrap();
        Stopped {
            status,
            stdout: self.stdout.lock().unwrap().clone(),
            log_lines: log.lines,
            log_bytes: log.bytes,
            log: log.kept.clone(),
            panics: log.panics.clone(),
            log_tail: log.tail.join("\n"),
        }
    }

    /// [`stop`](Self::stop), asserting a clean exit with no panic anywhere in the log.
    #[track_caller]
    pub fn stop_clean(self) -> Stopped {
        let stopped = self.stop();
        assert!(stopped.status.success(), "boss exit {:?}; log:\n{}", stopped.status, stopped.log_tail);
        assert!(stopped.panics.is_empty(), "the Boss panicked: {:?}", stopped.panics);
        stopped
    }

    /// SIGKILL: no goodbye, no flush, no commit.
    pub fn kill9(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for d in self.drains.drain(..) {
            let _ = d.join();
        }
    }
}

impl Drop for Boss {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// A raw line client
// ---------------------------------------------------------------------------

/// What the Boss answered to a line, as parsed by the library's
/// [`protocol::parse_reply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Ack(Vec<u8>),
    Err(ErrorCode, String),
    /// EOF or reset: the Boss closed the connection.
    Closed,
    /// A line that is not a protocol reply at all (a Boss bug).
    Garbage(Vec<u8>),
}

impl Answer {
    /// The error code, if this is an `ERR`.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Answer::Err(code, _) => Some(*code),
            _ => None,
        }
    }

    pub fn is_ack(&self) -> bool {
        matches!(self, Answer::Ack(_))
    }

    /// A short label for tallies: `ACK`, `ERR <code>`, `closed`, `garbage`.
    pub fn label(&self) -> String {
        match self {
            Answer::Ack(_) => "ACK".to_string(),
            Answer::Err(code, _) => format!("ERR {}", code.as_str()),
            Answer::Closed => "closed".to_string(),
            Answer::Garbage(_) => "garbage".to_string(),
        }
    }
}

/// A raw protocol connection, to send what `spyctl send` never would
/// (duplicates, stale or forged tokens, garbage, half lines, trickles).
pub struct RawClient {
    reader: BufReader<TcpStream>,
}

impl RawClient {
    /// Connects with 15 s read and write timeouts and no Nagle delay.
    pub fn connect(addr: &str) -> RawClient {
        let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(15))).expect("timeout");
        s.set_write_timeout(Some(Duration::from_secs(15))).expect("timeout");
        s.set_nodelay(true).expect("nodelay");
        RawClient { reader: BufReader::new(s) }
    }

    /// A second handle on the socket, to write from another thread.
    pub fn try_clone_stream(&self) -> TcpStream {
        self.reader.get_ref().try_clone().expect("clone stream")
    }

    pub fn stream(&mut self) -> &mut TcpStream {
        self.reader.get_mut()
    }

    /// Writes; false if the Boss has closed or reset the connection.
    pub fn write(&mut self, bytes: &[u8]) -> bool {
        self.stream().write_all(bytes).is_ok()
    }

    /// Writes and asserts the write went through.
    #[track_caller]
    pub fn send(&mut self, bytes: &[u8]) {
        assert!(self.write(bytes), "write to the Boss failed");
    }

    /// The next reply line, parsed; panics if none comes within the timeout.
    pub fn read_reply(&mut self) -> Answer {
        let mut line = Vec::new();
        match self.reader.by_ref().take(protocol::MAX_LINE_BYTES as u64).read_until(b'\n', &mut line) {
            Ok(0) => Answer::Closed,
            Ok(_) if line.last() != Some(&b'\n') => Answer::Closed,
            Ok(_) => match protocol::parse_reply(&line) {
                Ok(Reply::Ack { token }) => Answer::Ack(token.to_vec()),
                Ok(Reply::Err { code, text }) => Answer::Err(code, text),
                Err(_) => Answer::Garbage(line),
            },
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                panic!("the Boss did not answer within the read timeout")
            }
            Err(_) => Answer::Closed,
        }
    }

    /// Writes `line` (newline included) and returns the reply.
    #[track_caller]
    pub fn ask(&mut self, line: &[u8]) -> Answer {
        self.send(line);
        self.read_reply()
    }

    /// Sends `MSG <agent> <token>` and returns the reply.
    #[track_caller]
    pub fn msg(&mut self, agent_id: i64, token: &str) -> Answer {
        self.ask(protocol::format_request(agent_id, token).as_bytes())
    }

    /// True once the Boss has closed the connection (EOF or reset, no more data).
    pub fn is_closed(&mut self) -> bool {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => rest.is_empty(),
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

// ---------------------------------------------------------------------------
// Files and deterministic data
// ---------------------------------------------------------------------------

/// Whether the file at `path` contains `needle` (false if unreadable).
pub fn file_contains(path: &Path, needle: &[u8]) -> bool {
    let data = std::fs::read(path).unwrap_or_default();
    !needle.is_empty() && data.windows(needle.len()).any(|w| w == needle)
}

/// proptest's ChaCha generator seeded with `seed`: the same stream on every
/// run and platform, so a failure reproduces.
pub fn seeded_rng(seed: u64) -> TestRng {
    let mut bytes = [0u8; 32];
    for (i, chunk) in bytes.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&(seed ^ i as u64).to_le_bytes());
    }
    TestRng::from_seed(RngAlgorithm::ChaCha, &bytes)
}

/// `len` random-looking bytes, the same for the same `seed`.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    seeded_rng(seed).fill_bytes(&mut out);
    out
}

/// A received file's plaintext, read the way `boss inbox get` reads it (the
/// home's key bound to its database, every segment checked); the bytes
/// under `files/` themselves are ciphertext.
pub fn stored_file(home: &TestHome, agent_id: i64, file_id: &str) -> Vec<u8> {
    let conn = rusqlite::Connection::open_with_flags(home.db_path(), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open db");
    let master = spyctl::home::Home::at(home.path()).load_master_key().expect("master key");
    let keyring = spyctl::epochs::open_keyring(&master, &conn).expect("the home's keys fit its database");
    let files = spyctl::boss::files::FileAssembler::new(home.path().join("files"), keyring.files_keys());
    let mut out = Vec::new();
    files.export(agent_id, file_id, &mut out).expect("the stored file opens and checks");
    out
}
