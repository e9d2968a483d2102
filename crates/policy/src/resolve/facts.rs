//! Distinct device facts, and the re-evaluation of changed profiles once per distinct set.

use std::collections::HashMap;
use std::sync::Arc;

use super::chain::ProfileSet;
use super::compile::DeviceRec;
use super::mask::{Fast, Mask};
use crate::condition::{Compiled, Facts};

/// `fact_of` entry of an index that holds no device.
pub(super) const NO_FACTS: u32 = u32::MAX;

/// Distinct device facts with reference counts, so that work that depends only on a
/// device's facts (evaluating a changed profile condition) is done once per distinct set.
#[derive(Default)]
pub(super) struct FactTable {
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
    pub(super) fn intern(&mut self, facts: &mut Arc<Facts>) -> u32 {
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
    pub(super) fn release(&mut self, id: u32) {
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
pub(super) struct MoverMemo {
    pub(super) entries: Vec<MemoEntry>,
    /// Entry position by (profile set, re-evaluated profile list) address: both are held
    /// alive by the chains for the whole edit.
    pub(super) by_addr: HashMap<(usize, usize), usize, Fast>,
}

pub(super) struct MemoEntry {
    n_profiles: usize,
    /// (profile position, condition when enabled).
    key: Vec<(usize, Option<Arc<Compiled>>)>,
    /// Per fact entry: index into `patterns`, or `NO_FACTS` when not evaluated yet.
    pub(super) pattern_of: Vec<u32>,
    /// Distinct results: the re-evaluated profiles that hold, as a mask.
    pub(super) patterns: Vec<Mask>,
    pattern_index: HashMap<Mask, u32, Fast>,
    /// When every fact entry is filled in (conditions on tags only): the pattern of devices
    /// with none of the tags read, and, by group, the devices with another pattern.
    pub(super) none: Option<u32>,
    pub(super) special: HashMap<usize, Vec<u32>, Fast>,
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
    pub(super) fn pattern(&mut self, f: u32, facts: &FactTable) -> Option<u32> {
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
    pub(super) fn entry(
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
