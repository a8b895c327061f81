//! The login session, like `flask.session`: a small claim set (agent id, level,
//! expiry) sealed as a Fernet token under the session key and kept in the
//! home's `session` file (0600). Anyone can delete it; nobody without the
//! master key can forge or extend it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::crypto::FernetKey;
use crate::error::{Error, Result};
use crate::home;

/// Default session lifetime: a working day.
pub const DEFAULT_TTL_SECS: u64 = 8 * 60 * 60;

/// What a session asserts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub agent_id: i64,
    /// The level at login; gated commands re-read the current one.
    pub level: u8,
    /// Unix seconds after which the session is void.
    pub expires_at: u64,
}

/// Why there is no usable session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionError {
    Missing,
    /// Tampered, truncated, or sealed under another home's key.
    Invalid,
    Expired,
}

impl std::fmt::Display for SessionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SessionError::Missing => "you are not logged in",
            SessionError::Invalid => "the session file is invalid (tampered with or from another home)",
            SessionError::Expired => "your session has expired",
        })
    }
}

impl std::error::Error for SessionError {}

/// Seals and writes the session file (0600, atomically).
pub fn write(path: &Path, key: &FernetKey, claims: &Claims) -> Result<()> {
    let json = serde_json::to_vec(claims).map_err(|e| Error::new(format!("cannot encode the session: {e}")))?;
    home::write_secret_file(path, key.seal(&json).as_bytes())
}

/// Reads and checks the session file at time `now`.
pub fn read(path: &Path, key: &FernetKey, now: u64) -> std::result::Result<Claims, SessionError> {
    if !path.exists() {
        return Err(SessionError::Missing);
    }
    let text = home::read_secret_file(path).map_err(|_| SessionError::Invalid)?;
    let opened = key.open_at(text.trim().as_bytes(), None, now).map_err(|_| SessionError::Invalid)?;
    let claims: Claims = serde_json::from_slice(&opened.plaintext).map_err(|_| SessionError::Invalid)?;
    if claims.expires_at <= now {
        return Err(SessionError::Expired);
    }
    Ok(claims)
}

/// Removes the session file; true if there was one.
pub fn remove(path: &Path) -> Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::new(format!("cannot remove {}: {e}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_expiry_and_tamper() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("session");
        let key = FernetKey::from_bytes(&[5u8; 32]);
        let now = crate::crypto::fernet::unix_now();
        let claims = Claims { agent_id: 3, level: 4, expires_at: now + 100 };
        write(&path, &key, &claims).expect("write");
        assert_eq!(read(&path, &key, now).expect("read"), claims);
        assert_eq!(read(&path, &key, now + 100), Err(SessionError::Expired));
        let other = FernetKey::from_bytes(&[6u8; 32]);
        assert_eq!(read(&path, &other, now), Err(SessionError::Invalid));
        assert!(remove(&path).expect("remove"));
        assert_eq!(read(&path, &key, now), Err(SessionError::Missing));
    }
}
