//! One sender's session on the receiving side.
//!
//! The async side reads frames and body bytes and answers plans; a blocking
//! sink thread hashes and writes bodies and commits verified files in groups
//! (one filesystem sync per group, not per file); a writer task sends plans
//! and verdicts back while bodies keep arriving.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::error::{describe_io, Error};
use crate::events::{Event, FileReport, Observer, Outcome as FileOutcome, Summary};
use crate::hashing::to_hex;
use crate::hashing::{Hasher, StreamHasher};
use crate::paths::{escape_for_terminal, WirePath};
use crate::protocol::{
    handshake, Action, Digest, Entry, EntryKind, FrameReader, FrameWriter, Message, Offer, Outcome,
    Plan, Verdict, MAX_BATCH_ENTRIES,
};
use crate::storage::{Claim, DirHandle, FilePlan, Metadata, Partial, ResumeRecord, Storage};

/// Bodies up to this size are collected and handed to the sink whole; no
/// read of the socket asks for more.
const BODY_CHUNK: usize = 1024 * 1024;
/// A body is read from the socket in pieces of this budget shared out among
/// the sessions, between [`MIN_BODY_READ`] and [`BODY_CHUNK`]: a lone
/// sender's 1 MiB reads cost the receiver a third less system time than
/// 256 KiB ones, but every session keeps about ten pieces in flight.
const BODY_READ_BUDGET: usize = 2 * 1024 * 1024;
const MIN_BODY_READ: usize = 256 * 1024;
/// Whole bodies up to this size are hashed by the reader task (a quarter
/// of a millisecond at most), not the sink thread.
const HASH_ON_READER_MAX: u64 = 256 * 1024;
/// Offered-but-unfinished entries a sender may have outstanding.
const MAX_OUTSTANDING: usize = 8 * MAX_BATCH_ENTRIES;
/// Verified files committed together, at most.
const GROUP_FILES: usize = 256;
/// Verified bytes committed together, at most.
const GROUP_BYTES: u64 = 256 * 1024 * 1024;
/// A group this large is committed as soon as the committer is free...
const GROUP_EAGER_FILES: usize = 64;
/// ...or this many bytes...
const GROUP_EAGER_BYTES: u64 = 16 * 1024 * 1024;
/// ...and a smaller one once no data has arrived for this long.
const GROUP_QUIET: Duration = Duration::from_millis(6);
/// How often a sink holding verified files checks whether the committer is free.
const COMMITTER_POLL: Duration = Duration::from_millis(2);
/// Groups handed to the committer before the sink waits for it.
const COMMIT_QUEUE: usize = 64;
/// The resume record is brought up to date once this many new bytes...
const CHECKPOINT_BYTES: u64 = 16 * 1024 * 1024;
/// ...and this much time have passed since it last was, so a crash loses at
/// most a second of progress (plus one writeback step). Each update waits
/// for the disk; on a fast link a wait every 16 MiB stalled the writer for
/// a fifth of the time of a 1 GiB transfer.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// What a session needs from the server.
pub(super) struct Context {
    pub storage: Arc<Storage>,
    pub observer: Arc<dyn Observer>,
    pub idle_timeout: Duration,
    pub handshake_timeout: Duration,
    pub limits: Limits,
    /// Session slots; a sender past its hello needs one.
    pub sessions: Arc<Semaphore>,
    pub max_sessions: usize,
    pub shutdown: CancellationToken,
    pub session: u64,
}

/// How much of a body to read from the socket at a time while `active`
/// sessions are receiving.
fn body_read_size(active: usize) -> usize {
    (BODY_READ_BUDGET / active.max(1)).clamp(MIN_BODY_READ, BODY_CHUNK)
}

/// What one sender may ask the receiver to store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest single file, in bytes.
    pub max_file_size: Option<u64>,
    /// Most bytes one session may store.
    pub max_session_bytes: Option<u64>,
    /// Most entries (files and directories) one session may offer.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_size: None,
            max_session_bytes: None,
            max_entries: 10_000_000,
        }
    }
}

/// Runs one session to its end, logs how it ended, and reports whether every
/// file it offered was stored.
pub(super) async fn serve_one(
    stream: TcpStream,
    peer: SocketAddr,
    context: Context,
    hello_permit: OwnedSemaphorePermit,
) -> bool {
    let started = Instant::now();
    let observer = Arc::clone(&context.observer);
    let session = context.session;
    observer.event(Event::SessionStarted {
        session,
        peer: peer.to_string(),
    });
    let result = run(stream, peer, context, hello_permit).await;
    let (mut summary, error, exit_code) = match result {
        Ok(summary) => (summary, None, crate::error::EXIT_OK),
        Err((summary, e)) => {
            log::warn!(
                "session with {peer} ended: {}",
                escape_for_terminal(&e.to_string())
            );
            (summary, Some(e.to_string()), e.exit_code())
        }
    };
    summary.secs = started.elapsed().as_secs_f64();
    summary.offered = summary.stored + summary.skipped + summary.failed;
    let ok = error.is_none() && summary.undelivered() == 0;
    observer.event(Event::SessionEnded {
        session,
        peer: peer.to_string(),
        summary,
        error,
        exit_code,
    });
    ok
}

async fn run(
    stream: TcpStream,
    peer: SocketAddr,
    context: Context,
    hello_permit: OwnedSemaphorePermit,
) -> Result<Summary, (Summary, Error)> {
    let _ = stream.set_nodelay(true);
    let name: Arc<str> = peer.to_string().into();
    let (read_half, write_half) = stream.into_split();
    let mut reader = FrameReader::new(read_half, Arc::clone(&name), context.idle_timeout);
    let mut writer = FrameWriter::new(write_half, Arc::clone(&name), context.idle_timeout);
    reader.watch(&writer);
    let lost = |detail: String| Error::ConnectionLost {
        peer: name.to_string(),
        detail,
    };
    match tokio::time::timeout(
        context.handshake_timeout,
        handshake(&mut reader, &mut writer),
    )
    .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err((Summary::default(), e)),
        Err(_) => {
            let secs = context.handshake_timeout.as_secs();
            return Err((
                Summary::default(),
                lost(format!("no hello within {secs} s")),
            ));
        }
    }
    drop(hello_permit);
    // Past the hello, a sender needs a session slot; when all are taken it
    // is told so at once rather than left waiting in a queue.
    let Ok(_slot) = Arc::clone(&context.sessions).try_acquire_owned() else {
        let reason = format!(
            "the receiver is busy with {} senders already; try again shortly",
            context.max_sessions
        );
        let _ = writer
            .send(&Message::Abort {
                reason: reason.clone(),
            })
            .await;
        let _ = writer.shutdown().await;
        return Err((Summary::default(), lost(format!("turned away: {reason}"))));
    };
    log::debug!("session with {peer} started");

    let (out_tx, out_rx) = mpsc::channel(256);
    let replies = tokio::spawn(write_replies(writer, out_rx));
    let (sink_tx, sink_rx) = mpsc::channel(4);
    let verdicts = Verdicts {
        out: out_tx.clone(),
        observer: Arc::clone(&context.observer),
        session: context.session,
        peer: name.to_string(),
    };
    let (groups, queue) = std::sync::mpsc::sync_channel(COMMIT_QUEUE);
    let committer_busy = Arc::new(AtomicBool::new(false));
    let committer = {
        let (storage, verdicts) = (Arc::clone(&context.storage), verdicts.clone());
        let busy = Arc::clone(&committer_busy);
        std::thread::Builder::new()
            .name("xfer-commit".into())
            .spawn(move || run_committer(storage, verdicts, queue, busy))
            .ok()
            .map(|thread| (groups, thread))
    };
    let sink = Sink {
        storage: Arc::clone(&context.storage),
        verdicts,
        committer,
        current: None,
        group: Vec::new(),
        group_bytes: 0,
        summary: Summary::default(),
        committer_busy,
        runtime: tokio::runtime::Handle::current(),
    };
    let sink_thread = tokio::task::spawn_blocking(move || sink.run(sink_rx));
    let context_limits = context.limits;
    let mut receive = Receive {
        reader,
        out: out_tx,
        sink: sink_tx,
        context,
        planned: BTreeMap::new(),
        dirs: Vec::new(),
        next_offer_id: 0,
        last_body_id: None,
        skipped: 0,
        offered: 0,
        session_left: context_limits.max_session_bytes.unwrap_or(u64::MAX),
    };
    let outcome = receive.run().await;
    let skipped = receive.skipped;
    let Receive {
        out, sink: sink_tx, ..
    } = receive;
    match outcome {
        Ok(mut summary) => {
            summary.skipped += skipped;
            drop(out);
            drop(sink_tx);
            let _ = sink_thread.await;
            match replies.await {
                Ok(Ok(())) => Ok(summary),
                Ok(Err(e)) => Err((summary, e)),
                Err(e) => Err((
                    summary,
                    Error::ConnectionLost {
                        peer: name.to_string(),
                        detail: e.to_string(),
                    },
                )),
            }
        }
        Err(e) => {
            // Tell the sender why, if the connection still carries frames.
            let _ = out.try_send(Message::Abort {
                reason: e.to_string(),
            });
            drop(out);
            drop(sink_tx);
            let summary = sink_thread.await.unwrap_or_default();
            let _ = tokio::time::timeout(Duration::from_secs(1), replies).await;
            Err((summary, e))
        }
    }
}

/// Sends plans and verdicts in order, flushing whenever nothing else is queued.
async fn write_replies(
    mut writer: FrameWriter<OwnedWriteHalf>,
    mut rx: mpsc::Receiver<Message>,
) -> Result<(), Error> {
    while let Some(message) = rx.recv().await {
        writer.send(&message).await?;
        if rx.is_empty() {
            writer.flush().await?;
        }
    }
    writer.shutdown().await
}

/// An offered file waiting for its body or an `Identical`.
struct Planned {
    path: WirePath,
    entry: Entry,
    /// Set for `Action::Compare`: the existing file it was compared with.
    existing: Option<String>,
    /// Where the body starts (non-zero when resuming a partial).
    offset: u64,
    /// The parent directory as found when planning, if it existed.
    dir: Option<DirHandle>,
    /// Keeps other senders off this path until its partial holds it.
    claim: Claim,
}

/// The reading side of a session.
struct Receive {
    reader: FrameReader<OwnedReadHalf>,
    out: mpsc::Sender<Message>,
    sink: mpsc::Sender<SinkCommand>,
    context: Context,
    planned: BTreeMap<u64, Planned>,
    dirs: Vec<(WirePath, Metadata)>,
    next_offer_id: u64,
    last_body_id: Option<u64>,
    skipped: u64,
    /// Entries offered so far, against `Limits::max_entries`.
    offered: u64,
    /// Bytes this session may still plan to receive.
    session_left: u64,
}

impl Receive {
    fn protocol(&self, detail: String) -> Error {
        Error::Protocol {
            peer: self.reader.peer().to_owned(),
            detail,
        }
    }

    fn lost(&self, detail: &str) -> Error {
        Error::ConnectionLost {
            peer: self.reader.peer().to_owned(),
            detail: detail.to_owned(),
        }
    }

    async fn next_message(&mut self) -> Result<Option<Message>, Error> {
        tokio::select! {
            m = self.reader.read_message() => m,
            _ = self.context.shutdown.cancelled() => Err(self.lost("the receiver is shutting down")),
        }
    }

    async fn reply(&self, message: Message) -> Result<(), Error> {
        self.out
            .send(message)
            .await
            .map_err(|_| self.lost("cannot reply: the connection is closed"))
    }

    async fn to_sink(&self, command: SinkCommand) -> Result<(), Error> {
        self.sink
            .send(command)
            .await
            .map_err(|_| self.lost("the file writer stopped"))
    }

    async fn run(&mut self) -> Result<Summary, Error> {
        loop {
            match self.next_message().await? {
                None => {
                    return Err(self.lost("the sender closed the connection before it was done"))
                }
                Some(Message::Offer(offer)) => self.plan(offer).await?,
                Some(Message::FileBegin { id, offset }) => {
                    self.receive_body(id, offset).await?;
                    self.commit_if_drained().await?;
                }
                Some(Message::Identical { id }) => {
                    self.identical(id).await?;
                    self.commit_if_drained().await?;
                }
                Some(Message::Done) => return self.finish().await,
                Some(Message::Abort { reason }) => {
                    return Err(Error::PeerAborted {
                        peer: self.reader.peer().to_owned(),
                        reason,
                    })
                }
                Some(other) => {
                    return Err(
                        self.protocol(format!("unexpected {} from the sender", other.kind_name()))
                    )
                }
            }
        }
    }

    async fn plan(&mut self, offer: Offer) -> Result<(), Error> {
        let count = offer.entries.len();
        if offer.first_id != self.next_offer_id {
            return Err(self.protocol(format!(
                "offer numbered from {} where {} was expected",
                offer.first_id, self.next_offer_id
            )));
        }
        if count == 0 || count > MAX_BATCH_ENTRIES {
            return Err(self.protocol(format!(
                "offer of {count} entries (1 to {MAX_BATCH_ENTRIES} allowed)"
            )));
        }
        if self.planned.len() + count > MAX_OUTSTANDING {
            return Err(self.protocol("too many offered files without bodies".into()));
        }
        self.offered += count as u64;
        let limits = self.context.limits;
        if self.offered > limits.max_entries {
            return Err(self.protocol(format!(
                "more than {} files in one session (the receiver's --max-files); send them in parts",
                limits.max_entries
            )));
        }
        let storage = Arc::clone(&self.context.storage);
        let entries = offer.entries;
        let mut left = self.session_left;
        let (decided, left) = tokio::task::spawn_blocking(move || {
            (decide(&storage, entries, limits, &mut left), left)
        })
        .await
        .map_err(|e| self.lost(&e.to_string()))?;
        self.session_left = left;
        let mut actions = Vec::with_capacity(count);
        for (id, (entry, decision)) in (offer.first_id..).zip(decided) {
            let action = match decision {
                Decision::Refuse(reason) => {
                    log::warn!(
                        "{}: refused '{}': {}",
                        self.reader.peer(),
                        escape_for_terminal(&entry.path),
                        reason
                    );
                    Action::Refuse { reason }
                }
                Decision::Dir(path) => {
                    self.dirs.push((path, metadata_of(&entry)));
                    Action::DirReady
                }
                Decision::Receive { claim, offset, dir } => {
                    let planned = Planned {
                        path: claim.path().clone(),
                        entry,
                        existing: None,
                        offset,
                        dir,
                        claim,
                    };
                    self.planned.insert(id, planned);
                    Action::Send { offset }
                }
                Decision::Compare {
                    claim,
                    existing,
                    sha256,
                    dir,
                } => {
                    let planned = Planned {
                        path: claim.path().clone(),
                        entry,
                        existing: Some(existing),
                        offset: 0,
                        dir,
                        claim,
                    };
                    self.planned.insert(id, planned);
                    Action::Compare { sha256 }
                }
                Decision::Skip(existing) => {
                    self.report_skip(&entry, existing.clone(), entry.sha256);
                    Action::Skip { path: existing }
                }
            };
            actions.push(action);
        }
        self.next_offer_id += count as u64;
        self.reply(Message::Plan(Plan {
            first_id: offer.first_id,
            actions,
        }))
        .await
    }

    fn report_skip(&mut self, entry: &Entry, existing: String, sha256: Option<Digest>) {
        self.skipped += 1;
        self.context.observer.event(Event::FileDone {
            session: self.context.session,
            peer: self.reader.peer().to_owned(),
            report: FileReport {
                path: entry.path.clone(),
                stored_as: Some(existing),
                size: entry.size,
                sha256,
                outcome: FileOutcome::Skipped,
                attempts: 0,
                digest_in_header: entry.sha256.is_some(),
                resumed_from: 0,
            },
        });
    }

    /// With no planned body left, the sender is waiting for verdicts (or
    /// for plans): the sink commits now rather than waiting for quiet.
    async fn commit_if_drained(&self) -> Result<(), Error> {
        if self.planned.is_empty() {
            self.to_sink(SinkCommand::CommitNow).await?;
        }
        Ok(())
    }

    /// The planned entry for `id`. Ids only grow: entries planned before it
    /// that never got a body are ones the sender could not read, and are dropped.
    fn take_planned(&mut self, id: u64) -> Result<Planned, Error> {
        if self.last_body_id.is_some_and(|last| id <= last) {
            return Err(self.protocol(format!("file {id} out of order")));
        }
        let rest = self.planned.split_off(&id);
        self.planned = rest;
        self.last_body_id = Some(id);
        self.planned
            .remove(&id)
            .ok_or_else(|| self.protocol(format!("body for file {id}, which was not planned")))
    }

    async fn receive_body(&mut self, id: u64, offset: u64) -> Result<(), Error> {
        let planned = self.take_planned(id)?;
        if offset != planned.offset {
            return Err(self.protocol(format!(
                "file {id} sent from offset {offset}, but the plan said {}",
                planned.offset
            )));
        }
        let size = planned.entry.size;
        self.context.observer.event(Event::FileStarted {
            session: self.context.session,
            path: planned.path.to_string(),
            size,
        });
        let begin = BeginFile {
            dir: planned.dir,
            claim: planned.claim,
            id,
            record: record_of(&planned.entry),
            meta: metadata_of(&planned.entry),
            header_sha256: planned.entry.sha256,
            size,
            offset,
            path: planned.path,
        };
        // A small body is collected and handed over whole, with its trailer.
        let whole = if size - offset <= BODY_CHUNK as u64 {
            Some(begin)
        } else {
            self.to_sink(SinkCommand::Begin(begin)).await?;
            None
        };
        let mut body = Vec::new();
        let mut remaining = size - offset;
        while remaining > 0 {
            // Sized afresh for every read, so a body begun alone shrinks
            // its pieces as other senders arrive.
            let piece = body_read_size(
                self.context
                    .max_sessions
                    .saturating_sub(self.context.sessions.available_permits()),
            );
            let want = remaining.min(piece as u64) as usize;
            let chunk = tokio::select! {
                c = self.reader.read_body(want) => c?,
                _ = self.context.shutdown.cancelled() => return Err(self.lost("the receiver is shutting down")),
            };
            remaining -= chunk.len() as u64;
            self.context.observer.event(Event::Progress {
                session: self.context.session,
                bytes: chunk.len() as u64,
            });
            if whole.is_some() {
                body.push(chunk);
            } else {
                self.to_sink(SinkCommand::Data(chunk)).await?;
            }
        }
        let (sha256, error) = match self.next_message().await? {
            Some(Message::FileEnd { sha256, error }) => (sha256, error),
            Some(other) => {
                return Err(self.protocol(format!(
                    "expected FileEnd after a body, got {}",
                    other.kind_name()
                )))
            }
            None => {
                return Err(
                    self.lost("the sender closed the connection after a body, before its trailer")
                )
            }
        };
        match whole {
            Some(begin) => {
                // Hashed here, so the sink thread, busy with the disk, has
                // less to do per small file; short enough not to hold up
                // this task. A resumed body needs its prefix, so the sink
                // hashes that one.
                let received = (offset == 0 && size <= HASH_ON_READER_MAX).then(|| {
                    let mut hasher = Hasher::new();
                    for chunk in &body {
                        hasher.update(chunk);
                    }
                    hasher.finish()
                });
                self.to_sink(SinkCommand::Whole {
                    begin,
                    body,
                    received,
                    sha256,
                    error,
                })
                .await
            }
            None => self.to_sink(SinkCommand::End { sha256, error }).await,
        }
    }

    async fn identical(&mut self, id: u64) -> Result<(), Error> {
        let planned = self.take_planned(id)?;
        let Some(existing) = planned.existing else {
            return Err(self.protocol(format!(
                "Identical for file {id}, which was not up for comparison"
            )));
        };
        let sha256 = planned.entry.sha256;
        self.report_skip(&planned.entry, existing.clone(), sha256);
        self.reply(Message::Verdict(Verdict {
            id,
            outcome: Outcome::Skipped { path: existing },
        }))
        .await
    }

    async fn finish(&mut self) -> Result<Summary, Error> {
        let (tx, rx) = oneshot::channel();
        self.to_sink(SinkCommand::Finish(tx)).await?;
        let summary = rx.await.map_err(|_| self.lost("the file writer stopped"))?;
        // Directory times last: adding files to a directory changes its mtime.
        let storage = Arc::clone(&self.context.storage);
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        tokio::task::spawn_blocking(move || {
            for (path, meta) in dirs {
                if let Err(e) = storage.set_dir_metadata(&path, &meta) {
                    log::warn!(
                        "cannot set times on '{}': {}",
                        escape_for_terminal(path.as_str()),
                        describe_io(&e)
                    );
                }
            }
        })
        .await
        .map_err(|e| self.lost(&e.to_string()))?;
        self.reply(Message::Bye {
            files: summary.stored + self.skipped,
            bytes: summary.bytes,
        })
        .await?;
        Ok(summary)
    }
}

fn record_of(entry: &Entry) -> ResumeRecord {
    ResumeRecord {
        path: entry.path.clone(),
        size: entry.size,
        mtime_secs: entry.mtime_secs,
        mtime_nanos: entry.mtime_nanos,
        sha256: entry.sha256.as_ref().map(to_hex),
        durable: 0,
    }
}

fn metadata_of(entry: &Entry) -> Metadata {
    Metadata {
        mode: entry.mode,
        mtime_secs: entry.mtime_secs,
        mtime_nanos: entry.mtime_nanos,
    }
}

enum Decision {
    Dir(WirePath),
    /// A file to receive, where its body starts (resuming a partial), and
    /// its parent directory if it already exists.
    Receive {
        claim: Claim,
        offset: u64,
        dir: Option<DirHandle>,
    },
    /// A file the sender first compares with `existing`, which has the
    /// same name and size.
    Compare {
        claim: Claim,
        existing: String,
        sha256: Digest,
        dir: Option<DirHandle>,
    },
    /// Identical content is stored here already.
    Skip(String),
    Refuse(String),
}

/// Plans one offer against DIR: path safety, free space, existing files,
/// partials to resume.
fn decide(
    storage: &Storage,
    entries: Vec<Entry>,
    limits: Limits,
    session_left: &mut u64,
) -> Vec<(Entry, Decision)> {
    let mut free = storage.free_space().unwrap_or(u64::MAX);
    // Consecutive files usually share a directory: look it up once.
    let mut last_dir: Option<(Option<WirePath>, Option<DirHandle>)> = None;
    entries
        .into_iter()
        .map(|entry| {
            let too_big = limits.max_file_size.filter(|max| entry.size > *max);
            let decision = match (WirePath::parse(&entry.path), entry.kind) {
                (Err(e), _) => Decision::Refuse(format!("unsafe path: {e}")),
                (Ok(_), EntryKind::File) if too_big.is_some() => Decision::Refuse(format!(
                    "{} bytes is over the receiver's limit of {} bytes per file (--max-size)",
                    entry.size,
                    too_big.unwrap_or_default()
                )),
                (Ok(path), EntryKind::Dir) => {
                    // A directory that did not exist may exist now.
                    last_dir = None;
                    match storage.make_dirs(Some(&path)) {
                        Ok(()) => Decision::Dir(path),
                        Err(e) => Decision::Refuse(describe_io(&e)),
                    }
                }
                (Ok(path), EntryKind::File) => {
                    let parent = path.parent();
                    let dir = match &last_dir {
                        Some((p, dir)) if *p == parent => Ok(dir.clone()),
                        _ => storage.find_dir(parent.as_ref()),
                    };
                    match dir {
                        Err(e) => Decision::Refuse(describe_io(&e)),
                        Ok(dir) => {
                            last_dir = Some((parent, dir.clone()));
                            decide_file(storage, path, &entry, dir, &mut free, session_left)
                        }
                    }
                }
            };
            (entry, decision)
        })
        .collect()
}

fn decide_file(
    storage: &Storage,
    path: WirePath,
    entry: &Entry,
    dir: Option<DirHandle>,
    free: &mut u64,
    session_left: &mut u64,
) -> Decision {
    let compare = match storage.plan_file_in(dir.as_ref(), &path, entry.size, entry.sha256) {
        Ok(FilePlan::Receive) => None,
        Ok(FilePlan::Compare { existing, sha256 }) => Some((existing, sha256)),
        Ok(FilePlan::Skip { existing }) => return Decision::Skip(existing),
        Err(e) => return Decision::Refuse(describe_io(&e)),
    };
    // Claimed now, so a second sender of the same path is refused in its
    // plan instead of after its body.
    let claim = match storage.claim(&path) {
        Ok(claim) => claim,
        Err(e) => return Decision::Refuse(describe_io(&e)),
    };
    if let Some((existing, sha256)) = compare {
        return Decision::Compare {
            claim,
            existing,
            sha256,
            dir,
        };
    }
    let offset = storage
        .resumable_in(dir.as_ref(), &claim, &record_of(entry))
        .unwrap_or(0);
    let needed = entry.size - offset;
    if needed > *free {
        Decision::Refuse(format!(
            "not enough free space on the receiver: {needed} bytes needed, {free} available"
        ))
    } else if needed > *session_left {
        Decision::Refuse(format!(
            "over the receiver's limit of bytes per session (--max-session-size); \
             {session_left} bytes were left"
        ))
    } else {
        *free -= needed;
        *session_left -= needed;
        Decision::Receive { claim, offset, dir }
    }
}

/// Work for the sink thread, in stream order.
enum SinkCommand {
    Begin(BeginFile),
    Data(Bytes),
    End {
        sha256: Digest,
        error: Option<String>,
    },
    /// A body small enough to arrive whole: one hand-off instead of three.
    Whole {
        begin: BeginFile,
        body: Vec<Bytes>,
        /// Its digest, when the reader computed it.
        received: Option<Digest>,
        sha256: Digest,
        error: Option<String>,
    },
    /// No more bodies are on their way for now: commit what is verified.
    CommitNow,
    Finish(oneshot::Sender<Summary>),
}

/// Everything the sink needs to start receiving one file.
struct BeginFile {
    dir: Option<DirHandle>,
    claim: Claim,
    id: u64,
    path: WirePath,
    size: u64,
    offset: u64,
    record: ResumeRecord,
    meta: Metadata,
    header_sha256: Option<Digest>,
}

/// The file being received right now.
struct Current {
    id: u64,
    path: WirePath,
    size: u64,
    meta: Metadata,
    header_sha256: Option<Digest>,
    partial: Option<Partial>,
    hasher: BodyHash,
    error: Option<String>,
    resumed_from: u64,
    /// When the resume record was last brought up to date (or the body began).
    checkpointed: Instant,
}

/// How the sink learns a body's digest.
enum BodyHash {
    /// It hashes the bytes as they are written.
    Streaming(StreamHasher),
    /// The reader hashed the whole body before handing it over.
    Known(Digest),
}

/// A verified partial waiting for its group commit.
struct Verified {
    id: u64,
    partial: Partial,
    size: u64,
    sha256: Digest,
    digest_in_header: bool,
    resumed_from: u64,
}

/// Hashes, writes and commits bodies on a blocking thread.
struct Sink {
    storage: Arc<Storage>,
    verdicts: Verdicts,
    /// Groups go here to be committed; joined at the end for its totals.
    committer: Option<(
        std::sync::mpsc::SyncSender<Vec<Verified>>,
        std::thread::JoinHandle<Summary>,
    )>,
    current: Option<Current>,
    group: Vec<Verified>,
    group_bytes: u64,
    summary: Summary,
    /// Set by the committer while it syncs a group.
    committer_busy: Arc<AtomicBool>,
    /// To wait on the command channel with a timeout from this thread.
    runtime: tokio::runtime::Handle,
}

impl Sink {
    fn run(mut self, mut commands: mpsc::Receiver<SinkCommand>) -> Summary {
        // When the command queue was first found empty with files waiting.
        let mut idle_since: Option<Instant> = None;
        loop {
            let command = match commands.try_recv() {
                Ok(c) => c,
                Err(mpsc::error::TryRecvError::Empty) if self.group.is_empty() => {
                    match commands.blocking_recv() {
                        Some(c) => c,
                        None => break,
                    }
                }
                // Nothing queued and files verified: hand them to the committer
                // once it is idle and the group is worth a sync of its own, or
                // the stream has gone quiet (the sender is waiting for us or
                // done). Each sync costs the disk a journal commit and a cache
                // flush, so a burst of small files should not get one each;
                // meanwhile keep collecting and look again shortly.
                Err(mpsc::error::TryRecvError::Empty) => {
                    let quiet = *idle_since.get_or_insert_with(Instant::now);
                    let worth_it = self.group.len() >= GROUP_EAGER_FILES
                        || self.group_bytes >= GROUP_EAGER_BYTES
                        || quiet.elapsed() >= GROUP_QUIET;
                    if worth_it && !self.committer_busy.load(Ordering::Acquire) {
                        self.commit();
                        match commands.blocking_recv() {
                            Some(c) => c,
                            None => break,
                        }
                    } else {
                        match self
                            .runtime
                            .block_on(tokio::time::timeout(COMMITTER_POLL, commands.recv()))
                        {
                            Ok(Some(c)) => c,
                            Ok(None) => break,
                            Err(_) => continue,
                        }
                    }
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            };
            idle_since = None;
            match command {
                SinkCommand::Begin(begin) => self.begin(begin, false, None),
                SinkCommand::Whole {
                    begin,
                    body,
                    received,
                    sha256,
                    error,
                } => {
                    self.begin(begin, true, received);
                    for chunk in &body {
                        self.write(chunk);
                    }
                    self.end(sha256, error);
                }
                SinkCommand::Data(bytes) => self.write(&bytes),
                SinkCommand::End { sha256, error } => self.end(sha256, error),
                SinkCommand::CommitNow => self.commit(),
                SinkCommand::Finish(reply) => {
                    self.drain_committer();
                    let _ = reply.send(self.summary);
                }
            }
            if self.group.len() >= GROUP_FILES || self.group_bytes >= GROUP_BYTES {
                self.commit();
            }
        }
        // Files verified before the connection ended are still worth keeping,
        // and a file cut off mid-body is synced and kept for a resume.
        self.drain_committer();
        if let Some(mut partial) = self.current.take().and_then(|c| c.partial) {
            match partial.checkpoint() {
                Ok(()) => log::debug!(
                    "kept {} bytes of '{}' for a resume",
                    partial.written(),
                    escape_for_terminal(partial.wire_path().as_str())
                ),
                Err(e) => log::warn!(
                    "cannot keep a partial file for a resume: {}",
                    describe_io(&e)
                ),
            }
        }
        self.summary
    }

    /// Opens the partial for `file`; `whole` when its body is all here
    /// already, `received` the body's digest when it is already known.
    fn begin(&mut self, file: BeginFile, whole: bool, received: Option<Digest>) {
        let BeginFile {
            dir,
            claim,
            id,
            path,
            size,
            offset,
            record,
            meta,
            header_sha256,
        } = file;
        let mut prefix = Hasher::new();
        let begun = if whole && offset == 0 {
            self.storage.begin_whole(claim, record, dir)
        } else {
            self.storage.begin(claim, record, offset, &mut prefix, dir)
        };
        let (partial, error) = match begun {
            Ok(p) => (Some(p), None),
            Err(e) => (
                None,
                Some(format!("cannot create the file: {}", describe_io(&e))),
            ),
        };
        self.current = Some(Current {
            id,
            path,
            size,
            meta,
            header_sha256,
            partial,
            hasher: match received {
                Some(digest) => BodyHash::Known(digest),
                None => BodyHash::Streaming(StreamHasher::new(prefix, size - offset)),
            },
            error,
            resumed_from: offset,
            checkpointed: Instant::now(),
        });
    }

    fn write(&mut self, bytes: &Bytes) {
        let Some(current) = self.current.as_mut() else {
            return;
        };
        if let BodyHash::Streaming(hasher) = &mut current.hasher {
            hasher.update(bytes);
        }
        if current.error.is_some() {
            return;
        }
        if let Some(partial) = current.partial.as_mut() {
            let checkpointed = &mut current.checkpointed;
            let result = partial.write(bytes).and_then(|()| {
                if partial.written() - partial.durable() >= CHECKPOINT_BYTES
                    && checkpointed.elapsed() >= CHECKPOINT_EVERY
                {
                    *checkpointed = Instant::now();
                    partial.record_progress()
                } else {
                    Ok(())
                }
            });
            if let Err(e) = result {
                current.error = Some(if e.raw_os_error() == Some(libc::ENOSPC) {
                    "the receiver's disk is full".to_owned()
                } else {
                    format!("cannot write the file: {}", describe_io(&e))
                });
                if let Some(p) = current.partial.take() {
                    p.discard();
                }
            }
        }
    }

    fn end(&mut self, sender_sha256: Digest, sender_error: Option<String>) {
        let Some(mut current) = self.current.take() else {
            return;
        };
        let received = match current.hasher {
            BodyHash::Streaming(hasher) => hasher.finish(),
            BodyHash::Known(digest) => digest,
        };
        // The reason, and whether sending the file again from scratch may fix it.
        let failure = if let Some(e) = sender_error {
            Some((format!("the sender could not read it: {e}"), false))
        } else if let Some(e) = current.error.take() {
            Some((e, false))
        } else if received != sender_sha256 {
            let reason = if current.resumed_from > 0 {
                "SHA-256 mismatch: the resumed partial did not match the source"
            } else {
                "SHA-256 mismatch: the data was corrupted in transit"
            };
            Some((reason.to_owned(), true))
        } else if current.header_sha256.is_some_and(|h| h != received) {
            Some((
                "SHA-256 differs from the digest announced in its header".to_owned(),
                true,
            ))
        } else {
            None
        };
        let partial = current.partial.take();
        match (failure, partial) {
            (None, Some(mut partial)) => match partial.set_metadata(&current.meta) {
                Ok(()) => {
                    self.group_bytes += current.size;
                    self.group.push(Verified {
                        id: current.id,
                        partial,
                        size: current.size,
                        sha256: received,
                        digest_in_header: current.header_sha256.is_some(),
                        resumed_from: current.resumed_from,
                    });
                }
                Err(e) => {
                    partial.discard();
                    let reason = format!("cannot set its metadata: {}", describe_io(&e));
                    self.failed(current.id, &current.path, current.size, reason, false);
                }
            },
            (failure, partial) => {
                if let Some(p) = partial {
                    p.discard();
                }
                let (reason, retry) =
                    failure.unwrap_or_else(|| ("the file was not written".to_owned(), false));
                self.failed(current.id, &current.path, current.size, reason, retry);
            }
        }
    }

    fn failed(&mut self, id: u64, path: &WirePath, size: u64, reason: String, retry: bool) {
        self.summary.failed += 1;
        self.verdicts.failed(id, path, size, reason, retry);
    }

    /// Hands the verified group to the committer thread.
    fn commit(&mut self) {
        if self.group.is_empty() {
            return;
        }
        let group = std::mem::take(&mut self.group);
        self.group_bytes = 0;
        match &self.committer {
            Some((queue, _)) => {
                if let Err(unsent) = queue.send(group) {
                    commit_group(&self.storage, &self.verdicts, unsent.0, &mut self.summary);
                }
            }
            None => commit_group(&self.storage, &self.verdicts, group, &mut self.summary),
        }
    }

    /// Commits everything handed off so far and waits for it.
    fn drain_committer(&mut self) {
        self.commit();
        if let Some((queue, thread)) = self.committer.take() {
            drop(queue);
            if let Ok(committed) = thread.join() {
                self.summary.stored += committed.stored;
                self.summary.bytes += committed.bytes;
                self.summary.failed += committed.failed;
            }
        }
    }
}

/// Sends verdicts to the peer and reports them as events.
#[derive(Clone)]
struct Verdicts {
    out: mpsc::Sender<Message>,
    observer: Arc<dyn Observer>,
    session: u64,
    peer: String,
}

impl Verdicts {
    fn failed(&self, id: u64, path: &WirePath, size: u64, reason: String, retry: bool) {
        log::warn!(
            "{}: '{}' not stored: {}",
            self.peer,
            escape_for_terminal(path.as_str()),
            reason
        );
        self.observer.event(Event::FileDone {
            session: self.session,
            peer: self.peer.clone(),
            report: FileReport {
                path: path.to_string(),
                stored_as: None,
                size,
                sha256: None,
                outcome: FileOutcome::Failed(reason.clone()),
                digest_in_header: false,
                resumed_from: 0,
                attempts: 1,
            },
        });
        let outcome = Outcome::Failed { reason, retry };
        let _ = self
            .out
            .blocking_send(Message::Verdict(Verdict { id, outcome }));
    }

    fn stored(&self, id: u64, report: FileReport) {
        let outcome = Outcome::Stored {
            path: report.stored_as.clone().unwrap_or_default(),
            sha256: report.sha256.unwrap_or_default(),
        };
        self.observer.event(Event::FileDone {
            session: self.session,
            peer: self.peer.clone(),
            report,
        });
        let _ = self
            .out
            .blocking_send(Message::Verdict(Verdict { id, outcome }));
    }
}

/// Runs on its own thread: commits groups of verified files, merging every
/// group that queued up while the previous sync ran (group commit), so the
/// sink never waits for the disk and many files share one sync.
fn run_committer(
    storage: Arc<Storage>,
    verdicts: Verdicts,
    queue: std::sync::mpsc::Receiver<Vec<Verified>>,
    busy: Arc<AtomicBool>,
) -> Summary {
    let mut summary = Summary::default();
    while let Ok(mut group) = queue.recv() {
        busy.store(true, Ordering::Release);
        while let Ok(more) = queue.try_recv() {
            group.extend(more);
        }
        commit_group(&storage, &verdicts, group, &mut summary);
        busy.store(false, Ordering::Release);
    }
    summary
}

/// Syncs, publishes and reports one group of verified files.
fn commit_group(
    storage: &Storage,
    verdicts: &Verdicts,
    group: Vec<Verified>,
    summary: &mut Summary,
) {
    let (files, partials): (Vec<_>, Vec<_>) = group
        .into_iter()
        .map(|v| {
            let report = FileReport {
                path: v.partial.wire_path().to_string(),
                stored_as: None,
                size: v.size,
                sha256: Some(v.sha256),
                outcome: FileOutcome::Stored,
                attempts: 1,
                digest_in_header: v.digest_in_header,
                resumed_from: v.resumed_from,
            };
            ((v.id, v.partial.wire_path().clone(), report), v.partial)
        })
        .unzip();
    let results = storage.commit(partials);
    for ((id, path, mut report), result) in files.into_iter().zip(results) {
        match result {
            Ok(stored_as) => {
                summary.stored += 1;
                summary.bytes += report.size - report.resumed_from;
                report.stored_as = Some(stored_as);
                verdicts.stored(id, report);
            }
            Err(e) => {
                summary.failed += 1;
                verdicts.failed(
                    id,
                    &path,
                    report.size,
                    format!("cannot store it: {}", describe_io(&e)),
                    false,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_reads_share_one_budget_between_bounds() {
        assert_eq!(body_read_size(0), BODY_CHUNK);
        assert_eq!(body_read_size(1), BODY_CHUNK);
        assert_eq!(body_read_size(2), BODY_CHUNK);
        assert_eq!(body_read_size(4), 512 * 1024);
        assert_eq!(body_read_size(8), MIN_BODY_READ);
        assert_eq!(body_read_size(1000), MIN_BODY_READ);
    }
}
