//! The receiver's side of repair: a NAK for what is missing, in answer to the sender's
//! poll and after a random back-off, suppressed when the sender confirms another
//! receiver's NAK that covers it.

use super::*;

impl Receiver {
    /// Answers the sender's poll `poll` (blocks sent: before `upto`; its sequence number:
    /// `high_seq`): the `Done` again once finished; otherwise the loss is counted, a load
    /// report goes out at once when falling behind, and a NAK for what is missing is
    /// scheduled after a random back-off (or withheld from a receiver losing too much).
    pub(super) fn handle_poll(
        &mut self,
        now: Instant,
        from: SocketAddr,
        poll: u32,
        upto: u32,
        high_seq: u64,
    ) {
        let backoff_us = self.cfg.nak_backoff_ms * 1000;
        let delay = Duration::from_micros(self.rng.random_range(0..=backoff_us));
        let Some(a) = self.active.as_mut() else {
            return;
        };
        if a.sender.is_none() {
            a.sender = Some(from);
        }
        if a.finished {
            // Still polled after reporting: the report may have been lost, so it goes again
            // (one small datagram per poll, only to the sender that polls).
            self.transmit.push_back((from, a.done_report()));
            return;
        }
        if a.complete || a.ended {
            return;
        }
        let (loss_permille, total_loss_permille) = a.count_loss(high_seq);
        // Blocks that went by before this receiver joined are fetched by unicast, and so is
        // everything for a receiver losing more than the configured share: repair sized for
        // it would cost every other receiver.
        // Without a unicast source everything missing is asked for, from the first block
        // (even one that went by before this receiver joined, or before its manifest came).
        let fallback = self.cfg.unicast_fallback;
        let join = match a.join_block {
            _ if !fallback => 0,
            Some(j) => j,
            None => return,
        };
        if fallback && total_loss_permille > u64::from(self.cfg.nak_max_loss_permille) {
            self.stats.naks_withheld += 1;
            a.pending_nak = None;
            return;
        }
        // Falling behind is reported at once, not after the NAK delay: it is news for the
        // sender's rate, not a repair request other receivers could suppress. (A receiver
        // that withholds its NAKs above has left the session's repair to the others and
        // does not steer its rate either.)
        let dropped = self
            .socket_drops
            .map_or(0, |(total, reported)| total - reported);
        if let Some(report) = a.load_report(poll, dropped, self.cfg.backlog_report_blocks) {
            self.transmit.push_back(report);
            self.stats.load_reports += 1;
            if let Some((total, reported)) = self.socket_drops.as_mut() {
                *reported = *total;
            }
        }
        let entries = a.missing_entries(join, upto);
        a.schedule_nak(now + delay, poll, entries, loss_permille);
    }

    pub(super) fn handle_ncf(&mut self, poll: u32, confirmed: &[BlockCount]) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let Some(p) = a.pending_nak.as_mut() else {
            return;
        };
        if p.poll != poll {
            return;
        }
        let planned: HashMap<u32, u32> = confirmed.iter().map(|e| (e.block, e.count)).collect();
        p.entries
            .retain(|e| planned.get(&e.block).is_none_or(|c| *c < e.count));
        if p.entries.is_empty() {
            a.pending_nak = None;
            self.stats.naks_suppressed += 1;
        }
    }
}

impl Active {
    /// The report that the file is complete and checked.
    fn done_report(&self) -> Vec<u8> {
        let mut out = Vec::new();
        Packet::Done {
            session: self.manifest.session_id,
            file_hash: self.manifest.file_hash,
        }
        .encode(&mut out);
        out
    }

    /// Loss seen from the sender's sequence numbers up to `high_seq`, per mille: since the
    /// last report, and since this receiver joined. The next report counts from here.
    #[inline]
    fn count_loss(&mut self, high_seq: u64) -> (u16, u64) {
        self.high_seq = self.high_seq.max(high_seq);
        let expected = self.high_seq.saturating_sub(self.report_seq);
        let loss_permille = if expected == 0 {
            0
        } else {
            let got = self.received_since.min(expected);
            ((expected - got) * 1000 / expected) as u16
        };
        self.report_seq = self.high_seq;
        self.total_expected += expected;
        self.total_received += self.received_since.min(expected);
        self.received_since = 0;
        let total_loss_permille = ((self.total_expected - self.total_received) * 1000)
            .checked_div(self.total_expected)
            .unwrap_or(0);
        (loss_permille, total_loss_permille)
    }

    /// A load report answering `poll`, for the sender, when the socket `dropped`
    /// datagrams since the last one or `backlog` block jobs or more are out (`backlog`
    /// 0: never for jobs).
    fn load_report(&self, poll: u32, dropped: u64, backlog: u32) -> Option<(SocketAddr, Vec<u8>)> {
        if dropped == 0 && (backlog == 0 || self.jobs_out < backlog) {
            return None;
        }
        let to = self.sender?;
        let mut out = Vec::new();
        Packet::Load {
            session: self.manifest.session_id,
            poll,
            jobs: self.jobs_out,
            dropped: u32::try_from(dropped).unwrap_or(u32::MAX),
        }
        .encode(&mut out);
        Some((to, out))
    }

    /// What a NAK asks for: the symbols still missing of each block from `join` to
    /// before `upto` that is not done (nor being checked), as many blocks as one NAK
    /// holds.
    fn missing_entries(&self, join: u32, upto: u32) -> Vec<BlockCount> {
        let max_entries =
            (usize::from(self.manifest.symbol_size) / 8).clamp(16, crate::packet::MAX_ENTRIES);
        let mut entries = Vec::new();
        for b in join..upto.min(self.manifest.block_count()) {
            if entries.len() >= max_entries {
                break;
            }
            let have = match self.state[b as usize] {
                // A block whose job is out holds at least K symbols already.
                BlockState::Done | BlockState::Working => continue,
                BlockState::Missing => 0,
                BlockState::Partial => self
                    .partial
                    .get(&b)
                    .map_or(0, |p| p.sources + p.repairs.len() as u32),
            };
            let k = self.manifest.symbols_in_block(b);
            entries.push(BlockCount {
                block: b,
                count: k.saturating_sub(have).max(1),
            });
        }
        entries
    }

    /// The NAK answering `poll` goes out at `due` (none when nothing is missing). A newer
    /// poll replaces a NAK not yet sent, but never postpones it.
    fn schedule_nak(
        &mut self,
        due: Instant,
        poll: u32,
        entries: Vec<BlockCount>,
        loss_permille: u16,
    ) {
        let due = self.pending_nak.as_ref().map_or(due, |p| p.due.min(due));
        self.pending_nak = if entries.is_empty() {
            None
        } else {
            Some(PendingNak {
                poll,
                due,
                entries,
                loss_permille,
            })
        };
    }
}
