//! A Network Agent from a TOML file: enrolls on first start, then connects (directly or
//! through a gateway), syncs and applies its settings until Ctrl-C.
//!
//! `cargo run --example network_agent -- --config examples/config/agent.toml [--token TOKEN]`

mod common;

use std::path::Path;

use outpost::agent::{AgentConfig, run};

const PROGRAM: &str = "network_agent";

#[tokio::main]
async fn main() {
    common::init_logger();
    let flags = common::Flags::parse(PROGRAM, &["config", "token"], &[]);
    let path = flags.need(PROGRAM, "config");
    let mut config = AgentConfig::load(Path::new(path)).unwrap_or_else(|e| common::die(PROGRAM, e));
    if let Some(t) = flags.get("token") {
        config.enrollment.token = t.to_string();
    }
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    if let Err(e) = run(config, shutdown).await {
        common::die(PROGRAM, e);
    }
}
