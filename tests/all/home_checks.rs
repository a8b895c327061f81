//! The home is checked like OpenSSH checks `~/.ssh`, and the Boss never
//! follows a symlink inside it: a home or database other users may write, or
//! a home that belongs to another user, is refused with the command that fixes
//! it; a link planted in `files/` does not carry an agent's upload (whose
//! bytes and file id the agent chooses) outside the home.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use serde_json::Value;
use sha2::{Digest, Sha256};
use spyctl::crypto::FernetKey;
use spyctl::net::ids::random_id;
use spyctl::net::protocol::{self, ErrorCode, FileChunk, Header, Kind};

use crate::support::{FIELD_AGENT, RawClient, TestHome, fails, ok};

/// What an attacker would like to overwrite, outside the home.
const VICTIM: &[u8] = b"ssh-ed25519 AAAAC3Nza the owner's only key\n";

/// Commands that open the home: the database read-only, through a login, and
/// the key alone.
const OPENERS: [&[&str]; 3] = [&["db", "query", "--sql", "SELECT 1"], &["agent", "list"], &["whoami"]];

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Runs every opener and asserts each is refused with one line that says
/// `what` and ends with `hint`.
#[track_caller]
fn all_refused(home: &TestHome, what: &str, hint: &str) {
    for args in OPENERS {
        let err = fails(home.run(args), 1);
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
        assert!(err.contains(what), "{args:?}: {err}");
        assert!(err.trim_end().ends_with(&format!("({hint})")), "{args:?}: {err}");
    }
}

#[test]
fn a_home_others_may_write_is_refused_with_the_chmod_to_run() {
    let home = TestHome::initialised();
    home.login(FIELD_AGENT);
    chmod(home.path(), 0o777);
    let dir = home.path().display().to_string();
    all_refused(&home, "is writable by other users (mode 0777)", &format!("run `chmod 700 {dir}`"));
    // `db init` into such a home changes nothing: no key, no database.
    let loose = TestHome::new();
    chmod(loose.path(), 0o770);
    let err = fails(loose.run(&["db", "init"]), 1);
    assert!(err.contains(&format!("run `chmod 700 {}`", loose.path().display())), "{err}");
    assert_eq!(std::fs::read_dir(loose.path()).expect("home").count(), 0, "a refused init wrote nothing");
    // The fix the hint names works.
    chmod(home.path(), 0o700);
    ok(home.run(OPENERS[0]));
}

#[test]
fn a_database_others_may_write_is_refused_with_the_chmod_to_run() {
    let home = TestHome::initialised();
    home.login(FIELD_AGENT);
    chmod(&home.db_path(), 0o666);
    let db = home.db_path().display().to_string();
    all_refused(&home, "is writable by other users (mode 0666)", &format!("run `chmod 600 {db}`"));
    chmod(&home.db_path(), 0o600);
    ok(home.run(OPENERS[0]));
}

#[test]
fn a_home_owned_by_another_user_is_refused() {
    if !is_root() {
        // Giving a file away takes root; as ourselves there is no other user
        // to hand the home to.
        eprintln!(
            "skipped: chown to another user needs root, and these tests run as uid {}",
            rustix::process::geteuid().as_raw()
        );
        return;
    }
    let home = TestHome::initialised();
    home.login(FIELD_AGENT);
    let nobody = 65534;
    std::os::unix::fs::chown(home.path(), Some(nobody), Some(nobody)).expect("chown to nobody");
    let dir = home.path().display().to_string();
    all_refused(
        &home,
        "belongs to user 65534, not to you (user 0)",
        &format!("run `chown -R 0 {dir}` as root, or use a home you own (--home DIR)"),
    );
    std::os::unix::fs::chown(home.path(), Some(0), Some(0)).expect("chown back");
    ok(home.run(OPENERS[0]));
}

// ---------------------------------------------------------------------------
// Symlinks in files/
// ---------------------------------------------------------------------------

/// An initialised home, the field agent's id and wire key, a running Boss,
/// and a directory outside the home holding the victim file.
struct Upload {
    home: TestHome,
    agent: i64,
    key: FernetKey,
    outside: tempfile::TempDir,
    boss: crate::support::Boss,
}

fn upload_setup() -> Upload {
    let home = TestHome::initialised();
    home.login(FIELD_AGENT);
    let who: Value = serde_json::from_str(&ok(home.run(&["--json", "whoami"]))).expect("whoami --json");
    let agent = who["agent"]["id"].as_i64().expect("agent id");
    // The test plays the agent: its wire key comes from the home's master key.
    let master = spyctl::home::Home::at(home.path()).load_master_key().expect("master key");
    let conn = rusqlite::Connection::open_with_flags(home.db_path(), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open db");
    let key = spyctl::epochs::open_keyring(&master, &conn).expect("keys").agent_wire_key(agent);
    let outside = tempfile::tempdir().expect("outside");
    std::fs::write(outside.path().join("authorized_keys"), VICTIM).expect("victim");
    let boss = home.boss(&[]);
    Upload { home, agent, key, outside, boss }
}

impl Upload {
    fn agent_dir(&self) -> std::path::PathBuf {
        self.home.path().join("files").join(self.agent.to_string())
    }

    /// One chunk of an upload of `size` bytes, file id `file_id`, `data` at `offset`.
    fn chunk(&self, file_id: &str, offset: u64, size: u64, data: &[u8], sha256: Option<String>) -> String {
        let header = Header {
            id: random_id(),
            kind: Kind::FileChunk(FileChunk { file_id: file_id.into(), name: "keys.txt".into(), offset, size, sha256 }),
        };
        self.key.seal(&protocol::encode_message(&header, data))
    }

    /// The whole of `data` in one chunk.
    fn whole(&self, file_id: &str, data: &[u8]) -> String {
        self.chunk(file_id, 0, data.len() as u64, data, Some(hex::encode(Sha256::digest(data))))
    }

    #[track_caller]
    fn outside_unchanged(&self) {
        let victim = self.outside.path().join("authorized_keys");
        assert_eq!(std::fs::read(&victim).expect("victim"), VICTIM, "the file outside the home was written");
        let names: Vec<_> = std::fs::read_dir(self.outside.path())
            .expect("outside")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["authorized_keys"], "something was created outside the home");
    }

    /// After the link is gone, the same agent's upload is stored as usual.
    #[track_caller]
    fn still_accepts_uploads(&self, conn: &mut RawClient) {
        let id = random_id();
        let reply = conn.msg(self.agent, &self.whole(&id, b"a harmless file"));
        assert!(reply.is_ack(), "{reply:?}");
        assert!(self.agent_dir().join(&id).is_file(), "stored under its id");
        assert_eq!(crate::support::stored_file(&self.home, self.agent, &id), b"a harmless file");
    }
}

const EVIL: &[u8] = b"ssh-ed25519 AAAAC3Nza the attacker's key\n";

#[test]
fn an_agent_dir_linked_outside_the_home_is_not_written_through() {
    let up = upload_setup();
    std::fs::DirBuilder::new().recursive(true).create(up.home.path().join("files")).expect("files/");
    symlink(up.outside.path(), up.agent_dir()).expect("link files/<agent>");

    let mut conn = RawClient::connect(&up.boss.addr);
    let reply = conn.msg(up.agent, &up.whole("authorized_keys", EVIL));
    assert_eq!(reply.code(), Some(ErrorCode::Internal), "{reply:?}");
    up.outside_unchanged();

    std::fs::remove_file(up.agent_dir()).expect("unlink");
    up.still_accepts_uploads(&mut conn);
    up.outside_unchanged();
    let stopped = up.boss.stop_clean();
    assert!(stopped.panics.is_empty());
}

#[test]
fn a_linked_part_file_is_not_written_through() {
    let up = upload_setup();
    std::fs::DirBuilder::new().recursive(true).create(up.agent_dir()).expect("files/<agent>/");
    // The agent picks the file id, so it knows the part file's name.
    symlink(up.outside.path().join("authorized_keys"), up.agent_dir().join(".authorized_keys.part"))
        .expect("link .authorized_keys.part");

    let mut conn = RawClient::connect(&up.boss.addr);
    // The first chunk of a longer file (written in place, then ACKed), and a
    // whole file in one chunk (written, hashed, renamed): both refused.
    let first = up.chunk("authorized_keys", 0, 2 * EVIL.len() as u64, EVIL, None);
    for (what, token) in [("first chunk", first), ("whole file", up.whole("authorized_keys", EVIL))] {
        let reply = conn.msg(up.agent, &token);
        assert_eq!(reply.code(), Some(ErrorCode::Internal), "{what}: {reply:?}");
        up.outside_unchanged();
    }
    assert!(
        std::fs::symlink_metadata(up.agent_dir().join(".authorized_keys.part")).expect("link").is_symlink(),
        "the link is left as found"
    );

    std::fs::remove_file(up.agent_dir().join(".authorized_keys.part")).expect("unlink");
    up.still_accepts_uploads(&mut conn);
    up.outside_unchanged();
    up.boss.stop_clean();
}
