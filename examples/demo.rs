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
//! ```
//!
//! `--virtual-servers N` spreads the agents over the main server and N-1 virtual servers,
//! each with its own policies, DPs, multicast groups and copy of the update.
//!
//! Multicast stays on 127.0.0.1 (groups joined there, IP_MULTICAST_IF 127.0.0.1, TTL 1).
//! The fleet's files go to a temporary directory removed at the end, or to `--dir`, kept.
//! `OUTPOST_LOG=warn` (the default here) keeps the agents quiet; `info` shows every step.

mod common;

use std::time::{Duration, Instant};

use common::{Flags, die};
use outpost_fleet::FleetConfig;

const PROGRAM: &str = "demo";

fn number<T: std::str::FromStr>(flags: &Flags, name: &str, default: T) -> T {
    match flags.get(name) {
        None => default,
        Some(v) => v
            .parse()
            .unwrap_or_else(|_| die(PROGRAM, format!("--{name}: {v:?} is not a number"))),
    }
}

fn main() {
    common::init_logger();
    if std::env::var_os("OUTPOST_LOG").is_none() {
        log::set_max_level(log::LevelFilter::Warn);
    }
    let flags = Flags::parse(
        PROGRAM,
        &[
            "agents",
            "groups",
            "mib",
            "rate-mbps",
            "symbol",
            "kill-at",
            "port",
            "timeout-secs",
            "dir",
            "seed",
            "virtual-servers",
        ],
        &["no-kill"],
    );
    let d = FleetConfig::default();
    let mut cfg = FleetConfig::default();
    cfg.agents = number(&flags, "agents", d.agents);
    cfg.groups = number(&flags, "groups", d.groups);
    cfg.update_bytes = number::<u64>(&flags, "mib", d.update_bytes >> 20) << 20;
    cfg.rate_mbps = number(&flags, "rate-mbps", d.rate_mbps);
    cfg.symbol_size = number(&flags, "symbol", d.symbol_size);
    cfg.kill_at = if flags.has("no-kill") {
        None
    } else {
        Some(number(&flags, "kill-at", 0.5))
    };
    cfg.multicast_port = number(&flags, "port", d.multicast_port);
    cfg.timeout = Duration::from_secs(number(&flags, "timeout-secs", d.timeout.as_secs()));
    cfg.seed = number(&flags, "seed", d.seed);
    cfg.virtual_servers = number(&flags, "virtual-servers", d.virtual_servers);

    let (base, _keep) = match flags.get("dir") {
        Some(p) => (std::path::PathBuf::from(p), None),
        None => {
            let t = tempfile::tempdir().unwrap_or_else(|e| die(PROGRAM, e));
            (t.path().to_path_buf(), Some(t))
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| die(PROGRAM, e));
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
        .unwrap_or_else(|e| die(PROGRAM, e));
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
        std::process::exit(1);
    }
}
