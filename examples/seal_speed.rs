//! Seal + open throughput of candidate AEADs on 64 KiB records, next to the
//! SHA-256 hashing that every session already pays, measured in one run.
//! This is how the coded session's AEAD was chosen (docs/PROTOCOL.md §9).
//!
//!     cargo run --release --example seal_speed
//!
//! Each line: MB/s of plaintext for seal alone, open alone, and seal then
//! open (what one machine pays when it both sends and receives, as the
//! loopback benchmark does), and the hashing-to-sealing ratio. Then the
//! chosen AEAD end to end: 1 GiB over TCP loopback, plain and through
//! xfer's sealed halves (`protocol::secure`), in one run.

use std::time::{Duration, Instant};

use aes_gcm::aead::{AeadInPlace, KeyInit};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use xfer::protocol::secure::{secure, Role};

const RECORD: usize = 64 * 1024;
const RUN: Duration = Duration::from_secs(2);

/// Something that seals and opens one record in place with a 16-byte tag.
trait Candidate {
    fn name(&self) -> &'static str;
    fn seal(&self, counter: u64, aad: &[u8], buf: &mut [u8]) -> [u8; 16];
    fn open(&self, counter: u64, aad: &[u8], buf: &mut [u8], tag: &[u8; 16]);
}

fn nonce(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    n
}

/// A RustCrypto `AeadInPlace` with 12-byte nonces and 16-byte tags.
struct RustCrypto<A>(&'static str, A);

impl<A> Candidate for RustCrypto<A>
where
    A: AeadInPlace<NonceSize = aes_gcm::aead::consts::U12, TagSize = aes_gcm::aead::consts::U16>,
{
    fn name(&self) -> &'static str {
        self.0
    }
    fn seal(&self, counter: u64, aad: &[u8], buf: &mut [u8]) -> [u8; 16] {
        let n = nonce(counter);
        let tag = self
            .1
            .encrypt_in_place_detached((&n).into(), aad, buf)
            .expect("a 64 KiB record seals");
        tag.into()
    }
    fn open(&self, counter: u64, aad: &[u8], buf: &mut [u8], tag: &[u8; 16]) {
        let n = nonce(counter);
        self.1
            .decrypt_in_place_detached((&n).into(), aad, buf, tag.into())
            .expect("what was sealed opens");
    }
}

/// ring's `LessSafeKey`: the nonce discipline is the record counter.
struct Ring(&'static str, ring::aead::LessSafeKey);

impl Candidate for Ring {
    fn name(&self) -> &'static str {
        self.0
    }
    fn seal(&self, counter: u64, aad: &[u8], buf: &mut [u8]) -> [u8; 16] {
        let n = ring::aead::Nonce::assume_unique_for_key(nonce(counter));
        let tag = self
            .1
            .seal_in_place_separate_tag(n, ring::aead::Aad::from(aad), buf)
            .expect("a 64 KiB record seals");
        let mut out = [0u8; 16];
        out.copy_from_slice(tag.as_ref());
        out
    }
    fn open(&self, counter: u64, aad: &[u8], buf: &mut [u8], tag: &[u8; 16]) {
        let n = ring::aead::Nonce::assume_unique_for_key(nonce(counter));
        let tag = ring::aead::Tag::from(*tag);
        self.1
            .open_in_place_separate_tag(n, ring::aead::Aad::from(aad), tag, buf, 0..)
            .expect("what was sealed opens");
    }
}

fn ring_key(algorithm: &'static ring::aead::Algorithm, key: &[u8]) -> ring::aead::LessSafeKey {
    let unbound = ring::aead::UnboundKey::new(algorithm, key)
        .expect("a key of the length the algorithm takes");
    ring::aead::LessSafeKey::new(unbound)
}

/// aws-lc-rs's `LessSafeKey` (ring's API): the nonce discipline is the record counter.
struct AwsLc(&'static str, aws_lc_rs::aead::LessSafeKey);

impl Candidate for AwsLc {
    fn name(&self) -> &'static str {
        self.0
    }
    fn seal(&self, counter: u64, aad: &[u8], buf: &mut [u8]) -> [u8; 16] {
        let n = aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce(counter));
        let tag = self
            .1
            .seal_in_place_separate_tag(n, aws_lc_rs::aead::Aad::from(aad), buf)
            .expect("a 64 KiB record seals");
        let mut out = [0u8; 16];
        out.copy_from_slice(tag.as_ref());
        out
    }
    fn open(&self, counter: u64, aad: &[u8], buf: &mut [u8], tag: &[u8; 16]) {
        let n = aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce(counter));
        self.1
            .open_in_place_separate_tag(n, aws_lc_rs::aead::Aad::from(aad), tag, buf)
            .expect("what was sealed opens");
    }
}

fn aws_lc_key(
    algorithm: &'static aws_lc_rs::aead::Algorithm,
    key: &[u8],
) -> aws_lc_rs::aead::LessSafeKey {
    let unbound = aws_lc_rs::aead::UnboundKey::new(algorithm, key)
        .expect("a key of the length the algorithm takes");
    aws_lc_rs::aead::LessSafeKey::new(unbound)
}

/// MB/s of plaintext that `step` processes, one record per call, for `RUN`.
fn rate(mut step: impl FnMut(u64)) -> f64 {
    let started = Instant::now();
    let mut records = 0u64;
    while started.elapsed() < RUN {
        for _ in 0..64 {
            step(records);
            records += 1;
        }
    }
    (records * RECORD as u64) as f64 / started.elapsed().as_secs_f64() / 1e6
}

/// Bytes each loopback run moves, and the size of each write and read.
const LOOPBACK_BYTES: usize = 1 << 30;
const CHUNK: usize = 256 * 1024;

async fn pump<W: AsyncWrite + Unpin>(mut w: W) {
    let chunk = vec![0x5au8; CHUNK];
    for _ in 0..LOOPBACK_BYTES / CHUNK {
        w.write_all(&chunk).await.unwrap();
    }
    w.shutdown().await.unwrap();
}

async fn drain<R: AsyncRead + Unpin>(mut r: R) -> usize {
    let mut chunk = vec![0u8; CHUNK];
    let mut total = 0;
    loop {
        match r.read(&mut chunk).await.unwrap() {
            0 => return total,
            n => total += n,
        }
    }
}

/// MB/s of one transfer over loopback, sealed or not.
async fn loopback(sealed: bool) -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let started = Instant::now();
    let receiver = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (r, w) = stream.into_split();
        if sealed {
            let (r, _w) = secure(r, w, Role::Receiver, b"7-code", &[0; 32], "s", RUN)
                .await
                .unwrap();
            drain(r).await
        } else {
            drain(r).await
        }
    });
    let (r, w) = TcpStream::connect(addr).await.unwrap().into_split();
    if sealed {
        let (_r, w) = secure(r, w, Role::Sender, b"7-code", &[0; 32], "r", RUN)
            .await
            .unwrap();
        pump(w).await;
    } else {
        pump(w).await;
    }
    assert_eq!(receiver.await.unwrap(), LOOPBACK_BYTES);
    LOOPBACK_BYTES as f64 / started.elapsed().as_secs_f64() / 1e6
}

fn main() {
    let key = [0x42u8; 32];
    let aad = (RECORD as u32 + 17).to_be_bytes();
    let candidates: Vec<Box<dyn Candidate>> = vec![
        Box::new(RustCrypto(
            "chacha20poly1305 ChaCha20-Poly1305",
            chacha20poly1305::ChaCha20Poly1305::new((&key).into()),
        )),
        Box::new(RustCrypto(
            "aes-gcm AES-256-GCM",
            aes_gcm::Aes256Gcm::new((&key).into()),
        )),
        Box::new(AwsLc(
            "aws-lc-rs AES-256-GCM (xfer's)",
            aws_lc_key(&aws_lc_rs::aead::AES_256_GCM, &key),
        )),
        Box::new(AwsLc(
            "aws-lc-rs AES-128-GCM",
            aws_lc_key(&aws_lc_rs::aead::AES_128_GCM, &key[..16]),
        )),
        Box::new(Ring(
            "ring AES-256-GCM",
            ring_key(&ring::aead::AES_256_GCM, &key),
        )),
        Box::new(Ring(
            "ring AES-128-GCM",
            ring_key(&ring::aead::AES_128_GCM, &key[..16]),
        )),
        Box::new(Ring(
            "ring ChaCha20-Poly1305",
            ring_key(&ring::aead::CHACHA20_POLY1305, &key),
        )),
    ];

    let block = vec![0x5au8; RECORD];
    let mut hasher = xfer::hashing::Hasher::new();
    let sha = rate(|_| hasher.update(&block));
    std::hint::black_box(hasher.finish());
    println!(
        "{:<36} {sha:>8.0} MB/s",
        "sha256 (xfer::hashing), for scale"
    );
    println!(
        "{:<36} {:>8} {:>8} {:>10} {:>11}",
        "AEAD, 64 KiB records, MB/s", "seal", "open", "seal+open", "sha/seal"
    );
    let mut buf = vec![0x5au8; RECORD];
    for c in &candidates {
        let mut tag = [0u8; 16];
        let seal = rate(|n| tag = c.seal(n, &aad, &mut buf));
        // Open what was really sealed: one sealed record, opened again and again
        // under its own nonce (opening restores the plaintext, so re-seal each
        // time would measure both).
        let mut sealed = block.clone();
        let tag0 = c.seal(0, &aad, &mut sealed);
        let mut work = sealed.clone();
        let open = rate(|_| {
            work.copy_from_slice(&sealed);
            c.open(0, &aad, &mut work, &tag0);
        });
        let both = rate(|n| {
            let tag = c.seal(n, &aad, &mut buf);
            c.open(n, &aad, &mut buf, &tag);
        });
        std::hint::black_box((&buf, tag));
        println!(
            "{:<36} {seal:>8.0} {open:>8.0} {both:>10.0} {:>11.2}",
            c.name(),
            sha / seal
        );
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (plain, sealed) = runtime.block_on(async { (loopback(false).await, loopback(true).await) });
    println!(
        "loopback 1 GiB, MB/s: plain {plain:.0}, sealed {sealed:.0} (sealed/plain {:.2})",
        sealed / plain
    );
}
