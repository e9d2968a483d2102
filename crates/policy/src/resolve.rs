//! The resolver: validation, policy chains, per-path resolution and incremental changes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, PoisonError};

use crate::PolicyError;
use crate::condition::{Compiled, Facts, Interner, MAX_CONDITION_DEPTH, MAX_CONDITION_NODES};
use crate::error::SchemaViolation;
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
    defaults: Vec<Arc<Value>>,
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
    settings: Vec<(usize, Arc<Value>)>,
}

struct PolicyRec {
    original: Policy,
    app: usize,
    group: usize,
    settings: Vec<(usize, Arc<Value>, bool)>,
    profiles: Vec<ProfileRec>,
}

/// A profile after merging same-named profiles along a chain.
struct MergedProfile {
    name: String,
    enabled: bool,
    cond: Arc<Compiled>,
}

#[derive(Default, PartialEq)]
struct PathLayers {
    /// (level, value, locked), root-most first.
    policy: Vec<(usize, Arc<Value>, bool)>,
    /// (merged profile index, level, value), by priority then level.
    profile: Vec<(usize, usize, Arc<Value>)>,
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
    fn words_mut(&mut self) -> &mut [u64] {
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

/// `fact_of` entry of an index that holds no device.
const NO_FACTS: u32 = u32::MAX;

/// Distinct device facts with reference counts, so that work that depends only on a
/// device's facts (evaluating a changed profile condition) is done once per distinct set.
#[derive(Default)]
struct FactTable {
    /// (facts, number of devices with them); `None` for a free entry.
    entries: Vec<Option<(Arc<Facts>, u32)>>,
    index: HashMap<Arc<Facts>, u32>,
    free: Vec<u32>,
    /// Entries by tag: the entries whose facts carry the tag.
    by_tag: HashMap<u32, Vec<u32>, Fast>,
}

impl FactTable {
    /// Counts one more device with `facts` and returns its entry; `facts` then shares the
    /// table's copy.
    fn intern(&mut self, facts: &mut Arc<Facts>) -> u32 {
        if let Some(&id) = self.index.get(facts)
            && let Some(Some((shared, refs))) = self.entries.get_mut(id as usize)
        {
            *refs += 1;
            *facts = shared.clone();
            return id;
        }
        let entry = Some((facts.clone(), 1));
        let id = match self.free.pop() {
            Some(id) => {
                self.entries[id as usize] = entry;
                id
            }
            None => {
                self.entries.push(entry);
                u32::try_from(self.entries.len() - 1).unwrap_or(NO_FACTS)
            }
        };
        for &t in facts.tags() {
            self.by_tag.entry(t).or_default().push(id);
        }
        self.index.insert(facts.clone(), id);
        id
    }

    /// Counts one device fewer with entry `id`, freeing the entry with the last one.
    fn release(&mut self, id: u32) {
        let Some(slot) = self.entries.get_mut(id as usize) else {
            return;
        };
        if let Some((facts, refs)) = slot {
            *refs -= 1;
            if *refs == 0 {
                for t in facts.tags() {
                    if let Some(list) = self.by_tag.get_mut(t) {
                        if let Some(pos) = list.iter().position(|&x| x == id) {
                            list.swap_remove(pos);
                        }
                        if list.is_empty() {
                            self.by_tag.remove(t);
                        }
                    }
                }
                self.index.remove(facts);
                *slot = None;
                self.free.push(id);
            }
        }
    }

    fn get(&self, id: u32) -> Option<&Facts> {
        self.entries
            .get(id as usize)
            .and_then(|e| e.as_ref())
            .map(|(f, _)| &**f)
    }
}

/// Re-evaluations of changed profiles, memoised per distinct device facts for the duration
/// of one edit. One entry per distinct list of re-evaluated profiles (position, enabled
/// condition) and profile count: chains that share those share the entry.
#[derive(Default)]
struct MoverMemo {
    entries: Vec<MemoEntry>,
    /// Entry position by (profile set, re-evaluated profile list) address: both are held
    /// alive by the chains for the whole edit.
    by_addr: HashMap<(usize, usize), usize, Fast>,
}

struct MemoEntry {
    n_profiles: usize,
    /// (profile position, condition when enabled).
    key: Vec<(usize, Option<Arc<Compiled>>)>,
    /// Per fact entry: index into `patterns`, or `NO_FACTS` when not evaluated yet.
    pattern_of: Vec<u32>,
    /// Distinct results: the re-evaluated profiles that hold, as a mask.
    patterns: Vec<Mask>,
    pattern_index: HashMap<Mask, u32, Fast>,
    /// When every fact entry is filled in (conditions on tags only): the pattern of devices
    /// with none of the tags read, and, by group, the devices with another pattern.
    none: Option<u32>,
    special: HashMap<usize, Vec<u32>, Fast>,
}

impl MemoEntry {
    /// The pattern index of `m`, added when new.
    fn intern(&mut self, m: Mask) -> u32 {
        let next = u32::try_from(self.patterns.len()).unwrap_or(NO_FACTS);
        let p = *self.pattern_index.entry(m.clone()).or_insert(next);
        if p == next {
            self.patterns.push(m);
        }
        p
    }

    fn eval(&self, facts: &Facts) -> Mask {
        let mut m = Mask::new(self.n_profiles);
        for (b, cond) in &self.key {
            if cond.as_ref().is_some_and(|c| c.eval(facts)) {
                m.set(*b);
            }
        }
        m
    }

    /// When every condition reads only tags: fills in every fact entry at once, evaluating
    /// once per distinct combination of the tags read (reading only the entries that carry
    /// one of them, through the table's tag index). Otherwise leaves the entries to be
    /// evaluated on first use.
    fn prefill(&mut self, facts: &FactTable, fact_of: &[u32], devices: &[Option<DeviceRec>]) {
        let mut read = Vec::new();
        for (_, cond) in &self.key {
            if let Some(c) = cond
                && !c.tags_read(&mut read)
            {
                return;
            }
        }
        read.sort_unstable();
        read.dedup();
        let none = self.eval(&Facts::only_tags(Vec::new()));
        let none = self.intern(none);
        self.pattern_of.fill(none);
        let mut by_tags: HashMap<Vec<u32>, u32> = HashMap::new();
        for t in &read {
            let Some(list) = facts.by_tag.get(t) else {
                continue;
            };
            for &f in list {
                let Some(fs) = facts.get(f) else {
                    continue;
                };
                let seen: Vec<u32> = fs
                    .tags()
                    .iter()
                    .copied()
                    .filter(|x| read.binary_search(x).is_ok())
                    .collect();
                let p = match by_tags.get(&seen) {
                    Some(&p) => p,
                    None => {
                        let m = self.eval(&Facts::only_tags(seen.clone()));
                        let p = self.intern(m);
                        by_tags.insert(seen, p);
                        p
                    }
                };
                if let Some(slot) = self.pattern_of.get_mut(f as usize) {
                    *slot = p;
                }
            }
        }
        self.none = Some(none);
        // The devices whose pattern is not `none`, by group: one pass over a compact column.
        if self.patterns.len() > 1 {
            for (i, &f) in fact_of.iter().enumerate() {
                if self.pattern_of.get(f as usize).is_some_and(|&p| p != none)
                    && let Some(Some(d)) = devices.get(i)
                {
                    let dev = u32::try_from(i).unwrap_or(NO_FACTS);
                    self.special.entry(d.group).or_default().push(dev);
                }
            }
        }
    }

    /// The result pattern for fact entry `f`, evaluating the profiles on first use.
    fn pattern(&mut self, f: u32, facts: &FactTable) -> Option<u32> {
        let slot = self.pattern_of.get_mut(f as usize)?;
        if *slot != NO_FACTS {
            return Some(*slot);
        }
        let fs = facts.get(f)?;
        let m = self.eval(fs);
        let p = self.intern(m);
        self.pattern_of[f as usize] = p;
        Some(p)
    }
}

impl MoverMemo {
    /// The position of the entry for re-evaluating profiles `bits` of `set`.
    fn entry(
        &mut self,
        set: &Arc<ProfileSet>,
        bits: &Arc<[usize]>,
        facts: &FactTable,
        fact_of: &[u32],
        devices: &[Option<DeviceRec>],
    ) -> usize {
        let addr = (Arc::as_ptr(set) as usize, bits.as_ptr() as usize);
        if let Some(&pos) = self.by_addr.get(&addr) {
            return pos;
        }
        let n = set.profiles.len();
        let key: Vec<(usize, Option<Arc<Compiled>>)> = bits
            .iter()
            .filter_map(|&b| {
                set.profiles
                    .get(b)
                    .map(|p| (b, p.enabled.then(|| p.cond.clone())))
            })
            .collect();
        let same = |e: &MemoEntry| {
            e.n_profiles == n
                && e.key.len() == key.len()
                && e.key.iter().zip(&key).all(|((b1, c1), (b2, c2))| {
                    b1 == b2
                        && match (c1, c2) {
                            (None, None) => true,
                            (Some(x), Some(y)) => Arc::ptr_eq(x, y) || **x == **y,
                            _ => false,
                        }
                })
        };
        let pos = match self.entries.iter().position(same) {
            Some(pos) => pos,
            None => {
                let mut e = MemoEntry {
                    n_profiles: n,
                    key,
                    pattern_of: vec![NO_FACTS; facts.entries.len()],
                    patterns: Vec::new(),
                    pattern_index: HashMap::default(),
                    none: None,
                    special: HashMap::default(),
                };
                e.prefill(facts, fact_of, devices);
                self.entries.push(e);
                self.entries.len() - 1
            }
        };
        self.by_addr.insert(addr, pos);
        pos
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
///
/// A chain whose policy adds no profiles shares its parent's profile set, and every path its
/// policy does not set shares the parent's layers, so building a subgroup's chain costs in
/// proportion to its own policy.
struct Chain {
    levels: Vec<Arc<PolicyRec>>,
    forced: bool,
    set: Arc<ProfileSet>,
    by_path: Vec<Arc<PathLayers>>,
    cache: Mutex<HashMap<Mask, Arc<AppValues>, Fast>>,
}

/// A chain's merged profiles, in priority order.
#[derive(Default)]
struct ProfileSet {
    profiles: Vec<MergedProfile>,
    /// Enabled profiles whose condition is "has any of these tags", by tag id.
    tag_index: HashMap<u32, Vec<usize>, Fast>,
    /// Enabled profiles with any other condition.
    general: Vec<usize>,
}

impl Chain {
    /// Whether devices' active-profile masks computed against `self` hold for `other`.
    fn same_masks(&self, other: &Chain) -> bool {
        Arc::ptr_eq(&self.set, &other.set)
            || (self.set.profiles.len() == other.set.profiles.len()
                && self
                    .set
                    .profiles
                    .iter()
                    .zip(&other.set.profiles)
                    .all(|(o, n)| o.enabled == n.enabled && *o.cond == *n.cond))
    }
}

/// The devices of one group that resolve one application identically: same mode (on or off
/// the corporate network) and same active profiles. They share one result.
struct Class {
    off_net: bool,
    mask: Mask,
    result: Arc<AppValues>,
    /// Devices that use `result`.
    plain: Vec<u32>,
    /// Devices with local values for the application: each has its own result.
    owned: Vec<u32>,
}

impl Class {
    fn is_free(&self) -> bool {
        self.plain.is_empty() && self.owned.is_empty()
    }
}

struct Slot {
    active: Option<Arc<PolicyRec>>,
    away_policy: Option<Arc<PolicyRec>>,
    office: Arc<Chain>,
    away: Option<Arc<Chain>>,
    classes: Vec<Class>,
    class_index: HashMap<(bool, Mask), u32, Fast>,
    free: Vec<u32>,
}

impl Slot {
    fn new(n_paths: usize) -> Slot {
        Slot {
            active: None,
            away_policy: None,
            office: empty_chain(n_paths),
            away: None,
            classes: Vec::new(),
            class_index: HashMap::default(),
            free: Vec::new(),
        }
    }

    /// The chain used by devices on (`off_net` false) or off the corporate network.
    fn chain(&self, off_net: bool) -> &Arc<Chain> {
        match (&self.away, off_net) {
            (Some(away), true) => away,
            _ => &self.office,
        }
    }

    fn clear_classes(&mut self) {
        self.classes.clear();
        self.class_index.clear();
        self.free.clear();
    }
}

/// Marks a device whose result for an application is its own (it has local values).
const OWN_RESULT: u32 = 1 << 31;

struct DeviceRec {
    device: Device,
    group: usize,
    /// Shared with the resolver's fact table and with devices that have equal facts.
    facts: Arc<Facts>,
    local: Vec<Vec<(usize, Arc<Value>)>>,
    /// The device's own results, for the applications it has local values for.
    own: Vec<(usize, Arc<AppValues>)>,
}

impl DeviceRec {
    fn own_result(&self, a: usize) -> Option<&Arc<AppValues>> {
        self.own.iter().find(|(x, _)| *x == a).map(|(_, v)| v)
    }

    fn set_own(&mut self, a: usize, value: Option<Arc<AppValues>>) {
        self.own.retain(|(x, _)| *x != a);
        if let Some(v) = value {
            self.own.push((a, v));
        }
    }
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
    /// Set a policy's status. Making a policy active (or out-of-office) makes the policy that
    /// held that status for the same application and group inactive in the same step; see
    /// [`Resolver::status_holder`] for which one that is.
    SetPolicyStatus {
        /// Policy identifier.
        policy: String,
        /// Its new status.
        status: PolicyStatus,
    },
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
    /// Move a group, with its subgroups and devices, below another group.
    MoveGroup {
        /// The group moved.
        group: String,
        /// Its new parent.
        parent: String,
    },
}

/// What a change did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChangeReport {
    /// Devices whose effective settings changed, sorted by id: push to exactly these.
    ///
    /// The ids are shared with the resolver (cloning one is a reference-count increment),
    /// so a report listing the whole fleet allocates one vector, not one string per device.
    pub changed: Vec<Arc<str>>,
    /// Devices that were re-resolved (a superset of `changed`).
    pub resolved: usize,
}

/// Changed device indices (unsorted) and the number of devices re-resolved.
#[derive(Default)]
struct Changed {
    idx: Vec<usize>,
    resolved: usize,
    /// Replaced results and chains, freed after the report is built (their memory is then
    /// not in the way of the report's allocations).
    garbage: Garbage,
}

/// Replaced results and chains (office, out-of-office), held until the report is built.
type Garbage = (Vec<Arc<AppValues>>, Vec<(Arc<Chain>, Option<Arc<Chain>>)>);

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
    /// class_of[app][device]: the device's class in its group's slot (`| OWN_RESULT` when
    /// it has its own result) and its position in the class's member list.
    class_of: Vec<Vec<(u32, u32)>>,
    /// Device ids by index, allocated once and shared with change reports.
    ids: Vec<Arc<str>>,
    /// Distinct device facts; `fact_of[device]` is the device's entry (`NO_FACTS` when the
    /// index holds no device). A changed profile condition is evaluated once per entry.
    facts: FactTable,
    fact_of: Vec<u32>,
    /// Whether device indices are in id order (true until a device is added out of order),
    /// so that sorting changed devices by index sorts them by id.
    ids_sorted: bool,
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
    let none = Arc::new(PathLayers::default());
    Arc::new(Chain {
        levels: Vec::new(),
        forced: false,
        set: Arc::new(ProfileSet::default()),
        by_path: vec![none; n_paths],
        cache: Mutex::new(HashMap::default()),
    })
}

/// Builds the chain of a group whose policy is `own` below a parent chain. Parts equal to
/// those of `prev` (the chain this one replaces) are shared with it, so that comparing the
/// two after an edit, and the chains built on top of this one, is mostly pointer equality.
fn build_chain(
    parent: Option<&Chain>,
    own: &Arc<PolicyRec>,
    n_paths: usize,
    prev: Option<&Chain>,
) -> Arc<Chain> {
    let mut chain = build_chain_fresh(parent, own, n_paths);
    if let (Some(prev), Some(new)) = (prev, Arc::get_mut(&mut chain)) {
        if prev.by_path.len() == new.by_path.len() {
            for (n, o) in new.by_path.iter_mut().zip(&prev.by_path) {
                if !Arc::ptr_eq(n, o) && **n == **o {
                    *n = o.clone();
                }
            }
        }
        if !Arc::ptr_eq(&new.set, &prev.set)
            && new.set.profiles.len() == prev.set.profiles.len()
            && new
                .set
                .profiles
                .iter()
                .zip(&prev.set.profiles)
                .all(|(n, o)| n.name == o.name && n.enabled == o.enabled && *n.cond == *o.cond)
        {
            new.set = prev.set.clone();
        }
    }
    chain
}

fn build_chain_fresh(parent: Option<&Chain>, own: &Arc<PolicyRec>, n_paths: usize) -> Arc<Chain> {
    let mut levels: Vec<Arc<PolicyRec>> = Vec::new();
    let mut inherited = None;
    if let Some(p) = parent
        && (own.original.inherit || p.forced)
    {
        levels.extend(p.levels.iter().cloned());
        inherited = Some(p);
    }
    levels.push(own.clone());
    let forced = levels.iter().any(|l| l.original.force_inheritance);
    if let Some(p) = inherited
        && own.profiles.is_empty()
        && p.by_path.len() == n_paths
    {
        // The parent's chain plus one level without profiles: share the profile set and
        // the layers of every path this policy does not set.
        let level = levels.len() - 1;
        let mut by_path = p.by_path.clone();
        for (path, value, locked) in &own.settings {
            if let Some(slot) = by_path.get_mut(*path) {
                let mut layers = PathLayers {
                    policy: slot.policy.clone(),
                    profile: slot.profile.clone(),
                };
                layers.policy.push((level, value.clone(), *locked));
                *slot = Arc::new(layers);
            }
        }
        return Arc::new(Chain {
            levels,
            forced,
            set: p.set.clone(),
            by_path,
            cache: Mutex::new(HashMap::default()),
        });
    }
    let mut by_path: Vec<PathLayers> = (0..n_paths).map(|_| PathLayers::default()).collect();
    let mut profiles: Vec<MergedProfile> = Vec::new();
    let mut by_name: HashMap<&str, usize> = HashMap::new();
    let mut prof_entries: Vec<(usize, usize, usize, &Arc<Value>)> = Vec::new();
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
        set: Arc::new(ProfileSet {
            profiles,
            tag_index,
            general,
        }),
        by_path: by_path.into_iter().map(Arc::new).collect(),
        cache: Mutex::new(HashMap::default()),
    })
}

fn mask_has(mask: &[u64], i: usize) -> bool {
    mask.get(i / 64)
        .is_some_and(|w| w & (1u64 << (i % 64)) != 0)
}

fn profile_mask(chain: &Chain, facts: &Facts) -> Mask {
    let set = &*chain.set;
    let mut mask = Mask::new(set.profiles.len());
    for &i in &set.general {
        if set.profiles[i].cond.eval(facts) {
            mask.set(i);
        }
    }
    if !set.tag_index.is_empty() {
        for tag in facts.tags() {
            if let Some(list) = set.tag_index.get(tag) {
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
    default: &'a Arc<Value>,
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
            profile: self.chain.set.profiles[idx].name.clone(),
            policy: rec.original.id.clone(),
            group: self.groups[rec.group].id.clone(),
            rank: idx + 1,
        }
    }
    fn inactive_reason(&self, idx: usize) -> LossReason {
        if self.chain.set.profiles[idx].enabled {
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
        local: Option<&Arc<Value>>,
        rec: &mut Recorder,
    ) -> (Arc<Value>, bool, Source) {
        if self.merge {
            return self.resolve_merge(layers, local, rec);
        }
        let mut value: &Arc<Value> = self.default;
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
        local: Option<&Arc<Value>>,
        rec: &mut Recorder,
    ) -> (Arc<Value>, bool, Source) {
        // The merged items in order, and the set of them, so each addition is one lookup
        // rather than a scan of the list (long lists would make the merge quadratic).
        let mut items: Option<(Vec<Value>, HashSet<&Value>)> = None;
        let mut contributors = 0usize;
        let mut single: Option<Source> = None;
        fn add<'v>(items: &mut Option<(Vec<Value>, HashSet<&'v Value>)>, v: &'v Value) {
            let (list, seen) = items.get_or_insert_with(Default::default);
            let new = match v {
                Value::List(l) => l.as_slice(),
                other => std::slice::from_ref(other),
            };
            for it in new {
                if seen.insert(it) {
                    list.push(it.clone());
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
            Some((list, _)) => {
                let source = if contributors == 1 {
                    single.unwrap_or(Source::Merged)
                } else {
                    Source::Merged
                };
                (Arc::new(Value::List(list)), source)
            }
        };
        if let Some(c) = rec.cands.as_mut() {
            if let Some(v) = local_lost {
                c.push(Candidate {
                    source: Source::Local,
                    value: Value::clone(v),
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

/// The value and lock of path `i` of `app` from `layers` (its chain's layers for that path)
/// and the device's local value, without recording an explanation.
fn resolve_value(
    groups: &[GroupInfo],
    app: &AppInfo,
    chain: &Chain,
    mask: &[u64],
    i: usize,
    layers: &PathLayers,
    local: Option<&Arc<Value>>,
) -> (Arc<Value>, bool) {
    let ctx = PathCtx {
        groups,
        chain,
        default: &app.defaults[i],
        merge: app.specs[i].merge,
        mask,
    };
    let mut rec = Recorder {
        cands: None,
        winner: None,
    };
    let (v, l, _) = ctx.resolve(layers, local, &mut rec);
    (v, l)
}

fn resolve_app(
    groups: &[GroupInfo],
    app: &AppInfo,
    chain: &Chain,
    mask: &[u64],
    local: &[(usize, Arc<Value>)],
) -> AppValues {
    let mut values = Vec::with_capacity(app.specs.len());
    let mut locked = Vec::with_capacity(app.specs.len());
    let mut li = 0;
    for i in 0..app.specs.len() {
        while li < local.len() && local[li].0 < i {
            li += 1;
        }
        let lv = local.get(li).filter(|(p, _)| *p == i).map(|(_, v)| v);
        let (v, l) = resolve_value(groups, app, chain, mask, i, &chain.by_path[i], lv);
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
                defaults: specs.iter().map(|s| Arc::new(s.default_value())).collect(),
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
                .map(|_| apps.iter().map(|a| Slot::new(a.specs.len())).collect())
                .collect(),
            class_of: vec![Vec::with_capacity(state.devices.len()); apps.len()],
            ids: Vec::with_capacity(state.devices.len()),
            facts: FactTable::default(),
            fact_of: Vec::with_capacity(state.devices.len()),
            ids_sorted: true,
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
        // Ids first, allocated one after another: a report listing many devices then reads
        // (and counts references in) memory in order.
        let ids: Vec<Arc<str>> = devices.iter().map(|d| Arc::from(d.id.as_str())).collect();
        for (d, id) in devices.into_iter().zip(ids) {
            if r.device_index.contains_key(&d.id) {
                return Err(PolicyError::DuplicateId {
                    kind: "device",
                    id: d.id.clone(),
                });
            }
            let mut rec = r.compile_device(d)?;
            let idx = r.devices.len();
            r.group_devices[rec.group].insert(idx);
            r.device_index.insert(d.id.clone(), idx);
            r.fact_of.push(r.facts.intern(&mut rec.facts));
            r.devices.push(Some(rec));
            r.ids.push(id);
            for row in &mut r.class_of {
                row.push((0, 0));
            }
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
            for slot in &mut self.slots[g] {
                slot.clear_classes();
            }
            let devs: Vec<usize> = self.group_devices[g].iter().copied().collect();
            for i in devs {
                for a in 0..self.apps.len() {
                    self.assign(i, a);
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

    /// Whether the state describes `device`.
    pub fn knows(&self, device: &str) -> bool {
        self.device_index.contains_key(device)
    }

    /// The device's effective settings for every application.
    pub fn effective(&self, device: &str) -> Result<EffectiveSettings, PolicyError> {
        let i = self.device_idx(device)?;
        let d = self.device(device)?;
        Ok(EffectiveSettings {
            device: d.device.id.clone(),
            apps: self
                .apps
                .iter()
                .enumerate()
                .map(|(a, info)| AppEffective {
                    app: info.id.clone(),
                    paths: info.paths.clone(),
                    values: self.result_of(d, i, a).clone(),
                })
                .collect(),
        })
    }

    /// The policy with identifier `id`, as it was given.
    pub fn policy(&self, id: &str) -> Option<&Policy> {
        self.policies.get(id).map(|r| &r.original)
    }

    /// Which policy [`Change::SetPolicyStatus`] would make inactive if `policy` took
    /// `status`: the other policy holding that status for the same application and group.
    /// `None` when there is none, for `Inactive`, or when `policy` is unknown.
    ///
    /// ```
    /// use outpost_policy::{Change, Policy, PolicyStatus, Resolver, State};
    /// let state = State::from_json(br#"{
    ///   "schemas": [{"app": "a", "settings": {"x": {"type": "int"}}}],
    ///   "groups": [{"id": "g"}],
    ///   "policies": [{"id": "old", "app": "a", "group": "g"},
    ///                {"id": "new", "app": "a", "group": "g", "status": "inactive"}]}"#)?;
    /// let mut resolver = Resolver::new(&state)?;
    /// assert_eq!(resolver.status_holder("new", PolicyStatus::Active), Some("old"));
    /// resolver.apply(Change::SetPolicyStatus { policy: "new".into(), status: PolicyStatus::Active })?;
    /// assert_eq!(resolver.policy("old").unwrap().status, PolicyStatus::Inactive);
    /// assert_eq!(resolver.policy("new").unwrap().status, PolicyStatus::Active);
    /// # Ok::<(), outpost_policy::PolicyError>(())
    /// ```
    pub fn status_holder(&self, policy: &str, status: PolicyStatus) -> Option<&str> {
        let rec = self.policies.get(policy)?;
        self.holder(rec.group, rec.app, status)
            .filter(|h| !Arc::ptr_eq(h, rec))
            .map(|h| h.original.id.as_str())
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
                field: path.to_owned(),
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
            value: Arc::unwrap_or_clone(value),
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
        let mut done = self.apply_inner(change)?;
        self.sort_changed(&mut done.idx);
        let report = ChangeReport {
            changed: done.idx.iter().map(|&i| self.ids[i].clone()).collect(),
            resolved: done.resolved,
        };
        drop(done.garbage);
        Ok(report)
    }

    /// Like [`Resolver::apply`], but hands each changed device's id to `on_changed` (in id
    /// order) instead of collecting them, and returns how many devices were re-resolved.
    ///
    /// For a server that pushes to the changed devices as it learns of them: an edit that
    /// changes the whole fleet then allocates nothing per device.
    ///
    /// ```
    /// use outpost_policy::{Change, Policy, PolicySetting, Resolver, State};
    /// let state = State::from_json(br#"{
    ///   "schemas": [{"app": "a", "settings": {"x": {"type": "int"}}}],
    ///   "groups": [{"id": "g"}],
    ///   "devices": [{"id": "d1", "group": "g"}, {"id": "d2", "group": "g"}]}"#)?;
    /// let mut resolver = Resolver::new(&state)?;
    /// let edit = Policy::new("p", "a", "g").with("x", PolicySetting::locked(5));
    /// let mut pushed = Vec::new();
    /// let resolved = resolver.apply_each(Change::UpsertPolicy(edit), |id| pushed.push(id.to_owned()))?;
    /// assert_eq!(pushed, ["d1", "d2"]);
    /// assert_eq!(resolved, 2);
    /// # Ok::<(), outpost_policy::PolicyError>(())
    /// ```
    pub fn apply_each(
        &mut self,
        change: Change,
        mut on_changed: impl FnMut(&str),
    ) -> Result<usize, PolicyError> {
        let mut done = self.apply_inner(change)?;
        self.sort_changed(&mut done.idx);
        for &i in &done.idx {
            on_changed(self.id(i));
        }
        drop(done.garbage);
        Ok(done.resolved)
    }

    fn apply_inner(&mut self, change: Change) -> Result<Changed, PolicyError> {
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
            Change::SetPolicyStatus { policy, status } => {
                let old = self.policies.get(&policy).cloned().ok_or_else(|| {
                    PolicyError::UnknownReference {
                        referrer: "set-policy-status change".into(),
                        kind: "policy",
                        id: policy.clone(),
                    }
                })?;
                let mut p = old.original.clone();
                p.status = status;
                let displaced = self
                    .holder(old.group, old.app, status)
                    .filter(|h| !Arc::ptr_eq(h, &old))
                    .cloned();
                // Compile both before touching anything, so that an error changes nothing.
                let demoted = match &displaced {
                    Some(d) => {
                        let mut dp = d.original.clone();
                        dp.status = PolicyStatus::Inactive;
                        Some(Arc::new(self.compile_policy_excluding(&dp, Some(&dp.id))?))
                    }
                    None => None,
                };
                let swapped = match (displaced, demoted) {
                    (Some(d), Some(rec)) => {
                        self.uninstall_policy(&d);
                        self.install_policy(rec.clone());
                        Some((d, rec))
                    }
                    _ => None,
                };
                let rec = match self.compile_policy_excluding(&p, Some(&p.id)) {
                    Ok(rec) => Arc::new(rec),
                    Err(e) => {
                        if let Some((d, rec)) = swapped {
                            self.uninstall_policy(&rec);
                            self.install_policy(d);
                        }
                        return Err(e);
                    }
                };
                self.uninstall_policy(&old);
                self.install_policy(rec);
                Ok(self.refresh_subtrees(&[(old.group, old.app)]))
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
                let mut rec = self.compile_device(&d)?;
                let idx = match self.device_index.get(&d.id) {
                    Some(&i) => i,
                    None => {
                        let idx = self.devices.len();
                        if self.ids.last().is_some_and(|last| **last > *d.id) {
                            self.ids_sorted = false;
                        }
                        self.devices.push(None);
                        self.fact_of.push(NO_FACTS);
                        self.push_id(&d.id);
                        for row in &mut self.class_of {
                            row.push((0, 0));
                        }
                        self.device_index.insert(d.id.clone(), idx);
                        idx
                    }
                };
                let old = self.detach_device(idx);
                self.group_devices[rec.group].insert(idx);
                self.fact_of[idx] = self.facts.intern(&mut rec.facts);
                self.devices[idx] = Some(rec);
                for a in 0..self.apps.len() {
                    self.assign(idx, a);
                }
                Ok(self.device_report(idx, old))
            }
            Change::RemoveDevice(id) => {
                let idx = self.device_idx(&id)?;
                self.detach_device(idx);
                self.device_index.remove(&id);
                Ok(Changed::default())
            }
            Change::MoveDevice { device, group } => {
                let mut d = self.device(&device)?.device.clone();
                d.group = group;
                self.apply_inner(Change::UpsertDevice(d))
            }
            Change::AddTag { device, tag } => {
                let mut d = self.device(&device)?.device.clone();
                d.tags.insert(tag);
                self.apply_inner(Change::UpsertDevice(d))
            }
            Change::RemoveTag { device, tag } => {
                let mut d = self.device(&device)?.device.clone();
                d.tags.remove(&tag);
                self.apply_inner(Change::UpsertDevice(d))
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
                let row = self.apps.iter().map(|a| Slot::new(a.specs.len())).collect();
                self.slots.push(row);
                for a in 0..self.apps.len() {
                    self.rebuild_slot(idx, a);
                }
                Ok(Changed::default())
            }
            Change::MoveGroup { group, parent } => {
                let unknown = |id: &str| PolicyError::UnknownReference {
                    referrer: format!("move of group {group:?}"),
                    kind: "group",
                    id: id.to_string(),
                };
                let g = *self
                    .group_index
                    .get(&group)
                    .ok_or_else(|| unknown(&group))?;
                let p = *self
                    .group_index
                    .get(&parent)
                    .ok_or_else(|| unknown(&parent))?;
                if self.contains(g, p) {
                    return Err(PolicyError::GroupCycle { group });
                }
                if self.groups[g].parent == Some(p) {
                    return Ok(Changed::default());
                }
                let subtree = self.topo_order(Some(g));
                let deepest = subtree
                    .iter()
                    .map(|&x| self.groups[x].depth)
                    .max()
                    .unwrap_or(self.groups[g].depth);
                let shift = self.groups[p].depth + 1;
                let depth = deepest - self.groups[g].depth + shift;
                if depth > MAX_GROUP_DEPTH {
                    return Err(PolicyError::HierarchyTooDeep {
                        group,
                        depth,
                        max: MAX_GROUP_DEPTH,
                    });
                }
                if let Some(old) = self.groups[g].parent {
                    self.groups[old].children.retain(|&c| c != g);
                }
                self.groups[p].children.push(g);
                self.groups[g].parent = Some(p);
                let base = self.groups[g].depth;
                for &x in &subtree {
                    self.groups[x].depth = self.groups[x].depth - base + shift;
                }
                let targets: Vec<(usize, usize)> = (0..self.apps.len()).map(|a| (g, a)).collect();
                Ok(self.refresh_subtrees(&targets))
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
        // `profile`: the index of the profile holding the value, `None` for the policy's own.
        let check = |origin: &dyn Fn() -> String,
                     profile: Option<usize>,
                     path: &str,
                     value: &Value|
         -> Result<usize, PolicyError> {
            let field = || match profile {
                None => format!("settings.{path}"),
                Some(n) => format!("profiles[{n}].settings.{path}"),
            };
            let i = *info
                .index
                .get(path)
                .ok_or_else(|| PolicyError::UnknownSetting {
                    origin: origin(),
                    app: p.app.clone(),
                    path: path.to_owned(),
                    field: field(),
                })?;
            info.specs[i].check(value).map_err(|rule| {
                PolicyError::SchemaViolation(Box::new(SchemaViolation {
                    origin: origin(),
                    app: p.app.clone(),
                    path: path.to_owned(),
                    field: field(),
                    value: value.to_string(),
                    rule,
                }))
            })?;
            Ok(i)
        };
        let mut settings = Vec::with_capacity(p.settings.len());
        for (path, s) in &p.settings {
            let i = check(&|| who.clone(), None, path, &s.value)?;
            settings.push((i, Arc::new(s.value.clone()), s.locked));
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
        for (n, prof) in p.profiles.iter().enumerate() {
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
                ps.push((check(&origin, Some(n), path, v)?, Arc::new(v.clone())));
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

    /// The policy holding `status` (active or out-of-office) in a group's slot for an app.
    fn holder(&self, group: usize, app: usize, status: PolicyStatus) -> Option<&Arc<PolicyRec>> {
        let slot = &self.slots[group][app];
        match status {
            PolicyStatus::Active => slot.active.as_ref(),
            PolicyStatus::OutOfOffice => slot.away_policy.as_ref(),
            PolicyStatus::Inactive => None,
        }
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
            (Some(p), par) => build_chain(par.as_deref(), p, n_paths, Some(&slot.office)),
            (None, Some(par)) => par.clone(),
            (None, None) if slot.office.levels.is_empty() => slot.office.clone(),
            (None, None) => empty_chain(n_paths),
        };
        let away = slot.away_policy.as_ref().map(|p| {
            build_chain(
                parent.as_deref(),
                p,
                n_paths,
                Some(slot.away.as_deref().unwrap_or(&slot.office)),
            )
        });
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
                        field: format!("local.{app}.{path}"),
                    })?;
                info.specs[i].check(v).map_err(|rule| {
                    PolicyError::SchemaViolation(Box::new(SchemaViolation {
                        origin: origin(),
                        app: app.clone(),
                        path: path.clone(),
                        field: format!("local.{app}.{path}"),
                        value: v.to_string(),
                        rule,
                    }))
                })?;
                local[a].push((i, Arc::new(v.clone())));
            }
            local[a].sort_by_key(|e: &(usize, Arc<Value>)| e.0);
        }
        let facts = Arc::new(Facts::new(d, &mut self.interner));
        Ok(DeviceRec {
            device: d.clone(),
            group,
            facts,
            local,
            own: Vec::new(),
        })
    }

    /// The device's current result for one application.
    fn result_of<'a>(&'a self, d: &'a DeviceRec, i: usize, a: usize) -> &'a Arc<AppValues> {
        let e = self.class_of[a][i].0;
        if e & OWN_RESULT != 0
            && let Some(own) = d.own_result(a)
        {
            return own;
        }
        &self.slots[d.group][a].classes[(e & !OWN_RESULT) as usize].result
    }

    /// Takes a device out of its group and classes; returns its results (every application)
    /// when it existed.
    fn detach_device(&mut self, i: usize) -> Option<Vec<Arc<AppValues>>> {
        let d = self.devices[i].as_ref()?;
        let results: Vec<Arc<AppValues>> = (0..self.apps.len())
            .map(|a| self.result_of(d, i, a).clone())
            .collect();
        for a in 0..self.apps.len() {
            self.unassign(i, a);
        }
        if let Some(d) = self.devices[i].take() {
            self.group_devices[d.group].remove(&i);
            if let Some(f) = self.fact_of.get_mut(i) {
                self.facts.release(*f);
                *f = NO_FACTS;
            }
        }
        Some(results)
    }

    /// The shared result of devices without local values in group `g`, for application `a`,
    /// in one mode with one set of active profiles (memoised on the chain).
    fn shared_result(&self, g: usize, a: usize, off_net: bool, mask: &Mask) -> Arc<AppValues> {
        let chain = self.slots[g][a].chain(off_net);
        let mut cache = chain.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(v) = cache.get(mask) {
            return v.clone();
        }
        let v = Arc::new(resolve_app(
            &self.groups,
            &self.apps[a],
            chain,
            mask.words(),
            &[],
        ));
        cache.insert(mask.clone(), v.clone());
        v
    }

    /// Resolves device `i` (present, in `group_devices`, not yet in a class) for application
    /// `a`: finds or creates its class, and computes its own result when it has local values.
    fn assign(&mut self, i: usize, a: usize) {
        let Some(d) = self.devices[i].as_ref() else {
            return;
        };
        let g = d.group;
        let off_net = !d.device.on_corporate_network;
        let chain = self.slots[g][a].chain(off_net).clone();
        let mask = profile_mask(&chain, &d.facts);
        let own = if d.local[a].is_empty() {
            None
        } else {
            Some(Arc::new(resolve_app(
                &self.groups,
                &self.apps[a],
                &chain,
                mask.words(),
                &d.local[a],
            )))
        };
        let key = (off_net, mask);
        let c = match self.slots[g][a].class_index.get(&key) {
            Some(&c) => c,
            None => {
                let result = self.shared_result(g, a, off_net, &key.1);
                let slot = &mut self.slots[g][a];
                let class = Class {
                    off_net,
                    mask: key.1.clone(),
                    result,
                    plain: Vec::new(),
                    owned: Vec::new(),
                };
                let c = match slot.free.pop() {
                    Some(c) => {
                        slot.classes[c as usize] = class;
                        c
                    }
                    None => {
                        slot.classes.push(class);
                        u32::try_from(slot.classes.len() - 1).unwrap_or(u32::MAX)
                    }
                };
                slot.class_index.insert(key, c);
                c
            }
        };
        let class = &mut self.slots[g][a].classes[c as usize];
        let dev = u32::try_from(i).unwrap_or(u32::MAX);
        let entry = if own.is_some() {
            class.owned.push(dev);
            (c | OWN_RESULT, class.owned.len() - 1)
        } else {
            class.plain.push(dev);
            (c, class.plain.len() - 1)
        };
        self.class_of[a][i] = (entry.0, u32::try_from(entry.1).unwrap_or(u32::MAX));
        if let Some(d) = self.devices[i].as_mut() {
            d.set_own(a, own);
        }
    }

    /// Removes device `i` from its class for application `a` (freeing an emptied class).
    fn unassign(&mut self, i: usize, a: usize) {
        let Some(d) = self.devices[i].as_mut() else {
            return;
        };
        let (e, pos) = self.class_of[a][i];
        let slot = &mut self.slots[d.group][a];
        let owned = e & OWN_RESULT != 0;
        if owned {
            d.set_own(a, None);
        }
        let c = (e & !OWN_RESULT) as usize;
        let Some(class) = slot.classes.get_mut(c) else {
            return;
        };
        let list = if owned {
            &mut class.owned
        } else {
            &mut class.plain
        };
        let pos = pos as usize;
        if list.get(pos) == Some(&u32::try_from(i).unwrap_or(u32::MAX)) {
            list.swap_remove(pos);
            if let Some(&moved) = list.get(pos)
                && let Some(entry) = self.class_of[a].get_mut(moved as usize)
            {
                entry.1 = u32::try_from(pos).unwrap_or(u32::MAX);
            }
        }
        if class.is_free() {
            let key = (
                class.off_net,
                std::mem::replace(&mut class.mask, Mask::new(0)),
            );
            class.result = Arc::new(AppValues {
                values: Vec::new(),
                locked: Vec::new(),
            });
            slot.class_index.remove(&key);
            slot.free.push(c as u32);
        }
        self.class_of[a][i] = (0, 0);
    }

    /// The report for a device that was (re)assigned: changed when new or when any result
    /// differs from `old`.
    fn device_report(&self, i: usize, old: Option<Vec<Arc<AppValues>>>) -> Changed {
        let Some(d) = self.devices[i].as_ref() else {
            return Changed::default();
        };
        let changed = match old {
            None => true,
            Some(old) => old.iter().enumerate().any(|(a, o)| {
                let n = self.result_of(d, i, a);
                !(Arc::ptr_eq(o, n) || **o == **n)
            }),
        };
        Changed {
            idx: if changed { vec![i] } else { Vec::new() },
            resolved: 1,
            garbage: Garbage::default(),
        }
    }

    /// The id of the device with index `i`.
    fn id(&self, i: usize) -> &str {
        &self.ids[i]
    }

    fn push_id(&mut self, id: &str) {
        self.ids.push(Arc::from(id));
    }

    /// Sorts changed device indices by device id, without duplicates.
    fn sort_changed(&self, idx: &mut Vec<usize>) {
        // Usually already in index order (collected from a bit set): then a linear check.
        if !idx.is_sorted_by(|a, b| a < b) {
            idx.sort_unstable();
            idx.dedup();
        }
        if !self.ids_sorted {
            idx.sort_unstable_by(|&x, &y| self.id(x).cmp(self.id(y)));
        }
    }

    /// After a policy change: rebuilds the chains of each target subtree for its application
    /// and brings every class and device of the subtree up to date.
    ///
    /// Work is shared: a class (devices of a group with the same mode and active profiles)
    /// is re-resolved once, only on the paths whose layers the change touched, and the
    /// result is memoised on the new chain for the groups that share it; the members of a
    /// changed class are marked changed without being visited. Devices with local values
    /// for the application have their own results patched. When profiles' conditions,
    /// enabled flags or positions changed, only those profiles are evaluated, once per
    /// distinct set of the facts they read (see `find_movers`); the devices whose set of
    /// active profiles changes move to another class and are compared one by one.
    fn refresh_subtrees(&mut self, targets: &[(usize, usize)]) -> Changed {
        // Changed devices as a bit set over device indices: sorted and free of duplicates
        // by construction.
        let mut changed_bits = vec![0u64; self.devices.len().div_ceil(64)];
        let mut mark = |i: usize| {
            if let Some(w) = changed_bits.get_mut(i / 64) {
                *w |= 1u64 << (i % 64);
            }
        };
        let mut resolved = 0;
        // Results compared once per (old, new) pair; `kept` holds old results alive so that
        // their addresses stay unique while the memo is in use.
        let mut same: HashMap<(usize, usize), bool, Fast> = HashMap::default();
        let mut kept: Vec<Arc<AppValues>> = Vec::new();
        let mut owned_updates: Vec<(usize, Arc<AppValues>)> = Vec::new();
        let mut old_chains = Vec::new();
        let mut memo = MoverMemo::default();
        for &(g, a) in targets {
            // Entry addresses are only known to stay unique within one target.
            memo.by_addr.clear();
            let order = self.topo_order(Some(g));
            let mut old: Vec<(Arc<Chain>, Option<Arc<Chain>>)> = order
                .iter()
                .map(|&sub| {
                    let s = &self.slots[sub][a];
                    (s.office.clone(), s.away.clone())
                })
                .collect();
            for &sub in &order {
                self.rebuild_slot(sub, a);
            }
            // Per (old chain, new chain): the paths whose layers differ and the profiles whose
            // bit must be re-evaluated.
            let mut diffs: HashMap<(usize, usize), Diff, Fast> = HashMap::default();
            // Per (old, new) profile set: whether masks may differ and which profiles to
            // re-evaluate (chains below a group without profiles share its sets).
            let mut set_diffs: SetDiffs = HashMap::default();
            for (k, &sub) in order.iter().enumerate() {
                resolved += self.group_devices[sub].len();
                let (old_office, old_away) = &old[k];
                let mut mode_diff: [Option<Diff>; 2] = [None, None];
                for (m, off_net) in [false, true].into_iter().enumerate() {
                    let o = match (old_away, off_net) {
                        (Some(away), true) => away,
                        _ => old_office,
                    };
                    let n = self.slots[sub][a].chain(off_net);
                    let key = (Arc::as_ptr(o) as usize, Arc::as_ptr(n) as usize);
                    mode_diff[m] = Some(match diffs.get(&key) {
                        Some(d) => d.clone(),
                        None => {
                            let d = chain_diff(o, n, &mut set_diffs);
                            diffs.insert(key, d.clone());
                            d
                        }
                    });
                }
                let [Some(office_diff), Some(away_diff)] = mode_diff else {
                    continue;
                };
                // Devices whose active profiles changed leave their class first; they are
                // re-resolved one by one once the classes are up to date.
                let mut movers: Vec<(usize, Arc<AppValues>)> = Vec::new();
                if office_diff.remask || away_diff.remask {
                    for (i, old_result) in
                        self.find_movers(sub, a, &office_diff, &away_diff, &mut memo)
                    {
                        movers.push((i, old_result));
                        self.unassign(i, a);
                    }
                }
                let office_dirty = office_diff.paths;
                let away_dirty = away_diff.paths;
                for c in 0..self.slots[sub][a].classes.len() {
                    let class = &self.slots[sub][a].classes[c];
                    let dirty = if class.off_net {
                        &away_dirty
                    } else {
                        &office_dirty
                    };
                    if class.is_free() || dirty.is_empty() {
                        continue;
                    }
                    let chain = self.slots[sub][a].chain(class.off_net).clone();
                    let old_result = class.result.clone();
                    if !class.plain.is_empty() {
                        let cached = chain
                            .cache
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .get(&class.mask)
                            .cloned();
                        let new = match cached {
                            Some(v) => v,
                            None => {
                                let v = match patch(
                                    &self.groups,
                                    &self.apps[a],
                                    &chain,
                                    class.mask.words(),
                                    &old_result,
                                    dirty,
                                    &[],
                                ) {
                                    Some(v) => Arc::new(v),
                                    None => old_result.clone(),
                                };
                                chain
                                    .cache
                                    .lock()
                                    .unwrap_or_else(PoisonError::into_inner)
                                    .insert(class.mask.clone(), v.clone());
                                v
                            }
                        };
                        let key = (
                            Arc::as_ptr(&old_result) as usize,
                            Arc::as_ptr(&new) as usize,
                        );
                        let equal = *same.entry(key).or_insert_with(|| {
                            Arc::ptr_eq(&old_result, &new) || *old_result == *new
                        });
                        if !equal {
                            for &i in &class.plain {
                                mark(i as usize);
                            }
                        }
                        kept.push(old_result);
                        self.slots[sub][a].classes[c].result = new;
                    } else {
                        // Only devices with their own results: the shared result is
                        // recomputed when a plain device joins.
                        let v = self.shared_result(sub, a, class.off_net, &class.mask);
                        kept.push(old_result);
                        self.slots[sub][a].classes[c].result = v;
                    }
                    // Devices with local values: patch their own results.
                    let class = &self.slots[sub][a].classes[c];
                    for &i in &class.owned {
                        let i = i as usize;
                        let Some(d) = self.devices[i].as_ref() else {
                            continue;
                        };
                        let Some(own) = d.own_result(a) else {
                            continue;
                        };
                        if let Some(v) = patch(
                            &self.groups,
                            &self.apps[a],
                            &chain,
                            class.mask.words(),
                            own,
                            dirty,
                            &d.local[a],
                        ) {
                            mark(i);
                            owned_updates.push((i, Arc::new(v)));
                        }
                    }
                    for (i, v) in owned_updates.drain(..) {
                        if let Some(d) = self.devices[i].as_mut() {
                            d.set_own(a, Some(v));
                        }
                    }
                }
                for (i, old_result) in movers {
                    self.assign(i, a);
                    let Some(d) = self.devices[i].as_ref() else {
                        continue;
                    };
                    let new = self.result_of(d, i, a);
                    let key = (Arc::as_ptr(&old_result) as usize, Arc::as_ptr(new) as usize);
                    let equal = *same
                        .entry(key)
                        .or_insert_with(|| Arc::ptr_eq(&old_result, new) || *old_result == **new);
                    if !equal {
                        mark(i);
                    }
                    kept.push(old_result);
                }
            }
            old_chains.append(&mut old);
        }
        let mut idx = Vec::new();
        for (k, &w) in changed_bits.iter().enumerate() {
            let mut w = w;
            while w != 0 {
                idx.push(k * 64 + w.trailing_zeros() as usize);
                w &= w - 1;
            }
        }
        Changed {
            idx,
            resolved,
            garbage: (kept, old_chains),
        }
    }

    /// The devices of group `g` whose active profiles for application `a` differ under the
    /// group's new chains, with their current results. Only the profiles listed in the
    /// diffs are evaluated, once per distinct set of device facts (memoised in `memo`
    /// across the groups of one edit); the others keep the bit the class already has. When
    /// the evaluated conditions read only tags and a class's devices without those tags
    /// keep their mask, only the devices of the group that carry one of the tags are
    /// checked, not the class's members.
    fn find_movers(
        &self,
        g: usize,
        a: usize,
        office: &Diff,
        away: &Diff,
        memo: &mut MoverMemo,
    ) -> Vec<(usize, Arc<AppValues>)> {
        let slot = &self.slots[g][a];
        let mut out = Vec::new();
        // Per result pattern: 0 not known yet, 1 the device stays, 2 it moves.
        let mut moves: Vec<u8> = Vec::new();
        // Classes whose devices with the common pattern stay: only the entry's special
        // devices of this group need a look (by class: the entry).
        let mut pending: Vec<Option<usize>> = Vec::new();
        let mut pending_entries: Vec<usize> = Vec::new();
        for (c, class) in slot.classes.iter().enumerate() {
            let diff = if class.off_net { away } else { office };
            if class.is_free() || !diff.remask {
                continue;
            }
            let set = &slot.chain(class.off_net).set;
            let base = carried_mask(&class.mask, set.profiles.len(), &diff.bits);
            let e = memo.entry(set, &diff.bits, &self.facts, &self.fact_of, &self.devices);
            let entry = &mut memo.entries[e];
            if let Some(none) = entry.none
                && !moves_with(&base, &entry.patterns[none as usize], &class.mask)
            {
                if pending.len() <= c {
                    pending.resize(c + 1, None);
                }
                pending[c] = Some(e);
                if !pending_entries.contains(&e) {
                    pending_entries.push(e);
                }
                continue;
            }
            moves.clear();
            for &i in class.plain.iter().chain(&class.owned) {
                let i = i as usize;
                let Some(p) = self
                    .fact_of
                    .get(i)
                    .and_then(|&f| entry.pattern(f, &self.facts))
                else {
                    continue;
                };
                let p = p as usize;
                if moves.len() <= p {
                    moves.resize(p + 1, 0);
                }
                if moves[p] == 0 {
                    moves[p] = if moves_with(&base, &entry.patterns[p], &class.mask) {
                        2
                    } else {
                        1
                    };
                }
                if moves[p] == 2
                    && let Some(d) = self.devices[i].as_ref()
                {
                    out.push((i, self.result_of(d, i, a).clone()));
                }
            }
        }
        for e in pending_entries {
            let entry = &memo.entries[e];
            let Some(list) = entry.special.get(&g) else {
                continue;
            };
            for &i in list {
                let i = i as usize;
                let Some(&(cls, _)) = self.class_of[a].get(i) else {
                    continue;
                };
                let c = (cls & !OWN_RESULT) as usize;
                if pending.get(c) != Some(&Some(e)) {
                    continue;
                }
                let class = &slot.classes[c];
                let diff = if class.off_net { away } else { office };
                let set = &slot.chain(class.off_net).set;
                let base = carried_mask(&class.mask, set.profiles.len(), &diff.bits);
                let Some(&p) = self
                    .fact_of
                    .get(i)
                    .and_then(|&f| entry.pattern_of.get(f as usize))
                else {
                    continue;
                };
                if let Some(pattern) = entry.patterns.get(p as usize)
                    && moves_with(&base, pattern, &class.mask)
                    && let Some(d) = self.devices[i].as_ref()
                {
                    out.push((i, self.result_of(d, i, a).clone()));
                }
            }
        }
        out
    }
}

/// A class's mask carried over to a chain with `n` profiles: the bits of the profiles that
/// are not re-evaluated (`bits`, ascending).
fn carried_mask(mask: &Mask, n: usize, bits: &[usize]) -> Mask {
    let mut base = Mask::new(n);
    for (w, &word) in mask.words().iter().enumerate() {
        let mut word = word;
        while word != 0 {
            let i = w * 64 + word.trailing_zeros() as usize;
            word &= word - 1;
            if i < n && bits.binary_search(&i).is_err() {
                base.set(i);
            }
        }
    }
    base
}

/// Whether a device whose re-evaluated profiles give `pattern` leaves the class with
/// `mask` (carried over as `base`).
fn moves_with(base: &Mask, pattern: &Mask, mask: &Mask) -> bool {
    let mut m = base.clone();
    for (x, y) in m.words_mut().iter_mut().zip(pattern.words()) {
        *x |= *y;
    }
    m != *mask
}

/// What changed between a group's chain before and after an edit.
#[derive(Clone)]
struct Diff {
    /// Whether active-profile masks may differ (some profile's condition, enabled flag or
    /// position changed, or profiles were added or removed).
    remask: bool,
    /// Profiles (new indices, ascending) whose bit must be re-evaluated per device.
    bits: Arc<[usize]>,
    /// Paths whose layers differ.
    paths: Arc<[usize]>,
}

/// (remask, bits) of [`Diff`] by the addresses of the old and new profile sets, which the
/// chains keep alive for the whole edit.
type SetDiffs = HashMap<(usize, usize), (bool, Arc<[usize]>), Fast>;

/// What changed between two chains of one group.
fn chain_diff(old: &Chain, new: &Chain, set_diffs: &mut SetDiffs) -> Diff {
    if std::ptr::eq(old, new) {
        return Diff {
            remask: false,
            bits: Arc::from(Vec::new()),
            paths: Arc::from(Vec::new()),
        };
    }
    let key = (
        Arc::as_ptr(&old.set) as usize,
        Arc::as_ptr(&new.set) as usize,
    );
    let (remask, bits) = set_diffs
        .entry(key)
        .or_insert_with(|| {
            let remask = !old.same_masks(new);
            let bits: Vec<usize> = if remask {
                let (o, n) = (&old.set.profiles, &new.set.profiles);
                (0..n.len())
                    .filter(|&i| {
                        o.get(i)
                            .is_none_or(|p| p.enabled != n[i].enabled || *p.cond != *n[i].cond)
                    })
                    .collect()
            } else {
                Vec::new()
            };
            (remask, bits.into())
        })
        .clone();
    let paths: Vec<usize> = old
        .by_path
        .iter()
        .zip(&new.by_path)
        .enumerate()
        .filter(|(_, (o, n))| !(Arc::ptr_eq(o, n) || o == n))
        .map(|(i, _)| i)
        .collect();
    Diff {
        remask,
        bits,
        paths: paths.into(),
    }
}

/// Re-resolves the `dirty` paths of `base` (a result for this chain's previous version with
/// the same mask and local values); `None` when none of them changed.
fn patch(
    groups: &[GroupInfo],
    app: &AppInfo,
    chain: &Chain,
    mask: &[u64],
    base: &AppValues,
    dirty: &[usize],
    local: &[(usize, Arc<Value>)],
) -> Option<AppValues> {
    let mut fresh: Vec<(usize, Arc<Value>, bool)> = Vec::new();
    for &i in dirty {
        let (Some(_), Some(layers)) = (app.specs.get(i), chain.by_path.get(i)) else {
            continue;
        };
        let lv = local.iter().find(|(p, _)| *p == i).map(|(_, v)| v);
        let (v, l) = resolve_value(groups, app, chain, mask, i, layers, lv);
        if base.values.get(i) != Some(&v) || base.locked.get(i) != Some(&l) {
            fresh.push((i, v, l));
        }
    }
    if fresh.is_empty() {
        return None;
    }
    let mut out = base.clone();
    for (i, v, l) in fresh {
        if let (Some(slot_v), Some(slot_l)) = (out.values.get_mut(i), out.locked.get_mut(i)) {
            *slot_v = v;
            *slot_l = l;
        }
    }
    Some(out)
}

fn clear_cache(chain: &Chain) {
    chain
        .cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clear();
}
