//! Real sender and receiver, in-process, on loopback.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::harness::*;
use std::io::Write;
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn zero_byte_file_arrives() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("empty.dat");
    fs::write(&file, b"").unwrap();
    let rx = Receiver::start(dst.path()).await;
    let (result, events) = send(&[&file], rx.addr).await;
    let summary = result.unwrap();
    assert_eq!((summary.delivered(), summary.failed), (1, 0));
    assert_eq!(fs::read(dst.path().join("empty.dat")).unwrap(), b"");
    assert_eq!(
        events.report("empty.dat").sha256,
        Some(xfer::hashing::digest(b""))
    );
}

#[tokio::test]
async fn one_byte_file_arrives() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("one");
    fs::write(&file, b"x").unwrap();
    let rx = Receiver::start(dst.path()).await;
    send(&[&file], rx.addr).await.0.unwrap();
    assert_eq!(fs::read(dst.path().join("one")).unwrap(), b"x");
}

#[tokio::test]
async fn several_mib_of_random_data_arrive_identical_with_digest_in_trailer() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("random.bin");
    let data = write_random(&file, 8 * 1024 * 1024 + 13, 1);
    let rx = Receiver::start(dst.path()).await;
    let (result, events) = send(&[&file], rx.addr).await;
    assert_eq!(result.unwrap().bytes, data.len() as u64);
    assert_eq!(fs::read(dst.path().join("random.bin")).unwrap(), data);
    let sent = events.report("random.bin");
    assert_eq!(sent.sha256, Some(xfer::hashing::digest(&data)));
    // Too big to hash ahead: streamed at once, digest only in the trailer.
    assert!(!sent.digest_in_header);
    let received = rx.events.report("random.bin");
    assert!(!received.digest_in_header);
    assert_eq!(received.sha256, sent.sha256);
}

#[tokio::test]
async fn small_file_digest_travels_in_the_header() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("small.bin");
    let data = write_random(&file, 64 * 1024, 2);
    let rx = Receiver::start(dst.path()).await;
    send(&[&file], rx.addr).await.0.unwrap();
    let received = rx.events.report("small.bin");
    assert!(received.digest_in_header);
    assert_eq!(received.sha256, Some(xfer::hashing::digest(&data)));
}

#[tokio::test]
async fn unicode_names_with_spaces_and_a_leading_dash() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let names = [
        "naïve café — 日本語 file.txt",
        "-rf",
        "--help",
        " leading space",
    ];
    let paths: Vec<_> = names.iter().map(|n| src.path().join(n)).collect();
    for (i, p) in paths.iter().enumerate() {
        write_random(p, 100 + i, i as u64);
    }
    let rx = Receiver::start(dst.path()).await;
    let refs: Vec<_> = paths.iter().map(|p| p.as_path()).collect();
    send(&refs, rx.addr).await.0.unwrap();
    assert_same_tree(src.path(), dst.path());
}

#[tokio::test]
async fn three_level_tree_with_empty_files_and_an_empty_directory() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let tree = src.path().join("photos");
    write_random(&tree.join("a.jpg"), 5000, 1);
    write_random(&tree.join("2024/b.jpg"), 2_000_000, 2);
    write_random(&tree.join("2024/june/c.jpg"), 7, 3);
    fs::write(tree.join("2024/june/empty"), b"").unwrap();
    fs::create_dir_all(tree.join("2024/nothing here")).unwrap();
    let rx = Receiver::start(dst.path()).await;
    let (result, _) = send(&[&tree], rx.addr).await;
    assert_eq!(result.unwrap().delivered(), 4);
    assert_same_tree(src.path(), dst.path());
    assert!(dst.path().join("photos/2024/nothing here").is_dir());
}

#[tokio::test]
async fn several_paths_in_one_send() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = src.path().join("a.txt");
    let dir = src.path().join("dir");
    let c = src.path().join("c.bin");
    write_random(&a, 10, 1);
    write_random(&dir.join("b.txt"), 20, 2);
    write_random(&c, 3_000_000, 3);
    let rx = Receiver::start(dst.path()).await;
    let (result, _) = send(&[&a, &dir, &c], rx.addr).await;
    assert_eq!(result.unwrap().delivered(), 3);
    assert_same_tree(src.path(), dst.path());
}

#[tokio::test]
async fn many_small_files_span_several_batches() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let tree = src.path().join("many");
    for i in 0..700 {
        write_random(
            &tree.join(format!("d{}/f{i}.txt", i % 7)),
            i * 37 % 5000,
            i as u64,
        );
    }
    let rx = Receiver::start(dst.path()).await;
    let (result, _) = send(&[&tree], rx.addr).await;
    assert_eq!(result.unwrap().delivered(), 700);
    assert_same_tree(src.path(), dst.path());
}

#[tokio::test]
async fn eight_concurrent_senders() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let rx = Receiver::start(dst.path()).await;
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let dir = src.path().join(format!("sender{i}"));
        write_random(&dir.join("big.bin"), 1_500_000 + i as usize, i);
        write_random(&dir.join("small.txt"), 100, i + 100);
        let addr = rx.addr;
        tasks.push(tokio::spawn(async move {
            send(&[&dir], addr).await.0.map(|s| s.delivered())
        }));
    }
    for task in tasks {
        assert_eq!(within(task).await.unwrap().unwrap(), 2);
    }
    assert_same_tree(src.path(), dst.path());
    assert_eq!(rx.stop().await.failed_sessions, 0);
}

#[tokio::test]
async fn identical_resend_is_skipped_for_small_and_large_files() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let small = src.path().join("small.txt");
    let large = src.path().join("large.bin");
    write_random(&small, 1000, 1);
    write_random(&large, 3_000_000, 2);
    let rx = Receiver::start(dst.path()).await;
    send(&[&small, &large], rx.addr).await.0.unwrap();
    let (again, events) = send(&[&small, &large], rx.addr).await;
    let again = again.unwrap();
    assert_eq!((again.delivered(), again.skipped, again.bytes), (2, 2, 0));
    assert!(events.report("small.txt").skipped() && events.report("large.bin").skipped());
    // The large file went through Compare/Identical: both sides know its
    // digest, and none is a placeholder.
    let digest = xfer::hashing::digest(&std::fs::read(&large).unwrap());
    for side in [&events, &rx.events] {
        let skipped: Vec<_> = side.done().into_iter().filter(|r| r.skipped()).collect();
        let report = skipped.iter().find(|r| r.path == "large.bin").unwrap();
        assert_eq!(report.sha256, Some(digest));
    }
    assert_same_tree(src.path(), dst.path());
}

#[tokio::test]
async fn different_content_under_the_same_name_keeps_both() {
    let (src1, src2, dst) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let rx = Receiver::start(dst.path()).await;
    // Same size, different bytes: for the large file the receiver asks the
    // sender to compare digests; for the small one it compares itself.
    let first_small = write_random(&src1.path().join("notes.txt"), 500, 1);
    let first_large = write_random(&src1.path().join("disk.img"), 2_000_000, 2);
    send(
        &[
            &src1.path().join("notes.txt"),
            &src1.path().join("disk.img"),
        ],
        rx.addr,
    )
    .await
    .0
    .unwrap();
    let second_small = write_random(&src2.path().join("notes.txt"), 500, 3);
    let second_large = write_random(&src2.path().join("disk.img"), 2_000_000, 4);
    let (result, events) = send(
        &[
            &src2.path().join("notes.txt"),
            &src2.path().join("disk.img"),
        ],
        rx.addr,
    )
    .await;
    assert_eq!(result.unwrap().skipped, 0);
    assert_eq!(fs::read(dst.path().join("notes.txt")).unwrap(), first_small);
    assert_eq!(
        fs::read(dst.path().join("notes (1).txt")).unwrap(),
        second_small
    );
    assert_eq!(fs::read(dst.path().join("disk.img")).unwrap(), first_large);
    assert_eq!(
        fs::read(dst.path().join("disk (1).img")).unwrap(),
        second_large
    );
    assert_eq!(
        events.report("notes.txt").stored_as.as_deref(),
        Some("notes (1).txt")
    );
    // Sending the second version again finds it under its new name.
    let (again, _) = send(&[&src2.path().join("notes.txt")], rx.addr).await;
    assert_eq!(again.unwrap().skipped, 1);
    assert!(!dst.path().join("notes (2).txt").exists());
}

#[tokio::test]
async fn overwrite_replaces_different_content() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    fs::write(dst.path().join("f.txt"), b"old content").unwrap();
    let data = write_random(&src.path().join("f.txt"), 50, 9);
    let rx = Receiver::start_with(
        dst.path(),
        RecvOptions {
            overwrite: true,
            ..Default::default()
        },
    )
    .await;
    send(&[&src.path().join("f.txt")], rx.addr).await.0.unwrap();
    assert_eq!(fs::read(dst.path().join("f.txt")).unwrap(), data);
    assert!(!dst.path().join("f (1).txt").exists());
}

#[tokio::test]
async fn mode_and_mtime_are_preserved() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let dir = src.path().join("d");
    let script = dir.join("run.sh");
    let big = dir.join("big.bin");
    write_random(&script, 30, 1);
    write_random(&big, 2_000_000, 2);
    let old = SystemTime::UNIX_EPOCH + Duration::new(1_500_000_000, 123_456_789);
    for (path, mode) in [(&script, 0o751), (&big, 0o600)] {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
        fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o750)).unwrap();
    fs::File::open(&dir).unwrap().set_modified(old).unwrap();
    let rx = Receiver::start(dst.path()).await;
    send(&[&dir], rx.addr).await.0.unwrap();
    for rel in ["d/run.sh", "d/big.bin", "d"] {
        assert_eq!(
            mode_and_mtime(&dst.path().join(rel)),
            mode_and_mtime(&src.path().join(rel)),
            "{rel}"
        );
    }
    assert_eq!(
        mode_and_mtime(&dst.path().join("d/run.sh")),
        (0o751, 1_500_000_000, 123_456_789)
    );
}

#[tokio::test]
async fn ipv6_loopback_works() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("v6.bin");
    write_random(&file, 4096, 6);
    let Ok(probe) = std::net::TcpListener::bind("[::1]:0") else {
        eprintln!("SKIPPED: this machine has no IPv6 loopback");
        return;
    };
    drop(probe);
    let rx = Receiver::start_with(
        dst.path(),
        RecvOptions {
            listen: "[::1]:0".parse().unwrap(),
            ..Default::default()
        },
    )
    .await;
    send(&[&file], rx.addr).await.0.unwrap();
    assert_same_tree(src.path(), dst.path());
}

#[tokio::test]
async fn a_broken_session_does_not_disturb_the_server() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let rx = Receiver::start(dst.path()).await;
    let mut garbage = within(tokio::net::TcpStream::connect(rx.addr))
        .await
        .unwrap();
    within(garbage.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
        .await
        .unwrap();
    let file = src.path().join("after.bin");
    write_random(&file, 100_000, 7);
    send(&[&file], rx.addr).await.0.unwrap();
    assert_same_tree(src.path(), dst.path());
    drop(garbage);
    let report = rx.stop().await;
    assert_eq!((report.sessions, report.failed_sessions), (2, 1));
}

#[tokio::test]
async fn a_missing_path_fails_before_connecting() {
    let dst = tempfile::tempdir().unwrap();
    let rx = Receiver::start(dst.path()).await;
    let (result, _) = send(&[&dst.path().join("no-such-file")], rx.addr).await;
    let err = result.unwrap_err();
    assert_eq!(xfer::error::exit_code_of(&err), xfer::error::EXIT_USAGE);
    assert!(format!("{err:#}").contains("no-such-file"), "{err:#}");
    assert_eq!(rx.stop().await.sessions, 0);
}

/// Starts a receiver into `dest` and sends `file` to it with the digest
/// cache at `cache_file`; the send must succeed.
async fn send_through_cache(file: &Path, dest: &Path, cache_file: &Path) -> Receiver {
    let rx = Receiver::start(dest).await;
    let idle = Duration::from_secs(10);
    let (result, _) = send_with(&[file], rx.addr, idle, Some(cache_file.to_path_buf())).await;
    result.unwrap();
    rx
}

#[tokio::test]
async fn a_large_file_sent_before_carries_its_digest_in_the_header_next_time() {
    let (src, dst1, dst2, cache) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let file = src.path().join("large.bin");
    let data = write_random(&file, 3_000_000, 11);
    let cache_file = cache.path().join("digests.jsonl");
    let first = send_through_cache(&file, dst1.path(), &cache_file).await;
    assert!(
        !first.events.report("large.bin").digest_in_header,
        "unknown the first time"
    );

    let second = send_through_cache(&file, dst2.path(), &cache_file).await;
    let report = second.events.report("large.bin");
    assert!(
        report.digest_in_header,
        "known from the cache the second time"
    );
    assert_eq!(report.sha256, Some(xfer::hashing::digest(&data)));

    // A changed file misses the cache and is still sent correctly.
    let changed = write_random(&file, 3_000_000, 12);
    fs::remove_file(dst2.path().join("large.bin")).unwrap();
    send_through_cache(&file, dst2.path(), &cache_file).await;
    assert_eq!(fs::read(dst2.path().join("large.bin")).unwrap(), changed);
}

#[tokio::test]
async fn a_stale_cached_digest_is_caught_and_the_file_resent_correctly() {
    let (src, dst1, dst2, cache) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let file = src.path().join("disk.img");
    write_random(&file, 5_000_000, 21);
    let cache_file = cache.path().join("digests.jsonl");
    send_through_cache(&file, dst1.path(), &cache_file).await;

    // New content, same size, inode and mtime: the cache cannot tell.
    let mtime = fs::metadata(&file).unwrap().modified().unwrap();
    let changed = {
        let mut data = fs::read(&file).unwrap();
        data[1234] ^= 0xff;
        fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .write_all(&data)
            .unwrap();
        fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        data
    };
    let second = send_through_cache(&file, dst2.path(), &cache_file).await;
    assert_eq!(fs::read(dst2.path().join("disk.img")).unwrap(), changed);
    let report = second.events.report("disk.img");
    assert_eq!(report.attempts, 2, "the stale digest was caught once");
    assert!(second.events.failed().is_empty());
    assert!(
        !second.events.report("disk.img").digest_in_header,
        "the retry streams and hashes"
    );
}

#[tokio::test]
async fn a_refused_file_is_an_outcome_and_the_sender_still_ends_with_one_summary() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_random(&src.path().join("small.txt"), 100, 1);
    write_random(&src.path().join("huge.bin"), 50_000, 2);
    let rx = Receiver::start_with(
        dst.path(),
        RecvOptions {
            limits: xfer::receiver::Limits {
                max_file_size: Some(10_000),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await;
    let (result, events) = send(&[src.path()], rx.addr).await;
    let err = result.unwrap_err();
    assert_eq!(xfer::error::exit_code_of(&err), 1, "{err:#}");
    let endings = events.endings();
    assert_eq!(endings.len(), 1, "exactly one ending");
    let (summary, error) = &endings[0];
    assert_eq!(
        (summary.offered, summary.stored, summary.refused),
        (2, 1, 1)
    );
    assert!(
        error.as_deref().unwrap().contains("--max-size"),
        "{error:?}"
    );
    let finals = events.finals();
    assert_eq!(finals.len(), 2, "one final report per file: {finals:?}");
}
