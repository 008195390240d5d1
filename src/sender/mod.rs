//! One sending session: walk, connect, offer batches, stream bodies, collect
//! verdicts — over the connection `xfer send` dials, or, with the roles
//! reversed, over each one `xfer serve` accepts ([`serve`]); the link that
//! carries it is [`crate::link`]'s. No terminal code: progress leaves as [`Event`]s, and every
//! file's fate is kept in one [`ledger::Ledger`] that the events, the final
//! summary and the exit code are read from.
//!
//! Two tasks share the connection. [`session`] writes: it keeps offers ahead
//! of the bodies it is sending, so the receiver's plans are on their way
//! back while bodies flow. [`replies`] reads plans and verdicts concurrently,
//! so verdicts never back up behind bodies. A file the receiver reports
//! damaged on the way is sent once more, from scratch, before `Done`.

mod body;
pub(crate) mod connect;
pub mod digest_cache;
pub mod ledger;
mod replies;
pub mod serve;
mod session;
pub mod source;

use std::fmt;
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::code::Code;
use crate::error::{describe_io, exit_code_of, Error, EXIT_OK};
use crate::events::{Event, Observer, Summary};
use crate::link::{self, Dialed, Link};
use crate::protocol::rate::RateLimit;
use crate::protocol::{
    Connection, EntryKind, FrameReader, FrameWriter, Message, Mode, Source, Transport, CAP_TOTALS,
};
use digest_cache::DigestCache;
use ledger::Ledger;
pub use serve::ServeConfig;
use session::{Session, OFFERS_AHEAD};

/// How long an interrupted sender waits for a blocked write before closing.
const INTERRUPT_GRACE: Duration = Duration::from_secs(2);

/// Where to send: a host name or IP literal, and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub host: String,
    pub port: u16,
    /// Tried in order when no address of `host` can be reached: the other
    /// addresses a peer found on the LAN announced.
    pub fallback: Vec<std::net::SocketAddr>,
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A validated `xfer send` invocation.
#[derive(Debug, Clone)]
pub struct SendConfig {
    pub paths: Vec<std::path::PathBuf>,
    pub destination: Destination,
    /// Longest wait for any progress in either direction.
    pub idle_timeout: Duration,
    /// Where the digest cache lives; `None` disables it.
    pub digest_cache: Option<std::path::PathBuf>,
    /// The code the receiver requires, for a coded (encrypted) session.
    pub code: Option<Code>,
    /// Bytes per second of file bodies; `None`: no limit.
    pub limit_rate: Option<u64>,
}

/// Sends every path to the receiver. `Ok` only if each file was verified
/// and persisted there (or was already present, identical). Whatever
/// happens, the last event is one [`Event::SessionEnded`] whose summary is
/// the ledger counted.
pub async fn send(
    config: &SendConfig,
    observer: Arc<dyn Observer>,
    cancel: CancellationToken,
) -> anyhow::Result<Summary> {
    let open = connect::connect(&config.destination, Mode::Send);
    send_over(config, open, observer, cancel).await
}

/// [`send`] over the connection `open` makes: a TCP connect, or in tests
/// one end of an in-memory pipe. `config.destination` only names the peer.
pub async fn send_over<C: Connection>(
    config: &SendConfig,
    open: impl Future<Output = Result<C, Error>> + Send,
    observer: Arc<dyn Observer>,
    cancel: CancellationToken,
) -> anyhow::Result<Summary> {
    let peer: Arc<str> = config.destination.to_string().into();
    let link = Dialed {
        open,
        peer: Arc::clone(&peer),
        mode: Mode::Send,
        code: config.code.as_ref(),
        idle: config.idle_timeout,
        cancel: &cancel,
    };
    let offering = Offering {
        paths: &config.paths,
        cache: open_cache(config.digest_cache.as_deref()),
        observer,
        session: 0,
        peer,
        cancel: &cancel,
        walk_first: true,
        rate: config.limit_rate.map(|r| Arc::new(RateLimit::new(r))),
    };
    offering.run(link).await
}

/// The digest cache at `path`, if there is one and it opens.
pub(crate) fn open_cache(path: Option<&std::path::Path>) -> Option<Arc<DigestCache>> {
    path.and_then(|path| match DigestCache::open(path) {
        Ok(cache) => Some(Arc::new(cache)),
        Err(e) => {
            log::warn!(
                "digest cache '{}' unusable ({}); continuing without it",
                path.display(),
                describe_io(&e)
            );
            None
        }
    })
}

/// One sending session, from the walk of its paths to its closing event,
/// over whatever [`Link`] carries it: the connection `xfer send` dials, or
/// one that `xfer serve` accepted through its gate.
pub(crate) struct Offering<'a> {
    pub paths: &'a [std::path::PathBuf],
    pub cache: Option<Arc<DigestCache>>,
    pub observer: Arc<dyn Observer>,
    /// Tells concurrent sessions' events apart.
    pub session: u64,
    pub peer: Arc<str>,
    pub cancel: &'a CancellationToken,
    /// Walk (and start hashing) before the link is up, to overlap it with
    /// the connect; a server walks only for a peer it let in.
    pub walk_first: bool,
    /// `--limit-rate` for the bodies.
    pub rate: Option<Arc<RateLimit>>,
}

impl Offering<'_> {
    /// Runs the session over `link`. `Ok` only if each file was verified
    /// and persisted by the peer (or was already there, identical).
    pub async fn run<L: Link>(self, link: L) -> anyhow::Result<Summary> {
        self.run_noting_admission(link).await.0
    }

    /// [`Offering::run`], also saying whether the link came up at all (a
    /// listener's `--once` waits for a peer it let in, not for a port scan).
    pub async fn run_noting_admission<L: Link>(self, link: L) -> (anyhow::Result<Summary>, bool) {
        let started = Instant::now();
        let observer = Arc::clone(&self.observer);
        let (session, peer) = (self.session, self.peer.to_string());
        let ledger = Arc::new(Mutex::new(
            Ledger::new(Arc::clone(&observer), peer.clone()).in_session(session),
        ));
        // A send is re-run by its user; a server's getter re-runs instead.
        let rerun_resumes = self.walk_first;
        let (result, admitted) = self.offer(link, &ledger).await;
        if result.is_ok() {
            if let Ok(mut ledger) = ledger.lock() {
                ledger.complete();
            }
        }
        let mut summary = match ledger.lock() {
            Ok(ledger) => ledger.summary(),
            Err(_) => Summary::default(),
        };
        summary.secs = started.elapsed().as_secs_f64();
        let result = result.and_then(|()| {
            let first = ledger.lock().ok().and_then(|l| l.first_failure());
            match summary.undelivered() {
                0 => Ok(()),
                failed => Err(Error::Incomplete {
                    failed,
                    total: summary.offered,
                    first: first.unwrap_or_default(),
                }
                .into()),
            }
        });
        // Cut short with files still to go: a re-run skips what arrived and
        // resumes what was kept. Not after a refusal that would only come
        // again (a receiver's limit).
        let result = result.map_err(|e| match e.downcast::<Error>() {
            Ok(cause)
                if rerun_resumes
                    && summary.offered > 0
                    && summary.undelivered() > 0
                    && cause.passes() =>
            {
                Error::Resumable(Box::new(cause)).into()
            }
            Ok(other) => other.into(),
            Err(e) => e,
        });
        observer.event(Event::SessionEnded {
            session,
            peer,
            summary,
            error: result.as_ref().err().map(|e| format!("{e:#}")),
            exit_code: result.as_ref().err().map_or(EXIT_OK, exit_code_of),
            turned_away: false,
        });
        (result.map(|()| summary), admitted)
    }

    /// The session over `link`, and whether the link came up.
    async fn offer<L: Link>(
        self,
        link: L,
        ledger: &Arc<Mutex<Ledger>>,
    ) -> (anyhow::Result<()>, bool) {
        let walked = match self.walk_first {
            true => match start_walk(self.paths, self.cache.clone(), ledger).await {
                Ok(walked) => Some(walked),
                Err(e) => return (Err(e), false),
            },
            false => None,
        };
        let talk = Talk {
            walked,
            paths: self.paths,
            cache: self.cache,
            observer: &self.observer,
            ledger,
            cancel: self.cancel,
            peer: &self.peer,
            session: self.session,
            rate: self.rate,
        };
        match link.establish(talk).await {
            Ok(ran) => (ran, true),
            Err(e) => (Err(e.into()), false),
        }
    }
}

/// A walk of the paths to send, its batches being prepared.
struct Walked {
    batches: mpsc::Receiver<source::Batch>,
    /// Files and bytes it found, for the receiver's totals.
    files: u64,
    bytes: u64,
}

/// Walks `paths`, records what cannot be read, gives the ledger the
/// totals, and starts reading and hashing the first batches in the
/// background.
async fn start_walk(
    paths: &[std::path::PathBuf],
    cache: Option<Arc<DigestCache>>,
    ledger: &Arc<Mutex<Ledger>>,
) -> anyhow::Result<Walked> {
    let paths = paths.to_vec();
    let collected = tokio::task::spawn_blocking(move || source::collect(&paths))
        .await
        .map_err(|e| Error::Internal(format!("walking the paths failed: {e}")))??;
    // rsync-style: what cannot be read is reported and fails the send at
    // the end; the rest still goes.
    for unreadable in collected.unreadable {
        log::warn!(
            "skipping '{}': {}",
            unreadable.local.display(),
            unreadable.reason
        );
        let entry = source::LocalEntry {
            wire_path: unreadable.path,
            local: unreadable.local,
            kind: EntryKind::Dir,
            size: 0,
            mode: 0,
            mtime_secs: 0,
            mtime_nanos: 0,
            ino: 0,
            dev: 0,
        };
        ledger
            .lock()
            .map_err(|_| Error::Internal("the sender's ledger lock was poisoned".into()))?
            .unreadable(entry, format!("cannot read: {}", unreadable.reason));
    }
    let entries = collected.entries;
    let files = entries.iter().filter(|e| e.kind == EntryKind::File).count() as u64;
    let bytes = entries.iter().map(|e| e.size).sum();
    ledger
        .lock()
        .map_err(|_| Error::Internal("the sender's ledger lock was poisoned".into()))?
        .expect(files, bytes);
    // The first batches are read and hashed while the connection and the
    // hellos take their round trips.
    let (batch_tx, batch_rx) = mpsc::channel(2);
    tokio::task::spawn_blocking(move || {
        source::prepare_batches(entries, cache.as_deref(), batch_tx)
    });
    Ok(Walked {
        batches: batch_rx,
        files,
        bytes,
    })
}

/// What the rest of a session needs once the connection (plain or
/// sealed) is up.
struct Talk<'a> {
    /// The walk, already under way, or `None` to walk `paths` first.
    walked: Option<Walked>,
    paths: &'a [std::path::PathBuf],
    cache: Option<Arc<DigestCache>>,
    observer: &'a Arc<dyn Observer>,
    ledger: &'a Arc<Mutex<Ledger>>,
    cancel: &'a CancellationToken,
    peer: &'a Arc<str>,
    session: u64,
    /// `--limit-rate` for its bodies (a server's is one for all getters).
    rate: Option<Arc<RateLimit>>,
}

impl link::Session for Talk<'_> {
    type Output = anyhow::Result<()>;

    fn run<R, W>(
        self,
        reader: FrameReader<R>,
        writer: FrameWriter<W>,
        peer_caps: u32,
    ) -> impl Future<Output = Self::Output> + Send
    where
        R: Source + Sync + 'static,
        W: Transport + Sync + 'static,
    {
        self.talk(reader, writer, peer_caps)
    }
}

impl Talk<'_> {
    /// Offers, bodies and verdicts over `reader` and `writer` until `Bye`.
    async fn talk<R, W>(
        self,
        reader: FrameReader<R>,
        mut writer: FrameWriter<W>,
        peer_caps: u32,
    ) -> anyhow::Result<()>
    where
        R: Source + Sync + 'static,
        W: Transport + Sync + 'static,
    {
        let Talk {
            walked,
            paths,
            cache,
            observer,
            ledger,
            cancel,
            peer,
            session: session_id,
            rate,
        } = self;
        writer.limit_rate(rate);
        let walked = match walked {
            Some(walked) => walked,
            None => start_walk(paths, cache.clone(), ledger).await?,
        };
        // The link is up and the totals are known: a progress line can start.
        observer.event(Event::SessionStarted {
            session: session_id,
            peer: peer.to_string(),
        });
        // Announced before the first offer, when the receiver takes them.
        let totals = (peer_caps & CAP_TOTALS != 0).then_some((walked.files, walked.bytes));
        let batch_rx = walked.batches;
        let settled = Arc::new(Notify::new());
        let closed = Arc::new(AtomicBool::new(false));
        // At most OFFERS_AHEAD plans can be outstanding, so this channel never
        // fills and the reply reader never stops draining verdicts.
        let (plan_tx, plan_rx) = mpsc::channel(OFFERS_AHEAD + 1);
        let replies = tokio::spawn(replies::read_replies(
            reader,
            plan_tx,
            Arc::clone(ledger),
            Arc::clone(&settled),
            Arc::clone(&closed),
        ));

        let mut session = Session {
            writer,
            plans: plan_rx,
            ledger: Arc::clone(ledger),
            settled,
            replies_closed: closed,
            observer: Arc::clone(observer),
            cache,
            cancel: cancel.clone(),
            peer: Arc::clone(peer),
            session: session_id,
            mid_body: false,
            next_id: 0,
        };
        let written = tokio::select! {
            r = async {
                if let Some((files, bytes)) = totals {
                    session.writer.send(&Message::Totals { files, bytes }).await?;
                }
                session.run(batch_rx).await
            } => r,
            _ = async { cancel.cancelled().await; tokio::time::sleep(INTERRUPT_GRACE).await } => {
                Err(Error::Interrupted)
            }
        };
        if let Err(e) = written {
            return Err(session.fail(e, replies).await.into());
        }
        match replies.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(e) => return Err(Error::Internal(format!("the reply reader failed: {e}")).into()),
        }
        // `Bye` is in: close our direction (a sealed one with its end
        // record). Best effort: the receiver may be gone already.
        let _ = tokio::time::timeout(Duration::from_secs(1), session.writer.shutdown()).await;
        let awaiting = ledger
            .lock()
            .map_err(|_| Error::Internal("the sender's ledger lock was poisoned".into()))?
            .awaiting();
        if awaiting > 0 {
            return Err(Error::Protocol {
                peer: peer.to_string(),
                detail: format!("session ended without verdicts for {awaiting} files"),
            }
            .into());
        }
        Ok(())
    }
}
