//! Bad command-line input: missing or unusable homes, corrupt databases,
//! master keys with wrong modes or contents, tampered sessions, wrong
//! passwords, absurd field lengths. Each fails with one `spyctl: error:` line,
//! no panic, and the database file unchanged.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::{agent_ids, hardening_rng, master_of, random_vec};
use crate::support::{DIRECTOR, FIELD_AGENT, HANDLER, TestHome, ok, stderr, stdout};

#[track_caller]
fn clean_failure(out: std::process::Output, what: &str) -> String {
    let err = stderr(&out);
    assert!(!out.status.success(), "{what}: expected a failure, got success; stdout: {}", stdout(&out));
    assert!(out.status.code().is_some(), "{what}: killed by a signal: {:?}\n{err}", out.status);
    assert!(!err.contains("panicked"), "{what}: panic: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{what}: expected one error line, got:\n{err}");
    assert!(lines[0].starts_with("spyctl: error: "), "{what}: {err}");
    lines[0].to_string()
}

fn file_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_default()
}

/// Gated commands, read-only ones and the server, against a home.
const PROBES: &[&[&str]] = &[
    &["whoami"],
    &["agent", "list"],
    &["boss", "inbox"],
    &["db", "query"],
    &["db", "query", "--sql", "SELECT 1"],
    &["send", "--addr", "127.0.0.1:9", "--attempts", "1", "hello"],
    &["boss", "serve", "--bind", "127.0.0.1:0"],
];

/// A login as the sample director, password on stdin.
const LOGIN: &[&str] = &["login", "--name", DIRECTOR.name, "--password-stdin"];

fn running_as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[test]
fn cli_missing_or_unusable_home() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no/such/home");
    for probe in PROBES.iter().chain([LOGIN].iter()) {
        let mut args = vec!["--home", missing.to_str().unwrap()];
        args.extend_from_slice(probe);
        let home = TestHome::new();
        let out = home.run_stdin(&args, format!("{}\n", DIRECTOR.password).as_bytes());
        let line = clean_failure(out, &format!("missing home: {probe:?}"));
        assert!(line.contains("db init") || line.contains("no master key"), "{probe:?}: {line}");
        assert!(!missing.exists(), "{probe:?} created the missing home");
    }
    // A home that is a file; a home path too long for the OS.
    let file_home = tmp.path().join("plain-file");
    std::fs::write(&file_home, b"not a directory").unwrap();
    let long_home = format!("/tmp/{}", "h".repeat(5000));
    for home_arg in [file_home.to_str().unwrap(), long_home.as_str()] {
        for probe in [&["agent", "list"][..], &["db", "init"][..]] {
            let mut args = vec!["--home", home_arg];
            args.extend_from_slice(probe);
            clean_failure(TestHome::new().run(&args), &format!("bad home {probe:?}"));
        }
    }
    assert_eq!(std::fs::read(&file_home).unwrap(), b"not a directory");
}

#[test]
fn cli_corrupt_and_truncated_database() {
    let mut rng = hardening_rng(6);
    for damage in ["random", "truncated", "zeroed-header", "empty"] {
        let home = TestHome::initialised();
        home.login(DIRECTOR);
        let db = home.db_path();
        let good = file_bytes(&db);
        assert!(!home.path().join("spyctl.db-wal").exists(), "the database is checkpointed after init");
        let bad = match damage {
            "random" => random_vec(&mut rng, good.len()),
            "truncated" => good[..good.len() / 2 + 100].to_vec(),
            "zeroed-header" => {
                let mut b = good.clone();
                b[..100].fill(0);
                b
            }
            _ => Vec::new(),
        };
        std::fs::write(&db, &bad).unwrap();
        let mut probes: Vec<&[&str]> = PROBES.to_vec();
        probes.push(LOGIN);
        if damage != "empty" {
            // (An empty file is a fresh database to `db init`: initialising it is right.)
            probes.push(&["db", "init"]);
        }
        probes.push(&["agent", "add", "--name", "New One", "--alias", "Newbie", "--level", "1", "--password-stdin"]);
        for probe in probes {
            let out = home.run_stdin(probe, format!("{}\n", DIRECTOR.password).as_bytes());
            if damage == "truncated" && out.status.success() {
                // The half that survives may hold what a read-only command needs.
                assert!(!probe.contains(&"add") && !probe.contains(&"init"), "{damage} {probe:?} wrote");
            } else {
                let line = clean_failure(out, &format!("{damage} db: {probe:?}"));
                assert!(!line.contains("panicked"));
            }
            assert!(file_bytes(&db) == bad, "{damage} db: {probe:?} changed the database file");
        }
    }
}

#[test]
fn cli_master_key_permissions_and_content() {
    let home = TestHome::initialised();
    home.login(DIRECTOR);
    let db = home.db_path();
    let before = file_bytes(&db);
    let key_path = home.path().join("master.key");
    let key_text = std::fs::read(&key_path).unwrap();

    for mode in [0o644, 0o604, 0o640, 0o666] {
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(mode)).unwrap();
        for probe in PROBES {
            let line = clean_failure(home.run(probe), &format!("key mode {mode:o}: {probe:?}"));
            assert!(line.contains("chmod 600"), "{probe:?}: {line}");
        }
        assert_eq!(file_bytes(&db), before);
    }

    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o000)).unwrap();
    if running_as_root() {
        // root reads any file regardless of mode: nothing to test here.
        println!("SKIP unreadable master.key: running as root, chmod 000 does not stop reads");
    } else {
        for probe in PROBES {
            clean_failure(home.run(probe), &format!("key mode 000: {probe:?}"));
        }
        assert_eq!(file_bytes(&db), before);
    }
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();

    for garbage in [&b"not hex at all"[..], b"", &[0xff, 0xfe, 0x00][..], "ab".repeat(31).as_bytes()] {
        std::fs::write(&key_path, garbage).unwrap();
        for probe in PROBES {
            clean_failure(home.run(probe), &format!("garbage key {garbage:?}: {probe:?}"));
        }
        assert_eq!(file_bytes(&db), before);
    }
    std::fs::remove_file(&key_path).unwrap();
    for probe in PROBES {
        let line = clean_failure(home.run(probe), &format!("no key: {probe:?}"));
        assert!(line.contains("master.key") || line.contains("master key"), "{line}");
    }
    assert_eq!(file_bytes(&db), before);
    std::fs::write(&key_path, &key_text).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    ok(home.run(&["whoami"]));
}

#[test]
fn cli_tampered_expired_and_foreign_sessions() {
    let home = TestHome::initialised();
    home.login(DIRECTOR);
    let db = home.db_path();
    let before = file_bytes(&db);
    let session_path = home.path().join("session");
    let good = std::fs::read(&session_path).unwrap();
    let gated: &[&[&str]] =
        &[&["whoami"], &["agent", "list"], &["boss", "inbox"], &["send", "--addr", "127.0.0.1:9", "x"]];

    let mut variants: Vec<(String, Vec<u8>, &str)> = Vec::new();
    // Every kind of damage to the token text.
    for pos in [0, 10, good.len() / 2, good.len() - 3] {
        let mut t = good.clone();
        t[pos] = if t[pos] == b'A' { b'B' } else { b'A' };
        variants.push((format!("flipped char {pos}"), t, "invalid"));
    }
    variants.push(("truncated".into(), good[..good.len() / 2].to_vec(), "invalid"));
    variants.push(("empty".into(), Vec::new(), "invalid"));
    variants.push(("binary".into(), vec![0xff; 64], "invalid"));
    // Sealed under the right key, but expired.
    let master = master_of(&home);
    let agent = agent_ids(&home)[0];
    let expired = master.session_key().seal(
        serde_json::json!({"agent_id": agent, "level": 5, "expires_at": spyctl::crypto::fernet::unix_now() - 10})
            .to_string()
            .as_bytes(),
    );
    variants.push(("expired".into(), expired.into_bytes(), "expired"));
    // From another home (another master key).
    let other = TestHome::initialised();
    other.login(DIRECTOR);
    variants.push(("foreign".into(), std::fs::read(other.path().join("session")).unwrap(), "invalid"));
    // Sealed under the at-rest key instead of the session key: label separation.
    let wrong_label = master.at_rest_key().seal(
        serde_json::json!({"agent_id": agent, "level": 5, "expires_at": spyctl::crypto::fernet::unix_now() + 999})
            .to_string()
            .as_bytes(),
    );
    variants.push(("wrong HKDF label".into(), wrong_label.into_bytes(), "invalid"));

    for (what, bytes, expect) in &variants {
        std::fs::write(&session_path, bytes).unwrap();
        std::fs::set_permissions(&session_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        for probe in gated {
            let line = clean_failure(home.run(probe), &format!("session {what}: {probe:?}"));
            assert!(line.contains(expect) && line.contains("spyctl login"), "session {what}: {line}");
        }
        assert_eq!(file_bytes(&db), before, "session {what}");
    }
    // A good session that others could read is refused too.
    std::fs::write(&session_path, &good).unwrap();
    std::fs::set_permissions(&session_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    clean_failure(home.run(&["whoami"]), "world-readable session");
    std::fs::set_permissions(&session_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    ok(home.run(&["whoami"]));
}

fn agents_table(db: &Path) -> Vec<(i64, String, String, i64, String, String)> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut stmt = conn.prepare("SELECT * FROM Agents ORDER BY AgentId").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn cli_wrong_password_and_lockout() {
    let home = TestHome::initialised();
    let db = home.db_path();
    let agents_before = agents_table(&db);
    let session = home.path().join("session");
    let login = |name: &str, input: &[u8]| home.run_stdin(&["login", "--name", name, "--password-stdin"], input);

    // Wrong password and unknown name: the same answer.
    let wrong = clean_failure(login(HANDLER.name, b"not-the-password\n"), "wrong password");
    let unknown = clean_failure(login("Nobody At All", b"not-the-password\n"), "unknown name");
    assert_eq!(wrong, unknown, "a wrong password and an unknown name must look alike");
    assert!(!session.exists());
    // Odd stdin: empty, only a newline, too long, not UTF-8.
    let huge = vec![b'p'; 1 << 20];
    for (what, input) in
        [("empty", &b""[..]), ("newline", b"\n"), ("1 MiB", &huge[..]), ("binary", &[0xff, 0xfe, b'\n'][..])]
    {
        clean_failure(login(HANDLER.name, input), &format!("password stdin {what}"));
        assert!(!session.exists());
    }
    // Lockout: after the threshold even the right password is refused.
    let locked_out = FIELD_AGENT;
    for _ in 0..5 {
        let _ = login(locked_out.name, b"wrong\n");
    }
    let locked = clean_failure(login(locked_out.name, format!("{}\n", locked_out.password).as_bytes()), "locked out");
    assert!(locked.contains("too many failed attempts"), "{locked}");
    assert!(!session.exists());
    // Failed logins are recorded (that is the lockout), but the agents are untouched.
    assert_eq!(agents_table(&db), agents_before);
    // Another name is not affected.
    home.login(HANDLER);
}

#[test]
fn cli_absurdly_long_fields() {
    let home = TestHome::initialised();
    home.login(DIRECTOR);
    let db = home.db_path();
    let before = file_bytes(&db);
    // Linux refuses any single argv string over 128 KiB (MAX_ARG_STRLEN) at exec,
    // before spyctl runs: a 1 MB flag cannot even be passed.
    let one_mb = "N".repeat(1 << 20);
    let spawn = home.cmd(&["agent", "add", "--name", &one_mb, "--alias", "x", "--level", "1"]).output();
    match spawn {
        Err(e) => assert_eq!(e.raw_os_error(), Some(7), "E2BIG expected: {e}"),
        Ok(out) => {
            clean_failure(out, "1 MB name");
        }
    }
    let long = "N".repeat(128 * 1024 - 1);
    let never = home.path().join("never-written.key");
    let cases: Vec<(Vec<&str>, &[u8])> = vec![
        (vec!["agent", "add", "--name", &long, "--alias", "x", "--level", "1", "--password-stdin"], b"pw-123456789\n"),
        (
            vec!["agent", "add", "--name", "Short", "--alias", &long, "--level", "1", "--password-stdin"],
            b"pw-123456789\n",
        ),
        (
            vec!["agent", "add", "--name", "Short", "--alias", "x", "--level", "99", "--password-stdin"],
            b"pw-123456789\n",
        ),
        (vec!["agent", "add", "--name", "Short", "--alias", "x", "--level", "1", "--password-stdin"], &[b'p'; 1 << 20]),
        (vec!["agent", "add", "--name", "   ", "--alias", "x", "--level", "1", "--password-stdin"], b"pw-123456789\n"),
        (vec!["db", "query", "--sql", &long], b""),
        (vec!["db", "query", "--sql", "DELETE FROM Agents"], b""),
        (vec!["db", "query", "--sql", "SELECT 1; DROP TABLE Agents"], b""),
        (vec!["agent", "key", "export", "999999999", "--out", never.to_str().unwrap()], b""),
        (vec!["send", "--addr", &long, "--attempts", "1", "x"], b""),
    ];
    for (args, input) in &cases {
        let what: Vec<&str> = args.iter().map(|a| if a.len() > 40 { "<128 KiB>" } else { a }).collect();
        let out = home.run_stdin(args, input);
        clean_failure(out, &format!("{what:?}"));
        assert_eq!(file_bytes(&db), before, "{what:?} changed the database");
    }
    assert!(!never.exists());
    // A long name at login: refused like any unknown name, no panic, no session.
    std::fs::remove_file(home.path().join("session")).unwrap();
    let out = home.run_stdin(&["login", "--name", &long, "--password-stdin"], b"whatever\n");
    let line = clean_failure(out, "login with a 128 KiB name");
    assert!(line.contains("login failed"), "{line}");
}
