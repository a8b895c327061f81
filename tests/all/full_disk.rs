//! A full disk: a director can still log in and read the inbox, and the
//! lockout still holds, on a home whose file system has no free byte left.
//! The file system is a small tmpfs the test mounts itself (as root; else the
//! test is skipped with the reason printed) and unmounts in a guard.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{DIRECTOR, TestHome, fails, ok, stderr};

/// A mounted tmpfs, unmounted (lazily, so an open file cannot keep it) when dropped.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Mounts a tmpfs of `megabytes` at a new directory under `parent`, or says why not.
fn mount_tmpfs(parent: &Path, megabytes: u32) -> Result<Mounted, String> {
    let is_root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    if !is_root {
        return Err("not root, so no tmpfs can be mounted".into());
    }
    let dir = parent.join("mnt");
    std::fs::create_dir(&dir).map_err(|e| e.to_string())?;
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m,mode=0700"), "tmpfs"])
        .arg(&dir)
        .status()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if !status.success() {
        return Err(format!("mount -t tmpfs failed ({status}); a container without CAP_SYS_ADMIN?"));
    }
    Ok(Mounted(dir))
}

/// Writes to `path` until the file system says it is full.
fn fill(path: &Path) {
    let mut filler = std::fs::File::create(path).expect("filler");
    let block = vec![0xa5u8; 64 << 10];
    loop {
        if let Err(e) = filler.write_all(&block) {
            assert_eq!(e.raw_os_error(), Some(28), "expected ENOSPC, got {e}");
            break;
        }
    }
    // Then byte by byte, so not even a partial block is left.
    while filler.write_all(&[0]).is_ok() {}
    let _ = filler.sync_all();
}

fn login(home: &TestHome, name: &str, password: &str) -> std::process::Output {
    home.run_stdin(&["login", "--name", name, "--password-stdin"], format!("{password}\n").as_bytes())
}

#[test]
fn on_a_full_disk_a_director_logs_in_reads_the_inbox_and_lockout_holds() {
    let outer = tempfile::tempdir().expect("tempdir");
    let mounted = match mount_tmpfs(outer.path(), 24) {
        Ok(m) => m,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let home = TestHome { dir: tempfile::tempdir_in(&mounted.0).expect("home on the tmpfs") };
    ok(home.run(&["db", "init"]));
    home.login(DIRECTOR);
    ok(home.run(&["logout"]));
    fill(&mounted.0.join("filler"));

    // The director logs in and reads the inbox.
    let out = login(&home, DIRECTOR.name, DIRECTOR.password);
    assert!(out.status.success(), "login on a full disk: {}", stderr(&out));
    let inbox = ok(home.run(&["boss", "inbox"]));
    assert!(inbox.contains("item(s)"), "{inbox}");

    // Five wrong passwords still lock the name: the sixth, right, is refused.
    for attempt in 1..=5 {
        let err = fails(login(&home, DIRECTOR.name, "not-the-password"), 1);
        assert!(!err.contains("panicked"), "attempt {attempt}: {err}");
        assert!(!err.contains("full"), "attempt {attempt} was not recorded: {err}");
    }
    let err = fails(login(&home, DIRECTOR.name, DIRECTOR.password), 1);
    assert!(err.contains("too many failed attempts"), "{err}");
    drop(home);
}
