//! Any byte stream into the sealed-record opener, and real records with one
//! byte changed: never a panic, never more read-ahead than a record needs,
//! and nothing returned that was not sealed by the key's holder.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use xfer::protocol::secure::record::{bytes_needed, MAX_RECORD_LEN};
use xfer::protocol::secure::{open_record, seal_record, OpenState, RecordKind, SealState};

const KEY: [u8; 32] = [0x5a; 32];

/// Opens records from `stream`, fed in two pieces cut at `cut`; returns the
/// payloads opened and whether the stream ended cleanly after an end record.
fn open_stream(stream: &[u8], cut: usize) -> (Vec<u8>, bool) {
    let mut state = OpenState::new(&KEY);
    let mut buf = BytesMut::new();
    let mut opened = Vec::new();
    let cut = cut.min(stream.len());
    for piece in [&stream[..cut], &stream[cut..]] {
        buf.extend_from_slice(piece);
        loop {
            match open_record(&mut state, &mut buf) {
                Ok(Some((RecordKind::Data, payload))) => opened.extend_from_slice(&payload),
                Ok(Some((RecordKind::End, payload))) => assert!(payload.is_empty()),
                Ok(None) => {
                    // What is still buffered never exceeds the record it
                    // awaits, so a reader needs no more than one record.
                    if let Ok(needed) = bytes_needed(&buf) {
                        assert!(needed <= MAX_RECORD_LEN);
                    }
                    break;
                }
                Err(_) => return (opened, false),
            }
        }
    }
    (opened, buf.is_empty() && state.ended())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let cut = usize::from(mode);
    if mode & 1 == 0 {
        // Raw bytes: no key holder sealed them, so nothing may open.
        let (opened, clean) = open_stream(rest, cut);
        assert!(opened.is_empty() && !clean, "forged a record");
        return;
    }
    // Seal `payload` in records of `size` bytes, then change one byte.
    let [size, flip_hi, flip_lo, payload @ ..] = rest else {
        return;
    };
    let size = usize::from(*size).max(1);
    let mut seal = SealState::new(&KEY);
    let mut stream = Vec::new();
    for chunk in payload.chunks(size) {
        seal_record(&mut seal, RecordKind::Data, chunk, &mut stream).unwrap();
    }
    seal_record(&mut seal, RecordKind::End, b"", &mut stream).unwrap();
    let flip = usize::from(u16::from_be_bytes([*flip_hi, *flip_lo]));
    let changed = flip != 0;
    if changed {
        let at = flip % stream.len();
        stream[at] ^= mode;
    }
    let (opened, clean) = open_stream(&stream, cut);
    assert!(
        payload.starts_with(&opened),
        "returned bytes that were not sealed"
    );
    assert_eq!(
        clean, !changed,
        "a changed stream ended cleanly, or an intact one did not"
    );
    if !changed {
        assert_eq!(opened, payload);
    }
});
