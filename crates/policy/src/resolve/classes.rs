//! Classes: the devices of one group that resolve one application identically share one
//! result; a device is placed in its class, or taken out of it, one application at a time.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};

use super::Resolver;
use super::chain::{Chain, clear_cache, empty_chain, profile_mask};
use super::compile::{DeviceRec, PolicyRec};
use super::eval::resolve_app;
use super::facts::NO_FACTS;
use super::mask::{Fast, Mask};
use crate::explain::AppValues;

/// The devices of one group that resolve one application identically: same mode (on or off
/// the corporate network) and same active profiles. They share one result.
pub(super) struct Class {
    pub(super) off_net: bool,
    pub(super) mask: Mask,
    pub(super) result: Arc<AppValues>,
    /// Devices that use `result`.
    pub(super) plain: Vec<u32>,
    /// Devices with local values for the application: each has its own result.
    pub(super) owned: Vec<u32>,
}

impl Class {
    pub(super) fn is_free(&self) -> bool {
        self.plain.is_empty() && self.owned.is_empty()
    }
}

/// One group's state for one application: the policies that hold a status there, the
/// chains its devices use, and its classes.
pub(super) struct Slot {
    pub(super) active: Option<Arc<PolicyRec>>,
    pub(super) away_policy: Option<Arc<PolicyRec>>,
    pub(super) office: Arc<Chain>,
    pub(super) away: Option<Arc<Chain>>,
    pub(super) classes: Vec<Class>,
    class_index: HashMap<(bool, Mask), u32, Fast>,
    free: Vec<u32>,
}

impl Slot {
    pub(super) fn new(n_paths: usize) -> Slot {
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
    pub(super) fn chain(&self, off_net: bool) -> &Arc<Chain> {
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
pub(super) const OWN_RESULT: u32 = 1 << 31;

impl Resolver {
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

    /// The device's current result for one application.
    pub(super) fn result_of<'a>(
        &'a self,
        d: &'a DeviceRec,
        i: usize,
        a: usize,
    ) -> &'a Arc<AppValues> {
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
    pub(super) fn detach_device(&mut self, i: usize) -> Option<Vec<Arc<AppValues>>> {
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
    pub(super) fn shared_result(
        &self,
        g: usize,
        a: usize,
        off_net: bool,
        mask: &Mask,
    ) -> Arc<AppValues> {
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
    pub(super) fn assign(&mut self, i: usize, a: usize) {
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
    pub(super) fn unassign(&mut self, i: usize, a: usize) {
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
}
