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
    BroadcastDomainId, BroadcastDomains, DeviceId, DevicePlacement, DpRole, Election,
    ElectionConfig, GroupEdge, GroupId, GroupTree, LocationId, NodeFacts, Origin, PeerReport,
    ScopeId,
};
use outpost_wire::messages::{self, DpAssignment, ScopeKind, ScopeRef, SyncRequest};

use crate::{DpScope, Op, Registry, ServerError, Storage};

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

/// The multicast UDP port assignments name unless told otherwise.
pub const DEFAULT_MULTICAST_PORT: u16 = outpost_wire::ports::MULTICAST;

fn election_error(e: outpost_election::ElectionError) -> ServerError {
    ServerError::Config(format!("distribution points: {e}"))
}

/// One row of [`DpCoordinator::report`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DpReportRow {
    /// The DP's device.
    pub device: String,
    /// The scope it serves.
    pub scope: DpScope,
    /// For a broadcast domain: the device that names it (its lowest member).
    pub domain: Option<String>,
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
    locations: Names,
    /// The peers each device last reported hearing in its broadcast domain.
    peer_reports: BTreeMap<DeviceId, Vec<DeviceId>>,
    /// The reports changed since the domains were derived.
    reports_changed: bool,
    /// The broadcast domains derived from the reports.
    domains: BroadcastDomains,
    /// DPs that serve their own broadcast domain, with the domain scope they are registered
    /// for now (none until the reports place them in one).
    own_domain: BTreeMap<DeviceId, Option<ScopeId>>,
    /// The multicast signing key each DP last reported.
    keys: HashMap<DeviceId, Bytes>,
    /// Where each DP last said it serves blocks by unicast.
    addrs: HashMap<DeviceId, String>,
    multicast_port: u16,
    /// The epochs when [`DpCoordinator::tick`] last looked.
    seen_epochs: BTreeMap<ScopeId, u64>,
    /// Which DP served each device (and through which scope, at which epoch) when the
    /// epochs last changed.
    served: HashMap<DeviceId, (DeviceId, ScopeId, u64)>,
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
            locations: Names::default(),
            peer_reports: BTreeMap::new(),
            reports_changed: false,
            domains: BroadcastDomains::default(),
            own_domain: BTreeMap::new(),
            keys: HashMap::new(),
            addrs: HashMap::new(),
            multicast_port: DEFAULT_MULTICAST_PORT,
            seen_epochs: Default::default(),
            served: HashMap::new(),
            epoch_store: None,
            issues: Vec::new(),
        };
        for (id, d) in registry.devices() {
            c.place(id, &d.group)?;
            if d.network_location.is_some() {
                c.set_location(id, d.network_location.as_deref())?;
            }
        }
        for (dp, scopes) in registry.dps() {
            for key in scopes {
                c.register(dp, &DpScope::parse(key)?)?;
            }
        }
        Ok(c)
    }

    /// The election's scope of a registry scope (`None`: a broadcast domain not derived
    /// yet, or a DP's own domain, which depends on the DP).
    fn scope_id(&mut self, scope: &DpScope) -> Result<Option<ScopeId>, ServerError> {
        Ok(match scope {
            DpScope::Group(g) => Some(ScopeId::Group(GroupId(self.group_id(g)?))),
            DpScope::NetworkLocation(l) => {
                Some(ScopeId::NetworkLocation(LocationId(self.locations.id(l))))
            }
            _ => None,
        })
    }

    /// The scope `device` serves for `scope` now (its own broadcast domain's, once known).
    fn scope_of(&mut self, device: &str, scope: &DpScope) -> Result<Option<ScopeId>, ServerError> {
        match scope {
            DpScope::OwnBroadcastDomain => {
                let d = DeviceId(self.device_id(device)?);
                Ok(self.own_domain.get(&d).copied().flatten())
            }
            other => self.scope_id(other),
        }
    }

    /// Puts a device in a network location (or in none): DPs of that location serve it
    /// before any group's.
    pub fn set_location(
        &mut self,
        device: &str,
        location: Option<&str>,
    ) -> Result<(), ServerError> {
        let d = DeviceId(self.device_id(device)?);
        let loc = location.map(|l| LocationId(self.locations.id(l)));
        let Some(mut p) = self.election.placement(d).cloned() else {
            return Err(ServerError::UnknownDevice(device.into()));
        };
        p.location = loc;
        self.election.place_device(d, p).map_err(election_error)
    }

    /// Registers `device` as a distribution point for `scope`; returns its multicast group
    /// address (`None` for its own broadcast domain until the discovery reports place it).
    pub fn register(
        &mut self,
        device: &str,
        scope: &DpScope,
    ) -> Result<Option<IpAddr>, ServerError> {
        let d = DeviceId(self.devices.id(device));
        if let DpScope::OwnBroadcastDomain = scope {
            let current = self.domains.domain_of(d).map(ScopeId::BroadcastDomain);
            self.own_domain.insert(d, current);
            return match current {
                Some(s) => self
                    .election
                    .register(d, s, Origin::Manual)
                    .map(Some)
                    .map_err(election_error),
                None => Ok(None),
            };
        }
        let Some(s) = self.scope_id(scope)? else {
            return Ok(None);
        };
        self.election
            .register(d, s, Origin::Manual)
            .map(Some)
            .map_err(election_error)
    }

    /// Removes `device` as a distribution point of `scope`; the next round tells it, and
    /// elects a successor if it was active.
    pub fn unregister(&mut self, device: &str, scope: &DpScope) -> Result<(), ServerError> {
        let d = DeviceId(self.device_id(device)?);
        let s = self.scope_of(device, scope)?;
        if let DpScope::OwnBroadcastDomain = scope {
            self.own_domain.remove(&d);
        }
        match s {
            Some(s) => self.election.unregister(d, s).map_err(election_error),
            None => Ok(()),
        }
    }

    /// Takes the peers `device` reports hearing (the broadcast domain it is in); the
    /// domains are derived again at the next [`tick`](Self::tick) if anything changed.
    fn report_peers(&mut self, device: DeviceId, peers: &[String]) {
        let mut ids: Vec<DeviceId> = peers
            .iter()
            .filter_map(|p| self.devices.get(p).map(DeviceId))
            .filter(|p| *p != device)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        if self.peer_reports.get(&device) != Some(&ids) {
            if ids.is_empty() && !self.peer_reports.contains_key(&device) {
                return;
            }
            self.peer_reports.insert(device, ids);
            self.reports_changed = true;
        }
    }

    /// Derives the broadcast domains from the reports, places every device in its domain,
    /// and moves each DP serving its own domain to the domain it is in now.
    fn derive_domains(&mut self) {
        self.reports_changed = false;
        let reports: Vec<PeerReport> = self
            .peer_reports
            .iter()
            .map(|(d, p)| PeerReport::new(*d, p.clone()))
            .collect();
        let max = self.election.config().max_peers_per_report;
        let domains = match BroadcastDomains::derive(&reports, max) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("broadcast domains not derived: {e}");
                return;
            }
        };
        for &device in self.peer_reports.keys() {
            let domain = domains.domain_of(device);
            if let Some(mut p) = self.election.placement(device).cloned()
                && p.broadcast_domain != domain
            {
                p.broadcast_domain = domain;
                let _ = self.election.place_device(device, p);
            }
        }
        self.domains = domains;
        let moves: Vec<(DeviceId, Option<ScopeId>, Option<ScopeId>)> = self
            .own_domain
            .iter()
            .map(|(&dp, &was)| {
                (
                    dp,
                    was,
                    self.domains.domain_of(dp).map(ScopeId::BroadcastDomain),
                )
            })
            .filter(|(_, was, now)| was != now)
            .collect();
        for (dp, was, now) in moves {
            if let Some(w) = was {
                let _ = self.election.unregister(dp, w);
            }
            if let Some(n) = now
                && let Err(e) = self.election.register(dp, n, Origin::Manual)
            {
                tracing::warn!(
                    dp = ?self.devices.name(dp.0),
                    "not registered for its broadcast domain: {e}"
                );
            }
            self.own_domain.insert(dp, now);
        }
    }

    /// The election scope an epoch key names ([`epoch_key`]); `None` for a group or device
    /// no longer known.
    fn epoch_scope(&mut self, key: &str) -> Option<ScopeId> {
        Some(match key.split_once('~') {
            None => ScopeId::Group(GroupId(self.groups.get(key)?)),
            Some(("location", l)) => ScopeId::NetworkLocation(LocationId(self.locations.id(l))),
            Some(("broadcast-domain", d)) => {
                ScopeId::BroadcastDomain(BroadcastDomainId(self.devices.get(d)?))
            }
            Some(_) => return None,
        })
    }

    /// The broadcast domain the discovery reports put `device` in: the device that names it.
    pub fn broadcast_domain_of(&self, device: &str) -> Option<String> {
        let d = DeviceId(self.devices.get(device)?);
        self.domains.domain_of(d).map(|b| self.domain_name(b))
    }

    /// A broadcast domain's name: the device that names it (its lowest member).
    fn domain_name(&self, b: BroadcastDomainId) -> String {
        self.devices.name(b.0).to_string()
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

    /// Places (or moves) a device in a group (its network location and broadcast domain
    /// stay as they are).
    pub fn place(&mut self, device: &str, group: &str) -> Result<(), ServerError> {
        let g = self.group_id(group)?;
        let d = DeviceId(self.devices.id(device));
        if self.election.placement(d).is_some() {
            self.election
                .move_device(d, GroupId(g))
                .map_err(election_error)
        } else {
            let mut p = DevicePlacement::in_group(GroupId(g));
            p.broadcast_domain = self.domains.domain_of(d);
            self.election.place_device(d, p).map_err(election_error)
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
        self.own_domain.remove(&d);
        if self.peer_reports.remove(&d).is_some() {
            self.reports_changed = true;
        }
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

    /// Removes `device` as a distribution point of `group`.
    pub fn unregister_group_dp(&mut self, device: &str, group: &str) -> Result<(), ServerError> {
        self.unregister(device, &DpScope::Group(group.into()))
    }

    /// The administrator's choice: `device` becomes the active distribution point of
    /// `scope` now (a new epoch, kept before this returns). Returns that epoch. Refused if
    /// it does not serve the scope, or is down or short of disk.
    pub fn make_active(
        &mut self,
        device: &str,
        scope: &DpScope,
        now: Instant,
    ) -> Result<u64, ServerError> {
        let d = self.device_id(device)?;
        let scope = self.scope_of(device, scope)?.ok_or_else(|| {
            ServerError::InUse(format!(
                "distribution points: {device:?} is in no broadcast domain yet (no discovery reports)"
            ))
        })?;
        self.election
            .make_active(scope, DeviceId(d), now)
            .map_err(|e| ServerError::InUse(format!("distribution points: {e}")))?;
        self.save_epochs();
        Ok(self.election.epoch(scope))
    }

    /// The registry's scope for an election scope, and the domain's naming device.
    fn registry_scope(&self, scope: ScopeId, dp: DeviceId) -> Option<(DpScope, Option<String>)> {
        Some(match scope {
            ScopeId::Group(g) => (DpScope::Group(self.groups.name(g.0).to_string()), None),
            ScopeId::NetworkLocation(l) => (
                DpScope::NetworkLocation(self.locations.name(l.0).to_string()),
                None,
            ),
            ScopeId::BroadcastDomain(b) if self.own_domain.get(&dp) == Some(&Some(scope)) => {
                (DpScope::OwnBroadcastDomain, Some(self.domain_name(b)))
            }
            _ => return None,
        })
    }

    /// The report of distribution points: one row per registered DP and scope.
    pub fn report(&self) -> Vec<DpReportRow> {
        let mut served: HashMap<(DeviceId, ScopeId), usize> = HashMap::new();
        for (_, s) in self.election.serving_table() {
            if let Some(s) = s {
                *served.entry((s.dp, s.scope)).or_insert(0) += 1;
            }
        }
        let mut rows = Vec::new();
        for decision in self.election.decisions() {
            for (dp, _) in self.election.members(decision.scope) {
                let Some((scope, domain)) = self.registry_scope(decision.scope, dp) else {
                    continue;
                };
                let role = if decision.active == Some(dp) {
                    "active"
                } else if decision.standbys.contains(&dp) {
                    "standby"
                } else {
                    "inactive"
                };
                rows.push(DpReportRow {
                    device: self.devices.name(dp.0).to_string(),
                    scope,
                    domain,
                    role,
                    epoch: decision.epoch,
                    multicast_group: self.election.multicast_group(dp),
                    free_disk_bytes: self.election.facts(dp).map(|f| f.free_disk_bytes),
                    devices_served: served.get(&(dp, decision.scope)).copied().unwrap_or(0),
                });
            }
        }
        // DPs serving their own domain before the reports place them in one.
        for (dp, scope) in &self.own_domain {
            if scope.is_none() {
                rows.push(DpReportRow {
                    device: self.devices.name(dp.0).to_string(),
                    scope: DpScope::OwnBroadcastDomain,
                    domain: None,
                    role: "inactive",
                    epoch: 0,
                    multicast_group: self.election.multicast_group(*dp),
                    free_disk_bytes: self.election.facts(*dp).map(|f| f.free_disk_bytes),
                    devices_served: 0,
                });
            }
        }
        rows.sort_by(|a, b| (&a.scope, &a.device).cmp(&(&b.scope, &b.device)));
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
    /// even when no device syncs, and returns the devices to tell (sorted): when a scope's
    /// epoch changed since the last call (its active DP changed), that scope's DPs and every
    /// device whose serving DP changed; nobody else.
    pub fn tick(&mut self, now: Instant) -> Vec<String> {
        if self.reports_changed {
            self.derive_domains();
        }
        self.round(now);
        let epochs = self.election.epochs();
        if epochs == self.seen_epochs {
            return Vec::new();
        }
        let changed_scopes: Vec<ScopeId> = epochs
            .iter()
            .filter(|(s, e)| self.seen_epochs.get(s) != Some(e))
            .map(|(s, _)| *s)
            .chain(
                self.seen_epochs
                    .keys()
                    .filter(|s| !epochs.contains_key(s))
                    .copied(),
            )
            .collect();
        self.seen_epochs = epochs;
        let mut tell: std::collections::BTreeSet<DeviceId> = changed_scopes
            .iter()
            .flat_map(|s| self.election.members(*s).into_iter().map(|(dp, _)| dp))
            .collect();
        let served: HashMap<DeviceId, (DeviceId, ScopeId, u64)> = self
            .election
            .serving_table()
            .into_iter()
            .filter_map(|(d, s)| s.map(|s| (d, (s.dp, s.scope, s.epoch))))
            .collect();
        for (d, s) in &served {
            if self.served.get(d) != Some(s) {
                tell.insert(*d);
            }
        }
        for d in self.served.keys() {
            if !served.contains_key(d) {
                tell.insert(*d);
            }
        }
        self.served = served;
        let mut names: Vec<String> = tell
            .into_iter()
            .map(|d| self.devices.name(d.0).to_string())
            .filter(|n| !n.is_empty())
            .collect();
        names.sort_unstable();
        names
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
            .filter_map(|(key, &e)| Some((self.epoch_scope(key)?, e)))
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
        let (groups, locations, devices) = (&self.groups, &self.locations, &self.devices);
        let raised: Vec<(String, u64)> = self
            .election
            .epochs()
            .into_iter()
            .filter_map(|(scope, epoch)| {
                Some((epoch_key(groups, locations, devices, scope)?, epoch))
            })
            .filter(|(key, epoch)| *epoch > file.kept.get(key).copied().unwrap_or(0))
            .collect();
        if raised.is_empty() {
            return;
        }
        let ops: Vec<Op> = raised
            .iter()
            .map(|(key, epoch)| Op::PutEpoch {
                scope: key.clone(),
                epoch: *epoch,
            })
            .collect();
        match file.storage.commit_blocking(ops) {
            Ok(()) => {
                if file.failing {
                    tracing::info!("distribution point epochs saved again");
                }
                for (key, epoch) in raised {
                    file.kept.insert(key, epoch);
                }
                file.failing = false;
            }
            Err(e) if !file.failing => {
                tracing::warn!("distribution point epochs not saved (retried every round): {e}");
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
        self.report_peers(id, &req.visible_peers);
        if self.own_domain.contains_key(&id) && self.reports_changed {
            // A DP serving its own domain learns it at once from its own report.
            self.derive_domains();
        }
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
                DpRole::Active
            } else if d.standbys.contains(&id) {
                DpRole::Standby
            } else {
                DpRole::Inactive
            };
            out.push(self.assignment(id, scope, role, d.epoch, d.active));
        }
        if let Ok(Some(s)) = self.election.serving(id) {
            out.push(self.assignment(s.dp, s.scope, DpRole::Active, s.epoch, Some(s.dp)));
        }
        out
    }

    fn assignment(
        &self,
        dp: DeviceId,
        scope: ScopeId,
        role: DpRole,
        epoch: u64,
        active: Option<DeviceId>,
    ) -> DpAssignment {
        let (kind, id) = match scope {
            ScopeId::Group(g) => (ScopeKind::Group, self.groups.name(g.0).to_string()),
            ScopeId::BroadcastDomain(b) => (ScopeKind::BroadcastDomain, self.domain_name(b)),
            ScopeId::NetworkLocation(l) => (
                ScopeKind::NetworkLocation,
                self.locations.name(l.0).to_string(),
            ),
            _ => (ScopeKind::Unspecified, scope.raw().to_string()),
        };
        let wire_role = match role {
            DpRole::Active => messages::DpRole::Active,
            DpRole::Standby => messages::DpRole::Standby,
            _ => messages::DpRole::None,
        };
        let upstream = match (role, active) {
            (DpRole::Standby, Some(a)) => self.devices.name(a.0).to_string(),
            (DpRole::Active, _) => "server".to_string(),
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

/// The key a scope's epoch is kept under: the group id, `location~NAME`, or
/// `broadcast-domain~DEVICE` (the device that names the domain).
fn epoch_key(groups: &Names, locations: &Names, devices: &Names, scope: ScopeId) -> Option<String> {
    Some(match scope {
        ScopeId::Group(g) => groups.name(g.0).to_string(),
        ScopeId::NetworkLocation(l) => format!("location~{}", locations.name(l.0)),
        ScopeId::BroadcastDomain(b) => format!("broadcast-domain~{}", devices.name(b.0)),
        _ => return None,
    })
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
