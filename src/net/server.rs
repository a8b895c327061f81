//! A threaded line server on std threads: the Rust mirror of Python's
//! `socketserver.ThreadingTCPServer`, with the limits that one lacks.
//!
//! An accept loop hands each connection to its own thread, up to
//! `max_connections` live at once (past that the newcomer gets `ERR busy` and is
//! closed). Each thread reads `\n`-terminated lines under three limits: an idle
//! timeout counted from the connection's start or its last *accepted* line (so
//! a client that only sends lines the handler refuses cannot hold a slot
//! forever), a deadline for a whole line once it has started (a slow sender
//! cannot pin a thread), and a length cap checked before the buffer grows. Each
//! line goes to a [`LineHandler`]; its answer is written back. Shutdown stops
//! the accept loop, lets every connection finish the line it is on, and waits
//! for the threads: they run inside [`std::thread::scope`], so they borrow the
//! handler and cannot outlive [`Server::run`].

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::protocol::{self, ErrorCode};

/// The server's limits.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
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
            max_line_bytes: protocol::MAX_LINE_BYTES,
            idle_timeout: Duration::from_secs(60),
            line_deadline: Duration::from_secs(10),
            poll: Duration::from_millis(200),
            drain_grace: Duration::from_secs(5),
        }
    }
}

/// What a connection thread knows about its peer, for logs.
#[derive(Debug, Clone)]
pub struct Peer {
    pub id: u64,
    pub addr: SocketAddr,
}

/// A handler's answer to one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The full reply line, `\n` included.
    pub line: String,
    /// Whether the line was a request the handler acted on. Only accepted
    /// lines restart the idle timer: refused ones (garbage, bad MACs) do not,
    /// so they cannot keep a connection slot alive.
    pub accepted: bool,
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
    pub lines: AtomicU64,
}

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
        let live = AtomicUsize::new(0);
        std::thread::scope(|scope| {
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
                next_id += 1;
                let addr = stream.peer_addr().unwrap_or(self.local_addr);
                let peer = Peer { id: next_id, addr };
                if live.load(Ordering::SeqCst) >= self.limits.max_connections {
                    stats.refused_busy.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(conn = peer.id, %addr, "refused: too many connections");
                    refuse_busy(stream);
                    continue;
                }
                live.fetch_add(1, Ordering::SeqCst);
                stats.connections.fetch_add(1, Ordering::Relaxed);
                let conn = Connection {
                    stream,
                    peer,
                    limits: &self.limits,
                    stop: &self.stop,
                    live: &live,
                    stats: &stats,
                    stopping_since: None,
                    idle_since: Instant::now(),
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
                    // The closure (and its live-count guard) was dropped with the error.
                    tracing::error!(error = %e, "cannot start a connection thread");
                }
            }
            tracing::info!(open = live.load(Ordering::SeqCst), "stopped accepting; finishing open connections");
        });
        stats
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

fn refuse_busy(mut stream: TcpStream) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let _ =
        stream.write_all(protocol::format_err(ErrorCode::Busy, "too many connections; try again shortly").as_bytes());
    let _ = stream.shutdown(Shutdown::Both);
}

/// One connection's thread state, borrowing the server's shared parts.
struct Connection<'s> {
    stream: TcpStream,
    peer: Peer,
    limits: &'s Limits,
    stop: &'s AtomicBool,
    /// Counts live connections; this one's share is given back on drop.
    live: &'s AtomicUsize,
    stats: &'s Stats,
    /// When this connection first saw the stop flag.
    stopping_since: Option<Instant>,
    /// The connection's start or its last accepted line: the idle timer's origin.
    idle_since: Instant,
}

impl Drop for Connection<'_> {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why a connection's reading ended.
enum ReadEnd {
    Closed,
    Idle,
    Deadline,
    TooLong,
    Stopping,
    Failed(io::Error),
}

impl Connection<'_> {
    fn serve<H: LineHandler + ?Sized>(mut self, handler: &H) {
        tracing::debug!(conn = self.peer.id, addr = %self.peer.addr, "connected");
        let _ = self.stream.set_nodelay(true);
        let _ = self.stream.set_write_timeout(Some(self.limits.line_deadline));
        let mut buf: Vec<u8> = Vec::new();
        let end = loop {
            let line_len = match self.read_line(&mut buf) {
                Ok(n) => n,
                Err(end) => break end,
            };
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
            let answers = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                handler.handle_batch(&lines, &self.peer)
            })) {
                Ok(answers) if answers.len() == lines.len() => answers,
                Ok(_) | Err(_) => {
                    tracing::error!(conn = self.peer.id, "handler panicked or lost answers; closing the connection");
                    let _ =
                        self.stream.write_all(protocol::format_err(ErrorCode::Internal, "internal error").as_bytes());
                    break ReadEnd::Closed;
                }
            };
            buf.drain(..start);
            // Give back the memory of a large line once it has been handled.
            if buf.is_empty() && buf.capacity() > 64 * 1024 {
                buf.shrink_to(8 * 1024);
            }
            if answers.iter().any(|a| a.accepted) {
                self.idle_since = Instant::now();
            }
            let reply: String = answers.into_iter().map(|a| a.line).collect();
            if let Err(e) = self.stream.write_all(reply.as_bytes()) {
                break ReadEnd::Failed(e);
            }
        };
        let goodbye = match &end {
            ReadEnd::TooLong => Some(protocol::format_err(
                ErrorCode::TooLong,
                &format!("lines are limited to {} bytes", self.limits.max_line_bytes),
            )),
            ReadEnd::Deadline => Some(protocol::format_err(ErrorCode::BadRequest, "line not completed in time")),
            ReadEnd::Idle => Some(protocol::format_err(ErrorCode::BadRequest, "idle timeout")),
            _ => None,
        };
        if let Some(goodbye) = goodbye {
            let _ = self.stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = self.stream.write_all(goodbye.as_bytes());
        }
        let _ = self.stream.shutdown(Shutdown::Both);
        match end {
            ReadEnd::Failed(e) => tracing::debug!(conn = self.peer.id, error = %e, "connection failed"),
            ReadEnd::TooLong => tracing::warn!(conn = self.peer.id, "closed: line too long"),
            ReadEnd::Deadline => tracing::warn!(conn = self.peer.id, "closed: line deadline passed"),
            ReadEnd::Idle => tracing::debug!(conn = self.peer.id, "closed: idle"),
            ReadEnd::Stopping => tracing::debug!(conn = self.peer.id, "closed: server stopping"),
            ReadEnd::Closed => tracing::debug!(conn = self.peer.id, "closed by peer"),
        }
    }

    /// Reads until `buf` holds a whole line; returns its length including `\n`.
    /// Bytes after the newline stay in `buf` for the next call (pipelining).
    fn read_line(&mut self, buf: &mut Vec<u8>) -> Result<usize, ReadEnd> {
        let max = self.limits.max_line_bytes;
        let mut scanned = 0;
        // Checked here too, not only while waiting: a client that pipelines
        // refused lines, always leaving part of the next one in `buf`, never
        // waits for a line to start, and must not dodge the idle timeout.
        if self.idle_since.elapsed() >= self.limits.idle_timeout {
            return Err(ReadEnd::Idle);
        }
        let mut line_started = if buf.is_empty() { None } else { Some(Instant::now()) };
        loop {
            if let Some(pos) = buf[scanned..].iter().position(|b| *b == b'\n') {
                return Ok(scanned + pos + 1);
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
                    self.limits.idle_timeout.checked_sub(self.idle_since.elapsed()).ok_or(ReadEnd::Idle)?
                }
                Some(start) => self.limits.line_deadline.checked_sub(start.elapsed()).ok_or(ReadEnd::Deadline)?,
            };
            let wait = remaining.min(self.limits.poll).max(Duration::from_millis(1));
            let _ = self.stream.set_read_timeout(Some(wait));
            // Never read past the cap: the buffer grows at most to max bytes.
            // Reads start at 4 KiB and double with the line up to 64 KiB, so a
            // connection idling for its next line holds 4 KiB, not 64 KiB.
            let want = (max - buf.len()).min(buf.len().clamp(4 * 1024, 64 * 1024));
            let old = buf.len();
            buf.resize(old + want, 0);
            let n = match self.stream.read(&mut buf[old..]) {
                Ok(0) => {
                    buf.truncate(old);
                    return Err(ReadEnd::Closed);
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
