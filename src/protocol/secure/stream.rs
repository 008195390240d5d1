//! The record codec behind `AsyncRead` and `AsyncWrite`: what a
//! [`FrameReader`](crate::protocol::FrameReader) and
//! [`FrameWriter`](crate::protocol::FrameWriter) run over in a coded
//! session.
//!
//! Errors come back as `io::Error`s that carry a typed [`Error`]; see
//! [`recover_error`](super::recover_error). Timeouts are the framed
//! layer's, with one exception: a flush or shutdown of the sealed writer
//! writes a backlog the framed layer cannot watch, so the writer itself
//! gives up once the peer has taken nothing for the idle time.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use std::future::Future;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use super::record::{
    begin_record, bytes_needed, finish_record, open_record, record_payload_len, OpenState,
    RecordError, RecordKind, RecordRun, SealState, MAX_RECORD_LEN, MAX_RECORD_PAYLOAD,
};
use crate::error::Error;
use crate::protocol::connection::Activity;
use crate::protocol::{Source, Transport};

/// What ended a sealed reader for good: every later read repeats it.
#[derive(Debug, Clone)]
enum Fault {
    Record(RecordError),
    /// The stream ended without the end record.
    Cut,
}

/// Reads and opens the peer's records, handing out their payloads. Owns
/// the bytes it read ahead, so wrapping it loses nothing.
pub struct SealedReader<R> {
    inner: R,
    state: OpenState,
    /// Sealed bytes read but not yet opened.
    sealed: BytesMut,
    /// The opened payload not yet handed out.
    plain: BytesMut,
    peer: Arc<str>,
    fault: Option<Fault>,
}

impl<R> SealedReader<R> {
    /// A reader of records from `inner`, opened with `state`. Sessions get
    /// theirs from [`super::secure`]; this is public for the fuzz targets.
    pub fn new(inner: R, state: OpenState, peer: Arc<str>) -> Self {
        SealedReader {
            inner,
            state,
            sealed: BytesMut::new(),
            plain: BytesMut::new(),
            peer,
            fault: None,
        }
    }

    fn error(&self, fault: &Fault) -> io::Error {
        let peer = self.peer.to_string();
        match fault {
            Fault::Record(e) => io::Error::new(
                io::ErrorKind::InvalidData,
                Error::Protocol {
                    peer,
                    detail: e.to_string(),
                },
            ),
            Fault::Cut => io::Error::new(
                io::ErrorKind::UnexpectedEof,
                Error::ConnectionLost {
                    peer,
                    detail: "the connection was cut (no end-of-session record)".into(),
                },
            ),
        }
    }

    fn fail(&mut self, fault: Fault) -> io::Error {
        let e = self.error(&fault);
        self.fault = Some(fault);
        e
    }
}

/// Sealed bytes read from the socket at a time, at most: 16 records.
const READ_AHEAD: usize = 16 * MAX_RECORD_LEN;

impl<R: AsyncRead + Unpin> SealedReader<R> {
    /// Opens records until one has payload: `Ready(Ok(true))` with it in
    /// `plain`, `Ready(Ok(false))` at the clean end of the stream. Reads
    /// the socket only when no whole record is buffered, unless
    /// `only_buffered`, when it returns `Ready(Ok(false))` instead.
    fn poll_open(&mut self, cx: &mut Context<'_>, only_buffered: bool) -> Poll<io::Result<bool>> {
        debug_assert!(self.plain.is_empty());
        loop {
            if let Some(fault) = &self.fault {
                return Poll::Ready(Err(self.error(fault)));
            }
            match open_record(&mut self.state, &mut self.sealed) {
                Ok(Some((RecordKind::Data, payload))) => {
                    self.plain = payload;
                    return Poll::Ready(Ok(true));
                }
                // After the end record only the stream's end may follow.
                Ok(Some((RecordKind::End, _))) => continue,
                Ok(None) => {}
                Err(e) => return Poll::Ready(Err(self.fail(Fault::Record(e)))),
            }
            if only_buffered {
                return Poll::Ready(Ok(false));
            }
            let needed = match bytes_needed(&self.sealed) {
                Ok(needed) => needed,
                Err(e) => return Poll::Ready(Err(self.fail(Fault::Record(e)))),
            };
            // Room for the whole record and up to a few more of read-ahead,
            // so one read takes many records: memory stays bounded (about
            // READ_AHEAD per session) whatever the peer declares.
            let wanted = needed.saturating_sub(self.sealed.len()).max(READ_AHEAD);
            if self.sealed.capacity() - self.sealed.len() < wanted / 2 {
                self.sealed.reserve(wanted);
            }
            let read =
                tokio_util::io::poll_read_buf(Pin::new(&mut self.inner), cx, &mut self.sealed);
            match ready!(read) {
                Ok(0) if self.state.ended() && self.sealed.is_empty() => {
                    return Poll::Ready(Ok(false));
                }
                Ok(0) => return Poll::Ready(Err(self.fail(Fault::Cut))),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for SealedReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Fills `buf` with as many records as are already here, so a
        // reader asking for a megabyte gets one (as from a plain socket),
        // not one 64 KiB record per call; waits for the socket only when
        // nothing at all could be handed over.
        let mut handed = false;
        while buf.remaining() > 0 {
            if this.plain.is_empty() {
                // Let the read buffer's allocation be reused.
                this.plain = BytesMut::new();
                match this.poll_open(cx, handed) {
                    Poll::Ready(Ok(true)) => {}
                    Poll::Ready(Ok(false)) => break,
                    // What was handed over already is good; the fault
                    // (kept) comes with the next read.
                    Poll::Ready(Err(_)) if handed => break,
                    other => return other.map_ok(drop),
                }
            }
            let n = this.plain.len().min(buf.remaining());
            buf.put_slice(&this.plain[..n]);
            this.plain.advance(n);
            handed = true;
        }
        Poll::Ready(Ok(()))
    }
}

/// A reader that opens sealed records can hand out their payloads where
/// they were opened, instead of copying them into its caller's buffer.
pub trait OpenedPayloads: Send {
    /// Opened payload, up to `max` bytes in all, pushed onto `out` one
    /// record's worth at a time: waits for the socket only while nothing
    /// is opened, then takes the whole records already read. `Ok(0)` at
    /// the clean end of the stream.
    fn poll_payloads(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
        out: &mut Vec<Bytes>,
    ) -> Poll<io::Result<usize>>;
}

impl<R: AsyncRead + Unpin + Send> OpenedPayloads for SealedReader<R> {
    fn poll_payloads(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
        out: &mut Vec<Bytes>,
    ) -> Poll<io::Result<usize>> {
        let mut taken = 0;
        while taken < max {
            if self.plain.is_empty() {
                match self.poll_open(cx, taken > 0) {
                    Poll::Ready(Ok(true)) => {}
                    Poll::Ready(Ok(false)) => break,
                    // What was taken already is good; the fault (kept)
                    // comes with the next call.
                    Poll::Ready(Err(_)) if taken > 0 => break,
                    other => return other.map_ok(|_| 0),
                }
            }
            let n = self.plain.len().min(max - taken);
            out.push(self.plain.split_to(n).freeze());
            taken += n;
        }
        Poll::Ready(Ok(taken))
    }
}

/// Where a sealed writer is in closing its direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    Open,
    /// The end record is sealed; nothing more may be written.
    EndSealed,
}

/// Sealed bytes queued before they are written out: several records per
/// write, so a large body costs a quarter of the system calls (and of the
/// socket's per-write work) that one write per record would. Four records
/// did better than sixteen (1 GiB coded: 1.55-1.75 s against 1.69-1.76 s),
/// and keep what one flush may wait for small.
pub(super) const WRITE_BATCH: usize = 4 * MAX_RECORD_LEN;

/// Buffers plaintext into records, seals each when it is full or on flush,
/// and writes the sealed records out in batches; shutting down seals the
/// end record before shutting the inner writer.
pub struct SealedWriter<W> {
    pub(super) inner: W,
    state: SealState,
    /// Sealed records not yet (all) written, then the record being filled.
    pub(super) buf: Vec<u8>,
    /// How much of `buf` is written out already.
    written: usize,
    /// Where the record being filled begins in `buf`, if one is begun.
    filling: Option<usize>,
    /// A sealed [`RecordRun`] being written: its length and how much of
    /// it is out. Nothing else may be written until it is all out.
    run: Option<(usize, usize)>,
    closing: Closing,
    peer: Arc<str>,
    stall: Stall,
}

/// Bounds how long the inner writer may take nothing while sealed bytes
/// wait for it.
struct Stall {
    idle: Duration,
    /// Armed when a write finds the peer not reading; disarmed by progress.
    since: Option<Pin<Box<Sleep>>>,
    /// Told of every write that lands, so the reader watching the framed
    /// writer sees the progress of a flush it cannot see itself.
    activity: Option<Arc<Activity>>,
}

impl Stall {
    /// One write of `bytes` to `inner`, failing with `stopped` once writes
    /// have found no room for `idle` in a row.
    fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        inner: &mut W,
        cx: &mut Context<'_>,
        bytes: &[u8],
        stopped: impl FnOnce(Duration) -> io::Error,
    ) -> Poll<io::Result<usize>> {
        match Pin::new(inner).poll_write(cx, bytes) {
            Poll::Ready(result) => {
                self.since = None;
                if let (Ok(1..), Some(activity)) = (&result, &self.activity) {
                    activity.touch();
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                let idle = self.idle;
                let timer = self
                    .since
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                ready!(timer.as_mut().poll(cx));
                self.since = None;
                Poll::Ready(Err(stopped(idle)))
            }
        }
    }
}

/// How long a sealed writer waits for a peer that takes nothing, until
/// [`SealedWriter::set_idle`] says otherwise.
const DEFAULT_IDLE: Duration = Duration::from_secs(30);

impl<W> SealedWriter<W> {
    pub(super) fn new(inner: W, state: SealState, peer: Arc<str>) -> Self {
        SealedWriter {
            inner,
            state,
            buf: Vec::with_capacity(WRITE_BATCH + MAX_RECORD_LEN),
            written: 0,
            filling: None,
            run: None,
            closing: Closing::Open,
            peer,
            stall: Stall {
                idle: DEFAULT_IDLE,
                since: None,
                activity: None,
            },
        }
    }

    /// Writes give up once the peer has taken nothing for `idle`.
    pub fn set_idle(&mut self, idle: Duration) {
        self.stall.idle = idle;
    }

    /// Every write that lands counts as the framed writer's progress.
    pub(crate) fn report_to(&mut self, activity: Arc<Activity>) {
        self.stall.activity = Some(activity);
    }

    /// Payload bytes in the record being filled.
    fn payload(&self) -> usize {
        self.filling
            .map_or(0, |start| record_payload_len(&self.buf, start))
    }

    /// Where the sealed records end: what may be written out.
    fn sealed_end(&self) -> usize {
        self.filling.unwrap_or(self.buf.len())
    }

    /// Seals the record being filled (an empty one is dropped), or seals
    /// an end record when `kind` says so.
    fn seal(&mut self, kind: RecordKind) -> io::Result<()> {
        if self.run.is_some() {
            return Err(self.run_left_behind());
        }
        let start = match (self.filling.take(), kind) {
            (Some(start), RecordKind::Data) if record_payload_len(&self.buf, start) == 0 => {
                self.buf.truncate(start);
                return Ok(());
            }
            (Some(start), RecordKind::Data) => start,
            (begun, RecordKind::End) => {
                if let Some(start) = begun {
                    // Sealed first: its payload precedes the end.
                    self.filling = Some(start);
                    self.seal(RecordKind::Data)?;
                }
                begin_record(&mut self.buf)
            }
            (None, RecordKind::Data) => return Ok(()),
        };
        finish_record(&mut self.state, kind, &mut self.buf, start).map_err(|e| self.refused(e))
    }

    fn stopped_reading(peer: &str, idle: Duration) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            Error::ConnectionLost {
                peer: peer.to_string(),
                detail: format!(
                    "the peer stopped reading for {} s (idle timeout)",
                    idle.as_secs()
                ),
            },
        )
    }

    fn refused(&self, e: RecordError) -> io::Error {
        io::Error::other(Error::Protocol {
            peer: format!("this side (writing to {})", self.peer),
            detail: e.to_string(),
        })
    }

    /// A run was sealed (its nonces spent) and then abandoned half
    /// written: any later record would be out of sequence, so nothing
    /// more is written and the peer sees the stream cut.
    fn run_left_behind(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::BrokenPipe,
            "a sealed run was abandoned before it was written out",
        )
    }
}

/// A transport that seals what it writes can take whole runs of records
/// read straight into place ([`RecordRun`]), instead of copying every
/// byte into its own buffer.
pub trait RunSealer: Send {
    /// One step of sending `run` after everything written before it:
    /// `Ready(Ok(true))` once it is all out, `Ready(Ok(false))` after each
    /// write that made progress. The same `run` must be passed until it is
    /// all out; a run abandoned half way stops the writer for good.
    fn poll_send_run(
        &mut self,
        cx: &mut Context<'_>,
        run: &mut RecordRun,
    ) -> Poll<io::Result<bool>>;
}

impl<W: AsyncWrite + Unpin + Send> RunSealer for SealedWriter<W> {
    fn poll_send_run(
        &mut self,
        cx: &mut Context<'_>,
        run: &mut RecordRun,
    ) -> Poll<io::Result<bool>> {
        if self.closing != Closing::Open {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after the end-of-session record",
            )));
        }
        if self.run.is_none() {
            // What was written before the run goes out first.
            self.seal(RecordKind::Data)?;
            if self.written < self.sealed_end() {
                ready!(self.poll_write_some(cx))?;
                return Poll::Ready(Ok(false));
            }
            self.buf.clear();
            self.written = 0;
            let len = run.seal(&mut self.state).map_err(|e| self.refused(e))?;
            if len == 0 {
                return Poll::Ready(Ok(true));
            }
            self.run = Some((len, 0));
        }
        let Some((len, written)) = self.run else {
            return Poll::Ready(Ok(true));
        };
        // Only the very run that was sealed: another one's bytes could be
        // plain text.
        let Some(rest) = run
            .sealed()
            .get(written..)
            .filter(|_| run.sealed().len() == len)
        else {
            return Poll::Ready(Err(self.run_left_behind()));
        };
        let peer = &self.peer;
        let n = ready!(self.stall.poll_write(&mut self.inner, cx, rest, |idle| {
            Self::stopped_reading(peer, idle)
        }))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        if written + n >= len {
            self.run = None;
            return Poll::Ready(Ok(true));
        }
        self.run = Some((len, written + n));
        Poll::Ready(Ok(false))
    }
}

impl<W: AsyncWrite + Unpin> SealedWriter<W> {
    /// One write of sealed records to the inner writer.
    fn poll_write_some(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let end = self.sealed_end();
        let Some(rest) = self.buf.get(self.written..end).filter(|r| !r.is_empty()) else {
            return Poll::Ready(Ok(()));
        };
        let peer = &self.peer;
        let n = ready!(self.stall.poll_write(&mut self.inner, cx, rest, |idle| {
            Self::stopped_reading(peer, idle)
        }))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        self.written += n;
        Poll::Ready(Ok(()))
    }

    /// Writes out every sealed record queued; then, if no record is being
    /// filled, the buffer starts over empty.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.sealed_end() {
            ready!(self.poll_write_some(cx))?;
        }
        if self.filling.is_none() {
            self.buf.clear();
            self.written = 0;
        }
        Poll::Ready(Ok(()))
    }

    /// Gives back the room of records written out, between records.
    fn compact(&mut self) {
        debug_assert!(self.filling.is_none());
        if self.written == self.buf.len() {
            self.buf.clear();
            self.written = 0;
        } else if self.written >= WRITE_BATCH {
            self.buf.drain(..self.written);
            self.written = 0;
        }
    }

    /// Seals and writes out everything buffered.
    fn poll_push(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.seal(RecordKind::Data)?;
        self.poll_drain(cx)
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for SealedWriter<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.closing != Closing::Open {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after the end-of-session record",
            )));
        }
        if this.run.is_some() {
            return Poll::Ready(Err(this.run_left_behind()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.payload() == MAX_RECORD_PAYLOAD {
            this.seal(RecordKind::Data)?;
        }
        // With a batch queued, the socket takes some of it first, and this
        // write accepts no more than went out: one socket write per call at
        // most, so a slow peer's progress is seen by the caller write by
        // write, and the sealed backlog stays within a batch and a record.
        let mut room = usize::MAX;
        if this.sealed_end() - this.written >= WRITE_BATCH {
            let before = this.written;
            ready!(this.poll_write_some(cx))?;
            room = this.written - before;
        }
        let start = match this.filling {
            Some(start) => start,
            None => {
                this.compact();
                let start = begin_record(&mut this.buf);
                this.filling = Some(start);
                start
            }
        };
        let n = buf
            .len()
            .min(room)
            .min(MAX_RECORD_PAYLOAD - record_payload_len(&this.buf, start));
        this.buf.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_push(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.closing == Closing::Open {
            this.seal(RecordKind::End)?;
            this.closing = Closing::EndSealed;
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// Body bytes come out of the records they were opened in.
impl<R: AsyncRead + Unpin + Send> Source for SealedReader<R> {
    fn opened(&mut self) -> Option<&mut dyn OpenedPayloads> {
        Some(self)
    }
}

/// No sendfile: file bodies are sealed, in runs read straight into place.
impl<W: AsyncWrite + Unpin + Send> Transport for SealedWriter<W> {
    fn run_sealer(&mut self) -> Option<&mut dyn RunSealer> {
        Some(self)
    }
}
