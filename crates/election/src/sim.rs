//! A deterministic simulation harness for the election: a virtual clock, a small seeded
//! PRNG, and a fleet of simulated DPs that crash, recover, get partitioned from the server,
//! rejoin, lose heartbeats and fill their disks, while the harness checks the election's
//! invariants after every decision round.
//!
//! The same [`SimConfig`] (seed included) always gives the same run, decision for decision;
//! [`SimReport::digest`] condenses every decision into one number to compare runs.
//!
//! ```
//! use outpost_election::sim::{Sim, SimConfig};
//!
//! let mut config = SimConfig::default();
//! config.seed = 7;
//! config.dps = 60;
//! config.groups = 30;
//! config.devices = 300;
//! config.steps = 40;
//! let report = Sim::new(config.clone())?.run();
//! assert!(report.violations.is_empty(), "{:?}", report.violations);
//! assert_eq!(report.digest, Sim::new(config)?.run().digest);
//! # Ok::<(), outpost_election::ElectionError>(())
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::config::{ElectionConfig, GIB};
use crate::engine::{
    Assignment, DevicePlacement, DpRole, Election, IssueEvent, Origin, ScopeDecision,
};
use crate::error::Result;
use crate::fence::{FenceOutcome, RoleFence};
use crate::health::{Heartbeat, NodeFacts, OsClass};
use crate::ids::{BroadcastDomainId, DeviceId, DpId, GroupId, LocationId, ScopeId};
use crate::tree::{GroupEdge, GroupTree};

/// The simulation's generator: the one seedable PRNG of the workspace.
pub use outpost_wire::rng::SplitMix64;

/// A virtual clock: a fixed base instant plus simulated elapsed time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtualClock {
    base: Instant,
    elapsed: Duration,
}

impl VirtualClock {
    /// A clock starting at `base`. Only differences between instants matter, so any base
    /// gives the same run.
    pub fn new(base: Instant) -> Self {
        Self {
            base,
            elapsed: Duration::ZERO,
        }
    }

    /// The current virtual instant.
    pub fn now(&self) -> Instant {
        self.base + self.elapsed
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// Moves the clock forward.
    pub fn advance(&mut self, by: Duration) {
        self.elapsed += by;
    }
}

/// Parameters of a simulated run. Probabilities are per node and step, in millionths.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SimConfig {
    /// PRNG seed.
    pub seed: u64,
    /// Administration groups (a random tree).
    pub groups: usize,
    /// Distribution points.
    pub dps: usize,
    /// Average DPs per scope (at least 1).
    pub dps_per_scope: usize,
    /// Managed devices (placed at random; checked for nearest-DP consistency).
    pub devices: usize,
    /// Decision rounds (one per heartbeat interval).
    pub steps: usize,
    /// Chance an up node crashes.
    pub crash_per_million: u32,
    /// Chance a crashed node comes back.
    pub recover_per_million: u32,
    /// Chance an up node is cut off from the server.
    pub partition_per_million: u32,
    /// Chance a partitioned node rejoins.
    pub heal_per_million: u32,
    /// Chance one heartbeat of an up node is lost.
    pub heartbeat_loss_per_million: u32,
    /// Chance a node's disk fills by 1 to 8 GiB.
    pub disk_fill_per_million: u32,
    /// Chance a node's disk is cleaned up (back to 40 GiB free).
    pub disk_cleanup_per_million: u32,
    /// Chance per step that the administrator makes a random standby active.
    pub admin_switch_per_million: u32,
    /// Chance per step that every DP of one random scope is cut off at once (a site losing
    /// its link); they rejoin one by one at `heal_per_million`.
    pub site_partition_per_million: u32,
    /// Record every decision in [`SimReport::trace`].
    pub record_trace: bool,
    /// The engine's configuration.
    pub election: ElectionConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            groups: 100,
            dps: 200,
            dps_per_scope: 3,
            devices: 1_000,
            steps: 100,
            crash_per_million: 10_000,
            recover_per_million: 100_000,
            partition_per_million: 10_000,
            heal_per_million: 150_000,
            heartbeat_loss_per_million: 20_000,
            disk_fill_per_million: 10_000,
            disk_cleanup_per_million: 30_000,
            admin_switch_per_million: 100_000,
            site_partition_per_million: 50_000,
            record_trace: false,
            election: ElectionConfig::default(),
        }
    }
}

/// What a simulated node is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeStatus {
    /// Running and reachable.
    Up,
    /// Down; sends nothing, receives nothing.
    Crashed,
    /// Running but cut off from the server; keeps its last beliefs.
    Partitioned,
}

/// One simulated DP.
#[derive(Debug, Clone)]
pub struct SimNode {
    /// Its id.
    pub dp: DpId,
    /// What it is doing.
    pub status: NodeStatus,
    /// Its free disk space.
    pub free_disk_bytes: u64,
    /// What it believes its role is, per scope, with the epoch it learned it in.
    pub believed: RoleFence,
    last_heartbeat: Option<Duration>,
}

/// An invariant the harness found broken.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// Two DPs were active in one scope with the same epoch.
    TwoActivesInEpoch {
        /// The scope.
        scope: ScopeId,
        /// The epoch.
        epoch: u64,
        /// The two DPs.
        dps: (DpId, DpId),
    },
    /// A scope's epoch went down.
    EpochWentBack {
        /// The scope.
        scope: ScopeId,
        /// Before.
        from: u64,
        /// After.
        to: u64,
    },
    /// A scope with an eligible member had no active DP after a round.
    NoActive {
        /// The scope.
        scope: ScopeId,
        /// Simulated time.
        at: Duration,
    },
    /// A scope's active DP was not eligible after a round.
    IneligibleActive {
        /// The scope.
        scope: ScopeId,
        /// The DP.
        dp: DpId,
        /// Simulated time.
        at: Duration,
    },
    /// A failed active DP was still active in the round at which it had missed the
    /// configured number of heartbeats.
    NotReplaced {
        /// The scope.
        scope: ScopeId,
        /// The DP.
        dp: DpId,
        /// When the deadline passed.
        deadline: Duration,
    },
    /// A node that was heard in this step holds a role or epoch other than the engine's
    /// (a role message was missing from the round's output).
    StaleBelief {
        /// The node.
        dp: DpId,
        /// The scope.
        scope: ScopeId,
        /// What it believes.
        believed: Option<(DpRole, u64)>,
        /// What the engine says.
        actual: (DpRole, u64),
    },
    /// A device's serving DP was not the active DP of the scope named.
    ServingMismatch {
        /// The device.
        device: DeviceId,
    },
}

/// What a run did and found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SimReport {
    /// Rounds run.
    pub steps: usize,
    /// Scope decisions emitted.
    pub decisions: u64,
    /// Decisions that changed a scope's active DP.
    pub active_changes: u64,
    /// Crashes.
    pub crashes: u64,
    /// Partitions.
    pub partitions: u64,
    /// Rejoins after a crash or a partition.
    pub rejoins: u64,
    /// Disk fill events.
    pub disk_fills: u64,
    /// Whole-scope partitions.
    pub site_partitions: u64,
    /// Administrator switches carried out.
    pub admin_switches: u64,
    /// Failed active DPs that were replaced (or left with no successor) in time.
    pub failovers: u64,
    /// Role messages that told a DP believing itself active that it had been replaced.
    pub stepped_down: u64,
    /// Low-disk security issues raised.
    pub low_disk_issues: u64,
    /// Invariants found broken (empty when all held).
    pub violations: Vec<Violation>,
    /// FNV-1a digest of every decision in order.
    pub digest: u64,
    /// Every decision with its simulated time, if recorded.
    pub trace: Vec<(Duration, ScopeDecision)>,
}

/// The simulation.
#[derive(Debug, Clone)]
pub struct Sim {
    cfg: SimConfig,
    clock: VirtualClock,
    rng: SplitMix64,
    engine: Election,
    nodes: Vec<SimNode>,
    scopes: Vec<ScopeId>,
    actives_seen: BTreeMap<(ScopeId, u64), DpId>,
    last_epoch: BTreeMap<ScopeId, u64>,
    pending: BTreeMap<(ScopeId, DpId), Duration>,
    heard: Vec<usize>,
    report: SimReport,
}

const FNV_PRIME: u64 = 0x0100_0000_01b3;

fn fnv(h: &mut u64, v: u64) {
    for b in v.to_le_bytes() {
        *h ^= u64::from(b);
        *h = h.wrapping_mul(FNV_PRIME);
    }
}

impl Sim {
    /// Builds the fleet: a random group tree, DPs registered in random scopes (mostly group
    /// scopes, some broadcast-domain and network-location scopes, some DPs in two scopes),
    /// and devices placed at random.
    ///
    /// # Errors
    /// Configuration errors of the engine (for example a multicast range too small for
    /// `dps`).
    pub fn new(cfg: SimConfig) -> Result<Self> {
        let mut rng = SplitMix64::new(cfg.seed);
        let groups = cfg.groups.max(1);
        let tree = random_tree(&mut rng, groups)?;
        let mut engine = Election::new(cfg.election.clone(), tree)?;
        let scope_count = (cfg.dps / cfg.dps_per_scope.max(1)).max(1);
        let scopes = random_scopes(&mut rng, scope_count, groups);
        let nodes = register_dps(&mut engine, &mut rng, cfg.dps, &scopes)?;
        place_devices(&mut engine, &mut rng, cfg.devices, groups, scope_count)?;
        Ok(Self {
            clock: VirtualClock::new(Instant::now()),
            rng,
            engine,
            nodes,
            scopes,
            actives_seen: BTreeMap::new(),
            last_epoch: BTreeMap::new(),
            pending: BTreeMap::new(),
            heard: Vec::new(),
            report: SimReport {
                digest: 0xcbf2_9ce4_8422_2325,
                ..SimReport::default()
            },
            cfg,
        })
    }

    /// The engine under test.
    pub fn engine(&self) -> &Election {
        &self.engine
    }

    /// The simulated nodes.
    pub fn nodes(&self) -> &[SimNode] {
        &self.nodes
    }

    /// The virtual clock.
    pub fn clock(&self) -> &VirtualClock {
        &self.clock
    }

    /// The report so far.
    pub fn report(&self) -> &SimReport {
        &self.report
    }

    /// Runs all configured steps and returns the report.
    pub fn run(mut self) -> SimReport {
        for _ in 0..self.cfg.steps {
            self.step();
        }
        self.report
    }

    fn node_failed(&mut self, i: usize) {
        let dp = self.nodes[i].dp;
        let Some(last) = self.nodes[i].last_heartbeat else {
            return;
        };
        // Computed from the raw settings, independently of the engine's own arithmetic.
        let interval = Duration::from_secs(self.cfg.election.heartbeat_interval_secs);
        let deadline = last + interval.saturating_mul(self.cfg.election.missed_heartbeats);
        for scope in self.engine.scopes_of(dp) {
            if self.engine.active(scope).map(|a| a.0) == Some(dp) {
                self.pending.entry((scope, dp)).or_insert(deadline);
            }
        }
    }

    /// One heartbeat interval: node events, heartbeats, maybe an administrator switch, one
    /// decision round, then the invariant checks.
    pub fn step(&mut self) {
        let tick = self.cfg.election.heartbeat_interval();
        self.clock.advance(tick);
        let now = self.clock.now();
        let at = self.clock.elapsed();
        self.heard.clear();
        self.maybe_partition_a_site();
        for i in 0..self.nodes.len() {
            self.change_status(i);
            self.change_disk(i);
            if self.nodes[i].status == NodeStatus::Up
                && !self.rng.chance(self.cfg.heartbeat_loss_per_million)
            {
                self.heartbeat(i, now, at);
            }
        }
        self.maybe_switch_by_admin(now, at);
        let round = self.engine.round(now);
        self.report.low_disk_issues += round
            .issues
            .iter()
            .filter(|i| matches!(i, IssueEvent::LowDiskRaised { .. }))
            .count() as u64;
        self.absorb(&round.decisions, &round.assignments, at);
        self.check(now, at);
        self.report.steps += 1;
    }

    /// By chance, every up DP of one random scope is cut off at once.
    fn maybe_partition_a_site(&mut self) {
        if self.rng.chance(self.cfg.site_partition_per_million) && !self.scopes.is_empty() {
            let scope = self.scopes[self.rng.index(self.scopes.len())];
            self.report.site_partitions += 1;
            for (dp, _) in self.engine.members(scope) {
                if let Ok(i) = self.nodes.binary_search_by_key(&dp, |n| n.dp)
                    && self.nodes[i].status == NodeStatus::Up
                {
                    self.nodes[i].status = NodeStatus::Partitioned;
                    self.report.partitions += 1;
                    self.node_failed(i);
                }
            }
        }
    }

    /// By chance, node `i` crashes or is cut off (when up), or comes back (when crashed or
    /// cut off).
    fn change_status(&mut self, i: usize) {
        match self.nodes[i].status {
            NodeStatus::Up => {
                if self.rng.chance(self.cfg.crash_per_million) {
                    self.nodes[i].status = NodeStatus::Crashed;
                    self.report.crashes += 1;
                    self.node_failed(i);
                } else if self.rng.chance(self.cfg.partition_per_million) {
                    self.nodes[i].status = NodeStatus::Partitioned;
                    self.report.partitions += 1;
                    self.node_failed(i);
                }
            }
            NodeStatus::Crashed => {
                if self.rng.chance(self.cfg.recover_per_million) {
                    self.nodes[i].status = NodeStatus::Up;
                    self.report.rejoins += 1;
                }
            }
            NodeStatus::Partitioned => {
                if self.rng.chance(self.cfg.heal_per_million) {
                    self.nodes[i].status = NodeStatus::Up;
                    self.report.rejoins += 1;
                }
            }
        }
    }

    /// By chance, node `i`'s disk fills by 1 to 8 GiB, or else is cleaned up.
    fn change_disk(&mut self, i: usize) {
        if self.rng.chance(self.cfg.disk_fill_per_million) {
            let fill = (1 + self.rng.below(8)) * GIB;
            let n = &mut self.nodes[i];
            n.free_disk_bytes = n.free_disk_bytes.saturating_sub(fill);
            self.report.disk_fills += 1;
        } else if self.rng.chance(self.cfg.disk_cleanup_per_million) {
            self.nodes[i].free_disk_bytes = 40 * GIB;
        }
    }

    /// Node `i`'s heartbeat at `now` (`at` into the run). Once the engine takes it, the
    /// node is heard, not failed any more, and learns its current roles from the reply.
    fn heartbeat(&mut self, i: usize, now: Instant, at: Duration) {
        let n = &self.nodes[i];
        let facts = NodeFacts::new(n.free_disk_bytes)
            .with_uptime_secs(at.as_secs())
            .with_os(if n.dp.0.is_multiple_of(7) {
                OsClass::Workstation
            } else {
                OsClass::Server
            });
        let dp = n.dp;
        if self
            .engine
            .heartbeat(Heartbeat::new(dp, facts), now)
            .is_err()
        {
            return;
        }
        self.nodes[i].last_heartbeat = Some(at);
        self.heard.push(i);
        // A node that is heard again is not failed any more.
        self.pending.retain(|(_, d), _| *d != dp);
        // The reply to a heartbeat carries the node's current roles.
        for scope in self.engine.scopes_of(dp) {
            if let Some(d) = self.engine.decision(scope)
                && let Some(addr) = self.engine.multicast_group(dp)
            {
                self.tell(
                    i,
                    &Assignment {
                        dp,
                        scope,
                        role: role_in(&d, dp),
                        epoch: d.epoch,
                        multicast_group: addr,
                    },
                );
            }
        }
    }

    /// By chance, the administrator makes a random standby of a random scope active
    /// (at `now`, `at` into the run).
    fn maybe_switch_by_admin(&mut self, now: Instant, at: Duration) {
        if self.rng.chance(self.cfg.admin_switch_per_million) && !self.scopes.is_empty() {
            let scope = self.scopes[self.rng.index(self.scopes.len())];
            if let Some(d) = self.engine.decision(scope)
                && !d.standbys.is_empty()
            {
                let pick = d.standbys[self.rng.index(d.standbys.len())];
                if let Ok(r) = self.engine.make_active(scope, pick, now) {
                    self.report.admin_switches += 1;
                    self.absorb(&r.decisions, &r.assignments, at);
                }
            }
        }
    }

    /// Node `i` takes role message `a` (its fence decides); one that tells a DP believing
    /// itself active that it was replaced is counted.
    fn tell(&mut self, i: usize, a: &Assignment) {
        let outcome = self.nodes[i].believed.apply(a);
        if matches!(
            outcome,
            FenceOutcome::Accepted {
                stepped_down: true,
                ..
            }
        ) {
            self.report.stepped_down += 1;
        }
    }

    fn absorb(&mut self, decisions: &[ScopeDecision], assignments: &[Assignment], at: Duration) {
        for d in decisions {
            self.report.decisions += 1;
            let h = &mut self.report.digest;
            fnv(h, u64::from(d.scope.kind().code()));
            fnv(h, d.scope.raw());
            fnv(h, d.epoch);
            fnv(h, d.active.map_or(u64::MAX, |a| a.0));
            for s in &d.standbys {
                fnv(h, s.0);
            }
            let prev = self.last_epoch.insert(d.scope, d.epoch).unwrap_or(0);
            if d.epoch < prev {
                self.report.violations.push(Violation::EpochWentBack {
                    scope: d.scope,
                    from: prev,
                    to: d.epoch,
                });
            }
            if d.epoch > prev {
                self.report.active_changes += 1;
            }
            if let Some(a) = d.active {
                match self.actives_seen.get(&(d.scope, d.epoch)) {
                    Some(&other) if other != a => {
                        self.report.violations.push(Violation::TwoActivesInEpoch {
                            scope: d.scope,
                            epoch: d.epoch,
                            dps: (other, a),
                        });
                    }
                    _ => {
                        self.actives_seen.insert((d.scope, d.epoch), a);
                    }
                }
            }
            if self.cfg.record_trace {
                self.report.trace.push((at, d.clone()));
            }
        }
        for a in assignments {
            if let Ok(i) = self.nodes.binary_search_by_key(&a.dp, |n| n.dp)
                && self.nodes[i].status == NodeStatus::Up
            {
                self.tell(i, a);
            }
        }
    }

    /// The invariant checks after a round (at `now`, `at` into the run): what is broken
    /// goes into the report.
    fn check(&mut self, now: Instant, at: Duration) {
        let mut violations = Vec::new();
        self.check_actives(now, at, &mut violations);
        self.check_beliefs(&mut violations);
        self.check_heard(&mut violations);
        self.check_failovers(at, &mut violations);
        // Nearest-DP answers name an active DP with its current epoch, and the one-pass
        // table agrees with the per-device lookup.
        if self.report.steps.is_multiple_of(10) {
            self.check_serving(&mut violations);
        }
        self.report.violations.extend(violations);
    }

    /// Every scope with an eligible member has an active DP, and that DP is eligible (at
    /// `now`, `at` into the run).
    fn check_actives(&self, now: Instant, at: Duration, violations: &mut Vec<Violation>) {
        for &scope in &self.scopes {
            let members = self.engine.members(scope);
            let eligible = |dp: DpId| self.engine.eligibility(dp, now).is_ok_and(|r| r.is_ok());
            let any = members.iter().any(|&(d, _)| eligible(d));
            match self.engine.active(scope) {
                None if any => violations.push(Violation::NoActive { scope, at }),
                Some((dp, _)) if !eligible(dp) => {
                    violations.push(Violation::IneligibleActive { scope, dp, at });
                }
                _ => {}
            }
        }
    }

    /// Nodes' own view: at most one node believes it is active per (scope, epoch).
    fn check_beliefs(&self, violations: &mut Vec<Violation>) {
        let mut believers: BTreeMap<(ScopeId, u64), DpId> = BTreeMap::new();
        for n in &self.nodes {
            for (&scope, role, epoch) in n.believed.iter() {
                if role == DpRole::Active
                    && let Some(&other) = believers.get(&(scope, epoch))
                    && other != n.dp
                {
                    violations.push(Violation::TwoActivesInEpoch {
                        scope,
                        epoch,
                        dps: (other, n.dp),
                    });
                } else if role == DpRole::Active {
                    believers.insert((scope, epoch), n.dp);
                }
            }
        }
    }

    /// Fencing: every node heard in this step knows its current role and epoch, i.e. the
    /// round's role messages covered every change.
    fn check_heard(&self, violations: &mut Vec<Violation>) {
        for &i in &self.heard {
            let n = &self.nodes[i];
            for scope in self.engine.scopes_of(n.dp) {
                if let Some(d) = self.engine.decision(scope) {
                    let actual = (role_in(&d, n.dp), d.epoch);
                    let believed = n.believed.role(&scope);
                    if believed != Some(actual) {
                        violations.push(Violation::StaleBelief {
                            dp: n.dp,
                            scope,
                            believed,
                            actual,
                        });
                    }
                }
            }
        }
    }

    /// Failed actives must be gone by their deadline (`at` into the run): those replaced
    /// are counted as failovers, those still active and not yet due stay pending.
    fn check_failovers(&mut self, at: Duration, violations: &mut Vec<Violation>) {
        let pending = std::mem::take(&mut self.pending);
        for ((scope, dp), deadline) in pending {
            if self.engine.active(scope).map(|a| a.0) != Some(dp) {
                self.report.failovers += 1;
            } else if at >= deadline {
                violations.push(Violation::NotReplaced {
                    scope,
                    dp,
                    deadline,
                });
            } else {
                self.pending.insert((scope, dp), deadline);
            }
        }
    }

    /// Every device's serving DP from the one-pass table is the one the per-device lookup
    /// names, and the active DP of its scope with its current epoch.
    fn check_serving(&self, violations: &mut Vec<Violation>) {
        let table = self.engine.serving_table();
        for (d, s) in table {
            let single = self.engine.serving(d).ok().flatten();
            let consistent = single == s
                && s.is_none_or(|s| self.engine.active(s.scope) == Some((s.dp, s.epoch)));
            if !consistent {
                violations.push(Violation::ServingMismatch { device: d });
            }
        }
    }
}

fn role_in(d: &ScopeDecision, dp: DpId) -> DpRole {
    if d.active == Some(dp) {
        DpRole::Active
    } else if d.standbys.contains(&dp) {
        DpRole::Standby
    } else {
        DpRole::Inactive
    }
}

/// A random tree of `groups` groups (ids from 1), each below one of the groups before it.
fn random_tree(rng: &mut SplitMix64, groups: usize) -> Result<GroupTree> {
    let mut edges = Vec::with_capacity(groups);
    for i in 0..groups {
        let parent = if i == 0 {
            None
        } else {
            Some(GroupId(rng.below(i as u64) + 1))
        };
        edges.push(GroupEdge {
            group: GroupId(i as u64 + 1),
            parent,
        });
    }
    GroupTree::from_edges(edges)
}

/// Up to `count` distinct scopes: mostly groups' (of `groups`), one in ten a broadcast
/// domain's, one in ten a network location's.
fn random_scopes(rng: &mut SplitMix64, count: usize, groups: usize) -> Vec<ScopeId> {
    let mut scopes = Vec::with_capacity(count);
    for i in 0..count {
        let scope = match rng.below(10) {
            0 => ScopeId::BroadcastDomain(BroadcastDomainId(i as u64)),
            1 => ScopeId::NetworkLocation(LocationId(i as u64)),
            _ => ScopeId::Group(GroupId(rng.below(groups as u64) + 1)),
        };
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    scopes
}

/// Registers `dps` DPs in `scopes` (every scope gets one, the rest go at random, one in
/// ten in a second scope too) and returns their simulated nodes, up, with 5 to 60 GiB
/// free.
fn register_dps(
    engine: &mut Election,
    rng: &mut SplitMix64,
    dps: usize,
    scopes: &[ScopeId],
) -> Result<Vec<SimNode>> {
    let mut nodes = Vec::with_capacity(dps);
    for i in 0..dps {
        let dp = DeviceId(1_000_000 + i as u64);
        // Every scope gets at least one DP, the rest are spread at random.
        let first = if i < scopes.len() {
            scopes[i]
        } else {
            scopes[rng.index(scopes.len())]
        };
        engine.register(dp, first, Origin::Manual)?;
        if rng.below(10) == 0 {
            let second = scopes[rng.index(scopes.len())];
            if second != first {
                engine.register(dp, second, Origin::Manual)?;
            }
        }
        nodes.push(SimNode {
            dp,
            status: NodeStatus::Up,
            free_disk_bytes: (5 + rng.below(56)) * GIB,
            believed: RoleFence::new(),
            last_heartbeat: None,
        });
    }
    Ok(nodes)
}

/// Places `devices` devices in random groups (of `groups`), one in ten at a network
/// location too (of `scope_count`), one in two in a broadcast domain.
fn place_devices(
    engine: &mut Election,
    rng: &mut SplitMix64,
    devices: usize,
    groups: usize,
    scope_count: usize,
) -> Result<()> {
    let domains = (scope_count / 10).max(1) as u64;
    for i in 0..devices {
        let d = DeviceId(i as u64 + 1);
        let mut p = DevicePlacement::in_group(GroupId(rng.below(groups as u64) + 1));
        if rng.below(10) == 0 {
            p = p.with_location(LocationId(rng.below(scope_count as u64)));
        }
        if rng.below(2) == 0 {
            p = p.with_broadcast_domain(BroadcastDomainId(rng.below(domains * 10)));
        }
        engine.place_device(d, p)?;
    }
    Ok(())
}
