//! Turns [`Event`]s into what a person or a script sees: indicatif bars and
//! summary lines on stderr, JSON Lines on stdout, or nothing.
//!
//! Bars draw only when stderr is a terminal and `--quiet` is off; names from
//! the peer are escaped before they reach the terminal. JSON goes to stdout
//! whatever the other settings, one flushed line per event.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::events::{Event, Observer, Summary};
use crate::hashing::to_hex;
use crate::paths::escape_for_terminal;

/// What the user asked to see.
#[derive(Debug, Clone, Copy, Default)]
pub struct OutputMode {
    pub json: bool,
    pub quiet: bool,
}

/// Which side is reporting; the words and events differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Send,
    Recv,
}

/// The terminal and stdout side of a run.
pub struct Reporter {
    mode: OutputMode,
    role: Role,
    multi: MultiProgress,
    bars: Mutex<HashMap<u64, ProgressBar>>,
}

impl Reporter {
    pub fn new(mode: OutputMode, role: Role) -> Reporter {
        let target = if mode.quiet || !std::io::stderr().is_terminal() {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        Reporter {
            mode,
            role,
            multi: MultiProgress::with_draw_target(target),
            bars: Mutex::default(),
        }
    }

    /// The `listening on` line (or its JSON form): always printed, since
    /// scripts read the port from it.
    pub fn listening(&self, addr: &std::net::SocketAddr) {
        if self.mode.json {
            self.json(json!({"event": "listening", "addr": addr.to_string()}));
        } else {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "listening on {addr}");
            let _ = out.flush();
        }
    }

    /// The sender's closing line.
    pub fn sent(&self, summary: &Summary) {
        if self.mode.json {
            self.json(json!({
                "event": "summary", "files": summary.files, "skipped": summary.skipped,
                "failed": summary.failed, "bytes": summary.bytes, "secs": summary.secs,
                "verified": summary.failed == 0,
            }));
        }
        self.line(format!("sent {}", describe(summary)));
    }

    /// Removes every bar, e.g. before the final error line.
    pub fn clear_bars(&self) {
        let sessions: Vec<u64> = self
            .bars
            .lock()
            .map(|b| b.keys().copied().collect())
            .unwrap_or_default();
        for session in sessions {
            self.remove_bar(session);
        }
    }

    /// A line for a person on stderr, unless quiet; keeps bars intact.
    fn line(&self, text: String) {
        if !self.mode.quiet {
            self.multi.suspend(|| eprintln!("{text}"));
        }
    }

    fn json(&self, value: serde_json::Value) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{value}");
        let _ = out.flush();
    }

    fn bar(&self, session: u64) -> Option<ProgressBar> {
        self.bars.lock().ok()?.get(&session).cloned()
    }

    fn add_bar(&self, session: u64, len: Option<u64>, prefix: String) {
        let style = match len {
            Some(_) => ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {wide_msg}",
            ),
            None => ProgressStyle::with_template("{spinner} {prefix} {bytes} {bytes_per_sec} {wide_msg}"),
        };
        let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::hidden());
        if let Ok(style) = style {
            bar.set_style(style);
        }
        bar.set_prefix(prefix);
        let bar = self.multi.add(bar);
        bar.enable_steady_tick(Duration::from_millis(200));
        if let Ok(mut bars) = self.bars.lock() {
            bars.insert(session, bar);
        }
    }

    fn remove_bar(&self, session: u64) {
        if let Some(bar) = self.bars.lock().ok().and_then(|mut b| b.remove(&session)) {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
    }
}

impl Observer for Reporter {
    fn event(&self, event: Event) {
        match event {
            Event::Totals { session, bytes, .. } => {
                self.add_bar(session, Some(bytes), "sending".into());
            }
            Event::SessionStarted { session, peer } => {
                if self.role == Role::Recv {
                    self.add_bar(session, None, escape_for_terminal(&peer));
                }
            }
            Event::FileStarted { session, path, .. } => {
                if let Some(bar) = self.bar(session) {
                    bar.set_message(escape_for_terminal(&path));
                }
            }
            Event::Progress { session, bytes } => {
                if let Some(bar) = self.bar(session) {
                    bar.inc(bytes);
                }
            }
            Event::FileDone { peer, report, .. } => {
                let sha256 = to_hex(&report.sha256);
                match self.role {
                    Role::Recv => {
                        if self.mode.json {
                            self.json(json!({
                                "event": "received", "path": report.stored_as, "size": report.size,
                                "sha256": sha256, "skipped": report.skipped, "peer": peer,
                                "sent_as": report.path, "digest_in_header": report.digest_in_header,
                                "resumed_from": report.resumed_from,
                            }));
                        }
                        let verb = if report.skipped {
                            "already had"
                        } else {
                            "received"
                        };
                        self.line(format!(
                            "{verb} {} ({} bytes)",
                            escape_for_terminal(&report.stored_as),
                            report.size
                        ));
                    }
                    Role::Send => {
                        if self.mode.json {
                            self.json(json!({
                                "event": "sent", "path": report.path, "stored_as": report.stored_as,
                                "size": report.size, "sha256": sha256, "skipped": report.skipped,
                                "digest_in_header": report.digest_in_header,
                                "resumed_from": report.resumed_from,
                            }));
                        }
                    }
                }
            }
            Event::FileFailed { path, reason, .. } => {
                if self.mode.json {
                    self.json(json!({"event": "failed", "path": path, "reason": reason}));
                }
                // Failures print even when quiet: they are errors.
                let text = format!(
                    "failed: {}: {}",
                    escape_for_terminal(&path),
                    escape_for_terminal(&reason)
                );
                self.multi.suspend(|| eprintln!("{text}"));
            }
            Event::SessionEnded {
                session,
                peer,
                summary,
                error,
            } => {
                self.remove_bar(session);
                if self.role != Role::Recv {
                    return;
                }
                if self.mode.json {
                    let mut value = json!({
                        "event": "session", "peer": peer, "files": summary.files,
                        "skipped": summary.skipped, "failed": summary.failed,
                        "bytes": summary.bytes, "secs": summary.secs,
                        "ok": error.is_none() && summary.failed == 0,
                    });
                    if let Some(e) = &error {
                        value["error"] = json!(e);
                    }
                    self.json(value);
                }
                let from = escape_for_terminal(&peer);
                match error {
                    None => self.line(format!("from {from}: received {}", describe(&summary))),
                    Some(_) => self.line(format!(
                        "from {from}: session failed after {}",
                        describe(&summary)
                    )),
                }
            }
        }
    }
}

/// "3 files (1 already there), 1.5 MiB in 0.4 s (3.7 MiB/s), all verified"
fn describe(s: &Summary) -> String {
    let rate = if s.secs > 0.0 {
        s.bytes as f64 / s.secs
    } else {
        0.0
    };
    let skipped = if s.skipped > 0 {
        format!(" ({} already there)", s.skipped)
    } else {
        String::new()
    };
    let verdict = if s.failed == 0 {
        "all verified".to_owned()
    } else {
        format!("{} failed", s.failed)
    };
    let noun = if s.files == 1 { "file" } else { "files" };
    format!(
        "{} {noun}{skipped}, {} in {:.2} s ({}/s), {verdict}",
        s.files,
        indicatif::HumanBytes(s.bytes),
        s.secs,
        indicatif::HumanBytes(rate as u64)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_line_reads_well() {
        let s = Summary {
            files: 3,
            skipped: 1,
            failed: 0,
            bytes: 2048,
            secs: 2.0,
        };
        assert_eq!(
            describe(&s),
            "3 files (1 already there), 2.00 KiB in 2.00 s (1.00 KiB/s), all verified"
        );
        let s = Summary {
            files: 1,
            failed: 2,
            ..Summary::default()
        };
        assert!(describe(&s).ends_with("2 failed"));
    }
}
