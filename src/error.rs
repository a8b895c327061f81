//! The error every command returns, and the one place where a failure from
//! any layer becomes what a person reads: what happened, why (the chain of
//! causes, kept typed until printed), what to do next, and the exit code.
//!
//! The layers below (`home`, `auth::session`, `db`, `registry`, `boss`,
//! `net`) return their own error enums and know nothing of this module. The
//! `From` impls here are the single mapping from those variants to hints: a
//! hint is chosen by matching a variant (or an `io::ErrorKind`), never by
//! reading an error's text.
//!
//! Every error in the crate follows one rule, so a cause is printed exactly
//! once: `Display` says what went wrong at that layer *without* the cause's
//! text, and `source()` returns the cause. A wrapper that shows its inner
//! error's text as its own (a transparent variant) returns the inner error's
//! `source()` instead.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::auth::session::SessionError;
use crate::boss::BossError;
use crate::boss::store::StoreError;
use crate::db::DbError;
use crate::db::limits::LimitError;
use crate::home::HomeError;
use crate::net::client::{AttemptError, FileSendError, SendError};
use crate::net::protocol::ErrorCode;
use crate::registry::{LoginError, RegistryError};

/// Exit code for a runtime failure (bad input, refused action, I/O).
pub const EXIT_FAILURE: u8 = 1;
/// Exit code for a command line that does not parse (clap uses the same).
pub const EXIT_USAGE: u8 = 2;

/// A cause kept for printing and for callers that inspect it.
pub type Cause = Box<dyn StdError + Send + Sync + 'static>;

/// A user-facing failure.
#[derive(Debug)]
pub enum Error {
    /// The command line asks for something that cannot be done as asked.
    Usage(String),
    /// Standard output was closed by its reader (`spyctl ... | head`): the
    /// reader has what it wanted, so stop quietly and exit 0.
    ClosedOutput,
    /// The command failed. `message` says what happened (it already describes
    /// `source` itself); the causes *below* `source` are appended when printed.
    Failed { message: String, hint: Option<Hint>, source: Option<Cause> },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What to do next. Every piece of advice spyctl gives is written here, in
/// [`Hint::fmt`], so the same situation always gets the same words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    PassHome,
    RunDbInit,
    RestoreMasterKey,
    RestoreIdentity,
    JoinAgain,
    CodeForm,
    AgentHome,
    AskNewCode,
    PinnedBossChanged,
    Chmod600(PathBuf),
    Chmod700(PathBuf),
    /// Give `path` (a directory tree if `dir`) to user `uid`.
    ChownTo {
        path: PathBuf,
        uid: u32,
        dir: bool,
    },
    CheckPermissions(PathBuf),
    RestoreDbBackup,
    UseNewerSpyctl,
    SameHomeKeys,
    PassForceToReinit,
    PassForceToOverwrite,
    SeeAgentList,
    Login,
    LoginAgain,
    LoginAsDirector,
    PortInUse,
    BossBusy,
    BossNotRunning,
    UnknownAgentOrKey,
    CheckClock,
    SendExample,
    PipePassword,
    UsePasswordStdin,
    PassAsFlag,
    BenchConnections,
    DemoHomeInUse,
    QueryTimeBudget,
    QueryRowCap,
    QuerySmaller,
    PassYes,
    TamperedDatabase,
    InboxShowWhole,
    SeeInboxIds,
    RotateFirst,
    SeeKeyStatus,
    ResumeRewrap,
    ResumeSend,
}

impl fmt::Display for Hint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hint::PassHome => f.write_str("pass --home DIR or set SPYCTL_HOME"),
            Hint::RunDbInit => f.write_str("run `spyctl db init` first"),
            Hint::RestoreMasterKey => f.write_str("restore master.key from your backup"),
            Hint::RotateFirst => f.write_str("run `spyctl key rotate` first; the older epoch can be retired after it"),
            Hint::SeeKeyStatus => f.write_str("see `spyctl key status`; run `spyctl key rotate --resume` to rewrap what is left"),
            Hint::ResumeRewrap => f.write_str("fix the cause, then run `spyctl key rotate --resume` to finish the rewrap"),
            Hint::RestoreIdentity => f.write_str(
                "restore identity.key from your backup; without it this identity is lost and must be enrolled anew",
            ),
            Hint::CodeForm => {
                f.write_str("a code looks like 6-maple-otter-violin: the AgentId, then three words from `agent enroll`")
            }
            Hint::AgentHome => f.write_str("pass --home DIR with the agent's own (empty or joined) home"),
            Hint::AskNewCode => f.write_str("ask a director for a new code: spyctl agent enroll N"),
            Hint::PinnedBossChanged => f.write_str(
                "check the address; if the Boss really has a new identity, compare fingerprints with its operator, \
                 remove boss.pin and join again with a new code",
            ),
            Hint::JoinAgain => f.write_str("ask a director for a new code (`spyctl agent enroll N`) and run `spyctl join` again"),
            Hint::Chmod600(path) => write!(f, "run `chmod 600 {}`", path.display()),
            Hint::Chmod700(path) => write!(f, "run `chmod 700 {}`", path.display()),
            Hint::ChownTo { path, uid, dir } => write!(
                f,
                "run `chown {}{uid} {}` as root, or use a home you own (--home DIR)",
                if *dir { "-R " } else { "" },
                path.display()
            ),
            Hint::CheckPermissions(path) => {
                write!(f, "check that you own {} and may read and write it (ls -l; chown or chmod)", path.display())
            }
            Hint::RestoreDbBackup => {
                f.write_str("restore it from a backup, or start over with `spyctl db init --force`")
            }
            Hint::UseNewerSpyctl => f.write_str("use a newer spyctl"),
            Hint::SameHomeKeys => f.write_str("the database and master.key must come from the same home"),
            Hint::PassForceToReinit => {
                f.write_str("pass --force to back it up under backups/, drop every table and start over")
            }
            Hint::PassForceToOverwrite => f.write_str("pass --force to overwrite it"),
            Hint::SeeAgentList => f.write_str("see `spyctl agent list`"),
            Hint::Login => f.write_str("run `spyctl login`"),
            Hint::LoginAgain => f.write_str("run `spyctl login` again"),
            Hint::LoginAsDirector => f.write_str("log in as a director (level 4-5)"),
            Hint::PortInUse => {
                f.write_str("another process uses that port; stop it or pass --bind 127.0.0.1:0 for a free port")
            }
            Hint::BossBusy => f.write_str(
                "the Boss is running but at its connection limit: retry later, or ask its operator to raise --max-connections",
            ),
            Hint::BossNotRunning => {
                f.write_str("is the Boss running? start it with `spyctl boss serve`, or pass --addr")
            }
            Hint::UnknownAgentOrKey => {
                f.write_str("the Boss does not know this agent or key: check --agent-id/--key-file, or log in again")
            }
            Hint::CheckClock => f.write_str("check this machine's clock"),
            Hint::SendExample => f.write_str("try `spyctl send \"Package delivered\"`"),
            Hint::PipePassword => f.write_str("pipe the password in, e.g. `printf '%s\\n' \"$PW\" | spyctl ...`"),
            Hint::UsePasswordStdin => f.write_str("use --password-stdin"),
            Hint::PassAsFlag => f.write_str("pass it as a flag, e.g. --name"),
            Hint::BenchConnections => f.write_str("is the Boss running with --max-connections at least --connections?"),
            Hint::QueryTimeBudget => f.write_str("narrow the query (WHERE, LIMIT) or give it more time with --timeout"),
            Hint::QueryRowCap => f.write_str("add a WHERE or a LIMIT, or raise --max-rows"),
            Hint::QuerySmaller => f.write_str("select fewer or smaller values (substr, length, LIMIT)"),
            Hint::PassYes => f.write_str("pass --yes to confirm without a terminal"),
            Hint::TamperedDatabase => f.write_str(
                "restore spyctl.db from a backup (db init --force keeps them under backups/) and find out who could write it",
            ),
            Hint::DemoHomeInUse => {
                f.write_str("omit --home (and SPYCTL_HOME) for a throw-away home, or give an empty directory")
            }
            Hint::InboxShowWhole => f.write_str("`spyctl boss inbox show ID` prints one whole"),
            Hint::SeeInboxIds => f.write_str("see the Id column of `spyctl boss inbox`"),
            Hint::ResumeSend => f.write_str(
                "once the Boss is reachable, run the same `spyctl send --file` again: it resumes from what the Boss \
                 already holds",
            ),
        }
    }
}

impl Error {
    /// A failure with nothing below it.
    pub fn failed(message: impl Into<String>) -> Self {
        Error::Failed { message: message.into(), hint: None, source: None }
    }

    /// A failure described by `message` whose cause is `source` (an I/O error
    /// met at the command layer, say): the cause's text is part of `message`.
    pub fn caused(message: impl Into<String>, source: impl StdError + Send + Sync + 'static) -> Self {
        Error::Failed { message: format!("{}: {source}", message.into()), hint: None, source: Some(Box::new(source)) }
    }

    /// A lower layer's error, shown as its own text with its causes after it.
    fn from_layer(source: impl StdError + Send + Sync + 'static, hint: Option<Hint>) -> Self {
        Error::Failed { message: source.to_string(), hint, source: Some(Box::new(source)) }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Error::Usage(message.into())
    }

    /// Adds (or replaces) the "what to do" part of a failure.
    pub fn hint(self, hint: Hint) -> Self {
        match self {
            Error::Failed { message, source, .. } => Error::Failed { message, hint: Some(hint), source },
            other => other,
        }
    }

    /// Puts `context` in front of what happened ("after 3 message(s): ...").
    pub fn context(self, context: impl fmt::Display) -> Self {
        match self {
            Error::Failed { message, hint, source } => {
                Error::Failed { message: format!("{context}: {message}"), hint, source }
            }
            Error::Usage(message) => Error::Usage(format!("{context}: {message}")),
            Error::ClosedOutput => Error::ClosedOutput,
        }
    }

    /// The process exit code this error ends with.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => EXIT_USAGE,
            Error::ClosedOutput => 0,
            Error::Failed { .. } => EXIT_FAILURE,
        }
    }

    /// The advice, if any.
    pub fn hint_text(&self) -> Option<&Hint> {
        match self {
            Error::Failed { hint, .. } => hint.as_ref(),
            _ => None,
        }
    }

    /// Walks the causes, outermost first, for callers that look for one kind.
    pub fn causes(&self) -> impl Iterator<Item = &(dyn StdError + 'static)> {
        let first: Option<&(dyn StdError + 'static)> = match self {
            Error::Failed { source: Some(source), .. } => Some(source.as_ref()),
            _ => None,
        };
        std::iter::successors(first, |&e| e.source())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(message) => f.write_str(message),
            Error::ClosedOutput => f.write_str("output closed"),
            Error::Failed { message, hint, source } => {
                f.write_str(message)?;
                // `message` describes `source`; what lies below it is new.
                let mut below = source.as_ref().and_then(|s| s.source());
                while let Some(cause) = below {
                    write!(f, ": {cause}")?;
                    below = cause.source();
                }
                if let Some(hint) = hint {
                    write!(f, " ({hint})")?;
                }
                Ok(())
            }
        }
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Error::Failed { source: Some(source), .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}

/// The first I/O error among `err`'s causes, for hints that depend on its kind.
fn io_kind(err: &(dyn StdError + 'static)) -> Option<io::ErrorKind> {
    std::iter::successors(Some(err), |&e| e.source()).find_map(|e| e.downcast_ref::<io::Error>()).map(io::Error::kind)
}

fn permission_hint(err: &(dyn StdError + 'static), path: &Path) -> Option<Hint> {
    (io_kind(err) == Some(io::ErrorKind::PermissionDenied)).then(|| Hint::CheckPermissions(path.to_path_buf()))
}

fn home_hint(err: &HomeError) -> Option<Hint> {
    match err {
        HomeError::NoDefaultHome => Some(Hint::PassHome),
        HomeError::NoDatabase { .. } => Some(Hint::RunDbInit),
        HomeError::MasterKeyMissing { .. } | HomeError::BadMasterKey { .. } => Some(Hint::RestoreMasterKey),
        HomeError::BadIdentity { .. } => Some(Hint::RestoreIdentity),
        HomeError::BadPin { .. } => Some(Hint::JoinAgain),
        HomeError::Loose { path, .. } | HomeError::Writable { path, dir: false, .. } => {
            Some(Hint::Chmod600(path.clone()))
        }
        HomeError::Writable { path, dir: true, .. } => Some(Hint::Chmod700(path.clone())),
        HomeError::NotOwned { path, uid, dir, .. } => Some(Hint::ChownTo { path: path.clone(), uid: *uid, dir: *dir }),
        HomeError::Read { path, .. } | HomeError::Write { path, .. } | HomeError::Create { path, .. } => {
            permission_hint(err, path)
        }
        HomeError::NotText { .. } | HomeError::Random(_) => None,
    }
}

impl From<HomeError> for Error {
    fn from(err: HomeError) -> Self {
        let hint = home_hint(&err);
        Error::from_layer(err, hint)
    }
}

impl From<SessionError> for Error {
    fn from(err: SessionError) -> Self {
        let hint = match &err {
            SessionError::Loose { path, .. } => Some(Hint::Chmod600(path.clone())),
            SessionError::Missing | SessionError::Invalid | SessionError::Expired => Some(Hint::Login),
            SessionError::Write(home) | SessionError::Remove(home) => home_hint(home),
            SessionError::Encode(_) => None,
        };
        Error::from_layer(err, hint)
    }
}

impl From<DbError> for Error {
    fn from(err: DbError) -> Self {
        let hint = match &err {
            DbError::Missing(_) | DbError::NotInitialised(_) => Some(Hint::RunDbInit),
            DbError::Corrupt { .. } => Some(Hint::RestoreDbBackup),
            DbError::CannotOpen { path, .. } => Some(Hint::CheckPermissions(path.clone())),
            DbError::TooNew { .. } => Some(Hint::UseNewerSpyctl),
            DbError::Limit(LimitError::Time(_)) => Some(Hint::QueryTimeBudget),
            DbError::Limit(LimitError::Rows(_)) => Some(Hint::QueryRowCap),
            DbError::Limit(LimitError::ValueSize(_) | LimitError::ResultSize(_) | LimitError::Memory(_)) => {
                Some(Hint::QuerySmaller)
            }
            DbError::Duplicate(_) | DbError::Sqlite(_) => None,
        };
        Error::from_layer(err, hint)
    }
}

impl From<RegistryError> for Error {
    fn from(err: RegistryError) -> Self {
        match err {
            RegistryError::Db(db) => db.into(),
            RegistryError::Undecryptable => Error::from_layer(err, Some(Hint::SameHomeKeys)),
            RegistryError::TamperedRow(_) | RegistryError::UntaggedAgain => {
                Error::from_layer(err, Some(Hint::TamperedDatabase))
            }
            other => Error::from_layer(other, None),
        }
    }
}

impl From<LoginError> for Error {
    fn from(err: LoginError) -> Self {
        match err {
            LoginError::Other(inner) => inner.into(),
            other => Error::from_layer(other, None),
        }
    }
}

impl From<StoreError> for Error {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Open(db) => db.into(),
            other => Error::from_layer(other, None),
        }
    }
}

impl From<BossError> for Error {
    fn from(err: BossError) -> Self {
        match err {
            BossError::Home(e) => e.into(),
            BossError::Store(e) => e.into(),
            BossError::Db(e) => e.into(),
            BossError::Registry(e) => e.into(),
            BossError::Keys(e) => e.into(),
            BossError::Listen(_) => {
                let hint = (io_kind(&err) == Some(io::ErrorKind::AddrInUse)).then_some(Hint::PortInUse);
                Error::from_layer(err, hint)
            }
        }
    }
}

impl From<SendError> for Error {
    fn from(err: SendError) -> Self {
        let hint = match &err {
            // A Boss at its connection cap answered `busy`: it is running, so
            // "start it" would mislead.
            SendError::Unreachable { last: AttemptError::Refused { code: ErrorCode::Busy, .. }, .. } => {
                Some(Hint::BossBusy)
            }
            SendError::Unreachable { .. } => Some(Hint::BossNotRunning),
            SendError::Refused { code: ErrorCode::Auth, .. } => Some(Hint::UnknownAgentOrKey),
            SendError::Refused { code: ErrorCode::Expired, .. } => Some(Hint::CheckClock),
            _ => None,
        };
        Error::from_layer(err, hint)
    }
}

impl From<crate::net::join::JoinError> for Error {
    fn from(err: crate::net::join::JoinError) -> Self {
        use crate::net::join::JoinError;
        let hint = match &err {
            JoinError::Io { .. } => Some(Hint::BossNotRunning),
            JoinError::WrongCode | JoinError::Refused { code: ErrorCode::Auth, .. } => Some(Hint::AskNewCode),
            JoinError::PinMismatch { .. } => Some(Hint::PinnedBossChanged),
            JoinError::Refused { code: ErrorCode::Busy, .. } => Some(Hint::BossBusy),
            _ => None,
        };
        Error::from_layer(err, hint)
    }
}

impl From<crate::resumable::ResumeError> for Error {
    fn from(err: crate::resumable::ResumeError) -> Self {
        use crate::resumable::ResumeError;
        match err {
            // Kept in the journal: the usual hint for the failure, then how to resume.
            ResumeError::Send { source, resumable: true } => {
                use crate::net::v2_client::V2Error;
                let resumable = matches!(
                    &source,
                    FileSendError::Send(SendError::Unreachable { .. })
                        | FileSendError::V2(V2Error::Io(_) | V2Error::Closed | V2Error::Busy(_))
                );
                let err = Error::from(source);
                if resumable { err.hint(Hint::ResumeSend) } else { err }
            }
            ResumeError::Send { source, resumable: false } => source.into(),
            other => Error::from_layer(other, None),
        }
    }
}

impl From<FileSendError> for Error {
    fn from(err: FileSendError) -> Self {
        match err {
            FileSendError::Send(e) => e.into(),
            FileSendError::V2(e) => e.into(),
            other => Error::from_layer(other, None),
        }
    }
}

impl From<crate::backup::BackupError> for Error {
    fn from(err: crate::backup::BackupError) -> Self {
        use crate::backup::BackupError;
        let hint = match &err {
            BackupError::CreateDir { path, .. } | BackupError::CopyFiles { path, .. } => permission_hint(&err, path),
            BackupError::Database { .. } => None,
        };
        Error::from_layer(err, hint)
    }
}

impl From<crate::net::v2_client::V2Error> for Error {
    fn from(err: crate::net::v2_client::V2Error) -> Self {
        use crate::net::v2_client::V2Error;
        let hint = match &err {
            V2Error::Io(_) | V2Error::Closed => Some(Hint::BossNotRunning),
            V2Error::Handshake(_) => Some(Hint::PinnedBossChanged),
            V2Error::Refused { code: ErrorCode::Auth, .. } => Some(Hint::JoinAgain),
            V2Error::Unauthenticated(_) | V2Error::Refused { .. } | V2Error::Busy(_) => None,
        };
        Error::from_layer(err, hint)
    }
}

impl From<crate::epochs::EpochError> for Error {
    fn from(err: crate::epochs::EpochError) -> Self {
        use crate::epochs::EpochError;
        match err {
            EpochError::Db(db) => db.into(),
            EpochError::Registry(registry) => registry.into(),
            EpochError::Missing(_) => Error::from_layer(err, Some(Hint::RestoreMasterKey)),
            EpochError::WrongKey(_) => Error::from_layer(err, Some(Hint::SameHomeKeys)),
            EpochError::Newest(_) => Error::from_layer(err, Some(Hint::RotateFirst)),
            EpochError::InUse { .. } | EpochError::NotLive(_) => Error::from_layer(err, Some(Hint::SeeKeyStatus)),
            EpochError::Files(_) | EpochError::Io(_) => Error::from_layer(err, Some(Hint::ResumeRewrap)),
            EpochError::Random(_) => Error::from_layer(err, None),
        }
    }
}

impl From<crate::core_dumps::CoreDumpError> for Error {
    fn from(err: crate::core_dumps::CoreDumpError) -> Self {
        Error::from_layer(err, None)
    }
}

impl From<crate::boss::files::ChunkError> for Error {
    fn from(err: crate::boss::files::ChunkError) -> Self {
        Error::from_layer(err, None)
    }
}

impl From<rusqlite::Error> for Error {
    fn from(err: rusqlite::Error) -> Self {
        DbError::from(err).into()
    }
}

impl From<io::Error> for Error {
    fn from(err: io::Error) -> Self {
        Error::caused("I/O error", err)
    }
}

impl From<crate::crypto::password::HashError> for Error {
    fn from(err: crate::crypto::password::HashError) -> Self {
        Error::from_layer(err, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_below_the_message_are_printed_once_with_the_hint_last() {
        let io = io::Error::new(io::ErrorKind::PermissionDenied, "Permission denied");
        let err = Error::from(HomeError::Read { path: "/h/master.key".into(), source: io });
        assert_eq!(
            err.to_string(),
            "cannot read /h/master.key: Permission denied (check that you own /h/master.key and may read and write it (ls -l; chown or chmod))"
        );
        assert_eq!(err.exit_code(), EXIT_FAILURE);
        assert!(err.causes().any(|c| c.downcast_ref::<io::Error>().is_some()), "the io::Error is kept");
    }

    #[test]
    fn exit_codes_follow_the_variant() {
        assert_eq!(Error::usage("x").exit_code(), EXIT_USAGE);
        assert_eq!(Error::ClosedOutput.exit_code(), 0);
        assert_eq!(Error::failed("x").exit_code(), EXIT_FAILURE);
    }
}
