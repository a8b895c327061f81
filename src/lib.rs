//! spyctl: a secret-agent registry with encrypted fields and role-based login,
//! and an encrypted, HMAC-authenticated message channel to "the Boss".
//!
//! Layers point one way: `cli` (clap types) -> `cmd` (one module per command
//! group: check arguments, call the domain, render) -> the domain modules
//! `crypto`, `db`, `registry`, `auth`, `net`, `boss`, which know nothing of clap.
#![forbid(unsafe_code)]

pub mod auth;
pub mod backup;
pub mod boss;
pub mod cli;
pub mod cmd;
pub mod core_dumps;
pub mod crypto;
pub mod db;
pub mod epochs;
pub mod error;
pub mod home;
pub mod net;
pub mod output;
pub mod progress;
pub mod received_files;
pub mod received_orders;
pub mod registry;
pub mod resumable;
pub mod stats;
pub mod upload_journal;

pub use error::{Error, Result};

use tracing_subscriber::EnvFilter;

/// Runs one parsed command line, writing results to `out`.
pub fn run(cli: cli::Cli, out: &mut dyn std::io::Write) -> Result<()> {
    init_logging(&cli);
    // Before any key is read: a crash must not write the master key to disk.
    core_dumps::disable()?;
    let home = home::Home::resolve(cli.home.as_deref())?;
    let mut ctx = cmd::Ctx { home, home_given: cli.home.is_some(), json: cli.json, quiet: cli.quiet, out };
    cmd::dispatch(&mut ctx, cli.command)
}

/// Logs go to stderr. `RUST_LOG` wins; else -q/-v pick the level, and the
/// Boss's server logs its connections at info by default.
fn init_logging(cli: &cli::Cli) {
    let serving = matches!(cli.command, cli::Command::Boss(cli::BossCommand::Serve(_)));
    let level = match (cli.quiet, cli.verbose, serving) {
        (true, _, _) => "error",
        (false, 0, false) => "warn",
        (false, 0, true) | (false, 1, _) => "info",
        (false, 2, _) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(format!("spyctl={level}")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
