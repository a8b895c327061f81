//! `chat` (an agent, in its joined home) and `chat N` (a director, in the
//! Boss's home): one v2 session each, full duplex. A thread reads stdin and
//! sends each line; this thread prints the other side's lines as the Boss
//! relays them, without waiting for a key, and confirms each line it has
//! printed (so the Boss counts it delivered). Parses and prints only: the
//! session is `net::v2_client`, the relaying and storing `boss::v2`.

use std::collections::HashSet;
use std::io::BufRead;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::auth::roles::Action;
use crate::cli::ChatArgs;
use crate::error::{Error, Hint, Result};
use crate::net::v2::{JoinChat, MAX_CHAT_BYTES};
use crate::net::v2_client::{Pushed, V2Client, V2Error, V2Sender};
use crate::output::{utc_time, visible};
use crate::registry;

use super::Ctx;
use super::session::require;

/// How long leaving (end of input) waits for the Boss to confirm the lines sent.
const LEAVE_WAIT: Duration = Duration::from_secs(10);

/// Lines sent and lines the Boss has confirmed storing; whether input ended.
#[derive(Default)]
struct Progress {
    sent: usize,
    stored: usize,
    input_ended: bool,
}

pub fn chat(ctx: &mut Ctx<'_>, args: ChatArgs) -> Result<()> {
    let timeout = Duration::from_secs(args.timeout);
    // Who this side is, and how the other side's lines are labelled.
    let (session, join, peer_label, agent_id) = match args.agent {
        Some(agent) => {
            let gate = require(ctx, Action::GiveOrders)?;
            let visible = registry::visible_to(&gate.conn, &gate.keys, gate.agent.level)?;
            if !visible.iter().any(|a| a.id == agent) {
                return Err(Error::failed(format!("no agent {agent} at or below your level")).hint(Hint::SeeAgentList));
            }
            if crate::db::identities::current(&gate.conn, agent)?.is_none() {
                return Err(Error::failed(format!(
                    "agent {agent} has no enrolled identity; chat travels over v2 only (agent enroll, then join)"
                )));
            }
            // The director's session is the Boss's own static key: only the
            // Boss's home holds it, and this director has just logged in there.
            let boss = ctx.home.load_identity()?;
            let session = V2Client::connect(&args.addr, timeout, &boss, &boss.public(), gate.agent.id)?;
            (session, JoinChat { agent: Some(agent), director: Some(gate.agent.id) }, "agent", agent)
        }
        None => {
            let super::send::Joined { keys: me, boss, agent_id, .. } = super::send_v2::joined_identity(ctx)?;
            let session = V2Client::connect(&args.addr, timeout, &me, &boss, agent_id)?;
            (session, JoinChat::default(), "director", agent_id)
        }
    };
    super::send_v2::warn_skew(session.skew);
    let (sender, mut receiver) = session.into_live()?;
    sender.join(&join)?;
    let _keep_alive = sender.keep_alive();
    let progress = Arc::new(Mutex::new(Progress::default()));
    let mut joined = false;
    let mut other_online = None;
    // The ids of the lines shown in this session.
    let mut shown: HashSet<String> = HashSet::new();
    let quiet = ctx.quiet || ctx.json;
    loop {
        let pushed = match receiver.receive() {
            Ok(pushed) => pushed,
            Err(V2Error::Closed) | Err(V2Error::Io(_))
                if progress.lock().unwrap_or_else(|p| p.into_inner()).input_ended =>
            {
                return Ok(());
            }
            Err(V2Error::Closed) | Err(V2Error::Io(_)) => {
                return Err(Error::failed("the Boss closed the chat connection; run `spyctl chat` again to rejoin"));
            }
            Err(e) => return Err(e.into()),
        };
        match pushed {
            Pushed::Status(status) => {
                if !joined {
                    joined = true;
                    if !quiet {
                        eprintln!(
                            "Chat with {} open; type a line and press Enter (Ctrl-D to leave).",
                            if args.agent.is_some() { format!("agent {agent_id}") } else { "the directors".into() }
                        );
                    }
                    read_stdin(sender.clone(), Arc::clone(&progress));
                }
                if status.stored.is_some() {
                    progress.lock().unwrap_or_else(|p| p.into_inner()).stored += 1;
                }
                if other_online != Some(status.online) && !quiet {
                    eprintln!("{}", presence(status.online, args.agent));
                }
                other_online = Some(status.online);
            }
            Pushed::Chat(line) => {
                // A line can come twice in one session (stored while this
                // side joined: in the backlog and pushed live): shown once.
                if !shown.insert(line.id.clone()) {
                    continue;
                }
                if ctx.json {
                    ctx.json_line(serde_json::to_value(&line).expect("a line always encodes"))?;
                } else {
                    ctx.show(&format!("[{}] {peer_label} {}: {}", utc_time(line.at), line.from, visible(&line.text)))?;
                }
                ctx.out.flush().ok();
                // Printed: only now is it delivered; a line not confirmed
                // (this side cut off first) is offered again on rejoining.
                // A failed write shows as the connection closing.
                let _ = sender.confirm(std::slice::from_ref(&line.id));
            }
            Pushed::Refused { code, text } => {
                if !joined {
                    return Err(Error::failed(format!("the Boss refused the chat ({code}): {text}")));
                }
                eprintln!("spyctl: the Boss refused a line ({code}): {text}");
                // A refused line is answered, so it no longer holds up leaving.
                progress.lock().unwrap_or_else(|p| p.into_inner()).stored += 1;
            }
            Pushed::Heartbeat | Pushed::Orders(_) => {}
        }
    }
}

/// One line saying whether the other side is in the chat (`agent`: the
/// agent a director chats with; none on the agent's side).
fn presence(online: bool, agent: Option<i64>) -> String {
    match (online, agent) {
        (true, Some(agent)) => format!("agent {agent} is in the chat."),
        (true, None) => "a director is in the chat.".to_string(),
        (false, Some(agent)) => {
            format!("agent {agent} is not in the chat: lines are stored and delivered when the agent joins.")
        }
        (false, None) => "no director is in the chat: lines are stored and delivered when a director joins.".into(),
    }
}

/// The sending thread: each non-empty stdin line goes out as it is typed.
/// At the end of input it waits (a bounded time) until the Boss has answered
/// every line sent, then closes the session, which ends the receiving loop.
fn read_stdin(sender: V2Sender, progress: Arc<Mutex<Progress>>) {
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            if line.len() > MAX_CHAT_BYTES {
                eprintln!(
                    "spyctl: that line is {} bytes; a chat line is at most {MAX_CHAT_BYTES}: not sent",
                    line.len()
                );
                continue;
            }
            if sender.say(line).is_err() {
                eprintln!("spyctl: the line could not be sent: the connection is gone");
                break;
            }
            progress.lock().unwrap_or_else(|p| p.into_inner()).sent += 1;
        }
        progress.lock().unwrap_or_else(|p| p.into_inner()).input_ended = true;
        let start = Instant::now();
        while start.elapsed() < LEAVE_WAIT {
            let done = {
                let p = progress.lock().unwrap_or_else(|p| p.into_inner());
                p.stored >= p.sent
            };
            if done {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        sender.close();
    });
}
