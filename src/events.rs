//! What the sender and receiver report while they work. Protocol code emits
//! these and never touches the terminal; `progress` turns them into bars,
//! JSON Lines or nothing.

use crate::protocol::Digest;

/// One file that ended well: stored and verified, or already present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReport {
    /// The path as the sender named it (relative, `/`-separated).
    pub path: String,
    /// Where the receiver keeps it, relative to its DIR (differs on a conflict).
    pub stored_as: String,
    pub size: u64,
    pub sha256: Digest,
    /// Identical content was already there; no body was sent.
    pub skipped: bool,
    /// The offer carried the digest ahead of the body.
    pub digest_in_header: bool,
    /// Bytes kept from an earlier, interrupted transfer (0 if none).
    pub resumed_from: u64,
}

/// Totals for one session, for summaries.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    /// Files stored or found identical.
    pub files: u64,
    /// Of those, already present.
    pub skipped: u64,
    /// Files that were not stored.
    pub failed: u64,
    /// Body bytes that crossed the wire.
    pub bytes: u64,
    pub secs: f64,
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
    FileDone {
        session: u64,
        peer: String,
        report: FileReport,
    },
    FileFailed {
        session: u64,
        path: String,
        reason: String,
    },
    SessionEnded {
        session: u64,
        peer: String,
        summary: Summary,
        error: Option<String>,
    },
}

/// Receives events; implementations must be cheap, they run on transfer paths.
pub trait Observer: Send + Sync {
    fn event(&self, event: Event);
}
