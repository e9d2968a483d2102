//! The resolver: validation, policy chains, per-path resolution and incremental changes.
//!
//! - [`compile`]: the state checked and compiled into indexed records (applications, groups,
//!   policies, devices);
//! - [`chain`]: per group and application, the policies that apply, profiles merged and
//!   values layered per path;
//! - [`eval`]: the one resolution rule for one setting, with or without an explanation;
//! - [`classes`]: devices that resolve an application identically share one result;
//! - [`facts`]: distinct device facts, and changed profiles evaluated once per distinct set;
//! - [`incremental`]: changes, applied and reported as the devices that changed;
//! - [`refresh`]: after a policy change, only what it touched is re-resolved;
//! - [`mask`]: sets of active profiles as bit masks.

mod chain;
mod classes;
mod compile;
mod eval;
mod facts;
mod incremental;
mod mask;
mod refresh;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

pub use incremental::{Change, ChangeReport};

use self::chain::profile_mask;
use self::classes::Slot;
use self::compile::{AppInfo, DeviceRec, GroupInfo, PolicyRec, compile_apps, compile_groups};
use self::eval::explain_value;
use self::facts::FactTable;
use crate::PolicyError;
use crate::condition::Interner;
use crate::explain::{AppEffective, EffectiveSettings, Explanation};
use crate::model::{Policy, PolicyStatus, State};

/// Deepest group hierarchy accepted (a root group has depth 1).
pub const MAX_GROUP_DEPTH: usize = 32;
/// Most profiles in one policy.
pub const MAX_PROFILES: usize = 100;

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
    /// `slots[group][app]`
    slots: Vec<Vec<Slot>>,
    devices: Vec<Option<DeviceRec>>,
    device_index: HashMap<String, usize>,
    group_devices: Vec<BTreeSet<usize>>,
    /// `class_of[app][device]`: the device's class in its group's slot (`| OWN_RESULT` when
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
        let (apps, app_index) = compile_apps(&state.schemas)?;
        let (groups, group_index) = compile_groups(&state.groups)?;
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
        r.add_policies(&state.policies)?;
        for g in r.topo_order(None) {
            for a in 0..r.apps.len() {
                r.rebuild_slot(g, a);
            }
        }
        r.add_devices(&state.devices)?;
        r.resolve_all();
        Ok(r)
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
        let (value, locked, source, candidates) =
            explain_value(&self.groups, info, chain, mask.words(), p, local);
        Ok(Explanation {
            device: d.device.id.clone(),
            app: app.to_owned(),
            path: path.to_owned(),
            value: Arc::unwrap_or_clone(value),
            locked,
            source,
            candidates,
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
}
