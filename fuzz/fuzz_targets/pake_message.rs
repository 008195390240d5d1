//! Any bytes as the peer's PAKE message: refused or accepted without a
//! panic, and an accepted one yields keys whose confirmation a side with a
//! fresh secret of its own never matches by chance.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xfer::protocol::secure::{PakeStart, Role};

fuzz_target!(|data: &[u8]| {
    let hellos = [0u8; 32];
    let role = match data.last() {
        Some(b) if b & 1 == 0 => Role::Sender,
        _ => Role::Receiver,
    };
    let Ok(keys) = PakeStart::new(b"4-fuzzy-code").finish(role, &hellos, data) else {
        return;
    };
    // The peer message came from no one holding the code: its
    // confirmation is anything the fuzzer could send, and it must fail.
    assert!(keys.verify_peer(&data[1..]).is_err());
    let _ = keys.into_record_states();
});
