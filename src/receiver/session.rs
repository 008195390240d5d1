//! One sender's session on the receiving side once it is admitted
//! ([`super::admit`]), wired together: the async side here reads frames
//! and body bytes and answers plans ([`super::plan`]
//! decides them); a blocking [`Sink`] hashes and writes bodies; a committer
//! ([`super::commit`]) makes verified files durable in groups; a writer task
//! sends plans and verdicts back while bodies keep arriving. Every entry's
//! fate is kept in the session's [`Ledger`], which the events, the closing
//! summary and `Bye` are read from.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::admit::Context;
use super::commit::Verdicts;
use super::ledger::Ledger;
use super::plan::{metadata_of, plan_offer, record_of, Decided, Decision};
use super::sink::{BeginFile, Sink, SinkCommand};
use crate::error::{describe_io, Error};
use crate::events::Event;
use crate::hashing::Hasher;
use crate::paths::WirePath;
use crate::protocol::{
    Action, Digest, Entry, FrameReader, FrameWriter, Message, Offer, Outcome, Plan, Source,
    Transport, Verdict, CAP_TOTALS, MAX_BATCH_ENTRIES,
};
use crate::storage::{Claim, DirHandle, Metadata};

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

/// How much of a body to read from the socket at a time while `active`
/// sessions are receiving.
fn body_read_size(active: usize) -> usize {
    (BODY_READ_BUDGET / active.max(1)).clamp(MIN_BODY_READ, BODY_CHUNK)
}

/// The session proper, once the connection (plain or sealed) is up: plans,
/// bodies, verdicts, `Bye`.
pub(super) async fn converse<R, W>(
    mut reader: FrameReader<R>,
    writer: FrameWriter<W>,
    context: Context,
    ledger: &Arc<Mutex<Ledger>>,
) -> Result<(), Error>
where
    R: Source,
    W: Transport + 'static,
{
    reader.limit_rate(context.rate.clone());
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
        totals_seen: false,
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
    /// A `Totals` came (at most one, before the first offer).
    totals_seen: bool,
}

impl<R: Source> Receive<R> {
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
                Some(Message::Totals { files, bytes }) => self.totals(files, bytes)?,
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

    /// What the sender says it will offer: shown, never trusted for limits.
    fn totals(&mut self, files: u64, bytes: u64) -> Result<(), Error> {
        if self.context.peer_caps & CAP_TOTALS == 0 {
            return Err(
                self.protocol("Totals from a sender whose hello did not announce them".into())
            );
        }
        if self.totals_seen || self.next_offer_id > 0 {
            return Err(self.protocol("Totals after the first offer or twice".into()));
        }
        self.totals_seen = true;
        self.ledger()?.announced(files, bytes);
        Ok(())
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
            let mut chunks = Vec::new();
            let got = tokio::select! {
                n = self.reader.read_body_chunks(want, &mut chunks) => n?,
                _ = self.context.shutdown.cancelled() => return Err(self.lost("the receiver is shutting down")),
            };
            remaining -= got as u64;
            self.ledger()?.received(id, got as u64);
            if whole.is_some() {
                body.append(&mut chunks);
            } else {
                self.to_sink(SinkCommand::Data(chunks)).await?;
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
