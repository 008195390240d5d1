//! The sink: one blocking thread per session that hashes and writes bodies
//! in stream order, checks each against its trailer (and header) digest,
//! and gathers verified files into groups for the committer, so the disk
//! sees one sync per group rather than per file.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::commit::{commit_group, run_committer, Verdicts, Verified};
use crate::error::describe_io;
use crate::hashing::{Hasher, StreamHasher};
use crate::protocol::Digest;
use crate::storage::{Claim, DirHandle, Metadata, Partial, ResumeRecord, Storage};

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
/// Groups handed to the committer before the sink waits for it.
const COMMIT_QUEUE: usize = 64;
/// The resume record is brought up to date once this many new bytes...
const CHECKPOINT_BYTES: u64 = 16 * 1024 * 1024;
/// ...and this much time have passed since it last was, so a crash loses at
/// most a second of progress (plus one writeback step). Each update waits
/// for the disk; on a fast link a wait every 16 MiB stalled the writer for
/// a fifth of the time of a 1 GiB transfer.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Work for the sink thread, in stream order.
pub(super) enum SinkCommand {
    Begin(BeginFile),
    /// The next body bytes, in order: from a sealed source one chunk per
    /// record opened, handed over together.
    Data(Vec<Bytes>),
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
    /// Commit everything verified, wait for it, then answer.
    Finish(oneshot::Sender<()>),
}

/// Everything the sink needs to start receiving one file.
pub(super) struct BeginFile {
    pub dir: Option<DirHandle>,
    pub claim: Claim,
    pub id: u64,
    pub size: u64,
    pub offset: u64,
    pub record: ResumeRecord,
    pub meta: Metadata,
    pub header_sha256: Option<Digest>,
}

/// The file being received right now.
struct Current {
    id: u64,
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

/// Hashes, writes and commits bodies on a blocking thread.
pub(super) struct Sink {
    storage: Arc<Storage>,
    verdicts: Verdicts,
    /// Groups go here to be committed; joined at the end for its totals.
    committer: Option<(
        std::sync::mpsc::SyncSender<Vec<Verified>>,
        std::thread::JoinHandle<()>,
    )>,
    current: Option<Current>,
    group: Vec<Verified>,
    group_bytes: u64,
    /// Set by the committer while it syncs a group.
    committer_busy: Arc<AtomicBool>,
    /// Signalled by the committer each time it finishes a group.
    committer_free: Arc<tokio::sync::Notify>,
    /// To wait on the command channel with a timeout from this thread.
    runtime: tokio::runtime::Handle,
}

impl Sink {
    /// A sink for one session, with its committer thread started.
    pub fn new(storage: Arc<Storage>, verdicts: Verdicts) -> Sink {
        let (groups, queue) = std::sync::mpsc::sync_channel(COMMIT_QUEUE);
        let committer_busy = Arc::new(AtomicBool::new(false));
        let committer_free = Arc::new(tokio::sync::Notify::new());
        let committer = {
            let (storage, verdicts) = (Arc::clone(&storage), verdicts.clone());
            let busy = Arc::clone(&committer_busy);
            let free = Arc::clone(&committer_free);
            // Without a thread of its own, the sink commits groups itself.
            std::thread::Builder::new()
                .name("xfer-commit".into())
                .spawn(move || run_committer(storage, verdicts, queue, busy, free))
                .ok()
                .map(|thread| (groups, thread))
        };
        Sink {
            storage,
            verdicts,
            committer,
            current: None,
            group: Vec::new(),
            group_bytes: 0,
            committer_busy,
            committer_free,
            runtime: tokio::runtime::Handle::current(),
        }
    }

    pub fn run(mut self, mut commands: mpsc::Receiver<SinkCommand>) {
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
                        // Wait for what changes the answer: a command, the
                        // stream going quiet, or (worth it, but the committer
                        // busy) the committer's word that it is free.
                        let quiet_at = tokio::time::Instant::from_std(quiet + GROUP_QUIET);
                        let free = Arc::clone(&self.committer_free);
                        let woke = self.runtime.block_on(async {
                            tokio::select! {
                                c = commands.recv() => Some(c),
                                _ = free.notified(), if worth_it => None,
                                _ = tokio::time::sleep_until(quiet_at), if !worth_it => None,
                            }
                        });
                        match woke {
                            Some(Some(c)) => c,
                            Some(None) => break,
                            None => continue,
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
                    self.write(&body);
                    self.end(sha256, error);
                }
                SinkCommand::Data(chunks) => self.write(&chunks),
                SinkCommand::End { sha256, error } => self.end(sha256, error),
                SinkCommand::CommitNow => self.commit(),
                SinkCommand::Finish(reply) => {
                    self.drain_committer();
                    let _ = reply.send(());
                }
            }
            if self.group.len() >= GROUP_FILES || self.group_bytes >= GROUP_BYTES {
                self.commit();
            }
        }
        // Files verified before the connection ended are still worth keeping,
        // and a file cut off mid-body is synced and kept for a resume.
        self.drain_committer();
        let Some(current) = self.current.take() else {
            return;
        };
        if let Some(mut partial) = current.partial {
            match partial.checkpoint() {
                Ok(()) => {
                    log::debug!(
                        "kept {} bytes of '{}' for a resume",
                        partial.written(),
                        partial.wire_path()
                    );
                    if let Ok(mut ledger) = self.verdicts.ledger.lock() {
                        ledger.kept(current.id, partial.written());
                    }
                }
                Err(e) => log::warn!(
                    "cannot keep a partial file for a resume: {}",
                    describe_io(&e)
                ),
            }
        }
    }

    /// Opens the partial for `file`; `whole` when its body is all here
    /// already, `received` the body's digest when it is already known.
    fn begin(&mut self, file: BeginFile, whole: bool, received: Option<Digest>) {
        let BeginFile {
            dir,
            claim,
            id,
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
                Some(format!(
                    "cannot create it on the receiver: {}",
                    describe_io(&e)
                )),
            ),
        };
        self.current = Some(Current {
            id,
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

    fn write(&mut self, chunks: &[Bytes]) {
        let Some(current) = self.current.as_mut() else {
            return;
        };
        if let BodyHash::Streaming(hasher) = &mut current.hasher {
            hasher.update(chunks);
        }
        if current.error.is_some() {
            return;
        }
        if let Some(partial) = current.partial.as_mut() {
            let checkpointed = &mut current.checkpointed;
            let written = chunks.iter().try_for_each(|chunk| partial.write(chunk));
            let result = written.and_then(|()| {
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
                    format!("cannot write it on the receiver: {}", describe_io(&e))
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
                        sha256: received,
                    });
                }
                Err(e) => {
                    partial.discard();
                    let reason = format!(
                        "cannot set its metadata on the receiver: {}",
                        describe_io(&e)
                    );
                    self.verdicts.failed(current.id, reason, false);
                }
            },
            (failure, partial) => {
                if let Some(p) = partial {
                    p.discard();
                }
                let (reason, retry) =
                    failure.unwrap_or_else(|| ("the file was not written".to_owned(), false));
                self.verdicts.failed(current.id, reason, retry);
            }
        }
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
                    commit_group(&self.storage, &self.verdicts, unsent.0);
                }
            }
            None => commit_group(&self.storage, &self.verdicts, group),
        }
    }

    /// Commits everything handed off so far and waits for it.
    fn drain_committer(&mut self) {
        self.commit();
        if let Some((queue, thread)) = self.committer.take() {
            drop(queue);
            if thread.join().is_err() {
                log::error!("internal error: the commit thread panicked");
            }
        }
    }
}
