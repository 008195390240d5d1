//! Faults for real: processes killed, connections cut or silent, bytes
//! flipped on the wire, a disk that fills up, a source that changes.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::*;

const MIB: u64 = 1024 * 1024;

/// Names in `dir` a user would see (hidden partials excluded).
fn visible(dir: &Path) -> Vec<String> {
    tree_listing(dir)
        .into_keys()
        .filter(|k| !k.split('/').any(|c| c.starts_with('.')))
        .collect()
}

fn send_binary(file: &Path, addr: &str) -> XferProcess {
    XferProcess::spawn(&[
        "send",
        "--json",
        "--quiet",
        "--no-cache",
        file.to_str().unwrap(),
        addr,
    ])
}

/// The `summary` event a `--json` sender printed last.
fn json_summary(process: &mut XferProcess) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    while let Some(line) = process.next_line() {
        last = serde_json::from_str(&line).unwrap();
        if last["event"] == "summary" {
            break;
        }
    }
    last
}

#[tokio::test(flavor = "multi_thread")]
async fn sender_killed_mid_file_resumes_and_sends_only_the_rest() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("video.bin");
    let data = write_random(&file, 40 * MIB as usize, 1);
    let rx = Receiver::start(dst.path()).await;
    let proxy = Proxy::start(rx.addr, ProxyOptions::throttled(16 * MIB)).await;

    let sender = send_binary(&file, &proxy.addr.to_string());
    let dir = dst.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        wait_until("20 MiB to arrive", || {
            partial_len(&dir, "video.bin").unwrap_or(0) >= 20 * MIB
        });
        sender.signal(libc::SIGKILL);
        sender.wait(Duration::from_secs(5));
    })
    .await
    .unwrap();
    let dir = dst.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        wait_until("the receiver to end the session", || {
            partial_settled(&dir, "video.bin")
        })
    })
    .await
    .unwrap();
    assert!(
        visible(dst.path()).is_empty(),
        "a visible file after the kill: {:?}",
        visible(dst.path())
    );
    let kept = partial_len(dst.path(), "video.bin").unwrap();
    assert!(kept >= 20 * MIB, "kept {kept}");

    let mut again = send_binary(&file, &rx.addr.to_string());
    let summary = tokio::task::spawn_blocking(move || {
        let summary = json_summary(&mut again);
        let (status, err) = again.wait(Duration::from_secs(20));
        assert!(status.success(), "{err}");
        summary
    })
    .await
    .unwrap();
    let resent = summary["bytes"].as_u64().unwrap();
    assert_eq!(
        resent,
        data.len() as u64 - kept,
        "only the missing remainder crossed the wire"
    );
    assert_eq!(fs::read(dst.path().join("video.bin")).unwrap(), data);
    assert_eq!(rx.events.report("video.bin").resumed_from, kept);
    assert_eq!(
        tree_listing(dst.path()).len(),
        1,
        "partial and sidecar are gone"
    );
}

#[test]
fn receiver_killed_mid_file_fails_the_sender_fast_then_resumes() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("disk.img");
    let data = write_random(&file, 64 * MIB as usize, 2);
    let dir = dst.path().to_str().unwrap();
    let (receiver, addr) = XferProcess::recv(&["--dir", dir, "--quiet"]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let proxy = runtime.block_on(Proxy::start(addr, ProxyOptions::throttled(16 * MIB)));
    let sender = send_binary(&file, &proxy.addr.to_string());
    wait_until("40 MiB to arrive", || {
        partial_len(dst.path(), "disk.img").unwrap_or(0) >= 40 * MIB
    });
    receiver.signal(libc::SIGKILL);
    drop(receiver);
    // Bounded, not timed: a connection reset is noticed at once, and the
    // exact idle arithmetic is tested on a paused clock in protocol::connection.
    let (status, err) = sender.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(3), "{err}");
    let last = err.lines().last().unwrap();
    assert!(
        last.starts_with("error: ") && last.contains(&proxy.addr.to_string()),
        "{err}"
    );
    assert!(visible(dst.path()).is_empty());

    let mut receiver = XferProcess::spawn(&[
        "recv",
        "--listen",
        "127.0.0.1:0",
        "--dir",
        dir,
        "--json",
        "--once",
    ]);
    let listening: serde_json::Value =
        serde_json::from_str(&receiver.next_line().unwrap()).unwrap();
    let addr = listening["addr"].as_str().unwrap().to_owned();
    let mut again = send_binary(&file, &addr);
    let summary = json_summary(&mut again);
    assert!(again.wait(Duration::from_secs(20)).0.success());
    let received: serde_json::Value = serde_json::from_str(&receiver.next_line().unwrap()).unwrap();
    let resumed = received["resumed_from"].as_u64().unwrap();
    assert!(
        resumed >= 16 * MIB,
        "resumed from {resumed}: at 16 MiB/s a crash may lose at most 16 MiB (or a second) + one 8 MiB writeback step"
    );
    assert_eq!(
        summary["bytes"].as_u64().unwrap(),
        data.len() as u64 - resumed
    );
    assert!(receiver.wait(Duration::from_secs(10)).0.success());
    assert_eq!(fs::read(dst.path().join("disk.img")).unwrap(), data);
}

#[test]
fn a_receiver_stopping_mid_file_is_the_peer_going_away_for_the_sender() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("film.mkv");
    write_random(&file, 32 * MIB as usize, 4);
    let (receiver, addr) = XferProcess::recv(&["--dir", dst.path().to_str().unwrap()]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let proxy = runtime.block_on(Proxy::start(addr, ProxyOptions::throttled(8 * MIB)));
    let sender = send_binary(&file, &proxy.addr.to_string());
    wait_until("some data to arrive", || {
        partial_len(dst.path(), "film.mkv").unwrap_or(0) >= MIB
    });
    receiver.signal(libc::SIGTERM);
    let (status, err) = receiver.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{err}");
    let (status, err) = sender.wait(Duration::from_secs(15));
    // The same exit code as for a receiver that was killed or a cable pulled.
    assert_eq!(status.code(), Some(3), "{err}");
    assert!(err.lines().last().unwrap().starts_with("error: "), "{err}");
}

#[tokio::test]
async fn a_cut_session_says_how_much_was_kept_for_resume() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("movie.mkv");
    write_random(&file, 24 * MIB as usize, 6);
    let rx = Receiver::start(dst.path()).await;
    let proxy = Proxy::start(rx.addr, ProxyOptions::throttled(8 * MIB)).await;
    let cancel = tokio_util::sync::CancellationToken::new();
    let config = xfer::sender::SendConfig {
        paths: vec![file.clone()],
        destination: xfer::sender::Destination {
            host: "127.0.0.1".into(),
            port: proxy.addr.port(),
            fallback: Vec::new(),
        },
        idle_timeout: Duration::from_secs(10),
        digest_cache: None,
        code: None,
        limit_rate: None,
    };
    let events = std::sync::Arc::new(Events::default());
    let sending = tokio::spawn({
        let (cancel, events) = (cancel.clone(), events.clone());
        async move { xfer::sender::send(&config, events, cancel).await }
    });
    let dir = dst.path().to_path_buf();
    within(async {
        while partial_len(&dir, "movie.mkv").unwrap_or(0) < 2 * MIB {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    cancel.cancel();
    let err = within(sending).await.unwrap().unwrap_err();
    assert_eq!(xfer::error::exit_code_of(&err), 130);
    rx.events.wait_for_endings(1).await;
    let (summary, error) = rx.events.endings()[0].clone();
    assert!(error.is_some(), "a cut session is not a clean one");
    assert_eq!(
        (summary.offered, summary.stored, summary.kept_files),
        (1, 0, 1)
    );
    assert_eq!(summary.kept_of, 24 * MIB);
    let kept = partial_len(dst.path(), "movie.mkv").unwrap();
    assert_eq!(summary.kept_bytes, kept, "the summary says what is on disk");
    assert!(kept >= 2 * MIB);
    assert!(
        rx.events.finals().is_empty(),
        "no outcome for a file still to come"
    );
}

#[test]
fn ctrl_c_stops_either_side_promptly_and_leaves_a_resumable_partial() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("big.bin");
    let data = write_random(&file, 40 * MIB as usize, 3);
    let dir = dst.path().to_str().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();

    // Sender interrupted: exits 130; the receiver keeps the partial.
    let (receiver, addr) = XferProcess::recv(&["--dir", dir, "--quiet"]);
    let proxy = runtime.block_on(Proxy::start(addr, ProxyOptions::throttled(16 * MIB)));
    let sender = send_binary(&file, &proxy.addr.to_string());
    wait_until("5 MiB to arrive", || {
        partial_len(dst.path(), "big.bin").unwrap_or(0) >= 5 * MIB
    });
    sender.signal(libc::SIGINT);
    let (status, err) = sender.wait(Duration::from_secs(5));
    assert_eq!(status.code(), Some(130), "{err}");
    assert_eq!(
        err.lines().last(),
        Some("error: interrupted; run the same command again to resume")
    );
    wait_until("the receiver to keep the partial", || {
        partial_settled(dst.path(), "big.bin")
    });

    // Receiver interrupted mid-file: exits 0 at once, the sender is told why.
    let sender = send_binary(&file, &proxy.addr.to_string());
    let before = partial_len(dst.path(), "big.bin").unwrap();
    wait_until("more bytes to arrive", || {
        partial_len(dst.path(), "big.bin").unwrap_or(0) >= before + 5 * MIB
    });
    receiver.signal(libc::SIGINT);
    let (status, err) = receiver.wait(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "{err}");
    let (status, err) = sender.wait(Duration::from_secs(5));
    assert_ne!(status.code(), Some(0));
    assert!(
        err.contains("the receiver is shutting down; run the same command again to resume"),
        "{err}"
    );
    assert!(visible(dst.path()).is_empty());
    let meta = fs::read_to_string(dst.path().join(".big.bin.xfer-meta")).unwrap();
    assert!(
        !meta.contains("\"durable\":0"),
        "partial checkpointed on shutdown: {meta}"
    );

    // And it resumes.
    let (receiver, addr) = XferProcess::recv(&["--dir", dir, "--once", "--quiet"]);
    let mut again = send_binary(&file, &addr.to_string());
    let summary = json_summary(&mut again);
    assert!(again.wait(Duration::from_secs(20)).0.success());
    assert!(summary["bytes"].as_u64().unwrap() < data.len() as u64 - 10 * MIB);
    assert!(receiver.wait(Duration::from_secs(10)).0.success());
    assert_eq!(fs::read(dst.path().join("big.bin")).unwrap(), data);
}

#[tokio::test]
async fn a_silent_sender_is_dropped_after_the_idle_timeout() {
    let dst = tempfile::tempdir().unwrap();
    let options = RecvOptions {
        idle_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let rx = Receiver::start_with(dst.path(), options).await;
    let (mut reader, _writer) = raw_connect(rx.addr).await;
    // Say nothing more: the receiver gives up and says why.
    let started = std::time::Instant::now();
    match within(reader.read_message()).await.unwrap() {
        Some(xfer::protocol::Message::Abort { reason }) => {
            assert!(reason.contains("idle timeout"), "{reason}")
        }
        other => panic!("expected Abort, got {other:?}"),
    }
    // Not before its time (the upper bound is `within`'s; exact timing is
    // tested on a paused clock in protocol::connection).
    assert!(started.elapsed() >= Duration::from_secs(1));
    rx.events.wait_for_session_error("idle timeout").await;
}

#[tokio::test]
async fn a_silent_receiver_fails_the_sender_after_the_idle_timeout() {
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("f.txt");
    write_random(&file, 10, 1);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let silent = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let _peer = raw_peer(stream).await;
        tokio::time::sleep(Duration::from_secs(20)).await;
    });
    let (result, _) = send_with(&[&file], addr, Duration::from_secs(1), None).await;
    let err = result.unwrap_err();
    assert!(format!("{err:#}").contains("idle timeout"), "{err:#}");
    assert_eq!(xfer::error::exit_code_of(&err), xfer::error::EXIT_NETWORK);
    silent.abort();
}

#[tokio::test]
async fn a_byte_flipped_on_the_wire_is_caught_and_the_file_sent_again_once() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("payload.bin");
    let data = write_random(&file, 4 * MIB as usize, 4);
    let rx = Receiver::start(dst.path()).await;
    let proxy = Proxy::start(
        rx.addr,
        ProxyOptions {
            flips: vec![MIB],
            ..Default::default()
        },
    )
    .await;
    let (result, events) = send(&[&file], proxy.addr).await;
    let summary = result.unwrap();
    assert_eq!((summary.delivered(), summary.failed), (1, 0));
    assert_eq!(summary.bytes, 2 * data.len() as u64, "sent twice");
    assert_eq!(fs::read(dst.path().join("payload.bin")).unwrap(), data);
    // One file, one outcome on each side: stored, on its second attempt.
    for side in [&rx.events, &events] {
        assert!(side.failed().is_empty(), "{:?}", side.failed());
        let finals = side.finals();
        assert_eq!(finals.len(), 1, "{finals:?}");
        assert_eq!(finals[0].outcome, xfer::events::Outcome::Stored);
        assert_eq!(finals[0].attempts, 2);
        let why = finals[0].retried_after.as_deref().unwrap_or_default();
        assert!(why.contains("corrupted in transit"), "{why}");
    }
    rx.events.wait_for_endings(1).await;
    let ending = &rx.events.endings()[0];
    assert_eq!(
        (ending.0.stored, ending.0.failed, ending.1.clone()),
        (1, 0, None)
    );
    // So `recv --once` would exit 0, as the sender does.
    assert_eq!(rx.stop().await.failed_sessions, 0);
}

#[tokio::test]
async fn corruption_on_every_attempt_fails_after_one_retry() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("payload.bin");
    write_random(&file, 3 * MIB as usize, 5);
    let rx = Receiver::start(dst.path()).await;
    // One flip inside the first body (bytes ~0..3 MiB) and one inside the
    // retry's (~3..6 MiB); control frames stay intact.
    let proxy = Proxy::start(
        rx.addr,
        ProxyOptions {
            flips: vec![MIB, 5 * MIB],
            ..Default::default()
        },
    )
    .await;
    let (result, _) = send(&[&file], proxy.addr).await;
    let err = result.unwrap_err();
    assert_eq!(xfer::error::exit_code_of(&err), xfer::error::EXIT_FAILED);
    assert!(
        format!("{err:#}").contains("payload.bin: SHA-256 mismatch"),
        "{err:#}"
    );
    rx.events.wait_for_endings(1).await;
    let finals = rx.events.finals();
    assert_eq!(finals.len(), 1, "one file, one outcome: {finals:?}");
    assert!(
        matches!(&finals[0].outcome, xfer::events::Outcome::Failed(why) if why.contains("SHA-256 mismatch")),
        "{finals:?}"
    );
    assert_eq!(
        finals[0].attempts, 2,
        "the first attempt and exactly one retry"
    );
    assert!(
        tree_listing(dst.path()).is_empty(),
        "nothing left behind: {:?}",
        tree_listing(dst.path())
    );
}

/// A tmpfs of `size` mounted at `dir`, unmounted on drop.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> Option<SmallDisk> {
        fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                dir.to_str().unwrap(),
            ])
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallDisk(dir.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn disk_full_is_refused_up_front_or_aborted_cleanly_and_the_server_serves_on() {
    let (src, outer) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let inbox = outer.path().join("inbox");
    let Some(_disk) = SmallDisk::mount(&inbox, "8m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (not root?), so no small disk to fill");
        return;
    };
    let rx = Receiver::start(&inbox).await;

    // Declared size larger than the free space: refused before any byte moves.
    let huge = src.path().join("huge.bin");
    write_random(&huge, 12 * MIB as usize, 1);
    let (result, _) = send(&[&huge], rx.addr).await;
    let err = format!("{:#}", result.unwrap_err());
    assert!(
        err.contains("huge.bin: not enough free space on the receiver"),
        "{err}"
    );
    assert!(tree_listing(&inbox).is_empty());

    // Fits when offered, but the disk fills while it streams.
    let file = src.path().join("fits.bin");
    write_random(&file, 5 * MIB as usize, 2);
    let proxy = Proxy::start(rx.addr, ProxyOptions::throttled(4 * MIB)).await;
    let filler = inbox.join("filler");
    let inbox_copy = inbox.clone();
    let fill = tokio::task::spawn_blocking(move || {
        wait_until("the body to start", || {
            partial_len(&inbox_copy, "fits.bin").unwrap_or(0) > 0
        });
        // Take the rest of the disk; ENOSPC is expected and fine.
        let _ = fs::write(&filler, vec![0u8; 8 * MIB as usize]);
    });
    let (result, _) = send(&[&file], proxy.addr).await;
    fill.await.unwrap();
    let err = format!("{:#}", result.unwrap_err());
    assert!(
        err.contains("fits.bin: the receiver's disk is full"),
        "{err}"
    );
    assert_eq!(
        tree_listing(&inbox).into_keys().collect::<Vec<_>>(),
        ["filler"],
        "partial removed"
    );

    // Space again: the same server takes the next sender.
    fs::remove_file(inbox.join("filler")).unwrap();
    let small = src.path().join("small.txt");
    write_random(&small, 1000, 3);
    send(&[&small], rx.addr).await.0.unwrap();
    assert!(inbox.join("small.txt").is_file());
    rx.stop().await;
}

#[tokio::test]
async fn a_file_that_changes_while_sent_is_never_stored_as_verified() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("log.bin");
    write_random(&file, 16 * MIB as usize, 6);
    let rx = Receiver::start(dst.path()).await;
    let proxy = Proxy::start(rx.addr, ProxyOptions::throttled(8 * MIB)).await;
    let (dir, source) = (dst.path().to_path_buf(), file.clone());
    let writer = tokio::task::spawn_blocking(move || {
        wait_until("the body to start", || {
            partial_len(&dir, "log.bin").unwrap_or(0) > MIB
        });
        use std::io::{Seek, SeekFrom, Write};
        let mut f = fs::File::options().write(true).open(&source).unwrap();
        f.seek(SeekFrom::Start(15 * MIB)).unwrap();
        f.write_all(&[0xAA; 4096]).unwrap();
    });
    let (result, _) = send(&[&file], proxy.addr).await;
    writer.await.unwrap();
    let err = result.unwrap_err();
    assert_eq!(xfer::error::exit_code_of(&err), xfer::error::EXIT_FAILED);
    assert!(
        format!("{err:#}")
            .contains("log.bin: the sender could not read it: the file changed while being sent"),
        "{err:#}"
    );
    assert!(
        tree_listing(dst.path()).is_empty(),
        "{:?}",
        tree_listing(dst.path())
    );
}

#[tokio::test]
async fn a_kept_prefix_that_differs_from_the_source_is_caught_and_resent_from_scratch() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("doc.bin");
    let data = write_random(&file, 6 * MIB as usize, 7);
    // A partial whose record matches the offer but whose bytes do not.
    let meta = fs::metadata(&file).unwrap();
    use std::os::unix::fs::MetadataExt;
    fs::write(
        dst.path().join(".doc.bin.xfer-part"),
        vec![0x55u8; 2 * MIB as usize],
    )
    .unwrap();
    let record = serde_json::json!({
        "path": "doc.bin", "size": data.len(), "mtime_secs": meta.mtime(),
        "mtime_nanos": meta.mtime_nsec(), "sha256": null, "durable": 2 * MIB,
    });
    fs::write(dst.path().join(".doc.bin.xfer-meta"), record.to_string()).unwrap();

    let rx = Receiver::start(dst.path()).await;
    let (result, _) = send(&[&file], rx.addr).await;
    let summary = result.unwrap();
    assert_eq!(
        summary.bytes,
        (data.len() as u64 - 2 * MIB) + data.len() as u64,
        "resumed, then sent whole"
    );
    assert!(rx.events.failed().is_empty(), "{:?}", rx.events.failed());
    let report = rx.events.report("doc.bin");
    let why = report.retried_after.as_deref().unwrap_or_default();
    assert!(why.contains("resumed partial did not match"), "{why}");
    assert_eq!(fs::read(dst.path().join("doc.bin")).unwrap(), data);
    assert_eq!(tree_listing(dst.path()).len(), 1);
}
