//! Policy chains: the policies that apply to a group for one application, with their
//! profiles merged and their values layered per path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::Resolver;
use super::compile::{DeviceRec, PolicyRec};
use super::mask::{Fast, Mask};
use crate::condition::{Compiled, Facts};
use crate::explain::AppValues;
use crate::value::Value;

/// A profile after merging same-named profiles along a chain.
pub(super) struct MergedProfile {
    pub(super) name: String,
    pub(super) enabled: bool,
    pub(super) cond: Arc<Compiled>,
}

#[derive(Default, PartialEq)]
pub(super) struct PathLayers {
    /// (level, value, locked), root-most first.
    pub(super) policy: Vec<(usize, Arc<Value>, bool)>,
    /// (merged profile index, level, value), by priority then level.
    pub(super) profile: Vec<(usize, usize, Arc<Value>)>,
}

/// The policies that apply to one group for one application in one mode, merged.
///
/// A chain whose policy adds no profiles shares its parent's profile set, and every path its
/// policy does not set shares the parent's layers, so building a subgroup's chain costs in
/// proportion to its own policy.
pub(super) struct Chain {
    pub(super) levels: Vec<Arc<PolicyRec>>,
    forced: bool,
    pub(super) set: Arc<ProfileSet>,
    pub(super) by_path: Vec<Arc<PathLayers>>,
    pub(super) cache: Mutex<HashMap<Mask, Arc<AppValues>, Fast>>,
}

/// A chain's merged profiles, in priority order.
#[derive(Default)]
pub(super) struct ProfileSet {
    pub(super) profiles: Vec<MergedProfile>,
    /// Enabled profiles whose condition is "has any of these tags", by tag id.
    tag_index: HashMap<u32, Vec<usize>, Fast>,
    /// Enabled profiles with any other condition.
    general: Vec<usize>,
}

impl Chain {
    /// Whether devices' active-profile masks computed against `self` hold for `other`.
    pub(super) fn same_masks(&self, other: &Chain) -> bool {
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

pub(super) fn empty_chain(n_paths: usize) -> Arc<Chain> {
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
        return extend_parent(p, own, levels, forced);
    }
    let (by_path, profiles) = layer_levels(&levels, n_paths);
    Arc::new(Chain {
        levels,
        forced,
        set: Arc::new(index_profiles(profiles)),
        by_path: by_path.into_iter().map(Arc::new).collect(),
        cache: Mutex::new(HashMap::default()),
    })
}

/// The parent's chain plus one level without profiles (`levels`, ending with `own`): shares
/// the profile set and the layers of every path this policy does not set.
fn extend_parent(
    p: &Chain,
    own: &PolicyRec,
    levels: Vec<Arc<PolicyRec>>,
    forced: bool,
) -> Arc<Chain> {
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
    Arc::new(Chain {
        levels,
        forced,
        set: p.set.clone(),
        by_path,
        cache: Mutex::new(HashMap::default()),
    })
}

/// Every level's policy values and profile values layered per path, and the profiles of the
/// levels merged by name (root policy first, each policy's in its own order).
fn layer_levels(
    levels: &[Arc<PolicyRec>],
    n_paths: usize,
) -> (Vec<PathLayers>, Vec<MergedProfile>) {
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
    (by_path, profiles)
}

/// The profile set of merged `profiles`, with the enabled single-tag conditions indexed by
/// tag.
fn index_profiles(profiles: Vec<MergedProfile>) -> ProfileSet {
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
    ProfileSet {
        profiles,
        tag_index,
        general,
    }
}

/// The profiles of `chain` active for a device with `facts`.
pub(super) fn profile_mask(chain: &Chain, facts: &Facts) -> Mask {
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

pub(super) fn clear_cache(chain: &Chain) {
    chain
        .cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clear();
}

impl Resolver {
    /// Rebuilds a group's chains for one application from its parent's office chain.
    pub(super) fn rebuild_slot(&mut self, g: usize, a: usize) {
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

    /// The chain a device uses for application `app` (its group's out-of-office chain when
    /// it is off the corporate network and the group has one).
    pub(super) fn chain_for(&self, d: &DeviceRec, app: usize) -> &Chain {
        let slot = &self.slots[d.group][app];
        match (&slot.away, d.device.on_corporate_network) {
            (Some(away), false) => away,
            _ => &slot.office,
        }
    }
}
