//! What the sender reads: the command-line paths walked into entries, then
//! prepared in batches on a blocking thread, with small files read and hashed
//! ahead while earlier batches are on the wire.

use std::collections::VecDeque;
use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::error::Error;
use crate::hashing;
use crate::protocol::{Digest, EntryKind};
use crate::sender::digest_cache::{DigestCache, FileVersion};

/// Files up to this size are read and hashed ahead, so their digest travels
/// in the header and their bytes are sent from memory.
pub const HASH_AHEAD_MAX: u64 = 1024 * 1024;
/// Most entries per offer.
pub const BATCH_MAX_ENTRIES: usize = 256;
/// Most bytes of small-file content held in memory per batch.
pub const BATCH_MAX_INLINE: usize = 4 * 1024 * 1024;
/// Most path bytes per offer, keeping frames far below the frame limit.
pub const BATCH_MAX_PATH_BYTES: usize = 256 * 1024;
/// Small files opened ahead of the one being read, each with a hint that
/// its pages are wanted, so the disk fetches many at once instead of one
/// read at a time (a cold tree of 5,000 × 16 KiB: ~0.37 s -> ~0.2 s).
const READ_AHEAD_FILES: usize = 32;

/// One local file or directory to send.
#[derive(Debug, Clone)]
pub struct LocalEntry {
    /// Relative, `/`-separated name it will have under the receiver's DIR.
    pub wire_path: String,
    pub local: PathBuf,
    pub kind: EntryKind,
    pub size: u64,
    pub mode: u32,
    pub mtime_secs: i64,
    pub mtime_nanos: u32,
    /// Inode number, part of the file's [`FileVersion`].
    pub ino: u64,
    /// Device of the walked file: with `ino`, which file the walk found.
    pub dev: u64,
}

impl LocalEntry {
    fn new(wire_path: String, local: PathBuf, meta: &Metadata) -> LocalEntry {
        let kind = if meta.is_dir() {
            EntryKind::Dir
        } else {
            EntryKind::File
        };
        LocalEntry {
            wire_path,
            local,
            kind,
            size: if meta.is_dir() { 0 } else { meta.len() },
            mode: meta.permissions().mode() & 0o7777,
            mtime_secs: meta.mtime(),
            mtime_nanos: meta.mtime_nsec().clamp(0, 999_999_999) as u32,
            ino: meta.ino(),
            dev: meta.dev(),
        }
    }

    /// Opens the file the walk found, and only that one: a name replaced
    /// since (by a symlink to a file outside the tree, another file, a
    /// FIFO) is refused, so nothing but what was walked is ever read.
    /// Opened non-blocking and without becoming a controlling terminal, so
    /// a FIFO or device swapped in cannot hang or take the process.
    pub fn open(&self) -> io::Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(&self.local)?;
        let meta = file.metadata()?;
        if !meta.is_file() || (meta.dev(), meta.ino()) != (self.dev, self.ino) {
            return Err(io::Error::other("it was replaced since it was listed"));
        }
        Ok(file)
    }

    /// The version of the file this entry was read as, for the digest cache.
    pub fn version(&self) -> FileVersion {
        FileVersion {
            path: self.local.clone(),
            size: self.size,
            mtime_secs: self.mtime_secs,
            mtime_nanos: self.mtime_nanos,
            ino: self.ino,
        }
    }
}

/// An entry ready to offer: digest and content when it was cheap to know them.
#[derive(Debug)]
pub struct Prepared {
    pub entry: LocalEntry,
    pub sha256: Option<Digest>,
    pub content: Option<Bytes>,
}

/// One offer's worth of prepared entries, numbered from `first_id`.
#[derive(Debug)]
pub struct Batch {
    pub first_id: u64,
    pub items: Vec<Prepared>,
    /// Files sent again after their first copy was damaged on the way.
    pub retry: bool,
}

/// What [`collect`] found in the command-line paths.
#[derive(Debug, Default)]
pub struct Collected {
    /// Everything to send, each directory before its contents.
    pub entries: Vec<LocalEntry>,
    /// What was left out because it could not be read; the send goes on
    /// without it and should not end as a success.
    pub unreadable: Vec<Unreadable>,
}

/// A directory that could not be listed, or an entry whose metadata could
/// not be read, inside a tree being sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// The wire path it would have had.
    pub path: String,
    pub local: PathBuf,
    /// The I/O error, worded for people.
    pub reason: String,
}

impl Unreadable {
    fn new(path: String, local: PathBuf, e: &io::Error) -> Unreadable {
        Unreadable {
            path,
            local,
            reason: crate::error::describe_io(e),
        }
    }
}

/// Walks the command-line paths. A file arrives as its file name, a directory
/// as its name plus everything under it; directories come before their
/// contents. Symlinks named on the command line are followed; symlinks and
/// special files inside a directory are skipped with a warning, so a walk
/// never leaves the tree it was given. What cannot be read inside a tree is
/// left out and listed in [`Collected::unreadable`], as rsync does, so one
/// locked directory does not stop the rest; a named path that cannot be
/// found is a usage error.
pub fn collect(paths: &[PathBuf]) -> Result<Collected, Error> {
    let mut out = Collected::default();
    let mut top_names = std::collections::HashSet::new();
    for path in paths {
        let meta = fs::metadata(path).map_err(|e| {
            Error::Usage(format!(
                "cannot send '{}': {}",
                path.display(),
                crate::error::describe_io(&e)
            ))
        })?;
        let name = top_level_name(path)?;
        // Absolute, so digest cache keys do not depend on the working directory.
        let path = std::path::absolute(path).unwrap_or_else(|_| path.clone());
        if !top_names.insert(name.clone()) {
            return Err(Error::Usage(format!(
                "two of the paths would both arrive as '{name}'; send them separately"
            )));
        }
        if meta.is_dir() {
            add_dir(name, path, &meta, &mut out);
        } else if meta.is_file() {
            out.entries.push(LocalEntry::new(name, path, &meta));
        } else {
            return Err(Error::Usage(format!(
                "cannot send '{}': not a regular file or directory",
                path.display()
            )));
        }
    }
    Ok(out)
}

fn top_level_name(path: &Path) -> Result<String, Error> {
    let named = match path.file_name() {
        Some(name) => Some(name.to_owned()),
        None => path
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_owned())),
    };
    let Some(name) = named else {
        return Err(Error::Usage(format!(
            "cannot send '{}' as a whole; name a directory inside it",
            path.display()
        )));
    };
    name.into_string()
        .map_err(|raw| Error::Usage(format!("cannot send {raw:?}: the name is not valid UTF-8")))
}

/// Adds a directory and everything under it. One that cannot be listed is
/// left out entirely, so the receiver shows no empty stand-in for it.
fn add_dir(wire_path: String, local: PathBuf, meta: &Metadata, out: &mut Collected) {
    let children = match list(&local) {
        Ok(children) => children,
        Err(e) => return out.unreadable.push(Unreadable::new(wire_path, local, &e)),
    };
    out.entries
        .push(LocalEntry::new(wire_path.clone(), local, meta));
    for child in children {
        let local = child.path();
        let Ok(name) = child.file_name().into_string() else {
            log::warn!(
                "skipping '{}': the name is not valid UTF-8",
                local.display()
            );
            continue;
        };
        let wire_path = format!("{wire_path}/{name}");
        let meta = match fs::symlink_metadata(&local) {
            Ok(meta) => meta,
            Err(e) => {
                out.unreadable.push(Unreadable::new(wire_path, local, &e));
                continue;
            }
        };
        if meta.file_type().is_symlink() {
            log::warn!(
                "skipping symlink '{}' (links inside a directory are not followed)",
                local.display()
            );
        } else if meta.is_dir() {
            add_dir(wire_path, local, &meta, out);
        } else if meta.is_file() {
            out.entries.push(LocalEntry::new(wire_path, local, &meta));
        } else {
            log::warn!(
                "skipping '{}': not a regular file or directory",
                local.display()
            );
        }
    }
}

/// The entries of `dir`, sorted by name so walks are reproducible.
fn list(dir: &Path) -> io::Result<Vec<fs::DirEntry>> {
    let mut children = fs::read_dir(dir)?.collect::<io::Result<Vec<_>>>()?;
    children.sort_by_key(|c| c.file_name());
    Ok(children)
}

/// Cuts `entries` into batches, reading and hashing small files ahead (and
/// taking large files' digests from `cache` when known), and hands them to
/// the session. Runs on a blocking thread; returns when the
/// session stops taking batches or all are prepared.
pub fn prepare_batches(
    entries: Vec<LocalEntry>,
    cache: Option<&DigestCache>,
    out: mpsc::Sender<Batch>,
) {
    let mut next_id = 0u64;
    let mut items = Vec::new();
    let (mut inline, mut path_bytes) = (0usize, 0usize);
    let mut entries = entries.into_iter();
    let mut ahead = VecDeque::with_capacity(READ_AHEAD_FILES);
    loop {
        ahead.extend(
            entries
                .by_ref()
                .take(READ_AHEAD_FILES - ahead.len())
                .map(|e| {
                    let opened = open_ahead(&e);
                    (e, opened)
                }),
        );
        let Some((entry, opened)) = ahead.pop_front() else {
            break;
        };
        let prepared = prepare(entry, opened, inline < BATCH_MAX_INLINE, cache);
        inline += prepared.content.as_ref().map_or(0, Bytes::len);
        path_bytes += prepared.entry.wire_path.len();
        items.push(prepared);
        if items.len() >= BATCH_MAX_ENTRIES
            || inline >= BATCH_MAX_INLINE
            || path_bytes >= BATCH_MAX_PATH_BYTES
        {
            let batch = Batch {
                retry: false,
                first_id: next_id,
                items: std::mem::take(&mut items),
            };
            next_id += batch.items.len() as u64;
            (inline, path_bytes) = (0, 0);
            if out.blocking_send(batch).is_err() {
                return;
            }
        }
    }
    if !items.is_empty() {
        let _ = out.blocking_send(Batch {
            retry: false,
            first_id: next_id,
            items,
        });
    }
}

/// Opens a small file that will be read soon and asks the kernel to start
/// fetching it. Anything that goes wrong is found again when it is read.
fn open_ahead(entry: &LocalEntry) -> Option<File> {
    if entry.kind != EntryKind::File || entry.size == 0 || entry.size > HASH_AHEAD_MAX {
        return None;
    }
    let file = entry.open().ok()?;
    let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::WillNeed);
    Some(file)
}

fn prepare(
    mut entry: LocalEntry,
    opened: Option<File>,
    may_inline: bool,
    cache: Option<&DigestCache>,
) -> Prepared {
    if entry.kind == EntryKind::Dir || entry.size > HASH_AHEAD_MAX || !may_inline {
        let sha256 = match entry.kind {
            EntryKind::File => cache.and_then(|c| c.get(&entry.version())),
            EntryKind::Dir => None,
        };
        return Prepared {
            entry,
            sha256,
            content: None,
        };
    }
    // A file that cannot be read now is offered without a digest; reading it
    // again at send time reports the error against the file.
    match read_small(&entry, opened) {
        Ok((content, meta)) if content.len() as u64 <= HASH_AHEAD_MAX => {
            entry.size = content.len() as u64;
            entry.mtime_secs = meta.mtime();
            entry.mtime_nanos = meta.mtime_nsec().clamp(0, 999_999_999) as u32;
            Prepared {
                entry,
                sha256: Some(hashing::digest(&content)),
                content: Some(content.into()),
            }
        }
        _ => Prepared {
            entry,
            sha256: None,
            content: None,
        },
    }
}

fn read_small(entry: &LocalEntry, opened: Option<File>) -> io::Result<(Vec<u8>, Metadata)> {
    let mut file = match opened {
        Some(file) => file,
        None => entry.open()?,
    };
    let meta = file.metadata()?;
    let mut content = Vec::with_capacity(meta.len() as usize);
    file.by_ref()
        .take(HASH_AHEAD_MAX + 1)
        .read_to_end(&mut content)?;
    Ok((content, meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_file_replaced_by_a_symlink_or_a_fifo_is_not_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        fs::write(&path, b"walked").unwrap();
        let walked = LocalEntry::new("a.txt".into(), path.clone(), &fs::metadata(&path).unwrap());
        assert!(walked.open().is_ok());
        let outside = dir.path().join("outside.txt");
        fs::write(&outside, b"secret").unwrap();
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&outside, &path).unwrap();
        let err = walked.open().expect_err("a symlink swapped in");
        assert!(
            err.to_string().contains("replaced since it was listed"),
            "{err}"
        );
        // A FIFO would block an ordinary open forever.
        fs::remove_file(&path).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert!(walked.open().is_err());
    }

    #[test]
    fn collect_skips_unreadable_directories_and_reports_them() {
        where_permissions_bind(
            "collect_skips_unreadable_directories_and_reports_them",
            || {
                let tmp = tempfile::tempdir().unwrap();
                let root = tmp.path().join("top");
                // `listed` can be listed but its entries not looked at (no
                // search bit); `locked` cannot even be listed.
                fs::create_dir_all(root.join("listed")).unwrap();
                fs::create_dir_all(root.join("locked")).unwrap();
                fs::create_dir_all(root.join("z")).unwrap();
                fs::write(root.join("a.txt"), b"a").unwrap();
                fs::write(root.join("listed/x.txt"), b"x").unwrap();
                fs::write(root.join("locked/hidden.txt"), b"h").unwrap();
                fs::write(root.join("z/ok.txt"), b"ok").unwrap();
                let set_mode = |dir: &str, mode: u32| {
                    fs::set_permissions(root.join(dir), fs::Permissions::from_mode(mode)).unwrap()
                };
                set_mode("listed", 0o444);
                set_mode("locked", 0o000);
                let got = collect(std::slice::from_ref(&root));
                let named = collect(&[root.join("locked")]);
                set_mode("listed", 0o755);
                set_mode("locked", 0o755);

                let got = got.unwrap();
                let names: Vec<_> = got.entries.iter().map(|e| e.wire_path.as_str()).collect();
                assert_eq!(
                    names,
                    ["top", "top/a.txt", "top/listed", "top/z", "top/z/ok.txt"]
                );
                let left_out: Vec<_> = got
                    .unreadable
                    .iter()
                    .map(|u| (u.path.as_str(), u.local.clone(), u.reason.as_str()))
                    .collect();
                let root = std::path::absolute(&root).unwrap();
                assert_eq!(
                    left_out,
                    [
                        (
                            "top/listed/x.txt",
                            root.join("listed/x.txt"),
                            "Permission denied"
                        ),
                        ("top/locked", root.join("locked"), "Permission denied"),
                    ]
                );
                // A directory named on the command line is found but unreadable:
                // left out the same way, not a usage error.
                let named = named.unwrap();
                assert!(named.entries.is_empty());
                assert_eq!(named.unreadable[0].path, "locked");
            },
        );
    }

    /// Whether this process is refused a directory with mode 0o000.
    fn permissions_bind() -> bool {
        let tmp = tempfile::tempdir().unwrap();
        let probe = tmp.path().join("probe");
        fs::create_dir(&probe).unwrap();
        fs::set_permissions(&probe, fs::Permissions::from_mode(0o000)).unwrap();
        let bind = fs::read_dir(&probe).is_err();
        fs::set_permissions(&probe, fs::Permissions::from_mode(0o700)).unwrap();
        bind
    }

    /// Runs `body` where permission bits bind. Tests usually run as root,
    /// whom CAP_DAC_OVERRIDE lets read any directory, and a process cannot
    /// give that up for one thread; so then the test named `test` runs again
    /// in a child whose capability bounding set lacks it (setpriv), where
    /// root's own 0o000 directory is refused every time. Skipped, saying
    /// why, where setpriv cannot do that.
    /// This module's path as libtest names tests: without the crate name.
    fn test_module() -> &'static str {
        module_path!()
            .split_once("::")
            .map_or(module_path!(), |(_, rest)| rest)
    }

    fn where_permissions_bind(test: &str, body: impl FnOnce()) {
        const CHILD: &str = "XFER_TEST_WITHOUT_DAC_OVERRIDE";
        if permissions_bind() {
            return body();
        }
        assert!(
            std::env::var_os(CHILD).is_none(),
            "setpriv ran the test, but permission bits are still bypassed"
        );
        let run = std::process::Command::new("timeout")
            .args([
                "60",
                "setpriv",
                "--bounding-set=-dac_override,-dac_read_search",
            ])
            .arg("--")
            .arg(std::env::current_exe().unwrap())
            .arg(format!("{}::{test}", test_module()))
            .args(["--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .output();
        let out = match run {
            Ok(out) => out,
            Err(e) => return eprintln!("skipped {test}: cannot run timeout/setpriv: {e}"),
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stdout.contains("running 0 tests"), "no test named {test}");
        // libtest prints this first; without it the child never got that far.
        if !stdout.contains("running 1 test") {
            return eprintln!("skipped {test}: setpriv cannot drop CAP_DAC_OVERRIDE: {stderr}");
        }
        assert!(
            out.status.success(),
            "{test} without CAP_DAC_OVERRIDE:\n{stdout}\n{stderr}"
        );
    }

    #[test]
    fn collect_walks_directories_in_order_and_skips_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("top");
        fs::create_dir_all(root.join("b/empty")).unwrap();
        fs::write(root.join("a.txt"), b"x").unwrap();
        fs::write(root.join("b/c.txt"), b"").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();
        let names: Vec<_> = collect(&[root])
            .unwrap()
            .entries
            .into_iter()
            .map(|e| e.wire_path)
            .collect();
        assert_eq!(
            names,
            ["top", "top/a.txt", "top/b", "top/b/c.txt", "top/b/empty"]
        );
    }

    #[test]
    fn collect_rejects_missing_paths_and_duplicate_names() {
        let tmp = tempfile::tempdir().unwrap();
        let err = collect(&[tmp.path().join("nope")]).unwrap_err();
        assert!(err.to_string().contains("No such file"), "{err}");
        fs::create_dir_all(tmp.path().join("x")).unwrap();
        fs::create_dir_all(tmp.path().join("y/x")).unwrap();
        let err = collect(&[tmp.path().join("x"), tmp.path().join("y/x")]).unwrap_err();
        assert!(err.to_string().contains("both arrive as 'x'"), "{err}");
    }

    #[test]
    fn read_ahead_window_keeps_order_and_contents_across_batches() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("t");
        fs::create_dir_all(root.join("sub")).unwrap();
        // More files than the read-ahead window and than one batch, with an
        // empty file and a directory among them.
        for i in 0..(BATCH_MAX_ENTRIES + READ_AHEAD_FILES + 7) {
            fs::write(root.join(format!("f{i:04}")), format!("content {i}")).unwrap();
        }
        fs::write(root.join("sub/empty"), b"").unwrap();
        let entries = collect(&[root]).unwrap().entries;
        let expected: Vec<String> = entries.iter().map(|e| e.wire_path.clone()).collect();
        let (tx, mut rx) = mpsc::channel(16);
        prepare_batches(entries, None, tx);
        let mut seen = Vec::new();
        while let Ok(batch) = rx.try_recv() {
            assert_eq!(batch.first_id, seen.len() as u64);
            for item in batch.items {
                if item.entry.kind == EntryKind::File {
                    let on_disk = fs::read(&item.entry.local).unwrap();
                    assert_eq!(item.content.as_deref(), Some(&on_disk[..]));
                    assert_eq!(item.sha256, Some(hashing::digest(&on_disk)));
                }
                seen.push(item.entry.wire_path);
            }
        }
        assert_eq!(seen, expected);
    }

    #[test]
    fn small_files_are_hashed_ahead_and_large_ones_are_not() {
        let tmp = tempfile::tempdir().unwrap();
        let small = tmp.path().join("small");
        let large = tmp.path().join("large");
        fs::write(&small, b"tiny").unwrap();
        fs::write(&large, vec![7u8; HASH_AHEAD_MAX as usize + 1]).unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        prepare_batches(collect(&[small, large]).unwrap().entries, None, tx);
        let batch = rx.try_recv().unwrap();
        assert_eq!(batch.items[0].sha256, Some(hashing::digest(b"tiny")));
        assert_eq!(batch.items[0].content.as_deref(), Some(&b"tiny"[..]));
        assert_eq!(batch.items[1].sha256, None);
        assert!(batch.items[1].content.is_none());
    }
}
