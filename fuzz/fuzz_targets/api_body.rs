//! Parses arbitrary bytes as an administration API request body (the first byte picks which
//! body); a refusal must be a client error with a reason, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = outpost_server::fuzz::api_body(data);
});
