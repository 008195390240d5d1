//! A hand-driven peer speaking raw frames to a real receiver.

use std::time::Duration;

use crate::harness::*;
use xfer::protocol::{Action, Entry, EntryKind, Message, Offer};

fn file_entry(path: &str) -> Entry {
    Entry {
        path: path.into(),
        kind: EntryKind::File,
        size: 1,
        mode: 0o644,
        mtime_secs: 0,
        mtime_nanos: 0,
        sha256: None,
    }
}

#[tokio::test]
async fn traversal_and_hostile_names_are_refused_and_nothing_escapes() {
    let names: Vec<String> =
        serde_json::from_str(include_str!("../../fixtures/hostile_paths.json")).unwrap();
    let outer = tempfile::tempdir().unwrap();
    let dir = outer.path().join("inbox");
    let rx = Receiver::start(&dir).await;

    let (mut reader, mut writer) = raw_connect(rx.addr).await;
    let entries = names.iter().map(|n| file_entry(n)).collect();
    writer
        .send(&Message::Offer(Offer {
            first_id: 0,
            entries,
        }))
        .await
        .unwrap();
    writer.flush().await.unwrap();
    let Some(Message::Plan(plan)) = within(reader.read_message()).await.unwrap() else {
        panic!("expected a plan")
    };
    assert_eq!(plan.actions.len(), names.len());
    for (name, action) in names.iter().zip(&plan.actions) {
        assert!(
            matches!(action, Action::Refuse { reason } if reason.starts_with("unsafe path")),
            "{name:?} got {action:?}"
        );
    }
    writer.send(&Message::Done).await.unwrap();
    writer.flush().await.unwrap();
    assert!(matches!(
        within(reader.read_message()).await.unwrap(),
        Some(Message::Bye { files: 0, .. })
    ));
    assert!(tree_listing(&dir).is_empty(), "{:?}", tree_listing(&dir));
    let outside: Vec<_> = tree_listing(outer.path()).into_keys().collect();
    assert_eq!(outside, ["inbox"]);
    assert!(!std::path::Path::new("/etc/xfer-absolute").exists());
}

#[tokio::test]
async fn a_body_for_an_unplanned_file_ends_the_session_and_the_server_serves_on() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let rx = Receiver::start(dst.path()).await;
    let (mut reader, mut writer) = raw_connect(rx.addr).await;
    writer
        .send(&Message::FileBegin { id: 5, offset: 0 })
        .await
        .unwrap();
    writer.send_raw(b"x").await.unwrap();
    writer.flush().await.unwrap();
    match within(reader.read_message()).await.unwrap() {
        Some(Message::Abort { reason }) => assert!(reason.contains("not planned"), "{reason}"),
        other => panic!("expected Abort, got {other:?}"),
    }
    let file = src.path().join("real.txt");
    write_random(&file, 10, 1);
    send(&[&file], rx.addr).await.0.unwrap();
    assert_same_tree(src.path(), dst.path());
}

/// Bytes a raw peer sends; `hello` first when set.
struct Case {
    name: &'static str,
    hello: bool,
    bytes: Vec<u8>,
    /// Close our side after sending (else wait for the receiver to end it).
    close: bool,
    /// What the receiver must log as the reason.
    reason: &'static str,
}

fn frame(message: &Message) -> Vec<u8> {
    let mut buf = bytes::BytesMut::new();
    xfer::protocol::codec::encode(message, &mut buf).unwrap();
    buf.to_vec()
}

fn raw_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

fn hello(version: u32) -> Vec<u8> {
    let mut out = xfer::protocol::MAGIC.to_vec();
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    out
}

fn offer_of(size: u64) -> Vec<u8> {
    frame(&Message::Offer(Offer {
        first_id: 0,
        entries: vec![Entry {
            size,
            ..file_entry("f.bin")
        }],
    }))
}

fn cases() -> Vec<Case> {
    let body_then = |body: &[u8], tail: Vec<u8>| {
        let mut out = offer_of(10);
        out.extend(frame(&Message::FileBegin { id: 0, offset: 0 }));
        out.extend_from_slice(body);
        out.extend(tail);
        out
    };
    let digest = xfer::hashing::digest(b"0123456789");
    let end = frame(&Message::FileEnd {
        sha256: digest,
        error: None,
    });
    vec![
        Case {
            name: "garbage",
            hello: false,
            bytes: b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            close: false,
            reason: "bad magic",
        },
        Case {
            name: "wrong magic",
            hello: false,
            bytes: b"XFEZ\r\n\x1a\n\0\0\0\x01\0\0\0\0".to_vec(),
            close: false,
            reason: "bad magic",
        },
        Case {
            name: "unsupported version",
            hello: false,
            bytes: hello(99),
            close: false,
            reason: "version 99",
        },
        Case {
            name: "truncated hello",
            hello: false,
            bytes: b"XFER".to_vec(),
            close: true,
            reason: "during the hello",
        },
        Case {
            name: "truncated frame",
            hello: true,
            bytes: [&100u32.to_be_bytes()[..], b"abc"].concat(),
            close: true,
            reason: "in the middle of a message",
        },
        Case {
            name: "frame over the maximum",
            hello: true,
            bytes: (1024 * 1024 + 1u32).to_be_bytes().to_vec(),
            close: false,
            reason: "exceeds the limit",
        },
        Case {
            name: "frame length near u32::MAX",
            hello: true,
            bytes: (u32::MAX - 1).to_be_bytes().to_vec(),
            close: false,
            reason: "exceeds the limit",
        },
        Case {
            name: "huge declared string",
            hello: true,
            // Offer { first_id: 0, entries: [ Entry { path: <u64::MAX bytes> ...
            bytes: raw_frame(&[&[0u8, 0, 1, 253][..], &u64::MAX.to_le_bytes()].concat()),
            close: false,
            reason: "malformed message",
        },
        Case {
            name: "huge declared vector",
            hello: true,
            bytes: raw_frame(&[&[0u8, 0, 253][..], &u64::MAX.to_le_bytes()].concat()),
            close: false,
            reason: "malformed message",
        },
        Case {
            name: "unknown message kind",
            hello: true,
            bytes: raw_frame(&[200]),
            close: false,
            reason: "malformed message",
        },
        Case {
            name: "a plan from the sender",
            hello: true,
            bytes: frame(&Message::Plan(xfer::protocol::Plan {
                first_id: 0,
                actions: vec![],
            })),
            close: false,
            reason: "unexpected Plan",
        },
        Case {
            name: "body before any offer",
            hello: true,
            bytes: frame(&Message::FileBegin { id: 0, offset: 0 }),
            close: false,
            reason: "not planned",
        },
        Case {
            name: "offer numbered wrong",
            hello: true,
            bytes: frame(&Message::Offer(Offer {
                first_id: 5,
                entries: vec![file_entry("a")],
            })),
            close: false,
            reason: "numbered from 5",
        },
        Case {
            name: "empty offer",
            hello: true,
            bytes: frame(&Message::Offer(Offer {
                first_id: 0,
                entries: vec![],
            })),
            close: false,
            reason: "offer of 0 entries",
        },
        Case {
            name: "body from an unplanned offset",
            hello: true,
            bytes: [
                offer_of(10),
                frame(&Message::FileBegin { id: 0, offset: 4 }),
            ]
            .concat(),
            close: false,
            reason: "but the plan said 0",
        },
        Case {
            name: "body shorter than declared, then close",
            hello: true,
            bytes: body_then(b"01234", vec![]),
            close: true,
            reason: "in the middle of a file body",
        },
        Case {
            name: "body longer than declared",
            hello: true,
            bytes: body_then(b"0123456789", b"EXTRA BYTES!".to_vec()),
            close: false,
            reason: "",
        },
        Case {
            name: "close without Done",
            hello: true,
            bytes: body_then(b"0123456789", end.clone()),
            close: true,
            reason: "before it was done",
        },
        Case {
            name: "a second hello inside the session",
            hello: true,
            bytes: hello(1),
            close: false,
            reason: "exceeds the limit",
        },
        Case {
            name: "a second session after Done",
            hello: true,
            bytes: [frame(&Message::Done), hello(1), offer_of(10)].concat(),
            close: false,
            reason: "",
        },
    ]
}

#[tokio::test]
async fn malformed_and_hostile_streams_end_only_their_connection() {
    for case in cases() {
        let (src, outer) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let dir = outer.path().join("inbox");
        let rx = Receiver::start(&dir).await;
        let mut stream = within(tokio::net::TcpStream::connect(rx.addr))
            .await
            .unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        if case.hello {
            within(stream.write_all(&hello(1))).await.unwrap();
        }
        within(stream.write_all(&case.bytes)).await.unwrap();
        if case.close {
            within(stream.shutdown()).await.unwrap();
        }
        // The receiver must end the connection by itself (reads see EOF or a reset).
        let mut sink = Vec::new();
        let _ = within(stream.read_to_end(&mut sink)).await;
        let events = rx.events.clone();
        within(async {
            while events.session_errors().is_empty() && !case.reason.is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        if !case.reason.is_empty() {
            let errors = rx.events.session_errors();
            assert!(
                errors.iter().any(|e| e.contains(case.reason)),
                "{}: {errors:?}",
                case.name
            );
        }
        // Nothing visible in DIR that is not a complete, verified file.
        for (path, _) in tree_listing(&dir)
            .into_iter()
            .filter(|(p, _)| !p.starts_with('.'))
        {
            assert_eq!(path, "f.bin", "{}", case.name);
            assert_eq!(
                std::fs::read(dir.join(&path)).unwrap(),
                b"0123456789",
                "{}",
                case.name
            );
        }
        let outside: Vec<_> = std::fs::read_dir(outer.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(outside, ["inbox"], "{}", case.name);
        // And the server still serves a real sender.
        let file = src.path().join("real.txt");
        write_random(&file, 100, 1);
        let (result, _) = send(&[&file], rx.addr).await;
        assert!(result.is_ok(), "{}: {:#}", case.name, result.unwrap_err());
        rx.stop().await;
    }
}

#[tokio::test]
async fn idle_connections_do_not_lock_out_a_real_sender() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let options = RecvOptions {
        max_connections: 2,
        ..Default::default()
    };
    let rx = Receiver::start_with(dst.path(), options).await;
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(
            within(tokio::net::TcpStream::connect(rx.addr))
                .await
                .unwrap(),
        );
    }
    let file = src.path().join("through.txt");
    write_random(&file, 1000, 2);
    send(&[&file], rx.addr).await.0.unwrap();
    assert_same_tree(src.path(), dst.path());
    drop(idle);
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_handshake_timeout() {
    let dst = tempfile::tempdir().unwrap();
    let options = RecvOptions {
        idle_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let rx = Receiver::start_with(dst.path(), options).await;
    let mut stream = within(tokio::net::TcpStream::connect(rx.addr))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    use tokio::io::AsyncReadExt;
    within(stream.read_to_end(&mut got)).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "not before its time"
    );
    assert_eq!(
        got.len(),
        xfer::protocol::HELLO_LEN,
        "only the receiver's hello"
    );
    rx.events
        .wait_for_session_error("no hello within 1 s")
        .await;
}

#[tokio::test]
async fn a_sender_over_the_session_limit_is_turned_away_politely() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let options = RecvOptions {
        max_connections: 1,
        ..Default::default()
    };
    let rx = Receiver::start_with(dst.path(), options).await;
    // A session that holds the only slot.
    let slot_holder = raw_connect(rx.addr).await;
    let file = src.path().join("later.txt");
    write_random(&file, 10, 3);
    let (result, _) = send(&[&file], rx.addr).await;
    let err = format!("{:#}", result.unwrap_err());
    assert!(
        err.contains("the receiver is busy with 1 senders already; try again shortly"),
        "{err}"
    );
    // Once the slot frees up, the same sender gets through.
    drop(slot_holder);
    let mut ok = false;
    for _ in 0..50 {
        if send(&[&file], rx.addr).await.0.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "the slot was never released");
}

#[tokio::test]
async fn size_and_count_limits_are_enforced_with_clear_reasons() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let limits = xfer::receiver::Limits {
        max_file_size: Some(1000),
        max_session_bytes: Some(1500),
        max_entries: 4,
    };
    let rx = Receiver::start_with(
        dst.path(),
        RecvOptions {
            limits,
            ..Default::default()
        },
    )
    .await;
    let big = src.path().join("big.bin");
    write_random(&big, 2000, 1);
    let err = format!("{:#}", send(&[&big], rx.addr).await.0.unwrap_err());
    assert!(
        err.contains(
            "big.bin: 1.95 KiB is over the receiver's limit of 1000 B per file (--max-size)"
        ),
        "{err}"
    );

    let (a, b) = (src.path().join("a.bin"), src.path().join("b.bin"));
    write_random(&a, 900, 2);
    write_random(&b, 900, 3);
    let err = format!("{:#}", send(&[&a, &b], rx.addr).await.0.unwrap_err());
    assert!(
        err.contains("b.bin: over the receiver's limit of bytes per session"),
        "{err}"
    );
    assert!(dst.path().join("a.bin").is_file());

    let tree = src.path().join("tree");
    for i in 0..5 {
        write_random(&tree.join(format!("{i}")), 1, i);
    }
    let err = format!("{:#}", send(&[&tree], rx.addr).await.0.unwrap_err());
    assert!(err.contains("more than 4 files in one session"), "{err}");
    assert!(!dst.path().join("tree").exists());
}

#[test]
fn a_symlink_swapped_in_during_a_transfer_is_never_written_through() {
    let (src, outer) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let dir = outer.path().join("inbox");
    let outside = outer.path().join("outside");
    std::fs::create_dir_all(dir.join("d")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    for i in 0..150 {
        write_random(
            &src.path().join(format!("d/f{i:03}")),
            if i % 10 == 0 { 300_000 } else { 500 },
            i,
        );
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let rx = runtime.block_on(Receiver::start(&dir));

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (stop, dir, outside) = (stop.clone(), dir.clone(), outside.clone());
        std::thread::spawn(move || {
            let mut swaps = 0u32;
            // Bounded: stops when told, or after 20,000 swaps.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && swaps < 20_000 {
                if std::fs::rename(dir.join("d"), dir.join("d.real")).is_ok() {
                    let _ = std::os::unix::fs::symlink(&outside, dir.join("d"));
                    std::thread::yield_now();
                    let _ = std::fs::remove_file(dir.join("d"));
                    let _ = std::fs::rename(dir.join("d.real"), dir.join("d"));
                }
                swaps += 1;
            }
            swaps
        })
    };
    for _ in 0..6 {
        // Individual files may be refused while the symlink is in place.
        let _ = runtime.block_on(send(&[&src.path().join("d")], rx.addr));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(swaps > 10, "the race never ran ({swaps} swaps)");
    let escaped: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        escaped.is_empty(),
        "written outside DIR through a swapped-in symlink: {escaped:?}"
    );
    runtime.block_on(rx.stop());
}

#[tokio::test]
async fn a_symlink_planted_at_the_final_name_is_neither_followed_nor_replaced() {
    let (src, outer) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let dir = outer.path().join("inbox");
    std::fs::create_dir_all(&dir).unwrap();
    let target = outer.path().join("victim.txt");
    std::fs::write(&target, b"precious").unwrap();
    std::os::unix::fs::symlink(&target, dir.join("report.txt")).unwrap();
    let file = src.path().join("report.txt");
    let data = write_random(&file, 2_000_000, 5);
    let rx = Receiver::start(&dir).await;
    let (result, events) = send(&[&file], rx.addr).await;
    result.unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"precious");
    assert!(std::fs::symlink_metadata(dir.join("report.txt"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        events.report("report.txt").stored_as.as_deref(),
        Some("report (1).txt")
    );
    assert_eq!(std::fs::read(dir.join("report (1).txt")).unwrap(), data);
}

#[tokio::test]
async fn a_path_offered_twice_in_one_session_is_stored_once_and_the_repeat_refused() {
    let dst = tempfile::tempdir().unwrap();
    let rx = Receiver::start(dst.path()).await;
    let (mut reader, mut writer) = raw_connect(rx.addr).await;
    let entries = vec![file_entry("dup.txt"), file_entry("dup.txt")];
    writer
        .send(&Message::Offer(Offer {
            first_id: 0,
            entries,
        }))
        .await
        .unwrap();
    writer.flush().await.unwrap();
    let Some(Message::Plan(plan)) = within(reader.read_message()).await.unwrap() else {
        panic!("expected a plan")
    };
    assert_eq!(plan.actions[0], Action::Send { offset: 0 });
    assert!(
        matches!(&plan.actions[1], Action::Refuse { reason } if reason.contains("offered twice")),
        "{:?}",
        plan.actions
    );
    writer
        .send(&Message::FileBegin { id: 0, offset: 0 })
        .await
        .unwrap();
    writer.send_raw(b"x").await.unwrap();
    writer
        .send(&Message::FileEnd {
            sha256: xfer::hashing::digest(b"x"),
            error: None,
        })
        .await
        .unwrap();
    writer.send(&Message::Done).await.unwrap();
    writer.flush().await.unwrap();
    loop {
        match within(reader.read_message()).await.unwrap() {
            Some(Message::Verdict(_)) => continue,
            Some(Message::Bye { files, .. }) => break assert_eq!(files, 1),
            other => panic!("expected Bye, got {other:?}"),
        }
    }
    let names: Vec<_> = tree_listing(dst.path()).into_keys().collect();
    assert_eq!(names, ["dup.txt"], "stored once, not as 'dup (1).txt' too");
    rx.events.wait_for_endings(1).await;
    let (summary, _) = rx.events.endings()[0];
    assert_eq!(
        (summary.offered, summary.stored, summary.refused),
        (2, 1, 1)
    );
}

#[tokio::test]
async fn totals_are_taken_once_before_the_first_offer_and_only_when_announced() {
    let dst = tempfile::tempdir().unwrap();
    let rx = Receiver::start(dst.path()).await;
    let expect_abort = |got: Option<Message>, says: &str| match got {
        Some(Message::Abort { reason }) => assert!(reason.contains(says), "{reason}"),
        other => panic!("expected Abort, got {other:?}"),
    };

    // A hello without CAP_TOTALS: no Totals may follow.
    let (mut reader, mut writer) = raw_connect(rx.addr).await;
    let totals = Message::Totals { files: 1, bytes: 1 };
    writer.send(&totals).await.unwrap();
    writer.flush().await.unwrap();
    let got = within(reader.read_message()).await.unwrap();
    expect_abort(got, "did not announce them");

    // With it: one Totals before the first offer is taken, a second is not.
    let stream = within(tokio::net::TcpStream::connect(rx.addr))
        .await
        .unwrap();
    let (r, w) = stream.into_split();
    let mut reader = xfer::protocol::FrameReader::new(r, "peer".into(), TIMEOUT);
    let mut writer = xfer::protocol::FrameWriter::new(w, "peer".into(), TIMEOUT);
    let theirs = within(xfer::protocol::handshake_with(
        &mut reader,
        &mut writer,
        xfer::protocol::CAP_TOTALS,
    ))
    .await
    .unwrap();
    assert_ne!(
        theirs & xfer::protocol::CAP_TOTALS,
        0,
        "receivers take totals"
    );
    writer.send(&totals).await.unwrap();
    let offer = Offer {
        first_id: 0,
        entries: vec![file_entry("a.txt")],
    };
    writer.send(&Message::Offer(offer)).await.unwrap();
    writer.flush().await.unwrap();
    match within(reader.read_message()).await.unwrap() {
        Some(Message::Plan(plan)) => assert_eq!(plan.actions.len(), 1),
        other => panic!("expected Plan, got {other:?}"),
    }
    writer.send(&totals).await.unwrap();
    writer.flush().await.unwrap();
    let got = within(reader.read_message()).await.unwrap();
    expect_abort(got, "after the first offer or twice");
}
