//! Networking: the wire protocol (pure parsing), the threaded Boss server and
//! the sending client.

pub mod client;
pub mod loadgen;
pub mod protocol;
pub mod server;
