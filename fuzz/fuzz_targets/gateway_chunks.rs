//! Reads arbitrary bytes as one direction of a warm-pool connection's chunked stream.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(out) = outpost_gateway::fuzz::chunked_stream(data) {
        // What a clean stream carries is never more than what came in.
        assert!(out.len() <= data.len());
    }
});
