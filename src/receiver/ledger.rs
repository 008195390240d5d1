//! The receiver's one record per offered entry, for one session. A file is
//! planned, its body arrives, it is verified, then committed (stored) — or
//! it is skipped, refused or fails. A file that arrived damaged waits for
//! the sender to offer it again: that second offer is the same record, so
//! a retried-then-stored file is stored, once. Every final state is
//! reported from here exactly once; the session's summary is this ledger
//! counted.

use std::collections::HashMap;
use std::sync::Arc;

use crate::events::{Event, FileReport, Meter, Observer, Outcome, Summary};
use crate::protocol::{Digest, EntryKind};

/// Where one offered entry stands until it is final (then it leaves).
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Planned; its body (or `Identical`) has not come.
    Planned,
    /// Its body is arriving or being verified and committed.
    Receiving,
    /// It arrived damaged; the sender may offer it again.
    AwaitingRetry(String),
}

#[derive(Debug, Clone)]
struct Record {
    /// The wire id it was last offered under.
    id: u64,
    path: String,
    kind: EntryKind,
    size: u64,
    state: State,
    stored_as: Option<String>,
    sha256: Option<Digest>,
    digest_in_header: bool,
    resumed_from: u64,
    attempts: u32,
    /// Bytes kept in a partial when the session was cut off mid-body.
    kept: Option<u64>,
    /// Why its first body was not accepted, when it came again.
    retried_after: Option<String>,
    /// What it adds to the meter's `bytes_done` now.
    counted: u64,
}

/// How a new offer of a path relates to what this session has in flight.
#[derive(Debug, PartialEq, Eq)]
pub enum Offered {
    /// Nothing of that path is in flight: a new record.
    New,
    /// A file that arrived damaged, offered again.
    Retry,
    /// The path is still in flight from an earlier offer of this session.
    Twice,
}

/// Every entry one sender offered in one session. A record lives here until
/// its state is final; then it is reported, counted and let go, so memory
/// follows the entries in flight (bounded by the plan's limits), not the
/// entries received.
pub struct Ledger {
    /// Records not yet final, by record number.
    live: HashMap<usize, Record>,
    next: usize,
    /// Wire id -> live record.
    ids: HashMap<u64, usize>,
    /// Offered path -> live record, to tell a retry from a repeat.
    paths: HashMap<String, usize>,
    /// The final records, counted.
    done: Summary,
    /// "path: reason" of the first file that ended refused or failed.
    first_failure: Option<String>,
    /// What the progress line shows.
    meter: Meter,
    /// What the sender announced (files, bytes), and what it offered so far:
    /// the meter counts the larger of the two, so a sender that offers more
    /// than it announced is still counted whole.
    announced: (u64, u64),
    offered_so_far: (u64, u64),
    observer: Arc<dyn Observer>,
    session: u64,
    peer: String,
}

impl Ledger {
    pub fn new(observer: Arc<dyn Observer>, session: u64, peer: String) -> Ledger {
        Ledger {
            live: HashMap::new(),
            next: 0,
            ids: HashMap::new(),
            paths: HashMap::new(),
            done: Summary::default(),
            first_failure: None,
            meter: Meter::default(),
            announced: (0, 0),
            offered_so_far: (0, 0),
            observer,
            session,
            peer,
        }
    }

    /// Entry `id` was offered. A path still in flight either continues its
    /// record (a retry) or is a repeat, which gets a record of its own so
    /// that its refusal is counted and reported too.
    pub fn offered(
        &mut self,
        id: u64,
        path: &str,
        kind: EntryKind,
        size: u64,
        header: Option<Digest>,
    ) -> Offered {
        if let Some(&index) = self.paths.get(path) {
            if let Some(record) = self.live.get_mut(&index) {
                if let (State::AwaitingRetry(reason), true) = (&record.state, record.size == size) {
                    log::debug!("'{path}' is offered again after: {reason}");
                    record.retried_after = Some(reason.clone());
                    record.state = State::Planned;
                    record.sha256 = header;
                    record.digest_in_header = header.is_some();
                    // The first attempt's id had its verdict; only the new one lives.
                    self.ids.remove(&record.id);
                    record.id = id;
                    self.ids.insert(id, index);
                    return Offered::Retry;
                }
            }
        }
        let index = self.next;
        self.next += 1;
        self.live.insert(
            index,
            Record {
                id,
                path: path.to_owned(),
                kind,
                size,
                state: State::Planned,
                stored_as: None,
                sha256: header,
                digest_in_header: header.is_some(),
                resumed_from: 0,
                attempts: 0,
                kept: None,
                retried_after: None,
                counted: 0,
            },
        );
        if kind == EntryKind::File {
            // Sizes are the peer's word: added without overflow.
            let (files, bytes) = self.offered_so_far;
            let now = (files.saturating_add(1), bytes.saturating_add(size));
            self.offered_so_far = now;
            // Past what was announced, the file adds to the totals.
            let more_files = now.0.saturating_sub(self.announced.0.max(files));
            let more_bytes = now.1.saturating_sub(self.announced.1.max(bytes));
            self.meter.files = self.meter.files.saturating_add(more_files);
            self.meter.bytes = self.meter.bytes.saturating_add(more_bytes);
            self.report_progress();
        }
        self.ids.insert(id, index);
        match self.paths.entry(path.to_owned()) {
            std::collections::hash_map::Entry::Occupied(_) => Offered::Twice,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(index);
                Offered::New
            }
        }
    }

    /// The sender announced the whole session (before any offer).
    pub fn announced(&mut self, files: u64, bytes: u64) {
        self.announced = (files, bytes);
        self.meter.files = self.meter.files.max(files);
        self.meter.bytes = self.meter.bytes.max(bytes);
        self.report_progress();
    }

    fn report_progress(&self) {
        self.observer.event(Event::Progress {
            session: self.session,
            meter: self.meter,
        });
    }

    fn at(&mut self, id: u64) -> Option<(usize, &mut Record)> {
        let index = *self.ids.get(&id)?;
        Some((index, self.live.get_mut(&index)?))
    }

    /// The plan refused `id`.
    pub fn refused(&mut self, id: u64, reason: String) {
        if let Some((index, _)) = self.at(id) {
            self.finish(index, Outcome::Refused(reason));
        }
    }

    /// Identical content is already at `stored_as` (with digest `sha256`,
    /// when known: the header's, or the one compared).
    pub fn skipped(&mut self, id: u64, stored_as: String, sha256: Option<Digest>) {
        if let Some((index, record)) = self.at(id) {
            record.stored_as = Some(stored_as);
            record.sha256 = sha256.or(record.sha256);
            self.finish(index, Outcome::Skipped);
        }
    }

    /// A directory of the offer exists now: nothing more to do or count.
    pub fn dir_ready(&mut self, id: u64) {
        if let Some((index, _)) = self.at(id) {
            self.forget(index);
        }
    }

    /// The body of `id` starts arriving at `offset`.
    pub fn receiving(&mut self, id: u64, offset: u64) {
        let Some(index) = self.ids.get(&id).copied() else {
            return;
        };
        if let Some(record) = self.live.get_mut(&index) {
            record.state = State::Receiving;
            record.attempts += 1;
            record.resumed_from = offset;
            // What an earlier run kept is in place already.
            self.meter.advance(&mut record.counted, offset, false);
            self.report_progress();
        }
    }

    /// `bytes` more of `id`'s body arrived.
    pub fn received(&mut self, id: u64, bytes: u64) {
        let Some(index) = self.ids.get(&id).copied() else {
            return;
        };
        if let Some(record) = self.live.get_mut(&index) {
            self.meter.advance(&mut record.counted, bytes, true);
            self.report_progress();
        }
    }

    /// `id` was verified and committed at `stored_as`.
    pub fn stored(&mut self, id: u64, stored_as: String, sha256: Digest) {
        if let Some((index, record)) = self.at(id) {
            record.stored_as = Some(stored_as);
            record.sha256 = Some(sha256);
            self.finish(index, Outcome::Stored);
        }
    }

    /// `id` did not make it. With `retry` the sender may send it again, so
    /// the outcome waits for that (or for the session's end).
    pub fn failed(&mut self, id: u64, reason: String, retry: bool) {
        let Some(index) = self.ids.get(&id).copied() else {
            return;
        };
        if !retry {
            self.finish(index, Outcome::Failed(reason));
        } else if let Some(record) = self.live.get_mut(&index) {
            record.state = State::AwaitingRetry(reason);
            self.meter.restart(&mut record.counted);
            self.report_progress();
        }
    }

    /// The session was cut off while `id`'s body was arriving; `kept`
    /// bytes of it stay in a hidden partial for a resume.
    pub fn kept(&mut self, id: u64, kept: u64) {
        if let Some((_, record)) = self.at(id) {
            record.kept = Some(kept);
        }
    }

    /// The session ended. After a clean end (`Done`) every file still
    /// without an outcome gets one: damaged and not retried, or planned and
    /// never sent. A session cut short leaves those without one: they were
    /// neither delivered nor given up on by the sender.
    pub fn close(&mut self, clean: bool) {
        let mut open: Vec<(usize, u64)> = self.live.iter().map(|(i, r)| (*i, r.id)).collect();
        open.sort_unstable_by_key(|(_, id)| *id);
        for (index, _) in open {
            let outcome = match self.live.get(&index).map(|r| &r.state) {
                Some(State::AwaitingRetry(reason)) => Outcome::Failed(reason.clone()),
                Some(State::Planned | State::Receiving) if clean => {
                    Outcome::Failed("the sender did not send it".into())
                }
                _ => continue,
            };
            self.finish(index, outcome);
        }
        if clean {
            self.meter.complete();
            self.report_progress();
        }
    }

    /// Drops a record from the live maps and returns it.
    fn forget(&mut self, index: usize) -> Option<Record> {
        let record = self.live.remove(&index)?;
        self.ids.remove(&record.id);
        if self.paths.get(&record.path) == Some(&index) {
            self.paths.remove(&record.path);
        }
        Some(record)
    }

    /// Moves a record to its final state: reported once, counted, let go.
    fn finish(&mut self, index: usize, outcome: Outcome) {
        let Some(mut record) = self.forget(index) else {
            return;
        };
        if !outcome.delivered() {
            record.stored_as = None;
        }
        count(&mut self.done, &record, Some(&outcome));
        if let (None, Some(why)) = (&self.first_failure, outcome.reason()) {
            self.first_failure = Some(format!("{}: {why}", record.path));
        }
        if record.kind == EntryKind::File {
            self.meter
                .finish(record.size, record.counted, outcome == Outcome::Stored);
            self.report_progress();
        }
        self.observer.event(Event::FileDone {
            session: self.session,
            peer: self.peer.clone(),
            report: FileReport {
                path: record.path,
                stored_as: record.stored_as,
                size: record.size,
                sha256: record.sha256.filter(|_| outcome.delivered()),
                outcome,
                digest_in_header: record.digest_in_header,
                resumed_from: record.resumed_from,
                attempts: record.attempts,
                retried_after: record.retried_after,
                local: None,
            },
        });
    }

    /// The first file that ended refused or failed, and why.
    pub fn first_failure(&self) -> Option<String> {
        self.first_failure.clone()
    }

    /// The ledger counted: the final records, then those still in flight.
    pub fn summary(&self) -> Summary {
        let mut s = self.done;
        for record in self.live.values() {
            count(&mut s, record, None);
        }
        s
    }
}

/// Adds one record, final with `outcome` or still in flight, to `s`.
/// Directories count only when refused.
fn count(s: &mut Summary, record: &Record, outcome: Option<&Outcome>) {
    let is_file = record.kind == EntryKind::File;
    match outcome {
        Some(Outcome::Stored) if is_file => {
            s.stored += 1;
            s.bytes += record.size - record.resumed_from;
        }
        Some(Outcome::Skipped) if is_file => s.skipped += 1,
        Some(Outcome::Refused(_)) => s.refused += 1,
        Some(Outcome::Failed(_)) => s.failed += 1,
        _ if !is_file => return,
        Some(_) => {}
        None => {
            if let Some(kept) = record.kept {
                s.kept_files += 1;
                s.kept_bytes += kept;
                s.kept_of += record.size;
            }
        }
    }
    if let (true, Some(outcome)) = (is_file, outcome) {
        s.delivered_as(
            outcome,
            &record.path,
            record.stored_as.as_deref(),
            record.resumed_from,
        );
    }
    s.offered += 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Seen(Mutex<Vec<FileReport>>);

    impl Observer for Seen {
        fn event(&self, event: Event) {
            if let Event::FileDone { report, .. } = event {
                self.0.lock().unwrap().push(report);
            }
        }
    }

    fn ledger() -> (Ledger, Arc<Seen>) {
        let seen = Arc::new(Seen::default());
        (Ledger::new(seen.clone(), 1, "peer".into()), seen)
    }

    fn file(ledger: &mut Ledger, id: u64, path: &str) -> Offered {
        ledger.offered(id, path, EntryKind::File, 100, None)
    }

    #[test]
    fn sizes_from_the_wire_never_overflow_the_meter() {
        let (mut ledger, _) = ledger();
        ledger.announced(u64::MAX, u64::MAX);
        ledger.offered(0, "a", EntryKind::File, u64::MAX, None);
        ledger.offered(1, "b", EntryKind::File, 2, None);
        ledger.offered(2, "c", EntryKind::File, u64::MAX, None);
        assert_eq!(ledger.meter.bytes, u64::MAX);
        ledger.refused(0, "too big".into());
        ledger.close(true);
        assert_eq!(ledger.meter.files_done, 3);
    }

    #[test]
    fn the_meter_counts_what_was_announced_resumed_skipped_and_retried() {
        let (mut ledger, _) = ledger();
        ledger.announced(3, 300);
        for (id, name) in [(0, "a"), (1, "b")] {
            file(&mut ledger, id, name);
        }
        assert_eq!((ledger.meter.files, ledger.meter.bytes), (3, 300));
        // Two more than announced: counted too.
        file(&mut ledger, 2, "c");
        file(&mut ledger, 3, "d");
        assert_eq!((ledger.meter.files, ledger.meter.bytes), (4, 400));
        // Resumed at 40: those bytes are in place, not moved.
        ledger.receiving(0, 40);
        ledger.received(0, 60);
        assert_eq!((ledger.meter.bytes_done, ledger.meter.moved), (100, 60));
        ledger.stored(0, "a".into(), [0; 32]);
        // Already there: leaves the total.
        ledger.skipped(1, "b".into(), None);
        assert_eq!((ledger.meter.bytes, ledger.meter.files_done), (300, 2));
        // Damaged: its bytes start over.
        ledger.receiving(2, 0);
        ledger.received(2, 100);
        ledger.failed(2, "SHA-256 mismatch".into(), true);
        assert_eq!(ledger.meter.bytes_done, 100);
        ledger.refused(3, "no".into());
        ledger.close(true);
        let m = ledger.meter;
        assert_eq!(
            (m.files, m.files_done, m.bytes, m.bytes_done),
            (4, 4, 100, 100)
        );
    }

    #[test]
    fn a_file_damaged_then_stored_on_its_retry_is_stored_once() {
        let (mut ledger, seen) = ledger();
        assert_eq!(file(&mut ledger, 0, "a.bin"), Offered::New);
        ledger.receiving(0, 0);
        ledger.failed(0, "SHA-256 mismatch".into(), true);
        assert!(seen.0.lock().unwrap().is_empty(), "not final yet");
        assert_eq!(file(&mut ledger, 5, "a.bin"), Offered::Retry);
        ledger.receiving(5, 0);
        ledger.stored(5, "a.bin".into(), [9; 32]);
        ledger.close(true);
        let s = ledger.summary();
        assert_eq!((s.offered, s.stored, s.failed, s.bytes), (1, 1, 0, 100));
        assert!(
            ledger.live.is_empty() && ledger.ids.is_empty() && ledger.paths.is_empty(),
            "final records leave the ledger"
        );
        let reports = seen.0.lock().unwrap();
        assert_eq!(reports.len(), 1);
        assert_eq!((reports[0].attempts, reports[0].sha256), (2, Some([9; 32])));
        assert_eq!(
            reports[0].retried_after.as_deref(),
            Some("SHA-256 mismatch")
        );
    }

    #[test]
    fn damage_without_a_retry_fails_when_the_session_ends() {
        let (mut ledger, seen) = ledger();
        file(&mut ledger, 0, "a.bin");
        ledger.receiving(0, 0);
        ledger.failed(0, "SHA-256 mismatch".into(), true);
        ledger.close(true);
        assert_eq!(ledger.summary().failed, 1);
        assert_eq!(
            seen.0.lock().unwrap()[0].outcome,
            Outcome::Failed("SHA-256 mismatch".into())
        );
    }

    #[test]
    fn a_path_offered_twice_is_a_second_record_and_not_a_retry() {
        let (mut ledger, _) = ledger();
        assert_eq!(file(&mut ledger, 0, "dup.txt"), Offered::New);
        assert_eq!(file(&mut ledger, 1, "dup.txt"), Offered::Twice);
        ledger.refused(1, "offered twice".into());
        ledger.receiving(0, 0);
        ledger.stored(0, "dup.txt".into(), [1; 32]);
        let s = ledger.summary();
        assert_eq!((s.offered, s.stored, s.refused), (2, 1, 1));
        // Once the first is final, the path is an ordinary new offer again
        // (planning then finds the stored file: identical content is a skip).
        assert_eq!(file(&mut ledger, 2, "dup.txt"), Offered::New);
    }

    #[test]
    fn refusals_skips_and_kept_partials_are_all_counted() {
        let (mut ledger, seen) = ledger();
        file(&mut ledger, 0, "big.iso");
        file(&mut ledger, 1, "same.txt");
        file(&mut ledger, 2, "cut.bin");
        ledger.offered(3, "dir", EntryKind::Dir, 0, None);
        ledger.refused(0, "over --max-size".into());
        ledger.skipped(1, "same.txt".into(), Some([4; 32]));
        ledger.dir_ready(3);
        ledger.receiving(2, 10);
        ledger.kept(2, 60);
        ledger.close(false);
        let s = ledger.summary();
        assert_eq!(
            (
                s.offered,
                s.refused,
                s.skipped,
                s.kept_files,
                s.kept_bytes,
                s.kept_of
            ),
            (3, 1, 1, 1, 60, 100)
        );
        assert_eq!(s.undelivered(), 2);
        let reports = seen.0.lock().unwrap();
        assert_eq!(reports.len(), 2, "the cut file has no outcome: {reports:?}");
        let skipped = reports.iter().find(|r| r.path == "same.txt").unwrap();
        assert_eq!(skipped.sha256, Some([4; 32]));
    }
}
