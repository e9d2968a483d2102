//! Protocol version negotiation.
//!
//! Each side states in its [`Hello`](crate::messages::Hello) the range of protocol versions it
//! speaks. The answering side picks the highest version both ranges contain with
//! [`negotiate`] and names it in its [`HelloAck`](crate::messages::HelloAck); with no common
//! version it answers with a [`Refusal`](crate::messages::Refusal) and closes.

use std::fmt;

use crate::WireError;

/// The lowest protocol version this crate speaks.
pub const PROTOCOL_VERSION_MIN: u32 = 1;
/// The highest protocol version this crate speaks.
pub const PROTOCOL_VERSION_MAX: u32 = 1;

/// An inclusive range of protocol versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VersionRange {
    /// Lowest version spoken.
    pub min: u32,
    /// Highest version spoken.
    pub max: u32,
}

impl VersionRange {
    /// The range this crate speaks.
    pub const CURRENT: VersionRange = VersionRange {
        min: PROTOCOL_VERSION_MIN,
        max: PROTOCOL_VERSION_MAX,
    };

    /// A checked range.
    pub fn new(min: u32, max: u32) -> Result<Self, WireError> {
        if min > max {
            return Err(WireError::InvalidVersionRange { min, max });
        }
        Ok(VersionRange { min, max })
    }

    /// Whether `version` lies in the range.
    pub fn contains(&self, version: u32) -> bool {
        self.min <= version && version <= self.max
    }
}

impl fmt::Display for VersionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..={}", self.min, self.max)
    }
}

/// The highest version both ranges contain.
///
/// ```
/// use outpost_wire::{negotiate, VersionRange};
/// let ours = VersionRange::new(1, 3).unwrap();
/// assert_eq!(negotiate(ours, VersionRange::new(2, 5).unwrap()).unwrap(), 3);
/// assert!(negotiate(ours, VersionRange::new(4, 5).unwrap()).is_err());
/// ```
pub fn negotiate(ours: VersionRange, theirs: VersionRange) -> Result<u32, WireError> {
    VersionRange::new(ours.min, ours.max)?;
    VersionRange::new(theirs.min, theirs.max)?;
    let high = ours.max.min(theirs.max);
    let low = ours.min.max(theirs.min);
    if low > high {
        return Err(WireError::NoCommonVersion { ours, theirs });
    }
    Ok(high)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn no_overlap_is_a_clear_error() {
        let err = negotiate(
            VersionRange { min: 1, max: 2 },
            VersionRange { min: 3, max: 4 },
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "no common protocol version: this side speaks 1..=2, the peer speaks 3..=4"
        );
        assert!(matches!(
            negotiate(
                VersionRange { min: 1, max: 2 },
                VersionRange { min: 5, max: 4 }
            ),
            Err(WireError::InvalidVersionRange { min: 5, max: 4 })
        ));
    }

    proptest! {
        #[test]
        fn negotiation_picks_highest_common(a in 0u32..20, b in 0u32..20, c in 0u32..20, d in 0u32..20) {
            let ours = VersionRange { min: a.min(b), max: a.max(b) };
            let theirs = VersionRange { min: c.min(d), max: c.max(d) };
            let brute = (0..20).rev().find(|v| ours.contains(*v) && theirs.contains(*v));
            match negotiate(ours, theirs) {
                Ok(v) => prop_assert_eq!(Some(v), brute),
                Err(_) => prop_assert_eq!(None, brute),
            }
            // Symmetric.
            prop_assert_eq!(negotiate(ours, theirs).ok(), negotiate(theirs, ours).ok());
        }
    }
}
