//! A Network Agent renews its certificate over its authenticated connection before it
//! expires: a real server and a real agent on loopback, with the agent's renewal schedule on
//! a virtual clock moved through its certificate's 397-day life.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use futures_util::{SinkExt, StreamExt};
use outpost::agent::{Agent, AgentConfig, Endpoint};
use outpost::server::AdminServer;

use crate::common;

const DAY: u64 = 86_400;

/// A server on `base` with a CA for `localhost`, its device port on loopback.
async fn start_server(base: &Path) -> AdminServer {
    common::localhost_ca(base);
    AdminServer::start(
        common::server_config("127.0.0.1:0", "", ""),
        base,
        None,
        None,
    )
    .await
    .unwrap()
}

/// The agent's configuration: keepalives every 100 ms, so its loop looks at the (virtual)
/// renewal clock often.
fn agent_config(base: &Path, server: &AdminServer, token: &str) -> AgentConfig {
    let addr = server.local_addr();
    let mut c = AgentConfig::new("laptop-1", base.join("laptop-1"));
    c.endpoints = vec![Endpoint::new(addr, "localhost")];
    c.enrollment.server = Some(Endpoint::new(addr, "localhost"));
    c.enrollment.server_ca = base.join("state/ca.crt");
    c.enrollment.token = token.into();
    c.distribution.enabled = false;
    c.keepalive_ms = 100;
    c
}

/// A clock `ahead` seconds past the system's.
fn virtual_clock(ahead: Arc<AtomicU64>) -> outpost::agent::renewal::Clock {
    Arc::new(move || SystemTime::now() + Duration::from_secs(ahead.load(Ordering::Relaxed)))
}

/// Moves `ahead` so that the virtual clock reads `at`.
fn set_clock(ahead: &AtomicU64, at: SystemTime) {
    let secs = at
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        .as_secs();
    ahead.store(secs, Ordering::Relaxed);
}

fn sha256_hex(der: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The SHA-256 of the first certificate in a chain file.
fn file_sha256(path: &Path) -> String {
    let chain = outpost::pki::store::read_certificates(path).unwrap();
    sha256_hex(&chain[0])
}

async fn wait(agent: &Agent, what: &str, pred: impl FnMut(&outpost::agent::AgentStatus) -> bool) {
    agent
        .wait_for(Duration::from_secs(30), pred)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
}

/// A server, and an agent enrolled with it whose renewal clock runs `ahead` seconds past the
/// system's, after its first sync; with the agent's configuration.
async fn enrolled_agent(base: &Path) -> (AdminServer, Agent, Arc<AtomicU64>, AgentConfig) {
    let server = start_server(base).await;
    let token = server
        .service()
        .update_registry(|r| {
            r.issue_token(
                "root",
                Some("laptop-1"),
                Duration::from_secs(600),
                SystemTime::now(),
            )
        })
        .await
        .unwrap();
    let ahead = Arc::new(AtomicU64::new(0));
    let config = agent_config(base, &server, &token);
    let agent = Agent::start_with_clock(config.clone(), virtual_clock(ahead.clone()))
        .await
        .unwrap();
    wait(&agent, "first sync", |s| s.core.syncs > 0).await;
    (server, agent, ahead, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_renews_its_certificate_before_it_expires() {
    use outpost::agent::store::{CHAIN_FILE, RESERVE_CHAIN_FILE, RESERVE_KEY_FILE};
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    let (server, agent, ahead, config) = enrolled_agent(base).await;
    let data = config.data_dir.clone();
    let first = agent.status().renewal.active;
    let first_sha = file_sha256(&data.join(CHAIN_FILE));
    let end = first.not_after;
    assert!(
        end > SystemTime::now() + Duration::from_secs(396 * DAY),
        "a full-length certificate"
    );
    // A reserve issued within the same second as the enrollment would end at the same
    // second, and succeed nothing: let the server's clock pass one.
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    // 300 days on: nothing yet.
    set_clock(&ahead, end - Duration::from_secs(97 * DAY));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(agent.status().renewal.reserve, None);

    // 89 days before the end: the reserve is asked for, issued and stored.
    set_clock(&ahead, end - Duration::from_secs(89 * DAY));
    wait(&agent, "reserve", |s| s.renewal.reserve.is_some()).await;
    let reserve = agent.status().renewal.reserve.unwrap();
    assert!(
        reserve.not_after > end,
        "the reserve outlives the certificate"
    );
    assert!(data.join(RESERVE_KEY_FILE).exists());
    let reserve_sha = file_sha256(&data.join(RESERVE_CHAIN_FILE));
    server.service().with_registry(|r| {
        let d = r.device("laptop-1").unwrap();
        assert_eq!(d.cert_sha256, first_sha, "still presenting the first");
        assert_eq!(
            d.reserve_cert.as_ref().map(|rc| rc.sha256.as_str()),
            Some(reserve_sha.as_str()),
            "the server knows the reserve before the agent holds it"
        );
    });
    assert_eq!(agent.status().renewal.switches, 0);

    // Half a day before the end: switched, reconnected with the reserve, still served.
    let connections = agent.status().core.connections;
    let syncs = agent.status().core.syncs;
    set_clock(&ahead, end - Duration::from_secs(DAY / 2));
    wait(&agent, "switch", |s| {
        s.renewal.switches == 1 && s.core.connections > connections && s.core.syncs > syncs
    })
    .await;
    assert_eq!(agent.status().renewal.active, reserve);
    assert_eq!(agent.status().renewal.reserve, None);
    assert_eq!(file_sha256(&data.join(CHAIN_FILE)), reserve_sha);
    assert!(!data.join(RESERVE_CHAIN_FILE).exists() && !data.join(RESERVE_KEY_FILE).exists());
    server.service().with_registry(|r| {
        let d = r.device("laptop-1").unwrap();
        assert_eq!(d.cert_sha256, reserve_sha, "the reserve is the current one");
        assert!(d.reserve_cert.is_none());
    });
    agent.shutdown().await;

    // A restart (the clock where it was) loads the renewed identity, asks nothing, syncs.
    let agent = Agent::start_with_clock(config, virtual_clock(ahead.clone()))
        .await
        .unwrap();
    assert!(
        !agent.enrolled(),
        "no enrollment: the renewed identity is used"
    );
    wait(&agent, "sync after restart", |s| s.core.syncs > 0).await;
    assert_eq!(agent.status().renewal.active, reserve);
    agent.shutdown().await;
    server.shutdown().await;
}

/// The certificate the agent presented before its switch is refused by the server once the
/// switch is recorded: a connection with it gets `NotAuthorized`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_switched_from_is_refused() {
    use outpost::agent::store::{CHAIN_FILE, KEY_FILE};
    use outpost::wire::Message;
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    let (server, agent, ahead, config) = enrolled_agent(base).await;
    let data = config.data_dir.clone();
    let old_chain = std::fs::read(data.join(CHAIN_FILE)).unwrap();
    let old_key = std::fs::read(data.join(KEY_FILE)).unwrap();
    let end = agent.status().renewal.active.not_after;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    set_clock(&ahead, end - Duration::from_secs(30 * DAY));
    wait(&agent, "reserve", |s| s.renewal.reserve.is_some()).await;
    set_clock(&ahead, end - Duration::from_secs(DAY / 4));
    wait(&agent, "switch", |s| {
        s.renewal.switches == 1 && s.core.syncs > 1
    })
    .await;
    agent.shutdown().await;

    let old_dir = base.join("old");
    std::fs::create_dir_all(&old_dir).unwrap();
    std::fs::write(old_dir.join("c.pem"), old_chain).unwrap();
    outpost::pki::store::write_private_key(
        &old_dir.join("k.pem"),
        &String::from_utf8(old_key).unwrap(),
    )
    .unwrap();
    let old = outpost::pki::IssuedCert::from_parts(
        outpost::pki::store::read_certificates(&old_dir.join("c.pem")).unwrap(),
        outpost::pki::store::read_private_key_der(&old_dir.join("k.pem")).unwrap(),
    )
    .unwrap();
    let ca = outpost::pki::store::read_ca_certificate(&base.join("state/ca.crt")).unwrap();
    let tls = outpost::pki::tls::agent_client_config(
        &old,
        &ca,
        &outpost::pki::tls::TlsOptions::default(),
    )
    .unwrap();
    let mut conn = outpost::agent::identity::dial(
        tls,
        &Endpoint::new(server.local_addr(), "localhost"),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    conn.send(outpost::agent::protocol::hello("laptop-1"))
        .await
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match conn.next().await {
                Some(Ok(Message::HelloAck(_))) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("an answer");
    match answer {
        Some(Ok(Message::Refusal(r))) => {
            assert!(r.reason.contains("not enrolled"), "{}", r.reason)
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    server.shutdown().await;
}
