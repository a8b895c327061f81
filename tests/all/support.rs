//! Helpers for end-to-end tests: a temporary home, the real `spyctl` binary
//! run as a process, and a real `boss serve` on 127.0.0.1 port 0.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// A sample director and a sample field agent (public demo passwords).
pub const DIRECTOR: (&str, &str) = ("Ethan Hunt", "mission-accepted-96");
pub const HANDLER: (&str, &str) = ("George Smiley", "karla-circus-74");
pub const FIELD_AGENT: (&str, &str) = ("Jason Bourne", "who-am-i-2002");

/// Every sample agent's (name, alias, password), for leak checks.
pub const SAMPLES: &[(&str, &str, &str)] = &[
    ("Ethan Hunt", "Impossible", "mission-accepted-96"),
    ("Natasha Romanoff", "Black Widow", "red-ledger-1984"),
    ("George Smiley", "Beggarman", "karla-circus-74"),
    ("Emma Peel", "Mrs Peel", "bowler-and-umbrella"),
    ("Harry Palmer", "Ipcress", "funeral-in-berlin"),
    ("Jason Bourne", "Treadstone", "who-am-i-2002"),
    ("Maxwell Smart", "Agent 86", "missed-it-by-that-much"),
    ("Boris Grishenko", "Invincible", "i-am-invincible"),
];

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

    /// Runs with `input` on stdin.
    pub fn run_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn spyctl");
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
    pub fn login(&self, who: (&str, &str)) {
        ok(self.run_stdin(&["login", "--name", who.0, "--password-stdin"], format!("{}\n", who.1).as_bytes()));
    }

    /// Starts `boss serve` on 127.0.0.1 port 0 with extra flags.
    pub fn boss(&self, extra: &[&str]) -> BossProcess {
        let mut args = vec!["boss", "serve", "--bind", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut child =
            self.cmd(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn boss serve");
        let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        reader.read_line(&mut line).expect("boss prints its address");
        let addr = line
            .split_whitespace()
            .find(|w| w.starts_with("127.0.0.1:"))
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string();
        BossProcess { child: Some(child), addr, stdout: Some(reader) }
    }
}

/// A running `spyctl boss serve`; killed on drop if not stopped.
pub struct BossProcess {
    child: Option<Child>,
    pub addr: String,
    stdout: Option<BufReader<ChildStdout>>,
}

impl BossProcess {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends SIGTERM and waits (at most 20 s) for the exit; returns the status
    /// and the rest of stdout and stderr.
    pub fn stop(mut self) -> (ExitStatus, String, String) {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        let exit = loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                break s;
            }
            assert!(Instant::now() < deadline, "boss did not stop within 20 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut out = String::new();
        if let Some(mut r) = self.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut r, &mut out);
        }
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        (exit, out, err)
    }

    /// SIGKILL, no goodbye (crash tests).
    pub fn kill9(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for BossProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Bytes of a file, for grepping.
pub fn file_contains(path: &Path, needle: &[u8]) -> bool {
    let data = std::fs::read(path).unwrap_or_default();
    !needle.is_empty() && data.windows(needle.len()).any(|w| w == needle)
}

/// Bytes of an xorshift64 stream: deterministic "random-looking" data, so a failure reproduces.
pub fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 32) as u8
        })
        .collect()
}
