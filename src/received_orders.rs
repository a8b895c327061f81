//! The orders an agent's home has received (`spyctl orders`): the file
//! `orders` in the agent's home (0600, never followed through a link), one
//! Fernet token per line under the identity's orders key, so the file alone
//! reveals nothing. Each batch is appended and synced before the Boss is told
//! it arrived: a crash loses nothing (the Boss offers it again) and an order
//! offered twice is kept once (by its id).

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use rustix::fs::{Mode, OFlags};

use crate::crypto::FernetKey;
use crate::net::v2::Order;

/// The file's name in the agent's home.
pub const ORDERS_FILE: &str = "orders";

/// Every order stored so far, oldest first. A line that does not open (a
/// torn last write, say) is skipped: its order is offered again.
pub fn load(path: &Path, key: &FernetKey) -> std::io::Result<Vec<Order>> {
    let file = match open(path, OFlags::RDONLY) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut orders = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line?;
        let Ok(opened) = key.open(line.trim().as_bytes(), None) else { continue };
        if let Ok(order) = serde_json::from_slice::<Order>(&opened.plaintext) {
            orders.push(order);
        }
    }
    Ok(orders)
}

/// Appends the orders not already stored (by id), then syncs the file.
/// Returns how many were new.
pub fn append(path: &Path, key: &FernetKey, known: &mut Vec<Order>, offered: &[Order]) -> std::io::Result<usize> {
    let mut seen: HashSet<&str> = known.iter().map(|k| k.id.as_str()).collect();
    // `insert` is false for an id already stored or already earlier in this offer.
    let fresh: Vec<Order> = offered.iter().filter(|o| seen.insert(o.id.as_str())).cloned().collect();
    if fresh.is_empty() {
        return Ok(0);
    }
    let mut file = open(path, OFlags::RDWR | OFlags::CREATE | OFlags::APPEND)?;
    let mut text = String::new();
    // A write cut off by a crash leaves a last line without its newline;
    // appending to it would glue the next order onto the torn line, and that
    // order (confirmed to the Boss once this returns) would never load again.
    if ends_torn(&file)? {
        text.push('\n');
    }
    for order in &fresh {
        let json = serde_json::to_vec(order).expect("an order always encodes");
        text.push_str(&key.seal(&json));
        text.push('\n');
    }
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    let count = fresh.len();
    known.extend(fresh);
    Ok(count)
}

/// Whether the file is non-empty and its last byte is not a newline.
fn ends_torn(file: &File) -> std::io::Result<bool> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(false);
    }
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, len - 1)?;
    Ok(last[0] != b'\n')
}

/// Opens without following a symlink; created 0600.
fn open(path: &Path, flags: OFlags) -> std::io::Result<File> {
    let fd = rustix::fs::open(path, flags | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::from_raw_mode(0o600))?;
    Ok(File::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: &str) -> Order {
        Order { id: id.into(), at: 1, from: 1, text: format!("order {id}"), file: None }
    }

    #[test]
    fn orders_are_kept_once_sealed_and_reloaded() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join(ORDERS_FILE);
        let key = FernetKey::from_bytes(&[4u8; 32]);
        let mut known = load(&path, &key).expect("empty");
        assert_eq!(append(&path, &key, &mut known, &[order("a"), order("b")]).expect("append"), 2);
        assert_eq!(append(&path, &key, &mut known, &[order("b"), order("c")]).expect("append"), 1, "b is kept once");
        let again = load(&path, &key).expect("reload");
        assert_eq!(again.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
        let raw = std::fs::read(&path).expect("raw");
        assert!(!raw.windows(7).any(|w| w == b"order a"), "plaintext on disk");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777, 0o600);
        assert!(load(&path, &FernetKey::from_bytes(&[5u8; 32])).expect("other key").is_empty());
    }

    /// A crash mid-write leaves half a line; what is appended after it must
    /// still load (the torn order itself is offered again by the Boss).
    #[test]
    fn an_order_appended_after_a_torn_write_still_loads() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join(ORDERS_FILE);
        let key = FernetKey::from_bytes(&[4u8; 32]);
        let mut known = Vec::new();
        append(&path, &key, &mut known, &[order("a")]).expect("append");
        let torn = key.seal(br#"{"id":"b","at":1,"from":1,"text":"order b"}"#);
        let mut file = std::fs::OpenOptions::new().append(true).open(&path).expect("open");
        file.write_all(&torn.as_bytes()[..torn.len() / 2]).expect("torn write");
        drop(file);
        let mut known = load(&path, &key).expect("reload");
        assert_eq!(known.len(), 1, "the torn line is skipped");
        assert_eq!(append(&path, &key, &mut known, &[order("b"), order("c"), order("c")]).expect("append"), 2);
        let again = load(&path, &key).expect("reload");
        assert_eq!(again.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
    }
}
