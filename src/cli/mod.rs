//! The command line: clap types (here), the values they hold
//! ([`values`]), and their validation into the configurations the library
//! runs on ([`requests`]).

mod requests;
#[cfg(test)]
mod tests;
mod values;

pub use requests::{GetRequest, SendRequest, Target};
use values::parse_wait;
pub use values::{parse_destination, parse_listen, parse_size};

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::code::Code;
use crate::error::Error;
use crate::progress::OutputMode;

/// The port used when an address names none.
pub const DEFAULT_PORT: u16 = 7171;

/// The exit codes, as `--help` shows them (README, "Exit codes").
const EXIT_CODES: &str = "\
Exit codes:
  0    every file was verified and persisted by the receiver (recv, serve: stopped cleanly)
  1    the session ran to its end but some file is not at the receiver, or a local error
  2    bad command line: unknown flag, malformed address, a path that does not exist
  3    the network or the peer: cannot connect or listen, connection lost or silent,
       the peer ended the session early (stopped, interrupted, busy),
       or no receiver (send) or server (get) found on the LAN
  4    the peer is not xfer, speaks another protocol version, or broke the protocol,
       or plays the wrong part (send to a serve, get from a recv)
  5    the code did not match, or one side has a code and the other none
  130  interrupted with Ctrl-C";

const MAIN_EXAMPLES: &str = "\
Examples:
  xfer recv --dir ~/inbox                  # on the receiving machine
  xfer send holiday.mov photos/ laptop:7171  # on the sending machine
  xfer serve holiday.mov photos/           # or: the machine with the files listens...
  xfer get nas:7171 --dir ~/inbox          # ...and the other one fetches them";

const SEND_EXAMPLES: &str = "\
Examples:
  xfer send report.pdf 192.168.1.20        # port 7171
  xfer send photos/ notes.txt laptop.local:7171
  xfer send --json big.iso '[2001:db8::5]:7171' | jq .
  xfer send -- -odd-name.txt host:7171
  xfer send report.pdf                     # the one receiver on the LAN (mDNS)
  xfer send --to laptop photos/            # the receiver announced as 'laptop'

The last argument is the address unless it names an existing file or
directory; without an address the receiver is found on the LAN (DNS-SD over
mDNS, about 1.5 s): one receiver is used, several are listed. A receiver
found that way is not authenticated unless you use a code.";

const RECV_EXAMPLES: &str = "\
Examples:
  xfer recv --dir ~/inbox                  # all interfaces, port 7171
  xfer recv --listen 127.0.0.1:0 --once    # a free port, one sender, then exit
  xfer recv --json --max-size 10G --dir /srv/drop
  xfer recv --name den-pc                  # announced on the LAN as 'den-pc'";

const PEERS_EXAMPLES: &str = "\
Examples:
  xfer peers                               # receivers and servers announced on the LAN
  xfer peers --json --wait 3 | jq .";

const COMPLETIONS_EXAMPLES: &str = "\
Examples:
  xfer completions bash > ~/.local/share/bash-completion/completions/xfer
  xfer completions zsh > ~/.zfunc/_xfer     # with fpath+=~/.zfunc before compinit
  xfer completions fish > ~/.config/fish/completions/xfer.fish";

const MAN_EXAMPLES: &str = "\
Examples:
  xfer man > ~/.local/share/man/man1/xfer.1 && man xfer
  xfer man | man -l -";

const SERVE_EXAMPLES: &str = "\
Examples:
  xfer serve photos/ notes.txt             # all interfaces, port 7171, until Ctrl-C
  xfer serve --listen 127.0.0.1:0 --once big.iso  # a free port, one getter, then exit
  xfer serve --code report.pdf             # getters need the printed code
  xfer serve --name nas photos/            # announced on the LAN as 'nas'";

const GET_EXAMPLES: &str = "\
Examples:
  xfer get nas.local --dir ~/inbox         # port 7171
  xfer get 192.168.1.20:7171 --json | jq .
  xfer get --code '[2001:db8::5]:7171'     # asks for the code
  xfer get --dir ~/inbox                   # the one server on the LAN (mDNS)
  xfer get --to nas                        # the server announced as 'nas'

Without ADDR the server is found on the LAN (DNS-SD over mDNS, about
1.5 s): one server is used, several are listed. A server found that way is
not authenticated unless you use a code.";

/// Move files between machines on a LAN over TCP, verified with SHA-256.
#[derive(Debug, Parser)]
#[command(
    name = "xfer",
    version,
    propagate_version = true,
    after_long_help = concat_help(MAIN_EXAMPLES)
)]
pub struct Cli {
    /// A line per file on stderr (-v); debugging detail too (-vv).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send files and directories to a running `xfer recv`.
    #[command(after_long_help = concat_help(SEND_EXAMPLES))]
    Send(SendArgs),
    /// Receive files into a directory, serving senders until stopped.
    #[command(after_long_help = concat_help(RECV_EXAMPLES))]
    Recv(RecvArgs),
    /// Offer files and directories for `xfer get` to fetch, serving getters
    /// until stopped (pull mode: the machine with the files listens).
    #[command(after_long_help = concat_help(SERVE_EXAMPLES))]
    Serve(ServeArgs),
    /// Fetch everything a running `xfer serve` offers into a directory.
    #[command(after_long_help = concat_help(GET_EXAMPLES))]
    Get(GetArgs),
    /// List the xfer receivers and servers announced on the LAN (DNS-SD
    /// over mDNS).
    #[command(after_long_help = concat_help(PEERS_EXAMPLES))]
    Peers(PeersArgs),
    /// Print a shell completion script on stdout.
    #[command(after_long_help = COMPLETIONS_EXAMPLES)]
    Completions(CompletionsArgs),
    /// Print the manual page (roff) on stdout.
    #[command(after_long_help = MAN_EXAMPLES)]
    Man,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

/// Examples, then the exit-code table, for a `--help` page.
fn concat_help(examples: &'static str) -> String {
    format!("{examples}\n\n{EXIT_CODES}")
}

/// Output flags shared by both subcommands.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Print JSON Lines events on stdout instead of human output.
    #[arg(long)]
    pub json: bool,

    /// No progress bars, per-file lines or summaries (errors still print).
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
#[command(
    override_usage = "xfer send [OPTIONS] <PATH>... [ADDR]\n       xfer send [OPTIONS] --to NAME <PATH>..."
)]
pub struct SendArgs {
    /// Files and directories to send (directories recursively), then ADDR:
    /// the receiver as HOST:PORT, [IPv6]:PORT, or HOST alone for port 7171.
    /// The last argument is ADDR unless it names an existing file or
    /// directory; without ADDR the receiver is looked up on the LAN.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,

    /// Send to the receiver announced on the LAN as NAME (see `xfer
    /// peers`); a NAME.local host name the system resolves works too.
    #[arg(long, value_name = "NAME")]
    pub to: Option<String>,

    /// Give up when the connection makes no progress for this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub idle_timeout: u64,

    /// Neither read nor update the digest cache (~/.cache/xfer/digests.jsonl).
    #[arg(long)]
    pub no_cache: bool,

    /// Send file bodies at most RATE bytes per second, evenly: a size as
    /// for recv --max-size, so 50M is 50 MiB/s and 10MB 10 MB/s; 0: no limit.
    #[arg(long, value_name = "RATE", value_parser = parse_size)]
    pub limit_rate: Option<u64>,

    /// Write a `sha256sum -c` list of every file the receiver verified
    /// (stored, or already there identical) to FILE, paths as given here
    /// (relative to this directory), so `sha256sum -c FILE` checks them.
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,

    #[command(flatten)]
    pub code: CodeArgs,

    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct RecvArgs {
    /// Directory to store received files in (created if missing).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,

    /// Address to listen on; port 0 picks a free port.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:7171")]
    pub listen: String,

    /// Exit after the first sender's session; exit 0 only if all its files verified.
    #[arg(long)]
    pub once: bool,

    /// Replace an existing file with different content instead of keeping
    /// both (the new one is otherwise saved as "name (1).ext").
    #[arg(long)]
    pub overwrite: bool,

    /// Most senders served at once; further ones are told the receiver is busy.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_connections: usize,

    /// Drop a sender that sends nothing for this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub idle_timeout: u64,

    /// Drop a connection that has not said hello within this many seconds
    /// (with --code, also the longest wait for each step of the code
    /// handshake, and for a code attempt while wrong codes are refused).
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub handshake_timeout: u64,

    /// Refuse files larger than SIZE: bytes, or with a unit: K, M, G, T
    /// (also KiB, MiB...) are powers of 1024, KB, MB, GB, TB powers of
    /// 1000; e.g. 500M, 1.5G, 10GB.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_size: Option<u64>,

    /// Refuse what would take one sender's session over SIZE (as for --max-size).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_session_size: Option<u64>,

    /// End a session that offers more than this many files and directories.
    #[arg(long, value_name = "N", default_value_t = 10_000_000)]
    pub max_files: u64,

    /// Remove partial files of interrupted transfers older than this at start.
    #[arg(long, value_name = "DAYS", default_value_t = 7)]
    pub keep_partials_days: u64,

    /// Remove every partial file of interrupted transfers in DIR at start.
    #[arg(long)]
    pub clean_partials: bool,

    /// Take in file bodies at most RATE bytes per second, all senders
    /// together, evenly: a size as for --max-size, so 50M is 50 MiB/s and
    /// 10MB 10 MB/s; 0: no limit.
    #[arg(long, value_name = "RATE", value_parser = parse_size)]
    pub limit_rate: Option<u64>,

    /// Write a `sha256sum -c` list of every file verified (stored, or
    /// already there identical) to FILE, paths relative to DIR, so
    /// `cd DIR && sha256sum -c FILE` checks them.
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,

    #[command(flatten)]
    pub announce: AnnounceArgs,

    #[command(flatten)]
    pub code: CodeArgs,

    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Files and directories to offer (directories recursively); every
    /// getter gets all of them, and nothing else.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,

    /// Address to listen on; port 0 picks a free port.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:7171")]
    pub listen: String,

    /// Exit after the first getter's session; exit 0 only if it stored every file.
    #[arg(long)]
    pub once: bool,

    /// Most getters served at once; further ones are told the server is busy.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_connections: usize,

    /// Drop a getter that makes no progress for this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub idle_timeout: u64,

    /// Drop a connection that has not said hello within this many seconds
    /// (with --code, also the longest wait for each step of the code
    /// handshake, and for a code attempt while wrong codes are refused).
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub handshake_timeout: u64,

    /// Neither read nor update the digest cache (~/.cache/xfer/digests.jsonl).
    #[arg(long)]
    pub no_cache: bool,

    /// Send file bodies at most RATE bytes per second, all getters
    /// together: a size as for recv --max-size; 0: no limit.
    #[arg(long, value_name = "RATE", value_parser = parse_size)]
    pub limit_rate: Option<u64>,

    #[command(flatten)]
    pub announce: AnnounceArgs,

    #[command(flatten)]
    pub code: CodeArgs,

    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
#[command(override_usage = "xfer get [OPTIONS] [ADDR]\n       xfer get [OPTIONS] --to NAME")]
pub struct GetArgs {
    /// Server as HOST:PORT, [IPv6]:PORT, or HOST alone for port 7171;
    /// without ADDR the server is looked up on the LAN.
    #[arg(value_name = "ADDR", conflicts_with = "to")]
    pub addr: Option<String>,

    /// Get from the server announced on the LAN as NAME (see `xfer
    /// peers`); a NAME.local host name the system resolves works too.
    #[arg(long, value_name = "NAME")]
    pub to: Option<String>,

    /// Directory to store the files in (created if missing).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,

    /// Replace an existing file with different content instead of keeping
    /// both (the new one is otherwise saved as "name (1).ext").
    #[arg(long)]
    pub overwrite: bool,

    /// Give up when the server sends nothing for this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub idle_timeout: u64,

    /// Refuse files larger than this (bytes; K, M, G, T suffixes allowed).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_size: Option<u64>,

    /// Refuse what would take this session over this many bytes.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_session_size: Option<u64>,

    /// End the session if the server offers more than this many files and directories.
    #[arg(long, value_name = "N", default_value_t = 10_000_000)]
    pub max_files: u64,

    /// Remove partial files of interrupted transfers older than this at start.
    #[arg(long, value_name = "DAYS", default_value_t = 7)]
    pub keep_partials_days: u64,

    /// Take file bodies at most RATE bytes per second: a size as for
    /// --max-size; 0: no limit.
    #[arg(long, value_name = "RATE", value_parser = parse_size)]
    pub limit_rate: Option<u64>,

    #[command(flatten)]
    pub code: CodeArgs,

    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct PeersArgs {
    /// How long to listen for answers, in seconds (decimals allowed).
    #[arg(long, value_name = "SECS", default_value = "1.5", value_parser = parse_wait)]
    pub wait: Duration,

    /// Print JSON Lines events on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The flags of a listener that announces itself on the LAN (`recv`,
/// `serve`).
#[derive(Debug, Args)]
pub struct AnnounceArgs {
    /// Name to announce on the LAN, for `--to NAME` on the other machine
    /// (`xfer send` for a recv, `xfer get` for a serve; default: the host
    /// name).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// Do not announce on the LAN (DNS-SD over mDNS). A listener on
    /// loopback only is never announced.
    #[arg(long)]
    pub no_announce: bool,
}

impl AnnounceArgs {
    /// Checks `--name` before anything listens.
    fn check(&self) -> Result<(), Error> {
        match &self.name {
            Some(name) => crate::discovery::check_name(name),
            None => Ok(()),
        }
    }
}

/// The code flags shared by both subcommands.
#[derive(Debug, Args)]
pub struct CodeArgs {
    /// Only holders of a short code may send (or get); the session is
    /// encrypted. The code comes from XFER_CODE or --code-file (recv,
    /// serve: else a fresh one is generated; send, get: else it is asked
    /// for without echo).
    /// `--code=CODE` works too, but other users can read it in `ps`.
    #[arg(
        long,
        value_name = "CODE",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = ""
    )]
    pub code: Option<String>,

    /// Read the code from the first line of FILE (implies --code).
    #[arg(long, value_name = "FILE")]
    pub code_file: Option<PathBuf>,
}

/// Where a code came from, which decides what is printed about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeSource {
    /// Generated now: the receiver prints it.
    Generated,
    /// From XFER_CODE, a code file, the command line or the terminal.
    Given,
}

impl CodeArgs {
    fn wanted(&self) -> bool {
        self.code.is_some() || self.code_file.is_some()
    }

    /// The code these flags ask for, if any: `--code=CODE`, `--code-file`,
    /// `XFER_CODE`, else `fallback` (generate, or ask on the terminal).
    pub fn resolve(
        &self,
        fallback: impl FnOnce() -> Result<(Code, CodeSource), Error>,
    ) -> Result<Option<(Code, CodeSource)>, Error> {
        if !self.wanted() {
            return Ok(None);
        }
        let bad = |e: &dyn std::fmt::Display| Error::Usage(format!("invalid code: {e}"));
        if let Some(value) = self.code.as_deref().filter(|v| !v.is_empty()) {
            log::warn!(
                "a code given on the command line can be read by other users of this machine \
                 (ps, /proc); prefer XFER_CODE or --code-file"
            );
            return Ok(Some((
                Code::parse(value).map_err(|e| bad(&e))?,
                CodeSource::Given,
            )));
        }
        if let Some(path) = &self.code_file {
            let code = crate::code::read_code_file(path).map_err(|e| bad(&e))?;
            return Ok(Some((code, CodeSource::Given)));
        }
        if let Some(value) = std::env::var_os("XFER_CODE") {
            let value = zeroize::Zeroizing::new(value.to_string_lossy().into_owned());
            let code = Code::parse(&value).map_err(|e| bad(&format!("XFER_CODE: {e}")))?;
            return Ok(Some((code, CodeSource::Given)));
        }
        fallback().map(Some)
    }
}

impl OutputArgs {
    pub fn mode(&self, verbose: bool) -> OutputMode {
        OutputMode {
            json: self.json,
            quiet: self.quiet,
            verbose,
        }
    }
}
