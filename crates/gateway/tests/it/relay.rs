//! Device ↔ gateway ↔ server over loopback with real TLS, in both modes.

use crate::common;
#[path = "relay/pool.rs"]
mod pool;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use outpost_gateway::{
    ConnectorConfig, DeviceConnection, DeviceListener, DmzGatewayEntry, Gateway, GatewayConfig,
    ListenerLimits, ServerConnector, TlsFiles, TlsMaterial, TunnelPolicy, Via,
};
use outpost_pki::tls::{TlsOptions, gateway_data_client_config};
use outpost_wire::Message;
use outpost_wire::messages::*;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;

/// A DMZ gateway started with `cfg`, and a connector that dials it and hands devices to
/// `tx` (`tweak` adjusts its configuration); returns once the signal connection is up.
async fn dmz_pair(
    pki: &Pki,
    cfg: GatewayConfig,
    tx: mpsc::Sender<DeviceConnection>,
    tweak: impl FnOnce(&mut ConnectorConfig),
) -> (Gateway, ServerConnector) {
    dmz_pair_with(pki, cfg, pki.gateway(), tx, tweak).await
}

/// [`dmz_pair`] with the gateway's TLS material given.
async fn dmz_pair_with(
    pki: &Pki,
    cfg: GatewayConfig,
    material: TlsMaterial,
    tx: mpsc::Sender<DeviceConnection>,
    tweak: impl FnOnce(&mut ConnectorConfig),
) -> (Gateway, ServerConnector) {
    let gw = Gateway::start(cfg, material).await.unwrap();
    let mut cc = connector_config(vec![DmzGatewayEntry::new(
        "gw-dmz",
        gw.local_addr(),
        GATEWAY_NAME,
    )]);
    tweak(&mut cc);
    let conn = ServerConnector::start(cc, &pki.server(), tx).unwrap();
    wait_until("signal connection", || gw.stats().signal_sessions == 1).await;
    (gw, conn)
}

/// [`dmz_pair`] with an echoing server behind it.
async fn dmz_echo(pki: &Pki, cfg: GatewayConfig) -> (Gateway, ServerConnector, Arc<Mutex<Seen>>) {
    let (tx, rx) = mpsc::channel(64);
    let seen = echo_server(rx);
    let (gw, conn) = dmz_pair(pki, cfg, tx, |_| {}).await;
    (gw, conn, seen)
}

async fn read_refusal<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Refusal {
    match outpost_gateway::io::read_message(s, 65536).await {
        Ok(Message::Refusal(r)) => r,
        other => panic!("expected a Refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dmz_echo_many_devices_byte_exact() {
    let pki = Pki::new();
    let (gw, conn, seen) = dmz_echo(&pki, GatewayConfig::dmz("gw-dmz", local())).await;
    wait_until("the warm pool is full", || gw.stats().pool_idle == 4).await;

    const DEVICES: u64 = 12;
    const SIZE: usize = 3 * 1024 * 1024;
    let mut tasks = Vec::new();
    let mut fingerprints = Vec::new();
    for i in 0..DEVICES {
        let cert = pki.agent(&format!("device-{i}"));
        fingerprints.push(sha256(&cert.cert_der));
        let tls = agent_connect(&pki, &cert, gw.local_addr(), GATEWAY_NAME)
            .await
            .unwrap();
        tasks.push(tokio::spawn(echo_roundtrip(tls, payload(i, SIZE))));
    }
    for t in tasks {
        bounded("device echo", t).await.unwrap().unwrap();
    }
    let s = gw.stats();
    // The first devices took the warm pool; the rest were served by it as it refilled, or
    // by a data connection opened for them (a ticket each).
    assert!(s.pool_claimed >= 4, "{s:?}");
    assert_eq!(
        s.tickets.redeemed,
        s.pool_parked + (DEVICES - s.pool_claimed),
        "{s:?}"
    );
    assert_eq!(s.pool_discarded, 0, "{s:?}");
    assert_eq!(s.tickets.refused(), 0);
    assert_eq!(s.bytes_up, DEVICES * SIZE as u64);
    assert_eq!(s.bytes_down, DEVICES * SIZE as u64);
    wait_until("relays finished", || gw.stats().relays_finished == DEVICES).await;
    // The server saw every device, with the identity the gateway authenticated.
    let seen = seen.lock().unwrap().peers.clone();
    assert_eq!(seen.len(), DEVICES as usize);
    for (peer, via) in &seen {
        assert_eq!(via, &Via::DmzGateway("gw-dmz".into()));
        assert_eq!(peer.channel, ChannelKind::Agent);
        assert!(
            fingerprints.contains(&peer.cert_sha256.unwrap()),
            "unknown fingerprint"
        );
        assert!(peer.subject.contains("device-"), "{}", peer.subject);
    }
    assert_eq!(
        conn.stats()
            .data_connections
            .load(std::sync::atomic::Ordering::Relaxed),
        DEVICES
    );
    conn.shutdown().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_office_and_direct_devices_reach_the_server_as_one_type() {
    let pki = Pki::new();
    let (tx, rx) = mpsc::channel(64);
    let seen = echo_server(rx);
    let listener = DeviceListener::start(
        local(),
        &pki.server(),
        &ListenerLimits::default(),
        TunnelPolicy::AnyGateway,
        tx,
    )
    .await
    .unwrap();
    let gw = Gateway::start(
        GatewayConfig::remote_office("gw-ro", local(), listener.local_addr(), SERVER_NAME),
        pki.gateway(),
    )
    .await
    .unwrap();
    wait_until("the warm pool is full", || gw.stats().pool_idle == 4).await;
    let cert = pki.agent("office-device");
    let tls = agent_connect(&pki, &cert, gw.local_addr(), GATEWAY_NAME)
        .await
        .unwrap();
    bounded(
        "remote office echo",
        echo_roundtrip(tls, payload(1, 2 << 20)),
    )
    .await
    .unwrap();
    let direct = pki.agent("direct-device");
    let tls = agent_connect(&pki, &direct, listener.local_addr(), SERVER_NAME)
        .await
        .unwrap();
    bounded("direct echo", echo_roundtrip(tls, payload(2, 1 << 20)))
        .await
        .unwrap();
    let seen = seen.lock().unwrap().peers.clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].1, Via::RemoteGateway("gw-ro".into()));
    assert_eq!(seen[0].0.cert_sha256, Some(sha256(&cert.cert_der)));
    assert_eq!(seen[1].1, Via::Direct);
    assert_eq!(seen[1].0.cert_sha256, Some(sha256(&direct.cert_der)));
    // The device was spliced to a tunnel of the warm pool; its stream ended cleanly both
    // ways, so that tunnel waits for the next device: nothing was dialled for it.
    let s = gw.stats();
    assert_eq!((s.pool_claimed, s.pool_discarded), (1, 0), "{s:?}");
    wait_until("the tunnel is back", || gw.stats().pool_idle == 4).await;
    let s = gw.stats();
    assert_eq!((s.pool_reused, s.data_connections), (1, 4), "{s:?}");
    gw.shutdown().await;
    listener.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_office_tunnels_are_bound_to_the_registered_certificate() {
    let pki = Pki::new();
    let (tx, rx) = mpsc::channel(64);
    let seen = echo_server(rx);
    let registered = pki.gateway();
    let same_cert = || {
        TlsMaterial::new(
            outpost_pki::IssuedCert::from_parts(
                registered.identity.chain.clone(),
                registered.identity.key_der.clone_key(),
            )
            .unwrap(),
            pki.ca.server_ca().clone(),
        )
    };
    let mut by_cert = std::collections::HashMap::new();
    by_cert.insert(
        sha256(&registered.identity.cert_der),
        "office-a".to_string(),
    );
    let policy = TunnelPolicy::Registered(Arc::new(outpost_gateway::StaticTunnels(by_cert)));
    let listener = DeviceListener::start(
        local(),
        &pki.server(),
        &ListenerLimits::default(),
        policy,
        tx,
    )
    .await
    .unwrap();
    let office =
        |id: &str| GatewayConfig::remote_office(id, local(), listener.local_addr(), SERVER_NAME);

    // The registered certificate under its own id: served, under the id registered.
    let good = Gateway::start(office("office-a"), same_cert())
        .await
        .unwrap();
    let cert = pki.agent("office-device");
    let tls = agent_connect(&pki, &cert, good.local_addr(), GATEWAY_NAME)
        .await
        .unwrap();
    bounded(
        "registered gateway echo",
        echo_roundtrip(tls, payload(1, 4096)),
    )
    .await
    .unwrap();
    assert_eq!(
        seen.lock().unwrap().peers[0].1,
        Via::RemoteGateway("office-a".into())
    );

    // Another gateway certificate of the same CA, and the registered one claiming another
    // gateway's id: both refused, and the server is handed nothing.
    let stranger = Gateway::start(office("office-a"), pki.gateway())
        .await
        .unwrap();
    let impostor = Gateway::start(office("office-b"), same_cert())
        .await
        .unwrap();
    for gw in [&stranger, &impostor] {
        let failures = listener.handshake_failures();
        let tls = agent_connect(&pki, &cert, gw.local_addr(), GATEWAY_NAME)
            .await
            .unwrap();
        let r = bounded(
            "refused gateway echo",
            echo_roundtrip(tls, payload(2, 4096)),
        )
        .await;
        assert!(
            r.is_err(),
            "a tunnel of an unregistered certificate carried data"
        );
        wait_until("tunnel refused", || {
            listener.handshake_failures() > failures
        })
        .await;
    }
    assert_eq!(seen.lock().unwrap().peers.len(), 1);
    for gw in [good, stranger, impostor] {
        gw.shutdown().await;
    }
    listener.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_console_tunnel_carries_tcp_to_the_configured_target() {
    let pki = Pki::new();
    // The Web Console on the server side: a plain TCP echo.
    let console = tokio::net::TcpListener::bind(local()).await.unwrap();
    let console_addr = console.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = console.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    let mut cfg = GatewayConfig::dmz("gw-dmz", local());
    cfg.web_console_listen = Some(local());
    let (tx, _rx) = mpsc::channel(4);
    let (gw, conn) = dmz_pair(&pki, cfg, tx, |cc| {
        cc.web_console_target = Some(console_addr)
    })
    .await;
    let tcp = TcpStream::connect(gw.web_console_addr().unwrap())
        .await
        .unwrap();
    bounded("web console echo", echo_roundtrip(tcp, payload(9, 1 << 20)))
        .await
        .unwrap();
    assert_eq!(
        conn.stats()
            .web_console_tunnels
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    conn.shutdown().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_devices_are_refused() {
    let pki = Pki::new();
    let mut cfg = GatewayConfig::dmz("gw-dmz", local());
    cfg.mobile_listen = Some(local());
    let (gw, conn, seen) = dmz_echo(&pki, cfg).await;

    // No client certificate on the agent port.
    let tls = mobile_connect(&pki, None, gw.local_addr()).await;
    if let Ok(tls) = tls {
        assert!(
            echo_roundtrip(tls, payload(1, 1000)).await.is_err(),
            "a device without a certificate was relayed"
        );
    }
    // A mobile certificate is not an agent certificate.
    let mobile = pki.mobile("phone-1");
    if let Ok(tls) = mobile_connect(&pki, Some(&mobile), gw.local_addr()).await {
        assert!(
            echo_roundtrip(tls, payload(2, 1000)).await.is_err(),
            "a mobile certificate was accepted on the agent port"
        );
    }
    // An agent certificate is not a mobile certificate.
    let agent = pki.agent("device-1");
    let mobile_port = gw.mobile_addr().unwrap();
    if let Ok(tls) = agent_connect(&pki, &agent, mobile_port, GATEWAY_NAME).await {
        assert!(
            echo_roundtrip(tls, payload(3, 1000)).await.is_err(),
            "an agent certificate was accepted on the mobile port"
        );
    }
    // A certificate from another CA entirely.
    let other = Pki::new();
    let stranger = other.agent("stranger");
    let cfg = outpost_pki::tls::agent_client_config(
        &stranger,
        pki.ca.server_ca(),
        &TlsOptions::default(),
    )
    .unwrap();
    let tcp = TcpStream::connect(gw.local_addr()).await.unwrap();
    if let Ok(tls) = TlsConnector::from(cfg)
        .connect(ServerName::try_from(GATEWAY_NAME).unwrap(), tcp)
        .await
    {
        assert!(
            echo_roundtrip(tls, payload(4, 1000)).await.is_err(),
            "a foreign certificate was accepted"
        );
    }
    wait_until("handshake failures counted", || {
        gw.stats().handshake_failures >= 4
    })
    .await;
    // But the right mobile certificate on the mobile port goes through.
    let tls = mobile_connect(&pki, Some(&mobile), mobile_port)
        .await
        .unwrap();
    bounded("mobile echo", echo_roundtrip(tls, payload(5, 100_000)))
        .await
        .unwrap();
    let seen = seen.lock().unwrap().peers.clone();
    assert_eq!(
        seen.len(),
        1,
        "only the authenticated mobile device reached the server"
    );
    assert_eq!(seen[0].0.channel, ChannelKind::Mobile);
    conn.shutdown().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_mobile_port_only_when_enabled() {
    let pki = Pki::new();
    let mut cfg = GatewayConfig::dmz("gw-dmz", local());
    cfg.mobile_unauthenticated_listen = Some(local());
    let gw = Gateway::start(cfg, pki.gateway()).await.unwrap();
    assert!(gw.mobile_addr().is_none());
    let (tx, rx) = mpsc::channel(8);
    let seen = echo_server(rx);
    let conn = ServerConnector::start(
        connector_config(vec![DmzGatewayEntry::new(
            "gw-dmz",
            gw.local_addr(),
            GATEWAY_NAME,
        )]),
        &pki.server(),
        tx,
    )
    .unwrap();
    wait_until("signal connection", || gw.stats().signal_sessions == 1).await;
    let tls = mobile_connect(&pki, None, gw.mobile_unauthenticated_addr().unwrap())
        .await
        .unwrap();
    bounded(
        "unauthenticated mobile echo",
        echo_roundtrip(tls, payload(6, 10_000)),
    )
    .await
    .unwrap();
    let seen = seen.lock().unwrap().peers.clone();
    assert_eq!(seen[0].0.channel, ChannelKind::MobileUnauthenticated);
    assert_eq!(seen[0].0.cert_sha256, None);
    conn.shutdown().await;
    gw.shutdown().await;
}

async fn manual_data(
    server: &outpost_gateway::TlsMaterial,
    gw: std::net::SocketAddr,
    ticket: Ticket,
    session: u64,
) -> (Message, tokio_rustls::client::TlsStream<TcpStream>) {
    let mut tls = pool::pooled_data(server, gw, ticket, session).await;
    let m = outpost_gateway::io::read_message(&mut tls, 65536)
        .await
        .unwrap();
    (m, tls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_unknown_and_foreign_session_tickets_are_refused_and_counted() {
    let pki = Pki::new();
    let gw = Gateway::start(GatewayConfig::dmz("gw-dmz", local()), pki.gateway())
        .await
        .unwrap();
    let server = pki.server();
    let (mut signal, session) = manual_signal(&server, gw.local_addr(), 60_000).await;
    let (mut other_signal, other_session) = manual_signal(&server, gw.local_addr(), 60_000).await;
    assert_ne!(session, other_session);

    let cert = pki.agent("device-1");
    let device = tokio::spawn({
        let addr = gw.local_addr();
        let tls = agent_connect(&pki, &cert, addr, GATEWAY_NAME)
            .await
            .unwrap();
        async move {
            let (mut r, mut w) = tokio::io::split(tls);
            w.write_all(b"hello server").await.unwrap();
            let mut buf = [0u8; 12];
            r.read_exact(&mut buf).await.unwrap();
            buf
        }
    });
    // The request arrives on one of the two signal connections (round robin).
    let (req, on_session) = tokio::select! {
        m = signal.next() => (m, session),
        m = other_signal.next() => (m, other_session),
    };
    let Some(Ok(Message::ConnectRequest(req))) = req else {
        panic!("expected ConnectRequest")
    };
    let ticket = req.ticket.unwrap();
    assert_eq!(
        req.peer.unwrap().cert_sha256.as_ref(),
        &sha256(&cert.cert_der)[..]
    );
    let wrong = if on_session == session {
        other_session
    } else {
        session
    };

    // Presented on the wrong session: refused, and the ticket stays valid.
    let (m, _) = manual_data(&server, gw.local_addr(), ticket, wrong).await;
    assert!(matches!(m, Message::Refusal(r) if r.code == RefusalCode::BadTicket as i32));
    // Presented by another server certificate (same CA, right session): refused too.
    let (m, _) = manual_data(&pki.server(), gw.local_addr(), ticket, on_session).await;
    assert!(matches!(m, Message::Refusal(r) if r.code == RefusalCode::BadTicket as i32));
    // The right presentation is accepted and spliced.
    let (m, mut link) = manual_data(&server, gw.local_addr(), ticket, on_session).await;
    assert!(matches!(m, Message::DataAttachAck(_)), "{m:?}");
    let mut buf = [0u8; 12];
    link.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello server");
    link.write_all(b"hello device").await.unwrap();
    assert_eq!(&bounded("device", device).await.unwrap(), b"hello device");
    // Replay: refused.
    let (m, _) = manual_data(&server, gw.local_addr(), ticket, on_session).await;
    assert!(matches!(m, Message::Refusal(r) if r.code == RefusalCode::BadTicket as i32));
    // Never issued: refused.
    let (m, _) = manual_data(
        &server,
        gw.local_addr(),
        Ticket::from_u128(12345),
        on_session,
    )
    .await;
    assert!(matches!(m, Message::Refusal(r) if r.code == RefusalCode::BadTicket as i32));

    let t = gw.stats().tickets;
    assert_eq!(
        (t.redeemed, t.replayed, t.unknown, t.wrong_session),
        (1, 1, 1, 2)
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_signal_connection_devices_are_refused_promptly() {
    let pki = Pki::new();
    let gw = Gateway::start(GatewayConfig::dmz("gw-dmz", local()), pki.gateway())
        .await
        .unwrap();
    let cert = pki.agent("device-1");
    let mut tls = agent_connect(&pki, &cert, gw.local_addr(), GATEWAY_NAME)
        .await
        .unwrap();
    // Far below the 10 s ticket lifetime: the refusal does not wait for anything.
    let r = tokio::time::timeout(Duration::from_secs(5), read_refusal(&mut tls))
        .await
        .expect("prompt refusal");
    assert_eq!(r.code, RefusalCode::ServerUnreachable as i32);
    let mut rest = Vec::new();
    assert_eq!(
        tls.read_to_end(&mut rest).await.unwrap_or(0),
        0,
        "closed after the refusal"
    );
    assert_eq!(gw.stats().refused_unreachable, 1);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_and_gateway_restart_recover_by_themselves() {
    let pki = Pki::new();
    let gw = Gateway::start(GatewayConfig::dmz("gw-dmz", local()), pki.gateway())
        .await
        .unwrap();
    let addr = gw.local_addr();
    let entry = vec![DmzGatewayEntry::new("gw-dmz", addr, GATEWAY_NAME)];
    let (tx, rx) = mpsc::channel(16);
    let _seen = echo_server(rx);
    let cert = pki.agent("device-1");
    let start_server = || {
        ServerConnector::start(connector_config(entry.clone()), &pki.server(), tx.clone()).unwrap()
    };
    // One device session through the gateway, once the signal connection is up.
    let echo = |seed: u64, gw: &Gateway| {
        let up = gw.stats().signal_sessions;
        let (pki, cert) = (&pki, &cert);
        async move {
            assert_eq!(up, 1, "signal connection up before the device comes");
            let tls = agent_connect(pki, cert, addr, GATEWAY_NAME).await.unwrap();
            bounded("echo", echo_roundtrip(tls, payload(seed, 100_000)))
                .await
                .unwrap();
        }
    };
    let conn = start_server();
    wait_until("signal connection", || gw.stats().signal_sessions == 1).await;
    echo(1, &gw).await;

    // The server goes away: devices are refused promptly, not left hanging.
    conn.shutdown().await;
    wait_until("signal connection gone", || gw.stats().signal_sessions == 0).await;
    let mut tls = agent_connect(&pki, &cert, addr, GATEWAY_NAME)
        .await
        .unwrap();
    assert_eq!(
        bounded("refusal", read_refusal(&mut tls)).await.code,
        RefusalCode::ServerUnreachable as i32
    );

    // A restarted server re-establishes the signal connection.
    let conn = start_server();
    wait_until("signal connection again", || {
        gw.stats().signal_sessions == 1
    })
    .await;
    echo(2, &gw).await;

    // The gateway restarts on the same address; the connector finds it again by itself.
    gw.shutdown().await;
    wait_until("connector notices", || conn.connected().is_empty()).await;
    let mut cfg = GatewayConfig::dmz("gw-dmz", addr);
    cfg.limits.drain_timeout_ms = 1000;
    let gw = Gateway::start(cfg, pki.gateway()).await.unwrap();
    wait_until("signal connection to new gateway", || {
        gw.stats().signal_sessions == 1
    })
    .await;
    echo(3, &gw).await;
    assert!(
        conn.stats()
            .signal_established
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    );
    conn.shutdown().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_limit_closes_extra_devices_at_once() {
    let pki = Pki::new();
    let mut cfg = GatewayConfig::dmz("gw-dmz", local());
    cfg.limits.max_devices = 1;
    let (gw, conn, _seen) = dmz_echo(&pki, cfg).await;
    let cert = pki.agent("device-1");
    let first = agent_connect(&pki, &cert, gw.local_addr(), GATEWAY_NAME)
        .await
        .unwrap();
    let (mut fr, mut fw) = tokio::io::split(first);
    fw.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    fr.read_exact(&mut one).await.unwrap();
    // The first device holds the only slot; the second is closed once authenticated.
    if let Ok(second) = agent_connect(&pki, &cert, gw.local_addr(), GATEWAY_NAME).await {
        let (mut sr, mut sw) = tokio::io::split(second);
        let _ = sw.write_all(b"y").await;
        let mut b = [0u8; 1];
        let read = bounded("the second device is closed", sr.read(&mut b)).await;
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "second device relayed: {read:?}"
        );
    }
    wait_until("the refusal is counted", || gw.stats().refused_limit == 1).await;
    drop((fr, fw));
    conn.shutdown().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_take_no_device_slot() {
    let pki = Pki::new();
    let mut cfg = GatewayConfig::dmz("gw-dmz", local());
    cfg.limits.max_devices = 2;
    cfg.limits.max_handshakes = 100;
    let (gw, conn, _seen) = dmz_echo(&pki, cfg).await;
    // 60 connections that never send a ClientHello, and 10 that stop inside it.
    let mut hostile = Vec::new();
    for i in 0..70 {
        let mut tcp = TcpStream::connect(gw.local_addr()).await.unwrap();
        if i >= 60 {
            // A TLS record header announcing a ClientHello, and two bytes of it.
            tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
                .await
                .unwrap();
        }
        hostile.push(tcp);
    }
    // A legitimate device is relayed at once, within its usual time.
    let cert = pki.agent("device-1");
    let dev = bounded(
        "the device connects",
        agent_connect(&pki, &cert, gw.local_addr(), GATEWAY_NAME),
    )
    .await
    .expect("a slot was free for the authenticated device");
    bounded(
        "the device is relayed",
        echo_roundtrip(dev, payload(1, 4096)),
    )
    .await
    .unwrap();
    assert_eq!(gw.stats().refused_limit, 0);
    drop(hostile);
    conn.shutdown().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_handshake_pool_makes_room_from_its_oldest() {
    let pki = Pki::new();
    let mut cfg = GatewayConfig::dmz("gw-dmz", local());
    cfg.limits.max_handshakes = 4;
    cfg.limits.max_handshakes_per_source = 4;
    // No warm pool: its connections would take handshake places from the server's address
    // while the test counts them.
    let (tx, rx) = mpsc::channel(64);
    let _seen = echo_server(rx);
    let (gw, conn) = dmz_pair(&pki, cfg, tx, |c| c.pool_size = 0).await;
    // Four hosts fill the pool, two connections each: the first four are evicted in turn.
    let mut hostile = Vec::new();
    for i in 0..8u8 {
        let from = [127, 0, 0, 2 + i % 4];
        hostile.push(connect_from(from, gw.local_addr()).await.unwrap());
    }
    wait_until("the oldest four evicted", || {
        gw.stats().evicted_handshakes == 4
    })
    .await;
    // The evicted ones are closed.
    for tcp in &mut hostile[..4] {
        let mut b = [0u8; 1];
        let read = bounded("an evicted connection is closed", tcp.read(&mut b)).await;
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    // With the pool still full of silent peers, a device's handshake makes room and is
    // relayed; its place is given back once it is authenticated, so it is never evicted.
    let cert = pki.agent("device-1");
    let dev = bounded(
        "the device connects",
        agent_connect(&pki, &cert, gw.local_addr(), GATEWAY_NAME),
    )
    .await
    .unwrap();
    bounded("the device is relayed", echo_roundtrip(dev, payload(2, 64)))
        .await
        .unwrap();
    // The device made its room by evicting a silent peer, not by being refused.
    let s = gw.stats();
    assert!(s.evicted_handshakes > 4, "{s:?}");
    assert_eq!(s.refused_handshakes_per_source, 0, "{s:?}");
    drop(hostile);
    conn.shutdown().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_reset_closes_the_server_side_too() {
    let pki = Pki::new();
    let (tx, mut rx) = mpsc::channel(8);
    let (gw, conn) = dmz_pair(&pki, GatewayConfig::dmz("gw-dmz", local()), tx, |_| {}).await;
    let cert = pki.agent("device-1");
    // Connect over a socket we can reset.
    let tcp = TcpStream::connect(gw.local_addr()).await.unwrap();
    let cfg =
        outpost_pki::tls::agent_client_config(&cert, pki.ca.server_ca(), &TlsOptions::default())
            .unwrap();
    let mut tls = TlsConnector::from(cfg)
        .connect(ServerName::try_from(GATEWAY_NAME).unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(b"ping").await.unwrap();
    tls.flush().await.unwrap();
    let server_side = bounded("device reaches the server", rx.recv())
        .await
        .unwrap();
    let mut stream = server_side.stream;
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    // Reset: SO_LINGER 0 and drop, no TLS close_notify.
    let (tcp, _) = tls.into_inner();
    socket2::SockRef::from(&tcp)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(tcp);
    // The server's side ends (error or end of stream), it is not left open.
    let mut rest = Vec::new();
    let r = bounded("server side closes", stream.read_to_end(&mut rest)).await;
    assert!(
        r.is_err() || rest.is_empty(),
        "server side kept receiving after the reset"
    );
    wait_until("relay counted as ended", || gw.stats().devices_active == 0).await;
    assert_eq!(gw.stats().relay_errors, 1);
    conn.shutdown().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_drains_active_relays_and_accepts_no_more() {
    let pki = Pki::new();
    let (gw, conn, _seen) = dmz_echo(&pki, GatewayConfig::dmz("gw-dmz", local())).await;
    let addr = gw.local_addr();
    let cert = pki.agent("device-1");
    let tls = agent_connect(&pki, &cert, addr, GATEWAY_NAME)
        .await
        .unwrap();
    let (mut r, mut w) = tokio::io::split(tls);
    w.write_all(b"first half ").await.unwrap();
    w.flush().await.unwrap();
    let mut buf = vec![0u8; 11];
    r.read_exact(&mut buf).await.unwrap();
    // Shut down while the relay is active.
    let shutdown = tokio::spawn(gw.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !shutdown.is_finished(),
        "shutdown did not wait for the active relay"
    );
    // New devices are no longer accepted...
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still accepting during drain"
    );
    // ...but the active one finishes its exchange.
    w.write_all(b"second half").await.unwrap();
    w.shutdown().await.unwrap();
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"second half");
    bounded("shutdown after drain", shutdown).await.unwrap();
    conn.shutdown().await;
}

#[test]
fn a_web_console_port_other_hosts_reach_is_warned_about() {
    use outpost_gateway::web_console_exposure;
    for quiet in ["127.0.0.1:13443", "127.0.0.9:13443", "[::1]:13443"] {
        assert_eq!(
            web_console_exposure(quiet.parse().unwrap()),
            None,
            "{quiet}"
        );
    }
    for exposed in ["0.0.0.0:13443", "192.0.2.10:13443", "[::]:13443"] {
        let w = web_console_exposure(exposed.parse().unwrap()).expect(exposed);
        assert!(w.contains("reachable from other hosts"), "{w}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_cannot_take_the_whole_handshake_pool() {
    let pki = Pki::new();
    let mut cfg = GatewayConfig::dmz("gw-dmz", local());
    cfg.limits.max_handshakes = 32;
    cfg.limits.max_handshakes_per_source = 8;
    let (gw, conn, _seen) = dmz_echo(&pki, cfg).await;
    // One hostile host (127.0.0.2) opens more silent connections than the whole pool.
    let mut hostile = Vec::new();
    for _ in 0..40 {
        hostile.push(connect_from([127, 0, 0, 2], gw.local_addr()).await.unwrap());
    }
    wait_until("the hostile host's extra connections are refused", || {
        gw.stats().refused_handshakes_per_source == 32
    })
    .await;
    assert_eq!(
        gw.stats().evicted_handshakes,
        0,
        "the pool itself never filled"
    );
    // A device on another host connects and is relayed within its usual time.
    let cert = pki.agent("device-1");
    let dev = bounded(
        "the device connects",
        agent_connect(&pki, &cert, gw.local_addr(), GATEWAY_NAME),
    )
    .await
    .expect("the device's handshake was admitted");
    bounded(
        "the device is relayed",
        echo_roundtrip(dev, payload(3, 4096)),
    )
    .await
    .unwrap();
    drop(hostile);
    conn.shutdown().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_is_closed_at_the_shorter_deadline() {
    let pki = Pki::new();
    let mut cfg = GatewayConfig::dmz("gw-dmz", local());
    // Authenticated traffic keeps a long deadline; a peer not known yet gets 300 ms.
    cfg.limits.handshake_timeout_ms = 120_000;
    cfg.limits.unauthenticated_timeout_ms = 300;
    let (gw, conn, _seen) = dmz_echo(&pki, cfg).await;
    let mut tcp = TcpStream::connect(gw.local_addr()).await.unwrap();
    // Two bytes of a ClientHello, then nothing.
    tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
        .await
        .unwrap();
    let mut b = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(30), tcp.read(&mut b)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "the stalled handshake was kept open: {read:?}"
    );
    wait_until("the failure is counted", || {
        gw.stats().handshake_failures >= 1
    })
    .await;
    conn.shutdown().await;
    gw.shutdown().await;
}

/// A Web Console target that echoes, and counts the connections it accepted.
async fn counting_echo_target() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicU64>) {
    let console = tokio::net::TcpListener::bind(local()).await.unwrap();
    let addr = console.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = console.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_web_console_clients_open_nothing_on_the_server_side() {
    let pki = Pki::new();
    let (target, accepted) = counting_echo_target().await;
    let mut cfg = GatewayConfig::dmz("gw-dmz", local());
    cfg.web_console_listen = Some(local());
    cfg.limits.unauthenticated_timeout_ms = 300;
    let (tx, _rx) = mpsc::channel(4);
    let (gw, conn) = dmz_pair(&pki, cfg, tx, |cc| cc.web_console_target = Some(target)).await;
    let console = gw.web_console_addr().unwrap();
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(console).await.unwrap());
    }
    wait_until("every silent client is closed", || {
        gw.stats().consoles_silent == 20
    })
    .await;
    let tunnels = || {
        conn.stats()
            .web_console_tunnels
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(tunnels(), 0, "tunnels were opened for silent clients");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::Relaxed), 0);
    // A client that speaks is tunnelled, its first bytes included.
    let tcp = TcpStream::connect(console).await.unwrap();
    bounded("web console echo", echo_roundtrip(tcp, payload(4, 100_000)))
        .await
        .unwrap();
    assert_eq!(tunnels(), 1);
    drop(silent);
    conn.shutdown().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_console_tunnels_are_bounded_per_source() {
    let pki = Pki::new();
    let (target, _accepted) = counting_echo_target().await;
    let mut cfg = GatewayConfig::dmz("gw-dmz", local());
    cfg.web_console_listen = Some(local());
    cfg.limits.max_console_tunnels_per_source = 2;
    let (tx, _rx) = mpsc::channel(4);
    let (gw, conn) = dmz_pair(&pki, cfg, tx, |cc| cc.web_console_target = Some(target)).await;
    let console = gw.web_console_addr().unwrap();
    // Two tunnels from 127.0.0.2 are opened and held (each echoes a byte back).
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut tcp = connect_from([127, 0, 0, 2], console).await.unwrap();
        tcp.write_all(b"a").await.unwrap();
        let mut b = [0u8; 1];
        bounded("a tunnel echoes", tcp.read_exact(&mut b))
            .await
            .unwrap();
        held.push(tcp);
    }
    // A third from the same host is closed and counted.
    let mut third = connect_from([127, 0, 0, 2], console).await.unwrap();
    third.write_all(b"b").await.unwrap();
    let mut b = [0u8; 1];
    let read = bounded("the third is closed", third.read(&mut b)).await;
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "third tunnel opened: {read:?}"
    );
    assert_eq!(gw.stats().refused_consoles, 1);
    // Another host still gets its tunnel.
    let other = connect_from([127, 0, 0, 3], console).await.unwrap();
    bounded(
        "another host's tunnel",
        echo_roundtrip(other, payload(5, 1000)),
    )
    .await
    .unwrap();
    drop(held);
    conn.shutdown().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_from_files_takes_in_the_ca_crl_and_its_changes() {
    use outpost_pki::store;
    let mut pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let now = std::time::SystemTime::now();
    // The CA directory as `pki init` leaves it (certificates, keys, empty CRLs), and the
    // gateway's certificate beside it.
    store::save_server_ca(&mut pki.ca, dir.path(), now).unwrap();
    let identity = pki.gateway().identity;
    store::write_public(&dir.path().join("gw.chain.pem"), &identity.chain_pem()).unwrap();
    store::write_private_key(&dir.path().join("gw.key"), &identity.key_pem()).unwrap();
    // No `crls` in the file: the CA's own list beside `server_ca` is honoured.
    let files: TlsFiles =
        toml::from_str("cert = \"gw.chain.pem\"\nkey = \"gw.key\"\nserver_ca = \"ca.crt\"\n")
            .unwrap();
    let material = files.load(dir.path()).unwrap();
    assert_eq!(material.crls.len(), 1);
    assert_eq!(material.crl_files, vec![dir.path().join("ca.crl")]);

    let (tx, rx) = mpsc::channel(16);
    let _seen = echo_server(rx);
    let cfg = GatewayConfig::dmz("gw-dmz", local());
    let (gw, conn) = dmz_pair_with(&pki, cfg, material, tx, |_| {}).await;
    let cert = pki.agent("device-1");
    let dev = agent_connect(&pki, &cert, gw.local_addr(), GATEWAY_NAME)
        .await
        .unwrap();
    bounded(
        "relayed before revocation",
        echo_roundtrip(dev, payload(6, 1000)),
    )
    .await
    .unwrap();

    // `pki revoke`: the CRL file is rewritten; the running gateway takes it in.
    let (kind, _, fresh) = pki.ca.revoke(&cert.cert_der, now).unwrap();
    assert!(fresh);
    store::save_crl(&mut pki.ca, kind, dir.path(), now).unwrap();
    wait_until("the changed CRL is taken in", || {
        gw.stats().crl_reloads == 2
    })
    .await;
    if let Ok(tls) = agent_connect(&pki, &cert, gw.local_addr(), GATEWAY_NAME).await {
        assert!(
            echo_roundtrip(tls, payload(7, 1000)).await.is_err(),
            "a revoked device was relayed"
        );
    }
    // Another device still is.
    let other = agent_connect(&pki, &pki.agent("device-2"), gw.local_addr(), GATEWAY_NAME)
        .await
        .unwrap();
    bounded("another device", echo_roundtrip(other, payload(8, 1000)))
        .await
        .unwrap();
    conn.shutdown().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_port_bounds_handshakes_per_source() {
    let pki = Pki::new();
    let (tx, rx) = mpsc::channel(16);
    let _seen = echo_server(rx);
    let limits = ListenerLimits::default().with_handshakes(16, 4);
    let listener = DeviceListener::start(local(), &pki.server(), &limits, TunnelPolicy::Refuse, tx)
        .await
        .unwrap();
    let mut hostile = Vec::new();
    for _ in 0..10 {
        hostile.push(
            connect_from([127, 0, 0, 2], listener.local_addr())
                .await
                .unwrap(),
        );
    }
    wait_until("the hostile host's extra connections are refused", || {
        listener.refused_handshakes() == 6
    })
    .await;
    assert_eq!(listener.handshakes_in_progress(), 4);
    let cert = pki.agent("device-1");
    let dev = bounded(
        "a device on another host connects",
        agent_connect(&pki, &cert, listener.local_addr(), SERVER_NAME),
    )
    .await
    .unwrap();
    bounded("and is served", echo_roundtrip(dev, payload(9, 4096)))
        .await
        .unwrap();
    drop(hostile);
    listener.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_of_the_port_without_client_authentication_stay_bounded_per_source() {
    let pki = Pki::new();
    let mut cfg = GatewayConfig::dmz("gw-dmz", local());
    cfg.mobile_unauthenticated_listen = Some(local());
    cfg.limits.max_handshakes_per_source = 2;
    // No warm pool: its handshakes from the server's address would be refused here too.
    let (tx, rx) = mpsc::channel(64);
    let _seen = echo_server(rx);
    let (gw, conn) = dmz_pair(&pki, cfg, tx, |c| c.pool_size = 0).await;
    let port = gw.mobile_unauthenticated_addr().unwrap();
    // Nobody is authenticated on this port: two relayed peers from one host hold its share.
    let mut held = Vec::new();
    for i in 0..2 {
        let tls = mobile_connect_from(&pki, None, [127, 0, 0, 2], port)
            .await
            .unwrap();
        let (mut r, mut w) = tokio::io::split(tls);
        w.write_all(&[i]).await.unwrap();
        let mut b = [0u8; 1];
        bounded("relayed", r.read_exact(&mut b)).await.unwrap();
        held.push((r, w));
    }
    // A third from that host is closed at accept; another host is still served.
    let third = mobile_connect_from(&pki, None, [127, 0, 0, 2], port).await;
    assert!(
        third.is_err(),
        "a third peer from the same host was admitted"
    );
    wait_until("the refusal is counted", || {
        gw.stats().refused_handshakes_per_source == 1
    })
    .await;
    let other = mobile_connect_from(&pki, None, [127, 0, 0, 3], port)
        .await
        .unwrap();
    bounded("another host", echo_roundtrip(other, payload(10, 100)))
        .await
        .unwrap();
    drop(held);
    conn.shutdown().await;
    gw.shutdown().await;
}
