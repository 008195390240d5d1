//! Making verified files durable and visible, in groups, and telling the
//! sender: one `syncfs` for a whole group's data, the links to final names,
//! one more for the names, and only then the verdicts. Outcomes go into the
//! session's [`Ledger`], which reports them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::ledger::Ledger;
use crate::error::describe_io;
use crate::protocol::{Digest, Message, Outcome, Verdict};
use crate::storage::{Partial, Storage};

/// A verified partial waiting for its group commit.
pub(super) struct Verified {
    pub id: u64,
    pub partial: Partial,
    pub sha256: Digest,
}

/// Where a file's outcome goes: the ledger (which reports it) and, as a
/// verdict, the sender.
#[derive(Clone)]
pub(super) struct Verdicts {
    pub out: mpsc::Sender<Message>,
    pub ledger: Arc<Mutex<Ledger>>,
}

impl Verdicts {
    fn ledger(&self) -> Option<std::sync::MutexGuard<'_, Ledger>> {
        // A poisoned ledger means a thread panicked mid-update; the session
        // is failing anyway, and the verdict still goes out.
        self.ledger.lock().ok()
    }

    /// `id` was not stored; `retry` when sending it again may help.
    pub fn failed(&self, id: u64, reason: String, retry: bool) {
        if let Some(mut ledger) = self.ledger() {
            ledger.failed(id, reason.clone(), retry);
        }
        let outcome = Outcome::Failed { reason, retry };
        let _ = self
            .out
            .blocking_send(Message::Verdict(Verdict { id, outcome }));
    }

    /// `id` is verified, durable and visible at `path`.
    pub fn stored(&self, id: u64, path: String, sha256: Digest) {
        if let Some(mut ledger) = self.ledger() {
            ledger.stored(id, path.clone(), sha256);
        }
        let outcome = Outcome::Stored { path, sha256 };
        let _ = self
            .out
            .blocking_send(Message::Verdict(Verdict { id, outcome }));
    }
}

/// Runs on its own thread: commits groups of verified files, merging every
/// group that queued up while the previous sync ran (group commit), so the
/// sink never waits for the disk and many files share one sync.
pub(super) fn run_committer(
    storage: Arc<Storage>,
    verdicts: Verdicts,
    queue: std::sync::mpsc::Receiver<Vec<Verified>>,
    busy: Arc<AtomicBool>,
    free: Arc<tokio::sync::Notify>,
) {
    while let Ok(mut group) = queue.recv() {
        busy.store(true, Ordering::Release);
        while let Ok(more) = queue.try_recv() {
            group.extend(more);
        }
        commit_group(&storage, &verdicts, group);
        busy.store(false, Ordering::Release);
        // A sink waiting to hand over its next group is told at once.
        free.notify_one();
    }
}

/// Syncs, publishes and reports one group of verified files.
pub(super) fn commit_group(storage: &Storage, verdicts: &Verdicts, group: Vec<Verified>) {
    let (files, partials): (Vec<_>, Vec<_>) = group
        .into_iter()
        .map(|v| ((v.id, v.sha256), v.partial))
        .unzip();
    let results = storage.commit(partials);
    for ((id, sha256), result) in files.into_iter().zip(results) {
        match result {
            Ok(stored_as) => verdicts.stored(id, stored_as, sha256),
            Err(e) => verdicts.failed(
                id,
                format!("cannot store it on the receiver: {}", describe_io(&e)),
                false,
            ),
        }
    }
}
