//! The command line as scripts see it: the built binary, its output and exit codes.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::harness::*;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = xfer_command().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One line on stderr, starting with `error:`.
fn assert_one_error_line(stderr: &str, contains: &str) {
    let lines: Vec<_> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got {stderr:?}");
    assert!(lines[0].starts_with("error: "), "{stderr:?}");
    assert!(lines[0].contains(contains), "{stderr:?} lacks {contains:?}");
}

#[test]
fn help_for_each_subcommand() {
    let (code, out, _) = run(&["send", "--help"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("Usage: xfer send [OPTIONS] <PATH>... [ADDR]"),
        "{out}"
    );
    let (code, out, _) = run(&["recv", "--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--dir",
        "--listen",
        "--once",
        "--json",
        "--quiet",
        "--overwrite",
    ] {
        assert!(out.contains(flag), "recv --help lacks {flag}");
    }
    // The long help of each command carries the README's exit-code table.
    let readme = include_str!("../../README.md");
    let table = &readme[readme.find("## Exit codes").unwrap()..];
    let codes: Vec<&str> = table
        .lines()
        .skip_while(|l| !l.starts_with("| 0 "))
        .take_while(|l| l.starts_with('|'))
        .map(|l| l.split('|').nth(1).unwrap().trim())
        .collect();
    assert_eq!(codes, ["0", "1", "2", "3", "4", "5", "130"]);
    for (command, usage) in [
        ("serve", "Usage: xfer serve [OPTIONS] <PATH>..."),
        ("get", "Usage: xfer get [OPTIONS] [ADDR]"),
    ] {
        let (code, out, _) = run(&[command, "--help"]);
        assert_eq!(code, 0);
        assert!(out.contains(usage), "{out}");
        for flag in ["--once", "--code", "--json", "--quiet"] {
            let wanted = command == "serve" || flag != "--once";
            assert_eq!(out.contains(flag), wanted, "{command} --help and {flag}");
        }
    }
    for command in ["send", "recv", "serve", "get"] {
        let (code, out, _) = run(&[command, "--help"]);
        assert_eq!(code, 0);
        assert!(out.contains("Examples:\n  xfer "), "{out}");
        let listed = &out[out.find("Exit codes:").expect("no exit codes in --help")..];
        for code in &codes {
            assert!(
                listed
                    .lines()
                    .any(|l| l.trim_start().starts_with(&format!("{code} "))),
                "{command} --help lacks exit code {code}: {listed}"
            );
        }
    }
    let (code, out, _) = run(&["--version"]);
    assert_eq!(
        (code, out.trim()),
        (0, concat!("xfer ", env!("CARGO_PKG_VERSION")))
    );
}

#[test]
fn listening_line_then_a_verified_send_and_clean_exit_with_once() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("payload.bin");
    let data = write_random(&file, 3_000_000, 5);
    let (recv, addr) = XferProcess::recv(&["--dir", dst.path().to_str().unwrap(), "--once"]);
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert_ne!(addr.port(), 0, "the real port, not 0");
    let (code, out, err) = run(&["send", file.to_str().unwrap(), &addr.to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.is_empty(), "human output goes to stderr: {out:?}");
    assert!(
        err.contains("sent 1 file,") && err.contains("all verified"),
        "{err}"
    );
    let (status, _) = recv.wait(Duration::from_secs(10));
    assert!(status.success());
    assert_eq!(fs::read(dst.path().join("payload.bin")).unwrap(), data);
}

#[test]
fn json_events_on_both_sides() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let dir = src.path().join("d");
    let data = write_random(&dir.join("sub/a.txt"), 1234, 1);
    let mut recv = XferProcess::spawn(&[
        "recv",
        "--json",
        "--once",
        "--listen",
        "127.0.0.1:0",
        "--dir",
        dst.path().to_str().unwrap(),
    ]);
    let first: serde_json::Value = serde_json::from_str(&recv.next_line().unwrap()).unwrap();
    assert_eq!(first["event"], "listening");
    let addr = first["addr"].as_str().unwrap().to_owned();
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "{addr}"
    );

    let (code, out, err) = run(&["send", "--json", "--quiet", dir.to_str().unwrap(), &addr]);
    assert_eq!(code, 0, "{err}");
    assert!(err.is_empty(), "--quiet prints nothing on success: {err:?}");
    let sent: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let sha = xfer::hashing::to_hex(&xfer::hashing::digest(&data));
    assert_eq!(sent[0]["event"], "sent");
    assert_eq!(sent[0]["path"], "d/sub/a.txt");
    assert_eq!(sent[0]["sha256"], sha.as_str());
    assert_eq!(sent.last().unwrap()["event"], "summary");
    assert_eq!(sent.last().unwrap()["verified"], true);

    let received: serde_json::Value = serde_json::from_str(&recv.next_line().unwrap()).unwrap();
    assert_eq!(received["event"], "received");
    assert_eq!(received["path"], "d/sub/a.txt");
    assert_eq!(received["size"], 1234);
    assert_eq!(received["sha256"], sha.as_str());
    let (status, _) = recv.wait(Duration::from_secs(10));
    assert!(status.success());
}

#[test]
fn missing_file_is_a_usage_error() {
    let (code, _, err) = run(&["send", "/definitely/not/here.bin", "127.0.0.1:9"]);
    assert_eq!(code, 2);
    assert_one_error_line(
        &err,
        "cannot send '/definitely/not/here.bin': No such file or directory",
    );
}

#[test]
fn connection_refused_names_the_peer_and_suggests_the_fix() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, _, err) = run(&[
        "send",
        file.path().to_str().unwrap(),
        &format!("127.0.0.1:{port}"),
    ]);
    assert_eq!(code, 3);
    assert_one_error_line(
        &err,
        &format!("cannot connect to 127.0.0.1:{port}: Connection refused (is 'xfer recv' running there?)"),
    );
}

#[test]
fn malformed_addresses_are_usage_errors() {
    let file = tempfile::NamedTempFile::new().unwrap();
    for addr in ["host:notaport", "host:70000", "[::1", "a:b:c"] {
        let (code, _, err) = run(&["send", file.path().to_str().unwrap(), addr]);
        assert_eq!(code, 2, "{addr}");
        assert_one_error_line(&err, &format!("invalid address '{addr}'"));
    }
    let (code, _, err) = run(&["recv", "--listen", "nonsense"]);
    assert_eq!(code, 2);
    assert_one_error_line(&err, "invalid listen address 'nonsense'");
}

#[test]
fn port_already_in_use() {
    let dst = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, out, err) = run(&[
        "recv",
        "--dir",
        dst.path().to_str().unwrap(),
        "--listen",
        &addr,
    ]);
    assert_eq!(code, 3);
    assert!(out.is_empty());
    assert_one_error_line(
        &err,
        &format!("cannot listen on {addr}: Address already in use"),
    );
}

#[test]
fn host_name_destination_resolves() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("by-name.txt");
    write_random(&file, 99, 3);
    let (recv, addr) =
        XferProcess::recv(&["--dir", dst.path().to_str().unwrap(), "--once", "--quiet"]);
    let (code, _, err) = run(&[
        "send",
        "-q",
        file.to_str().unwrap(),
        &format!("localhost:{}", addr.port()),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(recv.wait(Duration::from_secs(10)).0.success());
    assert_same_tree(src.path(), dst.path());
}

#[test]
fn receiver_stops_cleanly_on_sigint_and_sigterm() {
    // With --once too: a stop request before any sender came is a clean
    // stop, not a failed session.
    for once in [false, true] {
        for sig in [libc::SIGINT, libc::SIGTERM] {
            let dst = tempfile::tempdir().unwrap();
            let mut args = vec!["--dir", dst.path().to_str().unwrap()];
            if once {
                args.push("--once");
            }
            let (recv, _) = XferProcess::recv(&args);
            recv.signal(sig);
            let (status, err) = recv.wait(Duration::from_secs(5));
            assert_eq!(status.code(), Some(0), "signal {sig}, --once {once}: {err}");
            assert!(err.is_empty(), "signal {sig}, --once {once}: {err}");
        }
    }
}

#[test]
fn once_exits_non_zero_when_the_session_fails() {
    let dst = tempfile::tempdir().unwrap();
    let (recv, addr) = XferProcess::recv(&["--dir", dst.path().to_str().unwrap(), "--once"]);
    let mut garbage = std::net::TcpStream::connect(addr).unwrap();
    std::io::Write::write_all(&mut garbage, b"not xfer at all, sorry\n").unwrap();
    let (status, err) = recv.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("not speaking the xfer protocol"), "{err}");
    assert!(err.lines().last().unwrap().starts_with("error: "), "{err}");
}

#[test]
fn double_verbose_flag_adds_debug_lines() {
    let dst = tempfile::tempdir().unwrap();
    let file = tempfile::NamedTempFile::new().unwrap();
    let (recv, addr) = XferProcess::recv(&["-vv", "--dir", dst.path().to_str().unwrap(), "--once"]);
    let (code, _, _) = run(&[
        "send",
        "-q",
        file.path().to_str().unwrap(),
        &addr.to_string(),
    ]);
    assert_eq!(code, 0);
    let (_, err) = recv.wait(Duration::from_secs(10));
    assert!(err.contains("debug: session with 127.0.0.1:"), "{err}");
}

#[test]
fn a_symlink_inside_a_sent_directory_is_skipped_with_a_warning() {
    let (src, dst, elsewhere) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let tree = src.path().join("tree");
    write_random(&tree.join("real.txt"), 10, 1);
    write_random(&elsewhere.path().join("secret.txt"), 10, 2);
    std::os::unix::fs::symlink(elsewhere.path(), tree.join("escape")).unwrap();
    std::os::unix::fs::symlink(elsewhere.path().join("secret.txt"), tree.join("link.txt")).unwrap();
    let (recv, addr) =
        XferProcess::recv(&["--dir", dst.path().to_str().unwrap(), "--once", "--quiet"]);
    let (code, _, err) = run(&["send", tree.to_str().unwrap(), &addr.to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: skipping symlink") && err.contains("escape"),
        "{err}"
    );
    assert!(err.contains("link.txt"), "{err}");
    assert!(recv.wait(Duration::from_secs(10)).0.success());
    let names: Vec<_> = tree_listing(dst.path()).into_keys().collect();
    assert_eq!(names, ["tree", "tree/real.txt"]);
}

#[test]
fn a_peer_cannot_inject_terminal_escapes_into_the_error_line() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Two connections: one from a sender writing to a pipe, one on a terminal.
    let hostile = std::thread::spawn(move || {
        for _ in 0..2 {
            let (mut stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut hello = [0u8; xfer::protocol::HELLO_LEN];
            stream.read_exact(&mut hello).unwrap();
            stream.write_all(&hello).unwrap();
            let mut frame = bytes::BytesMut::new();
            let reason = "\x1b[2J\x1b[31mYOUR DISK IS ON FIRE\x07 \u{202e}txt.exe".to_owned();
            xfer::protocol::codec::encode(&xfer::protocol::Message::Abort { reason }, &mut frame)
                .unwrap();
            stream.write_all(&frame).unwrap();
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let file = tempfile::NamedTempFile::new().unwrap();
    let (code, _, err) = run(&["send", file.path().to_str().unwrap(), &addr.to_string()]);
    // The peer ended the session: exit 3, as for any peer that went away.
    assert_eq!(code, 3, "{err}");
    assert!(
        !err.contains('\x1b') && !err.contains('\x07'),
        "raw control bytes reached stderr: {err:?}"
    );
    assert!(err.contains("\\u{1b}[2J"), "{err}");
    // To a pipe, only controls are escaped: the name reaches a script as it is.
    assert!(err.contains('\u{202e}'), "{err}");

    let args = vec![
        "send".to_owned(),
        file.path().to_str().unwrap().to_owned(),
        addr.to_string(),
    ];
    let (code, screen) = run_on_terminal(80, &args);
    hostile.join().unwrap();
    assert_eq!(code, 3, "{screen}");
    // On a terminal a bidi override could reorder what is shown: escaped.
    assert!(!screen.contains('\u{202e}'), "{screen:?}");
    assert!(screen.contains("\\u{202e}txt.exe"), "{screen:?}");
}

#[test]
fn an_unreadable_subdirectory_is_skipped_the_rest_sent_and_the_send_exits_1() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let tree = src.path().join("tree");
    write_random(&tree.join("a.txt"), 10, 1);
    write_random(&tree.join("locked/secret.txt"), 10, 2);
    write_random(&tree.join("z/b.txt"), 10, 3);
    fs::set_permissions(tree.join("locked"), fs::Permissions::from_mode(0o000)).unwrap();
    let (recv, addr) = XferProcess::recv(&["--dir", dst.path().to_str().unwrap()]);
    // Root reads any directory; without CAP_DAC_OVERRIDE (dropped across
    // exec by setpriv) its own 0o000 directory is refused, as a user's is.
    let out = std::process::Command::new("timeout")
        .args([
            "30",
            "setpriv",
            "--bounding-set=-dac_override,-dac_read_search",
            "--",
        ])
        .arg(env!("CARGO_BIN_EXE_xfer"))
        .args([
            "send",
            "--json",
            "--no-cache",
            tree.to_str().unwrap(),
            &addr.to_string(),
        ])
        .output();
    fs::set_permissions(tree.join("locked"), fs::Permissions::from_mode(0o755)).unwrap();
    let Ok(out) = out else {
        return eprintln!("skipped: cannot run timeout/setpriv");
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stdout.is_empty() && !stderr.contains("locked") {
        return eprintln!("skipped: setpriv cannot drop CAP_DAC_OVERRIDE here: {stderr}");
    }
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("skipping") && stderr.contains("locked"),
        "{stderr}"
    );
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let failed: Vec<_> = events.iter().filter(|e| e["event"] == "failed").collect();
    assert_eq!(failed.len(), 1, "{stdout}");
    assert_eq!(failed[0]["path"], "tree/locked");
    let summary = events.last().unwrap();
    assert_eq!(
        (&summary["files"], &summary["failed"], &summary["exit_code"]),
        (
            &serde_json::json!(2),
            &serde_json::json!(1),
            &serde_json::json!(1)
        )
    );
    recv.signal(libc::SIGTERM);
    assert!(recv.wait(Duration::from_secs(10)).0.success());
    assert_eq!(fs::read(dst.path().join("tree/z/b.txt")).unwrap().len(), 10);
    assert!(!dst.path().join("tree/locked").exists());
}

#[test]
fn a_peer_that_is_not_xfer_or_another_version_is_exit_4() {
    use std::io::{Read, Write};
    let mut other_version = xfer::protocol::MAGIC.to_vec();
    other_version.extend_from_slice(&2u32.to_be_bytes());
    other_version.extend_from_slice(&0u32.to_be_bytes());
    for (answer, expected) in [
        (
            b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec(),
            "not speaking the xfer protocol",
        ),
        (other_version, "speaks xfer protocol version 2"),
    ] {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut hello = [0u8; xfer::protocol::HELLO_LEN];
            let _ = stream.read_exact(&mut hello);
            let _ = stream.write_all(&answer);
            std::thread::sleep(Duration::from_millis(200));
        });
        let file = tempfile::NamedTempFile::new().unwrap();
        let (code, _, err) = run(&["send", file.path().to_str().unwrap(), &addr.to_string()]);
        peer.join().unwrap();
        assert_eq!(code, 4, "{err}");
        assert_one_error_line(&err, expected);
    }
}

#[test]
fn a_host_name_that_does_not_resolve_gets_its_own_hint() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let (code, _, err) = run(&[
        "send",
        file.path().to_str().unwrap(),
        "no-such-host.invalid:7171",
    ]);
    assert_eq!(code, 3, "{err}");
    assert_one_error_line(&err, "cannot resolve host name");
    assert!(
        err.contains("check the name, or use the IP address"),
        "{err}"
    );
    assert!(!err.contains("is 'xfer recv' running"), "{err}");
}

#[test]
fn an_address_given_first_is_told_to_go_last() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let (code, _, err) = run(&["send", "127.0.0.1:7171", file.path().to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert_one_error_line(
        &err,
        "the address goes last (xfer send PATH... 127.0.0.1:7171)",
    );
}

#[test]
fn a_refusal_that_would_come_again_does_not_say_to_run_it_again() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_random(&src.path().join("two/a"), 10, 1);
    write_random(&src.path().join("two/b"), 10, 2);
    let (recv, addr) = XferProcess::recv(&[
        "--dir",
        dst.path().to_str().unwrap(),
        "--once",
        "--max-files",
        "1",
    ]);
    let (code, _, err) = run(&[
        "send",
        src.path().join("two").to_str().unwrap(),
        &addr.to_string(),
    ]);
    assert_ne!(code, 0, "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains("--max-files"),
        "{err}"
    );
    assert!(!last.contains("run the same command again"), "{err}");
    drop(recv);
}
