//! The sealed writer against inner writers and peers of every pace:
//! batches, runs, flushes, a peer that stops reading or reads slowly.

use super::*;

/// An inner writer that takes up to `most` bytes a write (0: any number)
/// and remembers each write's size.
#[derive(Default)]
struct CountingSink {
    wire: Vec<u8>,
    writes: Vec<usize>,
    most: usize,
}

impl AsyncWrite for CountingSink {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = if this.most == 0 {
            buf.len()
        } else {
            buf.len().min(this.most)
        };
        this.wire.extend_from_slice(&buf[..n]);
        this.writes.push(n);
        std::task::Poll::Ready(Ok(n))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// A large body leaves in batches of records, one write each, never more
/// than a batch and a record at a time; what arrives opens to the same
/// bytes and a clean end.
#[tokio::test]
async fn a_large_body_leaves_in_few_writes_of_bounded_size() {
    let key = [8u8; 32];
    let mut w = SealedWriter::new(CountingSink::default(), SealState::new(&key), "peer".into());
    let data = pattern(3 * 1024 * 1024 + 10, 4);
    tokio::time::timeout(T, async {
        w.write_all(&data).await?;
        w.shutdown().await
    })
    .await
    .unwrap()
    .unwrap();
    let sink = w.inner;
    let records = data.len().div_ceil(record::MAX_RECORD_PAYLOAD) + 1;
    let per_batch = stream::WRITE_BATCH / record::MAX_RECORD_LEN;
    assert!(per_batch > 1);
    assert!(
        sink.writes.len() <= records.div_ceil(per_batch) + 1,
        "{} writes for {records} records",
        sink.writes.len()
    );
    let largest = sink.writes.iter().max().copied().unwrap_or(0);
    assert!(
        largest <= stream::WRITE_BATCH + record::MAX_RECORD_LEN,
        "a write of {largest}"
    );
    let mut r = SealedReader::new(&sink.wire[..], OpenState::new(&key), "peer".into());
    let (got, end) = read_until_end(&mut r).await;
    assert!(got == data, "the bytes differ");
    assert!(end.is_ok(), "{end:?}");
}

/// Over a socket that takes a little at a time, one write to the sealed
/// writer waits for one write of progress, not for a whole batch to go:
/// the caller's idle clock sees a slow peer moving.
#[tokio::test]
async fn a_write_waits_for_one_write_of_progress_not_a_whole_batch() {
    let key = [8u8; 32];
    let sink = CountingSink {
        most: 4096,
        ..Default::default()
    };
    let mut w = SealedWriter::new(sink, SealState::new(&key), "peer".into());
    let data = pattern(2 * 1024 * 1024, 6);
    tokio::time::timeout(T, w.write_all(&data))
        .await
        .unwrap()
        .unwrap();
    for _ in 0..64 {
        let before = w.inner.writes.len();
        let n = tokio::time::timeout(T, w.write(&data[..4096]))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        assert!(
            w.inner.writes.len() <= before + 1,
            "one write to the sealed writer took {} socket writes",
            w.inner.writes.len() - before
        );
        assert!(w.buf.capacity() <= 2 * stream::WRITE_BATCH + 2 * record::MAX_RECORD_LEN);
    }
}

/// A run goes out after what was written before it and before what is
/// written after, one socket write at a time, and all of it opens to the
/// same bytes and a clean end.
#[tokio::test]
async fn a_run_is_sent_in_order_between_frames() {
    use std::future::poll_fn;
    let key = [8u8; 32];
    let sink = CountingSink {
        most: 100 * 1024,
        ..Default::default()
    };
    let mut w = SealedWriter::new(sink, SealState::new(&key), "peer".into());
    let body = pattern(RUN_PAYLOAD - 1000, 2);
    let mut run = RecordRun::default();
    run.fill(body.len(), |filled, places| {
        let mut n = 0;
        for place in places.iter_mut() {
            let (from, len) = (filled + n, place.len());
            place.copy_from_slice(&body[from..from + len]);
            n += len;
        }
        Ok(n)
    })
    .unwrap();
    let steps = tokio::time::timeout(T, async {
        w.write_all(b"header").await?;
        let mut steps = 0;
        while !poll_fn(|cx| w.poll_send_run(cx, &mut run)).await? {
            steps += 1;
        }
        w.write_all(b"trailer").await?;
        w.shutdown().await?;
        Ok::<_, io::Error>(steps)
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        steps >= 10,
        "{steps} steps: progress was not reported write by write"
    );
    let mut r = SealedReader::new(&w.inner.wire[..], OpenState::new(&key), "peer".into());
    let (got, end) = read_until_end(&mut r).await;
    end.unwrap();
    assert!(got == [&b"header"[..], &body, b"trailer"].concat());
}

/// A run abandoned half written has spent its records' nonces: the
/// writer refuses everything after, so the peer sees a cut, never a gap.
#[tokio::test]
async fn a_run_abandoned_half_way_stops_the_writer() {
    use std::future::poll_fn;
    let key = [8u8; 32];
    let sink = CountingSink {
        most: 1000,
        ..Default::default()
    };
    let mut w = SealedWriter::new(sink, SealState::new(&key), "peer".into());
    let mut run = RecordRun::default();
    run.fill(5000, |_, places| {
        places[0][..5000].fill(1);
        Ok(5000)
    })
    .unwrap();
    let done = poll_fn(|cx| w.poll_send_run(cx, &mut run)).await.unwrap();
    assert!(!done);
    // Nor may another run (its bytes could be plain text) take its place.
    let mut other = RecordRun::default();
    other
        .fill(10, |_, places| {
            places[0][..10].fill(2);
            Ok(10)
        })
        .unwrap();
    let err = poll_fn(|cx| w.poll_send_run(cx, &mut other))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    assert!(!w.inner.wire.windows(10).any(|b| b == [2u8; 10]));
    let err = w.write_all(b"more").await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    assert_eq!(
        w.shutdown().await.unwrap_err().kind(),
        io::ErrorKind::BrokenPipe
    );
}

/// A flush sends the partly filled record at once: a frame is not held
/// back waiting for a batch to fill.
#[tokio::test]
async fn a_flush_writes_out_a_partly_filled_record() {
    let key = [8u8; 32];
    let mut w = SealedWriter::new(CountingSink::default(), SealState::new(&key), "peer".into());
    tokio::time::timeout(T, async {
        w.write_all(b"one frame").await?;
        w.flush().await
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        w.inner.writes,
        [RECORD_LEN_PREFIX + 1 + 9 + record::TAG_LEN]
    );
    let mut r = SealedReader::new(&w.inner.wire[..], OpenState::new(&key), "peer".into());
    let mut buf = [0u8; 32];
    let n = tokio::time::timeout(T, r.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"one frame");
}

#[tokio::test]
async fn writing_after_shutdown_is_refused() {
    let hellos = coded_hellos();
    let (s, _r) = pair(4096, (b"x", hellos), (b"x", hellos)).await;
    let (_sr, mut sw) = s.unwrap();
    tokio::time::timeout(T, sw.shutdown())
        .await
        .unwrap()
        .unwrap();
    let err = tokio::time::timeout(T, sw.write_all(b"late"))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
}

/// A peer that stops reading cannot hold a flush (or the shutdown that
/// seals the end record) forever: the sealed writer gives up after the
/// idle time without progress, in the framed layer's words.
#[tokio::test]
async fn a_flush_to_a_peer_that_stopped_reading_gives_up() {
    let hellos = coded_hellos();
    let (s, r) = pair(1024, (b"x", hellos), (b"x", hellos)).await;
    let (_sr, mut sw) = s.unwrap();
    let _receiver_kept_but_never_read = r.unwrap();
    let idle = Duration::from_millis(300);
    sw.set_idle(idle);
    let mut w = FrameWriter::new(sw, "receiver".into(), idle);
    w.send_raw(&pattern(4000, 1)).await.unwrap();
    let started = std::time::Instant::now();
    let err = tokio::time::timeout(T, w.flush())
        .await
        .expect("the flush gave up")
        .unwrap_err();
    assert!(started.elapsed() >= idle, "{:?}", started.elapsed());
    assert!(err.to_string().contains("stopped reading for"), "{err}");
    let err = tokio::time::timeout(T, w.shutdown())
        .await
        .expect("the shutdown gave up")
        .unwrap_err();
    assert!(err.to_string().contains("stopped reading for"), "{err}");
}

/// Reads at most `most` bytes per `every`: a slow but steady peer.
struct SlowRead<R> {
    inner: R,
    most: usize,
    every: Duration,
    next: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<R: AsyncRead + Unpin> AsyncRead for SlowRead<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let every = self.every;
        let timer = self
            .next
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
        std::task::ready!(std::future::Future::poll(timer.as_mut(), cx));
        let most = self.most.min(buf.remaining());
        let mut part = tokio::io::ReadBuf::new(buf.initialize_unfilled_to(most));
        std::task::ready!(std::pin::Pin::new(&mut self.inner).poll_read(cx, &mut part))?;
        let n = part.filled().len();
        buf.advance(n);
        self.next = None;
        std::task::Poll::Ready(Ok(()))
    }
}

/// A sealed flush that drains slowly but steadily is progress the reader
/// watching its writer sees: a sender waiting for a reply while its last
/// records trickle out does not call the peer idle.
#[tokio::test]
async fn a_slow_sealed_flush_counts_as_activity_for_the_watching_reader() {
    use crate::protocol::{FrameReader, FrameWriter, Message};
    let hellos = coded_hellos();
    let (a, b) = duplex(1024);
    let (ar, aw) = tokio::io::split(a);
    let (br, bw) = tokio::io::split(b);
    // The receiver takes about 1 KiB every 20 ms.
    let slow = SlowRead {
        inner: br,
        most: 1024,
        every: Duration::from_millis(20),
        next: None,
    };
    let (s, r) = tokio::time::timeout(T, async {
        tokio::join!(
            secure(ar, aw, Role::Sender, b"x", &hellos, "receiver", IDLE),
            secure(slow, bw, Role::Receiver, b"x", &hellos, "sender", IDLE),
        )
    })
    .await
    .unwrap();
    let ((sr, sw), (mut rr, rw)) = (s.unwrap(), r.unwrap());
    let idle = Duration::from_millis(300);
    let mut w = FrameWriter::new(sw, "receiver".into(), idle);
    let activity = std::sync::Arc::clone(&w.activity);
    w.inner.report_to(activity);
    let mut fr = FrameReader::new(sr, "receiver".into(), idle);
    fr.watch(&w);
    // 48 KiB at about 50 KB/s: a flush of about a second, three idle times.
    let body = pattern(48 * 1024, 3);
    let sender = async {
        w.send_raw(&body).await?;
        w.flush().await?;
        Ok::<_, Error>(w)
    };
    // The sender waits for the reply all the while its flush drains.
    let waiting = fr.read_message();
    let receiver = async {
        let mut got = vec![0u8; body.len()];
        rr.read_exact(&mut got).await.unwrap();
        let mut replies = FrameWriter::new(rw, "sender".into(), IDLE);
        replies.send(&Message::Done).await.unwrap();
        replies.flush().await.unwrap();
        (got, replies)
    };
    let started = std::time::Instant::now();
    let (sent, reply, (got, _replies)) =
        tokio::time::timeout(T, async { tokio::join!(sender, waiting, receiver) })
            .await
            .unwrap();
    sent.unwrap();
    assert!(got == body);
    assert!(started.elapsed() > 2 * idle, "{:?}", started.elapsed());
    assert_eq!(reply.unwrap(), Some(Message::Done));
}
