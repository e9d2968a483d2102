//! End to end over loopback: a server, a DMZ gateway and a small fleet in one process
//! (enrollment, policies with a profile, DP election, multicast distribution, failover of an
//! active DP halfway), and a server restart that keeps its state while agents come back to
//! it directly and through the gateway. Every wait is bounded.

use crate::common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use outpost::agent::{Agent, AgentConfig, Endpoint};
use outpost::gateway::{Gateway, GatewayConfig, TlsMaterial};
use outpost::pki::store;
use outpost::server::{AdminServer, AdminServerConfig, MemoryObjects};
use outpost_fleet::{FleetConfig, FleetReport};

#[path = "../../crates/server/tests/it/common/postgres.rs"]
mod postgres;

/// A UDP port free on 127.0.0.1 now, so concurrent runs do not share a multicast port.
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// `agents` agents in 2 groups, an update of `bytes`, DPs at 30 Mbit/s on a free port.
fn small_fleet(agents: usize, bytes: u64) -> FleetConfig {
    let mut cfg = FleetConfig::default();
    cfg.agents = agents;
    cfg.groups = 2;
    cfg.update_bytes = bytes;
    cfg.rate_mbps = 30;
    cfg.multicast_port = free_udp_port();
    cfg.timeout = Duration::from_secs(240);
    cfg
}

/// Runs `cfg` in `dir`; every device must end right.
async fn run_ok(cfg: &FleetConfig, dir: &std::path::Path) -> FleetReport {
    let mut lines = Vec::new();
    let r = outpost_fleet::run(cfg, dir, |l| lines.push(l))
        .await
        .unwrap();
    assert!(
        r.ok(),
        "{:?}\n{}\n{}",
        r.failures,
        r.table(),
        lines.join("\n")
    );
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_fleet_ends_byte_exact_through_a_dp_failover() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_fleet(14, 6 << 20);
    cfg.kill_at = Some(0.3);
    let r = run_ok(&cfg, dir.path()).await;
    assert_eq!(r.devices, 14);
    assert_eq!(r.delivered_bytes, 14 * (6 << 20), "every copy verified");
    assert!(r.via_gateway > 0 && r.kiosks > 0, "{}", r.table());
    // The active DPs took the update from the server once each; the devices got theirs by
    // multicast, not from the server.
    assert_eq!(r.server_egress_bytes, 2 * (6 << 20), "{}", r.table());
    assert!(
        r.via.get("multicast").copied().unwrap_or(0) >= 8,
        "{}",
        r.table()
    );
    assert_eq!(r.via.get("server").copied(), Some(2), "{}", r.table());
    // The first group's active DP was killed, and its standby took over.
    assert!(
        r.killed
            .as_deref()
            .is_some_and(|k| k.starts_with("site-1-dp-"))
    );
    assert!(
        r.failover_secs.is_some() && r.resume_secs.is_some(),
        "{}",
        r.table()
    );
}

/// The fleet spread over the main server and two virtual servers: the same groups and
/// device ids in each, each with its own policies (its own `update.window`, checked per
/// device), its own DPs on its own multicast groups and its own copy of the update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_over_three_virtual_servers_stays_apart() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_fleet(18, 2 << 20);
    cfg.virtual_servers = 3;
    cfg.kill_at = None;
    let r = run_ok(&cfg, dir.path()).await;
    assert_eq!((r.devices, r.servers), (18, 3));
    assert_eq!(r.delivered_bytes, 18 * (2 << 20), "every copy verified");
    // Each server's two active DPs took the update from their own server once each.
    assert_eq!(r.server_egress_bytes, 3 * 2 * (2 << 20), "{}", r.table());
    assert!(
        r.via.get("multicast").copied().unwrap_or(0) >= 6,
        "{}",
        r.table()
    );
    // Each virtual server keeps its own devices under its own directory.
    for t in ["tenant-2", "tenant-3"] {
        assert!(
            dir.path()
                .join("agents")
                .join(t)
                .join("site-1-dp-a")
                .is_dir()
        );
    }
}

fn agent(
    base: &std::path::Path,
    id: &str,
    endpoint: Endpoint,
    server: SocketAddr,
    token: &str,
) -> AgentConfig {
    let mut c = AgentConfig::new(id, base.join(id));
    c.endpoints = vec![endpoint];
    c.enrollment.server = Some(Endpoint::new(server, "server.test"));
    c.enrollment.server_ca = base.join("state/ca.crt");
    c.enrollment.token = token.into();
    c.backoff.initial_ms = 50;
    c.backoff.max_ms = 300;
    c.distribution.enabled = false;
    c
}

async fn syncs_past(a: &Agent, n: u64) {
    a.wait_for(Duration::from_secs(60), |s| s.core.syncs > n)
        .await
        .unwrap_or_else(|e| panic!("no sync past {n}: {e}"));
}

/// A server data directory under `base` (CA for `server.test`) and a DMZ gateway `dmz-1`
/// (`gw.test`) on loopback that knows no revocation list.
async fn state_and_dmz_gateway(
    base: &std::path::Path,
    now: SystemTime,
) -> (outpost::pki::ServerCa, outpost::gateway::Gateway) {
    let ca = store::init_server_dir(
        &base.join("state"),
        "server-1",
        &["server.test".into()],
        now,
    )
    .unwrap();
    let gw = Gateway::start(
        GatewayConfig::dmz("dmz-1", "127.0.0.1:0".parse().unwrap()),
        TlsMaterial::new(
            ca.issue_gateway(&["gw.test".into()], &[], now).unwrap(),
            ca.server_ca().clone(),
        ),
    )
    .await
    .unwrap();
    (ca, gw)
}

/// An Administration Server on `config` and `base`, with objects in memory.
async fn try_start_server(
    config: &AdminServerConfig,
    base: &std::path::Path,
) -> Result<AdminServer, outpost::server::ServerError> {
    AdminServer::start(config.clone(), base, None, None).await
}

/// [`try_start_server`], which must succeed.
async fn start_server(config: &AdminServerConfig, base: &std::path::Path) -> AdminServer {
    try_start_server(config, base).await.unwrap()
}

/// A server on `127.0.0.1:port` (0: any) that dials the gateways it has registered quickly.
fn dialling_config(port: u16) -> AdminServerConfig {
    server_config(
        port,
        "",
        r#"
        [connector]
        server_id = "server-1"
        keepalive_ms = 200
        backoff_initial_ms = 50
        "#,
    )
}

/// A server on `state/` of the test's directory and `127.0.0.1:port`.
fn server_config(port: u16, top: &str, tables: &str) -> AdminServerConfig {
    common::server_config(&format!("127.0.0.1:{port}"), top, tables)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_keeps_its_state_and_its_agents_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    let now = SystemTime::now();
    let (_ca, gw) = state_and_dmz_gateway(base, now).await;
    // A fixed device port, so the agents find the restarted server where they left it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let config = dialling_config(port);
    let (t1, t2) = config
        .edit_registry(base, |reg| {
            reg.add_group("lab", "Lab", None)?;
            reg.register_dmz_gateway("dmz-1", gw.local_addr(), vec!["gw.test".into()])?;
            let t1 = reg.issue_token("lab", Some("direct-1"), Duration::from_secs(600), now)?;
            let t2 = reg.issue_token("lab", Some("behind-gw-1"), Duration::from_secs(600), now)?;
            Ok((t1, t2))
        })
        .unwrap();
    let objects = Arc::new(MemoryObjects::default());
    let server = AdminServer::start(config.clone(), base, None, Some(objects.clone()))
        .await
        .unwrap();
    let addr = server.local_addr();
    let direct = Agent::start(agent(
        base,
        "direct-1",
        Endpoint::new(addr, "server.test"),
        addr,
        &t1,
    ))
    .await
    .unwrap();
    let behind = Agent::start(agent(
        base,
        "behind-gw-1",
        Endpoint::new(gw.local_addr(), "gw.test"),
        addr,
        &t2,
    ))
    .await
    .unwrap();
    assert!(direct.enrolled() && behind.enrolled());
    syncs_past(&direct, 0).await;
    syncs_past(&behind, 0).await;
    let enrolled_before = server.service().registry().devices().len();
    assert_eq!(enrolled_before, 2);

    // Stop the server; the agents lose it and retry with backoff.
    server.shutdown().await;
    let (d0, b0) = (direct.status().core.syncs, behind.status().core.syncs);
    direct
        .wait_for(Duration::from_secs(30), |s| {
            s.core.phase != outpost::agent::protocol::Phase::Ready
        })
        .await
        .unwrap();

    // The same configuration again: same registry (the devices and spent tokens), same CA;
    // the agents come back without enrolling again, one of them through the gateway, which
    // the restarted server dials again from its registry.
    let server = AdminServer::start(config, base, None, Some(objects))
        .await
        .unwrap();
    let reg = server.service().registry();
    assert_eq!(reg.devices().len(), 2, "devices kept");
    assert_eq!(reg.pending_tokens(), 0, "spent tokens stay spent");
    syncs_past(&direct, d0).await;
    syncs_past(&behind, b0).await;
    assert_eq!(
        server.service().stats().enrolled.load(Ordering::Relaxed),
        0,
        "nobody enrolled again"
    );
    let st = behind.status().core;
    assert_eq!(
        st.endpoint.as_ref().map(|e| e.name.as_str()),
        Some("gw.test")
    );
    assert!(st.connections >= 2, "{st:?}");
    direct.shutdown().await;
    behind.shutdown().await;
    server.shutdown().await;
    gw.shutdown().await;
}

/// The agent's settings files, by name.
fn settings_files(agent_dir: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    std::fs::read_dir(agent_dir.join(outpost::agent::store::SETTINGS_DIR))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read_to_string(e.path()).unwrap(),
            )
        })
        .collect()
}

/// Set in the child process this test starts: the directory of the server it runs.
const CHILD_SERVER: &str = "OUTPOST_TEST_CHILD_SERVER_BASE";
/// In a child's directory: the configuration of a gateway to run instead of a server.
const CHILD_GATEWAY: &str = "gateway.toml";
/// The line the child prints once its server listens.
const CHILD_READY: &str = "outpost-test-child-server-ready";

fn restart_config(port: u16) -> AdminServerConfig {
    server_config(port, r#"policy_state = "policy-state.json""#, "")
}

/// In a child's directory: the URL of the database to use instead of SQLite.
const CHILD_DATABASE: &str = "database.url";

/// [`restart_config`] on the database `base` names in [`CHILD_DATABASE`], if any.
fn child_config(base: &std::path::Path, port: u16) -> AdminServerConfig {
    let mut config = restart_config(port);
    if let Ok(url) = std::fs::read_to_string(base.join(CHILD_DATABASE)) {
        config.database = outpost::server::DatabaseConfig::default().with_url(url.trim());
    }
    config
}

/// In the child process a test started with [`spawn_child_server`]: serves the directory
/// the environment names until killed. In the test itself, returns at once.
async fn serve_if_child() {
    let Ok(base) = std::env::var(CHILD_SERVER) else {
        return;
    };
    let base = std::path::PathBuf::from(base);
    if let Ok(text) = std::fs::read_to_string(base.join(CHILD_GATEWAY)) {
        // A gateway from its configuration file, as `connection_gateway` runs one.
        let config = GatewayConfig::from_toml(&text).unwrap();
        let tls = config.load_tls(&base).unwrap();
        let gw = Gateway::start(config, tls).await.unwrap();
        std::fs::write(
            base.join("gateway.port"),
            gw.local_addr().port().to_string(),
        )
        .unwrap();
        println!("{CHILD_READY}");
        tokio::time::sleep(Duration::from_secs(300)).await;
        panic!("the child gateway was not killed within 300 s");
    }
    let port: u16 = std::fs::read_to_string(base.join("port"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _server = AdminServer::start(child_config(&base, port), &base, None, None)
        .await
        .unwrap();
    println!("{CHILD_READY}");
    tokio::time::sleep(Duration::from_secs(300)).await;
    panic!("the child server was not killed within 300 s");
}

/// A data directory for [`restart_config`] under `base` (CA for `server.test`, the example
/// policies, a free port written to `base/port`); returns the port.
fn child_server_dir(base: &std::path::Path, now: SystemTime) -> u16 {
    store::init_server_dir(
        &base.join("state"),
        "server-1",
        &["server.test".into()],
        now,
    )
    .unwrap();
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/data/policy-state.json"
        ),
        base.join("policy-state.json"),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    std::fs::write(base.join("port"), port.to_string()).unwrap();
    port
}

/// [`child_server_dir`] with a group "accounting" and a token into it for each of `devices`;
/// returns the server's configuration and the tokens.
fn accounting_server_dir(
    base: &std::path::Path,
    now: SystemTime,
    devices: &[&str],
) -> (AdminServerConfig, Vec<String>) {
    let config = restart_config(child_server_dir(base, now));
    let tokens = config
        .edit_registry(base, |reg| {
            reg.add_group("accounting", "Accounting", None)?;
            devices
                .iter()
                .map(|d| reg.issue_token("accounting", Some(d), Duration::from_secs(600), now))
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap();
    (config, tokens)
}

/// This test binary again, running only `test` as the child server on `base`; returns once
/// the server listens. The child is killed when the handle is dropped.
async fn spawn_child_server(test: &str, base: &std::path::Path) -> tokio::process::Child {
    // Test names in this binary are module paths without the crate's.
    let test = format!("{}::{test}", module_path!().trim_start_matches("it::"));
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", &test, "--nocapture", "--test-threads=1"])
        .env(CHILD_SERVER, base)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        use tokio::io::AsyncBufReadExt;
        let mut line = String::new();
        while lines.read_line(&mut line).await.unwrap() > 0 {
            // libtest's "test NAME ... " may stand before it on the same line.
            if line.trim_end().ends_with(CHILD_READY) {
                return true;
            }
            line.clear();
        }
        false
    })
    .await;
    assert_eq!(ready, Ok(true), "the child server did not start");
    child
}

/// A `/proc/PID/status` figure in KiB (`VmRSS`, `VmHWM`).
fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The walkthrough's path: a device enrolled into "accounting" syncs the accountants'
/// policy; the server is killed (SIGKILL) and started again, then stopped and started again;
/// after each restart the device syncs and its settings files are the same, byte for byte.
/// While the (child-process) server runs, offline registry commands and a second server on
/// the same data directory are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_settings_survive_a_server_crash_and_a_restart() {
    serve_if_child().await;
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    let now = SystemTime::now();
    let (config, tokens) = accounting_server_dir(base, now, &["laptop-7"]);
    let port = config.listen.port();
    let token = &tokens[0];

    // The first server is a separate process, so it can be killed.
    let mut child =
        spawn_child_server("device_settings_survive_a_server_crash_and_a_restart", base).await;

    // While it runs, nobody else may use its data directory.
    let e = config
        .edit_registry(base, |reg| reg.add_group("late", "Late", None))
        .unwrap_err();
    let holder = format!("pid {} (server)", child.id().unwrap());
    assert!(e.to_string().contains(&holder), "{e}");
    let e = try_start_server(&config, base)
        .await
        .err()
        .expect("a second server on the same directory was refused");
    assert!(e.to_string().contains(&holder), "{e}");

    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let laptop = Agent::start(agent(
        base,
        "laptop-7",
        Endpoint::new(addr, "server.test"),
        addr,
        token,
    ))
    .await
    .unwrap();
    syncs_past(&laptop, 0).await;
    let first = settings_files(&base.join("laptop-7"));
    assert_eq!(
        first.keys().collect::<Vec<_>>(),
        ["endpoint.json"],
        "the accountants' policy arrived"
    );
    let effective = laptop.effective("endpoint").unwrap();
    assert_eq!(effective["scan"]["level"], 3, "{effective}");
    assert_eq!(effective["device_control"]["flash_drives"], false);

    // A crash: the server process is killed, not stopped.
    child.start_kill().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(!status.success());
    let mut server: Option<AdminServer> = None;
    for when in ["after a crash", "after a clean stop"] {
        // The second round stops the server the first one started.
        if let Some(s) = server.take() {
            s.shutdown().await;
        }
        laptop
            .wait_for(Duration::from_secs(30), |s| {
                s.core.phase != outpost::agent::protocol::Phase::Ready
            })
            .await
            .unwrap();
        let before = laptop.status().core.syncs;
        server = Some(
            try_start_server(&config, base)
                .await
                .unwrap_or_else(|e| panic!("start {when}: {e}")),
        );
        syncs_past(&laptop, before).await;
        assert_eq!(
            settings_files(&base.join("laptop-7")),
            first,
            "settings files {when}"
        );
        let st = laptop.status().core;
        assert_eq!(
            st.last_error, None,
            "connected again {when}, no stale error"
        );
    }
    laptop.shutdown().await;
    if let Some(s) = server {
        s.shutdown().await;
    }
}

/// A DMZ gateway that knows no revocation list relays a device whose certificate the
/// administrator revoked (`pki revoke` rewrites the CRL in the data directory while the
/// server runs): the server cuts its kept connection and refuses it from then on, relayed
/// or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_device_is_refused_through_a_gateway_without_the_crl() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    let now = SystemTime::now();
    let (ca, gw) = state_and_dmz_gateway(base, now).await;
    let config = dialling_config(0);
    let token = config
        .edit_registry(base, |reg| {
            reg.add_group("lab", "Lab", None)?;
            reg.register_dmz_gateway("dmz-1", gw.local_addr(), vec!["gw.test".into()])?;
            reg.issue_token("lab", Some("behind-gw-1"), Duration::from_secs(600), now)
        })
        .unwrap();
    let server = start_server(&config, base).await;
    let addr = server.local_addr();
    let behind = Agent::start(agent(
        base,
        "behind-gw-1",
        Endpoint::new(gw.local_addr(), "gw.test"),
        addr,
        &token,
    ))
    .await
    .unwrap();
    syncs_past(&behind, 0).await;
    assert_eq!(
        behind.status().core.endpoint.map(|e| e.name),
        Some("gw.test".to_string())
    );

    // The administrator revokes the device's certificate, as `pki revoke` does.
    let agent_dir = base.join("behind-gw-1");
    let chain =
        store::read_certificates(&agent_dir.join(outpost::agent::store::CHAIN_FILE)).unwrap();
    let mut admin_ca = store::load_server_ca(&base.join("state"), Default::default()).unwrap();
    let (kind, _, fresh) = admin_ca.revoke(&chain[0], SystemTime::now()).unwrap();
    assert!(fresh);
    store::save_crl(&mut admin_ca, kind, &base.join("state"), SystemTime::now()).unwrap();

    // Its kept connection through the gateway is cut with NotAuthorized, and the agent stops.
    let stopped = behind
        .wait_for(Duration::from_secs(30), |s| s.stopped.is_some())
        .await;
    let st = behind.status();
    assert!(stopped.is_ok(), "{st:?}");
    assert!(
        st.core
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("NotAuthorized") && e.contains("revoked")),
        "{st:?}"
    );
    behind.shutdown().await;

    // Connecting again through the gateway with the same certificate is refused too.
    let me = outpost::pki::IssuedCert::from_parts(
        chain,
        store::read_private_key_der(&agent_dir.join(outpost::agent::store::KEY_FILE)).unwrap(),
    )
    .unwrap();
    let cfg = outpost::pki::tls::agent_client_config(
        &me,
        ca.server_ca(),
        &outpost::pki::tls::TlsOptions::default(),
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(gw.local_addr())
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(
            rustls::pki_types::ServerName::try_from("gw.test").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let mut conn = tokio_util::codec::Framed::new(tls, outpost::wire::MessageCodec::new());
    use futures_util::{SinkExt, StreamExt};
    use outpost::wire::{Message, messages as m};
    conn.send(Message::from(m::Hello {
        min_version: 1,
        max_version: 1,
        ..Default::default()
    }))
    .await
    .unwrap();
    let mut answer = None;
    for _ in 0..2 {
        answer = tokio::time::timeout(Duration::from_secs(20), conn.next())
            .await
            .unwrap();
        if !matches!(answer, Some(Ok(Message::HelloAck(_)))) {
            break;
        }
    }
    assert!(
        matches!(
            &answer,
            Some(Ok(Message::Refusal(r))) if r.code == m::RefusalCode::NotAuthorized as i32
        ),
        "{answer:?}"
    );
    let refused = server.service().stats().refused.load(Ordering::Relaxed);
    assert!(refused >= 1);
    server.shutdown().await;
    gw.shutdown().await;
}

/// An enrollment-channel connection to `addr` from the loopback address `from` that has
/// said Hello (it may have been refused already: past the caps the answer is a Refusal).
async fn hostile_enrollment(
    cfg: Arc<rustls::ClientConfig>,
    from: [u8; 4],
    addr: SocketAddr,
) -> Option<
    tokio_util::codec::Framed<
        tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        outpost::wire::MessageCodec,
    >,
> {
    use futures_util::{SinkExt, StreamExt};
    use outpost::wire::messages::Hello;
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::from((from, 0))).ok()?;
    let tcp = socket.connect(addr).await.ok()?;
    let name = rustls::pki_types::ServerName::try_from("server.test").unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .ok()?;
    let mut framed = tokio_util::codec::Framed::new(tls, outpost::wire::MessageCodec::new());
    let hello = Hello {
        min_version: 1,
        max_version: 1,
        ..Default::default()
    };
    framed
        .send(outpost::wire::Message::from(hello))
        .await
        .ok()?;
    let _ = tokio::time::timeout(Duration::from_secs(20), framed.next()).await;
    Some(framed)
}

/// Past every limit of the server's unauthenticated entry points at once (60 enrollment
/// connections each sending a 16 MiB frame, 200 holding partial frames from eight hosts, 400
/// silent TCP connections from a ninth), an enrolled device connects and syncs, a new device
/// enrolls (retrying while the enrollment slots are held), and the server process (a child,
/// measured from `/proc`) stays within a bounded memory growth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_every_unauthenticated_limit_devices_are_served_and_memory_stays_bounded() {
    use tokio::io::AsyncWriteExt;
    serve_if_child().await;
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    let now = SystemTime::now();
    let (config, tokens) = accounting_server_dir(base, now, &["laptop-7", "laptop-8"]);
    let port = config.listen.port();
    let child = spawn_child_server(
        "past_every_unauthenticated_limit_devices_are_served_and_memory_stays_bounded",
        base,
    )
    .await;
    let pid = child.id().unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let device =
        |id: &str, token: &str| agent(base, id, Endpoint::new(addr, "server.test"), addr, token);
    // laptop-7 enrolls before anything hostile happens, then stops.
    let laptop = Agent::start(device("laptop-7", &tokens[0])).await.unwrap();
    syncs_past(&laptop, 0).await;
    laptop.shutdown().await;
    let before_kib = proc_kib(pid, "VmRSS");

    let ca = store::read_ca_certificate(&base.join("state/ca.crt")).unwrap();
    let enroll_cfg = outpost::pki::tls::enrollment_client_config(&ca, &Default::default()).unwrap();
    let header = |len: u32| {
        outpost::wire::frame::FrameHeader {
            message_type: 1,
            flags: 0,
            len,
        }
        .to_bytes()
    };
    let chunk = vec![0u8; 1 << 20];
    let mut hostile = Vec::new();
    // 60 frames announcing 16 MiB, each sent whole if the server takes it.
    for i in 0..60u8 {
        let from = [127, 0, 0, 2 + i % 8];
        let Some(mut c) = hostile_enrollment(enroll_cfg.clone(), from, addr).await else {
            continue;
        };
        let s = c.get_mut();
        if s.write_all(&header(16 * 1024 * 1024 - 1)).await.is_ok() {
            for _ in 0..15 {
                if s.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            let _ = s.flush().await;
        }
        hostile.push(c);
    }
    // 200 partial frames under the enrollment limit from eight hosts: past the cap on
    // enrollment connections, each host under its own share.
    for i in 0..200u8 {
        let from = [127, 0, 0, 2 + i % 8];
        let Some(mut c) = hostile_enrollment(enroll_cfg.clone(), from, addr).await else {
            continue;
        };
        let s = c.get_mut();
        let _ = s.write_all(&header(60_000)).await;
        let _ = s.write_all(&chunk[..30_000]).await;
        let _ = s.flush().await;
        hostile.push(c);
    }
    // 400 silent connections from a ninth host, past its handshake share.
    let mut silent = Vec::new();
    for _ in 0..400 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from(([127, 0, 0, 10], 0))).unwrap();
        if let Ok(s) = socket.connect(addr).await {
            silent.push(s);
        }
    }

    // The enrolled device comes back and syncs; a new one enrolls.
    let started = std::time::Instant::now();
    let laptop = Agent::start(device("laptop-7", &tokens[0])).await.unwrap();
    syncs_past(&laptop, 0).await;
    let synced_after = started.elapsed();
    let started = std::time::Instant::now();
    let newcomer = Agent::start(device("laptop-8", &tokens[1])).await.unwrap();
    syncs_past(&newcomer, 0).await;
    let enrolled_after = started.elapsed();
    let peak_kib = proc_kib(pid, "VmHWM");
    let growth_mib = peak_kib.saturating_sub(before_kib) as f64 / 1024.0;
    println!(
        "server memory: {:.1} MiB resident before, peak {:.1} MiB with the hostile connections \
         (+{growth_mib:.1} MiB); the enrolled device synced {:.2} s after starting, the new \
         one {:.2} s",
        before_kib as f64 / 1024.0,
        peak_kib as f64 / 1024.0,
        synced_after.as_secs_f64(),
        enrolled_after.as_secs_f64(),
    );
    // The bound docs/security.md states for the unauthenticated entry points at their
    // limits; without the enrollment frame limit the 16 MiB frames alone take ~1 GB.
    assert!(
        growth_mib < 64.0,
        "the server grew by {growth_mib:.1} MiB under hostile connections"
    );
    laptop.shutdown().await;
    newcomer.shutdown().await;
    drop((hostile, silent, child));
}

/// Past a DMZ gateway's handshake pool (1,500 silent connections from six hosts, each under
/// its share, and 200 ClientHellos stalled halfway from a seventh), a device connects
/// through the gateway and syncs, and the gateway process (a child, started from its
/// configuration file as `connection_gateway` runs it) stays within a bounded memory growth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_gateway_handshake_pool_a_device_is_relayed_and_memory_stays_bounded() {
    use tokio::io::AsyncWriteExt;
    serve_if_child().await;
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    let now = SystemTime::now();
    let (config, tokens) = accounting_server_dir(base, now, &["behind-gw-1"]);
    let ca = store::load_server_ca(&base.join("state"), Default::default()).unwrap();
    let gw_cert = ca.issue_gateway(&["gw.test".into()], &[], now).unwrap();
    store::write_public(&base.join("gw.chain.pem"), &gw_cert.chain_pem()).unwrap();
    store::write_private_key(&base.join("gw.key"), &gw_cert.key_pem()).unwrap();
    std::fs::write(
        base.join(CHILD_GATEWAY),
        r#"
        gateway_id = "dmz-1"
        mode = "dmz"
        listen = "127.0.0.1:0"
        [tls]
        cert = "gw.chain.pem"
        key = "gw.key"
        server_ca = "state/ca.crt"
        "#,
    )
    .unwrap();
    let child = spawn_child_server(
        "past_the_gateway_handshake_pool_a_device_is_relayed_and_memory_stays_bounded",
        base,
    )
    .await;
    let pid = child.id().unwrap();
    let gw_port: u16 = std::fs::read_to_string(base.join("gateway.port"))
        .unwrap()
        .parse()
        .unwrap();
    let gw_addr = SocketAddr::from(([127, 0, 0, 1], gw_port));
    config
        .edit_registry(base, |reg| {
            reg.register_dmz_gateway("dmz-1", gw_addr, vec!["gw.test".into()])
        })
        .unwrap();
    let server = start_server(&config, base).await;
    let addr = server.local_addr();
    let device = || {
        agent(
            base,
            "behind-gw-1",
            Endpoint::new(gw_addr, "gw.test"),
            addr,
            &tokens[0],
        )
    };
    let behind = Agent::start(device()).await.unwrap();
    syncs_past(&behind, 0).await;
    behind.shutdown().await;
    let before_kib = proc_kib(pid, "VmRSS");

    let mut hostile = Vec::new();
    for i in 0..1500u32 {
        let from = [127, 0, 0, 2 + (i % 6) as u8];
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((from, 0))).unwrap();
        if let Ok(s) = socket.connect(gw_addr).await {
            hostile.push(s);
        }
    }
    for _ in 0..200 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from(([127, 0, 0, 8], 0))).unwrap();
        if let Ok(mut s) = socket.connect(gw_addr).await {
            // A TLS record header announcing a ClientHello, and two bytes of it.
            let _ = s
                .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
                .await;
            hostile.push(s);
        }
    }

    let started = std::time::Instant::now();
    let behind = Agent::start(device()).await.unwrap();
    syncs_past(&behind, 0).await;
    let synced_after = started.elapsed();
    assert_eq!(
        behind.status().core.endpoint.map(|e| e.name),
        Some("gw.test".to_string()),
        "synced through the gateway"
    );
    let peak_kib = proc_kib(pid, "VmHWM");
    let growth_mib = peak_kib.saturating_sub(before_kib) as f64 / 1024.0;
    println!(
        "gateway memory: {:.1} MiB resident before, peak {:.1} MiB with {} hostile connections \
         (+{growth_mib:.1} MiB); the device synced through it {:.2} s after starting",
        before_kib as f64 / 1024.0,
        peak_kib as f64 / 1024.0,
        hostile.len(),
        synced_after.as_secs_f64()
    );
    assert!(
        growth_mib < 64.0,
        "the gateway grew by {growth_mib:.1} MiB under hostile connections"
    );
    behind.shutdown().await;
    server.shutdown().await;
    drop((hostile, child));
}

/// The agent certificate an agent stored in its state directory, if any.
fn stored_certificate(dir: &std::path::Path) -> Option<Vec<u8>> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let pem = std::fs::read(dir.join(outpost::agent::store::CHAIN_FILE)).ok()?;
    CertificateDer::pem_slice_iter(&pem)
        .next()?
        .ok()
        .map(|c| c.to_vec())
}

/// A server process killed during an enrollment storm of 64 agents: every agent that
/// received a certificate is in the database, every device row came with its token used
/// up (no half-written enrollment), and after a restart the others enroll. On SQLite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_during_an_enrollment_storm_loses_no_enrollment() {
    serve_if_child().await;
    enrollment_storm(
        "a_server_killed_during_an_enrollment_storm_loses_no_enrollment",
        None,
    )
    .await;
}

/// [`a_server_killed_during_an_enrollment_storm_loses_no_enrollment`] on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_postgresql_killed_during_an_enrollment_storm_loses_no_enrollment() {
    serve_if_child().await;
    let Some(cluster) = postgres::Cluster::start() else {
        return;
    };
    enrollment_storm(
        "a_server_on_postgresql_killed_during_an_enrollment_storm_loses_no_enrollment",
        Some(cluster.database("storm")),
    )
    .await;
}

/// The storm: `test` is the test that runs it (its child process is the server), `url` the
/// database (SQLite in the data directory without it).
async fn enrollment_storm(test: &str, url: Option<String>) {
    const AGENTS: usize = 64;
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    let now = SystemTime::now();
    if let Some(url) = &url {
        std::fs::write(base.join(CHILD_DATABASE), url).unwrap();
    }
    let ids: Vec<String> = (0..AGENTS).map(|i| format!("storm-{i:02}")).collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let port = child_server_dir(base, now);
    let config = child_config(base, port);
    let tokens = config
        .edit_registry(base, |reg| {
            reg.add_group("accounting", "Accounting", None)?;
            id_refs
                .iter()
                .map(|d| reg.issue_token("accounting", Some(d), Duration::from_secs(600), now))
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap();
    let mut child = spawn_child_server(test, base).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], config.listen.port()));

    // Every agent at once; each retries while the server is away.
    let mut agents = tokio::task::JoinSet::new();
    for (id, token) in ids.iter().zip(&tokens) {
        let mut c = agent(base, id, Endpoint::new(addr, "server.test"), addr, token);
        c.enrollment.retry_for_ms = 120_000;
        agents.spawn(Agent::start(c));
    }
    // Kill the server once some, not all, have their certificate.
    let count = || {
        ids.iter()
            .filter(|id| stored_certificate(&base.join(id)).is_some())
            .count()
    };
    let mut waited = 0;
    while count() < AGENTS / 8 && waited < 6000 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        waited += 5;
    }
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    // Answers already received are written by the agents in a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before: Vec<(String, Vec<u8>)> = ids
        .iter()
        .filter_map(|id| Some((id.clone(), stored_certificate(&base.join(id))?)))
        .collect();
    assert!(
        !before.is_empty() && before.len() < AGENTS,
        "killed mid-storm: {} of {AGENTS} had a certificate",
        before.len()
    );

    // The database as the killed server left it.
    let db = config.database(base);
    let snapshot = outpost::server::Storage::open(&db, "server-1")
        .unwrap()
        .load()
        .unwrap();
    let reg = &snapshot.registry;
    for (id, der) in &before {
        let sha = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        let mut fp = [0u8; 32];
        fp.copy_from_slice(sha.as_ref());
        assert_eq!(
            reg.device_by_fingerprint(&fp).map(|(d, _)| d),
            Some(id.as_str()),
            "{id} received a certificate the database does not know"
        );
    }
    for (id, d) in reg.devices() {
        assert!(
            !d.cert_sha256.is_empty() && !d.cert_serial.is_empty() && d.group == "accounting",
            "{id}: {d:?}"
        );
    }
    assert_eq!(
        reg.devices().len() + reg.pending_tokens(),
        AGENTS,
        "each enrollment recorded its device and used its token up together"
    );
    let recorded = reg.devices().len();
    println!(
        "killed with {} certificate(s) received, {recorded} enrollment(s) committed",
        before.len()
    );

    // Restarted: the rest enroll; nobody who had a certificate got another.
    let _child = spawn_child_server(test, base).await;
    let mut enrolled = 0;
    while let Some(a) = agents.join_next().await {
        let a = a
            .unwrap()
            .unwrap_or_else(|e| panic!("an agent did not enroll: {e}"));
        assert!(a.enrolled());
        enrolled += 1;
        a.shutdown().await;
    }
    assert_eq!(enrolled, AGENTS);
    for (id, der) in &before {
        assert_eq!(
            stored_certificate(&base.join(id)).as_ref(),
            Some(der),
            "{id} kept its certificate"
        );
    }
    let reg = config.load_registry(base).unwrap();
    assert_eq!(reg.devices().len(), AGENTS);
    assert_eq!(reg.pending_tokens(), 0);
}
