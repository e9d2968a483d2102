//! Building a block's RaptorQ encoder, runnable on any thread.

use raptorq::{ObjectTransmissionInformation, SourceBlockEncoder};

/// Building one block's RaptorQ encoder (the work before its first repair symbol), handed
/// out by [`Sender::poll_job`](crate::Sender::poll_job) when [`SenderConfig::offload_encoding`](crate::SenderConfig::offload_encoding) is set so the driver
/// can run it on another thread while source data keeps flowing. Give the result to
/// [`Sender::complete_job`](crate::Sender::complete_job).
pub struct EncodeJob {
    pub(super) block: u32,
    pub(super) symbol_size: u16,
    pub(super) data: Vec<u8>,
}

impl std::fmt::Debug for EncodeJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncodeJob")
            .field("block", &self.block)
            .field("bytes", &self.data.len())
            .finish_non_exhaustive()
    }
}

impl EncodeJob {
    /// The block this job encodes.
    pub fn block(&self) -> u32 {
        self.block
    }

    /// Builds the encoder. Pure computation: no IO, no clock.
    pub fn run(self) -> EncodeResult {
        let oti = ObjectTransmissionInformation::new(0, self.symbol_size, 0, 1, 1);
        EncodeResult {
            block: self.block,
            encoder: SourceBlockEncoder::new(0, &oti, &self.data),
            spare: self.data,
        }
    }
}

/// A built encoder from an [`EncodeJob`].
pub struct EncodeResult {
    pub(super) block: u32,
    pub(super) encoder: SourceBlockEncoder,
    /// The block's bytes, free for the next job (the encoder holds its own copy).
    pub(super) spare: Vec<u8>,
}

impl std::fmt::Debug for EncodeResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncodeResult")
            .field("block", &self.block)
            .finish_non_exhaustive()
    }
}

impl EncodeResult {
    /// The block the encoder is for.
    pub fn block(&self) -> u32 {
        self.block
    }
}
