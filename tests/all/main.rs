//! The one integration test binary: Fernet vectors and properties, the real
//! `spyctl` binary end to end in temporary homes, and the Boss over loopback.

mod fernet_vectors;
mod protocol_doc;
mod python_interop;
mod support;
mod cli_docs;
mod boss_e2e;
mod cli_registry;
mod hardening;
mod client_retry;
