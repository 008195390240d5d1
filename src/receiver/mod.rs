//! The receiving server: a bounded accept loop, one task per sender, and a
//! clean stop on shutdown. One session is wired in [`session`]: [`plan`]
//! decides each offered entry, `sink` writes and verifies bodies, `commit`
//! makes them durable and visible, and [`ledger`] keeps one record per
//! entry that every report is read from.

mod admit;
mod commit;
#[cfg(test)]
mod duplex_tests;
pub mod guard;
pub mod ledger;
pub mod plan;
mod session;
mod sink;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use plan::Limits;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use admit::Ended;

use crate::events::Observer;
use crate::storage::Storage;

/// How long sessions get to wind down after a shutdown request.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// Connections that have not finished their hello yet, at most. They do not
/// hold a session slot, so idle connections cannot lock real senders out;
/// beyond this many, new connections are closed at once.
const MAX_PENDING_HELLOS: usize = 256;

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
}

/// How serving ended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ServeReport {
    pub sessions: u64,
    pub failed_sessions: u64,
}

/// The receiving side: DIR opened, ready to serve a bound listener.
pub struct Server {
    storage: Arc<Storage>,
    config: RecvConfig,
    code: Option<Arc<crate::code::Code>>,
    /// Bounds code guessing across all sessions.
    guard: Arc<guard::Guard>,
}

impl Server {
    /// Opens (creating if needed) the receiving directory.
    pub fn new(config: RecvConfig) -> anyhow::Result<Server> {
        let storage = Storage::open(&config.dir, config.overwrite).map_err(|e| {
            anyhow::anyhow!(
                "cannot use '{}' as the receiving directory: {}",
                config.dir.display(),
                crate::error::describe_io(&e)
            )
        })?;
        let limit = (!config.keep_partials.is_zero()).then_some(config.keep_partials);
        match storage.clean_partials(limit) {
            Ok(0) => {}
            Ok(n) => log::info!("removed {n} stale partial files"),
            Err(e) => log::warn!(
                "cannot clean stale partial files: {}",
                crate::error::describe_io(&e)
            ),
        }
        Ok(Server {
            storage: Arc::new(storage),
            code: config.code.clone().map(Arc::new),
            guard: guard::Guard::new(),
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
        let sessions = Arc::new(Semaphore::new(self.config.max_connections.max(1)));
        let hellos = Arc::new(Semaphore::new(MAX_PENDING_HELLOS));
        let tracker = TaskTracker::new();
        let mut report = ServeReport::default();
        let failed = Arc::new(AtomicU64::new(0));
        let mut next_session = 1u64;
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of descriptors and the like: back off, keep serving.
                        log::warn!("accepting a connection failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = shutdown.cancelled() => break,
            };
            let Ok(hello_permit) = Arc::clone(&hellos).try_acquire_owned() else {
                log::warn!("{peer}: closed at once, {MAX_PENDING_HELLOS} connections are still saying hello");
                continue;
            };
            let context = admit::Context {
                storage: Arc::clone(&self.storage),
                observer: Arc::clone(&observer),
                idle_timeout: self.config.idle_timeout,
                handshake_timeout: self.config.handshake_timeout,
                limits: self.config.limits,
                sessions: Arc::clone(&sessions),
                max_sessions: self.config.max_connections.max(1),
                shutdown: shutdown.child_token(),
                session: next_session,
                peer_ip: peer.ip(),
                code: self.code.clone(),
                guard: Arc::clone(&self.guard),
                peer_caps: 0,
            };
            next_session += 1;
            report.sessions += 1;
            let failed = Arc::clone(&failed);
            let stopping = shutdown.clone();
            let task = tracker.spawn(async move {
                // A session cut short by our own stop is not a failed one:
                // its partials are kept, as a stop promises.
                let _ = stream.set_nodelay(true);
                let ended = admit::serve_one(stream, peer.to_string(), context, hello_permit).await;
                if ended == Ended::Incomplete && !stopping.is_cancelled() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                ended
            });
            if self.config.once {
                // Only a sender that got in is the one --once waits for: a
                // wrong code must not end (or block) the receiver.
                tokio::select! {
                    ended = task => if matches!(ended, Ok(Ended::NotAdmitted)) { continue },
                    _ = shutdown.cancelled() => {}
                }
                break;
            }
        }
        tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
            .await
            .is_err()
        {
            log::warn!(
                "some sessions did not stop within {} s",
                SHUTDOWN_GRACE.as_secs()
            );
        }
        report.failed_sessions = failed.load(Ordering::Relaxed);
        Ok(report)
    }
}
