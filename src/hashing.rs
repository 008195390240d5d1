//! SHA-256 plumbing shared by both sides.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read};

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

/// The digest of `bytes`.
pub fn digest(bytes: &[u8]) -> Digest {
    Sha256::digest(bytes).into()
}

/// Hashes everything `file` yields from its current position; returns the
/// digest and the byte count.
pub fn hash_reader(file: &mut File) -> io::Result<(Digest, u64)> {
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; HASH_BUF];
    let mut total = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hasher.finish(), total))
}

/// Lowercase hex, as printed in events and summaries.
pub fn to_hex(digest: &Digest) -> String {
    let mut s = String::with_capacity(64);
    for b in digest {
        let _ = write!(s, "{b:02x}");
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
