//! The confined walk: directories inside DIR are reached from DIR's handle
//! one component at a time, never through a symlink, and held open so files
//! are then used relative to them.

use std::fs::{File, FileTimes, Permissions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::{Metadata, Storage};
use crate::paths::WirePath;

/// A directory inside DIR, held open, and its path for messages.
pub(super) struct Dir {
    pub(super) fd: OwnedFd,
    pub(super) path: PathBuf,
}

/// An open directory inside DIR, found (without following symlinks) when a
/// file was planned and used again to write it, so a small file costs one
/// directory walk instead of three.
#[derive(Clone)]
pub struct DirHandle(pub(super) Arc<Dir>);

/// Opens `name` in `dir` without following a symlink in its place.
pub(super) fn open_in(
    dir: BorrowedFd<'_>,
    name: &str,
    flags: OFlags,
    mode: u32,
) -> io::Result<File> {
    let fd = rustix::fs::openat(
        dir,
        name,
        flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )?;
    Ok(File::from(fd))
}

/// The type and size of `name` in `dir`, not following a symlink.
pub(super) fn stat_in(dir: BorrowedFd<'_>, name: &str) -> io::Result<(FileType, u64)> {
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok((
        FileType::from_raw_mode(st.st_mode),
        u64::try_from(st.st_size).unwrap_or(0),
    ))
}

pub(super) fn is_missing(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR))
}

impl Storage {
    /// Walks from DIR to the directory `path`, one component at a time and
    /// never through a symlink, creating missing directories when `create`.
    pub(super) fn open_dir(&self, path: Option<&WirePath>, create: bool) -> io::Result<Dir> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut fd = rustix::fs::openat(&self.root_handle, ".", flags, Mode::empty())?;
        let mut shown = self.root.clone();
        for component in path.into_iter().flat_map(WirePath::components) {
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
    pub fn make_dirs(&self, path: Option<&WirePath>) -> io::Result<()> {
        self.open_dir(path, true).map(drop)
    }

    /// Applies mode and mtime to a directory received in this session.
    pub fn set_dir_metadata(&self, path: &WirePath, meta: &Metadata) -> io::Result<()> {
        let dir = File::from(self.open_dir(Some(path), false)?.fd);
        // Keep the owner able to write, or a later session could not add files.
        dir.set_permissions(Permissions::from_mode((meta.mode & 0o777) | 0o700))?;
        dir.set_times(FileTimes::new().set_modified(meta.mtime()))
    }

    /// The directory `parent` (DIR itself for `None`), if it exists.
    pub fn find_dir(&self, parent: Option<&WirePath>) -> io::Result<Option<DirHandle>> {
        match self.open_dir(parent, false) {
            Ok(dir) => Ok(Some(DirHandle(Arc::new(dir)))),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::testing::record;
    use super::*;
    use crate::hashing;

    #[test]
    fn make_dirs_refuses_a_planted_symlink() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("link")).unwrap();
        let storage = Storage::open(root.path(), false).unwrap();
        let path = WirePath::parse("link/x.bin").unwrap();
        let err = storage
            .begin(
                storage.claim(&path).unwrap(),
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
}
