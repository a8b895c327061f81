//! One module per command group. Each checks its arguments, calls the domain
//! modules and renders the result; none of them holds business rules.

pub mod agent;
pub mod bench;
pub mod boss;
pub mod chat;
pub mod db;
pub mod demo;
mod demo_live;
pub mod docs;
pub mod export;
pub mod join;
pub mod key;
pub mod listen;
pub mod orders;
pub mod prompt;
pub mod send;
pub mod send_v2;
pub mod session;

use std::io::{IsTerminal, Write};

use crate::cli::{AgentCommand, BossCommand, Command, DbCommand, KeyCommand, MasterKeyCommand};
use crate::error::Result;
use crate::home::Home;

/// What every command gets: where the home is, how to print, where to.
pub struct Ctx<'a> {
    pub home: Home,
    /// Whether --home (or SPYCTL_HOME) chose the home, rather than the default.
    pub home_given: bool,
    pub json: bool,
    pub quiet: bool,
    pub out: &'a mut dyn Write,
}

impl Ctx<'_> {
    /// A status line for people; silent with --quiet or --json.
    pub fn say(&mut self, text: &str) -> Result<()> {
        if self.quiet || self.json {
            return Ok(());
        }
        crate::output::line(self.out, text)
    }

    /// Output that is the command's result (tables); silent only with --json.
    pub fn show(&mut self, text: &str) -> Result<()> {
        if self.json {
            return Ok(());
        }
        crate::output::line(self.out, text)
    }

    pub fn json(&mut self, value: serde_json::Value) -> Result<()> {
        crate::output::json(self.out, &value)
    }

    /// One compact JSON object on one line, for commands that print a stream
    /// of results (JSON Lines).
    pub fn json_line(&mut self, value: serde_json::Value) -> Result<()> {
        crate::output::json_line(self.out, &value)
    }
}

pub fn dispatch(ctx: &mut Ctx<'_>, command: Command) -> Result<()> {
    match command {
        Command::Db(DbCommand::Init { force, yes, raw }) => {
            db::init(ctx, db::InitRequest::check(force, yes, raw, std::io::stdin().is_terminal())?)
        }
        Command::Db(DbCommand::Query { sql, raw, timeout, max_rows }) => match sql {
            Some(sql) => {
                let limits = crate::db::limits::ReadLimits {
                    time: std::time::Duration::from_secs(timeout),
                    max_rows,
                    ..Default::default()
                };
                db::ad_hoc(ctx, &sql, raw, &limits)
            }
            None => db::demo_script(ctx, raw),
        },
        Command::Agent(AgentCommand::Add(args)) => agent::add(ctx, args),
        Command::Agent(AgentCommand::List) => agent::list(ctx),
        Command::Agent(AgentCommand::Delete { agent_id }) => agent::delete(ctx, agent_id),
        Command::Agent(AgentCommand::SetLevel { agent_id, level }) => agent::set_level(ctx, agent_id, level),
        Command::Agent(AgentCommand::Revoke { agent_id }) => agent::revoke(ctx, agent_id),
        Command::Agent(AgentCommand::Audit) => agent::audit(ctx),
        Command::Agent(AgentCommand::Enroll { agent_id, ttl }) => agent::enroll(ctx, agent_id, ttl),
        Command::Join(args) => join::join(ctx, args),
        Command::Order(args) => orders::order(ctx, args),
        Command::Orders(args) => orders::fetch(ctx, args),
        Command::Listen(args) => listen::listen(ctx, args),
        Command::Chat(args) => chat::chat(ctx, args),
        Command::Boss(BossCommand::Verify { id }) => boss::verify(ctx, &id),
        Command::Boss(BossCommand::Export { id, out }) => export::export(ctx, &id, &out),
        Command::Agent(AgentCommand::Key(KeyCommand::Export { agent_id, out, force })) => {
            agent::export_key(ctx, agent_id, &out, force)
        }
        Command::MasterKey(MasterKeyCommand::Status) => key::status(ctx),
        Command::MasterKey(MasterKeyCommand::Rotate { resume, batch }) => key::rotate(ctx, resume, batch),
        Command::MasterKey(MasterKeyCommand::Retire { epoch }) => key::retire(ctx, epoch),
        Command::Login(args) => session::login(ctx, args),
        Command::Logout => session::logout(ctx),
        Command::Whoami => session::whoami(ctx),
        Command::Boss(BossCommand::Serve(args)) => boss::serve(ctx, args),
        Command::Boss(BossCommand::Inbox(args)) => boss::inbox(ctx, args),
        Command::Boss(BossCommand::Bench(args)) => bench::bench(ctx, args),
        Command::Send(args) => send::send(ctx, send::SendRequest::check(args)?),
        Command::Demo(args) => demo::run(ctx, demo::DemoRequest::check(args, ctx.home_given, ctx.json)?),
        Command::Completions { shell } => docs::completions(ctx, shell),
        Command::Man => docs::man(ctx),
    }
}
