//! Everything that touches the receiver's DIR: directories, hidden partial
//! files, conflicts, and the sync-then-rename that makes a file visible.
//!
//! Rules (DESIGN §3): bytes land in a hidden `.NAME.xfer-part` beside the
//! destination; only a verified partial is synced and moved to its final name,
//! and the rename is synced too, so a visible file is always complete.
//!
//! Confinement: every operation goes through directory handles. A path is
//! walked from DIR's handle one component at a time with `openat(O_NOFOLLOW |
//! O_DIRECTORY)`, and files are then created, linked, renamed and removed
//! relative to the final directory's handle (`openat`, `linkat`, `renameat`,
//! `unlinkat`). A symlink anywhere on the way is refused by the kernel at the
//! moment of use, so one swapped in after a check cannot redirect a write.

use std::collections::HashSet;
use std::fs::{self, File, FileTimes, Permissions};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, CWD};
use rustix::io::Errno;

use crate::hashing;
use crate::paths::{WirePath, MAX_COMPONENT_LEN, PARTIAL_SUFFIX, SIDECAR_SUFFIX};
use crate::protocol::Digest;

/// How many `name (n).ext` candidates are tried before giving up.
const MAX_CONFLICT_SUFFIX: u32 = 9999;

/// Bytes between two starts of writeback while a partial is written.
const WRITEBACK_STEP: u64 = 8 * 1024 * 1024;

/// The receiver's DIR and the partials being written into it right now.
pub struct Storage {
    root: PathBuf,
    overwrite: bool,
    root_handle: File,
    active: Arc<Mutex<HashSet<PathBuf>>>,
    /// How a nameless file in DIR can be given a name, as tried once at
    /// start; `None` when it cannot.
    nameless_link: Option<NamelessLink>,
}

/// What to do with an offered file, as far as DIR is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilePlan {
    /// Receive the body.
    Receive,
    /// A file of the same name and size exists; the sender compares digests.
    Compare { existing: String, sha256: Digest },
    /// Identical content is already stored here.
    Skip { existing: String },
}

/// Unix permission bits and modification time to give a stored entry.
#[derive(Debug, Clone, Copy)]
pub struct Metadata {
    pub mode: u32,
    pub mtime_secs: i64,
    pub mtime_nanos: u32,
}

impl Metadata {
    fn mtime(&self) -> SystemTime {
        let nanos = Duration::from_nanos(u64::from(self.mtime_nanos.min(999_999_999)));
        if self.mtime_secs >= 0 {
            UNIX_EPOCH + Duration::from_secs(self.mtime_secs as u64) + nanos
        } else {
            UNIX_EPOCH - Duration::from_secs(self.mtime_secs.unsigned_abs()) + nanos
        }
    }

    /// Only permission bits travel: set-id and sticky bits from a peer are dropped.
    fn permissions(&self) -> Permissions {
        Permissions::from_mode(self.mode & 0o777)
    }
}

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

/// A directory inside DIR, held open, and its path for messages.
struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

/// An open directory inside DIR, found (without following symlinks) when a
/// file was planned and used again to write it, so a small file costs one
/// directory walk instead of three.
#[derive(Clone)]
pub struct DirHandle(Arc<Dir>);

/// A hidden file being received. Dropping it leaves the bytes on disk (a later
/// session may resume from them); [`Partial::discard`] removes them.
pub struct Partial {
    file: File,
    dir: Arc<Dir>,
    partial_name: String,
    sidecar_name: String,
    record: ResumeRecord,
    written: u64,
    /// Writeback has been started for bytes before this offset.
    flushing: u64,
    wire: WirePath,
    active: Arc<Mutex<HashSet<PathBuf>>>,
    /// Created without a name (`O_TMPFILE`), and how it gets one when
    /// committed.
    nameless: Option<NamelessLink>,
}

impl Drop for Partial {
    fn drop(&mut self) {
        if let Ok(mut active) = self.active.lock() {
            active.remove(&self.dir.path.join(&self.partial_name));
        }
    }
}

impl Partial {
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)?;
        self.written += bytes.len() as u64;
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
    /// a crash after this point resumes from here.
    pub fn checkpoint(&mut self) -> io::Result<()> {
        self.named()?;
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
    pub fn discard(self) {
        if self.nameless.is_some() {
            return; // closing it frees it
        }
        let _ = rustix::fs::unlinkat(&self.dir.fd, self.partial_name.as_str(), AtFlags::empty());
        let _ = rustix::fs::unlinkat(&self.dir.fd, self.sidecar_name.as_str(), AtFlags::empty());
    }

    /// The wire path this partial will be stored under.
    pub fn wire_path(&self) -> &WirePath {
        &self.wire
    }
}

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

/// A way to give a nameless (`O_TMPFILE`) file a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NamelessLink {
    /// `linkat` of the descriptor itself (`AT_EMPTY_PATH`): Linux 6.10 and
    /// later allow it to the file's opener, older ones only to root. It
    /// skips the path walk through `/proc`, a quarter of a link's cost.
    Descriptor,
    /// `linkat` of `/proc/self/fd/N`, following it.
    ProcFd,
}

impl NamelessLink {
    /// Links `file` at `name` in `dir`.
    fn link(self, file: &File, dir: BorrowedFd<'_>, name: &str) -> rustix::io::Result<()> {
        match self {
            NamelessLink::Descriptor => {
                rustix::fs::linkat(file, "", dir, name, AtFlags::EMPTY_PATH)
            }
            NamelessLink::ProcFd => {
                let source = format!("/proc/self/fd/{}", file.as_raw_fd());
                rustix::fs::linkat(CWD, source.as_str(), dir, name, AtFlags::SYMLINK_FOLLOW)
            }
        }
    }
}

/// A new nameless (`O_TMPFILE`) file in `dir`, readable only by us.
fn open_nameless(dir: BorrowedFd<'_>) -> rustix::io::Result<File> {
    let flags = OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, ".", flags, Mode::from_raw_mode(0o600))?;
    Ok(File::from(fd))
}

/// Tries once what small files rely on: a nameless (`O_TMPFILE`) file in
/// `dir` given a name, by descriptor or else through `/proc/self/fd`. On a
/// filesystem or kernel that allows neither, every body gets a named partial
/// instead. The probe's name is a partial's, so a crash here leaves nothing
/// the stale cleanup would not remove.
fn probe_nameless_link(dir: &File) -> Option<NamelessLink> {
    let file = open_nameless(dir.as_fd()).ok()?;
    let name = format!(".xfer-probe-{}{PARTIAL_SUFFIX}", std::process::id());
    let works = [NamelessLink::Descriptor, NamelessLink::ProcFd]
        .into_iter()
        .find(|method| method.link(&file, dir.as_fd(), &name).is_ok())?;
    let _ = rustix::fs::unlinkat(dir, name.as_str(), AtFlags::empty());
    Some(works)
}

/// Opens `name` in `dir` without following a symlink in its place.
fn open_in(dir: BorrowedFd<'_>, name: &str, flags: OFlags, mode: u32) -> io::Result<File> {
    let fd = rustix::fs::openat(
        dir,
        name,
        flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )?;
    Ok(File::from(fd))
}

/// The type and size of `name` in `dir`, not following a symlink.
fn stat_in(dir: BorrowedFd<'_>, name: &str) -> io::Result<(FileType, u64)> {
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok((
        FileType::from_raw_mode(st.st_mode),
        u64::try_from(st.st_size).unwrap_or(0),
    ))
}

fn write_sidecar(dir: BorrowedFd<'_>, name: &str, record: &ResumeRecord) -> io::Result<()> {
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

fn is_missing(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR))
}

impl Storage {
    /// Opens (creating if needed) the receiving directory.
    pub fn open(root: &Path, overwrite: bool) -> io::Result<Storage> {
        fs::create_dir_all(root)?;
        let root = root.canonicalize()?;
        let root_handle = File::from(rustix::fs::open(
            &root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?);
        Ok(Storage {
            root,
            overwrite,
            nameless_link: probe_nameless_link(&root_handle),
            root_handle,
            active: Arc::default(),
        })
    }

    /// Bytes available to us on DIR's filesystem.
    pub fn free_space(&self) -> io::Result<u64> {
        let stat = rustix::fs::fstatvfs(&self.root_handle)?;
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    }

    /// Walks from DIR to the directory `path`, one component at a time and
    /// never through a symlink, creating missing directories when `create`.
    fn open_dir(&self, path: Option<&str>, create: bool) -> io::Result<Dir> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut fd = rustix::fs::openat(&self.root_handle, ".", flags, Mode::empty())?;
        let mut shown = self.root.clone();
        for component in path.into_iter().flat_map(|p| p.split('/')) {
            shown.push(component);
            let mut opened = rustix::fs::openat(&fd, component, flags, Mode::empty());
            if create && matches!(opened, Err(Errno::NOENT)) {
                match rustix::fs::mkdirat(&fd, component, Mode::from_raw_mode(0o755)) {
                    // Created concurrently by another session: open it all the same.
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                opened = rustix::fs::openat(&fd, component, flags, Mode::empty());
            }
            fd = match opened {
                Ok(next) => next,
                Err(Errno::LOOP | Errno::MLINK | Errno::NOTDIR) => {
                    let what = match stat_in(fd.as_fd(), component) {
                        Ok((FileType::Symlink, _)) => "is a symlink; refusing to write through it",
                        _ => "exists and is not a directory",
                    };
                    return Err(io::Error::other(format!(
                        "'{}' {what}",
                        self.relative(&shown)
                    )));
                }
                Err(e) => return Err(e.into()),
            };
        }
        Ok(Dir { fd, path: shown })
    }

    /// Creates `path` and its parents as directories, refusing symlinks and
    /// non-directories on the way.
    pub fn make_dirs(&self, path: Option<&str>) -> io::Result<()> {
        self.open_dir(path, true).map(drop)
    }

    /// Applies mode and mtime to a directory received in this session.
    pub fn set_dir_metadata(&self, path: &WirePath, meta: &Metadata) -> io::Result<()> {
        let dir = File::from(self.open_dir(Some(path.as_str()), false)?.fd);
        // Keep the owner able to write, or a later session could not add files.
        dir.set_permissions(Permissions::from_mode((meta.mode & 0o777) | 0o700))?;
        dir.set_times(FileTimes::new().set_modified(meta.mtime()))
    }

    /// The directory `parent` (DIR itself for `None`), if it exists.
    pub fn find_dir(&self, parent: Option<&str>) -> io::Result<Option<DirHandle>> {
        match self.open_dir(parent, false) {
            Ok(dir) => Ok(Some(DirHandle(Arc::new(dir)))),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Decides, from what DIR holds now, whether an offered file must be sent.
    /// Walks the conflict names (`name`, `name (1)`, ...) looking for the same
    /// content, so the same file is never stored twice.
    pub fn plan_file(
        &self,
        path: &WirePath,
        size: u64,
        sha256: Option<Digest>,
    ) -> io::Result<FilePlan> {
        self.plan_file_in(self.find_dir(path.parent())?.as_ref(), path, size, sha256)
    }

    /// [`Storage::plan_file`] in an already opened parent (`None`: it does not exist yet).
    pub fn plan_file_in(
        &self,
        dir: Option<&DirHandle>,
        path: &WirePath,
        size: u64,
        sha256: Option<Digest>,
    ) -> io::Result<FilePlan> {
        let Some(DirHandle(dir)) = dir else {
            return Ok(FilePlan::Receive);
        };
        for n in 0..=MAX_CONFLICT_SUFFIX {
            let name = conflict_name(path.file_name(), n);
            let (kind, len) = match stat_in(dir.fd.as_fd(), &name) {
                Ok(found) => found,
                Err(e) if is_missing(&e) => return Ok(FilePlan::Receive),
                Err(e) => return Err(e),
            };
            if kind != FileType::RegularFile || len != size {
                continue;
            }
            let existing = self.relative(&dir.path.join(&name));
            let (theirs, _) =
                hashing::hash_reader(&mut open_in(dir.fd.as_fd(), &name, OFlags::RDONLY, 0)?)?;
            match sha256 {
                Some(ours) if ours == theirs => return Ok(FilePlan::Skip { existing }),
                Some(_) => continue,
                None => {
                    return Ok(FilePlan::Compare {
                        existing,
                        sha256: theirs,
                    })
                }
            }
        }
        Ok(FilePlan::Receive)
    }

    /// How many bytes of an earlier partial of this file can be kept:
    /// `Some(n)` when a partial and its sidecar match `offer` (the durable
    /// prefix, at most the file's length); otherwise a stale partial of the
    /// same name is removed and the answer is `None`.
    pub fn resumable(&self, path: &WirePath, offer: &ResumeRecord) -> Option<u64> {
        self.resumable_in(self.find_dir(path.parent()).ok()?.as_ref(), path, offer)
    }

    /// [`Storage::resumable`] in an already opened parent.
    pub fn resumable_in(
        &self,
        dir: Option<&DirHandle>,
        path: &WirePath,
        offer: &ResumeRecord,
    ) -> Option<u64> {
        let DirHandle(dir) = dir?;
        let partial_name = hidden_name(path.file_name(), PARTIAL_SUFFIX);
        let sidecar_name = hidden_name(path.file_name(), SIDECAR_SUFFIX);
        if self
            .active
            .lock()
            .ok()?
            .contains(&dir.path.join(&partial_name))
        {
            return None;
        }
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

    /// Opens the hidden partial for `path`, creating parent directories.
    /// With `offset` 0 it starts empty; otherwise the first `offset` bytes of
    /// the existing partial are kept and fed to `hasher`, so the final digest
    /// covers the whole file. Fails if another session is receiving the path.
    /// `dir` is the parent found when the file was planned, if it existed.
    pub fn begin(
        &self,
        path: &WirePath,
        mut record: ResumeRecord,
        offset: u64,
        hasher: &mut hashing::Hasher,
        dir: Option<DirHandle>,
    ) -> io::Result<Partial> {
        let (dir, partial_name, key) = self.claim(path, dir)?;
        let sidecar_name = hidden_name(path.file_name(), SIDECAR_SUFFIX);
        record.durable = offset;
        let mut flags = OFlags::RDWR | OFlags::CREATE;
        if offset == 0 {
            flags |= OFlags::TRUNC;
        }
        let file = match open_in(dir.fd.as_fd(), &partial_name, flags, 0o600) {
            Ok(file) => file,
            Err(e) => {
                self.release(&key);
                return Err(e);
            }
        };
        // From here on, dropping `partial` releases the path.
        let mut partial = Partial {
            file,
            dir,
            partial_name,
            sidecar_name,
            record,
            written: offset,
            flushing: offset,
            wire: path.clone(),
            active: Arc::clone(&self.active),
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
        let rest = partial.record.size.saturating_sub(offset);
        if rest > WRITEBACK_STEP {
            // A body longer than one writeback step gets its blocks reserved
            // at once, which spares the filesystem allocating them piecemeal
            // (receiver system time -0.1 to -0.2 s per GiB) and means a disk
            // filling up meanwhile cannot cut it short. KEEP_SIZE: the length
            // still says what was written, which resuming relies on. Where
            // it is unsupported, nothing is lost.
            let _ = rustix::fs::fallocate(
                &partial.file,
                rustix::fs::FallocateFlags::KEEP_SIZE,
                offset,
                rest,
            );
        }
        Ok(partial)
    }

    /// Finds the parent directory of `path` (creating it as needed) and
    /// marks its partial as being received, failing if another session
    /// already is. Returns the directory, the partial's name and its key
    /// in the active set.
    fn claim(
        &self,
        path: &WirePath,
        dir: Option<DirHandle>,
    ) -> io::Result<(Arc<Dir>, String, PathBuf)> {
        let dir = match dir {
            Some(DirHandle(dir)) => dir,
            None => Arc::new(self.open_dir(path.parent(), true)?),
        };
        let partial_name = hidden_name(path.file_name(), PARTIAL_SUFFIX);
        let key = dir.path.join(&partial_name);
        if !self
            .active
            .lock()
            .map_err(|_| io::Error::other("lock poisoned"))?
            .insert(key.clone())
        {
            return Err(io::Error::other(
                "the same path is being received from another sender right now",
            ));
        }
        Ok((dir, partial_name, key))
    }

    /// Undoes [`Storage::claim`] when no partial came of it.
    fn release(&self, key: &Path) {
        if let Ok(mut active) = self.active.lock() {
            active.remove(key);
        }
    }

    /// [`Storage::begin`] from offset 0, for a body that arrives whole and
    /// so never needs a name to resume from. Where the kernel allows, the
    /// file is created without one (`O_TMPFILE`) and linked at its final
    /// name when committed: a create and an unlink fewer per small file,
    /// and a receiver killed meanwhile leaves nothing behind.
    pub fn begin_whole(
        &self,
        path: &WirePath,
        record: ResumeRecord,
        dir: Option<DirHandle>,
    ) -> io::Result<Partial> {
        let mut unused = hashing::Hasher::new();
        let (false, Some(method)) = (self.overwrite, self.nameless_link) else {
            // Replacing a file atomically needs a named file to rename.
            return self.begin(path, record, 0, &mut unused, dir);
        };
        let (dir, partial_name, key) = self.claim(path, dir)?;
        match open_nameless(dir.fd.as_fd()) {
            Ok(file) => Ok(Partial {
                file,
                sidecar_name: hidden_name(path.file_name(), SIDECAR_SUFFIX),
                dir,
                partial_name,
                record,
                written: 0,
                flushing: 0,
                wire: path.clone(),
                active: Arc::clone(&self.active),
                nameless: Some(method),
            }),
            // Not on this filesystem: a named partial, as for any other body.
            Err(_) => {
                self.release(&key);
                self.begin(path, record, 0, &mut unused, Some(DirHandle(dir)))
            }
        }
    }

    /// Removes partial files and their sidecars under DIR: all of them, or
    /// those untouched for longer than `older_than`. Returns how many.
    pub fn clean_partials(&self, older_than: Option<Duration>) -> io::Result<u64> {
        let now = SystemTime::now();
        let mut removed = 0;
        let mut dirs = vec![self.root.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in fs::read_dir(&dir)? {
                let entry = entry?;
                let kind = entry.file_type()?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if kind.is_dir() {
                    dirs.push(entry.path());
                    continue;
                }
                let ours = name.starts_with('.')
                    && (name.ends_with(PARTIAL_SUFFIX) || name.ends_with(SIDECAR_SUFFIX));
                if !ours || !kind.is_file() {
                    continue;
                }
                let age = entry
                    .metadata()?
                    .modified()
                    .ok()
                    .and_then(|m| now.duration_since(m).ok());
                let stale = match older_than {
                    None => true,
                    Some(limit) => age.is_some_and(|a| a > limit),
                };
                if stale
                    && !self
                        .active
                        .lock()
                        .map(|a| a.contains(&entry.path()))
                        .unwrap_or(true)
                {
                    fs::remove_file(entry.path())?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Makes a group of verified partials durable and visible: one filesystem
    /// sync for all their data, the renames, one more sync for the renames.
    /// Returns, per partial, where it was stored (relative to DIR).
    pub fn commit(&self, group: Vec<Partial>) -> Vec<io::Result<String>> {
        if group.is_empty() {
            return Vec::new();
        }
        if let Err(e) = self.sync_filesystem() {
            let reason = format!("syncing data to disk failed: {e}");
            return group
                .into_iter()
                .map(|p| {
                    p.discard();
                    Err(io::Error::other(reason.clone()))
                })
                .collect();
        }
        let results: Vec<io::Result<String>> = group
            .into_iter()
            .map(|partial| {
                let stored = self.publish(&partial);
                if stored.is_err() {
                    partial.discard();
                }
                stored
            })
            .collect();
        if let Err(e) = self.sync_filesystem() {
            let reason = format!("syncing directory entries to disk failed: {e}");
            return results
                .into_iter()
                .map(|_| Err(io::Error::other(reason.clone())))
                .collect();
        }
        results
    }

    /// Moves one synced partial to its final name, honouring the conflict
    /// rule. Everything happens relative to the partial's directory handle.
    fn publish(&self, partial: &Partial) -> io::Result<String> {
        let dir = &partial.dir;
        let name = partial.wire.file_name();
        let from = partial.partial_name.as_str();
        if self.overwrite && partial.nameless.is_none() {
            rustix::fs::renameat(&dir.fd, from, &dir.fd, name)?;
            let _ = rustix::fs::unlinkat(&dir.fd, partial.sidecar_name.as_str(), AtFlags::empty());
            return Ok(self.relative(&dir.path.join(name)));
        }
        // Gives the file the name `target` unless it is taken (`Ok(false)`).
        let place = |target: &str| -> io::Result<bool> {
            if let Some(method) = partial.nameless {
                return match method.link(&partial.file, dir.fd.as_fd(), target) {
                    Ok(()) => Ok(true),
                    Err(Errno::EXIST) => Ok(false),
                    Err(e) => Err(e.into()),
                };
            }
            match rustix::fs::linkat(&dir.fd, from, &dir.fd, target, AtFlags::empty()) {
                Ok(()) => {
                    rustix::fs::unlinkat(&dir.fd, from, AtFlags::empty())?;
                    Ok(true)
                }
                Err(Errno::EXIST) => Ok(false),
                // No hard links on this filesystem: check, then rename.
                Err(_) => match stat_in(dir.fd.as_fd(), target) {
                    Ok(_) => Ok(false),
                    Err(e) if is_missing(&e) => {
                        rustix::fs::renameat(&dir.fd, from, &dir.fd, target)?;
                        Ok(true)
                    }
                    Err(e) => Err(e),
                },
            }
        };
        for n in 0..=MAX_CONFLICT_SUFFIX {
            let target = conflict_name(name, n);
            if place(&target)? {
                if partial.nameless.is_none() {
                    let sidecar = partial.sidecar_name.as_str();
                    let _ = rustix::fs::unlinkat(&dir.fd, sidecar, AtFlags::empty());
                }
                return Ok(self.relative(&dir.path.join(&target)));
            }
        }
        Err(io::Error::other(format!(
            "too many files named like '{name}'"
        )))
    }

    fn sync_filesystem(&self) -> io::Result<()> {
        Ok(rustix::fs::syncfs(&self.root_handle)?)
    }

    /// `full` relative to DIR, `/`-separated, for reports.
    fn relative(&self, full: &Path) -> String {
        let rel = full.strip_prefix(&self.root).unwrap_or(full);
        rel.components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/")
    }
}

/// `name`, then `name (1).ext`, `name (2).ext`, ... for n = 0, 1, 2...
pub fn conflict_name(name: &str, n: u32) -> String {
    if n == 0 {
        return name.to_owned();
    }
    match name.rfind('.') {
        Some(dot) if dot > 0 => format!("{} ({n}){}", &name[..dot], &name[dot..]),
        _ => format!("{name} ({n})"),
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
    use super::*;

    #[test]
    fn conflict_names_keep_the_extension() {
        assert_eq!(conflict_name("a.txt", 0), "a.txt");
        assert_eq!(conflict_name("a.txt", 1), "a (1).txt");
        assert_eq!(conflict_name("archive.tar.gz", 2), "archive.tar (2).gz");
        assert_eq!(conflict_name(".bashrc", 1), ".bashrc (1)");
        assert_eq!(conflict_name("README", 3), "README (3)");
    }

    fn record(path: &str, size: u64, mtime: i64) -> ResumeRecord {
        ResumeRecord {
            path: path.into(),
            size,
            mtime_secs: mtime,
            mtime_nanos: 0,
            sha256: None,
            durable: 0,
        }
    }

    fn begin(storage: &Storage, path: &WirePath, size: u64) -> Partial {
        storage
            .begin(
                path,
                record(path.as_str(), size, 1),
                0,
                &mut hashing::Hasher::new(),
                None,
            )
            .unwrap()
    }

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
    fn make_dirs_refuses_a_planted_symlink() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("link")).unwrap();
        let storage = Storage::open(root.path(), false).unwrap();
        let path = WirePath::parse("link/x.bin").unwrap();
        let err = storage
            .begin(
                &path,
                record("link/x.bin", 1, 1),
                0,
                &mut hashing::Hasher::new(),
                None,
            )
            .err()
            .unwrap();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn partial_is_hidden_until_committed_then_conflicts_get_a_new_name() {
        let root = tempfile::tempdir().unwrap();
        let storage = Storage::open(root.path(), false).unwrap();
        let path = WirePath::parse("d/f.txt").unwrap();
        let mut p = begin(&storage, &path, 3);
        p.write(b"one").unwrap();
        assert!(!root.path().join("d/f.txt").exists());
        assert!(root.path().join("d/.f.txt.xfer-part").exists());
        assert!(
            !root.path().join("d/.f.txt.xfer-meta").exists(),
            "no record before a checkpoint"
        );
        assert_eq!(storage.commit(vec![p]).pop().unwrap().unwrap(), "d/f.txt");
        let left: Vec<_> = fs::read_dir(root.path().join("d"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["f.txt"], "partial and sidecar are gone");

        let mut p = begin(&storage, &path, 3);
        p.write(b"two").unwrap();
        assert_eq!(
            storage.commit(vec![p]).pop().unwrap().unwrap(),
            "d/f (1).txt"
        );
        assert_eq!(fs::read(root.path().join("d/f.txt")).unwrap(), b"one");
        assert_eq!(fs::read(root.path().join("d/f (1).txt")).unwrap(), b"two");

        let plan = storage
            .plan_file(&path, 3, Some(hashing::digest(b"two")))
            .unwrap();
        assert_eq!(
            plan,
            FilePlan::Skip {
                existing: "d/f (1).txt".into()
            }
        );
        let plan = storage.plan_file(&path, 3, None).unwrap();
        assert_eq!(
            plan,
            FilePlan::Compare {
                existing: "d/f.txt".into(),
                sha256: hashing::digest(b"one")
            }
        );
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn both_ways_of_naming_a_nameless_file_link_its_bytes_and_refuse_a_taken_name() {
        let root = tempfile::tempdir().unwrap();
        let dir = File::open(root.path()).unwrap();
        for (n, method) in [NamelessLink::Descriptor, NamelessLink::ProcFd]
            .into_iter()
            .enumerate()
        {
            let Ok(mut file) = open_nameless(dir.as_fd()) else {
                eprintln!("note: no O_TMPFILE on the temp filesystem; nothing to link");
                return;
            };
            file.write_all(format!("body {n}").as_bytes()).unwrap();
            let name = format!("f{n}");
            match method.link(&file, dir.as_fd(), &name) {
                Ok(()) => {
                    let stored = fs::read(root.path().join(&name)).unwrap();
                    assert_eq!(stored, format!("body {n}").as_bytes(), "{method:?}");
                    assert_eq!(
                        method.link(&file, dir.as_fd(), &name),
                        Err(Errno::EXIST),
                        "{method:?} must not replace a name"
                    );
                }
                // Kernels before 6.10 refuse the descriptor way to non-root
                // (ENOENT); /proc must work wherever tests run.
                Err(e) => {
                    // SAFETY: geteuid has no preconditions and cannot fail.
                    let refused = method == NamelessLink::Descriptor
                        && e == Errno::NOENT
                        && unsafe { libc::geteuid() } != 0;
                    assert!(refused, "{method:?} failed: {e}");
                    eprintln!("note: this kernel refuses {method:?} to non-root");
                }
            }
        }
    }

    #[test]
    fn a_whole_body_has_no_name_until_committed_and_conflicts_still_get_a_new_one() {
        let root = tempfile::tempdir().unwrap();
        let storage = Storage::open(root.path(), false).unwrap();
        assert!(
            names_in(root.path()).is_empty(),
            "the start-up probe left nothing"
        );
        let path = WirePath::parse("d/f.txt").unwrap();
        fs::create_dir(root.path().join("d")).unwrap();
        fs::write(root.path().join("d/f.txt"), b"old").unwrap();
        let mut p = storage
            .begin_whole(&path, record("d/f.txt", 3, 1), None)
            .unwrap();
        p.write(b"new").unwrap();
        if p.nameless.is_some() {
            assert_eq!(
                names_in(&root.path().join("d")),
                ["f.txt"],
                "nothing visible"
            );
            assert!(p.checkpoint().is_err(), "nothing to resume from");
        } else {
            // Without O_TMPFILE here, the named fallback must behave the same.
            eprintln!("note: no O_TMPFILE on the temp filesystem; testing the fallback");
        }
        let stored = storage.commit(vec![p]).pop().unwrap().unwrap();
        assert_eq!(stored, "d/f (1).txt");
        assert_eq!(names_in(&root.path().join("d")), ["f (1).txt", "f.txt"]);
        assert_eq!(fs::read(root.path().join("d/f (1).txt")).unwrap(), b"new");
        assert_eq!(fs::read(root.path().join("d/f.txt")).unwrap(), b"old");

        // Discarded, or its receiver gone: it leaves nothing behind.
        let mut p = storage
            .begin_whole(&path, record("d/f.txt", 3, 1), None)
            .unwrap();
        p.write(b"bad").unwrap();
        p.discard();
        let p = storage
            .begin_whole(&path, record("d/f.txt", 3, 1), None)
            .unwrap();
        drop(p);
        assert_eq!(names_in(&root.path().join("d")), ["f (1).txt", "f.txt"]);
    }

    #[test]
    fn with_overwrite_a_whole_body_replaces_the_file_through_a_named_partial() {
        let root = tempfile::tempdir().unwrap();
        let storage = Storage::open(root.path(), true).unwrap();
        let path = WirePath::parse("f.txt").unwrap();
        fs::write(root.path().join("f.txt"), b"old").unwrap();
        let mut p = storage
            .begin_whole(&path, record("f.txt", 3, 1), None)
            .unwrap();
        assert!(p.nameless.is_none());
        p.write(b"new").unwrap();
        assert_eq!(storage.commit(vec![p]).pop().unwrap().unwrap(), "f.txt");
        assert_eq!(names_in(root.path()), ["f.txt"]);
        assert_eq!(fs::read(root.path().join("f.txt")).unwrap(), b"new");
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
                &path,
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

    #[test]
    fn a_path_cannot_be_received_twice_at_once() {
        let root = tempfile::tempdir().unwrap();
        let storage = Storage::open(root.path(), false).unwrap();
        let path = WirePath::parse("same.bin").unwrap();
        let first = begin(&storage, &path, 1);
        assert!(storage
            .begin(
                &path,
                record("same.bin", 1, 1),
                0,
                &mut hashing::Hasher::new(),
                None
            )
            .is_err());
        drop(first);
        begin(&storage, &path, 1);
    }

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
        assert_eq!(storage.resumable(&path, &record("big.bin", 10, 1)), Some(5));
        let mut hasher = hashing::Hasher::new();
        let mut p = storage
            .begin(&path, record("big.bin", 10, 1), 5, &mut hasher, None)
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
        assert_eq!(storage.resumable(&path, &record("f.bin", 10, 2)), None);
        assert_eq!(
            fs::read_dir(root.path()).unwrap().count(),
            0,
            "partial and sidecar removed"
        );
    }

    #[test]
    fn clean_partials_removes_only_partials() {
        let root = tempfile::tempdir().unwrap();
        let storage = Storage::open(root.path(), false).unwrap();
        fs::write(root.path().join("keep.txt"), b"x").unwrap();
        let mut p = begin(&storage, &WirePath::parse("sub/f.bin").unwrap(), 4);
        p.write(b"ab").unwrap();
        p.checkpoint().unwrap();
        drop(p);
        assert_eq!(
            storage
                .clean_partials(Some(Duration::from_secs(3600)))
                .unwrap(),
            0
        );
        assert_eq!(storage.clean_partials(None).unwrap(), 2);
        let listing: Vec<_> = fs::read_dir(root.path().join("sub")).unwrap().collect();
        assert!(listing.is_empty());
        assert!(root.path().join("keep.txt").exists());
    }
}
