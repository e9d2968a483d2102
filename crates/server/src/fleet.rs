//! The sync source a full server uses: settings from policies, distribution point roles and
//! serving DPs from the election, and the updates a device does not hold yet.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::Instant;

use outpost_election::SyncIntervalPolicy;
use outpost_wire::messages::{ObjectKind, SyncRequest, SyncResponse, UpdateAnnouncement};

use crate::{DeviceContext, DpCoordinator, PolicySync, SyncSource};

/// Settings, DP assignments and update announcements in one answer.
pub struct FleetSync {
    policy: Option<PolicySync>,
    dps: Option<Mutex<DpCoordinator>>,
    updates: RwLock<Vec<UpdateAnnouncement>>,
    /// The update versions each device said it holds at its last sync (since the start).
    holders: Mutex<HashMap<String, Vec<(String, u64)>>>,
    interval: SyncIntervalPolicy,
}

impl FleetSync {
    /// A source from its parts; either may be absent.
    pub fn new(
        policy: Option<PolicySync>,
        dps: Option<DpCoordinator>,
        interval: SyncIntervalPolicy,
    ) -> Self {
        FleetSync {
            policy,
            dps: dps.map(Mutex::new),
            updates: RwLock::new(Vec::new()),
            holders: Mutex::new(HashMap::new()),
            interval,
        }
    }

    /// Announces an update to every device that does not hold this version of it.
    pub fn publish_update(&self, a: UpdateAnnouncement) {
        let mut u = self.updates.write().unwrap_or_else(|e| e.into_inner());
        u.retain(|x| x.object_id != a.object_id);
        u.push(a);
    }

    /// How many devices hold update `object_id`: at `version`, and at any version (as they
    /// said at their last sync since the server started).
    pub fn holders(&self, object_id: &str, version: u64) -> (usize, usize) {
        let holders = self.holders.lock().unwrap_or_else(|e| e.into_inner());
        let mut exact = 0;
        let mut any = 0;
        for held in holders.values() {
            if let Some((_, v)) = held.iter().find(|(id, _)| id == object_id) {
                any += 1;
                exact += usize::from(*v == version);
            }
        }
        (exact, any)
    }

    /// The policies, to apply changes (and learn whom to push).
    pub fn policy(&self) -> Option<&PolicySync> {
        self.policy.as_ref()
    }

    /// Runs `f` on the DP coordinator.
    pub fn with_dps<T>(&self, f: impl FnOnce(&mut DpCoordinator) -> T) -> Option<T> {
        let dps = self.dps.as_ref()?;
        Some(f(&mut dps.lock().unwrap_or_else(|e| e.into_inner())))
    }
}

impl SyncSource for FleetSync {
    fn sync(&self, device: &DeviceContext, req: &SyncRequest) -> SyncResponse {
        let mut resp = match &self.policy {
            Some(p) => p.sync(device, req),
            None => SyncResponse {
                next_sync_secs: u32::try_from(self.interval.interval(device.fleet_size).as_secs())
                    .unwrap_or(u32::MAX),
                ..Default::default()
            },
        };
        if let Some((a, heartbeat)) = self.with_dps(|c| {
            let a = c.on_sync(&device.device_id, req, Instant::now());
            let hb = c.election().config().heartbeat_interval_secs;
            (a, c.is_dp(&device.device_id).then_some(hb))
        }) {
            resp.assignments = a;
            // A DP's sync is its heartbeat: it comes at the heartbeat interval.
            if let Some(hb) = heartbeat {
                resp.next_sync_secs = u32::try_from(hb.max(1)).unwrap_or(u32::MAX);
            }
        }
        let updates_held: Vec<(String, u64)> = req
            .held
            .iter()
            .filter(|h| h.kind == ObjectKind::Update as i32)
            .take(1024)
            .map(|h| (h.id.clone(), h.version))
            .collect();
        {
            // On every sync: most devices hold no update, and leave no entry.
            let mut holders = self.holders.lock().unwrap_or_else(|e| e.into_inner());
            if updates_held.is_empty() {
                holders.remove(&device.device_id);
            } else if holders.get(&device.device_id) != Some(&updates_held) {
                holders.insert(device.device_id.clone(), updates_held);
            }
        }
        let held = |u: &UpdateAnnouncement| {
            req.held.iter().any(|h| {
                h.kind == ObjectKind::Update as i32 && h.id == u.object_id && h.version == u.version
            })
        };
        resp.updates = self
            .updates
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|u| !held(u))
            .cloned()
            .collect();
        resp
    }

    fn tick(&self, now: Instant) -> Vec<String> {
        self.with_dps(|c| c.tick(now)).unwrap_or_default()
    }

    fn on_group_added(&self, group: &str, parent: &str) {
        if let Some(p) = &self.policy
            && let Err(e) = p.add_group(group, parent)
        {
            tracing::error!("policies do not take group {group:?} under {parent:?}: {e}");
        }
        if let Some(Err(e)) = self.with_dps(|c| c.add_group(group, parent)) {
            tracing::error!("distribution points do not take group {group:?}: {e}");
        }
    }

    fn on_group_moved(&self, group: &str, parent: &str) -> Vec<std::sync::Arc<str>> {
        if let Some(Err(e)) = self.with_dps(|c| c.move_group(group, parent)) {
            tracing::error!(
                "distribution points do not move group {group:?} under {parent:?}: {e}"
            );
        }
        match &self.policy {
            Some(p) => p.move_group(group, parent).unwrap_or_else(|e| {
                tracing::error!("policies do not move group {group:?} under {parent:?}: {e}");
                Vec::new()
            }),
            None => Vec::new(),
        }
    }

    fn on_removed(&self, device: &str) {
        if let Some(p) = &self.policy
            && let Err(e) = p.remove(device)
        {
            tracing::warn!("policies do not let device {device:?} go: {e}");
        }
        self.with_dps(|c| c.remove(device));
        self.holders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(device);
    }

    fn on_enrolled(&self, device: &str, group: &str) {
        if let Some(p) = &self.policy
            && let Err(e) = p.place(device, group)
        {
            tracing::error!("policies do not take device {device:?} in group {group:?}: {e}");
        }
        if let Some(Err(e)) = self.with_dps(|c| c.place(device, group)) {
            tracing::warn!("distribution points do not take device {device:?}: {e}");
        }
    }
}
