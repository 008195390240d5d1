//! Admission: one connection from its hello to a running session. The
//! hellos say whether the session is coded; a mismatch ends it at once; a
//! sender needs a session slot; a coded one needs a token from the
//! guessing [`Guard`] and the code, proved by the PAKE; then the session
//! ([`super::session::converse`]) runs over the plain or the sealed halves.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::guard::{Guard, Refused, COOL_DOWN, PEER_FAILURES};
use super::ledger::Ledger;
use super::plan::Limits;
use super::session::converse;
use crate::code::Code;
use crate::error::Error;
use crate::events::{Event, Observer};
use crate::protocol::rate::RateLimit;
use crate::protocol::secure::{upgrade, Role};
use crate::protocol::{
    handshake_with, Connection, FrameReader, FrameWriter, Message, CAP_CODE, CAP_TOTALS,
};
use crate::storage::Storage;

/// What a session needs from the server.
pub(super) struct Context {
    pub storage: Arc<Storage>,
    pub observer: Arc<dyn Observer>,
    pub idle_timeout: Duration,
    pub handshake_timeout: Duration,
    pub limits: Limits,
    /// Session slots; a sender past its hello needs one.
    pub sessions: Arc<Semaphore>,
    pub max_sessions: usize,
    pub shutdown: CancellationToken,
    pub session: u64,
    /// The sender's address, for the guessing guard.
    pub peer_ip: std::net::IpAddr,
    /// The code senders must hold, if this receiver has one.
    pub code: Option<Arc<Code>>,
    pub guard: Arc<Guard>,
    /// The sender's hello's capability bits, once it said hello.
    pub peer_caps: u32,
    /// `--limit-rate`: one limit for the bodies of all senders together.
    pub rate: Option<Arc<RateLimit>>,
}

/// How one connection ended, for the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    /// Every file offered is now in DIR.
    Complete,
    /// The session ran but did not store everything, or broke.
    Incomplete,
    /// The peer never got in: no code, a wrong code, or cooling down. It
    /// is not "the first sender" that `--once` waits for.
    NotAdmitted,
}

/// Runs one session over `stream` (a TCP connection, or in tests one end of
/// an in-memory pipe) to its end, reports how it ended, and says how.
pub(super) async fn serve_one<C: Connection>(
    stream: C,
    peer: String,
    context: Context,
    hello_permit: OwnedSemaphorePermit,
) -> Ended {
    let started = Instant::now();
    let observer = Arc::clone(&context.observer);
    let session = context.session;
    observer.event(Event::SessionStarted {
        session,
        peer: peer.clone(),
    });
    let ledger = Arc::new(Mutex::new(Ledger::new(
        Arc::clone(&observer),
        session,
        peer.clone(),
    )));
    let result = run(stream, &peer, context, hello_permit, &ledger).await;
    if let Err(e) = &result {
        match e {
            // Logged even when quiet: someone tried a wrong code.
            Error::Auth(_) | Error::CodeMismatch => log::warn!("session with {peer} ended: {e}"),
            // The session's summary line says so; this is for -vv.
            _ => log::debug!("session with {peer} ended: {e}"),
        }
    }
    let mut summary = match ledger.lock() {
        Ok(mut ledger) => {
            ledger.close(result.is_ok());
            ledger.summary()
        }
        Err(_) => Default::default(),
    };
    summary.secs = started.elapsed().as_secs_f64();
    let ended = match &result {
        Err(Error::Auth(_) | Error::CodeMismatch) => Ended::NotAdmitted,
        Ok(()) if summary.undelivered() == 0 => Ended::Complete,
        _ => Ended::Incomplete,
    };
    observer.event(Event::SessionEnded {
        session,
        peer,
        summary,
        exit_code: result.as_ref().err().map_or(0, Error::exit_code),
        error: result.err().map(|e| e.to_string()),
    });
    ended
}

async fn run<C: Connection>(
    stream: C,
    peer: &str,
    mut context: Context,
    hello_permit: OwnedSemaphorePermit,
    ledger: &Arc<Mutex<Ledger>>,
) -> Result<(), Error> {
    let name: Arc<str> = peer.into();
    let (read_half, write_half) = stream.into_halves();
    let mut reader = FrameReader::new(read_half, Arc::clone(&name), context.idle_timeout);
    let mut writer = FrameWriter::new(write_half, Arc::clone(&name), context.idle_timeout);
    reader.watch(&writer);
    let lost = |detail: String| Error::ConnectionLost {
        peer: peer.to_owned(),
        detail,
    };
    let secs = context.handshake_timeout.as_secs();
    let ours = CAP_TOTALS | if context.code.is_some() { CAP_CODE } else { 0 };
    let hello = tokio::time::timeout(
        context.handshake_timeout,
        handshake_with(&mut reader, &mut writer, ours),
    );
    let theirs = tokio::select! {
        said = hello => match said {
            Ok(result) => result?,
            Err(_) => return Err(lost(format!("no hello within {secs} s"))),
        },
        _ = context.shutdown.cancelled() => {
            return Err(lost("the receiver is shutting down".into()))
        }
    };
    drop(hello_permit);
    context.peer_caps = theirs;
    let code = match (&context.code, theirs & CAP_CODE != 0) {
        (None, false) => None,
        (None, true) => {
            return Err(Error::Auth(format!(
                "{peer} sends with a code, but this receiver has none \
                 (start it with 'xfer recv --code' to take coded sends)"
            )))
        }
        (Some(_), false) => {
            return Err(Error::Auth(format!(
                "{peer} sent no code, and this receiver requires one \
                 (it must run 'xfer send --code ...')"
            )))
        }
        (Some(code), true) => Some(Arc::clone(code)),
    };
    // Past the hello, a sender needs a session slot; when all are taken it
    // is told so at once rather than left waiting in a queue (a coded one
    // by the connection closing: it cannot read frames yet).
    let Ok(_slot) = Arc::clone(&context.sessions).try_acquire_owned() else {
        let reason = format!(
            "the receiver is busy with {} senders already; try again shortly",
            context.max_sessions
        );
        if code.is_none() {
            let _ = writer
                .send(&Message::Abort {
                    reason: reason.clone(),
                })
                .await;
        }
        let _ = writer.shutdown().await;
        return Err(lost(format!("turned away: {reason}")));
    };
    let idle = context.idle_timeout;
    let Some(code) = code else {
        log::debug!("session with {peer} started");
        return converse(reader, writer, context, ledger).await;
    };
    let attempt =
        context
            .guard
            .attempt(context.peer_ip)
            .await
            .map_err(|Refused::CoolingDown(left)| {
                Error::Auth(format!(
                    "refused {peer}: too many wrong codes from {}; it may try again in {} min",
                    context.peer_ip,
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
        context.handshake_timeout,
        idle,
    );
    let (reader, writer) = match sealed.await {
        Ok(halves) => {
            attempt.right();
            halves
        }
        Err(e) => {
            // Counted whatever broke it: a guesser learns nothing by
            // hanging up before the codes are compared.
            if attempt.wrong() {
                log::warn!(
                    "{} sent {} wrong codes within a minute; refusing it for {} min",
                    context.peer_ip,
                    PEER_FAILURES,
                    COOL_DOWN.as_secs() / 60
                );
            }
            return Err(e);
        }
    };
    log::debug!("coded session with {peer} started");
    converse(reader, writer, context, ledger).await
}
