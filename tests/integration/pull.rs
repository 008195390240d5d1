//! Pull mode: `xfer serve` offers, `xfer get` fetches. The push tests
//! mirrored (basics, resume after either side dies, many getters, skips,
//! corruption, `--once`, codes), the pairings that must not work, and the
//! read-only guarantee against a getter speaking raw frames.

use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::harness::*;
use xfer::error::{exit_code_of, EXIT_AUTH, EXIT_PROTOCOL};
use xfer::protocol::{
    handshake_with, Action, Entry, EntryKind, FrameReader, FrameWriter, Message, Offer, Plan,
    CAP_CODE, CAP_FETCHES, CAP_TOTALS, HELLO_LEN, MAGIC,
};

const MIB: u64 = 1024 * 1024;

/// Names in `dir` a user would see (hidden partials excluded).
fn visible(dir: &Path) -> Vec<String> {
    tree_listing(dir)
        .into_keys()
        .filter(|k| !k.split('/').any(|c| c.starts_with('.')))
        .collect()
}

/// Every stdout line of a `--json` process until its `event` is `last`,
/// parsed.
fn json_until(process: &mut XferProcess, last: &str) -> Vec<serde_json::Value> {
    let mut lines = Vec::new();
    while let Some(line) = process.next_line() {
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        let done = value["event"] == last;
        lines.push(value);
        if done {
            break;
        }
    }
    lines
}

/// The lines of `stderr` that start with `error:`.
fn error_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.starts_with("error:")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_tiny_mib_tree_and_unicode_files_are_fetched_whole() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let zero = src.path().join("zero.bin");
    fs::write(&zero, b"").unwrap();
    let one = src.path().join("one.bin");
    fs::write(&one, b"x").unwrap();
    let big = src.path().join("random.bin");
    write_random(&big, 5 * MIB as usize + 17, 1);
    let tree = src.path().join("tree");
    write_random(&tree.join("a/b/deep.bin"), 70_000, 2);
    fs::write(tree.join("a/empty-file"), b"").unwrap();
    fs::create_dir_all(tree.join("a/empty-dir")).unwrap();
    fs::create_dir_all(tree.join("also-empty")).unwrap();
    let unicode = src.path().join("Ünïcödé файл 🚀 -dash.txt");
    fs::write(&unicode, "héllo wörld\n").unwrap();

    let server = Serving::start(&[&zero, &one, &big, &tree, &unicode]).await;
    let (result, events) = get(server.addr, dst.path()).await;
    let summary = result.unwrap();
    assert_same_tree(src.path(), dst.path());
    let bytes = 1 + (5 * MIB + 17) + 70_000 + "héllo wörld\n".len() as u64;
    assert_eq!(
        (
            summary.offered,
            summary.stored,
            summary.failed,
            summary.bytes
        ),
        (6, 6, 0, bytes)
    );
    // Both sides' ledgers agree, file by file.
    server.events.wait_for_endings(1).await;
    let (sent, error) = server.events.endings()[0].clone();
    assert_eq!(error, None);
    assert_eq!((sent.offered, sent.stored, sent.bytes), (6, 6, bytes));
    let digests = |files: Vec<xfer::events::FileReport>| {
        let mut d: Vec<_> = files.into_iter().map(|r| (r.path, r.sha256)).collect();
        d.sort();
        d
    };
    assert_eq!(digests(events.done()), digests(server.events.done()));
    assert!(events.done().iter().all(|r| r.sha256.is_some()));
}

#[tokio::test(flavor = "multi_thread")]
async fn four_getters_at_once_each_get_the_whole_offer() {
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("share");
    write_random(&tree.join("big.bin"), 3 * MIB as usize, 3);
    for n in 0..20 {
        write_random(&tree.join(format!("small/{n}.txt")), 100 + n, n as u64);
    }
    let server = Serving::start(&[&tree]).await;
    let dsts: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let getters: Vec<_> = dsts
        .iter()
        .map(|d| {
            let (addr, dir) = (server.addr, d.path().to_path_buf());
            tokio::spawn(async move { get(addr, &dir).await.0.map_err(|e| format!("{e:#}")) })
        })
        .collect();
    for getter in getters {
        let summary = within(getter).await.unwrap().unwrap();
        assert_eq!((summary.offered, summary.stored), (21, 21));
    }
    for dst in &dsts {
        assert_same_tree(src.path(), dst.path());
    }
    server.events.wait_for_endings(4).await;
    let endings = server.events.endings();
    assert_eq!(endings.len(), 4);
    for (summary, error) in endings {
        assert_eq!(error, None);
        assert_eq!((summary.stored, summary.failed), (21, 0));
    }
    let report = server.stop().await;
    assert_eq!((report.sessions, report.failed_sessions), (4, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn what_dir_already_holds_is_skipped_and_a_different_file_is_kept_beside() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let big = src.path().join("big.bin");
    let data = write_random(&big, 2 * MIB as usize, 4);
    let notes = src.path().join("notes.txt");
    fs::write(&notes, b"from the server").unwrap();
    let server = Serving::start(&[&big, &notes]).await;
    get(server.addr, dst.path()).await.0.unwrap();

    let (again, events) = get(server.addr, dst.path()).await;
    let again = again.unwrap();
    assert_eq!(
        (again.skipped, again.stored, again.bytes),
        (2, 0, 0),
        "nothing crossed the second time"
    );
    assert!(events.done().iter().all(|r| r.skipped()));
    assert_eq!(visible(dst.path()), ["big.bin", "notes.txt"]);

    // A different file under an offered name is never overwritten.
    fs::write(dst.path().join("notes.txt"), b"mine").unwrap();
    let (third, events) = get(server.addr, dst.path()).await;
    assert_eq!(third.unwrap().stored, 1);
    assert_eq!(fs::read(dst.path().join("notes.txt")).unwrap(), b"mine");
    let kept = events.report("notes.txt").stored_as.unwrap();
    assert_eq!(kept, "notes (1).txt");
    assert_eq!(
        fs::read(dst.path().join(&kept)).unwrap(),
        b"from the server"
    );
    assert_eq!(fs::read(dst.path().join("big.bin")).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_byte_corrupted_on_the_way_back_is_caught_and_sent_again() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("payload.bin");
    let data = write_random(&file, 3 * MIB as usize, 5);
    let server = Serving::start(&[&file]).await;
    // Flips one bit of the server's stream, inside the first body.
    let proxy = Proxy::start(
        server.addr,
        ProxyOptions {
            back_flips: vec![MIB],
            ..Default::default()
        },
    )
    .await;
    let (result, events) = get(proxy.addr, dst.path()).await;
    let summary = result.unwrap();
    assert_eq!(fs::read(dst.path().join("payload.bin")).unwrap(), data);
    assert_eq!((summary.stored, summary.failed), (1, 0));
    server.events.wait_for_endings(1).await;
    for side in [&events, &server.events] {
        let finals = side.finals();
        assert_eq!(finals.len(), 1, "{finals:?}");
        assert_eq!(finals[0].attempts, 2);
        let why = finals[0].retried_after.as_deref().unwrap_or_default();
        assert!(why.contains("corrupted in transit"), "{why}");
    }
    let (sent, _) = server.events.endings()[0];
    assert_eq!(sent.bytes, 2 * data.len() as u64, "sent twice");
    assert_same_tree(src.path(), dst.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_getter_resumes_and_the_server_sends_only_the_rest() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("video.bin");
    let data = write_random(&file, 40 * MIB as usize, 6);
    let server = Serving::start(&[&file]).await;
    let proxy = Proxy::start(
        server.addr,
        ProxyOptions {
            back_rate: Some(16 * MIB),
            ..Default::default()
        },
    )
    .await;
    let getter = XferProcess::spawn(&[
        "get",
        "--quiet",
        &proxy.addr.to_string(),
        "--dir",
        dst.path().to_str().unwrap(),
    ]);
    let dir = dst.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        wait_until("24 MiB to arrive", || {
            partial_len(&dir, "video.bin").unwrap_or(0) >= 24 * MIB
        });
        getter.signal(libc::SIGKILL);
        getter.wait(Duration::from_secs(5));
    })
    .await
    .unwrap();
    assert!(visible(dst.path()).is_empty(), "{:?}", visible(dst.path()));
    server.events.wait_for_endings(1).await;
    assert!(
        server.events.endings()[0].1.is_some(),
        "the first session broke"
    );

    let (result, events) = get(server.addr, dst.path()).await;
    let summary = result.unwrap();
    let resumed = events.report("video.bin").resumed_from;
    assert!(
        resumed >= 4 * MIB,
        "resumed from {resumed}: a killed getter keeps what it had made durable"
    );
    assert_eq!(summary.bytes, data.len() as u64 - resumed);
    server.events.wait_for_endings(2).await;
    let (second, error) = server.events.endings()[1].clone();
    assert_eq!(error, None);
    assert_eq!(
        second.bytes,
        data.len() as u64 - resumed,
        "the server sent only the rest"
    );
    assert_eq!(fs::read(dst.path().join("video.bin")).unwrap(), data);
    assert_eq!(
        tree_listing(dst.path()).len(),
        1,
        "partial and sidecar gone"
    );
}

#[test]
fn a_killed_server_fails_the_getter_fast_and_a_new_server_resumes_it() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("disk.img");
    let data = write_random(&file, 48 * MIB as usize, 7);
    let path = file.to_str().unwrap();
    let dir = dst.path().to_str().unwrap();
    let (server, addr) = XferProcess::serve(&["--quiet", "--no-cache", path]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let options = ProxyOptions {
        back_rate: Some(16 * MIB),
        ..Default::default()
    };
    let proxy = runtime.block_on(Proxy::start(addr, options));
    let getter = XferProcess::spawn(&["get", &proxy.addr.to_string(), "--dir", dir]);
    wait_until("24 MiB to arrive", || {
        partial_len(dst.path(), "disk.img").unwrap_or(0) >= 24 * MIB
    });
    server.signal(libc::SIGKILL);
    drop(server);
    let (status, err) = getter.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(3), "{err}");
    let errors = error_lines(&err);
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains(&proxy.addr.to_string()), "{err}");
    assert!(visible(dst.path()).is_empty());
    let kept = partial_len(dst.path(), "disk.img").unwrap();
    assert!(
        partial_settled(dst.path(), "disk.img"),
        "the getter ended cleanly"
    );

    let mut server = XferProcess::spawn(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--json",
        "--once",
        "--no-cache",
        path,
    ]);
    let listening: serde_json::Value = serde_json::from_str(&server.next_line().unwrap()).unwrap();
    assert_eq!(listening["event"], "listening");
    let addr = listening["addr"].as_str().unwrap().to_owned();
    let mut getter = XferProcess::spawn(&["get", "--json", &addr, "--dir", dir]);
    let got = json_until(&mut getter, "session");
    assert!(getter.wait(Duration::from_secs(20)).0.success());
    let received = got.iter().find(|e| e["event"] == "received").unwrap();
    assert_eq!(received["resumed_from"].as_u64().unwrap(), kept);
    let session = got.last().unwrap();
    assert_eq!(session["event"], "session");
    assert_eq!(session["ok"], true);
    assert_eq!(session["bytes"].as_u64().unwrap(), data.len() as u64 - kept);
    let served = json_until(&mut server, "summary");
    let summary = served.last().unwrap();
    assert_eq!(summary["verified"], true);
    assert_eq!(summary["bytes"].as_u64().unwrap(), data.len() as u64 - kept);
    assert!(server.wait(Duration::from_secs(10)).0.success());
    assert_eq!(fs::read(dst.path().join("disk.img")).unwrap(), data);
}

#[test]
fn serve_once_exits_0_after_a_complete_get_and_1_after_an_incomplete_one() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let small = src.path().join("small.txt");
    fs::write(&small, b"small").unwrap();
    let big = src.path().join("big.bin");
    write_random(&big, 2 * MIB as usize, 8);
    let dir = dst.path().to_str().unwrap();
    let paths = [small.to_str().unwrap(), big.to_str().unwrap()];

    // A sender that came to the wrong place is not "the first getter".
    let (server, addr) = XferProcess::serve(&["--once", "--quiet", paths[0], paths[1]]);
    let addr = addr.to_string();
    let (status, _) =
        XferProcess::spawn(&["send", "--no-cache", paths[0], &addr]).wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(i32::from(EXIT_PROTOCOL)));
    let (status, err) =
        XferProcess::spawn(&["get", &addr, "--dir", dir, "--quiet"]).wait(Duration::from_secs(20));
    assert!(status.success(), "{err}");
    let (status, err) = server.wait(Duration::from_secs(10));
    assert!(status.success(), "{err}");
    // The server turned the sender away in one line naming it.
    let errors = error_lines(&err);
    assert!(
        errors.len() == 1
            && errors[0].starts_with("error: 127.0.0.1:")
            && errors[0].contains("tried to send files, but this is 'xfer serve'"),
        "{err}"
    );

    // The getter refuses the big file: both sides fail, with exit 1.
    let again = tempfile::tempdir().unwrap();
    let (server, addr) = XferProcess::serve(&["--once", "--quiet", paths[0], paths[1]]);
    let (status, err) = XferProcess::spawn(&[
        "get",
        &addr.to_string(),
        "--dir",
        again.path().to_str().unwrap(),
        "--max-size",
        "1M",
    ])
    .wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{err}");
    let errors = error_lines(&err);
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains("1 of 2 files were not stored"), "{err}");
    assert_eq!(visible(again.path()), ["small.txt"]);
    let (status, err) = server.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "{err}");
    let errors = error_lines(&err);
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        errors[0].contains("getter's session did not store every file"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coded_server_serves_the_right_code_and_cools_down_a_guesser() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("secret-plans.txt");
    fs::write(&file, b"the plans").unwrap();
    let code = xfer::code::Code::generate();
    let options = ServeOptions {
        code: Some(code.clone()),
        ..Default::default()
    };
    let server = Serving::start_with(&[&file], options).await;
    let with = |code: Option<xfer::code::Code>| GetOptions {
        code,
        ..Default::default()
    };

    let (result, _) = get_with(server.addr, dst.path(), with(Some(code.clone()))).await;
    assert_eq!(result.unwrap().stored, 1);
    assert_same_tree(src.path(), dst.path());

    let (result, _) = get_with(server.addr, dst.path(), with(None)).await;
    let err = result.unwrap_err();
    assert_eq!(exit_code_of(&err), EXIT_AUTH);
    assert!(
        format!("{err:#}").contains("add --code to this get"),
        "{err:#}"
    );

    // Wrong codes are counted by the server's guard, as recv's are.
    let other = tempfile::tempdir().unwrap();
    for _ in 0..xfer::receiver::guard::PEER_FAILURES {
        let (result, _) = get_with(
            server.addr,
            other.path(),
            with(Some(xfer::code::Code::generate())),
        )
        .await;
        let err = result.unwrap_err();
        assert_eq!(exit_code_of(&err), EXIT_AUTH, "{err:#}");
        assert!(
            format!("{err:#}").contains("the code did not match"),
            "{err:#}"
        );
    }
    // Now even the right code from this address is refused for a while.
    let (result, _) = get_with(server.addr, other.path(), with(Some(code))).await;
    let err = format!("{:#}", result.unwrap_err());
    assert!(err.contains("wrong codes"), "{err}");
    server
        .events
        .wait_for_session_error("too many wrong codes from 127.0.0.1")
        .await;
    assert!(tree_listing(other.path()).is_empty());
}

#[test]
fn serve_and_get_take_the_code_from_the_environment() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("a.txt");
    fs::write(&file, b"coded").unwrap();
    let code = xfer::code::Code::generate().to_string();
    let mut command = xfer_command();
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--json",
            "--once",
            "--code",
        ])
        .arg(&file)
        .env("XFER_CODE", &code);
    let mut server = XferProcess::start(command, std::process::Stdio::null());
    let listening: serde_json::Value = serde_json::from_str(&server.next_line().unwrap()).unwrap();
    let addr = listening["addr"].as_str().unwrap().to_owned();
    let announced: serde_json::Value = serde_json::from_str(&server.next_line().unwrap()).unwrap();
    assert_eq!(announced["event"], "code");
    assert_eq!(announced["generated"], false);
    assert_eq!(announced["command"], format!("xfer get --code {addr}"));

    let mut command = xfer_command();
    command
        .args(["get", "--code", &addr, "--dir"])
        .arg(dst.path())
        .env("XFER_CODE", &code);
    let (status, err) =
        XferProcess::start(command, std::process::Stdio::null()).wait(Duration::from_secs(20));
    assert!(status.success(), "{err}");
    assert!(server.wait(Duration::from_secs(10)).0.success());
    assert_eq!(fs::read(dst.path().join("a.txt")).unwrap(), b"coded");
}

#[test]
fn send_to_a_server_and_get_from_a_receiver_each_say_what_to_run_instead() {
    let (src, dst, inbox) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let file = src.path().join("f.txt");
    fs::write(&file, b"f").unwrap();
    let (_server, addr) = XferProcess::serve(&["--quiet", file.to_str().unwrap()]);
    let (status, err) = XferProcess::spawn(&[
        "send",
        "--no-cache",
        file.to_str().unwrap(),
        &addr.to_string(),
    ])
    .wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(i32::from(EXIT_PROTOCOL)), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(&format!("'xfer get {addr}'")), "{err}");

    let (_receiver, addr) =
        XferProcess::recv(&["--quiet", "--dir", inbox.path().to_str().unwrap()]);
    let (status, err) = XferProcess::spawn(&[
        "get",
        &addr.to_string(),
        "--dir",
        dst.path().to_str().unwrap(),
    ])
    .wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(i32::from(EXIT_PROTOCOL)), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("'xfer send PATH..."), "{err}");
    assert!(tree_listing(dst.path()).is_empty());
    assert!(tree_listing(inbox.path()).is_empty());
}

type RawReader = FrameReader<tokio::net::tcp::OwnedReadHalf>;

/// The offer a server opens with.
async fn first_offer(reader: &mut RawReader) -> Offer {
    match within(reader.read_message()).await.unwrap() {
        Some(Message::Offer(offer)) => offer,
        other => panic!("expected the server's offer, got {other:?}"),
    }
}

/// Reads until the server gives up on this connection; says why.
async fn ends_badly(reader: &mut RawReader) -> String {
    loop {
        match within(reader.read_message()).await {
            Ok(Some(Message::Abort { reason })) => return reason,
            Ok(Some(Message::FileBegin { .. })) => panic!("the server sent a body for a bad plan"),
            Ok(Some(_)) => continue,
            Ok(None) => return "closed".into(),
            Err(e) => return e.to_string(),
        }
    }
}

/// A raw peer whose hello announces `caps`.
async fn raw_with_caps(addr: std::net::SocketAddr, caps: u32) -> RawPeer {
    let stream = within(tokio::net::TcpStream::connect(addr)).await.unwrap();
    let (r, w) = stream.into_split();
    let mut reader = FrameReader::new(r, "server".into(), TIMEOUT);
    let mut writer = FrameWriter::new(w, "server".into(), TIMEOUT);
    within(handshake_with(&mut reader, &mut writer, caps))
        .await
        .unwrap();
    (reader, writer)
}

fn file_entry(path: &str, size: u64) -> Entry {
    Entry {
        path: path.into(),
        kind: EntryKind::File,
        size,
        mode: 0o644,
        mtime_secs: 0,
        mtime_nanos: 0,
        sha256: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn peers_of_the_previous_release_cannot_misuse_a_server_or_a_getter() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("f.txt");
    fs::write(&file, b"served").unwrap();
    let before = tree_listing(src.path());
    let server = Serving::start(&[&file]).await;

    // A sender that knows no role bits offers a file and its body at once:
    // the server reads none of it and says what to run.
    let (mut reader, mut writer) = raw_with_caps(server.addr, 0).await;
    let offer = Offer {
        first_id: 0,
        entries: vec![file_entry("planted.txt", 5)],
    };
    writer.send(&Message::Offer(offer)).await.unwrap();
    writer
        .send(&Message::FileBegin { id: 0, offset: 0 })
        .await
        .unwrap();
    writer.send_raw(b"owned").await.unwrap();
    let _ = writer.flush().await;
    match within(reader.read_message()).await {
        Ok(Some(Message::Abort { reason })) => {
            assert!(reason.contains("'xfer get ADDR'"), "{reason}")
        }
        other => panic!("expected an Abort, got {other:?}"),
    }
    assert!(matches!(within(reader.read_message()).await, Ok(None)));

    // A coded one of that release is closed on before any code is compared,
    // so it costs no guess; the listener serves on.
    let coded = Serving::start_with(
        &[&file],
        ServeOptions {
            code: Some(xfer::code::Code::generate()),
            ..Default::default()
        },
    )
    .await;
    for _ in 0..xfer::receiver::guard::PEER_FAILURES + 1 {
        let (reader, _writer) = raw_with_caps(coded.addr, CAP_CODE).await;
        let (mut raw, buffered) = reader.into_parts();
        let mut rest = buffered.to_vec();
        within(tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut rest))
            .await
            .unwrap();
        assert!(rest.is_empty(), "nothing after the hello: {rest:?}");
    }
    coded
        .events
        .wait_for_session_error("tried to send files")
        .await;
    assert!(!coded
        .events
        .session_errors()
        .iter()
        .any(|e| e.contains("wrong codes")));

    // A receiver of that release: the getter says hello, sees no server,
    // and sends nothing more.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let old_recv = listener.local_addr().unwrap();
    let heard = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let hello = xfer::protocol::hello_bytes(0);
        tokio::io::AsyncWriteExt::write_all(&mut stream, &hello)
            .await
            .unwrap();
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut got)
            .await
            .unwrap();
        got
    });
    let (result, _) = get(old_recv, dst.path()).await;
    let err = result.unwrap_err();
    assert_eq!(exit_code_of(&err), EXIT_PROTOCOL, "{err:#}");
    let got = within(heard).await.unwrap();
    assert_eq!(got.len(), HELLO_LEN, "only a hello: {got:?}");
    assert_eq!(got[..8], MAGIC);
    assert_eq!(
        u32::from_be_bytes([got[12], got[13], got[14], got[15]]),
        CAP_FETCHES | CAP_TOTALS
    );
    assert!(tree_listing(dst.path()).is_empty());
    assert_eq!(tree_listing(src.path()), before, "the server wrote nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_getter_can_neither_write_nor_read_outside_the_served_set() {
    let root = tempfile::tempdir().unwrap();
    let served = root.path().join("served");
    fs::create_dir_all(served.join("sub")).unwrap();
    fs::write(served.join("a.txt"), b"served-a").unwrap();
    fs::write(served.join("sub/b.txt"), b"served-b").unwrap();
    let secret = b"TOP-SECRET-0123456789-never-on-the-wire";
    fs::write(root.path().join("secret.txt"), secret).unwrap();
    std::os::unix::fs::symlink("../secret.txt", served.join("link-to-secret")).unwrap();
    std::os::unix::fs::symlink(root.path().join("secret.txt"), served.join("sub/abs-link"))
        .unwrap();
    let before = tree_listing(root.path());
    let server = Serving::start(&[&served]).await;
    let tap = CaptureProxy::start(server.addr).await;

    // What a getter is offered: the walk of the served tree, links left out.
    let offered =
        |offer: &Offer| -> Vec<String> { offer.entries.iter().map(|e| e.path.clone()).collect() };
    // 1. Offering files to the server, with a body, and asking it to store.
    let (mut reader, mut writer) = raw_with_caps(tap.addr, CAP_FETCHES).await;
    let offer = first_offer(&mut reader).await;
    assert_eq!(
        offered(&offer),
        ["served", "served/a.txt", "served/sub", "served/sub/b.txt"]
    );
    let planted = Offer {
        first_id: 0,
        entries: vec![
            file_entry("../secret.txt", 5),
            file_entry("served/planted.txt", 5),
        ],
    };
    writer.send(&Message::Offer(planted)).await.unwrap();
    writer
        .send(&Message::FileBegin { id: 0, offset: 0 })
        .await
        .unwrap();
    writer.send_raw(b"owned").await.unwrap();
    writer.send(&Message::Done).await.unwrap();
    let _ = writer.flush().await;
    ends_badly(&mut reader).await;
    server
        .events
        .wait_for_session_error("unexpected Offer from the receiver")
        .await;

    // 2. Plans that do not fit the offer: a resume offset past the end, the
    // wrong first id, more actions than entries, a body for a directory.
    let send_all = |n: usize| {
        (0..n)
            .map(|_| Action::Send { offset: 0 })
            .collect::<Vec<_>>()
    };
    let bad_plans = [
        Plan {
            first_id: 0,
            actions: vec![
                Action::DirReady,
                Action::Send { offset: 1 << 40 },
                Action::DirReady,
                Action::Send { offset: 0 },
            ],
        },
        Plan {
            first_id: 9,
            actions: vec![Action::DirReady; 4],
        },
        Plan {
            first_id: 0,
            actions: send_all(64),
        },
        Plan {
            first_id: 0,
            actions: send_all(4),
        },
    ];
    for plan in bad_plans {
        let (mut reader, mut writer) = raw_with_caps(tap.addr, CAP_FETCHES).await;
        first_offer(&mut reader).await;
        writer.send(&Message::Plan(plan.clone())).await.unwrap();
        let _ = writer.flush().await;
        ends_badly(&mut reader).await;
    }
    server.events.wait_for_endings(5).await;
    let errors = server.events.session_errors();
    let count = |needle: &str| errors.iter().filter(|e| e.contains(needle)).count();
    assert_eq!(count("does not fit"), 2, "{errors:?}");
    assert_eq!(count("the plan does not match the offer"), 2, "{errors:?}");

    // 3. A plan that fits, then verdicts naming other paths, then Bye: the
    // bodies that cross are the served ones, and nothing else happens.
    let (mut reader, mut writer) = raw_with_caps(tap.addr, CAP_FETCHES).await;
    first_offer(&mut reader).await;
    let plan = Plan {
        first_id: 0,
        actions: vec![
            Action::DirReady,
            Action::Send { offset: 0 },
            Action::DirReady,
            Action::Send { offset: 0 },
        ],
    };
    writer.send(&Message::Plan(plan)).await.unwrap();
    let _ = writer.flush().await;
    let mut bodies = Vec::new();
    loop {
        match within(reader.read_message()).await.unwrap() {
            Some(Message::FileBegin { id, offset: 0 }) => {
                assert!(id == 1 || id == 3, "a body for entry {id}");
                let size = 8;
                let mut body = Vec::new();
                while body.len() < size {
                    body.extend_from_slice(
                        &within(reader.read_body(size - body.len())).await.unwrap(),
                    );
                }
                bodies.push(body);
            }
            Some(Message::FileEnd { .. }) => {
                if bodies.len() == 2 {
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(bodies, [b"served-a".to_vec(), b"served-b".to_vec()]);
    for id in [1, 3] {
        let verdict = xfer::protocol::Verdict {
            id,
            outcome: xfer::protocol::Outcome::Stored {
                path: "../../etc/passwd".into(),
                sha256: [0; 32],
            },
        };
        writer.send(&Message::Verdict(verdict)).await.unwrap();
    }
    writer
        .send(&Message::Bye {
            files: 2,
            bytes: 16,
        })
        .await
        .unwrap();
    let _ = writer.flush().await;
    drop((reader, writer));
    server.events.wait_for_endings(6).await;

    let wire = tap.captured.lock().unwrap().to_sender.clone();
    assert!(
        wire.windows(8).any(|w| w == b"served-a"),
        "the tap saw the served bodies"
    );
    assert!(
        !wire.windows(10).any(|w| w == &secret[..10]),
        "the secret beside the served tree crossed the wire"
    );
    assert_eq!(
        tree_listing(root.path()),
        before,
        "the server wrote or deleted something"
    );

    // And it still serves a real getter.
    let dst = tempfile::tempdir().unwrap();
    get(server.addr, dst.path()).await.0.unwrap();
    assert_eq!(
        visible(dst.path()),
        ["served", "served/a.txt", "served/sub", "served/sub/b.txt"]
    );
}

#[test]
fn ctrl_c_stops_a_getter_or_a_server_promptly_and_the_partial_resumes() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("big.bin");
    let data = write_random(&file, 40 * MIB as usize, 9);
    let path = file.to_str().unwrap();
    let dir = dst.path().to_str().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (server, addr) = XferProcess::serve(&["--quiet", "--no-cache", path]);
    // Slow enough that the file cannot finish within the server's grace.
    let options = ProxyOptions {
        back_rate: Some(8 * MIB),
        ..Default::default()
    };
    let proxy = runtime.block_on(Proxy::start(addr, options));
    let slow = proxy.addr.to_string();

    // Getter interrupted: exits 130 and keeps the partial.
    let getter = XferProcess::spawn(&["get", "--quiet", &slow, "--dir", dir]);
    wait_until("5 MiB to arrive", || {
        partial_len(dst.path(), "big.bin").unwrap_or(0) >= 5 * MIB
    });
    getter.signal(libc::SIGINT);
    let (status, err) = getter.wait(Duration::from_secs(5));
    assert_eq!(status.code(), Some(130), "{err}");
    assert_eq!(
        err.lines().last(),
        Some("error: interrupted; run the same command again to resume"),
        "{err}"
    );
    assert_eq!(error_lines(&err).len(), 1, "{err}");
    assert!(partial_settled(dst.path(), "big.bin"));

    // Server interrupted mid-file: exits 0 within its grace; the getter
    // fails as for a peer that went away, and keeps more.
    let getter = XferProcess::spawn(&["get", "--quiet", &slow, "--dir", dir]);
    let before = partial_len(dst.path(), "big.bin").unwrap();
    wait_until("more bytes to arrive", || {
        partial_len(dst.path(), "big.bin").unwrap_or(0) >= before + 5 * MIB
    });
    server.signal(libc::SIGINT);
    let (status, err) = server.wait(Duration::from_secs(6));
    assert_eq!(status.code(), Some(0), "{err}");
    let (status, err) = getter.wait(Duration::from_secs(5));
    assert_eq!(status.code(), Some(3), "{err}");
    assert!(visible(dst.path()).is_empty());

    // And it resumes from what the getter kept.
    let (server, addr) = XferProcess::serve(&["--once", "--quiet", "--no-cache", path]);
    let mut getter = XferProcess::spawn(&["get", "--json", &addr.to_string(), "--dir", dir]);
    let got = json_until(&mut getter, "session");
    assert!(getter.wait(Duration::from_secs(20)).0.success());
    let session = got.last().unwrap();
    assert!(session["bytes"].as_u64().unwrap() < data.len() as u64 - 10 * MIB);
    assert!(server.wait(Duration::from_secs(10)).0.success());
    assert_eq!(fs::read(dst.path().join("big.bin")).unwrap(), data);
}

#[test]
fn a_file_swapped_for_a_symlink_mid_session_is_refused_not_followed() {
    let (src, dst, outside) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let tree = src.path().join("tree");
    write_random(&tree.join("a.bin"), 3 * MIB as usize, 1);
    write_random(&tree.join("b.bin"), 3 * MIB as usize / 2, 2);
    let secret = outside.path().join("secret.txt");
    fs::write(&secret, "TOP SECRET ".repeat(200_000)).unwrap();
    // Slow enough that b.bin is still to come when it is swapped.
    let (server, addr) = XferProcess::serve(&[
        "--once",
        "--quiet",
        "--limit-rate",
        "1M",
        tree.to_str().unwrap(),
    ]);
    let getter = XferProcess::spawn(&[
        "get",
        &addr.to_string(),
        "--dir",
        dst.path().to_str().unwrap(),
        "--quiet",
    ]);
    wait_until("a.bin to be arriving", || {
        partial_len(&dst.path().join("tree"), "a.bin").is_some_and(|n| n > 0)
    });
    fs::remove_file(tree.join("b.bin")).unwrap();
    std::os::unix::fs::symlink(&secret, tree.join("b.bin")).unwrap();
    let (status, err) = getter.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("tree/b.bin"), "{err}");
    let (_, served) = server.wait(Duration::from_secs(10));
    assert!(
        served.contains("tree/b.bin: cannot read: it was replaced since it was listed"),
        "{served}"
    );
    assert_eq!(visible(&dst.path().join("tree")), ["a.bin"]);
    for (name, _) in tree_listing(dst.path()) {
        let bytes = fs::read(dst.path().join(&name)).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains("TOP SECRET"),
            "{name} holds the file outside the served tree"
        );
    }
}

#[test]
fn a_connection_that_never_says_hello_does_not_end_serve_once_or_recv_once() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("a.txt");
    fs::write(&file, b"for the real getter").unwrap();
    let (server, addr) = XferProcess::serve(&["--once", "--quiet", file.to_str().unwrap()]);
    // A port scan: connect, close.
    drop(std::net::TcpStream::connect(addr).unwrap());
    std::thread::sleep(Duration::from_millis(300));
    let (status, err) = XferProcess::spawn(&[
        "get",
        &addr.to_string(),
        "--dir",
        dst.path().to_str().unwrap(),
        "--quiet",
    ])
    .wait(Duration::from_secs(20));
    assert!(status.success(), "{err}");
    let (status, err) = server.wait(Duration::from_secs(10));
    assert!(status.success(), "{err}");

    let (recv, addr) =
        XferProcess::recv(&["--once", "--quiet", "--dir", dst.path().to_str().unwrap()]);
    drop(std::net::TcpStream::connect(addr).unwrap());
    std::thread::sleep(Duration::from_millis(300));
    let sent = xfer_command()
        .args(["send", "-q", file.to_str().unwrap(), &addr.to_string()])
        .output()
        .unwrap();
    assert!(sent.status.success());
    let (status, err) = recv.wait(Duration::from_secs(10));
    assert!(status.success(), "{err}");
    assert_eq!(
        fs::read(dst.path().join("a (1).txt")).unwrap_or_default(),
        b""
    );
}
