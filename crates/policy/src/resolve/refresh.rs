//! Refreshing a subtree after a policy change: old and new chains are compared, each class
//! is re-resolved once on the paths that changed, and only the devices whose set of active
//! profiles changed are visited one by one.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};

use super::Resolver;
use super::chain::Chain;
use super::classes::OWN_RESULT;
use super::eval::patch;
use super::facts::MoverMemo;
use super::incremental::Changed;
use super::mask::{Fast, Mask};
use crate::explain::AppValues;

/// What one refresh found and what it must keep alive until its report is built.
#[derive(Default)]
struct Refresh {
    /// Changed devices as a bit set over device indices: sorted and free of duplicates by
    /// construction.
    changed_bits: Vec<u64>,
    resolved: usize,
    /// Results compared once per (old, new) pair; `kept` holds old results alive so that
    /// their addresses stay unique while the memo is in use.
    same: HashMap<(usize, usize), bool, Fast>,
    kept: Vec<Arc<AppValues>>,
    /// New own results of devices with local values, set once a class is patched.
    owned_updates: Vec<(usize, Arc<AppValues>)>,
    old_chains: Vec<(Arc<Chain>, Option<Arc<Chain>>)>,
    memo: MoverMemo,
}

impl Refresh {
    fn new(devices: usize) -> Refresh {
        Refresh {
            changed_bits: vec![0u64; devices.div_ceil(64)],
            ..Refresh::default()
        }
    }

    fn mark(&mut self, i: usize) {
        if let Some(w) = self.changed_bits.get_mut(i / 64) {
            *w |= 1u64 << (i % 64);
        }
    }

    /// Whether `new` equals `old` (compared once per pair); `old` is kept alive.
    fn unchanged(&mut self, old: Arc<AppValues>, new: &Arc<AppValues>) -> bool {
        let key = (Arc::as_ptr(&old) as usize, Arc::as_ptr(new) as usize);
        let equal = *self
            .same
            .entry(key)
            .or_insert_with(|| Arc::ptr_eq(&old, new) || *old == **new);
        self.kept.push(old);
        equal
    }

    fn into_changed(self) -> Changed {
        let mut idx = Vec::new();
        for (k, &w) in self.changed_bits.iter().enumerate() {
            let mut w = w;
            while w != 0 {
                idx.push(k * 64 + w.trailing_zeros() as usize);
                w &= w - 1;
            }
        }
        Changed {
            idx,
            resolved: self.resolved,
            garbage: (self.kept, self.old_chains),
        }
    }
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

/// [`Diff`]s by the addresses of the old and new chains.
type ChainDiffs = HashMap<(usize, usize), Diff, Fast>;

impl Resolver {
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
    pub(super) fn refresh_subtrees(&mut self, targets: &[(usize, usize)]) -> Changed {
        let mut run = Refresh::new(self.devices.len());
        for &(g, a) in targets {
            // Entry addresses are only known to stay unique within one target.
            run.memo.by_addr.clear();
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
            let mut diffs = ChainDiffs::default();
            // Per (old, new) profile set: whether masks may differ and which profiles to
            // re-evaluate (chains below a group without profiles share its sets).
            let mut set_diffs = SetDiffs::default();
            for (k, &sub) in order.iter().enumerate() {
                run.resolved += self.group_devices[sub].len();
                let (office, away) = self.group_diffs(sub, a, &old[k], &mut diffs, &mut set_diffs);
                self.refresh_group(sub, a, &office, &away, &mut run);
            }
            run.old_chains.append(&mut old);
        }
        run.into_changed()
    }

    /// How group `sub`'s office and out-of-office chains for application `a` differ from
    /// `old` (its chains before the edit); each pair of chains is compared once.
    fn group_diffs(
        &self,
        sub: usize,
        a: usize,
        old: &(Arc<Chain>, Option<Arc<Chain>>),
        diffs: &mut ChainDiffs,
        set_diffs: &mut SetDiffs,
    ) -> (Diff, Diff) {
        let (old_office, old_away) = old;
        let mut diff = |off_net: bool| {
            let o = match (old_away, off_net) {
                (Some(away), true) => away,
                _ => old_office,
            };
            let n = self.slots[sub][a].chain(off_net);
            let key = (Arc::as_ptr(o) as usize, Arc::as_ptr(n) as usize);
            match diffs.get(&key) {
                Some(d) => d.clone(),
                None => {
                    let d = chain_diff(o, n, set_diffs);
                    diffs.insert(key, d.clone());
                    d
                }
            }
        };
        let office = diff(false);
        let away = diff(true);
        (office, away)
    }

    /// Brings the classes and devices of group `sub` up to date for application `a` under
    /// its new chains, which differ from the old ones by `office` and `away`.
    fn refresh_group(
        &mut self,
        sub: usize,
        a: usize,
        office: &Diff,
        away: &Diff,
        run: &mut Refresh,
    ) {
        // Devices whose active profiles changed leave their class first; they are
        // re-resolved one by one once the classes are up to date.
        let mut movers: Vec<(usize, Arc<AppValues>)> = Vec::new();
        if office.remask || away.remask {
            for (i, old_result) in self.find_movers(sub, a, office, away, &mut run.memo) {
                movers.push((i, old_result));
                self.unassign(i, a);
            }
        }
        for c in 0..self.slots[sub][a].classes.len() {
            let class = &self.slots[sub][a].classes[c];
            let dirty = if class.off_net {
                &away.paths
            } else {
                &office.paths
            };
            if class.is_free() || dirty.is_empty() {
                continue;
            }
            self.refresh_class(sub, a, c, dirty, run);
        }
        for (i, old_result) in movers {
            self.assign(i, a);
            let Some(d) = self.devices[i].as_ref() else {
                continue;
            };
            let new = self.result_of(d, i, a);
            if !run.unchanged(old_result, new) {
                run.mark(i);
            }
        }
    }

    /// Re-resolves class `c` of group `sub` for application `a` on its `dirty` paths: its
    /// shared result (marking its plain members when that changed) and the own results of
    /// its members with local values.
    fn refresh_class(
        &mut self,
        sub: usize,
        a: usize,
        c: usize,
        dirty: &[usize],
        run: &mut Refresh,
    ) {
        let class = &self.slots[sub][a].classes[c];
        let chain = self.slots[sub][a].chain(class.off_net).clone();
        let old_result = class.result.clone();
        let new = if !class.plain.is_empty() {
            let new = self.patched_shared(a, &chain, &class.mask, &old_result, dirty);
            if !run.unchanged(old_result, &new) {
                for &i in &class.plain {
                    run.mark(i as usize);
                }
            }
            new
        } else {
            // Only devices with their own results: the shared result is recomputed when a
            // plain device joins.
            let v = self.shared_result(sub, a, class.off_net, &class.mask);
            run.kept.push(old_result);
            v
        };
        self.slots[sub][a].classes[c].result = new;
        self.patch_owned(sub, a, c, &chain, dirty, run);
    }

    /// The shared result under `chain` (new after an edit) of the class of application `a`
    /// with `mask`: memoised on the chain, else `old` patched on the `dirty` paths.
    fn patched_shared(
        &self,
        a: usize,
        chain: &Chain,
        mask: &Mask,
        old: &Arc<AppValues>,
        dirty: &[usize],
    ) -> Arc<AppValues> {
        let cached = chain
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(mask)
            .cloned();
        if let Some(v) = cached {
            return v;
        }
        let v = match patch(
            &self.groups,
            &self.apps[a],
            chain,
            mask.words(),
            old,
            dirty,
            &[],
        ) {
            Some(v) => Arc::new(v),
            None => old.clone(),
        };
        chain
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(mask.clone(), v.clone());
        v
    }

    /// Patches the own results of the members with local values of class `c` (of group
    /// `sub`, application `a`) on the `dirty` paths, marking the devices whose result changed.
    fn patch_owned(
        &mut self,
        sub: usize,
        a: usize,
        c: usize,
        chain: &Chain,
        dirty: &[usize],
        run: &mut Refresh,
    ) {
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
                chain,
                class.mask.words(),
                own,
                dirty,
                &d.local[a],
            ) {
                run.mark(i);
                run.owned_updates.push((i, Arc::new(v)));
            }
        }
        for (i, v) in run.owned_updates.drain(..) {
            if let Some(d) = self.devices[i].as_mut() {
                d.set_own(a, Some(v));
            }
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
