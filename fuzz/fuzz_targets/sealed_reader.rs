//! Real records, maybe with one byte changed or cut short anywhere (at a
//! record boundary too), read through the stream reader that feeds storage
//! (`SealedReader`), arriving in pieces of any size with waits between
//! them, and taken out both ways a session takes them (as a byte stream
//! for frames, as opened payloads for bodies): never a panic, nothing
//! handed out that was not sealed, a clean end only for an intact stream,
//! and every failure a protocol error or a cut.
#![no_main]

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};
use xfer::error::Error;
use xfer::protocol::secure::{
    recover_error, seal_record, OpenState, OpenedPayloads, RecordKind, SealState, SealedReader,
};

const KEY: [u8; 32] = [0xa5; 32];

/// Hands out `wire` in pieces whose sizes come from `sizes`, in turn, and
/// has nothing ready (`Pending`) every fourth time it is asked.
struct Pieces {
    wire: Vec<u8>,
    at: usize,
    sizes: [usize; 3],
    turn: usize,
    /// How often it had nothing ready.
    waited: Arc<AtomicUsize>,
}

impl AsyncRead for Pieces {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.turn += 1;
        if self.turn % 4 == 0 {
            self.waited.fetch_add(1, Ordering::Relaxed);
            return Poll::Pending;
        }
        let size = self.sizes[self.turn % 3];
        let n = size.min(buf.remaining()).min(self.wire.len() - self.at);
        let at = self.at;
        buf.put_slice(&self.wire[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

/// One take from `reader`, as frames take bytes (`as_bytes`, through
/// `scratch`) or as bodies take opened payloads, appended to `out`.
fn take(
    reader: &mut SealedReader<Pieces>,
    as_bytes: bool,
    want: usize,
    scratch: &mut [u8],
    out: &mut Vec<u8>,
) -> Poll<io::Result<usize>> {
    let mut cx = Context::from_waker(Waker::noop());
    if as_bytes {
        let buf = &mut scratch[..want];
        let mut read = ReadBuf::new(buf);
        let polled = Pin::new(reader).poll_read(&mut cx, &mut read);
        let n = read.filled().len();
        out.extend_from_slice(read.filled());
        polled.map_ok(|()| n)
    } else {
        let mut chunks: Vec<Bytes> = Vec::new();
        let polled = reader.poll_payloads(&mut cx, want, &mut chunks);
        let n: usize = chunks.iter().map(Bytes::len).sum();
        if let Poll::Ready(Ok(taken)) = polled {
            assert_eq!(taken, n);
        }
        assert!(n <= want);
        chunks.iter().for_each(|c| out.extend_from_slice(c));
        polled
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, record_size, flip_hi, flip_lo, cut_hi, cut_lo, a, b, c, d, e, f, payload @ ..] =
        data
    else {
        return;
    };
    let mut seal = SealState::new(&KEY);
    let mut wire = Vec::new();
    for chunk in payload.chunks(usize::from(*record_size).max(1)) {
        seal_record(&mut seal, RecordKind::Data, chunk, &mut wire).unwrap();
    }
    seal_record(&mut seal, RecordKind::End, b"", &mut wire).unwrap();
    let flip = usize::from(u16::from_be_bytes([*flip_hi, *flip_lo]));
    let flipped = flip != 0 && *mode >> 1 != 0;
    if flipped {
        let at = flip % wire.len();
        wire[at] ^= mode >> 1;
    }
    // A cut anywhere, before the end record's first byte included.
    let cut = usize::from(u16::from_be_bytes([*cut_hi, *cut_lo]));
    let cut_short = cut != 0;
    if cut_short {
        wire.truncate(cut % wire.len());
    }
    let changed = flipped || cut_short;
    // Piece sizes from 1 byte to a few records; how much is asked for, alike.
    let size = |x: &u8| 1 + usize::from(*x) * 347;
    let waited = Arc::new(AtomicUsize::new(0));
    let pieces = Pieces {
        wire,
        at: 0,
        sizes: [a, b, c].map(size),
        turn: 0,
        waited: Arc::clone(&waited),
    };
    let wants = [d, e, f].map(size);
    let mut reader = SealedReader::new(pieces, OpenState::new(&KEY), "fuzz".into());
    let mut out = Vec::new();
    let mut scratch = vec![0u8; *wants.iter().max().unwrap()];
    let mut turn = 0;
    let ended = loop {
        turn += 1;
        let waits = waited.load(Ordering::Relaxed);
        let polled = take(
            &mut reader,
            mode & 1 == 0,
            wants[turn % 3],
            &mut scratch,
            &mut out,
        );
        assert!(
            payload.starts_with(&out),
            "handed out bytes that were not sealed"
        );
        // It waits only when its source has nothing ready.
        let Poll::Ready(polled) = polled else {
            assert!(
                waited.load(Ordering::Relaxed) > waits,
                "pending while the source was ready"
            );
            continue;
        };
        match polled {
            Ok(0) => break true,
            Ok(_) => {}
            Err(e) => {
                let e = recover_error(e).expect("a typed error");
                assert!(
                    matches!(e, Error::Protocol { .. } | Error::ConnectionLost { .. }),
                    "{e}"
                );
                break false;
            }
        }
    };
    assert_eq!(
        ended, !changed,
        "a changed stream ended cleanly, or an intact one did not"
    );
    if !changed {
        assert_eq!(out, payload);
    }
});
