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
//!
//! Map: [`dir`] the confined walk, [`partial`] hidden files being written,
//! [`resume`] their sidecar records, [`tmpfile`] nameless files for bodies
//! that arrive whole, [`publish`] the plan against existing files and the
//! commit, [`cleanup`] stale partials. This module owns DIR itself.

mod cleanup;
mod dir;
mod partial;
mod publish;
mod resume;
mod tmpfile;

use std::collections::HashSet;
use std::fs::{self, File, Permissions};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, Mode, OFlags};

use crate::paths::PARTIAL_SUFFIX;
use crate::protocol::Digest;

pub use dir::DirHandle;
pub use partial::{hidden_name, Claim, Partial};
pub use publish::conflict_name;
pub use resume::ResumeRecord;
use tmpfile::{probe_nameless_link, NamelessLink};

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
    pub(super) fn mtime(&self) -> SystemTime {
        let nanos = Duration::from_nanos(u64::from(self.mtime_nanos.min(999_999_999)));
        if self.mtime_secs >= 0 {
            UNIX_EPOCH + Duration::from_secs(self.mtime_secs as u64) + nanos
        } else {
            UNIX_EPOCH - Duration::from_secs(self.mtime_secs.unsigned_abs()) + nanos
        }
    }

    /// Only permission bits travel: set-id and sticky bits from a peer are dropped.
    pub(super) fn permissions(&self) -> Permissions {
        Permissions::from_mode(self.mode & 0o777)
    }
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
        check_writable(&root_handle)?;
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

    /// `full` relative to DIR, `/`-separated, for reports.
    fn relative(&self, full: &Path) -> String {
        let rel = full.strip_prefix(&self.root).unwrap_or(full);
        rel.components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/")
    }
}

/// Creates and removes a file in `dir`, so a DIR that cannot take files
/// (read-only, not ours) fails at start-up instead of at the first body.
/// Named like a partial, so one left by a crash here is cleaned up later.
fn check_writable(dir: &File) -> io::Result<()> {
    let name = format!(".xfer-writable-{}{PARTIAL_SUFFIX}", std::process::id());
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    drop(rustix::fs::openat(
        dir,
        name.as_str(),
        flags,
        Mode::from_raw_mode(0o600),
    )?);
    rustix::fs::unlinkat(dir, name.as_str(), AtFlags::empty())?;
    Ok(())
}

/// Helpers the tests of every storage module share.
#[cfg(test)]
mod testing {
    use std::fs;
    use std::path::Path;

    use super::{Partial, ResumeRecord, Storage};
    use crate::hashing;
    use crate::paths::WirePath;

    pub fn record(path: &str, size: u64, mtime: i64) -> ResumeRecord {
        ResumeRecord {
            path: path.into(),
            size,
            mtime_secs: mtime,
            mtime_nanos: 0,
            sha256: None,
            durable: 0,
        }
    }

    pub fn begin(storage: &Storage, path: &WirePath, size: u64) -> Partial {
        storage
            .begin(
                storage.claim(path).unwrap(),
                record(path.as_str(), size, 1),
                0,
                &mut hashing::Hasher::new(),
                None,
            )
            .unwrap()
    }

    pub fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    /// A read-only tmpfs mounted on a fresh temporary directory, unmounted
    /// when dropped; `None` (with the reason printed) where mounting is not
    /// allowed.
    struct ReadOnlyMount(tempfile::TempDir);

    impl ReadOnlyMount {
        fn new() -> Option<ReadOnlyMount> {
            let dir = tempfile::tempdir().unwrap();
            let mounted = Command::new("mount")
                .args(["-t", "tmpfs", "-o", "ro", "tmpfs"])
                .arg(dir.path())
                .output();
            match mounted {
                Ok(out) if out.status.success() => Some(ReadOnlyMount(dir)),
                Ok(out) => {
                    let why = String::from_utf8_lossy(&out.stderr);
                    eprintln!("skipped: cannot mount a read-only tmpfs: {}", why.trim());
                    None
                }
                Err(e) => {
                    eprintln!("skipped: cannot run mount: {e}");
                    None
                }
            }
        }
    }

    impl Drop for ReadOnlyMount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0.path()).status();
        }
    }

    #[test]
    fn open_refuses_a_dir_it_cannot_write() {
        let Some(mount) = ReadOnlyMount::new() else {
            return;
        };
        let err = Storage::open(mount.0.path(), false).err().unwrap();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    }
}
