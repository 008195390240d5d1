//! Turns [`Event`]s into what a person or a script sees: progress lines and
//! summaries on stderr, JSON Lines on stdout, or nothing.
//!
//! Progress lines draw only when stderr is a terminal and `--quiet` is off;
//! each is rendered by [`line`] to fit the screen, from the [`Meter`] the
//! session's ledger keeps. Every line is made safe by [`term`] once, as it
//! is written. JSON goes to stdout whatever the other settings, one flushed
//! line per event.

mod line;
mod summary;

use std::collections::{HashMap, VecDeque};
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::events::{Event, FileReport, Meter, Observer, Outcome, Summary};
use crate::hashing::to_hex;
use crate::term;
use line::View;
use summary::{describe, failed_line, session_line, FAILED_NAMED};

/// What the user asked to see.
#[derive(Debug, Clone, Copy, Default)]
pub struct OutputMode {
    pub json: bool,
    pub quiet: bool,
    /// A line per file, not only per session (`-v`).
    pub verbose: bool,
}

/// Which side is reporting; the words and events differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Send,
    Recv,
}

/// How often a progress line is redrawn, whether or not bytes moved (so
/// the rate and ETA of a stalled transfer say so).
const REDRAW: Duration = Duration::from_millis(100);
/// The rate is measured over about this much recent time.
const RATE_WINDOW: Duration = Duration::from_secs(5);
/// Before this much time has passed, the rate is not shown.
const RATE_SETTLE: Duration = Duration::from_millis(300);

/// What one session's line shows, shared with the line's renderer.
#[derive(Default)]
struct LineState {
    view: View,
    /// `(when, moved)` a few times a second, for the rate.
    samples: VecDeque<(Instant, u64)>,
}

impl LineState {
    fn moved(&mut self, meter: Meter) {
        self.view.meter = meter;
        // The rate is measured from the first byte moved, not from before
        // the connection was made.
        if meter.moved == 0 {
            return;
        }
        let now = Instant::now();
        match self.samples.back() {
            Some((at, _)) if now.duration_since(*at) < REDRAW => {}
            _ => self.samples.push_back((now, meter.moved)),
        }
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|(at, _)| now.duration_since(*at) > RATE_WINDOW)
        {
            self.samples.pop_front();
        }
    }

    /// Bytes per second from the newest sample at least a window old (or
    /// the oldest there is) to now: a stall shows as a falling rate.
    fn rate(&self, now: Instant) -> Option<f64> {
        let (at, moved) = *self
            .samples
            .iter()
            .rev()
            .find(|(at, _)| now.duration_since(*at) >= RATE_WINDOW)
            .or(self.samples.front())?;
        let span = now.duration_since(at);
        (span >= RATE_SETTLE)
            .then(|| self.view.meter.moved.saturating_sub(moved) as f64 / span.as_secs_f64())
    }

    fn render(&self, width: usize) -> String {
        let mut view = self.view.clone();
        view.rate = self.rate(Instant::now());
        line::render(&view, width)
    }
}

/// One session as the reporter follows it.
#[derive(Default)]
struct Tracked {
    line: Arc<Mutex<LineState>>,
    bar: Option<ProgressBar>,
    /// Failed files by name, the first few, for the summary.
    failed: Vec<String>,
    /// Its line was drawn for the last time.
    ended: bool,
}

/// The terminal and stdout side of a run.
pub struct Reporter {
    mode: OutputMode,
    role: Role,
    /// Progress lines are drawn (stderr is a terminal, not quiet).
    drawing: bool,
    multi: MultiProgress,
    sessions: Mutex<HashMap<u64, Tracked>>,
    /// Pull mode (`serve`, `get`): the sender serves many peers, the
    /// receiver is a process of one session.
    pull: bool,
}

impl Reporter {
    pub fn new(mode: OutputMode, role: Role) -> Reporter {
        let drawing = !mode.quiet && std::io::stderr().is_terminal();
        let target = if drawing {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let multi = MultiProgress::with_draw_target(target);
        if drawing {
            crate::logging::print_above(&multi);
        }
        Reporter {
            mode,
            role,
            drawing,
            multi,
            sessions: Mutex::default(),
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

    /// What to type on the other machine to reach this receiver, one line
    /// per address it can be reached at (on stderr, unless quiet).
    pub fn reach_by(&self, commands: &[String]) {
        for command in commands {
            self.line(format!("on the other machine: {command}"));
        }
    }

    /// What a coded receiver tells the person starting it: the command for
    /// the other machine and, when it made the code up, the code itself.
    /// Printed even when quiet: without it nobody can send.
    pub fn code(&self, code: &crate::code::Code, generated: bool, commands: &[String]) {
        if self.mode.json {
            let mut value = json!({
                "v": EVENTS_VERSION, "event": "code", "number": code.number(),
                "generated": generated, "command": commands.first(),
            });
            if generated {
                value["code"] = json!(code.to_string());
            }
            self.json(value);
        }
        if generated {
            self.problem(format!("code: {code}"));
        }
        let how = if generated {
            "(it asks for the code)"
        } else {
            "(with the same code)"
        };
        for command in commands {
            self.problem(format!("on the other machine: {command}  {how}"));
        }
    }

    /// Removes every progress line, e.g. before the final error line.
    pub fn clear_bars(&self) {
        let bars: Vec<ProgressBar> = self
            .sessions
            .lock()
            .map(|mut s| s.values_mut().filter_map(|t| t.bar.take()).collect())
            .unwrap_or_default();
        for bar in bars {
            bar.finish_and_clear();
            self.multi.remove(&bar);
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

    /// Runs `f` on the session's state, creating it on first sight.
    fn with<T>(&self, session: u64, f: impl FnOnce(&mut Tracked) -> T) -> Option<T> {
        let mut sessions = self.sessions.lock().ok()?;
        Some(f(sessions.entry(session).or_default()))
    }

    /// Runs `f` on the state of a session that has started and not ended.
    fn with_known<T>(&self, session: u64, f: impl FnOnce(&mut Tracked) -> T) -> Option<T> {
        let mut sessions = self.sessions.lock().ok()?;
        sessions.get_mut(&session).map(f)
    }

    /// Starts drawing `session`'s line, unless it is drawn already or over.
    fn add_bar(&self, session: u64) {
        if !self.drawing {
            return;
        }
        self.with(session, |t| {
            if t.bar.is_some() || t.ended {
                return;
            }
            let line = Arc::clone(&t.line);
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
            let style = ProgressStyle::with_template("{xfer_line}").map(|style| {
                style.with_key(
                    "xfer_line",
                    move |_: &indicatif::ProgressState, out: &mut dyn std::fmt::Write| {
                        if let Ok(line) = line.lock() {
                            let _ = out.write_str(&line.render(screen_width()));
                        }
                    },
                )
            });
            if let Ok(style) = style {
                bar.set_style(style);
            }
            let bar = self.multi.add(bar);
            bar.enable_steady_tick(REDRAW);
            t.bar = Some(bar);
        });
    }

    /// Draws `session`'s line once more as it ended, then removes it.
    fn remove_bar(&self, session: u64) {
        let Some(Some(bar)) = self.with(session, |t| {
            if let Ok(mut line) = t.line.lock() {
                line.view.finished = true;
            }
            t.ended = true;
            t.bar.take()
        }) else {
            return;
        };
        // Forced, so the screen shows the true final state (100% only if
        // everything is in place), then cleared.
        bar.finish();
        bar.finish_and_clear();
        self.multi.remove(&bar);
    }
}

/// Columns a progress line may use: the terminal's width less one, so the
/// cursor never reaches the last column (some terminals wrap there). The
/// size is read as indicatif reads it (both sides known, else 80 columns),
/// since indicatif pads the last line to the width it believes.
fn screen_width() -> usize {
    rustix::termios::tcgetwinsize(std::io::stderr())
        .ok()
        .filter(|w| w.ws_col > 0 && w.ws_row > 0)
        .map_or(80, |w| w.ws_col as usize)
        .saturating_sub(1)
}

impl Observer for Reporter {
    fn event(&self, event: Event) {
        match event {
            Event::SessionStarted { session, peer } => match self.role {
                Role::Send => self.add_bar(session),
                // A receiver draws a sender's line once it offers something:
                // a connection that never says hello (a port scan) draws none.
                Role::Recv => {
                    self.with(session, |t| {
                        if let Ok(mut line) = t.line.lock() {
                            line.view.peer = Some(term::escape(&peer).into_owned());
                        }
                    });
                }
            },
            Event::Progress { session, meter } => {
                if self.drawing {
                    // A sender knows its totals before its session starts.
                    let update = |t: &mut Tracked| {
                        if let Ok(mut line) = t.line.lock() {
                            line.moved(meter);
                        }
                        t.bar.is_none() && !t.ended
                    };
                    let needs_bar = match self.role {
                        Role::Send => self.with(session, update),
                        Role::Recv => self.with_known(session, update),
                    };
                    if needs_bar == Some(true) && self.role == Role::Recv {
                        self.add_bar(session);
                    }
                }
            }
            Event::FileStarted { session, path, .. } => {
                if self.drawing {
                    self.with_known(session, |t| {
                        if let Ok(mut line) = t.line.lock() {
                            line.view.current = Some(term::escape(&path).into_owned());
                        }
                    });
                }
            }
            Event::FileDone {
                session,
                peer,
                report,
            } => self.file_done(session, &peer, &report),
            Event::SessionEnded {
                session,
                peer,
                summary,
                error,
                exit_code,
                turned_away,
            } => {
                self.remove_bar(session);
                let failed = self
                    .sessions
                    .lock()
                    .ok()
                    .and_then(|mut s| s.remove(&session))
                    .map(|t| t.failed)
                    .unwrap_or_default();
                if self.mode.json {
                    self.json(session_event(
                        self.role,
                        &peer,
                        &summary,
                        error.as_deref(),
                        exit_code,
                    ));
                }
                if !turned_away {
                    self.session_ended(&peer, &summary, error.as_deref(), &failed);
                }
            }
        }
    }
}

impl Reporter {
    fn file_done(&self, session: u64, peer: &str, report: &FileReport) {
        if self.mode.json {
            self.json(file_event(self.role, peer, report));
        }
        let shown = report.stored_as.as_deref().unwrap_or(&report.path);
        let size = HumanBytes(report.size);
        let mut detail = format!("{size}");
        if report.resumed_from > 0 && report.outcome == Outcome::Stored {
            detail.push_str(&format!(
                ", resumed from {}",
                HumanBytes(report.resumed_from)
            ));
        }
        if shown != report.path {
            detail.push_str(&format!(", offered as {}", report.path));
        }
        match (&report.outcome, self.role) {
            // Problems print even when quiet: they are errors.
            (Outcome::Refused(reason), _) => {
                self.problem(format!("refused: {}: {}", report.path, reason))
            }
            (Outcome::Failed(reason), _) => {
                self.with(session, |t| {
                    if t.failed.len() < FAILED_NAMED {
                        t.failed.push(report.path.clone());
                    }
                });
                self.problem(format!("failed: {}: {}", report.path, reason))
            }
            _ if !self.mode.verbose => {}
            (Outcome::Stored, Role::Recv) => self.line(format!("received {shown} ({detail})")),
            (Outcome::Skipped, Role::Recv) => self.line(format!("already had {shown} ({detail})")),
            (Outcome::Stored, Role::Send) => self.line(format!("sent {shown} ({detail})")),
            (Outcome::Skipped, Role::Send) => {
                self.line(format!("already there: {shown} ({detail})"))
            }
        }
    }

    fn session_ended(&self, peer: &str, summary: &Summary, error: Option<&str>, failed: &[String]) {
        let prefix = match self.role {
            Role::Send => {
                let to = if self.pull {
                    format!("to {peer}: ")
                } else {
                    String::new()
                };
                // Before anything was offered the error line says it all.
                if summary.offered > 0 {
                    let sent = describe(summary, error.is_none());
                    self.line(format!("{to}sent {sent}"));
                }
                to
            }
            Role::Recv if self.pull && summary.offered == 0 && error.is_some() => String::new(),
            Role::Recv => {
                self.line(session_line(peer, summary, error));
                format!("from {peer}: ")
            }
        };
        if let Some(list) = failed_line(failed, summary.failed) {
            self.line(format!("{prefix}{list}"));
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
        "skipped": s.skipped, "refused": s.refused, "failed": s.failed,
        "resumed": s.resumed, "renamed": s.renamed, "bytes": s.bytes,
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
