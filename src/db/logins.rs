//! Failed-login bookkeeping per blind-indexed name, for lockouts. Works for
//! names that exist and names that do not, so a lockout reveals nothing.
//!
//! A name has one blind index per live key epoch (`key rotate`): checks and
//! clears take all of them, so a rotation neither lifts a lockout nor resets
//! the count of failures; new records use the newest epoch's index.

use rusqlite::{Connection, OptionalExtension, params};

use super::DbResult;

/// When the name is locked until (Unix seconds), if it is locked after `now`
/// under any of its `indexes`.
pub fn locked_until(conn: &Connection, indexes: &[String], now: i64) -> DbResult<Option<i64>> {
    let mut latest = None;
    for index in indexes {
        let until: Option<i64> = conn
            .query_row(
                "SELECT LockedUntil FROM LoginLockouts WHERE NameIndex = ?1 AND LockedUntil > ?2",
                params![index, now],
                |row| row.get(0),
            )
            .optional()?;
        latest = latest.max(until);
    }
    Ok(latest)
}

/// Records a failure under the newest index (`indexes[0]`, epoch
/// `key_epoch`) and returns how many failures the name has since
/// `window_start` under any of its indexes.
pub fn record_failure(
    conn: &Connection,
    indexes: &[String],
    key_epoch: u32,
    now: i64,
    window_start: i64,
) -> DbResult<i64> {
    conn.execute(
        "INSERT INTO LoginFailures (NameIndex, FailedAt, KeyEpoch) VALUES (?1, ?2, ?3)",
        params![indexes[0], now, key_epoch],
    )?;
    let mut count = 0;
    for index in indexes {
        // Old failures no longer count; dropping them keeps the table small.
        conn.execute("DELETE FROM LoginFailures WHERE NameIndex = ?1 AND FailedAt < ?2", params![index, window_start])?;
        count += conn.query_row("SELECT COUNT(*) FROM LoginFailures WHERE NameIndex = ?1", [index], |row| {
            row.get::<_, i64>(0)
        })?;
    }
    Ok(count)
}

/// Locks the name (its newest index, `indexes[0]`) until `until`.
pub fn lock(conn: &Connection, indexes: &[String], key_epoch: u32, until: i64) -> DbResult<()> {
    conn.execute(
        "INSERT INTO LoginLockouts (NameIndex, LockedUntil, KeyEpoch) VALUES (?1, ?2, ?3)
         ON CONFLICT (NameIndex) DO UPDATE SET LockedUntil = excluded.LockedUntil",
        params![indexes[0], until, key_epoch],
    )?;
    Ok(())
}

/// Forgets failures and locks after a successful login.
pub fn clear(conn: &Connection, indexes: &[String]) -> DbResult<()> {
    for index in indexes {
        conn.execute("DELETE FROM LoginFailures WHERE NameIndex = ?1", [index])?;
        conn.execute("DELETE FROM LoginLockouts WHERE NameIndex = ?1", [index])?;
    }
    Ok(())
}

/// Rewrap: moves a name's records from its old index to its new one.
pub fn reindex(conn: &Connection, old: &str, new: &str, key_epoch: u32) -> DbResult<()> {
    conn.execute(
        "UPDATE LoginFailures SET NameIndex = ?2, KeyEpoch = ?3 WHERE NameIndex = ?1",
        params![old, new, key_epoch],
    )?;
    conn.execute(
        "UPDATE OR REPLACE LoginLockouts SET NameIndex = ?2, KeyEpoch = ?3 WHERE NameIndex = ?1",
        params![old, new, key_epoch],
    )?;
    Ok(())
}
