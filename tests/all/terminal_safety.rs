//! What an agent sends cannot drive the director's terminal: escape
//! sequences and bidi overrides in message text and file names are shown as
//! visible escapes in tables, kept exact in `--json`, and names or aliases
//! with invisible characters are refused when an agent is added.

use crate::support::{DIRECTOR, FIELD_AGENT, TestHome, fails, ok};

/// An OSC 52 clipboard write, then "erase this line, move up" twice.
const HOSTILE_TEXT: &str = "\u{1b}]52;c;cHduZWQ=\u{7}\u{1b}[2K\u{1b}[1A\u{1b}[2K all is well";
/// Shows as `invoiceexe.pdf` on a terminal that obeys U+202E.
const HOSTILE_FILE: &str = "invoice\u{202E}fdp.exe";

#[test]
fn hostile_text_and_file_names_are_shown_escaped_and_kept_exact_in_json() {
    let home = TestHome::initialised();
    let boss = home.boss(&[]);
    home.login(FIELD_AGENT);
    ok(home.run(&["send", "--addr", &boss.addr, HOSTILE_TEXT]));
    let file = home.path().join(HOSTILE_FILE);
    std::fs::write(&file, b"quarterly figures").expect("write file");
    ok(home.run(&["send", "--addr", &boss.addr, "--file", file.to_str().expect("utf-8 path")]));

    home.login(DIRECTOR);
    let table = ok(home.run(&["boss", "inbox"]));
    assert!(!table.contains('\u{1b}'), "an ESC byte reached the terminal:\n{table}");
    assert!(!table.contains('\u{7}'), "a BEL byte reached the terminal:\n{table}");
    assert!(!table.contains('\u{202E}'), "a bidi override reached the terminal:\n{table}");
    assert!(table.contains("\\x1b]52;c;"), "the clipboard write is shown, escaped:\n{table}");
    assert!(table.contains("invoice\\u{202e}fdp.exe"), "the file name is shown, escaped:\n{table}");

    let json = ok(home.run(&["--json", "boss", "inbox"]));
    let entries: serde_json::Value = serde_json::from_str(&json).expect("inbox --json");
    let contents: Vec<&str> = entries.as_array().expect("array").iter().filter_map(|e| e["content"].as_str()).collect();
    assert!(contents.contains(&HOSTILE_TEXT), "--json keeps the text exact: {contents:?}");
    assert!(contents.contains(&HOSTILE_FILE), "--json keeps the file name exact: {contents:?}");
    boss.stop();
}

#[test]
fn names_and_aliases_with_invisible_characters_are_refused() {
    let home = TestHome::initialised();
    home.login(DIRECTOR);
    for (name, alias, code_point) in [
        ("Ethan\u{200B} Hunt", "Impostor", "U+200B"),
        ("Ethan Hunt\u{2060}", "Impostor", "U+2060"),
        ("Honest Name", "Mole\u{202E}eloM", "U+202E"),
    ] {
        let out = home.run_stdin(
            &["agent", "add", "--name", name, "--alias", alias, "--level", "1", "--password-stdin"],
            b"a-long-enough-password\n",
        );
        let err = fails(out, 1);
        assert!(err.contains(code_point), "{name:?}/{alias:?}: {err}");
    }
    let list = ok(home.run(&["--json", "agent", "list"]));
    assert!(!list.contains("Impostor") && !list.contains("Honest Name"), "nothing was added: {list}");
}
