//! Sans-IO ticket table of a DMZ gateway.
//!
//! When a device connects, the gateway issues a fresh 128-bit ticket, bound to the signal
//! session it sends the `ConnectRequest` on (its session id and the fingerprint of the server
//! certificate that opened it). The server then opens a data connection and presents the
//! ticket. A ticket is redeemed at most once, only before it expires, and only by a data
//! connection from the same server on the same session; every other presentation is refused
//! and counted. The table is bounded: at most `max_pending` tickets wait at once.
//!
//! The table holds a caller-chosen waiter per ticket (a channel end in the tokio adapter, a
//! plain value in tests) and takes the current time as an argument.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use outpost_gateway::tickets::{Binding, Refused, TicketTable};
//!
//! let mut table = TicketTable::new(Duration::from_secs(10), 100);
//! let now = Instant::now();
//! let binding = Binding { session: 1, server: [7; 32] };
//! table.issue(0xABCD, binding, now, "device-1").unwrap();
//! assert_eq!(table.redeem(0xABCD, binding, now), Ok("device-1"));
//! assert_eq!(table.redeem(0xABCD, binding, now), Err(Refused::Replayed));
//! assert_eq!(table.stats().replayed, 1);
//! ```

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// What a ticket is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Binding {
    /// The signal session id the ticket was sent on.
    pub session: u64,
    /// SHA-256 of the server certificate that opened that signal session.
    pub server: [u8; 32],
}

/// Why a ticket presentation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refused {
    /// No such ticket was ever issued (or it was forgotten long ago).
    Unknown,
    /// The ticket was already redeemed.
    Replayed,
    /// The ticket expired before it was presented.
    Expired,
    /// The ticket was issued on another signal session or to another server.
    WrongSession,
}

/// Why a ticket could not be issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IssueError {
    /// `max_pending` tickets are already waiting.
    Full {
        /// The limit.
        max_pending: usize,
    },
    /// The value is already pending (the caller's random source repeated itself).
    Duplicate,
}

/// Counters of a ticket table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TicketStats {
    /// Tickets issued.
    pub issued: u64,
    /// Tickets redeemed.
    pub redeemed: u64,
    /// Tickets that expired unredeemed.
    pub expired: u64,
    /// Presentations of unknown tickets.
    pub unknown: u64,
    /// Presentations of already redeemed tickets.
    pub replayed: u64,
    /// Presentations of expired tickets.
    pub late: u64,
    /// Presentations on the wrong session or by the wrong server.
    pub wrong_session: u64,
    /// Issues refused because the table was full.
    pub refused_full: u64,
}

impl TicketStats {
    /// Every refused presentation.
    pub fn refused(&self) -> u64 {
        self.unknown + self.replayed + self.late + self.wrong_session
    }
}

struct Pending<W> {
    binding: Binding,
    expires: Instant,
    waiter: W,
}

/// The table. See the [module documentation](self).
pub struct TicketTable<W> {
    ttl: Duration,
    max_pending: usize,
    pending: HashMap<u128, Pending<W>>,
    /// Recently finished tickets (redeemed or expired), to tell a replay from an unknown
    /// ticket; bounded.
    finished: HashMap<u128, Finished>,
    finished_order: VecDeque<u128>,
    stats: TicketStats,
}

#[derive(Clone, Copy)]
enum Finished {
    Redeemed,
    Expired,
}

const REMEMBER_FINISHED: usize = 65_536;

impl<W> TicketTable<W> {
    /// A table whose tickets live `ttl` and of which at most `max_pending` wait at once.
    pub fn new(ttl: Duration, max_pending: usize) -> Self {
        TicketTable {
            ttl,
            max_pending,
            pending: HashMap::new(),
            finished: HashMap::new(),
            finished_order: VecDeque::new(),
            stats: TicketStats::default(),
        }
    }

    /// The ticket lifetime.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Counters.
    pub fn stats(&self) -> TicketStats {
        self.stats
    }

    /// Number of tickets waiting.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The earliest expiry among waiting tickets, for the caller's timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.expires).min()
    }

    /// Issues ticket `value` bound to `binding`; it expires at `now + ttl`, which is returned.
    pub fn issue(
        &mut self,
        value: u128,
        binding: Binding,
        now: Instant,
        waiter: W,
    ) -> Result<Instant, IssueError> {
        if self.pending.len() >= self.max_pending {
            self.stats.refused_full += 1;
            return Err(IssueError::Full {
                max_pending: self.max_pending,
            });
        }
        if self.pending.contains_key(&value) || self.finished.contains_key(&value) {
            return Err(IssueError::Duplicate);
        }
        let expires = now + self.ttl;
        self.pending.insert(
            value,
            Pending {
                binding,
                expires,
                waiter,
            },
        );
        self.stats.issued += 1;
        Ok(expires)
    }

    /// Redeems ticket `value` presented on a data connection bound to `binding`.
    pub fn redeem(&mut self, value: u128, binding: Binding, now: Instant) -> Result<W, Refused> {
        let Some(p) = self.pending.get(&value) else {
            let refused = match self.finished.get(&value) {
                Some(Finished::Redeemed) => {
                    self.stats.replayed += 1;
                    Refused::Replayed
                }
                Some(Finished::Expired) => {
                    self.stats.late += 1;
                    Refused::Expired
                }
                None => {
                    self.stats.unknown += 1;
                    Refused::Unknown
                }
            };
            return Err(refused);
        };
        if p.binding != binding {
            self.stats.wrong_session += 1;
            return Err(Refused::WrongSession);
        }
        if now >= p.expires {
            self.finish(value, Finished::Expired);
            self.stats.late += 1;
            return Err(Refused::Expired);
        }
        let p = self.finish(value, Finished::Redeemed).expect("present");
        self.stats.redeemed += 1;
        Ok(p.waiter)
    }

    /// Removes every ticket that expired by `now` and returns their waiters.
    pub fn expire(&mut self, now: Instant) -> Vec<(u128, W)> {
        let due: Vec<u128> = self
            .pending
            .iter()
            .filter(|(_, p)| now >= p.expires)
            .map(|(v, _)| *v)
            .collect();
        due.into_iter()
            .filter_map(|v| {
                let p = self.finish(v, Finished::Expired)?;
                self.stats.expired += 1;
                Some((v, p.waiter))
            })
            .collect()
    }

    /// Withdraws a ticket (the server refused it, or the device went away).
    pub fn cancel(&mut self, value: u128) -> Option<W> {
        self.finish(value, Finished::Expired).map(|p| p.waiter)
    }

    /// Withdraws every ticket of a signal session that ended.
    pub fn drop_session(&mut self, session: u64) -> Vec<(u128, W)> {
        let gone: Vec<u128> = self
            .pending
            .iter()
            .filter(|(_, p)| p.binding.session == session)
            .map(|(v, _)| *v)
            .collect();
        gone.into_iter()
            .filter_map(|v| self.finish(v, Finished::Expired).map(|p| (v, p.waiter)))
            .collect()
    }

    fn finish(&mut self, value: u128, how: Finished) -> Option<Pending<W>> {
        let p = self.pending.remove(&value)?;
        if self.finished_order.len() >= REMEMBER_FINISHED
            && let Some(old) = self.finished_order.pop_front()
        {
            self.finished.remove(&old);
        }
        self.finished.insert(value, how);
        self.finished_order.push_back(value);
        Some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    const B: Binding = Binding {
        session: 1,
        server: [1; 32],
    };

    #[test]
    fn each_refusal_is_distinct_and_counted() {
        let t0 = Instant::now();
        let mut t = TicketTable::new(Duration::from_secs(5), 10);
        t.issue(1, B, t0, ()).unwrap();
        t.issue(2, B, t0, ()).unwrap();
        t.issue(3, B, t0, ()).unwrap();
        assert_eq!(t.redeem(9, B, t0), Err(Refused::Unknown));
        let other = Binding { session: 2, ..B };
        assert_eq!(t.redeem(1, other, t0), Err(Refused::WrongSession));
        let other_server = Binding {
            server: [2; 32],
            ..B
        };
        assert_eq!(t.redeem(1, other_server, t0), Err(Refused::WrongSession));
        assert_eq!(t.redeem(1, B, t0), Ok(()));
        assert_eq!(t.redeem(1, B, t0), Err(Refused::Replayed));
        let late = t0 + Duration::from_secs(5);
        assert_eq!(t.redeem(2, B, late), Err(Refused::Expired));
        assert_eq!(t.redeem(2, B, t0), Err(Refused::Expired), "expiry is final");
        assert_eq!(t.expire(late).len(), 1, "ticket 3 expires");
        assert_eq!(t.redeem(3, B, t0), Err(Refused::Expired));
        let s = t.stats();
        assert_eq!((s.issued, s.redeemed, s.expired), (3, 1, 1));
        assert_eq!(
            (s.unknown, s.replayed, s.late, s.wrong_session),
            (1, 1, 3, 2)
        );
        assert_eq!(s.refused(), 7);
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn table_is_bounded() {
        let t0 = Instant::now();
        let mut t = TicketTable::new(Duration::from_secs(5), 2);
        t.issue(1, B, t0, ()).unwrap();
        t.issue(2, B, t0, ()).unwrap();
        assert_eq!(
            t.issue(3, B, t0, ()),
            Err(IssueError::Full { max_pending: 2 })
        );
        assert_eq!(
            t.issue(1, B, t0, ()),
            Err(IssueError::Full { max_pending: 2 })
        );
        t.redeem(1, B, t0).unwrap();
        assert_eq!(
            t.issue(1, B, t0, ()),
            Err(IssueError::Duplicate),
            "no reuse of a value"
        );
        t.issue(4, B, t0, ()).unwrap();
        assert_eq!(t.stats().refused_full, 2);
    }

    #[test]
    fn dropping_a_session_returns_only_its_waiters() {
        let t0 = Instant::now();
        let mut t = TicketTable::new(Duration::from_secs(5), 10);
        t.issue(1, B, t0, "a").unwrap();
        t.issue(2, Binding { session: 2, ..B }, t0, "b").unwrap();
        let gone = t.drop_session(1);
        assert_eq!(gone, vec![(1, "a")]);
        assert_eq!(t.pending(), 1);
        assert_eq!(t.poll_timeout(), Some(t0 + Duration::from_secs(5)));
    }

    proptest! {
        /// Whatever the order of presentations, each ticket is redeemed at most once, and only
        /// before its expiry by its own binding.
        #[test]
        fn at_most_once(ops in proptest::collection::vec((0u128..8, 0u64..3, 0u64..12), 1..80)) {
            let t0 = Instant::now();
            let mut t = TicketTable::new(Duration::from_secs(6), 100);
            for v in 0..8u128 {
                t.issue(v, Binding { session: (v % 3) as u64, server: [0; 32] }, t0, v).unwrap();
            }
            let mut redeemed = HashSet::new();
            for (v, session, secs) in ops {
                let now = t0 + Duration::from_secs(secs);
                if let Ok(w) = t.redeem(v, Binding { session, server: [0; 32] }, now) {
                    prop_assert_eq!(w, v);
                    prop_assert!(redeemed.insert(v), "ticket {} redeemed twice", v);
                    prop_assert_eq!(session, (v % 3) as u64);
                    prop_assert!(secs < 6);
                }
            }
            prop_assert_eq!(t.stats().redeemed as usize, redeemed.len());
        }
    }
}
