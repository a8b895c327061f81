//! Limits on ad-hoc reads (`db query --sql`), so a query typed by a person
//! cannot hang the process or exhaust its memory: a time budget enforced by a
//! progress handler (sqlite3_progress_handler interrupts the statement), a cap
//! on the length of any one value (SQLITE_LIMIT_LENGTH, so `zeroblob(400e6)`
//! fails inside SQLite before it allocates), a cap on SQLite's own heap
//! (`PRAGMA hard_heap_limit`), and caps the caller enforces while collecting:
//! rows, and bytes kept. Each breach is a [`LimitError`] with one line of text.

use std::fmt;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use rusqlite::limits::Limit;

/// How much one ad-hoc read may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    /// Wall-clock budget for the whole statement, rows included.
    pub time: Duration,
    /// Most rows returned.
    pub max_rows: usize,
    /// Longest single value (string or blob) SQLite may build, in bytes.
    pub max_value_bytes: usize,
    /// Most bytes of values collected for printing, over all rows.
    pub max_result_bytes: usize,
    /// Most heap SQLite itself may use, in bytes.
    pub max_heap_bytes: usize,
}

impl Default for ReadLimits {
    fn default() -> Self {
        ReadLimits {
            time: Duration::from_secs(DEFAULT_TIMEOUT_SECS),
            max_rows: DEFAULT_MAX_ROWS,
            max_value_bytes: 16 << 20,
            max_result_bytes: 64 << 20,
            max_heap_bytes: 256 << 20,
        }
    }
}

/// `db query --timeout` default, in seconds.
pub const DEFAULT_TIMEOUT_SECS: u64 = 5;
/// `db query --max-rows` default.
pub const DEFAULT_MAX_ROWS: usize = 10_000;

/// Virtual-machine steps between two looks at the clock: often enough to stop
/// within milliseconds of the budget, rarely enough to cost nothing.
const PROGRESS_STEPS: i32 = 10_000;

/// A read stopped at one of its limits. Nothing was changed: the connection
/// is read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitError {
    Time(Duration),
    Rows(usize),
    ValueSize(usize),
    ResultSize(usize),
    Memory(usize),
}

impl fmt::Display for LimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitError::Time(budget) => {
                write!(f, "the query ran past its time budget of {} s and was stopped", budget.as_secs_f64())
            }
            LimitError::Rows(max) => write!(f, "the query returns more than {max} rows and was stopped"),
            LimitError::ValueSize(max) => {
                write!(f, "the query builds a value larger than {} MiB and was stopped", max >> 20)
            }
            LimitError::ResultSize(max) => {
                write!(f, "the query's results exceed {} MiB and were not printed", max >> 20)
            }
            LimitError::Memory(max) => {
                write!(f, "the query needs more than {} MiB of memory and was stopped", max >> 20)
            }
        }
    }
}

impl std::error::Error for LimitError {}

/// Installs `limits` on `conn` (meant for a connection used for one read).
/// The heap limit is process-wide in SQLite; `db query --sql` is the only
/// thing its process does.
pub fn apply(conn: &mut Connection, limits: &ReadLimits) -> rusqlite::Result<()> {
    let deadline = Instant::now() + limits.time;
    // Returning true interrupts the running statement with SQLITE_INTERRUPT.
    conn.progress_handler(PROGRESS_STEPS, Some(move || Instant::now() >= deadline))?;
    let length = i32::try_from(limits.max_value_bytes).unwrap_or(i32::MAX);
    conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, length)?;
    // The pragma answers with the limit in force; read it so it runs.
    let _: i64 = conn.query_row(&format!("PRAGMA hard_heap_limit = {}", limits.max_heap_bytes), [], |r| r.get(0))?;
    Ok(())
}

/// The limit behind an error from a limited read, if it was one.
pub fn breached(err: &rusqlite::Error, limits: &ReadLimits) -> Option<LimitError> {
    use rusqlite::ErrorCode::{OperationInterrupted, OutOfMemory, TooBig};
    match err {
        rusqlite::Error::SqliteFailure(code, _) => match code.code {
            OperationInterrupted => Some(LimitError::Time(limits.time)),
            TooBig => Some(LimitError::ValueSize(limits.max_value_bytes)),
            OutOfMemory => Some(LimitError::Memory(limits.max_heap_bytes)),
            _ => None,
        },
        _ => None,
    }
}
