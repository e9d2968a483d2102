//! Configuration: heartbeat limits, disk thresholds, the automatic assignment policy, the
//! multicast range and the sync interval policy.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{ElectionError, Result};

/// One gibibyte.
pub const GIB: u64 = 1024 * 1024 * 1024;

/// All settings of the election engine. Load it (e.g. from TOML), then call
/// [`ElectionConfig::validate`]; [`Election::new`](crate::Election::new) does so too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ElectionConfig {
    /// How often a DP sends a heartbeat, in seconds. Default 60.
    pub heartbeat_interval_secs: u64,
    /// A DP that has been silent for this many heartbeat intervals (it missed this many
    /// heartbeats) is down. Default 3.
    pub missed_heartbeats: u32,
    /// Free disk space a DP needs to be eligible. Default 4 GiB.
    pub min_free_disk_bytes: u64,
    /// Under this much free disk a DP raises a warning-level security issue. Default 2 GiB.
    pub warn_free_disk_bytes: u64,
    /// Largest number of peers accepted in one agent's broadcast-domain report. Default 4096.
    pub max_peers_per_report: usize,
    /// Automatic DP assignment.
    pub auto_assignment: AutoAssignPolicy,
    /// Multicast group addresses handed to DPs.
    pub multicast: MulticastRange,
    /// The sync (heartbeat) interval handed to agents.
    pub sync: SyncIntervalPolicy,
}

impl Default for ElectionConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval_secs: 60,
            missed_heartbeats: 3,
            min_free_disk_bytes: 4 * GIB,
            warn_free_disk_bytes: 2 * GIB,
            max_peers_per_report: 4096,
            auto_assignment: AutoAssignPolicy::default(),
            multicast: MulticastRange::default(),
            sync: SyncIntervalPolicy::default(),
        }
    }
}

fn invalid(field: &'static str, value: impl ToString, reason: &'static str) -> ElectionError {
    ElectionError::InvalidConfig {
        field,
        value: value.to_string(),
        reason,
    }
}

impl ElectionConfig {
    /// The heartbeat interval as a [`Duration`].
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(self.heartbeat_interval_secs)
    }

    /// After this much silence a DP counts as down: `missed_heartbeats × heartbeat_interval`.
    pub fn down_after(&self) -> Duration {
        self.heartbeat_interval()
            .saturating_mul(self.missed_heartbeats)
    }

    /// Checks every field; the error names the first field that is wrong and its value.
    pub fn validate(&self) -> Result<()> {
        if self.heartbeat_interval_secs == 0 {
            return Err(invalid("heartbeat_interval_secs", 0, "must be at least 1"));
        }
        if self.missed_heartbeats == 0 {
            return Err(invalid("missed_heartbeats", 0, "must be at least 1"));
        }
        if self.warn_free_disk_bytes > self.min_free_disk_bytes {
            return Err(invalid(
                "warn_free_disk_bytes",
                self.warn_free_disk_bytes,
                "must not exceed min_free_disk_bytes",
            ));
        }
        if self.max_peers_per_report == 0 {
            return Err(invalid("max_peers_per_report", 0, "must be at least 1"));
        }
        self.auto_assignment.validate()?;
        self.multicast.validate()?;
        self.sync.validate()
    }
}

/// Which of the two per-segment counts automatic assignment aims for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CountTarget {
    /// The acceptable count (`N / acceptable_per_devices + acceptable_extra`).
    Acceptable,
    /// The recommended count (`N / recommended_per_devices + recommended_extra`).
    Recommended,
}

/// How many DPs each broadcast domain needs for a segment of `n` managed devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentCount {
    /// The least number of DPs that is acceptable.
    pub acceptable: usize,
    /// The recommended number of DPs.
    pub recommended: usize,
}

/// The automatic assignment policy. The defaults are the product's rule:
///
/// * on only once the fleet has at least 300 managed devices, off again only when it falls
///   below 200 (hysteresis);
/// * per segment of `n` devices: under 10 none, 10 to 100 one, above that
///   `n / 10_000 + 1` acceptable and `n / 5_000 + 2` recommended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct AutoAssignPolicy {
    /// Master switch. Default `true`.
    pub enabled: bool,
    /// Switches on when the fleet has at least this many managed devices. Default 300.
    pub enable_at_devices: usize,
    /// Switches off again when the fleet has fewer than this many. Default 200.
    pub disable_below_devices: usize,
    /// Segments with fewer devices get no DP. Default 10.
    pub segment_min_devices: usize,
    /// Segments up to this size get exactly one DP. Default 100.
    pub segment_single_max_devices: usize,
    /// Devices per DP in the acceptable count. Default 10,000.
    pub acceptable_per_devices: usize,
    /// Added to the acceptable count. Default 1.
    pub acceptable_extra: usize,
    /// Devices per DP in the recommended count. Default 5,000.
    pub recommended_per_devices: usize,
    /// Added to the recommended count. Default 2.
    pub recommended_extra: usize,
    /// Which count to aim for. Default [`CountTarget::Recommended`].
    pub target: CountTarget,
}

impl Default for AutoAssignPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            enable_at_devices: 300,
            disable_below_devices: 200,
            segment_min_devices: 10,
            segment_single_max_devices: 100,
            acceptable_per_devices: 10_000,
            acceptable_extra: 1,
            recommended_per_devices: 5_000,
            recommended_extra: 2,
            target: CountTarget::Recommended,
        }
    }
}

impl AutoAssignPolicy {
    /// Checks every field; the error names the first field that is wrong.
    pub fn validate(&self) -> Result<()> {
        if self.disable_below_devices > self.enable_at_devices {
            return Err(invalid(
                "auto_assignment.disable_below_devices",
                self.disable_below_devices,
                "must not exceed auto_assignment.enable_at_devices",
            ));
        }
        if self.segment_min_devices > self.segment_single_max_devices {
            return Err(invalid(
                "auto_assignment.segment_min_devices",
                self.segment_min_devices,
                "must not exceed auto_assignment.segment_single_max_devices",
            ));
        }
        if self.acceptable_per_devices == 0 {
            return Err(invalid(
                "auto_assignment.acceptable_per_devices",
                0,
                "must be at least 1",
            ));
        }
        if self.recommended_per_devices == 0 {
            return Err(invalid(
                "auto_assignment.recommended_per_devices",
                0,
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// The DP counts for a segment of `devices` managed devices.
    pub fn segment_count(&self, devices: usize) -> SegmentCount {
        if devices < self.segment_min_devices {
            SegmentCount {
                acceptable: 0,
                recommended: 0,
            }
        } else if devices <= self.segment_single_max_devices {
            SegmentCount {
                acceptable: 1,
                recommended: 1,
            }
        } else {
            let acceptable = devices / self.acceptable_per_devices + self.acceptable_extra;
            let recommended = devices / self.recommended_per_devices + self.recommended_extra;
            SegmentCount {
                acceptable,
                recommended: recommended.max(acceptable),
            }
        }
    }

    /// The count automatic assignment aims for in a segment of `devices` devices.
    pub fn segment_target(&self, devices: usize) -> usize {
        let c = self.segment_count(devices);
        match self.target {
            CountTarget::Acceptable => c.acceptable,
            CountTarget::Recommended => c.recommended,
        }
    }

    /// The hysteresis rule: whether automatic assignment is on for a fleet of
    /// `managed_devices`, given whether it was on before.
    pub fn next_state(&self, was_on: bool, managed_devices: usize) -> bool {
        if !self.enabled {
            return false;
        }
        if was_on {
            managed_devices >= self.disable_below_devices
        } else {
            managed_devices >= self.enable_at_devices
        }
    }
}

/// An inclusive range of multicast group addresses, all of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct MulticastRange {
    /// First address. Default 239.255.0.1.
    pub first: IpAddr,
    /// Last address. Default 239.255.255.254.
    pub last: IpAddr,
}

impl Default for MulticastRange {
    fn default() -> Self {
        Self {
            first: IpAddr::V4(Ipv4Addr::new(239, 255, 0, 1)),
            last: IpAddr::V4(Ipv4Addr::new(239, 255, 255, 254)),
        }
    }
}

impl MulticastRange {
    /// A range from `first` to `last`, both included. Check it with [`MulticastRange::validate`].
    pub fn new(first: IpAddr, last: IpAddr) -> Self {
        Self { first, last }
    }

    /// Checks that both ends are multicast addresses of one family and `first <= last`.
    pub fn validate(&self) -> Result<()> {
        if !self.first.is_multicast() {
            return Err(invalid(
                "multicast.first",
                self.first,
                "not a multicast address",
            ));
        }
        if !self.last.is_multicast() {
            return Err(invalid(
                "multicast.last",
                self.last,
                "not a multicast address",
            ));
        }
        match (self.first, self.last) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {}
            _ => {
                return Err(invalid(
                    "multicast.last",
                    self.last,
                    "must be of the same address family as multicast.first",
                ));
            }
        }
        if self.first > self.last {
            return Err(invalid(
                "multicast.last",
                self.last,
                "must not be lower than multicast.first",
            ));
        }
        Ok(())
    }

    /// Number of addresses in the range (0 if it is invalid).
    pub fn size(&self) -> u128 {
        match (self.first, self.last) {
            (IpAddr::V4(a), IpAddr::V4(b)) if a <= b => u128::from(b.to_bits() - a.to_bits()) + 1,
            (IpAddr::V6(a), IpAddr::V6(b)) if a <= b => {
                (b.to_bits() - a.to_bits()).saturating_add(1)
            }
            _ => 0,
        }
    }
}

/// The sync interval handed to agents: `per_block_secs` for every `block_devices` managed
/// devices (pro rata), never below `floor_secs`. Defaults: 15 minutes per 10,000 devices,
/// floor 15 minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct SyncIntervalPolicy {
    /// Seconds of interval per block of devices. Default 900.
    pub per_block_secs: u64,
    /// Devices per block. Default 10,000.
    pub block_devices: u64,
    /// The shortest interval ever handed out, in seconds. Default 900.
    pub floor_secs: u64,
}

impl Default for SyncIntervalPolicy {
    fn default() -> Self {
        Self {
            per_block_secs: 900,
            block_devices: 10_000,
            floor_secs: 900,
        }
    }
}

impl SyncIntervalPolicy {
    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        if self.block_devices == 0 {
            return Err(invalid("sync.block_devices", 0, "must be at least 1"));
        }
        if self.floor_secs == 0 {
            return Err(invalid("sync.floor_secs", 0, "must be at least 1"));
        }
        Ok(())
    }

    /// The sync interval for a fleet of `managed_devices`.
    pub fn interval(&self, managed_devices: u64) -> Duration {
        let millis = u128::from(self.per_block_secs) * 1000 * u128::from(managed_devices)
            / u128::from(self.block_devices.max(1));
        let millis = u64::try_from(millis).unwrap_or(u64::MAX);
        Duration::from_millis(millis).max(Duration::from_secs(self.floor_secs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_rules_match_the_defaults() {
        let p = AutoAssignPolicy::default();
        let c = |n| p.segment_count(n);
        assert_eq!(c(0).recommended, 0);
        assert_eq!(c(9).acceptable, 0);
        assert_eq!(c(9).recommended, 0);
        assert_eq!(
            c(10),
            SegmentCount {
                acceptable: 1,
                recommended: 1
            }
        );
        assert_eq!(
            c(100),
            SegmentCount {
                acceptable: 1,
                recommended: 1
            }
        );
        assert_eq!(
            c(101),
            SegmentCount {
                acceptable: 1,
                recommended: 2
            }
        );
        assert_eq!(
            c(5_000),
            SegmentCount {
                acceptable: 1,
                recommended: 3
            }
        );
        assert_eq!(
            c(10_000),
            SegmentCount {
                acceptable: 2,
                recommended: 4
            }
        );
        assert_eq!(
            c(25_000),
            SegmentCount {
                acceptable: 3,
                recommended: 7
            }
        );
        assert_eq!(p.segment_target(25_000), 7);
        let acceptable = AutoAssignPolicy {
            target: CountTarget::Acceptable,
            ..AutoAssignPolicy::default()
        };
        assert_eq!(acceptable.segment_target(25_000), 3);
    }

    #[test]
    fn hysteresis_switches_on_at_300_and_off_below_200() {
        let p = AutoAssignPolicy::default();
        assert!(!p.next_state(false, 299));
        assert!(p.next_state(false, 300));
        assert!(p.next_state(true, 250));
        assert!(p.next_state(true, 200));
        assert!(!p.next_state(true, 199));
        assert!(!p.next_state(false, 250));
        let off = AutoAssignPolicy {
            enabled: false,
            ..AutoAssignPolicy::default()
        };
        assert!(!off.next_state(true, 100_000));
    }

    #[test]
    fn sync_interval_grows_with_the_fleet_above_the_floor() {
        let s = SyncIntervalPolicy::default();
        assert_eq!(s.interval(0), Duration::from_secs(900));
        assert_eq!(s.interval(5_000), Duration::from_secs(900));
        assert_eq!(s.interval(10_000), Duration::from_secs(900));
        assert_eq!(s.interval(20_000), Duration::from_secs(1800));
        assert_eq!(s.interval(100_000), Duration::from_secs(9000));
        assert_eq!(s.interval(15_000), Duration::from_secs(1350));
        let low = SyncIntervalPolicy {
            floor_secs: 60,
            ..SyncIntervalPolicy::default()
        };
        assert_eq!(low.interval(100), Duration::from_secs(60));
        assert_eq!(low.interval(1_000), Duration::from_secs(90));
    }

    #[test]
    fn validation_names_the_field() {
        assert_eq!(ElectionConfig::default().validate(), Ok(()));
        let mut c = ElectionConfig::default();
        c.auto_assignment.disable_below_devices = 400;
        match c.validate() {
            Err(ElectionError::InvalidConfig { field, value, .. }) => {
                assert_eq!(field, "auto_assignment.disable_below_devices");
                assert_eq!(value, "400");
            }
            other => panic!("unexpected {other:?}"),
        }
        let mut c = ElectionConfig::default();
        c.multicast.first = "10.0.0.1".parse().unwrap();
        assert!(matches!(
            c.validate(),
            Err(ElectionError::InvalidConfig {
                field: "multicast.first",
                ..
            })
        ));
        let mut c = ElectionConfig::default();
        c.multicast.last = "ff05::1".parse().unwrap();
        assert!(matches!(
            c.validate(),
            Err(ElectionError::InvalidConfig {
                field: "multicast.last",
                ..
            })
        ));
        let c = ElectionConfig {
            missed_heartbeats: 0,
            ..ElectionConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ElectionError::InvalidConfig {
                field: "missed_heartbeats",
                ..
            })
        ));
        let c = ElectionConfig {
            warn_free_disk_bytes: 5 * GIB,
            ..ElectionConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ElectionError::InvalidConfig {
                field: "warn_free_disk_bytes",
                ..
            })
        ));
    }

    #[test]
    fn config_round_trips_through_json_with_defaults_filled_in() {
        let c: ElectionConfig = serde_json::from_str(
            r#"{"missed_heartbeats": 5, "multicast": {"last": "239.255.0.9"}}"#,
        )
        .unwrap();
        assert_eq!(c.missed_heartbeats, 5);
        assert_eq!(c.multicast.size(), 9);
        assert_eq!(c.min_free_disk_bytes, 4 * GIB);
        let back: ElectionConfig =
            serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(serde_json::from_str::<ElectionConfig>(r#"{"bogus": 1}"#).is_err());
    }
}
