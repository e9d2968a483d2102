//! Rate control: load reports and loss cut the token bucket's rate, within the configured
//! floor; each poll without such a report raises it again by an eighth of the ceiling
//! (`write_poll`).

use super::*;

impl Sender {
    pub(super) fn handle_load(
        &mut self,
        now: Instant,
        from: SocketAddr,
        poll: u32,
        jobs: u32,
        dropped: u32,
    ) {
        // Only while data flows at the rate the report is about, and only for a poll that
        // was sent and is recent enough to say something about the current rate.
        let current = matches!(self.phase, Phase::Data | Phase::Drain)
            && poll <= self.poll_seq
            && self.poll_high.iter().any(|(p, _)| *p == poll);
        if !current {
            self.stats.stale_load_reports += 1;
            return;
        }
        self.stats.load_reports += 1;
        // No increase while any receiver is behind. A cut when its socket dropped
        // datagrams, or when the same receiver reported for the previous poll too and its
        // backlog has not shrunk since (one report alone may be a burst of blocks completed
        // by the same round of repair; a shrinking backlog is already below the rate it
        // can check). At most once per poll round: a report answering a poll sent before
        // the last cut is about the rate before it.
        self.slowdown_since_poll = true;
        let prev = self.load_from.get(&from).copied();
        if prev.is_none() && self.load_from.len() >= MAX_LOAD_TRACKED {
            // Receivers whose last report answers a poll no longer tracked have stopped
            // reporting: room for new ones. (Whoever can keep thousands of forged
            // addresses reporting can as well cut the rate to its floor with forged drop
            // counts, the harm forged reports are bounded by.)
            let oldest = self.poll_high.front().map_or(0, |(p, _)| *p);
            self.load_from
                .retain(|_, (p, _)| p.saturating_add(1) >= oldest);
        }
        let tracked = prev.is_some() || self.load_from.len() < MAX_LOAD_TRACKED;
        let growing = prev.is_some_and(|(p, j)| p.checked_add(1) == Some(poll) && jobs >= j);
        if tracked && prev.is_none_or(|(p, _)| poll > p) {
            self.load_from.insert(from, (poll, jobs));
        }
        if (dropped > 0 || growing) && poll > self.cut_poll {
            self.cut_rate(now);
        }
    }

    /// Loss above `loss_backoff_permille`: cuts the rate at most once per poll interval,
    /// and after a loss-driven cut again only when the loss grew by more than
    /// [`LOSS_GROWTH_PERMILLE`]: random loss that stays where it was however slow the
    /// sender goes (a lossy radio link, a filter) would otherwise cut it to its floor and
    /// keep it there, while repair needs the rate most.
    pub(super) fn slow_down(&mut self, now: Instant, loss_permille: u16) {
        self.slowdown_since_poll = true;
        if self
            .loss_at_cut
            .is_some_and(|l| loss_permille <= l.saturating_add(LOSS_GROWTH_PERMILLE))
        {
            return;
        }
        let hold = Duration::from_millis(self.cfg.poll_interval_ms);
        if self.last_backoff.is_none_or(|t| now >= t + hold) {
            self.cut_rate(now);
            self.loss_at_cut = Some(loss_permille);
        }
    }

    /// Multiplies the rate by `backoff_factor` (not below `min_rate_bps`).
    pub(super) fn cut_rate(&mut self, now: Instant) {
        let min = self.cfg.min_rate_bps as f64 / 8.0;
        let r = (self.bucket.rate() * self.cfg.backoff_factor).max(min);
        self.bucket.set_rate(now, r);
        self.stats.rate_bps = (r * 8.0) as u64;
        self.stats.backoffs += 1;
        self.last_backoff = Some(now);
        self.cut_poll = self.poll_seq;
    }
}
