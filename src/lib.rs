//! xfer moves files between machines on a LAN over TCP and proves every byte
//! arrived: each file travels with a header (name, size, mode, mtime and,
//! when cheap, its SHA-256), its body streams raw, a trailer carries the
//! sender's digest, and the receiver verifies before the file appears under
//! its final name.
//!
//! Map of the crate:
//! - [`cli`]: command-line types and their validation into configurations.
//! - [`app`]: runs a command: configuration, signals and output wired up.
//! - [`protocol`]: wire messages, the bincode codec, framed connections.
//! - [`sender`]: one sending session, its ledger, and what it reads:
//!   [`sender::source`] walks local files, [`sender::digest_cache`] remembers
//!   digests of files sent before.
//! - [`receiver`]: the accept loop and one session per sender.
//! - [`storage`]: everything that touches the receiving directory.
//! - [`paths`]: the only way from a wire path to a path under DIR.
//! - [`hashing`]: SHA-256 helpers.
//! - [`events`] and [`progress`]: what sessions report, and how it is shown.
//! - [`term`]: untrusted text made safe for a terminal, or kept to one line.
//! - [`error`]: error kinds that decide exit codes.

#![deny(unsafe_code)]

pub mod app;
pub mod cli;
pub mod error;
pub mod events;
pub mod hashing;
pub mod logging;
pub mod paths;
pub mod progress;
pub mod protocol;
pub mod receiver;
pub mod sender;
pub mod storage;
pub mod term;
