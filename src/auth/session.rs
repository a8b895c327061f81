//! The login session, like `flask.session`: a small claim set (agent id, level,
//! expiry) sealed as a Fernet token under the session key and kept in the
//! home's `session` file (0600). Anyone can delete it; nobody without the
//! master key can forge or extend it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::crypto::FernetKey;
use crate::home::{self, HomeError};

/// Default session lifetime: a working day.
pub const DEFAULT_TTL_SECS: u64 = 8 * 60 * 60;
/// Longest session a login may ask for: a week.
pub const MAX_TTL_SECS: u64 = 7 * 24 * 60 * 60;

/// What a session asserts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub agent_id: i64,
    /// The level at login; gated commands re-read the current one.
    pub level: u8,
    /// Unix seconds after which the session is void.
    pub expires_at: u64,
    /// The agent's key generation at login: `agent revoke` bumps it, which
    /// voids every session made before. (Absent in older sessions: 0.)
    #[serde(default)]
    pub key_generation: u32,
}

/// Why there is no usable session, or it could not be written or removed.
#[derive(Debug)]
pub enum SessionError {
    Missing,
    /// Group or others may access the file (`mode` holds its permission bits):
    /// refused like a loose `master.key`, whatever the token inside.
    Loose {
        path: PathBuf,
        mode: u32,
    },
    /// Tampered, truncated, unreadable, or sealed under another home's key.
    Invalid,
    Expired,
    Encode(serde_json::Error),
    Write(HomeError),
    Remove(HomeError),
}

impl std::fmt::Display for SessionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionError::Missing => f.write_str("you are not logged in"),
            SessionError::Loose { path, mode } => write!(
                f,
                "the session file {} is accessible by other users (mode {mode:04o}); refusing to use it",
                path.display()
            ),
            SessionError::Invalid => f.write_str("the session file is invalid (tampered with or from another home)"),
            SessionError::Expired => f.write_str("your session has expired"),
            SessionError::Encode(_) => f.write_str("cannot encode the session"),
            SessionError::Write(_) => f.write_str("cannot save the session"),
            SessionError::Remove(_) => f.write_str("cannot remove the session"),
        }
    }
}

impl std::error::Error for SessionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SessionError::Encode(e) => Some(e),
            SessionError::Write(e) | SessionError::Remove(e) => Some(e),
            SessionError::Missing | SessionError::Loose { .. } | SessionError::Invalid | SessionError::Expired => None,
        }
    }
}

/// Seals and writes the session file (0600, atomically).
pub fn write(path: &Path, key: &FernetKey, claims: &Claims) -> Result<(), SessionError> {
    let json = serde_json::to_vec(claims).map_err(SessionError::Encode)?;
    home::write_secret_file(path, key.seal(&json).as_bytes()).map_err(SessionError::Write)
}

/// Reads and checks the session file at time `now`.
pub fn read(path: &Path, key: &FernetKey, now: u64) -> std::result::Result<Claims, SessionError> {
    read_any(path, std::slice::from_ref(key), now).map(|(claims, _)| claims)
}

/// Reads and checks the session file at time `now` under any of `keys` (one
/// per live key epoch, newest first); also says which one opened it, so a
/// session from before a `key rotate` can be sealed again under the newest.
pub fn read_any(path: &Path, keys: &[FernetKey], now: u64) -> std::result::Result<(Claims, usize), SessionError> {
    // A loose file gets its own answer (and fix), as a loose master.key does;
    // anything else unreadable is as good as a forged session.
    let text = home::read_secret_file(path).map_err(|e| match e {
        HomeError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound => SessionError::Missing,
        HomeError::Loose { path, mode } => SessionError::Loose { path, mode },
        _ => SessionError::Invalid,
    })?;
    let (which, opened) = keys
        .iter()
        .enumerate()
        .find_map(|(i, key)| key.open_at(text.trim().as_bytes(), None, now).ok().map(|o| (i, o)))
        .ok_or(SessionError::Invalid)?;
    let claims: Claims = serde_json::from_slice(&opened.plaintext).map_err(|_| SessionError::Invalid)?;
    if claims.expires_at <= now {
        return Err(SessionError::Expired);
    }
    Ok((claims, which))
}

/// Removes the session file; true if there was one.
pub fn remove(path: &Path) -> Result<bool, SessionError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(SessionError::Remove(HomeError::Write { path: path.to_path_buf(), source })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn round_trip_expiry_and_tamper() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("session");
        let key = FernetKey::from_bytes(&[5u8; 32]);
        let now = crate::crypto::fernet::unix_now();
        let claims = Claims { agent_id: 3, level: 4, expires_at: now + 100, key_generation: 0 };
        write(&path, &key, &claims).expect("write");
        assert_eq!(read(&path, &key, now).expect("read"), claims);
        assert!(matches!(read(&path, &key, now + 100), Err(SessionError::Expired)));
        let other = FernetKey::from_bytes(&[6u8; 32]);
        assert!(matches!(read(&path, &other, now), Err(SessionError::Invalid)));
        // A good token in a file others can read: refused as loose, not invalid.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(read(&path, &key, now), Err(SessionError::Loose { path: p, mode: 0o644 }) if p == path));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(read(&path, &key, now).expect("read again"), claims);
        assert!(remove(&path).expect("remove"));
        assert!(matches!(read(&path, &key, now), Err(SessionError::Missing)));
    }
}
