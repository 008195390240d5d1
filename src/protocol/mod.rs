//! The wire protocol: a fixed-layout hello, then length-prefixed bincode frames
//! interleaved with raw file bodies. `docs/PROTOCOL.md` documents every byte.

mod body;
pub mod codec;
pub mod connection;
mod handshake;
pub mod message;
pub mod rate;
pub mod roles;
pub mod secure;
pub mod transport;

pub use connection::{hello_bytes, FrameReader, FrameWriter};
pub use handshake::{handshake, handshake_with};
pub use message::{Action, Entry, EntryKind, Message, Offer, Outcome, Plan, Verdict};
pub use roles::{Mode, CAP_FETCHES, CAP_SERVES};
pub use transport::{Connection, Source, Transport};

/// The first bytes either side writes. Chosen so that a stray HTTP client, a
/// text protocol or an older binary format cannot be mistaken for xfer.
pub const MAGIC: [u8; 8] = *b"XFER\r\n\x1a\n";

/// Bumped whenever the bytes on the wire change incompatibly.
pub const PROTOCOL_VERSION: u32 = 1;

/// Capability bits a minimal peer announces in its hello: none. Unknown
/// bits are ignored, so newer peers can advertise optional features; the
/// defined ones are the `CAP_*` constants below.
pub const CAPABILITIES: u32 = 0;

/// Capability bit: this side runs a coded session (SPAKE2 on a short code,
/// then sealed records; docs/PROTOCOL.md section 9).
pub const CAP_CODE: u32 = 1;

/// Capability bit: this side sends (sender) or takes (receiver) one
/// [`Message::Totals`] before the first offer, so the receiver can show
/// the whole session's size (docs/PROTOCOL.md section 3).
pub const CAP_TOTALS: u32 = 2;

/// Length of the hello: magic, version (u32 BE), capabilities (u32 BE).
pub const HELLO_LEN: usize = 16;

/// Largest control frame payload either side accepts. A batch of headers is the
/// biggest message; the sender keeps batches well below this.
pub const MAX_FRAME_LEN: usize = 1024 * 1024;

/// Most entries one offer (and so one plan) may carry.
pub const MAX_BATCH_ENTRIES: usize = 1024;

/// Longest reason string a peer may put in a message.
pub const MAX_REASON_LEN: usize = 1024;

/// A SHA-256 digest as carried on the wire.
pub type Digest = [u8; 32];
