//! Test harness: an in-memory PKI, an echoing Administration Server, and devices.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::{SinkExt, StreamExt};
use outpost_gateway::{
    ConnectorConfig, DeviceConnection, DevicePeer, DmzGatewayEntry, TlsMaterial, Via,
};
use outpost_pki::tls::{
    TlsOptions, agent_client_config, gateway_signal_client_config, mobile_client_config,
};
use outpost_pki::{IssuedCert, PkiConfig, ServerCa};
pub use outpost_testkit::{bounded, payload};
use outpost_wire::messages::SignalHello;
use outpost_wire::{Message, MessageCodec};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_util::codec::Framed;

pub const GATEWAY_NAME: &str = "gateway.test";
pub const SERVER_NAME: &str = "server.test";

pub struct Pki {
    pub ca: ServerCa,
}

impl Pki {
    pub fn new() -> Self {
        Pki {
            ca: ServerCa::create(PkiConfig::default(), SystemTime::now()).unwrap(),
        }
    }
    pub fn server(&self) -> TlsMaterial {
        let id = self
            .ca
            .issue_server(
                "server-1",
                &[SERVER_NAME.to_string()],
                &[],
                SystemTime::now(),
            )
            .unwrap();
        TlsMaterial::new(id, self.ca.server_ca().clone())
    }
    pub fn gateway(&self) -> TlsMaterial {
        let id = self
            .ca
            .issue_gateway(
                &[GATEWAY_NAME.to_string()],
                &["127.0.0.1".parse().unwrap()],
                SystemTime::now(),
            )
            .unwrap();
        TlsMaterial::new(id, self.ca.server_ca().clone())
            .with_mobile_ca(self.ca.mobile_ca().clone())
    }
    pub fn agent(&self, device: &str) -> IssuedCert {
        self.ca.issue_agent(device, SystemTime::now()).unwrap()
    }
    pub fn mobile(&self, device: &str) -> IssuedCert {
        self.ca.issue_mobile(device, SystemTime::now()).unwrap()
    }
}

pub type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// Any port on 127.0.0.1.
pub fn local() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A TCP connection to `to` from the loopback address `from` (any of 127.0.0.0/8), so a test
/// can play several source hosts.
pub async fn connect_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    socket.connect(to).await
}

/// A connector configuration for server `server-1` dialling `gateways`: keepalives every
/// 200 ms, reconnects after 50 ms doubling to 400 ms.
pub fn connector_config(gateways: Vec<DmzGatewayEntry>) -> ConnectorConfig {
    let mut c = ConnectorConfig::default();
    c.server_id = "server-1".into();
    c.gateways = gateways;
    c.keepalive_ms = 200;
    c.backoff_initial_ms = 50;
    c.backoff_max_ms = 400;
    c
}

/// A Network Agent's TLS connection to `addr`, verifying the peer by `name`.
pub async fn agent_connect(
    pki: &Pki,
    cert: &IssuedCert,
    addr: SocketAddr,
    name: &str,
) -> std::io::Result<Tls> {
    let cfg = agent_client_config(cert, pki.ca.server_ca(), &TlsOptions::default()).unwrap();
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(cfg)
        .connect(ServerName::try_from(name.to_string()).unwrap(), tcp)
        .await
}

/// A mobile device's TLS connection, with or without a client certificate.
pub async fn mobile_connect(
    pki: &Pki,
    cert: Option<&IssuedCert>,
    addr: SocketAddr,
) -> std::io::Result<Tls> {
    mobile_connect_from(pki, cert, [127, 0, 0, 1], addr).await
}

/// [`mobile_connect`] from the loopback address `from`.
pub async fn mobile_connect_from(
    pki: &Pki,
    cert: Option<&IssuedCert>,
    from: [u8; 4],
    addr: SocketAddr,
) -> std::io::Result<Tls> {
    let cfg = mobile_client_config(cert, pki.ca.server_ca(), &TlsOptions::default()).unwrap();
    let tcp = connect_from(from, addr).await?;
    TlsConnector::from(cfg)
        .connect(ServerName::try_from(GATEWAY_NAME.to_string()).unwrap(), tcp)
        .await
}

/// Everything the echo server saw.
#[derive(Default)]
pub struct Seen {
    pub peers: Vec<(DevicePeer, Via)>,
}

/// An Administration Server that echoes every device's bytes back until the device
/// half-closes, then half-closes too.
pub fn echo_server(mut rx: mpsc::Receiver<DeviceConnection>) -> Arc<Mutex<Seen>> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    tokio::spawn(async move {
        while let Some(conn) = rx.recv().await {
            s.lock()
                .unwrap()
                .peers
                .push((conn.peer.clone(), conn.via.clone()));
            tokio::spawn(async move {
                let (mut r, mut w) = tokio::io::split(conn.stream);
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    seen
}

/// Writes `data` while reading the echo concurrently, half-closes, and checks the echo is
/// byte-exact and followed by end of stream.
pub async fn echo_roundtrip<S>(stream: S, data: Vec<u8>) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut r, mut w) = tokio::io::split(stream);
    let len = data.len();
    let writer = tokio::spawn(async move {
        for chunk in data.chunks(50_000) {
            w.write_all(chunk)
                .await
                .map_err(|e| format!("write: {e}"))?;
        }
        w.shutdown().await.map_err(|e| format!("shutdown: {e}"))?;
        Ok::<_, String>(data)
    });
    let mut back = Vec::with_capacity(len);
    r.read_to_end(&mut back)
        .await
        .map_err(|e| format!("read after {} bytes: {e}", back.len()))?;
    let data = writer.await.map_err(|e| e.to_string())??;
    if back != data {
        return Err(format!(
            "echo differs: sent {} bytes, got {}",
            data.len(),
            back.len()
        ));
    }
    Ok(())
}

/// Polls `cond` every 20 ms for up to 15 s.
pub async fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    outpost_testkit::wait_until(what, Duration::from_secs(15), cond).await;
}

pub fn sha256(der: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    d.as_ref().try_into().unwrap()
}

/// A hand-driven server: opens the signal connection itself (announcing `keepalive_ms`, no
/// warm pool) so the test sees the tickets and decides what the server reads and writes.
pub async fn manual_signal(
    server: &TlsMaterial,
    gw: SocketAddr,
    keepalive_ms: u32,
) -> (Framed<Tls, MessageCodec>, u64) {
    manual_signal_with_pool(server, gw, keepalive_ms, 0).await
}

/// [`manual_signal`] asking for a warm pool of `pool_size` data connections.
pub async fn manual_signal_with_pool(
    server: &TlsMaterial,
    gw: SocketAddr,
    keepalive_ms: u32,
    pool_size: u32,
) -> (Framed<Tls, MessageCodec>, u64) {
    let cfg =
        gateway_signal_client_config(&server.identity, &server.server_ca, &TlsOptions::default())
            .unwrap();
    let tcp = TcpStream::connect(gw).await.unwrap();
    let tls = TlsConnector::from(cfg)
        .connect(ServerName::try_from(GATEWAY_NAME).unwrap(), tcp)
        .await
        .unwrap();
    let mut framed = Framed::new(tls, MessageCodec::new());
    framed
        .send(Message::from(SignalHello {
            server_id: "manual".into(),
            keepalive_ms,
            pool_size,
        }))
        .await
        .unwrap();
    let Some(Ok(Message::SignalHelloAck(ack))) = framed.next().await else {
        panic!("no SignalHelloAck from the gateway")
    };
    (framed, ack.session_id)
}
