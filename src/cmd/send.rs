//! `send`: a text, each line of stdin, or a file, to the Boss; waits for and
//! verifies each acknowledgement.

use std::io::BufRead;
use std::time::Duration;

use crate::cli::SendArgs;
use crate::error::{Error, Result};
use crate::net::client::{self, AttemptError, ClientConfig, Delivered, SendError, Sender};
use crate::net::ids::random_id;
use crate::net::protocol::{AckStatus, ErrorCode, Header, Kind};

use super::Ctx;
use super::session::sender_identity;

fn send_error(err: SendError) -> Error {
    let hint = match &err {
        // A Boss at its connection cap answered `busy` to the last attempt:
        // it is running, so "start it" would mislead.
        SendError::Unreachable { last: AttemptError::Refused { code: ErrorCode::Busy, .. }, .. } => Some(
            "the Boss is running but at its connection limit: retry later, or ask its operator to raise --max-connections",
        ),
        SendError::Unreachable { .. } => Some("is the Boss running? start it with `spyctl boss serve`, or pass --addr"),
        SendError::Refused { code: ErrorCode::Auth, .. } => {
            Some("the Boss does not know this agent or key: check --agent-id/--key-file, or log in again")
        }
        SendError::Refused { code: ErrorCode::Expired, .. } => Some("check this machine's clock"),
        _ => None,
    };
    let error = Error::new(err.to_string());
    match hint {
        Some(h) => error.hint(h),
        None => error,
    }
}

/// How `--json` prints each result: one pretty object for a single send, or
/// one compact object per line (JSON Lines) when stdin lines are sent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum JsonStyle {
    Single,
    Lines,
}

fn report(ctx: &mut Ctx<'_>, what: &str, delivered: &Delivered, style: JsonStyle) -> Result<()> {
    if ctx.json {
        let value = serde_json::json!({
            "sent": what,
            "status": delivered.status,
            "reply": delivered.reply,
            "attempts": delivered.attempts,
        });
        return match style {
            JsonStyle::Single => ctx.json(value),
            JsonStyle::Lines => ctx.json_line(value),
        };
    }
    let status = match delivered.status {
        AckStatus::Stored => "stored",
        AckStatus::Duplicate => "already stored (duplicate)",
    };
    ctx.show(&format!("Boss: {} [{status}]", delivered.reply))
}

pub fn send(ctx: &mut Ctx<'_>, args: SendArgs) -> Result<()> {
    if args.timeout == 0 || args.attempts == 0 {
        return Err(Error::usage("--timeout and --attempts must be at least 1"));
    }
    let (agent_id, key) = sender_identity(ctx, &args.to)?;
    let config = ClientConfig {
        addr: args.to.addr.clone(),
        timeout: Duration::from_secs(args.timeout),
        attempts: args.attempts,
        ..ClientConfig::default()
    };
    let mut sender = Sender::new(config, agent_id, &key);

    if let Some(path) = &args.file {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::new(format!("{} has no usable file name", path.display())))?
            .to_string();
        let meta = std::fs::metadata(path).map_err(|e| Error::new(format!("cannot read {}: {e}", path.display())))?;
        if !meta.is_file() {
            return Err(Error::new(format!("{} is not a regular file", path.display())));
        }
        let quiet = ctx.quiet || ctx.json;
        let bar = crate::progress::bar(meta.len(), quiet);
        let delivered =
            client::send_file(&mut sender, path, &name, |done, _| bar.set_position(done)).map_err(|e| match e {
                client::FileSendError::Send(s) => send_error(s),
                other => Error::new(other.to_string()),
            })?;
        bar.finish_and_clear();
        return report(ctx, &name, &delivered, JsonStyle::Single);
    }

    if let Some(text) = &args.text {
        if text.trim().is_empty() {
            return Err(Error::new("nothing to send: the message is empty"));
        }
        let header = Header { id: random_id(), kind: Kind::Text };
        let delivered = sender.send(&header, text.as_bytes()).map_err(send_error)?;
        return report(ctx, "text", &delivered, JsonStyle::Single);
    }

    // No TEXT and no --file: every stdin line is a message, over one connection.
    let stdin = std::io::stdin();
    let mut sent = 0usize;
    for line in stdin.lock().lines() {
        let line = line.map_err(|e| Error::new(format!("cannot read stdin: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let header = Header { id: random_id(), kind: Kind::Text };
        let delivered = sender.send(&header, line.as_bytes()).map_err(|e| {
            let err = send_error(e);
            Error { message: format!("after {sent} message(s): {}", err.message), ..err }
        })?;
        report(ctx, "text", &delivered, JsonStyle::Lines)?;
        sent += 1;
    }
    if sent == 0 {
        return Err(Error::new("nothing to send: no TEXT, no --file, and no lines on stdin")
            .hint("try `spyctl send \"Package delivered\"`"));
    }
    Ok(())
}
