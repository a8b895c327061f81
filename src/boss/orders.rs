//! Orders from a director to an enrolled agent: queued sealed in the agent's
//! outbox (`spyctl order`, in the Boss's home), offered to the agent over its
//! v2 session until it confirms storing them. The text is sealed under the
//! agent's channel key (from the Boss's and the agent's X25519 keys), so the
//! database alone, or with `master.key`, does not reveal it.

use rusqlite::Connection;

use crate::crypto::IdentityKeys;
use crate::crypto::identity::Side;
use crate::db::{DbError, identities, orders};

/// Longest order text, in bytes.
pub const MAX_ORDER_BYTES: usize = 8 * 1024;
/// What one offer (one v2 frame) may carry, leaving room for the JSON around it.
const OFFER_BUDGET: usize = 48 * 1024;

pub use crate::net::v2::Order;

/// Why an order could not be queued or offered.
#[derive(Debug)]
pub enum OrderError {
    Db(DbError),
    /// The agent has no enrolled identity: orders travel over v2 only.
    NotEnrolled(i64),
    /// Empty, or longer than [`MAX_ORDER_BYTES`].
    BadText,
    /// A stored order does not open under the agent's channel key.
    Undecryptable(String),
}

impl std::fmt::Display for OrderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OrderError::Db(_) => f.write_str("the outbox cannot be read or written"),
            OrderError::NotEnrolled(id) => {
                write!(f, "agent {id} has no enrolled identity; orders travel over v2 only (agent enroll, then join)")
            }
            OrderError::BadText => write!(f, "an order is 1 to {MAX_ORDER_BYTES} bytes of text"),
            OrderError::Undecryptable(id) => write!(f, "order {id} does not open under the agent's channel key"),
        }
    }
}

impl std::error::Error for OrderError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OrderError::Db(e) => Some(e),
            _ => None,
        }
    }
}

impl From<DbError> for OrderError {
    fn from(e: DbError) -> Self {
        OrderError::Db(e)
    }
}

impl From<rusqlite::Error> for OrderError {
    fn from(e: rusqlite::Error) -> Self {
        OrderError::Db(e.into())
    }
}

/// Queues `text` for agent `target` from director `from`, sealed under
/// their channel key; returns the new order's id.
pub fn queue(conn: &Connection, boss: &IdentityKeys, from: i64, target: i64, text: &str) -> Result<String, OrderError> {
    queue_with_file(conn, boss, from, target, text, None)
}

/// [`queue`], with the file the order carries (already stored, its
/// OrderFiles row in the same transaction): its description is sealed under
/// the same channel key. With a file, the text may be empty.
pub fn queue_with_file(
    conn: &Connection,
    boss: &IdentityKeys,
    from: i64,
    target: i64,
    text: &str,
    file: Option<&crate::net::v2::OrderFile>,
) -> Result<String, OrderError> {
    if (text.trim().is_empty() && file.is_none()) || text.len() > MAX_ORDER_BYTES {
        return Err(OrderError::BadText);
    }
    let identity = identities::current(conn, target)?.ok_or(OrderError::NotEnrolled(target))?;
    let key = boss.channel_key(Side::Boss, &identity.public, target).ok_or(OrderError::NotEnrolled(target))?;
    let order_id = crate::net::ids::random_id();
    let stored = orders::StoredOrder {
        agent_id: target,
        order_id: order_id.clone(),
        created_at: crate::crypto::fernet::unix_now() as i64,
        issued_by: from,
        sealed: key.seal(text.as_bytes()),
    };
    orders::insert(conn, &stored)?;
    if let Some(file) = file {
        let json = serde_json::to_vec(file).expect("a file description always encodes");
        crate::db::order_files::attach(conn, target, &order_id, &file.id, &key.seal(&json))?;
    }
    Ok(order_id)
}

/// The agent's pending orders, opened, oldest first, as many as fit one frame.
pub fn offer(
    conn: &Connection,
    boss: &IdentityKeys,
    identity: &identities::StoredIdentity,
) -> Result<Vec<Order>, OrderError> {
    let agent_id = identity.agent_id;
    let key = boss.channel_key(Side::Boss, &identity.public, agent_id).ok_or(OrderError::NotEnrolled(agent_id))?;
    offer_under(conn, &key, agent_id)
}

/// [`offer`] under the agent's channel key `key`, which a v2 session derives
/// once rather than per offer.
pub fn offer_under(conn: &Connection, key: &crate::crypto::FernetKey, agent_id: i64) -> Result<Vec<Order>, OrderError> {
    let mut out = Vec::new();
    let mut used = 0;
    for stored in orders::pending(conn, agent_id, 256)? {
        let opened =
            key.open(stored.sealed.as_bytes(), None).map_err(|_| OrderError::Undecryptable(stored.order_id.clone()))?;
        let text =
            String::from_utf8(opened.plaintext).map_err(|_| OrderError::Undecryptable(stored.order_id.clone()))?;
        let file = match crate::db::order_files::sealed_for_order(conn, agent_id, &stored.order_id)? {
            Some(sealed) => {
                let undecryptable = || OrderError::Undecryptable(stored.order_id.clone());
                let opened = key.open(sealed.as_bytes(), None).map_err(|_| undecryptable())?;
                Some(serde_json::from_slice(&opened.plaintext).map_err(|_| undecryptable())?)
            }
            None => None,
        };
        // A file's description: its 255-byte name (escaped at worst 6
        // bytes a byte), its id and hash, and the JSON around them.
        used += text.len() + stored.order_id.len() + 64 + if file.is_some() { 1_800 } else { 0 };
        if used > OFFER_BUDGET && !out.is_empty() {
            break;
        }
        out.push(Order { id: stored.order_id, at: stored.created_at, from: stored.issued_by, text, file });
    }
    Ok(out)
}

/// Notices orders queued by another process (`spyctl order` commits in the
/// director's own process): a read-only connection whose `PRAGMA
/// data_version` changes whenever any other connection commits, checked on a
/// short interval by the Boss's dispatcher thread. Only when it changed is
/// the outbox's highest RowId read, and only a new one counts, so the Boss's
/// own group commits (messages, confirmations) cost one pragma each.
pub struct OutboxWatch {
    conn: Connection,
    data_version: i64,
    highest: i64,
}

impl OutboxWatch {
    pub fn open(db_path: &std::path::Path) -> Result<OutboxWatch, OrderError> {
        let conn = crate::db::open_read_only(db_path)?;
        let mut watch = OutboxWatch { conn, data_version: -1, highest: -1 };
        watch.changed()?;
        Ok(watch)
    }

    /// Whether an order was queued since the last call.
    pub fn changed(&mut self) -> Result<bool, OrderError> {
        let version: i64 = self.conn.query_row("PRAGMA data_version", [], |row| row.get(0))?;
        if version == self.data_version {
            return Ok(false);
        }
        self.data_version = version;
        let highest: i64 = self.conn.query_row("SELECT COALESCE(MAX(RowId), 0) FROM Orders", [], |row| row.get(0))?;
        let grew = highest > self.highest;
        self.highest = highest;
        Ok(grew)
    }
}
