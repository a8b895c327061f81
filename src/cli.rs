//! The command line, declared with clap. Only declarations live here: each
//! command's module turns these raw flags into a checked request.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "spyctl",
    version,
    about = "A secret-agent registry and an encrypted, authenticated channel to the Boss",
    long_about = "A secret-agent registry with encrypted fields and role-based login, and an encrypted, \
                  HMAC-authenticated message channel to \"the Boss\".\n\n\
                  Start with `spyctl demo` for a guided tour in a throw-away home.",
    term_width = 100,
    after_help = "Homes hold spyctl.db, master.key and session. Secrets never go on the command line: \
                  passwords are prompted without echo, or read with --password-stdin."
)]
pub struct Cli {
    /// Directory holding the database, master key and session [default: the platform data directory]
    #[arg(long, global = true, env = "SPYCTL_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Print machine-readable JSON instead of tables and messages
    #[arg(long, global = true)]
    pub json: bool,
    /// Print only errors
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Log more to stderr (-v info, -vv debug); RUST_LOG overrides
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the database and run the SQL demos
    #[command(subcommand)]
    Db(DbCommand),
    /// Add, list, re-level, revoke and delete agents; export wire keys; read the audit log
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Master-key epochs: list them, rotate (online rewrap), retire (directors)
    #[command(subcommand, name = "key")]
    MasterKey(MasterKeyCommand),
    /// Log in as an agent (password prompted without echo)
    Login(LoginArgs),
    /// End the current session
    Logout,
    /// Show who is logged in
    Whoami,
    /// Run the Boss's server or read its inbox
    #[command(subcommand)]
    Boss(BossCommand),
    /// Send an encrypted, authenticated message or file to the Boss
    Send(SendArgs),
    /// On the agent's machine: enrol this home with a one-time code from `agent enroll`
    Join(JoinArgs),
    /// Queue an order for one enrolled agent, or every enrolled agent at a level (directors)
    Order(OrderArgs),
    /// On the agent's machine: fetch pending orders over v2, keep them in this home, list them
    Orders(OrdersArgs),
    /// On the agent's machine: stay connected over v2 and print each order as it arrives
    Listen(ListenArgs),
    /// Full-duplex chat over v2: `chat` in an agent's joined home, `chat N` for a director in the Boss's home
    Chat(ChatArgs),
    /// Run the whole tour in a throw-away home, narrating each step
    Demo(DemoArgs),
    /// Print a shell completion script (bash, zsh, fish, ...) to stdout
    Completions {
        /// The shell to complete for
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout
    #[command(hide = true)]
    Man,
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Create the tables (drop + create) and add the sample agents, then print them
    Init {
        /// Replace a database that holds data: back it up (and files/) under backups/, then start over
        #[arg(long)]
        force: bool,
        /// With --force: do not ask for confirmation (for scripts; needed when stdin is not a terminal)
        #[arg(long, requires = "force")]
        yes: bool,
        /// Show the rows as stored (ciphertext), not decrypted
        #[arg(long)]
        raw: bool,
    },
    /// Run the demo script: delete one row, update one row, four SELECTs
    Query {
        /// Run one read-only ad-hoc SELECT instead of the demo script
        #[arg(long, value_name = "SELECT")]
        sql: Option<String>,
        /// Show values as stored (ciphertext), not decrypted
        #[arg(long)]
        raw: bool,
        /// With --sql: stop the query after this many seconds
        #[arg(
            long,
            requires = "sql",
            value_name = "SECONDS",
            default_value_t = crate::db::limits::DEFAULT_TIMEOUT_SECS,
            value_parser = clap::value_parser!(u64).range(1..=3600)
        )]
        timeout: u64,
        /// With --sql: refuse a result of more than N rows
        #[arg(
            long,
            requires = "sql",
            value_name = "N",
            default_value_t = crate::db::limits::DEFAULT_MAX_ROWS,
            value_parser = parse_max_rows
        )]
        max_rows: usize,
    },
}

#[derive(Debug, Subcommand)]
pub enum MasterKeyCommand {
    /// List the key epochs and what still uses each (rows, files, exported agent keys)
    Status,
    /// Add a new master-key epoch and rewrap everything under it, online
    #[command(long_about = "Add a new master-key epoch to master.key and rewrap everything stored under \
        older epochs (agent rows, messages, audit entries, file names, enrolment codes, received files), \
        in small transactions while the Boss keeps running. New writes use the new epoch at once; a \
        running Boss picks it up within a second. Keys exported with `agent key export` before the \
        rotation keep working until their epoch is retired. Password hashes move at each agent's next \
        login (they need the password).")]
    Rotate {
        /// Add no epoch: only finish the rewrap of an interrupted rotation
        #[arg(long)]
        resume: bool,
        /// Rows per rewrap transaction
        #[arg(long, value_name = "N", default_value_t = crate::epochs::DEFAULT_BATCH, value_parser = parse_batch)]
        batch: usize,
    },
    /// Remove an older epoch's secret from master.key once nothing uses it
    #[command(long_about = "Remove an older epoch's secret from master.key. Refused while any row or \
        received file still uses the epoch (run `key rotate --resume` first; password hashes move at \
        each agent's next login). Wire keys exported in that epoch stop working at once: `key status` \
        lists the agents that hold one.")]
    Retire {
        /// The epoch to retire (see `spyctl key status`)
        epoch: u32,
    },
}

/// `--batch`: 1 to 100,000 rows.
fn parse_batch(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=100_000).contains(&n) => Ok(n),
        _ => Err("expected a whole number of rows from 1 to 100000".to_string()),
    }
}

/// `--max-rows`: at least 1.
fn parse_max_rows(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err("expected a whole number of rows, at least 1".to_string()),
    }
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Add an agent (directors only); the password is prompted without echo
    Add(AgentAddArgs),
    /// List the agents you may see (your level and below)
    List,
    /// Manage agents' wire keys
    #[command(subcommand)]
    Key(KeyCommand),
    /// Delete an agent at or below your level (directors only); its sessions and key stop working
    Delete {
        /// The agent to delete
        #[arg(value_name = "AGENT_ID")]
        agent_id: i64,
    },
    /// Move an agent at or below your level to another level, also at or below yours (directors only)
    SetLevel {
        /// The agent to move
        #[arg(value_name = "AGENT_ID")]
        agent_id: i64,
        /// The new security level, 1 to 5
        #[arg(value_name = "LEVEL", allow_negative_numbers = true)]
        level: i64,
    },
    /// Replace an agent's wire key at once: its old key, sessions and captured lines are refused (directors only)
    Revoke {
        /// The agent whose key to revoke
        #[arg(value_name = "AGENT_ID")]
        agent_id: i64,
    },
    /// Show who added, deleted, re-levelled, revoked or exported whom, and when (directors only)
    Audit,
    /// Issue a one-time enrolment code for an agent at or below your level (directors only)
    #[command(after_help = "The code works once, dies after one wrong try and expires. On the agent's own machine, \
                  in its own home: spyctl join CODE --addr HOST:PORT")]
    Enroll {
        /// The agent to enrol
        #[arg(value_name = "AGENT_ID")]
        agent_id: i64,
        /// Minutes the code stays valid
        #[arg(long, default_value_t = 10, value_name = "MINUTES", value_parser = clap::value_parser!(u64).range(1..=1440))]
        ttl: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Write an agent's wire key to a file (0600), for sending from another machine (directors only)
    Export {
        /// The agent whose key to export
        #[arg(value_name = "AGENT_ID")]
        agent_id: i64,
        /// Where to write the key
        #[arg(long, short, value_name = "FILE")]
        out: PathBuf,
        /// Overwrite FILE if it exists
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
pub struct AgentAddArgs {
    /// The agent's real name (stored encrypted)
    #[arg(long)]
    pub name: String,
    /// The agent's code name (stored encrypted)
    #[arg(long)]
    pub alias: String,
    /// Security level: 1-2 field agent, 3 handler, 4-5 director
    #[arg(long, value_parser = clap::value_parser!(i64))]
    pub level: i64,
    /// Read the new agent's password from the first line of stdin instead of prompting
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Agent name (prompted if omitted)
    #[arg(long)]
    pub name: Option<String>,
    /// Read the password from the first line of stdin instead of prompting
    #[arg(long)]
    pub password_stdin: bool,
    /// Session lifetime in seconds (at most 7 days)
    #[arg(
        long,
        default_value_t = crate::auth::session::DEFAULT_TTL_SECS,
        value_name = "SECONDS",
        value_parser = clap::value_parser!(u64).range(1..=crate::auth::session::MAX_TTL_SECS)
    )]
    pub ttl: u64,
}

#[derive(Debug, Subcommand)]
pub enum BossCommand {
    /// Run the Boss's threaded TCP server until Ctrl-C or SIGTERM
    Serve(ServeArgs),
    /// Show received messages and files, decrypted, newest first, with each signature's status (directors only)
    Inbox(InboxArgs),
    /// Check a received message's or file's signature again (directors only)
    Verify {
        /// The message or file id (as `boss inbox` shows it)
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Write a signed message or file with its agent's signature, for stock minisign to check offline (directors only)
    #[command(after_help = "DIR gets four files: body (the text, or the decrypted file), statement (what the agent \
                      signed: it names the body's SHA-256), statement.minisig and agent.pub. Check them anywhere with \
                      `minisign -V -p DIR/agent.pub -m DIR/statement`, then compare `sha256sum DIR/body` with the \
                      statement's sha256 line. Nothing is written unless the signature verifies here first.")]
    Export {
        /// The message or file id (as `boss inbox` shows it)
        #[arg(value_name = "ID")]
        id: String,
        /// The directory to write into (created if missing; its four files must not exist yet)
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Load-test a running Boss: N senders, M messages of S bytes, real tokens and ACKs
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Entries are read one at a time, so memory stays flat however many and however long they are. \
                  Long messages are shortened in the table; `boss inbox show ID` prints one whole, and --json \
                  is never shortened."
)]
pub struct InboxArgs {
    #[command(subcommand)]
    pub command: Option<InboxCommand>,
    /// Show at most N entries
    #[arg(long, default_value_t = 50, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: u64,
    /// Show every entry (no --limit)
    #[arg(long, conflicts_with = "limit")]
    pub all: bool,
    /// Only entries received since WHEN: a UTC time (2026-12-03, 2026-12-03 14:00[:00]) or a span ago (90s, 30m, 2h, 7d)
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Oldest first instead of newest first
    #[arg(long)]
    pub oldest_first: bool,
}

#[derive(Debug, Subcommand)]
pub enum InboxCommand {
    /// Print one message (or file entry) whole, by its id
    Show {
        /// The message or file id, as `boss inbox` lists it
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Write a received file, decrypted and checked, to PATH (0600; directors only)
    #[command(after_help = "Received files are stored encrypted under the home's files/; this is the only way \
                      out. Every segment is checked and the SHA-256 compared with the one recorded on arrival; \
                      on any mismatch nothing is left at PATH.")]
    Get {
        /// The file's id, as `boss inbox` shows it
        #[arg(value_name = "ID")]
        id: String,
        /// Where to write it
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
        /// Overwrite PATH if it exists
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port)
    #[arg(long, default_value = "127.0.0.1:5000", env = "SPYCTL_BIND", value_name = "ADDR")]
    pub bind: String,
    /// Most connections served at once; when full, a connection with no accepted line yet is closed for the newcomer, else it gets `ERR busy`
    #[arg(long, default_value_t = 256)]
    pub max_connections: usize,
    /// Most connections from one IP address [default: a quarter of --max-connections]
    #[arg(long, value_name = "N")]
    pub max_per_address: Option<usize>,
    /// Seconds a connection may go without new work, a message or chunk stored (ERR and duplicate answers do not count)
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub idle_timeout: u64,
    /// Seconds a client has to finish a line once it has started it
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub line_deadline: u64,
    /// Oldest message token accepted, in seconds
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub ttl: u64,
    /// Largest file accepted, in bytes (0 refuses files)
    #[arg(long, default_value_t = 1 << 30, value_name = "BYTES")]
    pub max_file_bytes: u64,
    /// Most bytes one agent may hold: its completed files plus its unfinished uploads' declared sizes
    #[arg(long, default_value_t = 4 << 30, value_name = "BYTES")]
    pub max_stored_bytes: u64,
    /// Most unfinished uploads one agent may have at once
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub max_partial_uploads: usize,
    /// Seconds an unfinished upload may go untouched before it is deleted (checked while the Boss runs and at start)
    #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
    pub partial_expiry: u64,
    /// Free bytes to keep on the disk holding files/: below it uploads get `ERR forbidden` (text messages still work)
    #[arg(long, default_value_t = 256 << 20, value_name = "BYTES")]
    pub min_free_bytes: u64,
    /// Serve v1 `MSG` lines (the Fernet PSK channel); `off` leaves enrolment and v2 sessions only
    #[arg(long, value_enum, default_value_t = Switch::On)]
    pub v1: Switch,
    /// v2 handshakes that end without a session (each costs the Boss a few X25519 operations) one address may
    /// make per second, in bursts of twice that; past it the address gets `ERR busy` at no cost until it
    /// refills. Handshakes of enrolled agents never count. 0 turns the limit off
    #[arg(long, default_value_t = crate::boss::handshake_budget::DEFAULT_PER_SECOND, value_name = "N")]
    pub failed_handshakes: u32,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// The message; without TEXT or --file, each line of stdin is sent as a message
    #[arg(conflicts_with = "file")]
    pub text: Option<String>,
    /// Send a file instead of text; run the same command again to resume an interrupted upload
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub to: SenderArgs,
    /// Seconds to wait for each answer before retrying
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub timeout: u64,
    /// Attempts per message before giving up
    #[arg(long, default_value_t = 5)]
    pub attempts: u32,
    /// Wire protocol: v1 (Fernet lines, the course's PSK channel) or v2 (a Noise IK
    /// session from a joined home: forward secrecy, every answer authenticated)
    #[arg(long, value_enum, default_value_t = Protocol::V1)]
    pub protocol: Protocol,
}

/// A feature switched on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

#[derive(Debug, Args)]
#[command(after_help = "Orders wait, sealed, in the agent's outbox until it runs `spyctl orders` from its \
                  joined home; each is confirmed only once the agent has stored it, so none is lost or shown \
                  twice. Only enrolled agents (agent enroll, then join) receive orders.")]
pub struct OrderArgs {
    /// AGENT_ID then TEXT (`order 6 "text"`), or TEXT alone with --level (`order --level 2 "text"`);
    /// the text is at most 8 KiB, and may be left out with --file
    #[arg(value_name = "[AGENT_ID] TEXT", num_args = 0..=2, required_unless_present = "file")]
    pub words: Vec<String>,
    /// Every enrolled agent at exactly this level
    #[arg(long, value_name = "L", value_parser = clap::value_parser!(u8).range(1..=5))]
    pub level: Option<u8>,
    /// A file the order carries (a regular file, 1 byte to 1 GiB; a symlink is refused): stored sealed
    /// once under files/orders, downloaded by each agent with the order
    #[arg(long, value_name = "PATH")]
    pub file: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct OrdersArgs {
    /// The Boss's address
    #[arg(long, default_value = "127.0.0.1:5000", env = "SPYCTL_ADDR", value_name = "HOST:PORT")]
    pub addr: String,
    /// Seconds to wait for each answer
    #[arg(long, default_value_t = 10, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=600))]
    pub timeout: u64,
    /// List the orders this home already holds, without contacting the Boss
    #[arg(long)]
    pub offline: bool,
    /// Write the file ORDER_ID carries, checked, to --out (no Boss contacted)
    #[arg(long, value_name = "ORDER_ID", requires = "out")]
    pub save: Option<String>,
    /// Where --save writes: a new file (never overwritten), 0600
    #[arg(long, value_name = "PATH", requires = "save")]
    pub out: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
#[command(after_help = "Each order is stored in this home (sealed) before the Boss is told it arrived, exactly as \
                  `orders` does, then printed. Runs until Ctrl-C, Ctrl-D on a terminal, or the Boss closing the \
                  connection; reconnecting is up to you (run it again: nothing is lost meanwhile).")]
pub struct ListenArgs {
    /// The Boss's address
    #[arg(long, default_value = "127.0.0.1:5000", env = "SPYCTL_ADDR", value_name = "HOST:PORT")]
    pub addr: String,
    /// Seconds to wait for the connection and the handshake
    #[arg(long, default_value_t = 10, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=600))]
    pub timeout: u64,
}

#[derive(Debug, Args)]
#[command(after_help = "Type a line and press Enter to send it; the other side's lines appear as they arrive. \
                  Lines typed while the other side is away are stored (sealed) by the Boss and delivered when \
                  it joins. Ctrl-D (end of input) leaves once the Boss has stored every line sent.")]
pub struct ChatArgs {
    /// A director, in the Boss's home: the enrolled agent to chat with. An agent, in its joined home: nothing
    #[arg(value_name = "AGENT_ID")]
    pub agent: Option<i64>,
    /// The Boss's address
    #[arg(long, default_value = "127.0.0.1:5000", env = "SPYCTL_ADDR", value_name = "HOST:PORT")]
    pub addr: String,
    /// Seconds to wait for the connection and the handshake
    #[arg(long, default_value_t = 10, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=600))]
    pub timeout: u64,
}

/// Which wire protocol `send` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    V1,
    V2,
}

#[derive(Debug, Args)]
#[command(after_help = "Run it in the agent's own home (--home DIR or SPYCTL_HOME), not the Boss's. The home's \
                  identity (identity.key) is made if missing and never leaves it; the Boss's public keys are \
                  pinned in boss.pin. Then `spyctl send --addr HOST:PORT TEXT` works from this home.")]
pub struct JoinArgs {
    /// The one-time code from `spyctl agent enroll` (AGENT_ID-word-word-word)
    #[arg(value_name = "CODE")]
    pub code: String,
    /// The Boss's address
    #[arg(long, env = "SPYCTL_ADDR", value_name = "HOST:PORT")]
    pub addr: String,
    /// Seconds to wait for each answer
    #[arg(long, default_value_t = 10, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=600))]
    pub timeout: u64,
}

#[derive(Debug, Args)]
#[command(after_help = "With --home DIR (or SPYCTL_HOME) the tour runs in DIR, which must not hold a database yet, \
                  and DIR is kept afterwards.")]
pub struct DemoArgs {
    /// Keep the demo's throw-away home instead of deleting it
    #[arg(long)]
    pub keep: bool,
}

/// How `boss bench` senders use connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchMode {
    /// One connection per sender, reused for every message
    Persistent,
    /// A new connection for every message
    PerMessage,
}

#[derive(Debug, Args)]
#[command(after_help = "Sends as the logged-in agent, or as --agent-id with --key-file. Every message is a real \
                  sealed token and every ACK is verified; messages are stored in the Boss's inbox.")]
pub struct BenchArgs {
    #[command(flatten)]
    pub to: SenderArgs,
    /// Concurrent senders (one thread each)
    #[arg(long, short = 'c', default_value_t = 1, value_name = "N")]
    pub connections: usize,
    /// Messages in total, split evenly over the senders
    #[arg(long, short = 'n', default_value_t = 1000, value_name = "M")]
    pub messages: u64,
    /// Body bytes per message
    #[arg(long, short = 's', default_value_t = 64, value_name = "BYTES")]
    pub size: usize,
    /// Keep one connection per sender, or open one per message
    #[arg(long, value_enum, default_value_t = BenchMode::Persistent)]
    pub mode: BenchMode,
    /// Messages in flight per persistent connection (1 waits for each ACK before the next)
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub pipeline: usize,
    /// Seconds to wait for each answer
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub timeout: u64,
    /// v1 (Fernet lines) or v2 (Noise sessions, signed texts; needs a joined home)
    #[arg(long, value_enum, default_value_t = Protocol::V1)]
    pub protocol: Protocol,
}

/// The Boss's address when neither `--addr`, `SPYCTL_ADDR` nor a joined
/// home names one.
pub const DEFAULT_ADDR: &str = "127.0.0.1:5000";

/// Where to send and as whom: shared by `send` and `boss bench`.
#[derive(Debug, Args)]
pub struct SenderArgs {
    /// The Boss's address [default: `send` from a joined home: the address it joined; else 127.0.0.1:5000]
    #[arg(long, env = "SPYCTL_ADDR", value_name = "HOST:PORT")]
    pub addr: Option<String>,
    /// Send as this agent with --key-file, without a login (e.g. from another machine)
    #[arg(long, requires = "key_file", value_name = "AGENT_ID")]
    pub agent_id: Option<i64>,
    /// The agent's wire key, as written by `spyctl agent key export`
    #[arg(long, requires = "agent_id", value_name = "FILE")]
    pub key_file: Option<PathBuf>,
}
