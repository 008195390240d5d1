//! One sending session: walk, connect, offer batches, stream bodies, collect
//! verdicts. No terminal code: progress leaves as [`Event`]s.
//!
//! Two tasks share the connection. This one writes: it keeps offers ahead of
//! the bodies it is sending, so the receiver's plans are on their way back
//! while bodies flow. The reply reader collects plans and verdicts
//! concurrently, so verdicts never back up behind bodies. A file the receiver
//! reports damaged on the way is sent once more, from scratch, before `Done`.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::digest_cache::DigestCache;
use crate::error::{describe_io, Error};
use crate::events::{Event, FileReport, Observer, Summary};
use crate::hashing::{self, Hasher};
use crate::protocol::{
    handshake, Action, Digest, Entry, EntryKind, FrameReader, FrameWriter, Message, Offer, Outcome,
    Plan,
};
use crate::source::{self, Batch, LocalEntry, Prepared, BATCH_MAX_ENTRIES};

/// Zero bytes per write when padding a body that came up short.
const PAD_CHUNK: usize = 1024 * 1024;
/// Bytes per sendfile step, between progress reports and cancel checks.
const SENDFILE_STEP: u64 = 8 * 1024 * 1024;
/// How far the hashing thread may read ahead of sendfile, at least; more
/// on machines with more memory (see [`hash_lead`]).
const MIN_HASH_LEAD: u64 = 256 * 1024 * 1024;
/// How often a hashing thread that is far enough ahead looks again.
const HASH_LEAD_POLL: Duration = Duration::from_millis(10);
/// How long a TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an interrupted sender waits for a blocked write before closing.
const INTERRUPT_GRACE: Duration = Duration::from_secs(2);
/// Offers kept on the wire ahead of the bodies being sent, so plans come
/// back while earlier bodies flow instead of costing a round trip each.
const OFFERS_AHEAD: usize = 3;

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
}

/// Sends every path to the receiver. `Ok` only if each file was verified
/// and persisted there (or was already present, identical).
pub async fn send(
    config: &SendConfig,
    observer: Arc<dyn Observer>,
    cancel: CancellationToken,
) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let paths = config.paths.clone();
    let collected = tokio::task::spawn_blocking(move || source::collect(&paths)).await??;
    for u in &collected.unreadable {
        log::warn!("skipping '{}': {}", u.local.display(), u.reason);
    }
    let entries = collected.entries;
    let files = entries.iter().filter(|e| e.kind == EntryKind::File).count() as u64;
    let bytes = entries.iter().map(|e| e.size).sum();
    observer.event(Event::Totals {
        session: 0,
        files,
        bytes,
    });
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
        s = connect(&config.destination) => s?,
        _ = cancel.cancelled() => return Err(Error::Interrupted.into()),
    };
    let peer: Arc<str> = config.destination.to_string().into();
    observer.event(Event::SessionStarted {
        session: 0,
        peer: peer.to_string(),
    });
    let (read_half, write_half) = stream.into_split();
    let mut reader = FrameReader::new(read_half, Arc::clone(&peer), config.idle_timeout);
    let mut writer = FrameWriter::new(write_half, Arc::clone(&peer), config.idle_timeout);
    reader.watch(&writer);
    tokio::select! {
        r = handshake(&mut reader, &mut writer) => { r?; }
        _ = cancel.cancelled() => return Err(Error::Interrupted.into()),
    }

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let settled = Arc::new(Notify::new());
    // At most OFFERS_AHEAD plans can be outstanding, so this channel never
    // fills and the reply reader never stops draining verdicts.
    let (plan_tx, plan_rx) = mpsc::channel(OFFERS_AHEAD + 1);
    let replies = tokio::spawn(read_replies(
        reader,
        plan_tx,
        Arc::clone(&ledger),
        Arc::clone(&observer),
        Arc::clone(&settled),
    ));

    let mut session = Session {
        writer,
        plans: plan_rx,
        ledger: Arc::clone(&ledger),
        settled,
        observer,
        cache,
        cancel: cancel.clone(),
        peer: Arc::clone(&peer),
        mid_body: false,
        next_id: 0,
    };
    let written = tokio::select! {
        r = session.run(batch_rx) => r,
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
        Err(e) => return Err(anyhow::anyhow!("reply reader failed: {e}")),
    }

    let ledger = ledger
        .lock()
        .map_err(|_| anyhow::anyhow!("ledger lock poisoned"))?;
    if !ledger.awaiting.is_empty() {
        return Err(Error::Protocol {
            peer: peer.to_string(),
            detail: format!(
                "session ended without verdicts for {} files",
                ledger.awaiting.len()
            ),
        }
        .into());
    }
    let mut summary = ledger.summary;
    summary.secs = started.elapsed().as_secs_f64();
    if summary.failed > 0 {
        return Err(Error::Incomplete {
            failed: summary.failed,
            total: files,
            first: ledger.first_failure.clone().unwrap_or_default(),
        }
        .into());
    }
    Ok(summary)
}

async fn connect(destination: &Destination) -> Result<TcpStream, Error> {
    let addr = destination.to_string();
    let connect_error = |detail: String| Error::Connect {
        addr: addr.clone(),
        detail,
    };
    let candidates = tokio::net::lookup_host((destination.host.as_str(), destination.port))
        .await
        .map_err(|e| connect_error(format!("cannot resolve host: {}", describe_io(&e))))?;
    let mut last = "the host name has no addresses".to_owned();
    for candidate in candidates {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(candidate)).await {
            Ok(Ok(stream)) => {
                stream
                    .set_nodelay(true)
                    .map_err(|e| connect_error(describe_io(&e)))?;
                return Ok(stream);
            }
            Ok(Err(e)) => last = describe_io(&e),
            Err(_) => last = format!("timed out after {} s", CONNECT_TIMEOUT.as_secs()),
        }
    }
    Err(connect_error(last))
}

/// Files whose verdict is awaited, and the running totals.
#[derive(Default)]
struct Ledger {
    awaiting: HashMap<u64, Pending>,
    summary: Summary,
    first_failure: Option<String>,
    /// Files damaged on the way, to be sent once more.
    retries: Vec<LocalEntry>,
    /// The reply reader has stopped; no more verdicts will come.
    closed: bool,
}

struct Pending {
    entry: LocalEntry,
    sha256: Option<Digest>,
    digest_in_header: bool,
    resumed_from: u64,
    /// This is already the second attempt.
    retried: bool,
}

impl Ledger {
    fn fail(&mut self, observer: &dyn Observer, path: &str, reason: String) {
        self.summary.failed += 1;
        if self.first_failure.is_none() {
            self.first_failure = Some(format!("{path}: {reason}"));
        }
        observer.event(Event::FileFailed {
            session: 0,
            path: path.to_owned(),
            reason,
        });
    }
}

/// Reads plans, verdicts and the final word from the receiver; wakes the
/// writer whenever a verdict lands and when it stops.
async fn read_replies(
    mut reader: FrameReader<OwnedReadHalf>,
    plans: mpsc::Sender<Plan>,
    ledger: Arc<Mutex<Ledger>>,
    observer: Arc<dyn Observer>,
    settled: Arc<Notify>,
) -> Result<(), Error> {
    let result =
        read_replies_until_bye(&mut reader, &plans, &ledger, observer.as_ref(), &settled).await;
    if let Ok(mut ledger) = ledger.lock() {
        ledger.closed = true;
    }
    settled.notify_one();
    result
}

async fn read_replies_until_bye(
    reader: &mut FrameReader<OwnedReadHalf>,
    plans: &mpsc::Sender<Plan>,
    ledger: &Mutex<Ledger>,
    observer: &dyn Observer,
    settled: &Notify,
) -> Result<(), Error> {
    let peer = reader.peer().to_owned();
    let protocol = |detail: String| Error::Protocol {
        peer: peer.clone(),
        detail,
    };
    loop {
        match reader.expect_message("the receiver's final word").await? {
            Message::Plan(plan) => {
                // The writer may have stopped; the error that stopped it wins.
                let _ = plans.send(plan).await;
            }
            Message::Verdict(verdict) => {
                let mut ledger = ledger
                    .lock()
                    .map_err(|_| protocol("ledger lock poisoned".into()))?;
                let pending = ledger.awaiting.remove(&verdict.id).ok_or_else(|| {
                    protocol(format!("verdict for file {} that awaits none", verdict.id))
                })?;
                let (stored_as, sha256, skipped) = match verdict.outcome {
                    Outcome::Stored { path, sha256 } => (path, sha256, false),
                    Outcome::Skipped { path } => (path, pending.sha256.unwrap_or_default(), true),
                    Outcome::Failed {
                        reason,
                        retry: true,
                    } if !pending.retried => {
                        log::warn!(
                            "'{}' failed verification ({reason}); sending it again from scratch",
                            pending.entry.wire_path
                        );
                        ledger.retries.push(pending.entry);
                        settled.notify_one();
                        continue;
                    }
                    Outcome::Failed { reason, .. } => {
                        ledger.fail(observer, &pending.entry.wire_path, reason);
                        settled.notify_one();
                        continue;
                    }
                };
                ledger.summary.files += 1;
                ledger.summary.skipped += u64::from(skipped);
                observer.event(Event::FileDone {
                    session: 0,
                    peer: peer.clone(),
                    report: FileReport {
                        path: pending.entry.wire_path,
                        stored_as,
                        size: pending.entry.size,
                        sha256,
                        skipped,
                        digest_in_header: pending.digest_in_header,
                        resumed_from: pending.resumed_from,
                    },
                });
                settled.notify_one();
            }
            Message::Bye { .. } => return Ok(()),
            Message::Abort { reason } => return Err(Error::PeerAborted { peer, reason }),
            other => {
                return Err(protocol(format!(
                    "unexpected {} from the receiver",
                    other.kind_name()
                )))
            }
        }
    }
}

/// The writing half of a session.
struct Session {
    writer: FrameWriter<OwnedWriteHalf>,
    plans: mpsc::Receiver<Plan>,
    ledger: Arc<Mutex<Ledger>>,
    /// Signalled by the reply reader when a verdict lands or it stops.
    settled: Arc<Notify>,
    observer: Arc<dyn Observer>,
    cache: Option<Arc<DigestCache>>,
    cancel: CancellationToken,
    peer: Arc<str>,
    /// Raw body bytes are owed: no frame (not even Abort) may be written.
    mid_body: bool,
    /// The id the next offer starts at.
    next_id: u64,
}

impl Session {
    async fn run(&mut self, mut batches: mpsc::Receiver<Batch>) -> Result<(), Error> {
        let mut offered = VecDeque::new();
        let mut exhausted = false;
        loop {
            while !exhausted && offered.len() < OFFERS_AHEAD {
                match batches.recv().await {
                    Some(batch) => {
                        self.offer(&batch).await?;
                        offered.push_back(batch);
                    }
                    None => exhausted = true,
                }
            }
            let Some(batch) = offered.pop_front() else {
                break;
            };
            self.writer.flush().await?;
            let plan = self.next_plan().await?;
            self.execute(batch, plan).await?;
        }
        // Every first attempt is out: once their verdicts are in, send the
        // files that arrived damaged again, once, from scratch.
        self.settle().await?;
        let retries = std::mem::take(
            &mut self
                .ledger
                .lock()
                .map_err(|_| self.lost("lock poisoned"))?
                .retries,
        );
        if !retries.is_empty() {
            let mut retries = retries.into_iter().peekable();
            while retries.peek().is_some() {
                let items: Vec<Prepared> = retries
                    .by_ref()
                    .take(BATCH_MAX_ENTRIES)
                    .map(|entry| Prepared {
                        entry,
                        sha256: None,
                        content: None,
                    })
                    .collect();
                let batch = Batch {
                    first_id: self.next_id,
                    items,
                    retry: true,
                };
                self.offer(&batch).await?;
                self.writer.flush().await?;
                let plan = self.next_plan().await?;
                self.execute(batch, plan).await?;
            }
            self.settle().await?;
        }
        self.writer.send(&Message::Done).await?;
        self.writer.flush().await
    }

    async fn next_plan(&mut self) -> Result<Plan, Error> {
        tokio::select! {
            plan = self.plans.recv() => plan.ok_or_else(|| self.lost("the receiver stopped answering")),
            _ = self.cancel.cancelled() => Err(Error::Interrupted),
        }
    }

    /// Waits until every file sent so far has its verdict.
    async fn settle(&mut self) -> Result<(), Error> {
        self.writer.flush().await?;
        loop {
            {
                let ledger = self.ledger()?;
                if ledger.awaiting.is_empty() {
                    return Ok(());
                }
                if ledger.closed {
                    return Err(self.lost("the connection closed before every verdict arrived"));
                }
            }
            tokio::select! {
                _ = self.settled.notified() => {}
                _ = self.cancel.cancelled() => return Err(Error::Interrupted),
            }
        }
    }

    fn lost(&self, detail: &str) -> Error {
        Error::ConnectionLost {
            peer: self.peer.to_string(),
            detail: detail.to_owned(),
        }
    }

    fn protocol(&self, detail: String) -> Error {
        Error::Protocol {
            peer: self.peer.to_string(),
            detail,
        }
    }

    /// After the writing side failed: tell the receiver when we can, and
    /// prefer the reply reader's error, which usually says why.
    async fn fail(
        &mut self,
        error: Error,
        replies: tokio::task::JoinHandle<Result<(), Error>>,
    ) -> Error {
        if matches!(error, Error::Interrupted) {
            // Between frames the receiver hears why; mid-body it sees the
            // connection end and keeps the partial for a resume.
            let abort = (!self.mid_body).then(|| Message::Abort {
                reason: "the sender was interrupted".into(),
            });
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                if let Some(abort) = &abort {
                    self.writer.send(abort).await?;
                }
                self.writer.shutdown().await
            })
            .await;
            replies.abort();
            return error;
        }
        let reply = tokio::time::timeout(Duration::from_secs(1), replies).await;
        match reply {
            Ok(Ok(Err(reply_error))) => reply_error,
            _ => error,
        }
    }

    async fn offer(&mut self, batch: &Batch) -> Result<(), Error> {
        let entries = batch
            .items
            .iter()
            .map(|p| Entry {
                path: p.entry.wire_path.clone(),
                kind: p.entry.kind,
                size: p.entry.size,
                mode: p.entry.mode,
                mtime_secs: p.entry.mtime_secs,
                mtime_nanos: p.entry.mtime_nanos,
                sha256: p.sha256,
            })
            .collect();
        self.next_id = batch.first_id + batch.items.len() as u64;
        self.writer
            .send(&Message::Offer(Offer {
                first_id: batch.first_id,
                entries,
            }))
            .await
    }

    async fn execute(&mut self, batch: Batch, plan: Plan) -> Result<(), Error> {
        if plan.first_id != batch.first_id || plan.actions.len() != batch.items.len() {
            return Err(self.protocol("the plan does not match the offer".into()));
        }
        let retry = batch.retry;
        for (id, (item, action)) in
            (batch.first_id..).zip(batch.items.into_iter().zip(plan.actions))
        {
            if self.cancel.is_cancelled() {
                return Err(Error::Interrupted);
            }
            match (item.entry.kind, action) {
                (EntryKind::Dir, Action::DirReady) => {}
                (_, Action::Refuse { reason }) => {
                    self.local_failure(&item.entry.wire_path, reason)?
                }
                (EntryKind::File, Action::Send { offset }) if offset <= item.entry.size => {
                    self.send_body(id, item, offset, retry).await?
                }
                (EntryKind::File, Action::Compare { sha256 }) => {
                    self.compare(id, item, sha256, retry).await?
                }
                (EntryKind::File, Action::Skip { path }) => {
                    let mut ledger = self.ledger()?;
                    ledger.summary.files += 1;
                    ledger.summary.skipped += 1;
                    self.observer.event(Event::FileDone {
                        session: 0,
                        peer: self.peer.to_string(),
                        report: FileReport {
                            path: item.entry.wire_path,
                            stored_as: path,
                            size: item.entry.size,
                            sha256: item.sha256.unwrap_or_default(),
                            skipped: true,
                            digest_in_header: item.sha256.is_some(),
                            resumed_from: 0,
                        },
                    });
                }
                (_, action) => {
                    return Err(self.protocol(format!(
                        "plan action {action:?} does not fit '{}'",
                        item.entry.wire_path
                    )))
                }
            }
        }
        Ok(())
    }

    fn local_failure(&self, path: &str, reason: String) -> Result<(), Error> {
        let mut ledger = self.ledger()?;
        ledger.fail(self.observer.as_ref(), path, reason);
        Ok(())
    }

    fn expect_verdict(
        &self,
        id: u64,
        item: &Prepared,
        sha256: Option<Digest>,
        offset: u64,
        retried: bool,
    ) -> Result<(), Error> {
        let mut ledger = self.ledger()?;
        ledger.awaiting.insert(
            id,
            Pending {
                entry: item.entry.clone(),
                sha256,
                digest_in_header: item.sha256.is_some(),
                resumed_from: offset,
                retried,
            },
        );
        Ok(())
    }

    /// The receiver holds a same-sized file: send ours only if it differs.
    async fn compare(
        &mut self,
        id: u64,
        item: Prepared,
        theirs: Digest,
        retried: bool,
    ) -> Result<(), Error> {
        let ours = match item.sha256 {
            Some(d) => Ok(d),
            None => {
                let local = item.entry.local.clone();
                let hashed = tokio::task::spawn_blocking(move || {
                    File::open(local).and_then(|mut f| hashing::hash_reader(&mut f))
                })
                .await
                .map_err(|e| self.lost(&e.to_string()))?
                .map(|(d, _)| d);
                if let (Ok(d), Some(cache)) = (&hashed, &self.cache) {
                    cache.put(&item.entry.version(), *d);
                }
                hashed
            }
        };
        match ours {
            Ok(ours) if ours == theirs => {
                self.expect_verdict(id, &item, Some(ours), 0, retried)?;
                self.writer.send(&Message::Identical { id }).await
            }
            Ok(_) => self.send_body(id, item, 0, retried).await,
            Err(e) => self.local_failure(
                &item.entry.wire_path,
                format!("cannot read: {}", describe_io(&e)),
            ),
        }
    }

    async fn send_body(
        &mut self,
        id: u64,
        item: Prepared,
        offset: u64,
        retried: bool,
    ) -> Result<(), Error> {
        let size = item.entry.size;
        self.observer.event(Event::FileStarted {
            session: 0,
            path: item.entry.wire_path.clone(),
            size,
        });
        if let (Some(content), Some(sha256)) = (&item.content, item.sha256) {
            let rest = content.get(offset as usize..).unwrap_or_default();
            self.expect_verdict(id, &item, None, offset, retried)?;
            self.writer.send(&Message::FileBegin { id, offset }).await?;
            self.writer.send_raw(rest).await?;
            self.writer
                .send(&Message::FileEnd {
                    sha256,
                    error: None,
                })
                .await?;
            self.observer.event(Event::Progress {
                session: 0,
                bytes: size - offset,
            });
            return self.add_bytes(size - offset);
        }
        let file = match File::open(&item.entry.local) {
            Ok(f) => f,
            Err(e) => {
                return self.local_failure(
                    &item.entry.wire_path,
                    format!("cannot read: {}", describe_io(&e)),
                )
            }
        };
        // The bytes go out with sendfile, straight from the page cache; a
        // second handle of our own hashes the file meanwhile (unless the
        // cache knows its digest), so no byte is copied through this process
        // on its way to the socket.
        let digest = match item.sha256 {
            Some(known) => BodyDigest::Known(known),
            None => match open_same(&item.entry.local, &file) {
                Ok(reader) => {
                    let pace = Arc::new(HashPace::default());
                    pace.sent.store(offset, Ordering::Relaxed);
                    let shared = Arc::clone(&pace);
                    let task = tokio::task::spawn_blocking(move || {
                        hash_file(reader, size, &shared, hash_lead())
                    });
                    BodyDigest::Hashing(task, StopOnDrop(pace))
                }
                Err(e) => {
                    return self.local_failure(
                        &item.entry.wire_path,
                        format!("cannot read: {}", describe_io(&e)),
                    )
                }
            },
        };
        let before = file.metadata().ok().map(|m| (m.len(), m.modified().ok()));
        self.expect_verdict(id, &item, None, offset, retried)?;
        self.writer.send(&Message::FileBegin { id, offset }).await?;
        self.mid_body = true;
        let mut position = offset;
        while position < size {
            if self.cancel.is_cancelled() {
                return Err(Error::Interrupted);
            }
            let step = (size - position).min(SENDFILE_STEP);
            let sent = self.writer.send_file(&file, position, step).await?;
            position += sent;
            if let BodyDigest::Hashing(_, StopOnDrop(pace)) = &digest {
                pace.sent.store(position, Ordering::Relaxed);
            }
            self.observer.event(Event::Progress {
                session: 0,
                bytes: sent,
            });
            if sent < step {
                break;
            }
        }
        let (digest, hashed_here) = match digest {
            BodyDigest::Known(known) => (Ok(known), false),
            BodyDigest::Hashing(task, _stop) => {
                (task.await.map_err(|e| self.lost(&e.to_string()))?, true)
            }
        };
        let after = file.metadata().ok().map(|m| (m.len(), m.modified().ok()));
        let (sha256, error) = match digest {
            Err(e) => ([0; 32], Some(e)),
            Ok(_) if position < size => ([0; 32], Some("the file shrank while being sent".into())),
            Ok(_) if before != after => ([0; 32], Some("the file changed while being sent".into())),
            Ok(d) => {
                if let (true, Some(cache)) = (hashed_here, &self.cache) {
                    cache.put(&item.entry.version(), d);
                }
                (d, None)
            }
        };
        self.end_body(size - position, sha256, error).await?;
        self.add_bytes(size - offset)
    }

    /// Closes a body: a short read still owes the declared length, so the
    /// `missing` bytes are padded, and the trailer says why (`error`).
    async fn end_body(
        &mut self,
        mut missing: u64,
        sha256: Digest,
        error: Option<String>,
    ) -> Result<(), Error> {
        let zeros = if missing > 0 {
            vec![0u8; PAD_CHUNK]
        } else {
            Vec::new()
        };
        while missing > 0 {
            let n = missing.min(PAD_CHUNK as u64) as usize;
            self.writer.send_raw(&zeros[..n]).await?;
            missing -= n as u64;
        }
        self.mid_body = false;
        self.writer.send(&Message::FileEnd { sha256, error }).await
    }

    fn ledger(&self) -> Result<std::sync::MutexGuard<'_, Ledger>, Error> {
        self.ledger
            .lock()
            .map_err(|_| self.lost("the ledger lock was poisoned"))
    }

    fn add_bytes(&self, n: u64) -> Result<(), Error> {
        let mut ledger = self.ledger()?;
        ledger.summary.bytes += n;
        Ok(())
    }
}

/// Opens `path` a second time, so hashing keeps its own read-ahead apart
/// from sendfile's, and checks that both handles are the same file.
fn open_same(path: &std::path::Path, sending: &File) -> io::Result<File> {
    use std::os::unix::fs::MetadataExt;
    let reader = File::open(path)?;
    let (a, b) = (reader.metadata()?, sending.metadata()?);
    if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
        return Err(io::Error::other("the file was replaced while being sent"));
    }
    Ok(reader)
}

/// Where a large body's digest comes from.
enum BodyDigest {
    /// The digest cache knew it.
    Known(Digest),
    /// A blocking thread is hashing the file while it is sent.
    Hashing(tokio::task::JoinHandle<Result<Digest, String>>, StopOnDrop),
}

/// What a body's sendfile loop and its hashing thread share.
#[derive(Default)]
struct HashPace {
    /// Set when the body is abandoned, so the hashing thread stops instead
    /// of reading the rest of a large file for nobody.
    stop: AtomicBool,
    /// How far into the file sendfile has got.
    sent: AtomicU64,
}

/// Stops the hashing thread when the body is done with or abandoned.
struct StopOnDrop(Arc<HashPace>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Relaxed);
    }
}

/// How far the hashing thread may read ahead of sendfile: an eighth of
/// the memory, at least [`MIN_HASH_LEAD`]. Further ahead, on a file larger
/// than the page cache, sendfile would find its pages evicted and read the
/// file a second time (on a spinning disk, two streams seeking against
/// each other); up to here the hashing thread is free to fetch in bulk,
/// which a disk shared with the receiver prefers.
fn hash_lead() -> u64 {
    static LEAD: OnceLock<u64> = OnceLock::new();
    *LEAD.get_or_init(|| {
        // SAFETY: sysconf only reads system configuration.
        let (pages, page) = unsafe {
            (
                libc::sysconf(libc::_SC_PHYS_PAGES),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let memory = u64::try_from(pages)
            .unwrap_or(0)
            .saturating_mul(u64::try_from(page).unwrap_or(0));
        (memory / 8).max(MIN_HASH_LEAD)
    })
}

/// SHA-256 of the first `size` bytes of `file`, on a blocking thread, never
/// more than `lead` bytes ahead of what `pace` says was sent. Errors are in
/// words for the receiver and the user.
fn hash_file(file: File, size: u64, pace: &HashPace, lead: u64) -> Result<Digest, String> {
    let mut hasher = Hasher::new();
    let mut reader = Paced {
        file,
        pace,
        lead,
        read: 0,
    };
    let hashed = hashing::hash_prefix(&mut reader, size, &mut hasher).map_err(|e| {
        if pace.stop.load(Ordering::Relaxed) {
            "sending stopped".to_owned()
        } else {
            format!("cannot read: {}", describe_io(&e))
        }
    })?;
    if hashed < size {
        return Err("the file shrank while being sent".into());
    }
    Ok(hasher.finish())
}

/// A file read no further than `lead` bytes past what was sent, whose
/// reads fail once the body is abandoned.
struct Paced<'a> {
    file: File,
    pace: &'a HashPace,
    lead: u64,
    read: u64,
}

impl Read for Paced<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pace.stop.load(Ordering::Relaxed) {
                return Err(io::Error::other("sending stopped"));
            }
            let sent = self.pace.sent.load(Ordering::Relaxed);
            if self.read < sent.saturating_add(self.lead) {
                break;
            }
            std::thread::sleep(HASH_LEAD_POLL);
        }
        let n = self.file.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_of(bytes: &[u8]) -> (tempfile::NamedTempFile, File) {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.write_all(bytes).unwrap();
        let file = File::open(tmp.path()).unwrap();
        (tmp, file)
    }

    #[test]
    fn hashing_waits_for_sendfile_to_catch_up_then_finishes_with_the_digest() {
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let (_tmp, file) = file_of(&data);
        let pace = Arc::new(HashPace::default());
        let shared = Arc::clone(&pace);
        let size = data.len() as u64;
        let thread = std::thread::spawn(move || hash_file(file, size, &shared, 64 * 1024));
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !thread.is_finished(),
            "hashed past its lead while nothing was sent"
        );
        pace.sent.store(size, Ordering::Relaxed);
        assert_eq!(thread.join().unwrap(), Ok(hashing::digest(&data)));
    }

    #[test]
    fn a_waiting_hash_stops_when_the_body_is_abandoned() {
        let (_tmp, file) = file_of(&[7u8; 300_000]);
        let pace = Arc::new(HashPace::default());
        let shared = Arc::clone(&pace);
        let thread = std::thread::spawn(move || hash_file(file, 300_000, &shared, 1024));
        drop(StopOnDrop(pace));
        assert_eq!(thread.join().unwrap(), Err("sending stopped".to_owned()));
    }
}
