//! Coded sessions (issue 11): only a peer holding the same short code gets
//! past the handshake, and every byte after it travels in AES-256-GCM
//! records (docs/PROTOCOL.md §9 documents every byte).
//!
//! - [`pake`]: SPAKE2 on the code, the transcript, the key schedule and
//!   key confirmation, as pure functions.
//! - [`record`]: the sealed-record codec, as pure functions.
//! - [`stream`]: [`SealedReader`] and [`SealedWriter`], the record codec
//!   behind `AsyncRead`/`AsyncWrite`, so framed sessions run over them
//!   unchanged.
//! - [`secure`]: the two extra exchanges after the plain hellos (PAKE
//!   messages, then confirmations), returning the sealed halves.
//!
//! The primitives all come from maintained crates: `spake2`, `hkdf`,
//! `hmac`, `sha2` (RustCrypto) and `aws-lc-rs`'s AES-256-GCM, chosen by
//! `examples/seal_speed.rs`.

pub mod pake;
pub mod record;
pub mod stream;
#[cfg(test)]
mod tests;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{describe_io, Error};
use crate::protocol::{hello_bytes, FrameReader, FrameWriter};
pub use pake::{PakeError, PakeStart, SessionKeys};
pub use record::{
    open_record, seal_record, OpenState, RecordError, RecordKind, RecordRun, SealState, RUN_PAYLOAD,
};
pub use stream::{OpenedPayloads, RunSealer, SealedReader, SealedWriter};

/// Which end of the connection this side is: the one that connected
/// (`Sender`) or the one that accepted (`Receiver`). It orders the
/// transcript and picks the keys; both run the same SPAKE2 role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Sender,
    Receiver,
}

/// Runs the coded handshake on the raw halves right after the plain hellos
/// (`hellos`: both 16-byte hellos as sent, the sender's first), then
/// returns the halves wrapped so that every later byte is sealed.
///
/// Adds one round trip to the plain handshake: both sides write their PAKE
/// message at once and read the peer's, then the same for the key
/// confirmations. `idle` bounds each of the two exchanges, and the sealed
/// writer's waits for a peer that stops reading. A peer with
/// another code is [`Error::CodeMismatch`] on both sides, before any
/// application byte moves.
pub async fn secure<R, W>(
    mut read: R,
    mut write: W,
    role: Role,
    code: &[u8],
    hellos: &[u8; 32],
    peer: &str,
    idle: Duration,
) -> Result<(SealedReader<R>, SealedWriter<W>), Error>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    let peer: Arc<str> = peer.into();
    let start = PakeStart::new(code);
    let mut theirs = [0u8; pake::PAKE_MESSAGE_LEN];
    let exchange = Exchange {
        peer: &peer,
        idle,
        what: "code message",
    };
    exchange
        .run(&mut read, &mut write, start.message(), &mut theirs)
        .await?;
    let keys = start
        .finish(role, hellos, &theirs)
        .map_err(|e| handshake_error(e, &peer))?;
    // The receiver checks the sender's confirmation before it sends its
    // own: a sender with a wrong code gets nothing that would let it test
    // its guess (and guess again) away from the receiver's counting. The
    // sender wrote first anyway, so this costs no time.
    let mut their_confirmation = [0u8; pake::CONFIRMATION_LEN];
    let exchange = Exchange {
        what: "code confirmation",
        ..exchange
    };
    match role {
        Role::Sender => {
            exchange.write(&mut write, &keys.confirmation()).await?;
            match exchange.read(&mut read, &mut their_confirmation).await {
                // A receiver that found our confirmation wrong hangs up.
                Err(Error::ConnectionLost { detail, .. })
                    if detail.starts_with("connection closed") =>
                {
                    return Err(Error::CodeMismatch)
                }
                other => other?,
            }
            keys.verify_peer(&their_confirmation)
                .map_err(|e| handshake_error(e, &peer))?;
        }
        Role::Receiver => {
            exchange.read(&mut read, &mut their_confirmation).await?;
            keys.verify_peer(&their_confirmation)
                .map_err(|e| handshake_error(e, &peer))?;
            exchange.write(&mut write, &keys.confirmation()).await?;
        }
    }
    let (seal, open) = keys.into_record_states();
    let mut writer = SealedWriter::new(write, seal, Arc::clone(&peer));
    writer.set_idle(idle);
    Ok((SealedReader::new(read, open, peer), writer))
}

/// The read half [`upgrade`] seals: what the plain reader had already read
/// past the hello, then the stream.
pub type AfterHello<R> = tokio::io::Chain<io::Cursor<bytes::BytesMut>, R>;

/// Takes the frame reader and writer that carried the plain hellos (`ours`
/// and `theirs` are the capability bits each announced), runs [`secure`] on
/// what is underneath them, and rebuilds them over the sealed halves, the
/// reader watching the writer as before. `handshake` bounds each handshake
/// exchange, `idle` the session after it. Both sides go through here, so
/// the transcript's order of hellos (the sender's first) is decided once.
pub async fn upgrade<R, W>(
    reader: FrameReader<R>,
    writer: FrameWriter<W>,
    role: Role,
    code: &[u8],
    (ours, theirs): (u32, u32),
    handshake: Duration,
    idle: Duration,
) -> Result<
    (
        FrameReader<SealedReader<AfterHello<R>>>,
        FrameWriter<SealedWriter<W>>,
    ),
    Error,
>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    let (sender, receiver) = match role {
        Role::Sender => (ours, theirs),
        Role::Receiver => (theirs, ours),
    };
    let mut hellos = [0u8; 32];
    hellos[..16].copy_from_slice(&hello_bytes(sender));
    hellos[16..].copy_from_slice(&hello_bytes(receiver));
    let peer: Arc<str> = reader.peer().into();
    let (raw, read_ahead) = reader.into_parts();
    let raw = io::Cursor::new(read_ahead).chain(raw);
    let (read, mut write) = secure(
        raw,
        writer.into_inner(),
        role,
        code,
        &hellos,
        &peer,
        handshake,
    )
    .await?;
    write.set_idle(idle);
    let mut reader = FrameReader::new(read, Arc::clone(&peer), idle);
    let mut writer = FrameWriter::new(write, peer, idle);
    let activity = Arc::clone(&writer.activity);
    writer.inner.report_to(activity);
    reader.watch(&writer);
    Ok((reader, writer))
}

/// One step of the handshake: write ours and read theirs at once, so
/// neither side waits for the other before writing.
struct Exchange<'a> {
    peer: &'a Arc<str>,
    idle: Duration,
    what: &'static str,
}

impl Exchange<'_> {
    fn lost(&self, detail: String) -> Error {
        Error::ConnectionLost {
            peer: self.peer.to_string(),
            detail,
        }
    }

    fn late(&self) -> Error {
        self.lost(format!(
            "no {} within {} s (idle timeout)",
            self.what,
            self.idle.as_secs()
        ))
    }

    /// Writes ours only.
    async fn write<W: AsyncWrite + Unpin>(&self, write: &mut W, ours: &[u8]) -> Result<(), Error> {
        let send = async {
            write.write_all(ours).await?;
            write.flush().await
        };
        tokio::time::timeout(self.idle, send)
            .await
            .map_err(|_| self.late())?
            .map_err(|e| self.lost(describe_io(&e)))
    }

    /// Reads theirs only.
    async fn read<R: AsyncRead + Unpin>(
        &self,
        read: &mut R,
        theirs: &mut [u8],
    ) -> Result<(), Error> {
        let received = tokio::time::timeout(self.idle, read.read_exact(theirs))
            .await
            .map_err(|_| self.late())?;
        received.map(drop).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => {
                self.lost(format!("connection closed during the {}", self.what))
            }
            _ => self.lost(describe_io(&e)),
        })
    }

    async fn run<R, W>(
        &self,
        read: &mut R,
        write: &mut W,
        ours: &[u8],
        theirs: &mut [u8],
    ) -> Result<(), Error>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let send = async {
            write.write_all(ours).await?;
            write.flush().await
        };
        let both = async { tokio::join!(send, read.read_exact(theirs)) };
        let lost = |detail: String| Error::ConnectionLost {
            peer: self.peer.to_string(),
            detail,
        };
        let (sent, received) = tokio::time::timeout(self.idle, both).await.map_err(|_| {
            lost(format!(
                "no {} within {} s (idle timeout)",
                self.what,
                self.idle.as_secs()
            ))
        })?;
        received.map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => {
                lost(format!("connection closed during the {}", self.what))
            }
            _ => lost(describe_io(&e)),
        })?;
        sent.map_err(|e| lost(describe_io(&e)))?;
        Ok(())
    }
}

fn handshake_error(e: PakeError, peer: &str) -> Error {
    match e {
        PakeError::Mismatch => Error::CodeMismatch,
        PakeError::BadMessage(_) | PakeError::Reflected => Error::Protocol {
            peer: peer.to_string(),
            detail: e.to_string(),
        },
    }
}

/// The typed [`Error`] inside an I/O error that a [`SealedReader`] or
/// [`SealedWriter`] returned (a record that failed authentication is
/// [`Error::Protocol`], a cut without the end record
/// [`Error::ConnectionLost`]); any other I/O error comes back as it was.
/// Whoever maps the sealed halves' I/O errors to [`Error`] calls this first.
pub fn recover_error(e: io::Error) -> Result<Error, io::Error> {
    if !e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        return Err(e);
    }
    let kind = e.kind();
    match e.into_inner().map(|inner| inner.downcast::<Error>()) {
        Some(Ok(typed)) => Ok(*typed),
        Some(Err(other)) => Err(io::Error::new(kind, other)),
        None => Err(kind.into()),
    }
}
