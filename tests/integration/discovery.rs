//! Discovery by DNS-SD over mDNS, between two network namespaces joined by
//! a veth pair: receivers announce in one (`a`), senders and `xfer peers`
//! look from the other (`b`). Each test makes its own pair with names of
//! its own, so tests run in parallel and nothing reaches a real network;
//! [`Lan`] removes them when dropped, panics included. Without root or
//! `ip netns` the tests say why and pass without running.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;

/// Where receivers listen inside namespace `a`.
const A_IP: &str = "10.77.0.1";
/// The IPv6 link-local address of `a`'s veth end, added (as `b`'s is)
/// without duplicate detection so it is usable at once.
const A_LL: &str = "fe80::77:a";

/// Longest a send that browses may take: the 1.5 s search plus the start
/// of a debug build and a small transfer, with room for a loaded machine.
const SEND_LIMIT: Duration = Duration::from_secs(20);

/// Two namespaces and the veth pair between them; removed on drop.
struct Lan {
    /// This pair's own part of every name.
    id: String,
    a: String,
    b: String,
    /// The veth end inside `a`.
    a_if: String,
    /// A third namespace on a second link of `a`, when [`Lan::add_c`] made it.
    c: Option<String>,
}

impl Lan {
    /// Sets up a pair, or returns `None` after printing why it cannot.
    fn new() -> Option<Lan> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping: network namespaces need root");
            return None;
        }
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{}{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let lan = Lan {
            id: id.clone(),
            a: format!("xfdisc{id}a"),
            b: format!("xfdisc{id}b"),
            a_if: format!("xfd{id}a"),
            c: None,
        };
        let b_if = format!("xfd{id}b");
        if let Err(why) = ip(&["netns", "add", &lan.a]) {
            // A namespace of this name left by a killed run is not "cannot
            // do namespaces here": it would skip every test silently.
            assert!(
                !why.contains("File exists"),
                "namespace {} is left over from an earlier run: remove it with 'ip netns del {}'",
                lan.a,
                lan.a
            );
            eprintln!("skipping: 'ip netns' is unavailable: {why}");
            return None;
        }
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", &lan.b],
            vec![
                "link", "add", &lan.a_if, "type", "veth", "peer", "name", &b_if,
            ],
            vec!["link", "set", &lan.a_if, "netns", &lan.a],
            vec!["link", "set", &b_if, "netns", &lan.b],
            vec![
                "-n",
                &lan.a,
                "addr",
                "add",
                "10.77.0.1/24",
                "dev",
                &lan.a_if,
            ],
            vec!["-n", &lan.b, "addr", "add", "10.77.0.2/24", "dev", &b_if],
            vec![
                "-n",
                &lan.a,
                "-6",
                "addr",
                "add",
                "fe80::77:a/64",
                "dev",
                &lan.a_if,
                "nodad",
            ],
            vec![
                "-n",
                &lan.b,
                "-6",
                "addr",
                "add",
                "fe80::77:b/64",
                "dev",
                &b_if,
                "nodad",
            ],
            vec!["-n", &lan.a, "link", "set", "lo", "up"],
            vec!["-n", &lan.b, "link", "set", "lo", "up"],
            vec![
                "-n",
                &lan.a,
                "link",
                "set",
                &lan.a_if,
                "up",
                "multicast",
                "on",
            ],
            vec!["-n", &lan.b, "link", "set", &b_if, "up", "multicast", "on"],
        ];
        for step in steps {
            if let Err(why) = ip(&step) {
                panic!("setting up the test namespaces: ip {step:?}: {why}");
            }
        }
        Some(lan)
    }

    /// `xfer ARGS` inside namespace `ns`.
    fn xfer(&self, ns: &str, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_xfer")])
            .args(args)
            .env("XFER_CACHE_DIR", test_cache_dir())
            .env_remove("XFER_CODE");
        command
    }

    /// Starts `xfer recv --json` in `a` with `args`; returns it once it
    /// listens, with its port.
    fn recv(&self, dir: &Path, args: &[&str], code: Option<&str>) -> (XferProcess, u16) {
        let mut all = vec!["recv", "--json", "--dir", dir.to_str().unwrap()];
        all.extend_from_slice(args);
        self.listener(&all, code)
    }

    /// Starts `xfer serve --json --listen 0.0.0.0:0` in `a` offering
    /// `paths`, with `args`; returns it once it listens, with its port.
    fn serve(&self, paths: &[&Path], args: &[&str], code: Option<&str>) -> (XferProcess, u16) {
        let mut all = vec!["serve", "--json", "--listen", "0.0.0.0:0"];
        all.extend_from_slice(args);
        all.push("--");
        all.extend(paths.iter().map(|p| p.to_str().unwrap()));
        self.listener(&all, code)
    }

    /// Starts `xfer ARGS` (a `--json` listener) in `a`; returns it once it
    /// listens, with its port.
    fn listener(&self, all: &[&str], code: Option<&str>) -> (XferProcess, u16) {
        let mut command = self.xfer(&self.a, all);
        if let Some(code) = code {
            command.env("XFER_CODE", code);
        }
        let mut process = XferProcess::start(command, Stdio::null());
        let line = process.next_line().expect("no listening event");
        let event: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(event["event"], "listening", "{line}");
        let port = event["addr"].as_str().unwrap().rsplit(':').next().unwrap();
        (process, port.parse().unwrap())
    }

    /// Runs `xfer ARGS` in `b` to its end, within `limit`.
    fn run_in_b(
        &self,
        args: &[&str],
        code: Option<&str>,
        limit: Duration,
    ) -> (i32, String, String) {
        let mut command = self.xfer(&self.b, args);
        if let Some(code) = code {
            command.env("XFER_CODE", code);
        }
        let started = Instant::now();
        let out = bounded_output(command, b"", limit);
        assert!(started.elapsed() < limit, "xfer {args:?} took too long");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `xfer peers --json` from `b`: the peers' events, after checking the
    /// stream ends with one `browsed`.
    fn peers(&self, wait: &str) -> Vec<Value> {
        let (code, out, err) =
            self.run_in_b(&["peers", "--json", "--wait", wait], None, SEND_LIMIT);
        assert_eq!(code, 0, "{err}");
        let mut events: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let end = events.pop().expect("no events");
        assert_eq!(end["event"], "browsed", "{out}");
        assert_eq!(end["found"], events.len(), "{out}");
        events
    }

    /// Waits until `b` sees peers named `names` announced (bounded).
    fn wait_announced(&self, names: &[&str]) {
        for _ in 0..10 {
            let seen = self.peers("1.5");
            if names.iter().all(|n| seen.iter().any(|p| p["name"] == *n)) {
                return;
            }
        }
        panic!("{names:?} never announced");
    }
}

impl Lan {
    /// Runs `xfer LINE` (a shell command line) in `b` on a terminal of its
    /// own, with `typed` typed ahead (the terminal keeps it until it is
    /// read), within the limit; returns its exit code and the screen.
    fn on_terminal_in_b(&self, line: &str, typed: &[u8]) -> (Option<i32>, String) {
        let line = format!("{} {line}", env!("CARGO_BIN_EXE_xfer"));
        let mut command = Command::new("ip");
        command
            .args([
                "netns",
                "exec",
                &self.b,
                "script",
                "-qefc",
                &line,
                "/dev/null",
            ])
            .env("XFER_CACHE_DIR", test_cache_dir())
            .env_remove("XFER_CODE");
        let out = bounded_output(command, typed, SEND_LIMIT);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// Gives namespace `b` an /etc/hosts of its own (`ip netns exec`
    /// mounts /etc/netns/NS/hosts over /etc/hosts); removed on drop.
    fn hosts_in_b(&self, lines: &str) {
        let dir = Path::new("/etc/netns").join(&self.b);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hosts"), lines).unwrap();
    }
}

impl Lan {
    /// Adds namespace `c`, joined to `a` by a second veth pair on another
    /// subnet (10.78.0.0/24: `a` is .1, `c` is .2).
    fn add_c(&mut self) {
        let id = &self.id;
        let (c, a2, c2) = (
            format!("xfdisc{id}c"),
            format!("xfd{id}a2"),
            format!("xfd{id}c"),
        );
        ip(&["netns", "add", &c]).unwrap();
        self.c = Some(c.clone());
        let steps: Vec<Vec<&str>> = vec![
            vec!["link", "add", &a2, "type", "veth", "peer", "name", &c2],
            vec!["link", "set", &a2, "netns", &self.a],
            vec!["link", "set", &c2, "netns", &c],
            vec!["-n", &self.a, "addr", "add", "10.78.0.1/24", "dev", &a2],
            vec!["-n", &c, "addr", "add", "10.78.0.2/24", "dev", &c2],
            vec!["-n", &c, "link", "set", "lo", "up"],
            vec!["-n", &self.a, "link", "set", &a2, "up", "multicast", "on"],
            vec!["-n", &c, "link", "set", &c2, "up", "multicast", "on"],
        ];
        for step in steps {
            if let Err(why) = ip(&step) {
                panic!("setting up the third namespace: ip {step:?}: {why}");
            }
        }
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        if let Some(c) = &self.c {
            let _ = ip(&["netns", "del", c]);
        }
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&self.b));
        // Deleting a namespace deletes the veth end inside it, and so both.
        let _ = ip(&["netns", "del", &self.a]);
        let _ = ip(&["netns", "del", &self.b]);
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// Runs `command` with `input` on its stdin, killing it if it outlives
/// `limit`.
fn bounded_output(mut command: Command, input: &[u8], limit: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Dropped after writing, so the child sees the end of its input.
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), input).unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn two_codes() -> (String, String) {
    let first = xfer::code::Code::generate();
    loop {
        let second = xfer::code::Code::generate();
        if second.number() != first.number() {
            return (first.to_string(), second.to_string());
        }
    }
}

fn stop(recv: XferProcess) {
    recv.signal(libc::SIGTERM);
    let (status, stderr) = recv.wait(Duration::from_secs(10));
    assert!(status.success(), "{stderr}");
}

#[test]
fn a_send_without_an_address_finds_the_one_receiver() {
    let Some(lan) = Lan::new() else { return };
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("found.bin");
    let data = write_random(&file, 100_000, 31);
    let (recv, port) = lan.recv(
        dst.path(),
        &["--listen", "0.0.0.0:0", "--name", "alpha"],
        None,
    );
    lan.wait_announced(&["alpha"]);

    let (code, _, err) = lan.run_in_b(&["send", file.to_str().unwrap()], None, SEND_LIMIT);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(dst.path().join("found.bin")).unwrap(), data);
    assert!(
        err.contains(&format!(
            "sending to 'alpha' at {A_IP}:{port} (found on the LAN)"
        )),
        "{err}"
    );
    assert!(err.contains("(1.5 s)"), "the bound is stated: {err}");
    assert_eq!(err.matches("not authenticated").count(), 1, "{err}");
    stop(recv);
}

#[test]
fn two_receivers_are_listed_and_the_send_stops_with_exit_2() {
    let Some(lan) = Lan::new() else { return };
    let src = tempfile::tempdir().unwrap();
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("a.txt");
    std::fs::write(&file, "a").unwrap();
    let (alpha, alpha_port) = lan.recv(
        one.path(),
        &["--listen", "0.0.0.0:0", "--name", "alpha"],
        None,
    );
    let (beta, beta_port) = lan.recv(
        two.path(),
        &["--listen", "0.0.0.0:0", "--name", "beta"],
        None,
    );
    lan.wait_announced(&["alpha", "beta"]);

    let (code, _, err) = lan.run_in_b(&["send", file.to_str().unwrap()], None, SEND_LIMIT);
    assert_eq!(code, 2, "{err}");
    for (name, port) in [("alpha", alpha_port), ("beta", beta_port)] {
        let row = err
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("{name} not listed: {err}"));
        assert!(row.contains(&format!("{A_IP}:{port}")), "{row}");
        assert!(row.trim_end().ends_with("no"), "code column: {row}");
    }
    let last = err.lines().last().unwrap();
    assert!(
        last.starts_with("error: 2 receivers found") && last.contains("--to NAME"),
        "{err}"
    );
    assert!(std::fs::read_dir(one.path()).unwrap().next().is_none());
    assert!(std::fs::read_dir(two.path()).unwrap().next().is_none());
    stop(alpha);
    stop(beta);
}

#[test]
fn to_name_sends_to_that_receiver() {
    let Some(lan) = Lan::new() else { return };
    let src = tempfile::tempdir().unwrap();
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("for-beta.txt");
    std::fs::write(&file, "b").unwrap();
    let (alpha, _) = lan.recv(
        one.path(),
        &["--listen", "0.0.0.0:0", "--name", "alpha"],
        None,
    );
    let (beta, _) = lan.recv(
        two.path(),
        &["--listen", "0.0.0.0:0", "--name", "Beta Box"],
        None,
    );
    lan.wait_announced(&["alpha", "Beta Box"]);

    let (code, _, err) = lan.run_in_b(
        &["send", "--to", "beta box", file.to_str().unwrap()],
        None,
        SEND_LIMIT,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read(two.path().join("for-beta.txt")).unwrap(),
        b"b"
    );
    assert!(std::fs::read_dir(one.path()).unwrap().next().is_none());
    assert!(err.contains("sending to 'Beta Box'"), "{err}");

    let (code, _, err) = lan.run_in_b(
        &["send", "--to", "gamma", file.to_str().unwrap()],
        None,
        SEND_LIMIT,
    );
    assert_eq!(code, 3, "{err}");
    let last = err.lines().last().unwrap();
    assert!(
        last.starts_with("error: no receiver named 'gamma'") && last.contains("'alpha'"),
        "{err}"
    );
    stop(alpha);
    stop(beta);
}

#[test]
fn the_codes_number_picks_the_receiver_holding_that_code() {
    let Some(lan) = Lan::new() else { return };
    let src = tempfile::tempdir().unwrap();
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("sealed.bin");
    let data = write_random(&file, 50_000, 32);
    let (first, second) = two_codes();
    let coded = ["--listen", "0.0.0.0:0", "--code"];
    let (alpha, _) = lan.recv(
        one.path(),
        &[&coded[..], &["--name", "alpha"]].concat(),
        Some(&first),
    );
    let (beta, beta_port) = lan.recv(
        two.path(),
        &[&coded[..], &["--name", "beta"]].concat(),
        Some(&second),
    );
    lan.wait_announced(&["alpha", "beta"]);

    let (code, _, err) = lan.run_in_b(
        &["send", "--code", file.to_str().unwrap()],
        Some(&second),
        SEND_LIMIT,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(two.path().join("sealed.bin")).unwrap(), data);
    assert!(std::fs::read_dir(one.path()).unwrap().next().is_none());
    assert!(
        err.contains(&format!("'beta' at {A_IP}:{beta_port}")),
        "{err}"
    );
    // The PAKE authenticates a coded receiver: no warning.
    assert!(!err.contains("not authenticated"), "{err}");

    // Without a code, neither will do: both require one.
    let (code, _, err) = lan.run_in_b(&["send", file.to_str().unwrap()], None, SEND_LIMIT);
    assert_eq!(code, 5, "{err}");
    assert!(
        err.contains("every receiver found requires a code"),
        "{err}"
    );
    stop(alpha);
    stop(beta);
}

#[test]
fn no_receiver_is_an_error_within_the_bound() {
    let Some(lan) = Lan::new() else { return };
    let src = tempfile::tempdir().unwrap();
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("a.txt");
    std::fs::write(&file, "a").unwrap();
    // Neither of these announces: one listens on loopback only, one was
    // asked not to.
    let (looped, _) = lan.recv(
        one.path(),
        &["--listen", "127.0.0.1:0", "--name", "alpha"],
        None,
    );
    let (silent, _) = lan.recv(
        two.path(),
        &["--listen", "0.0.0.0:0", "--name", "beta", "--no-announce"],
        None,
    );

    let started = Instant::now();
    let (code, _, err) = lan.run_in_b(&["send", file.to_str().unwrap()], None, SEND_LIMIT);
    let took = started.elapsed();
    assert_eq!(code, 3, "{err}");
    let last = err.lines().last().unwrap();
    assert!(
        last.starts_with("error: no xfer receiver answered on the LAN within 1.5 s"),
        "{err}"
    );
    for hint in [
        "xfer send PATH... HOST:PORT",
        "firewall",
        "client isolation",
        "VLAN",
    ] {
        assert!(last.contains(hint), "{hint}: {err}");
    }
    // The search is bounded: 1.5 s, and never as long as the limit.
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    assert!(lan.peers("1.5").is_empty());
    stop(looped);
    stop(silent);
}

#[test]
fn the_announcement_goes_when_the_receiver_exits() {
    let Some(lan) = Lan::new() else { return };
    let dst = tempfile::tempdir().unwrap();
    let (recv, _) = lan.recv(
        dst.path(),
        &["--listen", "0.0.0.0:0", "--name", "alpha"],
        None,
    );
    lan.wait_announced(&["alpha"]);

    // A browser that saw it, still browsing when the receiver stops, hears
    // the goodbye and drops it.
    let watcher = std::thread::spawn({
        let command = lan.xfer(&lan.b, &["peers", "--json", "--wait", "7"]);
        move || bounded_output(command, b"", SEND_LIMIT)
    });
    std::thread::sleep(Duration::from_secs(3));
    stop(recv);
    let out = watcher.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        !stdout.contains("\"alpha\""),
        "still listed after goodbye: {stdout}"
    );
    assert!(stdout.contains("\"found\":0"), "{stdout}");
    assert!(lan.peers("1.5").is_empty());
}

#[test]
fn a_receiver_killed_without_goodbye_is_still_listed_by_a_browser_that_saw_it() {
    // The contrast to the test above: without the goodbye a browser keeps
    // the records for their lifetime, so that test cannot pass by luck.
    let Some(lan) = Lan::new() else { return };
    let dst = tempfile::tempdir().unwrap();
    let (mut recv, _) = lan.recv(
        dst.path(),
        &["--listen", "0.0.0.0:0", "--name", "alpha"],
        None,
    );
    lan.wait_announced(&["alpha"]);
    let watcher = std::thread::spawn({
        let command = lan.xfer(&lan.b, &["peers", "--json", "--wait", "7"]);
        move || bounded_output(command, b"", SEND_LIMIT)
    });
    std::thread::sleep(Duration::from_secs(3));
    recv.child.kill().unwrap();
    recv.child.wait().unwrap();
    let out = watcher.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("\"name\":\"alpha\""), "{stdout}");
}

#[test]
fn a_receiver_on_ipv6_link_local_only_is_found_with_its_scope() {
    let Some(lan) = Lan::new() else { return };
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("ll.txt");
    std::fs::write(&file, "link-local").unwrap();
    let index = if_index(&lan.a, &lan.a_if);
    let listen = format!("[{A_LL}%{index}]:0");
    let (recv, port) = lan.recv(dst.path(), &["--listen", &listen, "--name", "ll"], None);
    lan.wait_announced(&["ll"]);
    let seen = lan.peers("1.5");
    let addrs: Vec<&str> = seen[0]["addrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    // Only the address it listens on, scoped to b's end of the veth.
    assert_eq!(addrs.len(), 1, "{addrs:?}");
    assert!(addrs[0].starts_with(&format!("[{A_LL}%")), "{addrs:?}");
    assert!(addrs[0].ends_with(&format!("]:{port}")), "{addrs:?}");

    let (code, _, err) = lan.run_in_b(
        &["send", "--to", "ll", file.to_str().unwrap()],
        None,
        SEND_LIMIT,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read(dst.path().join("ll.txt")).unwrap(),
        b"link-local"
    );
    stop(recv);
}

fn if_index(ns: &str, name: &str) -> u32 {
    let out = Command::new("ip")
        .args(["-n", ns, "-o", "link", "show", "dev", name])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split(':').next().unwrap().trim().parse().unwrap()
}

#[test]
fn peers_json_fits_the_schema_and_ends_with_one_browsed() {
    let Some(lan) = Lan::new() else { return };
    let schema = crate::events::schema();
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (first, _) = two_codes();
    let (alpha, alpha_port) = lan.recv(
        one.path(),
        &["--listen", "0.0.0.0:0", "--name", "alpha"],
        None,
    );
    let (beta, _) = lan.recv(
        two.path(),
        &["--listen", "0.0.0.0:0", "--name", "beta", "--code"],
        Some(&first),
    );
    lan.wait_announced(&["alpha", "beta"]);

    let (code, out, err) = lan.run_in_b(&["peers", "--json", "--wait", "1.5"], None, SEND_LIMIT);
    assert_eq!(code, 0, "{err}");
    let events: Vec<Value> = out
        .lines()
        .map(|l| crate::events::check(&schema, l))
        .collect();
    assert_eq!(events.iter().filter(|e| e["event"] == "browsed").count(), 1);
    assert_eq!(events.last().unwrap()["event"], "browsed", "{out}");
    assert_eq!(events.last().unwrap()["exit_code"], 0);
    let alpha_event = events.iter().find(|e| e["name"] == "alpha").unwrap();
    assert_eq!(alpha_event["addr"], format!("{A_IP}:{alpha_port}"));
    assert_eq!(alpha_event["role"], "recv");
    assert_eq!(alpha_event["code_required"], false);
    let beta_event = events.iter().find(|e| e["name"] == "beta").unwrap();
    assert_eq!(beta_event["code_required"], true);
    let number: u64 = first.split('-').next().unwrap().parse().unwrap();
    assert_eq!(beta_event["code_number"], number);

    // A send that finds nobody still ends its --json stream with one summary.
    stop(alpha);
    stop(beta);
    let file = tempfile::NamedTempFile::new().unwrap();
    let (code, out, _) = lan.run_in_b(
        &["send", "--json", "--quiet", file.path().to_str().unwrap()],
        None,
        SEND_LIMIT,
    );
    assert_eq!(code, 3);
    let events: Vec<Value> = out
        .lines()
        .map(|l| crate::events::check(&schema, l))
        .collect();
    assert_eq!(events.len(), 1, "{out}");
    assert_eq!(events[0]["event"], "summary");
    assert_eq!(events[0]["exit_code"], 3);
}

#[test]
fn on_a_terminal_several_receivers_are_offered_by_number() {
    let Some(lan) = Lan::new() else { return };
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipping: util-linux 'script' is needed for a terminal");
        return;
    }
    let src = tempfile::tempdir().unwrap();
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("picked.txt");
    std::fs::write(&file, "picked").unwrap();
    let (alpha, _) = lan.recv(
        one.path(),
        &["--listen", "0.0.0.0:0", "--name", "alpha"],
        None,
    );
    let (beta, _) = lan.recv(
        two.path(),
        &["--listen", "0.0.0.0:0", "--name", "beta"],
        None,
    );
    lan.wait_announced(&["alpha", "beta"]);

    let line = format!("send '{}'", file.display());
    let (status, screen) = lan.on_terminal_in_b(&line, b"2\n");
    assert_eq!(status, Some(0), "{screen}");
    assert!(
        screen.contains("  1) alpha") && screen.contains("  2) beta"),
        "{screen}"
    );
    assert!(screen.contains("send to which receiver? [1-2"), "{screen}");
    assert_eq!(
        std::fs::read(two.path().join("picked.txt")).unwrap(),
        b"picked"
    );
    assert!(std::fs::read_dir(one.path()).unwrap().next().is_none());
    stop(alpha);
    stop(beta);
}

/// A UDP socket on the mDNS port inside namespace `ns`, in the mDNS group
/// on the interface with `ip`: it hears every query on that link.
fn mdns_ear(ns: &str, ip: &str) -> std::net::UdpSocket {
    let path = format!("/run/netns/{ns}");
    let ip: std::net::Ipv4Addr = ip.parse().unwrap();
    // A thread of its own enters the namespace; the socket stays there.
    std::thread::spawn(move || {
        let netns = std::fs::File::open(&path).unwrap();
        // SAFETY: setns(2) on a valid namespace fd changes only this
        // thread's network namespace; the thread ends right after.
        let entered =
            unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&netns), libc::CLONE_NEWNET) };
        assert_eq!(entered, 0, "setns: {}", std::io::Error::last_os_error());
        let socket = std::net::UdpSocket::bind("0.0.0.0:5353").unwrap();
        socket
            .join_multicast_v4(&"224.0.0.251".parse().unwrap(), &ip)
            .unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        socket
    })
    .join()
    .unwrap()
}

#[test]
fn a_send_to_an_address_sends_nothing_for_discovery() {
    let Some(lan) = Lan::new() else { return };
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("direct.txt");
    std::fs::write(&file, "direct").unwrap();
    // Not announced, so nothing in `a` uses the mDNS port but the ear.
    let (recv, port) = lan.recv(
        dst.path(),
        &["--listen", "0.0.0.0:0", "--no-announce"],
        None,
    );
    let ear = mdns_ear(&lan.a, A_IP);
    let mut packet = [0u8; 9000];

    let addr = format!("{A_IP}:{port}");
    let (code, _, err) = lan.run_in_b(&["send", file.to_str().unwrap(), &addr], None, SEND_LIMIT);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("not authenticated"), "{err}");
    let heard = ear.recv_from(&mut packet);
    assert!(
        heard.is_err(),
        "mDNS traffic from a send to an address: {heard:?}"
    );

    // The ear works: a send without an address is heard asking.
    let (code, _, err) = lan.run_in_b(&["send", file.to_str().unwrap()], None, SEND_LIMIT);
    assert_eq!(code, 3, "{err}");
    let (len, from) = ear
        .recv_from(&mut packet)
        .expect("the browse was not heard");
    assert!(len > 12, "{len} bytes");
    assert_eq!(from.ip().to_string(), "10.77.0.2");
    stop(recv);
}

#[test]
fn to_takes_a_dot_local_name_the_system_resolves() {
    let Some(lan) = Lan::new() else { return };
    lan.hosts_in_b(&format!("127.0.0.1 localhost\n{A_IP} den.local\n"));
    let src = tempfile::tempdir().unwrap();
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("named.txt");
    std::fs::write(&file, "named").unwrap();
    let (silent, silent_port) = lan.recv(
        one.path(),
        &["--listen", "0.0.0.0:0", "--no-announce"],
        None,
    );

    // Nothing announced: the name and the port given are used.
    let to = format!("den.local:{silent_port}");
    let (code, _, err) = lan.run_in_b(
        &["send", "--to", &to, file.to_str().unwrap()],
        None,
        SEND_LIMIT,
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("resolved by the system"), "{err}");
    assert_eq!(
        std::fs::read(one.path().join("named.txt")).unwrap(),
        b"named"
    );

    // No port given: the port a receiver announced at that address.
    let (alpha, _) = lan.recv(
        two.path(),
        &["--listen", "0.0.0.0:0", "--name", "alpha"],
        None,
    );
    lan.wait_announced(&["alpha"]);
    let (code, _, err) = lan.run_in_b(
        &["send", "--to", "den.local", file.to_str().unwrap()],
        None,
        SEND_LIMIT,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read(two.path().join("named.txt")).unwrap(),
        b"named"
    );
    stop(alpha);
    stop(silent);
}

#[test]
fn a_name_already_taken_on_the_lan_is_renamed_and_the_receiver_says_so() {
    let Some(lan) = Lan::new() else { return };
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (first, _) = lan.recv(
        one.path(),
        &["--listen", "0.0.0.0:0", "--name", "alpha"],
        None,
    );
    lan.wait_announced(&["alpha"]);
    let (second, second_port) = lan.recv(
        two.path(),
        &["--listen", "0.0.0.0:0", "--name", "alpha"],
        None,
    );
    lan.wait_announced(&["alpha", "alpha (2)"]);
    let seen = lan.peers("1.5");
    let renamed = seen.iter().find(|p| p["name"] == "alpha (2)").unwrap();
    assert_eq!(renamed["port"], second_port);

    second.signal(libc::SIGTERM);
    let (status, stderr) = second.wait(Duration::from_secs(10));
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("the name 'alpha' is taken on the LAN") && stderr.contains("'alpha (2)'"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("is taken on the LAN").count(),
        1,
        "said once on the one link: {stderr}"
    );
    stop(first);
}

#[test]
fn a_receiver_on_two_links_is_announced_on_each_with_that_links_address() {
    let Some(mut lan) = Lan::new() else { return };
    lan.add_c();
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("two-links.txt");
    std::fs::write(&file, "both").unwrap();
    let (recv, port) = lan.recv(
        dst.path(),
        &["--listen", "0.0.0.0:0", "--name", "hub"],
        None,
    );
    lan.wait_announced(&["hub"]);

    // From b: only the address on b's link, which b can reach.
    let seen = lan.peers("1.5");
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0]["addrs"],
        serde_json::json!([format!("{A_IP}:{port}")])
    );

    // From c, the other link: its own address, and a send gets through.
    let c = lan.c.clone().unwrap();
    let mut command = lan.xfer(&c, &["send", file.to_str().unwrap()]);
    command.env_remove("XFER_CODE");
    let out = bounded_output(command, b"", SEND_LIMIT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains(&format!("'hub' at 10.78.0.1:{port}")), "{err}");
    assert_eq!(
        std::fs::read(dst.path().join("two-links.txt")).unwrap(),
        b"both"
    );
    stop(recv);
}

#[test]
fn ctrl_c_at_the_numbered_choice_stops_the_send_at_once() {
    let Some(lan) = Lan::new() else { return };
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipping: util-linux 'script' is needed for a terminal");
        return;
    }
    let src = tempfile::tempdir().unwrap();
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("kept.txt");
    std::fs::write(&file, "kept").unwrap();
    let (alpha, _) = lan.recv(
        one.path(),
        &["--listen", "0.0.0.0:0", "--name", "alpha"],
        None,
    );
    let (beta, _) = lan.recv(
        two.path(),
        &["--listen", "0.0.0.0:0", "--name", "beta"],
        None,
    );
    lan.wait_announced(&["alpha", "beta"]);

    // Ctrl-C typed once the prompt shows: the terminal makes it SIGINT.
    let line = format!("{} send '{}'", env!("CARGO_BIN_EXE_xfer"), file.display());
    let mut command = Command::new("ip");
    command
        .args([
            "netns",
            "exec",
            &lan.b,
            "script",
            "-qefc",
            &line,
            "/dev/null",
        ])
        .env("XFER_CACHE_DIR", test_cache_dir());
    let (status, screen, typed) =
        type_at_prompt(command, "send to which receiver?", b"\x03", SEND_LIMIT);
    assert!(typed, "no prompt: {screen}");
    assert_eq!(status.code(), Some(130), "{screen}");
    assert!(screen.contains("error: interrupted"), "{screen}");
    assert!(std::fs::read_dir(one.path()).unwrap().next().is_none());
    assert!(std::fs::read_dir(two.path()).unwrap().next().is_none());
    stop(alpha);
    stop(beta);
}

/// A directory `shelf` of a few files (one empty, one nested) under a new
/// temporary directory, for a server to offer.
fn shelf(seed: u64) -> (tempfile::TempDir, std::path::PathBuf) {
    let src = tempfile::tempdir().unwrap();
    let shelf = src.path().join("shelf");
    write_random(&shelf.join("big.bin"), 300_000, seed);
    write_random(&shelf.join("nested/deep.txt"), 1_000, seed + 1);
    std::fs::write(shelf.join("empty"), b"").unwrap();
    (src, shelf)
}

fn is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().next().is_none()
}

#[test]
fn a_get_without_an_address_fetches_everything_from_the_one_server() {
    let Some(lan) = Lan::new() else { return };
    let (src, offered) = shelf(41);
    let dst = tempfile::tempdir().unwrap();
    let (server, port) = lan.serve(&[&offered], &["--name", "shelf", "--once"], None);
    lan.wait_announced(&["shelf"]);
    // A browser that saw the server, still browsing when `--once` ends
    // it, hears the goodbye.
    let watcher = std::thread::spawn({
        let command = lan.xfer(&lan.b, &["peers", "--json", "--wait", "6"]);
        move || bounded_output(command, b"", SEND_LIMIT)
    });

    let (code, _, err) = lan.run_in_b(
        &["get", "--dir", dst.path().to_str().unwrap()],
        None,
        SEND_LIMIT,
    );
    assert_eq!(code, 0, "{err}");
    assert_same_tree(src.path(), dst.path());
    assert!(
        err.contains("looking for servers on the LAN (1.5 s)"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "getting from 'shelf' at {A_IP}:{port} (found on the LAN)"
        )),
        "{err}"
    );
    assert_eq!(err.matches("not authenticated").count(), 1, "{err}");
    assert!(err.contains("a server found on the LAN"), "{err}");

    let (status, stderr) = server.wait(Duration::from_secs(10));
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("announced on the LAN as 'shelf' (xfer get finds it"),
        "{stderr}"
    );
    let out = watcher.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        !stdout.contains("\"shelf\""),
        "still listed after goodbye: {stdout}"
    );
}

#[test]
fn send_finds_the_receiver_and_get_the_server_when_both_are_announced() {
    let Some(lan) = Lan::new() else { return };
    let (_src, offered) = shelf(42);
    let (inbox, fetched) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pushed = tempfile::tempdir().unwrap();
    let file = pushed.path().join("pushed.txt");
    std::fs::write(&file, "pushed").unwrap();
    let (recv, recv_port) = lan.recv(
        inbox.path(),
        &["--listen", "0.0.0.0:0", "--name", "inbox"],
        None,
    );
    let (server, serve_port) = lan.serve(&[&offered], &["--name", "shelf"], None);
    lan.wait_announced(&["inbox", "shelf"]);

    // `xfer peers` lists both, each with its role.
    let seen = lan.peers("1.5");
    let role_of = |name: &str| {
        let peer = seen.iter().find(|p| p["name"] == name).unwrap();
        (
            peer["role"].as_str().unwrap().to_owned(),
            peer["port"].clone(),
        )
    };
    assert_eq!(role_of("inbox"), ("recv".to_owned(), recv_port.into()));
    assert_eq!(role_of("shelf"), ("serve".to_owned(), serve_port.into()));

    // Each finds its one peer of the right role: no "several found".
    let (code, _, err) = lan.run_in_b(&["send", file.to_str().unwrap()], None, SEND_LIMIT);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("sending to 'inbox'"), "{err}");
    assert_eq!(
        std::fs::read(inbox.path().join("pushed.txt")).unwrap(),
        b"pushed"
    );
    let (code, _, err) = lan.run_in_b(
        &["get", "--dir", fetched.path().to_str().unwrap()],
        None,
        SEND_LIMIT,
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("getting from 'shelf'"), "{err}");
    assert_same_tree(offered.parent().unwrap(), fetched.path());
    // A name of the other role is not found: --to looks at one role only.
    let (code, _, err) = lan.run_in_b(
        &[
            "get",
            "--to",
            "inbox",
            "--dir",
            fetched.path().to_str().unwrap(),
        ],
        None,
        SEND_LIMIT,
    );
    assert_eq!(code, 3, "{err}");
    assert!(
        err.lines()
            .last()
            .unwrap()
            .starts_with("error: no server named 'inbox' answered"),
        "{err}"
    );
    stop(recv);
    stop(server);
}

#[test]
fn get_to_name_picks_that_server_of_several() {
    let Some(lan) = Lan::new() else { return };
    let (_one_src, one) = shelf(43);
    let (_two_src, two) = shelf(44);
    let dst = tempfile::tempdir().unwrap();
    let dir = dst.path().to_str().unwrap();
    let (alpha, alpha_port) = lan.serve(&[&one], &["--name", "alpha"], None);
    let (beta, beta_port) = lan.serve(&[&two], &["--name", "Beta Box"], None);
    lan.wait_announced(&["alpha", "Beta Box"]);

    // Two servers: listed, exit 2, nothing fetched.
    let (code, _, err) = lan.run_in_b(&["get", "--dir", dir], None, SEND_LIMIT);
    assert_eq!(code, 2, "{err}");
    for (name, port) in [("alpha", alpha_port), ("Beta Box", beta_port)] {
        let row = err
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("{name} not listed: {err}"));
        assert!(row.contains(&format!("{A_IP}:{port}")), "{row}");
        assert!(row.contains("serve"), "role column: {row}");
    }
    let last = err.lines().last().unwrap();
    assert!(
        last.starts_with("error: 2 servers found on the LAN")
            && last.contains("--to NAME")
            && last.contains("xfer get ADDR"),
        "{err}"
    );
    assert!(is_empty(dst.path()));

    let (code, _, err) = lan.run_in_b(&["get", "--to", "beta box", "--dir", dir], None, SEND_LIMIT);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("getting from 'Beta Box'"), "{err}");
    assert_same_tree(two.parent().unwrap(), dst.path());
    stop(alpha);
    stop(beta);
}

#[test]
fn the_codes_number_picks_the_server_holding_that_code() {
    let Some(lan) = Lan::new() else { return };
    let (_one_src, one) = shelf(45);
    let (_two_src, two) = shelf(46);
    let dst = tempfile::tempdir().unwrap();
    let (first, second) = two_codes();
    let (alpha, _) = lan.serve(&[&one], &["--name", "alpha", "--code"], Some(&first));
    let (beta, beta_port) = lan.serve(&[&two], &["--name", "beta", "--code"], Some(&second));
    lan.wait_announced(&["alpha", "beta"]);
    let number: u64 = second.split('-').next().unwrap().parse().unwrap();
    let beta_seen = lan
        .peers("1.5")
        .into_iter()
        .find(|p| p["name"] == "beta")
        .unwrap();
    assert_eq!(beta_seen["code_number"], number);

    let (code, _, err) = lan.run_in_b(
        &["get", "--code", "--dir", dst.path().to_str().unwrap()],
        Some(&second),
        SEND_LIMIT,
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!("'beta' at {A_IP}:{beta_port}")),
        "{err}"
    );
    assert!(!err.contains("not authenticated"), "{err}");
    assert_same_tree(two.parent().unwrap(), dst.path());
    stop(alpha);
    stop(beta);
}

#[test]
fn no_server_is_an_error_within_the_bound_and_json_ends_with_one_session() {
    let Some(lan) = Lan::new() else { return };
    let (_src, offered) = shelf(47);
    let (inbox, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // A receiver is announced, but it is no server; the server listens on
    // loopback only, so it is not announced.
    let (recv, _) = lan.recv(
        inbox.path(),
        &["--listen", "0.0.0.0:0", "--name", "inbox"],
        None,
    );
    let mut looped = vec![
        "serve",
        "--json",
        "--listen",
        "127.0.0.1:0",
        "--name",
        "shelf",
    ];
    looped.push(offered.to_str().unwrap());
    let (server, _) = lan.listener(&looped, None);
    lan.wait_announced(&["inbox"]);

    let started = Instant::now();
    let (code, _, err) = lan.run_in_b(
        &["get", "--dir", dst.path().to_str().unwrap()],
        None,
        SEND_LIMIT,
    );
    let took = started.elapsed();
    assert_eq!(code, 3, "{err}");
    let last = err.lines().last().unwrap();
    assert!(
        last.starts_with("error: no xfer server answered on the LAN within 1.5 s"),
        "{err}"
    );
    for hint in [
        "xfer get HOST:PORT",
        "as 'xfer serve' prints it",
        "firewall",
        "client isolation",
        "VLAN",
    ] {
        assert!(last.contains(hint), "{hint}: {err}");
    }
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    assert!(is_empty(dst.path()));
    assert!(!lan.peers("1.5").iter().any(|p| p["name"] == "shelf"));

    let schema = crate::events::schema();
    let (code, out, _) = lan.run_in_b(
        &[
            "get",
            "--json",
            "--quiet",
            "--dir",
            dst.path().to_str().unwrap(),
        ],
        None,
        SEND_LIMIT,
    );
    assert_eq!(code, 3);
    let events: Vec<Value> = out
        .lines()
        .map(|l| crate::events::check(&schema, l))
        .collect();
    assert_eq!(events.len(), 1, "{out}");
    assert_eq!(events[0]["event"], "session");
    assert_eq!(events[0]["ok"], false);
    assert_eq!(events[0]["peer"], "");
    let error = events[0]["error"].as_str().unwrap();
    assert!(error.starts_with("no xfer server answered"), "{error}");
    stop(recv);
    stop(server);
}

#[test]
fn a_get_from_an_address_sends_nothing_for_discovery() {
    let Some(lan) = Lan::new() else { return };
    let (src, offered) = shelf(48);
    let dst = tempfile::tempdir().unwrap();
    // Not announced, so nothing in `a` uses the mDNS port but the ear.
    let (server, port) = lan.serve(&[&offered], &["--no-announce"], None);
    let ear = mdns_ear(&lan.a, A_IP);
    let mut packet = [0u8; 9000];

    let addr = format!("{A_IP}:{port}");
    let (code, _, err) = lan.run_in_b(
        &["get", &addr, "--dir", dst.path().to_str().unwrap()],
        None,
        SEND_LIMIT,
    );
    assert_eq!(code, 0, "{err}");
    assert_same_tree(src.path(), dst.path());
    assert!(!err.contains("not authenticated"), "{err}");
    let heard = ear.recv_from(&mut packet);
    assert!(
        heard.is_err(),
        "mDNS traffic from a get from an address: {heard:?}"
    );
    stop(server);
}

#[test]
fn on_a_terminal_several_servers_are_offered_by_number() {
    let Some(lan) = Lan::new() else { return };
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipping: util-linux 'script' is needed for a terminal");
        return;
    }
    let (_one_src, one) = shelf(49);
    let (_two_src, two) = shelf(50);
    let dst = tempfile::tempdir().unwrap();
    let (alpha, _) = lan.serve(&[&one], &["--name", "alpha"], None);
    let (beta, _) = lan.serve(&[&two], &["--name", "beta"], None);
    lan.wait_announced(&["alpha", "beta"]);

    let line = format!("get --dir '{}'", dst.path().display());
    let (status, screen) = lan.on_terminal_in_b(&line, b"2\n");
    assert_eq!(status, Some(0), "{screen}");
    assert!(
        screen.contains("  1) alpha") && screen.contains("  2) beta"),
        "{screen}"
    );
    assert!(screen.contains("get from which server? [1-2"), "{screen}");
    assert!(screen.contains("getting from 'beta'"), "{screen}");
    assert_same_tree(two.parent().unwrap(), dst.path());
    stop(alpha);
    stop(beta);
}
