//! Policy resolution at fleet scale: 100,000 devices in groups 8 levels deep, 10
//! applications, 100 profiles on some policies.
//!
//! Measures full resolution (validation + every device, and every device alone), and the
//! incremental re-resolution after one policy edit, next to a full re-resolution of the same
//! fleet as the baseline. For the root edit, which changes every device, it also measures
//! `apply_each` (changed ids handed to a callback instead of a report of 100,000 shared
//! ids), the cost of cloning and freeing 100,000 ids as `String`s (what a report of owned
//! strings would cost by itself), and an edit of a root profile's condition (active
//! profiles re-checked for every device of the application).
//!
//! `cargo bench --bench policy -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use outpost::policy::{
    AppSchema, Change, Condition, Device, Group, Policy, PolicySetting, PolicyStatus, Profile,
    Resolver, SettingSpec, State, TagRule, Value, ValueKind,
};

const DEVICES: usize = 100_000;
const DEPTH: usize = 8;
const BRANCH: usize = 3;
const APPS: usize = 10;
const SETTINGS: usize = 20;
const TAGS: usize = 60;

/// Deterministic generator (xorshift), so every run builds the same fleet.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn path(i: usize) -> String {
    format!("section{}.setting{i}", i % 4)
}

fn schema(app: usize) -> AppSchema {
    let mut s = AppSchema::new(format!("app{app}"));
    for i in 0..SETTINGS {
        let spec = match i % 5 {
            0 => SettingSpec::new(ValueKind::Bool),
            1 | 2 => {
                let mut sp = SettingSpec::new(ValueKind::Int);
                sp.min = Some(0);
                sp.max = Some(1000);
                sp
            }
            3 => {
                let mut sp = SettingSpec::new(ValueKind::String);
                sp.max_len = Some(64);
                sp
            }
            _ => {
                let mut sp = SettingSpec::new(ValueKind::List);
                sp.item = Some(Box::new(SettingSpec::new(ValueKind::String)));
                sp.merge = i == 4;
                sp
            }
        };
        s = s.with(path(i), spec);
    }
    s
}

fn value(i: usize, n: u64) -> Value {
    match i % 5 {
        0 => Value::Bool(n.is_multiple_of(2)),
        1 | 2 => Value::Int((n % 1000) as i64),
        3 => Value::Str(format!("value-{}", n % 50)),
        _ => Value::List(vec![Value::Str(format!("item-{}", n % 20))]),
    }
}

fn policy_for(rng: &mut Rng, id: String, app: usize, group: &str, n_settings: usize) -> Policy {
    let mut p = Policy::new(id, format!("app{app}"), group);
    for _ in 0..n_settings {
        let i = rng.below(SETTINGS);
        let v = value(i, rng.next());
        let s = if rng.below(4) == 0 {
            PolicySetting::locked(v)
        } else {
            PolicySetting::unlocked(v)
        };
        p = p.with(path(i), s);
    }
    p
}

struct Fleet {
    state: State,
    mid_group: String,
    leaf_group: String,
}

fn fleet() -> Fleet {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut state = State::default();
    state.schemas = (0..APPS).map(schema).collect();
    // Groups: a tree with BRANCH children per group, DEPTH levels (3,280 groups).
    let mut levels: Vec<Vec<String>> = vec![vec!["g".to_string()]];
    state.groups.push(Group::root("g"));
    for _ in 1..DEPTH {
        let mut next = Vec::new();
        for parent in levels.last().unwrap() {
            for c in 0..BRANCH {
                let id = format!("{parent}.{c}");
                state.groups.push(Group::child(id.clone(), parent.clone()));
                next.push(id);
            }
        }
        levels.push(next);
    }
    for app in 0..APPS {
        // Root policy; 100 profiles on the root policies of two applications.
        let mut root = policy_for(&mut rng, format!("root-{app}"), app, "g", 12);
        if app < 2 {
            for k in 0..100 {
                let i = rng.below(SETTINGS);
                root = root.with_profile(
                    Profile::new(
                        format!("profile-{k}"),
                        Condition::Tags(TagRule::has(format!("tag{}", k % TAGS))),
                    )
                    .with(path(i), value(i, rng.next())),
                );
            }
        }
        state.policies.push(root);
        // Active policies on every group of levels 1-3 and on every fifth deeper group.
        for (depth, groups) in levels.iter().enumerate().skip(1) {
            for (gi, g) in groups.iter().enumerate() {
                if depth <= 3 || gi % 5 == app % 5 {
                    let mut p = policy_for(&mut rng, format!("{g}-{app}"), app, g, 4);
                    if depth == 2 {
                        p = p.with_profile(
                            Profile::new("profile-0", Condition::Tags(TagRule::has("tag0")))
                                .with(path(1), value(1, rng.next())),
                        );
                    }
                    state.policies.push(p);
                }
            }
        }
        // Out-of-office policies on the level-2 groups.
        for g in &levels[2] {
            let mut p = policy_for(&mut rng, format!("{g}-away-{app}"), app, g, 3);
            p.status = PolicyStatus::OutOfOffice;
            state.policies.push(p);
        }
    }
    let leaves = levels.last().unwrap();
    for d in 0..DEVICES {
        let mut dev = Device::new(format!("dev{d}"), leaves[d % leaves.len()].clone());
        for _ in 0..rng.below(3) {
            dev = dev.with_tag(format!("tag{}", rng.below(TAGS * 4)));
        }
        dev.on_corporate_network = rng.below(10) != 0;
        if rng.below(20) == 0 {
            let app = rng.below(APPS);
            let i = rng.below(SETTINGS);
            dev = dev.with_local(format!("app{app}"), path(i), value(i, rng.next()));
        }
        state.devices.push(dev);
    }
    Fleet {
        state,
        mid_group: levels[4][7].clone(),
        leaf_group: leaves[11].clone(),
    }
}

fn edit(base: &State, group: &str, app: usize, flip: bool) -> Policy {
    let id = if group == "g" {
        format!("root-{app}")
    } else {
        format!("{group}-{app}")
    };
    let mut p = base
        .policies
        .iter()
        .find(|p| p.id == id)
        .cloned()
        .unwrap_or_else(|| Policy::new(id, format!("app{app}"), group));
    p.settings.insert(
        path(1),
        PolicySetting::locked(Value::Int(if flip { 7 } else { 8 })),
    );
    p
}

fn bench(c: &mut Criterion) {
    let t = Instant::now();
    let f = fleet();
    let groups = f.state.groups.len();
    let policies = f.state.policies.len();
    eprintln!(
        "fleet: {} devices, {groups} groups, {policies} policies, {APPS} applications ({:.2?} to generate)",
        f.state.devices.len(),
        t.elapsed()
    );
    let mut g = c.benchmark_group("policy");
    g.sample_size(10);
    // Freeing the previous resolver is not part of resolving: keep it out of the timing.
    g.bench_function("full_build_and_resolve_100k", |b| {
        b.iter_with_large_drop(|| Resolver::new(black_box(&f.state)).unwrap())
    });
    let mut r = Resolver::new(&f.state).unwrap();
    g.bench_function("full_resolve_100k (baseline)", |b| {
        b.iter(|| black_box(r.resolve_all()))
    });
    for (name, group, app) in [
        ("edit_leaf_policy", f.leaf_group.clone(), 0),
        ("edit_level4_policy", f.mid_group.clone(), 0),
        ("edit_root_policy", "g".to_string(), 3),
    ] {
        let mut flip = false;
        let report = r
            .apply(Change::UpsertPolicy(edit(&f.state, &group, app, true)))
            .unwrap();
        eprintln!(
            "{name}: re-resolves {} devices, {} changed",
            report.resolved,
            report.changed.len()
        );
        g.bench_function(name, |b| {
            b.iter(|| {
                flip = !flip;
                let rep = r
                    .apply(Change::UpsertPolicy(edit(&f.state, &group, app, flip)))
                    .unwrap();
                black_box(rep.changed.len())
            })
        });
    }
    // The same root edit through `apply_each`: no per-device allocation.
    let mut flip = false;
    g.bench_function("edit_root_policy_apply_each", |b| {
        b.iter(|| {
            flip = !flip;
            let mut n = 0usize;
            r.apply_each(Change::UpsertPolicy(edit(&f.state, "g", 3, flip)), |id| {
                n += id.len()
            })
            .unwrap();
            black_box(n)
        })
    });
    // What a report of owned strings listing every device would cost by itself: clone and
    // free 100,000 ids.
    let ids: Vec<String> = f.state.devices.iter().map(|d| d.id.clone()).collect();
    g.bench_function("report_100k_ids_alone (floor)", |b| {
        b.iter(|| {
            let v: Vec<String> = black_box(&ids).to_vec();
            black_box(v.len())
        })
    });
    // A root profile whose condition changes: every device's active profiles are
    // re-evaluated for that application.
    let mut flip = false;
    let profile_edit = |flip: bool| {
        let mut p = f
            .state
            .policies
            .iter()
            .find(|p| p.id == "root-0")
            .cloned()
            .unwrap();
        let tag = if flip { "tag1" } else { "tag2" };
        p.profiles[0].condition = Condition::Tags(TagRule::has(tag));
        p
    };
    let report = r.apply(Change::UpsertPolicy(profile_edit(true))).unwrap();
    eprintln!(
        "edit_root_profile_condition: re-resolves {} devices, {} changed",
        report.resolved,
        report.changed.len()
    );
    g.bench_function("edit_root_profile_condition", |b| {
        b.iter(|| {
            flip = !flip;
            let rep = r.apply(Change::UpsertPolicy(profile_edit(flip))).unwrap();
            black_box(rep.changed.len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
