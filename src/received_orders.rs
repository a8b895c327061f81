//! The orders an agent's home has received (`spyctl orders`): the file
//! `orders` in the agent's home (0600, never followed through a link), one
//! Fernet token per line under the identity's orders key, so the file alone
//! reveals nothing. Each batch is appended and synced before the Boss is told
//! it arrived: a crash loses nothing (the Boss offers it again) and an order
//! offered twice is kept once (by its id).

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
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
    let fresh: Vec<&Order> = offered.iter().filter(|o| !known.iter().any(|k| k.id == o.id)).collect();
    if fresh.is_empty() {
        return Ok(0);
    }
    let mut text = String::new();
    for order in &fresh {
        let json = serde_json::to_vec(order).expect("an order always encodes");
        text.push_str(&key.seal(&json));
        text.push('\n');
    }
    let mut file = open(path, OFlags::WRONLY | OFlags::CREATE | OFlags::APPEND)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    known.extend(fresh.iter().map(|o| (*o).clone()));
    Ok(fresh.len())
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
        Order { id: id.into(), at: 1, from: 1, text: format!("order {id}") }
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
}
