//! What the sender and receiver report while they work. Protocol code emits
//! these and never touches the terminal; `progress` turns them into bars,
//! JSON Lines (docs/EVENTS.md) or nothing.
//!
//! Every report is read off one ledger per side ([`crate::sender::ledger`],
//! [`crate::receiver::ledger`]): a [`FileReport`] is one file's record when it
//! reached its final state, a [`Summary`] is the ledger counted once.

use crate::protocol::Digest;

/// How one offered file ended. Final: a file damaged on the way and sent
/// again ends as what its second attempt became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Verified, synced and given its name at the receiver.
    Stored,
    /// Identical content was already there; no body was needed.
    Skipped,
    /// The receiver would not take it (limits, free space, unsafe name).
    Refused(String),
    /// It was meant to arrive and did not (damaged twice, unreadable at the
    /// sender, a disk error at the receiver).
    Failed(String),
}

impl Outcome {
    /// Stored or skipped: the receiver has this content under a name.
    pub fn delivered(&self) -> bool {
        matches!(self, Outcome::Stored | Outcome::Skipped)
    }

    /// Why it was not delivered.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Outcome::Refused(r) | Outcome::Failed(r) => Some(r),
            Outcome::Stored | Outcome::Skipped => None,
        }
    }
}

/// One file's record at its final state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReport {
    /// The path as offered (relative, `/`-separated).
    pub path: String,
    /// Where the receiver keeps it, relative to its DIR (differs from `path`
    /// after a name conflict); `None` when it was not delivered.
    pub stored_as: Option<String>,
    pub size: u64,
    /// The file's SHA-256 when known; never a placeholder.
    pub sha256: Option<Digest>,
    pub outcome: Outcome,
    /// The offer carried the digest ahead of the body.
    pub digest_in_header: bool,
    /// Bytes kept from an earlier, interrupted transfer (0 if none).
    pub resumed_from: u64,
    /// Bodies sent for it: 0 (skipped, refused), 1, or 2 after a retry.
    pub attempts: u32,
    /// Why the first body was sent again, when it was (damaged on the way).
    pub retried_after: Option<String>,
    /// Where this side read the file from (the sender; absolute), for a
    /// manifest of what was sent; `None` on the receiver.
    pub local: Option<std::path::PathBuf>,
}

impl FileReport {
    pub fn skipped(&self) -> bool {
        self.outcome == Outcome::Skipped
    }
}

/// One side's ledger, counted. Each offered file is in exactly one of
/// `stored`, `skipped`, `refused`, `failed`, or (cut short) none of them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    /// Files offered (directories are not counted).
    pub offered: u64,
    pub stored: u64,
    pub skipped: u64,
    pub refused: u64,
    pub failed: u64,
    /// Of the stored, those that continued from bytes an earlier run kept.
    pub resumed: u64,
    /// Of the delivered, those kept under another name than offered (a name
    /// conflict: `note (1).txt`).
    pub renamed: u64,
    /// Body bytes that crossed the wire.
    pub bytes: u64,
    /// Files cut off mid-body and kept as partials for a resume...
    pub kept_files: u64,
    /// ...the bytes kept of them...
    pub kept_bytes: u64,
    /// ...out of their full sizes.
    pub kept_of: u64,
    pub secs: f64,
}

impl Summary {
    /// Files the receiver now holds: stored or found identical.
    pub fn delivered(&self) -> u64 {
        self.stored + self.skipped
    }

    /// Counts a file that ended as `outcome` among the renamed (kept under
    /// another name than `offered_as`) and the resumed, where it is one.
    pub fn delivered_as(
        &mut self,
        outcome: &Outcome,
        offered_as: &str,
        stored_as: Option<&str>,
        resumed_from: u64,
    ) {
        if !outcome.delivered() {
            return;
        }
        if stored_as.is_some_and(|at| at != offered_as) {
            self.renamed += 1;
        }
        if *outcome == Outcome::Stored && resumed_from > 0 {
            self.resumed += 1;
        }
    }

    /// Files offered that did not end stored or skipped.
    pub fn undelivered(&self) -> u64 {
        self.offered.saturating_sub(self.delivered())
    }
}

/// What a progress line shows, kept by each side's ledger as its records
/// move, so the bar and the summary are read off the same records.
///
/// `bytes` is what the session will have in place when it is done: it
/// starts as every file's size and shrinks when a file needs no body (skipped,
/// identical) or will not arrive (refused, failed). `bytes_done` is what is
/// already in place, bytes resumed from an earlier run included, so a
/// finished session shows `bytes_done == bytes`. `moved` counts only what
/// crossed the wire in this session: the rate is measured from it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Meter {
    /// Files in the session (offered so far, on the receiver).
    pub files: u64,
    /// Of those, files that reached a final state.
    pub files_done: u64,
    pub bytes: u64,
    pub bytes_done: u64,
    pub moved: u64,
}

impl Meter {
    /// `bytes` more are in place (`counted` tracks them for their file).
    pub fn advance(&mut self, counted: &mut u64, bytes: u64, moved: bool) {
        *counted += bytes;
        self.bytes_done += bytes;
        if moved {
            self.moved += bytes;
        }
    }

    /// A file's body starts over from nothing (damaged, sent again).
    pub fn restart(&mut self, counted: &mut u64) {
        self.bytes_done = self.bytes_done.saturating_sub(std::mem::take(counted));
    }

    /// The session ran to its end: what is done is the whole of it, whatever
    /// was announced or counted up front (a file that changed size since,
    /// a sender that announced more than it offered).
    pub fn complete(&mut self) {
        self.files = self.files_done;
        self.bytes = self.bytes_done;
    }

    /// A file of `size` reached a final state; `counted` is what it added.
    /// Stored, it counts whole; otherwise it leaves the session's bytes.
    pub fn finish(&mut self, size: u64, counted: u64, stored: bool) {
        self.files_done += 1;
        self.bytes_done = self.bytes_done.saturating_sub(counted);
        if stored {
            self.bytes_done += size;
        } else {
            self.bytes = self.bytes.saturating_sub(size);
        }
    }
}

/// A progress or outcome report. `session` tells concurrent sessions apart.
#[derive(Debug, Clone)]
pub enum Event {
    SessionStarted {
        session: u64,
        peer: String,
    },
    FileStarted {
        session: u64,
        path: String,
        size: u64,
    },
    /// The session's ledger moved: bytes arrived or went out, a plan or a
    /// verdict changed what is left to do.
    Progress {
        session: u64,
        meter: Meter,
    },
    /// A file reached its final state.
    FileDone {
        session: u64,
        peer: String,
        report: FileReport,
    },
    /// The last event of a session, whatever way it ended.
    SessionEnded {
        session: u64,
        peer: String,
        summary: Summary,
        /// Why it ended early or incomplete; `None` when every file offered
        /// was delivered.
        error: Option<String>,
        /// The exit code this ending means for a sending process.
        exit_code: u8,
        /// The listening side turned the peer away before any session: no
        /// code, a wrong code, cooling down, or the wrong role. The error
        /// line logged for it is all a person needs to read.
        turned_away: bool,
    },
}

/// Receives events; implementations must be cheap, they run on transfer paths.
pub trait Observer: Send + Sync {
    fn event(&self, event: Event);
}
