//! The command line: clap types, and their validation into the configurations
//! the library runs on.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::code::Code;
use crate::error::Error;
use crate::progress::OutputMode;
use crate::receiver::{GetConfig, Limits, RecvConfig};
use crate::sender::{Destination, SendConfig, ServeConfig};

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

    /// Drop a connection that has not said hello within this many seconds.
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

    /// Drop a connection that has not said hello within this many seconds.
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

fn idle(secs: u64) -> Result<Duration, Error> {
    if secs == 0 {
        return Err(Error::Usage(
            "--idle-timeout must be at least 1 second".into(),
        ));
    }
    Ok(Duration::from_secs(secs))
}

/// `--limit-rate`: 0 (or none) means no limit.
fn rate(flag: Option<u64>) -> Option<u64> {
    flag.filter(|r| *r > 0)
}

/// Where `xfer send` goes, or where `xfer get` gets from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The address given on the command line: nothing is looked up on the
    /// LAN.
    Address(Destination),
    /// A peer to find on the LAN (a receiver for `send`, a server for
    /// `get`): the one named by `--to`, or the one that fits.
    Find { name: Option<String> },
}

/// A validated `xfer send`, before its receiver is known.
#[derive(Debug, Clone)]
pub struct SendRequest {
    pub target: Target,
    pub paths: Vec<PathBuf>,
    pub code: Option<Code>,
    pub idle_timeout: Duration,
    pub limit_rate: Option<u64>,
    pub digest_cache: Option<PathBuf>,
}

impl SendRequest {
    /// The configuration for sending to `destination`.
    pub fn into_config(self, destination: Destination) -> SendConfig {
        SendConfig {
            paths: self.paths,
            destination,
            idle_timeout: self.idle_timeout,
            limit_rate: self.limit_rate,
            digest_cache: self.digest_cache,
            code: self.code,
        }
    }
}

/// Whether a word that is not a path reads as an address someone meant:
/// an IP literal, or anything with an explicit port. A bare name might be
/// a file that is missing, so it is not.
fn looks_like_address(word: &str) -> bool {
    word.parse::<IpAddr>().is_ok()
        || ((word.contains(':') || word.starts_with('[')) && parse_destination(word).is_ok())
}

fn exists(path: &std::path::Path) -> bool {
    path.symlink_metadata().is_ok()
}

impl SendArgs {
    /// Splits `PATH... [ADDR]`: the last argument is the address unless it
    /// names an existing file or directory, or `--to` is given. Without an
    /// address every path must exist now, before the LAN is searched.
    pub fn target(&self) -> Result<(Vec<PathBuf>, Target), Error> {
        let Some((last, rest)) = self.paths.split_last() else {
            return Err(Error::Usage(
                "nothing to send: xfer send PATH... [ADDR]".into(),
            ));
        };
        let (paths, target) = if let Some(name) = &self.to {
            if name.is_empty() {
                return Err(Error::Usage("--to needs a receiver's name".into()));
            }
            if !exists(last) && last.to_str().is_some_and(looks_like_address) {
                return Err(Error::Usage(format!(
                    "give either --to NAME or an address, not both ('{}')",
                    last.display()
                )));
            }
            let target = Target::Find {
                name: Some(name.clone()),
            };
            (self.paths.clone(), target)
        } else if exists(last) {
            // The last word names something here, so it is sent too. Before
            // discovery it was the address: say so where it could be one.
            let word = last.to_str().unwrap_or_default();
            if !rest.is_empty() && looks_like_address(word) {
                return Err(Error::Usage(format!(
                    "'{word}' is both a file here and an address: write ./{word} to send \
                     the file, or name the receiver last as HOST:PORT (or with --to NAME)"
                )));
            }
            if !rest.is_empty() && !word.contains('/') {
                log::warn!(
                    "'{word}' exists here, so it is sent too and the receiver is looked for \
                     on the LAN; to send to the host {word}, write {word}:{DEFAULT_PORT}"
                );
            }
            (self.paths.clone(), Target::Find { name: None })
        } else if rest.is_empty() {
            if last.to_str().is_some_and(looks_like_address) {
                return Err(Error::Usage(format!(
                    "nothing to send to {}: give the files first, then the address: \
                     xfer send PATH... ADDR",
                    last.display()
                )));
            }
            (self.paths.clone(), Target::Find { name: None })
        } else {
            let addr = last.to_str().ok_or_else(|| {
                Error::Usage(format!(
                    "invalid address {:?}: not valid UTF-8",
                    last.as_os_str()
                ))
            })?;
            (rest.to_vec(), Target::Address(parse_destination(addr)?))
        };
        for path in &paths {
            if !exists(path) && path.to_str().is_some_and(looks_like_address) {
                // `xfer send 10.0.0.5:7171 file.bin`: told as such, not as
                // a missing file.
                return Err(Error::Usage(format!(
                    "'{0}' looks like the receiver's address, not a file here: \
                     the address goes last (xfer send PATH... {0})",
                    path.display()
                )));
            }
        }
        if matches!(target, Target::Find { .. }) {
            for path in &paths {
                if let Err(e) = std::fs::metadata(path) {
                    return Err(Error::Usage(format!(
                        "cannot send '{}': {}",
                        path.display(),
                        crate::error::describe_io(&e)
                    )));
                }
            }
        }
        Ok((paths, target))
    }

    /// Checks the values clap cannot; a code not given otherwise is asked
    /// for on the terminal, without echo.
    pub fn to_request(&self) -> Result<SendRequest, Error> {
        let (paths, target) = self.target()?;
        let idle_timeout = idle(self.idle_timeout)?;
        let code = self.code.resolve(|| {
            let typed = crate::code::prompt("code (from the receiving machine): ")
                .map_err(|e| Error::Usage(format!("cannot read the code: {e}")))?;
            let code =
                Code::parse(&typed).map_err(|e| Error::Usage(format!("invalid code: {e}")))?;
            Ok((code, CodeSource::Given))
        })?;
        Ok(SendRequest {
            target,
            code: code.map(|(code, _)| code),
            paths,
            idle_timeout,
            limit_rate: rate(self.limit_rate),
            digest_cache: if self.no_cache {
                None
            } else {
                crate::sender::digest_cache::default_location()
            },
        })
    }
}

impl RecvArgs {
    /// Checks the values clap cannot; with `--code` and no code given, a
    /// fresh one is generated. Says where the code came from.
    pub fn to_config(&self) -> Result<(RecvConfig, Option<CodeSource>), Error> {
        if self.max_connections == 0 {
            return Err(Error::Usage("--max-connections must be at least 1".into()));
        }
        let code = self
            .code
            .resolve(|| Ok((Code::generate(), CodeSource::Generated)))?;
        let source = code.as_ref().map(|(_, source)| *source);
        self.announce.check()?;
        let config = RecvConfig {
            code: code.map(|(code, _)| code),
            limit_rate: rate(self.limit_rate),
            dir: self.dir.clone(),
            listen: parse_listen(&self.listen)?,
            once: self.once,
            overwrite: self.overwrite,
            max_connections: self.max_connections,
            idle_timeout: idle(self.idle_timeout)?,
            handshake_timeout: idle(self.handshake_timeout)?,
            limits: Limits {
                max_file_size: self.max_size,
                max_session_bytes: self.max_session_size,
                max_entries: self.max_files,
            },
            keep_partials: if self.clean_partials {
                Duration::ZERO
            } else {
                Duration::from_secs(self.keep_partials_days.saturating_mul(24 * 3600))
            },
        };
        Ok((config, source))
    }
}

impl ServeArgs {
    /// Checks the values clap cannot; with `--code` and no code given, a
    /// fresh one is generated. Says where the code came from.
    pub fn to_config(&self) -> Result<(ServeConfig, Option<CodeSource>), Error> {
        if self.max_connections == 0 {
            return Err(Error::Usage("--max-connections must be at least 1".into()));
        }
        let code = self
            .code
            .resolve(|| Ok((Code::generate(), CodeSource::Generated)))?;
        let source = code.as_ref().map(|(_, source)| *source);
        self.announce.check()?;
        let config = ServeConfig {
            code: code.map(|(code, _)| code),
            paths: self.paths.clone(),
            listen: parse_listen(&self.listen)?,
            once: self.once,
            max_connections: self.max_connections,
            idle_timeout: idle(self.idle_timeout)?,
            handshake_timeout: idle(self.handshake_timeout)?,
            limit_rate: rate(self.limit_rate),
            digest_cache: if self.no_cache {
                None
            } else {
                crate::sender::digest_cache::default_location()
            },
        };
        Ok((config, source))
    }
}

/// A validated `xfer get`, before its server is known.
#[derive(Debug, Clone)]
pub struct GetRequest {
    pub target: Target,
    pub code: Option<Code>,
    pub dir: PathBuf,
    pub overwrite: bool,
    pub idle_timeout: Duration,
    pub limits: Limits,
    pub keep_partials: Duration,
    pub limit_rate: Option<u64>,
}

impl GetRequest {
    /// The configuration for getting from `source`.
    pub fn into_config(self, source: Destination) -> GetConfig {
        GetConfig {
            source,
            code: self.code,
            dir: self.dir,
            overwrite: self.overwrite,
            idle_timeout: self.idle_timeout,
            limits: self.limits,
            keep_partials: self.keep_partials,
            limit_rate: self.limit_rate,
        }
    }
}

impl GetArgs {
    /// The server: ADDR when given (nothing is looked up), else the one
    /// `--to` names or the one that fits on the LAN.
    pub fn target(&self) -> Result<Target, Error> {
        match (&self.addr, &self.to) {
            (Some(addr), _) => Ok(Target::Address(parse_destination(addr)?)),
            (None, Some(name)) if name.is_empty() => {
                Err(Error::Usage("--to needs a server's name".into()))
            }
            (None, name) => Ok(Target::Find { name: name.clone() }),
        }
    }

    /// Checks the values clap cannot; a code not given otherwise is asked
    /// for on the terminal, without echo.
    pub fn to_request(&self) -> Result<GetRequest, Error> {
        let target = self.target()?;
        let idle_timeout = idle(self.idle_timeout)?;
        let code = self.code.resolve(|| {
            let typed = crate::code::prompt("code (from the serving machine): ")
                .map_err(|e| Error::Usage(format!("cannot read the code: {e}")))?;
            let code =
                Code::parse(&typed).map_err(|e| Error::Usage(format!("invalid code: {e}")))?;
            Ok((code, CodeSource::Given))
        })?;
        Ok(GetRequest {
            target,
            code: code.map(|(code, _)| code),
            dir: self.dir.clone(),
            overwrite: self.overwrite,
            idle_timeout,
            limits: Limits {
                max_file_size: self.max_size,
                max_session_bytes: self.max_session_size,
                max_entries: self.max_files,
            },
            keep_partials: Duration::from_secs(self.keep_partials_days.saturating_mul(24 * 3600)),
            limit_rate: rate(self.limit_rate),
        })
    }
}

/// A wait in seconds: a positive number up to an hour.
fn parse_wait(raw: &str) -> Result<Duration, String> {
    match raw.trim().parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs <= 3600.0 => Ok(Duration::from_secs_f64(secs)),
        _ => Err(format!(
            "'{raw}' is not a number of seconds from 0.1 to 3600"
        )),
    }
}

/// A byte count: a number, possibly with a fraction, then an optional
/// unit, case-insensitive, with or without a trailing `B`: `K`/`KiB`,
/// `M`/`MiB`, `G`/`GiB`, `T`/`TiB` are powers of 1024 (as `ls -h`, `dd` and
/// curl read them), `KB`, `MB`, `GB`, `TB` powers of 1000, `B` or nothing
/// bytes. `1.5G` is 1610612736; a fraction of a byte is dropped.
pub fn parse_size(raw: &str) -> Result<u64, String> {
    let text = raw.trim();
    let hint = "a size is a number of bytes with an optional unit, e.g. 500M, 1.5G, 10MB";
    if text.is_empty() {
        return Err(format!("the size is empty; {hint}"));
    }
    if text.starts_with('-') {
        return Err(format!("'{text}' is negative; {hint}"));
    }
    let number_len = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(number_len);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return Err(format!("'{text}' is not a number; {hint}"));
    }
    let multiplier: u128 = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "ki" | "kib" => 1 << 10,
        "m" | "mi" | "mib" => 1 << 20,
        "g" | "gi" | "gib" => 1 << 30,
        "t" | "ti" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => {
            return Err(format!(
                "'{text}': unknown unit '{}' (K, M, G, T or KiB... are powers of 1024; \
                 KB, MB, GB, TB powers of 1000; none means bytes)",
                unit.trim_start()
            ))
        }
    };
    let too_large = || format!("'{text}' is too large (at most {} bytes)", u64::MAX);
    let mut bytes: u128 = 0;
    for digit in whole.bytes() {
        bytes = bytes
            .checked_mul(10)
            .and_then(|b| b.checked_add(u128::from(digit - b'0')))
            .filter(|b| *b <= u128::from(u64::MAX))
            .ok_or_else(too_large)?;
    }
    bytes = bytes.checked_mul(multiplier).ok_or_else(too_large)?;
    // The fraction, exactly: digits past the 24th cannot move the result
    // by a whole byte, even in TiB.
    let (mut numerator, mut denominator) = (0u128, 1u128);
    for digit in fraction.bytes().take(24) {
        numerator = numerator * 10 + u128::from(digit - b'0');
        denominator *= 10;
    }
    bytes += numerator * multiplier / denominator;
    u64::try_from(bytes).map_err(|_| too_large())
}

/// `HOST:PORT`, `[IPv6]:PORT`, `HOST`, `[IPv6]` or a bare IPv6 address.
pub fn parse_destination(raw: &str) -> Result<Destination, Error> {
    let bad = |why: &str| Error::Usage(format!("invalid address '{raw}': {why}"));
    let port_of = |p: &str| match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad("the port must be a number from 1 to 65535")),
        Ok(port) => Ok(port),
    };
    if let Some(rest) = raw.strip_prefix('[') {
        let (host, tail) = rest.split_once(']').ok_or_else(|| bad("missing ']'"))?;
        host.parse::<Ipv6Addr>()
            .map_err(|_| bad("not an IPv6 address inside [ ]"))?;
        let port = match tail {
            "" => DEFAULT_PORT,
            t => port_of(
                t.strip_prefix(':')
                    .ok_or_else(|| bad("expected ':PORT' after ']'"))?,
            )?,
        };
        return Ok(Destination {
            host: host.to_owned(),
            port,
        });
    }
    match raw.matches(':').count() {
        0 if !raw.is_empty() => Ok(Destination {
            host: raw.to_owned(),
            port: DEFAULT_PORT,
        }),
        0 => Err(bad("empty")),
        1 => {
            let (host, port) = raw.split_once(':').unwrap_or((raw, ""));
            if host.is_empty() {
                return Err(bad("the host is missing"));
            }
            Ok(Destination {
                host: host.to_owned(),
                port: port_of(port)?,
            })
        }
        _ => match raw.parse::<Ipv6Addr>() {
            Ok(_) => Ok(Destination {
                host: raw.to_owned(),
                port: DEFAULT_PORT,
            }),
            Err(_) => Err(bad("write IPv6 addresses with a port as [ADDR]:PORT")),
        },
    }
}

/// `IP:PORT`, `[IPv6]:PORT`, or an IP alone for the default port.
pub fn parse_listen(raw: &str) -> Result<SocketAddr, Error> {
    if let Ok(addr) = raw.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bare = raw.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, DEFAULT_PORT)).map_err(|_| {
        Error::Usage(format!(
            "invalid listen address '{raw}': expected IP:PORT, e.g. 0.0.0.0:{DEFAULT_PORT} or [::]:{DEFAULT_PORT}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn destinations_parse() {
        let d = |h: &str, p| Destination {
            host: h.into(),
            port: p,
        };
        assert_eq!(parse_destination("host:9").unwrap(), d("host", 9));
        assert_eq!(
            parse_destination("10.0.0.5").unwrap(),
            d("10.0.0.5", DEFAULT_PORT)
        );
        assert_eq!(parse_destination("[::1]:8000").unwrap(), d("::1", 8000));
        assert_eq!(
            parse_destination("[fe80::1]").unwrap(),
            d("fe80::1", DEFAULT_PORT)
        );
        assert_eq!(parse_destination("::1").unwrap(), d("::1", DEFAULT_PORT));
        assert_eq!(
            parse_destination("[::1]:8000").unwrap().to_string(),
            "[::1]:8000"
        );
        for bad in [
            "",
            ":80",
            "host:",
            "host:0",
            "host:65536",
            "host:http",
            "[::1",
            "[nope]:1",
            "a:b:c",
            "[::1]x",
        ] {
            assert!(
                matches!(parse_destination(bad), Err(Error::Usage(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn sizes_parse_plain_bytes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1500"), Ok(1500));
        assert_eq!(parse_size(" 1500 "), Ok(1500));
        assert_eq!(parse_size("1500B"), Ok(1500));
        assert_eq!(parse_size("1500b"), Ok(1500));
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn sizes_parse_binary_units() {
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("2k"), Ok(2048));
        assert_eq!(parse_size("10M"), Ok(10 << 20));
        assert_eq!(parse_size("10MiB"), Ok(10 << 20));
        assert_eq!(parse_size("10mib"), Ok(10 << 20));
        assert_eq!(parse_size("10Mi"), Ok(10 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1 GiB"), Ok(1 << 30));
        assert_eq!(parse_size("3T"), Ok(3 << 40));
        assert_eq!(parse_size("3TiB"), Ok(3 << 40));
    }

    #[test]
    fn sizes_parse_decimal_units() {
        assert_eq!(parse_size("10KB"), Ok(10_000));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("10mb"), Ok(10_000_000));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_size("1TB"), Ok(1_000_000_000_000));
    }

    #[test]
    fn sizes_parse_fractions_rounding_down() {
        assert_eq!(parse_size("1.5G"), Ok(1_610_612_736));
        assert_eq!(parse_size("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_size("0.5K"), Ok(512));
        assert_eq!(parse_size(".5K"), Ok(512));
        assert_eq!(parse_size("2.K"), Ok(2048));
        // 0.001 KiB is 1.024 bytes, 1.9 bytes is 1 byte: fractions of a byte drop.
        assert_eq!(parse_size("0.001K"), Ok(1));
        assert_eq!(parse_size("1.9"), Ok(1));
        assert_eq!(
            parse_size("0.3333333333333333333333333333333T"),
            Ok(366_503_875_925)
        );
    }

    #[test]
    fn sizes_reject_what_is_not_a_size() {
        for (bad, says) in [
            ("", "empty"),
            ("   ", "empty"),
            ("-1", "negative"),
            ("-1.5G", "negative"),
            ("+5M", "not a number"),
            ("G", "not a number"),
            (".", "not a number"),
            ("1.2.3M", "not a number"),
            ("nan", "not a number"),
            ("inf", "not a number"),
            ("NaN", "not a number"),
            ("1e6", "unknown unit 'e6'"),
            ("5X", "unknown unit 'X'"),
            ("5 MiBs", "unknown unit 'MiBs'"),
            ("5KiBB", "unknown unit 'KiBB'"),
            ("0x10", "unknown unit 'x10'"),
            ("18446744073709551616", "too large"),
            ("99999999T", "too large"),
            ("16777216T", "too large"),
            ("99999999999999999999999999999999999999999", "too large"),
        ] {
            let e = parse_size(bad).expect_err(bad);
            assert!(e.contains(says), "{bad:?}: {e}");
        }
        assert_eq!(parse_size("16777215T"), Ok(16_777_215 << 40));
    }

    #[test]
    fn limit_rate_is_a_size_per_second_on_both_sides_and_zero_is_no_limit() {
        let send = |rate: &str| {
            let cli = Cli::try_parse_from(["xfer", "send", "--limit-rate", rate, "a", "h:1"])?;
            let Command::Send(args) = cli.command else {
                panic!("not send")
            };
            Ok::<_, clap::Error>(args.to_request().unwrap().limit_rate)
        };
        assert_eq!(send("50M").unwrap(), Some(50 << 20));
        assert_eq!(send("1.5MB").unwrap(), Some(1_500_000));
        assert_eq!(send("0").unwrap(), None);
        assert!(send("-1M").is_err());
        assert!(send("fast").is_err());
        let cli = Cli::try_parse_from(["xfer", "recv", "--limit-rate", "512K"]).unwrap();
        let Command::Recv(args) = cli.command else {
            panic!("not recv")
        };
        assert_eq!(args.to_config().unwrap().0.limit_rate, Some(512 << 10));
    }

    #[test]
    fn listen_addresses_parse() {
        assert_eq!(parse_listen("127.0.0.1:0").unwrap().port(), 0);
        assert_eq!(parse_listen("[::]:99").unwrap().port(), 99);
        assert_eq!(parse_listen("::1").unwrap().port(), DEFAULT_PORT);
        assert!(parse_listen("localhost:1").is_err());
        assert!(parse_listen("1.2.3.4:99999").is_err());
    }

    #[test]
    fn send_takes_paths_then_address() {
        let cli = Cli::try_parse_from(["xfer", "send", "a", "b/", "host:1"]).unwrap();
        let Command::Send(args) = cli.command else {
            panic!("not send")
        };
        let (paths, target) = args.target().unwrap();
        assert_eq!(paths, [PathBuf::from("a"), PathBuf::from("b/")]);
        assert_eq!(
            target,
            Target::Address(Destination {
                host: "host".into(),
                port: 1
            })
        );
    }

    fn target_of(args: &[&str]) -> Result<(Vec<PathBuf>, Target), Error> {
        let cli = Cli::try_parse_from(["xfer", "send"].iter().chain(args)).unwrap();
        let Command::Send(args) = cli.command else {
            panic!("not send")
        };
        args.target()
    }

    #[test]
    fn the_last_argument_is_the_address_unless_it_exists() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.txt");
        let laptop = dir.path().join("laptop");
        std::fs::write(&a, "a").unwrap();
        std::fs::write(&laptop, "l").unwrap();
        let (a, laptop) = (a.to_str().unwrap(), laptop.to_str().unwrap());
        let find = Target::Find { name: None };

        // Two existing files: both are sent, to a receiver found on the LAN.
        let (paths, target) = target_of(&[a, laptop]).unwrap();
        assert_eq!((paths.len(), target), (2, find.clone()));
        // One existing file alone.
        assert_eq!(target_of(&[a]).unwrap().1, find);
        // The old form: a last word that is not a path is the address,
        // parsed or rejected as before.
        let (paths, target) = target_of(&[a, "laptop"]).unwrap();
        assert_eq!(paths, [PathBuf::from(a)]);
        assert!(matches!(target, Target::Address(d) if d.host == "laptop"));
        assert!(matches!(
            target_of(&[a, "host:notaport"]),
            Err(Error::Usage(m)) if m.contains("invalid address 'host:notaport'")
        ));
        // A file here named like an address, last: which was meant?
        let odd = dir.path().join("10.0.0.5:7171");
        std::fs::write(&odd, "o").unwrap();
        assert!(matches!(
            target_of(&[a, odd.to_str().unwrap()]),
            Err(Error::Usage(m)) if m.contains("is both a file here and an address")
        ));
        // --to: every argument is a path.
        let (paths, target) = target_of(&["--to", "den", a, laptop]).unwrap();
        assert_eq!(paths.len(), 2);
        assert_eq!(
            target,
            Target::Find {
                name: Some("den".into())
            }
        );
    }

    #[test]
    fn an_address_in_the_wrong_place_says_where_it_goes() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.txt");
        std::fs::write(&a, "a").unwrap();
        let a = a.to_str().unwrap();
        for args in [
            &["10.0.0.5:7171", a][..],
            &["[::1]:9", a, "b.txt"],
            &["10.0.0.5"],
        ] {
            let Err(Error::Usage(message)) = target_of(args) else {
                panic!("{args:?} accepted")
            };
            assert!(
                message.contains("goes last") || message.contains("give the files first"),
                "{message}"
            );
        }
        let Err(Error::Usage(message)) = target_of(&["--to", "den", a, "10.0.0.5:7171"]) else {
            panic!("--to with an address accepted")
        };
        assert!(message.contains("not both"), "{message}");
        // Without an address, a missing path is reported before any search.
        let Err(Error::Usage(message)) = target_of(&[a, "--to", "den", "missing.txt"]) else {
            panic!("missing path accepted")
        };
        assert!(message.contains("cannot send 'missing.txt'"), "{message}");
    }

    #[test]
    fn get_takes_an_address_or_finds_the_server() {
        let target = |args: &[&str]| {
            let cli = Cli::try_parse_from([&["xfer", "get"], args].concat())
                .map_err(|e| Error::Usage(e.to_string()))?;
            let Command::Get(args) = cli.command else {
                panic!("not get")
            };
            args.target()
        };
        assert_eq!(target(&[]).unwrap(), Target::Find { name: None });
        assert_eq!(
            target(&["--to", "nas"]).unwrap(),
            Target::Find {
                name: Some("nas".into())
            }
        );
        assert!(matches!(
            target(&["nas:7000"]).unwrap(),
            Target::Address(d) if d.host == "nas" && d.port == 7000
        ));
        assert!(target(&["--to", "nas", "nas:7000"]).is_err());
        assert!(target(&["--to", ""]).is_err());
    }

    #[test]
    fn waits_parse() {
        assert_eq!(parse_wait("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_wait("3"), Ok(Duration::from_secs(3)));
        for bad in ["0", "-1", "x", "7200", "NaN"] {
            assert!(parse_wait(bad).is_err(), "{bad}");
        }
    }
}
