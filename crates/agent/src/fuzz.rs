//! The fuzz targets' entry points (`fuzz/fuzz_targets/agent_discovery.rs`, built with `--cfg fuzzing`),
//! and the replay of their seed corpus in this crate's unit tests.

use crate::discovery::{decode, encode};

/// The fuzz target's entry point: decodes arbitrary bytes; whatever decodes must encode back
/// to the same bytes. Panics only if that invariant breaks.
pub fn discovery_datagram(datagram: &[u8]) -> Option<String> {
    let id = decode(datagram).ok()?;
    let again = encode(&id).expect("a decoded device id is valid");
    assert_eq!(again, datagram, "decode and encode disagree");
    Some(id)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_discovery_corpus_replays() {
        let decoded = outpost_testkit::corpus("agent_discovery")
            .iter()
            .filter(|(_, data)| super::discovery_datagram(data).is_some())
            .count();
        assert_eq!(decoded, 1, "exactly the one valid seed decodes");
    }
}
