//! What a [`FrameWriter`](super::FrameWriter) writes to. Sessions are generic
//! over it, so they run over TCP, over `tokio::io::duplex` in tests, and over
//! any transport added later; only the plain-TCP case gets `sendfile(2)`.

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, WriteHalf};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;

/// A byte stream the writing side of a session can use.
pub trait Transport: AsyncWrite + Unpin + Send {
    /// The socket that file bodies may be spliced into with `sendfile(2)`,
    /// bypassing the write buffer. Only a transport that puts bytes on that
    /// socket unchanged may return one; the default, `None`, sends bodies
    /// through the write buffer.
    fn sendfile_target(&self) -> Option<&TcpStream> {
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
