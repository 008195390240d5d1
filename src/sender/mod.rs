//! One sending session: walk, connect, offer batches, stream bodies, collect
//! verdicts. No terminal code: progress leaves as [`Event`]s, and every
//! file's fate is kept in one [`ledger::Ledger`] that the events, the final
//! summary and the exit code are read from.
//!
//! Two tasks share the connection. [`session`] writes: it keeps offers ahead
//! of the bodies it is sending, so the receiver's plans are on their way
//! back while bodies flow. [`replies`] reads plans and verdicts concurrently,
//! so verdicts never back up behind bodies. A file the receiver reports
//! damaged on the way is sent once more, from scratch, before `Done`.

mod body;
mod connect;
pub mod digest_cache;
pub mod ledger;
mod replies;
mod session;
pub mod source;

use std::fmt;
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncRead;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::code::Code;
use crate::error::{describe_io, exit_code_of, Error, EXIT_OK};
use crate::events::{Event, Observer, Summary};
use crate::protocol::rate::RateLimit;
use crate::protocol::secure::{upgrade, Role};
use crate::protocol::{
    handshake_with, Connection, EntryKind, FrameReader, FrameWriter, Message, Transport, CAP_CODE,
    CAP_TOTALS,
};
use digest_cache::DigestCache;
use ledger::Ledger;
use session::{Session, OFFERS_AHEAD};

/// How long an interrupted sender waits for a blocked write before closing.
const INTERRUPT_GRACE: Duration = Duration::from_secs(2);

/// Where to send: a host name or IP literal, and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub host: String,
    pub port: u16,
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
    let open = connect::connect(&config.destination);
    send_over(config, open, observer, cancel).await
}

/// [`send`] over the connection `open` makes: a TCP connect, or in tests
/// one end of an in-memory pipe. `config.destination` only names the peer.
pub async fn send_over<C: Connection>(
    config: &SendConfig,
    open: impl Future<Output = Result<C, Error>>,
    observer: Arc<dyn Observer>,
    cancel: CancellationToken,
) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let peer = config.destination.to_string();
    let ledger = Arc::new(Mutex::new(Ledger::new(Arc::clone(&observer), peer.clone())));
    let result = run(config, open, &observer, &ledger, cancel).await;
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
    // resumes what was kept.
    // Not after a refusal that would only come again (a receiver's limit).
    let result = result.map_err(|e| match e.downcast::<Error>() {
        Ok(cause) if summary.offered > 0 && summary.undelivered() > 0 && passing(&cause) => {
            Error::Resumable(Box::new(cause)).into()
        }
        Ok(other) => other.into(),
        Err(e) => e,
    });
    observer.event(Event::SessionEnded {
        session: 0,
        peer,
        summary,
        error: result.as_ref().err().map(|e| format!("{e:#}")),
        exit_code: result.as_ref().err().map_or(EXIT_OK, exit_code_of),
    });
    result.map(|()| summary)
}

/// Whether the session ended for a reason that passes: the connection
/// broke, this side was interrupted, or the receiver stopped.
fn passing(cause: &Error) -> bool {
    match cause {
        Error::ConnectionLost { .. } | Error::Interrupted => true,
        Error::PeerAborted { reason, .. } => reason.contains("shutting down"),
        _ => false,
    }
}

async fn run<C: Connection>(
    config: &SendConfig,
    open: impl Future<Output = Result<C, Error>>,
    observer: &Arc<dyn Observer>,
    ledger: &Arc<Mutex<Ledger>>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let paths = config.paths.clone();
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
    let cache = config
        .digest_cache
        .as_deref()
        .and_then(|path| match DigestCache::open(path) {
            Ok(cache) => Some(Arc::new(cache)),
            Err(e) => {
                log::warn!(
                    "digest cache '{}' unusable ({}); continuing without it",
                    path.display(),
                    describe_io(&e)
                );
                None
            }
        });

    // The first batches are read and hashed while the connection and the
    // hellos take their round trips.
    let (batch_tx, batch_rx) = mpsc::channel(2);
    let prep_cache = cache.clone();
    tokio::task::spawn_blocking(move || {
        source::prepare_batches(entries, prep_cache.as_deref(), batch_tx)
    });
    let stream = tokio::select! {
        s = open => s?,
        _ = cancel.cancelled() => return Err(Error::Interrupted.into()),
    };
    let peer: Arc<str> = config.destination.to_string().into();
    observer.event(Event::SessionStarted {
        session: 0,
        peer: peer.to_string(),
    });
    let (read_half, write_half) = stream.into_halves();
    let idle = config.idle_timeout;
    let mut reader = FrameReader::new(read_half, Arc::clone(&peer), idle);
    let mut writer = FrameWriter::new(write_half, Arc::clone(&peer), idle);
    reader.watch(&writer);
    let ours = CAP_TOTALS | if config.code.is_some() { CAP_CODE } else { 0 };
    let theirs = tokio::select! {
        r = handshake_with(&mut reader, &mut writer, ours) => r?,
        _ = cancel.cancelled() => return Err(Error::Interrupted.into()),
    };
    let talk = Talk {
        totals: (theirs & CAP_TOTALS != 0).then_some((files, bytes)),
        batches: batch_rx,
        cache,
        observer,
        ledger,
        cancel: &cancel,
        peer: &peer,
        rate: config.limit_rate.map(|r| Arc::new(RateLimit::new(r))),
    };
    match (&config.code, theirs & CAP_CODE != 0) {
        (None, false) => talk.run(reader, writer).await,
        (None, true) => Err(Error::Auth(format!(
            "{peer} requires a code: add --code to this send \
             (the code from XFER_CODE, --code-file FILE, or typed when asked)"
        ))
        .into()),
        (Some(_), false) => Err(Error::Auth(format!(
            "{peer} does not use a code, and a coded send never falls back to clear text: \
             start the receiver with 'xfer recv --code', or send without --code on a trusted network"
        ))
        .into()),
        (Some(code), true) => {
            let secret = code.secret();
            let sealed = upgrade(reader, writer, Role::Sender, &secret, (ours, theirs), idle, idle);
            let (reader, writer) = tokio::select! {
                r = sealed => r.map_err(refused_hint)?,
                _ = cancel.cancelled() => return Err(Error::Interrupted.into()),
            };
            talk.run(reader, writer).await
        }
    }
}

/// A receiver that refuses this address (too many wrong codes) closes the
/// connection before its code message: say so.
fn refused_hint(e: Error) -> Error {
    match e {
        Error::ConnectionLost { peer, detail } if detail.contains("during the code message") => {
            Error::ConnectionLost {
                peer,
                detail: format!(
                    "{detail} (a receiver closes at once on an address that recently \
                     sent several wrong codes; wait and check the code)"
                ),
            }
        }
        other => other,
    }
}

/// What the rest of a session needs once the connection (plain or
/// sealed) is up.
struct Talk<'a> {
    /// Announced before the first offer, when the receiver takes them.
    totals: Option<(u64, u64)>,
    batches: mpsc::Receiver<source::Batch>,
    cache: Option<Arc<DigestCache>>,
    observer: &'a Arc<dyn Observer>,
    ledger: &'a Arc<Mutex<Ledger>>,
    cancel: &'a CancellationToken,
    peer: &'a Arc<str>,
    rate: Option<Arc<RateLimit>>,
}

impl Talk<'_> {
    /// Offers, bodies and verdicts over `reader` and `writer` until `Bye`.
    async fn run<R, W>(
        self,
        reader: FrameReader<R>,
        mut writer: FrameWriter<W>,
    ) -> anyhow::Result<()>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: Transport,
    {
        let Talk {
            totals,
            batches: batch_rx,
            cache,
            observer,
            ledger,
            cancel,
            peer,
            rate,
        } = self;
        writer.limit_rate(rate);
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
