//! Wire message types, nothing else. Every type here is encoded by `codec`.

use serde::{Deserialize, Serialize};

use super::Digest;

/// One control message. Raw body bytes are not a message: they follow a
/// [`Message::FileBegin`] and their length is known from the offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Sender → receiver: a batch of entries it wants to transfer.
    Offer(Offer),
    /// Receiver → sender: what to do with each entry of one offer, in order.
    Plan(Plan),
    /// Sender → receiver: exactly `size - offset` raw body bytes of entry `id`
    /// follow, then a [`Message::FileEnd`].
    FileBegin { id: u64, offset: u64 },
    /// Sender → receiver: the SHA-256 of the whole file as the sender read it.
    /// `error` is set when the sender could not read what it promised (the
    /// body was padded to its declared length and must be discarded).
    FileEnd {
        sha256: Digest,
        error: Option<String>,
    },
    /// Sender → receiver: answer to [`Action::Compare`]: the receiver's file is
    /// identical, nothing follows.
    Identical { id: u64 },
    /// Receiver → sender: the outcome for one file whose body was sent or
    /// compared.
    Verdict(Verdict),
    /// Sender → receiver: no more offers; the receiver answers [`Message::Bye`]
    /// once every verdict is out and everything is on disk.
    Done,
    /// Receiver → sender: the final word of a session.
    Bye { files: u64, bytes: u64 },
    /// Either side: the session ends now, for this reason.
    Abort { reason: String },
    /// Sender → receiver, once, before the first offer, when both hellos
    /// carry `CAP_TOTALS`: what the whole session will offer. For display
    /// only; every limit is still checked against the offers themselves.
    Totals { files: u64, bytes: u64 },
}

impl Message {
    /// The variant's name, for protocol errors.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Message::Offer(_) => "Offer",
            Message::Plan(_) => "Plan",
            Message::FileBegin { .. } => "FileBegin",
            Message::FileEnd { .. } => "FileEnd",
            Message::Identical { .. } => "Identical",
            Message::Verdict(_) => "Verdict",
            Message::Done => "Done",
            Message::Bye { .. } => "Bye",
            Message::Abort { .. } => "Abort",
            Message::Totals { .. } => "Totals",
        }
    }
}

/// A batch of entries, numbered from `first_id` upwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    pub first_id: u64,
    pub entries: Vec<Entry>,
}

/// One file or directory as the sender describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative, `/`-separated; untrusted until validated by `paths`.
    pub path: String,
    pub kind: EntryKind,
    /// Body length in bytes; 0 for directories.
    pub size: u64,
    /// Unix permission bits.
    pub mode: u32,
    /// Modification time, seconds and nanoseconds since the Unix epoch.
    pub mtime_secs: i64,
    pub mtime_nanos: u32,
    /// Present when the sender knew the digest without delaying the transfer.
    pub sha256: Option<Digest>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    File,
    Dir,
}

/// The receiver's answer to one offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub first_id: u64,
    pub actions: Vec<Action>,
}

/// What the receiver wants for one offered entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Send the body starting at this byte offset.
    Send { offset: u64 },
    /// A file of this name and size exists with this digest: send the body if
    /// yours differs, or [`Message::Identical`] if it is the same.
    Compare { sha256: Digest },
    /// Identical content is already stored at `path`; nothing to send.
    Skip { path: String },
    /// The directory exists now.
    DirReady,
    /// Will not be stored, for this reason.
    Refuse { reason: String },
}

/// The receiver's outcome for one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub id: u64,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Verified, fsynced and renamed to `path` (relative to the receiver's DIR).
    Stored { path: String, sha256: Digest },
    /// The receiver already had identical content at `path`.
    Skipped { path: String },
    /// Not stored. `retry`: the bytes were damaged on the way (digest
    /// mismatch), so sending the file again from scratch may succeed.
    Failed { reason: String, retry: bool },
}
