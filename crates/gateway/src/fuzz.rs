//! The fuzz targets' entry points (`fuzz/fuzz_targets/gateway_chunks.rs`, built with `--cfg fuzzing`),
//! and the replay of their seed corpus in this crate's unit tests.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

use crate::chunked::ChunkedLink;

/// Reads `data` as one direction of a chunked stream: the bytes carried if it ends with its
/// empty chunk, `None` if it is cut short or has an oversized chunk. For the fuzz target
/// and its corpus replay.
pub fn chunked_stream(data: &[u8]) -> Option<Vec<u8>> {
    let mut link = ChunkedLink::new(data);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
    loop {
        let mut rb = ReadBuf::new(&mut buf);
        match Pin::new(&mut link).poll_read(&mut cx, &mut rb) {
            Poll::Ready(Ok(())) if rb.filled().is_empty() => return Some(out),
            Poll::Ready(Ok(())) => out.extend_from_slice(rb.filled()),
            // A byte slice never waits.
            Poll::Ready(Err(_)) | Poll::Pending => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_chunk_corpus_replays() {
        let clean: Vec<String> = outpost_testkit::corpus("gateway_chunks")
            .into_iter()
            .filter(|(_, data)| {
                super::chunked_stream(data).is_some_and(|out| out.len() <= data.len())
            })
            .map(|(name, _)| name)
            .collect();
        assert_eq!(
            clean,
            ["empty_stream", "max_chunk", "one_chunk", "two_chunks"],
            "the streams that end with their empty chunk decode; cut and oversized ones do not"
        );
    }
}
