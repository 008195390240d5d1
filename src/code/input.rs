//! Where a code comes from when it is not on the command line (argv is
//! visible to other users): the terminal, with echo off, or a file.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustix::termios::{self, LocalModes, OptionalActions, Termios};
use zeroize::Zeroizing;

use super::{Code, CodeError};

/// The longest line read as a code; a code is at most 36 characters, the
/// rest is room for spaces and slips.
const MAX_LINE: usize = 256;

/// The largest code file read.
const MAX_FILE: u64 = 4096;

const NO_TERMINAL: &str =
    "no terminal to ask for the code on; set XFER_CODE or use --code-file FILE";

/// Asks `question` on the controlling terminal (`/dev/tty`, so it works when
/// stdin and stdout are redirected) and reads one line with echo off.
///
/// The terminal's previous mode is restored before returning, on success
/// and on error. A signal that kills the process while it waits (Ctrl-C
/// without a handler) leaves echo off, as with other password prompts;
/// `stty sane` or `reset` restores it.
pub fn prompt(question: &str) -> io::Result<Zeroizing<String>> {
    let tty = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(no_terminal)?;
    let original = termios::tcgetattr(&tty).map_err(|e| no_terminal(e.into()))?;
    let line = {
        let _echo_off = EchoOff::new(&tty, &original)?;
        let mut out = &tty;
        out.write_all(question.as_bytes())?;
        out.flush()?;
        read_line(&mut &tty, MAX_LINE)
    };
    // Echo was off, so the Enter key did not show: end the prompt's line,
    // also when reading failed.
    let _ = (&tty).write_all(b"\n");
    line
}

fn no_terminal(source: io::Error) -> io::Error {
    io::Error::new(source.kind(), NoTerminal(source))
}

#[derive(Debug, thiserror::Error)]
#[error("{NO_TERMINAL}")]
struct NoTerminal(#[source] io::Error);

/// Echo off while alive; the saved mode back on drop.
struct EchoOff<'a> {
    tty: &'a File,
    original: &'a Termios,
}

impl<'a> EchoOff<'a> {
    fn new(tty: &'a File, original: &'a Termios) -> io::Result<Self> {
        let mut quiet = original.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        // `Now`, not `Flush`: a flush would drop what was typed ahead.
        termios::tcsetattr(tty, OptionalActions::Now, &quiet)?;
        Ok(EchoOff { tty, original })
    }
}

impl Drop for EchoOff<'_> {
    fn drop(&mut self) {
        if let Err(e) = termios::tcsetattr(self.tty, OptionalActions::Now, self.original) {
            log::warn!("could not turn terminal echo back on ({e}); run 'stty sane'");
        }
    }
}

/// One line, without its line ending, at most `limit` bytes. Read a byte at
/// a time so no buffer holds more of the secret than the returned string,
/// and that string never reallocates (which would leave a copy behind).
fn read_line(reader: &mut impl Read, limit: usize) -> io::Result<Zeroizing<String>> {
    let mut bytes = Zeroizing::new(Vec::with_capacity(limit));
    let mut byte = Zeroizing::new([0u8; 1]);
    loop {
        match reader.read(&mut byte[..]) {
            Ok(0) if bytes.is_empty() => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "no code was typed",
                ))
            }
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if bytes.len() == limit => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the line typed is longer than {limit} bytes; that is not a code"),
                ))
            }
            Ok(_) => bytes.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if bytes.last() == Some(&b'\r') {
        bytes.pop();
    }
    let mut line = Zeroizing::new(String::with_capacity(limit));
    match std::str::from_utf8(&bytes) {
        Ok(text) => line.push_str(text),
        Err(_) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the line typed is not valid UTF-8",
            ))
        }
    }
    Ok(line)
}

fn readable_by_others(mode: u32) -> bool {
    mode & 0o044 != 0
}

/// Why a code file gave no code.
#[derive(Debug, thiserror::Error)]
pub enum CodeFileError {
    #[error("cannot read code file {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("code file {} is larger than {MAX_FILE} bytes; it should hold one code", .path.display())]
    TooLarge { path: PathBuf },
    #[error("code file {} has no code in it", .path.display())]
    Empty { path: PathBuf },
    #[error("code file {} does not hold a valid code", .path.display())]
    Invalid {
        path: PathBuf,
        #[source]
        source: CodeError,
    },
}

/// The code on the first non-empty line of `path`. Warns (`log::warn!`)
/// when the file is readable by group or others.
pub fn read_code_file(path: &Path) -> Result<Code, CodeFileError> {
    let read_err = |source| CodeFileError::Read {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let mode = file.metadata().map_err(read_err)?.permissions().mode();
    if readable_by_others(mode) {
        log::warn!(
            "code file {} is readable by other users (mode {:03o}); chmod 600 it",
            path.display(),
            mode & 0o777
        );
    }
    let mut text = Zeroizing::new(String::with_capacity(MAX_FILE as usize + 1));
    file.take(MAX_FILE + 1)
        .read_to_string(&mut text)
        .map_err(read_err)?;
    if text.len() as u64 > MAX_FILE {
        return Err(CodeFileError::TooLarge {
            path: path.to_owned(),
        });
    }
    let Some(line) = text.lines().find(|line| !line.trim().is_empty()) else {
        return Err(CodeFileError::Empty {
            path: path.to_owned(),
        });
    };
    Code::parse(line).map_err(|source| CodeFileError::Invalid {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests;
