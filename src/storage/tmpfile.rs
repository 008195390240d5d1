//! Nameless (`O_TMPFILE`) files: a body that arrives whole is written into
//! a file without a name and linked at its final name when committed. The
//! start-up probe finds out whether, and how, DIR allows that.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use rustix::fs::{AtFlags, Mode, OFlags, CWD};

use super::dir::DirHandle;
use super::partial::hidden_name;
use super::{Claim, Partial, ResumeRecord, Storage};
use crate::hashing;
use crate::paths::{PARTIAL_SUFFIX, SIDECAR_SUFFIX};

/// A way to give a nameless (`O_TMPFILE`) file a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NamelessLink {
    /// `linkat` of the descriptor itself (`AT_EMPTY_PATH`): Linux 6.10 and
    /// later allow it to the file's opener, older ones only to root. It
    /// skips the path walk through `/proc`, a quarter of a link's cost.
    Descriptor,
    /// `linkat` of `/proc/self/fd/N`, following it.
    ProcFd,
}

impl NamelessLink {
    /// Links `file` at `name` in `dir`.
    pub(super) fn link(
        self,
        file: &File,
        dir: BorrowedFd<'_>,
        name: &str,
    ) -> rustix::io::Result<()> {
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
pub(super) fn open_nameless(dir: BorrowedFd<'_>) -> rustix::io::Result<File> {
    let flags = OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, ".", flags, Mode::from_raw_mode(0o600))?;
    Ok(File::from(fd))
}

/// Tries once what small files rely on: a nameless (`O_TMPFILE`) file in
/// `dir` given a name, by descriptor or else through `/proc/self/fd`. On a
/// filesystem or kernel that allows neither, every body gets a named partial
/// instead. The probe's name is a partial's, so a crash here leaves nothing
/// the stale cleanup would not remove.
pub(super) fn probe_nameless_link(dir: &File) -> Option<NamelessLink> {
    let file = open_nameless(dir.as_fd()).ok()?;
    let name = format!(".xfer-probe-{}{PARTIAL_SUFFIX}", std::process::id());
    let works = [NamelessLink::Descriptor, NamelessLink::ProcFd]
        .into_iter()
        .find(|method| method.link(&file, dir.as_fd(), &name).is_ok())?;
    let _ = rustix::fs::unlinkat(dir, name.as_str(), AtFlags::empty());
    Some(works)
}

impl Storage {
    /// [`Storage::begin`] from offset 0, for a body that arrives whole and
    /// so never needs a name to resume from. Where the kernel allows, the
    /// file is created without one (`O_TMPFILE`) and linked at its final
    /// name when committed: a create and an unlink fewer per small file,
    /// and a receiver killed meanwhile leaves nothing behind.
    pub fn begin_whole(
        &self,
        claim: Claim,
        record: ResumeRecord,
        dir: Option<DirHandle>,
    ) -> io::Result<Partial> {
        let mut unused = hashing::Hasher::new();
        let (false, Some(method)) = (self.overwrite, self.nameless_link) else {
            // Replacing a file atomically needs a named file to rename.
            return self.begin(claim, record, 0, &mut unused, dir);
        };
        let dir = self.parent_dir(claim.path(), dir)?;
        match open_nameless(dir.fd.as_fd()) {
            Ok(file) => Ok(Partial {
                file,
                sidecar_name: hidden_name(claim.path().file_name(), SIDECAR_SUFFIX),
                partial_name: hidden_name(claim.path().file_name(), PARTIAL_SUFFIX),
                dir,
                record,
                written: 0,
                flushing: 0,
                reserved: 0,
                reserving: false,
                claim,
                nameless: Some(method),
            }),
            // Not on this filesystem: a named partial, as for any other body.
            Err(_) => self.begin(claim, record, 0, &mut unused, Some(DirHandle(dir))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::Write;

    use rustix::io::Errno;

    use super::super::testing::{names_in, record};
    use super::*;
    use crate::paths::WirePath;

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
                    let refused = method == NamelessLink::Descriptor
                        && e == Errno::NOENT
                        && !rustix::process::geteuid().is_root();
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
            .begin_whole(storage.claim(&path).unwrap(), record("d/f.txt", 3, 1), None)
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
            .begin_whole(storage.claim(&path).unwrap(), record("d/f.txt", 3, 1), None)
            .unwrap();
        p.write(b"bad").unwrap();
        p.discard();
        let p = storage
            .begin_whole(storage.claim(&path).unwrap(), record("d/f.txt", 3, 1), None)
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
            .begin_whole(storage.claim(&path).unwrap(), record("f.txt", 3, 1), None)
            .unwrap();
        assert!(p.nameless.is_none());
        p.write(b"new").unwrap();
        assert_eq!(storage.commit(vec![p]).pop().unwrap().unwrap(), "f.txt");
        assert_eq!(names_in(root.path()), ["f.txt"]);
        assert_eq!(fs::read(root.path().join("f.txt")).unwrap(), b"new");
    }
}
