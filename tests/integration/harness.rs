//! The test harness shared by every integration test.
//!
//! - [`Receiver::start`] runs a real receiver in-process on `127.0.0.1:0` (or
//!   `[::1]:0`) and stops it on drop.
//! - [`send`] runs a real sender in-process against it, under [`TIMEOUT`].
//! - [`Events`] records what either side reported.
//! - [`write_random`], [`tree_listing`] and [`assert_same_tree`] make and
//!   compare test data; big inputs are generated here, never committed.
//! - [`XferProcess`] runs the built binary and kills it on drop, for tests
//!   where the command line itself is the subject or a process must die.
//! - [`Proxy`], [`RecordProxy`], [`CaptureProxy`] and [`Relay`] (in
//!   `proxies.rs`, re-exported here) sit between sender and receiver on
//!   loopback to slow, corrupt, tamper with, record or re-route a stream.
//! - [`wait_until`] polls a condition under [`TIMEOUT`].
//!
//! Every await sits under a timeout and every process is bounded and killed.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;

pub use crate::proxies::*;
use tokio_util::sync::CancellationToken;
use xfer::events::{Event, FileReport, Observer, Summary};
use xfer::receiver::{RecvConfig, ServeReport, Server};
use xfer::sender::{Destination, SendConfig};

/// Upper bound for any single step of a test.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `fut` or fails the test after [`TIMEOUT`].
pub async fn within<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(TIMEOUT, fut)
        .await
        .expect("test step timed out")
}

/// Records every event.
#[derive(Default)]
pub struct Events(Mutex<Vec<Event>>);

impl Observer for Events {
    fn event(&self, event: Event) {
        self.0.lock().unwrap().push(event);
    }
}

impl Events {
    /// Reports of files that were delivered (stored or skipped), in order.
    pub fn done(&self) -> Vec<FileReport> {
        self.finals()
            .into_iter()
            .filter(|r| r.outcome.delivered())
            .collect()
    }

    /// Every file's final report, in order.
    pub fn finals(&self) -> Vec<FileReport> {
        let events = self.0.lock().unwrap();
        events
            .iter()
            .filter_map(|e| match e {
                Event::FileDone { report, .. } => Some(report.clone()),
                _ => None,
            })
            .collect()
    }

    /// The bytes each progress report says moved since the one before (the
    /// steps bodies went out in), in order.
    pub fn progress(&self) -> Vec<u64> {
        let events = self.0.lock().unwrap();
        let mut moved = 0;
        events
            .iter()
            .filter_map(|e| match e {
                Event::Progress { meter, .. } => {
                    let step = meter.moved - moved;
                    moved = meter.moved;
                    (step > 0).then_some(step)
                }
                _ => None,
            })
            .collect()
    }

    /// (path, reason) of files that were refused or failed.
    pub fn failed(&self) -> Vec<(String, String)> {
        self.finals()
            .into_iter()
            .filter_map(|r| Some((r.path.clone(), r.outcome.reason()?.to_owned())))
            .collect()
    }

    /// Waits (under [`TIMEOUT`]) until `n` sessions have ended: a receiver
    /// reports outcomes settled at a session's end (a file damaged twice)
    /// just after the sender has heard the last word.
    pub async fn wait_for_endings(&self, n: usize) {
        within(async {
            while self.endings().len() < n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }

    /// Every session's closing summary and error, in order.
    pub fn endings(&self) -> Vec<(Summary, Option<String>)> {
        let events = self.0.lock().unwrap();
        events
            .iter()
            .filter_map(|e| match e {
                Event::SessionEnded { summary, error, .. } => Some((*summary, error.clone())),
                _ => None,
            })
            .collect()
    }

    /// Errors of sessions that ended badly (receiver side).
    pub fn session_errors(&self) -> Vec<String> {
        let events = self.0.lock().unwrap();
        events
            .iter()
            .filter_map(|e| match e {
                Event::SessionEnded { error: Some(e), .. } => Some(e.clone()),
                _ => None,
            })
            .collect()
    }

    /// Waits (under [`TIMEOUT`]) until a session has ended with an error
    /// that mentions `needle`: the server logs a reason just after it
    /// tells the peer, so a test that saw the peer's side waits for this.
    pub async fn wait_for_session_error(&self, needle: &str) {
        within(async {
            while !self.session_errors().iter().any(|e| e.contains(needle)) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }

    /// The report for the file sent as `path`.
    pub fn report(&self, path: &str) -> FileReport {
        self.done()
            .into_iter()
            .find(|r| r.path == path)
            .unwrap_or_else(|| panic!("no report for {path}"))
    }
}

/// An in-process receiver serving a temporary directory.
pub struct Receiver {
    pub addr: SocketAddr,
    pub events: Arc<Events>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<ServeReport>>>,
}

/// Receiver settings tests vary.
#[derive(Clone)]
pub struct RecvOptions {
    pub listen: SocketAddr,
    pub overwrite: bool,
    pub once: bool,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub limits: xfer::receiver::Limits,
    /// The code senders must hold (a coded receiver).
    pub code: Option<xfer::code::Code>,
    /// `--limit-rate`, bytes per second.
    pub limit_rate: Option<u64>,
}

impl Default for RecvOptions {
    fn default() -> Self {
        RecvOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            overwrite: false,
            once: false,
            idle_timeout: Duration::from_secs(10),
            max_connections: 16,
            limits: xfer::receiver::Limits::default(),
            code: None,
            limit_rate: None,
        }
    }
}

impl Receiver {
    pub async fn start(dir: &Path) -> Receiver {
        Receiver::start_with(dir, RecvOptions::default()).await
    }

    pub async fn start_with(dir: &Path, options: RecvOptions) -> Receiver {
        let config = RecvConfig {
            dir: dir.to_path_buf(),
            listen: options.listen,
            once: options.once,
            overwrite: options.overwrite,
            max_connections: options.max_connections,
            idle_timeout: options.idle_timeout,
            keep_partials: Duration::from_secs(7 * 24 * 3600),
            handshake_timeout: options.idle_timeout,
            limits: options.limits,
            code: options.code.clone(),
            limit_rate: options.limit_rate,
        };
        let listener = TcpListener::bind(options.listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let events = Arc::new(Events::default());
        let shutdown = CancellationToken::new();
        let server = Server::new(config).unwrap();
        let task = tokio::spawn(server.serve(listener, events.clone(), shutdown.clone()));
        Receiver {
            addr,
            events,
            shutdown,
            task: Some(task),
        }
    }

    /// Stops serving and returns how it went.
    pub async fn stop(mut self) -> ServeReport {
        self.shutdown.cancel();
        let task = self.task.take().unwrap();
        within(task).await.unwrap().unwrap()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Sends `paths` to `addr` in-process; returns the result and the sender's events.
pub async fn send(paths: &[&Path], addr: SocketAddr) -> (anyhow::Result<Summary>, Arc<Events>) {
    send_with(paths, addr, Duration::from_secs(10), None).await
}

/// [`send`] with an idle timeout and a digest cache file of the test's choosing.
pub async fn send_with(
    paths: &[&Path],
    addr: SocketAddr,
    idle_timeout: Duration,
    digest_cache: Option<PathBuf>,
) -> (anyhow::Result<Summary>, Arc<Events>) {
    let config = SendConfig {
        paths: paths.iter().map(|p| p.to_path_buf()).collect(),
        destination: Destination {
            host: addr.ip().to_string(),
            port: addr.port(),
            fallback: Vec::new(),
        },
        idle_timeout,
        digest_cache,
        code: None,
        limit_rate: None,
    };
    let events = Arc::new(Events::default());
    let result = within(xfer::sender::send(
        &config,
        events.clone(),
        CancellationToken::new(),
    ))
    .await;
    (result, events)
}

/// Writes `len` deterministic pseudo-random bytes (seeded) to `path`.
pub fn write_random(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut data = Vec::with_capacity(len);
    while data.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(&state.to_le_bytes());
    }
    data.truncate(len);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, &data).unwrap();
    data
}

/// Every entry under `root` (relative path → "dir" or file bytes' length and
/// content digest), hidden partial files included so leftovers show up.
pub fn tree_listing(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                out.insert(rel, "dir".into());
                walk(root, &path, out);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                out.insert(
                    rel,
                    format!(
                        "{} bytes {}",
                        bytes.len(),
                        xfer::hashing::to_hex(&xfer::hashing::digest(&bytes))
                    ),
                );
            }
        }
    }
    walk(root, root, &mut out);
    out
}

/// `a` and `b` hold the same names with the same bytes.
pub fn assert_same_tree(a: &Path, b: &Path) {
    assert_eq!(
        tree_listing(a),
        tree_listing(b),
        "{} and {} differ",
        a.display(),
        b.display()
    );
}

/// Permission bits and mtime (seconds, nanoseconds) of `path`.
pub fn mode_and_mtime(path: &Path) -> (u32, i64, i64) {
    let meta = std::fs::metadata(path).unwrap();
    (
        meta.permissions().mode() & 0o7777,
        meta.mtime(),
        meta.mtime_nsec(),
    )
}

/// The built `xfer` binary, killed when dropped.
pub struct XferProcess {
    pub child: Child,
    lines: Option<mpsc::Receiver<String>>,
}

/// A `Command` for the built binary.
pub fn xfer_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_xfer"));
    command.env("XFER_CACHE_DIR", test_cache_dir());
    command
}

/// Where the built binary keeps its digest cache during tests: a directory
/// of this test run's own, removed when the run ends, so runs never share
/// or leave behind a cache.
pub fn test_cache_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap())
        .path()
        .to_path_buf()
}

impl XferProcess {
    /// Starts `xfer ARGS` with stdout piped for [`XferProcess::next_line`].
    pub fn spawn(args: &[&str]) -> XferProcess {
        let mut command = xfer_command();
        command.args(args);
        XferProcess::start(command, Stdio::null())
    }

    /// The next stdout line, or `None` if none comes within [`TIMEOUT`].
    pub fn next_line(&mut self) -> Option<String> {
        self.lines.as_ref()?.recv_timeout(TIMEOUT).ok()
    }

    /// Starts `xfer recv ARGS` and returns it with the address it printed.
    pub fn recv(args: &[&str]) -> (XferProcess, SocketAddr) {
        let mut all = vec!["recv", "--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let mut process = XferProcess::spawn(&all);
        let line = process.next_line().expect("no 'listening on' line");
        let addr = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        (process, addr.parse().unwrap())
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
    }

    /// Waits for exit up to `limit`; returns the exit status and stderr.
    pub fn wait(mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut stderr = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    std::io::Read::read_to_string(&mut e, &mut stderr).unwrap();
                }
                return (status, stderr);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "process did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for XferProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Both halves of a hand-driven protocol peer.
pub type RawPeer = (
    xfer::protocol::FrameReader<tokio::net::tcp::OwnedReadHalf>,
    xfer::protocol::FrameWriter<tokio::net::tcp::OwnedWriteHalf>,
);

/// Wraps `stream` as a raw protocol peer and exchanges hellos on it.
pub async fn raw_peer(stream: tokio::net::TcpStream) -> RawPeer {
    let (r, w) = stream.into_split();
    let mut reader = xfer::protocol::FrameReader::new(r, "peer".into(), TIMEOUT);
    let mut writer = xfer::protocol::FrameWriter::new(w, "peer".into(), TIMEOUT);
    within(xfer::protocol::handshake(&mut reader, &mut writer))
        .await
        .unwrap();
    (reader, writer)
}

/// Connects to `addr` as a raw protocol peer, hellos exchanged.
pub async fn raw_connect(addr: SocketAddr) -> RawPeer {
    raw_peer(within(tokio::net::TcpStream::connect(addr)).await.unwrap()).await
}

/// Polls `condition` every 20 ms until it holds; fails the test after [`TIMEOUT`].
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Length of the hidden partial file for `name` in `dir`, if there is one.
pub fn partial_len(dir: &Path, name: &str) -> Option<u64> {
    std::fs::metadata(dir.join(format!(".{name}.xfer-part")))
        .ok()
        .map(|m| m.len())
}

/// Whether the receiver has finished with the partial for `name`: its
/// sidecar records every byte of it as durable, which happens only when the
/// session that wrote it has ended.
pub fn partial_settled(dir: &Path, name: &str) -> bool {
    let Ok(meta) = std::fs::read_to_string(dir.join(format!(".{name}.xfer-meta"))) else {
        return false;
    };
    let record: serde_json::Value = serde_json::from_str(&meta).unwrap_or_default();
    record["durable"]
        .as_u64()
        .is_some_and(|d| d > 0 && Some(d) == partial_len(dir, name))
}

/// The [`SendConfig`] [`send_coded`] runs: `paths` to `addr`, holding
/// `code`, no digest cache. For tests that run the sender themselves (to
/// cancel it, say).
pub fn coded_config(paths: &[&Path], addr: SocketAddr, code: &xfer::code::Code) -> SendConfig {
    SendConfig {
        paths: paths.iter().map(|p| p.to_path_buf()).collect(),
        destination: Destination {
            host: addr.ip().to_string(),
            port: addr.port(),
            fallback: Vec::new(),
        },
        idle_timeout: Duration::from_secs(10),
        digest_cache: None,
        code: Some(code.clone()),
        limit_rate: None,
    }
}

/// [`send`] for a coded sender holding `code`.
pub async fn send_coded(
    paths: &[&Path],
    addr: SocketAddr,
    code: &xfer::code::Code,
) -> (anyhow::Result<Summary>, Arc<Events>) {
    let config = coded_config(paths, addr, code);
    let events = Arc::new(Events::default());
    let result = within(xfer::sender::send(
        &config,
        events.clone(),
        CancellationToken::new(),
    ))
    .await;
    (result, events)
}

impl XferProcess {
    /// Starts `command` (made by [`xfer_command`], or a wrapper around the
    /// binary such as `script`) like [`XferProcess::spawn`], with `stdin`.
    pub fn start(mut command: Command, stdin: Stdio) -> XferProcess {
        let mut child = command
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout: ChildStdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        XferProcess {
            child,
            lines: Some(rx),
        }
    }
}

/// An in-process `xfer serve` offering fixed paths on `127.0.0.1:0`,
/// stopped on drop (pull mode's counterpart of [`Receiver`]).
pub struct Serving {
    pub addr: SocketAddr,
    pub events: Arc<Events>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<ServeReport>>,
}

/// Server settings tests vary.
#[derive(Clone)]
pub struct ServeOptions {
    pub once: bool,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    /// The code getters must hold (a coded server).
    pub code: Option<xfer::code::Code>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            once: false,
            max_connections: 16,
            idle_timeout: Duration::from_secs(10),
            code: None,
        }
    }
}

impl Serving {
    pub async fn start(paths: &[&Path]) -> Serving {
        Serving::start_with(paths, ServeOptions::default()).await
    }

    pub async fn start_with(paths: &[&Path], options: ServeOptions) -> Serving {
        let config = xfer::sender::ServeConfig {
            paths: paths.iter().map(|p| p.to_path_buf()).collect(),
            listen: "127.0.0.1:0".parse().unwrap(),
            once: options.once,
            max_connections: options.max_connections,
            idle_timeout: options.idle_timeout,
            handshake_timeout: options.idle_timeout,
            digest_cache: None,
            code: options.code,
            limit_rate: None,
        };
        let listener = TcpListener::bind(config.listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let events = Arc::new(Events::default());
        let shutdown = CancellationToken::new();
        let server = xfer::sender::serve::Server::new(config).unwrap();
        let task = tokio::spawn(server.serve(listener, events.clone(), shutdown.clone()));
        Serving {
            addr,
            events,
            shutdown,
            task: Some(task),
        }
    }

    /// Stops serving and returns how it went.
    pub async fn stop(mut self) -> ServeReport {
        self.shutdown.cancel();
        let task = self.task.take().unwrap();
        within(task).await.unwrap()
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Getter settings tests vary.
#[derive(Clone)]
pub struct GetOptions {
    pub overwrite: bool,
    pub idle_timeout: Duration,
    pub limits: xfer::receiver::Limits,
    pub code: Option<xfer::code::Code>,
}

impl Default for GetOptions {
    fn default() -> Self {
        GetOptions {
            overwrite: false,
            idle_timeout: Duration::from_secs(10),
            limits: xfer::receiver::Limits::default(),
            code: None,
        }
    }
}

/// Fetches everything the server at `addr` offers into `dir`, in-process;
/// returns the result and the getter's events.
pub async fn get(addr: SocketAddr, dir: &Path) -> (anyhow::Result<Summary>, Arc<Events>) {
    get_with(addr, dir, GetOptions::default()).await
}

/// [`get`] with settings of the test's choosing.
pub async fn get_with(
    addr: SocketAddr,
    dir: &Path,
    options: GetOptions,
) -> (anyhow::Result<Summary>, Arc<Events>) {
    let config = xfer::receiver::GetConfig {
        source: Destination {
            host: addr.ip().to_string(),
            port: addr.port(),
            fallback: Vec::new(),
        },
        dir: dir.to_path_buf(),
        overwrite: options.overwrite,
        idle_timeout: options.idle_timeout,
        limits: options.limits,
        keep_partials: Duration::from_secs(7 * 24 * 3600),
        code: options.code,
        limit_rate: None,
    };
    let events = Arc::new(Events::default());
    let result = within(xfer::receiver::fetch(
        &config,
        events.clone(),
        CancellationToken::new(),
    ))
    .await;
    (result, events)
}

impl XferProcess {
    /// Starts `xfer serve --listen 127.0.0.1:0 ARGS` and returns it with
    /// the address it printed.
    pub fn serve(args: &[&str]) -> (XferProcess, SocketAddr) {
        let mut all = vec!["serve", "--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let mut process = XferProcess::spawn(&all);
        let line = process.next_line().expect("no 'listening on' line");
        let addr = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        (process, addr.parse().unwrap())
    }
}

/// A `script` command (util-linux) that runs `xfer ARGS` on a pseudo-terminal
/// of `cols` columns, its stdin, stdout and stderr all that terminal; what
/// it drew comes out on `script`'s stdout.
pub fn terminal_command(cols: u16, args: &[String]) -> Command {
    let binary = env!("CARGO_BIN_EXE_xfer");
    let line = std::iter::once(format!("stty rows 40 cols {cols}; exec '{binary}'"))
        .chain(args.iter().map(|a| format!("'{a}'")))
        .collect::<Vec<_>>()
        .join(" ");
    let mut command = Command::new("script");
    command
        .args(["-qefc", &line, "/dev/null"])
        .env("XFER_CACHE_DIR", test_cache_dir());
    command
}

/// Runs `xfer ARGS` on a terminal of `cols` columns (see
/// [`terminal_command`]) and returns its exit code and everything it drew.
pub fn run_on_terminal(cols: u16, args: &[String]) -> (i32, String) {
    let out = terminal_command(cols, args)
        .stdin(Stdio::null())
        .output()
        .expect("util-linux 'script' is needed for terminal tests");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Runs `command` (a program under script(1), so on a terminal of its
/// own), types `keys` once `prompt` has appeared on its screen, and waits
/// for it to exit within `limit`: its status, the whole screen, and
/// whether the prompt showed (and the keys were typed).
pub fn type_at_prompt(
    mut command: Command,
    prompt: &str,
    keys: &[u8],
    limit: Duration,
) -> (std::process::ExitStatus, String, bool) {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = std::io::Read::read(&mut stdout, &mut chunk) {
            if tx.send(chunk[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut stdin = child.stdin.take().unwrap();
    let deadline = std::time::Instant::now() + limit;
    let mut screen = Vec::new();
    let mut typed = false;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still waiting: {}", String::from_utf8_lossy(&screen));
        }
        if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(20)) {
            screen.extend_from_slice(&chunk);
        }
        if !typed && String::from_utf8_lossy(&screen).contains(prompt) {
            std::io::Write::write_all(&mut stdin, keys).unwrap();
            typed = true;
        }
    }
    let status = child.wait().unwrap();
    while let Ok(chunk) = rx.recv_timeout(Duration::from_millis(200)) {
        screen.extend_from_slice(&chunk);
    }
    (status, String::from_utf8_lossy(&screen).into_owned(), typed)
}
