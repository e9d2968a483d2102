//! A connection gateway, DMZ or remote office, from a TOML file.
//!
//! `cargo run --release --example connection_gateway -- --config examples/config/gateway-dmz.toml`
//!
//! Stops gracefully (draining relayed connections) on Ctrl-C.

mod common;

use std::time::Duration;

use outpost::gateway::{Gateway, GatewayConfig};

const PROGRAM: &str = "connection_gateway";

#[tokio::main]
async fn main() {
    common::init_logger();
    let flags = common::Flags::parse(PROGRAM, &["config"], &[]);
    let (text, base) = flags.config(PROGRAM);
    let config = GatewayConfig::from_toml(&text).unwrap_or_else(|e| common::die(PROGRAM, e));
    let tls = config
        .load_tls(&base)
        .unwrap_or_else(|e| common::die(PROGRAM, e));
    let gw = Gateway::start(config, tls)
        .await
        .unwrap_or_else(|e| common::die(PROGRAM, e));
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
}
