//! File bodies onto a transport: onto a plain socket straight from the
//! page cache with `sendfile(2)`; onto a sealed one as runs of records read
//! into place and sealed where they lie (see `sender::body::ReadOnce`).

use std::fs::File;

use tokio::time::Instant;

use super::connection::FrameWriter;
use super::secure::RecordRun;
use super::transport::Transport;
use crate::error::Error;

impl<W: Transport> FrameWriter<W> {
    /// Whether file bodies leave with `sendfile(2)`, untouched by this
    /// process; otherwise they pass through the write buffer (and, in a
    /// coded session, are sealed on the way).
    pub fn sends_files_directly(&self) -> bool {
        self.inner.sendfile_target().is_some()
    }

    /// Whether the transport seals runs of records where they lie
    /// ([`send_run`](Self::send_run) then copies nothing).
    pub fn seals_runs(&mut self) -> bool {
        self.inner.run_sealer().is_some()
    }

    /// Sends the payload of `run` after whatever is queued: sealed where
    /// it lies when the transport seals runs and no rate limit applies,
    /// else through the write buffer. Each write that lands restarts the
    /// idle clock. `run` is spent afterwards: fill it again to reuse it.
    pub async fn send_run(&mut self, run: &mut RecordRun) -> Result<(), Error> {
        self.write_buffered().await?;
        if self.pace.is_some() || !self.seals_runs() {
            for payload in run.payloads() {
                self.send_raw(payload).await?;
            }
            run.clear();
            return Ok(());
        }
        loop {
            let step = std::future::poll_fn(|cx| match self.inner.run_sealer() {
                Some(sealer) => sealer.poll_send_run(cx, run),
                None => std::task::Poll::Ready(Err(std::io::Error::other(
                    "the transport stopped sealing runs",
                ))),
            });
            match tokio::time::timeout(self.idle, step).await {
                Ok(Ok(done)) => {
                    self.activity.touch();
                    if done {
                        return Ok(());
                    }
                }
                Ok(Err(e)) => return Err(self.lost(e)),
                Err(_) => return Err(self.stopped_reading()),
            }
        }
    }

    /// Sends up to `len` bytes of `file` from `offset`, after whatever is
    /// queued, straight from the page cache with `sendfile(2)`; only for a
    /// transport that [sends files directly](Self::sends_files_directly).
    /// Returns the bytes sent: fewer than `len` only if the file ended early.
    pub async fn send_file(&mut self, file: &File, offset: u64, len: u64) -> Result<u64, Error> {
        self.write_buffered().await?;
        match self.inner.sendfile_target() {
            Some(stream) => self.sendfile(stream, file, offset, len).await,
            None => Err(Error::Internal(
                "a file body was to be spliced into a transport that is no socket".into(),
            )),
        }
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
}
