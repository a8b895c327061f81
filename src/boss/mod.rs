//! The Boss: where the server, the store and the crypto meet. `service`
//! answers protocol lines (with agents' keys from the `agent_keys` cache),
//! `store` commits them in groups, `files` assembles
//! uploads (a sweeper thread expires abandoned ones while it runs), `inbox`
//! reads back what arrived, `receipt` signs ACKs to enrolled agents.

pub mod agent_keys;
pub mod chat;
pub mod enroll;
pub mod files;
pub mod handshake_budget;
pub mod inbox;
pub mod order_files;
pub mod orders;
pub mod receipt;
pub mod sealed_file;
pub mod service;
pub mod store;
pub mod v2;
pub mod verify;

use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use crate::db::DbError;
use crate::home::{Home, HomeError};
use crate::net::server::{Limits, Server, ServerError, ShutdownHandle, Stats};

pub use service::BossConfig;

/// Why the Boss could not start.
#[derive(Debug)]
pub enum BossError {
    /// The master key could not be loaded.
    Home(HomeError),
    /// The database writer could not start.
    Store(store::StoreError),
    /// The database could not be opened for reading.
    Db(DbError),
    /// The agent rows could not be checked or tagged.
    Registry(crate::registry::RegistryError),
    /// The listening socket could not be bound.
    Listen(ServerError),
    /// master.key does not fit the database's key epochs.
    Keys(crate::epochs::EpochError),
}

impl std::fmt::Display for BossError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BossError::Home(e) => e.fmt(f),
            BossError::Store(e) => e.fmt(f),
            BossError::Db(e) => e.fmt(f),
            BossError::Registry(e) => e.fmt(f),
            BossError::Listen(e) => e.fmt(f),
            BossError::Keys(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for BossError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // The wrapped layers show their own text, so the chain goes on below them.
        match self {
            BossError::Home(e) => e.source(),
            BossError::Store(e) => e.source(),
            BossError::Db(e) => e.source(),
            BossError::Registry(e) => e.source(),
            BossError::Listen(e) => e.source(),
            BossError::Keys(e) => e.source(),
        }
    }
}

/// A bound Boss, ready to run: listener, line handler and database writer.
pub struct Boss {
    server: Server,
    service: service::BossService,
    writer: store::StoreThread,
}

impl Boss {
    /// Opens the home's database and key and binds `bind`.
    pub fn bind(home: &Home, bind: &str, limits: Limits, config: BossConfig) -> Result<Boss, BossError> {
        let master = home.load_master_key().map_err(BossError::Home)?;
        // Made on first use for a database created before identities existed.
        let identity = home.load_or_create_identity().map_err(BossError::Home)?;
        let db_path = home.db_path();
        let (store, writer) = store::start(&db_path).map_err(BossError::Store)?;
        // A database migrated from before row tags is tagged once, by the
        // first process that opens it with the key; the Boss can be that one.
        let keyring = {
            let mut conn = crate::db::open(&db_path).map_err(BossError::Db)?;
            let keyring = crate::epochs::open_keyring(&master, &conn).map_err(BossError::Keys)?;
            let keys = crate::registry::RegistryKeys::derive(&keyring);
            let before = home.tagged_before(keyring.database_id()).map_err(BossError::Home)?;
            crate::registry::seal_untagged_rows(&mut conn, &keys, before).map_err(BossError::Registry)?;
            if !before {
                home.record_tagged(keyring.database_id()).map_err(BossError::Home)?;
            }
            keyring
        };
        // After a `key rotate` in another process the Boss reads master.key
        // again, with the same checks as at start.
        let key_home = home.clone();
        let load_master = Box::new(move || key_home.load_master_key().ok());
        let service =
            service::BossService::new(keyring, load_master, identity, &db_path, &home.files_dir(), store, config)
                .map_err(BossError::Db)?;
        let server = Server::bind(bind, limits).map_err(BossError::Listen)?;
        Ok(Boss { server, service, writer })
    }

    /// The Boss's public identity (its fingerprint is printed at start).
    pub fn identity(&self) -> crate::crypto::PublicIdentity {
        self.service.identity()
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

/// How often a running Boss checks whether `key rotate` or `key retire`
/// changed the live key epochs (one tiny read of the KeyEpochs table).
pub const KEY_POLL: Duration = Duration::from_millis(500);

/// How often the dispatcher looks for orders queued by another process while
/// an agent listens. A `PRAGMA data_version` costs microseconds; the wakeups
/// cost more (BENCHMARKS.md, "Orders to a listening agent"), hence
/// [`OUTBOX_POLL_IDLE`] while nobody listens (a listener gets its backlog
/// when it starts, so a slower poll then delays nothing already queued).
pub const OUTBOX_POLL: Duration = Duration::from_millis(1);
/// The dispatcher's interval while no agent listens.
pub const OUTBOX_POLL_IDLE: Duration = Duration::from_millis(50);

/// Runs the server with `service` as its handler, and beside it the
/// housekeeping thread (a scoped thread, so it borrows the service and cannot
/// outlive it): it picks up key-epoch changes made by other processes and
/// expires abandoned partial uploads. The service is moved in, so when this
/// returns it is gone, and with it the last handle to the store: the writer
/// then drains its queue and stops.
fn serve(server: Server, service: service::BossService) -> Stats {
    // A quarter of the expiry (between 100 ms and a minute): a partial is
    // gone at most a quarter late.
    let sweep_period = (service.partial_expiry() / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let wake = sweep_period.min(KEY_POLL);
    let (stop, stopped) = mpsc::channel::<()>();
    let (stop_dispatch, dispatch_stopped) = mpsc::channel::<()>();
    std::thread::scope(|scope| {
        let service = &service;
        // The dispatcher: pushes orders queued by `spyctl order` (another
        // process) to listening agents as soon as their commit is visible.
        match service.outbox_watch() {
            Ok(mut watch) => {
                scope.spawn(move || {
                    let interval = || if service.has_listeners() { OUTBOX_POLL } else { OUTBOX_POLL_IDLE };
                    // Set when a listener was busy: try it again next tick.
                    let mut retry = false;
                    while let Err(RecvTimeoutError::Timeout) = dispatch_stopped.recv_timeout(interval()) {
                        match watch.changed() {
                            Ok(changed) if changed || retry => retry = !service.push_orders(),
                            Ok(_) => {}
                            Err(e) => {
                                tracing::error!(error = %e, "the outbox watch failed; listening agents get no pushes");
                                break;
                            }
                        }
                    }
                });
            }
            Err(e) => tracing::error!(error = %e, "cannot watch the outbox; listening agents get no pushes"),
        }
        scope.spawn(move || {
            let mut last_sweep = std::time::Instant::now();
            // Wakes every `wake`; the sender's drop (shutdown) ends it at once.
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(wake) {
                service.refresh_keys();
                if last_sweep.elapsed() >= sweep_period {
                    service.sweep_partials();
                    last_sweep = std::time::Instant::now();
                }
            }
        });
        let stats = server.run(service);
        drop(stop);
        drop(stop_dispatch);
        stats
    })
}
