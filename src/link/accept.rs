//! The accept loop both listeners (`recv`, `serve`) run: one task per
//! connection, a bound on connections still saying hello, `--once`, and a
//! clean stop on shutdown. What a connection becomes is the caller's.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Ended;

/// How long sessions get to wind down after a shutdown request.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// Connections that have not finished their hello yet, at most. They do not
/// hold a session slot, so idle connections cannot lock real peers out;
/// beyond this many, new connections are closed at once.
pub const MAX_PENDING_HELLOS: usize = 256;

/// How serving ended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ServeReport {
    pub sessions: u64,
    pub failed_sessions: u64,
}

/// One accepted connection, handed to the caller to run.
pub struct Incoming {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    /// Held until the connection's hello is in.
    pub hello_permit: OwnedSemaphorePermit,
    /// Numbers the connections from 1, for events.
    pub session: u64,
    /// Fires when the listener stops.
    pub shutdown: CancellationToken,
}

/// Accepts on `listener` until `shutdown` fires (or, with `once`, until the
/// first admitted peer's session ends), running `start`'s future for each
/// connection in its own task. One connection's failure never stops the
/// loop.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    once: bool,
    shutdown: CancellationToken,
    mut start: F,
) -> ServeReport
where
    F: FnMut(Incoming) -> Fut,
    Fut: Future<Output = Ended> + Send + 'static,
{
    let hellos = Arc::new(Semaphore::new(MAX_PENDING_HELLOS));
    let tracker = TaskTracker::new();
    let mut report = ServeReport::default();
    let failed = Arc::new(AtomicU64::new(0));
    let mut next_session = 1u64;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors and the like: back off, keep serving.
                    log::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let Ok(hello_permit) = Arc::clone(&hellos).try_acquire_owned() else {
            log::warn!(
                "{peer}: closed at once, {MAX_PENDING_HELLOS} connections are still saying hello"
            );
            continue;
        };
        let _ = stream.set_nodelay(true);
        let session = start(Incoming {
            stream,
            peer,
            hello_permit,
            session: next_session,
            shutdown: shutdown.child_token(),
        });
        next_session += 1;
        report.sessions += 1;
        let failed = Arc::clone(&failed);
        let stopping = shutdown.clone();
        let task = tracker.spawn(async move {
            let ended = session.await;
            // A session cut short by our own stop is not a failed one:
            // its partials are kept, as a stop promises.
            if ended == Ended::Incomplete && !stopping.is_cancelled() {
                failed.fetch_add(1, Ordering::Relaxed);
            }
            ended
        });
        if once {
            // Only a peer that got in is the one --once waits for: a wrong
            // code (or a wrong role) must not end (or block) the listener.
            tokio::select! {
                ended = task => if matches!(ended, Ok(Ended::NotAdmitted)) { continue },
                _ = shutdown.cancelled() => {}
            }
            break;
        }
    }
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        log::warn!(
            "some sessions did not stop within {} s",
            SHUTDOWN_GRACE.as_secs()
        );
    }
    report.failed_sessions = failed.load(Ordering::Relaxed);
    report
}
