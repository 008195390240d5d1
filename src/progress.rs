//! Turns [`Event`]s into what a person or a script sees: indicatif bars and
//! summary lines on stderr, JSON Lines on stdout, or nothing.
//!
//! Bars draw only when stderr is a terminal and `--quiet` is off; every
//! line is made safe by [`term`] once, as it is written. JSON goes to stdout
//! whatever the other settings, one flushed line per event.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::events::{Event, FileReport, Observer, Outcome, Summary};
use crate::hashing::to_hex;
use crate::term;

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
    /// Pull mode (`serve`, `get`): the sender serves many peers, the
    /// receiver is a process of one session.
    pull: bool,
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
            pull: false,
        }
    }

    /// The same reporter for pull mode: `serve` names the getter in each
    /// closing line; `get` leaves a session that never started to the
    /// error line.
    pub fn pull_mode(mut self) -> Reporter {
        self.pull = true;
        self
    }

    /// The `listening on` line (or its JSON form): always printed, since
    /// scripts read the port from it.
    pub fn listening(&self, addr: &std::net::SocketAddr) {
        if self.mode.json {
            self.json(json!({"v": EVENTS_VERSION, "event": "listening", "addr": addr.to_string()}));
        } else {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "listening on {addr}");
            let _ = out.flush();
        }
    }

    /// What a coded receiver tells the person starting it: the command for
    /// the other machine and, when it made the code up, the code itself.
    /// Printed even when quiet: without it nobody can send.
    pub fn code(&self, code: &crate::code::Code, generated: bool, command: &str) {
        if self.mode.json {
            let mut value = json!({
                "v": EVENTS_VERSION, "event": "code", "number": code.number(),
                "generated": generated, "command": command,
            });
            if generated {
                value["code"] = json!(code.to_string());
            }
            self.json(value);
        }
        if generated {
            self.problem(format!("code: {code}"));
            self.problem(format!(
                "on the other machine: {command}  (it asks for the code)"
            ));
        } else {
            self.problem(format!(
                "on the other machine: {command}  (with the same code)"
            ));
        }
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
    /// Made terminal-safe here, once, whatever it quotes.
    fn line(&self, text: String) {
        if !self.mode.quiet {
            self.problem(text);
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
                    self.add_bar(session, None, term::escape(&peer).into_owned());
                }
            }
            Event::FileStarted { session, path, .. } => {
                if let Some(bar) = self.bar(session) {
                    bar.set_message(term::escape(&path).into_owned());
                }
            }
            Event::Progress { session, bytes } => {
                if let Some(bar) = self.bar(session) {
                    bar.inc(bytes);
                }
            }
            Event::FileDone { peer, report, .. } => self.file_done(&peer, &report),
            Event::SessionEnded {
                session,
                peer,
                summary,
                error,
                exit_code,
            } => {
                self.remove_bar(session);
                self.session_ended(&peer, &summary, error.as_deref(), exit_code);
            }
        }
    }
}

impl Reporter {
    fn file_done(&self, peer: &str, report: &FileReport) {
        if self.mode.json {
            self.json(file_event(self.role, peer, report));
        }
        let shown = report.stored_as.as_deref().unwrap_or(&report.path);
        match (&report.outcome, self.role) {
            // Problems print even when quiet: they are errors.
            (Outcome::Refused(reason), _) => {
                self.problem(format!("refused: {}: {}", report.path, reason))
            }
            (Outcome::Failed(reason), _) => {
                self.problem(format!("failed: {}: {}", report.path, reason))
            }
            (Outcome::Stored, Role::Recv) => {
                self.line(format!("received {shown} ({} bytes)", report.size))
            }
            (Outcome::Skipped, Role::Recv) => {
                self.line(format!("already had {shown} ({} bytes)", report.size))
            }
            (Outcome::Stored | Outcome::Skipped, Role::Send) => {}
        }
    }

    fn session_ended(&self, peer: &str, summary: &Summary, error: Option<&str>, exit_code: u8) {
        if self.mode.json {
            self.json(session_event(self.role, peer, summary, error, exit_code));
        }
        match self.role {
            Role::Send => {
                // Before anything was offered the error line says it all.
                if summary.offered > 0 {
                    let to = if self.pull {
                        format!("to {peer}: ")
                    } else {
                        String::new()
                    };
                    self.line(format!("{to}sent {}", describe(summary, error.is_none())));
                }
            }
            Role::Recv if self.pull && summary.offered == 0 && error.is_some() => {}
            Role::Recv => self.line(session_line(peer, summary, error)),
        }
    }

    /// A line about a file that did not arrive: printed even when quiet.
    fn problem(&self, text: String) {
        let text = term::for_stderr(&text);
        self.multi.suspend(|| eprintln!("{text}"));
    }
}

/// Version of the JSON Lines schema in docs/EVENTS.md.
pub const EVENTS_VERSION: u32 = 1;

/// The JSON object for one file's final state.
fn file_event(role: Role, peer: &str, report: &FileReport) -> serde_json::Value {
    let event = match (&report.outcome, role) {
        (Outcome::Stored | Outcome::Skipped, Role::Send) => "sent",
        (Outcome::Stored | Outcome::Skipped, Role::Recv) => "received",
        (Outcome::Refused(_), _) => "refused",
        (Outcome::Failed(_), _) => "failed",
    };
    let mut value = json!({
        "v": EVENTS_VERSION, "event": event, "peer": peer,
        "path": report.stored_as.as_deref().unwrap_or(&report.path),
        "offered_as": report.path, "size": report.size,
    });
    if report.outcome.delivered() {
        value["skipped"] = json!(report.skipped());
        value["resumed_from"] = json!(report.resumed_from);
        value["digest_in_header"] = json!(report.digest_in_header);
        value["attempts"] = json!(report.attempts);
    }
    if let Some(why) = &report.retried_after {
        value["retried_after"] = json!(why);
    }
    if let Some(sha256) = &report.sha256 {
        value["sha256"] = json!(to_hex(sha256));
    }
    if let Some(reason) = report.outcome.reason() {
        value["reason"] = json!(reason);
    }
    value
}

/// The JSON object closing one session: `summary` on send, `session` on recv.
fn session_event(
    role: Role,
    peer: &str,
    s: &Summary,
    error: Option<&str>,
    exit_code: u8,
) -> serde_json::Value {
    let mut value = json!({
        "v": EVENTS_VERSION,
        "event": match role { Role::Send => "summary", Role::Recv => "session" },
        "peer": peer, "files": s.delivered(), "offered": s.offered, "stored": s.stored,
        "skipped": s.skipped, "refused": s.refused, "failed": s.failed, "bytes": s.bytes,
        "secs": s.secs,
    });
    let ok = error.is_none() && s.undelivered() == 0;
    match role {
        Role::Send => {
            value["verified"] = json!(ok);
            value["exit_code"] = json!(exit_code);
        }
        Role::Recv => {
            value["ok"] = json!(ok);
            value["kept_files"] = json!(s.kept_files);
            value["kept_bytes"] = json!(s.kept_bytes);
            value["kept_of"] = json!(s.kept_of);
        }
    }
    if let Some(e) = error {
        value["error"] = json!(e);
    }
    value
}

/// The receiver's closing line for one sender: what arrived and, when the
/// session was cut short, why and what is kept for a resume.
fn session_line(peer: &str, summary: &Summary, error: Option<&str>) -> String {
    let mut text = match error {
        None => format!("from {peer}: received {}", describe(summary, true)),
        Some(e) => format!(
            "from {peer}: session ended early ({e}); received {}",
            describe(summary, false)
        ),
    };
    if summary.kept_files > 0 {
        text.push_str(&format!(
            "; kept {} of {} for resume",
            indicatif::HumanBytes(summary.kept_bytes),
            indicatif::HumanBytes(summary.kept_of)
        ));
    }
    text
}

/// "3 of 4 files (1 already there, 1 refused), 1.5 MiB in 0.4 s (3.7 MiB/s), all verified"
fn describe(s: &Summary, complete: bool) -> String {
    let rate = if s.secs > 0.0 {
        s.bytes as f64 / s.secs
    } else {
        0.0
    };
    let delivered = s.delivered();
    let count = if delivered == s.offered {
        let noun = if delivered == 1 { "file" } else { "files" };
        format!("{delivered} {noun}")
    } else {
        format!("{delivered} of {} files", s.offered)
    };
    let notes: Vec<String> = [
        (s.skipped, "already there"),
        (s.refused, "refused"),
        (s.failed, "failed"),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    let notes = if notes.is_empty() {
        String::new()
    } else {
        format!(" ({})", notes.join(", "))
    };
    let verdict = if complete && s.undelivered() == 0 {
        ", all verified"
    } else {
        ""
    };
    format!(
        "{count}{notes}, {} in {:.2} s ({}/s){verdict}",
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
            offered: 3,
            stored: 2,
            skipped: 1,
            bytes: 2048,
            secs: 2.0,
            ..Summary::default()
        };
        assert_eq!(
            describe(&s, true),
            "3 files (1 already there), 2.00 KiB in 2.00 s (1.00 KiB/s), all verified"
        );
        let s = Summary {
            offered: 4,
            stored: 1,
            refused: 1,
            failed: 2,
            ..Summary::default()
        };
        assert!(describe(&s, true).starts_with("1 of 4 files (1 refused, 2 failed), "));
        assert!(!describe(&s, true).contains("verified"));
    }

    #[test]
    fn a_cut_session_says_what_was_kept_for_resume() {
        let s = Summary {
            offered: 1,
            kept_files: 1,
            kept_bytes: 118 << 20,
            kept_of: 1 << 30,
            ..Summary::default()
        };
        let line = session_line("10.0.0.2:5000", &s, Some("the sender was interrupted"));
        assert!(
            line.starts_with("from 10.0.0.2:5000: session ended early (the sender was interrupted); received 0 of 1 files,"),
            "{line}"
        );
        assert!(
            line.ends_with("; kept 118.00 MiB of 1.00 GiB for resume"),
            "{line}"
        );
        assert!(!line.contains("verified"), "{line}");
    }

    #[test]
    fn an_unfinished_session_is_never_all_verified() {
        let s = Summary::default();
        assert!(!describe(&s, false).contains("verified"));
    }
}
