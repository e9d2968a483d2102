//! What a run is asked to do ([`FleetConfig`]) and what stops it before any device is
//! judged ([`FleetError`]).

use std::time::Duration;

/// What went wrong setting the fleet up (a device that ends wrong is not an error: it is
/// listed in [`FleetReport::failures`](crate::FleetReport::failures)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// A configuration value cannot work.
    #[error("fleet configuration: {0}")]
    Config(String),
    /// A step of the set-up failed.
    #[error("{step}: {reason}")]
    Setup {
        /// The step.
        step: &'static str,
        /// Why.
        reason: String,
    },
}

/// Turns any cause into the [`FleetError::Setup`] of `step` (for `map_err`).
pub(crate) fn setup(step: &'static str) -> impl Fn(&dyn std::fmt::Display) -> FleetError {
    move |e| FleetError::Setup {
        step,
        reason: e.to_string(),
    }
}

/// The fleet to run.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FleetConfig {
    /// Agents in all (default 200), spread over the groups; the first two of each group are
    /// its distribution points.
    pub agents: usize,
    /// Groups under the root group, one DP scope each (default 4).
    pub groups: usize,
    /// Every n-th agent connects through the DMZ gateway (default 4; 0: none).
    pub via_gateway_every: usize,
    /// Every n-th agent is tagged `kiosk`, which a policy profile targets (default 5).
    pub kiosk_every: usize,
    /// Size of the update (default 64 MiB).
    pub update_bytes: u64,
    /// Each DP's multicast rate ceiling, Mbit/s (default 150).
    pub rate_mbps: u64,
    /// Payload bytes per multicast datagram (default 8192: loopback's MTU is 64 KiB).
    pub symbol_size: u16,
    /// Kill the active DP of the first group once its devices hold this fraction of the
    /// update (default 0.5; `None`: no failover).
    pub kill_at: Option<f64>,
    /// The multicast UDP port (default 15001).
    pub multicast_port: u16,
    /// The whole run must end within this (default 15 min).
    pub timeout: Duration,
    /// Seed of the update's bytes.
    pub seed: u64,
    /// Servers the agents are spread over (default 1: the main server only); the others
    /// are virtual servers.
    pub virtual_servers: usize,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            agents: 200,
            groups: 4,
            via_gateway_every: 4,
            kiosk_every: 5,
            update_bytes: 64 << 20,
            rate_mbps: 150,
            symbol_size: 8192,
            kill_at: Some(0.5),
            multicast_port: outpost_wire::ports::MULTICAST,
            timeout: Duration::from_secs(900),
            seed: 1,
            virtual_servers: 1,
        }
    }
}

impl FleetConfig {
    /// Whether the values can work together.
    pub(crate) fn validate(&self) -> Result<(), FleetError> {
        let bad = |m: String| Err(FleetError::Config(m));
        if self.groups == 0 || self.groups > 64 {
            return bad(format!("groups: {} is outside 1..=64", self.groups));
        }
        if self.virtual_servers == 0 || self.virtual_servers > 500 {
            return bad(format!(
                "virtual_servers: {} is outside 1..=500",
                self.virtual_servers
            ));
        }
        let least = 3 * self.groups * self.virtual_servers;
        if self.agents < least || self.agents > 5000 {
            return bad(format!(
                "agents: {} must be 3 per group of each server ({least}) to 5000",
                self.agents,
            ));
        }
        if self.update_bytes == 0 || self.update_bytes > 4 << 30 {
            return bad(format!(
                "update size {} is outside 1 B..=4 GiB",
                self.update_bytes
            ));
        }
        if let Some(k) = self.kill_at
            && !(0.0..1.0).contains(&k)
        {
            return bad(format!("kill_at: {k} is outside 0..1"));
        }
        if self.multicast_port == 0 {
            return bad("multicast_port: 0".into());
        }
        Ok(())
    }
}
