//! What a person sees: the binary on a pseudo-terminal of a fixed width
//! (util-linux `script`), its screen taken apart into what was drawn.
//! Slow links are a throttling proxy on loopback.

use std::fs;
use std::time::Duration;

use unicode_width::UnicodeWidthStr;

use crate::harness::*;
use crate::proxies::{Proxy, ProxyOptions};

/// Everything one run drew, taken apart at carriage returns, newlines and
/// escape sequences: each piece is text written from the left edge of a
/// row, so no piece may be wider than the screen.
struct Screen {
    raw: String,
    pieces: Vec<String>,
}

impl Screen {
    fn parse(raw: String) -> Screen {
        let mut pieces = Vec::new();
        let mut current = String::new();
        let mut chars = raw.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\r' | '\n' => pieces.push(std::mem::take(&mut current)),
                '\x1b' => {
                    pieces.push(std::mem::take(&mut current));
                    // CSI: ESC [ parameters final-byte.
                    if chars.peek() == Some(&'[') {
                        chars.next();
                        for c in chars.by_ref() {
                            if ('@'..='~').contains(&c) {
                                break;
                            }
                        }
                    }
                }
                c => current.push(c),
            }
        }
        pieces.push(current);
        pieces.retain(|p| !p.trim().is_empty());
        Screen { raw, pieces }
    }

    /// The sender's progress lines drawn, in order: they lead with `N%`.
    fn frames(&self) -> Vec<&str> {
        self.pieces
            .iter()
            .map(|p| p.trim_end())
            .filter(|p| {
                let t = p.trim_start();
                t.find('%')
                    .is_some_and(|at| at > 0 && t[..at].bytes().all(|b| b.is_ascii_digit()))
            })
            .collect()
    }

    /// The receiver's progress lines, which lead with the sender's address.
    fn lines_for(&self, peer: &str) -> Vec<&str> {
        self.pieces
            .iter()
            .map(|p| p.trim_end())
            .filter(|p| p.starts_with(peer))
            .collect()
    }

    /// No progress line (what is redrawn in place) is wider than the
    /// screen, padding included. Printed lines may wrap like any text.
    fn assert_fits(&self, cols: usize) {
        let redrawn =
            |p: &&String| p.contains("/s") && !p.starts_with("from ") && !p.starts_with("sent ");
        for piece in self.pieces.iter().filter(redrawn) {
            assert!(
                piece.trim_end().width() <= cols,
                "a line wider than {cols} columns wraps: {piece:?}"
            );
            assert!(
                piece.width() <= cols,
                "padding past {cols} columns wraps: {piece:?}"
            );
        }
    }
}

/// `n` of `n/M files` (or `n/M`) in a progress line, where M is `total`.
fn files_done(frame: &str, total: u64) -> Option<u64> {
    file_count(frame).and_then(|(n, m)| (m == total).then_some(n))
}

/// `(n, M)` of the first `n/M` of whole numbers in a progress line.
fn file_count(frame: &str) -> Option<(u64, u64)> {
    frame.split_whitespace().find_map(|word| {
        let (n, m) = word.split_once('/')?;
        Some((
            n.replace(',', "").parse().ok()?,
            m.replace(',', "").parse().ok()?,
        ))
    })
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Runs `xfer ARGS` on a terminal off the test runtime.
async fn on_terminal(cols: u16, list: Vec<String>) -> (i32, Screen) {
    let (code, raw) = tokio::task::spawn_blocking(move || run_on_terminal(cols, &list))
        .await
        .unwrap();
    (code, Screen::parse(raw))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sender_draws_a_bar_whose_counts_advance_and_nothing_wraps_at_60_columns() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for i in 0..30 {
        write_random(&src.path().join(format!("tree/f{i:02}.bin")), 100 * 1024, i);
    }
    let (_recv, addr) = XferProcess::recv(&["--dir", dst.path().to_str().unwrap(), "--quiet"]);
    // 3 MiB at 1.5 MiB/s: about two seconds of drawing.
    let proxy = Proxy::start(addr, ProxyOptions::throttled(1536 * 1024)).await;
    let tree = src.path().join("tree");
    let (code, screen) = on_terminal(
        60,
        args(&["send", tree.to_str().unwrap(), &proxy.addr.to_string()]),
    )
    .await;
    assert_eq!(code, 0, "{}", screen.raw);
    screen.assert_fits(60);
    let frames = screen.frames();
    assert!(frames.len() >= 5, "too few redraws: {frames:?}");
    assert!(
        frames.iter().any(|f| f.contains("[=") && f.contains(']')),
        "no bar: {frames:?}"
    );
    let counts: Vec<u64> = frames.iter().filter_map(|f| files_done(f, 30)).collect();
    assert_eq!(
        counts.len(),
        frames.len(),
        "a line without n/30: {frames:?}"
    );
    assert!(
        counts.windows(2).all(|w| w[0] <= w[1]),
        "counts went back: {counts:?}"
    );
    let mut distinct = counts.clone();
    distinct.dedup();
    assert!(distinct.len() >= 3, "counts did not advance: {counts:?}");
    let last = frames.last().unwrap();
    assert!(
        last.starts_with("100%") && last.contains("2.93/2.93 MiB") && last.contains("30/30"),
        "{last:?}"
    );
    assert!(
        screen
            .pieces
            .iter()
            .any(|p| p.starts_with("sent 30 files, 2.93 MiB in ") && p.ends_with("all verified")),
        "{:?}",
        screen.pieces
    );
    assert_same_tree(&tree, &dst.path().join("tree"));
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_resume_the_bar_ends_full_and_the_summary_says_resumed() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("big.bin");
    let data = write_random(&file, 8 << 20, 7);
    let (_recv, addr) = XferProcess::recv(&["--dir", dst.path().to_str().unwrap(), "--quiet"]);
    let proxy = Proxy::start(addr, ProxyOptions::throttled(2 << 20)).await;
    let mut first = xfer_command();
    first.args([
        "send",
        "-q",
        file.to_str().unwrap(),
        &proxy.addr.to_string(),
    ]);
    let first = XferProcess::start(first, std::process::Stdio::null());
    let dir = dst.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        wait_until("part of the file is kept", || {
            partial_len(&dir, "big.bin").is_some_and(|n| n >= 2 << 20)
        })
    })
    .await
    .unwrap();
    drop(first); // killed mid-body
    let dir = dst.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        wait_until("the partial is kept", || partial_settled(&dir, "big.bin"))
    })
    .await
    .unwrap();
    let kept = partial_len(dst.path(), "big.bin").unwrap();
    assert!(kept < 8 << 20);

    let (code, screen) = on_terminal(
        80,
        args(&["send", file.to_str().unwrap(), &addr.to_string()]),
    )
    .await;
    assert_eq!(code, 0, "{}", screen.raw);
    screen.assert_fits(80);
    let frames = screen.frames();
    let last = frames.last().expect("no progress line");
    assert!(
        last.starts_with("100%") && last.contains("8.00/8.00 MiB") && last.contains("1/1 files"),
        "{last:?}"
    );
    assert!(
        screen
            .pieces
            .iter()
            .any(|p| p.starts_with("sent 1 file (1 resumed), ")),
        "{:?}",
        screen.pieces
    );
    assert_eq!(fs::read(dst.path().join("big.bin")).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partly_skipped_resend_takes_the_skipped_bytes_out_of_the_total() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let tree = src.path().join("tree");
    for i in 0..20 {
        write_random(&tree.join(format!("f{i:02}.bin")), 100 * 1024, 40 + i);
    }
    let (_recv, addr) = XferProcess::recv(&["--dir", dst.path().to_str().unwrap(), "--quiet"]);
    let out = xfer_command()
        .args(["send", "-q", tree.to_str().unwrap(), &addr.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success());
    for i in 0..8 {
        fs::remove_file(dst.path().join(format!("tree/f{i:02}.bin"))).unwrap();
    }
    let proxy = Proxy::start(addr, ProxyOptions::throttled(1 << 20)).await;
    let (code, screen) = on_terminal(
        100,
        args(&["send", tree.to_str().unwrap(), &proxy.addr.to_string()]),
    )
    .await;
    assert_eq!(code, 0, "{}", screen.raw);
    screen.assert_fits(100);
    let frames = screen.frames();
    let last = frames.last().expect("no progress line");
    // 8 bodies of 100 KiB are left of 20 files once the plan is in.
    assert!(
        last.starts_with("100%") && last.contains("800/800 KiB") && last.contains("20/20 files"),
        "{last:?}"
    );
    assert!(
        screen
            .pieces
            .iter()
            .any(|p| p.starts_with("sent 20 files (12 already there), 800.00 KiB in ")),
        "{:?}",
        screen.pieces
    );
}

/// `xfer recv ARGS` on a terminal of `cols` columns, on a free loopback
/// port: the process (`script` around it) and the address it listens on.
async fn recv_on_terminal(cols: u16, extra: &[&str]) -> (XferProcess, std::net::SocketAddr) {
    let mut list = vec!["recv", "--listen", "127.0.0.1:0"];
    list.extend_from_slice(extra);
    let recv = XferProcess::start(
        terminal_command(cols, &args(&list)),
        std::process::Stdio::piped(),
    );
    tokio::task::spawn_blocking(move || {
        let mut recv = recv;
        let first = recv.next_line();
        let addr = first
            .as_deref()
            .and_then(|l| l.trim().strip_prefix("listening on "))
            .unwrap_or_else(|| panic!("{first:?}"))
            .parse()
            .unwrap();
        (recv, addr)
    })
    .await
    .unwrap()
}

/// Everything `recv` drew from now until it exits (bounded by the
/// harness's line timeout).
async fn screen_until_exit(recv: XferProcess) -> Screen {
    let raw = tokio::task::spawn_blocking(move || {
        let mut recv = recv;
        let lines: Vec<String> = std::iter::from_fn(|| recv.next_line()).collect();
        lines.join("\n")
    })
    .await
    .unwrap();
    Screen::parse(raw)
}

/// After `summary` (the session's closing line) nothing redraws a
/// progress line, and the last progress line drawn was cleared.
fn assert_cleared(screen: &Screen, peer: &str, summary: &str) {
    let at = screen.raw.find(summary).expect("no summary line");
    let after = &screen.raw[at..];
    assert!(
        !Screen::parse(after.to_owned())
            .lines_for(peer)
            .iter()
            .any(|l| l.contains("/s")),
        "a progress line is drawn after the session ended: {after:?}"
    );
    let before = &screen.raw[..at];
    let last_frame = before.rfind("/s").expect("no progress line at all");
    assert!(
        before[last_frame..].contains("\x1b[2K"),
        "the last progress line was not cleared: {:?}",
        &before[last_frame..]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_receiver_draws_a_line_per_sender_with_its_counts_then_its_summary() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let tree = src.path().join("tree");
    for i in 0..10 {
        write_random(&tree.join(format!("f{i}.bin")), 200 * 1024, 60 + i);
    }
    let (recv, addr) =
        recv_on_terminal(60, &["--once", "--dir", dst.path().to_str().unwrap()]).await;
    let proxy = Proxy::start(addr, ProxyOptions::throttled(1 << 20)).await;
    let to = proxy.addr.to_string();
    let out = tokio::task::spawn_blocking(move || {
        xfer_command()
            .args(["send", "-q", tree.to_str().unwrap(), &to])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success());
    let screen = screen_until_exit(recv).await;
    screen.assert_fits(60);
    let progress = screen.lines_for("127.0.0.1:");
    assert!(
        progress.iter().any(|f| files_done(f, 10).is_some()),
        "no line with the sender's file count: {progress:?}"
    );
    assert!(
        progress.iter().any(|f| f.contains("MiB")),
        "no bytes on the sender's line: {progress:?}"
    );
    // No per-file lines without -v; a summary per sender.
    assert!(
        !screen.pieces.iter().any(|p| p.starts_with("received f")),
        "{:?}",
        screen.pieces
    );
    assert_cleared(&screen, "127.0.0.1:", "received 10 files");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sender_that_vanishes_leaves_no_line_behind() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let big = src.path().join("big.bin");
    write_random(&big, 16 << 20, 70);
    let (recv, addr) =
        recv_on_terminal(60, &["--once", "--dir", dst.path().to_str().unwrap()]).await;
    let proxy = Proxy::start(addr, ProxyOptions::throttled(1 << 20)).await;
    let mut vanishing = xfer_command();
    vanishing.args(["send", "-q", big.to_str().unwrap(), &proxy.addr.to_string()]);
    let mut vanishing = XferProcess::start(vanishing, std::process::Stdio::null());
    let dir = dst.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        wait_until("the body is arriving", || {
            partial_len(&dir, "big.bin").is_some_and(|n| n >= 1 << 20)
        })
    })
    .await
    .unwrap();
    vanishing.child.kill().unwrap();
    let _ = vanishing.child.wait();
    let screen = screen_until_exit(recv).await;
    screen.assert_fits(60);
    assert_cleared(&screen, "127.0.0.1:", "session ended early");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_stopped_mid_body_leaves_no_line_behind() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let big = src.path().join("big.bin");
    write_random(&big, 16 << 20, 71);
    let (recv, addr) = recv_on_terminal(80, &["--dir", dst.path().to_str().unwrap()]).await;
    let proxy = Proxy::start(addr, ProxyOptions::throttled(1 << 20)).await;
    let mut sender = xfer_command();
    sender.args(["send", "-q", big.to_str().unwrap(), &proxy.addr.to_string()]);
    let _sender = XferProcess::start(sender, std::process::Stdio::null());
    let dir = dst.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        wait_until("the body is arriving", || {
            partial_len(&dir, "big.bin").is_some_and(|n| n >= 1 << 20)
        })
    })
    .await
    .unwrap();
    // To the receiver itself: script(1), told to stop, kills its child and
    // stops recording, as no terminal does.
    let script = recv.child.id();
    let children = fs::read_to_string(format!("/proc/{script}/task/{script}/children")).unwrap();
    let pid: libc::pid_t = children.trim().parse().expect("script runs one child");
    // SAFETY: kill(2) on the test's own grandchild.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let screen = screen_until_exit(recv).await;
    assert_cleared(&screen, "127.0.0.1:", "the receiver is shutting down");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_that_never_says_hello_draws_no_line_and_does_not_hold_up_a_stop() {
    let dst = tempfile::tempdir().unwrap();
    let (recv, addr) = recv_on_terminal(80, &["--dir", dst.path().to_str().unwrap()]).await;
    // A port scan, or nc: connected, silent.
    let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let script = recv.child.id();
    let children = fs::read_to_string(format!("/proc/{script}/task/{script}/children")).unwrap();
    let pid: libc::pid_t = children.trim().parse().expect("script runs one child");
    let stopped = std::time::Instant::now();
    // SAFETY: kill(2) on the test's own grandchild.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let screen = screen_until_exit(recv).await;
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "the stop waited for the silent connection"
    );
    assert!(
        screen.lines_for("127.0.0.1:").is_empty(),
        "a line for a connection that never said hello: {:?}",
        screen.pieces
    );
}

#[test]
fn per_file_lines_come_with_v_and_show_human_sizes() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("a.bin");
    write_random(&file, 150 * 1024, 3);
    let (recv, addr) = XferProcess::recv(&["-v", "--dir", dst.path().to_str().unwrap(), "--once"]);
    let out = xfer_command()
        .args(["send", "-v", file.to_str().unwrap(), &addr.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let sent = String::from_utf8_lossy(&out.stderr);
    assert!(sent.contains("sent a.bin (150.00 KiB)"), "{sent}");
    let (_, err) = recv.wait(Duration::from_secs(10));
    assert!(err.contains("received a.bin (150.00 KiB)"), "{err}");
    assert!(!err.contains("debug:"), "-v alone is not debugging: {err}");
}

#[test]
fn without_a_terminal_or_with_quiet_no_line_is_drawn() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("bar.bin");
    write_random(&file, 2_000_000, 8);
    let (recv, addr) = XferProcess::recv(&["--dir", dst.path().to_str().unwrap()]);
    let out = xfer_command()
        .args(["send", file.to_str().unwrap(), &addr.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains('\r') && !err.contains('\x1b') && !err.contains('%'),
        "drawn without a terminal: {err:?}"
    );
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(err.starts_with("sent 1 file, 1.91 MiB in "), "{err:?}");

    fs::remove_file(dst.path().join("bar.bin")).unwrap();
    let (code, screen) = run_on_terminal(
        80,
        &args(&["send", "--quiet", file.to_str().unwrap(), &addr.to_string()]),
    );
    assert_eq!(code, 0);
    assert!(screen.trim().is_empty(), "--quiet drew {screen:?}");
    recv.signal(libc::SIGTERM);
    let (status, recv_err) = recv.wait(Duration::from_secs(5));
    assert!(status.success());
    assert_eq!(
        recv_err.matches("received 1 file,").count(),
        2,
        "{recv_err}"
    );
    assert!(!recv_err.contains("received bar.bin"), "{recv_err}");
}

#[test]
fn the_receiver_says_what_to_type_on_the_other_machine_for_each_address() {
    let dst = tempfile::tempdir().unwrap();
    // Not announced: this one listens on the machine's real network.
    let mut recv = XferProcess::spawn(&[
        "recv",
        "--no-announce",
        "--listen",
        "0.0.0.0:0",
        "--dir",
        dst.path().to_str().unwrap(),
    ]);
    let line = recv.next_line().expect("no listening line");
    assert!(line.starts_with("listening on 0.0.0.0:"), "{line}");
    let local: std::net::SocketAddr = line["listening on ".len()..].parse().unwrap();
    recv.signal(libc::SIGTERM);
    let (_, err) = recv.wait(Duration::from_secs(5));
    let printed: Vec<&str> = err
        .lines()
        .filter_map(|l| l.strip_prefix("on the other machine: "))
        .collect();
    let expected: Vec<String> = xfer::reach::addresses(local)
        .iter()
        .map(|a| format!("xfer send FILE {a}"))
        .collect();
    assert_eq!(printed, expected, "{err}");
    for command in &printed {
        let addr: std::net::SocketAddr = command.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(
            !addr.ip().is_loopback() && addr.port() == local.port(),
            "{command}"
        );
    }

    // Bound to loopback only: nothing to tell another machine.
    let (recv, _) = XferProcess::recv(&["--dir", dst.path().to_str().unwrap()]);
    recv.signal(libc::SIGTERM);
    let (_, err) = recv.wait(Duration::from_secs(5));
    assert!(!err.contains("on the other machine"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_receiver_shows_the_whole_session_from_its_start() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let tree = src.path().join("many");
    // More files than the sender offers ahead of its bodies (batches of 256).
    for i in 0..1100 {
        write_random(&tree.join(format!("f{i:04}")), 1024, i);
    }
    let mut recv = XferProcess::start(
        terminal_command(
            100,
            &args(&[
                "recv",
                "--once",
                "--listen",
                "127.0.0.1:0",
                "--dir",
                dst.path().to_str().unwrap(),
            ]),
        ),
        std::process::Stdio::piped(),
    );
    let (recv, first) = tokio::task::spawn_blocking(move || {
        let line = recv.next_line();
        (recv, line)
    })
    .await
    .unwrap();
    let addr: std::net::SocketAddr = first
        .as_deref()
        .and_then(|l| l.trim().strip_prefix("listening on "))
        .unwrap_or_else(|| panic!("{first:?}"))
        .parse()
        .unwrap();
    let proxy = Proxy::start(addr, ProxyOptions::throttled(400 * 1024)).await;
    let to = proxy.addr.to_string();
    let out = tokio::task::spawn_blocking(move || {
        xfer_command()
            .args(["send", "-q", tree.to_str().unwrap(), &to])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success());
    let screen = tokio::task::spawn_blocking(move || {
        let mut recv = recv;
        let lines: Vec<String> = std::iter::from_fn(|| recv.next_line()).collect();
        lines.join("\n")
    })
    .await
    .unwrap();
    let screen = Screen::parse(screen);
    let counts: Vec<(u64, u64)> = screen
        .lines_for("127.0.0.1:")
        .iter()
        .filter_map(|f| file_count(f))
        .filter(|(_, total)| *total > 0)
        .collect();
    assert!(counts.len() >= 3, "{:?}", screen.pieces);
    assert!(
        counts.iter().all(|(_, total)| *total == 1100),
        "a total other than the whole session's: {counts:?}"
    );
    assert!(counts.iter().any(|(done, _)| *done < 1024), "{counts:?}");
}

/// Pull mode: `xfer get` draws the receiver's line for its one session,
/// counted against the server's totals from the start, and ends with the
/// receiver's summary.
#[tokio::test(flavor = "multi_thread")]
async fn a_getter_draws_its_session_against_the_servers_totals() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let tree = src.path().join("tree");
    for i in 0..30 {
        write_random(&tree.join(format!("f{i:02}.bin")), 100 * 1024, i);
    }
    let server = Serving::start(&[&tree]).await;
    let options = ProxyOptions {
        back_rate: Some(1536 * 1024),
        ..Default::default()
    };
    let proxy = Proxy::start(server.addr, options).await;
    let from = proxy.addr.to_string();
    let (code, screen) = on_terminal(
        60,
        args(&["get", &from, "--dir", dst.path().to_str().unwrap()]),
    )
    .await;
    assert_eq!(code, 0, "{}", screen.raw);
    screen.assert_fits(60);
    let counts: Vec<(u64, u64)> = screen
        .lines_for(&from)
        .iter()
        .filter_map(|f| file_count(f))
        .filter(|(_, total)| *total > 0)
        .collect();
    assert!(counts.len() >= 3, "{:?}", screen.pieces);
    assert!(counts.iter().all(|(_, total)| *total == 30), "{counts:?}");
    assert!(
        counts.windows(2).all(|w| w[0].0 <= w[1].0),
        "counts went back: {counts:?}"
    );
    assert!(
        screen
            .pieces
            .iter()
            .any(|p| p.starts_with(&format!("from {from}: received 30 files"))),
        "{:?}",
        screen.pieces
    );
    assert_same_tree(src.path(), dst.path());
}
