//! An update published again under the same id while the agent is still obtaining the old
//! content: the agent drops the old attempt and ends holding the new content. Loopback TLS
//! against the real device service; every wait is bounded.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use outpost_agent::{Agent, AgentConfig, Endpoint};
use outpost_gateway::{DeviceListener, ListenerLimits, TlsMaterial};
use outpost_pki::{PkiConfig, ServerCa};
use outpost_server::{
    AdminService, DeviceContext, MemoryObjects, ObjectStore, Registry, ServiceConfig, SyncSource,
};
use outpost_wire::messages::{SyncRequest, SyncResponse, UpdateAnnouncement};

const SERVER: &str = "server.test";
const ID: &str = "pkg-1";

/// Announces the current update and serves its bytes, or nothing while `gate` is shut.
#[derive(Default)]
struct Published {
    current: Mutex<Option<UpdateAnnouncement>>,
    objects: MemoryObjects,
    open: Mutex<bool>,
}

impl SyncSource for Published {
    fn sync(&self, _: &DeviceContext, _: &SyncRequest) -> SyncResponse {
        SyncResponse {
            next_sync_secs: 900,
            updates: self.current.lock().unwrap().iter().cloned().collect(),
            ..Default::default()
        }
    }
}

impl ObjectStore for Published {
    fn read(&self, object_id: &str, offset: u64, len: u32) -> Option<(Bytes, u64)> {
        if !*self.open.lock().unwrap() {
            return None;
        }
        self.objects.read(object_id, offset, len)
    }
}

fn content(version: u8) -> Bytes {
    outpost_testkit::payload(u64::from(version), 3 << 20).into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_republished_while_being_obtained_ends_as_the_new_content() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let ca = Arc::new(ServerCa::create(PkiConfig::default(), now).unwrap());
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, ca.server_ca().to_pem()).unwrap();
    let mut reg = Registry::new("server-1").unwrap();
    let token = reg
        .issue_token("root", Some("pc-1"), Duration::from_secs(600), now)
        .unwrap();
    let published = Arc::new(Published::default());
    let service = AdminService::new(
        ServiceConfig::new(),
        ca.clone(),
        outpost_server::Storage::create(
            &outpost_server::DatabaseConfig::sqlite_in(dir.path()),
            &reg,
        )
        .unwrap(),
        reg,
        published.clone(),
        published.clone(),
    );
    let (tx, _dispatch) = service.dispatcher(16);
    let listener = DeviceListener::start(
        "127.0.0.1:0".parse().unwrap(),
        &TlsMaterial::new(
            ca.issue_server("server-1", &[SERVER.into()], &[], now)
                .unwrap(),
            ca.server_ca().clone(),
        ),
        &ListenerLimits::default(),
        outpost_gateway::TunnelPolicy::Refuse,
        tx,
    )
    .await
    .unwrap();
    let addr = listener.local_addr();

    // Version 1 is announced, but its bytes cannot be had yet: the agent keeps trying.
    let v1 = published.objects.publish(ID, "package", 1, content(1));
    *published.current.lock().unwrap() = Some(v1);
    let mut cfg = AgentConfig::new("pc-1", dir.path().join("pc-1"));
    cfg.endpoints = vec![Endpoint::new(addr, SERVER)];
    cfg.enrollment.server = Some(Endpoint::new(addr, SERVER));
    cfg.enrollment.server_ca = ca_file;
    cfg.enrollment.token = token;
    cfg.backoff.initial_ms = 50;
    cfg.backoff.max_ms = 300;
    cfg.distribution.unicast_bind = "127.0.0.1:0".parse().unwrap();
    let agent = Agent::start(cfg).await.unwrap();
    let progress = |agent: &outpost_agent::Agent| {
        agent
            .distribution()
            .and_then(|d| d.updates.get(ID).cloned())
    };
    outpost_testkit::wait_until(
        "a failed attempt at version 1",
        Duration::from_secs(30),
        || progress(&agent).is_some_and(|u| u.last_error.is_some()),
    )
    .await;

    // Version 2 replaces it under the same id; only version 2's bytes are served from now on.
    let new = content(2);
    let v2 = published.objects.publish(ID, "package", 2, new.clone());
    *published.current.lock().unwrap() = Some(v2);
    *published.open.lock().unwrap() = true;
    for _ in 0..200 {
        if service.online().iter().any(|d| d == "pc-1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(service.push_all(&["pc-1"], "republished", 7), 1);

    let path = dir.path().join("pc-1/updates").join(ID);
    outpost_testkit::wait_until("version 2 held", Duration::from_secs(60), || {
        progress(&agent).is_some_and(|u| u.via.is_some())
            && std::fs::read(&path).is_ok_and(|b| b == new)
    })
    .await;
    assert!(progress(&agent).is_some_and(|u| u.size == new.len() as u64));
    agent.shutdown().await;
}
