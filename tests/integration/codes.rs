//! Coded sessions (docs/PROTOCOL.md §9) end to end: round trips and resume
//! with a code, wrong and missing codes, what an eavesdropper sees, records
//! tampered with on the way, the guessing bound, and where the code may and
//! may not show up on the machine.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use xfer::code::Code;
use xfer::error::exit_code_of;
use xfer::events::Outcome;
use xfer::protocol::secure::record::MAX_SEALED_LEN;
use xfer::receiver::guard::PEER_FAILURES;

use crate::harness::*;

const MIB: usize = 1024 * 1024;

/// What both sides say when the codes differ.
const MISMATCH: &str = "the code did not match";

/// What a receiver says about a record changed on the way.
const TAMPERED: &str = "a sealed record failed authentication";

/// Runs blocking work (a process wait, a poll) off the runtime's threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    within(tokio::task::spawn_blocking(f)).await.unwrap()
}

/// A coded receiver's options.
fn coded(code: &Code) -> RecvOptions {
    RecvOptions {
        code: Some(code.clone()),
        ..Default::default()
    }
}

/// A fresh code that differs from `code`.
fn another(code: &Code) -> Code {
    loop {
        let other = Code::generate();
        if other.to_string() != code.to_string() {
            return other;
        }
    }
}

/// Names in `dir` a user would see (hidden partials excluded).
fn visible(dir: &Path) -> Vec<String> {
    tree_listing(dir)
        .into_keys()
        .filter(|k| !k.split('/').any(|c| c.starts_with('.')))
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// `xfer ARGS` with no code in its environment (unless `code` is given as
/// XFER_CODE).
fn xfer(args: &[&str], code: Option<&Code>) -> Command {
    let mut command = xfer_command();
    command.args(args).env_remove("XFER_CODE");
    if let Some(code) = code {
        command.env("XFER_CODE", code.to_string());
    }
    command
}

/// `xfer recv --once --code` into `dir` on a free loopback port, with
/// `code` as XFER_CODE.
fn coded_recv_once(dir: &str, code: &Code) -> Command {
    let args = [
        "recv",
        "--listen",
        "127.0.0.1:0",
        "--once",
        "--dir",
        dir,
        "--code",
    ];
    xfer(&args, Some(code))
}

/// `xfer send --quiet --no-cache FILE ADDR` with no code anywhere.
fn plain_send(file: &Path, addr: &str) -> Command {
    xfer(
        &[
            "send",
            "--quiet",
            "--no-cache",
            file.to_str().unwrap(),
            addr,
        ],
        None,
    )
}

/// Runs `command` to its end (bounded); returns the exit code and stderr.
async fn finish(command: Command) -> (i32, String) {
    blocking(move || {
        let process = XferProcess::start(command, Stdio::null());
        let (status, err) = process.wait(TIMEOUT);
        (status.code().unwrap_or(-1), err)
    })
    .await
}

/// The lines of `stderr` that start with `error:`.
fn error_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.starts_with("error:")).collect()
}

/// The command line of process `pid`, NULs and all.
fn cmdline(pid: u32) -> Vec<u8> {
    fs::read(format!("/proc/{pid}/cmdline")).unwrap()
}

/// Whether `code` shows in `pid`'s command line, in full or its words.
fn in_cmdline(pid: u32, code: &Code) -> bool {
    let line = cmdline(pid);
    assert!(!line.is_empty(), "process {pid} has already exited");
    let text = code.to_string();
    contains(&line, text.as_bytes()) || contains(&line, &text.as_bytes()[5..])
}

/// Fails if `code` shows in `pid`'s command line.
fn assert_not_in_cmdline(pid: u32, code: &Code, who: &str) {
    assert!(
        !in_cmdline(pid, code),
        "{who}'s command line shows the code: {:?}",
        String::from_utf8_lossy(&cmdline(pid))
    );
}

#[tokio::test]
async fn a_coded_round_trip_stores_a_file_and_a_tree_byte_for_byte() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let code = Code::generate();
    let rx = Receiver::start_with(dst.path(), coded(&code)).await;

    let file = src.path().join("report.pdf");
    let data = write_random(&file, 300_001, 1);
    let (result, sent) = send_coded(&[&file], rx.addr, &code).await;
    assert_eq!(result.unwrap().stored, 1);
    assert_eq!(fs::read(dst.path().join("report.pdf")).unwrap(), data);

    let tree = src.path().join("tree");
    write_random(&tree.join("naïve café.txt"), 5000, 2);
    write_random(&tree.join("日本語/ファイル.bin"), 1_500_000, 3);
    write_random(&tree.join("Ωmega/ζ/deep"), 7, 4);
    fs::write(tree.join("Ωmega/zero"), b"").unwrap();
    fs::create_dir_all(tree.join("empty dir")).unwrap();
    let (result, sent_tree) = send_coded(&[&tree], rx.addr, &code).await;
    assert_eq!(result.unwrap().stored, 4);
    assert_same_tree(src.path(), dst.path());

    rx.events.wait_for_endings(2).await;
    assert_eq!(rx.events.session_errors(), Vec::<String>::new());
    let sent: Vec<_> = sent.done().into_iter().chain(sent_tree.done()).collect();
    let received = rx.events.done();
    assert_eq!((sent.len(), received.len()), (5, 5));
    for report in sent.iter().chain(&received) {
        assert_eq!(report.outcome, Outcome::Stored, "{}", report.path);
    }
    assert!(received
        .iter()
        .any(|r| r.path == "tree/日本語/ファイル.bin"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coded_transfer_cut_midway_resumes_from_what_was_kept() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("disk.img");
    let data = write_random(&file, 16 * MIB, 5);
    let code = Code::generate();
    let rx = Receiver::start_with(dst.path(), coded(&code)).await;
    let proxy = Proxy::start(rx.addr, ProxyOptions::throttled(8 * MIB as u64)).await;

    let cancel = tokio_util::sync::CancellationToken::new();
    let config = coded_config(&[&file], proxy.addr, &code);
    let sending = tokio::spawn({
        let cancel = cancel.clone();
        async move { xfer::sender::send(&config, std::sync::Arc::new(Events::default()), cancel).await }
    });
    let dir = dst.path().to_path_buf();
    within(async {
        while partial_len(&dir, "disk.img").unwrap_or(0) < 2 * MIB as u64 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    cancel.cancel();
    let err = within(sending).await.unwrap().unwrap_err();
    assert_eq!(exit_code_of(&err), 130, "{err:#}");
    drop(proxy);
    rx.events.wait_for_endings(1).await;
    let dir = dst.path().to_path_buf();
    blocking(move || {
        wait_until("the partial to settle", || {
            partial_settled(&dir, "disk.img")
        })
    })
    .await;
    assert!(visible(dst.path()).is_empty(), "{:?}", visible(dst.path()));
    let kept = partial_len(dst.path(), "disk.img").unwrap();
    assert!(kept >= 2 * MIB as u64, "kept {kept}");

    let (result, sent) = send_coded(&[&file], rx.addr, &code).await;
    let summary = result.unwrap();
    assert_eq!(
        summary.bytes,
        data.len() as u64 - kept,
        "only the rest was sent"
    );
    assert_eq!(fs::read(dst.path().join("disk.img")).unwrap(), data);
    rx.events.wait_for_endings(2).await;
    assert_eq!(sent.report("disk.img").resumed_from, kept);
    assert_eq!(rx.events.report("disk.img").resumed_from, kept);
    assert_eq!(
        tree_listing(dst.path()).len(),
        1,
        "partial and sidecar are gone"
    );
}

/// A coded send of a file of `mib` MiB, slowed to `rate` MiB/s, during
/// which `change` is done to the source once 1 MiB has arrived; returns
/// the sender's error and the receiving directory.
async fn coded_send_while(
    mib: usize,
    rate: u64,
    change: fn(&Path),
) -> (anyhow::Error, tempfile::TempDir) {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("log.bin");
    write_random(&file, mib * MIB, 6);
    let code = Code::generate();
    let rx = Receiver::start_with(dst.path(), coded(&code)).await;
    let proxy = Proxy::start(rx.addr, ProxyOptions::throttled(rate * MIB as u64)).await;
    let (dir, source) = (dst.path().to_path_buf(), file.clone());
    let changing = tokio::task::spawn_blocking(move || {
        wait_until("the body to start", || {
            partial_len(&dir, "log.bin").unwrap_or(0) > MIB as u64
        });
        change(&source);
    });
    let (result, _) = send_coded(&[&file], proxy.addr, &code).await;
    within(changing).await.unwrap();
    rx.events.wait_for_endings(1).await;
    (result.unwrap_err(), dst)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_cut_short_while_sent_with_a_code_is_padded_and_never_stored() {
    // Large enough that the sender has not read it all (runs read ahead,
    // socket and proxy buffers) by the time it is cut: else the cut is
    // seen as a change, not as the end coming early.
    let (err, dst) = coded_send_while(64, 24, |source| {
        fs::File::options()
            .write(true)
            .open(source)
            .unwrap()
            .set_len(4 * MIB as u64)
            .unwrap();
    })
    .await;
    assert_eq!(exit_code_of(&err), xfer::error::EXIT_FAILED, "{err:#}");
    assert!(
        format!("{err:#}")
            .contains("log.bin: the sender could not read it: the file shrank while being sent"),
        "{err:#}"
    );
    assert!(visible(dst.path()).is_empty(), "{:?}", visible(dst.path()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_changed_while_sent_with_a_code_is_never_stored_as_verified() {
    let (err, dst) = coded_send_while(16, 8, |source| {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = fs::File::options().write(true).open(source).unwrap();
        f.seek(SeekFrom::Start(15 * MIB as u64)).unwrap();
        f.write_all(&[0xAA; 4096]).unwrap();
    })
    .await;
    assert_eq!(exit_code_of(&err), xfer::error::EXIT_FAILED, "{err:#}");
    assert!(
        format!("{err:#}")
            .contains("log.bin: the sender could not read it: the file changed while being sent"),
        "{err:#}"
    );
    assert!(visible(dst.path()).is_empty(), "{:?}", visible(dst.path()));
}

#[tokio::test]
async fn a_wrong_code_fails_both_sides_and_writes_nothing() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let small = src.path().join("notes.txt");
    fs::write(&small, b"meeting at noon").unwrap();
    let big = src.path().join("big.bin");
    write_random(&big, MIB, 6);
    let code = Code::generate();
    let rx = Receiver::start_with(dst.path(), coded(&code)).await;

    let (result, _) = send_coded(&[&small, &big], rx.addr, &another(&code)).await;
    let err = result.unwrap_err();
    assert!(format!("{err:#}").contains(MISMATCH), "{err:#}");
    assert_eq!(exit_code_of(&err), 5);
    rx.events.wait_for_session_error(MISMATCH).await;
    assert_eq!(
        tree_listing(dst.path()),
        Default::default(),
        "no file, no partial"
    );
}

/// Also the receiver's side: each sender it turns away (a wrong code, no
/// code) is one `error:` line naming that sender, and no session summary,
/// even without `--quiet`.
#[tokio::test(flavor = "multi_thread")]
async fn a_sender_process_with_a_wrong_code_exits_5_and_the_receiver_serves_on() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("plans.txt");
    fs::write(&file, b"the plans").unwrap();
    let code = Code::generate();
    let recv = coded_recv_once(dst.path().to_str().unwrap(), &code);
    let (mut receiver, addr) = blocking(move || {
        let mut receiver = XferProcess::start(recv, Stdio::null());
        let line = receiver.next_line().expect("no 'listening on' line");
        let addr = line.strip_prefix("listening on ").unwrap().to_owned();
        (receiver, addr)
    })
    .await;
    let send = |code: &Code| {
        xfer(
            &[
                "send",
                "--quiet",
                "--no-cache",
                "--code",
                file.to_str().unwrap(),
                &addr,
            ],
            Some(code),
        )
    };

    let (status, err) = finish(send(&another(&code))).await;
    assert_eq!(status, 5, "{err}");
    let errors = error_lines(&err);
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains(MISMATCH), "{err}");
    assert_eq!(tree_listing(dst.path()), Default::default());
    let (status, err) = finish(plain_send(&file, &addr)).await;
    assert_eq!(status, 5, "{err}");
    assert!(
        receiver.child.try_wait().unwrap().is_none(),
        "--once waits for a sender that gets in"
    );

    let (status, err) = finish(send(&code)).await;
    assert_eq!(status, 0, "{err}");
    let (status, err) = blocking(move || receiver.wait(TIMEOUT)).await;
    assert!(status.success(), "{err}");
    let errors = error_lines(&err);
    assert_eq!(errors.len(), 2, "one line per sender turned away: {err}");
    assert!(
        errors[0].starts_with("error: 127.0.0.1:") && errors[0].contains(MISMATCH),
        "{err}"
    );
    assert!(
        errors[1].starts_with("error: 127.0.0.1:")
            && errors[1].contains("sent no code, and this receiver requires one"),
        "{err}"
    );
    assert!(!err.contains("session ended early"), "{err}");
    assert!(
        err.contains("received 1 file"),
        "the sender that got in has its summary: {err}"
    );
    assert_eq!(
        fs::read(dst.path().join("plans.txt")).unwrap(),
        b"the plans"
    );
}

/// A peer that hangs up in the middle of the code handshake costs a wrong
/// code, and the receiver says so in one line with the peer's address (no
/// session summary), and it does not end `--once`: that peer never got in.
#[tokio::test(flavor = "multi_thread")]
async fn a_code_handshake_cut_short_is_logged_with_the_peer() {
    let dst = tempfile::tempdir().unwrap();
    let code = Code::generate();
    let recv = coded_recv_once(dst.path().to_str().unwrap(), &code);
    let (lines, local) = blocking(move || {
        use std::io::{BufRead, Read, Write};
        let mut receiver = XferProcess::start(recv, Stdio::null());
        let line = receiver.next_line().expect("no 'listening on' line");
        let addr = line.strip_prefix("listening on ").unwrap().to_owned();
        let stderr = std::io::BufReader::new(receiver.child.stderr.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut peer = std::net::TcpStream::connect(&addr).unwrap();
        peer.set_read_timeout(Some(TIMEOUT)).unwrap();
        let caps = xfer::protocol::CAP_CODE | xfer::protocol::CAP_TOTALS;
        peer.write_all(&xfer::protocol::hello_bytes(caps)).unwrap();
        let mut hello = vec![0; xfer::protocol::hello_bytes(0).len()];
        peer.read_exact(&mut hello).unwrap();
        let local = peer.local_addr().unwrap().to_string();
        drop(peer);
        let mut lines = Vec::new();
        while !lines.iter().any(|l: &String| l.contains("handshake")) {
            lines.push(rx.recv_timeout(TIMEOUT).expect("no line about the cut"));
        }
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            receiver.child.try_wait().unwrap().is_none(),
            "--once waits for a sender that gets in"
        );
        receiver.signal(libc::SIGTERM);
        let (status, _) = receiver.wait(TIMEOUT);
        assert!(status.success());
        lines.extend(rx.iter());
        (lines, local)
    })
    .await;
    let expected = format!(
        "error: {local}: the code handshake broke off, counted as a wrong code: \
         connection with {local} lost: "
    );
    let about: Vec<&String> = lines.iter().filter(|l| l.contains(&local)).collect();
    assert!(
        about.len() == 1 && about[0].starts_with(&expected),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plain_sender_to_a_coded_receiver_is_told_to_add_a_code() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("a.txt");
    fs::write(&file, b"a").unwrap();
    let rx = Receiver::start_with(dst.path(), coded(&Code::generate())).await;
    let addr = rx.addr.to_string();
    let (status, err) = finish(plain_send(&file, &addr)).await;
    assert_eq!(status, 5, "{err}");
    let errors = error_lines(&err);
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains("requires a code: add --code"), "{err}");
    rx.events
        .wait_for_session_error("sent no code, and this receiver requires one")
        .await;
    assert_eq!(tree_listing(dst.path()), Default::default());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coded_sender_to_a_plain_receiver_is_told_the_receiver_needs_a_code() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("a.txt");
    fs::write(&file, b"a").unwrap();
    let rx = Receiver::start(dst.path()).await;
    let addr = rx.addr.to_string();
    let (status, err) = finish(xfer(
        &[
            "send",
            "--quiet",
            "--no-cache",
            "--code",
            file.to_str().unwrap(),
            &addr,
        ],
        Some(&Code::generate()),
    ))
    .await;
    assert_eq!(status, 5, "{err}");
    let errors = error_lines(&err);
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        errors[0].contains("does not use a code") && errors[0].contains("'xfer recv --code'"),
        "{err}"
    );
    rx.events
        .wait_for_session_error("sends with a code, but this receiver has none")
        .await;
    assert_eq!(tree_listing(dst.path()), Default::default());
}

/// Sends two distinctive files through a [`CaptureProxy`], coded or not;
/// returns what crossed the wire, the names, and needles from the contents.
async fn eavesdrop(code: Option<Code>) -> (Captured, Vec<String>, Vec<Vec<u8>>) {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let names = vec![
        "ledger-of-the-quiet-heron.txt".to_owned(),
        "bigfile-xq7-unmistakable.bin".to_owned(),
    ];
    let text = "the heron stands in the reeds at dawn, counting fish. ".repeat(80);
    fs::write(src.path().join(&names[0]), &text).unwrap();
    let random = write_random(&src.path().join(&names[1]), MIB, 7);
    let options = RecvOptions {
        code: code.clone(),
        ..Default::default()
    };
    let rx = Receiver::start_with(dst.path(), options).await;
    let proxy = CaptureProxy::start(rx.addr).await;
    let paths = [src.path().join(&names[0]), src.path().join(&names[1])];
    let paths: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
    let (result, _) = match &code {
        Some(code) => send_coded(&paths, proxy.addr, code).await,
        None => send(&paths, proxy.addr).await,
    };
    assert_eq!(result.unwrap().stored, 2);
    rx.events.wait_for_endings(1).await;
    if code.is_some() {
        // Each direction closes with its end record (len 17, no payload),
        // the sender's after it has read `Bye` (PROTOCOL.md 9.4).
        let ends_with_end_record =
            |b: &[u8]| b.len() >= 21 && b[b.len() - 21..b.len() - 17] == 17u32.to_be_bytes();
        within(async {
            loop {
                let done = {
                    let c = proxy.captured.lock().unwrap();
                    ends_with_end_record(&c.to_receiver) && ends_with_end_record(&c.to_sender)
                };
                if done {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await;
    }
    let captured = std::mem::take(&mut *proxy.captured.lock().unwrap());
    let needles = vec![
        text.as_bytes()[1000..1064].to_vec(),
        random[700_001..700_065].to_vec(),
    ];
    (captured, names, needles)
}

#[tokio::test]
async fn a_coded_session_shows_no_name_and_no_content_on_the_wire() {
    let code = Code::generate();
    let (wire, names, needles) = eavesdrop(Some(code.clone())).await;
    assert!(wire.to_receiver.len() > MIB, "the proxy saw the session");
    for name in &names {
        for (way, bytes) in [
            ("to the receiver", &wire.to_receiver),
            ("to the sender", &wire.to_sender),
        ] {
            assert!(
                !contains(bytes, name.as_bytes()),
                "{name:?} crossed {way} in clear"
            );
        }
    }
    for needle in &needles {
        assert!(
            !contains(&wire.to_receiver, needle),
            "content crossed in clear"
        );
    }
    let secret = code.secret();
    assert!(!contains(&wire.to_receiver, &secret) && !contains(&wire.to_sender, &secret));
}

#[tokio::test]
async fn a_plain_session_shows_names_and_content_on_the_wire() {
    // The same search on a plain session finds everything, so the coded
    // test above can fail.
    let (wire, names, needles) = eavesdrop(None).await;
    for name in &names {
        assert!(contains(&wire.to_receiver, name.as_bytes()), "{name:?}");
        assert!(
            contains(&wire.to_sender, name.as_bytes()),
            "{name:?} in a verdict"
        );
    }
    for needle in &needles {
        assert!(contains(&wire.to_receiver, needle));
    }
}

/// The record the tamper tests attack: well inside the body of a 2 MiB file.
const N: usize = 5;

/// Sends a 2 MiB file through a [`RecordProxy`] applying `tamper`; returns
/// the sender's error, the receiver's session error, and the record lengths
/// the proxy saw. Leaves the receiving directory to `check`.
async fn tampered(tamper: Tamper, check: impl FnOnce(&Path)) -> (String, String, Vec<u32>) {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("payroll.xlsx");
    write_random(&file, 2 * MIB, 8);
    let code = Code::generate();
    let rx = Receiver::start_with(dst.path(), coded(&code)).await;
    let proxy = RecordProxy::start(rx.addr, tamper).await;
    let (result, _) = send_coded(&[&file], proxy.addr, &code).await;
    let err = result.expect_err("a tampered session succeeded");
    rx.events.wait_for_endings(1).await;
    let received = rx.events.session_errors().join("; ");
    check(dst.path());
    let lens = proxy.captured.lock().unwrap().record_lens.clone();
    (format!("{err:#}"), received, lens)
}

#[tokio::test]
async fn a_record_changed_dropped_repeated_or_reordered_fails_authentication() {
    for tamper in [
        Tamper::ToReceiver(Act::Flip(N)),
        Tamper::ToReceiver(Act::Drop(N)),
        Tamper::ToReceiver(Act::Duplicate(N)),
        Tamper::ToReceiver(Act::Swap(N)),
    ] {
        let (sent, received, lens) = tampered(tamper, |dir| {
            assert!(
                visible(dir).is_empty(),
                "{tamper:?} stored {:?}",
                visible(dir)
            );
        })
        .await;
        assert!(
            lens[N..=N + 1]
                .iter()
                .all(|&l| l as usize == MAX_SEALED_LEN),
            "{tamper:?} hit a body record: {lens:?}"
        );
        assert!(
            received.contains(TAMPERED),
            "{tamper:?}: receiver said {received:?}"
        );
        // The receiver says why in an Abort, which still authenticates.
        assert!(sent.contains(TAMPERED), "{tamper:?}: sender said {sent:?}");
    }
}

#[tokio::test]
async fn a_connection_cut_between_records_is_a_cut_not_an_end() {
    let (sent, received, lens) = tampered(Tamper::ToReceiver(Act::CutBefore(N)), |dir| {
        // A hidden partial may stay for a resume; nothing visible.
        assert!(visible(dir).is_empty(), "{:?}", visible(dir));
    })
    .await;
    assert!(
        lens.len() > N && lens[N - 1] as usize == MAX_SEALED_LEN,
        "{lens:?}"
    );
    assert!(
        received.contains("the connection was cut (no end-of-session record)"),
        "receiver said {received:?}"
    );
    // Only the sender-to-receiver direction was cut: the Abort still comes.
    assert!(
        sent.contains("aborted the session") && sent.contains("the connection was cut"),
        "sender said {sent:?}"
    );
}

#[tokio::test]
async fn a_reply_record_changed_or_cut_fails_the_sender_before_any_body() {
    // Record 0 from the receiver holds the first Plan: the sender must not
    // act on a forged or missing one.
    for (tamper, says) in [
        (Tamper::ToSender(Act::Flip(0)), TAMPERED),
        (
            Tamper::ToSender(Act::CutBefore(0)),
            "the connection was cut (no end-of-session record)",
        ),
    ] {
        let (sent, received, lens) = tampered(tamper, |dir| {
            assert_eq!(tree_listing(dir), Default::default(), "{tamper:?}");
        })
        .await;
        assert!(sent.contains(says), "{tamper:?}: sender said {sent:?}");
        assert!(
            !received.is_empty(),
            "{tamper:?}: the receiver saw no failure"
        );
        assert!(lens.len() < 4, "{tamper:?}: no body went out: {lens:?}");
    }
}

#[tokio::test]
async fn an_extra_caps_bit_in_either_hello_is_a_code_mismatch() {
    for tamper in [Tamper::SenderCaps(0x100), Tamper::ReceiverCaps(0x100)] {
        let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let file = src.path().join("x.txt");
        fs::write(&file, b"x").unwrap();
        let code = Code::generate();
        let rx = Receiver::start_with(dst.path(), coded(&code)).await;
        let proxy = RecordProxy::start(rx.addr, tamper).await;
        let (result, _) = send_coded(&[&file], proxy.addr, &code).await;
        let err = result.unwrap_err();
        assert!(format!("{err:#}").contains(MISMATCH), "{tamper:?}: {err:#}");
        assert_eq!(exit_code_of(&err), 5, "{tamper:?}");
        rx.events.wait_for_session_error(MISMATCH).await;
        assert_eq!(tree_listing(dst.path()), Default::default(), "{tamper:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn thirty_wrong_codes_cool_one_address_down_and_not_another() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("door.txt");
    fs::write(&file, b"open").unwrap();
    let code = Code::generate();
    let wrong = another(&code);
    let rx = Receiver::start_with(dst.path(), coded(&code)).await;
    for attempt in 0..30 {
        let (result, _) = send_coded(&[&file], rx.addr, &wrong).await;
        let err = format!("{:#}", result.unwrap_err());
        if attempt < PEER_FAILURES {
            assert!(err.contains(MISMATCH), "attempt {attempt}: {err}");
        } else {
            assert!(
                err.contains("connection closed during the code message")
                    && err.contains("when this address recently sent several wrong codes"),
                "attempt {attempt}: {err}"
            );
        }
    }
    assert_eq!(tree_listing(dst.path()), Default::default());

    let relay = Relay::start(rx.addr, "127.0.0.2:0".parse().unwrap()).await;
    let (result, _) = send_coded(&[&file], relay.addr, &code).await;
    assert_eq!(result.unwrap().stored, 1, "another address still gets in");
    assert_eq!(fs::read(dst.path().join("door.txt")).unwrap(), b"open");

    let (result, _) = send_coded(&[&file], rx.addr, &code).await;
    let err = format!("{:#}", result.unwrap_err());
    assert!(
        err.contains("during the code message"),
        "127.0.0.1 is still cooling down, even with the right code: {err}"
    );
    let refused = || {
        rx.events
            .session_errors()
            .iter()
            .filter(|e| e.contains("too many wrong codes from 127.0.0.1"))
            .count()
    };
    within(async {
        while refused() < 30 - PEER_FAILURES + 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// Where a code comes from for the binary.
#[derive(Clone, Copy, Debug)]
enum Given {
    Env,
    File,
}

#[tokio::test(flavor = "multi_thread")]
async fn a_code_from_the_environment_or_a_file_is_in_no_command_line() {
    for given in [Given::Env, Given::File] {
        let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let file = src.path().join("secret-plans.txt");
        fs::write(&file, b"plans").unwrap();
        let code = Code::generate();
        let code_file = src.path().join("code");
        fs::write(&code_file, format!("{code}\n")).unwrap();
        fs::set_permissions(
            &code_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let code_args: Vec<&str> = match given {
            Given::Env => vec!["--code"],
            Given::File => vec!["--code-file", code_file.to_str().unwrap()],
        };
        let env = matches!(given, Given::Env).then_some(&code);
        let dst_arg = dst.path().to_str().unwrap();
        let mut args = vec!["recv", "--listen", "127.0.0.1:0", "--once", "--quiet"];
        args.extend(["--dir", dst_arg]);
        args.extend(&code_args);
        let recv = xfer(&args, env);
        let (receiver, addr) = blocking(move || {
            let mut receiver = XferProcess::start(recv, Stdio::null());
            let line = receiver.next_line().expect("no 'listening on' line");
            let addr: std::net::SocketAddr =
                line.strip_prefix("listening on ").unwrap().parse().unwrap();
            (receiver, addr)
        })
        .await;
        assert_not_in_cmdline(receiver.child.id(), &code, "the receiver");

        let relay = Relay::gated(addr).await;
        let relay_addr = relay.addr.to_string();
        let mut args = vec!["send", "--quiet", "--no-cache"];
        args.extend(&code_args);
        args.extend([file.to_str().unwrap(), &relay_addr]);
        let sender = XferProcess::start(xfer(&args, env), Stdio::null());
        within(async {
            while relay.accepted() == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert_not_in_cmdline(sender.child.id(), &code, "the sender");
        relay.open();
        let (status, err) = blocking(move || sender.wait(TIMEOUT)).await;
        assert!(status.success(), "{given:?}: {err}");
        let (status, err) = blocking(move || receiver.wait(TIMEOUT)).await;
        assert!(status.success(), "{given:?}: {err}");
        assert_eq!(
            fs::read(dst.path().join("secret-plans.txt")).unwrap(),
            b"plans"
        );
    }
}

/// The pid of the `xfer` process whose command line holds `marker`.
fn find_xfer(marker: &str) -> Option<u32> {
    let bin = env!("CARGO_BIN_EXE_xfer").as_bytes();
    fs::read_dir("/proc").ok()?.find_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let line = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let argv0 = line.split(|&b| b == 0).next()?;
        (argv0 == bin && contains(&line, marker.as_bytes())).then_some(pid)
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_code_typed_at_the_prompt_is_in_no_command_line() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("typed-in.txt");
    fs::write(&file, b"typed").unwrap();
    let code = Code::generate();
    let rx = Receiver::start_with(dst.path(), coded(&code)).await;
    let relay = Relay::gated(rx.addr).await;
    // script(1) gives the sender a terminal; what we write to script's
    // stdin is typed on it, echo or not.
    let inner = format!(
        "'{}' send --quiet --no-cache --code '{}' {}",
        env!("CARGO_BIN_EXE_xfer"),
        file.display(),
        relay.addr
    );
    let mut command = Command::new("script");
    command
        .args(["-qefc", &inner, "/dev/null"])
        .env_remove("XFER_CODE")
        .env("XFER_CACHE_DIR", test_cache_dir());
    let mut sender = XferProcess::start(command, Stdio::piped());
    let mut typing = sender.child.stdin.take().unwrap();
    std::io::Write::write_all(&mut typing, format!("{code}\n").as_bytes()).unwrap();
    within(async {
        while relay.accepted() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let marker = file.to_str().unwrap().to_owned();
    let pid = blocking(move || {
        let mut pid = None;
        wait_until("the sender under script", || {
            pid = find_xfer(&marker);
            pid.is_some()
        });
        pid.unwrap()
    })
    .await;
    assert_not_in_cmdline(pid, &code, "the prompted sender");
    relay.open();
    let (status, err) = blocking(move || sender.wait(TIMEOUT)).await;
    drop(typing);
    assert!(status.success(), "{err}");
    assert_eq!(fs::read(dst.path().join("typed-in.txt")).unwrap(), b"typed");
}

/// Ctrl-C at the code prompt stops the sender as an interruption (exit
/// code 130, one `error:` line), not as a kill that leaves echo off.
#[test]
fn ctrl_c_at_the_code_prompt_is_an_interruption() {
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("never-sent.txt");
    fs::write(&file, b"x").unwrap();
    let inner = format!(
        "'{}' send --no-cache --code '{}' 127.0.0.1:9",
        env!("CARGO_BIN_EXE_xfer"),
        file.display(),
    );
    let mut command = Command::new("script");
    command
        .args(["-qefc", &inner, "/dev/null"])
        .env_remove("XFER_CODE")
        .env("XFER_CACHE_DIR", test_cache_dir());
    let (status, screen, typed) =
        type_at_prompt(command, "receiving machine): ", b"4821-or\x03", TIMEOUT);
    assert!(typed, "no prompt: {screen}");
    assert_eq!(status.code(), Some(130), "{screen}");
    assert!(screen.contains("error: interrupted"), "{screen}");
    assert!(!screen.contains("4821-or"), "echoed: {screen}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_code_on_the_command_line_works_and_warns() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("a.txt");
    fs::write(&file, b"argv").unwrap();
    let code = Code::generate();
    let rx = Receiver::start_with(dst.path(), coded(&code)).await;
    let relay = Relay::gated(rx.addr).await;
    let flag = format!("--code={code}");
    let addr = relay.addr.to_string();
    let sender = XferProcess::start(
        xfer(
            &[
                "send",
                "--quiet",
                "--no-cache",
                &flag,
                file.to_str().unwrap(),
                &addr,
            ],
            None,
        ),
        Stdio::null(),
    );
    within(async {
        while relay.accepted() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // Here the code is in the command line, and the check the other
    // tests rely on sees it.
    assert!(in_cmdline(sender.child.id(), &code));
    relay.open();
    let (status, err) = blocking(move || sender.wait(TIMEOUT)).await;
    assert!(status.success(), "{err}");
    assert!(
        err.contains("warning: a code given on the command line can be read by other users"),
        "{err}"
    );
    assert_eq!(fs::read(dst.path().join("a.txt")).unwrap(), b"argv");
}

/// Starts `xfer recv --json --code` (code from `env`, else generated) and
/// returns it with its `listening` address and its `code` event.
async fn json_receiver(dst: &Path, env: Option<&Code>) -> (XferProcess, String, serde_json::Value) {
    let dst = dst.to_str().unwrap();
    let args = [
        "recv",
        "--listen",
        "127.0.0.1:0",
        "--json",
        "--once",
        "--dir",
        dst,
        "--code",
    ];
    let command = xfer(&args, env);
    blocking(move || {
        let mut receiver = XferProcess::start(command, Stdio::null());
        let listening: serde_json::Value =
            serde_json::from_str(&receiver.next_line().expect("no listening event")).unwrap();
        assert_eq!(listening["event"], "listening", "{listening}");
        let addr = listening["addr"].as_str().unwrap().to_owned();
        let event: serde_json::Value =
            serde_json::from_str(&receiver.next_line().expect("no code event")).unwrap();
        (receiver, addr, event)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_generated_code_is_a_json_event_that_carries_the_code() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (receiver, addr, event) = json_receiver(dst.path(), None).await;
    assert_eq!(event["event"], "code", "{event}");
    assert_eq!(event["generated"], true, "{event}");
    let text = event["code"].as_str().expect("a code").to_owned();
    let parts: Vec<&str> = text.split('-').collect();
    assert_eq!(parts.len(), 5, "{text}");
    assert_eq!(
        parts[0],
        format!("{:04}", event["number"].as_u64().unwrap())
    );
    assert!(parts[1..]
        .iter()
        .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase())));
    let command = event["command"].as_str().unwrap().to_owned();
    assert!(
        command.starts_with("xfer send --code ") && command.ends_with(&addr),
        "{command}"
    );

    // It is the code the receiver holds: a sender with it gets in.
    let file = src.path().join("b.txt");
    fs::write(&file, b"b").unwrap();
    let code = Code::parse(&text).unwrap();
    let (status, err) = finish(xfer(
        &[
            "send",
            "--quiet",
            "--no-cache",
            "--code",
            file.to_str().unwrap(),
            &addr,
        ],
        Some(&code),
    ))
    .await;
    assert_eq!(status, 0, "{err}");
    let (status, err) = blocking(move || receiver.wait(TIMEOUT)).await;
    assert!(status.success(), "{err}");
    assert!(err.contains(&format!("code: {text}")), "{err}");
    assert!(
        err.contains(&format!("on the other machine: {command}")),
        "{err}"
    );
    assert_eq!(fs::read(dst.path().join("b.txt")).unwrap(), b"b");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_given_code_is_a_json_event_without_the_code() {
    let dst = tempfile::tempdir().unwrap();
    let code = Code::generate();
    let (receiver, _, event) = json_receiver(dst.path(), Some(&code)).await;
    assert_eq!(event["event"], "code", "{event}");
    assert_eq!(event["generated"], false, "{event}");
    assert_eq!(event["number"].as_u64(), Some(u64::from(code.number())));
    assert!(event.get("code").is_none(), "{event}");
    assert!(event["command"]
        .as_str()
        .unwrap()
        .starts_with("xfer send --code "));
    receiver.signal(libc::SIGTERM);
    let (status, err) = blocking(move || receiver.wait(TIMEOUT)).await;
    assert!(status.success(), "{err}");
    assert!(!err.contains(&code.to_string()), "{err}");
    assert!(err.contains("on the other machine: "), "{err}");
}
