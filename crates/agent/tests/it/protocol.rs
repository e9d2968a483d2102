//! The sans-IO core on a virtual clock: no sockets, no sleeps.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use outpost_agent::protocol::{
    Action, AgentCore, CoreConfig, Input, LocalStatus, NOTICES_KEPT, Notice, Phase,
};
use outpost_agent::{AgentConfig, Endpoint};
use outpost_wire::Message;
use outpost_wire::messages::*;

fn config(endpoints: usize) -> AgentConfig {
    let mut c = AgentConfig::new("laptop-1", "/unused");
    c.endpoints = (0..endpoints)
        .map(|i| {
            Endpoint::new(
                format!("127.0.0.1:{}", 13000 + i).parse().unwrap(),
                format!("ep{i}.test"),
            )
        })
        .collect();
    c.backoff.seed = Some(42);
    c.event_queue = 3;
    c.event_batch = 2;
    c
}

fn drain(core: &mut AgentCore) -> Vec<Action> {
    std::iter::from_fn(|| core.poll_action()).collect()
}

fn notices(core: &mut AgentCore) -> Vec<Notice> {
    std::iter::from_fn(|| core.poll_notice()).collect()
}

/// Feeds a HelloAck choosing `version` at `t` and returns what the core does.
fn hello_ack(core: &mut AgentCore, version: u32, t: Instant) -> Vec<Action> {
    core.handle(
        Input::Received(
            HelloAck {
                version,
                ..Default::default()
            }
            .into(),
        ),
        t,
    );
    drain(core)
}

fn sent(actions: &[Action]) -> Vec<&Message> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(m) => Some(m),
            _ => None,
        })
        .collect()
}

/// A core connected and past its first sync at `t0`.
fn ready(c: &AgentConfig, held: BTreeMap<String, u64>, t0: Instant) -> AgentCore {
    let mut core = AgentCore::new(CoreConfig::from_agent(c, 0), held, t0);
    core.start(t0);
    drain(&mut core);
    core.handle(Input::Connected, t0);
    drain(&mut core);
    let a = hello_ack(&mut core, 1, t0);
    assert!(matches!(sent(&a)[..], [Message::SyncRequest(_)]), "{a:?}");
    core.handle(
        Input::Received(
            SyncResponse {
                next_sync_secs: 600,
                ..Default::default()
            }
            .into(),
        ),
        t0,
    );
    drain(&mut core);
    core
}

#[test]
fn endpoints_in_order_then_backoff_growing_to_the_maximum() {
    let mut c = config(2);
    c.backoff.initial_ms = 200;
    c.backoff.max_ms = 2_000;
    let t0 = Instant::now();
    let mut core = AgentCore::new(CoreConfig::from_agent(&c, 0), BTreeMap::new(), t0);
    core.start(t0);
    let mut now = t0;
    let mut delays = Vec::new();
    for _ in 0..8 {
        let a = drain(&mut core);
        assert!(
            matches!(&a[..], [Action::Connect(e)] if e.name == "ep0.test"),
            "{a:?}"
        );
        core.handle(Input::ConnectFailed("refused".into()), now);
        let a = drain(&mut core);
        assert!(
            matches!(&a[..], [Action::Connect(e)] if e.name == "ep1.test"),
            "{a:?}"
        );
        core.handle(Input::ConnectFailed("refused".into()), now);
        assert!(drain(&mut core).is_empty());
        assert_eq!(core.status().phase, Phase::Waiting);
        let retry = core.poll_timeout().expect("a retry is scheduled");
        delays.push(retry - now);
        // Nothing happens before the delay.
        core.handle_timeout(retry - Duration::from_millis(1));
        assert!(drain(&mut core).is_empty());
        now = retry;
        core.handle_timeout(now);
    }
    assert!(delays[0] >= Duration::from_millis(100) && delays[0] <= Duration::from_millis(200));
    assert!(delays[1] >= Duration::from_millis(200) && delays[1] <= Duration::from_millis(400));
    for d in &delays[4..] {
        assert!(
            *d >= Duration::from_millis(1000) && *d <= Duration::from_millis(2000),
            "{d:?}"
        );
    }
    assert!(core.status().last_error.unwrap().contains("ep1.test"));
}

#[test]
fn the_last_error_is_cleared_once_connected_again() {
    let c = config(1);
    let t0 = Instant::now();
    let mut core = AgentCore::new(CoreConfig::from_agent(&c, 0), BTreeMap::new(), t0);
    core.start(t0);
    drain(&mut core);
    core.handle(Input::ConnectFailed("Connection refused".into()), t0);
    drain(&mut core);
    assert!(
        core.status()
            .last_error
            .is_some_and(|e| e.contains("Connection refused"))
    );
    let retry = core.poll_timeout().expect("a retry is scheduled");
    core.handle_timeout(retry);
    drain(&mut core);
    core.handle(Input::Connected, retry);
    drain(&mut core);
    // Still handshaking: the failure is the latest news.
    assert!(core.status().last_error.is_some());
    hello_ack(&mut core, 1, retry);
    let st = core.status();
    assert_eq!(st.phase, Phase::Ready);
    assert_eq!(st.last_error, None, "{st:?}");
}

#[test]
fn the_same_seed_gives_the_same_schedule() {
    let run = |seed| {
        let mut c = config(1);
        c.backoff.seed = Some(seed);
        let t0 = Instant::now();
        let mut core = AgentCore::new(CoreConfig::from_agent(&c, 0), BTreeMap::new(), t0);
        core.start(t0);
        let mut now = t0;
        (0..6)
            .map(|_| {
                drain(&mut core);
                core.handle(Input::ConnectFailed("x".into()), now);
                let r = core.poll_timeout().unwrap();
                let d = r - now;
                now = r;
                core.handle_timeout(now);
                d
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(run(5), run(5));
    assert_ne!(run(5), run(6));
}

#[test]
fn hello_then_sync_with_held_versions_and_status_then_interval_clamped() {
    let c = config(1);
    let t0 = Instant::now();
    let held = BTreeMap::from([("agent".to_string(), 3)]);
    let mut core = AgentCore::new(CoreConfig::from_agent(&c, 0), held, t0);
    core.set_local_status(LocalStatus::new(12345, vec!["peer-a".into()]));
    core.start(t0);
    drain(&mut core);
    core.handle(Input::Connected, t0);
    let a = drain(&mut core);
    let [Message::Hello(h)] = &sent(&a)[..] else {
        panic!("{a:?}")
    };
    assert_eq!(
        (h.min_version, h.max_version, h.node_id.as_str()),
        (1, 1, "laptop-1")
    );
    let t1 = t0 + Duration::from_secs(7);
    let a = hello_ack(&mut core, 1, t1);
    let [Message::SyncRequest(r)] = &sent(&a)[..] else {
        panic!("{a:?}")
    };
    assert_eq!(r.device_id, "laptop-1");
    assert_eq!(r.free_disk_bytes, 12345);
    assert_eq!(r.uptime_secs, 7);
    assert_eq!(r.visible_peers, vec!["peer-a"]);
    assert!(r.on_corporate_network);
    assert_eq!(
        r.held,
        vec![HeldVersion {
            kind: ObjectKind::Settings as i32,
            id: "agent".into(),
            version: 3
        }]
    );
    // The answer brings a new document, drops another, and asks for a 2 s interval
    // (1 s is the shortest accepted); the distribution part (nothing here) is handed on.
    core.handle(
        Input::Received(
            SyncResponse {
                settings: vec![AppSettings {
                    application: "av".into(),
                    version: 9,
                    json: "{}".into(),
                }],
                removed_settings: vec!["agent".into()],
                next_sync_secs: 2,
                ..Default::default()
            }
            .into(),
        ),
        t1,
    );
    let a = drain(&mut core);
    assert!(
        matches!(&a[..], [Action::ApplySettings { settings, removed }, Action::Distribution { assignments, updates }]
        if settings[0].application == "av" && removed == &["agent".to_string()]
            && assignments.is_empty() && updates.is_empty())
    );
    assert_eq!(core.held(), &BTreeMap::from([("av".to_string(), 9)]));
    assert_eq!(core.status().sync_interval, Duration::from_secs(2));
    assert_eq!(core.poll_timeout(), Some(t1 + Duration::from_secs(2)));
    core.handle_timeout(t1 + Duration::from_secs(2));
    let a = drain(&mut core);
    let [Message::SyncRequest(r)] = &sent(&a)[..] else {
        panic!("{a:?}")
    };
    assert_eq!(r.held[0].id, "av");
    // A day and more is clamped to a day.
    core.handle(
        Input::Received(
            SyncResponse {
                next_sync_secs: u32::MAX,
                ..Default::default()
            }
            .into(),
        ),
        t1 + Duration::from_secs(2),
    );
    assert_eq!(core.status().sync_interval, Duration::from_secs(86_400));
}

#[test]
fn default_interval_before_the_first_answer_is_900_s() {
    let c = config(1);
    let core = AgentCore::new(
        CoreConfig::from_agent(&c, 0),
        BTreeMap::new(),
        Instant::now(),
    );
    assert_eq!(core.status().sync_interval, Duration::from_secs(900));
}

#[test]
fn sync_now_syncs_at_once_once_per_nonce_and_waits_for_one_in_flight() {
    let c = config(1);
    let t0 = Instant::now();
    let mut core = ready(&c, BTreeMap::new(), t0);
    let push = |n| {
        Input::Received(
            SyncNow {
                reason: "policy".into(),
                nonce: n,
            }
            .into(),
        )
    };
    core.handle(push(7), t0);
    let a = drain(&mut core);
    assert!(matches!(sent(&a)[..], [Message::SyncRequest(_)]));
    // The same nonce again: ignored.
    core.handle(push(7), t0);
    assert!(drain(&mut core).is_empty());
    // Another nonce while a sync is in flight: sent when the answer comes.
    core.handle(push(8), t0);
    assert!(drain(&mut core).is_empty());
    core.handle(Input::Received(SyncResponse::default().into()), t0);
    let a = drain(&mut core);
    assert!(matches!(sent(&a)[..], [Message::SyncRequest(_)]));
    assert_eq!(core.status().pushes, 2);
}

#[test]
fn what_the_operator_should_know_comes_back_as_notices_and_is_bounded() {
    let c = config(1);
    let t0 = Instant::now();
    let mut core = ready(&c, BTreeMap::new(), t0);
    notices(&mut core);
    let push = Input::Received(
        SyncNow {
            reason: "policy".into(),
            nonce: 9,
        }
        .into(),
    );
    core.handle(push.clone(), t0);
    core.handle(push, t0);
    assert_eq!(
        notices(&mut core),
        [
            Notice::SyncRequested("policy".into()),
            Notice::NonceRepeated(9)
        ]
    );
    core.handle(Input::Disconnected("reset by peer".into()), t0);
    let n = notices(&mut core);
    assert!(
        matches!(&n[..], [Notice::ConnectionLost(r), Notice::Retrying { after: Some(a), .. }]
            if r.contains("reset by peer") && a.contains("reset by peer")),
        "{n:?}"
    );
    // Nobody polling: only the latest are kept.
    for _ in 0..NOTICES_KEPT + 10 {
        core.handle(Input::Connected, t0);
    }
    let n = notices(&mut core);
    assert_eq!(n.len(), NOTICES_KEPT);
    assert!(n.iter().all(|x| matches!(
        x,
        Notice::InputIgnored {
            input: "connected",
            phase: Phase::Waiting
        }
    )));
}

#[test]
fn events_are_batched_bounded_and_dropped_once_acknowledged() {
    let c = config(1);
    let t0 = Instant::now();
    let mut core = AgentCore::new(CoreConfig::from_agent(&c, 0), BTreeMap::new(), t0);
    // Queued while disconnected; the queue holds 3, so the oldest of 4 is dropped.
    for i in 0..4 {
        core.push_event("k", Severity::Info, &format!("e{i}"), 0, t0);
    }
    assert_eq!(core.status().events_dropped, 1);
    assert_eq!(core.status().events_queued, 3);
    core.start(t0);
    drain(&mut core);
    core.handle(Input::Connected, t0);
    drain(&mut core);
    let a = hello_ack(&mut core, 1, t0);
    let msgs = sent(&a);
    assert!(matches!(msgs[0], Message::SyncRequest(_)));
    let Message::EventBatch(b) = msgs[1] else {
        panic!("{a:?}")
    };
    assert_eq!(
        b.events.iter().map(|e| e.body.as_str()).collect::<Vec<_>>(),
        ["e1", "e2"]
    );
    core.handle(
        Input::Received(
            EventAck {
                up_to_id: b.events[1].id,
            }
            .into(),
        ),
        t0,
    );
    let a = drain(&mut core);
    let [Message::EventBatch(b)] = &sent(&a)[..] else {
        panic!("{a:?}")
    };
    assert_eq!(b.events[0].body, "e3");
    core.handle(
        Input::Received(
            EventAck {
                up_to_id: b.events[0].id,
            }
            .into(),
        ),
        t0,
    );
    assert_eq!(core.status().events_queued, 0);
    assert_eq!(core.status().events_acknowledged, 3);
}

#[test]
fn unanswered_requests_and_lost_connections_reconnect_and_keep_events() {
    let c = config(1);
    let t0 = Instant::now();
    let mut core = ready(&c, BTreeMap::new(), t0);
    core.push_event("k", Severity::Warning, "kept", 0, t0);
    drain(&mut core);
    // The EventAck never comes: past the request timeout the connection is dropped.
    let deadline = core.poll_timeout().unwrap();
    assert_eq!(deadline, t0 + Duration::from_secs(30));
    core.handle_timeout(deadline);
    let a = drain(&mut core);
    assert!(matches!(&a[..], [Action::Close]), "{a:?}");
    assert_eq!(core.status().phase, Phase::Waiting);
    assert!(core.status().last_error.unwrap().contains("EventAck"));
    assert_eq!(core.status().events_queued, 1);
    // Back after the backoff; the event is sent again after the sync.
    let retry = core.poll_timeout().unwrap();
    core.handle_timeout(retry);
    assert!(matches!(&drain(&mut core)[..], [Action::Connect(_)]));
    core.handle(Input::Connected, retry);
    drain(&mut core);
    let a = hello_ack(&mut core, 1, retry);
    assert!(matches!(
        sent(&a)[..],
        [Message::SyncRequest(_), Message::EventBatch(_)]
    ));
    assert_eq!(core.status().connections, 2);
    // A broken connection: wait, no Close needed.
    core.handle(Input::Disconnected("reset".into()), retry);
    assert!(drain(&mut core).is_empty());
    assert_eq!(core.status().phase, Phase::Waiting);
}

#[test]
fn keepalive_after_a_quiet_period_and_answers_to_the_server() {
    let c = config(1);
    let t0 = Instant::now();
    let mut core = ready(&c, BTreeMap::new(), t0);
    // Sync every 600 s, keepalive after 60 s of quiet.
    assert_eq!(core.poll_timeout(), Some(t0 + Duration::from_secs(60)));
    core.handle_timeout(t0 + Duration::from_secs(60));
    let a = drain(&mut core);
    let [Message::Keepalive(k)] = &sent(&a)[..] else {
        panic!("{a:?}")
    };
    assert!(!k.reply);
    let seq = k.seq;
    core.handle(
        Input::Received(Keepalive { seq, reply: true }.into()),
        t0 + Duration::from_secs(61),
    );
    assert_eq!(core.poll_timeout(), Some(t0 + Duration::from_secs(121)));
    core.handle(
        Input::Received(
            Keepalive {
                seq: 5,
                reply: false,
            }
            .into(),
        ),
        t0 + Duration::from_secs(62),
    );
    let a = drain(&mut core);
    assert!(matches!(sent(&a)[..], [Message::Keepalive(k)] if k.reply && k.seq == 5));
}

#[test]
fn refusals_not_authorized_stops_others_retry() {
    let c = config(1);
    let t0 = Instant::now();
    let mut core = ready(&c, BTreeMap::new(), t0);
    core.handle(
        Input::Received(
            Refusal {
                code: RefusalCode::ServerUnreachable as i32,
                reason: "no signal".into(),
            }
            .into(),
        ),
        t0,
    );
    assert!(matches!(&drain(&mut core)[..], [Action::Close]));
    assert_eq!(core.status().phase, Phase::Waiting);
    assert!(
        core.status()
            .last_error
            .unwrap()
            .contains("ServerUnreachable")
    );

    let mut core = AgentCore::new(CoreConfig::from_agent(&c, 0), BTreeMap::new(), t0);
    core.start(t0);
    drain(&mut core);
    core.handle(Input::Connected, t0);
    drain(&mut core);
    core.handle(
        Input::Received(
            Refusal {
                code: RefusalCode::NotAuthorized as i32,
                reason: "not enrolled".into(),
            }
            .into(),
        ),
        t0,
    );
    let a = drain(&mut core);
    assert!(
        matches!(&a[..], [Action::Close, Action::Stop { code, reason }]
        if code == "NotAuthorized" && reason == "not enrolled"),
        "{a:?}"
    );
    assert_eq!(core.status().phase, Phase::Stopped);
    assert_eq!(core.poll_timeout(), None);
    core.handle_timeout(t0 + Duration::from_secs(3600));
    assert!(drain(&mut core).is_empty());
}

#[test]
fn protocol_surprises_reconnect() {
    let c = config(1);
    let t0 = Instant::now();
    // A HelloAck with a version outside ours.
    let mut core = AgentCore::new(CoreConfig::from_agent(&c, 0), BTreeMap::new(), t0);
    core.start(t0);
    drain(&mut core);
    core.handle(Input::Connected, t0);
    drain(&mut core);
    assert!(matches!(&hello_ack(&mut core, 9, t0)[..], [Action::Close]));
    assert!(core.status().last_error.unwrap().contains("version 9"));
    // No HelloAck at all.
    let r = core.poll_timeout().unwrap();
    core.handle_timeout(r);
    drain(&mut core);
    core.handle(Input::Connected, r);
    drain(&mut core);
    core.handle_timeout(r + Duration::from_secs(30));
    assert!(matches!(&drain(&mut core)[..], [Action::Close]));
    assert!(core.status().last_error.unwrap().contains("HelloAck"));
    // An answer nobody asked for.
    let mut core = ready(&c, BTreeMap::new(), t0);
    core.handle(Input::Received(SyncResponse::default().into()), t0);
    assert!(matches!(&drain(&mut core)[..], [Action::Close]));
}

#[test]
fn a_push_from_outside_syncs_now_or_ends_the_wait_and_ignores_replays() {
    let c = config(1);
    let t0 = Instant::now();
    // Connected: sync at once, long before the 600 s interval.
    let mut core = ready(&c, BTreeMap::new(), t0);
    let t1 = t0 + Duration::from_secs(5);
    core.sync_now_from_outside(77, t1);
    let a = drain(&mut core);
    assert!(matches!(sent(&a)[..], [Message::SyncRequest(_)]), "{a:?}");
    core.handle(
        Input::Received(
            SyncResponse {
                next_sync_secs: 600,
                ..Default::default()
            }
            .into(),
        ),
        t1,
    );
    drain(&mut core);
    // The same nonce again: nothing.
    core.sync_now_from_outside(77, t1 + Duration::from_secs(1));
    assert!(drain(&mut core).is_empty());

    // Waiting for the backoff after a lost connection: connect now instead.
    core.handle(
        Input::Disconnected("gone".into()),
        t1 + Duration::from_secs(2),
    );
    drain(&mut core);
    assert_eq!(core.status().phase, Phase::Waiting);
    let t2 = t1 + Duration::from_secs(2);
    assert!(
        core.poll_timeout().is_some_and(|d| d > t2),
        "the retry is in the future"
    );
    core.sync_now_from_outside(78, t2);
    let a = drain(&mut core);
    assert!(a.iter().any(|x| matches!(x, Action::Connect(_))), "{a:?}");
    // A replayed nonce while waiting does nothing either.
    core.handle(Input::ConnectFailed("refused".into()), t2);
    drain(&mut core);
    core.sync_now_from_outside(78, t2);
    assert!(
        !drain(&mut core)
            .iter()
            .any(|x| matches!(x, Action::Connect(_)))
    );
}
