//! xfer moves files between machines on a LAN over TCP and proves every byte
//! arrived: each file travels with a header (name, size, mode, mtime and,
//! when cheap, its SHA-256), its body streams raw, a trailer carries the
//! sender's digest, and the receiver verifies before the file appears under
//! its final name.
//!
//! The design in one sentence: each side keeps **one ledger record per
//! offered file** ([`sender::ledger`], [`receiver::ledger`]), and every
//! event, summary, JSON line and exit code is read from it.
//!
//! Map of the crate:
//! - [`cli`]: command-line types and their validation into configurations.
//! - [`app`]: runs a command: configuration, signals and output wired up.
//! - [`protocol`]: wire messages, the bincode codec (the only file naming
//!   bincode), framed connections, the hello, and [`protocol::Transport`]:
//!   sessions run over any byte stream; plain TCP gets sendfile.
//! - [`sender`]: one sending session: connect, the writer (`session`), the
//!   reply reader, bodies, the ledger, and what it reads: [`sender::source`]
//!   walks local files, [`sender::digest_cache`] remembers digests.
//! - [`receiver`]: the accept loop and admission; per session the wiring,
//!   [`receiver::plan`] (a pure decision per entry), the sink that writes
//!   and verifies, the committer, and the ledger.
//! - [`link`]: from a connection to a running session, for every command:
//!   hellos, roles (push or pull), codes and the PAKE, the listener's gate
//!   (slots, the guessing guard) and its accept loop.
//! - [`storage`]: everything that touches the receiving directory, through
//!   directory handles: the confined walk, partials, resume records,
//!   nameless files, publishing, cleanup.
//! - [`code`]: short codes (`4821-orbit-lemon-tiger-brick`): generating,
//!   writing and typing them back, and reading one from a terminal or file.
//! - [`discovery`]: DNS-SD over mDNS: announcing a peer, browsing for
//!   peers of one role, and choosing the receiver `xfer send` goes to.
//! - [`paths`]: the only way from a wire path to a path under DIR.
//! - [`hashing`]: SHA-256 helpers.
//! - [`events`] and [`progress`]: what sessions report, and how it is shown
//!   (progress lines fitted to the screen, summaries, JSON Lines).
//! - [`reach`]: the addresses a listener can be reached at.
//! - [`shell`]: completion scripts and the man page, from the clap definition.
//! - [`term`]: untrusted text made safe for a terminal, or kept to one line.
//! - [`error`]: error kinds that decide exit codes.
//! - [`manifest`]: `--manifest FILE`, a `sha256sum -c` list of the files verified.

#![deny(unsafe_code)]

pub mod app;
pub mod cli;
pub mod code;
pub mod discovery;
pub mod error;
pub mod events;
pub mod hashing;
pub mod link;
pub mod logging;
pub mod manifest;
pub mod paths;
pub mod progress;
pub mod protocol;
pub mod reach;
pub mod receiver;
pub mod sender;
pub mod shell;
pub mod storage;
pub mod term;
