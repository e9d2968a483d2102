//! Behaviour of the election engine: nearest DP, precedence, election rules, fencing,
//! disk thresholds, automatic assignment and bad input.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use outpost_election::{
    BroadcastDomainId, BroadcastDomains, DeviceId, DevicePlacement, DpRole, Election,
    ElectionConfig, ElectionError, GIB, GroupEdge, GroupId, GroupTree, Heartbeat, Ineligibility,
    IssueEvent, LocationId, MulticastRange, NodeFacts, Origin, PeerReport, ScopeId,
};

const MIN: Duration = Duration::from_secs(60);

fn g(id: u64) -> GroupId {
    GroupId(id)
}
fn d(id: u64) -> DeviceId {
    DeviceId(id)
}

/// 1 ─┬─ 2 ─── 3 ─── 4
///    └─ 5
fn tree() -> GroupTree {
    GroupTree::from_edges([
        GroupEdge {
            group: g(1),
            parent: None,
        },
        GroupEdge {
            group: g(2),
            parent: Some(g(1)),
        },
        GroupEdge {
            group: g(3),
            parent: Some(g(2)),
        },
        GroupEdge {
            group: g(4),
            parent: Some(g(3)),
        },
        GroupEdge {
            group: g(5),
            parent: Some(g(1)),
        },
    ])
    .unwrap()
}

fn engine() -> Election {
    Election::new(ElectionConfig::default(), tree()).unwrap()
}

/// Group 1 with `dps` registered as its distribution points by the administrator.
fn group_with(e: &mut Election, dps: &[u64]) -> ScopeId {
    let s = ScopeId::Group(g(1));
    for &dp in dps {
        e.register(d(dp), s, Origin::Manual).unwrap();
    }
    s
}

fn beat(e: &mut Election, dp: u64, disk_gib: u64, now: Instant) {
    e.heartbeat(Heartbeat::new(d(dp), NodeFacts::new(disk_gib * GIB)), now)
        .unwrap();
}

#[test]
fn nearest_dp_up_the_group_hierarchy() {
    let mut e = engine();
    let t = Instant::now();
    e.register(d(100), ScopeId::Group(g(1)), Origin::Manual)
        .unwrap();
    e.register(d(300), ScopeId::Group(g(3)), Origin::Manual)
        .unwrap();
    for (dev, grp) in [(1, 4), (2, 3), (3, 2), (4, 5), (5, 1)] {
        e.place_device(d(dev), DevicePlacement::in_group(g(grp)))
            .unwrap();
    }
    beat(&mut e, 100, 10, t);
    beat(&mut e, 300, 10, t);
    e.round(t);
    let via = |e: &Election, dev| e.serving(d(dev)).unwrap().map(|s| (s.dp.0, s.scope));
    assert_eq!(via(&e, 1), Some((300, ScopeId::Group(g(3)))));
    assert_eq!(via(&e, 2), Some((300, ScopeId::Group(g(3)))));
    assert_eq!(via(&e, 3), Some((100, ScopeId::Group(g(1)))));
    assert_eq!(via(&e, 4), Some((100, ScopeId::Group(g(1)))));
    assert_eq!(via(&e, 5), Some((100, ScopeId::Group(g(1)))));

    // The nearest DP's scope loses its only DP: devices fall back to the next one up.
    let later = t + 4 * MIN;
    beat(&mut e, 100, 10, later);
    e.round(later);
    assert_eq!(via(&e, 1), Some((100, ScopeId::Group(g(1)))));

    // Moving a device changes its DP; the one-pass table agrees with single lookups.
    beat(&mut e, 300, 10, later);
    e.round(later);
    e.move_device(d(4), g(4)).unwrap();
    assert_eq!(via(&e, 4), Some((300, ScopeId::Group(g(3)))));
    for (dev, s) in e.serving_table() {
        assert_eq!(e.serving(dev).unwrap(), s);
    }
}

#[test]
fn dp_host_need_not_be_inside_its_group() {
    let mut e = engine();
    let t = Instant::now();
    // DP 9 is a device of group 5 but serves group 3.
    e.place_device(d(9), DevicePlacement::in_group(g(5)))
        .unwrap();
    e.place_device(d(1), DevicePlacement::in_group(g(4)))
        .unwrap();
    e.register(d(9), ScopeId::Group(g(3)), Origin::Manual)
        .unwrap();
    beat(&mut e, 9, 10, t);
    e.round(t);
    assert_eq!(e.serving(d(1)).unwrap().unwrap().dp, d(9));
    assert_eq!(
        e.serving(d(9)).unwrap(),
        None,
        "group 5 has no DP of its own"
    );
}

#[test]
fn scope_kind_precedence_location_then_group_then_broadcast_domain() {
    let mut e = engine();
    let t = Instant::now();
    let loc = ScopeId::NetworkLocation(LocationId(7));
    let grp = ScopeId::Group(g(2));
    let bd = ScopeId::BroadcastDomain(BroadcastDomainId(70));
    e.register(d(10), loc, Origin::Manual).unwrap();
    e.register(d(20), grp, Origin::Manual).unwrap();
    e.register(d(30), bd, Origin::Manual).unwrap();
    let all = DevicePlacement::in_group(g(4))
        .with_location(LocationId(7))
        .with_broadcast_domain(BroadcastDomainId(70));
    e.place_device(d(1), all).unwrap();
    e.place_device(
        d(2),
        DevicePlacement::in_group(g(3)).with_broadcast_domain(BroadcastDomainId(70)),
    )
    .unwrap();
    e.place_device(
        d(3),
        DevicePlacement::in_group(g(5)).with_broadcast_domain(BroadcastDomainId(70)),
    )
    .unwrap();
    for dp in [10, 20, 30] {
        beat(&mut e, dp, 10, t);
    }
    e.round(t);
    assert_eq!(e.serving(d(1)).unwrap().unwrap().scope, loc);
    assert_eq!(e.serving(d(2)).unwrap().unwrap().scope, grp);
    assert_eq!(e.serving(d(3)).unwrap().unwrap().scope, bd);
    // The location DP goes down: the group scope takes over for device 1.
    let later = t + 4 * MIN;
    beat(&mut e, 20, 10, later);
    beat(&mut e, 30, 10, later);
    e.round(later);
    assert_eq!(e.serving(d(1)).unwrap().unwrap().scope, grp);
}

#[test]
fn one_active_the_rest_standby_and_ranking_picks_the_first_active() {
    let mut e = engine();
    let t = Instant::now();
    group_with(&mut e, &[1, 2, 3]);
    beat(&mut e, 1, 10, t);
    beat(&mut e, 2, 30, t);
    beat(&mut e, 3, 20, t);
    let r = e.round(t);
    assert_eq!(r.decisions.len(), 1);
    let dec = &r.decisions[0];
    assert_eq!(dec.active, Some(d(2)));
    assert_eq!(dec.standbys, vec![d(3), d(1)]);
    assert_eq!(dec.epoch, 1);
    let roles: Vec<(u64, DpRole, u64)> = r
        .assignments
        .iter()
        .map(|a| (a.dp.0, a.role, a.epoch))
        .collect();
    assert_eq!(
        roles,
        vec![
            (2, DpRole::Active, 1),
            (3, DpRole::Standby, 1),
            (1, DpRole::Standby, 1)
        ]
    );
    // Nothing changed: an empty round.
    assert!(e.round(t + Duration::from_secs(1)).is_empty());
}

#[test]
fn healthy_active_is_not_displaced_by_a_better_standby() {
    let mut e = engine();
    let t = Instant::now();
    let s = group_with(&mut e, &[1]);
    beat(&mut e, 1, 5, t);
    e.round(t);
    e.register(d(2), s, Origin::Manual).unwrap();
    beat(&mut e, 2, 500, t + MIN);
    beat(&mut e, 1, 5, t + MIN);
    let r = e.round(t + MIN);
    assert_eq!(r.decisions[0].active, Some(d(1)));
    assert_eq!(
        r.decisions[0].epoch, 1,
        "standby joined, active unchanged, same epoch"
    );
    assert_eq!(r.decisions[0].standbys, vec![d(2)]);
}

#[test]
fn failed_active_is_replaced_after_the_configured_missed_heartbeats_with_a_new_epoch() {
    let mut e = engine(); // 60 s interval, 3 missed
    let t = Instant::now();
    let s = group_with(&mut e, &[1, 2]);
    beat(&mut e, 1, 50, t);
    beat(&mut e, 2, 10, t);
    e.round(t);
    assert_eq!(e.active(s), Some((d(1), 1)));
    // DP 1 falls silent. After 2 missed heartbeats (and a moment before the third is
    // due) it is still active.
    for k in 1..=2 {
        beat(&mut e, 2, 10, t + k * MIN);
        e.round(t + k * MIN);
        assert_eq!(e.active(s), Some((d(1), 1)), "after {k} intervals");
    }
    e.round(t + 3 * MIN - Duration::from_millis(1));
    assert_eq!(e.active(s), Some((d(1), 1)));
    // The third heartbeat is missed: replaced in that round, with a new epoch.
    let after = t + 3 * MIN;
    beat(&mut e, 2, 10, after);
    let r = e.round(after);
    assert_eq!(e.active(s), Some((d(2), 2)));
    assert_eq!(r.decisions[0].inactive, vec![d(1)]);
    assert_eq!(
        e.eligibility(d(1), after).unwrap(),
        Err(Ineligibility::MissedHeartbeats {
            missed: 3,
            limit: 3
        })
    );
    // DP 1 comes back: it stays standby (no flapping) and learns the new epoch.
    beat(&mut e, 1, 50, after + MIN);
    let r = e.round(after + MIN);
    assert_eq!(e.active(s), Some((d(2), 2)));
    let back = r.assignments.iter().find(|a| a.dp == d(1)).unwrap();
    assert_eq!((back.role, back.epoch), (DpRole::Standby, 2));
}

#[test]
fn configured_missed_heartbeats_is_honoured() {
    let mut cfg = ElectionConfig::default();
    cfg.heartbeat_interval_secs = 10;
    cfg.missed_heartbeats = 5;
    let mut e = Election::new(cfg, tree()).unwrap();
    let t = Instant::now();
    let s = group_with(&mut e, &[1]);
    beat(&mut e, 1, 50, t);
    e.round(t);
    e.round(t + Duration::from_secs(49));
    assert_eq!(e.active(s), Some((d(1), 1)));
    e.round(t + Duration::from_secs(50));
    assert_eq!(e.active(s), None, "no eligible member: no active");
    assert_eq!(e.epoch(s), 2, "losing the active is a change of active");
}

#[test]
fn administrator_can_displace_a_healthy_active_but_not_pick_an_ineligible_dp() {
    let mut e = engine();
    let t = Instant::now();
    let s = group_with(&mut e, &[1, 2, 3]);
    beat(&mut e, 1, 50, t);
    beat(&mut e, 2, 10, t);
    e.round(t);
    let r = e.make_active(s, d(2), t).unwrap();
    assert_eq!(r.decisions[0].active, Some(d(2)));
    assert_eq!(r.decisions[0].epoch, 2);
    assert_eq!(r.decisions[0].standbys, vec![d(1)]);
    assert_eq!(e.active(s), Some((d(2), 2)));
    assert!(e.round(t).decisions.is_empty(), "the choice sticks");
    assert_eq!(
        e.make_active(s, d(3), t),
        Err(ElectionError::NotEligible {
            dp: d(3),
            scope: s,
            reason: Ineligibility::NeverHeard
        })
    );
    assert_eq!(
        e.make_active(ScopeId::Group(g(5)), d(1), t),
        Err(ElectionError::NotRegistered {
            dp: d(1),
            scope: ScopeId::Group(g(5))
        })
    );
}

#[test]
fn disk_thresholds_gate_eligibility_and_raise_warnings() {
    let mut e = engine();
    let t = Instant::now();
    group_with(&mut e, &[1, 2]);
    beat(&mut e, 1, 4, t); // exactly 4 GiB: eligible
    beat(&mut e, 2, 3, t); // 3 GiB: not eligible, no warning
    let r = e.round(t);
    assert_eq!(r.decisions[0].active, Some(d(1)));
    assert_eq!(r.decisions[0].inactive, vec![d(2)]);
    assert!(r.issues.is_empty());
    assert_eq!(
        e.eligibility(d(2), t).unwrap(),
        Err(Ineligibility::LowDisk {
            free_bytes: 3 * GIB,
            required_bytes: 4 * GIB
        })
    );
    // The active's disk fills: under 4 GiB it is replaced (none left), under 2 GiB it warns.
    let t1 = t + MIN;
    e.heartbeat(Heartbeat::new(d(1), NodeFacts::new(2 * GIB - 1)), t1)
        .unwrap();
    beat(&mut e, 2, 3, t1);
    let r = e.round(t1);
    assert_eq!(r.decisions[0].active, None);
    assert_eq!(
        r.issues,
        vec![IssueEvent::LowDiskRaised {
            device: d(1),
            severity: outpost_election::Severity::Warning,
            free_bytes: 2 * GIB - 1,
            threshold_bytes: 2 * GIB
        }]
    );
    // Raised once, not on every heartbeat.
    e.heartbeat(Heartbeat::new(d(1), NodeFacts::new(GIB)), t1 + MIN)
        .unwrap();
    assert!(e.round(t1 + MIN).issues.is_empty());
    beat(&mut e, 1, 30, t1 + 2 * MIN);
    let r = e.round(t1 + 2 * MIN);
    assert!(matches!(r.issues[..], [IssueEvent::LowDiskCleared { .. }]));
    assert_eq!(r.decisions[0].active, Some(d(1)));
    assert_eq!(r.decisions[0].epoch, 3);
}

#[test]
fn unregistering_the_active_elects_a_successor_and_tells_the_old_one() {
    let mut e = engine();
    let t = Instant::now();
    let s = group_with(&mut e, &[1, 2]);
    beat(&mut e, 1, 50, t);
    beat(&mut e, 2, 10, t);
    e.round(t);
    let addr1 = e.multicast_group(d(1)).unwrap();
    e.unregister(d(1), s).unwrap();
    assert_eq!(
        e.multicast_group(d(1)),
        Some(addr1),
        "kept until the round that tells the DP to stop"
    );
    let r = e.round(t);
    assert_eq!(e.multicast_group(d(1)), None, "released with that round");
    assert_eq!(r.decisions[0].active, Some(d(2)));
    let old = r.assignments.iter().find(|a| a.dp == d(1)).unwrap();
    assert_eq!(
        (old.role, old.epoch, old.multicast_group),
        (DpRole::Inactive, 2, addr1)
    );
    assert_eq!(
        e.unregister(d(1), s),
        Err(ElectionError::NotRegistered { dp: d(1), scope: s })
    );
    // Epochs never go back, even when the scope is emptied and refilled.
    e.unregister(d(2), s).unwrap();
    e.round(t);
    assert_eq!(e.epoch(s), 3);
    e.register(d(2), s, Origin::Manual).unwrap();
    beat(&mut e, 2, 10, t + MIN);
    e.round(t + MIN);
    assert_eq!(e.active(s), Some((d(2), 4)));
}

#[test]
fn persisted_epochs_are_restored_upwards_only() {
    let mut e = engine();
    let s = ScopeId::Group(g(1));
    e.restore_epochs(&BTreeMap::from([(s, 41)]));
    e.register(d(1), s, Origin::Manual).unwrap();
    let t = Instant::now();
    beat(&mut e, 1, 10, t);
    e.round(t);
    assert_eq!(e.active(s), Some((d(1), 42)));
    e.restore_epochs(&BTreeMap::from([(s, 5)]));
    assert_eq!(e.epoch(s), 42);
    let json = serde_json::to_string(&e.decisions()).unwrap();
    assert!(json.contains("\"epoch\":42"), "{json}");
}

#[test]
fn bad_input_is_answered_with_errors_naming_the_value() {
    let mut e = engine();
    let t = Instant::now();
    assert_eq!(
        e.register(d(1), ScopeId::Group(g(99)), Origin::Manual),
        Err(ElectionError::UnknownGroup { group: g(99) })
    );
    assert_eq!(
        e.place_device(d(1), DevicePlacement::in_group(g(99))),
        Err(ElectionError::UnknownGroup { group: g(99) })
    );
    assert_eq!(
        e.move_device(d(1), g(1)),
        Err(ElectionError::UnknownDevice { device: d(1) })
    );
    assert_eq!(
        e.serving(d(1)),
        Err(ElectionError::UnknownDevice { device: d(1) })
    );
    e.register(d(1), ScopeId::Group(g(1)), Origin::Manual)
        .unwrap();
    let dup = e
        .register(d(1), ScopeId::Group(g(1)), Origin::Manual)
        .unwrap_err();
    assert_eq!(
        dup,
        ElectionError::DuplicateRegistration {
            dp: d(1),
            scope: ScopeId::Group(g(1))
        }
    );
    assert_eq!(
        dup.to_string(),
        "distribution point device 1 is already registered for the scope of group 1"
    );
    // The same DP may serve a second scope.
    e.register(d(1), ScopeId::Group(g(2)), Origin::Manual)
        .unwrap();
    assert_eq!(
        e.heartbeat(Heartbeat::new(d(5), NodeFacts::new(GIB)), t),
        Err(ElectionError::UnknownDp { dp: d(5) })
    );
    beat(&mut e, 1, 10, t + MIN);
    assert_eq!(
        e.heartbeat(Heartbeat::new(d(1), NodeFacts::new(GIB)), t),
        Err(ElectionError::HeartbeatOutOfOrder {
            dp: d(1),
            behind_ms: 60_000
        })
    );
    let mut cfg = ElectionConfig::default();
    cfg.heartbeat_interval_secs = 0;
    assert!(matches!(
        Election::new(cfg, tree()),
        Err(ElectionError::InvalidConfig {
            field: "heartbeat_interval_secs",
            ..
        })
    ));
}

#[test]
fn every_dp_gets_its_own_multicast_group_and_exhaustion_is_an_error() {
    let mut cfg = ElectionConfig::default();
    cfg.multicast = MulticastRange::new(
        "239.255.10.0".parse().unwrap(),
        "239.255.10.3".parse().unwrap(),
    );
    let mut e = Election::new(cfg, tree()).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for dp in 1..=4 {
        let a = e
            .register(d(dp), ScopeId::Group(g(dp)), Origin::Manual)
            .unwrap();
        assert!(seen.insert(a), "{a} handed out twice");
    }
    // A second scope for the same DP keeps its address.
    let again = e
        .register(d(1), ScopeId::Group(g(5)), Origin::Manual)
        .unwrap();
    assert_eq!(Some(again), e.multicast_group(d(1)));
    let err = e
        .register(d(5), ScopeId::Group(g(5)), Origin::Manual)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "multicast range 239.255.10.0..=239.255.10.3 is exhausted: all 4 addresses are in use"
    );
    assert!(
        e.members(ScopeId::Group(g(5)))
            .iter()
            .all(|(dp, _)| *dp != d(5))
    );
    e.unregister(d(3), ScopeId::Group(g(3))).unwrap();
    // DP 3 has not been told to stop yet: its address is not handed to anyone else.
    assert!(matches!(
        e.register(d(5), ScopeId::Group(g(5)), Origin::Manual),
        Err(ElectionError::MulticastExhausted { .. })
    ));
    e.round(Instant::now());
    let reused = e
        .register(d(5), ScopeId::Group(g(5)), Origin::Manual)
        .unwrap();
    assert_eq!(reused, "239.255.10.2".parse::<IpAddr>().unwrap());
}

#[test]
fn a_freed_address_goes_to_no_other_dp_before_its_holder_is_told_to_stop() {
    let mut cfg = ElectionConfig::default();
    cfg.multicast = MulticastRange::new(
        "239.255.10.0".parse().unwrap(),
        "239.255.10.1".parse().unwrap(),
    );
    let mut e = Election::new(cfg, tree()).unwrap();
    let a = e
        .register(d(1), ScopeId::Group(g(1)), Origin::Manual)
        .unwrap();
    e.round(Instant::now());
    e.unregister(d(1), ScopeId::Group(g(1))).unwrap();
    let b = e
        .register(d(2), ScopeId::Group(g(2)), Origin::Manual)
        .unwrap();
    assert_ne!(a, b, "DP 1 may still be sending to {a}");
    let r = e.round(Instant::now());
    let stop = r.assignments.iter().find(|x| x.dp == d(1)).unwrap();
    assert_eq!((stop.role, stop.multicast_group), (DpRole::Inactive, a));
    // Told now: the address is free again.
    let c = e
        .register(d(3), ScopeId::Group(g(3)), Origin::Manual)
        .unwrap();
    assert_eq!(c, a);
}

#[test]
fn unregistered_and_registered_again_before_the_round_the_dp_stays_active() {
    let mut e = engine();
    let t = Instant::now();
    let s = group_with(&mut e, &[1, 2]);
    // Both also serve another scope, so they keep their health records throughout.
    for dp in [1, 2] {
        e.register(d(dp), ScopeId::Group(g(5)), Origin::Manual)
            .unwrap();
    }
    beat(&mut e, 1, 50, t);
    beat(&mut e, 2, 10, t);
    e.round(t);
    let before = e.active(s);
    assert_eq!(before.map(|x| x.0), Some(d(1)));
    let addr = e.multicast_group(d(1));
    // A reload of the scope's configuration: its DPs removed and added again.
    for dp in [1, 2] {
        e.unregister(d(dp), s).unwrap();
    }
    for dp in [1, 2] {
        e.register(d(dp), s, Origin::Manual).unwrap();
    }
    let r = e.round(t);
    assert!(
        r.assignments.iter().all(|a| a.role != DpRole::Inactive),
        "no stale stop: {:?}",
        r.assignments
    );
    assert_eq!(e.active(s), before, "same active, same epoch");
    assert_eq!(e.multicast_group(d(1)), addr, "same address");
}

fn segment(first: u64, n: u64) -> Vec<PeerReport> {
    // A chain: each device sees the next one.
    (first..first + n)
        .map(|i| {
            PeerReport::new(
                d(i),
                if i + 1 < first + n {
                    vec![d(i + 1)]
                } else {
                    vec![]
                },
            )
        })
        .collect()
}

#[test]
fn automatic_assignment_follows_hysteresis_and_count_rules() {
    let mut e = engine();
    // Segments: 5 devices (none), 50 (one), 250 (two recommended) = 305 devices.
    let mut reports = segment(1, 5);
    reports.extend(segment(1001, 50));
    reports.extend(segment(2001, 250));
    let mut facts = BTreeMap::new();
    for r in &reports {
        e.place_device(r.device, DevicePlacement::in_group(g(1)))
            .unwrap();
        // Disk grows with the id inside each segment; 2040 has too little disk.
        let disk = if r.device == d(2250) {
            GIB
        } else {
            (r.device.0 % 1000 + 4) * GIB
        };
        facts.insert(r.device, NodeFacts::new(disk));
    }
    let domains = BroadcastDomains::derive(&reports, 64).unwrap();
    assert_eq!(domains.len(), 3);
    let out = e.auto_assign(&domains, &facts);
    assert!(out.enabled, "305 devices >= 300");
    let added: Vec<(u64, u64)> = out.added.iter().map(|(dp, b)| (dp.0, b.0)).collect();
    assert_eq!(added, vec![(1050, 1001), (2249, 2001), (2248, 2001)]);
    assert!(out.shortfalls.is_empty());
    assert_eq!(
        e.placement(d(2100)).unwrap().broadcast_domain,
        Some(BroadcastDomainId(2001))
    );
    // Running again changes nothing (stable).
    let again = e.auto_assign(&domains, &facts);
    assert!(again.added.is_empty() && again.removed.is_empty());

    // The fleet shrinks to 250: still on (hysteresis), nothing removed.
    for i in 2196..2251 {
        e.remove_device(d(i));
    }
    assert_eq!(e.managed_devices(), 250);
    assert!(e.auto_assign(&domains, &facts).enabled);
    // Below 200: off, every automatic registration removed, manual ones kept.
    e.register(
        d(7),
        ScopeId::BroadcastDomain(BroadcastDomainId(2001)),
        Origin::Manual,
    )
    .unwrap();
    for i in 2001..2060 {
        e.remove_device(d(i));
    }
    let off = e.auto_assign(&domains, &facts);
    assert!(!off.enabled);
    assert_eq!(off.removed.len(), 3);
    assert_eq!(
        e.members(ScopeId::BroadcastDomain(BroadcastDomainId(2001))),
        vec![(d(7), Origin::Manual)]
    );
    // Back to 250: not on again until 300.
    for i in 2001..2060 {
        e.place_device(d(i), DevicePlacement::in_group(g(1)))
            .unwrap();
    }
    assert!(!e.auto_assign(&domains, &facts).enabled);
}

#[test]
fn automatic_assignment_reports_shortfalls_and_replaces_unfit_dps() {
    let mut e = engine();
    let reports = segment(1, 400);
    let mut facts = BTreeMap::new();
    for r in &reports {
        e.place_device(r.device, DevicePlacement::in_group(g(1)))
            .unwrap();
        facts.insert(r.device, NodeFacts::new(GIB));
    }
    facts.insert(d(10), NodeFacts::new(10 * GIB));
    let domains = BroadcastDomains::derive(&reports, 64).unwrap();
    let out = e.auto_assign(&domains, &facts);
    // 400 devices: recommended 2, acceptable 1; only device 10 has enough disk.
    assert_eq!(out.added, vec![(d(10), BroadcastDomainId(1))]);
    assert!(out.shortfalls.is_empty());
    facts.insert(d(10), NodeFacts::new(GIB));
    facts.insert(d(20), NodeFacts::new(8 * GIB));
    let out = e.auto_assign(&domains, &facts);
    assert_eq!(out.removed, vec![(d(10), BroadcastDomainId(1))]);
    assert_eq!(out.added, vec![(d(20), BroadcastDomainId(1))]);
    facts.insert(d(20), NodeFacts::new(GIB));
    let out = e.auto_assign(&domains, &facts);
    assert_eq!(out.shortfalls, vec![(BroadcastDomainId(1), 0, 1)]);
}

#[test]
fn sync_interval_grows_with_the_fleet() {
    let mut e = engine();
    assert_eq!(e.sync_interval(), Duration::from_secs(900));
    for i in 0..25_000 {
        e.place_device(d(i), DevicePlacement::in_group(g(1)))
            .unwrap();
    }
    assert_eq!(e.sync_interval(), Duration::from_secs(2250));
}
