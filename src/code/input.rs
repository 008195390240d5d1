//! Where a code comes from when it is not on the command line (argv is
//! visible to other users): the terminal, with echo off, or a file.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustix::termios::{
    self, LocalModes, OptionalActions, QueueSelector, SpecialCodeIndex, Termios,
};
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
/// and on error. The terminal hands over keys one by one meanwhile, and
/// its signal keys arrive as bytes: Ctrl-C (or Ctrl-\\) ends the prompt
/// with an [`io::ErrorKind::Interrupted`] error instead of killing the
/// process, which would leave echo off. Backspace, Ctrl-U and Ctrl-W edit
/// the line as they would in the terminal's own line mode. A signal that
/// kills the process meanwhile (SIGTERM, SIGHUP) leaves the terminal in
/// that mode; `stty sane` or `reset` restores it.
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
        let line = read_line(&mut &tty, MAX_LINE);
        if line.is_err() {
            // What was typed past a refused line or after Ctrl-C is not
            // for the shell that reads the terminal next.
            let _ = termios::tcflush(&tty, QueueSelector::IFlush);
        }
        line
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

/// Echo, line mode and signal keys off while alive (the line is edited
/// by [`read_line`]); the saved mode back on drop.
struct EchoOff<'a> {
    tty: &'a File,
    original: &'a Termios,
}

impl<'a> EchoOff<'a> {
    fn new(tty: &'a File, original: &'a Termios) -> io::Result<Self> {
        let mut quiet = original.clone();
        quiet
            .local_modes
            .remove(LocalModes::ECHO | LocalModes::ICANON | LocalModes::ISIG | LocalModes::IEXTEN);
        // Each key as it is typed.
        quiet.special_codes[SpecialCodeIndex::VMIN] = 1;
        quiet.special_codes[SpecialCodeIndex::VTIME] = 0;
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

/// Keys with a meaning at the prompt.
const CTRL_C: u8 = 0x03;
const CTRL_D: u8 = 0x04;
const BACKSPACE: u8 = 0x08;
const CTRL_U: u8 = 0x15;
const CTRL_W: u8 = 0x17;
const CTRL_BACKSLASH: u8 = 0x1c;
const DELETE: u8 = 0x7f;

/// One line typed key by key, without its line ending, at most `limit`
/// bytes: Backspace or Delete erases a character, Ctrl-U the line,
/// Ctrl-W a word; Ctrl-C or Ctrl-\\ interrupts, Ctrl-D ends the line (an
/// empty one is an error); other control keys are ignored. Read a byte
/// at a time so no buffer holds more of the secret than the returned
/// string, and that string never reallocates (which would leave a copy
/// behind).
fn read_line(reader: &mut impl Read, limit: usize) -> io::Result<Zeroizing<String>> {
    let mut bytes = Zeroizing::new(Vec::with_capacity(limit));
    let mut byte = Zeroizing::new([0u8; 1]);
    loop {
        match reader.read(&mut byte[..]) {
            Ok(0) if bytes.is_empty() => return Err(nothing_typed()),
            Ok(0) => break,
            Ok(_) => match byte[0] {
                CTRL_D if bytes.is_empty() => return Err(nothing_typed()),
                b'\n' | b'\r' | CTRL_D => break,
                CTRL_C | CTRL_BACKSLASH => {
                    return Err(io::Error::new(io::ErrorKind::Interrupted, "interrupted"))
                }
                BACKSPACE | DELETE => erase_char(&mut bytes),
                CTRL_U => bytes.clear(),
                CTRL_W => erase_word(&mut bytes),
                key if key < 0x20 => {}
                _ if bytes.len() == limit => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("the line typed is longer than {limit} bytes; that is not a code"),
                    ))
                }
                key => bytes.push(key),
            },
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
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

fn nothing_typed() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "no code was typed")
}

/// Drops the last character (all the bytes of a multi-byte one).
fn erase_char(bytes: &mut Vec<u8>) {
    while let Some(b) = bytes.pop() {
        if b & 0xc0 != 0x80 {
            break;
        }
    }
}

/// Drops the last word and the spaces after it.
fn erase_word(bytes: &mut Vec<u8>) {
    while bytes.last() == Some(&b' ') {
        bytes.pop();
    }
    while bytes.last().is_some_and(|&b| b != b' ') {
        bytes.pop();
    }
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
