//! The fuzz targets' entry points (`fuzz/fuzz_targets/wire_*.rs`, built with `--cfg fuzzing`),
//! and the replay of their seed corpus in this crate's unit tests.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use crate::{Message, MessageCodec};

/// Decodes `data` as a stream, fed in chunks whose size comes from the first byte; every
/// message decoded must re-encode and decode to itself. Panics only when that invariant
/// breaks (which is what a fuzzer looks for); decode errors are the expected outcome for
/// most inputs.
pub fn decode_stream(data: &[u8]) -> Vec<Message> {
    let Some((&first, rest)) = data.split_first() else {
        return Vec::new();
    };
    let chunk = usize::from(first % 64) + 1;
    // Small maximum so the length check is exercised as well.
    let mut codec = MessageCodec::with_max_frame_len(64 * 1024);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    'feed: for piece in rest.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(m)) => out.push(m),
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
    }
    for m in &out {
        let mut enc = MessageCodec::new();
        let mut b = BytesMut::new();
        enc.encode(m, &mut b).expect("a decoded message re-encodes");
        let back = MessageCodec::new()
            .decode(&mut b)
            .expect("a re-encoded message decodes")
            .expect("a re-encoded message is complete");
        assert_eq!(&back, m, "re-encoding changed the message");
    }
    out
}

/// Decodes `data` as a "sync now" datagram; whatever decodes must encode back to the same
/// bytes.
pub fn decode_push(data: &[u8]) -> bool {
    match crate::push::PushDatagram::decode(data) {
        Ok((d, signed)) => {
            let again = d.encode().expect("a decoded datagram re-encodes");
            assert_eq!(again, data, "decode and encode disagree");
            assert_eq!(&again[..signed], &d.signed_part().expect("encodes")[..]);
            true
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    #[test]
    fn the_wire_decode_corpus_replays() {
        let decoded: usize = outpost_testkit::corpus("wire_decode")
            .iter()
            .map(|(_, data)| super::decode_stream(data).len())
            .sum();
        assert!(decoded > 0, "no seed decodes to any message");
    }

    #[test]
    fn the_wire_push_corpus_replays() {
        let decoded: Vec<String> = outpost_testkit::corpus("wire_push")
            .into_iter()
            .filter(|(_, data)| super::decode_push(data))
            .map(|(name, _)| name)
            .collect();
        assert_eq!(
            decoded.len(),
            2,
            "the two valid seeds decode, the broken ones do not: {decoded:?}"
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_keep_the_invariants(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = super::decode_stream(&data);
            let _ = super::decode_push(&data);
        }
    }
}
