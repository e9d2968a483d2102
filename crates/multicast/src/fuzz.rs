//! The fuzz targets' entry points (`fuzz/fuzz_targets/multicast_packet.rs`, built with `--cfg fuzzing`),
//! and the replay of their seed corpus in this crate's unit tests.

use crate::packet::{DATA_HEADER_LEN, DataHeader, Packet};

/// Decodes `data` and, if it is a valid packet, re-encodes it and checks the round trip.
/// Entry point for the fuzz target and the corpus replay test.
pub fn packet(data: &[u8]) {
    let packet = Packet::decode(data);
    if let Ok(p) = &packet {
        let mut out = Vec::new();
        p.encode(&mut out);
        let again = Packet::decode(&out).expect("re-encoded packet decodes");
        assert_eq!(&again, p, "decode/encode round trip");
    }
    // The header a scatter read puts apart agrees with the whole datagram's decoding.
    if data.len() > DATA_HEADER_LEN
        && let Ok(h) = DataHeader::decode(&data[..DATA_HEADER_LEN])
    {
        match packet {
            Ok(Packet::Data {
                session,
                seq,
                block,
                esi,
                ..
            }) => assert_eq!(
                (h.session, h.seq, h.block, h.esi),
                (session, seq, block, esi),
                "data header and packet agree"
            ),
            other => panic!("data header decoded but the packet did not: {other:?}"),
        }
    }
    // The manifest parser sees the same untrusted bytes when reassembled.
    let _ = crate::manifest::Manifest::decode_unverified(
        data,
        &crate::config::ManifestLimits::default(),
    );
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    #[test]
    fn the_packet_corpus_replays() {
        let corpus = outpost_testkit::corpus("multicast_packet");
        assert!(corpus.len() >= 8, "corpus has {} files", corpus.len());
        for (_, data) in &corpus {
            super::packet(data);
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_keep_the_invariants(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            super::packet(&bytes);
        }
    }
}
