//! Errors keep their cause all the way to the user: an unreadable database is
//! reported as a permission problem with the OS's own words, never as a
//! damaged file whose fix (`db init --force`) would destroy the data.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use crate::support::{TestHome, fails, ok};

/// The uid tests switch to when they run as root (root ignores file modes).
const NOBODY: u32 = 65534;

/// Runs `spyctl args` in `home` as a user that may read the home and its
/// master key but not the database: as `nobody` through `setpriv` when the
/// tests run as root, else as ourselves after `chmod 000` on the database.
fn run_without_db_access(home: &TestHome, args: &[&str]) -> Option<std::process::Output> {
    let db = home.db_path();
    let is_root =
        std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false);
    if !is_root {
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o000)).expect("chmod db");
        return Some(home.run(args));
    }
    let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"].into_iter().find(|p| std::path::Path::new(p).exists());
    let Some(setpriv) = setpriv else {
        eprintln!("skipped: running as root and setpriv (util-linux) is not installed");
        return None;
    };
    // The home and its key belong to nobody; the database stays root's, 0600.
    let chown = |path: &std::path::Path| {
        std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).expect("chown to nobody");
    };
    chown(home.path());
    chown(&home.path().join("master.key"));
    let mut cmd = Command::new(setpriv);
    cmd.args(["--reuid", &NOBODY.to_string(), "--regid", &NOBODY.to_string(), "--clear-groups", "--"]);
    let inner = home.cmd(args);
    cmd.arg(inner.get_program()).args(inner.get_args());
    for (key, value) in inner.get_envs() {
        match value {
            Some(v) => cmd.env(key, v),
            None => cmd.env_remove(key),
        };
    }
    Some(cmd.stdin(std::process::Stdio::null()).output().expect("spawn setpriv"))
}

#[test]
fn an_unreadable_database_says_permission_denied_and_never_suggests_force() {
    let home = TestHome::initialised();
    for args in [&["db", "query", "--sql", "SELECT 1"][..], &["db", "query"][..]] {
        let Some(out) = run_without_db_access(&home, args) else { return };
        let err = fails(out, 1);
        assert!(err.contains("Permission denied"), "{args:?}: {err}");
        assert!(err.contains("cannot open the database"), "{args:?}: {err}");
        assert!(!err.contains("--force"), "{args:?}: a permission problem must not suggest --force: {err}");
        assert!(!err.contains("not a usable"), "{args:?}: not reported as damaged: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    }
    // Give the database back: nothing was lost.
    std::fs::set_permissions(home.db_path(), std::fs::Permissions::from_mode(0o600)).expect("chmod back");
    // As root the home and key go back to root too: a key owned by someone
    // else is refused like a loose one (see home_checks).
    let _ = std::os::unix::fs::chown(home.path(), Some(0), Some(0));
    let _ = std::os::unix::fs::chown(home.path().join("master.key"), Some(0), Some(0));
    let out = ok(home.run(&["db", "query", "--sql", "SELECT count(*) AS n FROM Agents"]));
    assert!(out.contains('8'), "{out}");
}
