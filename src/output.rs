//! Rendering: comfy-table tables for people, JSON for scripts, and the short
//! status lines (like Flask's `flash` categories) every command prints.

use std::io::Write;

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{ContentArrangement, Table};

use crate::error::{Error, Result};

/// Longest cell shown in a table; JSON output is never shortened.
const MAX_CELL_CHARS: usize = 44;

/// A table's worth of data, printable as a table or as JSON. Cells keep their
/// JSON type (numbers stay numbers in `--json`); tables show them as text.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Rows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<serde_json::Value>>,
}

impl Rows {
    pub fn new(columns: &[&str]) -> Rows {
        Rows { columns: columns.iter().map(|c| c.to_string()).collect(), rows: Vec::new() }
    }

    /// Adds a row of text cells.
    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row.into_iter().map(serde_json::Value::String).collect());
    }

    /// Adds a row of typed cells.
    pub fn push_values(&mut self, row: Vec<serde_json::Value>) {
        self.rows.push(row);
    }

    /// A boxed table; long cells are shortened with an ellipsis.
    pub fn to_table(&self) -> String {
        let mut table = Table::new();
        table.load_style(UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Disabled);
        table.set_header(self.columns.clone());
        for row in &self.rows {
            table.add_row(row.iter().map(|c| shorten(&cell_text(c))).collect::<Vec<_>>());
        }
        table.to_string()
    }

    /// JSON objects keyed by column name.
    pub fn to_json_objects(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.rows
                .iter()
                .map(|row| serde_json::Value::Object(self.columns.iter().cloned().zip(row.iter().cloned()).collect()))
                .collect(),
        )
    }
}

/// A cell as a table shows it: text as is, NULL as `NULL`, the rest as JSON.
fn cell_text(cell: &serde_json::Value) -> String {
    match cell {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "NULL".to_string(),
        other => other.to_string(),
    }
}

fn shorten(cell: &str) -> String {
    let one_line = visible(&cell.replace(['\n', '\r'], " ")).into_owned();
    if one_line.chars().count() <= MAX_CELL_CHARS {
        return one_line;
    }
    let mut short: String = one_line.chars().take(MAX_CELL_CHARS - 1).collect();
    short.push('…');
    short
}

/// Whether a terminal would act on `c` instead of showing it: C0 and C1
/// controls and DEL (escape sequences start with ESC or CSI), the Unicode
/// Bidi_Control characters (which reorder what follows), and the invisible
/// zero-width and format characters (which hide or join text).
fn is_unsafe_to_show(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
            | '\u{00AD}' | '\u{180E}' | '\u{200B}'..='\u{200D}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}')
}

/// Text that came from outside (a message, a file name, an alias, a server's
/// error text) made safe for a terminal, the way `git` quotes odd paths:
/// every character a terminal would act on is written as an escape
/// (`\x1b`, `\u{202e}`), so an agent's bytes cannot move the cursor, erase
/// lines, set the clipboard or reorder what a director reads. `--json`
/// output never goes through this: it stays exact.
pub fn visible(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(is_unsafe_to_show) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut shown = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => shown.push_str("\\n"),
            '\r' => shown.push_str("\\r"),
            '\t' => shown.push_str("\\t"),
            c if c.is_ascii_control() => shown.push_str(&format!("\\x{:02x}", c as u32)),
            c if is_unsafe_to_show(c) => shown.push_str(&format!("\\u{{{:04x}}}", c as u32)),
            c => shown.push(c),
        }
    }
    std::borrow::Cow::Owned(shown)
}

/// Writes a line to stdout; a closed pipe (`spyctl ... | head`) is not an error.
pub fn line(out: &mut dyn Write, text: &str) -> Result<()> {
    writeln!(out, "{text}").map_err(write_err)
}

pub fn json(out: &mut dyn Write, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::caused("cannot encode JSON", e))?;
    writeln!(out, "{text}").map_err(write_err)
}

/// A JSON array written one element at a time, laid out exactly as
/// [`json`] lays out a whole array, so a long listing holds one element in
/// memory, not all of them.
#[derive(Debug, Default)]
pub struct JsonArray {
    written: u64,
}

impl JsonArray {
    pub fn push(&mut self, out: &mut dyn Write, value: &impl serde::Serialize) -> Result<()> {
        let text = serde_json::to_string_pretty(value).map_err(|e| Error::caused("cannot encode JSON", e))?;
        out.write_all(if self.written == 0 { b"[\n" } else { b",\n" }).map_err(write_err)?;
        // Pretty JSON has no newline inside a string, so each line is one level in.
        let mut lines = text.split('\n').peekable();
        while let Some(line) = lines.next() {
            let end = if lines.peek().is_some() { "\n" } else { "" };
            write!(out, "  {line}{end}").map_err(write_err)?;
        }
        self.written += 1;
        Ok(())
    }

    pub fn finish(self, out: &mut dyn Write) -> Result<()> {
        out.write_all(if self.written == 0 { b"[]\n" } else { b"\n]\n" }).map_err(write_err)
    }
}

/// One compact JSON value and a newline: a JSON Lines record.
pub fn json_line(out: &mut dyn Write, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string(value).map_err(|e| Error::caused("cannot encode JSON", e))?;
    writeln!(out, "{text}").map_err(write_err)
}

fn write_err(e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        return Error::ClosedOutput;
    }
    Error::caused("cannot write output", e)
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn utc_time(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", secs / 3600, secs % 3600 / 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_time_known_instants() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00");
        assert_eq!(utc_time(499_162_800), "1985-10-26 08:20:00");
        assert_eq!(utc_time(1_709_210_096), "2024-02-29 12:34:56");
    }

    #[test]
    fn terminal_controls_are_shown_not_obeyed() {
        assert_eq!(visible("plain Zoë"), "plain Zoë");
        assert_eq!(visible("a\x1b]52;c;aGk=\x07b"), "a\\x1b]52;c;aGk=\\x07b");
        assert_eq!(visible("\x1b[2K\x1b[1A"), "\\x1b[2K\\x1b[1A");
        assert_eq!(visible("invoice\u{202E}fdp.exe"), "invoice\\u{202e}fdp.exe");
        assert_eq!(visible("x\u{9b}y\u{200b}z"), "x\\u{009b}y\\u{200b}z");
        let mut rows = Rows::new(&["m"]);
        rows.push(vec!["\x1b[31mred\u{202E}".into()]);
        let table = rows.to_table();
        assert!(!table.contains('\x1b') && !table.contains('\u{202E}'), "{table}");
        assert_eq!(rows.to_json_objects()[0]["m"], "\x1b[31mred\u{202E}", "JSON stays exact");
    }

    #[test]
    fn long_cells_are_shortened_in_tables_only() {
        let mut rows = Rows::new(&["a"]);
        rows.push(vec!["x".repeat(100)]);
        assert!(rows.to_table().contains('…'));
        assert_eq!(rows.to_json_objects()[0]["a"].as_str().map(str::len), Some(100));
        let mut typed = Rows::new(&["n", "t"]);
        typed.push_values(vec![serde_json::json!(5), serde_json::Value::Null]);
        assert_eq!(typed.to_json_objects()[0]["n"], 5);
        assert!(typed.to_table().contains("NULL"));
    }
}
