//! The election under the deterministic simulation harness: seeded crashes, partitions,
//! rejoins, lost heartbeats, filling disks and administrator switches.

use outpost_election::sim::{Sim, SimConfig, SplitMix64};
use proptest::prelude::*;

fn config(seed: u64, groups: usize, dps: usize, devices: usize, steps: usize) -> SimConfig {
    let mut c = SimConfig::default();
    c.seed = seed;
    c.groups = groups;
    c.dps = dps;
    c.devices = devices;
    c.steps = steps;
    c
}

#[test]
fn thousands_of_nodes_keep_every_invariant() {
    let report = Sim::new(config(2026, 1_000, 3_000, 10_000, 40))
        .unwrap()
        .run();
    assert!(
        report.violations.is_empty(),
        "{:?}",
        &report.violations[..report.violations.len().min(5)]
    );
    // The run really exercised failures and failovers.
    assert!(report.crashes > 500, "{report:?}");
    assert!(report.partitions > 500);
    assert!(report.rejoins > 100);
    assert!(report.disk_fills > 500);
    assert!(report.failovers > 100, "failovers {}", report.failovers);
    assert!(report.admin_switches > 0);
    assert!(report.site_partitions > 0);
    assert!(
        report.stepped_down > 0,
        "stale actives were told they had been replaced"
    );
    assert!(report.low_disk_issues > 0);
    assert!(report.active_changes > report.failovers);
}

#[test]
fn heavy_churn_keeps_every_invariant() {
    let mut c = config(99, 50, 300, 1_000, 80);
    c.crash_per_million = 80_000;
    c.partition_per_million = 80_000;
    c.recover_per_million = 300_000;
    c.heal_per_million = 300_000;
    c.heartbeat_loss_per_million = 150_000;
    c.disk_fill_per_million = 50_000;
    c.admin_switch_per_million = 900_000;
    c.election.missed_heartbeats = 2;
    let report = Sim::new(c).unwrap().run();
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert!(report.failovers > 50);
}

#[test]
fn same_seed_same_decisions_other_seed_other_decisions() {
    let mut c = config(5, 40, 120, 500, 60);
    c.record_trace = true;
    let a = Sim::new(c.clone()).unwrap().run();
    let b = Sim::new(c.clone()).unwrap().run();
    assert!(a.decisions > 0);
    assert_eq!(a.digest, b.digest);
    assert_eq!(a.trace, b.trace);
    c.seed = 6;
    let other = Sim::new(c).unwrap().run();
    assert_ne!(a.digest, other.digest);
}

#[test]
fn splitmix_is_seeded_and_bounded() {
    let mut a = SplitMix64::new(1);
    let mut b = SplitMix64::new(1);
    let xs: Vec<u64> = (0..100).map(|_| a.below(10)).collect();
    let ys: Vec<u64> = (0..100).map(|_| b.below(10)).collect();
    assert_eq!(xs, ys);
    assert!(xs.iter().all(|&x| x < 10));
    assert!(
        (0..10).all(|v| xs.contains(&v)),
        "all values reachable: {xs:?}"
    );
    assert_eq!(a.below(0), 0);
    assert!(!a.chance(0));
    assert!(a.chance(1_000_000));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Over random fleets and failure rates: never two actives of a scope in one epoch,
    /// exactly one eligible active wherever a member is eligible, failed actives replaced
    /// within the configured missed heartbeats, nearest-DP answers consistent.
    #[test]
    fn invariants_hold_for_any_seed(
        seed in any::<u64>(),
        groups in 1usize..40,
        dps in 1usize..80,
        per_scope in 1usize..5,
        missed in 1u32..5,
        crash in 0u32..100_000,
        partition in 0u32..100_000,
        loss in 0u32..300_000,
        fill in 0u32..100_000,
        admin in 0u32..1_000_000,
        site in 0u32..500_000,
    ) {
        let mut c = config(seed, groups, dps, 200, 40);
        c.dps_per_scope = per_scope;
        c.election.missed_heartbeats = missed;
        c.crash_per_million = crash;
        c.partition_per_million = partition;
        c.heartbeat_loss_per_million = loss;
        c.disk_fill_per_million = fill;
        c.admin_switch_per_million = admin;
        c.site_partition_per_million = site;
        let report = Sim::new(c).unwrap().run();
        prop_assert!(report.violations.is_empty(), "{:?}", report.violations);
    }

    /// The same inputs give the same decisions.
    #[test]
    fn runs_are_deterministic(seed in any::<u64>(), dps in 1usize..60) {
        let mut c = config(seed, 20, dps, 100, 25);
        c.record_trace = true;
        let a = Sim::new(c.clone()).unwrap().run();
        let b = Sim::new(c).unwrap().run();
        prop_assert_eq!(a.digest, b.digest);
        prop_assert_eq!(a.trace, b.trace);
    }
}
