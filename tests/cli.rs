//! The command line as scripts see it: the built binary, its output and exit codes.

mod common;

use std::fs;
use std::time::Duration;

use common::*;

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
        out.contains("Usage: xfer send [OPTIONS] <PATH>... <ADDR>"),
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
        err.contains("sent 1 files") && err.contains("all verified"),
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
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let dst = tempfile::tempdir().unwrap();
        let (recv, _) = XferProcess::recv(&["--dir", dst.path().to_str().unwrap()]);
        recv.signal(sig);
        let (status, err) = recv.wait(Duration::from_secs(5));
        assert_eq!(status.code(), Some(0), "signal {sig}: {err}");
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
