//! Removal of stale partial files and their sidecars at start-up.

use std::fs;
use std::io;
use std::time::{Duration, SystemTime};

use super::Storage;
use crate::paths::{PARTIAL_SUFFIX, SIDECAR_SUFFIX};

impl Storage {
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
}

#[cfg(test)]
mod tests {
    use super::super::testing::begin;
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
}
