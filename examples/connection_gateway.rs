//! A connection gateway, DMZ or remote office, from a TOML file.
//!
//! ```text
//! cargo run --release --example connection_gateway -- --config examples/config/gateway-dmz.toml
//! cargo run --example connection_gateway -- --help
//! ```
//!
//! Stops gracefully (draining relayed connections) on Ctrl-C.

mod common;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use outpost::gateway::{Gateway, GatewayConfig};

/// A connection gateway, DMZ or remote office, from a TOML file; Ctrl-C stops it, draining
/// the connections it relays.
#[derive(Parser)]
#[command(name = "connection_gateway", version, args_override_self = true)]
struct Cli {
    /// The gateway's configuration (TOML; relative paths in it start from its directory).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

async fn run(cli: Cli) -> Result<(), String> {
    let (text, base) = common::read_config(&cli.config)?;
    let config = GatewayConfig::from_toml(&text).map_err(|e| e.to_string())?;
    let tls = config.load_tls(&base).map_err(|e| e.to_string())?;
    let gw = Gateway::start(config, tls)
        .await
        .map_err(|e| e.to_string())?;
    println!("agent port: {}", gw.local_addr());
    if let Some(a) = gw.mobile_addr() {
        println!("mobile port (client certificates from the mobile CA): {a}");
    }
    if let Some(a) = gw.mobile_unauthenticated_addr() {
        println!("mobile port WITHOUT client authentication: {a}");
    }
    if let Some(a) = gw.web_console_addr() {
        println!("Web Console tunnel: {a}");
    }
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => println!("{:?}", gw.stats()),
        }
    }
    println!("shutting down: {:?}", gw.stats());
    gw.shutdown().await;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    common::init_logger();
    common::exit_code("connection_gateway", run(cli).await)
}
