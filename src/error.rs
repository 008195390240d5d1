//! The few error kinds a caller branches on, and the exit code of each.
//!
//! Everything else travels as `anyhow::Error` with context; `main` looks for one
//! of these in the chain to pick the exit code.

use std::io;

/// Exit code: every file verified and persisted (or the receiver stopped cleanly).
pub const EXIT_OK: u8 = 0;
/// Exit code: the transfer ran but not every file was verified, or a local error.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: bad command line (also what clap uses).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the session could not start or did not run to its end because
/// of the network or the peer: cannot connect or listen, the connection
/// broke or went silent, or the peer ended the session early (`Abort`:
/// shutting down, busy, interrupted). One rule for "the peer went away".
pub const EXIT_NETWORK: u8 = 3;
/// Exit code: the peer spoke something other than this xfer protocol version.
pub const EXIT_PROTOCOL: u8 = 4;
/// Exit code: the peer does not hold the same code (a coded session's key
/// confirmation failed).
pub const EXIT_AUTH: u8 = 5;
/// Exit code: interrupted by SIGINT, as shells expect (128 + 2).
pub const EXIT_INTERRUPTED: u8 = 130;

/// An error whose kind decides the exit code or the caller's next step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad command-line values that clap cannot check by itself.
    #[error("{0}")]
    Usage(String),
    /// The TCP connection could not be made. `hint` is the next step, in
    /// parentheses.
    #[error("cannot connect to {addr}: {detail} ({hint})")]
    Connect {
        addr: String,
        detail: String,
        hint: &'static str,
    },
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {detail}")]
    Listen { addr: String, detail: String },
    /// The connection broke, closed early, or went silent.
    #[error("connection with {peer} lost: {detail}")]
    ConnectionLost { peer: String, detail: String },
    /// The peer sent bytes that are not valid xfer protocol.
    #[error("protocol error from {peer}: {detail}")]
    Protocol { peer: String, detail: String },
    /// Both sides speak xfer, but different versions.
    #[error(
        "{peer} speaks xfer protocol version {theirs}, this xfer speaks version {ours}; \
         install the same xfer release on both machines"
    )]
    Version {
        peer: String,
        ours: u32,
        theirs: u32,
    },
    /// The coded handshake ran, and the peer's key confirmation did not
    /// match: the two sides hold different codes (or the handshake was
    /// changed on the way).
    #[error("the code did not match (no data was exchanged): check the code on both machines")]
    CodeMismatch,
    /// Not allowed in: one side has a code and the other none (a coded
    /// side never falls back to clear text), or an address is cooling
    /// down after wrong codes. The text says what to do.
    #[error("{0}")]
    Auth(String),
    /// The peer plays a part this side cannot work with: a send to an
    /// `xfer serve`, a get from an `xfer recv`. The text says what to run.
    #[error("{0}")]
    WrongRole(String),
    /// The peer ended the session on purpose.
    #[error("{peer} aborted the session: {reason}")]
    PeerAborted { peer: String, reason: String },
    /// The session completed but some files were not stored.
    #[error("{failed} of {total} files were not stored; first failure: {first}")]
    Incomplete {
        failed: u64,
        total: u64,
        first: String,
    },
    /// Finding peers on the LAN failed: mDNS could not run, or no
    /// receiver fit. The text says what to do.
    #[error("{0}")]
    Discovery(String),
    /// The user pressed Ctrl-C.
    #[error("interrupted")]
    Interrupted,
    /// A send cut short after files were offered (lost, aborted by the
    /// receiver, interrupted): the same command continues where it stopped.
    #[error("{0}; run the same command again to resume")]
    Resumable(Box<Error>),
    /// A fault inside xfer itself (a task that panicked, a poisoned lock):
    /// neither the network's nor the peer's doing.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The process exit code for this kind.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => EXIT_USAGE,
            Error::Connect { .. }
            | Error::Listen { .. }
            | Error::ConnectionLost { .. }
            | Error::PeerAborted { .. }
            | Error::Discovery(_) => EXIT_NETWORK,
            Error::Protocol { .. } | Error::Version { .. } | Error::WrongRole(_) => EXIT_PROTOCOL,
            Error::Incomplete { .. } | Error::Internal(_) => EXIT_FAILED,
            Error::CodeMismatch | Error::Auth(_) => EXIT_AUTH,
            Error::Interrupted => EXIT_INTERRUPTED,
            Error::Resumable(cause) => cause.exit_code(),
        }
    }
}

impl Error {
    /// Whether the session ended for a reason that passes, so running it
    /// again continues it: the connection broke, this side was interrupted,
    /// or the peer stopped (not a refusal that would only come again).
    pub fn passes(&self) -> bool {
        match self {
            Error::ConnectionLost { .. } | Error::Interrupted => true,
            Error::PeerAborted { reason, .. } => {
                reason.contains("shutting down") || reason.contains("interrupted")
            }
            _ => false,
        }
    }
}

/// The exit code for any error: the first typed kind in its chain decides.
pub fn exit_code_of(err: &anyhow::Error) -> u8 {
    err.chain()
        .find_map(|e| e.downcast_ref::<Error>())
        .map_or(EXIT_FAILED, Error::exit_code)
}

/// An I/O error as a user reads it: "Connection refused", not
/// "Connection refused (os error 111)".
pub fn describe_io(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(cut) => text[..cut].to_owned(),
        None => text,
    }
}
