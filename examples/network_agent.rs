//! A Network Agent from a TOML file: enrolls on first start, then connects (directly or
//! through a gateway), syncs and applies its settings until Ctrl-C.
//!
//! ```text
//! cargo run --example network_agent -- --config examples/config/agent.toml [--token TOKEN]
//! cargo run --example network_agent -- --help
//! ```

mod common;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use outpost::agent::{AgentConfig, run};

/// A Network Agent from a TOML file: enrolls on first start, then connects (directly or
/// through a gateway), syncs and applies its settings until Ctrl-C.
#[derive(Parser)]
#[command(name = "network_agent", version, args_override_self = true)]
struct Cli {
    /// The agent's configuration (TOML; relative paths in it start from its directory).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// The enrollment token, in place of the configuration's `[enrollment] token` (needed
    /// only before the agent is enrolled).
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    common::init_logger();
    let mut config = match AgentConfig::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("network_agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(t) = cli.token {
        config.enrollment.token = t;
    }
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("network_agent: {e}");
            ExitCode::FAILURE
        }
    }
}
