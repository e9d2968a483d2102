//! The whole system in one process on loopback, with no set-up: an Administration Server, a
//! DMZ gateway it dials, and a fleet of agents in a few groups (some behind the gateway).
//! Enrollment, policies with a profile, an elected active and standby distribution point per
//! group, an update spread by multicast, the active DP of the first group killed halfway and
//! its standby taking over; every device must end with the byte-exact update and the
//! effective settings the server computed for it. Ends with a summary table; exits 1 if any
//! device ends wrong.
//!
//! ```text
//! cargo run --release --example demo -- [--agents 200] [--groups 4] [--mib 64]
//!     [--rate-mbps 150] [--symbol 8192] [--kill-at 0.5 | --no-kill] [--port 15001]
//!     [--timeout-secs 900] [--dir PATH] [--seed N] [--virtual-servers 1]
//! cargo run --release --example demo -- --help
//! ```
//!
//! `--virtual-servers N` spreads the agents over the main server and N-1 virtual servers,
//! each with its own policies, DPs, multicast groups and copy of the update.
//!
//! Multicast stays on 127.0.0.1 (groups joined there, IP_MULTICAST_IF 127.0.0.1, TTL 1).
//! The fleet's files go to a temporary directory removed at the end, or to `--dir`, kept.
//! `OUTPOST_LOG=warn` (the default here) keeps the agents quiet; `info` shows every step.

mod common;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use clap::builder::TypedValueParser;
use outpost_fleet::FleetConfig;

/// The whole system in one process on loopback: an Administration Server, a DMZ gateway and
/// a fleet of agents; policies, DP election, an update by multicast with a DP failover.
/// Exits 1 if any device ends without the byte-exact update or its effective settings.
#[derive(Parser)]
#[command(name = "demo", version, args_override_self = true)]
struct Cli {
    /// Agents in all, spread over the groups (at least 3 per group of each server).
    #[arg(long, value_name = "N", default_value_t = FleetConfig::default().agents,
          value_parser = clap::value_parser!(u32).range(1..=5000).map(|n| n as usize))]
    agents: usize,
    /// Groups under the root group, one distribution point scope each.
    #[arg(long, value_name = "N", default_value_t = FleetConfig::default().groups,
          value_parser = clap::value_parser!(u32).range(1..=64).map(|n| n as usize))]
    groups: usize,
    /// Size of the update, MiB.
    #[arg(long, value_name = "N", default_value_t = FleetConfig::default().update_bytes >> 20,
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    mib: u64,
    /// Each distribution point's multicast rate ceiling, Mbit/s.
    #[arg(long, value_name = "N", default_value_t = FleetConfig::default().rate_mbps,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    rate_mbps: u64,
    /// Payload bytes per multicast datagram.
    #[arg(long, value_name = "BYTES", default_value_t = FleetConfig::default().symbol_size,
          value_parser = clap::value_parser!(u16).range(512..=16_384))]
    symbol: u16,
    /// Kill the first group's active distribution point once its devices hold this fraction
    /// of the update, in [0, 1).
    #[arg(long, value_name = "FRACTION", default_value_t = 0.5, value_parser = parse_fraction)]
    kill_at: f64,
    /// Kill no distribution point (wins over --kill-at).
    #[arg(long)]
    no_kill: bool,
    /// The multicast UDP port.
    #[arg(long, value_name = "PORT", default_value_t = FleetConfig::default().multicast_port,
          value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
    /// The whole run must end within this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = FleetConfig::default().timeout.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    timeout_secs: u64,
    /// Keep the fleet's files in this directory (by default a temporary one, removed at the
    /// end).
    #[arg(long, value_name = "PATH")]
    dir: Option<PathBuf>,
    /// Seed of the update's bytes.
    #[arg(long, value_name = "N", default_value_t = FleetConfig::default().seed)]
    seed: u64,
    /// Servers the agents are spread over: the main server and N-1 virtual servers, each
    /// with its own policies, DPs, multicast groups and copy of the update.
    #[arg(long, value_name = "N", default_value_t = FleetConfig::default().virtual_servers,
          value_parser = clap::value_parser!(u32).range(1..=500).map(|n| n as usize))]
    virtual_servers: usize,
}

impl Cli {
    fn config(&self) -> FleetConfig {
        let mut cfg = FleetConfig::default();
        cfg.agents = self.agents;
        cfg.groups = self.groups;
        cfg.update_bytes = self.mib << 20;
        cfg.rate_mbps = self.rate_mbps;
        cfg.symbol_size = self.symbol;
        cfg.kill_at = (!self.no_kill).then_some(self.kill_at);
        cfg.multicast_port = self.port;
        cfg.timeout = Duration::from_secs(self.timeout_secs);
        cfg.seed = self.seed;
        cfg.virtual_servers = self.virtual_servers;
        cfg
    }
}

fn parse_fraction(v: &str) -> Result<f64, String> {
    v.parse()
        .ok()
        .filter(|k: &f64| (0.0..1.0).contains(k))
        .ok_or(format!("{v:?} not in [0, 1)"))
}

fn run(cli: Cli) -> Result<bool, String> {
    let cfg = cli.config();
    let (base, _keep) = match cli.dir {
        Some(p) => (p, None),
        None => {
            let t = tempfile::tempdir().map_err(|e| e.to_string())?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    eprintln!(
        "demo: {} agents in {} groups of {} server(s), a {} MiB update, files in {}",
        cfg.agents,
        cfg.groups,
        cfg.virtual_servers,
        cfg.update_bytes >> 20,
        base.display()
    );
    let report = runtime
        .block_on(outpost_fleet::run(&cfg, &base, |line| {
            eprintln!("[{:7.2} s] {line}", t0.elapsed().as_secs_f64());
        }))
        .map_err(|e| e.to_string())?;
    println!("{}", report.table());
    if report.ok() {
        println!(
            "all {} devices hold the byte-exact update and their effective settings ({:.1} s)",
            report.devices,
            t0.elapsed().as_secs_f64()
        );
    } else {
        for f in &report.failures {
            println!("WRONG: {f}");
        }
    }
    Ok(report.ok())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Warnings only unless asked: 200 agents at `info` drown the progress lines.
    common::init_logger_or("outpost=warn");
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(reason) => {
            eprintln!("demo: {reason}");
            ExitCode::FAILURE
        }
    }
}
