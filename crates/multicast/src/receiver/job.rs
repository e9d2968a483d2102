//! The work that completes one block, runnable on any thread: FEC decoding when source
//! symbols are missing, then the check against the block's hash.

use raptorq::{EncodingPacket, ObjectTransmissionInformation, PayloadId, SourceBlockDecoder};

use super::Partial;
use crate::manifest::block_hash;

/// The work that completes one block: FEC decoding when source symbols are missing, then
/// the check against the block's hash. Handed out by [`Receiver::poll_job`](crate::Receiver::poll_job) when
/// [`ReceiverConfig::offload_block_work`](crate::ReceiverConfig::offload_block_work) is set, so the driver can run it on another
/// thread while it keeps reading the socket; the result goes back through
/// [`Receiver::complete_job`](crate::Receiver::complete_job).
pub struct BlockJob {
    pub(super) block: u32,
    pub(super) k: u32,
    pub(super) symbol_size: u16,
    pub(super) len: usize,
    pub(super) expected: [u8; 32],
    pub(super) partial: Partial,
}

impl std::fmt::Debug for BlockJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockJob")
            .field("block", &self.block)
            .field("sources", &self.partial.sources)
            .field("repairs", &self.partial.repairs.len())
            .finish_non_exhaustive()
    }
}

impl BlockJob {
    /// The block this job completes.
    pub fn block(&self) -> u32 {
        self.block
    }

    /// Whether the job needs FEC decoding (some source symbols are missing).
    pub fn needs_decoding(&self) -> bool {
        self.partial.sources < self.k
    }

    /// Decodes (if needed) and checks the block hash. Pure computation: no IO, no clock.
    pub fn run(self) -> BlockResult {
        let BlockJob {
            block,
            k,
            symbol_size,
            len,
            expected,
            mut partial,
        } = self;
        let t = usize::from(symbol_size);
        let decoded = partial.sources < k;
        let data = if decoded {
            match decode_partial(&partial, k, symbol_size) {
                Some(d) => {
                    partial.repairs = Vec::new();
                    // Only the missing symbols are taken from the decoder's output, which is
                    // dropped here, on the thread that allocated it: the block's own buffer
                    // stays in use and the decoder's memory is reused by the next decode
                    // instead of being mapped (and zeroed by the kernel) afresh.
                    for (i, _) in partial.have.iter().enumerate().filter(|(_, h)| !**h) {
                        partial.data[i * t..(i + 1) * t].copy_from_slice(&d[i * t..(i + 1) * t]);
                    }
                    std::mem::take(&mut partial.data)
                }
                None => {
                    partial.failed_at = partial.sources + partial.repairs.len() as u32;
                    return BlockResult {
                        block,
                        outcome: Outcome::Undecodable(partial),
                    };
                }
            }
        } else {
            std::mem::take(&mut partial.data)
        };
        debug_assert_eq!(data.len(), k as usize * t);
        let mut data = data;
        data.truncate(len);
        let outcome = if block_hash(&data) == expected {
            Outcome::Verified { data, decoded }
        } else {
            Outcome::Rejected
        };
        BlockResult { block, outcome }
    }
}

/// What a [`BlockJob`] ended with; hand it to [`Receiver::complete_job`](crate::Receiver::complete_job).
pub struct BlockResult {
    pub(super) block: u32,
    pub(super) outcome: Outcome,
}

impl std::fmt::Debug for BlockResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match &self.outcome {
            Outcome::Verified { .. } => "verified",
            Outcome::Rejected => "rejected",
            Outcome::Undecodable(_) => "undecodable",
        };
        f.debug_struct("BlockResult")
            .field("block", &self.block)
            .field("outcome", &what)
            .finish()
    }
}

impl BlockResult {
    /// The block the job was for.
    pub fn block(&self) -> u32 {
        self.block
    }
}

pub(super) enum Outcome {
    /// `data`: the block's bytes, in the buffer its symbols were collected in.
    Verified {
        data: Vec<u8>,
        decoded: bool,
    },
    Rejected,
    Undecodable(Partial),
}

/// Runs the RaptorQ decoder over what `p` holds. `None`: not decodable yet.
fn decode_partial(p: &Partial, k: u32, symbol_size: u16) -> Option<Vec<u8>> {
    let t = usize::from(symbol_size);
    let oti = ObjectTransmissionInformation::new(0, symbol_size, 0, 1, 1);
    let mut dec = SourceBlockDecoder::new(0, &oti, (k as usize * t) as u64);
    let sources = p
        .have
        .iter()
        .enumerate()
        .filter(|(_, h)| **h)
        .map(|(i, _)| {
            EncodingPacket::new(
                PayloadId::new(0, i as u32),
                p.data[i * t..(i + 1) * t].to_vec(),
            )
        });
    dec.decode(sources.chain(p.repairs.iter().cloned()))
}
