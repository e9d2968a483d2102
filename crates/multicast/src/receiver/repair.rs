//! The receiver's side of repair: a NAK for what is missing, in answer to the sender's
//! poll and after a random back-off, suppressed when the sender confirms another
//! receiver's NAK that covers it.

use super::*;

impl Receiver {
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
            let mut out = Vec::new();
            Packet::Done {
                session: a.manifest.session_id,
                file_hash: a.manifest.file_hash,
            }
            .encode(&mut out);
            self.transmit.push_back((from, out));
            return;
        }
        if a.complete || a.ended {
            return;
        }
        // Loss seen since the last report, from the sender's sequence numbers.
        a.high_seq = a.high_seq.max(high_seq);
        let expected = a.high_seq.saturating_sub(a.report_seq);
        let loss_permille = if expected == 0 {
            0
        } else {
            let got = a.received_since.min(expected);
            ((expected - got) * 1000 / expected) as u16
        };
        a.report_seq = a.high_seq;
        a.total_expected += expected;
        a.total_received += a.received_since.min(expected);
        a.received_since = 0;
        let total_loss_permille = ((a.total_expected - a.total_received) * 1000)
            .checked_div(a.total_expected)
            .unwrap_or(0);
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
        let backlog = self.cfg.backlog_report_blocks;
        if (dropped > 0 || (backlog > 0 && a.jobs_out >= backlog))
            && let Some(to) = a.sender
        {
            let mut out = Vec::new();
            Packet::Load {
                session: a.manifest.session_id,
                poll,
                jobs: a.jobs_out,
                dropped: u32::try_from(dropped).unwrap_or(u32::MAX),
            }
            .encode(&mut out);
            self.transmit.push_back((to, out));
            self.stats.load_reports += 1;
            if let Some((total, reported)) = self.socket_drops.as_mut() {
                *reported = *total;
            }
        }
        let max_entries =
            (usize::from(a.manifest.symbol_size) / 8).clamp(16, crate::packet::MAX_ENTRIES);
        let mut entries = Vec::new();
        for b in join..upto.min(a.manifest.block_count()) {
            if entries.len() >= max_entries {
                break;
            }
            let have = match a.state[b as usize] {
                // A block whose job is out holds at least K symbols already.
                BlockState::Done | BlockState::Working => continue,
                BlockState::Missing => 0,
                BlockState::Partial => a
                    .partial
                    .get(&b)
                    .map_or(0, |p| p.sources + p.repairs.len() as u32),
            };
            let k = a.manifest.symbols_in_block(b);
            entries.push(BlockCount {
                block: b,
                count: k.saturating_sub(have).max(1),
            });
        }
        // A newer poll replaces a NAK not yet sent, but never postpones it.
        let due = a
            .pending_nak
            .as_ref()
            .map_or(now + delay, |p| p.due.min(now + delay));
        a.pending_nak = if entries.is_empty() {
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
