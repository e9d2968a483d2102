//! Property tests for edits of profile conditions: devices drawn from a small pool of facts
//! (so that many share them), compound conditions over every kind of fact, and sequences
//! of condition edits mixed with device changes. After every step the incremental result
//! must equal a fresh resolution and the report must list exactly the changed devices.

use outpost_policy::{
    AppSchema, Change, Condition, Device, DirectoryRule, Group, Owner, Policy, PolicySetting,
    Profile, Range, Resolver, SettingSpec, State, Subject, TagRule, Value, ValueKind,
};
use proptest::prelude::*;

use crate::common;

const APP: &str = "app";
const PATHS: [&str; 3] = ["a", "b", "c"];
const GROUPS: [&str; 3] = ["root", "mid", "leaf"];
const NAMES: [&str; 3] = ["p0", "p1", "p2"];

fn schema() -> AppSchema {
    let mut s = AppSchema::new(APP);
    for p in PATHS {
        let mut spec = SettingSpec::new(ValueKind::Int);
        spec.min = Some(0);
        spec.max = Some(99);
        s = s.with(p, spec);
    }
    s
}

/// One of a few fact combinations; `k` picks it.
fn device(id: String, group: &str, k: usize) -> Device {
    let mut d = Device::new(id, group);
    if k & 1 != 0 {
        d = d.with_tag("t0");
    }
    if k & 2 != 0 {
        d = d.with_tag("t1");
    }
    d.online = !k.is_multiple_of(3);
    d.network_location = (!k.is_multiple_of(4)).then(|| format!("loc{}", k % 2));
    d.ram_mb = (!k.is_multiple_of(5)).then_some(1024 * (k as u64 % 4 + 1));
    d.cpu_count = Some(1 + (k as u32 % 3));
    d.ou = (k % 3 != 1).then(|| ["corp", "corp/fin", "corp/fin/acc"][k % 3].to_string());
    if k % 4 != 3 {
        let mut o = Owner::default();
        o.name = format!("user{}", k % 3);
        if k.is_multiple_of(2) {
            o.roles.insert("admin".into());
        }
        o.ou = Some(["corp", "corp/fin"][k % 2].to_string());
        if k % 5 < 2 {
            o.directory_groups.insert("dg".into());
        }
        d.owner = Some(o);
    }
    if k % 5 == 2 {
        d.directory_groups.insert("dg".into());
    }
    d
}

fn dir(name: &str, of: Subject, nested: bool) -> DirectoryRule {
    let mut r = DirectoryRule::default();
    r.name = name.into();
    r.of = of;
    r.include_nested = nested;
    r
}

fn range(min: Option<u64>, max: Option<u64>) -> Range {
    let mut r = Range::default();
    r.min = min;
    r.max = max;
    r
}

fn leaf() -> impl Strategy<Value = Condition> {
    prop_oneof![
        1 => any::<bool>().prop_map(Condition::Online),
        1 => (0usize..3).prop_map(|i| Condition::NetworkLocation(format!("loc{i}"))),
        8 => (0usize..3, any::<bool>(), any::<bool>()).prop_map(|(t, all, invert)| {
            let mut r = TagRule::has(["t0", "t1", "t2"][t]);
            if t == 2 {
                r.names.push("t0".into());
            }
            r.all = all;
            r.invert = invert;
            Condition::Tags(r)
        }),
        1 => (0usize..4).prop_map(|i| Condition::Owner(format!("user{i}"))),
        1 => Just(Condition::Role("admin".into())),
        1 => (0usize..3, any::<bool>(), any::<bool>()).prop_map(|(i, owner, nested)| {
            let of = if owner {
                Subject::Owner
            } else {
                Subject::Device
            };
            Condition::Ou(dir(["corp", "corp/fin", "corp/fin/acc"][i], of, nested))
        }),
        1 => any::<bool>().prop_map(|owner| {
            let of = if owner {
                Subject::Owner
            } else {
                Subject::Device
            };
            Condition::DirectoryGroup(dir("dg", of, false))
        }),
        1 => (
            proptest::option::of(0u64..5000),
            proptest::option::of(0u64..5000)
        )
            .prop_map(|(a, b)| Condition::RamMb(range(a, b))),
        1 => (proptest::option::of(0u64..4), proptest::option::of(0u64..4))
            .prop_map(|(a, b)| Condition::CpuCount(range(a, b))),
    ]
}

fn condition() -> impl Strategy<Value = Condition> {
    leaf().prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(Condition::All),
            proptest::collection::vec(inner.clone(), 0..3).prop_map(Condition::Any),
            inner.prop_map(|c| Condition::Not(Box::new(c))),
        ]
    })
}

fn profile(name: usize) -> impl Strategy<Value = Profile> {
    (
        condition(),
        prop::bool::weighted(0.85),
        proptest::collection::vec((0usize..3, 0i64..100), 1..3),
    )
        .prop_map(move |(cond, enabled, settings)| {
            let mut p = Profile::new(NAMES[name], cond);
            p.enabled = enabled;
            for (i, n) in settings {
                p = p.with(PATHS[i], Value::Int(n));
            }
            p
        })
}

fn policy(group: usize) -> impl Strategy<Value = Policy> {
    (
        proptest::collection::vec((0usize..3, 0i64..100, any::<bool>()), 0..3),
        (profile(0), profile(1), profile(2)),
        1usize..4,
    )
        .prop_map(move |(settings, (a, b, c), n)| {
            let mut p = Policy::new(format!("pol-{}", GROUPS[group]), APP, GROUPS[group]);
            for (i, v, locked) in settings {
                let s = if locked {
                    PolicySetting::locked(v)
                } else {
                    PolicySetting::unlocked(v)
                };
                p = p.with(PATHS[i], s);
            }
            p.profiles = [a, b, c].into_iter().take(n).collect();
            p
        })
}

#[derive(Debug, Clone)]
enum Step {
    /// Replace one profile's condition and enabled flag in one policy.
    EditCondition {
        group: usize,
        profile: usize,
        cond: Condition,
        enabled: bool,
    },
    /// Give a device another fact combination (or add it).
    Refact { device: usize, facts: usize },
    /// Remove a device.
    Remove { device: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0usize..3, 0usize..3, condition(), prop::bool::weighted(0.85)).prop_map(
            |(group, profile, cond, enabled)| Step::EditCondition { group, profile, cond, enabled }
        ),
        1 => (0usize..40, 0usize..12).prop_map(|(device, facts)| Step::Refact { device, facts }),
        1 => (0usize..40).prop_map(|device| Step::Remove { device }),
    ]
}

fn base_state() -> impl Strategy<Value = State> {
    (
        (policy(0), policy(1), policy(2)),
        proptest::collection::vec((0usize..3, 0usize..12, prop::bool::weighted(0.8)), 10..40),
    )
        .prop_map(|((p0, p1, p2), devices)| {
            let mut s = State::default();
            s.schemas = vec![schema()];
            s.groups = vec![
                Group::root("root"),
                Group::child("mid", "root"),
                Group::child("leaf", "mid"),
            ];
            s.policies = vec![p0, p1, p2];
            for (i, (g, k, office)) in devices.into_iter().enumerate() {
                let mut d = device(format!("d{i:02}"), GROUPS[g], k);
                d.on_corporate_network = office;
                if i % 7 == 3 {
                    d = d.with_local(APP, "b", 5);
                }
                s.devices.push(d);
            }
            s
        })
}

fn snapshot(r: &Resolver, s: &State) -> common::Snapshot {
    common::effective_all(r, s, APP)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn profile_condition_edits_match_fresh_resolution(
        s in base_state(),
        steps in proptest::collection::vec(step(), 1..6),
    ) {
        let mut s = s;
        let mut r = Resolver::new(&s).unwrap();
        for st in steps {
            let before = snapshot(&r, &s);
            let change = match st {
                Step::EditCondition { group, profile, cond, enabled } => {
                    let pol = &mut s.policies[group];
                    let n = pol.profiles.len().max(1);
                    let Some(p) = pol.profiles.get_mut(profile % n) else { continue };
                    p.condition = cond;
                    p.enabled = enabled;
                    Change::UpsertPolicy(pol.clone())
                }
                Step::Refact { device: i, facts } => {
                    let id = format!("d{i:02}");
                    let group = s.devices.iter().find(|d| d.id == id)
                        .map_or("leaf".to_string(), |d| d.group.clone());
                    let d = device(id.clone(), &group, facts);
                    s.devices.retain(|x| x.id != id);
                    s.devices.push(d.clone());
                    Change::UpsertDevice(d)
                }
                Step::Remove { device: i } => {
                    let id = format!("d{i:02}");
                    if !s.devices.iter().any(|d| d.id == id) {
                        continue;
                    }
                    s.devices.retain(|x| x.id != id);
                    Change::RemoveDevice(id)
                }
            };
            let is_device_change = matches!(change, Change::UpsertDevice(_) | Change::RemoveDevice(_));
            let report = r.apply(change).unwrap();
            let fresh = Resolver::new(&s).unwrap();
            let after = snapshot(&r, &s);
            prop_assert_eq!(&after, &snapshot(&fresh, &s));
            if !is_device_change {
                let expected: Vec<String> = after
                    .iter()
                    .filter(|(id, v)| before.get(*id) != Some(v))
                    .map(|(id, _)| id.clone())
                    .collect();
                let got: Vec<String> = report.changed.iter().map(|id| id.to_string()).collect();
                prop_assert_eq!(got, expected);
            }
        }
    }
}
