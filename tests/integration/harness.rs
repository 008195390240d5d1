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
//! - [`Proxy`] sits between sender and receiver on loopback to slow the
//!   stream down or flip bytes in it (the kernel here has no netem).
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
        },
        idle_timeout,
        digest_cache,
        code: None,
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
        let mut child = xfer_command()
            .args(args)
            .stdin(Stdio::null())
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

/// What the [`Proxy`] does to the sender-to-receiver direction.
#[derive(Clone, Default)]
pub struct ProxyOptions {
    /// Forward at most this many bytes per second.
    pub rate: Option<u64>,
    /// Flip the low bit of the bytes at these stream offsets (first connection only).
    pub flips: Vec<u64>,
}

impl ProxyOptions {
    /// Forward at `rate` bytes per second, unaltered.
    pub fn throttled(rate: u64) -> ProxyOptions {
        ProxyOptions {
            rate: Some(rate),
            ..Default::default()
        }
    }
}

/// A TCP proxy on 127.0.0.1 that forwards to `upstream`, stopped on drop.
pub struct Proxy {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr, options: ProxyOptions) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut first = true;
            let mut pipes = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    break;
                };
                let mut options = options.clone();
                if !first {
                    options.flips.clear();
                }
                first = false;
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                pipes.spawn(pipe(client_read, server_write, options));
                pipes.spawn(pipe(server_read, client_write, ProxyOptions::default()));
            }
        });
        Proxy { addr, task }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    options: ProxyOptions,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = std::time::Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    let mut offset = 0u64;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &mut buf[..n];
        let end = offset + n as u64;
        for at in options.flips.iter().filter(|at| (offset..end).contains(at)) {
            chunk[(at - offset) as usize] ^= 1;
        }
        offset = end;
        if to.write_all(chunk).await.is_err() {
            break;
        }
        if let Some(rate) = options.rate {
            let due = Duration::from_secs_f64(offset as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
    let _ = to.shutdown().await;
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
        },
        idle_timeout: Duration::from_secs(10),
        digest_cache: None,
        code: Some(code.clone()),
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

/// What a [`RecordProxy`] does to one direction's sealed records, counted
/// from 0, the first record after the handshake (docs/PROTOCOL.md §9.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// Flip one bit in the middle of record N.
    Flip(usize),
    /// Leave record N out.
    Drop(usize),
    /// Send record N twice.
    Duplicate(usize),
    /// Send record N+1 before record N.
    Swap(usize),
    /// Close this direction at the boundary before record N.
    CutBefore(usize),
}

/// What a [`RecordProxy`] does to the connections it carries (all of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tamper {
    /// An [`Act`] on the sender's records.
    ToReceiver(Act),
    /// An [`Act`] on the receiver's records.
    ToSender(Act),
    /// OR these bits into the caps of the sender's hello in transit.
    SenderCaps(u32),
    /// OR these bits into the caps of the receiver's hello in transit.
    ReceiverCaps(u32),
}

/// Everything a [`RecordProxy`] or [`CaptureProxy`] saw, as it arrived.
#[derive(Default, Debug)]
pub struct Captured {
    /// Bytes from the sender, before any tampering.
    pub to_receiver: Vec<u8>,
    /// Bytes from the receiver, before any tampering.
    pub to_sender: Vec<u8>,
    /// The `len` of each sealed record from the sender ([`RecordProxy`] only).
    pub record_lens: Vec<u32>,
    /// The `len` of each sealed record from the receiver ([`RecordProxy`] only).
    pub reply_lens: Vec<u32>,
}

/// A proxy on 127.0.0.1 that understands a coded session's framing: in
/// each direction it passes the hello, the PAKE message and the
/// confirmation (docs/PROTOCOL.md §9.1), then reads sealed records
/// (`len: u32 BE` + `len` bytes) one by one and applies a [`Tamper`]. It
/// records what it saw in [`RecordProxy::captured`].
pub struct RecordProxy {
    pub addr: SocketAddr,
    pub captured: Arc<Mutex<Captured>>,
    task: tokio::task::JoinHandle<()>,
}

impl RecordProxy {
    pub async fn start(upstream: SocketAddr, tamper: Tamper) -> RecordProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let captured = Arc::new(Mutex::new(Captured::default()));
        let shared = Arc::clone(&captured);
        let (forward, back) = match tamper {
            Tamper::ToReceiver(act) => (Side::new(Some(act), 0), Side::new(None, 0)),
            Tamper::ToSender(act) => (Side::new(None, 0), Side::new(Some(act), 0)),
            Tamper::SenderCaps(bits) => (Side::new(None, bits), Side::new(None, 0)),
            Tamper::ReceiverCaps(bits) => (Side::new(None, 0), Side::new(None, bits)),
        };
        let task = tokio::spawn(async move {
            let mut pipes = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    break;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                let seen = Arc::clone(&shared);
                pipes.spawn(record_pipe(client_read, server_write, forward, seen, true));
                let seen = Arc::clone(&shared);
                pipes.spawn(record_pipe(server_read, client_write, back, seen, false));
            }
        });
        RecordProxy {
            addr,
            captured,
            task,
        }
    }
}

impl Drop for RecordProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What [`record_pipe`] does to its direction.
#[derive(Clone, Copy)]
struct Side {
    act: Option<Act>,
    caps: u32,
}

impl Side {
    fn new(act: Option<Act>, caps: u32) -> Side {
        Side { act, caps }
    }
}

/// One direction of a [`RecordProxy`]: hello (caps changed if asked), PAKE
/// message and confirmation through, then record by record.
async fn record_pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    side: Side,
    captured: Arc<Mutex<Captured>>,
    to_receiver: bool,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use xfer::protocol::secure::pake;
    let note = |bytes: &[u8], len: Option<u32>| {
        let mut seen = captured.lock().unwrap();
        let seen = &mut *seen;
        let (wire, lens) = if to_receiver {
            (&mut seen.to_receiver, &mut seen.record_lens)
        } else {
            (&mut seen.to_sender, &mut seen.reply_lens)
        };
        wire.extend_from_slice(bytes);
        lens.extend(len);
    };
    // Piece by piece: a side that refuses after the hellos, or after the
    // PAKE messages, sends nothing more.
    for (at, len) in [16, pake::PAKE_MESSAGE_LEN, pake::CONFIRMATION_LEN]
        .into_iter()
        .enumerate()
    {
        let mut piece = vec![0u8; len];
        if from.read_exact(&mut piece).await.is_err() {
            let _ = to.shutdown().await;
            return;
        }
        note(&piece, None);
        if at == 0 {
            let caps = u32::from_be_bytes([piece[12], piece[13], piece[14], piece[15]]);
            piece[12..].copy_from_slice(&(caps | side.caps).to_be_bytes());
        }
        if to.write_all(&piece).await.is_err() {
            return;
        }
    }
    let mut held: Option<Vec<u8>> = None;
    let mut index = 0usize;
    loop {
        let mut len = [0u8; 4];
        if from.read_exact(&mut len).await.is_err() {
            break;
        }
        let n = u32::from_be_bytes(len);
        let mut sealed = vec![0u8; 4 + n as usize];
        sealed[..4].copy_from_slice(&len);
        if from.read_exact(&mut sealed[4..]).await.is_err() {
            break;
        }
        note(&sealed, Some(n));
        let out: Vec<Vec<u8>> = match side.act {
            Some(Act::Flip(at)) if at == index => {
                let middle = sealed.len() / 2;
                sealed[middle] ^= 1;
                vec![sealed]
            }
            Some(Act::Drop(at)) if at == index => vec![],
            Some(Act::Duplicate(at)) if at == index => vec![sealed.clone(), sealed],
            Some(Act::Swap(at)) if at == index => {
                held = Some(sealed);
                vec![]
            }
            Some(Act::Swap(at)) if at + 1 == index => vec![sealed, held.take().unwrap()],
            Some(Act::CutBefore(at)) if at == index => break,
            _ => vec![sealed],
        };
        index += 1;
        for sealed in out {
            if to.write_all(&sealed).await.is_err() {
                return;
            }
        }
    }
    let _ = to.shutdown().await;
}

/// Copies `from` to `to` until either ends, appending what passes to one
/// side of `captured`.
async fn copy_captured(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    captured: &Mutex<Captured>,
    to_receiver: bool,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        {
            let mut seen = captured.lock().unwrap();
            let side = if to_receiver {
                &mut seen.to_receiver
            } else {
                &mut seen.to_sender
            };
            side.extend_from_slice(&buf[..n]);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
}

/// A proxy on 127.0.0.1 that records every byte both ways and changes
/// none, plain or coded: what an eavesdropper on the wire would see.
pub struct CaptureProxy {
    pub addr: SocketAddr,
    pub captured: Arc<Mutex<Captured>>,
    task: tokio::task::JoinHandle<()>,
}

impl CaptureProxy {
    pub async fn start(upstream: SocketAddr) -> CaptureProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let captured = Arc::new(Mutex::new(Captured::default()));
        let shared = Arc::clone(&captured);
        let task = tokio::spawn(async move {
            let mut pipes = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    break;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let seen = Arc::clone(&shared);
                pipes.spawn(async move {
                    copy_captured(&mut client_read, &mut server_write, &seen, true).await;
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut server_write).await;
                });
                let seen = Arc::clone(&shared);
                pipes.spawn(async move {
                    copy_captured(&mut server_read, &mut client_write, &seen, false).await;
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut client_write).await;
                });
            }
        });
        CaptureProxy {
            addr,
            captured,
            task,
        }
    }
}

impl Drop for CaptureProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A one-connection-at-a-time TCP relay on 127.0.0.1 that reaches
/// `upstream` from a socket bound to `source` (e.g. 127.0.0.2:0), so a
/// receiver sees another peer address than the in-process sender's. Each
/// connection waits for the gate (if any) to open before it goes upstream,
/// so a test can look at a waiting sender. Stopped on drop.
pub struct Relay {
    pub addr: SocketAddr,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    gate: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Forwards at once.
    pub async fn start(upstream: SocketAddr, source: SocketAddr) -> Relay {
        Relay::start_inner(upstream, source, false).await
    }

    /// Holds each connection until [`Relay::open`].
    pub async fn gated(upstream: SocketAddr) -> Relay {
        Relay::start_inner(upstream, "127.0.0.1:0".parse().unwrap(), true).await
    }

    async fn start_inner(upstream: SocketAddr, source: SocketAddr, gated: bool) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (gate, opened) = tokio::sync::watch::channel(!gated);
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            let mut pipes = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut opened = opened.clone();
                pipes.spawn(async move {
                    if opened.wait_for(|open| *open).await.is_err() {
                        return;
                    }
                    let socket = tokio::net::TcpSocket::new_v4().unwrap();
                    socket.bind(source).unwrap();
                    let Ok(mut server) = socket.connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
        Relay {
            addr,
            accepted,
            gate,
            task,
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Lets waiting and later connections through.
    pub fn open(&self) {
        let _ = self.gate.send(true);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
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
