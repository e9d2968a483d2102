//! Decodes arbitrary bytes as a broadcast-domain discovery datagram (UDP 15000).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = outpost_agent::fuzz::discovery_datagram(data);
});
