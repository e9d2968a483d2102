//! Identifiers of groups, devices and scopes.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident, $label:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($label, " {}"), self.0)
            }
        }
    };
}

id_type!(
    /// An administration group.
    GroupId,
    "group"
);
id_type!(
    /// A managed device (a device running the Network Agent).
    DeviceId,
    "device"
);
id_type!(
    /// A broadcast domain, derived from the peers agents see (see
    /// [`BroadcastDomains`](crate::BroadcastDomains)) or named by the administrator.
    BroadcastDomainId,
    "broadcast domain"
);
id_type!(
    /// A network location: a set of devices the administrator named by hand.
    LocationId,
    "network location"
);

/// A distribution point is a managed device with the DP role, so it is named by its device id.
pub type DpId = DeviceId;

/// The kind of a distribution point scope.
///
/// The variants are listed in order of precedence when a device falls in several scopes
/// (see [`ScopeId`]): a network location beats the group hierarchy, which beats a broadcast
/// domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ScopeKind {
    /// A set of devices the administrator named by hand.
    NetworkLocation,
    /// An administration group and all its subgroups.
    Group,
    /// A broadcast domain (one network segment).
    BroadcastDomain,
}

impl ScopeKind {
    /// A stable one-byte code for the wire: 1 group, 2 broadcast domain, 3 network location.
    pub fn code(self) -> u8 {
        match self {
            ScopeKind::Group => 1,
            ScopeKind::BroadcastDomain => 2,
            ScopeKind::NetworkLocation => 3,
        }
    }

    /// The kind for a wire code produced by [`ScopeKind::code`], if any.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(ScopeKind::Group),
            2 => Some(ScopeKind::BroadcastDomain),
            3 => Some(ScopeKind::NetworkLocation),
            _ => None,
        }
    }
}

/// The scope a distribution point serves.
///
/// # Precedence
///
/// A device can fall in several scopes at once. It is served by the active DP of the first of
/// these that has one:
///
/// 1. its **network location** scope: the administrator named this exact set of devices, the
///    most specific statement there is;
/// 2. the **nearest group scope up its group hierarchy**: its own group if a DP is active
///    there, else its parent's, and so on up to the root (a group whose DPs are all down or
///    ineligible is skipped);
/// 3. its **broadcast domain** scope: usually filled by automatic assignment, so it only
///    applies where the administrator has said nothing more specific.
///
/// For the wire, a scope is a kind code ([`ScopeKind::code`]) and a `u64` ([`ScopeId::raw`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ScopeId {
    /// An administration group and all its subgroups.
    Group(GroupId),
    /// A broadcast domain.
    BroadcastDomain(BroadcastDomainId),
    /// A network location.
    NetworkLocation(LocationId),
}

impl ScopeId {
    /// The kind of this scope.
    pub fn kind(self) -> ScopeKind {
        match self {
            ScopeId::Group(_) => ScopeKind::Group,
            ScopeId::BroadcastDomain(_) => ScopeKind::BroadcastDomain,
            ScopeId::NetworkLocation(_) => ScopeKind::NetworkLocation,
        }
    }

    /// The numeric id inside its kind.
    pub fn raw(self) -> u64 {
        match self {
            ScopeId::Group(g) => g.0,
            ScopeId::BroadcastDomain(b) => b.0,
            ScopeId::NetworkLocation(l) => l.0,
        }
    }

    /// Rebuilds a scope id from its kind and numeric id.
    pub fn from_parts(kind: ScopeKind, raw: u64) -> Self {
        match kind {
            ScopeKind::Group => ScopeId::Group(GroupId(raw)),
            ScopeKind::BroadcastDomain => ScopeId::BroadcastDomain(BroadcastDomainId(raw)),
            ScopeKind::NetworkLocation => ScopeId::NetworkLocation(LocationId(raw)),
        }
    }
}

impl fmt::Display for ScopeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScopeId::Group(g) => write!(f, "scope of {g}"),
            ScopeId::BroadcastDomain(b) => write!(f, "scope of {b}"),
            ScopeId::NetworkLocation(l) => write!(f, "scope of {l}"),
        }
    }
}
