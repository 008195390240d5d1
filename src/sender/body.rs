//! Bodies on their way out: a small file's bytes from memory, a large one
//! with sendfile straight from the page cache while a second handle hashes
//! it, no further ahead than memory allows, or, where every byte must pass
//! through this process (a coded session), read once and hashed as it is
//! read; a body that comes up short is padded to its declared length and
//! its trailer says why.

use std::fs::File;
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use crate::error::describe_io;
use crate::hashing::{self, Hasher};
use crate::protocol::secure::{RecordRun, RUN_PAYLOAD};
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

/// A blocking thread hashing the first `size` bytes of the file at `local`
/// through a second handle (checked to be the same file as `sending`),
/// allowed from the start up to [`hash_lead`] past `offset` until the body
/// moves on.
pub(super) fn hash_beside(
    local: &std::path::Path,
    sending: &File,
    offset: u64,
    size: u64,
) -> io::Result<BodyDigest> {
    let reader = open_same(local, sending)?;
    let pace = Arc::new(HashPace::default());
    pace.advance(offset);
    let shared = Arc::clone(&pace);
    let task = tokio::task::spawn_blocking(move || hash_file(reader, size, &shared, hash_lead()));
    Ok(BodyDigest::Hashing(task, StopOnDrop(pace)))
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

/// Runs read ahead of the one being hashed.
const TO_HASH_AHEAD: usize = 2;
/// Runs read (and hashed) ahead of the one being written, enough for the
/// reading to stay ahead of the writes. With the runs waiting to be hashed
/// and those being read, hashed and written, a body holds at most nine
/// (about 9.4 MiB); written runs are reused.
const RUNS_AHEAD: usize = 4;

/// A body that cannot go out with sendfile (a sealed session seals every
/// byte), read once: a blocking thread reads the file a run of records at
/// a time (straight into the places the sealing leaves for the payload),
/// a second one hashes each run and hands those past `offset` over to be
/// written. The digest is then of the very bytes that were sent, the file
/// is not read twice, and no byte is copied inside this process between
/// the read and the socket. Reading and hashing on threads of their own keep the disk busy
/// while a run is hashed (1 GiB coded from a cold cache, 5 rounds: 1.77-
/// 1.99 s against 1.78-2.15 s on one thread).
pub(super) struct ReadOnce {
    /// The runs to write, in order; closed when the thread stops.
    pub runs: tokio::sync::mpsc::Receiver<RecordRun>,
    /// Written runs go back here to be filled again.
    pub spares: std::sync::mpsc::Sender<RecordRun>,
    /// The digest of the whole file (`None` when it was known already and
    /// nothing was hashed), or why the body came up short.
    pub done: tokio::task::JoinHandle<Result<Option<Digest>, String>>,
}

impl ReadOnce {
    /// Reads `file` up to `size`, hashing it from its start unless
    /// `hash` is false, and handing over the bytes from `offset` on.
    /// Dropping the result stops both threads at their next run.
    pub fn start(file: File, offset: u64, size: u64, hash: bool) -> ReadOnce {
        let (runs, receiver) = tokio::sync::mpsc::channel(RUNS_AHEAD);
        let (spares, returned) = std::sync::mpsc::channel();
        let (read, to_hash) = std::sync::mpsc::sync_channel(TO_HASH_AHEAD);
        let back = spares.clone();
        tokio::task::spawn_blocking(move || read_runs(&file, offset, size, hash, &read, &returned));
        let done = tokio::task::spawn_blocking(move || hash_runs(hash, &to_hash, &runs, &back));
        ReadOnce {
            runs: receiver,
            spares,
            done,
        }
    }
}

/// What the reading thread passes to the hashing one.
enum FromReader {
    /// A run, and whether it is to be sent (else only hashed).
    Run(RecordRun, bool),
    /// The end of the file's reading: why it came up short, if it did.
    End(Result<(), String>),
}

/// The reading thread: the file, run by run, from the start when it is to
/// be hashed, else from `offset`.
fn read_runs(
    file: &File,
    offset: u64,
    size: u64,
    hash: bool,
    read: &std::sync::mpsc::SyncSender<FromReader>,
    spares: &std::sync::mpsc::Receiver<RecordRun>,
) {
    let mut position = if hash { 0 } else { offset };
    // No hints to the kernel: its own read-ahead of sequential reads keeps
    // the disk ahead of the runs. 1 GiB coded from a cold cache against
    // plain sends in the same rounds (median of 7, this VM's page reporting
    // held back): no hint 1.02, POSIX_FADV_SEQUENTIAL 1.00, WillNeed 16 MiB
    // ahead 1.15, 256 MiB ahead 1.05. Each WillNeed is cut by the kernel to
    // one read-ahead window (8 MiB here), and the pages it brings carry no
    // read-ahead mark, so the hints broke the kernel's streaming.
    let end = loop {
        if position >= size {
            break Ok(());
        }
        let mut run = spares.try_recv().unwrap_or_default();
        // Up to `offset` (only hashed, never sent) and from it, apart.
        let until = if position < offset { offset } else { size };
        let want = (until - position).min(RUN_PAYLOAD as u64) as usize;
        let filled = run.fill(want, |filled, places| {
            let at = position.saturating_add(filled as u64);
            rustix::io::preadv(file, places, at).map_err(std::io::Error::from)
        });
        let n = match filled {
            Ok(n) => n,
            Err(e) => break Err(format!("cannot read: {}", describe_io(&e))),
        };
        let sent = position >= offset;
        position += n as u64;
        if n > 0 && read.send(FromReader::Run(run, sent)).is_err() {
            return;
        }
        if n < want {
            break Err("the file shrank while being sent".into());
        }
    };
    let _ = read.send(FromReader::End(end));
}

/// The hashing thread: hashes each run the reading thread passes on and
/// hands those to be sent over; returns the digest, or why there is none.
fn hash_runs(
    hash: bool,
    to_hash: &std::sync::mpsc::Receiver<FromReader>,
    runs: &tokio::sync::mpsc::Sender<RecordRun>,
    spares: &std::sync::mpsc::Sender<RecordRun>,
) -> Result<Option<Digest>, String> {
    let mut hasher = hash.then(Hasher::new);
    loop {
        match to_hash.recv() {
            Ok(FromReader::Run(run, sent)) => {
                if let Some(hasher) = &mut hasher {
                    run.payloads().for_each(|payload| hasher.update(payload));
                }
                if runs.is_closed() {
                    return Err("sending stopped".into());
                } else if !sent {
                    let _ = spares.send(run);
                } else if runs.blocking_send(run).is_err() {
                    return Err("sending stopped".into());
                }
            }
            Ok(FromReader::End(end)) => return end.map(|()| hasher.map(Hasher::finish)),
            Err(_) => return Err("the reading thread stopped".into()),
        }
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

    /// Runs `ReadOnce` over `file` to its end; returns the bytes handed
    /// over and the outcome.
    async fn read_once(
        file: File,
        offset: u64,
        size: u64,
        hash: bool,
    ) -> (Vec<u8>, Result<Option<Digest>, String>) {
        let mut read = ReadOnce::start(file, offset, size, hash);
        let mut got = Vec::new();
        while let Some(run) = read.runs.recv().await {
            assert!(!run.is_empty() && run.len() <= RUN_PAYLOAD);
            run.payloads().for_each(|p| got.extend_from_slice(p));
            let _ = read.spares.send(run);
        }
        (got, read.done.await.unwrap())
    }

    #[tokio::test]
    async fn read_once_hands_over_the_bytes_from_the_offset_and_hashes_all_of_them() {
        let data: Vec<u8> = (0..3_500_000u32).map(|i| (i % 251) as u8).collect();
        let (_tmp, file) = file_of(&data);
        let size = data.len() as u64;
        let (got, done) = read_once(file, 1_234_567, size, true).await;
        assert!(got == data[1_234_567..], "wrong bytes handed over");
        assert_eq!(done, Ok(Some(hashing::digest(&data))));
    }

    #[tokio::test]
    async fn read_once_with_a_known_digest_reads_only_from_the_offset() {
        let data: Vec<u8> = (0..2_100_000u32).map(|i| (i % 13) as u8).collect();
        let (_tmp, file) = file_of(&data);
        let (got, done) = read_once(file, 100, data.len() as u64, false).await;
        assert!(got == data[100..], "wrong bytes handed over");
        assert_eq!(done, Ok(None));
    }

    #[tokio::test]
    async fn read_once_of_a_file_shorter_than_declared_says_it_shrank() {
        let data = vec![9u8; 1_500_000];
        let (_tmp, file) = file_of(&data);
        let (got, done) = read_once(file, 0, 2_000_000, true).await;
        assert_eq!(got.len(), data.len());
        assert_eq!(done, Err("the file shrank while being sent".to_owned()));
    }

    #[tokio::test]
    async fn read_once_stops_when_nobody_takes_its_runs() {
        let (_tmp, file) = file_of(&vec![1u8; 12 * RUN_PAYLOAD]);
        let mut read = ReadOnce::start(file, 0, 12 * RUN_PAYLOAD as u64, true);
        assert!(read.runs.recv().await.is_some());
        let done = read.done;
        drop(read.runs);
        assert_eq!(
            tokio::time::timeout(std::time::Duration::from_secs(5), done)
                .await
                .unwrap()
                .unwrap(),
            Err("sending stopped".to_owned())
        );
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
