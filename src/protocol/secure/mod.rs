//! Coded sessions (issue 11): only a peer holding the same short code gets
//! past the handshake, and every byte after it travels in AES-256-GCM
//! records (docs/PROTOCOL.md §9 documents every byte).
//!
//! - [`record`]: the sealed-record codec, as pure functions.

pub mod record;

pub use record::{open_record, seal_record, OpenState, RecordError, RecordKind, SealState};
