//! SHA-256 plumbing shared by both sides.

use std::fs::File;
use std::io::{self, Read};

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use crate::protocol::Digest;

/// Buffer size for hashing files from disk.
pub const HASH_BUF: usize = 256 * 1024;

/// Incremental SHA-256.
#[derive(Clone, Default)]
pub struct Hasher(Sha256);

impl Hasher {
    pub fn new() -> Self {
        Hasher(Sha256::new())
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finish(self) -> Digest {
        self.0.finalize().into()
    }
}

/// Bodies at least this long are hashed on a thread of their own, so that
/// hashing overlaps reading the file and moving the bytes.
pub const BACKGROUND_MIN: u64 = 4 * 1024 * 1024;

/// Batches queued for the hashing thread before the producer waits.
const BACKLOG: usize = 4;

/// SHA-256 of a stream of chunks, computed inline for short streams and on
/// a dedicated thread for long ones.
pub enum StreamHasher {
    Inline(Hasher),
    Background {
        chunks: std::sync::mpsc::SyncSender<Vec<Bytes>>,
        thread: std::thread::JoinHandle<Digest>,
    },
}

impl StreamHasher {
    /// Continues `prefix` over `remaining` more bytes.
    pub fn new(prefix: Hasher, remaining: u64) -> StreamHasher {
        if remaining < BACKGROUND_MIN {
            return StreamHasher::Inline(prefix);
        }
        let (chunks, queue) = std::sync::mpsc::sync_channel::<Vec<Bytes>>(BACKLOG);
        let mut hasher = prefix.clone();
        let spawned = std::thread::Builder::new()
            .name("xfer-hash".into())
            .spawn(move || {
                for batch in queue {
                    batch.iter().for_each(|chunk| hasher.update(chunk));
                }
                hasher.finish()
            });
        match spawned {
            Ok(thread) => StreamHasher::Background { chunks, thread },
            Err(_) => StreamHasher::Inline(prefix),
        }
    }

    /// Adds the chunks of one batch, in order (cheap reference-counted
    /// clones when in the background: the batch is one item of the queue).
    pub fn update(&mut self, batch: &[Bytes]) {
        match self {
            StreamHasher::Inline(h) => batch.iter().for_each(|chunk| h.update(chunk)),
            StreamHasher::Background { chunks, .. } => {
                // The thread only stops when `chunks` is dropped.
                let _ = chunks.send(batch.to_vec());
            }
        }
    }

    /// The digest of everything added. A hashing thread that died yields
    /// an all-zero digest, which no verification accepts.
    pub fn finish(self) -> Digest {
        match self {
            StreamHasher::Inline(h) => h.finish(),
            StreamHasher::Background { chunks, thread } => {
                drop(chunks);
                thread.join().unwrap_or([0; 32])
            }
        }
    }
}

/// The digest of `bytes`.
pub fn digest(bytes: &[u8]) -> Digest {
    Sha256::digest(bytes).into()
}

/// Hashes everything `file` yields from its current position; returns the
/// digest and the byte count.
pub fn hash_reader(file: &mut File) -> io::Result<(Digest, u64)> {
    let mut hasher = Hasher::new();
    let total = hash_prefix(file, u64::MAX, &mut hasher)?;
    Ok((hasher.finish(), total))
}

/// Feeds up to `len` bytes of `reader` into `hasher` (the kept prefix of a
/// resumed file, on either side); returns how many bytes there were.
pub fn hash_prefix(reader: &mut impl Read, len: u64, hasher: &mut Hasher) -> io::Result<u64> {
    let mut limited = reader.take(len);
    let mut buf = vec![0u8; HASH_BUF];
    let mut total = 0u64;
    loop {
        let n = match limited.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok(total)
}

/// Lowercase hex, as printed in events and summaries.
pub fn to_hex(digest: &Digest) -> String {
    // By table rather than `format!`: this runs for every file received.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(64);
    for b in digest {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_input_has_the_known_digest() {
        assert_eq!(
            to_hex(&digest(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn incremental_equals_one_shot() {
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let mut h = Hasher::new();
        for chunk in data.chunks(777) {
            h.update(chunk);
        }
        assert_eq!(h.finish(), digest(&data));
    }

    #[test]
    fn stream_hasher_matches_one_shot_inline_and_in_background() {
        let data: Vec<u8> = (0..(BACKGROUND_MIN as usize + 12_345))
            .map(|i| (i * 7) as u8)
            .collect();
        for (prefix_len, remaining) in [(0, 10u64), (1000, BACKGROUND_MIN)] {
            let mut prefix = Hasher::new();
            prefix.update(&data[..prefix_len]);
            let mut h = StreamHasher::new(prefix, remaining);
            assert_eq!(
                matches!(h, StreamHasher::Background { .. }),
                remaining >= BACKGROUND_MIN
            );
            // Batches of one and of several chunks alike.
            let chunks: Vec<Bytes> = data[prefix_len..]
                .chunks(65_536)
                .map(Bytes::copy_from_slice)
                .collect();
            for batch in chunks.chunks(3) {
                h.update(&batch[..1]);
                h.update(&batch[1..]);
            }
            assert_eq!(h.finish(), digest(&data));
        }
    }

    #[test]
    fn hash_reader_counts_and_hashes_a_file() {
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, b"abc").unwrap();
        std::io::Seek::rewind(&mut f).unwrap();
        let (d, n) = hash_reader(&mut f).unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            to_hex(&d),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
