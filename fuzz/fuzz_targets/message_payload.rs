//! Any bytes as the payload of one well-formed frame: bincode decoding under
//! the frame limit must reject or accept without panicking, and whatever it
//! accepts must encode again.
#![no_main]

use bytes::{BufMut, BytesMut};
use libfuzzer_sys::fuzz_target;
use xfer::protocol::codec::{decode, encode};
use xfer::protocol::MAX_FRAME_LEN;

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_FRAME_LEN {
        return;
    }
    let mut buf = BytesMut::new();
    buf.put_u32(data.len() as u32);
    buf.put_slice(data);
    if let Ok(Some(message)) = decode(&mut buf) {
        let mut again = BytesMut::new();
        encode(&message, &mut again).expect("a decoded message encodes again");
    }
});
