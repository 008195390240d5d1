//! What a [`FrameWriter`](super::FrameWriter) writes to. Sessions are generic
//! over it, so they run over TCP, over `tokio::io::duplex` in tests, and over
//! any transport added later; only the plain-TCP case gets `sendfile(2)`.

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::secure::{OpenedPayloads, RunSealer};

/// A byte stream the reading side of a session can use.
pub trait Source: AsyncRead + Unpin + Send {
    /// A source that opens sealed records, handing out body bytes where
    /// they were opened; the default, `None`, reads body bytes into the
    /// frame reader's buffer.
    fn opened(&mut self) -> Option<&mut dyn OpenedPayloads> {
        None
    }
}

impl Source for OwnedReadHalf {}

impl Source for TcpStream {}

impl Source for DuplexStream {}

impl<T: AsyncRead + Send> Source for ReadHalf<T> {}

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
    type Read: Source + Sync + 'static;
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
