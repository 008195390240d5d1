//! The parsed command lines checked and turned into the configurations
//! the library runs on: what clap cannot check by itself, where a send
//! goes, and the codes.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::values::{idle, parse_destination, parse_listen, rate};
use super::{
    AnnounceArgs, CodeArgs, CodeSource, GetArgs, RecvArgs, SendArgs, ServeArgs, DEFAULT_PORT,
};
use crate::code::Code;
use crate::error::Error;
use crate::receiver::{GetConfig, Limits, RecvConfig};
use crate::sender::{Destination, SendConfig, ServeConfig};

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
pub(super) fn looks_like_address(word: &str) -> bool {
    word.parse::<IpAddr>().is_ok()
        || ((word.contains(':') || word.starts_with('[')) && parse_destination(word).is_ok())
}

pub(super) fn exists(path: &std::path::Path) -> bool {
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
        let code = self
            .code
            .resolve(|| ask_for_code("code (from the receiving machine): "))?;
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

/// What `recv` and `serve` check alike before they listen: room for one
/// connection at least and the announcement's flags. Returns the code,
/// a fresh one for `--code` with none given.
fn listener_checks(
    max_connections: usize,
    code: &CodeArgs,
    announce: &AnnounceArgs,
) -> Result<Option<(Code, CodeSource)>, Error> {
    if max_connections == 0 {
        return Err(Error::Usage("--max-connections must be at least 1".into()));
    }
    let code = code.resolve(|| Ok((Code::generate(), CodeSource::Generated)))?;
    announce.check()?;
    Ok(code)
}

impl RecvArgs {
    /// Checks the values clap cannot; with `--code` and no code given, a
    /// fresh one is generated. Says where the code came from.
    pub fn to_config(&self) -> Result<(RecvConfig, Option<CodeSource>), Error> {
        let code = listener_checks(self.max_connections, &self.code, &self.announce)?;
        let source = code.as_ref().map(|(_, source)| *source);
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
        let code = listener_checks(self.max_connections, &self.code, &self.announce)?;
        let source = code.as_ref().map(|(_, source)| *source);
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
        let code = self
            .code
            .resolve(|| ask_for_code("code (from the serving machine): "))?;
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

/// A code typed at the terminal; Ctrl-C there is an interruption like any
/// other (exit code 130).
fn ask_for_code(question: &str) -> Result<(Code, CodeSource), Error> {
    let typed = crate::code::prompt(question).map_err(|e| match e.kind() {
        std::io::ErrorKind::Interrupted => Error::Interrupted,
        _ => Error::Usage(format!("cannot read the code: {e}")),
    })?;
    let code = Code::parse(&typed).map_err(|e| Error::Usage(format!("invalid code: {e}")))?;
    Ok((code, CodeSource::Given))
}
