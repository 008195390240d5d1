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
       or the peer ended the session early (stopped, interrupted, busy)
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
  xfer send -- -odd-name.txt host:7171";

const RECV_EXAMPLES: &str = "\
Examples:
  xfer recv --dir ~/inbox                  # all interfaces, port 7171
  xfer recv --listen 127.0.0.1:0 --once    # a free port, one sender, then exit
  xfer recv --json --max-size 10G --dir /srv/drop";

const SERVE_EXAMPLES: &str = "\
Examples:
  xfer serve photos/ notes.txt             # all interfaces, port 7171, until Ctrl-C
  xfer serve --listen 127.0.0.1:0 --once big.iso  # a free port, one getter, then exit
  xfer serve --code report.pdf             # getters need the printed code";

const GET_EXAMPLES: &str = "\
Examples:
  xfer get nas.local --dir ~/inbox         # port 7171
  xfer get 192.168.1.20:7171 --json | jq .
  xfer get --code '[2001:db8::5]:7171'     # asks for the code";

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
pub struct SendArgs {
    /// Files and directories to send (directories are sent recursively).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,

    /// Receiver as HOST:PORT, [IPv6]:PORT, or HOST alone for port 7171.
    #[arg(value_name = "ADDR")]
    pub addr: String,

    /// Give up when the connection makes no progress for this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub idle_timeout: u64,

    /// Neither read nor update the digest cache (~/.cache/xfer/digests.jsonl).
    #[arg(long)]
    pub no_cache: bool,

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

    /// Refuse files larger than this (bytes; K, M, G, T suffixes allowed).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_size: Option<u64>,

    /// Refuse what would take one sender's session over this many bytes.
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

    #[command(flatten)]
    pub code: CodeArgs,

    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// Server as HOST:PORT, [IPv6]:PORT, or HOST alone for port 7171.
    #[arg(value_name = "ADDR")]
    pub addr: String,

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

    #[command(flatten)]
    pub code: CodeArgs,

    #[command(flatten)]
    pub output: OutputArgs,
}

/// The code flags shared by the subcommands.
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

impl SendArgs {
    /// Checks the values clap cannot.
    /// Checks the values clap cannot; a code not given otherwise is asked
    /// for on the terminal, without echo.
    pub fn to_config(&self) -> Result<SendConfig, Error> {
        address_last(&self.paths, &self.addr)?;
        let code = self.code.resolve(|| {
            let typed = crate::code::prompt("code (from the receiving machine): ")
                .map_err(|e| Error::Usage(format!("cannot read the code: {e}")))?;
            let code =
                Code::parse(&typed).map_err(|e| Error::Usage(format!("invalid code: {e}")))?;
            Ok((code, CodeSource::Given))
        })?;
        Ok(SendConfig {
            code: code.map(|(code, _)| code),
            paths: self.paths.clone(),
            destination: parse_destination(&self.addr)?,
            idle_timeout: idle(self.idle_timeout)?,
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
        let config = RecvConfig {
            code: code.map(|(code, _)| code),
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
        let config = ServeConfig {
            code: code.map(|(code, _)| code),
            paths: self.paths.clone(),
            listen: parse_listen(&self.listen)?,
            once: self.once,
            max_connections: self.max_connections,
            idle_timeout: idle(self.idle_timeout)?,
            handshake_timeout: idle(self.handshake_timeout)?,
            digest_cache: if self.no_cache {
                None
            } else {
                crate::sender::digest_cache::default_location()
            },
        };
        Ok((config, source))
    }
}

impl GetArgs {
    /// Checks the values clap cannot; a code not given otherwise is asked
    /// for on the terminal, without echo.
    pub fn to_config(&self) -> Result<GetConfig, Error> {
        let code = self.code.resolve(|| {
            let typed = crate::code::prompt("code (from the serving machine): ")
                .map_err(|e| Error::Usage(format!("cannot read the code: {e}")))?;
            let code =
                Code::parse(&typed).map_err(|e| Error::Usage(format!("invalid code: {e}")))?;
            Ok((code, CodeSource::Given))
        })?;
        Ok(GetConfig {
            code: code.map(|(code, _)| code),
            source: parse_destination(&self.addr)?,
            dir: self.dir.clone(),
            overwrite: self.overwrite,
            idle_timeout: idle(self.idle_timeout)?,
            limits: Limits {
                max_file_size: self.max_size,
                max_session_bytes: self.max_session_size,
                max_entries: self.max_files,
            },
            keep_partials: Duration::from_secs(self.keep_partials_days.saturating_mul(24 * 3600)),
        })
    }
}

/// A byte count: digits with an optional K, M, G or T suffix (powers of 1024).
pub fn parse_size(raw: &str) -> Result<u64, String> {
    let raw = raw.trim();
    let (digits, shift) = match raw.char_indices().last() {
        Some((i, 'K' | 'k')) => (&raw[..i], 10),
        Some((i, 'M' | 'm')) => (&raw[..i], 20),
        Some((i, 'G' | 'g')) => (&raw[..i], 30),
        Some((i, 'T' | 't')) => (&raw[..i], 40),
        _ => (raw, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{raw}' is not a size such as 500M or 2G"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("'{raw}' is too large"))
}

/// `HOST:PORT`, `[IPv6]:PORT`, `HOST`, `[IPv6]` or a bare IPv6 address.
/// `xfer send 10.0.0.5:7171 file.bin`: the address came first. Told as
/// such, instead of as a missing file and an unknown host.
fn address_last(paths: &[PathBuf], addr: &str) -> Result<(), Error> {
    let Some(first) = paths.first().and_then(|p| p.to_str()) else {
        return Ok(());
    };
    let looks_like_address = |s: &str| s.contains(':') && parse_destination(s).is_ok();
    if std::path::Path::new(addr).exists()
        && !std::path::Path::new(first).exists()
        && looks_like_address(first)
    {
        return Err(Error::Usage(format!(
            "'{first}' looks like the receiver's address and '{addr}' is a local file: \
             the address goes last (xfer send PATH... {first})"
        )));
    }
    Ok(())
}

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
    fn sizes_parse() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1500"), Ok(1500));
        assert_eq!(parse_size("2K"), Ok(2048));
        assert_eq!(parse_size("3m"), Ok(3 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("1.5G").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("99999999T").is_err());
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
        assert_eq!(args.paths, [PathBuf::from("a"), PathBuf::from("b/")]);
        assert_eq!(args.addr, "host:1");
        assert!(Cli::try_parse_from(["xfer", "send", "host:1"]).is_err());
    }
}
