//! The Boss: where the server, the store and the crypto meet. `service`
//! answers protocol lines, `store` commits them in groups, `files` assembles
//! uploads, `inbox` reads back what arrived.

pub mod files;
pub mod inbox;
pub mod service;
pub mod store;

use crate::error::{Error, Result};
use crate::home::Home;
use crate::net::server::{Limits, Server, ServerError, ShutdownHandle, Stats};

pub use service::BossConfig;

/// A bound Boss, ready to run: listener, line handler and database writer.
pub struct Boss {
    server: Server,
    service: service::BossService,
    writer: store::StoreThread,
}

impl Boss {
    /// Opens the home's database and key and binds `bind`.
    pub fn bind(home: &Home, bind: &str, limits: Limits, config: BossConfig) -> Result<Boss> {
        let master = home.load_master_key()?;
        let db_path = home.db_path();
        let (store, writer) = store::start(&db_path)?;
        let service = service::BossService::new(master, &db_path, &home.files_dir(), store, config)?;
        let server = Server::bind(bind, limits).map_err(|e| {
            let in_use = match &e {
                ServerError::Bind { source, .. } => source.kind() == std::io::ErrorKind::AddrInUse,
            };
            let error = Error::new(e.to_string());
            if in_use {
                error.hint("another process uses that port; stop it or pass --bind 127.0.0.1:0 for a free port")
            } else {
                error
            }
        })?;
        Ok(Boss { server, service, writer })
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.server.local_addr()
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.server.shutdown_handle()
    }

    /// Serves until shut down; returns after every connection has finished and
    /// the writer has committed everything it was given.
    pub fn run(self) -> Stats {
        let Boss { server, service, writer } = self;
        let stats = serve(server, service);
        writer.join();
        stats
    }
}

/// Runs the server with `service` as its handler. The service is moved in, so
/// when this returns it is gone, and with it the last handle to the store: the
/// writer then drains its queue and stops.
fn serve(server: Server, service: service::BossService) -> Stats {
    server.run(&service)
}
