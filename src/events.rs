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

    /// Files offered that did not end stored or skipped.
    pub fn undelivered(&self) -> u64 {
        self.offered.saturating_sub(self.delivered())
    }
}

/// A progress or outcome report. `session` tells concurrent sessions apart.
#[derive(Debug, Clone)]
pub enum Event {
    SessionStarted {
        session: u64,
        peer: String,
    },
    /// The sender knows how much it is about to send.
    Totals {
        session: u64,
        files: u64,
        bytes: u64,
    },
    FileStarted {
        session: u64,
        path: String,
        size: u64,
    },
    /// More body bytes moved.
    Progress {
        session: u64,
        bytes: u64,
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
    },
}

/// Receives events; implementations must be cheap, they run on transfer paths.
pub trait Observer: Send + Sync {
    fn event(&self, event: Event);
}
