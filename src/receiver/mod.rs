//! The storing side: `xfer recv`'s server (the accept loop and the gate
//! are [`crate::link`]'s) and `xfer get`'s [`fetch`], both running the same
//! session over their link. One session is wired in [`session`]: [`plan`]
//! decides each offered entry, `sink` writes and verifies bodies, `commit`
//! makes them durable and visible, and [`ledger`] keeps one record per
//! entry that every report is read from.

mod admit;
mod commit;
#[cfg(test)]
mod duplex_tests;
pub mod ledger;
pub mod plan;
mod session;
mod sink;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

pub use crate::link::accept::ServeReport;
pub use crate::link::guard;
pub use admit::{fetch, Fetched, GetConfig};
pub use plan::Limits;
use tokio_util::sync::CancellationToken;

use crate::events::Observer;
use crate::link::{accept, Accepted, Gate};
use crate::protocol::rate::RateLimit;
use crate::protocol::Mode;
use crate::storage::Storage;

/// A validated `xfer recv` invocation.
#[derive(Debug, Clone)]
pub struct RecvConfig {
    pub dir: PathBuf,
    pub listen: SocketAddr,
    /// Stop after the first sender's session.
    pub once: bool,
    /// Replace an existing different file instead of keeping both.
    pub overwrite: bool,
    /// Senders served at once; more are told the receiver is busy.
    pub max_connections: usize,
    /// Longest wait for any byte from a sender.
    pub idle_timeout: Duration,
    /// Longest wait for a new connection's hello.
    pub handshake_timeout: Duration,
    /// What one sender may ask for.
    pub limits: Limits,
    /// Partial files untouched for longer are removed at start (zero: all).
    pub keep_partials: Duration,
    /// The code senders must hold; with it every session is encrypted.
    pub code: Option<crate::code::Code>,
    /// Bytes per second of file bodies, all senders together; `None`: no limit.
    pub limit_rate: Option<u64>,
}

/// The receiving side: DIR opened, ready to serve a bound listener.
pub struct Server {
    storage: Arc<Storage>,
    config: RecvConfig,
    gate: Arc<Gate>,
    /// Shared by every session's body reads.
    rate: Option<Arc<RateLimit>>,
}

/// Opens (creating if needed) `dir` for storing, and removes its partial
/// files untouched for longer than `keep_partials` (zero: all of them).
pub fn open_storage(
    dir: &std::path::Path,
    overwrite: bool,
    keep_partials: Duration,
) -> anyhow::Result<Storage> {
    let storage = Storage::open(dir, overwrite).map_err(|e| {
        anyhow::anyhow!(
            "cannot use '{}' as the receiving directory: {}",
            dir.display(),
            crate::error::describe_io(&e)
        )
    })?;
    let limit = (!keep_partials.is_zero()).then_some(keep_partials);
    match storage.clean_partials(limit) {
        Ok(0) => {}
        Ok(n) => log::info!("removed {n} stale partial files"),
        Err(e) => log::warn!(
            "cannot clean stale partial files: {}",
            crate::error::describe_io(&e)
        ),
    }
    Ok(storage)
}

impl Server {
    /// Opens (creating if needed) the receiving directory.
    pub fn new(config: RecvConfig) -> anyhow::Result<Server> {
        let storage = open_storage(&config.dir, config.overwrite, config.keep_partials)?;
        let mut gate = Gate::new(Mode::Recv, config.code.clone(), config.max_connections);
        gate.handshake_timeout = config.handshake_timeout;
        gate.idle_timeout = config.idle_timeout;
        Ok(Server {
            storage: Arc::new(storage),
            gate: Arc::new(gate),
            rate: config.limit_rate.map(|r| Arc::new(RateLimit::new(r))),
            config,
        })
    }

    /// Serves senders on `listener` until `shutdown` fires (or, with `once`,
    /// until the first session ends). One session's failure is logged with
    /// its peer and never stops the server.
    pub async fn serve(
        self,
        listener: TcpListener,
        observer: Arc<dyn Observer>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<ServeReport> {
        let report = accept::serve(listener, self.config.once, shutdown, |incoming| {
            let context = admit::Context {
                storage: Arc::clone(&self.storage),
                observer: Arc::clone(&observer),
                limits: self.config.limits,
                sessions: Arc::clone(&self.gate.sessions),
                max_sessions: self.gate.max_sessions,
                shutdown: incoming.shutdown.clone(),
                session: incoming.session,
                fetching: false,
                peer_caps: 0,
                rate: self.rate.clone(),
            };
            let peer: Arc<str> = incoming.peer.to_string().into();
            let link = Accepted {
                stream: incoming.stream,
                peer: Arc::clone(&peer),
                peer_ip: incoming.peer.ip(),
                gate: Arc::clone(&self.gate),
                hello_permit: incoming.hello_permit,
                stopping: incoming.shutdown,
            };
            async move {
                admit::serve_one(peer.to_string(), context, link)
                    .await
                    .ended
            }
        })
        .await;
        Ok(report)
    }
}
