//! Reading the Boss's inbox back, one entry at a time: each stored token
//! opened with its sender's wire key, each file name with the at-rest key.
//! No TTL applies here: the tokens were fresh when they arrived, and the
//! inbox keeps them.
//!
//! Entries are streamed: only the row keys are sorted (by the database), and
//! each row is read, decrypted, handed to the caller and dropped before the
//! next, so memory does not grow with the number or the size of messages.

use std::collections::HashMap;

use rusqlite::Connection;
use serde::Serialize;

use crate::crypto::{IdentityKeys, KeyRing};
use crate::db::messages::{self, InboxKey, InboxTable};
use crate::db::{DbError, agents};
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
    /// "INVALID: why" (see `boss::verify`), for files as for messages.
    pub signature: String,
}

/// Which entries to read, and in which order.
#[derive(Debug, Clone, Default)]
pub struct InboxQuery {
    /// At most this many; None for all.
    pub limit: Option<u64>,
    /// Only entries received at or after this Unix time.
    pub since: Option<i64>,
    /// Oldest first instead of newest first.
    pub oldest_first: bool,
}

/// Decrypts rows into entries, remembering agent names (few) as it goes.
struct Reader<'c> {
    conn: &'c Connection,
    keyring: &'c KeyRing,
    /// The Boss's identity, which opens and checks enrolled agents' signed messages.
    boss: Option<&'c IdentityKeys>,
    /// Its public half, computed once: files' signatures need only that.
    boss_public: Option<crate::crypto::PublicIdentity>,
    keys: RegistryKeys,
    names: HashMap<i64, Option<String>>,
}

impl<'c> Reader<'c> {
    fn new(conn: &'c Connection, keyring: &'c KeyRing, boss: Option<&'c IdentityKeys>) -> Self {
        let boss_public = boss.map(IdentityKeys::public);
        Reader { conn, keyring, boss, boss_public, keys: RegistryKeys::derive(keyring), names: HashMap::new() }
    }

    fn name_of(&mut self, agent_id: i64) -> Result<Option<String>, DbError> {
        if let Some(name) = self.names.get(&agent_id) {
            return Ok(name.clone());
        }
        let name = agents::by_id(self.conn, agent_id)?.and_then(|a| self.keys.reveal(&a.name).ok());
        self.names.insert(agent_id, name.clone());
        Ok(name)
    }

    /// The entry at `key`, or None if its row is gone (deleted meanwhile).
    fn entry(&mut self, key: InboxKey) -> Result<Option<InboxEntry>, DbError> {
        Ok(match key.table {
            InboxTable::Messages => match messages::message_at(self.conn, key.row_id)? {
                None => None,
                Some(m) => {
                    let checked = super::verify::check(self.conn, self.keyring, self.boss, &m)?;
                    let content = checked
                        .body
                        .map(|body| String::from_utf8_lossy(&body).into_owned())
                        .unwrap_or_else(|| "(cannot be decrypted with this home's key)".to_string());
                    Some(InboxEntry {
                        received_at: m.received_at,
                        agent_id: m.agent_id,
                        agent_name: self.name_of(m.agent_id)?,
                        kind: "text",
                        content,
                        size: None,
                        stored_as: None,
                        id: m.message_id,
                        signature: checked.status.label(),
                    })
                }
            },
            InboxTable::Files => match messages::file_at(self.conn, key.row_id)? {
                None => None,
                Some(f) => Some(InboxEntry {
                    signature: super::verify::check_file(self.conn, self.boss_public.as_ref(), &f)?.0.label(),
                    received_at: f.received_at,
                    agent_id: f.agent_id,
                    agent_name: self.name_of(f.agent_id)?,
                    kind: "file",
                    content: self.keys.reveal(&f.name).unwrap_or_else(|_| "(name cannot be decrypted)".to_string()),
                    size: Some(f.size),
                    stored_as: Some(f.stored_as),
                    id: f.file_id,
                }),
            },
        })
    }
}

/// Hands `each` the entries `query` selects, one at a time, in order;
/// returns how many there were.
pub fn for_each<E: From<DbError>>(
    conn: &Connection,
    keyring: &KeyRing,
    boss: Option<&IdentityKeys>,
    query: &InboxQuery,
    mut each: impl FnMut(InboxEntry) -> Result<(), E>,
) -> Result<u64, E> {
    let mut reader = Reader::new(conn, keyring, boss);
    let mut count = 0;
    messages::inbox_keys(
        conn,
        query.since.unwrap_or(i64::MIN),
        query.limit,
        query.oldest_first,
        |key| -> Result<(), E> {
            if let Some(entry) = reader.entry(key)? {
                count += 1;
                each(entry)?;
            }
            Ok(())
        },
    )?;
    Ok(count)
}

/// Every entry whose message or file id is `id` (ids are chosen by each
/// sender, so two agents may have used the same one), oldest first.
pub fn find(
    conn: &Connection,
    keyring: &KeyRing,
    boss: Option<&IdentityKeys>,
    id: &str,
) -> Result<Vec<InboxEntry>, DbError> {
    let mut reader = Reader::new(conn, keyring, boss);
    let mut found = Vec::new();
    for key in messages::inbox_keys_for_id(conn, id)? {
        found.extend(reader.entry(key)?);
    }
    Ok(found)
}
