//! `completions` and `man`: generated from the clap definitions, so they can
//! never disagree with `--help`.

use clap::CommandFactory;

use crate::cli::Cli;
use crate::error::{Error, Result};

use super::Ctx;

pub fn completions(ctx: &mut Ctx<'_>, shell: clap_complete::Shell) -> Result<()> {
    let mut command = Cli::command();
    clap_complete::generate(shell, &mut command, "spyctl", ctx.out);
    Ok(())
}

pub fn man(ctx: &mut Ctx<'_>) -> Result<()> {
    clap_mangen::Man::new(Cli::command()).render(ctx.out).map_err(|e| Error::caused("cannot write the man page", e))
}
