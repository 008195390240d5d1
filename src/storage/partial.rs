//! Hidden partial files being written: their creation (claiming the path),
//! writes with writeback started as they go, and the checkpoints that make
//! a prefix durable for a resume.

use std::collections::HashSet;
use std::fs::{File, FileTimes};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rustix::fs::{AtFlags, OFlags};

use super::dir::{open_in, Dir, DirHandle};
use super::resume::write_sidecar;
use super::tmpfile::NamelessLink;
use super::{Metadata, ResumeRecord, Storage};
use crate::hashing;
use crate::paths::{WirePath, MAX_COMPONENT_LEN, PARTIAL_SUFFIX, SIDECAR_SUFFIX};

/// Bytes between two starts of writeback while a partial is written.
pub(super) const WRITEBACK_STEP: u64 = 8 * 1024 * 1024;

/// Most disk reserved ahead of the bytes written: a declared size is a claim,
/// so space is reserved as data arrives, a half lead at a time.
pub(super) const RESERVE_LEAD: u64 = 64 * 1024 * 1024;

/// The right to receive one path: taken when the file is planned, so a
/// second sender offering the same path is refused at once rather than
/// after its body, held by the planned entry and then by its [`Partial`].
/// Dropping it frees the path.
pub struct Claim {
    path: WirePath,
    /// The partial's path under DIR, its key in the active set.
    key: PathBuf,
    active: Arc<Mutex<HashSet<PathBuf>>>,
}

impl Claim {
    /// The path claimed.
    pub fn path(&self) -> &WirePath {
        &self.path
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Ok(mut active) = self.active.lock() {
            active.remove(&self.key);
        }
    }
}

/// A hidden file being received. Dropping it leaves the bytes on disk (a later
/// session may resume from them); [`Partial::discard`] removes them.
pub struct Partial {
    pub(super) file: File,
    pub(super) dir: Arc<Dir>,
    pub(super) partial_name: String,
    pub(super) sidecar_name: String,
    pub(super) record: ResumeRecord,
    pub(super) written: u64,
    /// Writeback has been started for bytes before this offset.
    pub(super) flushing: u64,
    /// Blocks are reserved (`fallocate` KEEP_SIZE) up to this offset.
    pub(super) reserved: u64,
    /// Whether to keep reserving ahead as writes advance.
    pub(super) reserving: bool,
    /// Released when the partial is dropped, after its last use.
    pub(super) claim: Claim,
    /// Created without a name (`O_TMPFILE`), and how it gets one when
    /// committed.
    pub(super) nameless: Option<NamelessLink>,
}

impl Drop for Partial {
    fn drop(&mut self) {
        self.release_reservation();
    }
}

impl Partial {
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)?;
        self.written += bytes.len() as u64;
        if self.reserving && self.reserved.saturating_sub(self.written) < RESERVE_LEAD / 2 {
            self.reserve_ahead();
        }
        if self.written - self.flushing >= WRITEBACK_STEP {
            // Start writing back what we have, without waiting for it.
            sync_range(
                &self.file,
                self.flushing,
                self.written - self.flushing,
                libc::SYNC_FILE_RANGE_WRITE,
            )?;
            self.flushing = self.written;
        }
        Ok(())
    }

    /// Records as durable the bytes whose writeback started earlier: waits
    /// for them (usually already on disk) and rewrites the sidecar. Much
    /// cheaper than [`Partial::checkpoint`], which flushes everything now.
    /// Like `sync_file_range(2)` it does not flush the drive's cache; the
    /// final digest check covers a prefix that did not survive a power loss.
    pub fn record_progress(&mut self) -> io::Result<()> {
        self.named()?;
        let upto = self.flushing;
        if upto <= self.record.durable {
            return Ok(());
        }
        let wait = libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        sync_range(&self.file, 0, upto, wait)?;
        self.record.durable = upto;
        write_sidecar(self.dir.fd.as_fd(), &self.sidecar_name, &self.record)
    }

    /// Bytes in the file so far, resumed prefix included.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Bytes recorded as durable at the last checkpoint.
    pub fn durable(&self) -> u64 {
        self.record.durable
    }

    /// Syncs what was written and records it as durable in the sidecar, so
    /// a crash after this point resumes from here. Space reserved beyond
    /// the data is given back: a partial kept for a resume holds only its bytes.
    pub fn checkpoint(&mut self) -> io::Result<()> {
        self.named()?;
        self.release_reservation();
        self.file.sync_data()?;
        self.record.durable = self.written;
        write_sidecar(self.dir.fd.as_fd(), &self.sidecar_name, &self.record)
    }

    /// Gives the file its final permissions and mtime (before the sync).
    pub fn set_metadata(&mut self, meta: &Metadata) -> io::Result<()> {
        self.file
            .set_times(FileTimes::new().set_modified(meta.mtime()))?;
        self.file.set_permissions(meta.permissions())
    }

    /// Reserves blocks up to [`RESERVE_LEAD`] past the bytes written, never
    /// past the declared size: big steps spare the filesystem allocating
    /// blocks piecemeal, and a peer that declares much and sends little
    /// holds at most one lead. KEEP_SIZE: the length still says what was
    /// written, which resuming relies on.
    fn reserve_ahead(&mut self) {
        let from = self.reserved.max(self.written);
        let to = self
            .record
            .size
            .min(self.written.saturating_add(RESERVE_LEAD));
        if to <= from {
            self.reserving = to < self.record.size;
            return;
        }
        let flags = rustix::fs::FallocateFlags::KEEP_SIZE;
        match rustix::fs::fallocate(&self.file, flags, from, to - from) {
            Ok(()) => {
                self.reserved = to;
                self.reserving = to < self.record.size;
            }
            // Unsupported here, or the disk is full (which the writes will
            // report): nothing is lost by going on without.
            Err(_) => self.reserving = false,
        }
    }

    /// Gives back the blocks reserved beyond the bytes written: truncating
    /// to the length frees those kept past it (`PUNCH_HOLE` would not do on
    /// ext4, which punches nothing beyond the length).
    fn release_reservation(&mut self) {
        if self.reserved <= self.written {
            return;
        }
        if self.file.set_len(self.written).is_ok() {
            self.reserved = self.written;
        }
    }

    /// Only a named partial can be resumed.
    fn named(&self) -> io::Result<()> {
        if self.nameless.is_some() {
            return Err(io::Error::other(
                "a file received whole has no partial to resume from",
            ));
        }
        Ok(())
    }

    /// Removes the partial file and its sidecar.
    pub fn discard(mut self) {
        // Unlinked below, its blocks go with it.
        self.reserved = 0;
        if self.nameless.is_some() {
            return; // closing it frees it
        }
        let _ = rustix::fs::unlinkat(&self.dir.fd, self.partial_name.as_str(), AtFlags::empty());
        let _ = rustix::fs::unlinkat(&self.dir.fd, self.sidecar_name.as_str(), AtFlags::empty());
    }

    /// The wire path this partial will be stored under.
    pub fn wire_path(&self) -> &WirePath {
        &self.claim.path
    }
}

/// `sync_file_range(2)`, which rustix does not wrap: the crate's one
/// syscall without a safe wrapper.
#[allow(unsafe_code)]
fn sync_range(file: &File, offset: u64, len: u64, flags: libc::c_uint) -> io::Result<()> {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::Error::other("range too large"));
    };
    // SAFETY: the fd is open for the life of `file`; the range is plain numbers.
    if unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Storage {
    /// Marks `path` as being received by the caller until the [`Claim`]
    /// is dropped; fails if another session holds it.
    pub fn claim(&self, path: &WirePath) -> io::Result<Claim> {
        let mut key = path.under(&self.root);
        key.set_file_name(hidden_name(path.file_name(), PARTIAL_SUFFIX));
        let mut active = self
            .active
            .lock()
            .map_err(|_| io::Error::other("internal fault: the active-path lock is poisoned"))?;
        if !active.insert(key.clone()) {
            return Err(io::Error::other(
                "this path is being received from another sender right now; \
                 send it again when that transfer is done",
            ));
        }
        Ok(Claim {
            path: path.clone(),
            key,
            active: Arc::clone(&self.active),
        })
    }

    /// Opens the hidden partial for the claimed path, creating parent
    /// directories. With `offset` 0 it starts empty; otherwise the first
    /// `offset` bytes of the existing partial are kept and fed to `hasher`,
    /// so the final digest covers the whole file. `dir` is the parent found
    /// when the file was planned, if it existed.
    pub fn begin(
        &self,
        claim: Claim,
        mut record: ResumeRecord,
        offset: u64,
        hasher: &mut hashing::Hasher,
        dir: Option<DirHandle>,
    ) -> io::Result<Partial> {
        let dir = self.parent_dir(claim.path(), dir)?;
        let partial_name = hidden_name(claim.path().file_name(), PARTIAL_SUFFIX);
        let sidecar_name = hidden_name(claim.path().file_name(), SIDECAR_SUFFIX);
        record.durable = offset;
        let mut flags = OFlags::RDWR | OFlags::CREATE;
        if offset == 0 {
            flags |= OFlags::TRUNC;
        }
        let file = open_in(dir.fd.as_fd(), &partial_name, flags, 0o600)?;
        let mut partial = Partial {
            file,
            dir,
            partial_name,
            sidecar_name,
            record,
            written: offset,
            flushing: offset,
            reserved: 0,
            reserving: false,
            claim,
            nameless: None,
        };
        if offset > 0 {
            if hashing::hash_prefix(&mut partial.file, offset, hasher)? != offset {
                return Err(io::Error::other(
                    "the partial file is shorter than its record",
                ));
            }
            partial.file.set_len(offset)?;
            io::Seek::seek(&mut partial.file, io::SeekFrom::Start(offset))?;
            write_sidecar(
                partial.dir.fd.as_fd(),
                &partial.sidecar_name,
                &partial.record,
            )?;
        } else {
            // A fresh file gets its resume record at the first checkpoint (or
            // when its session ends early): most files finish long before.
            let _ = rustix::fs::unlinkat(
                &partial.dir.fd,
                partial.sidecar_name.as_str(),
                AtFlags::empty(),
            );
        }
        // A body within one writeback step is not worth a reservation.
        if partial.record.size.saturating_sub(offset) > WRITEBACK_STEP {
            partial.reserving = true;
            partial.reserve_ahead();
        }
        Ok(partial)
    }

    /// The parent directory of `path`: `dir` when it was found at plan
    /// time, else walked to (and created as needed) now.
    pub(super) fn parent_dir(
        &self,
        path: &WirePath,
        dir: Option<DirHandle>,
    ) -> io::Result<Arc<Dir>> {
        match dir {
            Some(DirHandle(dir)) => Ok(dir),
            None => Ok(Arc::new(self.open_dir(path.parent().as_ref(), true)?)),
        }
    }
}

/// `.NAME` + `suffix`, shortened with a digest of the name when that would
/// exceed the filesystem's name limit.
pub fn hidden_name(name: &str, suffix: &str) -> String {
    let plain = format!(".{name}{suffix}");
    if plain.len() <= MAX_COMPONENT_LEN {
        return plain;
    }
    let tag = &hashing::to_hex(&hashing::digest(name.as_bytes()))[..16];
    let room = MAX_COMPONENT_LEN - 1 - suffix.len() - 1 - tag.len();
    let mut cut = room;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(".{}~{tag}{suffix}", &name[..cut])
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    use super::super::testing::{begin, record};
    use super::*;

    #[test]
    fn hidden_names_are_hidden_and_bounded() {
        assert_eq!(hidden_name("a.bin", PARTIAL_SUFFIX), ".a.bin.xfer-part");
        assert_eq!(hidden_name("a.bin", SIDECAR_SUFFIX), ".a.bin.xfer-meta");
        let long = "é".repeat(127); // 254 bytes
        let p = hidden_name(&long, PARTIAL_SUFFIX);
        assert!(p.len() <= MAX_COMPONENT_LEN, "{}", p.len());
        assert!(p.starts_with('.') && p.ends_with(PARTIAL_SUFFIX));
        assert_ne!(p, hidden_name(&"é".repeat(126), PARTIAL_SUFFIX));
    }

    #[test]
    fn a_long_body_has_its_space_reserved_but_its_length_is_what_was_written() {
        use std::os::unix::fs::MetadataExt;
        let root = tempfile::tempdir().unwrap();
        let storage = Storage::open(root.path(), false).unwrap();
        let path = WirePath::parse("big.bin").unwrap();
        let size = 4 * WRITEBACK_STEP;
        let mut p = storage
            .begin(
                storage.claim(&path).unwrap(),
                record("big.bin", size, 1),
                0,
                &mut hashing::Hasher::new(),
                None,
            )
            .unwrap();
        p.write(b"abc").unwrap();
        let meta = fs::metadata(root.path().join(".big.bin.xfer-part")).unwrap();
        assert_eq!(meta.len(), 3);
        assert!(meta.blocks() * 512 >= size, "{} blocks", meta.blocks());
    }

    /// Bytes the filesystem has allocated to the partial for `name`.
    fn allocated(root: &Path, name: &str) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(root.join(name)).unwrap().blocks() * 512
    }

    #[test]
    fn a_declared_size_reserves_only_a_bounded_lead_and_a_kept_partial_none() {
        let root = tempfile::tempdir().unwrap();
        let storage = Storage::open(root.path(), false).unwrap();
        let path = WirePath::parse("huge.bin").unwrap();
        let mut p = begin(&storage, &path, 4 << 30);
        p.write(b"abc").unwrap();
        let reserved = allocated(root.path(), ".huge.bin.xfer-part");
        assert!(
            reserved <= RESERVE_LEAD + (1 << 20),
            "{reserved} bytes reserved"
        );
        // Kept for a resume at the session's end: nothing held beyond the data.
        p.checkpoint().unwrap();
        let kept = allocated(root.path(), ".huge.bin.xfer-part");
        assert!(kept < 1 << 20, "{kept} bytes still allocated");
        drop(p);
        assert_eq!(
            storage.resumable(
                &storage.claim(&path).unwrap(),
                &record("huge.bin", 4 << 30, 1)
            ),
            Some(3)
        );
    }

    #[test]
    fn the_reservation_moves_ahead_with_the_writes() {
        let root = tempfile::tempdir().unwrap();
        let storage = Storage::open(root.path(), false).unwrap();
        let mut p = begin(
            &storage,
            &WirePath::parse("big.bin").unwrap(),
            4 * RESERVE_LEAD,
        );
        let chunk = vec![0u8; 1 << 20];
        while p.written() < RESERVE_LEAD * 3 / 2 {
            p.write(&chunk).unwrap();
        }
        let reserved = allocated(root.path(), ".big.bin.xfer-part");
        let ahead = reserved - p.written();
        assert!(
            (RESERVE_LEAD / 2..=RESERVE_LEAD + (1 << 20)).contains(&ahead),
            "{ahead} bytes reserved ahead"
        );
    }

    #[test]
    fn a_dropped_partial_releases_its_reservation() {
        let root = tempfile::tempdir().unwrap();
        let storage = Storage::open(root.path(), false).unwrap();
        let mut p = begin(&storage, &WirePath::parse("huge.bin").unwrap(), 4 << 30);
        p.write(b"abc").unwrap();
        drop(p);
        let kept = allocated(root.path(), ".huge.bin.xfer-part");
        assert!(kept < 1 << 20, "{kept} bytes still allocated");
        assert_eq!(
            fs::read(root.path().join(".huge.bin.xfer-part")).unwrap(),
            b"abc"
        );
    }

    #[test]
    fn a_path_is_claimed_once_until_its_claim_or_partial_is_dropped() {
        let root = tempfile::tempdir().unwrap();
        let storage = Storage::open(root.path(), false).unwrap();
        let path = WirePath::parse("d/same.bin").unwrap();
        let claim = storage.claim(&path).unwrap();
        let err = storage.claim(&path).err().unwrap();
        assert!(err.to_string().contains("another sender"), "{err}");
        let other = storage.claim(&WirePath::parse("same.bin").unwrap());
        assert!(other.is_ok(), "only the same path is taken");
        drop(claim);
        // A partial holds its path's claim for as long as it lives.
        let partial = begin(&storage, &path, 1);
        assert!(storage.claim(&path).is_err());
        drop(partial);
        storage.claim(&path).unwrap();
    }
}
