//! The sender's reading half: plans go to the writer, verdicts into the
//! ledger, and the writer is woken whenever one lands and when this stops.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncRead;
use tokio::sync::{mpsc, Notify};

use super::ledger::Ledger;
use crate::error::Error;
use crate::protocol::{FrameReader, Message, Plan};

/// Reads until the receiver's `Bye` (or an error); marks `closed` and wakes
/// the writer when it stops.
pub(super) async fn read_replies<R: AsyncRead + Unpin>(
    mut reader: FrameReader<R>,
    plans: mpsc::Sender<Plan>,
    ledger: Arc<Mutex<Ledger>>,
    settled: Arc<Notify>,
    closed: Arc<AtomicBool>,
) -> Result<(), Error> {
    let result = until_bye(&mut reader, &plans, &ledger, &settled).await;
    closed.store(true, Ordering::Release);
    settled.notify_one();
    result
}

async fn until_bye<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    plans: &mpsc::Sender<Plan>,
    ledger: &Mutex<Ledger>,
    settled: &Notify,
) -> Result<(), Error> {
    let peer = reader.peer().to_owned();
    let protocol = |detail: String| Error::Protocol {
        peer: peer.clone(),
        detail,
    };
    loop {
        match reader.expect_message("the receiver's final word").await? {
            Message::Plan(plan) => {
                // The writer may have stopped; the error that stopped it wins.
                let _ = plans.send(plan).await;
            }
            Message::Verdict(verdict) => {
                ledger
                    .lock()
                    .map_err(|_| Error::Internal("the sender's ledger lock was poisoned".into()))?
                    .verdict(verdict.id, verdict.outcome)
                    .map_err(protocol)?;
                settled.notify_one();
            }
            Message::Bye { .. } => return Ok(()),
            Message::Abort { reason } => return Err(Error::PeerAborted { peer, reason }),
            other => {
                return Err(protocol(format!(
                    "unexpected {} from the receiver",
                    other.kind_name()
                )))
            }
        }
    }
}
