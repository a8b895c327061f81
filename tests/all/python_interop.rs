//! Interoperability with the reference implementation, Python's `cryptography.fernet`:
//! tokens sealed by spyctl open in Python, and tokens sealed by Python open in spyctl.
//!
//! The Python side is `tests/python/fernet_interop.py`. The interpreter is a `python3`
//! that already imports `cryptography`, or else a venv built once in `target/py-venv`
//! from `requirements-dev.txt`. If neither can be had, the tests fail: they never skip.

use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use spyctl::crypto::{FernetKey, TokenError};

use crate::support::random_bytes;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The plaintexts both directions are tested with: the edges of a PKCS#7 block, binary
/// data, text with line endings, and a large message.
fn plaintexts() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("empty", Vec::new()),
        ("1 byte", vec![0x00]),
        ("15 bytes", b"fifteen bytes!!".to_vec()),
        ("16 bytes", b"sixteen bytes!!!".to_vec()),
        ("17 bytes", b"seventeen bytes!!".to_vec()),
        ("every byte value", (0..=255u8).collect()),
        ("1000 pseudo-random bytes", random_bytes(1000, 0x5EC2_E7A6_E470_0007)),
        ("UTF-8 text with newlines", "Agent 007 \u{2014} «Ω» 🕵\nline two\r\n\nend\n".as_bytes().to_vec()),
        ("100 KiB", random_bytes(100 * 1024, 0xB055_0000_0000_0001)),
    ]
}

pub(crate) fn python_command(python: &Path) -> Command {
    let mut command = Command::new(python);
    // Keep the user's environment from changing which `cryptography` is imported.
    command.env_remove("PYTHONPATH").env("PYTHONNOUSERSITE", "1").env("PYTHONDONTWRITEBYTECODE", "1");
    command
}

/// Runs `python -c CODE`; `Ok(stdout)` if it exits 0, else a description of what happened.
fn python_eval(python: &Path, code: &str) -> Result<String, String> {
    let out = python_command(python)
        .args(["-c", code])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "{} -c {code:?}: {}: {}",
            python.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The packages of requirements-dev.txt: `cryptography` (Fernet), PyPI
/// `spake2` (python-spake2, for the enrolment interop in identities.rs) and
/// `noiseprotocol` (the v2 interop in protocol_v2.rs).
const PROBE: &str =
    "import cryptography, cryptography.fernet, spake2, noise.connection; print(cryptography.__version__)";

/// Runs a setup step, turning a spawn failure or a non-zero exit into a message with its output.
fn run_step(what: &str, command: &mut Command) -> Result<(), String> {
    let out = command.stdin(Stdio::null()).output().map_err(|e| format!("{what}: cannot start: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

/// `target/py-venv`, created and filled from `requirements-dev.txt` unless it already works.
/// A lock file serialises this across test processes (e.g. under cargo-nextest).
fn venv_python(system_error: &str) -> Result<PathBuf, String> {
    let target = Path::new(ROOT).join("target");
    let venv = target.join("py-venv");
    let python = if cfg!(windows) { venv.join("Scripts").join("python.exe") } else { venv.join("bin").join("python") };
    let requirements = Path::new(ROOT).join("requirements-dev.txt");

    fs::create_dir_all(&target).map_err(|e| format!("{}: {e}", target.display()))?;
    let lock_path = target.join("py-venv.lock");
    let lock = File::create(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
    lock.lock().map_err(|e| format!("locking {}: {e}", lock_path.display()))?;

    if python_eval(&python, PROBE).is_ok() {
        return Ok(python);
    }
    let context = |step: String| {
        format!(
            "no Python with `cryptography` and `spake2` for the interop tests.\n\
             `python3` has none ({system_error}),\n\
             and building {} failed: {step}\n\
             Install Python 3 with venv and pip, or run: python3 -m pip install -r requirements-dev.txt",
            venv.display()
        )
    };
    // A venv whose interpreter no longer runs (its base Python moved) is rebuilt from scratch.
    if python_eval(&python, "pass").is_err() {
        run_step("python3 -m venv", Command::new("python3").args(["-m", "venv", "--clear"]).arg(&venv))
            .map_err(context)?;
    }
    run_step(
        "pip install -r requirements-dev.txt",
        python_command(&python)
            .args(["-m", "pip", "install", "--disable-pip-version-check", "--quiet", "-r"])
            .arg(&requirements),
    )
    .map_err(context)?;
    python_eval(&python, PROBE).map_err(context)?;
    Ok(python)
}

/// The Python to use, found once per test process; every test fails with the same message
/// if there is none.
pub(crate) fn python() -> &'static Path {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = PYTHON.get_or_init(|| {
        let system = Path::new("python3");
        let python = match python_eval(system, PROBE) {
            Ok(_) => system.to_path_buf(),
            Err(system_error) => venv_python(&system_error)?,
        };
        let version = python_eval(&python, PROBE)?;
        eprintln!("python_interop: {} with cryptography {version}", python.display());
        Ok(python)
    });
    match found {
        Ok(python) => python,
        Err(message) => panic!("{message}"),
    }
}

/// Runs `fernet_interop.py MODE KEY` with `lines` on stdin (one per line).
/// Stdin is written from another thread so a large output cannot deadlock the pipes.
fn run_script(mode: &str, key: &str, lines: &[String]) -> Output {
    let script = Path::new(ROOT).join("tests/python/fernet_interop.py");
    let mut child = python_command(python())
        .arg(&script)
        .args([mode, key])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", script.display()));
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input: String = lines.iter().map(|line| format!("{line}\n")).collect();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("wait for fernet_interop.py");
    // A write error only matters if the script succeeded anyway (it would have missed input).
    let written = writer.join().expect("stdin writer thread");
    if out.status.success() {
        written.expect("writing fernet_interop.py's stdin");
    }
    out
}

/// Runs the script, requires success, and returns its output lines (exactly one per input line).
fn run_script_ok(mode: &str, key: &str, lines: &[String]) -> Vec<String> {
    let out = run_script(mode, key, lines);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "fernet_interop.py {mode} failed: {}: {stderr}", out.status);
    let stdout = String::from_utf8(out.stdout).expect("fernet_interop.py prints ASCII");
    let result: Vec<String> = stdout.lines().map(str::to_owned).collect();
    assert_eq!(result.len(), lines.len(), "fernet_interop.py {mode}: one output line per input line");
    result
}

/// Fails with where two byte strings first differ, not just that they do.
fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
        panic!("{what}: got {} bytes, expected {}; first difference at byte {at}", got.len(), want.len());
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

#[test]
fn spyctl_tokens_open_in_python() {
    let key = FernetKey::generate().expect("OS randomness");
    let cases = plaintexts();
    let tokens: Vec<String> = cases.iter().map(|(_, plaintext)| key.seal(plaintext)).collect();

    let opened = run_script_ok("open", &key.to_base64(), &tokens);
    for ((name, plaintext), hex_text) in cases.iter().zip(&opened) {
        let decrypted = hex::decode(hex_text).unwrap_or_else(|e| panic!("{name}: Python printed bad hex: {e}"));
        assert_same(&format!("{name}: opened by Python"), &decrypted, plaintext);
    }

    // The harness can fail: Python refuses a spyctl token with its MAC damaged.
    let mut forged = tokens[4].clone().into_bytes();
    let last_data_char = forged.iter().rposition(|&c| c != b'=').expect("token has data");
    forged[last_data_char - 10] = if forged[last_data_char - 10] == b'A' { b'B' } else { b'A' };
    let out = run_script("open", &key.to_base64(), &[String::from_utf8(forged).unwrap()]);
    assert!(!out.status.success(), "Python opened a forged token");
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid token"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn python_tokens_open_in_spyctl() {
    let key = FernetKey::generate().expect("OS randomness");
    let cases = plaintexts();
    let hex_lines: Vec<String> = cases.iter().map(|(_, plaintext)| hex::encode(plaintext)).collect();

    let before = unix_now();
    let tokens = run_script_ok("seal", &key.to_base64(), &hex_lines);
    let after = unix_now();
    for ((name, plaintext), token) in cases.iter().zip(&tokens) {
        let opened = key.open(token.as_bytes(), Some(60)).unwrap_or_else(|e| panic!("{name}: spyctl refused: {e}"));
        assert_same(&format!("{name}: opened by spyctl"), &opened.plaintext, plaintext);
        assert!(
            (before..=after).contains(&opened.timestamp),
            "{name}: token timestamp {} outside [{before}, {after}]",
            opened.timestamp
        );
    }

    // One character changed anywhere (version, timestamp, IV, ciphertext, MAC) is refused.
    let token = &tokens[1];
    let data_len = token.trim_end_matches('=').len();
    for position in [0, 3, 12, 30, 50, 70, data_len / 2, data_len - 2] {
        let mut forged = token.clone().into_bytes();
        forged[position] = if forged[position] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        assert!(
            matches!(key.open(forged.as_bytes(), Some(60)), Err(TokenError::Invalid)),
            "character {position} changed, still accepted: {forged}"
        );
    }
    // A token from another key is refused too.
    let other = FernetKey::generate().expect("OS randomness");
    assert!(matches!(other.open(token.as_bytes(), Some(60)), Err(TokenError::Invalid)));
}
