//! Runs the deterministic election simulation and prints what happened.
//!
//! ```text
//! cargo run --release --example election -- --seed 7 --dps 3000 --groups 1000 --devices 20000 --steps 200
//! ```
//!
//! Flags (all optional): `--seed N`, `--dps N`, `--groups N`, `--devices N`, `--steps N`,
//! `--missed N` (missed heartbeats before a DP is down). Exits with status 1 if any invariant
//! was broken, 2 on a bad flag.

use std::process::ExitCode;
use std::time::Instant;

use outpost::election::sim::{Sim, SimConfig};

fn parse(args: &[String]) -> Result<SimConfig, String> {
    let mut c = SimConfig::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("flag {flag} needs a value"))?;
        let number = |max: u64| -> Result<u64, String> {
            let n: u64 = value
                .parse()
                .map_err(|_| format!("flag {flag}: {value:?} is not a whole number"))?;
            if n > max {
                return Err(format!("flag {flag}: {n} is above the limit of {max}"));
            }
            Ok(n)
        };
        match flag.as_str() {
            "--seed" => c.seed = number(u64::MAX)?,
            "--dps" => c.dps = number(60_000)? as usize,
            "--groups" => c.groups = number(1_000_000)? as usize,
            "--devices" => c.devices = number(10_000_000)? as usize,
            "--steps" => c.steps = number(100_000)? as usize,
            "--missed" => {
                c.election.missed_heartbeats = u32::try_from(number(1_000)?)
                    .map_err(|_| format!("flag {flag}: {value} is too large"))?;
            }
            other => return Err(format!("unknown flag {other:?}")),
        }
    }
    Ok(c)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("election: {e}");
            return ExitCode::from(2);
        }
    };
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
