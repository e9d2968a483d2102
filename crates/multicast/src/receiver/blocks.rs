//! Completing blocks: symbols counted in, jobs handed out and their results applied, blocks
//! offered from elsewhere (resume, unicast fetch), and the end of the file.

use super::*;

impl Receiver {
    /// Marks source symbol `esi` of `block`, a block being collected, as received: its
    /// bytes are in its slot already (copied there, or read there by a scatter read).
    pub(super) fn source_received(&mut self, block: u32, esi: u32) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let k = a.manifest.symbols_in_block(block);
        let Some(p) = a.partial.get_mut(&block) else {
            return;
        };
        p.have[esi as usize] = true;
        p.sources += 1;
        self.stats.source_symbols += 1;
        a.next_slot = (esi + 1 < k).then_some((block, esi + 1));
        self.complete_if_enough(block);
    }

    /// Hands a block being collected to decoding once it holds enough symbols (more than
    /// at its last failed attempt).
    pub(super) fn complete_if_enough(&mut self, block: u32) {
        let Some(a) = self.active.as_ref() else {
            return;
        };
        let k = a.manifest.symbols_in_block(block);
        if let Some(p) = a.partial.get(&block) {
            let count = p.sources + p.repairs.len() as u32;
            if count >= k && count > p.failed_at {
                self.try_complete(block);
            }
        }
    }

    pub(super) fn try_complete(&mut self, block: u32) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let Some(p) = a.partial.remove(&block) else {
            return;
        };
        let job = BlockJob {
            block,
            k: a.manifest.symbols_in_block(block),
            symbol_size: a.manifest.symbol_size,
            len: a.manifest.block_len(block),
            expected: a.manifest.block_hashes[block as usize],
            partial: p,
        };
        if self.cfg.offload_block_work {
            a.state[block as usize] = BlockState::Working;
            a.jobs_out += 1;
            self.stats.peak_jobs_out = self.stats.peak_jobs_out.max(u64::from(a.jobs_out));
            self.jobs.push_back(job);
        } else {
            let result = job.run();
            self.apply_result(result);
        }
    }

    /// Notes the receiving socket's count of datagrams dropped for want of buffer room
    /// (cumulative, as the kernel keeps it; [`crate::driver::run_receiver`] reads it on
    /// Linux). Drops since the previous load report are reported at the next poll, and the
    /// sender slows down: a socket that overflows means the receiver is not keeping up.
    /// The first value noted (and any value lower than the last) is the baseline.
    pub fn note_socket_drops(&mut self, total: u64) {
        self.socket_drops = match self.socket_drops {
            Some((noted, reported)) if total >= noted => Some((total, reported)),
            _ => Some((total, total)),
        };
    }

    /// Hands back the buffer of a [`ReceiverEvent::BlockVerified`] once its bytes are
    /// stored, so the next block reuses it instead of fresh memory (up to 32 MiB of them
    /// are kept; the rest are freed). Optional.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        if buf.capacity() > 0 && self.spare_bytes + buf.capacity() <= MAX_SPARE_BYTES {
            self.spare_bytes += buf.capacity();
            self.spare.push(buf);
        }
    }

    /// Next block job to run, when [`ReceiverConfig::offload_block_work`] is set (never
    /// otherwise). Run it with [`BlockJob::run`], anywhere, and hand the result to
    /// [`Receiver::complete_job`].
    pub fn poll_job(&mut self) -> Option<BlockJob> {
        self.jobs.pop_front()
    }

    /// Takes back the result of a job from [`Receiver::poll_job`]: a verified block becomes
    /// a [`ReceiverEvent::BlockVerified`]; a block that failed its hash is collected again;
    /// one that could not be decoded yet goes on collecting symbols (including those that
    /// arrived meanwhile). A result for a block that is no longer out (another session, or
    /// completed by [`Receiver::offer_block`] meanwhile) is ignored.
    pub fn complete_job(&mut self, result: BlockResult) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let b = result.block as usize;
        match a.state.get(b) {
            Some(BlockState::Working) => {
                a.jobs_out = a.jobs_out.saturating_sub(1);
                self.apply_result(result);
            }
            Some(BlockState::Done) => {
                // Completed another way (offered) while the job was out.
                a.jobs_out = a.jobs_out.saturating_sub(1);
                let bytes = a.manifest.symbols_in_block(result.block) as u64
                    * u64::from(a.manifest.symbol_size);
                a.buffered = a.buffered.saturating_sub(bytes);
                self.drop_late(result.block);
            }
            _ => return,
        }
        self.request_fetch();
    }

    pub(super) fn drop_late(&mut self, block: u32) {
        if let Some(a) = self.active.as_mut()
            && let Some(late) = a.late.remove(&block)
        {
            let t = u64::from(a.manifest.symbol_size);
            a.buffered = a.buffered.saturating_sub(late.symbols.len() as u64 * t);
            self.stats.duplicates += late.symbols.len() as u64;
        }
    }

    pub(super) fn apply_result(&mut self, result: BlockResult) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let block = result.block;
        let k = a.manifest.symbols_in_block(block);
        let t = usize::from(a.manifest.symbol_size);
        let bytes = k as u64 * t as u64;
        match result.outcome {
            Outcome::Undecodable(mut p) => {
                a.state[block as usize] = BlockState::Partial;
                if let Some(late) = a.late.remove(&block) {
                    a.buffered = a
                        .buffered
                        .saturating_sub(late.symbols.len() as u64 * t as u64);
                    for (esi, sym) in late.symbols {
                        if esi < k {
                            let i = esi as usize;
                            if p.have[i] {
                                self.stats.duplicates += 1;
                            } else {
                                p.have[i] = true;
                                p.sources += 1;
                                p.data[i * t..(i + 1) * t].copy_from_slice(&sym);
                                self.stats.source_symbols += 1;
                            }
                        } else if p.repair_ids.insert(esi) {
                            p.repairs
                                .push(EncodingPacket::new(PayloadId::new(0, esi), sym));
                            self.stats.repair_symbols += 1;
                        } else {
                            self.stats.duplicates += 1;
                        }
                    }
                }
                a.partial.insert(block, p);
                self.complete_if_enough(block);
            }
            Outcome::Rejected => {
                a.buffered = a.buffered.saturating_sub(bytes);
                // A forged or corrupted symbol: throw the block away and collect it again.
                self.stats.blocks_rejected += 1;
                a.state[block as usize] = BlockState::Missing;
                self.drop_late(block);
            }
            Outcome::Verified { data, decoded } => {
                a.buffered = a.buffered.saturating_sub(bytes);
                if decoded {
                    self.stats.blocks_decoded += 1;
                }
                self.drop_late(block);
                let offset = self
                    .active
                    .as_ref()
                    .map_or(0, |a| a.manifest.block_offset(block));
                self.mark_done(block);
                self.events.push_back(ReceiverEvent::BlockVerified {
                    block,
                    offset,
                    data,
                });
                self.check_complete();
            }
        }
    }

    pub(super) fn mark_done(&mut self, block: u32) {
        if let Some(a) = self.active.as_mut() {
            if let Some(p) = a.partial.remove(&block) {
                a.buffered -= (p.have.len() * usize::from(a.manifest.symbol_size)) as u64;
            }
            if a.state[block as usize] != BlockState::Done {
                a.state[block as usize] = BlockState::Done;
                a.done += 1;
            }
        }
    }

    pub(super) fn check_complete(&mut self) {
        if let Some(a) = self.active.as_mut()
            && !a.complete
            && a.done == a.manifest.block_count()
        {
            a.complete = true;
            a.pending_nak = None;
            self.events.push_back(ReceiverEvent::Complete {
                file_hash: a.manifest.file_hash,
            });
        }
    }

    /// Offers a whole block obtained another way (resumed from disk or fetched by unicast).
    /// Returns `Ok(true)` if it was new and verified, `Ok(false)` if already held; an error
    /// (and nothing kept) if it does not match the manifest.
    pub fn offer_block(&mut self, block: u32, data: &[u8]) -> Result<bool> {
        let Some(a) = self.active.as_ref() else {
            return Err(MulticastError::invalid(
                "offered block without manifest",
                block,
            ));
        };
        if block >= a.manifest.block_count() {
            return Err(MulticastError::invalid("offered block index", block));
        }
        if data.len() != a.manifest.block_len(block) {
            return Err(MulticastError::invalid(
                "offered block length",
                format!(
                    "{} for block {block}, expected {}",
                    data.len(),
                    a.manifest.block_len(block)
                ),
            ));
        }
        if a.state[block as usize] == BlockState::Done {
            return Ok(false);
        }
        if block_hash(data) != a.manifest.block_hashes[block as usize] {
            self.stats.blocks_rejected += 1;
            return Err(MulticastError::BlockHashMismatch { block });
        }
        self.stats.blocks_offered += 1;
        self.mark_done(block);
        self.check_complete();
        Ok(true)
    }

    /// Reports the whole-file hash the driver computed over the written file. On a match,
    /// queues the completion report to the sender.
    pub fn finish(&mut self, computed: [u8; 32]) -> Result<()> {
        let Some(a) = self.active.as_mut() else {
            return Err(MulticastError::invalid(
                "finish without manifest",
                hex(&computed),
            ));
        };
        if computed != a.manifest.file_hash {
            return Err(MulticastError::FileHashMismatch {
                expected: hex(&a.manifest.file_hash),
                actual: hex(&computed),
            });
        }
        a.finished = true;
        if let Some(to) = a.sender {
            let mut out = Vec::new();
            Packet::Done {
                session: a.manifest.session_id,
                file_hash: computed,
            }
            .encode(&mut out);
            self.transmit.push_back((to, out));
        }
        Ok(())
    }
}
