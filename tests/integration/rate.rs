//! `--limit-rate` on either side: the measured rate of a send over
//! loopback, where unlimited it runs hundreds of times faster, is the
//! limit within ±10%. A limit can only make a send slower, so a loaded
//! machine threatens the upper bound alone; 12 MiB at 4 MiB/s leaves it
//! 300 ms for the handshake, hashing and the final syncs.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use xfer::sender::{Destination, SendConfig};

use crate::harness::*;

const MIB: u64 = 1024 * 1024;
const RATE: u64 = 4 * MIB;
const TOTAL: u64 = 12 * MIB;

fn config(paths: &[&Path], addr: std::net::SocketAddr, limit_rate: Option<u64>) -> SendConfig {
    SendConfig {
        paths: paths.iter().map(|p| p.to_path_buf()).collect(),
        destination: Destination {
            host: addr.ip().to_string(),
            port: addr.port(),
            fallback: Vec::new(),
        },
        idle_timeout: Duration::from_secs(10),
        digest_cache: None,
        code: None,
        limit_rate,
    }
}

/// Runs `config`, checks every file arrived, and returns how long it took
/// and what the sender reported.
async fn timed_send(config: &SendConfig) -> (Duration, Arc<Events>) {
    let events = Arc::new(Events::default());
    let started = Instant::now();
    let summary = within(xfer::sender::send(
        config,
        events.clone(),
        CancellationToken::new(),
    ))
    .await
    .expect("the send failed");
    let took = started.elapsed();
    assert_eq!(summary.undelivered(), 0);
    assert_eq!(summary.bytes, TOTAL);
    (took, events)
}

/// `TOTAL` bytes at `RATE` take 3 s: the elapsed time is within ±10%.
fn assert_rate_held(took: Duration, what: &str) {
    let expected = TOTAL as f64 / RATE as f64;
    let secs = took.as_secs_f64();
    let rate = TOTAL as f64 / secs / MIB as f64;
    assert!(
        secs >= expected * 0.9 && secs <= expected * 1.1,
        "{what}: {TOTAL} bytes at a limit of 4 MiB/s took {secs:.3} s ({rate:.2} MiB/s), \
         not {expected} s ±10%"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_limit_holds_with_sendfile() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("big.bin");
    write_random(&file, TOTAL as usize, 1);
    let rx = Receiver::start(dst.path()).await;
    let (took, events) = timed_send(&config(&[&file], rx.addr, Some(RATE))).await;
    assert_rate_held(took, "plain TCP, sendfile");
    // Progress comes in steps of a quarter second's worth, not 8 MiB.
    let steps = events.progress();
    assert_eq!(steps.iter().sum::<u64>(), TOTAL);
    assert!(steps.iter().all(|&s| s <= RATE / 4), "{steps:?}");
    assert_same_tree(src.path(), dst.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_limit_holds_for_many_small_files() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // 384 files of 32 KiB: each travels inline, from memory.
    let tree = src.path().join("small");
    for i in 0..384 {
        write_random(&tree.join(format!("{i:03}.bin")), 32 * 1024, i);
    }
    let rx = Receiver::start(dst.path()).await;
    let (took, _) = timed_send(&config(&[&tree], rx.addr, Some(RATE))).await;
    assert_rate_held(took, "small files");
    assert_same_tree(src.path(), dst.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_limit_holds_on_a_coded_session() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("big.bin");
    write_random(&file, TOTAL as usize, 2);
    let code = xfer::code::Code::generate();
    let rx = Receiver::start_with(
        dst.path(),
        RecvOptions {
            code: Some(code.clone()),
            ..RecvOptions::default()
        },
    )
    .await;
    let mut config = coded_config(&[&file], rx.addr, &code);
    config.limit_rate = Some(RATE);
    let (took, _) = timed_send(&config).await;
    assert_rate_held(took, "sealed records");
    assert_same_tree(src.path(), dst.path());
}

/// Sends `path` coded at `rate` bytes per second to a receiver in `dst`,
/// both sides with an idle timeout of 1 s: the bytes sent and how long.
async fn slow_coded_send(path: &Path, dst: &Path, rate: u64) -> (u64, Duration) {
    let code = xfer::code::Code::generate();
    let rx = Receiver::start_with(
        dst,
        RecvOptions {
            code: Some(code.clone()),
            idle_timeout: Duration::from_secs(1),
            ..RecvOptions::default()
        },
    )
    .await;
    let mut config = coded_config(&[path], rx.addr, &code);
    config.limit_rate = Some(rate);
    config.idle_timeout = Duration::from_secs(1);
    let started = Instant::now();
    let summary = within(xfer::sender::send(
        &config,
        Arc::new(Events::default()),
        CancellationToken::new(),
    ))
    .await
    .expect("the slow coded send failed");
    (summary.bytes, started.elapsed())
}

/// Under a limit so low that a whole record takes longer to fill than the
/// receiver's idle timeout, sealed bytes still leave as they are paced
/// (flushed every quarter second), not once a record is full: the
/// receiver keeps hearing from the sender and the send completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_limit_on_a_coded_session_keeps_the_receiver_hearing() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("slow.bin");
    write_random(&file, 6000, 5);
    let (bytes, took) = slow_coded_send(&file, dst.path(), 2000).await;
    assert_eq!(bytes, 6000);
    assert!(took >= Duration::from_millis(2500), "{took:?}");
    assert_same_tree(src.path(), dst.path());
}

/// The same with many small files, each sent whole in one go: the flushes
/// keep their pace across files, not only inside one body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_small_files_at_a_slow_limit_on_a_coded_session_keep_the_receiver_hearing() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for i in 0..40 {
        write_random(&src.path().join(format!("small-{i:02}.bin")), 100, i);
    }
    let (bytes, took) = slow_coded_send(src.path(), dst.path(), 1000).await;
    assert_eq!(bytes, 4000);
    assert!(took >= Duration::from_millis(3000), "{took:?}");
    let name = src.path().file_name().unwrap();
    assert_same_tree(src.path(), &dst.path().join(name));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_limit_holds_and_slows_the_sender_to_it() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("big.bin");
    write_random(&file, TOTAL as usize, 3);
    let rx = Receiver::start_with(
        dst.path(),
        RecvOptions {
            limit_rate: Some(RATE),
            ..RecvOptions::default()
        },
    )
    .await;
    let (took, _) = timed_send(&config(&[&file], rx.addr, None)).await;
    assert_rate_held(took, "receiver's limit");
    assert_same_tree(src.path(), dst.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_limit_the_same_send_is_far_faster() {
    // What gives the lower bounds above their teeth: unlimited, the same
    // 12 MiB go well inside them (typically in a twentieth of the time).
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("big.bin");
    write_random(&file, TOTAL as usize, 4);
    let rx = Receiver::start(dst.path()).await;
    let (took, _) = timed_send(&config(&[&file], rx.addr, None)).await;
    assert!(took < Duration::from_millis(2700), "{took:?}");
}

#[test]
fn the_flag_on_either_command_line_slows_a_real_send() {
    // The binary end to end: 4 MiB at --limit-rate 2M take 2 s (less one
    // 50 ms burst). Only the lower bound is checked here; the in-process
    // tests above hold both.
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("f.bin");
    write_random(&file, 4 * MIB as usize, 5);
    for (recv_flags, send_flags) in [
        (vec![], vec!["--limit-rate", "2M"]),
        (vec!["--limit-rate", "2MiB"], vec![]),
    ] {
        let dst = tempfile::tempdir().unwrap();
        let mut args = vec!["--dir", dst.path().to_str().unwrap(), "--once"];
        args.extend(&recv_flags);
        let (recv, addr) = XferProcess::recv(&args);
        let started = Instant::now();
        let out = xfer_command()
            .arg("send")
            .args(&send_flags)
            .arg(&file)
            .arg(addr.to_string())
            .output()
            .unwrap();
        let took = started.elapsed();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            took >= Duration::from_millis(1800),
            "recv {recv_flags:?}, send {send_flags:?}: {took:?}"
        );
        let (status, _) = recv.wait(Duration::from_secs(10));
        assert!(status.success());
        assert_same_tree(src.path(), dst.path());
    }
}
