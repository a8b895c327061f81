//! The error every command returns: what happened, what to do next, and the
//! exit code. Printed once, at the top, as one line (plus an optional hint).

use std::fmt;

/// Exit code for a runtime failure (bad input, refused action, I/O).
pub const EXIT_FAILURE: u8 = 1;
/// Exit code for a command line that does not parse (clap uses the same).
pub const EXIT_USAGE: u8 = 2;

/// A user-facing failure.
#[derive(Debug)]
pub struct Error {
    /// What happened, one line, no trailing period.
    pub message: String,
    /// What to do about it, if there is something to do.
    pub hint: Option<String>,
    pub exit_code: u8,
    /// The reader went away (`spyctl ... | head`): stop quietly, exit 0.
    pub closed_output: bool,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(message: impl Into<String>) -> Self {
        Error { message: message.into(), hint: None, exit_code: EXIT_FAILURE, closed_output: false }
    }

    /// Adds the "what to do" part.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Standard output was closed by its reader.
    pub fn closed_output() -> Self {
        Error { exit_code: 0, closed_output: true, ..Error::new("output closed") }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Error { exit_code: EXIT_USAGE, ..Error::new(message) }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

impl From<rusqlite::Error> for Error {
    fn from(err: rusqlite::Error) -> Self {
        Error::new(format!("database error: {err}"))
    }
}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        Error::new(format!("I/O error: {err}"))
    }
}

impl From<crate::crypto::password::HashError> for Error {
    fn from(err: crate::crypto::password::HashError) -> Self {
        Error::new(err.to_string())
    }
}

impl From<getrandom::Error> for Error {
    fn from(err: getrandom::Error) -> Self {
        Error::new(format!("the OS random number generator failed: {err}"))
    }
}

impl From<crate::db::DbError> for Error {
    fn from(err: crate::db::DbError) -> Self {
        use crate::db::DbError;
        let hint = match &err {
            DbError::Missing(_) | DbError::NotInitialised(_) => Some("run `spyctl db init` first"),
            DbError::Corrupt(..) => Some("restore it from a backup, or start over with `spyctl db init --force`"),
            DbError::TooNew { .. } => Some("use a newer spyctl"),
            DbError::Duplicate | DbError::Sqlite(_) => None,
        };
        let error = Error::new(err.to_string());
        match hint {
            Some(h) => error.hint(h),
            None => error,
        }
    }
}

impl From<crate::registry::RegistryError> for Error {
    fn from(err: crate::registry::RegistryError) -> Self {
        use crate::registry::RegistryError;
        match err {
            RegistryError::Db(db) => db.into(),
            RegistryError::Undecryptable => {
                Error::new(err.to_string()).hint("the database and master.key must come from the same home")
            }
            other => Error::new(other.to_string()),
        }
    }
}

impl From<crate::auth::session::SessionError> for Error {
    fn from(err: crate::auth::session::SessionError) -> Self {
        use crate::auth::session::SessionError;
        let hint = match &err {
            // As for a loose master.key (`home::check_private`).
            SessionError::Loose { path, .. } => format!("run `chmod 600 {}`", path.display()),
            _ => "run `spyctl login`".to_string(),
        };
        Error::new(err.to_string()).hint(hint)
    }
}
