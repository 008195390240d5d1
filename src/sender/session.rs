//! The writing half of a sending session: offers kept ahead of the bodies,
//! each plan carried out in order, then the verdicts awaited and damaged
//! files offered once more before `Done`. Every step is written into the
//! [`Ledger`]; nothing here counts on its own.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::body::{hash_beside, BodyDigest, ReadOnce, StopOnDrop, PAD_CHUNK, SENDFILE_STEP};
use super::ledger::Ledger;
use crate::error::{describe_io, Error};
use crate::events::{Event, Observer};
use crate::hashing;
use crate::protocol::{
    Action, Digest, Entry, EntryKind, FrameWriter, Message, Offer, Plan, Transport,
};
use crate::sender::digest_cache::DigestCache;
use crate::sender::source::{Batch, Prepared, BATCH_MAX_ENTRIES};

/// Offers kept on the wire ahead of the bodies being sent, so plans come
/// back while earlier bodies flow instead of costing a round trip each.
/// Sender policy: the receiver allows far more (docs/PROTOCOL.md §4).
pub(super) const OFFERS_AHEAD: usize = 3;

/// Where a large body's bytes come from on their way out.
enum Feed {
    /// Sendfile, and the digest as [`BodyDigest`] says.
    Sendfile(BodyDigest),
    /// Runs read once by threads of their own, hashed as they are read
    /// unless a digest comes from elsewhere.
    Chunks(ReadOnce, Option<BodyDigest>),
}

/// How a large body went: where it stopped, its digest or why there is
/// none, and whether the digest was computed here (to be cached).
type BodyRead = (u64, Result<Digest, String>, bool);

/// The writing half of a session.
pub(super) struct Session<W> {
    pub writer: FrameWriter<W>,
    pub plans: mpsc::Receiver<Plan>,
    pub ledger: Arc<Mutex<Ledger>>,
    /// Signalled by the reply reader when a verdict lands or it stops.
    pub settled: Arc<Notify>,
    /// Set by the reply reader when it has stopped.
    pub replies_closed: Arc<std::sync::atomic::AtomicBool>,
    pub observer: Arc<dyn Observer>,
    pub cache: Option<Arc<DigestCache>>,
    pub cancel: CancellationToken,
    pub peer: Arc<str>,
    /// Tells concurrent sessions' events apart.
    pub session: u64,
    /// Raw body bytes are owed: no frame (not even Abort) may be written.
    pub mid_body: bool,
    /// The id the next offer starts at.
    pub next_id: u64,
}

impl<W: Transport> Session<W> {
    pub async fn run(&mut self, mut batches: mpsc::Receiver<Batch>) -> Result<(), Error> {
        let mut offered = VecDeque::new();
        let mut exhausted = false;
        loop {
            while !exhausted && offered.len() < OFFERS_AHEAD {
                match batches.recv().await {
                    Some(batch) => {
                        self.offer(&batch, None).await?;
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
        let retries = self.ledger()?.take_retries();
        if !retries.is_empty() {
            let mut retries = retries.into_iter().peekable();
            while retries.peek().is_some() {
                let (records, items): (Vec<usize>, Vec<Prepared>) = retries
                    .by_ref()
                    .take(BATCH_MAX_ENTRIES)
                    .map(|(record, entry)| {
                        let item = Prepared {
                            entry,
                            sha256: None,
                            content: None,
                        };
                        (record, item)
                    })
                    .unzip();
                let batch = Batch {
                    first_id: self.next_id,
                    items,
                    retry: true,
                };
                self.offer(&batch, Some(&records)).await?;
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

    /// Waits until every body sent so far has its verdict.
    async fn settle(&mut self) -> Result<(), Error> {
        self.writer.flush().await?;
        loop {
            // Armed before looking, so a verdict landing in between still wakes us.
            let notified = self.settled.notified();
            if self.ledger()?.awaiting() == 0 {
                return Ok(());
            }
            if self.replies_closed.load(Ordering::Acquire) {
                return Err(self.lost("the connection closed before every verdict arrived"));
            }
            tokio::select! {
                _ = notified => {}
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

    fn ledger(&self) -> Result<MutexGuard<'_, Ledger>, Error> {
        self.ledger
            .lock()
            .map_err(|_| Error::Internal("the sender's ledger lock was poisoned".into()))
    }

    /// After the writing side failed: tell the receiver when we can, and
    /// prefer the reply reader's error, which usually says why.
    pub async fn fail(
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

    /// Puts `batch` in an offer; `retried` names the ledger records a retry
    /// batch re-offers, in order.
    async fn offer(&mut self, batch: &Batch, retried: Option<&[usize]>) -> Result<(), Error> {
        {
            let mut ledger = self.ledger()?;
            for (i, (id, p)) in (batch.first_id..).zip(&batch.items).enumerate() {
                match retried.and_then(|r| r.get(i)) {
                    Some(&record) => ledger.reoffered(id, record),
                    None => ledger.offered(id, &p.entry, p.sha256),
                }
            }
        }
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
        for (id, (item, action)) in
            (batch.first_id..).zip(batch.items.into_iter().zip(plan.actions))
        {
            if self.cancel.is_cancelled() {
                return Err(Error::Interrupted);
            }
            match (item.entry.kind, action) {
                (EntryKind::Dir, Action::DirReady) => self.ledger()?.dir_ready(id),
                (_, Action::Refuse { reason }) => self.ledger()?.refused(id, reason),
                (EntryKind::File, Action::Send { offset }) if offset <= item.entry.size => {
                    self.send_body(id, item, offset).await?
                }
                (EntryKind::File, Action::Compare { sha256 }) => {
                    self.compare(id, item, sha256).await?
                }
                (EntryKind::File, Action::Skip { path }) => self.ledger()?.skipped(id, path),
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

    /// The receiver holds a same-sized file: send ours only if it differs.
    async fn compare(&mut self, id: u64, item: Prepared, theirs: Digest) -> Result<(), Error> {
        let ours = match item.sha256 {
            Some(d) => Ok(d),
            None => {
                let entry = item.entry.clone();
                let hashed = tokio::task::spawn_blocking(move || {
                    entry.open().and_then(|mut f| hashing::hash_reader(&mut f))
                })
                .await
                .map_err(|e| Error::Internal(format!("the hashing task failed: {e}")))?
                .map(|(d, _)| d);
                if let (Ok(d), Some(cache)) = (&hashed, &self.cache) {
                    cache.put(&item.entry.version(), *d);
                }
                hashed
            }
        };
        match ours {
            Ok(ours) if ours == theirs => {
                {
                    let mut ledger = self.ledger()?;
                    ledger.digest(id, ours);
                    ledger.sending(id, 0);
                }
                self.writer.send(&Message::Identical { id }).await
            }
            Ok(_) => self.send_body(id, item, 0).await,
            Err(e) => {
                let reason = format!("cannot read: {}", describe_io(&e));
                self.ledger()?.failed_here(id, reason);
                Ok(())
            }
        }
    }

    async fn send_body(&mut self, id: u64, item: Prepared, offset: u64) -> Result<(), Error> {
        let size = item.entry.size;
        self.observer.event(Event::FileStarted {
            session: self.session,
            path: item.entry.wire_path.clone(),
            size,
        });
        if let (Some(content), Some(sha256)) = (&item.content, item.sha256) {
            let rest = content.get(offset as usize..).unwrap_or_default();
            self.ledger()?.sending(id, offset);
            self.writer.send(&Message::FileBegin { id, offset }).await?;
            self.writer.send_raw(rest).await?;
            self.writer
                .send(&Message::FileEnd {
                    sha256,
                    error: None,
                })
                .await?;
            self.ledger()?.sent(id, size - offset);
            return Ok(());
        }
        let cannot_read = |e: std::io::Error| format!("cannot read: {}", describe_io(&e));
        let file = match item.entry.open() {
            Ok(f) => f,
            Err(e) => {
                self.ledger()?.failed_here(id, cannot_read(e));
                return Ok(());
            }
        };
        // A digest the cache knows, or one a second handle computes while
        // the body goes out (from the file's start, so also over the part
        // a resumed body does not send).
        let beside = |sha256: Option<Digest>| match sha256 {
            Some(known) => Ok(BodyDigest::Known(known)),
            None => hash_beside(&item.entry.local, &file, offset, size),
        };
        let feed = if self.writer.sends_files_directly() {
            // The bytes go out with sendfile, straight from the page
            // cache, never copied through this process.
            beside(item.sha256).map(Feed::Sendfile)
        } else if item.sha256.is_none() && offset == 0 {
            // Every byte passes through this process anyway (to be
            // sealed): it is read once, and hashed as it is read.
            file.try_clone()
                .map(|reader| Feed::Chunks(ReadOnce::start(reader, 0, size, true), None))
        } else {
            // Read from `offset` at once; the kept part is hashed beside,
            // not before the first byte may go.
            beside(item.sha256).and_then(|digest| {
                let reader = file.try_clone()?;
                Ok(Feed::Chunks(
                    ReadOnce::start(reader, offset, size, false),
                    Some(digest),
                ))
            })
        };
        let feed = match feed {
            Ok(feed) => feed,
            Err(e) => {
                self.ledger()?.failed_here(id, cannot_read(e));
                return Ok(());
            }
        };
        let before = file.metadata().ok().map(|m| (m.len(), m.modified().ok()));
        self.ledger()?.sending(id, offset);
        self.writer.send(&Message::FileBegin { id, offset }).await?;
        self.mid_body = true;
        let (position, digest, hashed_here) = match feed {
            Feed::Sendfile(digest) => self.sendfile_body(id, &file, offset, size, digest).await?,
            Feed::Chunks(read, digest) => self.write_chunks(id, read, offset, digest).await?,
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
                self.ledger()?.digest(id, d);
                (d, None)
            }
        };
        self.end_body(size - position, sha256, error).await?;
        // The padding crossed the wire too.
        self.ledger()?.sent(id, size - position);
        Ok(())
    }

    /// Bytes written between progress reports and cancel checks: under a
    /// rate limit a quarter of a second's worth, so both keep their pace.
    fn body_step(&self) -> u64 {
        self.writer.rate_limit().map_or(SENDFILE_STEP, |rate| {
            (rate / 4).clamp(64 * 1024, SENDFILE_STEP)
        })
    }

    /// Sends a body with sendfile, from `offset` until it is all sent or
    /// the file ends early. Returns where it stopped and its digest.
    async fn sendfile_body(
        &mut self,
        id: u64,
        file: &std::fs::File,
        offset: u64,
        size: u64,
        digest: BodyDigest,
    ) -> Result<BodyRead, Error> {
        let mut position = offset;
        let max_step = self.body_step();
        while position < size {
            if self.cancel.is_cancelled() {
                return Err(Error::Interrupted);
            }
            let step = (size - position).min(max_step);
            let sent = self.writer.send_file(file, position, step).await?;
            position += sent;
            if let BodyDigest::Hashing(_, StopOnDrop(pace)) = &digest {
                pace.advance(position);
            }
            self.ledger()?.sent(id, sent);
            if sent < step {
                break;
            }
        }
        Ok(match digest {
            BodyDigest::Known(known) => (position, Ok(known), false),
            BodyDigest::Hashing(task, _stop) => (
                position,
                task.await
                    .map_err(|e| Error::Internal(format!("the hashing task failed: {e}")))?,
                true,
            ),
        })
    }

    /// Writes the runs `read` hands over, from `offset`, until it stops.
    /// Returns where the body stopped and its digest (`known`, or the one
    /// computed as it was read).
    async fn write_chunks(
        &mut self,
        id: u64,
        mut read: ReadOnce,
        offset: u64,
        digest: Option<BodyDigest>,
    ) -> Result<BodyRead, Error> {
        let mut position = offset;
        let paced = self.writer.rate_limit().is_some();
        let step = self.body_step() as usize;
        while let Some(mut run) = read.runs.recv().await {
            if self.cancel.is_cancelled() {
                return Err(Error::Interrupted);
            }
            let len = run.len() as u64;
            if paced {
                // Piece by piece, so progress and cancel keep the pace.
                for piece in run.payloads().flat_map(|p| p.chunks(step)) {
                    if self.cancel.is_cancelled() {
                        return Err(Error::Interrupted);
                    }
                    self.writer.send_raw(piece).await?;
                    self.ledger()?.sent(id, piece.len() as u64);
                }
            } else {
                self.writer.send_run(&mut run).await?;
                self.ledger()?.sent(id, len);
            }
            position += len;
            if let Some(BodyDigest::Hashing(_, StopOnDrop(pace))) = &digest {
                pace.advance(position);
            }
            // Gone only if the reading thread is, and then unneeded.
            let _ = read.spares.send(run);
        }
        let read = read
            .done
            .await
            .map_err(|e| Error::Internal(format!("the reading task failed: {e}")))?;
        let hashed_here = !matches!(digest, Some(BodyDigest::Known(_)));
        let digest = match (read, digest) {
            (Err(e), _) => Err(e),
            (Ok(Some(hashed)), None) => Ok(hashed),
            (Ok(None), Some(BodyDigest::Known(known))) => Ok(known),
            (Ok(None), Some(BodyDigest::Hashing(task, _stop))) => task
                .await
                .map_err(|e| Error::Internal(format!("the hashing task failed: {e}")))?,
            _ => {
                return Err(Error::Internal(
                    "a body was hashed twice or not at all".into(),
                ))
            }
        };
        Ok((position, digest, hashed_here))
    }

    /// Closes a body: a short read still owes the declared length, so the
    /// `missing` bytes are padded, and the trailer says why (`error`; its
    /// digest field is then meaningless and zero, as PROTOCOL.md says).
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
}
