//! Changes to the state: each is validated first (no change on error), applied, and
//! reported as the devices whose effective settings changed.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::chain::Chain;
use super::classes::Slot;
use super::compile::GroupInfo;
use super::facts::NO_FACTS;
use super::{MAX_GROUP_DEPTH, Resolver};
use crate::PolicyError;
use crate::explain::AppValues;
use crate::model::{Device, Group, Policy, PolicyStatus, check_id};

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
pub(super) struct Changed {
    pub(super) idx: Vec<usize>,
    pub(super) resolved: usize,
    /// Replaced results and chains, freed after the report is built (their memory is then
    /// not in the way of the report's allocations).
    pub(super) garbage: Garbage,
}

/// Replaced results and chains (office, out-of-office), held until the report is built.
pub(super) type Garbage = (Vec<Arc<AppValues>>, Vec<(Arc<Chain>, Option<Arc<Chain>>)>);

impl Resolver {
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
            Change::UpsertPolicy(p) => self.upsert_policy(p),
            Change::SetPolicyStatus { policy, status } => self.set_policy_status(policy, status),
            Change::RemovePolicy(id) => self.remove_policy(id),
            Change::UpsertDevice(d) => self.upsert_device(d),
            Change::RemoveDevice(id) => self.remove_device(id),
            Change::MoveDevice { device, group } => {
                let mut d = self.device(&device)?.device.clone();
                d.group = group;
                self.upsert_device(d)
            }
            Change::AddTag { device, tag } => {
                let mut d = self.device(&device)?.device.clone();
                d.tags.insert(tag);
                self.upsert_device(d)
            }
            Change::RemoveTag { device, tag } => {
                let mut d = self.device(&device)?.device.clone();
                d.tags.remove(&tag);
                self.upsert_device(d)
            }
            Change::AddGroup(g) => self.add_group(g),
            Change::MoveGroup { group, parent } => self.move_group(group, parent),
        }
    }

    fn upsert_policy(&mut self, p: Policy) -> Result<Changed, PolicyError> {
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

    fn set_policy_status(
        &mut self,
        policy: String,
        status: PolicyStatus,
    ) -> Result<Changed, PolicyError> {
        let old =
            self.policies
                .get(&policy)
                .cloned()
                .ok_or_else(|| PolicyError::UnknownReference {
                    referrer: "set-policy-status change".into(),
                    kind: "policy",
                    id: policy.clone(),
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

    fn remove_policy(&mut self, id: String) -> Result<Changed, PolicyError> {
        let old = self
            .policies
            .get(&id)
            .cloned()
            .ok_or_else(|| PolicyError::UnknownReference {
                referrer: "remove-policy change".into(),
                kind: "policy",
                id: id.clone(),
            })?;
        self.uninstall_policy(&old);
        Ok(self.refresh_subtrees(&[(old.group, old.app)]))
    }

    fn upsert_device(&mut self, d: Device) -> Result<Changed, PolicyError> {
        let mut rec = self.compile_device(&d)?;
        let idx = match self.device_index.get(&d.id) {
            Some(&i) => i,
            None => self.new_device_index(&d.id),
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

    /// A new, empty device index for the device with `id`.
    fn new_device_index(&mut self, id: &str) -> usize {
        let idx = self.devices.len();
        if self.ids.last().is_some_and(|last| **last > *id) {
            self.ids_sorted = false;
        }
        self.devices.push(None);
        self.fact_of.push(NO_FACTS);
        self.ids.push(Arc::from(id));
        for row in &mut self.class_of {
            row.push((0, 0));
        }
        self.device_index.insert(id.to_owned(), idx);
        idx
    }

    fn remove_device(&mut self, id: String) -> Result<Changed, PolicyError> {
        let idx = self.device_idx(&id)?;
        self.detach_device(idx);
        self.device_index.remove(&id);
        Ok(Changed::default())
    }

    fn add_group(&mut self, g: Group) -> Result<Changed, PolicyError> {
        check_id("group", &g.id)?;
        if self.group_index.contains_key(&g.id) {
            return Err(PolicyError::DuplicateId {
                kind: "group",
                id: g.id.clone(),
            });
        }
        let parent = super::compile::parent_index(&self.group_index, &g)?;
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

    fn move_group(&mut self, group: String, parent: String) -> Result<Changed, PolicyError> {
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
}
