//! Sans-IO accounting of a warm pool: idle, authenticated connections between a gateway and
//! the server, opened before any device needs one, so a device is spliced to one without a
//! TCP or TLS handshake on its critical path.
//!
//! A pool has a target size. Each connection is first *opening* (in DMZ mode a pool ticket
//! granted to the server and not yet presented; in remote-office mode a dial under way) with
//! a deadline, then *idle* until a device claims it or it is lost (closed by the other side,
//! recycled). A claimed connection is *lent* for a grace period: a short device connection
//! gives it back within it (its stream carried in chunks, see
//! [`chunked`](crate::chunked)), and it is idle again without any handshake; one that stays
//! longer stops counting, and is replaced. [`PoolBook::wanted`] says how many more to open:
//! never so many that opening, idle and lent together pass the target, so a burst of devices
//! never grows the pool; the devices the pool cannot serve take the per-device path. The book only counts; the adapter holds the
//! connections, and checks each one with a round trip (`TunnelOpen` answered by
//! `TunnelAccept`) before a device is spliced to it, so a connection that died while idle is
//! never handed out.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use outpost_gateway::pool::PoolBook;
//!
//! let t0 = Instant::now();
//! let mut book = PoolBook::new(2);
//! assert_eq!(book.wanted(), 2);
//! book.opening(1, t0 + Duration::from_secs(10));
//! book.opening(2, t0 + Duration::from_secs(10));
//! assert_eq!(book.wanted(), 0, "two on their way");
//! assert!(book.arrived(1));
//! book.handle_timeout(t0 + Duration::from_secs(11)); // number 2 never came
//! assert!(!book.arrived(2), "too late: not counted");
//! assert_eq!((book.idle(), book.wanted()), (1, 1));
//! let lent = book.lend(t0, Duration::from_millis(200)); // a device claimed the idle one
//! assert_eq!(book.wanted(), 1, "expected back");
//! assert!(book.returned(lent), "back within its grace: idle again");
//! assert_eq!((book.idle(), book.wanted()), (1, 1));
//! let long = book.lend(t0, Duration::from_millis(200));
//! book.handle_timeout(t0 + Duration::from_millis(300)); // a long-lived device keeps it
//! assert_eq!(book.wanted(), 2, "replaced");
//! assert!(book.returned(long), "room for it when it comes back after all");
//! ```

use std::collections::HashMap;
use std::time::Instant;

/// Counts of one warm pool. See the [module documentation](self).
#[derive(Debug, Clone, Default)]
pub struct PoolBook {
    target: usize,
    /// Openings under way, by id, with their deadlines.
    opening: HashMap<u128, Instant>,
    idle: usize,
    /// Connections claimed and expected back, by lending number, with their grace deadlines.
    lent: HashMap<u64, Instant>,
    next_lend: u64,
    /// The most connections opening and idle together, ever.
    high_water: usize,
}

impl PoolBook {
    /// An empty pool of `target` connections.
    pub fn new(target: usize) -> Self {
        PoolBook {
            target,
            ..PoolBook::default()
        }
    }

    /// The target size.
    pub fn target(&self) -> usize {
        self.target
    }

    /// Changes the target; connections above a lower target are not closed, they are just
    /// not replaced.
    pub fn set_target(&mut self, target: usize) {
        self.target = target;
    }

    /// How many more connections to open now.
    pub fn wanted(&self) -> usize {
        self.target.saturating_sub(self.size())
    }

    /// Connections opening, idle and lent now.
    fn size(&self) -> usize {
        self.opening.len() + self.idle + self.lent.len()
    }

    /// Connections lent now (claimed, and expected back within their grace).
    pub fn lent_now(&self) -> usize {
        self.lent.len()
    }

    /// Idle connections now.
    pub fn idle(&self) -> usize {
        self.idle
    }

    /// Openings under way now.
    pub fn opening_now(&self) -> usize {
        self.opening.len()
    }

    /// The most connections opening, idle and lent together since the pool began.
    pub fn high_water(&self) -> usize {
        self.high_water
    }

    /// An opening began (`id`: its ticket or dial), to arrive before `deadline`.
    pub fn opening(&mut self, id: u128, deadline: Instant) {
        self.opening.insert(id, deadline);
        self.note_size();
    }

    /// Opening `id` arrived and is idle now. `false` (and nothing counted) if it is not one
    /// under way: never begun, failed, or past its deadline.
    pub fn arrived(&mut self, id: u128) -> bool {
        if self.opening.remove(&id).is_none() {
            return false;
        }
        self.idle += 1;
        true
    }

    /// Opening `id` failed; another may be opened in its place.
    pub fn failed(&mut self, id: u128) {
        self.opening.remove(&id);
    }

    /// An idle connection left the pool: lost, or claimed and found dead.
    pub fn taken(&mut self) {
        self.idle = self.idle.saturating_sub(1);
    }

    /// An idle connection was claimed by a device at `now`: lent, expected back within
    /// `grace`. Returns its lending number.
    pub fn lend(&mut self, now: Instant, grace: std::time::Duration) -> u64 {
        self.idle = self.idle.saturating_sub(1);
        self.next_lend += 1;
        self.lent.insert(self.next_lend, now + grace);
        self.next_lend
    }

    /// Lent connection `lend` will not come back (its device's stream did not end cleanly,
    /// or it was found dead).
    pub fn not_returned(&mut self, lend: u64) {
        self.lent.remove(&lend);
    }

    /// Lent connection `lend` came back, idle: `true` if the pool takes it (it is still
    /// expected, or there is room), `false` if it is full and the connection is to be closed.
    pub fn returned(&mut self, lend: u64) -> bool {
        let expected = self.lent.remove(&lend).is_some();
        if expected || self.size() < self.target {
            self.idle += 1;
            self.note_size();
            true
        } else {
            false
        }
    }

    /// Forgets every opening past its deadline at `now`, and returns their ids (in DMZ mode,
    /// the tickets to withdraw); lent connections past their grace stop counting (they are
    /// replaced).
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<u128> {
        self.lent.retain(|_, grace| *grace > now);
        let due: Vec<u128> = self
            .opening
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in &due {
            self.opening.remove(id);
        }
        due
    }

    /// The earliest opening deadline or end of a grace, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.opening
            .values()
            .chain(self.lent.values())
            .min()
            .copied()
    }

    fn note_size(&mut self) {
        self.high_water = self.high_water.max(self.size());
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Open,
        Arrive(usize),
        Fail(usize),
        Take,
        Lend,
        Return(usize),
        Tick(u64),
        Retarget(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Open),
            3 => (0usize..8).prop_map(Op::Arrive),
            1 => (0usize..8).prop_map(Op::Fail),
            1 => Just(Op::Take),
            2 => Just(Op::Lend),
            2 => (0usize..8).prop_map(Op::Return),
            1 => (0u64..3_000).prop_map(Op::Tick),
            1 => (0usize..8).prop_map(Op::Retarget),
        ]
    }

    proptest! {
        /// Whatever arrives, fails, expires or is taken, opening and idle together never pass
        /// the largest target the pool had, `wanted` is exactly the shortfall, an opening
        /// arrives at most once, and an unknown or expired one is never counted.
        #[test]
        fn the_pool_never_grows_past_its_target(
            target in 0usize..8,
            ops in proptest::collection::vec(op(), 0..200),
        ) {
            let t0 = Instant::now();
            let ttl = Duration::from_millis(1_000);
            let mut book = PoolBook::new(target);
            let mut now = t0;
            let mut next = 0u128;
            let mut opened: Vec<(u128, Instant)> = Vec::new();
            let mut most_target = target;
            let mut lent: Vec<u64> = Vec::new();
            for op in ops {
                match op {
                    Op::Open => {
                        // The adapter opens only what is wanted.
                        if book.wanted() > 0 {
                            next += 1;
                            book.opening(next, now + ttl);
                            opened.push((next, now + ttl));
                        }
                    }
                    Op::Arrive(i) => {
                        if let Some(&(id, _)) = opened.get(i) {
                            let before = book.idle();
                            prop_assert!(book.arrived(id), "an opening under way");
                            prop_assert_eq!(book.idle(), before + 1);
                            opened.remove(i);
                            prop_assert!(!book.arrived(id), "arrived twice");
                        } else {
                            prop_assert!(!book.arrived(u128::MAX), "an unknown arrival was counted");
                        }
                    }
                    Op::Fail(i) => {
                        if i < opened.len() {
                            let (id, _) = opened.remove(i);
                            book.failed(id);
                        }
                    }
                    Op::Take => {
                        if book.idle() > 0 {
                            book.taken();
                        }
                    }
                    Op::Lend => {
                        if book.idle() > 0 {
                            lent.push(book.lend(now, ttl));
                        }
                    }
                    Op::Return(i) => {
                        if i < lent.len() {
                            let id = lent.remove(i);
                            let expected = book.lent_now();
                            let before = book.idle();
                            let kept = book.returned(id);
                            prop_assert_eq!(book.idle(), before + usize::from(kept));
                            prop_assert!(kept || book.lent_now() == expected, "an expected one was refused");
                        }
                    }
                    Op::Tick(ms) => {
                        now += Duration::from_millis(ms);
                        for id in book.handle_timeout(now) {
                            let i = opened.iter().position(|(o, _)| *o == id);
                            prop_assert!(i.is_some(), "expired an opening never begun");
                            let (_, deadline) = opened.remove(i.unwrap());
                            prop_assert!(deadline <= now);
                            prop_assert!(!book.arrived(id), "an expired opening was counted");
                        }
                    }
                    Op::Retarget(t) => {
                        book.set_target(t);
                        most_target = most_target.max(t);
                    }
                }
                let size = book.opening_now() + book.idle() + book.lent_now();
                prop_assert!(size <= most_target, "{size} above every target");
                prop_assert_eq!(book.wanted(), book.target().saturating_sub(size));
                prop_assert!(book.high_water() <= most_target);
                prop_assert_eq!(book.opening_now(), opened.len());
            }
        }
    }
}
