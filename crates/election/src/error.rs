//! The crate's error type.

use std::net::IpAddr;

use crate::ids::{DeviceId, DpId, GroupId, ScopeId};

/// Why a distribution point may not be active right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Ineligibility {
    /// No heartbeat has been received from it yet.
    #[error("no heartbeat received yet")]
    NeverHeard,
    /// It missed at least the configured number of heartbeats.
    #[error("missed {missed} heartbeats (limit {limit})")]
    MissedHeartbeats {
        /// Whole heartbeat intervals since the last heartbeat.
        missed: u64,
        /// The configured limit.
        limit: u32,
    },
    /// Its free disk space is under the eligibility threshold.
    #[error("{free_bytes} bytes of free disk, {required_bytes} required")]
    LowDisk {
        /// Free bytes it reported.
        free_bytes: u64,
        /// The configured minimum.
        required_bytes: u64,
    },
}

/// Everything that can go wrong in this crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ElectionError {
    /// A group id that is not in the group tree.
    #[error("unknown administration group {group}")]
    UnknownGroup {
        /// The group asked for.
        group: GroupId,
    },
    /// A group appears more than once in a tree given as data.
    #[error("{group} is listed more than once in the group tree")]
    DuplicateGroup {
        /// The repeated group.
        group: GroupId,
    },
    /// Following parents from a group leads back to it.
    #[error("{group} is its own ancestor: the group tree has a cycle")]
    GroupCycle {
        /// A group on the cycle.
        group: GroupId,
    },
    /// A device id that was never placed in a group.
    #[error("unknown {device}")]
    UnknownDevice {
        /// The device asked for.
        device: DeviceId,
    },
    /// The same DP was registered twice for the same scope.
    #[error("distribution point {dp} is already registered for the {scope}")]
    DuplicateRegistration {
        /// The DP.
        dp: DpId,
        /// The scope.
        scope: ScopeId,
    },
    /// A DP is not registered for the scope named.
    #[error("distribution point {dp} is not registered for the {scope}")]
    NotRegistered {
        /// The DP.
        dp: DpId,
        /// The scope.
        scope: ScopeId,
    },
    /// A heartbeat came from a device that is not a registered DP.
    #[error("heartbeat from {dp}, which is not a registered distribution point")]
    UnknownDp {
        /// The sender.
        dp: DpId,
    },
    /// A heartbeat is stamped earlier than the previous one from the same DP.
    #[error("heartbeat from {dp} is {behind_ms} ms older than the one before it")]
    HeartbeatOutOfOrder {
        /// The sender.
        dp: DpId,
        /// How far behind the previous heartbeat it is.
        behind_ms: u128,
    },
    /// The administrator asked for a DP that cannot be active now.
    #[error("distribution point {dp} cannot be made active in the {scope}: {reason}")]
    NotEligible {
        /// The DP.
        dp: DpId,
        /// The scope.
        scope: ScopeId,
        /// Why not.
        reason: Ineligibility,
    },
    /// Every address of the configured multicast range is given to some DP.
    #[error("multicast range {first}..={last} is exhausted: all {size} addresses are in use")]
    MulticastExhausted {
        /// First address of the range.
        first: IpAddr,
        /// Last address of the range.
        last: IpAddr,
        /// Number of addresses in the range.
        size: u128,
    },
    /// An agent's peer report lists more peers than allowed.
    #[error("peer report from {device} lists {count} peers, more than the limit of {limit}")]
    TooManyPeers {
        /// The reporting device.
        device: DeviceId,
        /// Peers in the report.
        count: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A configuration field has a value that cannot work.
    #[error("invalid configuration `{field}` = {value}: {reason}")]
    InvalidConfig {
        /// The field's path, e.g. `auto_assignment.disable_below_devices`.
        field: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Result alias for this crate.
pub type Result<T, E = ElectionError> = std::result::Result<T, E>;
