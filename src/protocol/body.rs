//! File bodies onto a transport: straight from the page cache with
//! `sendfile(2)` when the transport is a plain socket, otherwise read in
//! chunks and written through the frame writer's buffer.

use std::fs::File;
use std::sync::Arc;

use tokio::time::Instant;

use super::connection::FrameWriter;
use super::transport::Transport;
use crate::error::Error;

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
        // Under a rate limit: bytes allowed out and not yet sent.
        let mut allowed = 0u64;
        while position < end {
            if let (Some(pace), 0) = (&self.pace, allowed) {
                allowed = (end - position).min(pace.piece() as u64);
                pace.take(allowed as usize).await;
                // Time spent holding back is not the peer's silence.
                progressed = Instant::now();
            }
            let ready = tokio::time::timeout_at(progressed + self.idle, stream.writable()).await;
            match ready {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(self.lost(e)),
                Err(_) => return Err(self.stopped_reading()),
            }
            let mut want = (end - position).min(1 << 30);
            if self.pace.is_some() {
                want = want.min(allowed);
            }
            let sent = stream.try_io(tokio::io::Interest::WRITABLE, || {
                rustix::fs::sendfile(stream, file, Some(&mut position), want as usize)
                    .map_err(std::io::Error::from)
            });
            match sent {
                Ok(0) => break,
                Ok(n) => {
                    allowed = allowed.saturating_sub(n as u64);
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
        // Two buffers: the next chunk is read on a blocking thread while
        // this one is written (and, on a sealed transport, encrypted).
        let file = Arc::new(file.try_clone().map_err(|e| self.lost(e))?);
        let read_ahead = |at: u64, want: usize, mut chunk: Vec<u8>| {
            let file = Arc::clone(&file);
            tokio::task::spawn_blocking(move || {
                let result = read_at_most(&file, &mut chunk, want, at);
                (chunk, result.map(|n| (n, want)))
            })
        };
        let first = len.min(COPY_CHUNK as u64) as usize;
        let mut pending = (first > 0).then(|| read_ahead(offset, first, Vec::new()));
        let mut spare = Vec::new();
        let mut sent = 0u64;
        while let Some(read) = pending.take() {
            let (chunk, result) = match read.await {
                Ok(done) => done,
                // An internal fault stays one.
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => return Err(self.lost(std::io::Error::other(e))),
            };
            let (n, want) = result.map_err(|e| self.lost(e))?;
            let next = len - sent - n as u64;
            if n == want && next > 0 {
                let want = next.min(COPY_CHUNK as u64) as usize;
                let at = offset.saturating_add(sent + n as u64);
                pending = Some(read_ahead(at, want, std::mem::take(&mut spare)));
            }
            let bytes = chunk.get(..n).unwrap_or_default();
            // Written in its own slice so a whole chunk bypasses the buffer.
            self.send_raw(bytes).await?;
            sent += n as u64;
            spare = chunk;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{duplex, AsyncReadExt};

    const T: Duration = Duration::from_secs(5);

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
}
