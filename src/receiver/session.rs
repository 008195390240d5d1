//! One sender's session on the receiving side, wired together: the async
//! side here reads frames and body bytes and answers plans ([`super::plan`]
//! decides them); a blocking [`Sink`] hashes and writes bodies; a committer
//! ([`super::commit`]) makes verified files durable in groups; a writer task
//! sends plans and verdicts back while bodies keep arriving. Every entry's
//! fate is kept in the session's [`Ledger`], which the events, the closing
//! summary and `Bye` are read from.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::commit::Verdicts;
use super::guard::{Guard, Refused, COOL_DOWN, PEER_FAILURES};
use super::ledger::Ledger;
use super::plan::{metadata_of, plan_offer, record_of, Decided, Decision, Limits};
use super::sink::{BeginFile, Sink, SinkCommand};
use crate::code::Code;
use crate::error::{describe_io, Error};
use crate::events::{Event, Observer};
use crate::hashing::Hasher;
use crate::paths::WirePath;
use crate::protocol::secure::{secure, Role};
use crate::protocol::{
    handshake_with, hello_bytes, Action, Connection, Digest, Entry, FrameReader, FrameWriter,
    Message, Offer, Outcome, Plan, Transport, Verdict, CAP_CODE, MAX_BATCH_ENTRIES,
};
use crate::storage::{Claim, DirHandle, Metadata, Storage};

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
    /// The sender's address, for the guessing guard.
    pub peer_ip: std::net::IpAddr,
    /// The code senders must hold, if this receiver has one.
    pub code: Option<Arc<Code>>,
    pub guard: Arc<Guard>,
}

/// How much of a body to read from the socket at a time while `active`
/// sessions are receiving.
fn body_read_size(active: usize) -> usize {
    (BODY_READ_BUDGET / active.max(1)).clamp(MIN_BODY_READ, BODY_CHUNK)
}

/// How one connection ended, for the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    /// Every file offered is now in DIR.
    Complete,
    /// The session ran but did not store everything, or broke.
    Incomplete,
    /// The peer never got in: no code, a wrong code, or cooling down. It
    /// is not "the first sender" that `--once` waits for.
    NotAdmitted,
}

/// Runs one session over `stream` (a TCP connection, or in tests one end of
/// an in-memory pipe) to its end, reports how it ended, and says how.
pub(super) async fn serve_one<C: Connection>(
    stream: C,
    peer: String,
    context: Context,
    hello_permit: OwnedSemaphorePermit,
) -> Ended {
    let started = Instant::now();
    let observer = Arc::clone(&context.observer);
    let session = context.session;
    observer.event(Event::SessionStarted {
        session,
        peer: peer.clone(),
    });
    let ledger = Arc::new(Mutex::new(Ledger::new(
        Arc::clone(&observer),
        session,
        peer.clone(),
    )));
    let result = run(stream, &peer, context, hello_permit, &ledger).await;
    if let Err(e) = &result {
        log::warn!("session with {peer} ended: {e}");
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
        Err(Error::Auth(_) | Error::CodeMismatch) => Ended::NotAdmitted,
        Ok(()) if summary.undelivered() == 0 => Ended::Complete,
        _ => Ended::Incomplete,
    };
    observer.event(Event::SessionEnded {
        session,
        peer,
        summary,
        exit_code: result.as_ref().err().map_or(0, Error::exit_code),
        error: result.err().map(|e| e.to_string()),
    });
    ended
}

async fn run<C: Connection>(
    stream: C,
    peer: &str,
    context: Context,
    hello_permit: OwnedSemaphorePermit,
    ledger: &Arc<Mutex<Ledger>>,
) -> Result<(), Error> {
    let name: Arc<str> = peer.into();
    let (read_half, write_half) = stream.into_halves();
    let mut reader = FrameReader::new(read_half, Arc::clone(&name), context.idle_timeout);
    let mut writer = FrameWriter::new(write_half, Arc::clone(&name), context.idle_timeout);
    reader.watch(&writer);
    let lost = |detail: String| Error::ConnectionLost {
        peer: peer.to_owned(),
        detail,
    };
    let secs = context.handshake_timeout.as_secs();
    let ours = if context.code.is_some() { CAP_CODE } else { 0 };
    let theirs = match tokio::time::timeout(
        context.handshake_timeout,
        handshake_with(&mut reader, &mut writer, ours),
    )
    .await
    {
        Ok(result) => result?,
        Err(_) => return Err(lost(format!("no hello within {secs} s"))),
    };
    drop(hello_permit);
    let code = match (&context.code, theirs & CAP_CODE != 0) {
        (None, false) => None,
        (None, true) => {
            return Err(Error::Auth(format!(
                "{peer} sends with a code, but this receiver has none \
                 (start it with 'xfer recv --code' to take coded sends)"
            )))
        }
        (Some(_), false) => {
            return Err(Error::Auth(format!(
                "{peer} sent no code, and this receiver requires one \
                 (it must run 'xfer send --code ...')"
            )))
        }
        (Some(code), true) => Some(Arc::clone(code)),
    };
    // Past the hello, a sender needs a session slot; when all are taken it
    // is told so at once rather than left waiting in a queue (a coded one
    // by the connection closing: it cannot read frames yet).
    let Ok(_slot) = Arc::clone(&context.sessions).try_acquire_owned() else {
        let reason = format!(
            "the receiver is busy with {} senders already; try again shortly",
            context.max_sessions
        );
        if code.is_none() {
            let _ = writer
                .send(&Message::Abort {
                    reason: reason.clone(),
                })
                .await;
        }
        let _ = writer.shutdown().await;
        return Err(lost(format!("turned away: {reason}")));
    };
    let idle = context.idle_timeout;
    let Some(code) = code else {
        log::debug!("session with {peer} started");
        return converse(reader, writer, context, ledger).await;
    };
    let attempt =
        context
            .guard
            .attempt(context.peer_ip)
            .await
            .map_err(|Refused::CoolingDown(left)| {
                Error::Auth(format!(
                    "refused {peer}: too many wrong codes from {}; it may try again in {} min",
                    context.peer_ip,
                    left.as_secs().div_ceil(60)
                ))
            })?;
    let mut hellos = [0u8; 32];
    hellos[..16].copy_from_slice(&hello_bytes(theirs));
    hellos[16..].copy_from_slice(&hello_bytes(ours));
    let (raw_read, read_ahead) = reader.into_parts();
    let raw_read = std::io::Cursor::new(read_ahead).chain(raw_read);
    let secret = code.secret();
    let sealed = secure(
        raw_read,
        writer.into_inner(),
        Role::Receiver,
        &secret,
        &hellos,
        peer,
        context.handshake_timeout,
    );
    let (read, write) = match sealed.await {
        Ok(halves) => {
            attempt.right();
            halves
        }
        Err(e) => {
            // Counted whatever broke it: a guesser learns nothing by
            // hanging up before the codes are compared.
            if attempt.wrong() {
                log::warn!(
                    "{} sent {} wrong codes within a minute; refusing it for {} min",
                    context.peer_ip,
                    PEER_FAILURES,
                    COOL_DOWN.as_secs() / 60
                );
            }
            return Err(e);
        }
    };
    let mut reader = FrameReader::new(read, Arc::clone(&name), idle);
    let writer = FrameWriter::new(write, Arc::clone(&name), idle);
    reader.watch(&writer);
    log::debug!("coded session with {peer} started");
    converse(reader, writer, context, ledger).await
}

/// The session proper, once the connection (plain or sealed) is up: plans,
/// bodies, verdicts, `Bye`.
async fn converse<R, W>(
    reader: FrameReader<R>,
    writer: FrameWriter<W>,
    context: Context,
    ledger: &Arc<Mutex<Ledger>>,
) -> Result<(), Error>
where
    R: AsyncRead + Unpin + Send,
    W: Transport + 'static,
{
    let (out_tx, out_rx) = mpsc::channel(256);
    let replies = tokio::spawn(write_replies(writer, out_rx));
    let (sink_tx, sink_rx) = mpsc::channel(4);
    let verdicts = Verdicts {
        out: out_tx.clone(),
        ledger: Arc::clone(ledger),
    };
    let sink = Sink::new(Arc::clone(&context.storage), verdicts);
    let sink_thread = tokio::task::spawn_blocking(move || sink.run(sink_rx));
    let session_left = context.limits.max_session_bytes.unwrap_or(u64::MAX);
    let mut receive = Receive {
        reader,
        out: out_tx,
        sink: sink_tx,
        context,
        ledger: Arc::clone(ledger),
        planned: BTreeMap::new(),
        dirs: Vec::new(),
        next_offer_id: 0,
        last_body_id: None,
        offered: 0,
        session_left,
    };
    let outcome = receive.run().await;
    let Receive {
        out, sink: sink_tx, ..
    } = receive;
    if let Err(e) = &outcome {
        // Tell the sender why, if the connection still carries frames.
        let _ = out.try_send(Message::Abort {
            reason: e.to_string(),
        });
    }
    drop(out);
    drop(sink_tx);
    // The sink keeps what it verified and, for a body cut off, a partial.
    let sunk = sink_thread.await;
    match outcome {
        Err(e) => {
            let _ = tokio::time::timeout(Duration::from_secs(1), replies).await;
            Err(e)
        }
        Ok(()) => {
            sunk.map_err(|e| Error::Internal(format!("the file writer failed: {e}")))?;
            replies
                .await
                .map_err(|e| Error::Internal(format!("the reply writer failed: {e}")))?
        }
    }
}

/// Sends plans and verdicts in order, flushing whenever nothing else is queued.
async fn write_replies<W: Transport>(
    mut writer: FrameWriter<W>,
    mut rx: mpsc::Receiver<Message>,
) -> Result<(), Error> {
    let mut said_bye = false;
    while let Some(message) = rx.recv().await {
        said_bye = matches!(message, Message::Bye { .. });
        writer.send(&message).await?;
        if rx.is_empty() || said_bye {
            writer.flush().await?;
        }
    }
    let closed = writer.shutdown().await;
    // After `Bye` the sender may hang up at once; the session is settled by
    // then, so a close that finds the peer gone is no failure.
    if said_bye {
        return Ok(());
    }
    closed
}

/// An offered file waiting for its body or an `Identical`.
struct Planned {
    entry: Entry,
    /// Set for `Action::Compare`: the existing file it was compared with,
    /// and that file's digest.
    compared: Option<(String, Digest)>,
    /// Where the body starts (non-zero when resuming a partial).
    offset: u64,
    /// The parent directory as found when planning, if it existed.
    dir: Option<DirHandle>,
    /// Keeps other senders off this path until its partial holds it.
    claim: Claim,
}

/// The reading side of a session.
struct Receive<R> {
    reader: FrameReader<R>,
    out: mpsc::Sender<Message>,
    sink: mpsc::Sender<SinkCommand>,
    context: Context,
    ledger: Arc<Mutex<Ledger>>,
    planned: BTreeMap<u64, Planned>,
    dirs: Vec<(WirePath, Metadata)>,
    next_offer_id: u64,
    last_body_id: Option<u64>,
    /// Entries offered so far, against `Limits::max_entries`.
    offered: u64,
    /// Bytes this session may still plan to receive.
    session_left: u64,
}

impl<R: AsyncRead + Unpin + Send> Receive<R> {
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

    fn ledger(&self) -> Result<MutexGuard<'_, Ledger>, Error> {
        self.ledger
            .lock()
            .map_err(|_| Error::Internal("the receiver's ledger lock was poisoned".into()))
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
            .map_err(|_| Error::Internal("the file writer stopped".into()))
    }

    async fn run(&mut self) -> Result<(), Error> {
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
        let entries: Vec<_> = {
            let mut ledger = self.ledger()?;
            (offer.first_id..)
                .zip(offer.entries)
                .map(|(id, e)| {
                    let offered = ledger.offered(id, &e.path, e.kind, e.size, e.sha256);
                    (e, offered)
                })
                .collect()
        };
        let storage = Arc::clone(&self.context.storage);
        let left = self.session_left;
        let (decided, left) =
            tokio::task::spawn_blocking(move || plan_offer(&storage, entries, &limits, left))
                .await
                .map_err(|e| Error::Internal(format!("planning failed: {e}")))?;
        self.session_left = left;
        let mut actions = Vec::with_capacity(count);
        for (id, decided) in (offer.first_id..).zip(decided) {
            actions.push(self.apply(id, decided)?);
        }
        self.next_offer_id += count as u64;
        self.reply(Message::Plan(Plan {
            first_id: offer.first_id,
            actions,
        }))
        .await
    }

    /// Records one decision and turns it into the plan's action.
    fn apply(&mut self, id: u64, decided: Decided) -> Result<Action, Error> {
        let Decided {
            entry,
            decision,
            path,
            dir,
        } = decided;
        let planned = |compared, offset, claim| Planned {
            entry: entry.clone(),
            compared,
            offset,
            dir: dir.clone(),
            claim,
        };
        Ok(match decision {
            Decision::Refuse(reason) => {
                log::debug!("{}: refused '{}': {reason}", self.reader.peer(), entry.path);
                self.ledger()?.refused(id, reason.clone());
                Action::Refuse { reason }
            }
            Decision::Dir => {
                self.ledger()?.dir_ready(id);
                if let Some(path) = path {
                    self.dirs.push((path, metadata_of(&entry)));
                }
                Action::DirReady
            }
            Decision::Receive { claim, offset } => {
                self.planned.insert(id, planned(None, offset, claim));
                Action::Send { offset }
            }
            Decision::Compare {
                claim,
                existing,
                sha256,
            } => {
                self.planned
                    .insert(id, planned(Some((existing, sha256)), 0, claim));
                Action::Compare { sha256 }
            }
            Decision::Skip { existing } => {
                self.ledger()?.skipped(id, existing.clone(), entry.sha256);
                Action::Skip { path: existing }
            }
        })
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
    /// that never got a body are ones the sender could not read, and are
    /// dropped (their claims with them).
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
        self.ledger()?.receiving(id, offset);
        let size = planned.entry.size;
        self.context.observer.event(Event::FileStarted {
            session: self.context.session,
            path: planned.entry.path.clone(),
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
        let Some((existing, sha256)) = planned.compared else {
            return Err(self.protocol(format!(
                "Identical for file {id}, which was not up for comparison"
            )));
        };
        // The digest is the existing file's, which the sender just matched.
        self.ledger()?.skipped(id, existing.clone(), Some(sha256));
        self.reply(Message::Verdict(Verdict {
            id,
            outcome: Outcome::Skipped { path: existing },
        }))
        .await
    }

    async fn finish(&mut self) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.to_sink(SinkCommand::Finish(tx)).await?;
        rx.await
            .map_err(|_| Error::Internal("the file writer stopped".into()))?;
        // Directory times last: adding files to a directory changes its mtime.
        let storage = Arc::clone(&self.context.storage);
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        tokio::task::spawn_blocking(move || {
            for (path, meta) in dirs {
                if let Err(e) = storage.set_dir_metadata(&path, &meta) {
                    log::warn!("cannot set times on '{path}': {}", describe_io(&e));
                }
            }
        })
        .await
        .map_err(|e| Error::Internal(format!("setting directory times failed: {e}")))?;
        let summary = self.ledger()?.summary();
        self.reply(Message::Bye {
            files: summary.delivered(),
            bytes: summary.bytes,
        })
        .await
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
