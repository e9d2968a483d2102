//! A device connecting to a gateway (or the server): verifies that the certificate it is shown
//! is signed by the server CA and names the host it dialled, says hello and syncs once.
//!
//! ```text
//! cargo run --example mobile_device -- --connect 127.0.0.1:13001 --name gw.outpost.test \
//!     --ca target/walkthrough/ca.crt [--cert phone-1.chain.pem --key phone-1.key] [--agent] \
//!     [--device ID]
//! cargo run --example mobile_device -- --help
//! ```
//! Without `--cert` it connects without a client certificate (only the unauthenticated mobile
//! port accepts that). `--agent` presents the certificate as a Network Agent would.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use outpost::pki::tls::{TlsOptions, agent_client_config, mobile_client_config};
use outpost::pki::{IssuedCert, PeerIdentity, store};
use outpost::wire::messages::{Hello, RefusalCode, Role, SyncRequest};
use outpost::wire::{Message, MessageCodec, PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::codec::Framed;

const PROGRAM: &str = "mobile_device";

/// Connect to a gateway (or the server) as a device: check that its certificate is signed
/// by the server CA and names the host dialled, say hello and sync once.
#[derive(Parser)]
#[command(name = "mobile_device", version, args_override_self = true)]
struct Cli {
    /// The address to dial.
    #[arg(long, value_name = "ADDR:PORT")]
    connect: SocketAddr,
    /// The host name the gateway's certificate must carry.
    #[arg(long, value_name = "HOST", value_parser = parse_server_name)]
    name: ServerName<'static>,
    /// The server CA's certificate, which the gateway's must be signed by.
    #[arg(long, value_name = "FILE")]
    ca: PathBuf,
    /// The device's certificate chain, presented as its client certificate (without it, no
    /// client certificate: only an unauthenticated mobile port accepts that).
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// The private key of --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// Present the certificate as a Network Agent would (and say hello as one), not as a
    /// mobile device.
    #[arg(long, requires = "cert")]
    agent: bool,
    /// The device id sent in the hello and the sync.
    #[arg(long, value_name = "ID", default_value = "device")]
    device: String,
}

fn parse_server_name(v: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(v.to_string()).map_err(|e| e.to_string())
}

/// The answer's name, for a message that was not the one expected.
fn unexpected(m: Option<Result<Message, impl std::fmt::Display>>, failed: &str) -> String {
    match m {
        Some(Ok(other)) => format!("unexpected answer {}", other.message_type().name()),
        Some(Err(e)) => format!("{failed}: {e}"),
        None => "the peer closed the connection".into(),
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let e = |e: outpost::pki::PkiError| e.to_string();
    let addr = cli.connect;
    let name = cli.name.to_str().into_owned();
    let ca = store::read_ca_certificate(&cli.ca).map_err(e)?;
    let identity: Option<IssuedCert> = match (&cli.cert, &cli.key) {
        (Some(c), Some(k)) => {
            let chain = store::read_certificates(c).map_err(e)?;
            let key = store::read_private_key_der(k).map_err(e)?;
            Some(IssuedCert::from_parts(chain, key).map_err(e)?)
        }
        // clap makes --cert and --key go together, and --agent need them.
        _ => None,
    };
    let opts = TlsOptions::default();
    let cfg = match (&identity, cli.agent) {
        (Some(id), true) => agent_client_config(id, &ca, &opts),
        _ => mobile_client_config(identity.as_ref(), &ca, &opts),
    }
    .map_err(e)?;
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let tls = TlsConnector::from(cfg)
        .connect(cli.name, tcp)
        .await
        .map_err(|e| format!("TLS with {addr} refused: {e}"))?;
    if let Some(peer) = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(<[_]>::first)
        .and_then(|c| PeerIdentity::from_der(c).ok())
    {
        println!(
            "verified: {} is signed by the server CA and names {name}",
            peer.subject
        );
        println!("fingerprint: {}", peer.fingerprint());
    }
    let mut framed = Framed::new(tls, MessageCodec::new());
    let hello = Hello {
        min_version: PROTOCOL_VERSION_MIN,
        max_version: PROTOCOL_VERSION_MAX,
        role: if cli.agent { Role::Agent } else { Role::Mobile } as i32,
        node_id: cli.device.clone(),
        software: PROGRAM.into(),
    };
    framed
        .send(Message::from(hello))
        .await
        .map_err(|e| e.to_string())?;
    match framed.next().await {
        Some(Ok(Message::HelloAck(a))) => {
            println!("server answered: protocol version {}", a.version)
        }
        Some(Ok(Message::Refusal(r))) => {
            return Err(format!(
                "refused: {:?}: {}",
                RefusalCode::try_from(r.code).unwrap_or(RefusalCode::Unspecified),
                r.reason
            ));
        }
        other => return Err(unexpected(other, "the connection was refused")),
    }
    let sync = SyncRequest {
        device_id: cli.device,
        ..Default::default()
    };
    framed
        .send(Message::from(sync))
        .await
        .map_err(|e| e.to_string())?;
    match framed.next().await {
        Some(Ok(Message::SyncResponse(s))) => {
            println!("synced: next sync in {} s", s.next_sync_secs);
            Ok(())
        }
        other => Err(unexpected(other, "the connection failed")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    common::init_logger();
    common::exit_code(PROGRAM, run(cli).await)
}
