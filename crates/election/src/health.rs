//! What a DP (or a DP candidate) reports about itself, and how candidates are ranked.

use std::cmp::{Ordering, Reverse};

use serde::{Deserialize, Serialize};

use crate::config::GIB;
use crate::ids::DeviceId;

/// The operating system class of a device, best DP host first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OsClass {
    /// A server operating system (always on, built to serve).
    Server,
    /// A desktop or laptop operating system.
    Workstation,
    /// An operating system on which a DP has fewer functions (for example one that cannot
    /// download updates from update servers itself).
    Limited,
}

/// Facts a device reports in each heartbeat (or inventory report) that the election uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NodeFacts {
    /// Free bytes on the disk that holds the DP's file store.
    pub free_disk_bytes: u64,
    /// Seconds since the device booted.
    pub uptime_secs: u64,
    /// Load in percent (0 to 100; higher values are treated as 100).
    pub load_percent: u8,
    /// Operating system class.
    pub os: OsClass,
    /// Whether the device goes to sleep or hibernates (laptops, power plans).
    pub sleeping: bool,
}

impl NodeFacts {
    /// Facts with the given free disk, a server OS, no uptime, no load, not sleeping.
    pub fn new(free_disk_bytes: u64) -> Self {
        Self {
            free_disk_bytes,
            uptime_secs: 0,
            load_percent: 0,
            os: OsClass::Server,
            sleeping: false,
        }
    }

    /// Sets the uptime.
    pub fn with_uptime_secs(mut self, uptime_secs: u64) -> Self {
        self.uptime_secs = uptime_secs;
        self
    }

    /// Sets the load.
    pub fn with_load_percent(mut self, load_percent: u8) -> Self {
        self.load_percent = load_percent;
        self
    }

    /// Sets the OS class.
    pub fn with_os(mut self, os: OsClass) -> Self {
        self.os = os;
        self
    }

    /// Sets whether the device sleeps.
    pub fn with_sleeping(mut self, sleeping: bool) -> Self {
        self.sleeping = sleeping;
        self
    }
}

/// The ranking key of a candidate: smaller is better.
///
/// # Ranking criteria
///
/// Candidates, both for a new active DP of a scope and for automatic assignment, are ordered
/// by, in turn:
///
/// 1. **not sleeping** before sleeping (a DP that sleeps serves nobody while it does);
/// 2. **OS class**: [`OsClass::Server`], then [`OsClass::Workstation`], then
///    [`OsClass::Limited`];
/// 3. **free disk space**, more first, compared in whole GiB so that a few bytes of
///    difference do not outweigh the criteria below;
/// 4. **uptime**, longer first, compared in whole hours;
/// 5. **load**, lower first, compared in steps of 10 percent;
/// 6. **device id**, lower first: the deterministic tie-break, so equal facts always give
///    the same choice.
///
/// Eligibility (heartbeats and the disk minimum) is checked before ranking; the rank only
/// orders eligible candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RankKey {
    sleeping: bool,
    os: OsClass,
    disk_gib: Reverse<u64>,
    uptime_hours: Reverse<u64>,
    load_decile: u8,
    id: DeviceId,
}

impl RankKey {
    /// The key of `device` with `facts`.
    pub fn new(device: DeviceId, facts: &NodeFacts) -> Self {
        Self {
            sleeping: facts.sleeping,
            os: facts.os,
            disk_gib: Reverse(facts.free_disk_bytes / GIB),
            uptime_hours: Reverse(facts.uptime_secs / 3600),
            load_decile: facts.load_percent.min(100) / 10,
            id: device,
        }
    }
}

/// Compares two candidates by the documented criteria (`Less` means `a` ranks first).
pub fn compare_candidates(a: (DeviceId, &NodeFacts), b: (DeviceId, &NodeFacts)) -> Ordering {
    RankKey::new(a.0, a.1).cmp(&RankKey::new(b.0, b.1))
}

/// A heartbeat from a distribution point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Heartbeat {
    /// The sending DP.
    pub dp: DeviceId,
    /// What it reports.
    pub facts: NodeFacts,
}

impl Heartbeat {
    /// A heartbeat from `dp` with `facts`.
    pub fn new(dp: DeviceId, facts: NodeFacts) -> Self {
        Self { dp, facts }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranking_follows_the_documented_order() {
        let base = NodeFacts::new(10 * GIB).with_uptime_secs(10 * 3600);
        let a = DeviceId(1);
        let b = DeviceId(2);
        // Tie-break by id.
        assert_eq!(compare_candidates((a, &base), (b, &base)), Ordering::Less);
        // Sleeping loses even with more disk.
        let sleeper = NodeFacts::new(100 * GIB).with_sleeping(true);
        assert_eq!(
            compare_candidates((a, &sleeper), (b, &base)),
            Ordering::Greater
        );
        // Server beats workstation even with less disk.
        let ws = base.with_os(OsClass::Workstation);
        let small_server = NodeFacts::new(5 * GIB);
        assert_eq!(
            compare_candidates((a, &ws), (b, &small_server)),
            Ordering::Greater
        );
        // More disk wins over uptime.
        let more_disk = NodeFacts::new(20 * GIB);
        assert_eq!(
            compare_candidates((b, &more_disk), (a, &base)),
            Ordering::Less
        );
        // Same disk GiB: longer uptime wins.
        let longer = base.with_uptime_secs(20 * 3600);
        assert_eq!(compare_candidates((b, &longer), (a, &base)), Ordering::Less);
        // Same everything but load: lower load wins.
        let loaded = base.with_load_percent(90);
        assert_eq!(
            compare_candidates((a, &loaded), (b, &base)),
            Ordering::Greater
        );
        // A few bytes of disk do not matter.
        let plus = NodeFacts::new(10 * GIB + 5).with_uptime_secs(10 * 3600);
        assert_eq!(
            compare_candidates((b, &plus), (a, &base)),
            Ordering::Greater
        );
    }
}
