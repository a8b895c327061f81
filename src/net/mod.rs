//! Networking: the wire protocol (pure parsing), the threaded Boss server, the
//! sending client and its load generator, and the two socket chores the client
//! and server share (trying each resolved address, peeking without blocking).

pub mod client;
pub mod ids;
pub mod join;
pub mod loadgen;
pub mod loadgen_v2;
pub mod protocol;
pub mod reply;
pub mod server;
pub mod v2;
pub mod v2_client;
pub mod v2_download;
pub mod v2_upload;

#[cfg(test)]
mod server_tests;

use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};

/// Runs `attempt` on each address `addr` resolves to, in order, until one
/// succeeds; otherwise returns the last failure (a host name may resolve to
/// an IPv6 and an IPv4 address, and only one of them may be listening).
fn try_each_address<T>(
    addr: impl ToSocketAddrs,
    mut attempt: impl FnMut(SocketAddr) -> io::Result<T>,
) -> io::Result<T> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the address resolves to no socket address");
    for addr in addr.to_socket_addrs()? {
        match attempt(addr) {
            Ok(done) => return Ok(done),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// What a look at a socket's receive queue, without waiting, found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unread {
    /// Nothing yet: the peer is quiet and the connection open.
    Nothing,
    /// At least one byte is waiting.
    Bytes,
    /// The peer closed its side, or the socket failed or could not be probed.
    Closed,
}

/// Whether bytes the peer sent wait unread on `stream` (a peek that does
/// not block).
pub(crate) fn has_unread(stream: &TcpStream) -> bool {
    peek_unread(stream) == Unread::Bytes
}

/// Peeks at `stream` without blocking and leaves it blocking again. A socket
/// that cannot be switched back counts as [`Unread::Closed`]: a blocking loop
/// on a non-blocking socket would spin.
fn peek_unread(stream: &TcpStream) -> Unread {
    if stream.set_nonblocking(true).is_err() {
        return Unread::Closed;
    }
    let found = match stream.peek(&mut [0u8; 1]) {
        Ok(0) => Unread::Closed,
        Ok(_) => Unread::Bytes,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Unread::Nothing,
        Err(_) => Unread::Closed,
    };
    if stream.set_nonblocking(false).is_err() {
        return Unread::Closed;
    }
    found
}
