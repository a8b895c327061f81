//! Nothing is lost by accident: `db init --force` is confirmed and writes a
//! consistent backup (database and received files) first; a plain `db init`
//! never drops a table that holds rows; `db query --sql` stops at its time,
//! row and memory limits with one error line instead of hanging or aborting;
//! and a running Boss cannot dump core (its memory holds the master key).

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::support::{SAMPLE_AGENTS, TestHome, bin, fails, ok, stdout};

fn open_db(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("open database");
    conn.busy_timeout(Duration::from_secs(10)).expect("busy timeout");
    conn
}

fn count(path: &Path, table: &str) -> i64 {
    open_db(path).query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0)).expect("count")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

/// The one line of an error, asserting there is exactly one.
#[track_caller]
fn one_line(err: String) -> String {
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("spyctl: error: "), "{err}");
    err
}

/// A stored message and a received file, as the Boss leaves them.
fn add_message_and_file(home: &TestHome) -> PathBuf {
    open_db(&home.db_path())
        .execute("INSERT INTO Messages (AgentId, MessageId, ReceivedAt, Token) VALUES (1, 'm-1', 0, 'gAAAAtoken')", [])
        .expect("insert message");
    let file = home.path().join("files/1/f-1");
    std::fs::create_dir_all(file.parent().unwrap()).expect("mkdir files/1");
    std::fs::write(&file, b"the plans").expect("write file");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    file
}

/// Runs `cmd` and kills it if it has not ended within `limit`.
fn output_within(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let start = Instant::now();
    while child.try_wait().expect("try_wait").is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("wait");
            panic!("still running after {limit:?}; stderr: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("wait")
}

/// `spyctl db query --sql SQL` (plus `extra`) in `home` with its address
/// space capped at about 1 GB, the way a small VM or a container would cap
/// it: an unbounded allocation aborts the process instead of succeeding.
fn query_in_1gb(home: &TestHome, sql: &str, extra: &[&str]) -> Output {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "ulimit -v 1000000 && exec \"$@\"", "sh", bin(), "db", "query", "--sql", sql])
        .args(extra)
        .env("SPYCTL_HOME", home.path())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    output_within(cmd, Duration::from_secs(60))
}

// ------------------------------------------------------------------ db init

#[test]
fn force_writes_a_consistent_backup_of_the_database_and_files_and_says_where() {
    let home = TestHome::initialised();
    let file = add_message_and_file(&home);
    let out = ok(home.run(&["db", "init", "--force", "--yes"]));

    let backups = home.path().join("backups");
    let dirs: Vec<PathBuf> =
        std::fs::read_dir(&backups).expect("backups/ exists").map(|e| e.expect("entry").path()).collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let dir = &dirs[0];
    let name = dir.file_name().unwrap().to_str().unwrap();
    assert!(name.len() == 16 && name.ends_with('Z') && name.as_bytes()[8] == b'T', "not a UTC timestamp: {name}");
    assert!(out.contains(&dir.display().to_string()), "the backup's path is not printed:\n{out}");
    assert_eq!(mode(&backups), 0o700, "backups/");
    assert_eq!(mode(dir), 0o700, "{}", dir.display());
    let db = dir.join("spyctl.db");
    assert_eq!(mode(&db), 0o600, "the backup database");

    // The backup is a whole, consistent database with the old rows...
    let backup = open_db(&db);
    let check: String = backup.query_row("PRAGMA integrity_check", [], |r| r.get(0)).expect("integrity_check");
    assert_eq!(check, "ok");
    drop(backup);
    assert_eq!(count(&db, "Agents"), SAMPLE_AGENTS.len() as i64);
    assert_eq!(count(&db, "Messages"), 1);
    // ...and the received files, while the home starts over.
    assert_eq!(std::fs::read(dir.join("files/1/f-1")).expect("backed-up file"), b"the plans");
    assert!(!file.exists(), "the old received files are still in the home");
    assert_eq!(count(&home.db_path(), "Messages"), 0);

    // A second --force in the same second gets its own directory.
    ok(home.run(&["db", "init", "--force", "--yes"]));
    assert_eq!(std::fs::read_dir(&backups).expect("backups/").count(), 2);

    // --json names it too.
    let value: serde_json::Value =
        serde_json::from_str(&ok(home.run(&["--json", "db", "init", "--force", "--yes"]))).expect("json");
    assert!(value["backup"].as_str().is_some_and(|p| Path::new(p).join("spyctl.db").is_file()), "{value}");
}

#[test]
fn a_write_committed_during_a_force_init_is_in_the_backup_or_the_new_database() {
    let home = TestHome::initialised();
    add_message_and_file(&home);
    // 256 MiB under files/: the backup copies it after the database, which
    // leaves a window a concurrent writer would fall into unless the init
    // holds the write lock from before the backup to the new tables' commit.
    let big = home.path().join("files/2");
    std::fs::create_dir_all(&big).expect("mkdir");
    for i in 0..4 {
        std::fs::write(big.join(format!("big{i}")), vec![7u8; 64 << 20]).expect("write");
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (path, stop) = (home.db_path(), std::sync::Arc::clone(&stop));
        std::thread::spawn(move || {
            // A Boss's writer in miniature: commit one row at a time, and
            // remember each commit that succeeded (an ACK would follow it).
            let conn = open_db(&path);
            let mut committed = Vec::new();
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = format!("w-{i}");
                let sql = "INSERT INTO Messages (AgentId, MessageId, ReceivedAt, Token) VALUES (1, ?1, 0, 'x')";
                if conn.execute(sql, [&id]).is_ok() {
                    committed.push(id);
                }
                i += 1;
            }
            committed
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    ok(home.run(&["db", "init", "--force", "--yes"]));
    std::thread::sleep(Duration::from_millis(50));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let committed = writer.join().expect("writer");
    let backup_dir =
        std::fs::read_dir(home.path().join("backups")).expect("backups").next().expect("one").expect("dir");
    let ids = |path: &Path| -> std::collections::HashSet<String> {
        let conn = open_db(path);
        let mut stmt = conn.prepare("SELECT MessageId FROM Messages").expect("prepare");
        stmt.query_map([], |r| r.get(0)).expect("query").map(|r| r.expect("row")).collect()
    };
    let kept: std::collections::HashSet<String> =
        ids(&backup_dir.path().join("spyctl.db")).union(&ids(&home.db_path())).cloned().collect();
    let lost: Vec<&String> = committed.iter().filter(|id| !kept.contains(*id)).collect();
    assert!(committed.len() > 10, "the writer ran: {} commits", committed.len());
    assert!(
        lost.is_empty(),
        "{} of {} committed rows are in neither the backup nor the new database",
        lost.len(),
        committed.len()
    );
}

#[test]
fn force_without_yes_and_without_a_terminal_is_refused_and_changes_nothing() {
    let home = TestHome::initialised();
    add_message_and_file(&home);
    let before = std::fs::read(home.db_path()).expect("db");
    // stdin is /dev/null: no one to ask.
    let err = one_line(fails(home.run(&["db", "init", "--force"]), 2));
    assert!(err.contains("--yes"), "the refusal does not say to pass --yes: {err}");
    assert_eq!(std::fs::read(home.db_path()).expect("db"), before, "the database changed");
    assert!(!home.path().join("backups").exists(), "a refused --force wrote a backup");
    assert!(home.path().join("files/1/f-1").exists(), "a refused --force removed files/");
    // --yes alone is not a way to start over.
    fails(home.run(&["db", "init", "--yes"]), 2);
}

/// Every table `db init` drops: with rows in any one of them (and none in
/// Agents), a plain `db init` refuses, names the table, and changes nothing.
#[test]
fn plain_init_never_drops_a_table_that_holds_rows() {
    let rows = [
        ("Messages", "INSERT INTO Messages (AgentId, MessageId, ReceivedAt, Token) VALUES (1, 'm', 0, 't')"),
        (
            "Files",
            "INSERT INTO Files (AgentId, FileId, FileName, Size, Sha256, StoredAs, ReceivedAt) \
             VALUES (1, 'f', 'n', 1, 'h', '1/f', 0)",
        ),
        ("LoginFailures", "INSERT INTO LoginFailures (NameIndex, FailedAt) VALUES ('i', 0)"),
        ("LoginLockouts", "INSERT INTO LoginLockouts (NameIndex, LockedUntil) VALUES ('i', 0)"),
    ];
    let home = TestHome::initialised();
    open_db(&home.db_path()).execute("DELETE FROM Agents", []).expect("empty Agents");
    for (table, insert) in rows {
        open_db(&home.db_path()).execute(insert, []).expect("insert");
        let before = std::fs::read(home.db_path()).expect("db");
        let err = one_line(fails(home.run(&["db", "init"]), 1));
        assert!(err.contains(&format!("{table} (1 rows)")), "the refusal does not name {table}: {err}");
        assert!(err.contains("--force"), "{err}");
        assert_eq!(std::fs::read(home.db_path()).expect("db"), before, "{table}: the database changed");
        assert_eq!(count(&home.db_path(), table), 1, "{table} lost its row");
        open_db(&home.db_path()).execute(&format!("DELETE FROM {table}"), []).expect("clear");
    }
    // With every table empty, a plain init goes ahead (and never reuses ids).
    ok(home.run(&["db", "init"]));
    let low: i64 = open_db(&home.db_path()).query_row("SELECT min(AgentId) FROM Agents", [], |r| r.get(0)).unwrap();
    assert!(low > SAMPLE_AGENTS.len() as i64, "ids restarted at {low}");
}

// ------------------------------------------------------------ db query --sql

const ENDLESS: &str = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c)";

#[test]
fn a_query_that_never_ends_stops_at_its_time_budget() {
    let home = TestHome::initialised();
    let start = Instant::now();
    let mut cmd = home.cmd(&["db", "query", "--timeout", "1", "--sql", &format!("{ENDLESS} SELECT count(*) FROM c")]);
    cmd.env_remove("SPYCTL_HOME").env("SPYCTL_HOME", home.path());
    let out = output_within(cmd, Duration::from_secs(30));
    let err = one_line(fails(out, 1));
    assert!(err.contains("time budget of 1 s"), "{err}");
    assert!(err.contains("--timeout"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(15), "took {:?}", start.elapsed());
}

#[test]
fn an_endless_result_stops_at_the_row_cap() {
    let home = TestHome::initialised();
    let start = Instant::now();
    let out = output_within(
        home.cmd(&["db", "query", "--sql", &format!("{ENDLESS} SELECT x FROM c")]),
        Duration::from_secs(30),
    );
    let err = one_line(fails(out, 1));
    assert!(err.contains("more than 10000 rows"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(4), "the row cap did not stop it first: {:?}", start.elapsed());
    // --max-rows moves the cap; a result at the cap is printed whole.
    let five = format!("{ENDLESS} SELECT x FROM c LIMIT 5");
    assert!(stdout(&home.run(&["db", "query", "--max-rows", "5", "--sql", &five])).contains("(5 rows)"));
    let six = format!("{ENDLESS} SELECT x FROM c LIMIT 6");
    let err = one_line(fails(home.run(&["db", "query", "--max-rows", "5", "--sql", &six]), 1));
    assert!(err.contains("more than 5 rows") && err.contains("--max-rows"), "{err}");
}

#[test]
fn a_huge_value_is_one_error_line_not_an_abort() {
    let home = TestHome::initialised();
    let err = one_line(fails(query_in_1gb(&home, "SELECT zeroblob(400000000)", &[]), 1));
    assert!(err.contains("larger than 16 MiB"), "{err}");
}

#[test]
fn many_large_values_stop_at_the_result_cap_not_an_abort() {
    let home = TestHome::initialised();
    let sql =
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 60) SELECT zeroblob(8000000) FROM c";
    let err = one_line(fails(query_in_1gb(&home, sql, &[]), 1));
    assert!(err.contains("results exceed 64 MiB"), "{err}");
}

// -------------------------------------------------------------- core dumps

/// The soft core-file limit of process `pid`, from /proc/<pid>/limits.
fn core_limit(pid: u32) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read /proc/<pid>/limits");
    let line = limits.lines().find(|l| l.starts_with("Max core file size")).expect("core line").to_string();
    line.split_whitespace().nth(4).expect("soft limit").to_string()
}

#[test]
#[cfg(target_os = "linux")]
fn a_running_boss_cannot_dump_core() {
    // Start it from a shell that raises the core limit as far as allowed, so
    // a zero can only come from spyctl itself.
    let raise = "ulimit -S -c \"$(ulimit -H -c)\" && exec \"$@\"";
    let probe = Command::new("sh").args(["-c", raise, "sh", "cat", "/proc/self/limits"]).output().expect("probe");
    if stdout(&probe).lines().any(|l| l.starts_with("Max core file size") && l.split_whitespace().nth(4) == Some("0")) {
        eprintln!("skipped: this environment's hard core limit is 0, so the test cannot tell");
        return;
    }
    let home = TestHome::initialised();
    let mut child = Command::new("sh")
        .args(["-c", raise, "sh", bin(), "boss", "serve", "--bind", "127.0.0.1:0"])
        .env("SPYCTL_HOME", home.path())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn boss serve");
    // The address line comes once the master key is loaded and it listens.
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut first).expect("address line");
    let pid = child.id();
    let limit = core_limit(pid);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    assert!(first.contains("127.0.0.1:"), "boss did not start: {first:?}");
    assert!(status.contains("spyctl"), "not the spyctl process: {status}");
    assert_eq!(limit, "0", "the Boss runs with core dumps enabled");
}
