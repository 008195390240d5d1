//! One connection on the storing side, from its link to its last event:
//! the ledger, `session` events, and the session proper
//! ([`super::session::converse`]) over whatever [`Link`] let it in — a
//! connection `xfer recv` accepted through its gate, or the one `xfer get`
//! dialled ([`fetch`]). The link (hello, roles, code, slot, guard, PAKE)
//! is [`crate::link`]'s; nothing here depends on which end listens.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::ledger::Ledger;
use super::plan::Limits;
use super::session::converse;
use crate::code::Code;
use crate::error::Error;
use crate::events::{Event, Observer, Summary};
use crate::link::{Dialed, Ended, Link, Session};
use crate::protocol::rate::RateLimit;
use crate::protocol::{FrameReader, FrameWriter, Mode, Source, Transport};
use crate::sender::Destination;
use crate::storage::Storage;

/// What a session needs from the side that runs it.
pub(super) struct Context {
    pub storage: Arc<Storage>,
    pub observer: Arc<dyn Observer>,
    pub limits: Limits,
    /// The listener's session slots (for sharing out read sizes).
    pub sessions: Arc<Semaphore>,
    pub max_sessions: usize,
    pub shutdown: CancellationToken,
    pub session: u64,
    /// `xfer get`: this process exists for this one session, so a file
    /// that did not arrive makes it an error, and a stop an interruption.
    pub fetching: bool,
    /// The peer's hello's capability bits, once it said hello.
    pub peer_caps: u32,
    /// `--limit-rate`: one limit for the bodies of all senders together.
    pub rate: Option<Arc<RateLimit>>,
}

/// How one connection ended.
pub(super) struct Finished {
    pub ended: Ended,
    pub result: Result<Summary, Error>,
}

/// Runs one session over `link` to its end, emits its closing event, and
/// says how it ended.
pub(super) async fn serve_one<L: Link>(peer: String, context: Context, link: L) -> Finished {
    let started = Instant::now();
    let observer = Arc::clone(&context.observer);
    let session = context.session;
    let fetching = context.fetching;
    let shutdown = context.shutdown.clone();
    observer.event(Event::SessionStarted {
        session,
        peer: peer.clone(),
    });
    let ledger = Arc::new(Mutex::new(Ledger::new(
        Arc::clone(&observer),
        session,
        peer.clone(),
    )));
    let receiving = Receiving {
        context,
        ledger: Arc::clone(&ledger),
    };
    let established = link.establish(receiving).await;
    // A connection that went away before it got in (a port scan, no hello,
    // turned away as busy) is not the peer `--once` waits for; one that
    // spoke something other than xfer is, and fails it.
    let never_in = matches!(established, Err(Error::ConnectionLost { .. }));
    let mut result = established.and_then(|r| r);
    // A getter's failure is its process's one error line.
    let turned_away = !fetching && result.as_ref().is_err_and(Ended::not_admitted);
    if let (Err(e), false) = (&result, fetching) {
        if turned_away {
            // One line, even when quiet: someone tried a wrong code, or
            // came to the wrong place.
            log::error!("{}", Ended::turned_away(&peer, e));
        } else {
            // The session's summary line says so; this is for -vv.
            log::debug!("session with {peer} ended: {e}");
        }
    }
    let mut summary = match ledger.lock() {
        Ok(mut ledger) => {
            ledger.close(result.is_ok());
            ledger.summary()
        }
        Err(_) => Default::default(),
    };
    summary.secs = started.elapsed().as_secs_f64();
    let ended = match &result {
        Err(e) if never_in || Ended::not_admitted(e) => Ended::NotAdmitted,
        Ok(()) if summary.undelivered() == 0 => Ended::Complete,
        _ => Ended::Incomplete,
    };
    if fetching {
        if result.is_err() && shutdown.is_cancelled() {
            result = Err(Error::Interrupted);
        }
        let cut = result.as_ref().err().is_some_and(Error::passes);
        if cut && summary.offered > 0 && summary.undelivered() > 0 {
            // A re-run skips what arrived and resumes what was kept.
            if let Err(cause) = result {
                result = Err(Error::Resumable(Box::new(cause)));
            }
        } else if result.is_ok() && summary.undelivered() > 0 {
            let first = ledger.lock().ok().and_then(|l| l.first_failure());
            result = Err(Error::Incomplete {
                failed: summary.undelivered(),
                total: summary.offered,
                first: first.unwrap_or_default(),
            });
        }
    }
    observer.event(Event::SessionEnded {
        session,
        peer,
        summary,
        exit_code: result.as_ref().err().map_or(0, Error::exit_code),
        error: result.as_ref().err().map(|e| e.to_string()),
        turned_away,
    });
    Finished {
        ended,
        result: result.map(|()| summary),
    }
}

/// The receiver's session, ready to run over a link.
struct Receiving {
    context: Context,
    ledger: Arc<Mutex<Ledger>>,
}

impl Session for Receiving {
    type Output = Result<(), Error>;

    async fn run<R, W>(
        mut self,
        reader: FrameReader<R>,
        writer: FrameWriter<W>,
        peer_caps: u32,
    ) -> Self::Output
    where
        R: Source + Sync + 'static,
        W: Transport + Sync + 'static,
    {
        self.context.peer_caps = peer_caps;
        converse(reader, writer, self.context, &self.ledger).await
    }
}

/// A validated `xfer get` invocation.
#[derive(Debug, Clone)]
pub struct GetConfig {
    /// The `xfer serve` to fetch from.
    pub source: Destination,
    pub dir: std::path::PathBuf,
    /// Replace an existing different file instead of keeping both.
    pub overwrite: bool,
    /// Longest wait for any byte from the server.
    pub idle_timeout: Duration,
    /// What the server may make this side store.
    pub limits: Limits,
    /// Partial files untouched for longer are removed at start (zero: all).
    pub keep_partials: Duration,
    /// The code the server requires.
    pub code: Option<Code>,
    /// Bytes per second of file bodies; `None`: no limit.
    pub limit_rate: Option<u64>,
}

/// What [`fetch`] stored.
pub type Fetched = Summary;

/// `xfer get`: connects to the server and runs the receiver's session over
/// that connection, storing into DIR exactly as `xfer recv` does. `Ok`
/// only when every offered file is verified and in DIR. Whatever happens,
/// the last event is one [`Event::SessionEnded`].
pub async fn fetch(
    config: &GetConfig,
    observer: Arc<dyn Observer>,
    shutdown: CancellationToken,
) -> anyhow::Result<Fetched> {
    let peer = config.source.to_string();
    let storage = match super::open_storage(&config.dir, config.overwrite, config.keep_partials) {
        Ok(storage) => storage,
        Err(e) => {
            observer.event(Event::SessionEnded {
                session: 1,
                peer,
                summary: Summary::default(),
                exit_code: crate::error::EXIT_FAILED,
                error: Some(format!("{e:#}")),
                turned_away: false,
            });
            return Err(e);
        }
    };
    let link = Dialed {
        open: crate::sender::connect::connect(&config.source, Mode::Get),
        peer: peer.as_str().into(),
        mode: Mode::Get,
        code: config.code.as_ref(),
        idle: config.idle_timeout,
        cancel: &shutdown,
    };
    fetch_over(config, storage, link, observer, shutdown.clone()).await
}

/// [`fetch`] over `link` (in tests, a pipe).
pub(super) async fn fetch_over<L: Link>(
    config: &GetConfig,
    storage: Storage,
    link: L,
    observer: Arc<dyn Observer>,
    shutdown: CancellationToken,
) -> anyhow::Result<Fetched> {
    let context = Context {
        storage: Arc::new(storage),
        observer,
        limits: config.limits,
        sessions: Arc::new(Semaphore::new(1)),
        max_sessions: 1,
        shutdown,
        session: 1,
        fetching: true,
        peer_caps: 0,
        rate: config.limit_rate.map(|r| Arc::new(RateLimit::new(r))),
    };
    let finished = serve_one(config.source.to_string(), context, link).await;
    Ok(finished.result?)
}
