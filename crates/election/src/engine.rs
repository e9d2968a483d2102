//! The election engine: registrations, heartbeats, decision rounds and nearest-DP lookup.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::auto::{AutoOutcome, BroadcastDomains};
use crate::config::ElectionConfig;
use crate::error::{ElectionError, Ineligibility, Result};
use crate::health::{Heartbeat, NodeFacts, RankKey};
use crate::ids::{BroadcastDomainId, DeviceId, DpId, GroupId, LocationId, ScopeId};
use crate::multicast::MulticastAllocator;
use crate::tree::GroupTree;

/// How a DP came to serve a scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Origin {
    /// Registered by the administrator.
    Manual,
    /// Picked by automatic assignment (broadcast domain scopes only).
    Automatic,
}

/// The role of a DP in one scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DpRole {
    /// Takes files from the server and serves the scope.
    Active,
    /// Eligible; takes files from the active DP and stands ready to take over.
    Standby,
    /// Registered but not eligible now (down or short of disk), or no longer registered.
    Inactive,
}

/// The state of one scope after a decision round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ScopeDecision {
    /// The scope.
    pub scope: ScopeId,
    /// The fencing epoch: incremented on every change of the active DP (including to none).
    pub epoch: u64,
    /// The active DP, if any member is eligible.
    pub active: Option<DpId>,
    /// Eligible members other than the active one, best ranked first.
    pub standbys: Vec<DpId>,
    /// Members that are not eligible now, by id.
    pub inactive: Vec<DpId>,
}

/// The role of one DP in one scope, as sent to that DP (the wire protocol's "DP assignment /
/// role change" message: scope, role, epoch, multicast group).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Assignment {
    /// The DP the message is for.
    pub dp: DpId,
    /// The scope.
    pub scope: ScopeId,
    /// Its role there.
    pub role: DpRole,
    /// The scope's epoch; a DP that holds a lower epoch for this scope has been replaced.
    pub epoch: u64,
    /// The DP's own multicast group address.
    pub multicast_group: IpAddr,
}

/// Severity of a security issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Severity {
    /// Warning level.
    Warning,
}

/// A security issue raised or cleared for a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum IssueEvent {
    /// A DP reported less free disk than the warning threshold.
    LowDiskRaised {
        /// The DP's device.
        device: DeviceId,
        /// Its severity.
        severity: Severity,
        /// Free bytes reported.
        free_bytes: u64,
        /// The threshold.
        threshold_bytes: u64,
    },
    /// A DP that had a low-disk issue reported enough free disk again.
    LowDiskCleared {
        /// The DP's device.
        device: DeviceId,
        /// Free bytes reported.
        free_bytes: u64,
    },
}

/// What a decision round produced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Round {
    /// Scopes whose active DP or standby set changed, by scope.
    pub decisions: Vec<ScopeDecision>,
    /// The role messages for those scopes (active, standbys, inactive) and for DPs removed
    /// from a scope since the last round.
    pub assignments: Vec<Assignment>,
    /// Security issues raised or cleared since the last round.
    pub issues: Vec<IssueEvent>,
}

impl Round {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.decisions.is_empty() && self.assignments.is_empty() && self.issues.is_empty()
    }
}

/// Where a device sits: its group and, where known, its network location and broadcast
/// domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DevicePlacement {
    /// The administration group it belongs to.
    pub group: GroupId,
    /// The network location the administrator put it in, if any.
    pub location: Option<LocationId>,
    /// Its broadcast domain, if known.
    pub broadcast_domain: Option<BroadcastDomainId>,
}

impl DevicePlacement {
    /// A device in `group` only.
    pub fn in_group(group: GroupId) -> Self {
        Self {
            group,
            location: None,
            broadcast_domain: None,
        }
    }

    /// Sets the network location.
    pub fn with_location(mut self, location: LocationId) -> Self {
        self.location = Some(location);
        self
    }

    /// Sets the broadcast domain.
    pub fn with_broadcast_domain(mut self, domain: BroadcastDomainId) -> Self {
        self.broadcast_domain = Some(domain);
        self
    }
}

/// Which DP serves a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Serving {
    /// The active DP.
    pub dp: DpId,
    /// The scope through which it serves the device.
    pub scope: ScopeId,
    /// That scope's epoch.
    pub epoch: u64,
    /// The DP's multicast group address.
    pub multicast_group: IpAddr,
}

/// The result of [`Election::recompute_all`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Recompute {
    /// What changed in this round.
    pub changes: Round,
    /// The decision of every scope, by scope.
    pub decisions: Vec<ScopeDecision>,
    /// The serving DP of every device, by device (`None` where no scope applies).
    pub serving: Vec<(DeviceId, Option<Serving>)>,
}

#[derive(Debug, Clone)]
struct DpState {
    facts: Option<NodeFacts>,
    last_seen: Option<Instant>,
    scopes: BTreeSet<ScopeId>,
    eligible: bool,
    low_disk_warned: bool,
}

#[derive(Debug, Clone, Default)]
struct ScopeState {
    members: BTreeMap<DpId, Origin>,
    active: Option<DpId>,
    epoch: u64,
    standbys: Vec<DpId>,
    inactive: Vec<DpId>,
}

/// The election engine. Pure and sans-IO: feed it facts (registrations, heartbeats, device
/// placements, peer reports) and the current time, and it answers with decisions.
///
/// # The rules
///
/// * A DP is **eligible** when its last heartbeat is less than
///   `missed_heartbeats × heartbeat_interval` old (once that much time has passed without a
///   heartbeat, it has missed `missed_heartbeats` heartbeats and is down) and it reported at
///   least `min_free_disk_bytes` free (see [`Ineligibility`]).
/// * In every decision round ([`Election::round`]) each scope whose members changed
///   eligibility is decided: an active DP that is still eligible **stays active** (no
///   flapping, however much better a standby ranks); otherwise the best-ranked eligible
///   member (see [`RankKey`]) becomes active, or none if no member is eligible.
/// * Only the administrator displaces a healthy active DP ([`Election::make_active`]).
/// * Every change of a scope's active DP increments that scope's **epoch**; decisions and
///   role messages carry it, so a DP that still thinks it is active with a lower epoch knows
///   it has been replaced. Epochs never go down, even when a scope loses all its members.
#[derive(Debug, Clone)]
pub struct Election {
    config: ElectionConfig,
    tree: GroupTree,
    devices: BTreeMap<DeviceId, DevicePlacement>,
    dps: BTreeMap<DpId, DpState>,
    scopes: BTreeMap<ScopeId, ScopeState>,
    multicast: MulticastAllocator,
    auto_on: bool,
    dirty: BTreeSet<ScopeId>,
    retired: Vec<Assignment>,
    /// DPs left with no scope: their addresses are freed by the round that tells them to
    /// stop, not before, so no other DP is handed an address still in use.
    releasing: Vec<DpId>,
    issues: Vec<IssueEvent>,
}

impl Election {
    /// An engine with `config` over the group tree `tree`.
    ///
    /// # Errors
    /// [`ElectionError::InvalidConfig`] naming the first bad field.
    pub fn new(config: ElectionConfig, tree: GroupTree) -> Result<Self> {
        config.validate()?;
        let multicast = MulticastAllocator::new(config.multicast)?;
        Ok(Self {
            config,
            tree,
            devices: BTreeMap::new(),
            dps: BTreeMap::new(),
            scopes: BTreeMap::new(),
            multicast,
            auto_on: false,
            dirty: BTreeSet::new(),
            retired: Vec::new(),
            releasing: Vec::new(),
            issues: Vec::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ElectionConfig {
        &self.config
    }

    /// The group tree.
    pub fn tree(&self) -> &GroupTree {
        &self.tree
    }

    /// Adds a group to the tree (see [`GroupTree::add_group`]).
    ///
    /// # Errors
    /// As [`GroupTree::add_group`].
    pub fn add_group(&mut self, group: GroupId, parent: Option<GroupId>) -> Result<()> {
        self.tree.add_group(group, parent)
    }

    /// Moves a group with its subtree (see [`GroupTree::move_group`]).
    ///
    /// # Errors
    /// As [`GroupTree::move_group`].
    pub fn move_group(&mut self, group: GroupId, new_parent: Option<GroupId>) -> Result<()> {
        self.tree.move_group(group, new_parent)
    }

    // ----- devices -------------------------------------------------------------------

    /// Places (or re-places) a device.
    ///
    /// # Errors
    /// [`ElectionError::UnknownGroup`] if its group is not in the tree.
    pub fn place_device(&mut self, device: DeviceId, placement: DevicePlacement) -> Result<()> {
        if !self.tree.contains(placement.group) {
            return Err(ElectionError::UnknownGroup {
                group: placement.group,
            });
        }
        self.devices.insert(device, placement);
        Ok(())
    }

    /// Moves a device to another group.
    ///
    /// # Errors
    /// [`ElectionError::UnknownDevice`] or [`ElectionError::UnknownGroup`].
    pub fn move_device(&mut self, device: DeviceId, group: GroupId) -> Result<()> {
        if !self.tree.contains(group) {
            return Err(ElectionError::UnknownGroup { group });
        }
        let p = self
            .devices
            .get_mut(&device)
            .ok_or(ElectionError::UnknownDevice { device })?;
        p.group = group;
        Ok(())
    }

    /// Removes a device from the fleet, returning where it was.
    pub fn remove_device(&mut self, device: DeviceId) -> Option<DevicePlacement> {
        self.devices.remove(&device)
    }

    /// Where a device sits.
    pub fn placement(&self, device: DeviceId) -> Option<&DevicePlacement> {
        self.devices.get(&device)
    }

    /// Number of managed devices placed.
    pub fn managed_devices(&self) -> usize {
        self.devices.len()
    }

    /// The sync (heartbeat) interval to hand agents for the current fleet size.
    pub fn sync_interval(&self) -> Duration {
        self.config.sync.interval(self.devices.len() as u64)
    }

    // ----- registrations -------------------------------------------------------------

    /// Registers `dp` for `scope`. The DP gets a multicast group address if it has none.
    /// The scope is decided in the next round.
    ///
    /// # Errors
    /// [`ElectionError::UnknownGroup`] for a group scope outside the tree,
    /// [`ElectionError::DuplicateRegistration`] if `dp` already serves `scope`,
    /// [`ElectionError::MulticastExhausted`] if no address is free. Nothing changes on error.
    pub fn register(&mut self, dp: DpId, scope: ScopeId, origin: Origin) -> Result<IpAddr> {
        if let ScopeId::Group(g) = scope
            && !self.tree.contains(g)
        {
            return Err(ElectionError::UnknownGroup { group: g });
        }
        if self
            .scopes
            .get(&scope)
            .is_some_and(|s| s.members.contains_key(&dp))
        {
            return Err(ElectionError::DuplicateRegistration { dp, scope });
        }
        let addr = self.multicast.assign(dp)?;
        let state = self.dps.entry(dp).or_insert_with(|| DpState {
            facts: None,
            last_seen: None,
            scopes: BTreeSet::new(),
            eligible: false,
            low_disk_warned: false,
        });
        state.scopes.insert(scope);
        // Registered again before the round: the "inactive" queued by `unregister` is void.
        self.retired.retain(|a| !(a.dp == dp && a.scope == scope));
        self.scopes
            .entry(scope)
            .or_default()
            .members
            .insert(dp, origin);
        self.dirty.insert(scope);
        Ok(addr)
    }

    /// Removes `dp` from `scope`. The next round tells it it is inactive there and, if it was
    /// active, elects a successor with a new epoch. A DP left with no scope loses its health
    /// record at once and its multicast address with that round (until then no other DP is
    /// given the address; registered again before it, the DP keeps it).
    ///
    /// # Errors
    /// [`ElectionError::NotRegistered`].
    pub fn unregister(&mut self, dp: DpId, scope: ScopeId) -> Result<()> {
        let s = self
            .scopes
            .get_mut(&scope)
            .filter(|s| s.members.contains_key(&dp))
            .ok_or(ElectionError::NotRegistered { dp, scope })?;
        s.members.remove(&dp);
        self.dirty.insert(scope);
        let addr = self.multicast.get(dp);
        let last = match self.dps.get_mut(&dp) {
            Some(st) => {
                st.scopes.remove(&scope);
                st.scopes.is_empty()
            }
            None => true,
        };
        if let Some(addr) = addr {
            self.retired.push(Assignment {
                dp,
                scope,
                role: DpRole::Inactive,
                epoch: 0, // filled in with the scope's epoch after the round decides it
                multicast_group: addr,
            });
        }
        if last {
            self.dps.remove(&dp);
            self.releasing.push(dp);
        }
        Ok(())
    }

    /// The scopes `dp` is registered for.
    pub fn scopes_of(&self, dp: DpId) -> Vec<ScopeId> {
        self.dps
            .get(&dp)
            .map(|s| s.scopes.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The members of `scope` with how they were registered.
    pub fn members(&self, scope: ScopeId) -> Vec<(DpId, Origin)> {
        self.scopes
            .get(&scope)
            .map(|s| s.members.iter().map(|(&d, &o)| (d, o)).collect())
            .unwrap_or_default()
    }

    /// Every scope known (including scopes whose members were all removed: their epoch is
    /// kept so it never goes down).
    pub fn scope_ids(&self) -> Vec<ScopeId> {
        self.scopes.keys().copied().collect()
    }

    /// The multicast group address of `dp`.
    pub fn multicast_group(&self, dp: DpId) -> Option<IpAddr> {
        self.multicast.get(dp)
    }

    /// The epoch of every scope, for persisting.
    pub fn epochs(&self) -> BTreeMap<ScopeId, u64> {
        self.scopes.iter().map(|(&s, st)| (s, st.epoch)).collect()
    }

    /// Raises scope epochs to at least the persisted values (after a restart), so epochs
    /// handed out before the restart are never reused.
    pub fn restore_epochs(&mut self, epochs: &BTreeMap<ScopeId, u64>) {
        for (&scope, &epoch) in epochs {
            let st = self.scopes.entry(scope).or_default();
            st.epoch = st.epoch.max(epoch);
        }
    }

    // ----- health --------------------------------------------------------------------

    /// Records a heartbeat received at `now`.
    ///
    /// # Errors
    /// [`ElectionError::UnknownDp`] if the sender is not a registered DP,
    /// [`ElectionError::HeartbeatOutOfOrder`] if `now` is before its previous heartbeat.
    pub fn heartbeat(&mut self, hb: Heartbeat, now: Instant) -> Result<()> {
        let st = self
            .dps
            .get_mut(&hb.dp)
            .ok_or(ElectionError::UnknownDp { dp: hb.dp })?;
        if let Some(prev) = st.last_seen
            && now < prev
        {
            return Err(ElectionError::HeartbeatOutOfOrder {
                dp: hb.dp,
                behind_ms: (prev - now).as_millis(),
            });
        }
        st.facts = Some(hb.facts);
        st.last_seen = Some(now);
        let warn = self.config.warn_free_disk_bytes;
        if hb.facts.free_disk_bytes < warn && !st.low_disk_warned {
            st.low_disk_warned = true;
            self.issues.push(IssueEvent::LowDiskRaised {
                device: hb.dp,
                severity: Severity::Warning,
                free_bytes: hb.facts.free_disk_bytes,
                threshold_bytes: warn,
            });
        } else if hb.facts.free_disk_bytes >= warn && st.low_disk_warned {
            st.low_disk_warned = false;
            self.issues.push(IssueEvent::LowDiskCleared {
                device: hb.dp,
                free_bytes: hb.facts.free_disk_bytes,
            });
        }
        let eligible = eligibility(&self.config, st, now).is_ok();
        if eligible != st.eligible {
            st.eligible = eligible;
            self.dirty.extend(st.scopes.iter().copied());
        }
        Ok(())
    }

    /// Whether `dp` is eligible at `now`, and if not, why.
    ///
    /// # Errors
    /// [`ElectionError::UnknownDp`] if `dp` is not registered.
    pub fn eligibility(&self, dp: DpId, now: Instant) -> Result<Result<(), Ineligibility>> {
        let st = self.dps.get(&dp).ok_or(ElectionError::UnknownDp { dp })?;
        Ok(eligibility(&self.config, st, now))
    }

    /// The last facts `dp` reported.
    pub fn facts(&self, dp: DpId) -> Option<NodeFacts> {
        self.dps.get(&dp).and_then(|s| s.facts)
    }

    // ----- decisions -----------------------------------------------------------------

    /// One decision round at `now`: re-checks every DP's eligibility, decides every scope
    /// whose members changed, and returns what changed.
    pub fn round(&mut self, now: Instant) -> Round {
        for st in self.dps.values_mut() {
            let eligible = eligibility(&self.config, st, now).is_ok();
            if eligible != st.eligible {
                st.eligible = eligible;
                self.dirty.extend(st.scopes.iter().copied());
            }
        }
        let mut out = Round::default();
        let dirty = std::mem::take(&mut self.dirty);
        for scope in dirty {
            if let Some(d) = self.decide(scope) {
                self.push_assignments(&d, &mut out.assignments);
                out.decisions.push(d);
            }
        }
        for mut a in std::mem::take(&mut self.retired) {
            a.epoch = self.scopes.get(&a.scope).map_or(0, |s| s.epoch);
            out.assignments.push(a);
        }
        for dp in std::mem::take(&mut self.releasing) {
            if !self.dps.contains_key(&dp) {
                self.multicast.release(dp);
            }
        }
        out.issues = std::mem::take(&mut self.issues);
        out
    }

    /// Decides one scope; returns its decision if anything changed.
    fn decide(&mut self, scope: ScopeId) -> Option<ScopeDecision> {
        let dps = &self.dps;
        let st = self.scopes.get_mut(&scope)?;
        let is_eligible = |d: &DpId| dps.get(d).is_some_and(|s| s.eligible);
        let mut eligible: Vec<DpId> = st.members.keys().copied().filter(is_eligible).collect();
        eligible.sort_by_cached_key(|d| rank_key(dps, *d));
        let keep = st
            .active
            .filter(|a| st.members.contains_key(a) && is_eligible(a));
        let active = keep.or_else(|| eligible.first().copied());
        let standbys: Vec<DpId> = eligible
            .iter()
            .copied()
            .filter(|d| Some(*d) != active)
            .collect();
        let inactive: Vec<DpId> = st
            .members
            .keys()
            .copied()
            .filter(|d| !is_eligible(d))
            .collect();
        let active_changed = active != st.active;
        if !active_changed && standbys == st.standbys && inactive == st.inactive {
            return None;
        }
        if active_changed {
            st.active = active;
            st.epoch += 1;
        }
        st.standbys = standbys;
        st.inactive = inactive;
        Some(decision_of(scope, st))
    }

    fn push_assignments(&self, d: &ScopeDecision, out: &mut Vec<Assignment>) {
        let roles = d
            .active
            .iter()
            .map(|&a| (a, DpRole::Active))
            .chain(d.standbys.iter().map(|&s| (s, DpRole::Standby)))
            .chain(d.inactive.iter().map(|&s| (s, DpRole::Inactive)));
        for (dp, role) in roles {
            if let Some(addr) = self.multicast.get(dp) {
                out.push(Assignment {
                    dp,
                    scope: d.scope,
                    role,
                    epoch: d.epoch,
                    multicast_group: addr,
                });
            }
        }
    }

    /// The administrator's explicit choice: make `dp` the active DP of `scope` now, even if
    /// the current active DP is healthy. Takes effect at once (new epoch) and returns the
    /// resulting round for that scope.
    ///
    /// # Errors
    /// [`ElectionError::NotRegistered`] if `dp` does not serve `scope`,
    /// [`ElectionError::NotEligible`] if it is down or short of disk at `now`.
    pub fn make_active(&mut self, scope: ScopeId, dp: DpId, now: Instant) -> Result<Round> {
        let member = self
            .scopes
            .get(&scope)
            .is_some_and(|s| s.members.contains_key(&dp));
        if !member {
            return Err(ElectionError::NotRegistered { dp, scope });
        }
        let st = self
            .dps
            .get_mut(&dp)
            .ok_or(ElectionError::UnknownDp { dp })?;
        if let Err(reason) = eligibility(&self.config, st, now) {
            return Err(ElectionError::NotEligible { dp, scope, reason });
        }
        if !st.eligible {
            st.eligible = true;
            self.dirty.extend(st.scopes.iter().copied());
        }
        let s = self
            .scopes
            .get_mut(&scope)
            .ok_or(ElectionError::NotRegistered { dp, scope })?;
        if s.active != Some(dp) {
            s.active = Some(dp);
            s.epoch += 1;
            // Force the standby lists to be recomputed by `decide`.
            s.standbys.clear();
            s.inactive.clear();
            s.standbys.push(dp);
        }
        let mut out = Round::default();
        if let Some(d) = self.decide(scope) {
            self.push_assignments(&d, &mut out.assignments);
            out.decisions.push(d);
        }
        Ok(out)
    }

    /// The current decision of `scope`.
    pub fn decision(&self, scope: ScopeId) -> Option<ScopeDecision> {
        self.scopes.get(&scope).map(|st| decision_of(scope, st))
    }

    /// The current decision of every scope, by scope.
    pub fn decisions(&self) -> Vec<ScopeDecision> {
        self.scopes
            .iter()
            .map(|(&s, st)| decision_of(s, st))
            .collect()
    }

    /// The active DP of `scope` and the scope's epoch.
    pub fn active(&self, scope: ScopeId) -> Option<(DpId, u64)> {
        self.scopes
            .get(&scope)
            .and_then(|s| s.active.map(|a| (a, s.epoch)))
    }

    /// The epoch of `scope` (0 before its first active DP).
    pub fn epoch(&self, scope: ScopeId) -> u64 {
        self.scopes.get(&scope).map_or(0, |s| s.epoch)
    }

    /// Decides every scope afresh at `now` and computes the serving DP of every device.
    pub fn recompute_all(&mut self, now: Instant) -> Recompute {
        self.dirty.extend(self.scopes.keys().copied());
        let changes = self.round(now);
        Recompute {
            changes,
            decisions: self.decisions(),
            serving: self.serving_table(),
        }
    }

    // ----- nearest DP ----------------------------------------------------------------

    fn serving_via(&self, scope: ScopeId) -> Option<Serving> {
        let st = self.scopes.get(&scope)?;
        let dp = st.active?;
        Some(Serving {
            dp,
            scope,
            epoch: st.epoch,
            multicast_group: self.multicast.get(dp)?,
        })
    }

    /// The DP serving `device`, by the precedence documented on [`ScopeId`]: its network
    /// location, then the nearest group up its hierarchy, then its broadcast domain; only
    /// scopes with an active DP count. Reflects the last round.
    ///
    /// # Errors
    /// [`ElectionError::UnknownDevice`].
    pub fn serving(&self, device: DeviceId) -> Result<Option<Serving>> {
        let p = self
            .devices
            .get(&device)
            .ok_or(ElectionError::UnknownDevice { device })?;
        if let Some(s) = p
            .location
            .and_then(|l| self.serving_via(ScopeId::NetworkLocation(l)))
        {
            return Ok(Some(s));
        }
        let mut cur = self.tree.index_of(p.group);
        while let Some(i) = cur {
            if let Some(s) = self.serving_via(ScopeId::Group(self.tree.id_at(i))) {
                return Ok(Some(s));
            }
            cur = self.tree.parent_idx(i);
        }
        Ok(p.broadcast_domain
            .and_then(|b| self.serving_via(ScopeId::BroadcastDomain(b))))
    }

    /// The serving DP of every device, by device; same answers as [`Election::serving`],
    /// computed in one pass over the tree.
    pub fn serving_table(&self) -> Vec<(DeviceId, Option<Serving>)> {
        let mut nearest: Vec<Option<Serving>> = vec![None; self.tree.len()];
        for &i in self.tree.topological() {
            nearest[i] = self
                .serving_via(ScopeId::Group(self.tree.id_at(i)))
                .or_else(|| self.tree.parent_idx(i).and_then(|p| nearest[p]));
        }
        self.devices
            .iter()
            .map(|(&d, p)| {
                let s = p
                    .location
                    .and_then(|l| self.serving_via(ScopeId::NetworkLocation(l)))
                    .or_else(|| self.tree.index_of(p.group).and_then(|i| nearest[i]))
                    .or_else(|| {
                        p.broadcast_domain
                            .and_then(|b| self.serving_via(ScopeId::BroadcastDomain(b)))
                    });
                (d, s)
            })
            .collect()
    }

    // ----- automatic assignment ------------------------------------------------------

    /// Whether automatic assignment is on (after the last [`Election::auto_assign`]).
    pub fn auto_enabled(&self) -> bool {
        self.auto_on
    }

    /// One pass of automatic assignment.
    ///
    /// Applies the hysteresis rule to the number of managed devices; updates each placed
    /// device's broadcast domain from `domains`; then, if on, gives every domain the DP count
    /// of the policy ([`AutoAssignPolicy`](crate::AutoAssignPolicy)): automatic DPs that are
    /// still members of their domain and have enough disk are kept (stability), missing ones
    /// are picked from `candidates` (inventory facts of devices) by the ranking criteria of
    /// [`RankKey`], surplus ones (lowest ranked first) are removed. If off, every automatic
    /// registration is removed. Manual registrations are never touched.
    pub fn auto_assign(
        &mut self,
        domains: &BroadcastDomains,
        candidates: &BTreeMap<DeviceId, NodeFacts>,
    ) -> AutoOutcome {
        let policy = self.config.auto_assignment.clone();
        let on = policy.next_state(self.auto_on, self.devices.len());
        self.auto_on = on;
        let mut out = AutoOutcome {
            enabled: on,
            ..AutoOutcome::default()
        };
        for (&d, p) in self.devices.iter_mut() {
            if let Some(b) = domains.domain_of(d) {
                p.broadcast_domain = Some(b);
            }
        }
        // Current automatic registrations per domain.
        let mut current: BTreeMap<BroadcastDomainId, Vec<DpId>> = BTreeMap::new();
        for (scope, st) in &self.scopes {
            if let ScopeId::BroadcastDomain(b) = *scope {
                for (&dp, &o) in &st.members {
                    if o == Origin::Automatic {
                        current.entry(b).or_default().push(dp);
                    }
                }
            }
        }
        let min_disk = self.config.min_free_disk_bytes;
        let fits = |d: &DeviceId| {
            candidates
                .get(d)
                .is_some_and(|f| f.free_disk_bytes >= min_disk)
        };
        let key = |d: DeviceId| {
            candidates
                .get(&d)
                .map(|f| RankKey::new(d, f))
                .unwrap_or_else(|| RankKey::new(d, &NodeFacts::new(0).with_sleeping(true)))
        };
        let mut remove: Vec<(DpId, BroadcastDomainId)> = Vec::new();
        let mut add: Vec<(DpId, BroadcastDomainId)> = Vec::new();
        if on {
            // One ordered pass over the candidates sorts them into their domains.
            let mut pools: BTreeMap<BroadcastDomainId, Vec<(RankKey, DeviceId)>> = BTreeMap::new();
            for (&d, f) in candidates {
                if f.free_disk_bytes >= min_disk
                    && let Some(b) = domains.domain_of(d)
                {
                    pools.entry(b).or_default().push((RankKey::new(d, f), d));
                }
            }
            for (b, members) in domains.iter() {
                let scope = ScopeId::BroadcastDomain(b);
                let target = policy.segment_target(members.len());
                let acceptable = policy.segment_count(members.len()).acceptable;
                let mut kept: Vec<DpId> = current
                    .remove(&b)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|d| {
                        let keep = members.binary_search(d).is_ok() && fits(d);
                        if !keep {
                            remove.push((*d, b));
                        }
                        keep
                    })
                    .collect();
                kept.sort_by_cached_key(|&d| key(d));
                while kept.len() > target {
                    if let Some(d) = kept.pop() {
                        remove.push((d, b));
                    }
                }
                let mut have = kept.len();
                if have < target {
                    let registered: BTreeSet<DpId> = self
                        .scopes
                        .get(&scope)
                        .map(|s| s.members.keys().copied().collect())
                        .unwrap_or_default();
                    let mut pool = pools.remove(&b).unwrap_or_default();
                    pool.retain(|(_, d)| !registered.contains(d));
                    let need = target - have;
                    if pool.len() > need {
                        pool.select_nth_unstable(need - 1);
                        pool.truncate(need);
                    }
                    pool.sort_unstable();
                    for (_, d) in pool {
                        add.push((d, b));
                        have += 1;
                    }
                }
                if have < acceptable {
                    out.shortfalls.push((b, have, acceptable));
                }
            }
        }
        // Whatever is left in `current` belongs to vanished domains, or everything if off.
        for (b, dps) in current {
            remove.extend(dps.into_iter().map(|d| (d, b)));
        }
        for (dp, b) in remove {
            if self.unregister(dp, ScopeId::BroadcastDomain(b)).is_ok() {
                out.removed.push((dp, b));
            }
        }
        for (dp, b) in add {
            match self.register(dp, ScopeId::BroadcastDomain(b), Origin::Automatic) {
                Ok(_) => out.added.push((dp, b)),
                Err(e) => out.errors.push(e),
            }
        }
        out
    }
}

fn rank_key(dps: &BTreeMap<DpId, DpState>, d: DpId) -> RankKey {
    let facts = dps
        .get(&d)
        .and_then(|s| s.facts)
        .unwrap_or_else(|| NodeFacts::new(0).with_sleeping(true));
    RankKey::new(d, &facts)
}

fn decision_of(scope: ScopeId, st: &ScopeState) -> ScopeDecision {
    ScopeDecision {
        scope,
        epoch: st.epoch,
        active: st.active,
        standbys: st.standbys.clone(),
        inactive: st.inactive.clone(),
    }
}

fn eligibility(
    cfg: &ElectionConfig,
    st: &DpState,
    now: Instant,
) -> std::result::Result<(), Ineligibility> {
    let (Some(facts), Some(seen)) = (st.facts, st.last_seen) else {
        return Err(Ineligibility::NeverHeard);
    };
    let silent = now.saturating_duration_since(seen);
    if silent >= cfg.down_after() {
        let interval = cfg.heartbeat_interval().as_nanos().max(1);
        let missed = u64::try_from(silent.as_nanos() / interval).unwrap_or(u64::MAX);
        return Err(Ineligibility::MissedHeartbeats {
            missed,
            limit: cfg.missed_heartbeats,
        });
    }
    if facts.free_disk_bytes < cfg.min_free_disk_bytes {
        return Err(Ineligibility::LowDisk {
            free_bytes: facts.free_disk_bytes,
            required_bytes: cfg.min_free_disk_bytes,
        });
    }
    Ok(())
}
