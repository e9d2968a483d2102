//! Entry points shared by the fuzz targets under `fuzz/` and the corpus replay test.

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
