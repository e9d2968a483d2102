//! The fuzz target's entry point (`fuzz/fuzz_targets/api_body.rs`, built with `--cfg fuzzing`),
//! and the replay of its seed corpus in this crate's unit tests.

/// Parses `data[1..]` as the request body `data[0]` selects, as the API's handlers do: `Ok`
/// names the body parsed; a refusal is the problem's status, always a 4xx with a detail.
pub fn api_body(data: &[u8]) -> Result<&'static str, u16> {
    crate::api::fuzz_body(data)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_api_body_corpus_replays() {
        let mut parsed = Vec::new();
        let mut refused = 0;
        for (name, data) in outpost_testkit::corpus("api_body") {
            match super::api_body(&data) {
                Ok(kind) => parsed.push(kind),
                Err(status) => {
                    assert!((400..500).contains(&status), "{name}: {status}");
                    refused += 1;
                }
            }
        }
        parsed.sort_unstable();
        assert_eq!(
            parsed,
            [
                "account",
                "device change",
                "device change",
                "device move",
                "distribution point",
                "enrollment token",
                "gateway",
                "group",
                "login",
                "policy",
                "policy status",
                "virtual server",
                "virtual server change"
            ],
            "the valid seeds parse"
        );
        assert_eq!(refused, 9, "the broken seeds are refused");
    }
}
