//! Admission of connections whose peer is not known yet: a bounded pool with a cap per
//! source, so one address (or one IPv6 /64) cannot take the whole pool.
//!
//! Sans-IO: no clock and no sockets. An [`Admission`] is held for as long as the connection
//! is in the phase the pool bounds (a TLS handshake, a Web Console tunnel) and gives its
//! place back when dropped. A pool of peers whose handshake is short can make room by
//! evicting its oldest holder ([`AdmissionPool::admit_evicting_oldest`]): a flood from many
//! addresses then has to outpace a legitimate handshake to starve it, instead of merely
//! filling the pool once per deadline.
//!
//! ```
//! use std::net::IpAddr;
//! use outpost_gateway::admission::{AdmissionPool, Refused};
//!
//! let pool = AdmissionPool::new(3, 2);
//! let a: IpAddr = "192.0.2.1".parse().unwrap();
//! let b: IpAddr = "192.0.2.2".parse().unwrap();
//! let first = pool.try_admit(a).unwrap();
//! let _second = pool.try_admit(a).unwrap();
//! assert_eq!(pool.try_admit(a).unwrap_err(), Refused::SourceFull);
//! let _third = pool.try_admit(b).unwrap();
//! assert_eq!(pool.try_admit(b).unwrap_err(), Refused::PoolFull);
//! drop(first);
//! assert!(pool.try_admit(b).is_ok());
//! ```

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio_util::sync::CancellationToken;

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refused {
    /// Every place of the pool is taken.
    PoolFull,
    /// The connection's source holds its whole share already.
    SourceFull,
}

/// The key a source is counted under: an IPv4 address, or the /64 an IPv6 address is in
/// (one host usually has a whole /64). An IPv4-mapped IPv6 address counts as its IPv4 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceKey(u128);

impl SourceKey {
    /// The key of `ip`.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => SourceKey(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceKey(u128::from(u32::from(v4))),
                // Tagged so no /64 collides with an IPv4 key.
                None => SourceKey((u128::from(v6) & !((1u128 << 64) - 1)) | 1),
            },
        }
    }
}

#[derive(Debug, Default)]
struct State {
    in_use: usize,
    by_source: HashMap<SourceKey, usize>,
    /// Every place held, oldest first: its source and the token cancelled if it is evicted.
    held: BTreeMap<u64, (SourceKey, CancellationToken)>,
    next: u64,
    evicted: u64,
}

impl State {
    /// Gives back the place `seq` if it is still held.
    fn release(&mut self, seq: u64) -> Option<CancellationToken> {
        let (source, token) = self.held.remove(&seq)?;
        self.in_use -= 1;
        if let Some(n) = self.by_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.by_source.remove(&source);
            }
        }
        Some(token)
    }
}

#[derive(Debug)]
struct Inner {
    capacity: usize,
    per_source: usize,
    state: Mutex<State>,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // Every update below is complete before the guard drops, so a poisoned lock is
        // still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A pool of `capacity` places, of which one source may hold at most `per_source`.
/// Cloning gives another handle on the same pool.
#[derive(Debug, Clone)]
pub struct AdmissionPool {
    inner: Arc<Inner>,
}

/// One place in an [`AdmissionPool`], given back when dropped.
#[derive(Debug)]
pub struct Admission {
    pool: Arc<Inner>,
    seq: u64,
    evicted: CancellationToken,
}

impl Admission {
    /// Cancelled if the pool evicts this place to make room (never once it was dropped):
    /// the connection holding it should then be closed.
    pub fn eviction(&self) -> CancellationToken {
        self.evicted.clone()
    }
}

impl AdmissionPool {
    /// A pool of `capacity` places (at least 1), at most `per_source` (at least 1) of them
    /// for one source.
    pub fn new(capacity: usize, per_source: usize) -> Self {
        AdmissionPool {
            inner: Arc::new(Inner {
                capacity: capacity.max(1),
                per_source: per_source.max(1),
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// A place for a connection from `source`, or why not.
    pub fn try_admit(&self, source: IpAddr) -> Result<Admission, Refused> {
        self.admit(source, false)
    }

    /// As [`try_admit`](Self::try_admit), but a full pool makes room by evicting its oldest
    /// place (cancelling its [`eviction`](Admission::eviction) token); a source over its share
    /// is still refused.
    pub fn admit_evicting_oldest(&self, source: IpAddr) -> Result<Admission, Refused> {
        self.admit(source, true)
    }

    fn admit(&self, source: IpAddr, evict: bool) -> Result<Admission, Refused> {
        let key = SourceKey::of(source);
        let mut s = self.inner.state();
        if s.by_source.get(&key).copied().unwrap_or(0) >= self.inner.per_source {
            return Err(Refused::SourceFull);
        }
        if s.in_use >= self.inner.capacity {
            let oldest = s.held.keys().next().copied();
            match oldest.filter(|_| evict).and_then(|seq| s.release(seq)) {
                Some(victim) => {
                    victim.cancel();
                    s.evicted += 1;
                }
                None => return Err(Refused::PoolFull),
            }
        }
        *s.by_source.entry(key).or_insert(0) += 1;
        s.in_use += 1;
        let seq = s.next;
        s.next += 1;
        let token = CancellationToken::new();
        s.held.insert(seq, (key, token.clone()));
        Ok(Admission {
            pool: self.inner.clone(),
            seq,
            evicted: token,
        })
    }

    /// Places evicted to make room since the pool was made.
    pub fn evicted(&self) -> u64 {
        self.inner.state().evicted
    }

    /// Places taken now.
    pub fn in_use(&self) -> usize {
        self.inner.state().in_use
    }

    /// Places `source` holds now.
    pub fn held_by(&self, source: IpAddr) -> usize {
        let s = self.inner.state();
        s.by_source
            .get(&SourceKey::of(source))
            .copied()
            .unwrap_or(0)
    }

    /// Sources holding at least one place (the pool's memory is proportional to it, and it
    /// is at most the capacity).
    pub fn sources(&self) -> usize {
        self.inner.state().by_source.len()
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        // An evicted place was given back already.
        self.pool.state().release(self.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ipv6_hosts_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(SourceKey::of(a), SourceKey::of(b));
        assert_ne!(SourceKey::of(a), SourceKey::of(c));
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(SourceKey::of(v4), SourceKey::of(mapped));
        // The IPv6 key of ::/64 is not the IPv4 key of 0.0.0.0.
        assert_ne!(
            SourceKey::of("::1".parse().unwrap()),
            SourceKey::of("0.0.0.0".parse().unwrap())
        );
    }

    #[test]
    fn a_full_pool_evicts_its_oldest_place_for_a_newcomer() {
        let pool = AdmissionPool::new(2, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let oldest = pool.admit_evicting_oldest(a).unwrap();
        let second = pool.admit_evicting_oldest(a).unwrap();
        assert_eq!(pool.try_admit(b).unwrap_err(), Refused::PoolFull);
        let newcomer = pool.admit_evicting_oldest(b).unwrap();
        assert!(oldest.eviction().is_cancelled());
        assert!(!second.eviction().is_cancelled());
        assert_eq!((pool.in_use(), pool.held_by(a), pool.evicted()), (2, 1, 1));
        // Dropping the evicted place gives nothing back twice.
        drop(oldest);
        assert_eq!(pool.in_use(), 2);
        // A source over its share is refused, not made room for.
        let _b2 = pool.admit_evicting_oldest(b).unwrap();
        assert_eq!(
            pool.admit_evicting_oldest(b).unwrap_err(),
            Refused::SourceFull
        );
        drop((second, newcomer));
    }

    proptest! {
        /// Whatever the order of admissions and releases, the pool never holds more than its
        /// capacity, no source more than its share, a refusal happens only at one of the two
        /// bounds, and once everything is released nothing is left behind.
        #[test]
        fn bounds_hold_and_every_place_comes_back(
            capacity in 1usize..12,
            per_source in 1usize..6,
            steps in proptest::collection::vec((0u8..5, 0u8..3), 0..200),
        ) {
            let pool = AdmissionPool::new(capacity, per_source);
            // Places held, oldest first.
            let mut held: Vec<(u8, Admission)> = Vec::new();
            for (src, step) in steps {
                let ip = IpAddr::from([10, 0, 0, src]);
                if step < 2 {
                    let evicting = step == 1;
                    let mine = held.iter().filter(|(s, _)| *s == src).count();
                    let r = if evicting { pool.admit_evicting_oldest(ip) } else { pool.try_admit(ip) };
                    match r {
                        Ok(a) => {
                            if held.len() == capacity {
                                // Room was made from the oldest place.
                                prop_assert!(evicting);
                                let (_, victim) = held.remove(0);
                                prop_assert!(victim.eviction().is_cancelled());
                            }
                            held.push((src, a));
                        }
                        Err(Refused::PoolFull) => {
                            prop_assert!(!evicting);
                            prop_assert_eq!(held.len(), capacity);
                        }
                        Err(Refused::SourceFull) => prop_assert_eq!(mine, per_source),
                    }
                } else if let Some(i) = held.iter().position(|(s, _)| *s == src) {
                    held.remove(i);
                }
                prop_assert!(held.iter().all(|(_, a)| !a.eviction().is_cancelled()));
                prop_assert!(pool.in_use() <= capacity);
                prop_assert_eq!(pool.in_use(), held.len());
                prop_assert!(pool.held_by(ip) <= per_source);
            }
            held.clear();
            prop_assert_eq!(pool.in_use(), 0);
            prop_assert_eq!(pool.sources(), 0);
        }
    }
}
