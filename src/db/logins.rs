//! Failed-login bookkeeping per blind-indexed name, for lockouts. Works for
//! names that exist and names that do not, so a lockout reveals nothing.

use rusqlite::{Connection, OptionalExtension, params};

use super::DbResult;

/// When the name is locked until (Unix seconds), if it is locked after `now`.
pub fn locked_until(conn: &Connection, name_index: &str, now: i64) -> DbResult<Option<i64>> {
    Ok(conn
        .query_row(
            "SELECT LockedUntil FROM LoginLockouts WHERE NameIndex = ?1 AND LockedUntil > ?2",
            params![name_index, now],
            |row| row.get(0),
        )
        .optional()?)
}

/// Records a failure and returns how many failures the name has since `window_start`.
pub fn record_failure(conn: &Connection, name_index: &str, now: i64, window_start: i64) -> DbResult<i64> {
    conn.execute("INSERT INTO LoginFailures (NameIndex, FailedAt) VALUES (?1, ?2)", params![name_index, now])?;
    // Old failures no longer count; dropping them keeps the table small.
    conn.execute(
        "DELETE FROM LoginFailures WHERE NameIndex = ?1 AND FailedAt < ?2",
        params![name_index, window_start],
    )?;
    Ok(conn.query_row("SELECT COUNT(*) FROM LoginFailures WHERE NameIndex = ?1", [name_index], |row| row.get(0))?)
}

pub fn lock(conn: &Connection, name_index: &str, until: i64) -> DbResult<()> {
    conn.execute(
        "INSERT INTO LoginLockouts (NameIndex, LockedUntil) VALUES (?1, ?2)
         ON CONFLICT (NameIndex) DO UPDATE SET LockedUntil = excluded.LockedUntil",
        params![name_index, until],
    )?;
    Ok(())
}

/// Forgets failures and locks after a successful login.
pub fn clear(conn: &Connection, name_index: &str) -> DbResult<()> {
    conn.execute("DELETE FROM LoginFailures WHERE NameIndex = ?1", [name_index])?;
    conn.execute("DELETE FROM LoginLockouts WHERE NameIndex = ?1", [name_index])?;
    Ok(())
}
