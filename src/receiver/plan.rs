//! Planning one offer. For each entry, storage is asked what it holds
//! ([`look`]: the only I/O here), and [`decide`] — a pure function of the
//! entry, what this session saw of it before, what storage found, the limits
//! and what is left of the budgets — says what to do. `decide` is where
//! every refusal reason lives; it is unit-tested without disk or sockets.

use indicatif::HumanBytes;

use crate::error::describe_io;
use crate::hashing::to_hex;
use crate::paths::WirePath;
use crate::protocol::{Digest, Entry, EntryKind};
use crate::storage::{Claim, DirHandle, FilePlan, Metadata, ResumeRecord, Storage};

use super::ledger::Offered;

/// A storage error at plan time, said to be the receiver's (the sender
/// shows the same text).
fn on_receiver(e: &std::io::Error) -> String {
    format!("on the receiver: {}", describe_io(e))
}

/// What one sender may ask the receiver to store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest single file, in bytes.
    pub max_file_size: Option<u64>,
    /// Most bytes one session may store.
    pub max_session_bytes: Option<u64>,
    /// Most entries (files and directories) one session may offer.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_size: None,
            max_session_bytes: None,
            max_entries: 10_000_000,
        }
    }
}

/// Bytes planned so far may not exceed these; each planned body takes its
/// share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Free space on DIR's filesystem not yet promised to a planned body.
    pub free: u64,
    /// Bytes this session may still plan (`--max-session-size`).
    pub session_left: u64,
}

/// What storage holds for one offered file. `C` is the claim on its path
/// (generic so that [`decide`] can be tested without a disk).
#[derive(Debug)]
pub enum Found<C> {
    /// No file of that name and size: receive it, from `resume_from` when
    /// a matching partial is kept.
    Absent { claim: C, resume_from: u64 },
    /// Same name and size, with this digest: let the sender compare.
    SameSize {
        claim: C,
        existing: String,
        sha256: Digest,
    },
    /// Identical content is stored at `existing` already.
    Identical { existing: String },
    /// Storage could not look or claim it (a symlink or a non-directory on
    /// the way, another sender receiving the path right now), and why.
    Unusable(String),
}

/// What to do with one offered entry.
#[derive(Debug, PartialEq)]
pub enum Decision<C> {
    /// The directory exists now.
    Dir,
    /// Send the body from `offset`.
    Receive {
        claim: C,
        offset: u64,
    },
    /// Compare with the same-sized `existing` file of digest `sha256`.
    Compare {
        claim: C,
        existing: String,
        sha256: Digest,
    },
    /// Identical content is at `existing`; nothing to send.
    Skip {
        existing: String,
    },
    Refuse(String),
}

/// Why an entry is refused before storage is even asked, if it is; else
/// its validated path.
pub fn check(entry: &Entry, offered: &Offered, limits: &Limits) -> Result<WirePath, String> {
    let path = WirePath::parse(&entry.path).map_err(|e| format!("unsafe path: {e}"))?;
    if *offered == Offered::Twice {
        return Err(
            "offered twice in one session while its first offer is still in progress".into(),
        );
    }
    match limits.max_file_size {
        Some(max) if entry.kind == EntryKind::File && entry.size > max => Err(format!(
            "{} is over the receiver's limit of {} per file (--max-size)",
            HumanBytes(entry.size),
            HumanBytes(max)
        )),
        _ => Ok(path),
    }
}

/// The decision for one file, given what storage found; takes the body's
/// share of `budget` when it is to be received.
pub fn decide<C>(size: u64, found: Found<C>, budget: &mut Budget) -> Decision<C> {
    let (claim, offset) = match found {
        Found::Unusable(reason) => return Decision::Refuse(reason),
        Found::Identical { existing } => return Decision::Skip { existing },
        Found::SameSize {
            claim,
            existing,
            sha256,
        } => {
            return Decision::Compare {
                claim,
                existing,
                sha256,
            }
        }
        Found::Absent { claim, resume_from } => (claim, resume_from.min(size)),
    };
    let needed = size - offset;
    if needed > budget.free {
        return Decision::Refuse(format!(
            "not enough free space on the receiver: {} needed, {} available",
            HumanBytes(needed),
            HumanBytes(budget.free)
        ));
    }
    if needed > budget.session_left {
        return Decision::Refuse(format!(
            "over the receiver's limit of bytes per session (--max-session-size); \
             {} were left",
            HumanBytes(budget.session_left)
        ));
    }
    budget.free -= needed;
    budget.session_left -= needed;
    Decision::Receive { claim, offset }
}

/// Asks storage about one file to receive at `path`, whose parent is `dir`
/// (if it exists). The path is claimed for this session unless identical
/// content is already there, so a second sender of it is refused now, in
/// its plan, not after its body.
pub fn look(
    storage: &Storage,
    path: WirePath,
    entry: &Entry,
    dir: Option<&DirHandle>,
) -> Found<Claim> {
    let existing = match storage.plan_file_in(dir, &path, entry.size, entry.sha256) {
        Ok(FilePlan::Skip { existing }) => return Found::Identical { existing },
        Ok(plan) => plan,
        Err(e) => return Found::Unusable(on_receiver(&e)),
    };
    let claim = match storage.claim(&path) {
        Ok(claim) => claim,
        Err(e) => return Found::Unusable(on_receiver(&e)),
    };
    match existing {
        FilePlan::Compare { existing, sha256 } => Found::SameSize {
            claim,
            existing,
            sha256,
        },
        _ => {
            let resume_from = storage
                .resumable_in(dir, &claim, &record_of(entry))
                .unwrap_or(0);
            Found::Absent { claim, resume_from }
        }
    }
}

/// One entry of an offer, decided.
pub struct Decided {
    pub entry: Entry,
    pub decision: Decision<Claim>,
    /// The validated path (for directories, to set their times at the end).
    pub path: Option<WirePath>,
    /// A file's parent directory as found while planning, if it existed.
    pub dir: Option<DirHandle>,
}

/// Plans a whole offer against DIR (blocking: it may hash existing files).
/// `offered` says, per entry, whether this session saw its path before.
/// Returns the decisions in order and what is left of the session's budget.
pub fn plan_offer(
    storage: &Storage,
    entries: Vec<(Entry, Offered)>,
    limits: &Limits,
    session_left: u64,
) -> (Vec<Decided>, u64) {
    let mut budget = Budget {
        free: storage.free_space().unwrap_or(u64::MAX),
        session_left,
    };
    // Consecutive files usually share a directory: look it up once.
    let mut last_dir: Option<(Option<WirePath>, Option<DirHandle>)> = None;
    let decided = entries
        .into_iter()
        .map(|(entry, offered)| {
            let path = match check(&entry, &offered, limits) {
                Ok(path) => path,
                Err(reason) => {
                    return Decided {
                        entry,
                        decision: Decision::Refuse(reason),
                        path: None,
                        dir: None,
                    }
                }
            };
            if entry.kind == EntryKind::Dir {
                // A directory that did not exist may exist now.
                last_dir = None;
                let decision = match storage.make_dirs(Some(&path)) {
                    Ok(()) => Decision::Dir,
                    Err(e) => Decision::Refuse(on_receiver(&e)),
                };
                return Decided {
                    entry,
                    decision,
                    path: Some(path),
                    dir: None,
                };
            }
            let parent = path.parent();
            let dir = match &last_dir {
                Some((p, dir)) if *p == parent => Ok(dir.clone()),
                _ => storage.find_dir(parent.as_ref()),
            };
            let (decision, dir) = match dir {
                Err(e) => (Decision::Refuse(on_receiver(&e)), None),
                Ok(dir) => {
                    last_dir = Some((parent, dir.clone()));
                    let found = look(storage, path, &entry, dir.as_ref());
                    (decide(entry.size, found, &mut budget), dir)
                }
            };
            Decided {
                entry,
                decision,
                path: None,
                dir,
            }
        })
        .collect();
    (decided, budget.session_left)
}

/// The resume record a partial of `entry` carries.
pub fn record_of(entry: &Entry) -> ResumeRecord {
    ResumeRecord {
        path: entry.path.clone(),
        size: entry.size,
        mtime_secs: entry.mtime_secs,
        mtime_nanos: entry.mtime_nanos,
        sha256: entry.sha256.as_ref().map(to_hex),
        durable: 0,
    }
}

/// The permission bits and mtime `entry` is stored with.
pub fn metadata_of(entry: &Entry) -> Metadata {
    Metadata {
        mode: entry.mode,
        mtime_secs: entry.mtime_secs,
        mtime_nanos: entry.mtime_nanos,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, size: u64) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::File,
            size,
            mode: 0o644,
            mtime_secs: 0,
            mtime_nanos: 0,
            sha256: None,
        }
    }

    fn budget(free: u64, session_left: u64) -> Budget {
        Budget { free, session_left }
    }

    fn absent(resume_from: u64) -> Found<()> {
        Found::Absent {
            claim: (),
            resume_from,
        }
    }

    #[test]
    fn unsafe_repeated_and_oversized_entries_are_refused_before_storage_is_asked() {
        let limits = Limits {
            max_file_size: Some(100),
            ..Limits::default()
        };
        let cases = [
            (entry("../escape", 1), Offered::New, "unsafe path"),
            (entry("/etc/passwd", 1), Offered::New, "unsafe path"),
            (entry("dup.txt", 1), Offered::Twice, "offered twice"),
            (entry("big.iso", 101), Offered::New, "--max-size"),
        ];
        for (entry, offered, why) in cases {
            let refused = check(&entry, &offered, &limits).unwrap_err();
            assert!(refused.contains(why), "{}: {refused}", entry.path);
        }
        assert!(check(&entry("ok.txt", 100), &Offered::New, &limits).is_ok());
        assert!(check(&entry("again.bin", 5), &Offered::Retry, &limits).is_ok());
    }

    #[test]
    fn bodies_take_their_share_of_free_space_and_of_the_session_limit() {
        let mut left = budget(250, 1000);
        assert_eq!(
            decide(100, absent(0), &mut left),
            Decision::Receive {
                claim: (),
                offset: 0
            }
        );
        assert_eq!(left, budget(150, 900));
        // A resumed body needs only what is missing.
        assert_eq!(
            decide(200, absent(60), &mut left),
            Decision::Receive {
                claim: (),
                offset: 60
            }
        );
        assert_eq!(left, budget(10, 760));
        let Decision::Refuse(reason) = decide(11, absent(0), &mut left) else {
            panic!("over the free space");
        };
        assert!(reason.contains("not enough free space"), "{reason}");
        assert_eq!(left, budget(10, 760), "a refusal takes nothing");

        let mut left = budget(u64::MAX, 50);
        let Decision::Refuse(reason) = decide(51, absent(0), &mut left) else {
            panic!("over the session limit");
        };
        assert!(reason.contains("--max-session-size"), "{reason}");
    }

    #[test]
    fn what_storage_holds_decides_skip_compare_or_refuse_without_touching_the_budget() {
        let mut left = budget(0, 0);
        let found = Found::<()>::Identical {
            existing: "a (1).txt".into(),
        };
        assert_eq!(
            decide(5, found, &mut left),
            Decision::Skip {
                existing: "a (1).txt".into()
            }
        );
        let found = Found::SameSize {
            claim: (),
            existing: "a.txt".into(),
            sha256: [7; 32],
        };
        assert!(matches!(
            decide(5, found, &mut left),
            Decision::Compare { sha256, .. } if sha256 == [7; 32]
        ));
        let found = Found::<()>::Unusable("being received from another sender".into());
        assert_eq!(
            decide(5, found, &mut left),
            Decision::Refuse("being received from another sender".into())
        );
        // A kept prefix never counts for more than the file.
        let mut left = budget(10, 10);
        assert_eq!(
            decide(4, absent(9), &mut left),
            Decision::Receive {
                claim: (),
                offset: 4
            }
        );
    }
}
