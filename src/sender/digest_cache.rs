//! The sender's digest cache: SHA-256 of large files it has read before,
//! keyed by absolute path, size, mtime and inode, so a second send of an
//! unchanged file carries its digest in the header at once and a resend after
//! a failure does not hash the whole source again.
//!
//! One JSON object per line, appended as digests become known (a killed
//! sender loses nothing already written); compacted on open when it grows
//! past [`MAX_LINES`]. Location: `$XFER_CACHE_DIR/digests.jsonl`, else
//! `$XDG_CACHE_HOME/xfer/digests.jsonl`, else `~/.cache/xfer/digests.jsonl`.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::hashing::to_hex;
use crate::protocol::Digest;

/// Lines kept after compaction.
const KEEP_ENTRIES: usize = 10_000;
/// Lines that trigger a compaction on open.
const MAX_LINES: usize = 2 * KEEP_ENTRIES;

/// One version of one local file: what a digest is recorded against. A file
/// changed in place has a new size or mtime; one replaced by another has a
/// new inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileVersion {
    /// Absolute, so a key does not depend on the working directory.
    pub path: PathBuf,
    pub size: u64,
    pub mtime_secs: i64,
    pub mtime_nanos: u32,
    pub ino: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Key {
    path: String,
    size: u64,
    mtime_secs: i64,
    mtime_nanos: u32,
    ino: u64,
}

#[derive(Serialize, Deserialize)]
struct Line {
    #[serde(flatten)]
    key: Key,
    sha256: String,
}

/// Digests of files this machine has sent before.
pub struct DigestCache {
    entries: Mutex<HashMap<Key, Digest>>,
    log: Mutex<File>,
}

/// Where the cache lives when nothing else is said.
pub fn default_location() -> Option<PathBuf> {
    let dir = std::env::var_os("XFER_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("xfer")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/xfer")))?;
    Some(dir.join("digests.jsonl"))
}

/// `None` for a path that is not UTF-8: the file format stores it as a string.
fn key_of(version: &FileVersion) -> Option<Key> {
    Some(Key {
        path: version.path.to_str()?.to_owned(),
        size: version.size,
        mtime_secs: version.mtime_secs,
        mtime_nanos: version.mtime_nanos,
        ino: version.ino,
    })
}

fn parse_digest(hex: &str) -> Option<Digest> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl DigestCache {
    /// Opens (creating) the cache file at `path`; unreadable lines are skipped.
    pub fn open(path: &Path) -> io::Result<DigestCache> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let mut lines: Vec<(Key, Digest)> = Vec::new();
        if let Ok(file) = File::open(path) {
            for line in BufReader::new(file).lines().map_while(Result::ok) {
                if let Ok(l) = serde_json::from_str::<Line>(&line) {
                    if let Some(d) = parse_digest(&l.sha256) {
                        lines.push((l.key, d));
                    }
                }
            }
        }
        let total = lines.len();
        let mut entries = HashMap::new();
        for (key, digest) in lines.into_iter().rev() {
            if entries.len() >= KEEP_ENTRIES {
                break;
            }
            entries.entry(key).or_insert(digest);
        }
        if total > MAX_LINES {
            let tmp = path.with_extension("jsonl.tmp");
            let mut out = io::BufWriter::new(File::create(&tmp)?);
            for (key, digest) in &entries {
                let line = Line {
                    key: key.clone(),
                    sha256: to_hex(digest),
                };
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string(&line).map_err(io::Error::other)?
                )?;
            }
            out.flush()?;
            fs::rename(&tmp, path)?;
        }
        let log = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(DigestCache {
            entries: Mutex::new(entries),
            log: Mutex::new(log),
        })
    }

    /// The digest recorded for this very file version, if any.
    pub fn get(&self, version: &FileVersion) -> Option<Digest> {
        let key = key_of(version)?;
        self.entries.lock().ok()?.get(&key).copied()
    }

    /// Records the digest of `version`. Failures only cost a future re-hash.
    pub fn put(&self, version: &FileVersion, digest: Digest) {
        let Some(key) = key_of(version) else { return };
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.get(&key) == Some(&digest) {
            return;
        }
        let line = Line {
            key: key.clone(),
            sha256: to_hex(&digest),
        };
        entries.insert(key, digest);
        if let (Ok(json), Ok(mut log)) = (serde_json::to_string(&line), self.log.lock()) {
            if let Err(e) = writeln!(log, "{json}") {
                log::debug!("cannot update the digest cache: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(path: &str, mtime: i64) -> FileVersion {
        FileVersion {
            path: PathBuf::from(path),
            size: 10,
            mtime_secs: mtime,
            mtime_nanos: 0,
            ino: 42,
        }
    }

    #[test]
    fn digests_survive_reopening_and_changes_miss() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/digests.jsonl");
        let cache = DigestCache::open(&path).unwrap();
        cache.put(&version("/a", 1), [7; 32]);
        drop(cache);
        let cache = DigestCache::open(&path).unwrap();
        assert_eq!(cache.get(&version("/a", 1)), Some([7; 32]));
        assert_eq!(
            cache.get(&version("/a", 2)),
            None,
            "a newer mtime is another version"
        );
        assert_eq!(cache.get(&version("/b", 1)), None);
    }

    #[test]
    fn a_corrupt_line_is_skipped_and_the_file_is_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("digests.jsonl");
        let mut text = String::from("not json\n");
        for i in 0..(MAX_LINES + 5) {
            let line = Line {
                key: key_of(&version(&format!("/f{i}"), 1)).unwrap(),
                sha256: to_hex(&[1; 32]),
            };
            text.push_str(&serde_json::to_string(&line).unwrap());
            text.push('\n');
        }
        fs::write(&path, text).unwrap();
        let cache = DigestCache::open(&path).unwrap();
        assert_eq!(
            cache.get(&version(&format!("/f{}", MAX_LINES + 4), 1)),
            Some([1; 32])
        );
        assert_eq!(
            fs::read_to_string(&path).unwrap().lines().count(),
            KEEP_ENTRIES
        );
    }
}
