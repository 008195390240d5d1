//! Removal of stale partial files and their sidecars at start-up.
//!
//! The walk starts from DIR's handle and goes down with `openat(O_NOFOLLOW |
//! O_DIRECTORY)`, removing with `unlinkat` relative to each directory's
//! handle: a symlink inside DIR (or DIR's own path swapped for one) never
//! leads it to delete anything outside.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::Storage;
use crate::paths::{PARTIAL_SUFFIX, SIDECAR_SUFFIX};

/// A directory still to be listed: its name in an open parent (each pending
/// child keeps its parent open, so open handles stay about the tree's
/// depth), and its path for the active-set check.
struct Pending {
    parent: Arc<OwnedFd>,
    name: PathBuf,
    path: PathBuf,
}

impl Storage {
    /// Removes partial files and their sidecars under DIR: all of them, or
    /// those untouched for longer than `older_than`. Returns how many.
    pub fn clean_partials(&self, older_than: Option<Duration>) -> io::Result<u64> {
        let now = SystemTime::now();
        let mut removed = 0;
        let mut pending = vec![Pending {
            parent: Arc::new(self.root_handle.try_clone()?.into()),
            name: ".".into(),
            path: self.root.clone(),
        }];
        while let Some(Pending { parent, name, path }) = pending.pop() {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let dir = match rustix::fs::openat(&*parent, &name, flags, Mode::empty()) {
                Ok(fd) => Arc::new(fd),
                // Replaced by a symlink or a file, or gone, since it was listed.
                Err(Errno::LOOP | Errno::NOTDIR | Errno::NOENT) => continue,
                Err(e) => return Err(e.into()),
            };
            for entry in rustix::fs::Dir::read_from(&*dir)? {
                let entry = entry?;
                let name = OsStr::from_bytes(entry.file_name().to_bytes());
                if name == "." || name == ".." {
                    continue;
                }
                // What the name is now, not following a symlink.
                let st = match rustix::fs::statat(&*dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => st,
                    Err(Errno::NOENT) => continue,
                    Err(e) => return Err(e.into()),
                };
                let kind = FileType::from_raw_mode(st.st_mode);
                if kind == FileType::Directory {
                    pending.push(Pending {
                        parent: Arc::clone(&dir),
                        name: name.into(),
                        path: path.join(name),
                    });
                    continue;
                }
                let bytes = name.as_bytes();
                let ours = bytes.starts_with(b".")
                    && (bytes.ends_with(PARTIAL_SUFFIX.as_bytes())
                        || bytes.ends_with(SIDECAR_SUFFIX.as_bytes()));
                if !ours || kind != FileType::RegularFile {
                    continue;
                }
                let modified = u64::try_from(st.st_mtime).ok().map(|secs| {
                    let nanos = u32::try_from(st.st_mtime_nsec).unwrap_or(0);
                    UNIX_EPOCH + Duration::new(secs, nanos.min(999_999_999))
                });
                let age = modified.and_then(|m| now.duration_since(m).ok());
                let stale = match older_than {
                    None => true,
                    Some(limit) => age.is_some_and(|a| a > limit),
                };
                let active = self
                    .active
                    .lock()
                    .map(|a| a.contains(&path.join(name)))
                    .unwrap_or(true);
                if stale && !active {
                    match rustix::fs::unlinkat(dir.as_fd(), name, AtFlags::empty()) {
                        Ok(()) => removed += 1,
                        Err(Errno::NOENT) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::testing::{begin, names_in};
    use super::*;
    use crate::paths::WirePath;

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

    /// An outside directory holding files named like partials.
    fn outside_with_partials() -> tempfile::TempDir {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join(".x.xfer-part"), b"theirs").unwrap();
        fs::write(outside.path().join(".x.xfer-meta"), b"theirs").unwrap();
        outside
    }

    #[test]
    fn clean_partials_does_not_follow_a_symlink_out_of_dir() {
        let root = tempfile::tempdir().unwrap();
        let outside = outside_with_partials();
        std::os::unix::fs::symlink(outside.path(), root.path().join("link")).unwrap();
        let storage = Storage::open(root.path(), false).unwrap();
        let mut p = begin(&storage, &WirePath::parse("d/f.bin").unwrap(), 4);
        p.write(b"ab").unwrap();
        p.checkpoint().unwrap();
        drop(p);
        assert_eq!(storage.clean_partials(None).unwrap(), 2);
        assert!(names_in(&root.path().join("d")).is_empty());
        assert_eq!(names_in(outside.path()), [".x.xfer-meta", ".x.xfer-part"]);
    }

    #[test]
    fn clean_partials_walks_the_dir_it_opened_even_if_its_path_now_leads_elsewhere() {
        let parent = tempfile::tempdir().unwrap();
        let inbox = parent.path().join("inbox");
        let storage = Storage::open(&inbox, false).unwrap();
        let mut p = begin(&storage, &WirePath::parse("f.bin").unwrap(), 4);
        p.write(b"ab").unwrap();
        p.checkpoint().unwrap();
        drop(p);
        // DIR moved away and its old path made a symlink to somewhere else.
        let outside = outside_with_partials();
        fs::rename(&inbox, parent.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(outside.path(), &inbox).unwrap();
        assert_eq!(storage.clean_partials(None).unwrap(), 2);
        assert!(names_in(&parent.path().join("moved")).is_empty());
        assert_eq!(names_in(outside.path()), [".x.xfer-meta", ".x.xfer-part"]);
    }
}
