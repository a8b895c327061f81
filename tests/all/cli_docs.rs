//! Pins what a newcomer sees: `--help` of every command, the README's help
//! block, and the exact text and exit code of usage errors and of the first
//! mistakes people make. Snapshots live in tests/snapshots/; after an
//! intended change, regenerate them with `UPDATE_SNAPSHOTS=1 cargo test cli_docs`
//! and review the diff.

use std::path::PathBuf;

use crate::support::{TestHome, bin, stderr, stdout};

fn snapshot_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots").join(format!("{name}.txt"))
}

/// Compares `actual` with the stored snapshot (or rewrites it on request).
#[track_caller]
fn assert_snapshot(name: &str, actual: &str) {
    let path = snapshot_path(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, actual).expect("write snapshot");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("missing snapshot {}; run with UPDATE_SNAPSHOTS=1", path.display()));
    assert_eq!(actual, expected, "snapshot {name} differs (UPDATE_SNAPSHOTS=1 to accept)");
}

const HELP_PAGES: &[&[&str]] = &[
    &[],
    &["db"],
    &["db", "init"],
    &["db", "query"],
    &["agent"],
    &["agent", "add"],
    &["agent", "list"],
    &["agent", "key", "export"],
    &["agent", "enroll"],
    &["join"],
    &["order"],
    &["orders"],
    &["listen"],
    &["chat"],
    &["key"],
    &["key", "status"],
    &["key", "rotate"],
    &["key", "retire"],
    &["login"],
    &["logout"],
    &["whoami"],
    &["boss"],
    &["boss", "serve"],
    &["boss", "inbox"],
    &["boss", "inbox", "show"],
    &["boss", "verify"],
    &["boss", "export"],
    &["boss", "bench"],
    &["send"],
    &["demo"],
    &["completions"],
];

#[test]
fn help_pages_are_pinned() {
    for page in HELP_PAGES {
        let mut args: Vec<&str> = page.to_vec();
        args.push("--help");
        let out = std::process::Command::new(bin()).args(&args).env_remove("SPYCTL_HOME").output().expect("spawn");
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let name = if page.is_empty() { "help/spyctl".to_string() } else { format!("help/{}", page.join("-")) };
        assert_snapshot(&name, &stdout(&out));
    }
}

#[test]
fn readme_help_block_matches_the_binary() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    let start = readme.find("<!-- help:start -->\n```text\n").expect("help:start marker")
        + "<!-- help:start -->\n```text\n".len();
    let end = readme[start..].find("```\n<!-- help:end -->").expect("help:end marker") + start;
    let out = std::process::Command::new(bin()).arg("-h").env_remove("SPYCTL_HOME").output().expect("spawn");
    assert_eq!(&readme[start..end], stdout(&out), "README's help block is out of date: paste `spyctl -h`");
}

#[test]
fn no_command_accepts_a_password_value() {
    for page in HELP_PAGES {
        let mut args: Vec<&str> = page.to_vec();
        args.push("--help");
        let out = std::process::Command::new(bin()).args(&args).output().expect("spawn");
        let text = stdout(&out);
        assert!(!text.contains("--password <") && !text.contains("--password="), "{args:?} takes a password on argv");
    }
}

/// (snapshot name, args, expected exit code). Usage errors are clap's (exit 2).
const USAGE_ERRORS: &[(&str, &[&str], i32)] = &[
    ("no-command", &[], 2),
    ("unknown-command", &["frobnicate"], 2),
    ("bad-level", &["agent", "add", "--name", "X", "--alias", "Y", "--level", "high"], 2),
    ("password-on-argv", &["login", "--password", "hunter22"], 2),
    ("key-file-without-agent", &["send", "--key-file", "k", "hi"], 2),
    ("text-and-file", &["send", "hi", "--file", "x"], 2),
    ("unknown-shell", &["completions", "cmd.exe"], 2),
    ("export-without-out", &["boss", "export", "abc"], 2),
];

#[test]
fn usage_errors_are_pinned() {
    for (name, args, code) in USAGE_ERRORS {
        let out = std::process::Command::new(bin()).args(*args).env_remove("SPYCTL_HOME").output().expect("spawn");
        assert_eq!(out.status.code(), Some(*code), "{args:?}: {}", stderr(&out));
        assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
        assert_snapshot(&format!("usage/{name}"), &stderr(&out));
    }
}

/// The first mistakes a newcomer makes each say what happened and what to run.
#[test]
fn newcomer_errors_are_pinned() {
    let fresh = TestHome::new();
    let ready = TestHome::initialised();
    // A port that is certainly taken: one we hold open.
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = held.local_addr().expect("addr").to_string();
    // A port with nobody listening: bind, note, close.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").to_string();
    ready.login(crate::support::FIELD_AGENT);
    let cases: Vec<(&str, &TestHome, Vec<&str>)> = vec![
        ("db-query-before-init", &fresh, vec!["db", "query"]),
        ("agent-list-before-login", &fresh, vec!["agent", "list"]),
        ("send-no-server", &ready, vec!["send", "--addr", &closed, "--attempts", "2", "hello"]),
        ("serve-port-in-use", &ready, vec!["boss", "serve", "--bind", &taken]),
        // Last: it logs out.
        ("agent-list-not-logged-in", &ready, vec!["logout"]),
    ];
    for (name, home, args) in cases {
        let out = home.run(&args);
        let text = stderr(&out)
            .replace(&home.path().display().to_string(), "<HOME>")
            .replace(&taken, "<ADDR>")
            .replace(&closed, "<ADDR>");
        if name == "agent-list-not-logged-in" {
            // Logging out succeeds; the next gated command then explains itself.
            assert_eq!(out.status.code(), Some(0));
            let out = home.run(&["agent", "list"]);
            assert_eq!(out.status.code(), Some(1));
            assert_snapshot(&format!("errors/{name}"), &stderr(&out));
            continue;
        }
        assert_eq!(out.status.code(), Some(1), "{name}: {text}");
        assert_eq!(text.lines().count(), 1, "{name}: not one line: {text}");
        assert!(text.starts_with("spyctl: error: "), "{name}: {text}");
        // Connection-refused wording varies by OS; pin the stable part.
        let text = match (text.find("attempt(s): "), text.find(" (is the Boss")) {
            (Some(a), Some(b)) => format!("{}<os error>{}", &text[..a + "attempt(s): ".len()], &text[b..]),
            _ => text,
        };
        assert_snapshot(&format!("errors/{name}"), &text);
    }
    drop(held);
}
