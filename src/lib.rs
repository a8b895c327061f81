//! spyctl: a secret-agent registry with encrypted fields and role-based login,
//! and an encrypted, HMAC-authenticated message channel to "the Boss".
//!
//! Layers point one way: `cli` (clap types) -> `cmd` (one module per command
//! group: check arguments, call the domain, render) -> the domain modules
//! `crypto`, `db`, `registry`, `auth`, `net`, `boss`, which know nothing of clap.
#![forbid(unsafe_code)]

pub mod auth;
pub mod crypto;
pub mod db;
pub mod error;
pub mod home;
pub mod net;
pub mod registry;

pub use error::{Error, Result};
