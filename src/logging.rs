//! Diagnostics on stderr through the `log` facade: warnings always, debug
//! detail with `-v`. Messages are made terminal-safe here, the one place
//! for log lines, since they may quote a peer; call sites do not escape.

use log::{Level, LevelFilter, Metadata, Record};

use crate::term;

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
            eprintln!("{label}: {}", term::for_stderr(&record.args().to_string()));
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
