//! Broadcast domains derived from agents' peer reports, and the automatic assignment plan.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{ElectionError, Result};
use crate::ids::{BroadcastDomainId, DeviceId, DpId};

/// What one agent reports: the peers it sees in its broadcast domain (it answers their
/// discovery requests and they answer its own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PeerReport {
    /// The reporting device.
    pub device: DeviceId,
    /// The devices it sees.
    pub peers: Vec<DeviceId>,
}

impl PeerReport {
    /// A report from `device` listing `peers`.
    pub fn new(device: DeviceId, peers: Vec<DeviceId>) -> Self {
        Self { device, peers }
    }
}

/// Broadcast domains: the connected components of the "sees" relation between devices.
///
/// Seeing is treated as symmetric, so one report from either side links two devices. A
/// domain is named by the lowest id among its reporting (managed) members, so the same
/// reports always give the same ids. Peers that never report themselves link devices but
/// are not counted as members.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BroadcastDomains {
    /// Every reporting device, sorted, with its domain.
    domain_of: Vec<(DeviceId, BroadcastDomainId)>,
    members: BTreeMap<BroadcastDomainId, Vec<DeviceId>>,
}

fn find(parent: &mut [usize], mut x: usize) -> usize {
    while parent[x] != x {
        parent[x] = parent[parent[x]];
        x = parent[x];
    }
    x
}

impl BroadcastDomains {
    /// Derives the domains from peer reports.
    ///
    /// # Errors
    /// [`ElectionError::TooManyPeers`] if a report lists more than `max_peers` peers; nothing
    /// is derived then.
    pub fn derive(reports: &[PeerReport], max_peers: usize) -> Result<Self> {
        if let Some(r) = reports.iter().find(|r| r.peers.len() > max_peers) {
            return Err(ElectionError::TooManyPeers {
                device: r.device,
                count: r.peers.len(),
                limit: max_peers,
            });
        }
        // Dense indices: reporting devices first, sorted, so their index order is id order;
        // peers that never report themselves come after them.
        let mut ids: Vec<DeviceId> = reports.iter().map(|r| r.device).collect();
        ids.sort_unstable();
        ids.dedup();
        let reporters = ids.len();
        let mut parent: Vec<usize> = (0..reporters).collect();
        let union = |parent: &mut Vec<usize>, a: usize, b: usize| {
            let (ra, rb) = (find(parent, a), find(parent, b));
            if ra != rb {
                // Union towards the smaller index.
                let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
                parent[hi] = lo;
            }
        };
        // Peers that never report themselves are linked in a second pass, after them.
        let mut unknown: Vec<(usize, DeviceId)> = Vec::new();
        for r in reports {
            let a = ids.binary_search(&r.device).unwrap_or(0);
            for &p in &r.peers {
                match ids.binary_search(&p) {
                    Ok(b) => union(&mut parent, a, b),
                    Err(_) => unknown.push((a, p)),
                }
            }
        }
        let mut extra: Vec<DeviceId> = unknown.iter().map(|&(_, p)| p).collect();
        extra.sort_unstable();
        extra.dedup();
        parent.extend(reporters..reporters + extra.len());
        for (a, p) in unknown {
            let b = reporters + extra.binary_search(&p).unwrap_or(0);
            union(&mut parent, a, b);
        }
        // Name each component by its lowest reporting member: reporters sit at indices
        // 0..reporters in id order, so the first one met is the lowest.
        let mut name: Vec<Option<DeviceId>> = vec![None; parent.len()];
        let mut domain_of = Vec::with_capacity(reporters);
        let mut members: BTreeMap<BroadcastDomainId, Vec<DeviceId>> = BTreeMap::new();
        for (i, &id) in ids.iter().enumerate() {
            let root = find(&mut parent, i);
            let dom = BroadcastDomainId(name[root].get_or_insert(id).0);
            domain_of.push((id, dom));
            members.entry(dom).or_default().push(id);
        }
        Ok(Self { domain_of, members })
    }

    /// The domain of `device`, if it reported.
    pub fn domain_of(&self, device: DeviceId) -> Option<BroadcastDomainId> {
        self.domain_of
            .binary_search_by_key(&device, |&(d, _)| d)
            .ok()
            .map(|i| self.domain_of[i].1)
    }

    /// The reporting members of `domain`, sorted.
    pub fn members(&self, domain: BroadcastDomainId) -> &[DeviceId] {
        self.members.get(&domain).map_or(&[], Vec::as_slice)
    }

    /// Every domain with its sorted members.
    pub fn iter(&self) -> impl Iterator<Item = (BroadcastDomainId, &[DeviceId])> + '_ {
        self.members.iter().map(|(&d, m)| (d, m.as_slice()))
    }

    /// Number of domains.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are no domains.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

/// What one pass of automatic assignment did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AutoOutcome {
    /// Whether automatic assignment is on after this pass (hysteresis applied).
    pub enabled: bool,
    /// DPs registered automatically in this pass, with their broadcast domain.
    pub added: Vec<(DpId, BroadcastDomainId)>,
    /// Automatic registrations removed in this pass.
    pub removed: Vec<(DpId, BroadcastDomainId)>,
    /// Domains that have fewer DPs than the acceptable count (too few eligible candidates):
    /// `(domain, DPs it has, acceptable count)`.
    pub shortfalls: Vec<(BroadcastDomainId, usize, usize)>,
    /// Registrations that failed (for example when the multicast range is exhausted).
    pub errors: Vec<ElectionError>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(d: u64, peers: &[u64]) -> PeerReport {
        PeerReport::new(DeviceId(d), peers.iter().map(|&p| DeviceId(p)).collect())
    }

    #[test]
    fn components_are_named_by_their_lowest_reporting_member() {
        let reports = [
            r(5, &[6]),
            r(6, &[]),
            r(7, &[6, 99]),
            r(20, &[21]),
            r(21, &[20]),
            r(30, &[]),
        ];
        let d = BroadcastDomains::derive(&reports, 10).unwrap();
        assert_eq!(d.len(), 3);
        assert_eq!(d.domain_of(DeviceId(7)), Some(BroadcastDomainId(5)));
        assert_eq!(
            d.members(BroadcastDomainId(5)),
            &[DeviceId(5), DeviceId(6), DeviceId(7)]
        );
        assert_eq!(
            d.domain_of(DeviceId(99)),
            None,
            "non-reporting peer is not a member"
        );
        assert_eq!(d.domain_of(DeviceId(21)), Some(BroadcastDomainId(20)));
        assert_eq!(d.domain_of(DeviceId(30)), Some(BroadcastDomainId(30)));
        // Order of reports does not matter.
        let mut rev = reports.to_vec();
        rev.reverse();
        assert_eq!(BroadcastDomains::derive(&rev, 10).unwrap(), d);
    }

    #[test]
    fn oversized_reports_are_refused() {
        let err = BroadcastDomains::derive(&[r(1, &[2, 3, 4])], 2).unwrap_err();
        assert_eq!(
            err,
            ElectionError::TooManyPeers {
                device: DeviceId(1),
                count: 3,
                limit: 2
            }
        );
    }
}
