//! The resolver: validation, policy chains, per-path resolution and incremental changes.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, PoisonError};

use crate::PolicyError;
use crate::condition::{Compiled, Facts, Interner, MAX_CONDITION_DEPTH, MAX_CONDITION_NODES};
use crate::explain::{
    AppEffective, AppValues, Candidate, EffectiveSettings, Explanation, LossReason, Outcome, Source,
};
use crate::model::{Device, Group, Policy, PolicyStatus, State, check_id};
use crate::schema::{AppSchema, SettingSpec};
use crate::value::Value;

/// Deepest group hierarchy accepted (a root group has depth 1).
pub const MAX_GROUP_DEPTH: usize = 32;
/// Most profiles in one policy.
pub const MAX_PROFILES: usize = 100;

struct AppInfo {
    id: Arc<str>,
    paths: Arc<[String]>,
    specs: Vec<SettingSpec>,
    index: HashMap<String, usize>,
    defaults: Vec<Value>,
}

struct GroupInfo {
    id: String,
    parent: Option<usize>,
    children: Vec<usize>,
    depth: usize,
}

struct ProfileRec {
    name: String,
    enabled: bool,
    cond: Arc<Compiled>,
    settings: Vec<(usize, Value)>,
}

struct PolicyRec {
    original: Policy,
    app: usize,
    group: usize,
    settings: Vec<(usize, Value, bool)>,
    profiles: Vec<ProfileRec>,
}

/// A profile after merging same-named profiles along a chain.
struct MergedProfile {
    name: String,
    enabled: bool,
    cond: Arc<Compiled>,
}

#[derive(Default)]
struct PathLayers {
    /// (level, value, locked), root-most first.
    policy: Vec<(usize, Value, bool)>,
    /// (merged profile index, level, value), by priority then level.
    profile: Vec<(usize, usize, Value)>,
}

/// The set of active profiles of a chain, by index: inline up to 128 profiles.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Mask {
    Inline([u64; 2]),
    Heap(Box<[u64]>),
}

impl Mask {
    fn new(profiles: usize) -> Mask {
        if profiles <= 128 {
            Mask::Inline([0; 2])
        } else {
            Mask::Heap(vec![0; profiles.div_ceil(64)].into_boxed_slice())
        }
    }
    fn words(&self) -> &[u64] {
        match self {
            Mask::Inline(w) => w,
            Mask::Heap(b) => b,
        }
    }
    fn set(&mut self, i: usize) {
        let words: &mut [u64] = match self {
            Mask::Inline(w) => w,
            Mask::Heap(b) => b,
        };
        if let Some(w) = words.get_mut(i / 64) {
            *w |= 1u64 << (i % 64);
        }
    }
}

/// A small multiplicative hasher for profile masks and interned ids (keys are not
/// attacker-chosen strings: they are bit sets and dense ids computed here).
#[derive(Default, Clone, Copy)]
struct FastHasher(u64);

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(buf));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type Fast = BuildHasherDefault<FastHasher>;

/// The policies that apply to one group for one application in one mode, merged.
struct Chain {
    levels: Vec<Arc<PolicyRec>>,
    forced: bool,
    profiles: Vec<MergedProfile>,
    /// Enabled profiles whose condition is "has any of these tags", by tag id.
    tag_index: HashMap<u32, Vec<usize>, Fast>,
    /// Enabled profiles with any other condition.
    general: Vec<usize>,
    by_path: Vec<PathLayers>,
    cache: Mutex<HashMap<Mask, Arc<AppValues>, Fast>>,
}

struct Slot {
    active: Option<Arc<PolicyRec>>,
    away_policy: Option<Arc<PolicyRec>>,
    office: Arc<Chain>,
    away: Option<Arc<Chain>>,
}

struct DeviceRec {
    device: Device,
    group: usize,
    facts: Facts,
    local: Vec<Vec<(usize, Value)>>,
    results: Vec<Arc<AppValues>>,
}

/// A change to the state, applied with [`Resolver::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// Add a policy, or replace the policy with the same id (it may change status, group or
    /// application).
    UpsertPolicy(Policy),
    /// Remove a policy.
    RemovePolicy(String),
    /// Add a device, or replace the device with the same id (facts, tags, local settings,
    /// network state). A new device is always listed as changed.
    UpsertDevice(Device),
    /// Remove a device; it is not listed as changed.
    RemoveDevice(String),
    /// Move a device to another group.
    MoveDevice {
        /// Device identifier.
        device: String,
        /// Target group.
        group: String,
    },
    /// Add a tag to a device.
    AddTag {
        /// Device identifier.
        device: String,
        /// The tag.
        tag: String,
    },
    /// Remove a tag from a device.
    RemoveTag {
        /// Device identifier.
        device: String,
        /// The tag.
        tag: String,
    },
    /// Add a new group (a root, or below an existing group).
    AddGroup(Group),
}

/// What a change did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChangeReport {
    /// Devices whose effective settings changed, sorted: push to exactly these.
    pub changed: Vec<String>,
    /// Devices that were re-resolved (a superset of `changed`).
    pub resolved: usize,
}

/// Resolves every device's effective settings and keeps them current under changes.
///
/// Built from a [`State`] with [`Resolver::new`], which validates everything and resolves
/// every device. Pure: no IO, no clock.
pub struct Resolver {
    interner: Interner,
    apps: Vec<AppInfo>,
    app_index: HashMap<String, usize>,
    groups: Vec<GroupInfo>,
    group_index: HashMap<String, usize>,
    policies: BTreeMap<String, Arc<PolicyRec>>,
    /// slots[group][app]
    slots: Vec<Vec<Slot>>,
    devices: Vec<Option<DeviceRec>>,
    device_index: HashMap<String, usize>,
    group_devices: Vec<BTreeSet<usize>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("apps", &self.apps.len())
            .field("groups", &self.groups.len())
            .field("policies", &self.policies.len())
            .field("devices", &self.device_index.len())
            .finish()
    }
}

fn empty_chain(n_paths: usize) -> Arc<Chain> {
    Arc::new(Chain {
        levels: Vec::new(),
        forced: false,
        profiles: Vec::new(),
        tag_index: HashMap::default(),
        general: Vec::new(),
        by_path: (0..n_paths).map(|_| PathLayers::default()).collect(),
        cache: Mutex::new(HashMap::default()),
    })
}

fn build_chain(parent: Option<&Chain>, own: &Arc<PolicyRec>, n_paths: usize) -> Arc<Chain> {
    let mut levels: Vec<Arc<PolicyRec>> = Vec::new();
    if let Some(p) = parent
        && (own.original.inherit || p.forced)
    {
        levels.extend(p.levels.iter().cloned());
    }
    levels.push(own.clone());
    let forced = levels.iter().any(|l| l.original.force_inheritance);
    let mut by_path: Vec<PathLayers> = (0..n_paths).map(|_| PathLayers::default()).collect();
    let mut profiles: Vec<MergedProfile> = Vec::new();
    let mut by_name: HashMap<&str, usize> = HashMap::new();
    let mut prof_entries: Vec<(usize, usize, usize, &Value)> = Vec::new();
    for (level, rec) in levels.iter().enumerate() {
        for (path, value, locked) in &rec.settings {
            if let Some(l) = by_path.get_mut(*path) {
                l.policy.push((level, value.clone(), *locked));
            }
        }
        for p in &rec.profiles {
            let idx = match by_name.get(p.name.as_str()) {
                Some(&i) => i,
                None => {
                    profiles.push(MergedProfile {
                        name: p.name.clone(),
                        enabled: p.enabled,
                        cond: p.cond.clone(),
                    });
                    by_name.insert(&p.name, profiles.len() - 1);
                    profiles.len() - 1
                }
            };
            for (path, value) in &p.settings {
                prof_entries.push((*path, idx, level, value));
            }
        }
    }
    prof_entries.sort_by_key(|&(path, idx, level, _)| (path, idx, level));
    for (path, idx, level, value) in prof_entries {
        if let Some(l) = by_path.get_mut(path) {
            l.profile.push((idx, level, value.clone()));
        }
    }
    let mut tag_index: HashMap<u32, Vec<usize>, Fast> = HashMap::default();
    let mut general = Vec::new();
    for (i, p) in profiles.iter().enumerate() {
        if !p.enabled {
            continue;
        }
        match &*p.cond {
            Compiled::Tags {
                ids,
                all,
                invert: false,
            } if !*all || ids.len() == 1 => {
                for id in ids {
                    tag_index.entry(*id).or_default().push(i);
                }
            }
            _ => general.push(i),
        }
    }
    Arc::new(Chain {
        levels,
        forced,
        profiles,
        tag_index,
        general,
        by_path,
        cache: Mutex::new(HashMap::default()),
    })
}

fn mask_has(mask: &[u64], i: usize) -> bool {
    mask.get(i / 64)
        .is_some_and(|w| w & (1u64 << (i % 64)) != 0)
}

fn profile_mask(chain: &Chain, facts: &Facts) -> Mask {
    let mut mask = Mask::new(chain.profiles.len());
    for &i in &chain.general {
        if chain.profiles[i].cond.eval(facts) {
            mask.set(i);
        }
    }
    if !chain.tag_index.is_empty() {
        for tag in facts.tags() {
            if let Some(list) = chain.tag_index.get(tag) {
                for &i in list {
                    mask.set(i);
                }
            }
        }
    }
    mask
}

/// Records candidates when explaining; does nothing when resolving fast.
struct Recorder {
    cands: Option<Vec<Candidate>>,
    winner: Option<usize>,
}

impl Recorder {
    fn on(&self) -> bool {
        self.cands.is_some()
    }
    fn push(&mut self, source: Source, value: &Value, outcome: Outcome) -> Option<usize> {
        let c = self.cands.as_mut()?;
        c.push(Candidate {
            source,
            value: value.clone(),
            outcome,
        });
        Some(c.len() - 1)
    }
    /// Pushes a new winner; the previous winner loses with `Overridden { by: source }`.
    fn win(&mut self, source: Source, value: &Value) {
        let Some(c) = self.cands.as_mut() else {
            return;
        };
        if let Some(w) = self.winner {
            c[w].outcome = Outcome::Lost(LossReason::Overridden { by: source.clone() });
        }
        c.push(Candidate {
            source,
            value: value.clone(),
            outcome: Outcome::Won,
        });
        self.winner = Some(c.len() - 1);
    }
    fn winner_source(&self) -> Source {
        match (&self.cands, self.winner) {
            (Some(c), Some(w)) => c[w].source.clone(),
            _ => Source::Default,
        }
    }
}

struct PathCtx<'a> {
    groups: &'a [GroupInfo],
    chain: &'a Chain,
    default: &'a Value,
    merge: bool,
    mask: &'a [u64],
}

impl PathCtx<'_> {
    fn policy_source(&self, level: usize, locked: bool) -> Source {
        let rec = &self.chain.levels[level];
        Source::Policy {
            policy: rec.original.id.clone(),
            group: self.groups[rec.group].id.clone(),
            locked,
        }
    }
    fn profile_source(&self, idx: usize, level: usize) -> Source {
        let rec = &self.chain.levels[level];
        Source::Profile {
            profile: self.chain.profiles[idx].name.clone(),
            policy: rec.original.id.clone(),
            group: self.groups[rec.group].id.clone(),
            rank: idx + 1,
        }
    }
    fn inactive_reason(&self, idx: usize) -> LossReason {
        if self.chain.profiles[idx].enabled {
            LossReason::ConditionNotMet
        } else {
            LossReason::ProfileDisabled
        }
    }

    /// The one resolution rule, used by both `effective` and `explain`.
    /// Returns (value, locked, winner source when recording).
    fn resolve(
        &self,
        layers: &PathLayers,
        local: Option<&Value>,
        rec: &mut Recorder,
    ) -> (Value, bool, Source) {
        if self.merge {
            return self.resolve_merge(layers, local, rec);
        }
        let mut value: &Value = self.default;
        rec.win(Source::Default, value);
        let mut lock_level: Option<usize> = None;
        for (level, v, locked) in &layers.policy {
            if let Some(j) = lock_level {
                if rec.on() {
                    let src = self.policy_source(*level, *locked);
                    let by = self.policy_source(j, true);
                    rec.push(src, v, Outcome::Lost(LossReason::Locked { by }));
                }
                continue;
            }
            value = v;
            if rec.on() {
                rec.win(self.policy_source(*level, *locked), v);
            }
            if *locked {
                lock_level = Some(*level);
            }
        }
        let mut profile_won: Option<usize> = None;
        for (idx, level, v) in &layers.profile {
            let active = mask_has(self.mask, *idx);
            if !rec.on() {
                if !active || profile_won.is_some() || lock_level.is_some_and(|j| j < *level) {
                    continue;
                }
                value = v;
                profile_won = Some(*idx);
                continue;
            }
            let src = self.profile_source(*idx, *level);
            if !active {
                rec.push(src, v, Outcome::Lost(self.inactive_reason(*idx)));
            } else if let Some(w) = profile_won {
                let by = rec.winner_source();
                let reason = if w == *idx {
                    LossReason::ShadowedByAncestorProfile { by }
                } else {
                    LossReason::LowerPriority { winner: by }
                };
                rec.push(src, v, Outcome::Lost(reason));
            } else if let Some(j) = lock_level.filter(|j| *j < *level) {
                let by = self.policy_source(j, true);
                rec.push(src, v, Outcome::Lost(LossReason::Locked { by }));
            } else {
                value = v;
                profile_won = Some(*idx);
                rec.win(src, v);
            }
        }
        let locked = profile_won.is_some() || lock_level.is_some();
        if let Some(v) = local {
            if locked {
                if rec.on() {
                    let by = rec.winner_source();
                    rec.push(Source::Local, v, Outcome::Lost(LossReason::Locked { by }));
                }
            } else {
                value = v;
                rec.win(Source::Local, v);
            }
        }
        let src = rec.winner_source();
        (value.clone(), locked, src)
    }

    /// Merged lists: every policy layer and every active profile adds the items it does not
    /// already contain; the local value adds its items when the setting is not locked.
    fn resolve_merge(
        &self,
        layers: &PathLayers,
        local: Option<&Value>,
        rec: &mut Recorder,
    ) -> (Value, bool, Source) {
        let mut items: Option<Vec<Value>> = None;
        let mut contributors = 0usize;
        let mut single: Option<Source> = None;
        fn add(items: &mut Option<Vec<Value>>, v: &Value) {
            let list = items.get_or_insert_with(Vec::new);
            match v {
                Value::List(l) => {
                    for it in l {
                        if !list.contains(it) {
                            list.push(it.clone());
                        }
                    }
                }
                other => {
                    if !list.contains(other) {
                        list.push(other.clone());
                    }
                }
            }
        }
        let default_idx = rec.push(Source::Default, self.default, Outcome::Won);
        let mut locked = false;
        for (level, v, l) in &layers.policy {
            add(&mut items, v);
            contributors += 1;
            locked |= *l;
            if rec.on() {
                let src = self.policy_source(*level, *l);
                single = Some(src.clone());
                rec.push(src, v, Outcome::Contributed);
            }
        }
        for (idx, level, v) in &layers.profile {
            let active = mask_has(self.mask, *idx);
            if active {
                add(&mut items, v);
                contributors += 1;
                locked = true;
            }
            if rec.on() {
                let src = self.profile_source(*idx, *level);
                if active {
                    single = Some(src.clone());
                    rec.push(src, v, Outcome::Contributed);
                } else {
                    rec.push(src, v, Outcome::Lost(self.inactive_reason(*idx)));
                }
            }
        }
        let mut local_lost = None;
        if let Some(v) = local {
            if locked {
                local_lost = Some(v);
            } else {
                add(&mut items, v);
                contributors += 1;
                single = Some(Source::Local);
                rec.push(Source::Local, v, Outcome::Contributed);
            }
        }
        let (value, source) = match items {
            None => (self.default.clone(), Source::Default),
            Some(list) => {
                let source = if contributors == 1 {
                    single.unwrap_or(Source::Merged)
                } else {
                    Source::Merged
                };
                (Value::List(list), source)
            }
        };
        if let Some(c) = rec.cands.as_mut() {
            if let Some(v) = local_lost {
                c.push(Candidate {
                    source: Source::Local,
                    value: v.clone(),
                    outcome: Outcome::Lost(LossReason::Locked { by: Source::Merged }),
                });
            }
            if let Some(d) = default_idx
                && contributors > 0
            {
                c[d].outcome = Outcome::Lost(LossReason::Overridden { by: source.clone() });
            }
            // A single contributor is the winner rather than a contributor.
            if contributors == 1 {
                for cand in c.iter_mut() {
                    if cand.outcome == Outcome::Contributed {
                        cand.outcome = Outcome::Won;
                    }
                }
            }
        }
        (value, locked, source)
    }
}

fn resolve_app(
    groups: &[GroupInfo],
    app: &AppInfo,
    chain: &Chain,
    mask: &[u64],
    local: &[(usize, Value)],
) -> AppValues {
    let mut values = Vec::with_capacity(app.specs.len());
    let mut locked = Vec::with_capacity(app.specs.len());
    let mut li = 0;
    for (i, spec) in app.specs.iter().enumerate() {
        while li < local.len() && local[li].0 < i {
            li += 1;
        }
        let lv = local.get(li).filter(|(p, _)| *p == i).map(|(_, v)| v);
        let ctx = PathCtx {
            groups,
            chain,
            default: &app.defaults[i],
            merge: spec.merge,
            mask,
        };
        let mut rec = Recorder {
            cands: None,
            winner: None,
        };
        let (v, l, _) = ctx.resolve(&chain.by_path[i], lv, &mut rec);
        values.push(v);
        locked.push(l);
    }
    AppValues { values, locked }
}

impl Resolver {
    /// Validates `state` and resolves every device.
    ///
    /// Refuses (with an error naming the object and value): duplicate or malformed ids,
    /// unknown applications, groups or setting paths, cycles or a hierarchy deeper than
    /// [`MAX_GROUP_DEPTH`], a second active or out-of-office policy for one application in
    /// one group, more than [`MAX_PROFILES`] profiles in a policy, duplicate profile names,
    /// oversized conditions, and every policy, profile or local value that violates the
    /// schema.
    pub fn new(state: &State) -> Result<Resolver, PolicyError> {
        let mut apps = Vec::new();
        let mut app_index = HashMap::new();
        let mut schemas: Vec<&AppSchema> = state.schemas.iter().collect();
        schemas.sort_by(|a, b| a.app.cmp(&b.app));
        for s in schemas {
            s.validate()?;
            if app_index.contains_key(&s.app) {
                return Err(PolicyError::DuplicateId {
                    kind: "application",
                    id: s.app.clone(),
                });
            }
            app_index.insert(s.app.clone(), apps.len());
            let paths: Vec<String> = s.settings.keys().cloned().collect();
            let specs: Vec<SettingSpec> = s.settings.values().cloned().collect();
            apps.push(AppInfo {
                id: Arc::from(s.app.as_str()),
                index: paths
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (p.clone(), i))
                    .collect(),
                defaults: specs.iter().map(SettingSpec::default_value).collect(),
                paths: paths.into(),
                specs,
            });
        }

        // Groups: sorted by id for determinism, then depths (detecting cycles).
        let mut group_list: Vec<&Group> = state.groups.iter().collect();
        group_list.sort_by(|a, b| a.id.cmp(&b.id));
        let mut group_index = HashMap::new();
        for (i, g) in group_list.iter().enumerate() {
            check_id("group", &g.id)?;
            if group_index.insert(g.id.clone(), i).is_some() {
                return Err(PolicyError::DuplicateId {
                    kind: "group",
                    id: g.id.clone(),
                });
            }
        }
        let mut groups: Vec<GroupInfo> = Vec::with_capacity(group_list.len());
        for g in &group_list {
            let parent = match &g.parent {
                None => None,
                Some(p) => {
                    Some(
                        *group_index
                            .get(p)
                            .ok_or_else(|| PolicyError::UnknownReference {
                                referrer: format!("group {:?}", g.id),
                                kind: "group",
                                id: p.clone(),
                            })?,
                    )
                }
            };
            groups.push(GroupInfo {
                id: g.id.clone(),
                parent,
                children: Vec::new(),
                depth: 0,
            });
        }
        for i in 0..groups.len() {
            let mut depth = 0usize;
            let mut cur = Some(i);
            while let Some(c) = cur {
                depth += 1;
                if depth > groups.len() {
                    return Err(PolicyError::GroupCycle {
                        group: groups[i].id.clone(),
                    });
                }
                cur = groups[c].parent;
            }
            if depth > MAX_GROUP_DEPTH {
                return Err(PolicyError::HierarchyTooDeep {
                    group: groups[i].id.clone(),
                    depth,
                    max: MAX_GROUP_DEPTH,
                });
            }
            groups[i].depth = depth;
        }
        for i in 0..groups.len() {
            if let Some(p) = groups[i].parent {
                groups[p].children.push(i);
            }
        }

        let n_groups = groups.len();
        let mut r = Resolver {
            interner: Interner::default(),
            slots: (0..n_groups)
                .map(|_| {
                    apps.iter()
                        .map(|a| Slot {
                            active: None,
                            away_policy: None,
                            office: empty_chain(a.specs.len()),
                            away: None,
                        })
                        .collect()
                })
                .collect(),
            apps,
            app_index,
            groups,
            group_index,
            policies: BTreeMap::new(),
            devices: Vec::new(),
            device_index: HashMap::new(),
            group_devices: vec![BTreeSet::new(); n_groups],
        };

        let mut policies: Vec<&Policy> = state.policies.iter().collect();
        policies.sort_by(|a, b| a.id.cmp(&b.id));
        for p in policies {
            if r.policies.contains_key(&p.id) {
                return Err(PolicyError::DuplicateId {
                    kind: "policy",
                    id: p.id.clone(),
                });
            }
            let rec = r.compile_policy(p)?;
            r.install_policy(Arc::new(rec));
        }
        for g in r.topo_order(None) {
            for a in 0..r.apps.len() {
                r.rebuild_slot(g, a);
            }
        }

        let mut devices: Vec<&Device> = state.devices.iter().collect();
        devices.sort_by(|a, b| a.id.cmp(&b.id));
        for d in devices {
            if r.device_index.contains_key(&d.id) {
                return Err(PolicyError::DuplicateId {
                    kind: "device",
                    id: d.id.clone(),
                });
            }
            let rec = r.compile_device(d)?;
            let idx = r.devices.len();
            r.group_devices[rec.group].insert(idx);
            r.device_index.insert(d.id.clone(), idx);
            r.devices.push(Some(rec));
        }
        r.resolve_all();
        Ok(r)
    }

    /// Re-resolves every device from scratch (dropping all shared results) and returns how
    /// many devices were resolved.
    pub fn resolve_all(&mut self) -> usize {
        for row in &self.slots {
            for s in row {
                clear_cache(&s.office);
                if let Some(a) = &s.away {
                    clear_cache(a);
                }
            }
        }
        // Group by group, so that consecutive devices share chains and cached results.
        let mut n = 0;
        for g in 0..self.groups.len() {
            let devs: Vec<usize> = self.group_devices[g].iter().copied().collect();
            for i in devs {
                for a in 0..self.apps.len() {
                    self.resolve_device_app(i, a);
                }
                n += 1;
            }
        }
        n
    }

    /// Number of devices.
    pub fn device_count(&self) -> usize {
        self.device_index.len()
    }

    /// The device's effective settings for every application.
    pub fn effective(&self, device: &str) -> Result<EffectiveSettings, PolicyError> {
        let d = self.device(device)?;
        Ok(EffectiveSettings {
            device: d.device.id.clone(),
            apps: self
                .apps
                .iter()
                .zip(&d.results)
                .map(|(a, v)| AppEffective {
                    app: a.id.clone(),
                    paths: a.paths.clone(),
                    values: v.clone(),
                })
                .collect(),
        })
    }

    /// Explains one setting of one device: the effective value, where it came from, and every
    /// candidate that lost and why.
    pub fn explain(&self, device: &str, app: &str, path: &str) -> Result<Explanation, PolicyError> {
        let d = self.device(device)?;
        let a = *self
            .app_index
            .get(app)
            .ok_or_else(|| PolicyError::UnknownReference {
                referrer: format!("explain for device {device:?}"),
                kind: "application",
                id: app.to_owned(),
            })?;
        let info = &self.apps[a];
        let p = *info
            .index
            .get(path)
            .ok_or_else(|| PolicyError::UnknownSetting {
                origin: format!("explain for device {device:?}"),
                app: app.to_owned(),
                path: path.to_owned(),
            })?;
        let chain = self.chain_for(d, a);
        let mask = profile_mask(chain, &d.facts);
        let local = d.local[a].iter().find(|(i, _)| *i == p).map(|(_, v)| v);
        let ctx = PathCtx {
            groups: &self.groups,
            chain,
            default: &info.defaults[p],
            merge: info.specs[p].merge,
            mask: mask.words(),
        };
        let mut rec = Recorder {
            cands: Some(Vec::new()),
            winner: None,
        };
        let (value, locked, source) = ctx.resolve(&chain.by_path[p], local, &mut rec);
        Ok(Explanation {
            device: d.device.id.clone(),
            app: app.to_owned(),
            path: path.to_owned(),
            value,
            locked,
            source,
            candidates: rec.cands.unwrap_or_default(),
        })
    }

    /// Like [`Resolver::explain`] with a reference of the form `APPLICATION/PATH`.
    pub fn explain_ref(&self, device: &str, reference: &str) -> Result<Explanation, PolicyError> {
        let (app, path) =
            reference
                .split_once('/')
                .ok_or_else(|| PolicyError::InvalidSettingRef {
                    reference: reference.to_owned(),
                })?;
        self.explain(device, app, path)
    }

    /// Applies one change, re-resolves only the devices it can affect, and reports which of
    /// them changed. On error nothing is changed.
    ///
    /// What is re-resolved: for a policy change, the devices in the subtree of the policy's
    /// group (old and new group) for that application only; for a device change, that
    /// device; adding a group re-resolves nothing.
    pub fn apply(&mut self, change: Change) -> Result<ChangeReport, PolicyError> {
        match change {
            Change::UpsertPolicy(p) => {
                let rec = Arc::new(self.compile_policy_excluding(&p, Some(&p.id))?);
                let old = self.policies.get(&p.id).cloned();
                if let Some(old) = &old {
                    self.uninstall_policy(old);
                }
                self.install_policy(rec.clone());
                let mut targets = vec![(rec.group, rec.app)];
                if let Some(old) = old
                    && (old.group, old.app) != (rec.group, rec.app)
                {
                    // Refresh each device once: when one group contains the other, its subtree
                    // covers both.
                    if old.app != rec.app || !self.contains(rec.group, old.group) {
                        if old.app == rec.app && self.contains(old.group, rec.group) {
                            targets.clear();
                        }
                        targets.push((old.group, old.app));
                    }
                }
                Ok(self.refresh_subtrees(&targets))
            }
            Change::RemovePolicy(id) => {
                let old = self.policies.get(&id).cloned().ok_or_else(|| {
                    PolicyError::UnknownReference {
                        referrer: "remove-policy change".into(),
                        kind: "policy",
                        id: id.clone(),
                    }
                })?;
                self.uninstall_policy(&old);
                Ok(self.refresh_subtrees(&[(old.group, old.app)]))
            }
            Change::UpsertDevice(d) => {
                let rec = self.compile_device(&d)?;
                let idx = match self.device_index.get(&d.id) {
                    Some(&i) => i,
                    None => {
                        self.devices.push(None);
                        self.device_index
                            .insert(d.id.clone(), self.devices.len() - 1);
                        self.devices.len() - 1
                    }
                };
                let old = self.devices[idx].take();
                if let Some(o) = &old {
                    self.group_devices[o.group].remove(&idx);
                }
                self.group_devices[rec.group].insert(idx);
                self.devices[idx] = Some(rec);
                Ok(self.refresh_device(idx, old.map(|o| o.results)))
            }
            Change::RemoveDevice(id) => {
                let idx = self.device_idx(&id)?;
                if let Some(o) = self.devices[idx].take() {
                    self.group_devices[o.group].remove(&idx);
                }
                self.device_index.remove(&id);
                Ok(ChangeReport::default())
            }
            Change::MoveDevice { device, group } => {
                let mut d = self.device(&device)?.device.clone();
                d.group = group;
                self.apply(Change::UpsertDevice(d))
            }
            Change::AddTag { device, tag } => {
                let mut d = self.device(&device)?.device.clone();
                d.tags.insert(tag);
                self.apply(Change::UpsertDevice(d))
            }
            Change::RemoveTag { device, tag } => {
                let mut d = self.device(&device)?.device.clone();
                d.tags.remove(&tag);
                self.apply(Change::UpsertDevice(d))
            }
            Change::AddGroup(g) => {
                check_id("group", &g.id)?;
                if self.group_index.contains_key(&g.id) {
                    return Err(PolicyError::DuplicateId {
                        kind: "group",
                        id: g.id.clone(),
                    });
                }
                let parent = match &g.parent {
                    None => None,
                    Some(p) => Some(*self.group_index.get(p).ok_or_else(|| {
                        PolicyError::UnknownReference {
                            referrer: format!("group {:?}", g.id),
                            kind: "group",
                            id: p.clone(),
                        }
                    })?),
                };
                let depth = parent.map_or(0, |p| self.groups[p].depth) + 1;
                if depth > MAX_GROUP_DEPTH {
                    return Err(PolicyError::HierarchyTooDeep {
                        group: g.id.clone(),
                        depth,
                        max: MAX_GROUP_DEPTH,
                    });
                }
                let idx = self.groups.len();
                self.groups.push(GroupInfo {
                    id: g.id.clone(),
                    parent,
                    children: Vec::new(),
                    depth,
                });
                if let Some(p) = parent {
                    self.groups[p].children.push(idx);
                }
                self.group_index.insert(g.id.clone(), idx);
                self.group_devices.push(BTreeSet::new());
                let row = self
                    .apps
                    .iter()
                    .map(|a| Slot {
                        active: None,
                        away_policy: None,
                        office: empty_chain(a.specs.len()),
                        away: None,
                    })
                    .collect();
                self.slots.push(row);
                for a in 0..self.apps.len() {
                    self.rebuild_slot(idx, a);
                }
                Ok(ChangeReport::default())
            }
        }
    }

    // ----- internals -----

    /// Whether `inner` is `outer` or lies below it.
    fn contains(&self, outer: usize, inner: usize) -> bool {
        let mut cur = Some(inner);
        while let Some(c) = cur {
            if c == outer {
                return true;
            }
            cur = self.groups[c].parent;
        }
        false
    }

    fn device(&self, id: &str) -> Result<&DeviceRec, PolicyError> {
        let i = self.device_idx(id)?;
        self.devices[i]
            .as_ref()
            .ok_or_else(|| PolicyError::UnknownReference {
                referrer: "query".into(),
                kind: "device",
                id: id.to_owned(),
            })
    }

    fn device_idx(&self, id: &str) -> Result<usize, PolicyError> {
        self.device_index
            .get(id)
            .copied()
            .ok_or_else(|| PolicyError::UnknownReference {
                referrer: "query".into(),
                kind: "device",
                id: id.to_owned(),
            })
    }

    fn chain_for(&self, d: &DeviceRec, app: usize) -> &Chain {
        let slot = &self.slots[d.group][app];
        match (&slot.away, d.device.on_corporate_network) {
            (Some(away), false) => away,
            _ => &slot.office,
        }
    }

    fn compile_policy(&mut self, p: &Policy) -> Result<PolicyRec, PolicyError> {
        self.compile_policy_excluding(p, None)
    }

    fn compile_policy_excluding(
        &mut self,
        p: &Policy,
        replacing: Option<&str>,
    ) -> Result<PolicyRec, PolicyError> {
        check_id("policy", &p.id)?;
        let who = format!("policy {:?}", p.id);
        let app = *self
            .app_index
            .get(&p.app)
            .ok_or_else(|| PolicyError::UnknownReference {
                referrer: who.clone(),
                kind: "application",
                id: p.app.clone(),
            })?;
        let group =
            *self
                .group_index
                .get(&p.group)
                .ok_or_else(|| PolicyError::UnknownReference {
                    referrer: who.clone(),
                    kind: "group",
                    id: p.group.clone(),
                })?;
        // One active and one out-of-office policy per application per group.
        let slot = &self.slots[group][app];
        let existing = match p.status {
            PolicyStatus::Active => slot.active.as_ref().map(|r| ("active", r)),
            PolicyStatus::OutOfOffice => slot.away_policy.as_ref().map(|r| ("out-of-office", r)),
            PolicyStatus::Inactive => None,
        };
        if let Some((status, e)) = existing
            && Some(e.original.id.as_str()) != replacing
        {
            return Err(PolicyError::SecondPolicy {
                app: p.app.clone(),
                group: p.group.clone(),
                status,
                existing: e.original.id.clone(),
                refused: p.id.clone(),
            });
        }
        let info = &self.apps[app];
        let check = |origin: &dyn Fn() -> String,
                     path: &str,
                     value: &Value|
         -> Result<usize, PolicyError> {
            let i = *info
                .index
                .get(path)
                .ok_or_else(|| PolicyError::UnknownSetting {
                    origin: origin(),
                    app: p.app.clone(),
                    path: path.to_owned(),
                })?;
            info.specs[i]
                .check(value)
                .map_err(|rule| PolicyError::SchemaViolation {
                    origin: origin(),
                    app: p.app.clone(),
                    path: path.to_owned(),
                    value: value.to_string(),
                    rule,
                })?;
            Ok(i)
        };
        let mut settings = Vec::with_capacity(p.settings.len());
        for (path, s) in &p.settings {
            let i = check(&|| who.clone(), path, &s.value)?;
            settings.push((i, s.value.clone(), s.locked));
        }
        settings.sort_by_key(|s| s.0);
        if p.profiles.len() > MAX_PROFILES {
            return Err(PolicyError::TooManyProfiles {
                policy: p.id.clone(),
                count: p.profiles.len(),
                max: MAX_PROFILES,
            });
        }
        let mut names = BTreeSet::new();
        let mut conds = Vec::with_capacity(p.profiles.len());
        let mut profiles = Vec::with_capacity(p.profiles.len());
        for prof in &p.profiles {
            check_id("profile", &prof.name)?;
            if !names.insert(prof.name.as_str()) {
                return Err(PolicyError::DuplicateProfile {
                    policy: p.id.clone(),
                    name: prof.name.clone(),
                });
            }
            let (depth, nodes) = prof.condition.size();
            if depth > MAX_CONDITION_DEPTH || nodes > MAX_CONDITION_NODES {
                return Err(PolicyError::ConditionTooLarge {
                    policy: p.id.clone(),
                    profile: prof.name.clone(),
                    reason: format!(
                        "depth {depth} (limit {MAX_CONDITION_DEPTH}), {nodes} rules (limit {MAX_CONDITION_NODES})"
                    ),
                });
            }
            let origin = || format!("profile {:?} of policy {:?}", prof.name, p.id);
            let mut ps = Vec::with_capacity(prof.settings.len());
            for (path, v) in &prof.settings {
                ps.push((check(&origin, path, v)?, v.clone()));
            }
            ps.sort_by_key(|s| s.0);
            conds.push(&prof.condition);
            profiles.push(ProfileRec {
                name: prof.name.clone(),
                enabled: prof.enabled,
                cond: Arc::new(Compiled::All(Vec::new())),
                settings: ps,
            });
        }
        // Interning needs `&mut self`; do it after all checks (no state change on error).
        for (prof, c) in profiles.iter_mut().zip(conds) {
            prof.cond = Arc::new(Compiled::new(c, &mut self.interner));
        }
        Ok(PolicyRec {
            original: p.clone(),
            app,
            group,
            settings,
            profiles,
        })
    }

    fn install_policy(&mut self, rec: Arc<PolicyRec>) {
        let slot = &mut self.slots[rec.group][rec.app];
        match rec.original.status {
            PolicyStatus::Active => slot.active = Some(rec.clone()),
            PolicyStatus::OutOfOffice => slot.away_policy = Some(rec.clone()),
            PolicyStatus::Inactive => {}
        }
        self.policies.insert(rec.original.id.clone(), rec);
    }

    fn uninstall_policy(&mut self, rec: &Arc<PolicyRec>) {
        let slot = &mut self.slots[rec.group][rec.app];
        if slot.active.as_ref().is_some_and(|a| Arc::ptr_eq(a, rec)) {
            slot.active = None;
        }
        if slot
            .away_policy
            .as_ref()
            .is_some_and(|a| Arc::ptr_eq(a, rec))
        {
            slot.away_policy = None;
        }
        self.policies.remove(&rec.original.id);
    }

    /// Groups in parents-before-children order: all, or the subtree of `root`.
    fn topo_order(&self, root: Option<usize>) -> Vec<usize> {
        let mut out = Vec::new();
        let mut queue: VecDeque<usize> = match root {
            Some(r) => VecDeque::from([r]),
            None => (0..self.groups.len())
                .filter(|&g| self.groups[g].parent.is_none())
                .collect(),
        };
        while let Some(g) = queue.pop_front() {
            out.push(g);
            queue.extend(self.groups[g].children.iter().copied());
        }
        out
    }

    /// Rebuilds a group's chains for one application from its parent's office chain.
    fn rebuild_slot(&mut self, g: usize, a: usize) {
        let n_paths = self.apps[a].specs.len();
        let parent = self.groups[g]
            .parent
            .map(|p| self.slots[p][a].office.clone());
        let slot = &self.slots[g][a];
        let office = match (&slot.active, &parent) {
            (Some(p), par) => build_chain(par.as_deref(), p, n_paths),
            (None, Some(par)) => par.clone(),
            (None, None) => empty_chain(n_paths),
        };
        let away = slot
            .away_policy
            .as_ref()
            .map(|p| build_chain(parent.as_deref(), p, n_paths));
        let slot = &mut self.slots[g][a];
        slot.office = office;
        slot.away = away;
    }

    fn compile_device(&mut self, d: &Device) -> Result<DeviceRec, PolicyError> {
        check_id("device", &d.id)?;
        let group =
            *self
                .group_index
                .get(&d.group)
                .ok_or_else(|| PolicyError::UnknownReference {
                    referrer: format!("device {:?}", d.id),
                    kind: "group",
                    id: d.group.clone(),
                })?;
        let mut local = vec![Vec::new(); self.apps.len()];
        for (app, values) in &d.local {
            let origin = || format!("local settings of device {:?}", d.id);
            let a = *self
                .app_index
                .get(app)
                .ok_or_else(|| PolicyError::UnknownReference {
                    referrer: origin(),
                    kind: "application",
                    id: app.clone(),
                })?;
            let info = &self.apps[a];
            for (path, v) in values {
                let i = *info
                    .index
                    .get(path)
                    .ok_or_else(|| PolicyError::UnknownSetting {
                        origin: origin(),
                        app: app.clone(),
                        path: path.clone(),
                    })?;
                info.specs[i]
                    .check(v)
                    .map_err(|rule| PolicyError::SchemaViolation {
                        origin: origin(),
                        app: app.clone(),
                        path: path.clone(),
                        value: v.to_string(),
                        rule,
                    })?;
                local[a].push((i, v.clone()));
            }
            local[a].sort_by_key(|e: &(usize, Value)| e.0);
        }
        let facts = Facts::new(d, &mut self.interner);
        let empty = Arc::new(AppValues {
            values: Vec::new(),
            locked: Vec::new(),
        });
        Ok(DeviceRec {
            device: d.clone(),
            group,
            facts,
            local,
            results: vec![empty; self.apps.len()],
        })
    }

    /// Resolves one device for one application; returns the previous result.
    fn resolve_device_app(&mut self, i: usize, a: usize) -> Option<Arc<AppValues>> {
        let d = self.devices[i].as_ref()?;
        let chain = self.chain_for(d, a);
        let mask = profile_mask(chain, &d.facts);
        let info = &self.apps[a];
        let shared = {
            let mut cache = chain.cache.lock().unwrap_or_else(PoisonError::into_inner);
            match cache.get(&mask) {
                Some(v) => v.clone(),
                None => {
                    let v = Arc::new(resolve_app(&self.groups, info, chain, mask.words(), &[]));
                    cache.insert(mask.clone(), v.clone());
                    v
                }
            }
        };
        let new = if d.local[a].is_empty() {
            shared
        } else {
            Arc::new(resolve_app(
                &self.groups,
                info,
                chain,
                mask.words(),
                &d.local[a],
            ))
        };
        let d = self.devices[i].as_mut()?;
        Some(std::mem::replace(&mut d.results[a], new))
    }

    fn refresh_device(&mut self, i: usize, old: Option<Vec<Arc<AppValues>>>) -> ChangeReport {
        let mut changed = false;
        for a in 0..self.apps.len() {
            self.resolve_device_app(i, a);
        }
        if let Some(d) = self.devices[i].as_ref() {
            changed = match old {
                None => true,
                Some(old) => old
                    .iter()
                    .zip(&d.results)
                    .any(|(o, n)| !(Arc::ptr_eq(o, n) || **o == **n)),
            };
        }
        let changed = match (changed, self.devices[i].as_ref()) {
            (true, Some(d)) => vec![d.device.id.clone()],
            _ => Vec::new(),
        };
        ChangeReport {
            changed,
            resolved: 1,
        }
    }

    fn refresh_subtrees(&mut self, targets: &[(usize, usize)]) -> ChangeReport {
        let mut changed_idx: Vec<usize> = Vec::new();
        let mut resolved = 0;
        // Devices mostly move from one shared result to another: compare each pair once.
        // `kept` holds the old results alive so that their addresses stay unique.
        let mut same: HashMap<(usize, usize), bool, Fast> = HashMap::default();
        let mut kept: Vec<Arc<AppValues>> = Vec::new();
        for &(g, a) in targets {
            let order = self.topo_order(Some(g));
            for &sub in &order {
                self.rebuild_slot(sub, a);
            }
            for &sub in &order {
                let devs: Vec<usize> = self.group_devices[sub].iter().copied().collect();
                for i in devs {
                    resolved += 1;
                    let (Some(old), Some(d)) = (self.resolve_device_app(i, a), &self.devices[i])
                    else {
                        continue;
                    };
                    let new = &d.results[a];
                    let key = (Arc::as_ptr(&old) as usize, Arc::as_ptr(new) as usize);
                    let equal = match same.get(&key) {
                        Some(e) => *e,
                        None => {
                            let e = Arc::ptr_eq(&old, new) || *old == **new;
                            same.insert(key, e);
                            e
                        }
                    };
                    if !equal {
                        changed_idx.push(i);
                    }
                    kept.push(old);
                }
            }
        }
        changed_idx.sort_unstable();
        changed_idx.dedup();
        let mut changed: Vec<String> = changed_idx
            .into_iter()
            .filter_map(|i| self.devices[i].as_ref().map(|d| d.device.id.clone()))
            .collect();
        changed.sort_unstable();
        drop(kept);
        ChangeReport { changed, resolved }
    }
}

fn clear_cache(chain: &Chain) {
    chain
        .cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clear();
}
