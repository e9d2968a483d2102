//! Distribution point (DP) scopes, nearest-DP lookup, active/standby election with fencing
//! epochs, and automatic DP assignment.
//!
//! This crate decides which distribution point serves which device, which DP of a scope is
//! active and which are standby, and what happens when one fails. It is pure and sans-IO:
//! facts (group tree, device placements, DP registrations, heartbeats, peer reports) and the
//! current time go in; decisions ([`ScopeDecision`], [`Assignment`], [`Serving`]) come out.
//! Time is always passed in as `now: Instant`; the crate never reads a clock.
//!
//! * Scopes and the precedence between them: [`ScopeId`].
//! * Eligibility, the no-flapping rule and fencing epochs: [`Election`]; the DP's side of
//!   fencing: [`RoleFence`].
//! * Ranking of candidates: [`RankKey`].
//! * Automatic assignment: [`BroadcastDomains`], [`AutoAssignPolicy`], [`Election::auto_assign`].
//! * Unique multicast group addresses: [`MulticastAllocator`].
//! * The sync interval handed to agents: [`SyncIntervalPolicy`].
//! * A deterministic simulation harness (virtual clock, seeded failures): [`sim`].
//!
//! # Example
//!
//! ```
//! use std::time::{Duration, Instant};
//! use outpost_election::{
//!     DeviceId, DevicePlacement, Election, ElectionConfig, GroupEdge, GroupId, GroupTree,
//!     Heartbeat, NodeFacts, Origin, ScopeId, GIB,
//! };
//!
//! // Root group 1 with subgroup 2; a DP pair serves group 1 and all below it.
//! let tree = GroupTree::from_edges([
//!     GroupEdge { group: GroupId(1), parent: None },
//!     GroupEdge { group: GroupId(2), parent: Some(GroupId(1)) },
//! ])?;
//! let mut election = Election::new(ElectionConfig::default(), tree)?;
//! election.place_device(DeviceId(100), DevicePlacement::in_group(GroupId(2)))?;
//! let scope = ScopeId::Group(GroupId(1));
//! election.register(DeviceId(7), scope, Origin::Manual)?;
//! election.register(DeviceId(8), scope, Origin::Manual)?;
//!
//! let t0 = Instant::now();
//! election.heartbeat(Heartbeat::new(DeviceId(7), NodeFacts::new(50 * GIB)), t0)?;
//! election.heartbeat(Heartbeat::new(DeviceId(8), NodeFacts::new(20 * GIB)), t0)?;
//! let round = election.round(t0);
//! assert_eq!(round.decisions[0].active, Some(DeviceId(7))); // more free disk ranks first
//! assert_eq!(round.decisions[0].epoch, 1);
//! assert_eq!(election.serving(DeviceId(100))?.map(|s| s.dp), Some(DeviceId(7)));
//!
//! // DP 7 falls silent; DP 8 keeps sending. After 3 missed heartbeats DP 8 takes over
//! // with a new epoch.
//! let later = t0 + Duration::from_secs(181);
//! election.heartbeat(Heartbeat::new(DeviceId(8), NodeFacts::new(20 * GIB)), later)?;
//! let round = election.round(later);
//! assert_eq!(round.decisions[0].active, Some(DeviceId(8)));
//! assert_eq!(round.decisions[0].epoch, 2);
//! # Ok::<(), outpost_election::ElectionError>(())
//! ```

mod auto;
mod config;
mod engine;
mod error;
mod fence;
mod health;
mod ids;
mod multicast;
pub mod sim;
mod tree;

pub use auto::{AutoOutcome, BroadcastDomains, PeerReport};
pub use config::{
    AutoAssignPolicy, CountTarget, ElectionConfig, GIB, MulticastRange, SegmentCount,
    SyncIntervalPolicy,
};
pub use engine::{
    Assignment, DevicePlacement, DpRole, Election, IssueEvent, Origin, Recompute, Round,
    ScopeDecision, Serving, Severity,
};
pub use error::{ElectionError, Ineligibility, Result};
pub use fence::{FenceOutcome, RoleFence};
pub use health::{Heartbeat, NodeFacts, OsClass, RankKey, compare_candidates};
pub use ids::{BroadcastDomainId, DeviceId, DpId, GroupId, LocationId, ScopeId, ScopeKind};
pub use multicast::MulticastAllocator;
pub use tree::{GroupEdge, GroupTree};
