//! Coded sessions (issue 11): only a peer holding the same short code gets
//! past the handshake, and every byte after it travels in AES-256-GCM
//! records (docs/PROTOCOL.md §9 documents every byte).
//!
//! - [`pake`]: SPAKE2 on the code, the transcript, the key schedule and
//!   key confirmation, as pure functions.
//! - [`record`]: the sealed-record codec, as pure functions.

pub mod pake;
pub mod record;

pub use pake::{PakeError, PakeStart, SessionKeys};
pub use record::{open_record, seal_record, OpenState, RecordError, RecordKind, SealState};

/// Which end of the connection this side is: the one that connected
/// (`Sender`) or the one that accepted (`Receiver`). It orders the
/// transcript and picks the keys; both run the same SPAKE2 role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Sender,
    Receiver,
}
