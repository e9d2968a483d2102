//! Decodes arbitrary bytes as a certificate signing request (PEM or DER); the decoder must
//! return a result (never panic or hang) and hold its invariants on success.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    outpost_pki::fuzz::csr(data);
});
