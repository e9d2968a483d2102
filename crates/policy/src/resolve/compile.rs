//! Compiling the state: schemas, groups, policies and devices are checked (ids, references,
//! limits, every value against its schema) and turned into the indexed records the resolver
//! works on.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::{MAX_GROUP_DEPTH, MAX_PROFILES, Resolver};
use crate::PolicyError;
use crate::condition::{Compiled, Condition, Facts, MAX_CONDITION_DEPTH, MAX_CONDITION_NODES};
use crate::error::SchemaViolation;
use crate::explain::AppValues;
use crate::model::{Device, Group, Policy, PolicyStatus, check_device_id, check_id};
use crate::schema::{AppSchema, SettingSpec};
use crate::value::Value;

/// An application: its setting paths (sorted), their specs and defaults, by path index.
pub(super) struct AppInfo {
    pub(super) id: Arc<str>,
    pub(super) paths: Arc<[String]>,
    pub(super) specs: Vec<SettingSpec>,
    pub(super) index: HashMap<String, usize>,
    pub(super) defaults: Vec<Arc<Value>>,
}

pub(super) struct GroupInfo {
    pub(super) id: String,
    pub(super) parent: Option<usize>,
    pub(super) children: Vec<usize>,
    pub(super) depth: usize,
}

pub(super) struct ProfileRec {
    pub(super) name: String,
    pub(super) enabled: bool,
    pub(super) cond: Arc<Compiled>,
    pub(super) settings: Vec<(usize, Arc<Value>)>,
}

/// A checked policy: its application and group by index, its values by path index.
pub(super) struct PolicyRec {
    pub(super) original: Policy,
    pub(super) app: usize,
    pub(super) group: usize,
    pub(super) settings: Vec<(usize, Arc<Value>, bool)>,
    pub(super) profiles: Vec<ProfileRec>,
}

pub(super) struct DeviceRec {
    pub(super) device: Device,
    pub(super) group: usize,
    /// Shared with the resolver's fact table and with devices that have equal facts.
    pub(super) facts: Arc<Facts>,
    pub(super) local: Vec<Vec<(usize, Arc<Value>)>>,
    /// The device's own results, for the applications it has local values for.
    own: Vec<(usize, Arc<AppValues>)>,
}

impl DeviceRec {
    pub(super) fn own_result(&self, a: usize) -> Option<&Arc<AppValues>> {
        self.own.iter().find(|(x, _)| *x == a).map(|(_, v)| v)
    }

    pub(super) fn set_own(&mut self, a: usize, value: Option<Arc<AppValues>>) {
        self.own.retain(|(x, _)| *x != a);
        if let Some(v) = value {
            self.own.push((a, v));
        }
    }
}

/// The applications, sorted by id, and their index by id.
pub(super) fn compile_apps(
    schemas: &[AppSchema],
) -> Result<(Vec<AppInfo>, HashMap<String, usize>), PolicyError> {
    let mut apps = Vec::new();
    let mut app_index = HashMap::new();
    let mut schemas: Vec<&AppSchema> = schemas.iter().collect();
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
    Ok((apps, app_index))
}

/// The groups, sorted by id for determinism, with their depths (refusing cycles and
/// hierarchies deeper than [`MAX_GROUP_DEPTH`]), and their index by id.
pub(super) fn compile_groups(
    groups: &[Group],
) -> Result<(Vec<GroupInfo>, HashMap<String, usize>), PolicyError> {
    let mut group_list: Vec<&Group> = groups.iter().collect();
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
        let parent = parent_index(&group_index, g)?;
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
    Ok((groups, group_index))
}

/// The index of `path` in the schema of application `app` once `value` is checked against
/// its spec; `origin` and `field` name the object and the field in an error.
fn check_setting(
    info: &AppInfo,
    app: &str,
    origin: &dyn Fn() -> String,
    field: &dyn Fn() -> String,
    path: &str,
    value: &Value,
) -> Result<usize, PolicyError> {
    let i = *info
        .index
        .get(path)
        .ok_or_else(|| PolicyError::UnknownSetting {
            origin: origin(),
            app: app.to_owned(),
            path: path.to_owned(),
            field: field(),
        })?;
    info.specs[i].check(value).map_err(|rule| {
        PolicyError::SchemaViolation(Box::new(SchemaViolation {
            origin: origin(),
            app: app.to_owned(),
            path: path.to_owned(),
            field: field(),
            value: value.to_string(),
            rule,
        }))
    })?;
    Ok(i)
}

/// The profiles of policy `p` of application `info`, checked (at most [`MAX_PROFILES`],
/// unique names, bounded conditions, values against the schema), each with its condition
/// still to be compiled.
fn compile_profiles<'p>(
    info: &AppInfo,
    p: &'p Policy,
) -> Result<(Vec<ProfileRec>, Vec<&'p Condition>), PolicyError> {
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
            let field = || format!("profiles[{n}].settings.{path}");
            let i = check_setting(info, &p.app, &origin, &field, path, v)?;
            ps.push((i, Arc::new(v.clone())));
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
    Ok((profiles, conds))
}

impl Resolver {
    /// Compiles and installs the state's policies, in id order.
    pub(super) fn add_policies(&mut self, policies: &[Policy]) -> Result<(), PolicyError> {
        let mut policies: Vec<&Policy> = policies.iter().collect();
        policies.sort_by(|a, b| a.id.cmp(&b.id));
        for p in policies {
            if self.policies.contains_key(&p.id) {
                return Err(PolicyError::DuplicateId {
                    kind: "policy",
                    id: p.id.clone(),
                });
            }
            let rec = self.compile_policy(p)?;
            self.install_policy(Arc::new(rec));
        }
        Ok(())
    }

    /// Compiles the state's devices and adds them in id order, not yet resolved.
    pub(super) fn add_devices(&mut self, devices: &[Device]) -> Result<(), PolicyError> {
        let mut devices: Vec<&Device> = devices.iter().collect();
        devices.sort_by(|a, b| a.id.cmp(&b.id));
        // Ids first, allocated one after another: a report listing many devices then reads
        // (and counts references in) memory in order.
        let ids: Vec<Arc<str>> = devices.iter().map(|d| Arc::from(d.id.as_str())).collect();
        for (d, id) in devices.into_iter().zip(ids) {
            if self.device_index.contains_key(&d.id) {
                return Err(PolicyError::DuplicateId {
                    kind: "device",
                    id: d.id.clone(),
                });
            }
            let mut rec = self.compile_device(d)?;
            let idx = self.devices.len();
            self.group_devices[rec.group].insert(idx);
            self.device_index.insert(d.id.clone(), idx);
            self.fact_of.push(self.facts.intern(&mut rec.facts));
            self.devices.push(Some(rec));
            self.ids.push(id);
            for row in &mut self.class_of {
                row.push((0, 0));
            }
        }
        Ok(())
    }

    fn compile_policy(&mut self, p: &Policy) -> Result<PolicyRec, PolicyError> {
        self.compile_policy_excluding(p, None)
    }

    /// Checks and compiles policy `p`; `replacing` is the id of the policy it replaces,
    /// which may hold the status `p` takes.
    pub(super) fn compile_policy_excluding(
        &mut self,
        p: &Policy,
        replacing: Option<&str>,
    ) -> Result<PolicyRec, PolicyError> {
        check_id("policy", &p.id)?;
        let who = format!("policy {:?}", p.id);
        let (app, group) = self.policy_place(p, &who, replacing)?;
        let info = &self.apps[app];
        let mut settings = Vec::with_capacity(p.settings.len());
        for (path, s) in &p.settings {
            let field = || format!("settings.{path}");
            let i = check_setting(info, &p.app, &|| who.clone(), &field, path, &s.value)?;
            settings.push((i, Arc::new(s.value.clone()), s.locked));
        }
        settings.sort_by_key(|s| s.0);
        let (mut profiles, conds) = compile_profiles(info, p)?;
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

    /// The application and group of policy `p` (named `who` in errors), refusing a second
    /// active or out-of-office policy for them unless the one there is `replacing`.
    fn policy_place(
        &self,
        p: &Policy,
        who: &str,
        replacing: Option<&str>,
    ) -> Result<(usize, usize), PolicyError> {
        let app = *self
            .app_index
            .get(&p.app)
            .ok_or_else(|| PolicyError::UnknownReference {
                referrer: who.to_owned(),
                kind: "application",
                id: p.app.clone(),
            })?;
        let group =
            *self
                .group_index
                .get(&p.group)
                .ok_or_else(|| PolicyError::UnknownReference {
                    referrer: who.to_owned(),
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
        Ok((app, group))
    }

    /// The policy holding `status` (active or out-of-office) in a group's slot for an app.
    pub(super) fn holder(
        &self,
        group: usize,
        app: usize,
        status: PolicyStatus,
    ) -> Option<&Arc<PolicyRec>> {
        let slot = &self.slots[group][app];
        match status {
            PolicyStatus::Active => slot.active.as_ref(),
            PolicyStatus::OutOfOffice => slot.away_policy.as_ref(),
            PolicyStatus::Inactive => None,
        }
    }

    pub(super) fn install_policy(&mut self, rec: Arc<PolicyRec>) {
        let slot = &mut self.slots[rec.group][rec.app];
        match rec.original.status {
            PolicyStatus::Active => slot.active = Some(rec.clone()),
            PolicyStatus::OutOfOffice => slot.away_policy = Some(rec.clone()),
            PolicyStatus::Inactive => {}
        }
        self.policies.insert(rec.original.id.clone(), rec);
    }

    pub(super) fn uninstall_policy(&mut self, rec: &Arc<PolicyRec>) {
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

    /// Checks and compiles device `d`: its group, its local values against the schemas, and
    /// its facts interned.
    pub(super) fn compile_device(&mut self, d: &Device) -> Result<DeviceRec, PolicyError> {
        check_device_id(&d.id)?;
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
                let field = || format!("local.{app}.{path}");
                let i = check_setting(info, app, &origin, &field, path, v)?;
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
}

/// The index of `g`'s parent group, `None` for a root group.
pub(super) fn parent_index(
    group_index: &HashMap<String, usize>,
    g: &Group,
) -> Result<Option<usize>, PolicyError> {
    g.parent
        .as_ref()
        .map(|p| {
            group_index
                .get(p)
                .copied()
                .ok_or_else(|| PolicyError::UnknownReference {
                    referrer: format!("group {:?}", g.id),
                    kind: "group",
                    id: p.clone(),
                })
        })
        .transpose()
}
