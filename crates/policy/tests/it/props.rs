//! Property tests for the resolver's invariants and the value codecs.

use std::collections::BTreeMap;

use outpost_policy::{
    AppSchema, Change, Condition, Device, Group, Policy, PolicySetting, PolicyStatus, Profile,
    Resolver, SettingSpec, State, TagRule, Value, ValueKind,
};
use proptest::prelude::*;

use crate::common;

const APP: &str = "app";
const SCALARS: [&str; 3] = ["s0", "s1", "s2"];
const MERGED: &str = "m";
const TAGS: [&str; 3] = ["t0", "t1", "t2"];
const PROFILE_NAMES: [&str; 3] = ["pa", "pb", "pc"];

fn schema() -> AppSchema {
    let mut s = AppSchema::new(APP);
    for p in SCALARS {
        let mut spec = SettingSpec::new(ValueKind::Int);
        spec.min = Some(0);
        spec.max = Some(99);
        s = s.with(p, spec);
    }
    let mut m = SettingSpec::new(ValueKind::List);
    m.item = Some(Box::new(SettingSpec::new(ValueKind::Int)));
    m.merge = true;
    s.with(MERGED, m)
}

fn paths() -> Vec<&'static str> {
    let mut v = SCALARS.to_vec();
    v.push(MERGED);
    v
}

fn value_for(path: &str, n: i64) -> Value {
    if path == MERGED {
        Value::List(vec![Value::Int(n % 5), Value::Int((n / 5) % 5)])
    } else {
        Value::Int(n)
    }
}

fn setting_map() -> impl Strategy<Value = BTreeMap<String, PolicySetting>> {
    proptest::collection::vec((0usize..4, 0i64..100, any::<bool>()), 0..4).prop_map(|v| {
        v.into_iter()
            .map(|(p, n, locked)| {
                let path = paths()[p];
                let v = value_for(path, n);
                let setting = if locked {
                    PolicySetting::locked(v)
                } else {
                    PolicySetting::unlocked(v)
                };
                (path.to_string(), setting)
            })
            .collect()
    })
}

fn profile() -> impl Strategy<Value = Profile> {
    (
        0usize..3,
        0usize..3,
        any::<bool>(),
        prop::bool::weighted(0.9),
        proptest::collection::vec((0usize..4, 0i64..100), 0..3),
    )
        .prop_map(|(name, tag, invert, enabled, settings)| {
            let mut rule = TagRule::has(TAGS[tag]);
            rule.invert = invert;
            let mut p = Profile::new(PROFILE_NAMES[name], Condition::Tags(rule));
            p.enabled = enabled;
            for (i, n) in settings {
                let path = paths()[i];
                p = p.with(path, value_for(path, n));
            }
            p
        })
}

fn policy(status: PolicyStatus) -> impl Strategy<Value = Policy> {
    (
        setting_map(),
        prop::bool::weighted(0.8),
        prop::bool::weighted(0.2),
        proptest::collection::vec(profile(), 0..3),
    )
        .prop_map(move |(settings, inherit, force, profiles)| {
            let mut p = Policy::new("", APP, "");
            p.status = status;
            p.settings = settings;
            p.inherit = inherit;
            p.force_inheritance = force;
            // Profile names must be unique within a policy.
            let mut seen = std::collections::BTreeSet::new();
            p.profiles = profiles
                .into_iter()
                .filter(|pr| seen.insert(pr.name.clone()))
                .collect();
            p
        })
}

fn state() -> impl Strategy<Value = State> {
    (1usize..7)
        .prop_flat_map(|n_groups| {
            let parents = proptest::collection::vec(any::<prop::sample::Index>(), n_groups);
            let pols = proptest::collection::vec(
                (
                    proptest::option::weighted(0.7, policy(PolicyStatus::Active)),
                    proptest::option::weighted(0.2, policy(PolicyStatus::OutOfOffice)),
                    proptest::option::weighted(0.2, policy(PolicyStatus::Inactive)),
                ),
                n_groups,
            );
            let devices = proptest::collection::vec(
                (
                    any::<prop::sample::Index>(),
                    proptest::collection::btree_set(0usize..3, 0..3),
                    prop::bool::weighted(0.8),
                    proptest::collection::vec((0usize..4, 0i64..100), 0..2),
                ),
                1..8,
            );
            (Just(n_groups), parents, pols, devices)
        })
        .prop_map(|(n, parents, pols, devices)| {
            let mut s = State::default();
            s.schemas = vec![schema()];
            for (i, parent) in parents.iter().enumerate() {
                let id = format!("g{i}");
                s.groups.push(if i == 0 || parent.index(i + 1) == i {
                    Group::root(id)
                } else {
                    Group::child(id, format!("g{}", parent.index(i)))
                });
            }
            for (g, (a, o, x)) in pols.into_iter().enumerate() {
                for (k, p) in [a, o, x].into_iter().enumerate() {
                    if let Some(mut p) = p {
                        p.id = format!("p{g}-{k}");
                        p.group = format!("g{g}");
                        s.policies.push(p);
                    }
                }
            }
            for (i, (g, tags, office, locals)) in devices.into_iter().enumerate() {
                let mut d = Device::new(format!("d{i}"), format!("g{}", g.index(n)));
                d.tags = tags.into_iter().map(|t| TAGS[t].to_string()).collect();
                d.on_corporate_network = office;
                for (p, v) in locals {
                    let path = paths()[p];
                    d = d.with_local(APP, path, value_for(path, v));
                }
                s.devices.push(d);
            }
            s
        })
}

fn all_effective(r: &Resolver, s: &State) -> common::Snapshot {
    common::effective_all(r, s, APP)
}

/// The devices of `s` whose effective settings differ between two resolvers, sorted.
fn changed_between(s: &State, before: &Resolver, after: &Resolver) -> Vec<String> {
    s.devices
        .iter()
        .filter(|d| before.effective(&d.id).unwrap() != after.effective(&d.id).unwrap())
        .map(|d| d.id.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The devices a change report lists, as strings.
fn ids(report: &outpost_policy::ChangeReport) -> Vec<String> {
    report.changed.iter().map(|id| id.to_string()).collect()
}

fn rotate<T: Clone>(v: &[T], by: usize) -> Vec<T> {
    let mut out: Vec<T> = v.to_vec();
    if !out.is_empty() {
        let k = by % out.len();
        out.rotate_left(k);
        out.reverse();
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn explain_agrees_with_effective(s in state()) {
        let r = Resolver::new(&s).unwrap();
        for d in &s.devices {
            let e = r.effective(&d.id).unwrap();
            for p in paths() {
                let why = r.explain(&d.id, APP, p).unwrap();
                prop_assert_eq!(Some(&why.value), e.get(APP, p));
                prop_assert_eq!(Some(why.locked), e.is_locked(APP, p));
                prop_assert_eq!(why.candidates.iter().filter(|c| c.outcome == outpost_policy::Outcome::Won).count(),
                    usize::from(!matches!(why.source, outpost_policy::Source::Merged)));
            }
        }
    }

    #[test]
    fn resolving_twice_gives_the_same_result(s in state()) {
        let mut r = Resolver::new(&s).unwrap();
        let first = all_effective(&r, &s);
        r.resolve_all();
        prop_assert_eq!(&first, &all_effective(&r, &s));
        let again = Resolver::new(&s).unwrap();
        prop_assert_eq!(&first, &all_effective(&again, &s));
    }

    #[test]
    fn result_does_not_depend_on_insertion_order(s in state(), by in 0usize..16) {
        let r = Resolver::new(&s).unwrap();
        let mut shuffled = s.clone();
        shuffled.groups = rotate(&s.groups, by);
        shuffled.policies = rotate(&s.policies, by + 1);
        shuffled.devices = rotate(&s.devices, by + 2);
        let r2 = Resolver::new(&shuffled).unwrap();
        prop_assert_eq!(all_effective(&r, &s), all_effective(&r2, &s));
    }

    #[test]
    fn locked_forced_ancestor_value_always_wins(s in state(), n in 0i64..100, path_i in 0usize..4) {
        // Give g0's active policy a forced, locked value and no profile for that path.
        let mut s = s;
        let path = paths()[path_i];
        let v = value_for(path, n);
        if let Some(p) = s.policies.iter_mut().find(|p| p.id == "p0-0") {
            p.force_inheritance = true;
            p.settings.insert(path.to_string(), PolicySetting::locked(v.clone()));
            for pr in &mut p.profiles {
                pr.settings.remove(path);
            }
        } else {
            let mut p = Policy::new("p0-0", APP, "g0").with(path, PolicySetting::locked(v.clone()));
            p.force_inheritance = true;
            s.policies.push(p);
        }
        // Same-named profiles of descendants merge into g0's: drop their values for the path too,
        // since a profile of the ancestor policy itself may change its own lock.
        let g0_names: Vec<String> = s.policies.iter().find(|p| p.id == "p0-0").unwrap()
            .profiles.iter().map(|p| p.name.clone()).collect();
        for p in &mut s.policies {
            for pr in &mut p.profiles {
                if g0_names.contains(&pr.name) {
                    pr.settings.remove(path);
                }
            }
        }
        let r = Resolver::new(&s).unwrap();
        let parents: BTreeMap<String, Option<String>> =
            s.groups.iter().map(|g| (g.id.clone(), g.parent.clone())).collect();
        let g0_has_ooo = s.policies.iter().any(|p| p.group == "g0" && p.status == PolicyStatus::OutOfOffice);
        for d in &s.devices {
            let mut g = Some(d.group.clone());
            let mut under_g0 = false;
            while let Some(cur) = g {
                if cur == "g0" { under_g0 = true; }
                g = parents.get(&cur).cloned().flatten();
            }
            if !under_g0 || (d.group == "g0" && !d.on_corporate_network && g0_has_ooo) {
                continue;
            }
            let got = r.effective(&d.id).unwrap().get(APP, path).cloned().unwrap();
            if path == MERGED {
                let (Value::List(got), Value::List(want)) = (&got, &v) else { panic!("lists") };
                let mut dedup: Vec<Value> = Vec::new();
                for x in want { if !dedup.contains(x) { dedup.push(x.clone()); } }
                prop_assert!(got.starts_with(&dedup), "{:?} should start with {:?}", got, dedup);
            } else {
                prop_assert_eq!(&got, &v, "device {}", d.id);
            }
            prop_assert_eq!(r.effective(&d.id).unwrap().is_locked(APP, path), Some(true));
        }
    }

    #[test]
    fn incremental_edit_matches_fresh_resolution(s in state(), edit in policy(PolicyStatus::Active), g in any::<prop::sample::Index>()) {
        let mut r = Resolver::new(&s).unwrap();
        let before = Resolver::new(&s).unwrap();
        let group = format!("g{}", g.index(s.groups.len()));
        let mut edit = edit;
        // Replace the group's active policy (or add one).
        edit.id = s.policies.iter()
            .find(|p| p.group == group && p.status == PolicyStatus::Active)
            .map_or_else(|| "edited".to_string(), |p| p.id.clone());
        edit.group = group;
        let report = r.apply(Change::UpsertPolicy(edit.clone())).unwrap();
        let mut s2 = s.clone();
        s2.policies.retain(|p| p.id != edit.id);
        s2.policies.push(edit);
        let fresh = Resolver::new(&s2).unwrap();
        prop_assert_eq!(all_effective(&r, &s), all_effective(&fresh, &s));
        prop_assert_eq!(ids(&report), changed_between(&s, &before, &fresh));
    }

    #[test]
    fn moving_a_group_matches_fresh_resolution(
        s in state(),
        pick in any::<prop::sample::Index>(),
        to in any::<prop::sample::Index>(),
    ) {
        let n = s.groups.len();
        let (group, parent) = (format!("g{}", pick.index(n)), format!("g{}", to.index(n)));
        let mut s2 = s.clone();
        for g in s2.groups.iter_mut().filter(|g| g.id == group) {
            g.parent = Some(parent.clone());
        }
        let mut r = Resolver::new(&s).unwrap();
        let before = all_effective(&r, &s);
        let change = Change::MoveGroup { group, parent };
        match Resolver::new(&s2) {
            // Under itself or its own subtree: a cycle.
            Err(_) => {
                prop_assert!(r.apply(change).is_err());
                prop_assert_eq!(before, all_effective(&r, &s), "refused change left no trace");
            }
            Ok(fresh) => {
                let report = r.apply(change).unwrap();
                prop_assert_eq!(all_effective(&r, &s), all_effective(&fresh, &s));
                let old = Resolver::new(&s).unwrap();
                prop_assert_eq!(ids(&report), changed_between(&s, &old, &fresh));
                // And over the devices of the moved state, as a fresh resolver does.
                prop_assert_eq!(all_effective(&Resolver::new(&s2).unwrap(), &s2), all_effective(&r, &s2));
            }
        }
    }

    #[test]
    fn setting_a_status_matches_fresh_resolution(
        s in state(),
        pick in any::<prop::sample::Index>(),
        status in prop_oneof![Just(PolicyStatus::Active), Just(PolicyStatus::Inactive), Just(PolicyStatus::OutOfOffice)],
    ) {
        prop_assume!(!s.policies.is_empty());
        let target = s.policies[pick.index(s.policies.len())].clone();
        let mut r = Resolver::new(&s).unwrap();
        let displaced = r.status_holder(&target.id, status).map(str::to_owned);
        // The same step done by hand: the holder becomes inactive, the target takes the status.
        let mut s2 = s.clone();
        for p in &mut s2.policies {
            if Some(&p.id) == displaced.as_ref() {
                p.status = PolicyStatus::Inactive;
            }
            if p.id == target.id {
                p.status = status;
            }
        }
        let fresh = Resolver::new(&s2).unwrap();
        let report = r.apply(Change::SetPolicyStatus { policy: target.id.clone(), status }).unwrap();
        prop_assert_eq!(all_effective(&r, &s), all_effective(&fresh, &s));
        prop_assert_eq!(r.policy(&target.id).map(|p| p.status), Some(status));
        if let Some(d) = &displaced {
            prop_assert_eq!(r.policy(d).map(|p| p.status), Some(PolicyStatus::Inactive));
        }
        // At most one active and one out-of-office policy per group remain.
        for g in &s.groups {
            for st in [PolicyStatus::Active, PolicyStatus::OutOfOffice] {
                let n = s2.policies.iter().filter(|p| p.group == g.id && p.status == st).count();
                prop_assert!(n <= 1, "group {} has {} policies of status {:?}", g.id, n, st);
            }
        }
        let old = Resolver::new(&s).unwrap();
        prop_assert_eq!(ids(&report), changed_between(&s, &old, &fresh));
    }

    #[test]
    fn moving_a_policy_reports_exactly_the_changed_devices(
        s in state(),
        pick in any::<prop::sample::Index>(),
        g in any::<prop::sample::Index>(),
        status in prop_oneof![Just(PolicyStatus::Active), Just(PolicyStatus::Inactive), Just(PolicyStatus::OutOfOffice)],
    ) {
        prop_assume!(!s.policies.is_empty());
        let mut moved = s.policies[pick.index(s.policies.len())].clone();
        moved.group = format!("g{}", g.index(s.groups.len()));
        moved.status = status;
        let mut s2 = s.clone();
        s2.policies.retain(|p| p.id != moved.id);
        s2.policies.push(moved.clone());
        let mut r = Resolver::new(&s).unwrap();
        let before = all_effective(&r, &s);
        match Resolver::new(&s2) {
            Err(_) => {
                prop_assert!(r.apply(Change::UpsertPolicy(moved)).is_err());
                prop_assert_eq!(before, all_effective(&r, &s), "refused change left no trace");
            }
            Ok(fresh) => {
                let report = r.apply(Change::UpsertPolicy(moved)).unwrap();
                prop_assert_eq!(all_effective(&r, &s), all_effective(&fresh, &s));
                let old = Resolver::new(&s).unwrap();
                prop_assert_eq!(ids(&report), changed_between(&s, &old, &fresh));
            }
        }
    }

    #[test]
    fn state_json_round_trips(s in state()) {
        let json = s.to_json();
        let back = State::from_json(json.as_bytes()).unwrap();
        prop_assert_eq!(&back, &s);
        let toml_text = toml::to_string(&s).unwrap();
        let back = State::from_toml(&toml_text).unwrap();
        prop_assert_eq!(&back, &s);
    }

    #[test]
    fn value_json_round_trips(v in value_strategy()) {
        let text = serde_json::to_string(&v).unwrap();
        let back: Value = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(back, v);
    }
}

fn value_strategy() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        "[a-z]{0,8}".prop_map(Value::Str),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::List),
            proptest::collection::btree_map("[a-z]{1,4}", inner, 0..4).prop_map(Value::Map),
        ]
    })
}

/// One change of a sequence, with indices resolved against the state when applied.
#[derive(Debug, Clone)]
enum Op {
    /// Replace (or add) the active or out-of-office policy of a group.
    EditPolicy(prop::sample::Index, Policy),
    /// Change only the profiles' conditions and enabled flags of an existing policy.
    EditProfiles(prop::sample::Index, Vec<(usize, bool, bool)>),
    RemovePolicy(prop::sample::Index),
    /// Replace a device's tags, network state, local values and group.
    EditDevice(
        prop::sample::Index,
        std::collections::BTreeSet<usize>,
        bool,
        Vec<(usize, i64)>,
        prop::sample::Index,
    ),
    AddTag(prop::sample::Index, usize),
    RemoveDevice(prop::sample::Index),
    /// A new device; the report uses `apply_each`.
    NewDevice(prop::sample::Index, std::collections::BTreeSet<usize>, bool),
}

fn op() -> impl Strategy<Value = Op> {
    let status = prop_oneof![
        3 => Just(PolicyStatus::Active),
        1 => Just(PolicyStatus::OutOfOffice),
    ];
    prop_oneof![
        3 => (any::<prop::sample::Index>(), status)
            .prop_flat_map(|(g, st)| (Just(g), policy(st)))
            .prop_map(|(g, p)| Op::EditPolicy(g, p)),
        2 => (any::<prop::sample::Index>(),
              proptest::collection::vec((0usize..3, any::<bool>(), prop::bool::weighted(0.8)), 1..3))
            .prop_map(|(p, v)| Op::EditProfiles(p, v)),
        1 => any::<prop::sample::Index>().prop_map(Op::RemovePolicy),
        2 => (any::<prop::sample::Index>(),
              proptest::collection::btree_set(0usize..3, 0..3),
              prop::bool::weighted(0.7),
              proptest::collection::vec((0usize..4, 0i64..100), 0..2),
              any::<prop::sample::Index>())
            .prop_map(|(d, t, o, l, g)| Op::EditDevice(d, t, o, l, g)),
        1 => (any::<prop::sample::Index>(), 0usize..3).prop_map(|(d, t)| Op::AddTag(d, t)),
        1 => any::<prop::sample::Index>().prop_map(Op::RemoveDevice),
        1 => (any::<prop::sample::Index>(),
              proptest::collection::btree_set(0usize..3, 0..3),
              prop::bool::weighted(0.7))
            .prop_map(|(g, t, o)| Op::NewDevice(g, t, o)),
    ]
}

/// Every device's effective settings, by id (devices absent from the resolver are skipped).
fn effective_map(r: &Resolver, s: &State) -> BTreeMap<String, Vec<(String, Value, bool)>> {
    s.devices
        .iter()
        .filter_map(|d| {
            let e = r.effective(&d.id).ok()?;
            let v = e
                .iter(APP)
                .map(|(p, v, l)| (p.to_string(), v.clone(), l))
                .collect();
            Some((d.id.clone(), v))
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// A sequence of policy and device changes applied incrementally keeps every device's
    /// settings equal to a fresh resolution after each step, reports exactly the devices
    /// whose settings changed, and keeps explanations in agreement with effective values.
    #[test]
    fn change_sequences_match_fresh_resolution(s in state(), ops in proptest::collection::vec(op(), 1..7)) {
        let mut s = s;
        let mut r = Resolver::new(&s).unwrap();
        let mut next_device = 0usize;
        for op in ops {
            let before = effective_map(&r, &s);
            let mut s2 = s.clone();
            let change = match op {
                Op::EditPolicy(g, mut p) => {
                    let group = s2.groups[g.index(s2.groups.len())].id.clone();
                    p.id = s2.policies.iter()
                        .find(|q| q.group == group && q.status == p.status)
                        .map_or_else(|| format!("new-{group}-{:?}", p.status), |q| q.id.clone());
                    p.group = group;
                    s2.policies.retain(|q| q.id != p.id);
                    s2.policies.push(p.clone());
                    Change::UpsertPolicy(p)
                }
                Op::EditProfiles(i, edits) => {
                    if s2.policies.is_empty() { continue; }
                    let k = i.index(s2.policies.len());
                    let mut p = s2.policies[k].clone();
                    for (j, (tag, invert, enabled)) in edits.into_iter().enumerate() {
                        if let Some(pr) = p.profiles.get_mut(j) {
                            let mut rule = TagRule::has(TAGS[tag]);
                            rule.invert = invert;
                            pr.condition = Condition::Tags(rule);
                            pr.enabled = enabled;
                        }
                    }
                    s2.policies[k] = p.clone();
                    Change::UpsertPolicy(p)
                }
                Op::RemovePolicy(i) => {
                    if s2.policies.is_empty() { continue; }
                    let id = s2.policies.remove(i.index(s2.policies.len())).id;
                    Change::RemovePolicy(id)
                }
                Op::EditDevice(i, tags, office, locals, g) => {
                    if s2.devices.is_empty() { continue; }
                    let k = i.index(s2.devices.len());
                    let d = &mut s2.devices[k];
                    d.tags = tags.into_iter().map(|t| TAGS[t].to_string()).collect();
                    d.on_corporate_network = office;
                    d.local.clear();
                    for (p, v) in locals {
                        let path = paths()[p];
                        d.local.entry(APP.to_string()).or_default().insert(path.to_string(), value_for(path, v));
                    }
                    d.group = s.groups[g.index(s.groups.len())].id.clone();
                    Change::UpsertDevice(d.clone())
                }
                Op::AddTag(i, t) => {
                    if s2.devices.is_empty() { continue; }
                    let k = i.index(s2.devices.len());
                    s2.devices[k].tags.insert(TAGS[t].to_string());
                    Change::AddTag { device: s2.devices[k].id.clone(), tag: TAGS[t].to_string() }
                }
                Op::RemoveDevice(i) => {
                    if s2.devices.is_empty() { continue; }
                    let id = s2.devices.remove(i.index(s2.devices.len())).id;
                    Change::RemoveDevice(id)
                }
                Op::NewDevice(g, tags, office) => {
                    // "a..." sorts before the existing "d..." ids: indices leave id order.
                    let mut d = Device::new(format!("a{next_device}"), s.groups[g.index(s.groups.len())].id.clone());
                    next_device += 1;
                    d.tags = tags.into_iter().map(|t| TAGS[t].to_string()).collect();
                    d.on_corporate_network = office;
                    s2.devices.push(d.clone());
                    Change::UpsertDevice(d)
                }
            };
            let use_each = matches!(&change, Change::UpsertDevice(_) | Change::RemovePolicy(_));
            let fresh = Resolver::new(&s2);
            let result = if use_each {
                let mut ids = Vec::new();
                r.apply_each(change, |id| ids.push(id.to_string())).map(|_| ids)
            } else {
                r.apply(change).map(|rep| rep.changed.iter().map(|id| id.to_string()).collect())
            };
            let Ok(fresh) = fresh else {
                prop_assert!(result.is_err(), "a change the state refuses must be refused");
                prop_assert_eq!(&before, &effective_map(&r, &s), "refused change left no trace");
                continue;
            };
            let changed = result.unwrap();
            s = s2;
            let after = effective_map(&r, &s);
            prop_assert_eq!(&after, &effective_map(&fresh, &s));
            let expected: Vec<String> = after.iter()
                .filter(|(id, v)| before.get(*id) != Some(*v))
                .map(|(id, _)| id.clone())
                .collect();
            prop_assert_eq!(changed, expected);
            for d in &s.devices {
                let e = r.effective(&d.id).unwrap();
                for p in paths() {
                    let why = r.explain(&d.id, APP, p).unwrap();
                    prop_assert_eq!(Some(&why.value), e.get(APP, p));
                    prop_assert_eq!(Some(why.locked), e.is_locked(APP, p));
                }
            }
        }
    }
}
