//! The Administration Server's side of the gateways: its own device port (direct devices and
//! remote-office tunnels) and the DMZ gateways it dials, from a TOML file. Every device, however
//! it came, is answered with the wire protocol's hello and sync exchange and logged with the
//! identity that was authenticated for it.
//!
//! ```text
//! cargo run --release --example gateway_server -- --config examples/config/server.toml
//! cargo run --example gateway_server -- --help
//! ```

mod common;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use outpost::gateway::{DeviceConnection, DeviceListener, ServerConnector, ServerSideConfig};
use outpost::wire::messages::{ChannelKind, HelloAck, Refusal, RefusalCode, Role, SyncResponse};
use outpost::wire::{Message, MessageCodec, VersionRange, negotiate};
use tokio::sync::mpsc;
use tokio_util::codec::Framed;

/// The server's side of the gateways: its device port and the DMZ gateways it dials, from
/// a TOML file; answers every device's hello and sync and prints who it was. Ctrl-C stops it.
#[derive(Parser)]
#[command(name = "gateway_server", version, args_override_self = true)]
struct Cli {
    /// The server side's configuration (TOML; relative paths in it start from its
    /// directory).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

/// Largest message taken from a device: hellos and sync requests are small.
const MAX_MESSAGE: usize = 64 * 1024;
/// A device that sends nothing for this long is let go.
const IDLE: Duration = Duration::from_secs(60);

/// Answers one device: version negotiation, then sync requests, until it leaves or stays
/// silent for [`IDLE`]. A connection without a device certificate (the enrollment channel)
/// is refused: this example does not enroll.
async fn answer(conn: DeviceConnection) {
    let who = format!(
        "{} [{}] via {}",
        conn.peer.subject,
        conn.peer.fingerprint(),
        conn.via
    );
    let mut framed = Framed::new(conn.stream, MessageCodec::with_max_frame_len(MAX_MESSAGE));
    if conn.peer.channel == ChannelKind::Enrollment {
        println!("refused {who}: no device certificate, and this example does not enroll");
        let refusal = Refusal {
            code: RefusalCode::NotAuthorized as i32,
            reason: "enrollment is not served here".into(),
        };
        let _ = tokio::time::timeout(IDLE, framed.send(Message::from(refusal))).await;
        return;
    }
    while let Ok(Some(Ok(m))) = tokio::time::timeout(IDLE, framed.next()).await {
        let reply = match m {
            Message::Hello(h) => match VersionRange::new(h.min_version, h.max_version)
                .and_then(|v| negotiate(VersionRange::CURRENT, v))
            {
                Ok(version) => {
                    println!("hello from {} ({who}), protocol {version}", h.node_id);
                    Message::from(HelloAck {
                        version,
                        role: Role::Server as i32,
                        node_id: "server".into(),
                    })
                }
                Err(e) => Message::from(Refusal {
                    code: RefusalCode::VersionMismatch as i32,
                    reason: e.to_string(),
                }),
            },
            Message::SyncRequest(r) => {
                println!("sync from {} ({who})", r.device_id);
                Message::from(SyncResponse {
                    next_sync_secs: 900,
                    ..Default::default()
                })
            }
            other => Message::from(Refusal {
                code: RefusalCode::ProtocolViolation as i32,
                reason: format!("{} is not served here", other.message_type().name()),
            }),
        };
        if !matches!(
            tokio::time::timeout(IDLE, framed.send(reply)).await,
            Ok(Ok(()))
        ) {
            break;
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let (text, base) = common::read_config(&cli.config)?;
    let config = ServerSideConfig::from_toml(&text).map_err(|e| e.to_string())?;
    config.validate().map_err(|e| e.to_string())?;
    let tls = config.tls.load(&base).map_err(|e| e.to_string())?;
    let tunnels = config.tunnel_policy(&base).map_err(|e| e.to_string())?;
    let (tx, mut rx) = mpsc::channel(1024);
    let listener = DeviceListener::start(
        config.listen,
        &tls,
        &config.listener_limits(),
        tunnels,
        tx.clone(),
    )
    .await
    .map_err(|e| e.to_string())?;
    println!("device port: {}", listener.local_addr());
    let connector =
        ServerConnector::start(config.connector.clone(), &tls, tx).map_err(|e| e.to_string())?;
    for g in &config.connector.gateways {
        println!("dialling DMZ gateway {} at {} ({})", g.id, g.addr, g.name);
    }
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            c = rx.recv() => match c {
                Some(c) => { tokio::spawn(answer(c)); }
                None => break,
            },
        }
    }
    connector.shutdown().await;
    listener.shutdown().await;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    common::init_logger();
    common::exit_code("gateway_server", run(cli).await)
}
