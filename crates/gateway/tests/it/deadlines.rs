//! Peers that go silent or stop reading: the gateway and the connector notice, give up on
//! their own deadlines, and still shut down.

use crate::common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use common::*;
use futures_util::{SinkExt, StreamExt};
use outpost_gateway::{
    ConnectorConfig, DeviceConnection, DmzGatewayEntry, Gateway, GatewayConfig, ServerConnector,
};
use outpost_pki::tls::{
    ALPN_DATA, ALPN_SIGNAL, TlsOptions, gateway_data_server_config, gateway_signal_server_config,
};
use outpost_wire::messages::*;
use outpost_wire::{Message, MessageCodec};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::LazyConfigAcceptor;
use tokio_util::codec::{Encoder, Framed};

type ServerTls = tokio_rustls::server::TlsStream<TcpStream>;

/// The connector configuration of these tests: one gateway at `addr`, keepalives every
/// `keepalive_ms`.
fn fake_connector(addr: SocketAddr, keepalive_ms: u64) -> ConnectorConfig {
    let mut c = connector_config(vec![DmzGatewayEntry::new("gw-fake", addr, GATEWAY_NAME)]);
    c.keepalive_ms = keepalive_ms;
    c
}

/// A DMZ gateway played by the test: it answers `SignalHello` and hands over each signal
/// connection, and reads the `DataAttach` of each data connection and hands it over
/// unanswered.
struct FakeGateway {
    addr: SocketAddr,
    signals: mpsc::Receiver<Framed<ServerTls, MessageCodec>>,
    data: mpsc::Receiver<(DataAttach, ServerTls)>,
}

async fn fake_gateway(pki: &Pki) -> FakeGateway {
    let tls = pki.gateway();
    let opts = TlsOptions::default();
    let signal_cfg = gateway_signal_server_config(&tls.identity, &tls.server_ca, &opts).unwrap();
    let data_cfg = gateway_data_server_config(&tls.identity, &tls.server_ca, &opts).unwrap();
    let listener = TcpListener::bind(local()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (signal_tx, signals) = mpsc::channel(16);
    let (data_tx, data) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (signal_cfg, data_cfg) = (signal_cfg.clone(), data_cfg.clone());
            let (signal_tx, data_tx) = (signal_tx.clone(), data_tx.clone());
            tokio::spawn(async move {
                let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
                let Ok(start) = acceptor.await else { return };
                let alpn: Vec<Vec<u8>> = start
                    .client_hello()
                    .alpn()
                    .map(|a| a.map(<[u8]>::to_vec).collect())
                    .unwrap_or_default();
                if alpn.iter().any(|a| a == ALPN_SIGNAL) {
                    let Ok(tls) = start.into_stream(signal_cfg).await else {
                        return;
                    };
                    let mut framed = Framed::new(tls, MessageCodec::new());
                    let Some(Ok(Message::SignalHello(_))) = framed.next().await else {
                        return;
                    };
                    let ack = SignalHelloAck {
                        gateway_id: "gw-fake".into(),
                        session_id: 1,
                    };
                    if framed.send(Message::from(ack)).await.is_ok() {
                        let _ = signal_tx.send(framed).await;
                    }
                } else if alpn.iter().any(|a| a == ALPN_DATA) {
                    let Ok(mut tls) = start.into_stream(data_cfg).await else {
                        return;
                    };
                    if let Ok(Message::DataAttach(d)) =
                        outpost_gateway::io::read_message(&mut tls, 65536).await
                    {
                        let _ = data_tx.send((d, tls)).await;
                    }
                }
            });
        }
    });
    FakeGateway {
        addr,
        signals,
        data,
    }
}

fn connect_request(ticket: u128, expires_in_ms: u32) -> Message {
    ConnectRequest {
        ticket: Some(Ticket::from_u128(ticket)),
        peer: Some(PeerIdentity {
            remote_addr: "127.0.0.1:1".into(),
            channel: ChannelKind::Agent as i32,
            ..PeerIdentity::default()
        }),
        expires_in_ms,
    }
    .into()
}

fn data_failures(conn: &ServerConnector) -> u64 {
    conn.stats().data_failures.load(Ordering::Relaxed)
}

/// Writes keepalive requests to `w` without ever reading, until a write has made no
/// progress for a second (the peer stopped reading) or fails.
async fn flood_until_stalled<W: AsyncWrite + Unpin>(w: &mut W) {
    let mut batch = BytesMut::new();
    let mut codec = MessageCodec::new();
    for seq in 0..1000 {
        codec
            .encode(Message::from(Keepalive { seq, reply: false }), &mut batch)
            .unwrap();
    }
    loop {
        match tokio::time::timeout(Duration::from_secs(1), w.write_all(&batch)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_is_declared_dead_while_devices_keep_arriving() {
    let pki = Pki::new();
    let mut cfg = GatewayConfig::dmz("gw-dmz", local());
    cfg.limits.signal_dead_after_ms = 1000;
    let gw = Gateway::start(cfg, pki.gateway()).await.unwrap();
    // Announces 100 ms keepalives, then neither reads nor writes again.
    let (_signal, _session) = manual_signal(&pki.server(), gw.local_addr(), 100).await;
    assert_eq!(gw.stats().signal_sessions, 1);
    let cert = pki.agent("device-1");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut devices = Vec::new();
    while gw.stats().signal_sessions != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a server silent for 5 s still holds its signal session ({} devices arrived meanwhile)",
            devices.len()
        );
        // Each device sends a ConnectRequest toward the silent server.
        devices.push(
            agent_connect(&pki, &cert, gw.local_addr(), GATEWAY_NAME)
                .await
                .unwrap(),
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!devices.is_empty());
    drop(devices);
    bounded("gateway shutdown", gw.shutdown()).await;
}

/// A DMZ gateway whose one signal session comes from a server that stopped reading: the
/// gateway's writes toward it no longer complete. Keepalives are announced at 60 s, so the
/// silence deadline is far away. Returns the gateway and the (unread) signal connection.
async fn gateway_with_a_stalled_server(
    handshake_timeout_ms: u64,
    drain_timeout_ms: Option<u64>,
) -> (outpost_gateway::Gateway, impl Sized) {
    let pki = Pki::new();
    let mut cfg = GatewayConfig::dmz("gw-dmz", local());
    cfg.limits.handshake_timeout_ms = handshake_timeout_ms;
    if let Some(ms) = drain_timeout_ms {
        cfg.limits.drain_timeout_ms = ms;
    }
    let gw = Gateway::start(cfg, pki.gateway()).await.unwrap();
    let (mut signal, _) = manual_signal(&pki.server(), gw.local_addr(), 60_000).await;
    bounded(
        "flooding the gateway",
        flood_until_stalled(signal.get_mut()),
    )
    .await;
    (gw, signal)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_drops_a_signal_connection_whose_server_stops_reading() {
    // Only the write deadline (the 1 s handshake timeout) can end this session.
    let (gw, _signal) = gateway_with_a_stalled_server(1000, None).await;
    wait_until("signal session dropped", || gw.stats().signal_sessions == 0).await;
    bounded("gateway shutdown", gw.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_shutdown_is_not_held_by_a_server_that_stops_reading() {
    let (gw, _signal) = gateway_with_a_stalled_server(600_000, Some(500)).await;
    assert_eq!(gw.stats().signal_sessions, 1);
    // The write deadline is 10 minutes away; the drain timeout's hard stop ends the session.
    bounded("gateway shutdown", gw.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_gives_up_on_a_data_connection_that_is_never_acknowledged() {
    let pki = Pki::new();
    let mut fake = fake_gateway(&pki).await;
    let (tx, _rx) = mpsc::channel(4);
    let conn =
        ServerConnector::start(fake_connector(fake.addr, 60_000), &pki.server(), tx).unwrap();
    let mut signal = bounded("signal connection", fake.signals.recv())
        .await
        .unwrap();
    // The ticket lives 300 ms, far less than the 10 s connect timeout.
    signal.send(connect_request(7, 300)).await.unwrap();
    let (attach, _unanswered) = bounded("data connection", fake.data.recv()).await.unwrap();
    assert_eq!(attach.ticket, Some(Ticket::from_u128(7)));
    wait_until("data connection failure counted", || {
        data_failures(&conn) == 1
    })
    .await;
    bounded("connector shutdown", conn.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_refuses_connect_requests_above_its_in_flight_limit() {
    let pki = Pki::new();
    let mut fake = fake_gateway(&pki).await;
    let (tx, _rx) = mpsc::channel(4);
    let mut cc = fake_connector(fake.addr, 60_000);
    cc.max_data_in_flight = 1;
    let conn = ServerConnector::start(cc, &pki.server(), tx).unwrap();
    let mut signal = bounded("signal connection", fake.signals.recv())
        .await
        .unwrap();
    signal.send(connect_request(1, 60_000)).await.unwrap();
    let (attach, _unanswered) = bounded("first data connection", fake.data.recv())
        .await
        .unwrap();
    assert_eq!(attach.ticket, Some(Ticket::from_u128(1)));
    // The first is still being opened: the second is refused, not dialled.
    signal.send(connect_request(2, 60_000)).await.unwrap();
    let refusal = bounded("refusal", async {
        loop {
            match signal.next().await {
                Some(Ok(Message::Keepalive(_))) => {}
                Some(Ok(Message::ConnectRefusal(r))) => return r,
                other => panic!("expected a ConnectRefusal, got {other:?}"),
            }
        }
    })
    .await;
    assert_eq!(refusal.ticket, Some(Ticket::from_u128(2)));
    assert_eq!(refusal.code, RefusalCode::Overloaded as i32);
    assert_eq!(data_failures(&conn), 1);
    assert!(
        fake.data.try_recv().is_err(),
        "the second request was dialled"
    );
    bounded("connector shutdown", conn.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_drops_a_gateway_that_stops_reading_and_still_shuts_down() {
    let pki = Pki::new();
    let mut fake = fake_gateway(&pki).await;
    let (tx, _rx) = mpsc::channel(4);
    let conn = ServerConnector::start(fake_connector(fake.addr, 200), &pki.server(), tx).unwrap();
    let mut signal = bounded("signal connection", fake.signals.recv())
        .await
        .unwrap();
    bounded(
        "flooding the connector",
        flood_until_stalled(signal.get_mut()),
    )
    .await;
    wait_until("signal failure counted", || {
        conn.stats().signal_failures.load(Ordering::Relaxed) >= 1
    })
    .await;
    bounded("connector shutdown", conn.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_shutdown_does_not_wait_for_a_full_device_channel() {
    let pki = Pki::new();
    let mut cfg = GatewayConfig::dmz("gw-dmz", local());
    cfg.limits.drain_timeout_ms = 2000;
    let gw = Gateway::start(cfg, pki.gateway()).await.unwrap();
    // Room for one device, and nobody takes it.
    let (tx, rx) = mpsc::channel::<DeviceConnection>(1);
    let conn =
        ServerConnector::start(fake_connector(gw.local_addr(), 200), &pki.server(), tx).unwrap();
    wait_until("signal connection", || gw.stats().signal_sessions == 1).await;
    let cert = pki.agent("device-1");
    let mut devices = Vec::new();
    for _ in 0..2 {
        devices.push(
            agent_connect(&pki, &cert, gw.local_addr(), GATEWAY_NAME)
                .await
                .unwrap(),
        );
    }
    wait_until("both data connections opened", || {
        conn.stats().data_connections.load(Ordering::Relaxed) == 2
    })
    .await;
    bounded("connector shutdown", conn.shutdown()).await;
    drop((rx, devices));
    bounded("gateway shutdown", gw.shutdown()).await;
}
