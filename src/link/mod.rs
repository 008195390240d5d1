//! A session's link: from a TCP connection (or, in tests, one end of an
//! in-memory pipe) to the frame reader and writer a session runs over.
//! Both ends exchange hellos and check each other's roles and code bits
//! ([`Mode::check_peer`]); a coded pair runs the PAKE and goes on over
//! sealed records. The same steps serve all four commands, so the two
//! sessions — the sender's (`send`, `serve`) and the receiver's (`recv`,
//! `get`) — run unchanged whichever end listens:
//!
//! - [`Dialed`]: the connecting end (`send`, `get`).
//! - [`Accepted`]: the listening end (`recv`, `serve`), behind its
//!   [`Gate`]: the hello timeout, session slots and the code-guessing
//!   [`guard`], whichever session it runs.
//! - [`accept`]: the bounded accept loop both listeners run.
//!
//! In the PAKE the connecting end always plays the first role and the
//! listening end the second (docs/PROTOCOL.md §11.3): the listener checks
//! the peer's key confirmation before it sends its own, whichever way the
//! files go.

pub mod accept;
pub mod guard;

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncRead;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::code::Code;
use crate::error::Error;
use crate::protocol::secure::{upgrade, Role};
use crate::protocol::{
    handshake_with, Connection, FrameReader, FrameWriter, Message, Mode, Source, Transport,
    CAP_CODE,
};
use guard::{Guard, Refused, COOL_DOWN, FAILURES_PER_SEC, PEER_FAILURES};

/// What runs once a link is up: the sender's or the receiver's session,
/// over plain or sealed halves alike, told the capability bits of the
/// peer's hello (for the optional features both announced).
pub trait Session: Send {
    type Output: Send;
    fn run<R, W>(
        self,
        reader: FrameReader<R>,
        writer: FrameWriter<W>,
        peer_caps: u32,
    ) -> impl Future<Output = Self::Output> + Send
    where
        R: Source + Sync + 'static,
        W: Transport + Sync + 'static;
}

/// A way to bring a link up and run a session over it.
pub trait Link: Send {
    /// Hellos, checks, the PAKE when coded, then `session`. An `Err` is a
    /// link that never came up; the session's own outcome is the `Ok`.
    fn establish<S: Session>(
        self,
        session: S,
    ) -> impl Future<Output = Result<S::Output, Error>> + Send;
}

/// How a listener's connection ended, for its accept loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Every file offered is now at the storing side.
    Complete,
    /// The session ran but not everything was stored, or it broke.
    Incomplete,
    /// The peer never got in: no code, a wrong code, cooling down, or the
    /// wrong role. It is not "the first peer" that `--once` waits for.
    NotAdmitted,
}

impl Ended {
    /// Whether a link error means the peer was never let in.
    pub fn not_admitted(e: &Error) -> bool {
        matches!(
            e,
            Error::Auth(_) | Error::CodeMismatch | Error::WrongRole(_)
        )
    }

    /// The listening side's one line about a peer it turned away (an
    /// error for which [`Ended::not_admitted`] holds), naming the peer.
    pub fn turned_away(peer: &str, e: &Error) -> String {
        match e {
            Error::CodeMismatch => format!("{peer}: {e}"),
            // Their texts begin with the peer.
            _ => e.to_string(),
        }
    }
}

/// The connecting end: opens the connection, then says hello as `mode`.
pub struct Dialed<'a, F> {
    /// The TCP connect (or, in tests, a ready pipe).
    pub open: F,
    pub peer: Arc<str>,
    /// [`Mode::Send`] or [`Mode::Get`].
    pub mode: Mode,
    pub code: Option<&'a Code>,
    /// Longest wait for any progress, the handshake included.
    pub idle: Duration,
    /// Stops the connect and the handshake (the session watches it itself).
    pub cancel: &'a CancellationToken,
}

impl<F, C> Link for Dialed<'_, F>
where
    F: Future<Output = Result<C, Error>> + Send,
    C: Connection,
{
    async fn establish<S: Session>(self, session: S) -> Result<S::Output, Error> {
        let Dialed {
            open,
            peer,
            mode,
            code,
            idle,
            cancel,
        } = self;
        let stream = tokio::select! {
            s = open => s?,
            _ = cancel.cancelled() => return Err(Error::Interrupted),
        };
        let (read_half, write_half) = stream.into_halves();
        let mut reader = FrameReader::new(read_half, Arc::clone(&peer), idle);
        let mut writer = FrameWriter::new(write_half, Arc::clone(&peer), idle);
        reader.watch(&writer);
        let ours = mode.caps(code.is_some());
        let theirs = tokio::select! {
            r = handshake_with(&mut reader, &mut writer, ours) => r?,
            _ = cancel.cancelled() => return Err(Error::Interrupted),
        };
        mode.check_peer(code.is_some(), theirs, &peer)?;
        let Some(code) = code else {
            return Ok(session.run(reader, writer, theirs).await);
        };
        let secret = code.secret();
        let sealed = upgrade(
            reader,
            writer,
            Role::Sender,
            &secret,
            (ours, theirs),
            idle,
            idle,
        );
        let (reader, writer) = tokio::select! {
            r = sealed => r.map_err(refused_hint)?,
            _ = cancel.cancelled() => return Err(Error::Interrupted),
        };
        Ok(session.run(reader, writer, theirs).await)
    }
}

/// A coded listener that turns this peer away before comparing codes
/// (busy, this address cooling down, no code attempt free in time) can
/// only close the connection before its code message: say what that means.
fn refused_hint(e: Error) -> Error {
    match e {
        Error::ConnectionLost { peer, detail } if detail.contains("during the code message") => {
            Error::ConnectionLost {
                peer,
                detail: format!(
                    "{detail} (a coded listener closes here, before comparing codes, \
                     when it is busy, when this address recently sent several wrong codes, \
                     or when wrong codes come in faster than it checks them: wait, check \
                     the code, and try again)"
                ),
            }
        }
        other => other,
    }
}

/// What stands between a listener's accepted connections and its
/// sessions, shared by all of them.
pub struct Gate {
    /// [`Mode::Recv`] or [`Mode::Serve`].
    pub mode: Mode,
    /// The code peers must hold; with it every session is sealed.
    pub code: Option<Arc<Code>>,
    /// Bounds code guessing across all sessions.
    pub guard: Arc<Guard>,
    /// Session slots; a peer past its hello needs one.
    pub sessions: Arc<Semaphore>,
    pub max_sessions: usize,
    /// Longest wait for a new connection's hello (and each PAKE step).
    pub handshake_timeout: Duration,
    /// Longest wait for any byte once the session runs.
    pub idle_timeout: Duration,
}

impl Gate {
    pub fn new(mode: Mode, code: Option<Code>, max_sessions: usize) -> Gate {
        let max_sessions = max_sessions.max(1);
        Gate {
            mode,
            code: code.map(Arc::new),
            guard: Guard::new(),
            sessions: Arc::new(Semaphore::new(max_sessions)),
            max_sessions,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
        }
    }

    /// "the receiver is busy with 64 senders already"
    fn busy(&self) -> String {
        let (us, them) = match self.mode {
            Mode::Serve => ("server", "getters"),
            _ => ("receiver", "senders"),
        };
        format!(
            "the {us} is busy with {} {them} already; try again shortly",
            self.max_sessions
        )
    }
}

/// After an `Abort`, reads and drops what the peer still sends, for a
/// moment: closing a socket with unread bytes resets the connection, and
/// a reset can destroy the `Abort` before the peer has read why.
async fn linger<R: AsyncRead + Unpin>(reader: &mut FrameReader<R>) {
    const MOMENT: Duration = Duration::from_secs(1);
    const AT_MOST: usize = 4 * 1024 * 1024;
    let drain = async {
        let mut drained = 0;
        while drained < AT_MOST {
            match reader.read_body(64 * 1024).await {
                Ok(bytes) if !bytes.is_empty() => drained += bytes.len(),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(MOMENT, drain).await;
}

/// The listening end: one accepted connection, let in through its gate.
pub struct Accepted<C> {
    pub stream: C,
    pub peer: Arc<str>,
    /// The peer's address, for the guessing guard.
    pub peer_ip: IpAddr,
    pub gate: Arc<Gate>,
    /// Held until the hello is in: bounds connections still saying hello.
    pub hello_permit: OwnedSemaphorePermit,
    /// Fires when the listener stops: a hello still awaited is not.
    pub stopping: CancellationToken,
}

impl<C: Connection> Link for Accepted<C> {
    async fn establish<S: Session>(self, session: S) -> Result<S::Output, Error> {
        let Accepted {
            stream,
            peer,
            peer_ip,
            gate,
            hello_permit,
            stopping,
        } = self;
        let (read_half, write_half) = stream.into_halves();
        let mut reader = FrameReader::new(read_half, Arc::clone(&peer), gate.idle_timeout);
        let mut writer = FrameWriter::new(write_half, Arc::clone(&peer), gate.idle_timeout);
        reader.watch(&writer);
        let lost = |detail: String| Error::ConnectionLost {
            peer: peer.to_string(),
            detail,
        };
        let secs = gate.handshake_timeout.as_secs();
        let coded = gate.code.is_some();
        let ours = gate.mode.caps(coded);
        let hello = tokio::time::timeout(
            gate.handshake_timeout,
            handshake_with(&mut reader, &mut writer, ours),
        );
        let theirs = tokio::select! {
            said = hello => match said {
                Ok(result) => result?,
                Err(_) => return Err(lost(format!("no hello within {secs} s"))),
            },
            _ = stopping.cancelled() => return Err(lost("stopping before its hello".into())),
        };
        drop(hello_permit);
        // A plain peer of the wrong role is told why in a frame (an older
        // one ignores the role bits and only learns it so); a coded one
        // cannot read frames yet, so its connection just closes, before
        // any code is compared.
        let plain = !coded && theirs & CAP_CODE == 0;
        if let Err(e) = gate.mode.check_peer(coded, theirs, &peer) {
            if plain && matches!(e, Error::WrongRole(_)) {
                let reason = gate.mode.refusal();
                let _ = writer.send(&Message::Abort { reason }).await;
                let _ = writer.shutdown().await;
                linger(&mut reader).await;
            }
            return Err(e);
        }
        // Past the hello, a peer needs a session slot; when all are taken
        // it is told so at once rather than left waiting in a queue.
        let Ok(_slot) = Arc::clone(&gate.sessions).try_acquire_owned() else {
            let reason = gate.busy();
            if plain {
                let _ = writer
                    .send(&Message::Abort {
                        reason: reason.clone(),
                    })
                    .await;
            }
            let _ = writer.shutdown().await;
            if plain {
                linger(&mut reader).await;
            }
            return Err(lost(format!("turned away: {reason}")));
        };
        let Some(code) = &gate.code else {
            log::debug!("session with {peer} started");
            return Ok(session.run(reader, writer, theirs).await);
        };
        // When wrong codes from anywhere have emptied the bucket, a peer
        // waits for a token no longer than a hello may take, holding its
        // slot meanwhile; turned away then, it has cost no wrong code.
        let waited = tokio::time::timeout(gate.handshake_timeout, gate.guard.attempt(peer_ip));
        let attempt = waited
            .await
            .map_err(|_| {
                Error::Auth(format!(
                    "refused {peer}: no code attempt free within {:?}, as wrong codes \
                     are coming in faster than {FAILURES_PER_SEC} per second",
                    gate.handshake_timeout
                ))
            })?
            .map_err(|Refused::CoolingDown(left)| {
                Error::Auth(format!(
                    "refused {peer}: too many wrong codes from {peer_ip}; it may try again in {} min",
                    left.as_secs().div_ceil(60)
                ))
            })?;
        let secret = code.secret();
        let sealed = upgrade(
            reader,
            writer,
            Role::Receiver,
            &secret,
            (ours, theirs),
            gate.handshake_timeout,
            gate.idle_timeout,
        );
        let (reader, writer) = match sealed.await {
            Ok(halves) => {
                attempt.right();
                halves
            }
            Err(e) => {
                // Counted whatever broke it: a guesser learns nothing by
                // hanging up before the codes are compared. Either way the
                // peer never got in, which its error says.
                let e = match e {
                    Error::CodeMismatch => e,
                    other => Error::Auth(format!(
                        "{peer}: the code handshake broke off, counted as a wrong code: {other}"
                    )),
                };
                if attempt.wrong() {
                    log::warn!(
                        "{peer_ip} sent {PEER_FAILURES} wrong codes within a minute; \
                         refusing it for {} min",
                        COOL_DOWN.as_secs() / 60
                    );
                }
                return Err(e);
            }
        };
        log::debug!("coded session with {peer} started");
        Ok(session.run(reader, writer, theirs).await)
    }
}
