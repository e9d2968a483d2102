//! Table tests walking through every resolution rule.

use outpost_policy::{
    AppSchema, Change, Condition, Device, DirectoryRule, Group, LossReason, Outcome, Owner, Policy,
    PolicyError, PolicySetting, PolicyStatus, Profile, Range, Resolver, SettingSpec, Source, State,
    Subject, TagRule, Value, ValueKind,
};

const APP: &str = "endpoint";

/// Device ids as a change report lists them.
fn ids(v: &[&str]) -> Vec<std::sync::Arc<str>> {
    v.iter().map(|&s| std::sync::Arc::from(s)).collect()
}

fn int(min: i64, max: i64, default: i64) -> SettingSpec {
    let mut s = SettingSpec::new(ValueKind::Int);
    s.min = Some(min);
    s.max = Some(max);
    s.default = Some(Value::Int(default));
    s
}

fn list(merge: bool) -> SettingSpec {
    let mut s = SettingSpec::new(ValueKind::List);
    s.item = Some(Box::new(SettingSpec::new(ValueKind::String)));
    s.merge = merge;
    s
}

fn schema() -> AppSchema {
    let mut mode = SettingSpec::new(ValueKind::String);
    mode.allowed = Some(vec!["quick".into(), "full".into()]);
    AppSchema::new(APP)
        .with("flash", SettingSpec::new(ValueKind::Bool))
        .with("scan.level", int(1, 5, 2))
        .with("scan.mode", mode)
        .with("scan.exclusions", list(true))
        .with("proxies", list(false))
}

/// company > office > (accounting > seniors), (it)
fn groups() -> Vec<Group> {
    vec![
        Group::root("company"),
        Group::child("office", "company"),
        Group::child("accounting", "office"),
        Group::child("seniors", "accounting"),
        Group::child("it", "office"),
    ]
}

fn state(policies: Vec<Policy>, devices: Vec<Device>) -> State {
    let mut s = State::default();
    s.schemas = vec![schema()];
    s.groups = groups();
    s.policies = policies;
    s.devices = devices;
    s
}

fn resolver(policies: Vec<Policy>, devices: Vec<Device>) -> Resolver {
    Resolver::new(&state(policies, devices)).expect("valid state")
}

fn get(r: &Resolver, device: &str, path: &str) -> Value {
    r.effective(device)
        .expect("device")
        .get(APP, path)
        .cloned()
        .expect("path")
}

fn level(r: &Resolver, device: &str) -> i64 {
    match get(r, device, "scan.level") {
        Value::Int(i) => i,
        v => panic!("not an int: {v}"),
    }
}

fn locked(v: i64) -> PolicySetting {
    PolicySetting::locked(v)
}
fn unlocked(v: i64) -> PolicySetting {
    PolicySetting::unlocked(v)
}
fn tag(t: &str) -> Condition {
    Condition::Tags(TagRule::has(t))
}
fn strs(items: &[&str]) -> Value {
    Value::List(items.iter().map(|s| Value::from(*s)).collect())
}

// ---------- schema ----------

#[test]
fn defaults_apply_without_policies() {
    let r = resolver(vec![], vec![Device::new("d", "seniors")]);
    assert_eq!(level(&r, "d"), 2);
    assert_eq!(get(&r, "d", "flash"), Value::Bool(false));
    assert_eq!(get(&r, "d", "scan.mode"), Value::from("quick"));
    assert_eq!(get(&r, "d", "scan.exclusions"), strs(&[]));
}

#[test]
fn schema_violations_name_path_and_rule() {
    let cases: Vec<(PolicySetting, &str, &str)> = vec![
        (unlocked(9), "scan.level", "must be at most 5"),
        (unlocked(0), "scan.level", "must be at least 1"),
        (
            PolicySetting::unlocked("x"),
            "scan.level",
            "must be of type int, not string",
        ),
        (
            PolicySetting::unlocked("slow"),
            "scan.mode",
            "must be one of",
        ),
        (
            PolicySetting::unlocked(Value::List(vec![Value::Int(1)])),
            "proxies",
            "item 0 must be of type string",
        ),
    ];
    for (setting, path, rule) in cases {
        let p = Policy::new("p", APP, "company").with(path, setting);
        let err = Resolver::new(&state(vec![p], vec![])).unwrap_err();
        match &err {
            PolicyError::SchemaViolation(v) => {
                assert_eq!(v.path, path);
                assert!(v.rule.contains(rule), "{} should contain {rule}", v.rule);
                assert_eq!(v.origin, "policy \"p\"");
                assert_eq!(err.field(), Some(format!("settings.{path}").as_str()));
            }
            e => panic!("unexpected {e}"),
        }
        assert!(err.to_string().contains(path));
    }
}

#[test]
fn profile_value_violating_schema_is_refused() {
    let p = Policy::new("p", APP, "company")
        .with_profile(Profile::new("w", Condition::default()).with("scan.level", 2i64))
        .with_profile(Profile::new("x", Condition::default()).with("scan.level", 7i64));
    let err = Resolver::new(&state(vec![p], vec![])).unwrap_err();
    assert!(
        matches!(&err, PolicyError::SchemaViolation(v)
            if v.origin.contains("profile \"x\"") && v.rule.contains("at most 5")),
        "{err}"
    );
    // The second profile's value: the field names it by position, as the document has it.
    assert_eq!(err.field(), Some("profiles[1].settings.scan.level"));
}

#[test]
fn undeclared_paths_and_bad_schemas_are_refused() {
    let p = Policy::new("p", APP, "company").with("scan.speed", unlocked(1));
    let err = Resolver::new(&state(vec![p], vec![])).unwrap_err();
    assert!(matches!(&err, PolicyError::UnknownSetting { path, .. } if path == "scan.speed"));
    assert_eq!(err.field(), Some("settings.scan.speed"));

    let mut bad = SettingSpec::new(ValueKind::Bool);
    bad.min = Some(1);
    let mut s = state(vec![], vec![]);
    s.schemas = vec![AppSchema::new(APP).with("flag", bad)];
    assert!(matches!(
        Resolver::new(&s),
        Err(PolicyError::InvalidSchema { field: "min", .. })
    ));

    s.schemas = vec![
        AppSchema::new(APP)
            .with("scan", SettingSpec::new(ValueKind::Bool))
            .with("scan.level", SettingSpec::new(ValueKind::Int)),
    ];
    assert!(matches!(
        Resolver::new(&s),
        Err(PolicyError::InvalidSchema { field: "path", .. })
    ));

    s.schemas = vec![AppSchema::new(APP).with("n", int(1, 3, 9))];
    assert!(matches!(
        Resolver::new(&s),
        Err(PolicyError::InvalidSchema {
            field: "default",
            ..
        })
    ));
}

// ---------- policies ----------

#[test]
fn second_active_policy_is_refused_but_inactive_is_fine() {
    let a = Policy::new("a", APP, "office");
    let b = Policy::new("b", APP, "office");
    let err = Resolver::new(&state(vec![b.clone(), a.clone()], vec![])).unwrap_err();
    assert_eq!(
        err,
        PolicyError::SecondPolicy {
            app: APP.into(),
            group: "office".into(),
            status: "active",
            existing: "a".into(),
            refused: "b".into(),
        }
    );
    let mut inactive = b.clone();
    inactive.status = PolicyStatus::Inactive;
    assert!(Resolver::new(&state(vec![a.clone(), inactive], vec![])).is_ok());

    let mut o1 = Policy::new("o1", APP, "office");
    o1.status = PolicyStatus::OutOfOffice;
    let mut o2 = o1.clone();
    o2.id = "o2".into();
    assert!(matches!(
        Resolver::new(&state(vec![a, o1, o2], vec![])),
        Err(PolicyError::SecondPolicy {
            status: "out-of-office",
            ..
        })
    ));
}

#[test]
fn second_active_policy_is_refused_on_change() {
    let mut r = resolver(vec![Policy::new("a", APP, "office")], vec![]);
    let err = r
        .apply(Change::UpsertPolicy(Policy::new("b", APP, "office")))
        .unwrap_err();
    assert!(matches!(err, PolicyError::SecondPolicy { .. }));
    // Replacing the existing one under its own id is fine.
    assert!(
        r.apply(Change::UpsertPolicy(Policy::new("a", APP, "office")))
            .is_ok()
    );
}

#[test]
fn at_most_100_profiles() {
    let mut p = Policy::new("p", APP, "company");
    for i in 0..100 {
        p.profiles
            .push(Profile::new(format!("p{i}"), Condition::default()));
    }
    assert!(Resolver::new(&state(vec![p.clone()], vec![])).is_ok());
    p.profiles.push(Profile::new("p100", Condition::default()));
    assert_eq!(
        Resolver::new(&state(vec![p], vec![])).unwrap_err(),
        PolicyError::TooManyProfiles {
            policy: "p".into(),
            count: 101,
            max: 100
        }
    );
}

#[test]
fn duplicate_profile_names_are_refused() {
    let p = Policy::new("p", APP, "company")
        .with_profile(Profile::new("x", Condition::default()))
        .with_profile(Profile::new("x", Condition::default()));
    assert!(matches!(
        Resolver::new(&state(vec![p], vec![])),
        Err(PolicyError::DuplicateProfile { name, .. }) if name == "x"
    ));
}

// ---------- inheritance ----------

#[test]
fn child_inherits_and_overrides_unlocked_values() {
    let root = Policy::new("root", APP, "company").with("scan.level", unlocked(3));
    let acc = Policy::new("acc", APP, "accounting").with("scan.level", unlocked(4));
    let r = resolver(
        vec![root, acc],
        vec![
            Device::new("it-pc", "it"),
            Device::new("acc-pc", "accounting"),
            Device::new("sen-pc", "seniors"),
        ],
    );
    // "it" has no policy: it gets its ancestors' (company's) policy.
    assert_eq!(level(&r, "it-pc"), 3);
    assert_eq!(level(&r, "acc-pc"), 4);
    // "seniors" has no policy: it gets accounting's.
    assert_eq!(level(&r, "sen-pc"), 4);
}

#[test]
fn locked_ancestor_value_overrides_child_and_child_can_relock_unlocked() {
    let root = Policy::new("root", APP, "company")
        .with("scan.level", locked(3))
        .with("flash", PolicySetting::unlocked(true));
    let acc = Policy::new("acc", APP, "accounting")
        .with("scan.level", unlocked(5))
        .with("flash", PolicySetting::locked(false));
    let sen = Policy::new("sen", APP, "seniors").with("flash", PolicySetting::unlocked(true));
    let r = resolver(vec![root, acc, sen], vec![Device::new("d", "seniors")]);
    assert_eq!(level(&r, "d"), 3);
    // accounting re-set and locked `flash`; seniors cannot change it.
    assert_eq!(get(&r, "d", "flash"), Value::Bool(false));
    let why = r.explain("d", APP, "scan.level").unwrap();
    assert_eq!(
        why.source,
        Source::Policy {
            policy: "root".into(),
            group: "company".into(),
            locked: true
        }
    );
    let acc_cand = why
        .candidates
        .iter()
        .find(|c| matches!(&c.source, Source::Policy { policy, .. } if policy == "acc"))
        .unwrap();
    assert_eq!(
        acc_cand.outcome,
        Outcome::Lost(LossReason::Locked {
            by: Source::Policy {
                policy: "root".into(),
                group: "company".into(),
                locked: true
            }
        })
    );
}

#[test]
fn inherit_off_breaks_the_chain_unless_forced() {
    let root = Policy::new("root", APP, "company").with("scan.level", locked(3));
    let mut acc =
        Policy::new("acc", APP, "accounting").with("flash", PolicySetting::unlocked(true));
    acc.inherit = false;
    let r = resolver(
        vec![root.clone(), acc.clone()],
        vec![Device::new("d", "accounting")],
    );
    assert_eq!(level(&r, "d"), 2, "not inherited: schema default");
    assert_eq!(get(&r, "d", "flash"), Value::Bool(true));

    let mut forced_root = root;
    forced_root.force_inheritance = true;
    let r = resolver(vec![forced_root, acc], vec![Device::new("d", "accounting")]);
    assert_eq!(level(&r, "d"), 3, "forced inheritance");
}

#[test]
fn force_inheritance_reaches_all_descendants() {
    let mut root = Policy::new("root", APP, "company").with("scan.level", locked(3));
    root.force_inheritance = true;
    let office = Policy::new("office", APP, "office");
    let mut sen = Policy::new("sen", APP, "seniors").with("scan.level", unlocked(5));
    sen.inherit = false;
    let r = resolver(vec![root, office, sen], vec![Device::new("d", "seniors")]);
    assert_eq!(level(&r, "d"), 3);
}

#[test]
fn inactive_policies_are_not_inherited() {
    let root = Policy::new("root", APP, "company").with("scan.level", unlocked(3));
    let mut office = Policy::new("office", APP, "office").with("scan.level", locked(5));
    office.status = PolicyStatus::Inactive;
    let r = resolver(vec![root, office], vec![Device::new("d", "accounting")]);
    assert_eq!(level(&r, "d"), 3);
}

// ---------- out of office ----------

#[test]
fn out_of_office_policy_replaces_active_off_network_and_does_not_propagate() {
    let root = Policy::new("root", APP, "company").with("scan.level", unlocked(3));
    let acc = Policy::new("acc", APP, "accounting").with("scan.level", unlocked(4));
    let mut ooo = Policy::new("acc-away", APP, "accounting").with("scan.level", unlocked(5));
    ooo.status = PolicyStatus::OutOfOffice;
    let mut away = Device::new("away", "accounting");
    away.on_corporate_network = false;
    let mut away_sen = Device::new("away-sen", "seniors");
    away_sen.on_corporate_network = false;
    let r = resolver(
        vec![root, acc, ooo],
        vec![Device::new("in", "accounting"), away, away_sen],
    );
    assert_eq!(level(&r, "in"), 4);
    assert_eq!(level(&r, "away"), 5);
    // seniors has no out-of-office policy of its own: accounting's does not propagate.
    assert_eq!(level(&r, "away-sen"), 4);
}

#[test]
fn out_of_office_policy_respects_ancestor_locks() {
    let root = Policy::new("root", APP, "company").with("scan.level", locked(3));
    let mut ooo = Policy::new("away", APP, "accounting")
        .with("scan.level", unlocked(5))
        .with("flash", PolicySetting::unlocked(true));
    ooo.status = PolicyStatus::OutOfOffice;
    let mut d = Device::new("d", "accounting");
    d.on_corporate_network = false;
    let r = resolver(vec![root, ooo], vec![d]);
    assert_eq!(level(&r, "d"), 3);
    assert_eq!(get(&r, "d", "flash"), Value::Bool(true));
}

// ---------- lists ----------

#[test]
fn merged_lists_keep_inherited_items_and_add_child_items() {
    let root = Policy::new("root", APP, "company")
        .with("scan.exclusions", PolicySetting::locked(strs(&["C:/a"])))
        .with("proxies", PolicySetting::unlocked(strs(&["p1"])));
    let acc = Policy::new("acc", APP, "accounting")
        .with(
            "scan.exclusions",
            PolicySetting::unlocked(strs(&["C:/b", "C:/a"])),
        )
        .with("proxies", PolicySetting::unlocked(strs(&["p2"])));
    let d = Device::new("d", "accounting")
        .with_local(APP, "scan.exclusions", strs(&["C:/local"]))
        .with_local(APP, "proxies", strs(&["p3"]));
    let r = resolver(vec![root, acc], vec![d]);
    assert_eq!(
        get(&r, "d", "scan.exclusions"),
        strs(&["C:/a", "C:/b"]),
        "locked: local does not add"
    );
    assert_eq!(
        get(&r, "d", "proxies"),
        strs(&["p3"]),
        "replaced, and unlocked: local wins"
    );
    let why = r.explain("d", APP, "scan.exclusions").unwrap();
    assert_eq!(why.source, Source::Merged);
    assert_eq!(
        why.candidates
            .iter()
            .filter(|c| c.outcome == Outcome::Contributed)
            .count(),
        2
    );
    assert!(why.candidates.iter().any(|c| c.source == Source::Local
        && matches!(c.outcome, Outcome::Lost(LossReason::Locked { .. }))));
}

#[test]
fn long_merged_lists_keep_every_item_once_in_order() {
    // 30,000 items from the root, 30,000 from the child of which half repeat the root's, and
    // a local list repeating both: each item once, in the order it first appeared. (A check
    // of the result only: a quadratic merge passes it too, slowly.)
    let n = 30_000;
    let items =
        |r: std::ops::Range<usize>| Value::List(r.map(|i| Value::Str(format!("C:/{i}"))).collect());
    let root = Policy::new("root", APP, "company")
        .with("scan.exclusions", PolicySetting::unlocked(items(0..n)));
    let acc = Policy::new("acc", APP, "accounting").with(
        "scan.exclusions",
        PolicySetting::unlocked(items(n / 2..n + n / 2)),
    );
    let d = Device::new("d", "accounting").with_local(APP, "scan.exclusions", items(0..2 * n));
    let r = resolver(vec![root, acc], vec![d]);
    assert_eq!(get(&r, "d", "scan.exclusions"), items(0..2 * n));
}

#[test]
fn unlocked_merged_list_takes_local_items_too() {
    let root = Policy::new("root", APP, "company")
        .with("scan.exclusions", PolicySetting::unlocked(strs(&["x"])));
    let d = Device::new("d", "it").with_local(APP, "scan.exclusions", strs(&["y"]));
    let r = resolver(vec![root], vec![d]);
    assert_eq!(get(&r, "d", "scan.exclusions"), strs(&["x", "y"]));
}

// ---------- local settings ----------

#[test]
fn local_values_change_only_unlocked_settings() {
    let root = Policy::new("root", APP, "company")
        .with("scan.level", locked(3))
        .with("flash", PolicySetting::unlocked(false));
    let d = Device::new("d", "it")
        .with_local(APP, "scan.level", 5i64)
        .with_local(APP, "flash", true);
    let r = resolver(vec![root], vec![d]);
    assert_eq!(level(&r, "d"), 3);
    assert_eq!(get(&r, "d", "flash"), Value::Bool(true));
    let eff = r.effective("d").unwrap();
    assert_eq!(eff.is_locked(APP, "scan.level"), Some(true));
    assert_eq!(eff.is_locked(APP, "flash"), Some(false));
    let why = r.explain("d", APP, "scan.level").unwrap();
    let local = why
        .candidates
        .iter()
        .find(|c| c.source == Source::Local)
        .expect("local kept");
    assert_eq!(local.value, Value::Int(5));
    assert!(matches!(
        local.outcome,
        Outcome::Lost(LossReason::Locked { .. })
    ));
    assert_eq!(r.explain("d", APP, "flash").unwrap().source, Source::Local);
}

#[test]
fn local_value_for_a_setting_without_policy_wins_over_default() {
    let d = Device::new("d", "it").with_local(APP, "scan.level", 4i64);
    let r = resolver(vec![], vec![d]);
    assert_eq!(level(&r, "d"), 4);
}

// ---------- profiles ----------

fn accountants_state() -> State {
    let company = Policy::new("company-policy", APP, "company").with("scan.level", unlocked(3));
    let accountants = Policy::new("accountants", APP, "accounting")
        .with("flash", PolicySetting::locked(false))
        .with_profile(Profile::new("senior accountants", tag("senior")).with("flash", true));
    state(
        vec![company, accountants],
        vec![
            Device::new("junior-pc", "accounting").with_local(APP, "flash", true),
            Device::new("senior-pc", "accounting").with_tag("senior"),
        ],
    )
}

#[test]
fn senior_accountant_profile_allows_flash_drives() {
    let r = Resolver::new(&accountants_state()).unwrap();
    assert_eq!(get(&r, "junior-pc", "flash"), Value::Bool(false));
    assert_eq!(get(&r, "senior-pc", "flash"), Value::Bool(true));
    let why = r.explain("senior-pc", APP, "flash").unwrap();
    assert!(why.locked);
    assert_eq!(
        why.source,
        Source::Profile {
            profile: "senior accountants".into(),
            policy: "accountants".into(),
            group: "accounting".into(),
            rank: 1
        }
    );
    assert_eq!(why.candidates[0].source, Source::Default);
    assert!(matches!(
        why.candidates[1].outcome,
        Outcome::Lost(LossReason::Overridden {
            by: Source::Profile { .. }
        })
    ));
    let junior = r.explain("junior-pc", APP, "flash").unwrap();
    assert!(
        junior
            .candidates
            .iter()
            .any(|c| matches!(c.outcome, Outcome::Lost(LossReason::ConditionNotMet)))
    );
    assert!(junior.candidates.iter().any(|c| c.source == Source::Local
        && matches!(c.outcome, Outcome::Lost(LossReason::Locked { .. }))));
    assert!(why.to_string().contains("senior accountants"));
}

#[test]
fn listed_order_is_priority_and_several_profiles_can_be_active() {
    let p = Policy::new("p", APP, "company")
        .with_profile(Profile::new("first", tag("a")).with("scan.level", 4i64))
        .with_profile(
            Profile::new("second", tag("b"))
                .with("scan.level", 5i64)
                .with("flash", true),
        );
    let r = resolver(
        vec![p],
        vec![
            Device::new("both", "it").with_tag("a").with_tag("b"),
            Device::new("b-only", "it").with_tag("b"),
        ],
    );
    assert_eq!(level(&r, "both"), 4);
    assert_eq!(
        get(&r, "both", "flash"),
        Value::Bool(true),
        "second is active as well"
    );
    assert_eq!(level(&r, "b-only"), 5);
    let why = r.explain("both", APP, "scan.level").unwrap();
    let second = why
        .candidates
        .iter()
        .find(|c| matches!(&c.source, Source::Profile { profile, .. } if profile == "second"))
        .unwrap();
    assert!(matches!(
        second.outcome,
        Outcome::Lost(LossReason::LowerPriority { .. })
    ));
}

#[test]
fn disabled_profiles_never_activate() {
    let mut prof = Profile::new("off", Condition::default()).with("scan.level", 4i64);
    prof.enabled = false;
    let p = Policy::new("p", APP, "company").with_profile(prof);
    let r = resolver(vec![p], vec![Device::new("d", "it")]);
    assert_eq!(level(&r, "d"), 2);
    let why = r.explain("d", APP, "scan.level").unwrap();
    assert!(
        why.candidates
            .iter()
            .any(|c| c.outcome == Outcome::Lost(LossReason::ProfileDisabled))
    );
}

#[test]
fn inherited_profiles_rank_above_the_childs_own() {
    let root = Policy::new("root", APP, "company")
        .with_profile(Profile::new("parent-prof", tag("x")).with("scan.level", 4i64));
    let acc = Policy::new("acc", APP, "accounting")
        .with_profile(Profile::new("child-prof", tag("x")).with("scan.level", 5i64));
    let r = resolver(
        vec![root, acc],
        vec![Device::new("d", "accounting").with_tag("x")],
    );
    assert_eq!(level(&r, "d"), 4);
}

#[test]
fn same_named_profiles_merge_with_parent_settings_and_condition_winning() {
    let root = Policy::new("root", APP, "company")
        .with_profile(Profile::new("travel", tag("laptop")).with("scan.level", 4i64));
    let acc = Policy::new("acc", APP, "accounting").with_profile(
        Profile::new("travel", tag("never-set"))
            .with("scan.level", 5i64)
            .with("flash", true),
    );
    let r = resolver(
        vec![root, acc],
        vec![
            Device::new("laptop", "accounting").with_tag("laptop"),
            Device::new("other", "accounting").with_tag("never-set"),
        ],
    );
    assert_eq!(level(&r, "laptop"), 4, "parent's setting wins");
    assert_eq!(
        get(&r, "laptop", "flash"),
        Value::Bool(true),
        "child's extra setting merged"
    );
    assert_eq!(level(&r, "other"), 2, "parent's condition wins");
    let why = r.explain("laptop", APP, "scan.level").unwrap();
    assert!(why.candidates.iter().any(|c| matches!(
        c.outcome,
        Outcome::Lost(LossReason::ShadowedByAncestorProfile { .. })
    )));
}

#[test]
fn childs_profile_cannot_change_an_ancestor_lock_but_ancestors_profile_can() {
    let root = Policy::new("root", APP, "company")
        .with("scan.level", locked(3))
        .with_profile(Profile::new("root-prof", tag("r")).with("flash", true));
    let acc = Policy::new("acc", APP, "accounting")
        .with("flash", PolicySetting::locked(false))
        .with_profile(Profile::new("acc-prof", tag("a")).with("scan.level", 5i64));
    let r = resolver(
        vec![root, acc],
        vec![Device::new("d", "accounting").with_tag("a").with_tag("r")],
    );
    assert_eq!(level(&r, "d"), 3);
    assert_eq!(get(&r, "d", "flash"), Value::Bool(true));
    let why = r.explain("d", APP, "scan.level").unwrap();
    assert!(why.candidates.iter().any(
        |c| matches!(&c.source, Source::Profile { profile, .. } if profile == "acc-prof")
            && matches!(c.outcome, Outcome::Lost(LossReason::Locked { .. }))
    ));
}

#[test]
fn profiles_override_local_values() {
    let p = Policy::new("p", APP, "company")
        .with_profile(Profile::new("prof", Condition::default()).with("scan.level", 4i64));
    let r = resolver(
        vec![p],
        vec![Device::new("d", "it").with_local(APP, "scan.level", 1i64)],
    );
    assert_eq!(level(&r, "d"), 4);
}

// ---------- conditions ----------

fn cond_device() -> Device {
    let mut d = Device::new("d", "it").with_tag("laptop").with_tag("emea");
    d.online = false;
    d.network_location = Some("branch-7".into());
    d.ram_mb = Some(8192);
    d.cpu_count = Some(4);
    d.ou = Some("corp/finance/accounting".into());
    d.directory_groups.insert("finance-pcs".into());
    let mut o = Owner::default();
    o.name = "alice".into();
    o.roles.insert("senior".into());
    o.ou = Some("corp/people".into());
    o.directory_groups.insert("accountants".into());
    d.owner = Some(o);
    d
}

#[test]
fn every_condition_rule_evaluates_as_documented() {
    let dir = |name: &str, of: Subject, nested: bool| {
        let mut r = DirectoryRule::default();
        r.name = name.into();
        r.of = of;
        r.include_nested = nested;
        r
    };
    let tags = |names: &[&str], all: bool, invert: bool| {
        let mut t = TagRule::default();
        t.names = names.iter().map(|s| s.to_string()).collect();
        t.all = all;
        t.invert = invert;
        Condition::Tags(t)
    };
    let range = |min: Option<u64>, max: Option<u64>| {
        let mut r = Range::default();
        r.min = min;
        r.max = max;
        r
    };
    let cases: Vec<(Condition, bool)> = vec![
        (Condition::All(vec![]), true),
        (Condition::Any(vec![]), false),
        (Condition::Online(false), true),
        (Condition::Online(true), false),
        (Condition::NetworkLocation("branch-7".into()), true),
        (Condition::NetworkLocation("hq".into()), false),
        (tags(&["laptop", "x"], false, false), true),
        (tags(&["laptop", "x"], true, false), false),
        (tags(&["laptop", "emea"], true, false), true),
        (tags(&["laptop"], false, true), false),
        (tags(&["x"], false, true), true),
        (tags(&[], false, false), false),
        (tags(&[], true, false), true),
        (Condition::Owner("alice".into()), true),
        (Condition::Owner("bob".into()), false),
        (Condition::Role("senior".into()), true),
        (Condition::Role("junior".into()), false),
        (
            Condition::Ou(dir("corp/finance/accounting", Subject::Device, false)),
            true,
        ),
        (
            Condition::Ou(dir("corp/finance", Subject::Device, false)),
            false,
        ),
        (
            Condition::Ou(dir("corp/finance", Subject::Device, true)),
            true,
        ),
        (Condition::Ou(dir("corp/fin", Subject::Device, true)), false),
        (
            Condition::Ou(dir("corp/people", Subject::Owner, false)),
            true,
        ),
        (
            Condition::DirectoryGroup(dir("finance-pcs", Subject::Device, false)),
            true,
        ),
        (
            Condition::DirectoryGroup(dir("finance-pcs", Subject::Owner, false)),
            false,
        ),
        (
            Condition::DirectoryGroup(dir("accountants", Subject::Owner, false)),
            true,
        ),
        (Condition::RamMb(range(Some(8192), None)), true),
        (Condition::RamMb(range(Some(8193), None)), false),
        (Condition::CpuCount(range(None, Some(4))), true),
        (Condition::CpuCount(range(Some(8), None)), false),
        (Condition::Not(Box::new(Condition::Online(true))), true),
        (
            Condition::All(vec![
                Condition::Online(false),
                Condition::Role("senior".into()),
            ]),
            true,
        ),
        (
            Condition::All(vec![Condition::Online(false), Condition::Role("x".into())]),
            false,
        ),
        (
            Condition::Any(vec![
                Condition::Online(true),
                Condition::Role("senior".into()),
            ]),
            true,
        ),
    ];
    for (i, (cond, expected)) in cases.into_iter().enumerate() {
        let p = Policy::new("p", APP, "company")
            .with_profile(Profile::new("c", cond.clone()).with("scan.level", 5i64));
        let r = resolver(vec![p], vec![cond_device(), Device::new("bare", "it")]);
        assert_eq!(level(&r, "d") == 5, expected, "case {i}: {cond:?}");
    }
}

#[test]
fn missing_facts_never_match_positive_rules() {
    let p = Policy::new("p", APP, "company").with_profile(
        Profile::new(
            "c",
            Condition::Any(vec![
                Condition::Owner("alice".into()),
                Condition::RamMb(Range::default()),
                Condition::NetworkLocation("x".into()),
            ]),
        )
        .with("scan.level", 5i64),
    );
    let r = resolver(vec![p], vec![Device::new("bare", "it")]);
    assert_eq!(level(&r, "bare"), 2);
}

#[test]
fn oversized_conditions_are_refused() {
    let mut c = Condition::Online(true);
    for _ in 0..20 {
        c = Condition::Not(Box::new(c));
    }
    let p = Policy::new("p", APP, "company").with_profile(Profile::new("deep", c));
    assert!(matches!(
        Resolver::new(&state(vec![p], vec![])),
        Err(PolicyError::ConditionTooLarge { .. })
    ));
}

// ---------- hierarchy validation ----------

#[test]
fn group_cycles_unknown_parents_and_duplicates_are_refused() {
    let mut s = state(vec![], vec![]);
    s.groups = vec![Group::child("a", "b"), Group::child("b", "a")];
    assert!(matches!(
        Resolver::new(&s),
        Err(PolicyError::GroupCycle { .. })
    ));
    s.groups = vec![Group::child("a", "nope")];
    assert!(
        matches!(Resolver::new(&s), Err(PolicyError::UnknownReference { id, .. }) if id == "nope")
    );
    s.groups = vec![Group::root("a"), Group::root("a")];
    assert!(matches!(
        Resolver::new(&s),
        Err(PolicyError::DuplicateId { kind: "group", .. })
    ));
    s.groups = (0..40)
        .map(|i| {
            if i == 0 {
                Group::root("g0")
            } else {
                Group::child(format!("g{i}"), format!("g{}", i - 1))
            }
        })
        .collect();
    assert!(matches!(
        Resolver::new(&s),
        Err(PolicyError::HierarchyTooDeep { depth: 33, .. })
    ));
}

#[test]
fn devices_with_unknown_groups_or_bad_local_values_are_refused() {
    let s = state(vec![], vec![Device::new("d", "nowhere")]);
    assert!(matches!(
        Resolver::new(&s),
        Err(PolicyError::UnknownReference { kind: "group", .. })
    ));
    let s = state(
        vec![],
        vec![Device::new("d", "it").with_local(APP, "scan.level", 99i64)],
    );
    assert!(
        matches!(Resolver::new(&s), Err(PolicyError::SchemaViolation(v)) if v.origin.contains("device \"d\""))
    );
}

// ---------- incremental ----------

#[test]
fn policy_edit_reports_exactly_the_changed_devices() {
    let mut r = Resolver::new(&accountants_state()).unwrap();
    let mut s = accountants_state();
    s.devices.push(Device::new("it-pc", "it"));
    let mut r2 = Resolver::new(&s).unwrap();
    // Allow flash for all accountants: only the junior changes (the senior already had it).
    let p = Policy::new("accountants", APP, "accounting")
        .with("flash", PolicySetting::locked(true))
        .with_profile(Profile::new("senior accountants", tag("senior")).with("flash", true));
    let report = r.apply(Change::UpsertPolicy(p.clone())).unwrap();
    assert_eq!(report.changed, ids(&["junior-pc"]));
    assert_eq!(report.resolved, 2);
    assert_eq!(get(&r, "junior-pc", "flash"), Value::Bool(true));
    let report = r2.apply(Change::UpsertPolicy(p.clone())).unwrap();
    assert_eq!(
        report.changed,
        ids(&["junior-pc"]),
        "it-pc is outside the subtree"
    );
    // Applying the same policy again changes nothing.
    assert!(r.apply(Change::UpsertPolicy(p)).unwrap().changed.is_empty());
}

#[test]
fn tag_move_and_removal_changes_are_incremental() {
    let mut r = Resolver::new(&accountants_state()).unwrap();
    let rep = r
        .apply(Change::AddTag {
            device: "junior-pc".into(),
            tag: "senior".into(),
        })
        .unwrap();
    assert_eq!(rep.changed, ids(&["junior-pc"]));
    assert_eq!(get(&r, "junior-pc", "flash"), Value::Bool(true));
    let rep = r
        .apply(Change::AddTag {
            device: "junior-pc".into(),
            tag: "unrelated".into(),
        })
        .unwrap();
    assert!(rep.changed.is_empty());
    let rep = r
        .apply(Change::MoveDevice {
            device: "senior-pc".into(),
            group: "it".into(),
        })
        .unwrap();
    assert_eq!(rep.changed, ids(&["senior-pc"]));
    assert_eq!(
        get(&r, "senior-pc", "flash"),
        Value::Bool(false),
        "default outside accounting"
    );
    assert_eq!(level(&r, "senior-pc"), 3);
    let rep = r.apply(Change::RemovePolicy("accountants".into())).unwrap();
    assert_eq!(rep.changed, ids(&["junior-pc"]));
    assert_eq!(
        get(&r, "junior-pc", "flash"),
        Value::Bool(true),
        "local value now applies"
    );
    r.apply(Change::RemoveDevice("junior-pc".into())).unwrap();
    assert!(r.effective("junior-pc").is_err());
    assert!(
        r.apply(Change::MoveDevice {
            device: "senior-pc".into(),
            group: "nowhere".into()
        })
        .is_err()
    );
    assert_eq!(
        level(&r, "senior-pc"),
        3,
        "failed change left the device alone"
    );
}

#[test]
fn incremental_results_match_a_fresh_resolution() {
    let mut s = accountants_state();
    let mut r = Resolver::new(&s).unwrap();
    r.apply(Change::AddGroup(Group::child("audit", "accounting")))
        .unwrap();
    s.groups.push(Group::child("audit", "accounting"));
    let d = Device::new("auditor", "audit").with_tag("senior");
    r.apply(Change::UpsertDevice(d.clone())).unwrap();
    s.devices.push(d);
    let p = Policy::new("audit-pol", APP, "audit").with("scan.level", locked(5));
    let rep = r.apply(Change::UpsertPolicy(p.clone())).unwrap();
    assert_eq!(rep.changed, ids(&["auditor"]));
    s.policies.push(p);
    let fresh = Resolver::new(&s).unwrap();
    for d in &s.devices {
        assert_eq!(r.effective(&d.id).unwrap(), fresh.effective(&d.id).unwrap());
    }
}

// ---------- loaders and output ----------

#[test]
fn json_errors_name_line_column_and_field_path() {
    let input = b"{\n  \"policies\": [\n    {\"id\": \"p\", \"app\": \"a\", \"group\": \"g\", \"status\": \"sleeping\"}\n  ]\n}";
    match State::from_json(input).unwrap_err() {
        PolicyError::Parse {
            format,
            location,
            message,
        } => {
            assert_eq!(format, "JSON");
            assert!(location.starts_with("line 3 column"), "{location}");
            assert!(location.contains("policies[0].status"), "{location}");
            assert!(message.contains("sleeping"), "{message}");
        }
        e => panic!("unexpected {e}"),
    }
    let err = State::from_json(
        br#"{"devices": [{"id": "d", "group": "g", "local": {"a": {"x": 1.5}}}]}"#,
    )
    .unwrap_err();
    assert!(err.to_string().contains("floating-point"), "{err}");
    let err = State::from_json(br#"{"groups": [{"id": "g", "colour": "red"}]}"#).unwrap_err();
    assert!(err.to_string().contains("colour"), "{err}");
    assert!(State::from_json(b"{} trailing").is_err());
}

#[test]
fn toml_loads_and_errors_name_the_line() {
    let text = r#"
[[schemas]]
app = "endpoint"
[schemas.settings."scan.level"]
type = "int"
min = 1
max = 5
default = 2

[[groups]]
id = "company"

[[policies]]
id = "p"
app = "endpoint"
group = "company"
[policies.settings."scan.level"]
value = 4
locked = true

[[devices]]
id = "d"
group = "company"
"#;
    let s = State::from_toml(text).unwrap();
    let r = Resolver::new(&s).unwrap();
    assert_eq!(
        r.effective("d").unwrap().get("endpoint", "scan.level"),
        Some(&Value::Int(4))
    );
    let bad = "[[groups]]\nid = \"g\"\n\n[[policies]]\nid = 3\n";
    match State::from_toml(bad).unwrap_err() {
        PolicyError::Parse {
            format: "TOML",
            location,
            ..
        } => assert!(location.starts_with("line 5"), "{location}"),
        e => panic!("unexpected {e}"),
    }
}

#[test]
fn to_json_nests_paths_into_one_document_per_application() {
    let root = Policy::new("root", APP, "company").with("scan.level", locked(3));
    let r = resolver(vec![root], vec![Device::new("d", "it")]);
    let eff = r.effective("d").unwrap();
    let doc = eff.app_json(APP).unwrap();
    assert_eq!(doc["scan"]["level"], serde_json::json!(3));
    assert_eq!(doc["scan"]["mode"], serde_json::json!("quick"));
    assert_eq!(doc["flash"], serde_json::json!(false));
    assert_eq!(eff.to_json()[APP], doc);
    assert!(eff.app_json("unknown").is_none());
}

#[test]
fn explain_rejects_unknown_references() {
    let r = resolver(vec![], vec![Device::new("d", "it")]);
    assert!(matches!(
        r.explain("x", APP, "flash"),
        Err(PolicyError::UnknownReference { kind: "device", .. })
    ));
    assert!(matches!(
        r.explain("d", "nope", "flash"),
        Err(PolicyError::UnknownReference {
            kind: "application",
            ..
        })
    ));
    assert!(matches!(
        r.explain("d", APP, "nope"),
        Err(PolicyError::UnknownSetting { .. })
    ));
    assert!(matches!(
        r.explain_ref("d", "no-slash"),
        Err(PolicyError::InvalidSettingRef { .. })
    ));
    assert_eq!(
        r.explain_ref("d", "endpoint/scan.level").unwrap().value,
        Value::Int(2)
    );
}

#[test]
fn deeply_nested_input_is_refused_without_crashing() {
    let deep_json = format!(
        "{{\"devices\": [{{\"id\": \"d\", \"group\": \"g\", \"local\": {{\"a\": {{\"x\": {}1{}}}}}}}]}}",
        "[".repeat(50_000),
        "]".repeat(50_000)
    );
    assert!(matches!(
        State::from_json(deep_json.as_bytes()),
        Err(PolicyError::Parse { .. })
    ));
    let deep_toml = format!(
        "[[devices]]\nid = \"d\"\ngroup = \"g\"\nlocal = {{ a = {{ x = {}1{} }} }}\n",
        "[".repeat(50_000),
        "]".repeat(50_000)
    );
    assert!(matches!(
        State::from_toml(&deep_toml),
        Err(PolicyError::Parse { .. })
    ));
    let deep_inline = format!("x = {}1{}\n", "{a = ".repeat(50_000), "}".repeat(50_000));
    assert!(State::from_toml(&deep_inline).is_err());
}

#[test]
fn empty_and_malformed_ids_are_refused_by_kind() {
    let s = state(vec![Policy::default()], vec![]);
    assert_eq!(
        Resolver::new(&s).unwrap_err(),
        PolicyError::InvalidId {
            kind: "policy",
            id: String::new(),
            reason: "must not be empty"
        }
    );
    let s = state(vec![], vec![Device::new("a/b", "it")]);
    assert!(matches!(
        Resolver::new(&s),
        Err(PolicyError::InvalidId { kind: "device", .. })
    ));
    let mut s = state(vec![], vec![]);
    s.schemas = vec![AppSchema::new(APP).with("bad path", SettingSpec::new(ValueKind::Bool))];
    assert!(matches!(
        Resolver::new(&s),
        Err(PolicyError::InvalidSchema { field: "path", .. })
    ));
}

#[test]
fn nested_map_settings_are_typed_and_exported_as_json() {
    let mut limits = SettingSpec::new(ValueKind::Map);
    let mut item = SettingSpec::new(ValueKind::Int);
    item.min = Some(0);
    limits.item = Some(Box::new(item));
    limits.max_len = Some(2);
    let mut s = state(vec![], vec![Device::new("d", "it")]);
    s.schemas = vec![schema().with("limits", limits)];
    let map = |pairs: &[(&str, i64)]| {
        Value::Map(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), Value::Int(*v)))
                .collect(),
        )
    };
    s.policies = vec![
        Policy::new("p", APP, "company").with("limits", PolicySetting::locked(map(&[("cpu", -1)]))),
    ];
    let err = Resolver::new(&s).unwrap_err();
    assert!(
        matches!(&err, PolicyError::SchemaViolation(v) if v.rule == "entry \"cpu\" must be at least 0"),
        "{err}"
    );
    s.policies = vec![Policy::new("p", APP, "company").with(
        "limits",
        PolicySetting::locked(map(&[("a", 1), ("b", 2), ("c", 3)])),
    )];
    assert!(
        matches!(Resolver::new(&s), Err(PolicyError::SchemaViolation(v)) if v.rule.contains("at most 2 entries"))
    );
    s.policies = vec![
        Policy::new("p", APP, "company").with("limits", PolicySetting::locked(map(&[("cpu", 50)]))),
    ];
    let r = Resolver::new(&s).unwrap();
    assert_eq!(
        r.effective("d").unwrap().app_json(APP).unwrap()["limits"],
        serde_json::json!({"cpu": 50})
    );
}

#[test]
fn chains_with_more_than_128_profiles_resolve() {
    let mut root = Policy::new("root", APP, "company");
    for i in 0..100 {
        root.profiles
            .push(Profile::new(format!("r{i}"), tag(&format!("r{i}"))));
    }
    let mut acc = Policy::new("acc", APP, "accounting");
    for i in 0..100 {
        let p = Profile::new(format!("a{i}"), tag(&format!("a{i}")));
        acc.profiles.push(if i == 90 {
            p.with("scan.level", 5i64)
        } else {
            p
        });
    }
    let r = resolver(
        vec![root, acc],
        vec![
            Device::new("hit", "accounting").with_tag("a90"),
            Device::new("miss", "accounting").with_tag("a89"),
        ],
    );
    assert_eq!(level(&r, "hit"), 5);
    assert_eq!(level(&r, "miss"), 2);
    let why = r.explain("hit", APP, "scan.level").unwrap();
    assert!(
        matches!(why.source, Source::Profile { rank: 191, .. }),
        "{:?}",
        why.source
    );
}
