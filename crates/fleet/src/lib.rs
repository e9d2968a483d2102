//! A whole fleet in one process on loopback, to show and to test the system end to end: an
//! Administration Server, a DMZ gateway it dials, and a fleet of Network Agents in a few
//! groups (some behind the gateway), each with its own data directory. [`run`] enrolls them,
//! resolves their policies (with a profile for tagged devices), elects an active and a
//! standby distribution point per group, publishes an update that the DPs spread by
//! multicast, kills one active DP halfway so its standby takes over, and checks that every
//! device ends with the byte-exact update and the effective settings the server computed
//! for it.
//!
//! With [`FleetConfig::virtual_servers`] above 1 the agents are spread over the main server
//! and virtual servers (`tenant-2`, ...), each with the same groups, device ids and DPs but
//! its own policies (its own `update.window`) and its own copy of the update, spread by
//! its own DPs on its own multicast groups: every device must end with its own server's
//! settings.
//!
//! The run goes in stages, each timed in [`FleetReport::stages`]: the server and the DMZ
//! gateway up; enrollment; the first sync, every device's effective settings checked; the
//! DP election; the update distribution, with the failover; the verification, every copy
//! hashed.
//!
//! The `demo` example of the `outpost` package is this function with flags; its end-to-end
//! tests (`tests/it/fleet.rs`) run it small. Not published: it is a harness, not a library.
//!
//! ```no_run
//! # async fn demo() -> Result<(), outpost_fleet::FleetError> {
//! let dir = std::env::temp_dir().join("outpost-fleet");
//! let mut config = outpost_fleet::FleetConfig::default();
//! config.agents = 20;
//! config.update_bytes = 4 << 20;
//! let report = outpost_fleet::run(&config, &dir, |line| eprintln!("{line}")).await?;
//! println!("{}", report.table());
//! assert!(report.ok(), "{:?}", report.failures);
//! # Ok(()) }
//! ```
//!
//! A configuration that cannot work is refused before anything is set up:
//!
//! ```
//! use outpost_fleet::{FleetConfig, FleetError};
//!
//! let mut config = FleetConfig::default();
//! config.agents = 5; // fewer than 3 per group
//! let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
//! let dir = std::path::Path::new("never-created");
//! let refused = runtime.block_on(outpost_fleet::run(&config, dir, |_| {}));
//! assert!(matches!(refused, Err(FleetError::Config(_))));
//! assert!(!dir.exists());
//! ```

mod config;
mod plan;
mod report;
mod stages;
mod tenants;

use std::path::Path;

pub use config::{FleetConfig, FleetError};
pub use report::{FleetReport, Stage};

use stages::Fleet;

/// The server's name on its certificate; agents connecting directly verify it.
const SERVER_NAME: &str = "server.outpost.test";
/// The DMZ gateway's name on its certificate; agents behind it verify it.
const GATEWAY_NAME: &str = "gw.outpost.test";
/// The update's object id (and name) on every server.
const UPDATE_ID: &str = "update-1";
/// The application the policies and the settings documents are for.
const APP: &str = "endpoint";

/// Runs the fleet in `base` (created; left in place for inspection), calling `log` with
/// progress lines.
///
/// # Errors
/// [`FleetError`] if the fleet cannot be set up; devices that end wrong are reported in
/// [`FleetReport::failures`].
pub async fn run(
    cfg: &FleetConfig,
    base: &Path,
    log: impl FnMut(String),
) -> Result<FleetReport, FleetError> {
    cfg.validate()?;
    let mut fleet = Fleet::up(cfg, base, log).await?;
    fleet.enroll().await?;
    fleet.first_sync().await?;
    fleet.elect().await?;
    let update = fleet.distribute().await?;
    fleet.verify(&update.sha256).await;
    Ok(fleet.shut_down().await)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run holds nothing that keeps it on one thread: with a log that can move between
    /// threads, it can be spawned (a `Cell` is `Send` but not `Sync`).
    #[test]
    fn a_run_can_move_between_threads() {
        fn send<T: Send>(_: T) {}
        let cfg = FleetConfig::default();
        let count = std::cell::Cell::new(0);
        send(run(&cfg, Path::new("never-created"), move |_| {
            count.set(count.get() + 1)
        }));
    }
}
