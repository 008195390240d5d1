//! Programs that sit between a sender and a receiver on loopback: [`Proxy`]
//! slows the stream down or flips bytes in it (the kernel here has no
//! netem), [`RecordProxy`] tampers with a coded session's sealed records,
//! [`CaptureProxy`] records what crossed, and [`Relay`] holds a connection
//! or makes it from another source address. Each is stopped on drop.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;

/// What the [`Proxy`] does to the connector-to-listener direction (a
/// sender's bytes), and to the way back (a server's bytes, in pull mode).
#[derive(Clone, Default)]
pub struct ProxyOptions {
    /// Forward at most this many bytes per second.
    pub rate: Option<u64>,
    /// Flip the low bit of the bytes at these stream offsets (first connection only).
    pub flips: Vec<u64>,
    /// `rate`, for the listener-to-connector direction.
    pub back_rate: Option<u64>,
    /// `flips`, for the listener-to-connector direction.
    pub back_flips: Vec<u64>,
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
                    options.back_flips.clear();
                }
                first = false;
                let back = ProxyOptions {
                    rate: options.back_rate,
                    flips: std::mem::take(&mut options.back_flips),
                    ..Default::default()
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                pipes.spawn(pipe(client_read, server_write, options));
                pipes.spawn(pipe(server_read, client_write, back));
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
