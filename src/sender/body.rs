//! Bodies on their way out: a small file's bytes from memory, a large one
//! with sendfile straight from the page cache while a second handle hashes
//! it, no further ahead than memory allows; a body that comes up short is
//! padded to its declared length and its trailer says why.

use std::fs::File;
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use crate::error::describe_io;
use crate::hashing::{self, Hasher};
use crate::protocol::Digest;

/// Zero bytes per write when padding a body that came up short.
pub(super) const PAD_CHUNK: usize = 1024 * 1024;
/// Bytes per sendfile step, between progress reports and cancel checks.
pub(super) const SENDFILE_STEP: u64 = 8 * 1024 * 1024;
/// How far the hashing thread may read ahead of sendfile, at least; more
/// on machines with more memory (see [`hash_lead`]).
const MIN_HASH_LEAD: u64 = 256 * 1024 * 1024;

/// Opens `path` a second time, so hashing keeps its own read-ahead apart
/// from sendfile's, and checks that both handles are the same file.
pub(super) fn open_same(path: &std::path::Path, sending: &File) -> io::Result<File> {
    use std::os::unix::fs::MetadataExt;
    let reader = File::open(path)?;
    let (a, b) = (reader.metadata()?, sending.metadata()?);
    if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
        return Err(io::Error::other("the file was replaced while being sent"));
    }
    Ok(reader)
}

/// Where a large body's digest comes from.
pub(super) enum BodyDigest {
    /// The digest cache knew it.
    Known(Digest),
    /// A blocking thread is hashing the file while it is sent.
    Hashing(tokio::task::JoinHandle<Result<Digest, String>>, StopOnDrop),
}

/// What a body's sendfile loop and its hashing thread share. A hashing
/// thread that is far enough ahead sleeps until sendfile moves on (or the
/// body is abandoned) and is woken by it, rather than looking again and again.
#[derive(Default)]
pub(super) struct HashPace {
    /// Set when the body is abandoned, so the hashing thread stops instead
    /// of reading the rest of a large file for nobody.
    stop: AtomicBool,
    /// How far into the file sendfile has got.
    sent: AtomicU64,
    wake: (Mutex<()>, Condvar),
}

impl HashPace {
    /// Sendfile has got to `position`.
    pub fn advance(&self, position: u64) {
        self.sent.store(position, Ordering::Release);
        self.notify();
    }

    /// The body is abandoned or done.
    fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.notify();
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn notify(&self) {
        // Taken so a waiter between its check and its wait cannot miss this.
        let _held = self.wake.0.lock();
        self.wake.1.notify_all();
    }

    /// Blocks until reading at `read` stays within `lead` of what was
    /// sent; fails once the body is abandoned.
    fn wait_for_room(&self, read: u64, lead: u64) -> io::Result<()> {
        let mut held = self
            .wake
            .0
            .lock()
            .map_err(|_| io::Error::other("lock poisoned"))?;
        loop {
            if self.stopped() {
                return Err(io::Error::other("sending stopped"));
            }
            if read < self.sent.load(Ordering::Acquire).saturating_add(lead) {
                return Ok(());
            }
            held = self
                .wake
                .1
                .wait(held)
                .map_err(|_| io::Error::other("lock poisoned"))?;
        }
    }
}

/// Stops the hashing thread when the body is done with or abandoned.
pub(super) struct StopOnDrop(pub Arc<HashPace>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// How far the hashing thread may read ahead of sendfile: an eighth of
/// the memory, at least [`MIN_HASH_LEAD`]. Further ahead, on a file larger
/// than the page cache, sendfile would find its pages evicted and read the
/// file a second time (on a spinning disk, two streams seeking against
/// each other); up to here the hashing thread is free to fetch in bulk,
/// which a disk shared with the receiver prefers.
pub(super) fn hash_lead() -> u64 {
    static LEAD: OnceLock<u64> = OnceLock::new();
    *LEAD.get_or_init(|| {
        let info = rustix::system::sysinfo();
        // `totalram` is a C long: 32 bits on some targets.
        #[allow(clippy::useless_conversion)]
        let memory = u64::from(info.totalram).saturating_mul(u64::from(info.mem_unit));
        (memory / 8).max(MIN_HASH_LEAD)
    })
}

/// SHA-256 of the first `size` bytes of `file`, on a blocking thread, never
/// more than `lead` bytes ahead of what `pace` says was sent. Errors are in
/// words for the receiver and the user.
pub(super) fn hash_file(
    file: File,
    size: u64,
    pace: &HashPace,
    lead: u64,
) -> Result<Digest, String> {
    let mut hasher = Hasher::new();
    let mut reader = Paced {
        file,
        pace,
        lead,
        read: 0,
    };
    let hashed = hashing::hash_prefix(&mut reader, size, &mut hasher).map_err(|e| {
        if pace.stopped() {
            "sending stopped".to_owned()
        } else {
            format!("cannot read: {}", describe_io(&e))
        }
    })?;
    if hashed < size {
        return Err("the file shrank while being sent".into());
    }
    Ok(hasher.finish())
}

/// A file read no further than `lead` bytes past what was sent, whose
/// reads fail once the body is abandoned.
struct Paced<'a> {
    file: File,
    pace: &'a HashPace,
    lead: u64,
    read: u64,
}

impl Read for Paced<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.pace.wait_for_room(self.read, self.lead)?;
        let n = self.file.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_of(bytes: &[u8]) -> (tempfile::NamedTempFile, File) {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.write_all(bytes).unwrap();
        let file = File::open(tmp.path()).unwrap();
        (tmp, file)
    }

    #[test]
    fn hashing_waits_for_sendfile_to_catch_up_then_finishes_with_the_digest() {
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let (_tmp, file) = file_of(&data);
        let pace = Arc::new(HashPace::default());
        let shared = Arc::clone(&pace);
        let size = data.len() as u64;
        let thread = std::thread::spawn(move || hash_file(file, size, &shared, 64 * 1024));
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(
            !thread.is_finished(),
            "hashed past its lead while nothing was sent"
        );
        pace.advance(size);
        assert_eq!(thread.join().unwrap(), Ok(hashing::digest(&data)));
    }

    #[test]
    fn a_waiting_hash_stops_when_the_body_is_abandoned() {
        let (_tmp, file) = file_of(&[7u8; 300_000]);
        let pace = Arc::new(HashPace::default());
        let shared = Arc::clone(&pace);
        let thread = std::thread::spawn(move || hash_file(file, 300_000, &shared, 1024));
        drop(StopOnDrop(pace));
        assert_eq!(thread.join().unwrap(), Err("sending stopped".to_owned()));
    }
}
