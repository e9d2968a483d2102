//! Distribution points on the server: the bridge between the registry (string ids) and the
//! election engine (`outpost-election`, numeric ids), fed by the agents' syncs.
//!
//! A DP's sync carries its health (free disk, uptime, load) in `SyncRequest.dp_status`; each
//! sync is a heartbeat, followed by a decision round at the time passed in. The answer carries
//! the device's own roles (one [`DpAssignment`] per scope it is registered for, with the
//! scope's fencing epoch and the DP's multicast group) and, for every device, the DP that
//! serves it (role `Active`, `dp_device_id` naming that DP). Every assignment carries the
//! multicast signing key its DP last reported in `dp_status.signing_key`, so the devices it
//! serves accept only that DP's sessions.
//!
//! `upstream` in an assignment names where a DP takes files from: `"server"` for the active
//! DP, the active DP's device id for a standby. `unicast_addr` is where the DP said (in
//! `dp_status.unicast_addr`) it serves blocks to devices that missed them.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::Path;
use std::time::Instant;

use bytes::Bytes;

use outpost_election::{
    DeviceId, DevicePlacement, Election, ElectionConfig, GroupEdge, GroupId, GroupTree, NodeFacts,
    Origin, Role, ScopeId,
};
use outpost_wire::messages::{DpAssignment, DpRole, ScopeKind, ScopeRef, SyncRequest};

use crate::{Op, Registry, ServerError, Storage};

#[derive(Default)]
struct Names {
    by_name: HashMap<String, u64>,
    by_id: Vec<String>,
}

impl Names {
    fn id(&mut self, name: &str) -> u64 {
        if let Some(id) = self.by_name.get(name) {
            return *id;
        }
        let id = self.by_id.len() as u64;
        self.by_id.push(name.to_string());
        self.by_name.insert(name.to_string(), id);
        id
    }
    fn get(&self, name: &str) -> Option<u64> {
        self.by_name.get(name).copied()
    }
    fn name(&self, id: u64) -> &str {
        self.by_id
            .get(id as usize)
            .map(String::as_str)
            .unwrap_or("")
    }
}

/// The multicast UDP port assignments name unless told otherwise (the same as
/// `outpost_multicast::DEFAULT_PORT`).
pub const DEFAULT_MULTICAST_PORT: u16 = 15001;

fn election_error(e: outpost_election::ElectionError) -> ServerError {
    ServerError::Config(format!("distribution points: {e}"))
}

/// One row of [`DpCoordinator::report`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DpReportRow {
    /// The DP's device.
    pub device: String,
    /// The group it serves (with its subgroups).
    pub group: String,
    /// `"active"`, `"standby"` or `"inactive"` (down, short of disk, not heard from yet).
    pub role: &'static str,
    /// The scope's fencing epoch.
    pub epoch: u64,
    /// Its multicast group address.
    pub multicast_group: Option<IpAddr>,
    /// Free disk it last reported.
    pub free_disk_bytes: Option<u64>,
    /// Devices it serves as the active DP of this scope.
    pub devices_served: usize,
}

/// The server's distribution point coordinator.
pub struct DpCoordinator {
    election: Election,
    devices: Names,
    groups: Names,
    /// The multicast signing key each DP last reported.
    keys: HashMap<DeviceId, Bytes>,
    /// Where each DP last said it serves blocks by unicast.
    addrs: HashMap<DeviceId, String>,
    multicast_port: u16,
    /// The epochs when [`DpCoordinator::tick`] last looked.
    seen_epochs: BTreeMap<ScopeId, u64>,
    /// Where the group scopes' epochs are kept across restarts.
    epoch_store: Option<EpochStore>,
    /// Security issues the election raised or cleared, not yet stored.
    issues: Vec<outpost_election::IssueEvent>,
}

struct EpochStore {
    storage: Storage,
    /// What the database holds.
    kept: BTreeMap<String, u64>,
    /// The last write failed (logged once until a write succeeds).
    failing: bool,
}

/// The largest epoch file read back (a few bytes per group).
const MAX_EPOCH_FILE: u64 = 16 * 1024 * 1024;

impl DpCoordinator {
    /// A coordinator over the registry's groups and devices.
    pub fn new(config: ElectionConfig, registry: &Registry) -> Result<Self, ServerError> {
        let mut groups = Names::default();
        // Parents first: ids for every group, then the edges.
        for id in registry.groups().keys() {
            groups.id(id);
        }
        let edges: Vec<GroupEdge> = registry
            .groups()
            .iter()
            .map(|(id, g)| GroupEdge {
                group: GroupId(groups.id(id)),
                parent: g.parent.as_deref().map(|p| GroupId(groups.id(p))),
            })
            .collect();
        let tree = GroupTree::from_edges(edges).map_err(election_error)?;
        let election = Election::new(config, tree).map_err(election_error)?;
        let mut c = DpCoordinator {
            election,
            devices: Names::default(),
            groups,
            keys: HashMap::new(),
            addrs: HashMap::new(),
            multicast_port: DEFAULT_MULTICAST_PORT,
            seen_epochs: Default::default(),
            epoch_store: None,
            issues: Vec::new(),
        };
        for (id, d) in registry.devices() {
            c.place(id, &d.group)?;
        }
        for (dp, groups) in registry.dps() {
            for g in groups {
                c.register_group_dp(dp, g)?;
            }
        }
        Ok(c)
    }

    /// The election's id of registry group `group`.
    fn group_id(&self, group: &str) -> Result<u64, ServerError> {
        self.groups
            .get(group)
            .ok_or_else(|| ServerError::UnknownGroup(group.into()))
    }

    /// The election's id of a device it knows.
    fn device_id(&self, device: &str) -> Result<u64, ServerError> {
        self.devices
            .get(device)
            .ok_or_else(|| ServerError::UnknownDevice(device.into()))
    }

    /// Places (or moves) a device in a group.
    pub fn place(&mut self, device: &str, group: &str) -> Result<(), ServerError> {
        let g = self.group_id(group)?;
        let d = DeviceId(self.devices.id(device));
        if self.election.placement(d).is_some() {
            self.election
                .move_device(d, GroupId(g))
                .map_err(election_error)
        } else {
            self.election
                .place_device(d, DevicePlacement::in_group(GroupId(g)))
                .map_err(election_error)
        }
    }

    /// Adds a new group under `parent` (nothing to do if it is known already).
    pub fn add_group(&mut self, group: &str, parent: &str) -> Result<(), ServerError> {
        if self.groups.get(group).is_some() {
            return Ok(());
        }
        let p = self.group_id(parent)?;
        let g = self.groups.id(group);
        self.election
            .add_group(GroupId(g), Some(GroupId(p)))
            .map_err(election_error)
    }

    /// Moves `group` (with its subgroups) under `parent`.
    pub fn move_group(&mut self, group: &str, parent: &str) -> Result<(), ServerError> {
        let g = self.group_id(group)?;
        let p = self.group_id(parent)?;
        self.election
            .move_group(GroupId(g), Some(GroupId(p)))
            .map_err(election_error)
    }

    /// Forgets a removed device: its distribution point scopes and its placement.
    pub fn remove(&mut self, device: &str) {
        let Some(d) = self.devices.get(device).map(DeviceId) else {
            return;
        };
        for scope in self.election.scopes_of(d) {
            let _ = self.election.unregister(d, scope);
        }
        self.election.remove_device(d);
        self.keys.remove(&d);
        self.addrs.remove(&d);
    }

    /// Registers `device` as a distribution point for `group` and its subgroups; returns its
    /// multicast group address.
    pub fn register_group_dp(&mut self, device: &str, group: &str) -> Result<IpAddr, ServerError> {
        let g = self.group_id(group)?;
        let d = DeviceId(self.devices.id(device));
        self.election
            .register(d, ScopeId::Group(GroupId(g)), Origin::Manual)
            .map_err(election_error)
    }

    /// Removes `device` as a distribution point of `group`; the next round tells it, and
    /// elects a successor if it was active.
    pub fn unregister_group_dp(&mut self, device: &str, group: &str) -> Result<(), ServerError> {
        let g = self.group_id(group)?;
        let d = self.device_id(device)?;
        self.election
            .unregister(DeviceId(d), ScopeId::Group(GroupId(g)))
            .map_err(election_error)
    }

    /// The administrator's choice: `device` becomes the active distribution point of
    /// `group` now (a new epoch, kept before this returns). Returns that epoch. Refused if
    /// it does not serve the group, or is down or short of disk.
    pub fn make_active(
        &mut self,
        device: &str,
        group: &str,
        now: Instant,
    ) -> Result<u64, ServerError> {
        let g = self.group_id(group)?;
        let d = self.device_id(device)?;
        let scope = ScopeId::Group(GroupId(g));
        self.election
            .make_active(scope, DeviceId(d), now)
            .map_err(|e| ServerError::InUse(format!("distribution points: {e}")))?;
        self.save_epochs();
        Ok(self.election.epoch(scope))
    }

    /// The report of distribution points: one row per registered DP and group scope.
    pub fn report(&self) -> Vec<DpReportRow> {
        let mut served: HashMap<(DeviceId, ScopeId), usize> = HashMap::new();
        for (_, s) in self.election.serving_table() {
            if let Some(s) = s {
                *served.entry((s.dp, s.scope)).or_insert(0) += 1;
            }
        }
        let mut rows = Vec::new();
        for decision in self.election.decisions() {
            let ScopeId::Group(g) = decision.scope else {
                continue;
            };
            let group = self.groups.name(g.0).to_string();
            for (dp, _) in self.election.members(decision.scope) {
                let role = if decision.active == Some(dp) {
                    "active"
                } else if decision.standbys.contains(&dp) {
                    "standby"
                } else {
                    "inactive"
                };
                rows.push(DpReportRow {
                    device: self.devices.name(dp.0).to_string(),
                    group: group.clone(),
                    role,
                    epoch: decision.epoch,
                    multicast_group: self.election.multicast_group(dp),
                    free_disk_bytes: self.election.facts(dp).map(|f| f.free_disk_bytes),
                    devices_served: served.get(&(dp, decision.scope)).copied().unwrap_or(0),
                });
            }
        }
        rows.sort_by(|a, b| (&a.group, &a.device).cmp(&(&b.group, &b.device)));
        rows
    }

    /// Sets the multicast UDP port named in assignments (default 15001).
    pub fn set_multicast_port(&mut self, port: u16) {
        self.multicast_port = port;
    }

    /// Whether `device` is registered as a distribution point for any scope.
    pub fn is_dp(&self, device: &str) -> bool {
        self.devices
            .get(device)
            .is_some_and(|d| !self.election.scopes_of(DeviceId(d)).is_empty())
    }

    /// Runs a decision round at `now`, so a DP that stopped sending heartbeats is replaced
    /// even when no device syncs, and says whether any scope's epoch changed since the last
    /// call (its active DP changed: devices should be told to sync).
    pub fn tick(&mut self, now: Instant) -> bool {
        self.round(now);
        let epochs = self.election.epochs();
        let changed = epochs != self.seen_epochs;
        self.seen_epochs = epochs;
        changed
    }

    /// The election engine (decisions, epochs, serving table).
    pub fn election(&self) -> &Election {
        &self.election
    }

    /// Keeps the fencing epoch of every group scope in `storage`, and raises the engine's
    /// epochs to `kept` (what the database held at start): epochs handed out before a
    /// restart are never handed out again, so DPs that kept running (and fence on the
    /// highest epoch they saw) accept the restarted server's assignments. From now on the
    /// epochs are committed whenever one changed, before the assignments that carry it are
    /// returned.
    pub fn keep_epochs(&mut self, storage: Storage, kept: BTreeMap<String, u64>) {
        let restore: BTreeMap<ScopeId, u64> = kept
            .iter()
            .filter_map(|(g, &e)| Some((ScopeId::Group(GroupId(self.groups.get(g)?)), e)))
            .collect();
        self.election.restore_epochs(&restore);
        self.epoch_store = Some(EpochStore {
            storage,
            kept,
            failing: false,
        });
        self.save_epochs();
    }

    /// The security issues the election raised or cleared since the last call (a DP low
    /// on disk), as rows to write and events to record.
    pub fn take_issues(&mut self) -> (Vec<Op>, Vec<crate::EventRecord>) {
        use outpost_election::IssueEvent;
        use outpost_wire::messages::Severity as Wire;
        let mut ops = Vec::new();
        let mut events = Vec::new();
        let now = std::time::SystemTime::now();
        for issue in std::mem::take(&mut self.issues) {
            match issue {
                IssueEvent::LowDiskRaised {
                    device,
                    free_bytes,
                    threshold_bytes,
                    ..
                } => {
                    let name = self.devices.name(device.0).to_string();
                    let body = format!(
                        "distribution point {name:?} has {free_bytes} bytes of free disk, \
                         below the warning threshold of {threshold_bytes}"
                    );
                    ops.push(Op::PutSecurityIssue(crate::SecurityIssue::new(
                        &name,
                        "dp.low_disk",
                        Wire::Warning as i32,
                        &body,
                        now,
                    )));
                    events.push(crate::EventRecord::server(
                        Some(&name),
                        Wire::Warning,
                        "dp.low_disk",
                        body,
                    ));
                }
                IssueEvent::LowDiskCleared { device, free_bytes } => {
                    let name = self.devices.name(device.0).to_string();
                    ops.push(Op::DeleteSecurityIssue {
                        device: name.clone(),
                        kind: "dp.low_disk".into(),
                    });
                    events.push(crate::EventRecord::server(
                        Some(&name),
                        Wire::Info,
                        "dp.low_disk.cleared",
                        format!(
                            "distribution point {name:?} has {free_bytes} bytes of free disk again"
                        ),
                    ));
                }
                _ => {}
            }
        }
        (ops, events)
    }

    /// A decision round; the stored epochs are brought up to date when the round decided
    /// something (only decisions move epochs) or the last write failed.
    fn round(&mut self, now: Instant) {
        let outcome = self.election.round(now);
        let decided = !outcome.decisions.is_empty();
        self.issues.extend(outcome.issues);
        if decided || self.epoch_store.as_ref().is_some_and(|f| f.failing) {
            self.save_epochs();
        }
        // Security issues go to the database as they come, not waited for.
        if !self.issues.is_empty()
            && let Some(storage) = self.epoch_store.as_ref().map(|s| s.storage.clone())
        {
            let (ops, events) = self.take_issues();
            drop(storage.queue(ops));
            drop(storage.queue_events(events));
        }
    }

    /// Commits the group scopes' epochs that rose above what the database holds (and
    /// waits for the commit: the assignments carrying them go out only after). A failed
    /// write is logged and tried again after the next round.
    fn save_epochs(&mut self) {
        let Some(file) = &mut self.epoch_store else {
            return;
        };
        // Find the raised epochs before copying anything: most decisions raise none.
        let groups = &self.groups;
        let raised: Vec<(&str, u64)> = self
            .election
            .epochs()
            .into_iter()
            .filter_map(|(scope, epoch)| match scope {
                ScopeId::Group(g) => Some((groups.name(g.0), epoch)),
                _ => None,
            })
            .filter(|&(name, epoch)| epoch > file.kept.get(name).copied().unwrap_or(0))
            .collect();
        if raised.is_empty() {
            return;
        }
        let ops: Vec<Op> = raised
            .iter()
            .map(|&(name, epoch)| Op::PutEpoch {
                scope: name.to_string(),
                epoch,
            })
            .collect();
        match file.storage.commit_blocking(ops) {
            Ok(()) => {
                if file.failing {
                    log::info!("distribution point epochs saved again");
                }
                for (name, epoch) in raised {
                    file.kept.insert(name.to_string(), epoch);
                }
                file.failing = false;
            }
            Err(e) if !file.failing => {
                log::warn!("distribution point epochs not saved (retried every round): {e}");
                file.failing = true;
            }
            Err(_) => {}
        }
    }

    /// Records a device's sync at `now` (a heartbeat if it is a DP), runs a decision round, and
    /// returns the assignments its answer carries.
    pub fn on_sync(&mut self, device: &str, req: &SyncRequest, now: Instant) -> Vec<DpAssignment> {
        let Some(id) = self.devices.get(device).map(DeviceId) else {
            return Vec::new();
        };
        if !self.election.scopes_of(id).is_empty() {
            let load = req
                .dp_status
                .iter()
                .map(|s| s.load_milli)
                .max()
                .unwrap_or(0);
            let facts = NodeFacts::new(req.free_disk_bytes)
                .with_uptime_secs(req.uptime_secs)
                .with_load_percent(u8::try_from((load / 10).min(100)).unwrap_or(100));
            // What the DP reports about itself: the first non-empty value of each.
            let reported = req.dp_status.iter();
            if let Some(s) = reported.clone().find(|s| !s.signing_key.is_empty()) {
                self.keys.insert(id, s.signing_key.clone());
            }
            if let Some(s) = reported.clone().find(|s| !s.unicast_addr.is_empty()) {
                self.addrs.insert(id, s.unicast_addr.clone());
            }
            // An out-of-order heartbeat is refused by the engine; the round still runs.
            let _ = self
                .election
                .heartbeat(outpost_election::Heartbeat::new(id, facts), now);
        }
        self.round(now);
        let mut out = Vec::new();
        for scope in self.election.scopes_of(id) {
            let Some(d) = self.election.decision(scope) else {
                continue;
            };
            let role = if d.active == Some(id) {
                Role::Active
            } else if d.standbys.contains(&id) {
                Role::Standby
            } else {
                Role::Inactive
            };
            out.push(self.assignment(id, scope, role, d.epoch, d.active));
        }
        if let Ok(Some(s)) = self.election.serving(id) {
            out.push(self.assignment(s.dp, s.scope, Role::Active, s.epoch, Some(s.dp)));
        }
        out
    }

    fn assignment(
        &self,
        dp: DeviceId,
        scope: ScopeId,
        role: Role,
        epoch: u64,
        active: Option<DeviceId>,
    ) -> DpAssignment {
        let (kind, id) = match scope {
            ScopeId::Group(g) => (ScopeKind::Group, self.groups.name(g.0).to_string()),
            ScopeId::BroadcastDomain(b) => (ScopeKind::BroadcastDomain, b.0.to_string()),
            ScopeId::NetworkLocation(l) => (ScopeKind::NetworkLocation, l.0.to_string()),
            _ => (ScopeKind::Unspecified, scope.raw().to_string()),
        };
        let wire_role = match role {
            Role::Active => DpRole::Active,
            Role::Standby => DpRole::Standby,
            _ => DpRole::None,
        };
        let upstream = match (role, active) {
            (Role::Standby, Some(a)) => self.devices.name(a.0).to_string(),
            (Role::Active, _) => "server".to_string(),
            _ => String::new(),
        };
        DpAssignment {
            scope: Some(ScopeRef {
                kind: kind as i32,
                id,
            }),
            dp_device_id: self.devices.name(dp.0).to_string(),
            role: wire_role as i32,
            epoch,
            multicast_group: self
                .election
                .multicast_group(dp)
                .map(|a| a.to_string())
                .unwrap_or_default(),
            multicast_port: u32::from(self.multicast_port),
            upstream,
            signing_key: self.keys.get(&dp).cloned().unwrap_or_default(),
            unicast_addr: self.addrs.get(&dp).cloned().unwrap_or_default(),
        }
    }
}

/// Reads an epoch file (`dp-epochs.json`, as servers before the database kept them) to
/// import it; `Ok(None)` if there is none.
pub fn read_epoch_file(path: &Path) -> Result<Option<BTreeMap<String, u64>>, ServerError> {
    match crate::store::read_bounded(path, MAX_EPOCH_FILE)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ServerError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("not a map of group ids to epochs: {e}"),
            }),
    }
}
