//! The fuzz targets' entry points (`fuzz/fuzz_targets/pki_csr.rs`, built with `--cfg fuzzing`),
//! and the replay of their seed corpus in this crate's unit tests.

use crate::csr::{MAX_CSR_LEN, MAX_RECORDED_NAMES, decode_csr};

/// Entry point for the `pki_csr` fuzz target and the corpus replay test: decodes untrusted
/// bytes and checks the decoder's invariants. Panics only if an invariant is broken.
pub fn csr(data: &[u8]) {
    match decode_csr(data) {
        Ok(info) => {
            assert!(data.len() <= MAX_CSR_LEN);
            assert!(!info.spki_der.is_empty());
            assert!(info.requested_names.len() <= MAX_RECORDED_NAMES);
        }
        Err(e) => {
            // Every error must render to a message.
            assert!(!e.to_string().is_empty());
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use crate::csr::decode_csr;

    /// Every file of the corpus goes through the entry point; the named cases decode (or
    /// fail) as their names say.
    #[test]
    fn the_csr_corpus_replays() {
        for (name, data) in outpost_testkit::corpus("pki_csr") {
            super::csr(&data);
            let result = decode_csr(&data);
            if name.starts_with("valid_") {
                let info = result.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(info.requests_ca.is_none(), "{name}");
            } else if name.starts_with("asks_ca") {
                assert!(result.unwrap().requests_ca.is_some(), "{name}");
            } else {
                assert!(result.is_err(), "{name} decoded");
            }
        }
    }

    proptest! {
        /// The CSR decoder never panics on arbitrary bytes, with or without a PEM header.
        #[test]
        fn arbitrary_bytes_keep_the_invariants(
            data in proptest::collection::vec(any::<u8>(), 0..600),
            pem in any::<bool>(),
        ) {
            let input = if pem {
                let mut v = b"-----BEGIN CERTIFICATE REQUEST-----\n".to_vec();
                v.extend_from_slice(&data);
                v
            } else {
                data
            };
            super::csr(&input);
            prop_assert!(decode_csr(&input).is_err());
        }
    }
}
