//! Real records, maybe with one byte changed, read through the stream
//! reader that feeds storage (`SealedReader`), arriving in pieces of any
//! size and taken out both ways a session takes them (as a byte stream
//! for frames, as opened payloads for bodies): never a panic, nothing
//! handed out that was not sealed, a clean end only for an intact stream,
//! and every failure a protocol error or a cut.
#![no_main]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};
use xfer::error::Error;
use xfer::protocol::secure::{
    recover_error, seal_record, OpenState, OpenedPayloads, RecordKind, SealState, SealedReader,
};

const KEY: [u8; 32] = [0xa5; 32];

/// Hands out `wire` in pieces whose sizes come from `sizes`, in turn.
struct Pieces {
    wire: Vec<u8>,
    at: usize,
    sizes: Vec<usize>,
    turn: usize,
}

impl AsyncRead for Pieces {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let size = self.sizes[self.turn % self.sizes.len()];
        self.turn += 1;
        let n = size.min(buf.remaining()).min(self.wire.len() - self.at);
        let at = self.at;
        buf.put_slice(&self.wire[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, record_size, flip_hi, flip_lo, a, b, c, payload @ ..] = data else {
        return;
    };
    let mut seal = SealState::new(&KEY);
    let mut wire = Vec::new();
    for chunk in payload.chunks(usize::from(*record_size).max(1)) {
        seal_record(&mut seal, RecordKind::Data, chunk, &mut wire).unwrap();
    }
    seal_record(&mut seal, RecordKind::End, b"", &mut wire).unwrap();
    let flip = usize::from(u16::from_be_bytes([*flip_hi, *flip_lo]));
    let changed = flip != 0 && *mode >> 1 != 0;
    if changed {
        let at = flip % wire.len();
        wire[at] ^= mode >> 1;
    }
    // Piece sizes from 1 byte to a few records, and how much is asked for.
    let sizes = [a, b, c].map(|&x| 1 + usize::from(x) * 347);
    let pieces = Pieces {
        wire,
        at: 0,
        sizes: sizes.to_vec(),
        turn: 0,
    };
    let mut reader = SealedReader::new(pieces, OpenState::new(&KEY), "fuzz".into());
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    let mut turn = 0;
    let ended = loop {
        turn += 1;
        let want = sizes[turn % 3];
        // The reader's inner stream is always ready, so every poll is too.
        let polled = if mode & 1 == 0 {
            let mut buf = vec![0u8; want];
            let mut read = ReadBuf::new(&mut buf);
            match Pin::new(&mut reader).poll_read(&mut cx, &mut read) {
                Poll::Ready(Ok(())) => {
                    let n = read.filled().len();
                    out.extend_from_slice(&buf[..n]);
                    Ok(n)
                }
                Poll::Ready(Err(e)) => Err(e),
                Poll::Pending => panic!("pending on a ready stream"),
            }
        } else {
            let mut chunks: Vec<Bytes> = Vec::new();
            match reader.poll_payloads(&mut cx, want, &mut chunks) {
                Poll::Ready(Ok(n)) => {
                    assert!(n <= want);
                    assert_eq!(chunks.iter().map(Bytes::len).sum::<usize>(), n);
                    chunks.iter().for_each(|c| out.extend_from_slice(c));
                    Ok(n)
                }
                Poll::Ready(Err(e)) => Err(e),
                Poll::Pending => panic!("pending on a ready stream"),
            }
        };
        assert!(
            payload.starts_with(&out),
            "handed out bytes that were not sealed"
        );
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
