//! Update distribution on the device side, and the distribution point (DP) role.
//!
//! Every sync answer carries the DP assignments that concern this device (its own roles, by
//! scope and fencing epoch, and the DP that serves it) and the updates it does not hold yet.
//! [`Planner`] turns them into a [`Plan`] without any I/O:
//!
//! - **active DP** somewhere: take updates from the server (chunk requests over the agent's
//!   own TLS connection path, resumable, checked against the announced SHA-256), then send
//!   each one by multicast to its own group, with manifests signed by the key it reports to
//!   the server, and serve blocks by unicast to devices that missed them;
//! - **standby DP**: take updates by unicast from the active DP, ready to take over; when a
//!   newer epoch makes it active it sends what it holds to its group;
//! - **device** served by a DP: receive the DP's multicast session, accepting only manifests
//!   signed by the key the server vouches for in the assignment; blocks the session did not
//!   deliver, or the whole file when no session shows up, come from the DP by unicast; when
//!   the serving DP changes, reception resumes from the verified blocks already on disk;
//! - **device with no DP**: take updates from the server.
//!
//! Role messages pass through a [`RoleFence`]: an assignment older than the newest epoch seen
//! for its scope is ignored, so a replaced DP never resumes sending on a delayed message, and
//! a DP that sees a newer epoch naming another active steps down (its sender stops).
//!
//! The runtime that carries out plans (sockets, files, tasks) is in the agent's driver;
//! [`chunks`] holds the unicast block service and the resumable download.
//!
//! ```
//! use outpost_agent::distribution::{Planner, Route};
//! use outpost_wire::messages::{DpAssignment, DpRole, ScopeKind, ScopeRef};
//!
//! let scope = Some(ScopeRef { kind: ScopeKind::Group as i32, id: "office".into() });
//! let serving = DpAssignment {
//!     scope: scope.clone(),
//!     dp_device_id: "dp-1".into(),
//!     role: DpRole::Active as i32,
//!     epoch: 3,
//!     multicast_group: "239.255.0.7".into(),
//!     multicast_port: 15001,
//!     signing_key: vec![7u8; 32].into(),
//!     unicast_addr: "10.0.0.5:15002".into(),
//!     ..Default::default()
//! };
//! // A device served by dp-1 receives its multicast session.
//! let mut device = Planner::new("laptop-1", false);
//! let plan = device.plan(&[serving.clone()], Vec::new());
//! assert!(matches!(&plan.route, Route::Multicast(s) if s.dp == "dp-1" && s.epoch == 3));
//!
//! // dp-1 itself, active at epoch 3, takes updates from the server and sends to its group.
//! let mut dp = Planner::new("dp-1", true);
//! let plan = dp.plan(&[serving.clone()], Vec::new());
//! assert_eq!(plan.route, Route::Server);
//! assert_eq!(plan.serve.as_ref().map(|s| s.group.to_string()), Some("239.255.0.7:15001".into()));
//!
//! // Epoch 4 makes another DP active: dp-1 steps down, and a late epoch-3 message cannot
//! // make it active again.
//! let replaced = DpAssignment { role: DpRole::Standby as i32, epoch: 4, upstream: "dp-2".into(), ..serving.clone() };
//! assert!(dp.plan(&[replaced], Vec::new()).stepped_down);
//! assert!(dp.plan(&[serving], Vec::new()).serve.is_none());
//! ```

pub mod chunks;
pub(crate) mod plane;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use outpost_election::{self as election, FenceOutcome, RoleFence};
use outpost_wire::messages::{DpAssignment, DpRole, ScopeRef, UpdateAnnouncement};

/// A scope as the wire names it: its kind and id.
pub type ScopeKey = (i32, String);

fn scope_key(s: &Option<ScopeRef>) -> Option<ScopeKey> {
    s.as_ref().map(|s| (s.kind, s.id.clone()))
}

/// Where a device's multicast comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Source {
    /// The serving DP's device id.
    pub dp: String,
    /// Its multicast group and port.
    pub group: SocketAddr,
    /// The key its manifests must verify with (32 bytes).
    pub key: Bytes,
    /// Where it serves blocks by unicast, if it said.
    pub unicast: Option<String>,
    /// The scope's epoch.
    pub epoch: u64,
}

/// Where this device takes updates from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Route {
    /// From the server (an active DP, or a device no DP serves).
    Server,
    /// By unicast from the active DP (this device is its standby).
    ActiveDp {
        /// The active DP's device id.
        dp: String,
        /// Where it serves blocks.
        addr: String,
    },
    /// The serving DP's multicast session, with unicast fill-in from it.
    Multicast(Source),
}

/// What an active DP sends to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Serve {
    /// Its multicast group and port.
    pub group: SocketAddr,
    /// The scopes it is active in, with their epochs (a change means a new term: what it
    /// holds is sent again).
    pub scopes: BTreeMap<ScopeKey, u64>,
}

/// What the device does with the last sync's distribution part.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Plan {
    /// Where updates come from.
    pub route: Route,
    /// Set when this device is an active DP.
    pub serve: Option<Serve>,
    /// This DP's roles by scope, after fencing.
    pub roles: Vec<(ScopeKey, DpRole, u64)>,
    /// Updates the server announced.
    pub updates: Vec<UpdateAnnouncement>,
    /// Whether this answer took an active role away.
    pub stepped_down: bool,
    /// Assignments ignored because an older epoch than one already seen.
    pub stale: u32,
}

/// Turns sync answers into [`Plan`]s, keeping the DP's fencing record.
#[derive(Debug)]
pub struct Planner {
    device_id: String,
    can_serve: bool,
    fence: RoleFence<ScopeKey>,
    warned: bool,
}

fn parse_group(a: &DpAssignment) -> Option<SocketAddr> {
    let ip: IpAddr = a.multicast_group.parse().ok()?;
    let port = u16::try_from(a.multicast_port).ok().filter(|p| *p != 0)?;
    ip.is_multicast().then_some(SocketAddr::new(ip, port))
}

impl Planner {
    /// A planner for `device_id`; `can_serve` says whether it may act as a DP.
    pub fn new(device_id: impl Into<String>, can_serve: bool) -> Self {
        Planner {
            device_id: device_id.into(),
            can_serve,
            fence: RoleFence::new(),
            warned: false,
        }
    }

    /// The plan for one sync answer.
    pub fn plan(&mut self, assignments: &[DpAssignment], updates: Vec<UpdateAnnouncement>) -> Plan {
        let mut stepped_down = false;
        let mut stale = 0;
        let mut own_groups: BTreeMap<ScopeKey, Option<SocketAddr>> = BTreeMap::new();
        let mut standby_of: Option<String> = None;
        let mut serving: Option<&DpAssignment> = None;
        for a in assignments {
            let Some(scope) = scope_key(&a.scope) else {
                continue;
            };
            if a.dp_device_id != self.device_id {
                if a.role == DpRole::Active as i32 && serving.is_none() {
                    serving = Some(a);
                }
                continue;
            }
            if !self.can_serve {
                if !self.warned {
                    self.warned = true;
                    tracing::warn!(
                        "the server names this device a distribution point, but \
                         distribution.serve is off; the role is ignored"
                    );
                }
                continue;
            }
            let role = match DpRole::try_from(a.role) {
                Ok(DpRole::Active) => election::DpRole::Active,
                Ok(DpRole::Standby) => election::DpRole::Standby,
                _ => election::DpRole::Inactive,
            };
            match self.fence.apply_role(scope.clone(), role, a.epoch) {
                FenceOutcome::Stale { known, got } => {
                    stale += 1;
                    tracing::info!(
                        "role message for {scope:?} at epoch {got} ignored (epoch {known} known)"
                    );
                }
                FenceOutcome::Accepted {
                    stepped_down: s, ..
                } => {
                    stepped_down |= s;
                    own_groups.insert(scope, parse_group(a));
                    if role == election::DpRole::Standby && !a.upstream.is_empty() {
                        standby_of = Some(a.upstream.clone());
                    }
                }
                _ => {}
            }
        }
        let mut serve: Option<Serve> = None;
        let mut roles = Vec::new();
        for (scope, role, epoch) in self.fence.iter() {
            let wire = match role {
                election::DpRole::Active => DpRole::Active,
                election::DpRole::Standby => DpRole::Standby,
                _ => DpRole::None,
            };
            roles.push((scope.clone(), wire, epoch));
            if role == election::DpRole::Active
                && let Some(Some(group)) = own_groups.get(scope)
            {
                let s = serve.get_or_insert_with(|| Serve {
                    group: *group,
                    scopes: BTreeMap::new(),
                });
                s.scopes.insert(scope.clone(), epoch);
            }
        }
        let route = if serve.is_some() {
            Route::Server
        } else if let Some(active) = standby_of {
            match serving.filter(|s| s.dp_device_id == active && !s.unicast_addr.is_empty()) {
                Some(s) => Route::ActiveDp {
                    dp: active,
                    addr: s.unicast_addr.clone(),
                },
                None => Route::Server,
            }
        } else {
            match serving
                .filter(|s| s.dp_device_id != self.device_id && s.signing_key.len() == 32)
                .and_then(|s| parse_group(s).map(|g| (s, g)))
            {
                Some((s, group)) => Route::Multicast(Source {
                    dp: s.dp_device_id.clone(),
                    group,
                    key: s.signing_key.clone(),
                    unicast: (!s.unicast_addr.is_empty()).then(|| s.unicast_addr.clone()),
                    epoch: s.epoch,
                }),
                None => Route::Server,
            }
        };
        Plan {
            route,
            serve,
            roles,
            updates,
            stepped_down,
            stale,
        }
    }
}

/// How an update reached this device (not to be confused with `outpost_gateway::Via`, the
/// path a device connected by).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Delivery {
    /// It was already on disk, verified.
    Disk,
    /// Downloaded from the server.
    Server,
    /// Downloaded from the active DP by unicast.
    Dp,
    /// Received by multicast (with any missing blocks fetched by unicast).
    Multicast,
}

/// The progress of one update on this device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UpdateProgress {
    /// The update's size.
    pub size: u64,
    /// Verified bytes so far (blocks for multicast, bytes for downloads).
    pub done_bytes: u64,
    /// Where it is being taken from (`server`, or a DP's device id).
    pub source: String,
    /// Set once the file is complete and verified.
    pub via: Option<Delivery>,
    /// Blocks fetched by unicast during multicast reception.
    pub fetched_blocks: u32,
    /// Blocks found on disk from an earlier attempt.
    pub resumed_blocks: u32,
    /// The last error, if the last attempt failed.
    pub last_error: Option<String>,
}

/// A multicast session this DP sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SentSession {
    /// The update.
    pub object_id: String,
    /// The group sent to.
    pub group: String,
    /// Bytes sent so far (all datagrams).
    pub bytes_sent: u64,
    /// Receivers that reported completion.
    pub receivers_done: u64,
    /// Whether the session ended.
    pub finished: bool,
    /// Why it stopped early, if it did.
    pub error: Option<String>,
}

/// The device's distribution state, for display and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DistributionStatus {
    /// The DP roles this device holds, by scope, with their epochs.
    pub roles: Vec<(ScopeKey, DpRole, u64)>,
    /// Updates by object id.
    pub updates: BTreeMap<String, UpdateProgress>,
    /// Multicast sessions sent (as an active DP).
    pub sent: Vec<SentSession>,
    /// Chunk bytes served by unicast (as a DP).
    pub unicast_bytes_served: u64,
}
