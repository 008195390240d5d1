//! What a [`FrameWriter`](super::FrameWriter) writes to. Sessions are generic
//! over it, so they run over TCP, over `tokio::io::duplex` in tests, and over
//! any transport added later; only the plain-TCP case gets `sendfile(2)`.

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, WriteHalf};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;

use super::secure::RunSealer;

/// A byte stream the writing side of a session can use.
pub trait Transport: AsyncWrite + Unpin + Send {
    /// The socket that file bodies may be spliced into with `sendfile(2)`,
    /// bypassing the write buffer. Only a transport that puts bytes on that
    /// socket unchanged may return one; the default, `None`, sends bodies
    /// through the write buffer.
    fn sendfile_target(&self) -> Option<&TcpStream> {
        None
    }

    /// A transport that seals what it writes, taking runs of records read
    /// straight into place; the default, `None`, takes body bytes through
    /// the write buffer.
    fn run_sealer(&mut self) -> Option<&mut dyn RunSealer> {
        None
    }
}

impl Transport for OwnedWriteHalf {
    fn sendfile_target(&self) -> Option<&TcpStream> {
        Some(self.as_ref())
    }
}

impl Transport for TcpStream {
    fn sendfile_target(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

impl Transport for DuplexStream {}

impl<T: AsyncRead + AsyncWrite + Send> Transport for WriteHalf<T> {}

/// A whole connection, cut into the halves a session's reader and writer
/// own (plain TCP keeps sendfile on its writing half).
pub trait Connection: Send + 'static {
    type Read: AsyncRead + Unpin + Send + Sync + 'static;
    type Write: Transport + Sync + 'static;
    fn into_halves(self) -> (Self::Read, Self::Write);
}

impl Connection for TcpStream {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = OwnedWriteHalf;
    fn into_halves(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

impl Connection for DuplexStream {
    type Read = tokio::io::ReadHalf<DuplexStream>;
    type Write = WriteHalf<DuplexStream>;
    fn into_halves(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }
}
