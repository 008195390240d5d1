//! Both sessions driven end to end in one process over `tokio::io::duplex`:
//! the sender's and the receiver's session logic with no socket between
//! them, so what either says can be checked against the other.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::admit::{fetch_over, serve_one, Context, GetConfig};
use super::plan::Limits;
use crate::code::Code;
use crate::events::{Event, FileReport, Observer, Summary};
use crate::link::{Accepted, Ended, Gate};
use crate::protocol::Mode;
use crate::sender::{Destination, SendConfig};
use crate::storage::Storage;

#[derive(Default)]
struct Recorder(Mutex<Vec<Event>>);

impl Observer for Recorder {
    fn event(&self, event: Event) {
        self.0.lock().unwrap().push(event);
    }
}

impl Recorder {
    fn files(&self) -> Vec<FileReport> {
        let events = self.0.lock().unwrap();
        events
            .iter()
            .filter_map(|e| match e {
                Event::FileDone { report, .. } => Some(report.clone()),
                _ => None,
            })
            .collect()
    }

    fn ending(&self) -> Option<(Summary, Option<String>)> {
        let events = self.0.lock().unwrap();
        events.iter().find_map(|e| match e {
            Event::SessionEnded { summary, error, .. } => Some((*summary, error.clone())),
            _ => None,
        })
    }
}

/// The listening end of `stream`, as a listener accepts it: `peer` at
/// `peer_ip`, let in through `gate`, its hello slot its own.
fn accepted<C>(stream: C, peer: &str, peer_ip: std::net::IpAddr, gate: Arc<Gate>) -> Accepted<C> {
    Accepted {
        stream,
        peer: peer.into(),
        peer_ip,
        gate,
        hello_permit: Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap(),
        stopping: CancellationToken::new(),
    }
}

/// A sender and a receiver session joined by an in-memory pipe: no
/// socket, no listener, no sendfile (the copy path carries the bodies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_crosses_an_in_memory_pipe_and_both_ledgers_agree() {
    cross_a_pipe(None).await;
}

/// The same with a code: the sessions run unchanged over sealed halves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_crosses_an_in_memory_pipe_sealed_with_a_code() {
    cross_a_pipe(Some(Code::generate())).await;
}

async fn cross_a_pipe(code: Option<Code>) {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let tree = src.path().join("tree");
    std::fs::create_dir_all(tree.join("empty")).unwrap();
    std::fs::write(tree.join("small.txt"), b"hello").unwrap();
    let large: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(tree.join("large.bin"), &large).unwrap();

    let (near, far) = tokio::io::duplex(64 * 1024);
    let received = Arc::new(Recorder::default());
    let context = Context {
        storage: Arc::new(Storage::open(dst.path(), false).unwrap()),
        observer: received.clone(),
        limits: Limits::default(),
        sessions: Arc::new(Semaphore::new(1)),
        max_sessions: 1,
        shutdown: CancellationToken::new(),
        session: 1,
        fetching: false,
        peer_caps: 0,
        rate: None,
    };
    let gate = Arc::new(Gate::new(Mode::Recv, code.clone(), 1));
    let link = accepted(far, "pipe", std::net::Ipv4Addr::LOCALHOST.into(), gate);
    let receiving =
        tokio::spawn(async move { serve_one("pipe".into(), context, link).await.ended });

    let config = SendConfig {
        paths: vec![tree.clone()],
        destination: Destination {
            host: "pipe".into(),
            port: 1,
            fallback: Vec::new(),
        },
        idle_timeout: Duration::from_secs(10),
        digest_cache: None,
        code,
        limit_rate: None,
    };
    let sent = Arc::new(Recorder::default());
    let summary = tokio::time::timeout(
        Duration::from_secs(30),
        crate::sender::send_over(
            &config,
            std::future::ready(Ok(near)),
            sent.clone(),
            CancellationToken::new(),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(30), receiving)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ended, Ended::Complete, "{:?}", received.ending());

    assert_eq!(
        std::fs::read(dst.path().join("tree/large.bin")).unwrap(),
        large
    );
    assert_eq!(
        std::fs::read(dst.path().join("tree/small.txt")).unwrap(),
        b"hello"
    );
    assert!(dst.path().join("tree/empty").is_dir());
    assert_eq!((summary.offered, summary.stored), (2, 2));
    let (theirs, error) = received.ending().unwrap();
    assert_eq!(error, None);
    assert_eq!(
        (theirs.offered, theirs.stored, theirs.bytes),
        (2, 2, summary.bytes)
    );
    let digests = |files: Vec<FileReport>| {
        let mut d: Vec<_> = files.into_iter().map(|r| (r.path, r.sha256)).collect();
        d.sort();
        d
    };
    assert_eq!(digests(sent.files()), digests(received.files()));
}

/// Pull mode over a pipe: the sender's session behind the listening end
/// (as `xfer serve` runs it), the receiver's behind the connecting end (as
/// `xfer get` runs it), plain and coded; the same tree arrives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_is_fetched_over_a_pipe_with_the_roles_reversed() {
    for code in [None, Some(Code::generate())] {
        let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let tree = src.path().join("tree");
        std::fs::create_dir_all(tree.join("empty")).unwrap();
        std::fs::write(tree.join("small.txt"), b"hello").unwrap();
        let large: Vec<u8> = (0..2_000_000u32).map(|i| (i * 13 % 251) as u8).collect();
        std::fs::write(tree.join("large.bin"), &large).unwrap();

        let (near, far) = tokio::io::duplex(64 * 1024);
        let served = Arc::new(Recorder::default());
        let gate = Arc::new(Gate::new(Mode::Serve, code.clone(), 1));
        let serving = {
            let served = served.clone();
            let link = accepted(far, "getter", std::net::Ipv4Addr::LOCALHOST.into(), gate);
            tokio::spawn(async move {
                let cancel = CancellationToken::new();
                let paths = [tree];
                let offering = crate::sender::Offering {
                    paths: &paths,
                    cache: None,
                    observer: served,
                    session: 7,
                    peer: "getter".into(),
                    cancel: &cancel,
                    walk_first: false,
                    rate: None,
                };
                offering.run(link).await.map_err(|e| e.to_string())
            })
        };
        let config = GetConfig {
            source: Destination {
                host: "server".into(),
                port: 1,
                fallback: Vec::new(),
            },
            dir: dst.path().to_owned(),
            overwrite: false,
            idle_timeout: Duration::from_secs(10),
            limits: Limits::default(),
            keep_partials: Duration::ZERO,
            code: code.clone(),
            limit_rate: None,
        };
        let cancel = CancellationToken::new();
        let link = crate::link::Dialed {
            open: std::future::ready(Ok(near)),
            peer: "server".into(),
            mode: Mode::Get,
            code: config.code.as_ref(),
            idle: config.idle_timeout,
            cancel: &cancel,
        };
        let received = Arc::new(Recorder::default());
        let storage = Storage::open(dst.path(), false).unwrap();
        let fetched = tokio::time::timeout(
            Duration::from_secs(30),
            fetch_over(&config, storage, link, received.clone(), cancel.clone()),
        )
        .await
        .unwrap()
        .unwrap();
        let sent = tokio::time::timeout(Duration::from_secs(30), serving)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            std::fs::read(dst.path().join("tree/large.bin")).unwrap(),
            large
        );
        assert!(dst.path().join("tree/empty").is_dir());
        assert_eq!((fetched.offered, fetched.stored), (2, 2));
        assert_eq!(
            (sent.offered, sent.stored, sent.bytes),
            (2, 2, fetched.bytes)
        );
        assert!(served.0.lock().unwrap().iter().all(|e| match e {
            Event::FileDone { session, .. } | Event::SessionEnded { session, .. } => *session == 7,
            _ => true,
        }));
    }
}

/// A sender dialling a server, and a getter dialling a receiver: each side
/// stops after the hellos with the wrong-role error, and nothing moves.
#[tokio::test]
async fn wrong_roles_stop_both_ends_after_the_hellos() {
    use crate::link::Link;
    for (dialer, listener) in [(Mode::Send, Mode::Serve), (Mode::Get, Mode::Recv)] {
        let (near, far) = tokio::io::duplex(64 * 1024);
        let gate = Arc::new(Gate::new(listener, None, 1));
        let listening = accepted(far, "dialer", std::net::Ipv4Addr::LOCALHOST.into(), gate);
        let cancel = CancellationToken::new();
        let dialed = crate::link::Dialed {
            open: std::future::ready(Ok(near)),
            peer: "listener".into(),
            mode: dialer,
            code: None,
            idle: Duration::from_secs(5),
            cancel: &cancel,
        };
        let (d, l) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(dialed.establish(Nothing), listening.establish(Nothing))
        })
        .await
        .unwrap();
        for e in [d.unwrap_err(), l.unwrap_err()] {
            assert!(
                matches!(e, crate::error::Error::WrongRole(_)),
                "{dialer:?}: {e}"
            );
        }
    }
}

/// A session that never runs: for link checks that must stop before it.
struct Nothing;

impl crate::link::Session for Nothing {
    type Output = ();
    async fn run<R, W>(
        self,
        _: crate::protocol::FrameReader<R>,
        _: crate::protocol::FrameWriter<W>,
        _: u32,
    ) where
        R: crate::protocol::Source + Sync + 'static,
        W: crate::protocol::Transport + Sync + 'static,
    {
        panic!("no session may run here");
    }
}

/// When wrong codes from elsewhere have emptied the guessing bucket, a
/// coded peer waits for a code attempt no longer than the handshake
/// timeout, is turned away with a reason, and is not charged a wrong code.
#[tokio::test(start_paused = true)]
async fn a_code_attempt_waits_no_longer_than_the_handshake_timeout() {
    use crate::link::Link;
    let code = Code::generate();
    let mut gate = Gate::new(Mode::Recv, Some(code.clone()), 1);
    gate.handshake_timeout = Duration::from_millis(200);
    let gate = Arc::new(gate);
    // Ten wrong codes from ten addresses: the bucket is empty, and the
    // next token comes in 500 ms.
    for last in 1..=10u8 {
        let attempt = gate.guard.attempt([10, 0, 0, last].into()).await.unwrap();
        assert!(!attempt.wrong());
    }
    let (near, far) = tokio::io::duplex(64 * 1024);
    let peer_ip: std::net::IpAddr = [10, 0, 0, 99].into();
    let listening = accepted(far, "10.0.0.99:5000", peer_ip, Arc::clone(&gate));
    let cancel = CancellationToken::new();
    let dialed = crate::link::Dialed {
        open: std::future::ready(Ok(near)),
        peer: "receiver".into(),
        mode: Mode::Send,
        code: Some(&code),
        idle: Duration::from_secs(30),
        cancel: &cancel,
    };
    let started = tokio::time::Instant::now();
    let (_, turned_away) = tokio::join!(dialed.establish(Nothing), listening.establish(Nothing));
    let e = turned_away.unwrap_err();
    assert!(
        matches!(e, crate::error::Error::Auth(_))
            && e.to_string()
                == "refused 10.0.0.99:5000: no code attempt free within 200ms, as wrong codes \
                    are coming in faster than 2 per second",
        "{e}"
    );
    assert_eq!(started.elapsed(), Duration::from_millis(200));
    assert!(Ended::not_admitted(&e));
    // Not charged: four more wrong codes from it do not cool it down.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for _ in 1..crate::link::guard::PEER_FAILURES {
        assert!(!gate.guard.attempt(peer_ip).await.unwrap().wrong());
    }
}
