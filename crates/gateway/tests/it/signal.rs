//! The signal session's rules on a virtual clock: the handshake, keepalives, the silence
//! deadline (moved only by what arrives), connect requests and refusals, shutdown.

use std::time::{Duration, Instant};

use outpost_gateway::signal::{End, Event, SignalSession};
use outpost_wire::Message;
use outpost_wire::messages::{
    ConnectRefusal, ConnectRequest, Keepalive, PoolTickets, RefusalCode, Ticket,
};
use proptest::prelude::*;

const KA: Duration = Duration::from_millis(100);
const HANDSHAKE: Duration = Duration::from_secs(5);

/// Carries everything each side has to say to the other at `now`, until both are quiet.
fn exchange(server: &mut SignalSession, gateway: &mut SignalSession, now: Instant) {
    loop {
        let mut moved = false;
        while let Some(m) = server.poll_transmit() {
            gateway.handle(now, m);
            moved = true;
        }
        while let Some(m) = gateway.poll_transmit() {
            server.handle(now, m);
            moved = true;
        }
        if !moved {
            return;
        }
    }
}

fn up_pair(t0: Instant, floor: Duration) -> (SignalSession, SignalSession) {
    let mut server = SignalSession::server("server-1", KA, 0, t0);
    let mut gateway = SignalSession::gateway("gw-1", 42, HANDSHAKE, floor, t0);
    exchange(&mut server, &mut gateway, t0);
    assert_eq!(
        server.poll_event(),
        Some(Event::Up {
            session_id: 42,
            peer_id: "gw-1".into()
        })
    );
    assert_eq!(
        gateway.poll_event(),
        Some(Event::Up {
            session_id: 42,
            peer_id: "server-1".into()
        })
    );
    (server, gateway)
}

fn ticket() -> Option<Ticket> {
    Some(Ticket::from_u128(7))
}

#[test]
fn keepalives_keep_both_sides_up_and_silence_ends_them() {
    let t0 = Instant::now();
    let (mut server, mut gateway) = up_pair(t0, Duration::ZERO);
    assert_eq!(
        gateway.dead_after(),
        KA * 3,
        "three of the announced intervals"
    );
    // Ten intervals of keepalives, each answered: both stay up.
    let mut now = t0;
    for _ in 0..10 {
        now = server.poll_timeout().unwrap();
        server.handle_timeout(now);
        gateway.handle_timeout(now);
        let ka = server.poll_transmit().expect("a keepalive is due");
        assert!(matches!(
            ka,
            Message::Keepalive(Keepalive { reply: false, .. })
        ));
        gateway.handle(now, ka);
        let reply = gateway.poll_transmit().unwrap();
        assert!(matches!(
            reply,
            Message::Keepalive(Keepalive { reply: true, .. })
        ));
        server.handle(now, reply);
    }
    assert!(server.is_up() && gateway.is_up());
    assert!(now >= t0 + KA * 10);

    // The gateway stops answering: the server's own keepalives do not keep it alive.
    let quiet_from = now;
    while server.end().is_none() {
        let t = server.poll_timeout().unwrap();
        assert!(
            t <= quiet_from + KA * 3,
            "the deadline never moves past the silence"
        );
        server.handle_timeout(t);
        while server.poll_transmit().is_some() {}
    }
    assert_eq!(server.end(), Some(&End::Silent { after: KA * 3 }));
    assert_eq!(server.poll_timeout(), None);

    // The gateway, hearing nothing either, ends three intervals after the last keepalive.
    gateway.handle_timeout(quiet_from + KA * 3 - Duration::from_millis(1));
    assert!(gateway.is_up());
    gateway.handle_timeout(quiet_from + KA * 3);
    assert_eq!(gateway.end(), Some(&End::Silent { after: KA * 3 }));
}

#[test]
fn the_gateway_keeps_its_floor_and_waits_its_handshake_time() {
    let t0 = Instant::now();
    let (_, gateway) = up_pair(t0, Duration::from_secs(2));
    assert_eq!(
        gateway.dead_after(),
        Duration::from_secs(2),
        "never below the floor"
    );

    let mut silent = SignalSession::gateway("gw-1", 1, HANDSHAKE, Duration::ZERO, t0);
    assert_eq!(silent.poll_timeout(), Some(t0 + HANDSHAKE));
    silent.handle_timeout(t0 + HANDSHAKE);
    assert_eq!(
        silent.end(),
        Some(&End::NoHandshake {
            waiting_for: "SignalHello",
            after: HANDSHAKE
        })
    );
    let mut server = SignalSession::server("server-1", KA, 0, t0);
    let _hello = server.poll_transmit();
    server.handle_timeout(t0 + KA * 3);
    assert!(matches!(
        server.end(),
        Some(End::NoHandshake {
            waiting_for: "SignalHelloAck",
            ..
        })
    ));
}

#[test]
fn connect_requests_refusals_and_shutdown() {
    let t0 = Instant::now();
    let (mut server, mut gateway) = up_pair(t0, Duration::ZERO);
    gateway.request_connection(ConnectRequest {
        ticket: ticket(),
        ..Default::default()
    });
    exchange(&mut server, &mut gateway, t0);
    assert!(matches!(server.poll_event(), Some(Event::ConnectRequest(r)) if r.ticket == ticket()));
    server.refuse_connection(ConnectRefusal {
        ticket: ticket(),
        code: RefusalCode::Overloaded as i32,
        reason: "busy".into(),
    });
    exchange(&mut server, &mut gateway, t0);
    assert!(matches!(gateway.poll_event(), Some(Event::ConnectRefusal(r)) if r.reason == "busy"));

    // A message with no place here ends the session, naming it.
    let mut other = SignalSession::server("server-1", KA, 0, t0);
    other.handle(t0, Message::from(ConnectRefusal::default()));
    assert_eq!(
        other.end(),
        Some(&End::Unexpected {
            message: "ConnectRefusal"
        })
    );

    // The gateway shuts down: it says so, and the server learns why.
    gateway.shut_down();
    assert_eq!(gateway.end(), Some(&End::ShutDown));
    exchange(&mut server, &mut gateway, t0);
    assert!(matches!(
        server.end(),
        Some(End::Refused {
            code: RefusalCode::ShuttingDown,
            ..
        })
    ));
    gateway.handle_closed("gone");
    assert_eq!(
        gateway.end(),
        Some(&End::ShutDown),
        "the first reason stays"
    );
}

proptest! {
    /// Whatever the spacing of the server's timers and the gateway's answers, both stay up
    /// while every gap between two answers is shorter than the silence allowed, and the
    /// server ends exactly when one is not.
    #[test]
    fn the_silence_deadline_is_exact(gaps_ms in proptest::collection::vec(1u64..400, 1..40)) {
        let t0 = Instant::now();
        let (mut server, mut gateway) = up_pair(t0, Duration::ZERO);
        let mut heard = t0;
        let mut now = t0;
        for gap in gaps_ms {
            let next = heard + Duration::from_millis(gap);
            // Every timer of the server up to the gateway's next word.
            while let Some(t) = server.poll_timeout() {
                if t > next {
                    break;
                }
                now = t;
                server.handle_timeout(now);
                while server.poll_transmit().is_some() {}
                if server.end().is_some() {
                    break;
                }
            }
            if server.end().is_some() {
                prop_assert!(next - heard >= KA * 3, "ended after a gap of {:?}", next - heard);
                prop_assert_eq!(now, heard + KA * 3);
                return Ok(());
            }
            now = next;
            server.handle(now, Message::from(Keepalive { seq: 0, reply: true }));
            heard = now;
        }
        prop_assert!(server.is_up());
        let _ = &mut gateway;
    }
}

#[test]
fn the_pool_asked_for_in_the_hello_is_granted_by_the_gateway_only_once_up() {
    let t0 = Instant::now();
    let mut server = SignalSession::server("server-1", KA, 8, t0);
    let mut gateway = SignalSession::gateway("gw-1", 42, HANDSHAKE, Duration::ZERO, t0);
    assert_eq!(gateway.pool_size(), 0, "nothing asked before the hello");
    let grant = || PoolTickets {
        tickets: vec![Ticket::from_u128(1), Ticket::from_u128(2)],
        expires_in_ms: 10_000,
    };
    // Before the hello nothing can be granted: the session has no server yet.
    gateway.grant_pool(grant());
    assert!(gateway.poll_transmit().is_none());
    exchange(&mut server, &mut gateway, t0);
    assert_eq!(
        gateway.pool_size(),
        8,
        "the hello carries the pool asked for"
    );
    while server.poll_event().is_some() {}
    gateway.grant_pool(grant());
    exchange(&mut server, &mut gateway, t0);
    assert_eq!(server.poll_event(), Some(Event::PoolTickets(grant())));
    // The server side grants nothing (tickets are the gateway's to issue).
    server.grant_pool(grant());
    assert!(server.poll_transmit().is_none());
    // A gateway's tickets are refused by the gateway side: only the server receives them.
    gateway.handle(t0, Message::from(grant()));
    assert!(matches!(
        gateway.end(),
        Some(End::Unexpected {
            message: "PoolTickets"
        })
    ));
}
