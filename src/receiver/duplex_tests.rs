//! Both sessions driven end to end in one process over `tokio::io::duplex`:
//! the sender's and the receiver's session logic with no socket between
//! them, so what either says can be checked against the other.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::admit::{serve_one, Context, Ended};
use super::guard::Guard;
use super::plan::Limits;
use crate::code::Code;
use crate::events::{Event, FileReport, Observer, Summary};
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
        idle_timeout: Duration::from_secs(10),
        handshake_timeout: Duration::from_secs(10),
        limits: Limits::default(),
        sessions: Arc::new(Semaphore::new(1)),
        max_sessions: 1,
        shutdown: CancellationToken::new(),
        session: 1,
        peer_ip: std::net::Ipv4Addr::LOCALHOST.into(),
        code: code.clone().map(Arc::new),
        guard: Guard::new(),
        peer_caps: 0,
    };
    let hellos = Arc::new(Semaphore::new(1));
    let permit = hellos.try_acquire_owned().unwrap();
    let receiving = tokio::spawn(serve_one(far, "pipe".into(), context, permit));

    let config = SendConfig {
        paths: vec![tree.clone()],
        destination: Destination {
            host: "pipe".into(),
            port: 1,
        },
        idle_timeout: Duration::from_secs(10),
        digest_cache: None,
        code,
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
