//! A device connecting to a gateway (or the server): verifies that the certificate it is shown
//! is signed by the server CA and names the host it dialled, says hello and syncs once.
//!
//! ```text
//! cargo run --example mobile_device -- --connect 127.0.0.1:13001 --name gw.outpost.test \
//!     --ca target/walkthrough/ca.crt [--cert phone-1.chain.pem --key phone-1.key] [--agent]
//! ```
//! Without `--cert` it connects without a client certificate (only the unauthenticated mobile
//! port accepts that). `--agent` presents the certificate as a Network Agent would.

mod common;

use std::net::SocketAddr;
use std::path::Path;

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

#[tokio::main]
async fn main() {
    common::init_logger();
    let flags = common::Flags::parse(
        PROGRAM,
        &["connect", "name", "ca", "cert", "key", "device"],
        &["agent"],
    );
    let addr: SocketAddr = flags
        .need(PROGRAM, "connect")
        .parse()
        .unwrap_or_else(|e| common::die(PROGRAM, format!("--connect: {e}")));
    let name = flags.need(PROGRAM, "name");
    let ca = store::read_ca_certificate(Path::new(flags.need(PROGRAM, "ca")))
        .unwrap_or_else(|e| common::die(PROGRAM, e));
    let identity: Option<IssuedCert> = match (flags.get("cert"), flags.get("key")) {
        (Some(c), Some(k)) => {
            let chain =
                store::read_certificates(Path::new(c)).unwrap_or_else(|e| common::die(PROGRAM, e));
            let key = store::read_private_key_der(Path::new(k))
                .unwrap_or_else(|e| common::die(PROGRAM, e));
            Some(IssuedCert::from_parts(chain, key).unwrap_or_else(|e| common::die(PROGRAM, e)))
        }
        (None, None) => None,
        _ => common::die(PROGRAM, "--cert and --key go together"),
    };
    let opts = TlsOptions::default();
    let cfg = if flags.has("agent") {
        let id = identity
            .as_ref()
            .unwrap_or_else(|| common::die(PROGRAM, "--agent needs --cert and --key"));
        agent_client_config(id, &ca, &opts)
    } else {
        mobile_client_config(identity.as_ref(), &ca, &opts)
    }
    .unwrap_or_else(|e| common::die(PROGRAM, e));
    let server_name = ServerName::try_from(name.to_string())
        .unwrap_or_else(|e| common::die(PROGRAM, format!("--name: {e}")));
    let tcp = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| common::die(PROGRAM, format!("{addr}: {e}")));
    let tls = TlsConnector::from(cfg)
        .connect(server_name, tcp)
        .await
        .unwrap_or_else(|e| common::die(PROGRAM, format!("TLS with {addr} refused: {e}")));
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
    let device = flags.get("device").unwrap_or("device").to_string();
    let mut framed = Framed::new(tls, MessageCodec::new());
    let hello = Hello {
        min_version: PROTOCOL_VERSION_MIN,
        max_version: PROTOCOL_VERSION_MAX,
        role: if flags.has("agent") {
            Role::Agent
        } else {
            Role::Mobile
        } as i32,
        node_id: device.clone(),
        software: PROGRAM.into(),
    };
    let send = framed.send(Message::from(hello)).await;
    send.unwrap_or_else(|e| common::die(PROGRAM, e));
    match framed.next().await {
        Some(Ok(Message::HelloAck(a))) => {
            println!("server answered: protocol version {}", a.version)
        }
        Some(Ok(Message::Refusal(r))) => common::die(
            PROGRAM,
            format!(
                "refused: {:?}: {}",
                RefusalCode::try_from(r.code).unwrap_or(RefusalCode::Unspecified),
                r.reason
            ),
        ),
        Some(Ok(other)) => common::die(
            PROGRAM,
            format!("unexpected answer {}", other.message_type().name()),
        ),
        Some(Err(e)) => common::die(PROGRAM, format!("the connection was refused: {e}")),
        None => common::die(PROGRAM, "the peer closed the connection"),
    }
    let sync = SyncRequest {
        device_id: device,
        ..Default::default()
    };
    framed
        .send(Message::from(sync))
        .await
        .unwrap_or_else(|e| common::die(PROGRAM, e));
    match framed.next().await {
        Some(Ok(Message::SyncResponse(s))) => {
            println!("synced: next sync in {} s", s.next_sync_secs)
        }
        Some(Ok(other)) => common::die(
            PROGRAM,
            format!("unexpected answer {}", other.message_type().name()),
        ),
        Some(Err(e)) => common::die(PROGRAM, format!("the connection failed: {e}")),
        None => common::die(PROGRAM, "the peer closed the connection"),
    }
}
