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

/// Keeps large buffers in the heap for reuse. Bodies move in chunks of up to
/// 1 MiB; above glibc's default threshold (128 KiB) every chunk would be a
/// fresh mmap, page-faulted in and unmapped again, which cost about as much
/// CPU as hashing it.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; called before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 * 1024 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 * 1024 * 1024);
    }
}
