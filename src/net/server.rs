//! A threaded line server on std threads: the Rust mirror of Python's
//! `socketserver.ThreadingTCPServer`, with the limits that one lacks.
//!
//! An accept loop hands each connection to its own thread, up to
//! `max_connections` live at once and `max_per_address` from one IP address.
//! When a newcomer finds no slot, the server makes room OpenSSH-style
//! (`MaxStartups`): it closes a connection that has not yet had a line
//! accepted, never one that has, so a client without a key, reconnecting in a
//! loop, cannot lock out the agents who have one (see [`Admission`]). Only
//! when every slot is held by accepted connections does the newcomer get
//! `ERR busy`. Refusals are counted and logged once a second per kind, so no
//! client can make the log grow with its traffic. Each thread reads `\n`-terminated lines under three limits: an idle
//! timeout counted from the connection's start or its last *accepted* line (so
//! a client that only sends lines the handler refuses cannot hold a slot
//! forever), a deadline for a whole line once it has started (a slow sender
//! cannot pin a thread), and a length cap checked before the buffer grows. Each
//! line goes to a [`LineHandler`]; its answer is written back. Shutdown stops
//! the accept loop, lets every connection finish the line it is on, and waits
//! for the threads: they run inside [`std::thread::scope`], so they borrow the
//! handler and cannot outlive [`Server::run`].

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::protocol::{self, ErrorCode};
use super::reply::{Broken, Outbox, Reply, Settled};

/// The server's limits.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    /// Most live connections from one IP address (a client behind one
    /// address cannot take more than this share of the slots).
    pub max_per_address: usize,
    pub max_line_bytes: usize,
    /// Longest a connection may go without an accepted line, counted from its
    /// start or its last accepted line, while no line is in progress.
    pub idle_timeout: Duration,
    /// Longest time from a line's first byte to its newline.
    pub line_deadline: Duration,
    /// How often blocked reads wake to check for shutdown.
    pub poll: Duration,
    /// After shutdown starts, how long a connection may keep sending lines
    /// that were already on their way before it is closed.
    pub drain_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 256,
            max_per_address: default_per_address(256),
            max_line_bytes: protocol::MAX_LINE_BYTES,
            idle_timeout: Duration::from_secs(60),
            line_deadline: Duration::from_secs(10),
            poll: Duration::from_millis(200),
            drain_grace: Duration::from_secs(5),
        }
    }
}

/// The per-address cap when none is given: a quarter of the slots (at least
/// one), so one address can never hold more than that share.
pub fn default_per_address(max_connections: usize) -> usize {
    max_connections.div_ceil(4).max(1)
}

/// What a connection thread knows about its peer: for logs, and a handle to
/// its socket for handlers that push lines unasked (v2 `listen` and `chat`).
#[derive(Debug, Clone)]
pub struct Peer {
    pub id: u64,
    pub addr: SocketAddr,
    /// The connection's socket, shared with its thread. A handler that writes
    /// through it must write whole lines and answer that connection's
    /// requests with empty [`Answer`] lines from then on, so that its own
    /// writes and the thread's never interleave.
    pub socket: Option<Arc<TcpStream>>,
}

/// A handler's answer to one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The full reply line, `\n` included.
    pub line: String,
    pub outcome: Outcome,
}

/// What a line achieved, as far as the server's limits are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// New work was done (a message or chunk stored). Only this restarts the
    /// idle timer, and it marks the connection as one never closed to make
    /// room for a newcomer.
    Accepted,
    /// Answered without new work (a duplicate of something stored): neither
    /// restarts the idle timer, so a replayed line cannot hold a slot.
    Repeated,
    /// Refused with this code; counted for the once-a-second log summary.
    Refused(ErrorCode),
}

impl Answer {
    pub fn accepted(line: String) -> Answer {
        Answer { line, outcome: Outcome::Accepted }
    }

    pub fn repeated(line: String) -> Answer {
        Answer { line, outcome: Outcome::Repeated }
    }

    /// An `ERR` line with `code` and `text`.
    pub fn refused(code: ErrorCode, text: &str) -> Answer {
        Answer { line: protocol::format_err(code, text), outcome: Outcome::Refused(code) }
    }
}

/// Answers lines. Implementations must not panic on any input; a panic is
/// caught, logged, answered with `ERR internal` and the connection closed.
/// `Sync` because every connection thread borrows the one handler.
pub trait LineHandler: Sync {
    /// `line` excludes the `\n`.
    fn handle(&self, line: &[u8], peer: &Peer) -> Answer;

    /// Answers several lines a client pipelined (all already received), one
    /// answer per line, in order. Handlers that can share work between them
    /// (one commit for all) override this.
    fn handle_batch(&self, lines: &[&[u8]], peer: &Peer) -> Vec<Answer> {
        lines.iter().map(|line| self.handle(line, peer)).collect()
    }

    /// Answers the batch through `reply`, now or later and from any thread
    /// (see [`super::reply`]): a handler whose answers wait for a group
    /// commit lets the committing thread send them, so the connection thread
    /// does not wait. By default, answers at once with [`Self::handle_batch`].
    fn handle_batch_deferred(&self, lines: &[&[u8]], peer: &Peer, reply: Reply) {
        reply.send(self.handle_batch(lines, peer));
    }

    /// The connection `peer` has closed: forget anything kept for it (a v2
    /// session's keys, say).
    fn closed(&self, _peer: &Peer) {}
}

/// Most pipelined lines answered together.
const MAX_BATCH_LINES: usize = 64;

/// Stack for connection threads: they hold little on the stack, and hundreds
/// of idle connections should cost little memory.
const CONNECTION_STACK: usize = 256 * 1024;

/// A bound, not yet running server.
pub struct Server {
    listener: TcpListener,
    limits: Limits,
    stop: Arc<AtomicBool>,
    local_addr: SocketAddr,
}

/// Stops a running server from another thread (signal handler, test, demo).
#[derive(Clone)]
pub struct ShutdownHandle {
    stop: Arc<AtomicBool>,
    wake_addr: SocketAddr,
}

impl ShutdownHandle {
    /// Asks the server to stop; returns at once. `run` returns when done.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept() with a connection of our own.
        let _ = TcpStream::connect_timeout(&self.wake_addr, Duration::from_secs(1));
    }

    pub fn is_stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// Why a server could not start.
#[derive(Debug)]
pub enum ServerError {
    /// No address `addr` resolves to could be bound and listened on; `source`
    /// is the last address's failure (e.g. [`io::ErrorKind::AddrInUse`]).
    Bind { addr: String, source: io::Error },
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The cause is `source()`, printed after this by whoever reports it.
            ServerError::Bind { addr, .. } => write!(f, "cannot listen on {addr}"),
        }
    }
}

impl std::error::Error for ServerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServerError::Bind { source, .. } => Some(source),
        }
    }
}

/// Counters for the end-of-run log line.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicU64,
    pub refused_busy: AtomicU64,
    /// Connections closed to make room for a newcomer.
    pub evicted: AtomicU64,
    pub lines: AtomicU64,
}

/// Where a connection stands, for choosing whom to close when slots run
/// short. The values only grow ([`AtomicU8::fetch_max`]), so each thread
/// records its progress without a lock.
const FRESH: u8 = 0;
/// A line was answered without new work (refused, or a duplicate).
const REFUSED: u8 = 1;
/// A line was accepted: never closed for a newcomer.
const AUTHENTIC: u8 = 2;

/// One live connection, as the accept loop sees it.
struct Slot {
    id: u64,
    ip: IpAddr,
    /// FRESH, REFUSED or AUTHENTIC.
    state: AtomicU8,
    /// Set when the slot was given to a newcomer; the thread then says
    /// `busy` and closes.
    evicted: AtomicBool,
    /// A handle to shut the socket's read side, which wakes a thread blocked
    /// in `read` at once; also the handler's [`Peer::socket`].
    stream: Arc<TcpStream>,
}

impl Slot {
    /// Who goes first when room is needed: lower first, then the oldest
    /// (slots are kept in arrival order). Connections that proved nothing
    /// useful (a refused line) go before the others; among those, the oldest
    /// has had the longest to send an authentic line, and a newcomer (an
    /// agent's, perhaps) gets the longest to send one.
    fn eviction_rank(&self) -> Option<u8> {
        match self.state.load(Ordering::SeqCst) {
            REFUSED => Some(0),
            FRESH => Some(1),
            _ => None,
        }
    }
}

/// The live connections and the rules for letting one more in.
///
/// A newcomer is admitted if its address holds fewer than `max_per_address`
/// slots and the server fewer than `max_connections`. Otherwise one slot is
/// taken back from a connection that has not had a line accepted, chosen by
/// [`Slot::eviction_rank`] (from the newcomer's own address when that
/// address is at its cap), and given to the newcomer. A newcomer is itself
/// unproven, so an accepted connection is never closed for it; if every
/// candidate slot is held by accepted connections, the newcomer gets `busy`.
struct Admission {
    slots: Mutex<Vec<Arc<Slot>>>,
    /// Connection threads alive, evicted ones included until they exit. The
    /// accept loop waits while there are twice `max_connections`, so
    /// evictions cannot pile up threads.
    threads: AtomicUsize,
}

enum Admit {
    Yes(Arc<Slot>),
    Busy,
}

impl Admission {
    fn new() -> Admission {
        Admission { slots: Mutex::new(Vec::new()), threads: AtomicUsize::new(0) }
    }

    fn live(&self) -> usize {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn admit(
        &self,
        id: u64,
        stream: &TcpStream,
        ip: IpAddr,
        limits: &Limits,
        stats: &Stats,
        log: &RefusalLog,
    ) -> Admit {
        let Ok(handle) = stream.try_clone() else { return Admit::Busy };
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let from_ip = slots.iter().filter(|s| s.ip == ip).count();
        let need_room = if from_ip >= limits.max_per_address.max(1) {
            Some(true)
        } else if slots.len() >= limits.max_connections {
            Some(false)
        } else {
            None
        };
        if let Some(same_ip_only) = need_room {
            let victim = slots
                .iter()
                .enumerate()
                .filter(|(_, s)| !same_ip_only || s.ip == ip)
                .filter_map(|(i, s)| s.eviction_rank().map(|rank| (rank, i)))
                .min();
            let Some((_, index)) = victim else { return Admit::Busy };
            let victim = slots.remove(index);
            victim.evicted.store(true, Ordering::SeqCst);
            let _ = victim.stream.shutdown(Shutdown::Read);
            stats.evicted.fetch_add(1, Ordering::Relaxed);
            log.note(Kind::Evicted);
            tracing::debug!(conn = victim.id, by = id, "closed to make room for a newcomer");
        }
        let slot = Arc::new(Slot {
            id,
            ip,
            state: AtomicU8::new(FRESH),
            evicted: AtomicBool::new(false),
            stream: Arc::new(handle),
        });
        slots.push(slot.clone());
        self.threads.fetch_add(1, Ordering::SeqCst);
        Admit::Yes(slot)
    }

    /// Gives a connection's slot back (if it still holds it) as its thread ends.
    fn release(&self, slot: &Slot) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = slots.iter().position(|s| s.id == slot.id) {
            slots.remove(i);
        }
        drop(slots);
        self.threads.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the server refuses or cuts off, for the log summary.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A line answered `ERR` with this code.
    Line(ErrorCode),
    /// A newcomer turned away with `busy`.
    Busy,
    /// A connection closed to make room for a newcomer.
    Evicted,
    /// A connection closed for a line over the length cap.
    TooLong,
    /// A connection closed for a line not finished in time.
    Deadline,
}

/// Summary kinds after the per-code ones.
const SERVER_KINDS: [(&str, Kind); 4] = [
    ("busy", Kind::Busy),
    ("evicted", Kind::Evicted),
    ("closed: line too long", Kind::TooLong),
    ("closed: line deadline passed", Kind::Deadline),
];

/// Refusals, counted and written to the log as one line per kind and second
/// (with the count), instead of one line per refusal: a client without a key
/// can make a refusal per microsecond, and must not be able to fill the disk
/// through the log. Each line is at most a hundred bytes or so, so refusals
/// cost the log at most about `kinds x 100` bytes a second.
///
/// Lines answered with new work (and repeats) are counted here too and
/// summarised at info once a second: a line per stored message would cost
/// the Boss a formatted write for every message (issue 15).
struct RefusalLog {
    counts: [AtomicU64; ErrorCode::ALL.len() + SERVER_KINDS.len()],
    accepted: AtomicU64,
    repeated: AtomicU64,
}

impl RefusalLog {
    fn new() -> RefusalLog {
        RefusalLog {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            accepted: AtomicU64::new(0),
            repeated: AtomicU64::new(0),
        }
    }

    fn index(kind: Kind) -> usize {
        let code_index = |code| ErrorCode::ALL.iter().position(|c| *c == code).unwrap_or(0);
        match kind {
            Kind::Line(code) => code_index(code),
            Kind::Busy => ErrorCode::ALL.len(),
            Kind::Evicted => ErrorCode::ALL.len() + 1,
            Kind::TooLong => ErrorCode::ALL.len() + 2,
            Kind::Deadline => ErrorCode::ALL.len() + 3,
        }
    }

    fn note(&self, kind: Kind) {
        self.counts[Self::index(kind)].fetch_add(1, Ordering::Relaxed);
    }

    /// Logs one line for each kind counted since the last flush, with its
    /// count, and one for the lines answered with an ACK.
    fn flush(&self) {
        let accepted = self.accepted.swap(0, Ordering::Relaxed);
        let repeated = self.repeated.swap(0, Ordering::Relaxed);
        if accepted + repeated > 0 {
            tracing::info!(stored = accepted, repeated, "lines answered since the last summary");
        }
        for (i, count) in self.counts.iter().enumerate() {
            let n = count.swap(0, Ordering::Relaxed);
            if n == 0 {
                continue;
            }
            match ErrorCode::ALL.get(i) {
                Some(code) => tracing::info!(kind = code.as_str(), count = n, "refused lines since the last summary"),
                None => {
                    let (what, _) = SERVER_KINDS[i - ErrorCode::ALL.len()];
                    tracing::warn!(kind = what, count = n, "connections refused or cut since the last summary");
                }
            }
        }
    }
}

/// How often refusals are summarised in the log.
const SUMMARY_EVERY: Duration = Duration::from_secs(1);

impl Server {
    pub fn bind(addr: impl ToSocketAddrs + std::fmt::Display, limits: Limits) -> Result<Server, ServerError> {
        let bound = listen(&addr, limits.max_connections).and_then(|l| Ok((l.local_addr()?, l)));
        let (local_addr, listener) = bound.map_err(|source| ServerError::Bind { addr: addr.to_string(), source })?;
        Ok(Server { listener, limits, stop: Arc::new(AtomicBool::new(false)), local_addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        let mut wake_addr = self.local_addr;
        if wake_addr.ip().is_unspecified() {
            wake_addr.set_ip(if wake_addr.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        ShutdownHandle { stop: self.stop.clone(), wake_addr }
    }

    /// Serves until shut down, then waits for every connection to finish.
    pub fn run<H: LineHandler>(self, handler: &H) -> Stats {
        let stats = Stats::default();
        let admission = Admission::new();
        let refusals = RefusalLog::new();
        let accepting = AtomicBool::new(true);
        std::thread::scope(|scope| {
            // Writes the refusal summaries; ends (with a last summary) once
            // the accept loop has stopped and every connection has ended.
            let summariser = std::thread::Builder::new().name("refusal-log".into()).spawn_scoped(scope, || {
                let mut last = Instant::now();
                loop {
                    let finished = !accepting.load(Ordering::SeqCst) && admission.threads.load(Ordering::SeqCst) == 0;
                    if finished || last.elapsed() >= SUMMARY_EVERY {
                        refusals.flush();
                        last = Instant::now();
                    }
                    if finished {
                        break;
                    }
                    std::thread::sleep(self.limits.poll.min(SUMMARY_EVERY));
                }
            });
            if let Err(e) = summariser {
                tracing::error!(error = %e, "cannot start the refusal summary thread; refusals go unlogged");
            }
            self.accept_loop(scope, handler, &stats, &admission, &refusals);
            tracing::info!(open = admission.live(), "stopped accepting; finishing open connections");
            accepting.store(false, Ordering::SeqCst);
        });
        stats
    }

    fn accept_loop<'scope, 'env, H: LineHandler>(
        &'env self,
        scope: &'scope std::thread::Scope<'scope, 'env>,
        handler: &'env H,
        stats: &'env Stats,
        admission: &'env Admission,
        refusals: &'env RefusalLog,
    ) {
        let mut next_id = 0u64;
        for incoming in self.listener.incoming() {
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            let stream = match incoming {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            // Threads of connections closed for newcomers are still ending:
            // wait for them (newcomers wait in the listen backlog) rather than
            // let a flood of evictions pile threads up.
            let thread_cap = self.limits.max_connections.saturating_mul(2);
            while admission.threads.load(Ordering::SeqCst) >= thread_cap && !self.stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            next_id += 1;
            let addr = stream.peer_addr().unwrap_or(self.local_addr);
            let mut peer = Peer { id: next_id, addr, socket: None };
            let slot = match admission.admit(peer.id, &stream, addr.ip(), &self.limits, stats, refusals) {
                Admit::Yes(slot) => slot,
                Admit::Busy => {
                    stats.refused_busy.fetch_add(1, Ordering::Relaxed);
                    refusals.note(Kind::Busy);
                    tracing::debug!(conn = peer.id, %addr, "refused: too many connections");
                    refuse_busy(stream);
                    continue;
                }
            };
            let rank_slot = Arc::clone(&slot);
            let rank = Box::new(move |stored: bool| {
                rank_slot.state.fetch_max(if stored { AUTHENTIC } else { REFUSED }, Ordering::SeqCst);
            });
            let outbox = Outbox::new(Arc::clone(&slot.stream), rank);
            stats.connections.fetch_add(1, Ordering::Relaxed);
            peer.socket = Some(Arc::clone(&slot.stream));
            let conn = Connection {
                stream,
                outbox,
                peer,
                limits: &self.limits,
                stop: &self.stop,
                admission,
                slot,
                stats,
                refusals,
                stopping_since: None,
                drained: false,
                idle_since: Instant::now(),
                read_timeout: None,
            };
            let spawned = std::thread::Builder::new()
                .name(format!("conn-{next_id}"))
                .stack_size(CONNECTION_STACK)
                .spawn_scoped(scope, move || {
                    // A bug outside the handler (whose panics are answered
                    // in `serve`) ends this connection, never the server
                    // or its shutdown.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| conn.serve(handler)));
                });
            if let Err(e) = spawned {
                // The closure (and the connection's slot guard) was dropped with the error.
                tracing::error!(error = %e, "cannot start a connection thread");
            }
        }
    }
}

/// Binds with a listen backlog of at least `max_connections` (std's
/// `TcpListener::bind` fixes it at 128, so a larger burst of connects would
/// see SYNs dropped and retried a second later). SO_REUSEADDR lets a restarted
/// Boss bind while old connections linger in TIME_WAIT, as std also does.
fn listen(addr: impl ToSocketAddrs, max_connections: usize) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let backlog = i32::try_from(max_connections.max(128)).unwrap_or(i32::MAX);
    super::try_each_address(addr, |addr| {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        socket.listen(backlog)?;
        Ok(TcpListener::from(socket))
    })
}

/// Where the first `\n` in `bytes` is. Whole 64-byte pieces are tested
/// without a per-byte early exit, so the compiler vectorizes the search: a
/// file chunk's line is ~700 KB, and the per-byte search cost the Boss ~8%
/// of its CPU on a 64 MiB upload (perf).
fn find_newline(bytes: &[u8]) -> Option<usize> {
    let mut start = 0;
    for piece in bytes.chunks(64) {
        if piece.iter().fold(false, |seen, b| seen | (*b == b'\n')) {
            return piece.iter().position(|b| *b == b'\n').map(|at| start + at);
        }
        start += piece.len();
    }
    None
}

const BUSY_TEXT: &str = "too many connections; try again shortly";

fn refuse_busy(mut stream: TcpStream) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = stream.write_all(protocol::format_err(ErrorCode::Busy, BUSY_TEXT).as_bytes());
    let _ = stream.shutdown(Shutdown::Both);
}

/// One connection's thread state, borrowing the server's shared parts.
struct Connection<'s> {
    stream: TcpStream,
    /// Where the answers go, from this thread or the handler's writer.
    outbox: Arc<Outbox>,
    peer: Peer,
    limits: &'s Limits,
    stop: &'s AtomicBool,
    /// The live connections; this one's slot is given back on drop.
    admission: &'s Admission,
    slot: Arc<Slot>,
    stats: &'s Stats,
    refusals: &'s RefusalLog,
    /// When this connection first saw the stop flag.
    stopping_since: Option<Instant>,
    /// Whether what had arrived before an eviction has been read.
    drained: bool,
    /// The connection's start or its last accepted line: the idle timer's origin.
    idle_since: Instant,
    /// The read timeout last set on the socket: set again only when it
    /// changes (almost always the poll interval), not with a system call
    /// before every read.
    read_timeout: Option<Duration>,
}

impl Drop for Connection<'_> {
    fn drop(&mut self) {
        self.admission.release(&self.slot);
    }
}

/// Why a connection's reading ended.
enum ReadEnd {
    Closed,
    Idle,
    Deadline,
    TooLong,
    Stopping,
    /// Its slot was given to a newcomer.
    Evicted,
    Failed(io::Error),
}

impl Connection<'_> {
    fn serve<H: LineHandler + ?Sized>(mut self, handler: &H) {
        tracing::debug!(conn = self.peer.id, addr = %self.peer.addr, "connected");
        let _ = self.stream.set_nodelay(true);
        let _ = self.stream.set_write_timeout(Some(self.limits.line_deadline));
        let mut buf: Vec<u8> = Vec::new();
        let end = loop {
            let line_len = match self.read_line(&mut buf, handler) {
                Ok(n) => n,
                Err(end) => break end,
            };
            // A pipelining client sent more before the last batch's answers
            // were out: they go first.
            if let Err(end) = self.settle(handler, true) {
                break end;
            }
            // Lines the client pipelined behind this one, already received,
            // are answered together (the handler may commit them at once).
            let mut ends = vec![line_len];
            while ends.len() < MAX_BATCH_LINES {
                let start = *ends.last().expect("at least one line");
                match buf[start..].iter().position(|b| *b == b'\n') {
                    Some(pos) => ends.push(start + pos + 1),
                    None => break,
                }
            }
            self.stats.lines.fetch_add(ends.len() as u64, Ordering::Relaxed);
            let mut lines = Vec::with_capacity(ends.len());
            let mut start = 0;
            for end in &ends {
                lines.push(&buf[start..end - 1]);
                start = *end;
            }
            // A panic drops the reply unanswered, which `settle` reports.
            let reply = self.outbox.begin(lines.len());
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                handler.handle_batch_deferred(&lines, &self.peer, reply)
            }));
            buf.drain(..start);
            // Give back the memory of a large line once it has been handled.
            if buf.is_empty() && buf.capacity() > 64 * 1024 {
                buf.shrink_to(8 * 1024);
            }
            // A batch answered at once (refusals, v2 frames) is accounted
            // for by the settle that starts `read_line`.
        };
        // The last batch's answers go out before the socket closes.
        let end = match (end, self.settle(handler, true)) {
            (ReadEnd::Failed(e), _) => ReadEnd::Failed(e),
            (_, Err(broken)) => broken,
            (end, Ok(())) => end,
        };
        let goodbye = match &end {
            ReadEnd::TooLong => Some(protocol::format_err(
                ErrorCode::TooLong,
                &format!("lines are limited to {} bytes", self.limits.max_line_bytes),
            )),
            ReadEnd::Deadline => Some(protocol::format_err(ErrorCode::BadRequest, "line not completed in time")),
            ReadEnd::Idle => Some(protocol::format_err(ErrorCode::BadRequest, "idle timeout")),
            ReadEnd::Evicted => Some(protocol::format_err(ErrorCode::Busy, BUSY_TEXT)),
            _ => None,
        };
        if let Some(goodbye) = goodbye {
            let _ = self.stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = self.stream.write_all(goodbye.as_bytes());
        }
        let _ = self.stream.shutdown(Shutdown::Both);
        handler.closed(&self.peer);
        // Per connection at debug only; the kinds a client can cause at will
        // are counted for the summary instead.
        match end {
            ReadEnd::Failed(e) => tracing::debug!(conn = self.peer.id, error = %e, "connection failed"),
            ReadEnd::TooLong => {
                self.refusals.note(Kind::TooLong);
                tracing::debug!(conn = self.peer.id, "closed: line too long");
            }
            ReadEnd::Deadline => {
                self.refusals.note(Kind::Deadline);
                tracing::debug!(conn = self.peer.id, "closed: line deadline passed");
            }
            ReadEnd::Idle => tracing::debug!(conn = self.peer.id, "closed: idle"),
            ReadEnd::Stopping => tracing::debug!(conn = self.peer.id, "closed: server stopping"),
            ReadEnd::Evicted => tracing::debug!(conn = self.peer.id, "closed: slot given to a newcomer"),
            ReadEnd::Closed => tracing::debug!(conn = self.peer.id, "closed by peer"),
        }
    }

    /// Picks up what answered batches left: writes a backlog the writer
    /// could not send without blocking, answers handed-back lines again,
    /// and accounts for the answers (idle timer, eviction rank, refusal
    /// summary). With `wait`, first waits for the batch in flight.
    fn settle<H: LineHandler + ?Sized>(&mut self, handler: &H, wait: bool) -> Result<(), ReadEnd> {
        let Settled { tally, backlog, redo, broken } = self.outbox.settle(wait);
        let ended = match broken {
            Some(Broken::Write(e)) => Some(ReadEnd::Failed(e)),
            Some(Broken::HandlerLost) => {
                tracing::error!(conn = self.peer.id, "handler panicked or lost answers; closing the connection");
                let _ =
                    self.outbox.write_blocking(protocol::format_err(ErrorCode::Internal, "internal error").as_bytes());
                Some(ReadEnd::Closed)
            }
            None => None,
        };
        if tally.stored > 0 {
            self.refusals.accepted.fetch_add(tally.stored, Ordering::Relaxed);
            self.idle_since = Instant::now();
        }
        if tally.repeated > 0 {
            self.refusals.repeated.fetch_add(tally.repeated, Ordering::Relaxed);
        }
        for code in &tally.refused {
            self.refusals.note(Kind::Line(*code));
        }
        if let Some(end) = ended {
            return Err(end);
        }
        if !backlog.is_empty() {
            self.outbox.write_blocking(&backlog).map_err(ReadEnd::Failed)?;
        }
        if let Some(mut redo) = redo {
            let lines: Vec<&[u8]> = redo.lines.iter().map(|(_, line)| line.as_slice()).collect();
            let reply = self.outbox.begin(redo.answers.len());
            let again =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler.handle_batch(&lines, &self.peer)));
            match again {
                Ok(again) if again.len() == lines.len() => {
                    for ((i, _), answer) in redo.lines.iter().zip(again) {
                        redo.answers[*i] = Some(answer);
                    }
                    let answers: Option<Vec<Answer>> = redo.answers.into_iter().collect();
                    if let Some(answers) = answers {
                        reply.send(answers);
                    }
                }
                _ => drop(reply),
            }
            return self.settle(handler, true);
        }
        Ok(())
    }

    /// Whether the idle timer has run out. A batch still with the handler (a
    /// commit in progress) is answered first, since an answer that stores
    /// work restarts the timer: a connection must not be closed idle just
    /// after its client got an ACK. Waiting for it costs no more than the
    /// thread used to wait for every commit; a batch of repeats or refusals
    /// restarts nothing, so it cannot keep a connection open.
    fn idle_expired<H: LineHandler + ?Sized>(&mut self, handler: &H) -> Result<bool, ReadEnd> {
        if self.idle_since.elapsed() < self.limits.idle_timeout {
            return Ok(false);
        }
        // Also picks up a batch answered (or handed back) a moment ago.
        self.settle(handler, true)?;
        Ok(self.idle_since.elapsed() >= self.limits.idle_timeout)
    }

    /// Appends to `buf` what the socket already holds, without waiting, up to
    /// the line cap.
    fn read_queued(&mut self, buf: &mut Vec<u8>) {
        if self.stream.set_nonblocking(true).is_err() {
            return;
        }
        let max = self.limits.max_line_bytes;
        while buf.len() < max {
            let old = buf.len();
            buf.resize(old + (max - old).min(64 * 1024), 0);
            let n = self.stream.read(&mut buf[old..]).unwrap_or(0);
            buf.truncate(old + n);
            if n == 0 {
                break;
            }
        }
        let _ = self.stream.set_nonblocking(false);
    }

    /// Reads until `buf` holds a whole line; returns its length including `\n`.
    /// Bytes after the newline stay in `buf` for the next call (pipelining).
    fn read_line<H: LineHandler + ?Sized>(&mut self, buf: &mut Vec<u8>, handler: &H) -> Result<usize, ReadEnd> {
        let max = self.limits.max_line_bytes;
        let mut scanned = 0;
        // The batch just handed over may be answered already: account for
        // it before the idle check. Checked here too, not only while
        // waiting: a client that pipelines refused lines, always leaving
        // part of the next one in `buf`, never waits for a line to start,
        // and must not dodge the idle timeout.
        self.settle(handler, false)?;
        if self.idle_expired(handler)? {
            return Err(ReadEnd::Idle);
        }
        let mut line_started = if buf.is_empty() { None } else { Some(Instant::now()) };
        loop {
            if let Some(pos) = find_newline(&buf[scanned..]) {
                return Ok(scanned + pos + 1);
            }
            // Answers sent by the writer meanwhile: account for them (they
            // restart the idle timer), and write what it could not send.
            self.settle(handler, false)?;
            // Given to a newcomer (its read side is shut, which also woke this
            // thread): a line that had already arrived whole is still
            // answered, since an agent's first line is usually in the socket
            // before its thread first runs; nothing is waited for.
            if self.slot.evicted.load(Ordering::SeqCst) {
                if std::mem::replace(&mut self.drained, true) {
                    return Err(ReadEnd::Evicted);
                }
                self.read_queued(buf);
                continue;
            }
            scanned = buf.len();
            if buf.len() >= max {
                return Err(ReadEnd::TooLong);
            }
            // Timeouts: idle until the line starts, then the line deadline.
            let remaining = match line_started {
                None => {
                    // Stopping: bytes that already reached us are a request in
                    // flight and get finished; only a quiet connection closes now.
                    // A client that keeps sending cannot hold shutdown open:
                    // after the drain grace the connection closes regardless.
                    if self.stop.load(Ordering::SeqCst) {
                        let since = *self.stopping_since.get_or_insert_with(Instant::now);
                        let unread = super::peek_unread(&self.stream) == super::Unread::Bytes;
                        if !unread || since.elapsed() > self.limits.drain_grace {
                            return Err(ReadEnd::Stopping);
                        }
                    }
                    if self.idle_expired(handler)? {
                        return Err(ReadEnd::Idle);
                    }
                    self.limits.idle_timeout.saturating_sub(self.idle_since.elapsed())
                }
                Some(start) => self.limits.line_deadline.checked_sub(start.elapsed()).ok_or(ReadEnd::Deadline)?,
            };
            let wait = remaining.min(self.limits.poll).max(Duration::from_millis(1));
            if self.read_timeout != Some(wait) && self.stream.set_read_timeout(Some(wait)).is_ok() {
                self.read_timeout = Some(wait);
            }
            // Never read past the cap: the buffer grows at most to max bytes.
            // Reads start at 4 KiB and double with the line up to 64 KiB, so a
            // connection idling for its next line holds 4 KiB, not 64 KiB.
            let want = (max - buf.len()).min(buf.len().clamp(4 * 1024, 64 * 1024));
            let old = buf.len();
            buf.resize(old + want, 0);
            let n = match self.stream.read(&mut buf[old..]) {
                Ok(0) => {
                    buf.truncate(old);
                    let evicted = self.slot.evicted.load(Ordering::SeqCst);
                    return Err(if evicted { ReadEnd::Evicted } else { ReadEnd::Closed });
                }
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                    ) =>
                {
                    0
                }
                Err(e) => {
                    buf.truncate(old);
                    return Err(ReadEnd::Failed(e));
                }
            };
            buf.truncate(old + n);
            if n > 0 && line_started.is_none() {
                line_started = Some(Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::find_newline;

    #[test]
    fn the_first_newline_is_found_at_any_position() {
        assert_eq!(find_newline(b""), None);
        for len in [1, 63, 64, 65, 200, 4096] {
            let mut bytes = vec![b'x'; len];
            assert_eq!(find_newline(&bytes), None, "none in {len} bytes");
            for at in [0, len / 2, len - 1] {
                bytes[at] = b'\n';
                assert_eq!(find_newline(&bytes), Some(at), "at {at} of {len}");
                if at + 1 < len {
                    bytes[len - 1] = b'\n';
                    assert_eq!(find_newline(&bytes), Some(at), "the first of two, at {at} of {len}");
                    bytes[len - 1] = b'x';
                }
                bytes[at] = b'x';
            }
        }
    }
}
