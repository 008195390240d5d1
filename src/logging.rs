//! Diagnostics on stderr through the `log` facade: warnings always, debug
//! detail with `-vv`. Messages are made terminal-safe here, the one place
//! for log lines, since they may quote a peer; call sites do not escape.
//! While progress lines are drawn, a message is printed above them (the
//! lines are taken down and redrawn), never into the middle of one.

use std::sync::OnceLock;

use indicatif::MultiProgress;
use log::{Level, LevelFilter, Metadata, Record};

use crate::term;

/// The progress lines on screen, once a reporter draws any.
static BARS: OnceLock<MultiProgress> = OnceLock::new();

/// Log messages from now on go above `bars`.
pub fn print_above(bars: &MultiProgress) {
    let _ = BARS.set(bars.clone());
}

struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            let label = match record.level() {
                Level::Error => "error",
                Level::Warn => "warning",
                Level::Info => "info",
                Level::Debug | Level::Trace => "debug",
            };
            let text = term::for_stderr(&record.args().to_string()).into_owned();
            match BARS.get() {
                Some(bars) => bars.suspend(|| eprintln!("{label}: {text}")),
                None => eprintln!("{label}: {text}"),
            }
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

/// Installs the logger; `verbose` adds debug messages.
pub fn init(verbose: bool) {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(if verbose {
            LevelFilter::Debug
        } else {
            LevelFilter::Warn
        });
    }
}
