//! The course's second SQL script (sql/demo_*.sql): one DELETE, one
//! UPDATE, four SELECTs. Each file's first comment line is its title.

pub const DELETE_ONE: &str = include_str!("../../sql/demo_delete.sql");
pub const UPDATE_ONE: &str = include_str!("../../sql/demo_update.sql");
pub const SELECT_ALL: &str = include_str!("../../sql/demo_select_all.sql");
pub const SELECT_COLUMNS: &str = include_str!("../../sql/demo_select_columns.sql");
pub const SELECT_ROWS: &str = include_str!("../../sql/demo_select_rows.sql");
pub const SELECT_BOTH: &str = include_str!("../../sql/demo_select_both.sql");

/// The statement text without its comment lines.
pub fn statement(sql: &str) -> String {
    sql.lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n").trim().to_string()
}

/// The comment at the top of a SQL file: the step's title.
pub fn title(sql: &str) -> String {
    sql.lines().next().map(|l| l.trim_start_matches("--").trim().to_string()).unwrap_or_default()
}
