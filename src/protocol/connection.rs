//! Whole frames in and out of a byte stream, then raw body bytes.
//!
//! [`FrameReader`] owns the one read buffer of a connection. A frame is parsed
//! from what is already buffered before the socket is read again, which is what
//! makes split and coalesced TCP segments harmless; body bytes are served from
//! that same buffer first, so nothing read ahead is ever lost.
//!
//! The idle timeout bounds every socket read and write, but a reader that
//! [watches](FrameReader::watch) its writer counts the writer's progress as
//! activity too: a sender streaming one huge file hears nothing back for
//! minutes, and that is not idleness.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::codec::{self, CodecError};
use super::message::Message;
use super::{CAPABILITIES, HELLO_LEN, MAGIC, PROTOCOL_VERSION};
use crate::error::Error;

const READ_RESERVE: usize = 64 * 1024;

/// Reads frames and body bytes from one side of a connection.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    peer: Arc<str>,
    idle: Duration,
    /// Bytes written by the watched writer, and the count last seen.
    writer_activity: Option<(Arc<AtomicU64>, u64)>,
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
        self.writer_activity = Some((Arc::clone(&writer.activity), 0));
    }

    /// The peer's name, for messages.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Reads more bytes into the buffer. Returns 0 at end of stream.
    async fn fill(&mut self) -> Result<usize, Error> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(READ_RESERVE);
        }
        loop {
            match tokio::time::timeout(self.idle, self.inner.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) => return Ok(n),
                Ok(Err(e)) => return Err(self.lost(e.to_string())),
                Err(_) => {
                    if let Some((written, seen)) = self.writer_activity.as_mut() {
                        let now = written.load(Ordering::Relaxed);
                        if now != *seen {
                            *seen = now;
                            continue;
                        }
                    }
                    return Err(self.lost(format!(
                        "no data for {} s (idle timeout)",
                        self.idle.as_secs()
                    )));
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
            if self.fill().await? == 0 {
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
            if self.fill().await? == 0 {
                return Err(self.lost("connection closed in the middle of a file body".into()));
            }
        }
        let n = self.buf.len().min(max);
        Ok(self.buf.split_to(n).freeze())
    }

    /// Reads exactly `N` raw bytes (used for the fixed-layout hello).
    async fn read_array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        while self.buf.len() < N {
            if self.fill().await? == 0 {
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
    /// Bytes written so far, watched by this connection's reader.
    activity: Arc<AtomicU64>,
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
            activity: Arc::default(),
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

    /// Writes all of `bytes`, giving up when the peer stops reading.
    async fn write_out(&mut self, bytes: &[u8]) -> Result<(), Error> {
        match tokio::time::timeout(self.idle, self.inner.write_all(bytes)).await {
            Ok(Ok(())) => {
                self.activity
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                Ok(())
            }
            Ok(Err(e)) => Err(self.lost(e)),
            Err(_) => Err(self.stopped_reading()),
        }
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

impl FrameWriter<tokio::net::tcp::OwnedWriteHalf> {
    /// Sends up to `len` bytes of `file` from `offset` straight from the page
    /// cache to the socket with `sendfile(2)`, after whatever is queued.
    /// Returns the bytes sent: fewer than `len` only if the file ended early.
    pub async fn send_file(
        &mut self,
        file: &std::fs::File,
        offset: u64,
        len: u64,
    ) -> Result<u64, Error> {
        self.write_buffered().await?;
        let mut position = offset;
        let end = offset + len;
        while position < end {
            let stream = self.inner.as_ref();
            let ready = tokio::time::timeout(self.idle, stream.writable()).await;
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
                Ok(n) => {
                    self.activity.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(self.lost(e)),
            }
        }
        Ok(position - offset)
    }
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

    #[tokio::test]
    async fn idle_peer_times_out() {
        let (_a, b) = duplex(64);
        let mut r = FrameReader::new(b, "peer".into(), Duration::from_millis(50));
        let err = r.read_message().await.unwrap_err();
        assert!(err.to_string().contains("idle timeout"), "{err}");
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
            let (_ar, mut aw) = tokio::io::split(a);
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
        }
    }
}
