//! Unique multicast group addresses for DPs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::config::MulticastRange;
use crate::error::{ElectionError, Result};
use crate::ids::DpId;

/// Hands each DP a multicast group address from a range that no other DP holds.
///
/// A DP keeps its address until it is released; the lowest free address is handed out
/// first, so the same sequence of calls always gives the same addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MulticastAllocator {
    range: MulticastRange,
    size: u128,
    by_dp: BTreeMap<DpId, u128>,
    used: BTreeSet<u128>,
}

impl MulticastAllocator {
    /// An allocator over `range`.
    ///
    /// # Errors
    /// [`ElectionError::InvalidConfig`] if the range is not valid.
    pub fn new(range: MulticastRange) -> Result<Self> {
        range.validate()?;
        Ok(Self {
            range,
            size: range.size(),
            by_dp: BTreeMap::new(),
            used: BTreeSet::new(),
        })
    }

    fn addr_at(&self, offset: u128) -> IpAddr {
        match self.range.first {
            IpAddr::V4(a) => {
                // The range was validated, so the offset stays inside IPv4.
                let bits = u128::from(a.to_bits()) + offset;
                IpAddr::V4(Ipv4Addr::from_bits(u32::try_from(bits).unwrap_or(u32::MAX)))
            }
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from_bits(a.to_bits().saturating_add(offset))),
        }
    }

    /// The address of `dp`, handing it the lowest free one if it has none yet.
    ///
    /// # Errors
    /// [`ElectionError::MulticastExhausted`] when every address of the range is taken.
    pub fn assign(&mut self, dp: DpId) -> Result<IpAddr> {
        if let Some(&off) = self.by_dp.get(&dp) {
            return Ok(self.addr_at(off));
        }
        // The lowest offset not in `used`: walk the sorted set until the first gap.
        let mut candidate = 0u128;
        for &u in &self.used {
            if u != candidate {
                break;
            }
            candidate += 1;
        }
        if candidate >= self.size {
            return Err(ElectionError::MulticastExhausted {
                first: self.range.first,
                last: self.range.last,
                size: self.size,
            });
        }
        self.used.insert(candidate);
        self.by_dp.insert(dp, candidate);
        Ok(self.addr_at(candidate))
    }

    /// Whether [`MulticastAllocator::assign`] for `dp` would succeed.
    pub fn can_assign(&self, dp: DpId) -> bool {
        self.by_dp.contains_key(&dp) || (self.used.len() as u128) < self.size
    }

    /// Frees the address of `dp`, returning it.
    pub fn release(&mut self, dp: DpId) -> Option<IpAddr> {
        let off = self.by_dp.remove(&dp)?;
        self.used.remove(&off);
        Some(self.addr_at(off))
    }

    /// The address of `dp`, if it has one.
    pub fn get(&self, dp: DpId) -> Option<IpAddr> {
        self.by_dp.get(&dp).map(|&o| self.addr_at(o))
    }

    /// Number of addresses handed out.
    pub fn len(&self) -> usize {
        self.by_dp.len()
    }

    /// Whether no address is handed out.
    pub fn is_empty(&self) -> bool {
        self.by_dp.is_empty()
    }

    /// All `(dp, address)` pairs, by DP.
    pub fn iter(&self) -> impl Iterator<Item = (DpId, IpAddr)> + '_ {
        self.by_dp.iter().map(|(&d, &o)| (d, self.addr_at(o)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::DeviceId;

    #[test]
    fn addresses_are_unique_reused_after_release_and_exhaustion_is_an_error() {
        let range = MulticastRange::new(
            "239.255.0.1".parse().unwrap(),
            "239.255.0.3".parse().unwrap(),
        );
        let mut m = MulticastAllocator::new(range).unwrap();
        let a = m.assign(DeviceId(10)).unwrap();
        let b = m.assign(DeviceId(11)).unwrap();
        let c = m.assign(DeviceId(12)).unwrap();
        assert_eq!(a, "239.255.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(c, "239.255.0.3".parse::<IpAddr>().unwrap());
        assert!(a != b && b != c && a != c);
        assert_eq!(m.assign(DeviceId(10)).unwrap(), a, "stable per DP");
        let err = m.assign(DeviceId(13)).unwrap_err();
        assert_eq!(
            err,
            ElectionError::MulticastExhausted {
                first: range.first,
                last: range.last,
                size: 3
            }
        );
        assert!(err.to_string().contains("239.255.0.1..=239.255.0.3"));
        assert_eq!(m.release(DeviceId(11)), Some(b));
        assert_eq!(m.assign(DeviceId(13)).unwrap(), b);
    }

    #[test]
    fn ipv6_ranges_work() {
        let range = MulticastRange::new("ff15::1".parse().unwrap(), "ff15::ffff".parse().unwrap());
        let mut m = MulticastAllocator::new(range).unwrap();
        assert_eq!(
            m.assign(DeviceId(1)).unwrap(),
            "ff15::1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            m.assign(DeviceId(2)).unwrap(),
            "ff15::2".parse::<IpAddr>().unwrap()
        );
    }
}
