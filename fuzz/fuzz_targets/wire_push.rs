//! Decodes arbitrary bytes as a signed "sync now" datagram (UDP 15000).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = outpost_wire::fuzz::decode_push(data);
});
