//! DP election at fleet scale: 100,000 devices, 5,000 groups, 1,000 DPs.
//!
//! * `election/full_recompute`: decide every scope from scratch (first round after start-up)
//!   and compute the serving DP of every device (`Election::recompute_all`).
//! * `election/serving_per_device` (baseline for the serving part): the same 100,000 answers
//!   by one `Election::serving` lookup per device, walking up the tree each time.
//! * `election/heartbeat_round`: one incremental round: 1,000 heartbeats, then
//!   `Election::round`.
//! * `election/heartbeat_round_with_failover`: the same, with one active DP silent past its
//!   limit, so one scope fails over.
//! * `election/derive_domains`: only the derivation of broadcast domains from those reports.
//! * `election/auto_assignment`: derive broadcast domains from 100,000 peer reports and run
//!   one pass of automatic assignment.
//!
//! `cargo bench --bench election -- --warm-up-time 1 --measurement-time 3`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use outpost_election::sim::SplitMix64;
use outpost_election::{
    BroadcastDomainId, BroadcastDomains, DeviceId, DevicePlacement, Election, ElectionConfig, GIB,
    GroupEdge, GroupId, GroupTree, Heartbeat, LocationId, NodeFacts, Origin, PeerReport, ScopeId,
    ScopeKind,
};

const DEVICES: u64 = 100_000;
const GROUPS: u64 = 5_000;
const DPS: u64 = 1_000;
const SEGMENTS: u64 = 100;

struct Fleet {
    engine: Election,
    dps: Vec<DeviceId>,
    t0: Instant,
}

fn facts(rng: &mut SplitMix64) -> NodeFacts {
    NodeFacts::new((8 + rng.below(200)) * GIB).with_uptime_secs(rng.below(1_000_000))
}

fn fleet() -> Fleet {
    let mut rng = SplitMix64::new(42);
    let edges = (0..GROUPS).map(|i| GroupEdge {
        group: GroupId(i + 1),
        parent: if i == 0 {
            None
        } else {
            Some(GroupId(i / 4 + 1))
        },
    });
    let tree = GroupTree::from_edges(edges.collect::<Vec<_>>()).expect("tree");
    let mut engine = Election::new(ElectionConfig::default(), tree).expect("engine");
    for d in 0..DEVICES {
        let mut p = DevicePlacement::in_group(GroupId(rng.below(GROUPS) + 1))
            .with_broadcast_domain(BroadcastDomainId(d % SEGMENTS));
        if rng.below(20) == 0 {
            p = p.with_location(LocationId(rng.below(50)));
        }
        engine.place_device(DeviceId(d), p).expect("place");
    }
    // Two DPs per scope: 800 DPs in 400 group scopes (group 1, the root, among them), 100 in
    // 50 network locations, 100 in 50 broadcast domains.
    let mut dps = Vec::new();
    for i in 0..DPS {
        let dp = DeviceId(DEVICES + i);
        let scope = match i {
            0..800 => ScopeId::Group(GroupId(i / 2 * 12 + 1)),
            800..900 => ScopeId::NetworkLocation(LocationId(i % 50)),
            _ => ScopeId::BroadcastDomain(BroadcastDomainId(i % 50)),
        };
        if engine.register(dp, scope, Origin::Manual).is_ok() {
            dps.push(dp);
        }
    }
    let t0 = Instant::now();
    for &dp in &dps {
        engine
            .heartbeat(Heartbeat::new(dp, facts(&mut rng)), t0)
            .expect("heartbeat");
    }
    Fleet { engine, dps, t0 }
}

fn bench(c: &mut Criterion) {
    let Fleet { engine, dps, t0 } = fleet();
    let scopes = engine.scope_ids();
    let count = |k: ScopeKind| scopes.iter().filter(|s| s.kind() == k).count();
    eprintln!(
        "fleet: {} devices, {} groups, {} DPs; scopes: {} group, {} network location, {} broadcast domain",
        engine.managed_devices(),
        engine.tree().len(),
        dps.len(),
        count(ScopeKind::Group),
        count(ScopeKind::NetworkLocation),
        count(ScopeKind::BroadcastDomain),
    );
    let mut g = c.benchmark_group("election");

    g.bench_function("full_recompute", |b| {
        b.iter_batched(
            || engine.clone(),
            // The engine is returned so that criterion drops it outside the measurement.
            |mut e| {
                let r = e.recompute_all(t0);
                black_box((r, e))
            },
            BatchSize::LargeInput,
        );
    });

    let mut decided = engine.clone();
    let all = decided.recompute_all(t0);
    assert_eq!(all.serving.len() as u64, DEVICES);
    assert!(all.serving.iter().all(|(_, s)| s.is_some()));

    g.bench_function("serving_table", |b| {
        b.iter(|| black_box(decided.serving_table()));
    });
    g.bench_function("serving_per_device", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for d in 0..DEVICES {
                n += usize::from(decided.serving(DeviceId(d)).expect("known").is_some());
            }
            black_box(n)
        });
    });

    let mut rng = SplitMix64::new(7);
    let beats: Vec<Heartbeat> = dps
        .iter()
        .map(|&dp| Heartbeat::new(dp, facts(&mut rng)))
        .collect();
    let interval = Duration::from_secs(60);
    let mut steady = decided.clone();
    let mut k = 0u32;
    g.bench_function("heartbeat_round", |b| {
        b.iter(|| {
            k += 1;
            let now = t0 + interval * k;
            for hb in &beats {
                steady.heartbeat(*hb, now).expect("heartbeat");
            }
            black_box(steady.round(now))
        });
    });

    // One active DP stays silent: after 3 missed heartbeats its scope fails over.
    let victim_scope = ScopeId::Group(GroupId(1));
    let silent = decided.active(victim_scope).map(|a| a.0);
    g.bench_function("heartbeat_round_with_failover", |b| {
        b.iter_batched(
            || decided.clone(),
            |mut e| {
                let now = t0 + interval * 4;
                for hb in beats.iter().filter(|hb| Some(hb.dp) != silent) {
                    e.heartbeat(*hb, now).expect("heartbeat");
                }
                let r = e.round(now);
                assert!(silent.is_none() || !r.decisions.is_empty());
                black_box((r, e))
            },
            BatchSize::LargeInput,
        );
    });

    // 100 segments of 1,000 devices; each device reports 4 peers of its segment.
    let reports: Vec<PeerReport> = (0..DEVICES)
        .map(|d| {
            let seg = d % SEGMENTS;
            let peers = (1..=4)
                .map(|j| DeviceId((d + j * SEGMENTS) % DEVICES / SEGMENTS * SEGMENTS + seg))
                .collect();
            PeerReport::new(DeviceId(d), peers)
        })
        .collect();
    let candidates: BTreeMap<DeviceId, NodeFacts> = (0..DEVICES)
        .map(|d| (DeviceId(d), facts(&mut rng)))
        .collect();
    let max_peers = engine.config().max_peers_per_report;
    g.bench_function("derive_domains", |b| {
        b.iter(|| black_box(BroadcastDomains::derive(&reports, max_peers).expect("derive")));
    });
    g.bench_function("auto_assignment", |b| {
        b.iter_batched(
            || engine.clone(),
            |mut e| {
                let domains = BroadcastDomains::derive(&reports, max_peers).expect("derive");
                let out = e.auto_assign(&domains, &candidates);
                assert_eq!(out.added.len() as u64, 2 * SEGMENTS);
                black_box((out, e, domains))
            },
            BatchSize::LargeInput,
        );
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
