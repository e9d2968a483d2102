//! Property tests of the resolvers: nearest-DP lookup, group tree validation, multicast
//! uniqueness, broadcast domain derivation and the count / hysteresis rules.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use outpost_election::{
    AutoAssignPolicy, BroadcastDomainId, BroadcastDomains, DeviceId, DevicePlacement, Election,
    ElectionConfig, ElectionError, GIB, GroupEdge, GroupId, GroupTree, Heartbeat, LocationId,
    MulticastAllocator, MulticastRange, NodeFacts, Origin, PeerReport, ScopeId,
};
use proptest::prelude::*;

/// A tree where group i+1 hangs under one of the groups before it.
fn tree_of(parents: &[usize]) -> GroupTree {
    let edges = parents.iter().enumerate().map(|(i, &p)| GroupEdge {
        group: GroupId(i as u64 + 1),
        parent: if i == 0 {
            None
        } else {
            Some(GroupId((p % i) as u64 + 1))
        },
    });
    GroupTree::from_edges(edges).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The served DP is the active DP of the first scope with one, in the documented order:
    /// location, then own group and each ancestor in turn, then broadcast domain. The
    /// one-pass table agrees.
    #[test]
    fn nearest_dp_matches_a_reference_walk(
        parents in prop::collection::vec(any::<usize>(), 1..30),
        regs in prop::collection::vec((0u8..3, 0u64..30, 0u64..40, any::<bool>()), 0..40),
        devices in prop::collection::vec((0u64..30, prop::option::of(0u64..6), prop::option::of(0u64..6)), 1..60),
    ) {
        let tree = tree_of(&parents);
        let n = parents.len() as u64;
        let mut e = Election::new(ElectionConfig::default(), tree.clone()).unwrap();
        let t = Instant::now();
        for &(kind, id, dp, alive) in &regs {
            let scope = match kind {
                0 => ScopeId::Group(GroupId(id % n + 1)),
                1 => ScopeId::NetworkLocation(LocationId(id % 6)),
                _ => ScopeId::BroadcastDomain(BroadcastDomainId(id % 6)),
            };
            let dp = DeviceId(1000 + dp);
            match e.register(dp, scope, Origin::Manual) {
                Ok(_) | Err(ElectionError::DuplicateRegistration { .. }) => {}
                Err(other) => prop_assert!(false, "unexpected {other}"),
            }
            let disk = if alive { 10 * GIB } else { GIB };
            e.heartbeat(Heartbeat::new(dp, NodeFacts::new(disk)), t).unwrap();
        }
        e.round(t);
        for (i, &(grp, loc, bd)) in devices.iter().enumerate() {
            let mut p = DevicePlacement::in_group(GroupId(grp % n + 1));
            if let Some(l) = loc { p = p.with_location(LocationId(l)); }
            if let Some(b) = bd { p = p.with_broadcast_domain(BroadcastDomainId(b)); }
            e.place_device(DeviceId(i as u64), p).unwrap();
        }
        let table: BTreeMap<_, _> = e.serving_table().into_iter().collect();
        for (i, &(grp, loc, bd)) in devices.iter().enumerate() {
            let mut chain = Vec::new();
            if let Some(l) = loc { chain.push(ScopeId::NetworkLocation(LocationId(l))); }
            for g in tree.ancestors_and_self(GroupId(grp % n + 1)).unwrap() {
                chain.push(ScopeId::Group(g));
            }
            if let Some(b) = bd { chain.push(ScopeId::BroadcastDomain(BroadcastDomainId(b))); }
            let expected = chain.into_iter().find_map(|s| e.active(s).map(|(dp, epoch)| (s, dp, epoch)));
            let got = e.serving(DeviceId(i as u64)).unwrap().map(|s| (s.scope, s.dp, s.epoch));
            prop_assert_eq!(got, expected);
            prop_assert_eq!(table[&DeviceId(i as u64)].map(|s| (s.scope, s.dp, s.epoch)), expected);
            if let Some((_, dp, _)) = expected {
                // Only eligible DPs serve.
                prop_assert!(e.eligibility(dp, t).unwrap().is_ok());
            }
        }
    }

    /// Every scope with an eligible member has exactly one active, eligible DP after one
    /// round, and it is the best-ranked eligible member when there was no active before.
    #[test]
    fn one_round_elects_the_best_eligible_member(
        regs in prop::collection::vec((0u64..8, 0u64..30, 0u64..12, 0u64..100_000), 1..50),
    ) {
        let tree = tree_of(&[0; 8]);
        let mut e = Election::new(ElectionConfig::default(), tree).unwrap();
        let t = Instant::now();
        let mut facts = BTreeMap::new();
        for &(g, dp, disk, up) in &regs {
            let dp = DeviceId(dp);
            let _ = e.register(dp, ScopeId::Group(GroupId(g + 1)), Origin::Manual);
            let f = NodeFacts::new(disk * GIB).with_uptime_secs(up);
            if e.heartbeat(Heartbeat::new(dp, f), t).is_ok() {
                facts.insert(dp, f);
            }
        }
        e.round(t);
        for scope in e.scope_ids() {
            let eligible: Vec<DeviceId> = e.members(scope).into_iter().map(|(d, _)| d)
                .filter(|d| e.eligibility(*d, t).unwrap().is_ok()).collect();
            let best = eligible.iter().copied().min_by(|a, b| {
                outpost_election::compare_candidates((*a, &facts[a]), (*b, &facts[b]))
            });
            prop_assert_eq!(e.active(scope).map(|a| a.0), best);
            let dec = e.decision(scope).unwrap();
            prop_assert_eq!(dec.standbys.len() + usize::from(dec.active.is_some()), eligible.len());
        }
    }

    /// A tree given as parent pointers is accepted exactly when it has no cycle.
    #[test]
    fn tree_validation_detects_exactly_the_cycles(parents in prop::collection::vec(prop::option::of(0usize..12), 1..12)) {
        let n = parents.len();
        let edges: Vec<GroupEdge> = parents.iter().enumerate().map(|(i, p)| GroupEdge {
            group: GroupId(i as u64),
            parent: p.map(|p| GroupId((p % n) as u64)),
        }).collect();
        let has_cycle = (0..n).any(|start| {
            let mut cur = Some(start);
            for _ in 0..=n {
                cur = cur.and_then(|c| parents[c].map(|p| p % n));
                if cur == Some(start) { return true; }
            }
            false
        });
        match GroupTree::from_edges(edges) {
            Ok(t) => {
                prop_assert!(!has_cycle);
                for i in 0..n as u64 {
                    let chain = t.ancestors_and_self(GroupId(i)).unwrap();
                    prop_assert_eq!(t.depth(GroupId(i)).unwrap() as usize + 1, chain.len());
                }
            }
            Err(ElectionError::GroupCycle { .. }) => prop_assert!(has_cycle),
            Err(other) => prop_assert!(false, "unexpected {other}"),
        }
    }

    /// Any sequence of assignments and releases keeps addresses unique, inside the range,
    /// and fails only when the range is full.
    #[test]
    fn multicast_addresses_stay_unique(ops in prop::collection::vec((any::<bool>(), 0u64..40), 1..200), size in 1u8..32) {
        let first: std::net::Ipv4Addr = "239.255.3.0".parse().unwrap();
        let last = std::net::Ipv4Addr::from_bits(first.to_bits() + u32::from(size) - 1);
        let mut m = MulticastAllocator::new(MulticastRange::new(first.into(), last.into())).unwrap();
        for (assign, dp) in ops {
            let dp = DeviceId(dp);
            if assign {
                match m.assign(dp) {
                    Ok(a) => prop_assert!(a >= std::net::IpAddr::V4(first) && a <= std::net::IpAddr::V4(last)),
                    Err(ElectionError::MulticastExhausted { size: s, .. }) => {
                        prop_assert_eq!(s, u128::from(size));
                        prop_assert_eq!(m.len(), usize::from(size));
                    }
                    Err(other) => prop_assert!(false, "unexpected {other}"),
                }
            } else {
                m.release(dp);
            }
            let addrs: BTreeSet<_> = m.iter().map(|(_, a)| a).collect();
            prop_assert_eq!(addrs.len(), m.len());
        }
    }

    /// Every reporter shares a domain with each peer that also reports; domain ids are the
    /// lowest member; the order of reports does not matter.
    #[test]
    fn broadcast_domains_are_connected_components(
        reports in prop::collection::vec((0u64..50, prop::collection::vec(0u64..50, 0..4)), 0..60),
    ) {
        let reports: Vec<PeerReport> = reports.into_iter()
            .map(|(d, p)| PeerReport::new(DeviceId(d), p.into_iter().map(DeviceId).collect()))
            .collect();
        let doms = BroadcastDomains::derive(&reports, 8).unwrap();
        let reporters: BTreeSet<DeviceId> = reports.iter().map(|r| r.device).collect();
        for r in &reports {
            for p in &r.peers {
                if reporters.contains(p) {
                    prop_assert_eq!(doms.domain_of(r.device), doms.domain_of(*p));
                }
            }
        }
        for (id, members) in doms.iter() {
            prop_assert_eq!(members.first().map(|m| m.0), Some(id.0));
        }
        let mut rev = reports.clone();
        rev.reverse();
        prop_assert_eq!(BroadcastDomains::derive(&rev, 8).unwrap(), doms);
    }

    /// Count rules: zero below the minimum, one up to the single maximum, never fewer
    /// recommended than acceptable, and never decreasing with segment size.
    #[test]
    fn count_rules_are_monotone(n in 0usize..200_000) {
        let p = AutoAssignPolicy::default();
        let c = p.segment_count(n);
        prop_assert!(c.recommended >= c.acceptable);
        if n < 10 { prop_assert_eq!(c.recommended, 0); }
        else if n <= 100 { prop_assert_eq!((c.acceptable, c.recommended), (1, 1)); }
        else {
            prop_assert_eq!(c.acceptable, n / 10_000 + 1);
            prop_assert_eq!(c.recommended, n / 5_000 + 2);
        }
        let next = p.segment_count(n + 1);
        prop_assert!(next.acceptable >= c.acceptable && next.recommended >= c.recommended);
    }

    /// Hysteresis: any walk of fleet sizes switches on only at >= 300 and off only below 200.
    #[test]
    fn hysteresis_never_flips_inside_the_band(sizes in prop::collection::vec(0usize..600, 1..50)) {
        let p = AutoAssignPolicy::default();
        let mut on = false;
        for n in sizes {
            let next = p.next_state(on, n);
            if next != on {
                if next { prop_assert!(n >= 300); } else { prop_assert!(n < 200); }
            }
            if (200..300).contains(&n) { prop_assert_eq!(next, on); }
            on = next;
        }
    }

    /// The sync interval never goes below the floor and never shrinks as the fleet grows.
    #[test]
    fn sync_interval_is_monotone(a in 0u64..1_000_000, b in 0u64..1_000_000) {
        let s = outpost_election::SyncIntervalPolicy::default();
        let (lo, hi) = (a.min(b), a.max(b));
        prop_assert!(s.interval(lo) <= s.interval(hi));
        prop_assert!(s.interval(lo) >= std::time::Duration::from_secs(900));
    }

    /// Automatic assignment gives each domain min(target, fit candidates) DPs, all fit,
    /// all members of the domain, the best ranked first time round, and is stable when
    /// re-run on the same facts.
    #[test]
    fn auto_assignment_meets_the_count_rule_with_the_best_candidates(
        seg_sizes in prop::collection::vec(1u64..400, 1..6),
        disks in prop::collection::vec(0u64..20, 64),
    ) {
        let mut e = Election::new(ElectionConfig::default(), tree_of(&[0])).unwrap();
        let mut reports = Vec::new();
        let mut facts = BTreeMap::new();
        for (s, &n) in seg_sizes.iter().enumerate() {
            let base = s as u64 * 10_000;
            for i in 0..n {
                let dev = DeviceId(base + i);
                let peers = if i + 1 < n { vec![DeviceId(base + i + 1)] } else { vec![] };
                reports.push(PeerReport::new(dev, peers));
                facts.insert(dev, NodeFacts::new(disks[(i as usize * 7 + s) % disks.len()] * GIB));
                e.place_device(dev, DevicePlacement::in_group(GroupId(1))).unwrap();
            }
        }
        let domains = BroadcastDomains::derive(&reports, 8).unwrap();
        let out = e.auto_assign(&domains, &facts);
        let total: u64 = seg_sizes.iter().sum();
        prop_assert_eq!(out.enabled, total >= 300);
        let policy = AutoAssignPolicy::default();
        for (b, members) in domains.iter() {
            let dps: Vec<DeviceId> = e.members(ScopeId::BroadcastDomain(b)).into_iter().map(|(d, _)| d).collect();
            let mut fit: Vec<DeviceId> = members.iter().copied()
                .filter(|d| facts[d].free_disk_bytes >= 4 * GIB).collect();
            fit.sort_by(|a, b| outpost_election::compare_candidates((*a, &facts[a]), (*b, &facts[b])));
            let want = if out.enabled { policy.segment_target(members.len()).min(fit.len()) } else { 0 };
            let mut best: Vec<DeviceId> = fit[..want].to_vec();
            best.sort();
            prop_assert_eq!(&dps, &best);
            let acceptable = policy.segment_count(members.len()).acceptable;
            let short = out.shortfalls.iter().any(|s| s.0 == b);
            prop_assert_eq!(short, out.enabled && dps.len() < acceptable);
        }
        let again = e.auto_assign(&domains, &facts);
        prop_assert!(again.added.is_empty() && again.removed.is_empty());
    }

    /// Decisions, assignments and placements survive a serde round trip.
    #[test]
    fn decisions_round_trip_through_json(dps in prop::collection::vec(0u64..20, 1..10)) {
        let mut e = Election::new(ElectionConfig::default(), tree_of(&[0])).unwrap();
        let t = Instant::now();
        let scope = ScopeId::Group(GroupId(1));
        for dp in dps {
            let _ = e.register(DeviceId(dp), scope, Origin::Manual);
            e.heartbeat(Heartbeat::new(DeviceId(dp), NodeFacts::new(8 * GIB)), t).unwrap();
        }
        let round = e.round(t);
        let json = serde_json::to_string(&round).unwrap();
        let back: outpost_election::Round = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(back, round);
    }
}
