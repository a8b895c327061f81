//! `boss export ID --out DIR`: a signed message or file, with what stock
//! minisign needs to check the agent's signature offline (PROTOCOL.md,
//! "Exports that stock minisign verifies").
//!
//! DIR gets `body`, `statement` (what the agent signed; it names the body's
//! SHA-256), `statement.minisig` and `agent.pub`. The signature is checked
//! here first and nothing is written for one that does not verify; the four
//! files are created new, and removed again if any step fails, so DIR never
//! holds half an export.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::auth::roles::Action;
use crate::boss::files::FileAssembler;
use crate::boss::verify::{self, Evidence, GlobalSignature, SignatureStatus};
use crate::crypto::minisign;
use crate::error::{Error, Hint, Result};
use crate::output::visible;

use super::Ctx;
use super::session::require;

/// The names written in DIR.
const BODY: &str = "body";
const STATEMENT: &str = "statement";
const SIGNATURE: &str = "statement.minisig";
const PUBLIC_KEY: &str = "agent.pub";

/// One inbox entry to export, found and checked.
struct Found {
    kind: &'static str,
    agent_id: i64,
    status: SignatureStatus,
    evidence: Option<Evidence>,
    /// A text message's body; a file's is streamed from its sealed copy.
    text: Option<Vec<u8>>,
    /// A file's recorded SHA-256, which the statement names.
    file_sha256: Option<String>,
}

pub fn export(ctx: &mut Ctx<'_>, id: &str, out: &Path) -> Result<()> {
    let gate = require(ctx, Action::ReadInbox)?;
    let identity = ctx.home.has_identity().then(|| ctx.home.load_identity()).transpose()?;
    let mut found = Vec::new();
    for m in &crate::db::messages::by_message_id(&gate.conn, id)? {
        let checked = verify::check(&gate.conn, &gate.keyring, identity.as_ref(), m)?;
        found.push(Found {
            kind: "message",
            agent_id: m.agent_id,
            status: checked.status,
            evidence: checked.evidence,
            text: checked.body,
            file_sha256: None,
        });
    }
    let boss = identity.as_ref().map(crate::crypto::IdentityKeys::public);
    for f in &crate::db::messages::files_with_id(&gate.conn, id)? {
        let (status, evidence) = verify::check_file(&gate.conn, boss.as_ref(), f)?;
        found.push(Found {
            kind: "file",
            agent_id: f.agent_id,
            status,
            evidence,
            text: None,
            file_sha256: Some(f.sha256.clone()),
        });
    }
    let shown = visible(id);
    let entry = match found.as_mut_slice() {
        [] => return Err(Error::failed(format!("no message or file with id {shown}")).hint(Hint::SeeInboxIds)),
        [one] => one,
        more => return Err(Error::failed(format!("{} entries have the id {shown}; nothing was written", more.len()))),
    };
    let (kind, agent) = (entry.kind, entry.agent_id);
    let evidence = match (&entry.status, entry.evidence.take()) {
        (SignatureStatus::Verified { .. }, Some(evidence)) => evidence,
        (SignatureStatus::Verified { global: GlobalSignature::Bad, .. }, _) => {
            return Err(Error::failed(format!(
                "{kind} {shown} from agent {agent} is signed, but the global signature minisign needs does not \
                 verify (the agent's client sent a bad one): nothing was written"
            )));
        }
        (SignatureStatus::Verified { .. }, None) => {
            return Err(Error::failed(format!(
                "{kind} {shown} from agent {agent} was stored without the global signature minisign needs \
                 (sent before exports existed); `boss verify` still checks it"
            )));
        }
        (SignatureStatus::Unsigned, _) => {
            return Err(Error::failed(format!(
                "{kind} {shown} from agent {agent} is not signed (it came over the v1 PSK channel): nothing to export"
            )));
        }
        (status, _) => return Err(Error::failed(format!("{kind} {shown} from agent {agent}: {}", status.label()))),
    };
    let paths = Paths::new(out);
    let written = paths.write(|paths| {
        write_new(&paths.statement, 0o644, &evidence.statement)?;
        let fingerprint = evidence.signer.fingerprint();
        let comment = format!("spyctl agent {agent} key {fingerprint}");
        let signature_file =
            minisign::signature_file(&evidence.signer.ed25519, &evidence.statement, &evidence.signatures, &comment);
        write_new(&paths.signature, 0o644, signature_file.as_bytes())?;
        write_new(&paths.public_key, 0o644, minisign::public_key_file(&evidence.signer.ed25519, &comment).as_bytes())?;
        match (&entry.text, &entry.file_sha256) {
            (Some(text), _) => write_new(&paths.body, 0o600, text),
            (None, Some(recorded)) => {
                let mut file = create_new(&paths.body, 0o600)?;
                let files = FileAssembler::new(ctx.home.files_dir(), gate.keyring.files_keys());
                let (_, sha256) = files.export(agent, id, &mut file).map_err(Error::from)?;
                // The statement names the recorded hash; the body must be that file.
                if &sha256 != recorded {
                    return Err(Error::failed("the stored file does not match the SHA-256 the agent signed"));
                }
                file.sync_all().map_err(|e| Error::caused(format!("cannot write {}", paths.body.display()), e))
            }
            (None, None) => Err(Error::failed("the message cannot be opened with this home's keys")),
        }
    });
    written.map_err(|e| e.context(format!("nothing was left in {}", out.display())))?;
    let verified = entry.status.label();
    if ctx.json {
        return ctx.json(serde_json::json!({
            "id": id, "kind": kind, "agent_id": agent, "out": out, "signature": verified,
            "files": [BODY, STATEMENT, SIGNATURE, PUBLIC_KEY],
        }));
    }
    ctx.say(&format!("Exported {kind} {shown} from agent {agent} ({verified}) to {}.", out.display()))?;
    ctx.say(&format!(
        "Check it offline: minisign -V -p {pk} -m {st}, then sha256sum {body} must match the statement's sha256 line.",
        pk = paths.public_key.display(),
        st = paths.statement.display(),
        body = paths.body.display()
    ))
}

/// The four files of an export.
struct Paths {
    dir: PathBuf,
    body: PathBuf,
    statement: PathBuf,
    signature: PathBuf,
    public_key: PathBuf,
}

impl Paths {
    fn new(dir: &Path) -> Self {
        Paths {
            dir: dir.to_path_buf(),
            body: dir.join(BODY),
            statement: dir.join(STATEMENT),
            signature: dir.join(SIGNATURE),
            public_key: dir.join(PUBLIC_KEY),
        }
    }

    fn all(&self) -> [&PathBuf; 4] {
        [&self.body, &self.statement, &self.signature, &self.public_key]
    }

    /// Runs `write` after making DIR (0700) if needed and checking no file
    /// of the export is there yet; on a failure removes what it created.
    fn write(&self, write: impl FnOnce(&Self) -> Result<()>) -> Result<()> {
        let made_dir = !self.dir.exists();
        if made_dir {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)
                .map_err(|e| Error::caused(format!("cannot create {}", self.dir.display()), e))?;
        }
        if let Some(there) = self.all().into_iter().find(|p| p.symlink_metadata().is_ok()) {
            return Err(Error::failed(format!("{} exists; nothing was written", there.display())));
        }
        let result = write(self);
        if result.is_err() {
            for path in self.all() {
                let _ = std::fs::remove_file(path);
            }
            if made_dir {
                let _ = std::fs::remove_dir(&self.dir);
            }
        }
        result
    }
}

fn create_new(path: &Path, mode: u32) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| Error::caused(format!("cannot create {}", path.display()), e))
}

fn write_new(path: &Path, mode: u32, bytes: &[u8]) -> Result<()> {
    let mut file = create_new(path, mode)?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::caused(format!("cannot write {}", path.display()), e))
}
