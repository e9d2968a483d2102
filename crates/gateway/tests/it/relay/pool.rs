//! The warm pool of data connections: a dead pooled connection is never handed to a device,
//! the pool refills after a burst and stays bounded under it, and pool tickets are as
//! single-use as every other.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use outpost_wire::MessageCodec;
use tokio_util::codec::Framed;

use super::*;

/// A data connection presenting `ticket`, as the server opens one for its pool: nothing is
/// answered until a device takes it.
pub(super) async fn pooled_data(
    server: &outpost_gateway::TlsMaterial,
    gw: std::net::SocketAddr,
    ticket: Ticket,
    session: u64,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let cfg =
        gateway_data_client_config(&server.identity, &server.server_ca, &TlsOptions::default())
            .unwrap();
    let tcp = TcpStream::connect(gw).await.unwrap();
    let mut tls = TlsConnector::from(cfg)
        .connect(ServerName::try_from(GATEWAY_NAME).unwrap(), tcp)
        .await
        .unwrap();
    outpost_gateway::io::write_message(
        &mut tls,
        DataAttach {
            ticket: Some(ticket),
            session_id: session,
        },
    )
    .await
    .unwrap();
    tls
}

/// The next message on the signal connection other than a keepalive.
async fn next_signal(signal: &mut Framed<Tls, MessageCodec>) -> Message {
    loop {
        match bounded("a signal message", signal.next()).await {
            Some(Ok(Message::Keepalive(_))) => {}
            Some(Ok(m)) => return m,
            other => panic!("signal connection: {other:?}"),
        }
    }
}

/// The next pool tickets the gateway grants.
async fn pool_tickets(signal: &mut Framed<Tls, MessageCodec>) -> Vec<Ticket> {
    match next_signal(signal).await {
        Message::PoolTickets(p) => p.tickets,
        other => panic!("expected PoolTickets, got {other:?}"),
    }
}

/// Serves one device the gateway asks for on `signal` (skipping pool grants): opens the data
/// connection for its ticket and echoes through it.
async fn serve_connect_request(
    server: &outpost_gateway::TlsMaterial,
    gw: std::net::SocketAddr,
    signal: &mut Framed<Tls, MessageCodec>,
    session: u64,
) {
    let ticket = loop {
        match next_signal(signal).await {
            Message::ConnectRequest(r) => break r.ticket.unwrap(),
            Message::PoolTickets(_) => {}
            other => panic!("expected ConnectRequest, got {other:?}"),
        }
    };
    let mut tls = pooled_data(server, gw, ticket, session).await;
    let ack = outpost_gateway::io::read_message(&mut tls, 65536)
        .await
        .unwrap();
    assert!(matches!(ack, Message::DataAttachAck(_)), "{ack:?}");
    tokio::spawn(async move {
        let (mut r, mut w) = tokio::io::split(tls);
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_that_died_while_idle_is_never_handed_to_a_device() {
    let pki = Pki::new();
    let mut cfg = GatewayConfig::dmz("gw-dmz", local());
    cfg.limits.pool_claim_timeout_ms = 300;
    let gw = Gateway::start(cfg, pki.gateway()).await.unwrap();
    let server = pki.server();
    let addr = gw.local_addr();
    let (mut signal, session) = manual_signal_with_pool(&server, addr, 60_000, 1).await;
    let cert = pki.agent("device-1");

    // 1. Closed while idle: the gateway sees it go and never offers it.
    let tickets = pool_tickets(&mut signal).await;
    assert_eq!(tickets.len(), 1, "the pool asked for is one");
    let closed = pooled_data(&server, addr, tickets[0], session).await;
    wait_until("parked", || gw.stats().pool_idle == 1).await;
    drop(closed);
    wait_until("its loss noticed", || gw.stats().pool_lost == 1).await;
    assert_eq!(gw.stats().pool_idle, 0);
    // A replacement is asked for at once.
    let tickets = pool_tickets(&mut signal).await;
    assert_eq!(tickets.len(), 1);

    // 2. Dead without a sign (the server side holds it but will never answer): the device's
    // TunnelOpen goes unanswered, the connection is discarded, and the device is served by a
    // data connection opened for it.
    let mut silent = pooled_data(&server, addr, tickets[0], session).await;
    wait_until("parked", || gw.stats().pool_idle == 1).await;
    let device = async {
        let tls = agent_connect(&pki, &cert, addr, GATEWAY_NAME)
            .await
            .unwrap();
        echo_roundtrip(tls, payload(3, 4096)).await
    };
    let ((), served) = bounded(
        "the device is served",
        futures_util::future::join(
            serve_connect_request(&server, addr, &mut signal, session),
            device,
        ),
    )
    .await;
    served.unwrap();
    let s = gw.stats();
    assert_eq!((s.pool_discarded, s.pool_claimed), (1, 0), "{s:?}");
    // The silent connection saw the TunnelOpen and then its end: none of the device's bytes.
    let open = outpost_gateway::io::read_message(&mut silent, 65536)
        .await
        .unwrap();
    assert!(matches!(open, Message::TunnelOpen(_)), "{open:?}");
    let mut rest = Vec::new();
    let _ = bounded(
        "the discarded connection closes",
        silent.read_to_end(&mut rest),
    )
    .await;
    assert!(rest.is_empty(), "{} device bytes reached it", rest.len());
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_pool_ticket_is_refused() {
    let pki = Pki::new();
    let gw = Gateway::start(GatewayConfig::dmz("gw-dmz", local()), pki.gateway())
        .await
        .unwrap();
    let server = pki.server();
    let addr = gw.local_addr();
    let (mut signal, session) = manual_signal_with_pool(&server, addr, 60_000, 2).await;
    let (_other, other_session) = manual_signal(&server, addr, 60_000).await;
    let tickets = pool_tickets(&mut signal).await;
    assert_eq!(tickets.len(), 2);
    // Another session cannot use this session's pool ticket.
    let mut foreign = pooled_data(&server, addr, tickets[1], other_session).await;
    let refused = outpost_gateway::io::read_message(&mut foreign, 65536)
        .await
        .unwrap();
    assert!(matches!(refused, Message::Refusal(_)), "{refused:?}");
    let _parked = pooled_data(&server, addr, tickets[0], session).await;
    wait_until("parked", || gw.stats().pool_idle == 1).await;
    let mut replay = pooled_data(&server, addr, tickets[0], session).await;
    let refused = outpost_gateway::io::read_message(&mut replay, 65536)
        .await
        .unwrap();
    let Message::Refusal(r) = refused else {
        panic!("a replayed pool ticket was accepted: {refused:?}")
    };
    assert_eq!(r.code, RefusalCode::BadTicket as i32);
    let s = gw.stats();
    assert_eq!(
        (s.tickets.replayed, s.tickets.wrong_session),
        (1, 1),
        "{s:?}"
    );
    assert_eq!(s.pool_idle, 1, "the replay parked nothing");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_stays_bounded_under_a_burst_of_a_thousand_and_refills_after_it() {
    const CLIENTS: usize = 1_000;
    const POOL: usize = 4;
    let pki = Pki::new();
    let (target, accepted) = counting_echo_target().await;
    let mut cfg = GatewayConfig::dmz("gw-dmz", local());
    cfg.web_console_listen = Some(local());
    cfg.limits.max_console_tunnels = 2 * CLIENTS;
    cfg.limits.max_console_tunnels_per_source = 2 * CLIENTS;
    cfg.limits.max_handshakes = 2 * CLIENTS;
    cfg.limits.max_handshakes_per_source = 2 * CLIENTS;
    cfg.limits.max_pending = 2 * CLIENTS;
    let (tx, _rx) = mpsc::channel(64);
    let (gw, conn) = dmz_pair(&pki, cfg, tx, |c| {
        c.web_console_target = Some(target);
        c.pool_size = POOL;
        c.max_data_in_flight = 2 * CLIENTS;
    })
    .await;
    wait_until("the pool is full", || gw.stats().pool_idle == POOL).await;

    // Watch the server side's pool while the burst runs.
    let stats = conn.stats_handle();
    let most = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let (most, done) = (most.clone(), done.clone());
        async move {
            while !done.load(Ordering::Relaxed) {
                most.fetch_max(stats.pool_open.load(Ordering::Relaxed), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    let console = gw.web_console_addr().unwrap();
    let mut clients = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        clients.push(tokio::spawn(async move {
            let from = [127, 0, 0, 2 + (i % 8) as u8];
            let mut tcp = connect_from(from, console).await?;
            tcp.write_all(&[i as u8]).await?;
            let mut b = [0u8; 1];
            tcp.read_exact(&mut b).await?;
            assert_eq!(b[0], i as u8);
            Ok::<_, std::io::Error>(())
        }));
    }
    let mut served = 0;
    for c in clients {
        if bounded("a console client", c).await.unwrap().is_ok() {
            served += 1;
        }
    }
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    assert_eq!(served, CLIENTS, "every client of the burst was served");
    assert_eq!(accepted.load(Ordering::Relaxed), CLIENTS as u64);
    let s = gw.stats();
    assert!(
        s.pool_high_water <= POOL,
        "the gateway's pool grew past {POOL}: {s:?}"
    );
    assert!(s.pool_claimed >= POOL as u64, "{s:?}");
    assert_eq!(s.pool_discarded, 0, "{s:?}");
    assert!(
        most.load(Ordering::Relaxed) <= POOL as u64,
        "the server held {} pooled connections",
        most.load(Ordering::Relaxed)
    );
    // After the burst the pool is full again, and no larger.
    wait_until("the pool refilled", || gw.stats().pool_idle == POOL).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(gw.stats().pool_idle, POOL);
    assert!(conn.stats().pool_open.load(Ordering::Relaxed) <= POOL as u64);
    conn.shutdown().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_connections_reuse_the_pool_and_a_long_one_is_replaced_after_its_grace() {
    let pki = Pki::new();
    let mut cfg = GatewayConfig::dmz("gw-dmz", local());
    cfg.limits.pool_reuse_grace_ms = 100;
    let (tx, rx) = mpsc::channel(64);
    let seen = echo_server(rx);
    let (gw, conn) = dmz_pair(&pki, cfg, tx, |c| c.pool_size = 1).await;
    wait_until("the pool is full", || gw.stats().pool_idle == 1).await;
    let cert = pki.agent("device-1");
    // Twenty devices one after another: each ends its stream cleanly, and the one pooled
    // connection carries them all; no other data connection is opened.
    for i in 0..20u64 {
        let tls = agent_connect(&pki, &cert, gw.local_addr(), GATEWAY_NAME)
            .await
            .unwrap();
        bounded("a short device", echo_roundtrip(tls, payload(i, 10_000)))
            .await
            .unwrap();
        wait_until("the connection is back", || gw.stats().pool_idle == 1).await;
    }
    let s = gw.stats();
    assert_eq!((s.pool_claimed, s.pool_reused), (20, 20), "{s:?}");
    assert_eq!(s.tickets.redeemed, 1, "one data connection in all: {s:?}");
    let opened = conn.stats().pool_opened.load(Ordering::Relaxed);
    assert_eq!(opened, 1);
    assert_eq!(seen.lock().unwrap().peers.len(), 20);

    // A device that goes away without closing its TLS session (no close_notify, as many
    // do): its connection still comes back, once the server side has ended its direction.
    let mut rude = agent_connect(&pki, &cert, gw.local_addr(), GATEWAY_NAME)
        .await
        .unwrap();
    rude.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    bounded("echoed", rude.read_exact(&mut b)).await.unwrap();
    drop(rude);
    wait_until("given back after all", || gw.stats().pool_reused == 21).await;
    assert_eq!(gw.stats().pool_idle, 1);
    assert_eq!(conn.stats().pool_opened.load(Ordering::Relaxed), 1);

    // A device that stays: after the grace its connection is replaced, so the next device
    // still finds one idle.
    let held = agent_connect(&pki, &cert, gw.local_addr(), GATEWAY_NAME)
        .await
        .unwrap();
    let (mut r, mut w) = tokio::io::split(held);
    w.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    bounded("the long device is relayed", r.read_exact(&mut b))
        .await
        .unwrap();
    wait_until("a replacement", || gw.stats().pool_idle == 1).await;
    assert_eq!(conn.stats().pool_opened.load(Ordering::Relaxed), 2);
    let s = gw.stats();
    assert!(s.pool_high_water <= 1, "{s:?}");
    drop((r, w));
    conn.shutdown().await;
    gw.shutdown().await;
}
