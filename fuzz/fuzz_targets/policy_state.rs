//! Loads arbitrary bytes as an outpost-policy state document (JSON, else TOML), resolves it
//! and explains settings; every explanation must agree with the effective settings.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((explained, agreed)) = outpost_policy::fuzz::state(data) {
        assert_eq!(explained, agreed, "explain disagrees with effective settings");
    }
});
