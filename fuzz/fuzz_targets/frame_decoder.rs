//! Any byte stream into the frame decoder: never a panic, and never more
//! buffer than one maximum-size frame reserved, whatever lengths it declares.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use xfer::protocol::codec::{decode, LEN_PREFIX};
use xfer::protocol::MAX_FRAME_LEN;

fuzz_target!(|data: &[u8]| {
    // Feed the stream in two pieces so split frames are exercised too.
    let cut = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    let mut buf = BytesMut::new();
    for piece in [&data[..cut], &data[cut..]] {
        buf.extend_from_slice(piece);
        while let Ok(Some(_)) = decode(&mut buf) {}
        assert!(buf.capacity() <= (data.len() + LEN_PREFIX + MAX_FRAME_LEN) * 2);
    }
});
