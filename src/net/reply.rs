//! A connection's replies, written in order by whichever thread has them:
//! the connection's own thread for answers it has at once, the database
//! writer for ACKs that wait for a group commit ([`Reply`]).
//!
//! Why: when the connection thread waited for the writer to commit and then
//! wrote the ACK itself, every message cost two thread hand-offs (connection
//! → writer → connection) on top of the socket's own wake-up, and on a
//! 2-core machine the scheduler was the largest entry in the Boss's profile
//! (BENCHMARKS.md, issue 15). Now the writer sends the ACK and the connection
//! thread goes straight back to reading.
//!
//! Rules that keep this safe:
//! - One batch at a time per connection: the connection thread *settles* the
//!   batch in flight (waits for it, if a pipelining client already sent more)
//!   before it hands over the next, so replies keep the order of the lines.
//! - The writer never blocks on a socket: it sends with `MSG_DONTWAIT`, and
//!   whatever the socket does not take at once is left in a backlog that the
//!   connection thread writes (with its write timeout) when it next wakes. A
//!   client that stops reading its ACKs stalls only its own connection.
//! - Lines the handler must answer again on the connection's thread (their
//!   authorisation was overtaken by a registry change) are handed back as a
//!   [`Redo`]; the thread answers them within one poll interval.

use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::protocol::ErrorCode;
use super::server::{Answer, Outcome};

/// Answers one batch of lines, once, from any thread. Dropping it unanswered
/// (a bug in the handler) closes the connection with `ERR internal`.
pub struct Reply {
    outbox: Arc<Outbox>,
    /// How many lines the batch had: a different number of answers is a bug.
    lines: usize,
    answered: bool,
}

/// What the answers of the settled batches came to, for the connection's
/// accounting (idle timer, eviction rank, the refusal summary).
#[derive(Default)]
pub struct Tally {
    pub stored: u64,
    pub repeated: u64,
    pub refused: Vec<ErrorCode>,
}

/// Lines to answer again on the connection's thread, and the answers of the
/// batch around them (`None` where a redone line goes).
pub struct Redo {
    pub answers: Vec<Option<Answer>>,
    /// Each line's place in `answers`, and its bytes.
    pub lines: Vec<(usize, Vec<u8>)>,
}

/// Why a connection cannot go on.
pub enum Broken {
    /// Writing a reply failed: the peer has gone.
    Write(io::Error),
    /// The handler lost a batch (panicked, or gave the wrong number of answers).
    HandlerLost,
}

/// What the connection thread picks up when it settles.
#[derive(Default)]
pub struct Settled {
    pub tally: Tally,
    /// Reply bytes the socket did not take without blocking.
    pub backlog: Vec<u8>,
    pub redo: Option<Redo>,
    pub broken: Option<Broken>,
}

/// Called with whether a batch stored new work, before its answers are
/// sent: the server ranks the connection for eviction with it, and a client
/// that has its ACK must find its connection already ranked.
pub type Rank = Box<dyn Fn(bool) + Send + Sync>;

/// The shared half of a connection's replies.
pub struct Outbox {
    /// The connection's socket (shared with its thread), for writing.
    stream: Arc<TcpStream>,
    rank: Rank,
    state: Mutex<State>,
    settled: Condvar,
}

#[derive(Default)]
struct State {
    /// A batch was handed over and is not answered yet.
    outstanding: bool,
    /// The connection thread is waiting on `settled` (so only then does an
    /// answer pay for a wake-up).
    waiting: bool,
    picked: Settled,
}

impl Outbox {
    pub fn new(stream: Arc<TcpStream>, rank: Rank) -> Arc<Outbox> {
        Arc::new(Outbox { stream, rank, state: Mutex::new(State::default()), settled: Condvar::new() })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-written
        // in a way that matters more than losing the connection.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts a batch of `lines` lines. The previous one must be settled.
    pub fn begin(self: &Arc<Self>, lines: usize) -> Reply {
        let mut state = self.lock();
        debug_assert!(!state.outstanding, "a batch began before the last one was settled");
        state.outstanding = true;
        Reply { outbox: Arc::clone(self), lines, answered: false }
    }

    /// Takes what answered batches left (tally, backlog, redo, breakage);
    /// with `wait`, first waits until the batch in flight is answered.
    pub fn settle(&self, wait: bool) -> Settled {
        let mut state = self.lock();
        if wait {
            while state.outstanding {
                state.waiting = true;
                state = self.settled.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            state.waiting = false;
        }
        std::mem::take(&mut state.picked)
    }

    /// Whether a batch is in flight (the connection thread must settle it
    /// before it hands over another).
    pub fn outstanding(&self) -> bool {
        self.lock().outstanding
    }

    /// Ends the batch in flight: records what happened and wakes the
    /// connection thread if it waits.
    fn finish(&self, state: &mut State) {
        state.outstanding = false;
        if state.waiting {
            self.settled.notify_one();
        }
    }

    /// Sends `bytes` without blocking, after any backlog; keeps the rest.
    fn send(&self, state: &mut State, bytes: &[u8]) {
        if state.picked.broken.is_some() {
            return;
        }
        let mut sent = 0;
        if state.picked.backlog.is_empty() {
            while sent < bytes.len() {
                let flags = rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL;
                match rustix::net::send(&*self.stream, &bytes[sent..], flags) {
                    // A stream socket takes no bytes only when it cannot
                    // take any more: treat it as gone rather than spin.
                    Ok(0) => {
                        state.picked.broken = Some(Broken::Write(io::ErrorKind::WriteZero.into()));
                        return;
                    }
                    Ok(n) => sent += n,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(rustix::io::Errno::AGAIN) => break,
                    Err(e) => {
                        state.picked.broken = Some(Broken::Write(e.into()));
                        return;
                    }
                }
            }
        }
        state.picked.backlog.extend_from_slice(&bytes[sent..]);
    }

    /// Writes a backlog with the socket's write timeout (the connection
    /// thread only).
    pub fn write_blocking(&self, bytes: &[u8]) -> io::Result<()> {
        (&*self.stream).write_all(bytes)
    }
}

impl Reply {
    /// Sends the batch's answers, in order, and ends the batch.
    pub fn send(mut self, answers: Vec<Answer>) {
        self.answered = true;
        let outbox = Arc::clone(&self.outbox);
        let mut state = outbox.lock();
        if answers.len() != self.lines {
            state.picked.broken = Some(Broken::HandlerLost);
        } else {
            let mut bytes = Vec::with_capacity(answers.iter().map(|a| a.line.len()).sum());
            let mut stored = false;
            for answer in &answers {
                bytes.extend_from_slice(answer.line.as_bytes());
                match answer.outcome {
                    Outcome::Accepted => {
                        stored = true;
                        state.picked.tally.stored += 1
                    }
                    Outcome::Repeated => state.picked.tally.repeated += 1,
                    Outcome::Refused(code) => state.picked.tally.refused.push(code),
                }
            }
            if !answers.is_empty() {
                (outbox.rank)(stored);
            }
            outbox.send(&mut state, &bytes);
        }
        outbox.finish(&mut state);
    }

    /// Hands the batch back to the connection's thread: `redo.lines` must be
    /// answered again there, the rest are in `redo.answers`.
    pub fn redo(mut self, redo: Redo) {
        self.answered = true;
        let outbox = Arc::clone(&self.outbox);
        let mut state = outbox.lock();
        if redo.answers.len() != self.lines {
            state.picked.broken = Some(Broken::HandlerLost);
        } else {
            state.picked.redo = Some(redo);
        }
        outbox.finish(&mut state);
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if !self.answered {
            let mut state = self.outbox.lock();
            state.picked.broken = Some(Broken::HandlerLost);
            self.outbox.finish(&mut state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (server, client)
    }

    #[test]
    fn an_answer_from_another_thread_is_written_and_counted() {
        let (server, mut client) = pair();
        let outbox = Outbox::new(Arc::new(server), Box::new(|_| ()));
        let reply = outbox.begin(2);
        std::thread::spawn(move || {
            reply.send(vec![Answer::accepted("ACK a\n".into()), Answer::refused(ErrorCode::Auth, "no")])
        });
        let settled = outbox.settle(true);
        assert!(!outbox.outstanding());
        assert_eq!(settled.tally.stored, 1);
        assert_eq!(settled.tally.refused, vec![ErrorCode::Auth]);
        assert!(settled.backlog.is_empty() && settled.broken.is_none());
        let mut got = vec![0u8; 6];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ACK a\n");
    }

    #[test]
    fn a_reply_dropped_unanswered_or_with_the_wrong_count_breaks_the_connection() {
        let (server, _client) = pair();
        let outbox = Outbox::new(Arc::new(server), Box::new(|_| ()));
        drop(outbox.begin(1));
        assert!(matches!(outbox.settle(true).broken, Some(Broken::HandlerLost)));
        outbox.begin(2).send(vec![Answer::accepted("ACK\n".into())]);
        assert!(matches!(outbox.settle(true).broken, Some(Broken::HandlerLost)));
    }

    #[test]
    fn a_full_socket_never_blocks_the_sender_what_it_does_not_take_waits_in_the_backlog() {
        // The client never reads: the kernel's buffers fill and the writer's
        // non-blocking send leaves the rest for the connection thread.
        // The sends run on another thread (as on the Boss's writer): one that
        // blocked would never report, and the bounded wait fails the test.
        let (server, client) = pair();
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let outbox = Outbox::new(Arc::new(server), Box::new(|_| ()));
            let line = format!("{}\n", "x".repeat(64 * 1024 - 1));
            for _ in 0..256 {
                let reply = outbox.begin(1);
                reply.send(vec![Answer::accepted(line.clone())]);
                let settled = outbox.settle(true);
                assert!(settled.broken.is_none());
                if !settled.backlog.is_empty() {
                    let _ = done.send(settled.backlog.len());
                    return;
                }
            }
        });
        let backlog = finished.recv_timeout(std::time::Duration::from_secs(10));
        drop(client);
        assert!(matches!(backlog, Ok(n) if n > 0), "the sender blocked on a full socket, or 16 MiB fit: {backlog:?}");
    }
}
