//! Decodes arbitrary bytes as a stream of outpost-wire frames, in arbitrary chunk sizes; every
//! decoded message must re-encode to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = outpost_wire::fuzz::decode_stream(data);
});
