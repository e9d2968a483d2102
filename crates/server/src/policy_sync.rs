//! Sync answered from policies: each device gets the effective settings of every application
//! (from `outpost-policy`) that differ from the versions it holds, and a sync interval that
//! grows with the fleet (from `outpost-election`'s rule).
//!
//! Each application's settings travel as one [`SettingsDocument`]:
//! `{"locked": ["path.a", ...], "values": {<nested settings>}}`. `values` is the policy crate's
//! effective settings for the application; `locked` lists the paths a policy locked, so the
//! agent overlays its local settings only on the other paths. A document's version is the
//! first 8 bytes of its SHA-256, so it changes exactly when the document does.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use outpost_election::SyncIntervalPolicy;
use outpost_policy::{Change, EffectiveSettings, PolicyError, Resolver, State};
use outpost_wire::messages::{AppSettings, ObjectKind, SyncRequest, SyncResponse};
use outpost_wire::settings::SettingsDocument;

use crate::{DeviceContext, ROOT_GROUP, Registry, SyncSource};

/// Places every device enrolled in `registry` in `state`, in its registry group: the registry
/// says which devices exist and where they are; a device the policy state already describes
/// keeps its facts, tags and local values but moves to its registry group. Registry groups the
/// state lacks are added under their registry parent (the registry's root as a root group).
pub fn place_registry_devices(state: &mut State, registry: &Registry) {
    use std::collections::HashSet;
    let mut known: HashSet<String> = state.groups.iter().map(|g| g.id.clone()).collect();
    // Parents first: walk each missing group's ancestors up to one the state knows.
    for id in registry.groups().keys() {
        let mut chain = Vec::new();
        let mut at = Some(id.as_str());
        while let Some(g) = at.filter(|g| !known.contains(*g)) {
            chain.push(g);
            at = registry.groups().get(g).and_then(|g| g.parent.as_deref());
        }
        for g in chain.into_iter().rev() {
            let parent = registry.groups().get(g).and_then(|x| x.parent.clone());
            state.groups.push(match parent {
                Some(p) if g != ROOT_GROUP => outpost_policy::Group::child(g, p),
                _ => outpost_policy::Group::root(g),
            });
            known.insert(g.to_string());
        }
    }
    let listed: std::collections::HashMap<String, usize> = state
        .devices
        .iter()
        .enumerate()
        .map(|(i, d)| (d.id.clone(), i))
        .collect();
    for (id, d) in registry.devices() {
        match listed.get(id) {
            Some(&i) => state.devices[i].group = d.group.clone(),
            None => state
                .devices
                .push(outpost_policy::Device::new(id.clone(), d.group.clone())),
        }
    }
}

/// A [`SyncSource`] backed by a policy [`Resolver`].
pub struct PolicySync {
    resolver: RwLock<Resolver>,
    interval: SyncIntervalPolicy,
}

/// One application's settings document and its version.
pub fn settings_document(settings: &EffectiveSettings, app: &str) -> Option<(u64, Bytes)> {
    let values = settings.app_json(app)?;
    let locked = settings
        .iter(app)
        .filter(|(_, _, locked)| *locked)
        .map(|(p, _, _)| p.to_owned())
        .collect();
    let bytes = SettingsDocument::new(values, locked).to_vec();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
    let mut v = [0u8; 8];
    v.copy_from_slice(&digest.as_ref()[..8]);
    Some((u64::from_be_bytes(v), Bytes::from(bytes)))
}

impl PolicySync {
    /// A source over `resolver`, handing out sync intervals by `interval`.
    pub fn new(resolver: Resolver, interval: SyncIntervalPolicy) -> Self {
        PolicySync {
            resolver: RwLock::new(resolver),
            interval,
        }
    }

    /// Applies an administrator's change and returns the devices whose effective settings
    /// changed, sorted by id: push "sync now" to exactly these. The ids are shared with the
    /// resolver, so a change that touches the whole fleet allocates no string per device.
    pub fn apply(&self, change: Change) -> Result<Vec<Arc<str>>, PolicyError> {
        let mut r = self.resolver.write().unwrap_or_else(|e| e.into_inner());
        Ok(r.apply(change)?.changed)
    }

    /// Places a newly enrolled device in `group`: added if the policies do not know it yet,
    /// moved to `group` (keeping its facts) if they do.
    pub fn place(&self, device: &str, group: &str) -> Result<(), PolicyError> {
        let mut r = self.resolver.write().unwrap_or_else(|e| e.into_inner());
        let change = if r.knows(device) {
            Change::MoveDevice {
                device: device.into(),
                group: group.into(),
            }
        } else {
            Change::UpsertDevice(outpost_policy::Device::new(device, group))
        };
        r.apply(change).map(drop)
    }

    /// Adds a new group under `parent` (nothing to do if the policies have it already).
    pub fn add_group(&self, group: &str, parent: &str) -> Result<(), PolicyError> {
        let mut r = self.resolver.write().unwrap_or_else(|e| e.into_inner());
        match r.apply(Change::AddGroup(outpost_policy::Group::child(
            group, parent,
        ))) {
            Err(PolicyError::DuplicateId { kind: "group", .. }) => Ok(()),
            other => other.map(drop),
        }
    }

    /// Moves `group` under `parent`; returns the devices whose settings changed.
    pub fn move_group(&self, group: &str, parent: &str) -> Result<Vec<Arc<str>>, PolicyError> {
        self.apply(Change::MoveGroup {
            group: group.into(),
            parent: parent.into(),
        })
    }

    /// Forgets a removed device (nothing to do if the policies do not know it).
    pub fn remove(&self, device: &str) -> Result<(), PolicyError> {
        let mut r = self.resolver.write().unwrap_or_else(|e| e.into_inner());
        if !r.knows(device) {
            return Ok(());
        }
        r.apply(Change::RemoveDevice(device.into())).map(drop)
    }

    /// The policy `id` as the resolver holds it.
    pub fn policy(&self, id: &str) -> Option<outpost_policy::Policy> {
        self.read().policy(id).cloned()
    }

    /// Sets a policy's status. Returns the policy made inactive in the same step (the one
    /// that held `status` for the same application and group), and the devices whose
    /// effective settings changed.
    pub fn set_status(
        &self,
        policy: &str,
        status: outpost_policy::PolicyStatus,
    ) -> Result<(Option<String>, Vec<Arc<str>>), PolicyError> {
        let mut r = self.resolver.write().unwrap_or_else(|e| e.into_inner());
        let displaced = r.status_holder(policy, status).map(str::to_owned);
        let changed = r
            .apply(Change::SetPolicyStatus {
                policy: policy.into(),
                status,
            })?
            .changed;
        Ok((displaced, changed))
    }

    /// Explains every effective value of a device, or those of one application (and one
    /// setting path), in application and path order.
    pub fn explain(
        &self,
        device: &str,
        app: Option<&str>,
        path: Option<&str>,
    ) -> Result<Vec<outpost_policy::Explanation>, PolicyError> {
        let r = self.read();
        let settings = r.effective(device)?;
        let mut apps: Vec<&str> = match app {
            Some(a) if !settings.apps().any(|x| x == a) => {
                return Err(PolicyError::UnknownReference {
                    referrer: format!("explain for device {device:?}"),
                    kind: "application",
                    id: a.to_owned(),
                });
            }
            Some(a) => vec![a],
            None => settings.apps().collect(),
        };
        apps.sort_unstable();
        let mut out = Vec::new();
        for a in apps {
            match path {
                Some(p) => out.push(r.explain(device, a, p)?),
                None => {
                    for (p, _, _) in settings.iter(a) {
                        out.push(r.explain(device, a, p)?);
                    }
                }
            }
        }
        Ok(out)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Resolver> {
        self.resolver.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The effective settings of a device, if the policies know it.
    pub fn effective(&self, device: &str) -> Option<EffectiveSettings> {
        self.read().effective(device).ok()
    }
}

impl SyncSource for PolicySync {
    fn sync(&self, device: &DeviceContext, req: &SyncRequest) -> SyncResponse {
        let next = self.interval.interval(device.fleet_size).as_secs();
        let mut resp = SyncResponse {
            next_sync_secs: u32::try_from(next).unwrap_or(u32::MAX),
            ..Default::default()
        };
        let held: HashMap<&str, u64> = req
            .held
            .iter()
            .filter(|h| h.kind == ObjectKind::Settings as i32)
            .map(|h| (h.id.as_str(), h.version))
            .collect();
        let Some(settings) = self.effective(&device.device_id) else {
            // Every enrolled device is placed in the resolver (at start from the registry, at
            // enrollment as it happens), so this is a server fault, not a reason for the device
            // to drop its security settings: it keeps what it holds.
            tracing::error!(
                device = %device.device_id,
                group = ?device.group,
                "enrolled but unknown to the policies: its settings are left as they are"
            );
            return resp;
        };
        let mut apps: Vec<&str> = settings.apps().collect();
        apps.sort_unstable();
        for app in &apps {
            if let Some((version, json)) = settings_document(&settings, app)
                && held.get(app) != Some(&version)
            {
                resp.settings.push(AppSettings {
                    application: app.to_string(),
                    version,
                    json,
                });
            }
        }
        let mut removed: Vec<String> = held
            .keys()
            .filter(|a| !apps.contains(a))
            .map(|a| a.to_string())
            .collect();
        removed.sort();
        resp.removed_settings = removed;
        resp
    }
}
