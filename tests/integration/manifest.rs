//! `--manifest FILE` on both sides, checked by the real `sha256sum -c`.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::*;

/// Runs `sha256sum -c --strict manifest` in `dir`; returns success and output.
fn sha256sum_check(dir: &Path, manifest: &Path) -> (bool, String) {
    let out = Command::new("sha256sum")
        .args(["-c", "--strict"])
        .arg(manifest)
        .current_dir(dir)
        .output()
        .expect("GNU sha256sum is needed for this test");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Sends `paths` with the binary from `cwd` with `--manifest sent`; exit code and stderr.
fn send_from(cwd: &Path, paths: &[&str], addr: &str, manifest: &Path) -> (i32, String) {
    let out = xfer_command()
        .arg("send")
        .arg("--manifest")
        .arg(manifest)
        .args(paths)
        .arg(addr)
        .current_dir(cwd)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn both_manifests_pass_sha256sum_check_including_renamed_skipped_and_odd_names() {
    let (work, dst, lists) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let src = work.path();
    write_random(&src.join("photos/a.jpg"), 300_000, 1);
    write_random(&src.join("photos/deep/b.raw"), 2_000_000, 2);
    write_random(&src.join("photos/empty"), 0, 3);
    // Names GNU sha256sum escapes: a backslash and a newline in the
    // directories above what is sent (the wire refuses them in names).
    let odd = src.join("we\\ird\nplace");
    write_random(&odd.join("note.txt"), 999, 4);
    // Already at the receiver: identical (skipped) and different (renamed).
    fs::write(src.join("same.txt"), b"same content").unwrap();
    fs::write(dst.path().join("same.txt"), b"same content").unwrap();
    fs::write(src.join("clash.txt"), b"the sender's clash").unwrap();
    fs::write(dst.path().join("clash.txt"), b"the receiver's own").unwrap();

    let received = lists.path().join("received.sha256");
    let sent = lists.path().join("sent.sha256");
    let (recv, addr) = XferProcess::recv(&[
        "--dir",
        dst.path().to_str().unwrap(),
        "--once",
        "--manifest",
        received.to_str().unwrap(),
    ]);
    let odd_note = "we\\ird\nplace/note.txt";
    let (code, err) = send_from(
        src,
        &["photos", odd_note, "same.txt", "clash.txt"],
        &addr.to_string(),
        &sent,
    );
    assert_eq!(code, 0, "{err}");
    let (status, err) = recv.wait(Duration::from_secs(10));
    assert!(status.success(), "{err}");

    // The receiver: every file verified, named relative to DIR.
    let listing = fs::read_to_string(&received).unwrap();
    let mut names: Vec<&str> = listing.lines().map(|l| &l[66..]).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "clash (1).txt",
            "note.txt",
            "photos/a.jpg",
            "photos/deep/b.raw",
            "photos/empty",
            "same.txt"
        ],
        "{listing}"
    );
    let (ok, out) = sha256sum_check(dst.path(), &received);
    assert!(ok, "{out}");
    assert_eq!(out.matches(": OK").count(), 6, "{out}");

    // The sender: paths as given, checked from the directory it ran in;
    // the odd one written escaped, the way sha256sum writes it.
    let listing = fs::read(&sent).unwrap();
    let escaped = format!(
        "\\{}  we\\\\ird\\nplace/note.txt\n",
        xfer::hashing::to_hex(&xfer::hashing::digest(
            &fs::read(odd.join("note.txt")).unwrap()
        ))
    );
    assert!(
        listing
            .split_inclusive(|b| *b == b'\n')
            .any(|l| l == escaped.as_bytes()),
        "{}",
        String::from_utf8_lossy(&listing)
    );
    let (ok, out) = sha256sum_check(src, &sent);
    assert!(ok, "{out}");
    assert_eq!(out.matches(": OK").count(), 6, "{out}");

    // A damaged file makes the check fail: the manifest holds real digests.
    fs::write(dst.path().join("photos/a.jpg"), b"changed").unwrap();
    let (ok, out) = sha256sum_check(dst.path(), &received);
    assert!(!ok && out.contains("photos/a.jpg: FAILED"), "{out}");
}

#[test]
fn refused_files_stay_out_of_both_manifests() {
    let (src, dst, lists) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    write_random(&src.path().join("small.bin"), 1_000, 1);
    write_random(&src.path().join("big.bin"), 5_000, 2);
    let received = lists.path().join("received.sha256");
    let sent = lists.path().join("sent.sha256");
    let (recv, addr) = XferProcess::recv(&[
        "--dir",
        dst.path().to_str().unwrap(),
        "--once",
        "--max-size",
        "2K",
        "--manifest",
        received.to_str().unwrap(),
    ]);
    let (code, err) = send_from(
        src.path(),
        &["small.bin", "big.bin"],
        &addr.to_string(),
        &sent,
    );
    assert_eq!(code, 1, "{err}");
    let _ = recv.wait(Duration::from_secs(10));
    for list in [&received, &sent] {
        let text = fs::read_to_string(list).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.ends_with("  small.bin\n"), "{text}");
    }
    assert!(sha256sum_check(dst.path(), &received).0);
    assert!(sha256sum_check(src.path(), &sent).0);
}

#[test]
fn a_manifest_that_cannot_be_written_is_one_error_line_before_anything_moves() {
    let src = tempfile::tempdir().unwrap();
    write_random(&src.path().join("a.bin"), 10, 1);
    let out = xfer_command()
        .args([
            "send",
            "--manifest",
            "/nonexistent-dir/list",
            "a.bin",
            "127.0.0.1:9",
        ])
        .current_dir(src.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("error: cannot write the manifest '/nonexistent-dir/list'"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}
