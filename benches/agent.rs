//! The Network Agent's hot paths: the local-settings overlay (against handing out the
//! received values unchanged, a plain clone, as the baseline), the discovery decoder, and one
//! full sync cycle of the sans-IO core.
//!
//! `cargo bench --bench agent -- --warm-up-time 1 --measurement-time 3`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use outpost::agent::protocol::{Action, AgentCore, CoreConfig, Input};
use outpost::agent::{AgentConfig, Endpoint, discovery, overlay};
use outpost::wire::Message;
use outpost::wire::messages::{AppSettings, HelloAck, SyncResponse};
use serde_json::{Map, Value, json};

/// A document of 20 sections x 10 settings, 50 of them locked, and local values for 100.
fn document() -> (Value, Value) {
    let mut values = Map::new();
    let mut local = Map::new();
    let mut locked = Vec::new();
    for s in 0..20 {
        let mut sec = Map::new();
        let mut lsec = Map::new();
        for k in 0..10 {
            sec.insert(format!("k{k}"), json!(format!("server-{s}-{k}")));
            if (s * 10 + k) % 4 == 0 {
                locked.push(format!("s{s}/k{k}"));
            }
            if k % 2 == 0 {
                lsec.insert(format!("k{k}"), json!(k));
            }
        }
        values.insert(format!("s{s}"), Value::Object(sec));
        local.insert(format!("s{s}"), Value::Object(lsec));
    }
    (
        json!({"values": Value::Object(values), "locked": locked}),
        Value::Object(local),
    )
}

fn bench_overlay(c: &mut Criterion) {
    let (doc, local) = document();
    let values = doc["values"].clone();
    let mut g = c.benchmark_group("overlay_200_settings");
    g.bench_function("baseline_clone_values", |b| {
        b.iter(|| black_box(values.clone()))
    });
    g.bench_function("effective_with_50_locks_100_local", |b| {
        b.iter(|| black_box(overlay::effective(black_box(&doc), Some(black_box(&local)))))
    });
    g.finish();
}

fn bench_discovery(c: &mut Criterion) {
    let d = discovery::encode("workstation-0042.branch-office.example").unwrap();
    c.bench_function("discovery_decode", |b| {
        b.iter(|| black_box(discovery::decode(black_box(&d)).unwrap()))
    });
}

fn bench_core(c: &mut Criterion) {
    let mut config = AgentConfig::new("laptop-1", "/unused");
    config.endpoints = vec![Endpoint::new("127.0.0.1:13000".parse().unwrap(), "gw.test")];
    let t0 = Instant::now();
    let held: BTreeMap<String, u64> = (0..10).map(|i| (format!("app{i}"), 1)).collect();
    let mut core = AgentCore::new(CoreConfig::from_agent(&config, 1), held, t0);
    core.start(t0);
    core.handle(Input::Connected, t0);
    core.handle(
        Input::Received(
            HelloAck {
                version: 1,
                ..Default::default()
            }
            .into(),
        ),
        t0,
    );
    while core.poll_action().is_some() {}
    let answer: Message = SyncResponse {
        settings: vec![AppSettings {
            application: "app3".into(),
            version: 2,
            json: "{}".into(),
        }],
        next_sync_secs: 60,
        ..Default::default()
    }
    .into();
    let mut now = t0;
    c.bench_function("core_sync_cycle_10_apps", |b| {
        b.iter(|| {
            core.handle(Input::Received(answer.clone()), now);
            now += Duration::from_secs(60);
            core.handle_timeout(now);
            let mut n = 0;
            while let Some(a) = core.poll_action() {
                if matches!(a, Action::Send(_) | Action::ApplySettings { .. }) {
                    n += 1;
                }
            }
            black_box(n)
        })
    });
}

criterion_group!(benches, bench_overlay, bench_discovery, bench_core);
criterion_main!(benches);
