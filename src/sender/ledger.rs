//! The sender's one record per file. A file is offered, then its body goes
//! out (or `Identical`, or nothing for `Skip`/`Refuse`), then its verdict
//! lands; a verdict saying the bytes were damaged on the way moves the
//! record back to be offered once more under a new id — the same record,
//! not a second file. Every final state is reported from here exactly
//! once, and the summary is this ledger counted.

use std::collections::HashMap;
use std::sync::Arc;

use crate::events::{Event, FileReport, Meter, Observer, Outcome, Summary};
use crate::protocol::{self, Digest, EntryKind};
use crate::sender::source::LocalEntry;

/// Bodies a file may be sent with: the first, and one more after damage.
const MAX_ATTEMPTS: u32 = 2;

/// Where one file stands until it is final (then it leaves the ledger).
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// In an offer, waiting for its plan.
    Offered,
    /// Its body or `Identical` is out; the verdict is awaited.
    AwaitingVerdict,
    /// Damaged on the way; to be offered again.
    Retry,
}

/// One offered entry and everything known about it.
#[derive(Debug, Clone)]
struct FileRecord {
    entry: LocalEntry,
    state: State,
    /// The digest, once known (header, hashing, or the receiver's verdict).
    sha256: Option<Digest>,
    digest_in_header: bool,
    resumed_from: u64,
    attempts: u32,
    /// Body bytes put on the wire for it, over all attempts.
    sent: u64,
    /// What it adds to the meter's `bytes_done` now.
    counted: u64,
    stored_as: Option<String>,
    /// Why its first body was not accepted, when it is being sent again.
    retried_after: Option<String>,
}

/// What a verdict did to its file.
#[derive(Debug, PartialEq, Eq)]
pub enum Settled {
    /// Final; reported.
    Final,
    /// To be sent again from scratch.
    Retry,
}

/// Every entry of one sending session. A record lives here until its
/// state is final; then it is reported, folded into the running count and
/// let go, so memory follows the files in flight, not the files sent.
pub struct Ledger {
    /// Records not yet final, by record number.
    live: HashMap<usize, FileRecord>,
    next: usize,
    /// Wire id -> record, for entries whose plan or verdict is still due.
    ids: HashMap<u64, usize>,
    /// Records waiting to be offered again.
    retries: Vec<usize>,
    awaiting: usize,
    /// The final records, counted.
    done: Summary,
    /// What the progress line shows.
    meter: Meter,
    first_failure: Option<String>,
    observer: Arc<dyn Observer>,
    peer: String,
    /// Tells concurrent sessions' events apart (a server runs many).
    session: u64,
}

impl Ledger {
    pub fn new(observer: Arc<dyn Observer>, peer: String) -> Ledger {
        Ledger {
            live: HashMap::new(),
            next: 0,
            ids: HashMap::new(),
            retries: Vec::new(),
            awaiting: 0,
            done: Summary::default(),
            meter: Meter::default(),
            first_failure: None,
            observer,
            peer,
            session: 0,
        }
    }

    /// The same ledger, numbering its events as session `session`.
    pub fn in_session(mut self, session: u64) -> Ledger {
        self.session = session;
        self
    }

    /// The session is to send `files` files of `bytes` bytes in all.
    pub fn expect(&mut self, files: u64, bytes: u64) {
        self.meter.files = files;
        self.meter.bytes = bytes;
        self.report_progress();
    }

    fn report_progress(&self) {
        self.observer.event(Event::Progress {
            session: self.session,
            meter: self.meter,
        });
    }

    /// The session ran to its end (every verdict is in).
    pub fn complete(&mut self) {
        self.meter.complete();
        self.report_progress();
    }

    /// An entry that could not even be read locally (a directory of the
    /// tree that cannot be listed): it fails before anything is offered.
    pub fn unreadable(&mut self, entry: LocalEntry, reason: String) {
        let index = self.push(entry, None);
        self.finish(index, Outcome::Failed(reason));
    }

    /// `entry` goes out in an offer as `id`, with `sha256` in its header.
    pub fn offered(&mut self, id: u64, entry: &LocalEntry, sha256: Option<Digest>) {
        let index = self.push(entry.clone(), sha256);
        self.ids.insert(id, index);
    }

    /// A record from [`Ledger::take_retries`] is offered again as `id`.
    pub fn reoffered(&mut self, id: u64, index: usize) {
        if let Some(record) = self.live.get_mut(&index) {
            record.state = State::Offered;
            record.digest_in_header = false;
            self.ids.insert(id, index);
        }
    }

    fn push(&mut self, entry: LocalEntry, sha256: Option<Digest>) -> usize {
        let index = self.next;
        self.next += 1;
        self.live.insert(
            index,
            FileRecord {
                entry,
                state: State::Offered,
                sha256,
                digest_in_header: sha256.is_some(),
                resumed_from: 0,
                attempts: 0,
                sent: 0,
                counted: 0,
                stored_as: None,
                retried_after: None,
            },
        );
        index
    }

    /// The live record offered as `id`.
    fn by_id(&mut self, id: u64) -> Option<&mut FileRecord> {
        let index = self.ids.get(&id)?;
        self.live.get_mut(index)
    }

    /// Its body (from `offset`) or `Identical` is going out now.
    pub fn sending(&mut self, id: u64, offset: u64) {
        let Some(index) = self.ids.get(&id).copied() else {
            return;
        };
        if let Some(record) = self.live.get_mut(&index) {
            record.state = State::AwaitingVerdict;
            record.attempts += 1;
            record.resumed_from = offset;
            self.awaiting += 1;
            // Bytes the receiver kept from an earlier run are in place.
            self.meter.advance(&mut record.counted, offset, false);
            self.report_progress();
        }
    }

    /// `bytes` more of `id`'s body are on the wire.
    pub fn sent(&mut self, id: u64, bytes: u64) {
        let Some(index) = self.ids.get(&id).copied() else {
            return;
        };
        if let Some(record) = self.live.get_mut(&index) {
            record.sent += bytes;
            self.meter.advance(&mut record.counted, bytes, true);
            self.report_progress();
        }
    }

    /// The digest of `id` became known here (hashed while sending, or compared).
    pub fn digest(&mut self, id: u64, sha256: Digest) {
        if let Some(record) = self.by_id(id) {
            record.sha256 = Some(sha256);
        }
    }

    /// The plan said `Skip`: identical content is at `stored_as`.
    pub fn skipped(&mut self, id: u64, stored_as: String) {
        if let Some(index) = self.ids.remove(&id) {
            if let Some(record) = self.live.get_mut(&index) {
                record.stored_as = Some(stored_as);
            }
            self.finish(index, Outcome::Skipped);
        }
    }

    /// The plan said `DirReady`: the directory exists; nothing more to do,
    /// and nothing to count.
    pub fn dir_ready(&mut self, id: u64) {
        if let Some(index) = self.ids.remove(&id) {
            self.live.remove(&index);
        }
    }

    /// The plan refused `id`.
    pub fn refused(&mut self, id: u64, reason: String) {
        if let Some(index) = self.ids.remove(&id) {
            self.finish(index, Outcome::Refused(reason));
        }
    }

    /// `id` could not be sent from here (unreadable, changed meanwhile).
    pub fn failed_here(&mut self, id: u64, reason: String) {
        if let Some(index) = self.ids.remove(&id) {
            if self.live.get(&index).map(|r| &r.state) == Some(&State::AwaitingVerdict) {
                self.awaiting -= 1;
            }
            self.finish(index, Outcome::Failed(reason));
        }
    }

    /// Applies the receiver's verdict for `id`.
    pub fn verdict(&mut self, id: u64, outcome: protocol::Outcome) -> Result<Settled, String> {
        let unexpected = || format!("verdict for file {id}, which awaits none");
        let index = self.ids.remove(&id).ok_or_else(unexpected)?;
        let record = self.live.get_mut(&index).ok_or_else(unexpected)?;
        if record.state != State::AwaitingVerdict {
            return Err(unexpected());
        }
        self.awaiting -= 1;
        match outcome {
            protocol::Outcome::Stored { path, sha256 } => {
                record.stored_as = Some(path);
                record.sha256 = Some(sha256);
                self.finish(index, Outcome::Stored);
            }
            protocol::Outcome::Skipped { path } => {
                record.stored_as = Some(path);
                self.finish(index, Outcome::Skipped);
            }
            protocol::Outcome::Failed {
                reason,
                retry: true,
            } if record.attempts < MAX_ATTEMPTS => {
                log::warn!(
                    "'{}' arrived damaged ({reason}); sending it again from scratch",
                    record.entry.wire_path
                );
                record.state = State::Retry;
                record.sha256 = None;
                self.meter.restart(&mut record.counted);
                record.retried_after = Some(reason);
                self.retries.push(index);
                self.report_progress();
                return Ok(Settled::Retry);
            }
            protocol::Outcome::Failed { reason, .. } => {
                self.finish(index, Outcome::Failed(reason));
            }
        }
        Ok(Settled::Final)
    }

    /// Records damaged on the way, to be offered again (each at most once).
    pub fn take_retries(&mut self) -> Vec<(usize, LocalEntry)> {
        std::mem::take(&mut self.retries)
            .into_iter()
            .filter_map(|i| Some((i, self.live.get(&i)?.entry.clone())))
            .collect()
    }

    /// Bodies or `Identical`s whose verdict has not come.
    pub fn awaiting(&self) -> usize {
        self.awaiting
    }

    /// Moves a record to its final state: reported once, counted, let go.
    fn finish(&mut self, index: usize, outcome: Outcome) {
        let Some(mut record) = self.live.remove(&index) else {
            return;
        };
        if !outcome.delivered() {
            record.stored_as = None;
        }
        count(&mut self.done, &record, Some(&outcome));
        if record.entry.kind == EntryKind::File {
            self.meter.finish(
                record.entry.size,
                record.counted,
                outcome == Outcome::Stored,
            );
            self.report_progress();
        }
        if let (None, Some(why)) = (&self.first_failure, outcome.reason()) {
            self.first_failure = Some(format!("{}: {why}", record.entry.wire_path));
        }
        self.observer.event(Event::FileDone {
            session: self.session,
            peer: self.peer.clone(),
            report: FileReport {
                path: record.entry.wire_path,
                stored_as: record.stored_as,
                size: record.entry.size,
                sha256: record.sha256,
                outcome,
                digest_in_header: record.digest_in_header,
                resumed_from: record.resumed_from,
                attempts: record.attempts,
                retried_after: record.retried_after,
                local: Some(record.entry.local),
            },
        });
    }

    /// The first file that did not arrive, and why, for the final error.
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
/// Directories count only when they did not make it.
fn count(s: &mut Summary, record: &FileRecord, outcome: Option<&Outcome>) {
    s.bytes += record.sent;
    let is_file = record.entry.kind == EntryKind::File;
    match outcome {
        Some(Outcome::Stored) if is_file => s.stored += 1,
        Some(Outcome::Skipped) if is_file => s.skipped += 1,
        Some(Outcome::Refused(_)) => s.refused += 1,
        Some(Outcome::Failed(_)) => s.failed += 1,
        _ if !is_file => return,
        _ => {}
    }
    if let (true, Some(outcome)) = (is_file, outcome) {
        s.delivered_as(
            outcome,
            &record.entry.wire_path,
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

    fn file(name: &str, size: u64) -> LocalEntry {
        LocalEntry {
            wire_path: name.into(),
            local: name.into(),
            kind: EntryKind::File,
            size,
            mode: 0o644,
            mtime_secs: 0,
            mtime_nanos: 0,
            ino: 0,
            dev: 0,
        }
    }

    fn ledger() -> (Ledger, Arc<Seen>) {
        let seen = Arc::new(Seen::default());
        (Ledger::new(seen.clone(), "peer".into()), seen)
    }

    fn damaged() -> protocol::Outcome {
        protocol::Outcome::Failed {
            reason: "SHA-256 mismatch".into(),
            retry: true,
        }
    }

    #[test]
    fn a_file_damaged_then_stored_on_its_retry_counts_once_as_stored() {
        let (mut ledger, seen) = ledger();
        ledger.offered(0, &file("a.bin", 10), None);
        ledger.sending(0, 0);
        ledger.sent(0, 10);
        assert_eq!(ledger.verdict(0, damaged()), Ok(Settled::Retry));
        assert!(
            seen.0.lock().unwrap().is_empty(),
            "a retry is not an outcome"
        );
        let retries = ledger.take_retries();
        assert_eq!(retries.len(), 1);
        ledger.reoffered(7, retries[0].0);
        ledger.sending(7, 0);
        ledger.sent(7, 10);
        let stored = protocol::Outcome::Stored {
            path: "a.bin".into(),
            sha256: [3; 32],
        };
        assert_eq!(ledger.verdict(7, stored), Ok(Settled::Final));
        let s = ledger.summary();
        assert_eq!((s.offered, s.stored, s.failed, s.bytes), (1, 1, 0, 20));
        assert!(
            ledger.live.is_empty() && ledger.ids.is_empty(),
            "final records leave"
        );
        let reports = seen.0.lock().unwrap();
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].outcome, Outcome::Stored);
        assert_eq!(reports[0].attempts, 2);
        assert_eq!(reports[0].sha256, Some([3; 32]));
        assert_eq!(
            reports[0].retried_after.as_deref(),
            Some("SHA-256 mismatch")
        );
    }

    #[test]
    fn the_meter_ends_full_after_a_resume_a_skip_and_a_retry() {
        let (mut ledger, _) = ledger();
        ledger.expect(3, 30);
        ledger.offered(0, &file("resumed", 10), None);
        ledger.offered(1, &file("there", 10), None);
        ledger.offered(2, &file("damaged", 10), None);
        ledger.sending(0, 6);
        ledger.sent(0, 4);
        assert_eq!((ledger.meter.bytes_done, ledger.meter.moved), (10, 4));
        ledger.skipped(1, "there".into());
        assert_eq!(ledger.meter.bytes, 20);
        ledger.sending(2, 0);
        ledger.sent(2, 10);
        ledger.verdict(2, damaged()).unwrap();
        assert_eq!(ledger.meter.bytes_done, 10, "a retried body starts over");
        let (index, _) = ledger.take_retries()[0].clone();
        ledger.reoffered(3, index);
        ledger.sending(3, 0);
        ledger.sent(3, 10);
        let stored = |path: &str| protocol::Outcome::Stored {
            path: path.into(),
            sha256: [0; 32],
        };
        ledger.verdict(0, stored("resumed")).unwrap();
        ledger.verdict(3, stored("damaged")).unwrap();
        let m = ledger.meter;
        assert_eq!(
            (m.files, m.files_done, m.bytes, m.bytes_done),
            (3, 3, 20, 20)
        );
        assert_eq!(m.moved, 24);
        let s = ledger.summary();
        assert_eq!((s.resumed, s.renamed), (1, 0));
    }

    #[test]
    fn damage_on_the_second_attempt_is_final() {
        let (mut ledger, _) = ledger();
        ledger.offered(0, &file("a.bin", 1), None);
        ledger.sending(0, 0);
        ledger.verdict(0, damaged()).unwrap();
        let (index, _) = ledger.take_retries()[0].clone();
        ledger.reoffered(1, index);
        ledger.sending(1, 0);
        assert_eq!(ledger.verdict(1, damaged()), Ok(Settled::Final));
        assert!(ledger.take_retries().is_empty());
        assert_eq!(ledger.summary().failed, 1);
        assert!(ledger.first_failure().unwrap().starts_with("a.bin: "));
    }

    #[test]
    fn every_outcome_is_counted_once_and_skips_carry_no_made_up_digest() {
        let (mut ledger, seen) = ledger();
        ledger.offered(0, &file("kept.txt", 5), None);
        ledger.offered(1, &file("big.iso", 9), None);
        ledger.offered(2, &file("gone.txt", 1), None);
        ledger.unreadable(file("locked", 0), "cannot read directory".into());
        ledger.skipped(0, "kept.txt".into());
        ledger.refused(1, "over --max-size".into());
        ledger.failed_here(2, "cannot read".into());
        let s = ledger.summary();
        assert_eq!(
            (s.offered, s.stored, s.skipped, s.refused, s.failed),
            (4, 0, 1, 1, 2)
        );
        assert_eq!(s.undelivered(), 3);
        let reports = seen.0.lock().unwrap();
        assert_eq!(reports.len(), 4);
        let kept = reports.iter().find(|r| r.path == "kept.txt").unwrap();
        assert_eq!(
            kept.sha256, None,
            "a skip without a header digest knows none"
        );
        assert_eq!(kept.stored_as.as_deref(), Some("kept.txt"));
        let refused = reports.iter().find(|r| r.path == "big.iso").unwrap();
        assert_eq!(refused.stored_as, None);
    }

    #[test]
    fn a_verdict_for_an_unknown_or_settled_file_is_an_error() {
        let (mut ledger, _) = ledger();
        assert!(ledger.verdict(3, damaged()).is_err());
        ledger.offered(0, &file("a", 1), None);
        assert!(ledger.verdict(0, damaged()).is_err(), "no body was sent");
    }
}
