//! The receiver's DIR under contention and misuse: two senders after the
//! same path at once, and a DIR that cannot be written.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use xfer::receiver::{RecvConfig, Server};

use crate::harness::*;

const MIB: u64 = 1024 * 1024;

#[tokio::test(flavor = "multi_thread")]
async fn a_path_being_received_is_refused_to_a_second_sender_at_plan_time() {
    let (first_src, second_src) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let dst = tempfile::tempdir().unwrap();
    let first_file = first_src.path().join("same.bin");
    let second_file = second_src.path().join("same.bin");
    let data = write_random(&first_file, 16 * MIB as usize, 1);
    write_random(&second_file, MIB as usize, 2);
    let rx = Receiver::start(dst.path()).await;
    // 16 MiB at 2 MiB/s: the first body is still arriving for seconds.
    let proxy = Proxy::start(rx.addr, ProxyOptions::throttled(2 * MIB)).await;
    let first = tokio::spawn(async move { send(&[&first_file], proxy.addr).await });

    let dir = dst.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        wait_until("the first body to begin", || {
            partial_len(&dir, "same.bin").unwrap_or(0) >= MIB
        })
    })
    .await
    .unwrap();
    let started = Instant::now();
    let (_, second) = send(&[&second_file], rx.addr).await;
    let took = started.elapsed();
    let failed = second.failed();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0]
            .1
            .contains("is being received from another sender right now; send it again when that transfer is done"),
        "{failed:?}"
    );
    // Refused at once, not after its body streamed (generous for a slow machine).
    assert!(took < Duration::from_secs(10), "the refusal took {took:?}");

    let (result, first) = within(first).await.unwrap();
    let summary = result.unwrap();
    assert_eq!(
        (summary.delivered(), summary.failed),
        (1, 0),
        "{:?}",
        first.failed()
    );
    assert_eq!(std::fs::read(dst.path().join("same.bin")).unwrap(), data);
    assert_eq!(
        tree_listing(dst.path()).len(),
        1,
        "nothing else stored or left behind"
    );
}

/// A read-only tmpfs mounted on a fresh temporary directory, unmounted when
/// dropped; `None` (with the reason printed) where mounting is not allowed.
struct ReadOnlyMount {
    /// Removed after the unmount.
    _dir: tempfile::TempDir,
    at: PathBuf,
}

impl ReadOnlyMount {
    fn new() -> Option<ReadOnlyMount> {
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().to_path_buf();
        ReadOnlyMount::at(dir, at)
    }

    /// Mounted on `at` (an existing directory), which `dir` keeps alive.
    fn at(dir: tempfile::TempDir, at: PathBuf) -> Option<ReadOnlyMount> {
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "ro", "tmpfs"])
            .arg(&at)
            .output();
        match mounted {
            Ok(out) if out.status.success() => Some(ReadOnlyMount { _dir: dir, at }),
            Ok(out) => {
                let why = String::from_utf8_lossy(&out.stderr);
                eprintln!("skipped: cannot mount a read-only tmpfs: {}", why.trim());
                None
            }
            Err(e) => {
                eprintln!("skipped: cannot run mount: {e}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        &self.at
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.at).status();
    }
}

#[test]
fn a_file_the_receiver_cannot_write_is_said_to_fail_on_the_receiver() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_random(&src.path().join("ro/a.txt"), 100, 1);
    fs::create_dir(dst.path().join("ro")).unwrap();
    let inbox = dst.path().to_path_buf();
    let Some(_mount) = ReadOnlyMount::at(dst, inbox.join("ro")) else {
        return;
    };
    let (recv, addr) = XferProcess::recv(&["--dir", inbox.to_str().unwrap(), "--once"]);
    let out = xfer_command()
        .args([
            "send",
            src.path().join("ro").to_str().unwrap(),
            &addr.to_string(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines().any(|l| l.starts_with("error: ")
            && l.contains("ro/a.txt: cannot create it on the receiver: Read-only file system")),
        "{err}"
    );
    let (_, recv_err) = recv.wait(Duration::from_secs(10));
    assert!(
        recv_err.contains("failed: ro/a.txt: cannot create it on the receiver"),
        "{recv_err}"
    );
}

#[test]
fn a_read_only_dir_is_refused_before_serving() {
    let Some(mount) = ReadOnlyMount::new() else {
        return;
    };
    let config = RecvConfig {
        dir: mount.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        once: false,
        overwrite: false,
        max_connections: 1,
        idle_timeout: Duration::from_secs(10),
        handshake_timeout: Duration::from_secs(10),
        limits: xfer::receiver::Limits::default(),
        keep_partials: Duration::from_secs(3600),
        code: None,
        limit_rate: None,
    };
    let err = Server::new(config)
        .err()
        .expect("a server on a read-only DIR");
    assert_eq!(
        err.to_string(),
        format!(
            "cannot use '{}' as the receiving directory: Read-only file system",
            mount.path().display()
        )
    );
}

#[test]
fn xfer_recv_on_a_read_only_dir_exits_with_one_error_line_and_never_listens() {
    let Some(mount) = ReadOnlyMount::new() else {
        return;
    };
    let dir = mount.path().to_str().unwrap();
    let mut recv = XferProcess::spawn(&["recv", "--dir", dir, "--listen", "127.0.0.1:0"]);
    let stdout: Vec<String> = std::iter::from_fn(|| recv.next_line()).collect();
    let (status, stderr) = recv.wait(Duration::from_secs(10));
    assert!(!status.success(), "{status}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(lines[0].contains("Read-only file system"), "{stderr}");
    assert!(
        !stdout
            .iter()
            .chain([&stderr])
            .any(|l| l.contains("listening on")),
        "{stdout:?}"
    );
}
