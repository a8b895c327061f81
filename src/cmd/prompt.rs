//! Reading names and passwords from a person or a script. Passwords come from
//! a no-echo prompt on the terminal or, with `--password-stdin`, from the
//! first line of stdin; never from argv.

use std::io::{BufRead, IsTerminal, Read};

use zeroize::Zeroizing;

use crate::error::{Error, Hint, Result};

/// Longest stdin line read for a secret; longer is refused, not truncated.
const MAX_SECRET_LINE: usize = 4096;

/// The password, from stdin's first line or a no-echo prompt.
pub fn password(from_stdin: bool, prompt: &str) -> Result<Zeroizing<String>> {
    if from_stdin {
        let mut line = Zeroizing::new(String::new());
        read_bounded_line(&mut std::io::stdin().lock(), &mut line)
            .map_err(|e| Error::caused("cannot read the password from stdin", e))?;
        if line.len() > MAX_SECRET_LINE {
            return Err(Error::failed("the password on stdin is too long"));
        }
        let trimmed = line.trim_end_matches(['\n', '\r']).len();
        line.truncate(trimmed);
        if line.is_empty() {
            return Err(Error::failed("no password on stdin").hint(Hint::PipePassword));
        }
        return Ok(line);
    }
    if !std::io::stdin().is_terminal() {
        return Err(Error::failed("no terminal to prompt for the password").hint(Hint::UsePasswordStdin));
    }
    rpassword::prompt_password(prompt).map(Zeroizing::new).map_err(|e| Error::caused("cannot read the password", e))
}

/// A visible answer (a name) from the terminal.
pub fn visible(prompt: &str) -> Result<String> {
    if !std::io::stdin().is_terminal() {
        return Err(Error::failed(format!("no terminal to ask for {}", prompt.trim_end_matches([':', ' '])))
            .hint(Hint::PassAsFlag));
    }
    eprint!("{prompt}");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(|e| Error::caused("cannot read input", e))?;
    Ok(line.trim().to_string())
}

/// Asks on the terminal; true only if the answer is exactly `yes`. The
/// caller has checked that stdin is a terminal.
pub fn confirm(question: &str) -> Result<bool> {
    eprint!("{question}");
    let mut line = String::new();
    std::io::stdin().lock().take(64).read_line(&mut line).map_err(|e| Error::caused("cannot read the answer", e))?;
    Ok(line.trim() == "yes")
}

/// Reads one line, at most a little over the secret limit, so an endless
/// stdin cannot exhaust memory.
fn read_bounded_line(input: &mut impl BufRead, into: &mut String) -> std::io::Result<usize> {
    input.take(MAX_SECRET_LINE as u64 + 2).read_line(into)
}
