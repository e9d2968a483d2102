//! The agent against a real Administration Server service over loopback TLS: enrollment,
//! sync directly and through a DMZ gateway, push, settings persistence, events, identity
//! reuse, discovery, losing a gateway and refusals. Every wait is bounded.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use outpost_agent::protocol::Phase;
use outpost_agent::{Agent, AgentConfig, AgentError, Endpoint, discovery};
use outpost_gateway::{
    ConnectorConfig, DeviceConnection, DeviceListener, DmzGatewayEntry, Gateway, GatewayConfig,
    ListenerLimits, ServerConnector, TlsMaterial,
};
use outpost_pki::{PkiConfig, ServerCa};
use outpost_server::{
    AdminService, DeviceContext, MemoryObjects, Registry, ServiceConfig, SyncSource,
};
use outpost_wire::messages::*;
use serde_json::json;
use tokio::sync::mpsc;

const SERVER: &str = "server.test";
const GATEWAY: &str = "gateway.test";
const WAIT: Duration = Duration::from_secs(30);

/// Hands out the "agent" document at the current version to any device holding an older
/// one, "legacy" once, and removes "legacy" from version 2 on. Logs every request.
struct Source {
    version: AtomicU64,
    next_sync_secs: u32,
    log: Mutex<Vec<(String, SyncRequest)>>,
}

impl Source {
    fn requests(&self) -> Vec<(String, SyncRequest)> {
        self.log.lock().unwrap().clone()
    }
}

impl SyncSource for Source {
    fn sync(&self, d: &DeviceContext, req: &SyncRequest) -> SyncResponse {
        self.log
            .lock()
            .unwrap()
            .push((d.via.to_string(), req.clone()));
        let v = self.version.load(Ordering::SeqCst);
        let held = |app: &str| {
            req.held
                .iter()
                .find(|h| h.id == app && h.kind == ObjectKind::Settings as i32)
                .map(|h| h.version)
        };
        let mut resp = SyncResponse {
            next_sync_secs: self.next_sync_secs,
            ..Default::default()
        };
        if held("agent").is_none_or(|h| h < v) {
            let doc = json!({
                "values": {"proxy": {"host": "p.corp", "port": 8080}, "level": v},
                "locked": ["proxy/host"]
            });
            resp.settings.push(AppSettings {
                application: "agent".into(),
                version: v,
                json: serde_json::to_vec(&doc).unwrap().into(),
            });
        }
        if v == 1 && held("legacy").is_none() {
            resp.settings.push(AppSettings {
                application: "legacy".into(),
                version: 1,
                json: "{\"x\":1}".into(),
            });
        }
        if v >= 2 && held("legacy").is_some() {
            resp.removed_settings.push("legacy".into());
        }
        resp
    }
}

struct Server {
    service: Arc<AdminService>,
    listener: outpost_gateway::DeviceListener,
    tx: mpsc::Sender<DeviceConnection>,
    source: Arc<Source>,
}

impl Server {
    fn addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }
}

async fn start_server(ca: &Arc<ServerCa>, registry: Registry, dir: &std::path::Path) -> Server {
    let source = Arc::new(Source {
        version: AtomicU64::new(1),
        next_sync_secs: 900,
        log: Mutex::new(Vec::new()),
    });
    let service = AdminService::new(
        ServiceConfig::new(),
        ca.clone(),
        outpost_server::Storage::create(&outpost_server::DatabaseConfig::sqlite_in(dir), &registry)
            .unwrap(),
        registry,
        source.clone(),
        Arc::new(MemoryObjects::default()),
    );
    let (tx, _dispatch) = service.dispatcher(64);
    let id = ca
        .issue_server("server-1", &[SERVER.to_string()], &[], SystemTime::now())
        .unwrap();
    let listener = DeviceListener::start(
        "127.0.0.1:0".parse().unwrap(),
        &TlsMaterial::new(id, ca.server_ca().clone()),
        &ListenerLimits::default(),
        outpost_gateway::TunnelPolicy::Refuse,
        tx.clone(),
    )
    .await
    .unwrap();
    Server {
        service,
        listener,
        tx,
        source,
    }
}

struct Setup {
    dir: tempfile::TempDir,
    ca: Arc<ServerCa>,
    ca_file: std::path::PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(ServerCa::create(PkiConfig::default(), SystemTime::now()).unwrap());
    let ca_file = dir.path().join("bootstrap-ca.crt");
    std::fs::write(&ca_file, ca.server_ca().to_pem()).unwrap();
    Setup { dir, ca, ca_file }
}

fn registry_with_tokens(devices: &[&str]) -> (Registry, Vec<String>) {
    let mut reg = Registry::new("server-1").unwrap();
    reg.add_group("branch", "Branch", None).unwrap();
    let tokens = devices
        .iter()
        .map(|d| {
            reg.issue_token(
                "branch",
                Some(d),
                Duration::from_secs(600),
                SystemTime::now(),
            )
            .unwrap()
        })
        .collect();
    (reg, tokens)
}

fn agent_config(s: &Setup, device: &str, server: SocketAddr, token: &str) -> AgentConfig {
    let mut c = AgentConfig::new(device, s.dir.path().join(device));
    c.endpoints = vec![Endpoint::new(server, SERVER)];
    c.enrollment.server = Some(Endpoint::new(server, SERVER));
    c.enrollment.server_ca = s.ca_file.clone();
    c.enrollment.token = token.into();
    c.backoff.initial_ms = 50;
    c.backoff.max_ms = 500;
    c.backoff.seed = Some(1);
    c.request_timeout_ms = 10_000;
    c
}

async fn synced(agent: &Agent, n: u64) {
    agent
        .wait_for(WAIT, |s| s.core.syncs >= n)
        .await
        .unwrap_or_else(|e| panic!("{n} syncs: {e}"));
}

async fn until_online(server: &Server, device: &str) {
    for _ in 0..1000 {
        if server.service.online().iter().any(|d| d == device) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{device} never came online");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_sync_push_persist_events_discovery_and_restart_directly() {
    let s = setup();
    let (reg, tokens) = registry_with_tokens(&["laptop-1"]);
    let server = start_server(&s.ca, reg, s.dir.path()).await;

    // A bad token is a clear enrollment error.
    let mut bad = agent_config(&s, "laptop-1", server.addr(), "not-a-token");
    bad.data_dir = s.dir.path().join("bad");
    let e = Agent::start(bad).await.unwrap_err();
    assert!(
        matches!(&e, AgentError::EnrollmentRefused { code, .. } if code == "BadEnrollmentToken"),
        "{e}"
    );

    // A peer in the "broadcast domain" (a plain loopback socket).
    let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut c = agent_config(&s, "laptop-1", server.addr(), &tokens[0]);
    c.local_settings.insert(
        "agent".into(),
        json!({"proxy": {"host": "mine", "port": 3128}, "level": 0}),
    );
    c.discovery.enabled = true;
    c.discovery.bind = "127.0.0.1:0".parse().unwrap();
    c.discovery.targets = vec![peer.local_addr().unwrap()];
    c.discovery.interval_ms = 100;
    c.discovery.window_ms = 10_000;
    let agent = Agent::start(c.clone()).await.unwrap();
    assert!(agent.enrolled());
    synced(&agent, 1).await;
    assert_eq!(agent.status().core.phase, Phase::Ready);

    // The identity is on disk, the key private.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(c.data_dir.join("agent.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // First sync: nothing held, free disk reported; documents stored.
    let first = &server.source.requests()[0];
    assert_eq!(first.0, "direct");
    assert!(first.1.held.is_empty());
    assert!(first.1.free_disk_bytes > 0);
    assert_eq!(agent.settings("agent").unwrap().0, 1);
    assert_eq!(agent.settings("legacy").unwrap().0, 1);
    // Local settings fill only what is not locked.
    assert_eq!(
        agent.effective("agent").unwrap(),
        json!({"proxy": {"host": "p.corp", "port": 3128}, "level": 0})
    );
    assert!(agent.effective("nothing").is_none());

    // The peer hears the agent and announces itself.
    let mut buf = [0u8; 256];
    let (n, from) = tokio::time::timeout(WAIT, peer.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(discovery::decode(&buf[..n]).unwrap(), "laptop-1");
    assert_eq!(Some(from), agent.discovery_addr());
    peer.send_to(&discovery::encode("desktop-9").unwrap(), from)
        .await
        .unwrap();
    peer.send_to(b"garbage", from).await.unwrap();

    // A push syncs at once (the interval is 900 s), reporting held versions and the peer.
    until_online(&server, "laptop-1").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        server
            .service
            .push_sync_now("laptop-1", "policy changed", 1)
    );
    synced(&agent, 2).await;
    let second = server.source.requests()[1].1.clone();
    let mut held: Vec<(String, u64)> = second
        .held
        .iter()
        .map(|h| (h.id.clone(), h.version))
        .collect();
    held.sort();
    assert_eq!(held, vec![("agent".into(), 1), ("legacy".into(), 1)]);
    assert_eq!(second.visible_peers, vec!["desktop-9"]);

    // A repeated nonce is ignored; a new document version is applied on the next push.
    server.source.version.store(2, Ordering::SeqCst);
    assert!(server.service.push_sync_now("laptop-1", "again", 1));
    assert!(server.service.push_sync_now("laptop-1", "v2", 2));
    synced(&agent, 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        agent.status().core.syncs,
        3,
        "the repeated nonce must not sync"
    );
    assert_eq!(agent.settings("agent").unwrap().0, 2);
    assert!(agent.settings("legacy").is_none(), "removed by the server");
    assert_eq!(agent.effective("agent").unwrap()["level"], 0);

    // Events reach the server and leave the queue.
    agent
        .push_event("test.event", Severity::Warning, "disk almost full")
        .await
        .unwrap();
    agent
        .wait_for(WAIT, |s| {
            s.core.events_acknowledged == 1 && s.core.events_queued == 0
        })
        .await
        .unwrap();
    assert_eq!(server.service.stats().events.load(Ordering::Relaxed), 1);
    agent.shutdown().await;

    // A restart reuses the stored identity (the token is spent) and reports what it holds.
    let before = server.source.requests().len();
    let agent = Agent::start(c.clone()).await.unwrap();
    assert!(!agent.enrolled());
    synced(&agent, 1).await;
    let after = server.source.requests()[before].1.clone();
    assert_eq!(
        after
            .held
            .iter()
            .map(|h| (h.id.as_str(), h.version))
            .collect::<Vec<_>>(),
        vec![("agent", 2)]
    );
    assert_eq!(server.service.stats().enrolled.load(Ordering::Relaxed), 1);
    assert_eq!(agent.settings("agent").unwrap().0, 2);
    agent.shutdown().await;

    // A server that does not know this certificate refuses it: the agent stops and says why.
    std::fs::create_dir(s.dir.path().join("x")).unwrap();
    let other = start_server(
        &s.ca,
        Registry::new("server-2").unwrap(),
        &s.dir.path().join("x"),
    )
    .await;
    let mut c2 = c.clone();
    c2.endpoints = vec![Endpoint::new(other.addr(), SERVER)];
    c2.discovery.enabled = false;
    let agent = Agent::start(c2).await.unwrap();
    let e = tokio::time::timeout(WAIT, agent.wait())
        .await
        .expect("stops in time")
        .unwrap_err();
    assert!(
        matches!(&e, AgentError::Refused { code, reason } if code == "NotAuthorized" && reason.contains("not enrolled")),
        "{e}"
    );
}

async fn start_gateway(ca: &ServerCa, addr: SocketAddr) -> Gateway {
    let id = ca
        .issue_gateway(&[GATEWAY.to_string()], &[], SystemTime::now())
        .unwrap();
    let mut cfg = GatewayConfig::dmz("dmz-1", addr);
    cfg.limits.drain_timeout_ms = 200;
    Gateway::start(cfg, TlsMaterial::new(id, ca.server_ca().clone()))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_through_a_dmz_gateway_and_reconnect_when_it_comes_back() {
    let s = setup();
    let (reg, tokens) = registry_with_tokens(&["branch-pc"]);
    let server = start_server(&s.ca, reg, s.dir.path()).await;
    let gw = start_gateway(&s.ca, "127.0.0.1:0".parse().unwrap()).await;
    let gw_addr = gw.local_addr();
    let mut cc = ConnectorConfig::default();
    cc.gateways = vec![DmzGatewayEntry::new("dmz-1", gw_addr, GATEWAY)];
    cc.backoff_initial_ms = 50;
    cc.backoff_max_ms = 200;
    let server_id =
        s.ca.issue_server("server-1", &[SERVER.to_string()], &[], SystemTime::now())
            .unwrap();
    let connector = ServerConnector::start(
        cc,
        &TlsMaterial::new(server_id, s.ca.server_ca().clone()),
        server.tx.clone(),
    )
    .unwrap();

    // Enrollment goes to the server; everything else through the gateway.
    let mut c = agent_config(&s, "branch-pc", server.addr(), &tokens[0]);
    c.endpoints = vec![Endpoint::new(gw_addr, GATEWAY)];
    let agent = Agent::start(c).await.unwrap();
    synced(&agent, 1).await;
    assert_eq!(server.source.requests()[0].0, "DMZ gateway dmz-1");
    assert_eq!(agent.settings("agent").unwrap().0, 1);

    // The gateway goes away: the agent notices and keeps retrying.
    gw.shutdown().await;
    agent
        .wait_for(WAIT, |s| s.core.phase != Phase::Ready)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(agent.status().core.connections, 1);

    // A new gateway on the same address: the agent is back by itself and syncs again.
    let gw = start_gateway(&s.ca, gw_addr).await;
    let st = agent
        .wait_for(WAIT, |s| s.core.connections >= 2 && s.core.syncs >= 2)
        .await
        .unwrap();
    assert_eq!(st.core.phase, Phase::Ready);
    let reqs = server.source.requests();
    let last = reqs.last().unwrap();
    assert_eq!(last.0, "DMZ gateway dmz-1");
    assert_eq!(
        last.1.held[0].version, 1,
        "held versions survive the reconnect"
    );
    agent.shutdown().await;
    connector.shutdown().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_are_tried_in_order() {
    let s = setup();
    let (reg, tokens) = registry_with_tokens(&["pc-2"]);
    let server = start_server(&s.ca, reg, s.dir.path()).await;
    // A port nobody listens on (bound then released), then the server.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut c = agent_config(&s, "pc-2", server.addr(), &tokens[0]);
    c.endpoints = vec![
        Endpoint::new(dead, GATEWAY),
        Endpoint::new(server.addr(), SERVER),
    ];
    let agent = Agent::start(c).await.unwrap();
    let st = agent.wait_for(WAIT, |s| s.core.syncs >= 1).await.unwrap();
    assert_eq!(st.core.endpoint.unwrap().addr, server.addr());
    assert_eq!(st.core.connections, 1);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_discover_each_other_on_loopback() {
    let ports: Vec<SocketAddr> = (0..2)
        .map(|_| {
            std::net::UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
        })
        .collect();
    let mk = |me: usize| {
        let mut d = outpost_agent::DiscoveryConfig::default();
        d.enabled = true;
        d.bind = ports[me];
        d.targets = vec![ports[1 - me]];
        d.interval_ms = 50;
        d.window_ms = 5_000;
        d
    };
    let a = discovery::spawn("agent-a", &mk(0)).unwrap();
    let b = discovery::spawn("agent-b", &mk(1)).unwrap();
    let mut ok = false;
    for _ in 0..200 {
        let now = std::time::Instant::now();
        if a.visible(now) == ["agent-b"] && b.visible(now) == ["agent-a"] {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        ok,
        "a sees {:?}, b sees {:?}",
        a.visible(std::time::Instant::now()),
        b.visible(std::time::Instant::now())
    );
}

#[tokio::test]
async fn missing_enrollment_settings_and_partial_identities_are_named() {
    let d = tempfile::tempdir().unwrap();
    let mut c = AgentConfig::new("pc-3", d.path().join("pc-3"));
    c.endpoints = vec![Endpoint::new("127.0.0.1:9".parse().unwrap(), SERVER)];
    let e = Agent::start(c.clone()).await.unwrap_err().to_string();
    assert!(e.contains("enrollment.server"), "{e}");
    c.enrollment.server = Some(Endpoint::new("127.0.0.1:9".parse().unwrap(), SERVER));
    let e = Agent::start(c.clone()).await.unwrap_err().to_string();
    assert!(e.contains("enrollment.token"), "{e}");
    std::fs::write(c.data_dir.join("agent.key"), "x").unwrap();
    let e = Agent::start(c).await.unwrap_err();
    assert!(
        matches!(&e, AgentError::IncompleteIdentity { missing, .. } if *missing == "agent.chain.pem"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_udp_push_makes_the_agent_sync_now_and_forgeries_do_not() {
    let s = setup();
    let (reg, tokens) = registry_with_tokens(&["laptop-1"]);
    let server = start_server(&s.ca, reg, s.dir.path()).await;
    let mut c = agent_config(&s, "laptop-1", server.addr(), &tokens[0]);
    c.discovery.enabled = true;
    c.discovery.bind = "127.0.0.1:0".parse().unwrap();
    // Announcements go to the test's own loopback socket.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    c.discovery.targets = vec![udp.local_addr().unwrap()];
    let agent = Agent::start(c).await.unwrap();
    synced(&agent, 1).await;
    let to = agent.discovery_addr().expect("discovery on");
    let now = SystemTime::now();
    let pushes = |a: &Agent| a.status().core.pushes;

    // Forged: a server certificate from another CA, and one for another device. Neither
    // makes the agent sync (the server asked for a sync every 900 s).
    let rogue_ca = ServerCa::create(PkiConfig::default(), now).unwrap();
    let rogue = outpost_server::SyncNowSigner::new(
        rogue_ca
            .issue_server("server-1", &[SERVER.to_string()], &[], now)
            .unwrap(),
    );
    udp.send_to(&rogue.datagram(Some("laptop-1"), 1, now).unwrap(), to)
        .unwrap();
    let real = outpost_server::SyncNowSigner::new(
        s.ca.issue_server("server-1", &[SERVER.to_string()], &[], now)
            .unwrap(),
    );
    udp.send_to(&real.datagram(Some("laptop-2"), 2, now).unwrap(), to)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        agent.status().core.syncs,
        1,
        "a forged or foreign push made the agent sync"
    );
    assert_eq!(pushes(&agent), 0);

    // The server's own, for this device: the agent syncs at once.
    udp.send_to(&real.datagram(Some("laptop-1"), 3, now).unwrap(), to)
        .unwrap();
    synced(&agent, 2).await;
    assert_eq!(pushes(&agent), 1);
    // Replayed: ignored.
    udp.send_to(&real.datagram(Some("laptop-1"), 3, now).unwrap(), to)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(agent.status().core.syncs, 2);
    agent.shutdown().await;
    server.listener.shutdown().await;
}
