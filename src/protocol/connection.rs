//! Whole frames in and out of a byte stream, then raw body bytes.
//!
//! [`FrameReader`] owns the one read buffer of a connection. A frame is parsed
//! from what is already buffered before the socket is read again, which is what
//! makes split and coalesced TCP segments harmless; body bytes are served from
//! that same buffer first, so nothing read ahead is ever lost.
//!
//! The idle timeout: a wait for bytes fails once, for `idle`, nothing has
//! arrived since it began and a [watched](FrameReader::watch) writer has
//! made no progress either (a sender streaming one huge file hears nothing
//! back for minutes, and that is not idleness); a write fails once it has
//! made no progress for `idle`.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::codec::{self, CodecError};
use super::message::Message;
use super::rate::RateLimit;
use super::secure::recover_error;
use super::transport::Source;
use super::{HELLO_LEN, MAGIC, PROTOCOL_VERSION};
use crate::error::Error;

const READ_RESERVE: usize = 64 * 1024;

/// How an idle timeout past the hello begins.
const NO_DATA: &str = "no data for";

/// When a writer last made progress, readable by the reader that watches it
/// without a lock.
pub(crate) struct Activity {
    origin: Instant,
    /// Nanoseconds from `origin` to the last progress.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            origin: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    pub(crate) fn touch(&self) {
        let nanos = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.fetch_max(nanos, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.origin + Duration::from_nanos(self.last.load(Ordering::Relaxed))
    }
}

/// Reads frames and body bytes from one side of a connection.
pub struct FrameReader<R> {
    pub(super) inner: R,
    pub(super) buf: BytesMut,
    pub(super) peer: Arc<str>,
    pub(super) idle: Duration,
    /// The watched writer's progress.
    writer_activity: Option<Arc<Activity>>,
    /// `--limit-rate`: body bytes are handed out no faster than this.
    pace: Option<Arc<RateLimit>>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// `peer` names the other side in errors; `idle` bounds each wait for bytes.
    pub fn new(inner: R, peer: Arc<str>, idle: Duration) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(READ_RESERVE),
            peer,
            idle,
            writer_activity: None,
            pace: None,
        }
    }

    /// Hands out body bytes no faster than `limit` (shared with whoever
    /// else holds it); `None` lifts the limit.
    pub fn limit_rate(&mut self, limit: Option<Arc<RateLimit>>) {
        self.pace = limit;
    }

    /// Counts `writer`'s progress as activity when deciding that the
    /// connection has gone idle.
    pub fn watch<W>(&mut self, writer: &FrameWriter<W>) {
        self.writer_activity = Some(Arc::clone(&writer.activity));
    }

    /// The peer's name, for messages.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// The stream underneath and the bytes already read from it but not
    /// yet consumed, so a sealed transport can take over where the hello
    /// ended without losing what arrived behind it.
    pub fn into_parts(self) -> (R, BytesMut) {
        (self.inner, self.buf)
    }

    /// When a wait that began at `since` gives up, as far as is known now.
    fn deadline(&self, since: Instant) -> Instant {
        let last = match &self.writer_activity {
            Some(activity) => activity.last().max(since),
            None => since,
        };
        last + self.idle
    }

    /// Reads more bytes into the buffer. Returns 0 at end of stream.
    /// `silence` begins the idle error, up to its number of seconds.
    async fn fill(&mut self, silence: &str) -> Result<usize, Error> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(READ_RESERVE);
        }
        self.wait(silence, |inner, buf, cx| {
            tokio_util::io::poll_read_buf(Pin::new(inner), cx, buf)
        })
        .await
    }

    /// Polls `step` with the stream and the buffer until it is ready,
    /// giving up once neither the peer nor the watched writer has made
    /// progress for the idle time. `silence` begins the idle error.
    async fn wait<T>(
        &mut self,
        silence: &str,
        mut step: impl FnMut(&mut R, &mut BytesMut, &mut Context<'_>) -> Poll<std::io::Result<T>>,
    ) -> Result<T, Error> {
        // The wait's start counts as activity: time spent not reading, busy
        // with the last message, is not the peer's silence.
        let since = Instant::now();
        let mut deadline = self.deadline(since);
        loop {
            let (inner, buf) = (&mut self.inner, &mut self.buf);
            let ready = std::future::poll_fn(|cx| step(inner, buf, cx));
            match tokio::time::timeout_at(deadline, ready).await {
                Ok(Ok(n)) => return Ok(n),
                Ok(Err(e)) => {
                    // A sealed transport says what went wrong in its own words.
                    return Err(recover_error(e).unwrap_or_else(|e| self.lost(e.to_string())));
                }
                Err(_) => {
                    let later = self.deadline(since);
                    if later <= deadline {
                        return Err(self.lost(format!(
                            "{silence} {} s (idle timeout)",
                            self.idle.as_secs()
                        )));
                    }
                    // The writer made progress meanwhile.
                    deadline = later;
                }
            }
        }
    }

    pub(super) fn lost(&self, detail: String) -> Error {
        Error::ConnectionLost {
            peer: self.peer.to_string(),
            detail,
        }
    }

    pub(super) fn protocol(&self, detail: String) -> Error {
        Error::Protocol {
            peer: self.peer.to_string(),
            detail,
        }
    }

    /// The next message; `Ok(None)` when the peer closed cleanly between frames.
    pub async fn read_message(&mut self) -> Result<Option<Message>, Error> {
        loop {
            match codec::decode(&mut self.buf) {
                Ok(Some(message)) => return Ok(Some(message)),
                Ok(None) => {}
                Err(e @ (CodecError::FrameTooLarge(_) | CodecError::Malformed(_))) => {
                    return Err(self.protocol(e.to_string()))
                }
            }
            if self.fill(NO_DATA).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(self.lost("connection closed in the middle of a message".into()))
                };
            }
        }
    }

    /// The next message, treating a clean close as an error: `expecting` says
    /// what the protocol required at this point.
    pub async fn expect_message(&mut self, expecting: &str) -> Result<Message, Error> {
        match self.read_message().await? {
            Some(m) => Ok(m),
            None => Err(self.lost(format!("connection closed while waiting for {expecting}"))),
        }
    }

    /// Reads exactly `N` raw bytes (used for the fixed-layout hello).
    pub(super) async fn read_array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        while self.buf.len() < N {
            if self.fill("no hello within").await? == 0 {
                return Err(self.lost("connection closed during the hello".into()));
            }
        }
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buf.split_to(N));
        Ok(out)
    }
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Up to `max` body bytes (at least one), buffered bytes first. The
    /// chunk is filled as far as the socket allows without waiting twice;
    /// `max` is also how much memory a read may reserve.
    pub async fn read_body(&mut self, max: usize) -> Result<Bytes, Error> {
        debug_assert!(max > 0);
        if self.buf.is_empty() {
            self.buf.reserve(max);
            if self.fill(NO_DATA).await? == 0 {
                return Err(self.end_in_body());
            }
        }
        let mut n = self.buf.len().min(max);
        if let Some(pace) = &self.pace {
            // The socket is read only as fast as bytes are handed out, so
            // the sender's window closes and it slows to the same rate.
            n = n.min(pace.piece());
            pace.take(n).await;
        }
        Ok(self.buf.split_to(n).freeze())
    }

    fn end_in_body(&self) -> Error {
        self.lost("connection closed in the middle of a file body".into())
    }
}

impl<R: Source> FrameReader<R> {
    /// Up to `max` body bytes (at least one) onto `out`, as
    /// [`read_body`](Self::read_body) reads them; returns how many. A
    /// sealed source hands over, without a copy, the payload of every
    /// record already here, a chunk per record.
    pub async fn read_body_chunks(
        &mut self,
        max: usize,
        out: &mut Vec<Bytes>,
    ) -> Result<usize, Error> {
        debug_assert!(max > 0);
        if !self.buf.is_empty() || self.inner.opened().is_none() {
            let chunk = self.read_body(max).await?;
            let n = chunk.len();
            out.push(chunk);
            return Ok(n);
        }
        let most = self.pace.as_ref().map_or(max, |pace| max.min(pace.piece()));
        let n = self
            .wait(NO_DATA, |inner, _, cx| match inner.opened() {
                Some(opened) => opened.poll_payloads(cx, most, out),
                None => Poll::Ready(Ok(0)),
            })
            .await?;
        if n == 0 {
            return Err(self.end_in_body());
        }
        if let Some(pace) = &self.pace {
            pace.take(n).await;
        }
        Ok(n)
    }
}

/// Buffers frames and body bytes for one side of a connection.
pub struct FrameWriter<W> {
    pub(super) inner: W,
    pub(super) buf: BytesMut,
    pub(super) peer: Arc<str>,
    pub(super) idle: Duration,
    /// Progress, watched by this connection's reader.
    pub(super) activity: Arc<Activity>,
    /// `--limit-rate`: body bytes are written no faster than this.
    pub(super) pace: Option<Arc<RateLimit>>,
    /// When everything queued was last flushed.
    flushed: Instant,
}

/// Under a rate limit, paced bytes are flushed at least this often: a
/// sealing transport would otherwise hold them until a record (or a
/// batch of records) is full, which at a low limit takes longer than the
/// peer's idle timeout.
const PACED_FLUSH: Duration = Duration::from_millis(250);

/// Above this many buffered bytes, writes go straight to the socket.
const WRITE_BUFFER: usize = 256 * 1024;

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// `idle` bounds how long one write may wait for the peer to read.
    pub fn new(inner: W, peer: Arc<str>, idle: Duration) -> Self {
        FrameWriter {
            inner,
            buf: BytesMut::with_capacity(WRITE_BUFFER),
            peer,
            idle,
            activity: Arc::new(Activity::new()),
            pace: None,
            flushed: Instant::now(),
        }
    }

    /// Writes body bytes no faster than `limit` (shared with whoever else
    /// holds it); `None` lifts the limit.
    pub fn limit_rate(&mut self, limit: Option<Arc<RateLimit>>) {
        self.pace = limit;
    }

    /// The limit on body bytes, in bytes per second, if there is one.
    pub fn rate_limit(&self) -> Option<u64> {
        self.pace.as_ref().map(|pace| pace.rate())
    }

    pub(super) fn stopped_reading(&self) -> Error {
        Error::ConnectionLost {
            peer: self.peer.to_string(),
            detail: format!(
                "the peer stopped reading for {} s (idle timeout)",
                self.idle.as_secs()
            ),
        }
    }

    /// Writes all of `bytes`, giving up when the peer stops reading: each
    /// write that lands restarts the clock, so a long write to a slow but
    /// steady reader is not idleness.
    async fn write_out(&mut self, mut bytes: &[u8]) -> Result<(), Error> {
        while !bytes.is_empty() {
            match tokio::time::timeout(self.idle, self.inner.write(bytes)).await {
                Ok(Ok(0)) => return Err(self.lost(std::io::ErrorKind::WriteZero.into())),
                Ok(Ok(n)) => {
                    self.activity.touch();
                    bytes = bytes.get(n..).unwrap_or_default();
                }
                Ok(Err(e)) => return Err(self.lost(e)),
                Err(_) => return Err(self.stopped_reading()),
            }
        }
        Ok(())
    }

    pub(super) fn lost(&self, e: std::io::Error) -> Error {
        let e = match recover_error(e) {
            Ok(typed) => return typed,
            Err(e) => e,
        };
        Error::ConnectionLost {
            peer: self.peer.to_string(),
            detail: e.to_string(),
        }
    }

    /// Queues one message; it is written once the buffer fills or on `flush`.
    pub async fn send(&mut self, message: &Message) -> Result<(), Error> {
        codec::encode(message, &mut self.buf).map_err(|e| Error::Protocol {
            peer: "this side".into(),
            detail: e.to_string(),
        })?;
        if self.buf.len() >= WRITE_BUFFER {
            self.write_buffered().await?;
        }
        Ok(())
    }

    /// Queues raw body bytes; large slices bypass the buffer. Under a rate
    /// limit they are written at once, piece by piece, each when its time
    /// comes, and flushed every [`PACED_FLUSH`] however the bytes come
    /// (one large body, or many small ones).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), Error> {
        if let Some(pace) = self.pace.clone() {
            for piece in bytes.chunks(pace.piece()) {
                pace.take(piece.len()).await;
                self.buf.extend_from_slice(piece);
                if self.flushed.elapsed() >= PACED_FLUSH {
                    self.flush().await?;
                } else {
                    self.write_buffered().await?;
                }
            }
            return Ok(());
        }
        if self.buf.len() + bytes.len() <= WRITE_BUFFER {
            self.buf.extend_from_slice(bytes);
            return Ok(());
        }
        self.write_buffered().await?;
        if bytes.len() >= WRITE_BUFFER / 2 {
            self.write_out(bytes).await
        } else {
            self.buf.extend_from_slice(bytes);
            Ok(())
        }
    }

    pub(super) async fn write_buffered(&mut self) -> Result<(), Error> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let mut buf = std::mem::take(&mut self.buf);
        let result = self.write_out(&buf).await;
        buf.clear();
        self.buf = buf;
        result
    }

    /// Writes everything queued to the peer.
    pub async fn flush(&mut self) -> Result<(), Error> {
        self.write_buffered().await?;
        let result = self.inner.flush().await;
        self.flushed = Instant::now();
        result.map_err(|e| self.lost(e))
    }

    /// Flushes and half-closes: the peer reads end of stream after our last byte.
    pub async fn shutdown(&mut self) -> Result<(), Error> {
        self.flush().await?;
        let result = self.inner.shutdown().await;
        result.map_err(|e| self.lost(e))
    }

    pub(super) async fn write_hello(&mut self, caps: u32) -> Result<(), Error> {
        self.buf.extend_from_slice(&hello_bytes(caps));
        self.flush().await
    }

    /// The transport underneath, once everything queued is written (as it
    /// is after the hello), so a sealed transport can take its place.
    pub fn into_inner(self) -> W {
        debug_assert!(self.buf.is_empty(), "unwritten bytes would be lost");
        self.inner
    }
}

/// The 16 bytes of a hello announcing `caps`.
pub fn hello_bytes(caps: u32) -> [u8; HELLO_LEN] {
    let mut hello = [0u8; HELLO_LEN];
    hello[..8].copy_from_slice(&MAGIC);
    hello[8..12].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    hello[12..16].copy_from_slice(&caps.to_be_bytes());
    hello
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codec;
    use tokio::io::duplex;
    use tokio::io::AsyncReadExt;

    const T: Duration = Duration::from_secs(5);

    fn pair(
        capacity: usize,
    ) -> (
        FrameWriter<tokio::io::DuplexStream>,
        FrameReader<tokio::io::DuplexStream>,
    ) {
        let (a, b) = duplex(capacity);
        (
            FrameWriter::new(a, "a".into(), T),
            FrameReader::new(b, "b".into(), T),
        )
    }

    #[tokio::test]
    async fn frames_then_body_through_a_tiny_pipe() {
        let (mut w, mut r) = pair(3);
        let writer = tokio::spawn(async move {
            w.send(&Message::FileBegin { id: 1, offset: 0 })
                .await
                .unwrap();
            w.send_raw(b"hello body").await.unwrap();
            w.send(&Message::Done).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let read = async {
            assert_eq!(
                r.read_message().await.unwrap(),
                Some(Message::FileBegin { id: 1, offset: 0 })
            );
            let mut body = Vec::new();
            while body.len() < 10 {
                body.extend_from_slice(&r.read_body(10 - body.len()).await.unwrap());
            }
            assert_eq!(body, b"hello body");
            assert_eq!(r.read_message().await.unwrap(), Some(Message::Done));
            assert_eq!(r.read_message().await.unwrap(), None);
        };
        tokio::time::timeout(T, read).await.unwrap();
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn close_mid_frame_is_an_error() {
        let (a, b) = duplex(64);
        let mut raw = a;
        let mut buf = BytesMut::new();
        codec::encode(&Message::Done, &mut buf).unwrap();
        raw.write_all(&buf[..buf.len() - 1]).await.unwrap();
        drop(raw);
        let mut r = FrameReader::new(b, "peer".into(), T);
        let err = r.read_message().await.unwrap_err();
        assert!(matches!(err, Error::ConnectionLost { .. }), "{err}");
    }

    /// Idle timeout of the paused-clock tests, and how late a timeout may fire
    /// (the timer wheel's millisecond).
    const IDLE: Duration = Duration::from_secs(30);
    const SLACK: Duration = Duration::from_millis(5);

    fn assert_fired_at(elapsed: Duration, want: Duration) {
        assert!(
            elapsed >= want && elapsed <= want + SLACK,
            "gave up after {elapsed:?}, expected {want:?}"
        );
    }

    /// A reader watching a writer on one end of a pipe whose far end reads
    /// everything and writes nothing.
    fn watched_pair() -> (
        FrameReader<tokio::io::ReadHalf<tokio::io::DuplexStream>>,
        FrameWriter<tokio::io::WriteHalf<tokio::io::DuplexStream>>,
        tokio::task::JoinHandle<()>,
    ) {
        let (near, mut far) = duplex(64);
        let (near_r, near_w) = tokio::io::split(near);
        let mut r = FrameReader::new(near_r, "peer".into(), IDLE);
        let w = FrameWriter::new(near_w, "peer".into(), IDLE);
        r.watch(&w);
        let drain = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut far, &mut tokio::io::sink()).await;
        });
        (r, w, drain)
    }

    #[tokio::test(start_paused = true)]
    async fn idle_peer_times_out_after_exactly_idle() {
        let (_a, b) = duplex(64);
        let mut r = FrameReader::new(b, "peer".into(), IDLE);
        let start = tokio::time::Instant::now();
        let err = tokio::time::timeout(10 * IDLE, r.read_message())
            .await
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("idle timeout"), "{err}");
        assert_fired_at(start.elapsed(), IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_counts_from_the_watched_writers_last_write() {
        let (mut r, mut w, _drain) = watched_pair();
        let start = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        w.send(&Message::Done).await.unwrap();
        w.flush().await.unwrap();
        let err = tokio::time::timeout(10 * IDLE, r.read_message())
            .await
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("idle timeout"), "{err}");
        assert_fired_at(start.elapsed(), IDLE + Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn steady_writer_progress_keeps_the_reader_alive() {
        let (mut r, mut w, _drain) = watched_pair();
        let start = tokio::time::Instant::now();
        let writes = 8u32;
        let writer = tokio::spawn(async move {
            for _ in 0..writes {
                tokio::time::sleep(IDLE / 2).await;
                w.send(&Message::Done).await.unwrap();
                w.flush().await.unwrap();
            }
            w
        });
        let err = tokio::time::timeout(10 * IDLE, r.read_message())
            .await
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("idle timeout"), "{err}");
        // Alive past 3 × idle, and gone idle after the last write.
        assert_fired_at(start.elapsed(), IDLE / 2 * writes + IDLE);
        tokio::time::timeout(IDLE, writer).await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_nobody_reads_fails_after_exactly_idle() {
        let (_reader_end, b) = duplex(64);
        let mut w = FrameWriter::new(b, "peer".into(), IDLE);
        let start = tokio::time::Instant::now();
        let err = tokio::time::timeout(10 * IDLE, w.send_raw(&[7; 1024 * 1024]))
            .await
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("stopped reading"), "{err}");
        assert_fired_at(start.elapsed(), IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_but_steady_reader_keeps_a_long_write_alive() {
        let (mut far, near) = duplex(4096);
        let mut w = FrameWriter::new(near, "peer".into(), IDLE);
        let body = vec![7u8; 64 * 1024];
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut chunk = [0u8; 4096];
            while got < 64 * 1024 {
                tokio::time::sleep(IDLE / 2).await;
                got += far.read(&mut chunk).await.unwrap();
            }
            got
        });
        // Sixteen reads half an idle apart: 8 × idle in all, never idle.
        tokio::time::timeout(100 * IDLE, async {
            w.send_raw(&body).await?;
            w.flush().await
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(
            tokio::time::timeout(IDLE, reader).await.unwrap().unwrap(),
            body.len()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_times_out_waiting_for_its_hello() {
        let (a, mut b) = duplex(64);
        let (ar, aw) = tokio::io::split(a);
        let mut r = FrameReader::new(ar, "peer".into(), IDLE);
        let mut w = FrameWriter::new(aw, "peer".into(), IDLE);
        r.watch(&w);
        let start = tokio::time::Instant::now();
        let err = tokio::time::timeout(10 * IDLE, crate::protocol::handshake(&mut r, &mut w))
            .await
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("no hello within 30 s"), "{err}");
        assert_fired_at(start.elapsed(), IDLE);
        let mut hello = [0; HELLO_LEN];
        b.read_exact(&mut hello).await.unwrap();
        assert_eq!(hello[..8], MAGIC);
    }
}
