//! `demo`: the whole tour in a throw-away home, through the same functions the
//! commands use (real SQLite file, real TCP on 127.0.0.1, real crypto),
//! narrating each step. Any step that does not behave exits non-zero.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::boss::{Boss, BossConfig};
use crate::cli::DemoArgs;
use crate::error::{Error, Hint, Result};
use crate::home::Home;
use crate::net::protocol::{self, Header, Kind};
use crate::net::server::Limits;
use crate::registry::{NewAgent, SAMPLE_AGENTS};

use super::{Ctx, agent, boss, db, join, orders, send, session};

const DIRECTOR: usize = 0; // Ethan Hunt, level 5
const FIELD_AGENT: usize = 5; // Jason Bourne, level 2

/// A home directory removed on drop unless kept.
struct DemoHome {
    home: Home,
    keep: bool,
}

impl Drop for DemoHome {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(self.home.dir());
        }
    }
}

fn fresh_home(keep: bool) -> Result<DemoHome> {
    let nonce = crate::net::ids::random_id();
    let dir = std::env::temp_dir().join(format!("spyctl-demo-{}", &nonce[..12]));
    let home = Home::at(dir);
    home.ensure()?;
    Ok(DemoHome { home, keep })
}

fn step(ctx: &mut Ctx<'_>, n: u32, text: &str) -> Result<()> {
    ctx.show(&format!("\n━━━ Step {n}: {text}"))
}

/// Where the tour runs.
pub enum DemoRequest {
    /// In the home --home named (which must hold no database); kept.
    GivenHome,
    /// In a fresh temporary home, removed afterwards unless `keep`.
    ThrowAway { keep: bool },
}

impl DemoRequest {
    pub fn check(args: DemoArgs, home_given: bool, json: bool) -> Result<DemoRequest> {
        if json {
            return Err(Error::usage("demo narrates for people and has no --json output; run the commands themselves"));
        }
        Ok(if home_given { DemoRequest::GivenHome } else { DemoRequest::ThrowAway { keep: args.keep } })
    }
}

pub fn run(outer: &mut Ctx<'_>, request: DemoRequest) -> Result<()> {
    let demo_home = if let DemoRequest::ThrowAway { keep } = request {
        fresh_home(keep)?
    } else {
        if outer.home.has_db() {
            return Err(Error::failed(format!(
                "{} already holds a spyctl database; the demo would replace it",
                outer.home.dir().display()
            ))
            .hint(Hint::DemoHomeInUse));
        }
        outer.home.ensure()?;
        DemoHome { home: outer.home.clone(), keep: true }
    };
    let kept = demo_home.keep;
    let mut ctx =
        Ctx { home: demo_home.home.clone(), home_given: true, json: false, quiet: outer.quiet, out: &mut *outer.out };
    let ctx = &mut ctx;
    ctx.show(&format!("spyctl demo: a throw-away home at {}", ctx.home.dir().display()))?;

    step(ctx, 1, "db init: the DDL script creates the tables and adds sample agents (names encrypted)")?;
    db::init(ctx, db::InitRequest::fresh())?;

    step(ctx, 2, "db query: delete one row, update one row, then four SELECTs")?;
    db::demo_script(ctx, false)?;

    let director = &SAMPLE_AGENTS[DIRECTOR];
    step(ctx, 3, &format!("login as a director: {} (level {})", director.name, director.level))?;
    session::login_as(ctx, director.name, director.password, 600)?;

    step(ctx, 4, "agent add: directors may add agents (password hashed with Argon2id)")?;
    agent::add_agent(
        ctx,
        &NewAgent {
            name: "Q".into(),
            alias: "Quartermaster".into(),
            level: 3,
            password: Zeroizing::new("exploding-pen-007".into()),
        },
    )?;

    step(ctx, 5, "agent list: a director sees every agent at or below level 5")?;
    agent::list(ctx)?;

    let field = &SAMPLE_AGENTS[FIELD_AGENT];
    step(
        ctx,
        6,
        &format!("login as a field agent: {} (level {}); they see less and may not add", field.name, field.level),
    )?;
    session::login_as(ctx, field.name, field.password, 600)?;
    agent::list(ctx)?;
    let refused = agent::add_agent(
        ctx,
        &NewAgent {
            name: "Mole".into(),
            alias: "Mole".into(),
            level: 5,
            password: Zeroizing::new("let-me-in-please".into()),
        },
    );
    match refused {
        Err(e) => ctx.show(&format!("spyctl agent add -> error: {e}   (refused, as it should be)"))?,
        Ok(()) => return Err(Error::failed("demo step 6 failed: a field agent was allowed to add an agent")),
    }

    step(ctx, 7, "boss serve: the threaded TCP server on 127.0.0.1, a free port")?;
    let boss = Boss::bind(&ctx.home, "127.0.0.1:0", Limits::default(), BossConfig::default())?;
    let addr = boss.local_addr();
    let shutdown = boss.shutdown_handle();
    let server = std::thread::spawn(move || boss.run());
    ctx.show(&format!("Boss listening on {addr}"))?;

    let result = (|| -> Result<()> {
        step(ctx, 8, "send: an encrypted, HMAC-authenticated message; the Boss's ACK is verified")?;
        let request = |payload| send::SendRequest {
            addr: Some(addr.to_string()),
            identity: session::Identity::LoggedIn,
            timeout: Duration::from_secs(10),
            attempts: 3,
            payload,
            protocol: crate::cli::Protocol::V1,
        };
        let text = "The package is in the locker at Victoria station.";
        send::send(ctx, request(send::Payload::Text(text.into())))?;

        step(ctx, 9, "send --file: a file in chunks, SHA-256 checked by the Boss, moved into place atomically")?;
        let file = ctx.home.dir().join("dossier.txt");
        let dossier = "Dossier: Operation Treadstone.\n".repeat(2000);
        std::fs::write(&file, &dossier)?;
        let name = "dossier.txt".to_string();
        send::send(ctx, request(send::Payload::File { path: file, name, size: dossier.len() as u64 }))?;

        step(ctx, 10, "a tampered message: one character of the token changed in transit")?;
        let reply = send_tampered(ctx, addr)?;
        ctx.show(&format!("Boss -> {}", crate::output::visible(reply.trim_end())))?;
        if !reply.starts_with("ERR auth") {
            return Err(Error::failed(format!("demo step 10 failed: the tampered message got {reply:?}")));
        }

        session::login_as(ctx, director.name, director.password, 600)?;
        step(
            ctx,
            11,
            "agent enroll + join: a second home (the agent's own machine) makes its own keys and enrols by a \
             one-time code",
        )?;
        let field_id = {
            let mut gate = session::require(ctx, crate::auth::roles::Action::ManageAgents)?;
            let visible = crate::registry::visible_to(&gate.conn, &gate.keys, gate.agent.level)?;
            let field_id = visible
                .iter()
                .find(|a| a.name == field.name)
                .map(|a| a.id)
                .ok_or_else(|| Error::failed("demo step 11 failed: the field agent is missing"))?;
            let (code, _) = crate::registry::issue_code(&mut gate.conn, &gate.keys, &gate.agent, field_id, 600)?;
            ctx.show(&format!("spyctl agent enroll {field_id} -> {code}   (say it to the agent; single use, 10 min)"))?;
            (field_id, code.to_string())
        };
        let (field_id, code) = field_id;
        let agent_home = Home::at(ctx.home.dir().join("agent-machine"));
        agent_home.ensure()?;
        {
            let mut actx =
                Ctx { home: agent_home.clone(), home_given: true, json: false, quiet: ctx.quiet, out: &mut *ctx.out };
            let join_args = crate::cli::JoinArgs { code, addr: addr.to_string(), timeout: 10 };
            join::join(&mut actx, join_args)?;

            step(
                &mut actx,
                12,
                "send --protocol v2: a Noise IK session from the agent's home, the text signed, the receipt signed",
            )?;
            let text = "Package collected. Heading to the safe house.";
            let request = send::SendRequest {
                addr: Some(addr.to_string()),
                identity: session::Identity::LoggedIn,
                timeout: Duration::from_secs(10),
                attempts: 3,
                payload: send::Payload::Text(text.into()),
                protocol: crate::cli::Protocol::V2,
            };
            send::send(&mut actx, request)?;
        }

        step(
            ctx,
            13,
            "order, then orders: a director's order waits sealed in the agent's outbox; the agent fetches it over v2",
        )?;
        let order = crate::cli::OrderArgs {
            words: vec![field_id.to_string(), "Burn the notebook after reading.".into()],
            level: None,
            file: None,
        };
        orders::order(ctx, order)?;
        {
            let mut actx =
                Ctx { home: agent_home.clone(), home_given: true, json: false, quiet: ctx.quiet, out: &mut *ctx.out };
            orders::fetch(
                &mut actx,
                crate::cli::OrdersArgs { addr: addr.to_string(), timeout: 10, offline: false, save: None, out: None },
            )?;
        }

        step(ctx, 14, "listen: the agent stays connected over v2; the next order is pushed the moment it is queued")?;
        super::demo_live::listen_and_order(ctx, &agent_home, addr, field_id)?;

        step(ctx, 15, "chat 6 and chat: the director and the agent type at once; the Boss relays and stores (sealed)")?;
        let director_id = session::require_login(ctx)?.agent.id;
        super::demo_live::chat(ctx, &agent_home, addr, field_id, director_id)?;

        step(ctx, 16, "send --file, cut off midway: the journal keeps the upload; the same command resumes it")?;
        super::demo_live::resumed_file(ctx, addr)?;

        step(ctx, 17, "boss inbox: a director reads what arrived, decrypted (the v2 message verified as the agent's)")?;
        // The whole tour's inbox, in the order it arrived.
        let everything = crate::cli::InboxArgs { command: None, limit: 1, all: true, since: None, oldest_first: true };
        boss::inbox(ctx, everything)?;
        Ok(())
    })();

    step(ctx, 18, "Ctrl-C for the Boss: stop accepting, finish in-flight messages, commit")?;
    shutdown.shutdown();
    let stats = server.join().map_err(|_| Error::failed("the demo's Boss thread panicked"))?;
    ctx.show(&format!(
        "Boss stopped after {} connection(s) and {} line(s).",
        stats.connections.load(std::sync::atomic::Ordering::Relaxed),
        stats.lines.load(std::sync::atomic::Ordering::Relaxed)
    ))?;
    result?;

    ctx.show("\nThe tour is over. What to try next (two terminals):")?;
    ctx.show("  spyctl db init")?;
    ctx.show("  spyctl boss serve                      # terminal 1")?;
    ctx.show("  spyctl login --name \"Ethan Hunt\"       # terminal 2 (password: mission-accepted-96)")?;
    ctx.show("  spyctl send \"Hello, Boss\"")?;
    ctx.show("  spyctl boss inbox")?;
    ctx.show(
        "Agents on their own machines: `spyctl agent enroll N` (director), then `spyctl join CODE --addr HOST:PORT`,",
    )?;
    ctx.show("`spyctl listen` and `spyctl chat` in the agent's home; `spyctl order N TEXT` and `spyctl chat N` in the Boss's.")?;
    if kept {
        ctx.show(&format!("The demo home was kept: spyctl --home {} agent list", ctx.home.dir().display()))?;
    }
    Ok(())
}

/// Seals a real message as the logged-in agent, flips one character of the
/// token, sends it over a raw socket and returns the Boss's answer line.
fn send_tampered(ctx: &Ctx<'_>, addr: std::net::SocketAddr) -> Result<String> {
    let gate = session::require_login(ctx)?;
    let key = gate.keyring.agent_wire_key_at(gate.agent.id, gate.agent.key_generation);
    let plaintext = protocol::encode_message(
        &Header { id: crate::net::ids::random_id(), kind: Kind::Text },
        b"Transfer 1M to account 666",
    );
    let mut token = key.seal(&plaintext).into_bytes();
    let i = token.len() / 2;
    token[i] = if token[i] == b'A' { b'B' } else { b'A' };
    let token = String::from_utf8(token).map_err(|_| Error::failed("token is ASCII"))?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(protocol::format_request(gate.agent.id, &token).as_bytes())?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply)?;
    Ok(reply)
}
