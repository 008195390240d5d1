//! Existing files and the commit: the plan that compares an offer with what
//! DIR holds (conflict names included), and the group commit that syncs
//! verified partials and gives them their final names.

use std::io;
use std::os::fd::AsFd;

use rustix::fs::{AtFlags, FileType, OFlags};
use rustix::io::Errno;

use super::dir::{is_missing, open_in, stat_in, DirHandle};
use super::{FilePlan, Partial, Storage};
use crate::hashing;
use crate::paths::WirePath;
use crate::protocol::Digest;

/// How many `name (n).ext` candidates are tried before giving up.
const MAX_CONFLICT_SUFFIX: u32 = 9999;

impl Storage {
    /// Decides, from what DIR holds now, whether an offered file must be sent.
    /// Walks the conflict names (`name`, `name (1)`, ...) looking for the same
    /// content, so the same file is never stored twice.
    pub fn plan_file(
        &self,
        path: &WirePath,
        size: u64,
        sha256: Option<Digest>,
    ) -> io::Result<FilePlan> {
        self.plan_file_in(
            self.find_dir(path.parent().as_ref())?.as_ref(),
            path,
            size,
            sha256,
        )
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
        let name = partial.wire_path().file_name();
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

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::testing::begin;
    use super::*;

    #[test]
    fn conflict_names_keep_the_extension() {
        assert_eq!(conflict_name("a.txt", 0), "a.txt");
        assert_eq!(conflict_name("a.txt", 1), "a (1).txt");
        assert_eq!(conflict_name("archive.tar.gz", 2), "archive.tar (2).gz");
        assert_eq!(conflict_name(".bashrc", 1), ".bashrc (1)");
        assert_eq!(conflict_name("README", 3), "README (3)");
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
}
