//! The DP side of fencing: what one DP knows of its own roles, by scope and epoch.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::engine::{Assignment, DpRole};
use crate::ids::ScopeId;

/// What [`RoleFence::apply`] did with a role message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FenceOutcome {
    /// The message was as new as or newer than what the DP knew; its role is now `role`.
    Accepted {
        /// The role now held.
        role: DpRole,
        /// Whether this message took the active role away (the DP must stop pulling from the
        /// server and start pulling from the new active DP).
        stepped_down: bool,
    },
    /// The message carried an older epoch than one already seen; it was ignored.
    Stale {
        /// The epoch the DP already knows for the scope.
        known: u64,
        /// The epoch of the ignored message.
        got: u64,
    },
}

/// A DP's record of its roles, kept by the agent. Role messages are accepted only if their
/// epoch is not lower than the one already known for the scope, so a delayed or replayed
/// message from before a failover can never make a replaced DP active again, and a DP that
/// was cut off learns it has been replaced from the first newer message it sees.
///
/// Scopes are keyed by `S`: the engine's [`ScopeId`] by default, or whatever names the
/// scope on the DP's side (the agent keys by the scope as the wire names it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleFence<S: Ord = ScopeId> {
    roles: BTreeMap<S, (DpRole, u64)>,
}

impl<S: Ord> Default for RoleFence<S> {
    fn default() -> Self {
        RoleFence {
            roles: BTreeMap::new(),
        }
    }
}

impl RoleFence<ScopeId> {
    /// Applies a role message addressed to this DP.
    pub fn apply(&mut self, a: &Assignment) -> FenceOutcome {
        self.apply_role(a.scope, a.role, a.epoch)
    }
}

impl<S: Ord + Clone> RoleFence<S> {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies a role message for `scope` carrying `role` at `epoch`.
    pub fn apply_role(&mut self, scope: S, role: DpRole, epoch: u64) -> FenceOutcome {
        match self.roles.get(&scope) {
            Some(&(_, known)) if known > epoch => FenceOutcome::Stale { known, got: epoch },
            prev => {
                let stepped_down =
                    matches!(prev, Some(&(DpRole::Active, _))) && role != DpRole::Active;
                self.roles.insert(scope, (role, epoch));
                FenceOutcome::Accepted { role, stepped_down }
            }
        }
    }

    /// The role and epoch held for `scope`.
    pub fn role(&self, scope: &S) -> Option<(DpRole, u64)> {
        self.roles.get(scope).copied()
    }

    /// Whether this DP believes it is active in `scope`.
    pub fn is_active(&self, scope: &S) -> bool {
        matches!(self.roles.get(scope), Some(&(DpRole::Active, _)))
    }

    /// Every scope with its role and epoch.
    pub fn iter(&self) -> impl Iterator<Item = (&S, DpRole, u64)> + '_ {
        self.roles.iter().map(|(s, &(r, e))| (s, r, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{DeviceId, GroupId};

    fn msg(role: DpRole, epoch: u64) -> Assignment {
        Assignment {
            dp: DeviceId(1),
            scope: ScopeId::Group(GroupId(1)),
            role,
            epoch,
            multicast_group: "239.255.0.1".parse().unwrap(),
        }
    }

    #[test]
    fn older_epochs_are_ignored_and_replacement_is_recognised() {
        let mut f = RoleFence::new();
        let s = ScopeId::Group(GroupId(1));
        assert_eq!(
            f.apply(&msg(DpRole::Active, 3)),
            FenceOutcome::Accepted {
                role: DpRole::Active,
                stepped_down: false
            }
        );
        assert!(f.is_active(&s));
        assert_eq!(
            f.apply(&msg(DpRole::Standby, 4)),
            FenceOutcome::Accepted {
                role: DpRole::Standby,
                stepped_down: true
            }
        );
        // A delayed message from epoch 3 cannot make it active again.
        assert_eq!(
            f.apply(&msg(DpRole::Active, 3)),
            FenceOutcome::Stale { known: 4, got: 3 }
        );
        assert_eq!(f.role(&s), Some((DpRole::Standby, 4)));
        assert!(!f.is_active(&s));
    }
}
