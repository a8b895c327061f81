//! The one integration test binary: Fernet vectors and properties, the real
//! `spyctl` binary end to end in temporary homes, and the Boss over loopback.

mod agent_admin;
mod boss_e2e;
mod boss_files;
mod cli_docs;
mod cli_registry;
mod client_retry;
mod data_safety;
mod database_identity;
mod error_layers;
mod exports;
mod fernet_vectors;
mod full_disk;
mod hardening;
mod home_checks;
mod identities;
mod inbox_scale;
mod key_rotation;
mod live;
mod order_files;
mod orders;
mod protocol_doc;
mod protocol_v2;
mod python_interop;
mod receipts;
mod resume_files;
mod row_integrity;
mod support;
mod terminal_safety;
mod v2_files;
