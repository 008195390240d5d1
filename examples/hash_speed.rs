//! Prints the SHA-256 throughput of xfer's hasher on 16 KiB blocks, the unit
//! `openssl speed -evp sha256 -bytes 16384` reports, so bench/bench.py can
//! compare the two in one run.

use std::time::{Duration, Instant};

fn main() {
    let block = vec![0x5au8; 16 * 1024];
    let mut hasher = xfer::hashing::Hasher::new();
    let started = Instant::now();
    let mut bytes = 0u64;
    while started.elapsed() < Duration::from_secs(3) {
        for _ in 0..256 {
            hasher.update(&block);
        }
        bytes += 256 * block.len() as u64;
    }
    let secs = started.elapsed().as_secs_f64();
    std::hint::black_box(hasher.finish());
    println!("{:.0}", bytes as f64 / secs / 1e6);
}
