//! `xfer serve`: the sending session behind a listener. Each peer let in
//! through the [`Gate`] (roles, code, slot, guessing guard) is a getter,
//! and gets a whole sending session over its connection — the very
//! session `xfer send` runs — with the served paths walked afresh for it.
//!
//! Serving is read-only by construction: the sending session reads only
//! the entries the walk of the served paths found, and answers a getter's
//! plans by their ids into that list; nothing a getter sends names a path,
//! and nothing here writes (docs/PROTOCOL.md §11.4).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::digest_cache::DigestCache;
use super::{open_cache, source, Offering};
use crate::code::Code;
use crate::error::Error;
use crate::events::Observer;
use crate::link::accept::{self, ServeReport};
use crate::link::{Accepted, Ended, Gate};
use crate::protocol::rate::RateLimit;
use crate::protocol::Mode;

/// A validated `xfer serve` invocation.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub paths: Vec<PathBuf>,
    pub listen: SocketAddr,
    /// Stop after the first getter's session.
    pub once: bool,
    /// Getters served at once; more are told the server is busy.
    pub max_connections: usize,
    /// Longest wait for any progress from a getter.
    pub idle_timeout: Duration,
    /// Longest wait for a new connection's hello.
    pub handshake_timeout: Duration,
    /// Where the digest cache lives; `None` disables it.
    pub digest_cache: Option<PathBuf>,
    /// The code getters must hold; with it every session is encrypted.
    pub code: Option<Code>,
    /// Bytes per second of file bodies, all getters together; `None`: no limit.
    pub limit_rate: Option<u64>,
}

/// The offering side: paths checked, ready to serve a bound listener.
pub struct Server {
    paths: Arc<[PathBuf]>,
    once: bool,
    cache: Option<Arc<DigestCache>>,
    gate: Arc<Gate>,
    /// Shared by every session's bodies.
    rate: Option<Arc<RateLimit>>,
}

impl Server {
    /// Checks that every path can be offered (a missing one is a usage
    /// error now, not a failure at the first getter) and opens the digest
    /// cache, shared by all sessions.
    pub fn new(config: ServeConfig) -> Result<Server, Error> {
        let walked = source::collect(&config.paths)?;
        for unreadable in &walked.unreadable {
            log::warn!(
                "'{}' cannot be read ({}); getters will be told it failed",
                unreadable.local.display(),
                unreadable.reason
            );
        }
        let paths = config
            .paths
            .iter()
            .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
            .collect();
        let mut gate = Gate::new(Mode::Serve, config.code, config.max_connections);
        gate.handshake_timeout = config.handshake_timeout;
        gate.idle_timeout = config.idle_timeout;
        Ok(Server {
            paths,
            once: config.once,
            cache: open_cache(config.digest_cache.as_deref()),
            gate: Arc::new(gate),
            rate: config.limit_rate.map(|r| Arc::new(RateLimit::new(r))),
        })
    }

    /// Serves getters on `listener` until `shutdown` fires (or, with
    /// `once`, until the first getter's session ends). One session's
    /// failure is logged with its peer and never stops the server.
    pub async fn serve(
        self,
        listener: TcpListener,
        observer: Arc<dyn Observer>,
        shutdown: CancellationToken,
    ) -> ServeReport {
        accept::serve(listener, self.once, shutdown, |incoming| {
            let peer: Arc<str> = incoming.peer.to_string().into();
            let link = Accepted {
                stream: incoming.stream,
                peer: Arc::clone(&peer),
                peer_ip: incoming.peer.ip(),
                gate: Arc::clone(&self.gate),
                hello_permit: incoming.hello_permit,
                stopping: incoming.shutdown.clone(),
            };
            let paths = Arc::clone(&self.paths);
            let cache = self.cache.clone();
            let rate = self.rate.clone();
            let observer = Arc::clone(&observer);
            let cancel = incoming.shutdown;
            let session = incoming.session;
            async move {
                let offering = Offering {
                    paths: &paths,
                    cache,
                    observer,
                    session,
                    peer: Arc::clone(&peer),
                    cancel: &cancel,
                    walk_first: false,
                    rate,
                };
                match offering.run_noting_admission(link).await {
                    (Ok(_), _) => Ended::Complete,
                    (Err(e), admitted) => {
                        let typed = e.chain().find_map(|e| e.downcast_ref::<Error>());
                        let refused = typed.is_some_and(Ended::not_admitted);
                        // Gone before it got in (a port scan, no hello, busy).
                        let gone = !admitted && matches!(typed, Some(Error::ConnectionLost { .. }));
                        if let Some(e) = typed.filter(|_| refused) {
                            // Someone tried a wrong code, or came to the wrong place.
                            log::error!("{}", Ended::turned_away(&peer, e));
                        } else if !gone {
                            log::warn!("session with {peer} ended: {e:#}");
                        } else {
                            // A port scan, or a peer that never said hello.
                            log::debug!("session with {peer} ended: {e:#}");
                        }
                        if gone || refused {
                            Ended::NotAdmitted
                        } else {
                            Ended::Incomplete
                        }
                    }
                }
            }
        })
        .await
    }
}
