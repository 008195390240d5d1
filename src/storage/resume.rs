//! Resume records: the sidecar beside each partial that says which file it
//! belongs to and how much of it is durable, and the check that an offer
//! may resume from it.

use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::{AtFlags, FileType, OFlags};

use super::dir::{open_in, stat_in, DirHandle};
use super::partial::hidden_name;
use super::{Claim, Storage};
use crate::paths::{PARTIAL_SUFFIX, SIDECAR_SUFFIX};

/// What a partial file belongs to, kept in its sidecar so a later session
/// can resume it. Stored as one JSON object (see docs/PROTOCOL.md).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResumeRecord {
    pub path: String,
    pub size: u64,
    pub mtime_secs: i64,
    pub mtime_nanos: u32,
    /// The sender's digest, when its offer carried one.
    pub sha256: Option<String>,
    /// Bytes known to be on disk (synced) at the last checkpoint.
    pub durable: u64,
}

impl ResumeRecord {
    /// Whether an offer describes the same file as this partial: same path
    /// and size, and the same digest when both are known, else the same mtime.
    pub fn matches(&self, other: &ResumeRecord) -> bool {
        let same_content = match (&self.sha256, &other.sha256) {
            (Some(a), Some(b)) => a == b,
            _ => self.mtime_secs == other.mtime_secs && self.mtime_nanos == other.mtime_nanos,
        };
        self.path == other.path && self.size == other.size && same_content
    }
}

pub(super) fn write_sidecar(
    dir: BorrowedFd<'_>,
    name: &str,
    record: &ResumeRecord,
) -> io::Result<()> {
    let json = serde_json::to_vec(record).map_err(io::Error::other)?;
    let mut file = open_in(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC,
        0o600,
    )?;
    file.write_all(&json)
}

fn read_sidecar(dir: BorrowedFd<'_>, name: &str) -> Option<ResumeRecord> {
    let file = open_in(dir, name, OFlags::RDONLY, 0).ok()?;
    // A sidecar is a few hundred bytes; anything bigger is not ours.
    let mut json = Vec::new();
    io::Read::read_to_end(&mut io::Read::take(file, 64 * 1024), &mut json).ok()?;
    serde_json::from_slice(&json).ok()
}

impl Storage {
    /// How many bytes of an earlier partial of this file can be kept:
    /// `Some(n)` when a partial and its sidecar match `offer` (the durable
    /// prefix, at most the file's length); otherwise a stale partial of the
    /// same name is removed and the answer is `None`. Only the holder of
    /// the path's claim may look, as no other session may be writing it.
    pub fn resumable(&self, claim: &Claim, offer: &ResumeRecord) -> Option<u64> {
        let parent = claim.path().parent();
        self.resumable_in(self.find_dir(parent.as_ref()).ok()?.as_ref(), claim, offer)
    }

    /// [`Storage::resumable`] in an already opened parent.
    pub fn resumable_in(
        &self,
        dir: Option<&DirHandle>,
        claim: &Claim,
        offer: &ResumeRecord,
    ) -> Option<u64> {
        let DirHandle(dir) = dir?;
        let name = claim.path().file_name();
        let partial_name = hidden_name(name, PARTIAL_SUFFIX);
        let sidecar_name = hidden_name(name, SIDECAR_SUFFIX);
        // The common case, no partial at all, costs one stat.
        let (kind, len) = stat_in(dir.fd.as_fd(), &partial_name).ok()?;
        let record = read_sidecar(dir.fd.as_fd(), &sidecar_name);
        match record {
            Some(record) if kind == FileType::RegularFile && record.matches(offer) => {
                Some(record.durable.min(len).min(offer.size))
            }
            _ => {
                let _ = rustix::fs::unlinkat(&dir.fd, partial_name.as_str(), AtFlags::empty());
                let _ = rustix::fs::unlinkat(&dir.fd, sidecar_name.as_str(), AtFlags::empty());
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::testing::{begin, record};
    use super::*;
    use crate::hashing;
    use crate::paths::WirePath;

    #[test]
    fn checkpointed_partial_resumes_and_its_prefix_is_hashed() {
        let root = tempfile::tempdir().unwrap();
        let storage = Storage::open(root.path(), false).unwrap();
        let path = WirePath::parse("big.bin").unwrap();
        let mut p = begin(&storage, &path, 10);
        p.write(b"01234").unwrap();
        p.checkpoint().unwrap();
        p.write(b"56").unwrap(); // written, not checkpointed
        drop(p);
        assert_eq!(
            storage.resumable(&storage.claim(&path).unwrap(), &record("big.bin", 10, 1)),
            Some(5)
        );
        let mut hasher = hashing::Hasher::new();
        let mut p = storage
            .begin(
                storage.claim(&path).unwrap(),
                record("big.bin", 10, 1),
                5,
                &mut hasher,
                None,
            )
            .unwrap();
        assert_eq!(p.written(), 5);
        p.write(b"56789").unwrap();
        assert_eq!(
            fs::read(root.path().join(".big.bin.xfer-part")).unwrap(),
            b"0123456789"
        );
        let mut expected = hashing::Hasher::new();
        expected.update(b"01234");
        assert_eq!(hasher.finish(), expected.finish());
    }

    #[test]
    fn a_partial_that_no_longer_matches_the_offer_is_discarded() {
        let root = tempfile::tempdir().unwrap();
        let storage = Storage::open(root.path(), false).unwrap();
        let path = WirePath::parse("f.bin").unwrap();
        let mut p = begin(&storage, &path, 10);
        p.write(b"0123").unwrap();
        p.checkpoint().unwrap();
        drop(p);
        // Different mtime: the source changed since the partial was written.
        assert_eq!(
            storage.resumable(&storage.claim(&path).unwrap(), &record("f.bin", 10, 2)),
            None
        );
        assert_eq!(
            fs::read_dir(root.path()).unwrap().count(),
            0,
            "partial and sidecar removed"
        );
    }
}
