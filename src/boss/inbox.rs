//! Reading the Boss's inbox back: each stored token opened with its sender's
//! wire key, each file name with the at-rest key. No TTL applies here: the
//! tokens were fresh when they arrived, and the inbox keeps them.

use rusqlite::Connection;
use serde::Serialize;

use crate::crypto::{IdentityKeys, KeyRing};
use crate::db::{DbError, agents, messages};
use crate::registry::RegistryKeys;

/// One inbox entry, decrypted.
#[derive(Debug, Clone, Serialize)]
pub struct InboxEntry {
    pub received_at: i64,
    pub agent_id: i64,
    /// The sender's name, or None if the agent has since been removed.
    pub agent_name: Option<String>,
    /// "text" or "file".
    pub kind: &'static str,
    /// The text, or the file's name.
    pub content: String,
    /// File size in bytes (files only).
    pub size: Option<i64>,
    /// Where the file is, relative to the home's files/ (files only).
    pub stored_as: Option<String>,
    pub id: String,
    /// Messages: "unsigned" (v1 PSK channel), "verified FINGERPRINT", or
    /// "INVALID: why" (see `boss::verify`). Files: not signed yet.
    pub signature: String,
}

/// Every message and file, oldest first. `boss` (the home's identity) opens
/// and checks enrolled agents' signed messages.
pub fn read(conn: &Connection, keyring: &KeyRing, boss: Option<&IdentityKeys>) -> Result<Vec<InboxEntry>, DbError> {
    let keys = RegistryKeys::derive(keyring);
    let mut names = std::collections::HashMap::new();
    let mut name_of = |agent_id: i64| -> Result<Option<String>, DbError> {
        if let Some(name) = names.get(&agent_id) {
            return Ok(Option::<String>::clone(name));
        }
        let name = agents::by_id(conn, agent_id)?.and_then(|a| keys.reveal(&a.name).ok());
        names.insert(agent_id, name.clone());
        Ok(name)
    };
    let mut entries = Vec::new();
    for m in messages::all_messages(conn)? {
        let checked = super::verify::check(conn, keyring, boss, &m)?;
        let content = checked
            .body
            .map(|body| String::from_utf8_lossy(&body).into_owned())
            .unwrap_or_else(|| "(cannot be decrypted with this home's key)".to_string());
        entries.push(InboxEntry {
            received_at: m.received_at,
            agent_id: m.agent_id,
            agent_name: name_of(m.agent_id)?,
            kind: "text",
            content,
            size: None,
            stored_as: None,
            id: m.message_id,
            signature: checked.status.label(),
        });
    }
    for f in messages::all_files(conn)? {
        entries.push(InboxEntry {
            received_at: f.received_at,
            agent_id: f.agent_id,
            agent_name: name_of(f.agent_id)?,
            kind: "file",
            content: keys.reveal(&f.name).unwrap_or_else(|_| "(name cannot be decrypted)".to_string()),
            size: Some(f.size),
            stored_as: Some(f.stored_as),
            id: f.file_id,
            signature: "unsigned".into(),
        });
    }
    entries.sort_by_key(|e| e.received_at);
    Ok(entries)
}
