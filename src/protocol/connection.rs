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

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::codec::{self, CodecError};
use super::message::Message;
use super::transport::Transport;
use super::{CAPABILITIES, HELLO_LEN, MAGIC, PROTOCOL_VERSION};
use crate::error::Error;

const READ_RESERVE: usize = 64 * 1024;

/// How an idle timeout past the hello begins.
const NO_DATA: &str = "no data for";

/// When a writer last made progress, readable by the reader that watches it
/// without a lock.
struct Activity {
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

    fn touch(&self) {
        let nanos = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.fetch_max(nanos, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.origin + Duration::from_nanos(self.last.load(Ordering::Relaxed))
    }
}

/// Reads frames and body bytes from one side of a connection.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    peer: Arc<str>,
    idle: Duration,
    /// The watched writer's progress.
    writer_activity: Option<Arc<Activity>>,
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
        }
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
        // The wait's start counts as activity: time spent not reading, busy
        // with the last message, is not the peer's silence.
        let since = Instant::now();
        let mut deadline = self.deadline(since);
        loop {
            match tokio::time::timeout_at(deadline, self.inner.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) => return Ok(n),
                Ok(Err(e)) => return Err(self.lost(e.to_string())),
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

    fn lost(&self, detail: String) -> Error {
        Error::ConnectionLost {
            peer: self.peer.to_string(),
            detail,
        }
    }

    fn protocol(&self, detail: String) -> Error {
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

    /// Up to `max` body bytes (at least one), buffered bytes first. The
    /// chunk is filled as far as the socket allows without waiting twice;
    /// `max` is also how much memory a read may reserve.
    pub async fn read_body(&mut self, max: usize) -> Result<Bytes, Error> {
        debug_assert!(max > 0);
        if self.buf.is_empty() {
            self.buf.reserve(max);
            if self.fill(NO_DATA).await? == 0 {
                return Err(self.lost("connection closed in the middle of a file body".into()));
            }
        }
        let n = self.buf.len().min(max);
        Ok(self.buf.split_to(n).freeze())
    }

    /// Reads exactly `N` raw bytes (used for the fixed-layout hello).
    async fn read_array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
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

/// Buffers frames and body bytes for one side of a connection.
pub struct FrameWriter<W> {
    inner: W,
    buf: BytesMut,
    peer: Arc<str>,
    idle: Duration,
    /// Progress, watched by this connection's reader.
    activity: Arc<Activity>,
}

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
        }
    }

    fn stopped_reading(&self) -> Error {
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

    fn lost(&self, e: std::io::Error) -> Error {
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

    /// Queues raw body bytes; large slices bypass the buffer.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), Error> {
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

    async fn write_buffered(&mut self) -> Result<(), Error> {
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
        result.map_err(|e| self.lost(e))
    }

    /// Flushes and half-closes: the peer reads end of stream after our last byte.
    pub async fn shutdown(&mut self) -> Result<(), Error> {
        self.flush().await?;
        let result = self.inner.shutdown().await;
        result.map_err(|e| self.lost(e))
    }

    async fn write_hello(&mut self) -> Result<(), Error> {
        let mut hello = [0u8; HELLO_LEN];
        hello[..8].copy_from_slice(&MAGIC);
        hello[8..12].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
        hello[12..16].copy_from_slice(&CAPABILITIES.to_be_bytes());
        self.buf.extend_from_slice(&hello);
        self.flush().await
    }
}

/// Most bytes of a file read at a time when it cannot go out with sendfile.
const COPY_CHUNK: usize = 1024 * 1024;

impl<W: Transport> FrameWriter<W> {
    /// Sends up to `len` bytes of `file` from `offset`, after whatever is
    /// queued: straight from the page cache with `sendfile(2)` when the
    /// transport is a plain socket, else read in chunks and written through.
    /// Returns the bytes sent: fewer than `len` only if the file ended early.
    pub async fn send_file(&mut self, file: &File, offset: u64, len: u64) -> Result<u64, Error> {
        self.write_buffered().await?;
        if let Some(stream) = self.inner.sendfile_target() {
            return self.sendfile(stream, file, offset, len).await;
        }
        self.copy_file(file, offset, len).await
    }

    async fn sendfile(
        &self,
        stream: &tokio::net::TcpStream,
        file: &File,
        offset: u64,
        len: u64,
    ) -> Result<u64, Error> {
        let mut position = offset;
        let end = offset.saturating_add(len);
        let mut progressed = Instant::now();
        while position < end {
            let ready = tokio::time::timeout_at(progressed + self.idle, stream.writable()).await;
            match ready {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(self.lost(e)),
                Err(_) => return Err(self.stopped_reading()),
            }
            let want = (end - position).min(1 << 30) as usize;
            let sent = stream.try_io(tokio::io::Interest::WRITABLE, || {
                rustix::fs::sendfile(stream, file, Some(&mut position), want)
                    .map_err(std::io::Error::from)
            });
            match sent {
                Ok(0) => break,
                Ok(_) => {
                    self.activity.touch();
                    progressed = Instant::now();
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(self.lost(e)),
            }
        }
        Ok(position - offset)
    }

    /// The portable path: positioned reads on a blocking thread (a handle of
    /// its own, so the caller's file position is untouched), each chunk
    /// written before the next is read.
    async fn copy_file(&mut self, file: &File, offset: u64, len: u64) -> Result<u64, Error> {
        let mut file = file.try_clone().map_err(|e| self.lost(e))?;
        let mut chunk = Vec::new();
        let mut sent = 0u64;
        while sent < len {
            let want = (len - sent).min(COPY_CHUNK as u64) as usize;
            let at = offset.saturating_add(sent);
            let read = tokio::task::spawn_blocking(move || {
                let result = read_at_most(&file, &mut chunk, want, at);
                (file, chunk, result)
            })
            .await;
            let (f, c, result) = match read {
                Ok(done) => done,
                // An internal fault stays one.
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => return Err(self.lost(std::io::Error::other(e))),
            };
            (file, chunk) = (f, c);
            let n = result.map_err(|e| self.lost(e))?;
            let bytes = chunk.get(..n).unwrap_or_default();
            if bytes.is_empty() {
                break;
            }
            // Written in its own slice so a whole chunk bypasses the buffer.
            self.send_raw(bytes).await?;
            sent += n as u64;
            if n < want {
                break;
            }
        }
        Ok(sent)
    }
}

/// Reads up to `want` bytes of `file` at `offset` into `buf`, fewer only at
/// end of file; returns how many.
fn read_at_most(
    file: &File,
    buf: &mut Vec<u8>,
    want: usize,
    offset: u64,
) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    buf.resize(want, 0);
    let mut filled = 0;
    while filled < want {
        let Some(rest) = buf.get_mut(filled..) else {
            break;
        };
        match file.read_at(rest, offset.saturating_add(filled as u64)) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Exchanges hellos: both sides write theirs at once, then check the peer's.
/// Returns the peer's capability bits.
pub async fn handshake<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
) -> Result<u32, Error>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Write and read at once: neither side may depend on its hello fitting
    // in the transport's buffer before the peer reads.
    let (written, read) = tokio::join!(writer.write_hello(), reader.read_array::<HELLO_LEN>());
    let hello = read?;
    written?;
    if hello[..8] != MAGIC {
        return Err(
            reader.protocol("the peer is not speaking the xfer protocol (bad magic bytes)".into())
        );
    }
    let version = u32::from_be_bytes([hello[8], hello[9], hello[10], hello[11]]);
    if version != PROTOCOL_VERSION {
        return Err(Error::Version {
            peer: reader.peer().to_string(),
            ours: PROTOCOL_VERSION,
            theirs: version,
        });
    }
    Ok(u32::from_be_bytes([
        hello[12], hello[13], hello[14], hello[15],
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codec;
    use tokio::io::duplex;

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

    /// Sends `len` bytes of a file holding `content` from `offset` over a
    /// duplex pipe; returns the count `send_file` reported and what arrived.
    async fn send_file_over_duplex(content: &[u8], offset: u64, len: u64) -> (u64, Vec<u8>) {
        use std::io::Write;
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.write_all(content).unwrap();
        let file = File::open(tmp.path()).unwrap();
        let (near, mut far) = duplex(64 * 1024);
        let mut w = FrameWriter::new(near, "peer".into(), T);
        let received = tokio::spawn(async move {
            let mut got = Vec::new();
            far.read_to_end(&mut got).await.unwrap();
            got
        });
        let sent = tokio::time::timeout(T, async {
            let sent = w.send_file(&file, offset, len).await?;
            w.shutdown().await?;
            Ok::<_, Error>(sent)
        })
        .await
        .unwrap()
        .unwrap();
        (
            sent,
            tokio::time::timeout(T, received).await.unwrap().unwrap(),
        )
    }

    #[tokio::test]
    async fn send_file_over_a_duplex_delivers_the_bytes_from_the_offset() {
        let content: Vec<u8> = (0..2_500_000u32).map(|i| (i % 251) as u8).collect();
        let (sent, got) = send_file_over_duplex(&content, 1000, 2_400_000).await;
        assert_eq!(sent, 2_400_000);
        assert!(got == content[1000..2_401_000], "wrong bytes arrived");
    }

    #[tokio::test]
    async fn send_file_of_a_shorter_file_returns_the_short_count() {
        let (sent, got) = send_file_over_duplex(b"0123456789abcdef", 10, 100).await;
        assert_eq!(sent, 6);
        assert_eq!(got, b"abcdef");
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

    /// Everything `write` puts on the wire through a [`FrameWriter`].
    async fn wire_bytes<F>(write: F) -> Vec<u8>
    where
        F: AsyncFnOnce(&mut FrameWriter<tokio::io::DuplexStream>) -> Result<(), Error>,
    {
        let (near, mut far) = duplex(64 * 1024);
        let mut w = FrameWriter::new(near, "peer".into(), T);
        tokio::time::timeout(T, async {
            write(&mut w).await?;
            w.shutdown().await
        })
        .await
        .unwrap()
        .unwrap();
        let mut bytes = Vec::new();
        tokio::time::timeout(T, far.read_to_end(&mut bytes))
            .await
            .unwrap()
            .unwrap();
        bytes
    }

    fn hex(bytes: &[u8]) -> String {
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// docs/PROTOCOL.md's worked example, sender to receiver, piece by piece.
    const EXAMPLE_SENDER: [(&str, &str); 6] = [
        ("hello", "58 46 45 52 0d 0a 1a 0a 00 00 00 01 00 00 00 00"),
        (
            "Offer",
            "00 00 00 36 00 00 01 06 68 69 2e 74 78 74 00 03 fb a4 01 fc 00 e2 a7 ca 00 01 \
             98 ea 6e 4f 21 6f 2f b4 b6 9f ff 9b 3a 44 84 2c 38 68 6c a6 85 f3 f5 5d c4 8c 5d 3f b1 10 7b e4",
        ),
        ("FileBegin", "00 00 00 03 02 00 00"),
        ("body", "68 69 0a"),
        (
            "FileEnd",
            "00 00 00 22 03 98 ea 6e 4f 21 6f 2f b4 b6 9f ff 9b 3a 44 84 2c 38 68 6c a6 85 f3 f5 5d c4 8c 5d 3f b1 10 7b e4 00",
        ),
        ("Done", "00 00 00 01 06"),
    ];

    /// ...and receiver to sender.
    const EXAMPLE_RECEIVER: [(&str, &str); 4] = [
        ("hello", "58 46 45 52 0d 0a 1a 0a 00 00 00 01 00 00 00 00"),
        ("Plan", "00 00 00 05 01 00 01 00 00"),
        (
            "Verdict",
            "00 00 00 2a 05 00 00 06 68 69 2e 74 78 74 \
             98 ea 6e 4f 21 6f 2f b4 b6 9f ff 9b 3a 44 84 2c 38 68 6c a6 85 f3 f5 5d c4 8c 5d 3f b1 10 7b e4",
        ),
        ("Bye", "00 00 00 03 07 01 03"),
    ];

    /// Asserts that `bytes` are `pieces`, one after another, naming the
    /// first piece that differs.
    fn assert_pieces(bytes: &[u8], pieces: &[(&str, &str)]) {
        let mut rest = hex(bytes);
        for (name, want) in pieces {
            let got: String = rest.chars().take(want.len()).collect();
            assert_eq!(got, *want, "{name} differs");
            rest = rest.chars().skip(want.len() + 1).collect();
        }
        assert!(
            rest.is_empty(),
            "unexpected bytes after the last piece: {rest}"
        );
    }

    /// The worked example of docs/PROTOCOL.md: a session sending one 3-byte
    /// file, both directions byte for byte.
    #[tokio::test]
    async fn worked_example_session_bytes() {
        use crate::protocol::{Action, Entry, EntryKind, Offer, Outcome, Plan, Verdict};
        let body = b"hi\n";
        let sha256 = crate::hashing::digest(body);
        let offer = Message::Offer(Offer {
            first_id: 0,
            entries: vec![Entry {
                path: "hi.txt".into(),
                kind: EntryKind::File,
                size: 3,
                mode: 0o644,
                mtime_secs: 1_700_000_000,
                mtime_nanos: 0,
                sha256: Some(sha256),
            }],
        });
        let sent = wire_bytes(async |w| {
            w.write_hello().await?;
            w.send(&offer).await?;
            w.send(&Message::FileBegin { id: 0, offset: 0 }).await?;
            w.send_raw(body).await?;
            w.send(&Message::FileEnd {
                sha256,
                error: None,
            })
            .await?;
            w.send(&Message::Done).await
        })
        .await;
        assert_pieces(&sent, &EXAMPLE_SENDER);
        let answered = wire_bytes(async |w| {
            w.write_hello().await?;
            let plan = Plan {
                first_id: 0,
                actions: vec![Action::Send { offset: 0 }],
            };
            w.send(&Message::Plan(plan)).await?;
            let outcome = Outcome::Stored {
                path: "hi.txt".into(),
                sha256,
            };
            w.send(&Message::Verdict(Verdict { id: 0, outcome }))
                .await?;
            w.send(&Message::Bye { files: 1, bytes: 3 }).await
        })
        .await;
        assert_pieces(&answered, &EXAMPLE_RECEIVER);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_times_out_waiting_for_its_hello() {
        let (a, mut b) = duplex(64);
        let (ar, aw) = tokio::io::split(a);
        let mut r = FrameReader::new(ar, "peer".into(), IDLE);
        let mut w = FrameWriter::new(aw, "peer".into(), IDLE);
        r.watch(&w);
        let start = tokio::time::Instant::now();
        let err = tokio::time::timeout(10 * IDLE, handshake(&mut r, &mut w))
            .await
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("no hello within 30 s"), "{err}");
        assert_fired_at(start.elapsed(), IDLE);
        let mut hello = [0; HELLO_LEN];
        b.read_exact(&mut hello).await.unwrap();
        assert_eq!(hello[..8], MAGIC);
    }

    #[tokio::test]
    async fn handshake_agrees_on_same_version() {
        let (a, b) = duplex(8);
        let (ar, aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        let mut left = (
            FrameReader::new(ar, "b".into(), T),
            FrameWriter::new(aw, "b".into(), T),
        );
        let mut right = (
            FrameReader::new(br, "a".into(), T),
            FrameWriter::new(bw, "a".into(), T),
        );
        let (x, y) = tokio::time::timeout(T, async {
            tokio::join!(
                handshake(&mut left.0, &mut left.1),
                handshake(&mut right.0, &mut right.1)
            )
        })
        .await
        .expect("handshake over a tiny pipe must not deadlock");
        assert_eq!(x.unwrap(), CAPABILITIES);
        assert_eq!(y.unwrap(), CAPABILITIES);
    }

    #[tokio::test]
    async fn handshake_rejects_other_version_and_garbage() {
        for (bytes, want_version) in [
            ([&MAGIC[..], &99u32.to_be_bytes(), &[0; 4]].concat(), true),
            (b"GET / HTTP/1.1\r\n".to_vec(), false),
        ] {
            let (a, b) = duplex(64);
            let (br, bw) = tokio::io::split(b);
            let (mut ar, mut aw) = tokio::io::split(a);
            aw.write_all(&bytes).await.unwrap();
            let mut r = FrameReader::new(br, "peer".into(), T);
            let mut w = FrameWriter::new(bw, "peer".into(), T);
            let err = tokio::time::timeout(T, handshake(&mut r, &mut w))
                .await
                .unwrap()
                .unwrap_err();
            if want_version {
                assert!(matches!(err, Error::Version { theirs: 99, .. }), "{err}");
            } else {
                assert!(matches!(err, Error::Protocol { .. }), "{err}");
            }
            // The peer got our hello, then the close: no Abort.
            drop((r, w));
            let mut got = Vec::new();
            tokio::time::timeout(T, ar.read_to_end(&mut got))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got.len(), HELLO_LEN);
            assert_eq!(got[..8], MAGIC);
        }
    }
}
