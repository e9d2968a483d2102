//! Runs the deterministic election simulation and prints what happened.
//!
//! ```text
//! cargo run --release --example election -- --seed 7 --dps 3000 --groups 1000 --devices 20000 --steps 200
//! cargo run --release --example election -- --help
//! ```
//!
//! Exits with status 1 if any invariant was broken, 2 on a bad flag.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use clap::builder::TypedValueParser;
use outpost::election::sim::{Sim, SimConfig};

/// Run the deterministic election simulation (crashes, partitions, rejoins, full disks,
/// administrator switches) and check its invariants.
#[derive(Parser)]
#[command(name = "election", version)]
struct Cli {
    /// Seed of the simulation: the same seed gives the same run and digest.
    #[arg(long, default_value_t = SimConfig::default().seed)]
    seed: u64,
    /// Distribution points.
    #[arg(long, default_value_t = SimConfig::default().dps,
          value_parser = clap::value_parser!(u32).range(0..=60_000).map(|n| n as usize))]
    dps: usize,
    /// Groups the distribution points serve.
    #[arg(long, default_value_t = SimConfig::default().groups,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000).map(|n| n as usize))]
    groups: usize,
    /// Devices.
    #[arg(long, default_value_t = SimConfig::default().devices,
          value_parser = clap::value_parser!(u32).range(0..=10_000_000).map(|n| n as usize))]
    devices: usize,
    /// Rounds to run.
    #[arg(long, default_value_t = SimConfig::default().steps,
          value_parser = clap::value_parser!(u32).range(0..=100_000).map(|n| n as usize))]
    steps: usize,
    /// Missed heartbeats before a distribution point counts as down.
    #[arg(long, default_value_t = SimConfig::default().election.missed_heartbeats,
          value_parser = clap::value_parser!(u32).range(0..=1_000))]
    missed: u32,
}

impl Cli {
    fn config(&self) -> SimConfig {
        let mut c = SimConfig::default();
        c.seed = self.seed;
        c.dps = self.dps;
        c.groups = self.groups;
        c.devices = self.devices;
        c.steps = self.steps;
        c.election.missed_heartbeats = self.missed;
        c
    }
}

fn main() -> ExitCode {
    let config = Cli::parse().config();
    let started = Instant::now();
    let sim = match Sim::new(config.clone()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("election: cannot build the simulation: {e}");
            return ExitCode::from(2);
        }
    };
    let report = sim.run();
    let wall = started.elapsed();
    println!(
        "seed {} | {} DPs, {} groups, {} devices, {} rounds",
        config.seed, config.dps, config.groups, config.devices, report.steps
    );
    println!(
        "crashes {} | partitions {} (whole scopes {}) | rejoins {} | disk fills {} | admin switches {}",
        report.crashes,
        report.partitions,
        report.site_partitions,
        report.rejoins,
        report.disk_fills,
        report.admin_switches
    );
    println!(
        "decisions {} | active changes {} | failovers in time {} | stale actives stepped down {} | low-disk issues {}",
        report.decisions,
        report.active_changes,
        report.failovers,
        report.stepped_down,
        report.low_disk_issues
    );
    println!(
        "digest {:016x} | wall time {:.1} ms",
        report.digest,
        wall.as_secs_f64() * 1e3
    );
    if report.violations.is_empty() {
        println!("all invariants held");
        ExitCode::SUCCESS
    } else {
        println!(
            "{} invariant violations, first: {:?}",
            report.violations.len(),
            report.violations[0]
        );
        ExitCode::from(1)
    }
}
