//! The `spyctl` binary: parse, run, print the error once, exit with its code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = spyctl::cli::Cli::parse();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match spyctl::run(cli, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        // `spyctl ... | head`: the reader has what it wanted.
        Err(spyctl::Error::ClosedOutput) => ExitCode::SUCCESS,
        Err(err) => {
            // The text may carry a server's words: shown, never obeyed.
            eprintln!("spyctl: error: {}", spyctl::output::visible(&err.to_string()));
            ExitCode::from(err.exit_code())
        }
    }
}
