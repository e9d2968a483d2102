//! The device service end to end over loopback TLS: enrollment, sync, events, chunks and
//! push, directly and through a DMZ gateway, and a restart with the registry kept.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use outpost_gateway::{
    ConnectorConfig, DeviceConnection, DeviceListener, DmzGatewayEntry, Gateway, GatewayConfig,
    ListenerLimits, ServerConnector, TlsMaterial,
};
use outpost_pki::tls::{TlsOptions, agent_client_config, enrollment_client_config};
use outpost_pki::{IssuedCert, PkiConfig, ServerCa};
use outpost_server::{
    AdminService, DeviceContext, MemoryObjects, Registry, ServiceConfig, SyncSource,
};
use outpost_wire::messages::*;
use outpost_wire::{Message, MessageCodec};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_util::codec::Framed;

const SERVER: &str = "server.test";
const GATEWAY: &str = "gateway.test";

/// Answers with the device's group as a settings document.
struct GroupSettings;
impl SyncSource for GroupSettings {
    fn sync(&self, d: &DeviceContext, _: &SyncRequest) -> SyncResponse {
        let json = format!("{{\"group\":\"{}\",\"via\":\"{}\"}}", d.group, d.via);
        SyncResponse {
            settings: vec![AppSettings {
                application: "agent".into(),
                version: 1,
                json: json.into(),
            }],
            next_sync_secs: 900,
            ..Default::default()
        }
    }
}

type Conn = Framed<tokio_rustls::client::TlsStream<TcpStream>, MessageCodec>;

async fn dial(cfg: Arc<rustls::ClientConfig>, addr: std::net::SocketAddr, name: &str) -> Conn {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = TlsConnector::from(cfg)
        .connect(ServerName::try_from(name.to_string()).unwrap(), tcp)
        .await
        .unwrap();
    Framed::new(tls, MessageCodec::new())
}

async fn call(conn: &mut Conn, m: impl Into<Message>) -> Message {
    conn.send(m.into()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), conn.next())
        .await
        .expect("answer in time")
        .expect("open")
        .expect("valid")
}

async fn hello(conn: &mut Conn, device: &str) {
    let h = Hello {
        min_version: 1,
        max_version: 1,
        role: Role::Agent as i32,
        node_id: device.into(),
        software: "test".into(),
    };
    assert!(matches!(call(conn, h).await, Message::HelloAck(a) if a.version == 1));
}

/// Enrolls `device` with `token` the way an agent does: its own key, a CSR, the enrollment
/// channel.
async fn enroll(
    ca: &ServerCa,
    addr: std::net::SocketAddr,
    device: &str,
    token: &str,
) -> Result<IssuedCert, Refusal> {
    let cfg = enrollment_client_config(ca.server_ca(), &TlsOptions::default()).unwrap();
    let mut conn = dial(cfg, addr, SERVER).await;
    hello(&mut conn, device).await;
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::new(vec![])
        .unwrap()
        .serialize_request(&key)
        .unwrap();
    let req = EnrollRequest {
        device_id: device.into(),
        csr_der: csr.der().to_vec().into(),
        enrollment_token: token.into(),
        group_hint: String::new(),
    };
    match call(&mut conn, req).await {
        Message::EnrollResponse(r) => {
            let chain = vec![
                CertificateDer::from(r.certificate_der.to_vec()),
                CertificateDer::from(r.ca_der.to_vec()),
            ];
            Ok(
                IssuedCert::from_parts(chain, PrivatePkcs8KeyDer::from(key.serialize_der()))
                    .unwrap(),
            )
        }
        Message::Refusal(r) => Err(r),
        other => panic!("unexpected {other:?}"),
    }
}

struct Server {
    service: Arc<AdminService>,
    listener: outpost_gateway::DeviceListener,
    tx: mpsc::Sender<DeviceConnection>,
}

async fn start_server(
    ca: &Arc<ServerCa>,
    registry: Registry,
    path: &std::path::Path,
    objects: Arc<MemoryObjects>,
) -> Server {
    let dir = path.parent().unwrap();
    start_server_with(ca, registry, dir, ServiceConfig::new(), objects).await
}

/// The database in `dir`, holding `registry` if it was empty.
fn storage(dir: &std::path::Path, registry: &Registry) -> outpost_server::Storage {
    let db = outpost_server::DatabaseConfig::sqlite_in(dir);
    let storage = outpost_server::Storage::open(&db, &registry.instance_id).unwrap();
    if storage.counts().unwrap().devices == 0 {
        storage.import_registry(registry).unwrap();
    }
    storage
}

/// The registry the database in `dir` holds.
fn stored_registry(dir: &std::path::Path) -> Registry {
    let db = outpost_server::DatabaseConfig::sqlite_in(dir);
    outpost_server::Storage::open(&db, "server-1")
        .unwrap()
        .load()
        .unwrap()
        .registry
}

async fn start_server_with(
    ca: &Arc<ServerCa>,
    registry: Registry,
    dir: &std::path::Path,
    config: ServiceConfig,
    objects: Arc<MemoryObjects>,
) -> Server {
    let service = AdminService::new(
        config,
        ca.clone(),
        storage(dir, &registry),
        registry,
        Arc::new(GroupSettings),
        objects,
    );
    let (tx, _dispatch) = service.dispatcher(64);
    let id = ca
        .issue_server("server-1", &[SERVER.to_string()], &[], SystemTime::now())
        .unwrap();
    let listener = DeviceListener::start(
        "127.0.0.1:0".parse().unwrap(),
        &TlsMaterial::new(id, ca.server_ca().clone()),
        &ListenerLimits::default(),
        outpost_gateway::TunnelPolicy::AnyGateway,
        tx.clone(),
    )
    .await
    .unwrap();
    Server {
        service,
        listener,
        tx,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_sync_fetch_and_push_directly_and_through_a_dmz_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.json");
    let now = SystemTime::now();
    let ca = Arc::new(ServerCa::create(PkiConfig::default(), now).unwrap());
    let mut reg = Registry::new("server-1").unwrap();
    reg.add_group("branch", "Branch office", None).unwrap();
    let t1 = reg
        .issue_token("branch", Some("laptop-1"), Duration::from_secs(600), now)
        .unwrap();
    let t2 = reg
        .issue_token("root", None, Duration::from_secs(600), now)
        .unwrap();
    let objects = Arc::new(MemoryObjects::default());
    let update: Bytes = (0..3_000_000u32)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    let ann = objects.publish("update-1", "signatures", 7, update.clone());
    let server = start_server(&ca, reg, &path, objects).await;
    let addr = server.listener.local_addr();

    // Enrollment: the right token, once; a used token is refused.
    let cert = enroll(&ca, addr, "laptop-1", &t1).await.expect("enrolled");
    let again = enroll(&ca, addr, "laptop-2", &t1).await.unwrap_err();
    assert_eq!(again.code, RefusalCode::BadEnrollmentToken as i32);
    assert_eq!(server.service.stats().enrolled.load(Ordering::Relaxed), 1);

    // Sync directly: identity comes from the certificate.
    let agent_cfg = agent_client_config(&cert, ca.server_ca(), &TlsOptions::default()).unwrap();
    let mut conn = dial(agent_cfg.clone(), addr, SERVER).await;
    hello(&mut conn, "laptop-1").await;
    let Message::SyncResponse(s) = call(
        &mut conn,
        SyncRequest {
            device_id: "laptop-1".into(),
            ..Default::default()
        },
    )
    .await
    else {
        panic!("expected SyncResponse");
    };
    assert_eq!(s.next_sync_secs, 900);
    assert_eq!(
        &s.settings[0].json[..],
        br#"{"group":"branch","via":"direct"}"#
    );
    // Claiming to be someone else is refused.
    let lie = call(
        &mut conn,
        SyncRequest {
            device_id: "laptop-9".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(matches!(lie, Message::Refusal(r) if r.code == RefusalCode::NotAuthorized as i32));

    // Chunks, byte-exact and hash-checked.
    let mut conn = dial(agent_cfg.clone(), addr, SERVER).await;
    hello(&mut conn, "laptop-1").await;
    let mut got = Vec::new();
    for _ in 0..100 {
        let req = ChunkRequest {
            object_id: "update-1".into(),
            offset: got.len() as u64,
            length: 1 << 20,
        };
        let Message::ChunkResponse(c) = call(&mut conn, req).await else {
            panic!("expected a chunk")
        };
        got.extend_from_slice(&c.data);
        if got.len() as u64 == c.total_size {
            break;
        }
    }
    assert_eq!(got, update);
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &got);
    assert_eq!(digest.as_ref(), &ann.sha256[..]);
    let missing = call(
        &mut conn,
        ChunkRequest {
            object_id: "nope".into(),
            offset: 0,
            length: 10,
        },
    )
    .await;
    assert!(matches!(missing, Message::Refusal(r) if r.code == RefusalCode::NotFound as i32));

    // Push over the kept connection: the one the device syncs on, not the chunk one.
    let mut kept = dial(agent_cfg.clone(), addr, SERVER).await;
    hello(&mut kept, "laptop-1").await;
    assert!(matches!(
        call(&mut kept, SyncRequest::default()).await,
        Message::SyncResponse(_)
    ));
    for _ in 0..500 {
        if server.service.online().contains(&"laptop-1".to_string()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        server
            .service
            .push_sync_now("laptop-1", "policy changed", 42)
    );
    let pushed = tokio::time::timeout(Duration::from_secs(10), kept.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        pushed,
        Message::from(SyncNow {
            reason: "policy changed".into(),
            nonce: 42
        })
    );
    assert!(!server.service.push_sync_now("nobody", "x", 1));

    // Through a DMZ gateway, the same device is the same device.
    let gw_id = ca.issue_gateway(&[GATEWAY.to_string()], &[], now).unwrap();
    let gw = Gateway::start(
        GatewayConfig::dmz("dmz-1", "127.0.0.1:0".parse().unwrap()),
        TlsMaterial::new(gw_id, ca.server_ca().clone()),
    )
    .await
    .unwrap();
    let mut cc = ConnectorConfig::default();
    cc.gateways = vec![DmzGatewayEntry::new("dmz-1", gw.local_addr(), GATEWAY)];
    let server_id = ca
        .issue_server("server-1", &[SERVER.to_string()], &[], now)
        .unwrap();
    let connector = ServerConnector::start(
        cc,
        &TlsMaterial::new(server_id, ca.server_ca().clone()),
        server.tx.clone(),
    )
    .unwrap();
    for _ in 0..500 {
        if gw.stats().signal_sessions == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut via_gw = dial(agent_cfg.clone(), gw.local_addr(), GATEWAY).await;
    hello(&mut via_gw, "laptop-1").await;
    let Message::SyncResponse(s) = call(&mut via_gw, SyncRequest::default()).await else {
        panic!("expected SyncResponse")
    };
    assert_eq!(
        &s.settings[0].json[..],
        br#"{"group":"branch","via":"DMZ gateway dmz-1"}"#
    );

    // A certificate from the right CA that never enrolled is refused.
    let stranger = ca.issue_agent("stranger", now).unwrap();
    let cfg = agent_client_config(&stranger, ca.server_ca(), &TlsOptions::default()).unwrap();
    let mut conn = dial(cfg, addr, SERVER).await;
    conn.send(Message::from(Hello {
        min_version: 1,
        max_version: 1,
        ..Default::default()
    }))
    .await
    .unwrap();
    let _ack = conn.next().await;
    let refused = conn.next().await.unwrap().unwrap();
    assert!(matches!(refused, Message::Refusal(r) if r.code == RefusalCode::NotAuthorized as i32));

    // The enrollment channel serves nothing else.
    let cfg = enrollment_client_config(ca.server_ca(), &TlsOptions::default()).unwrap();
    let mut conn = dial(cfg, addr, SERVER).await;
    hello(&mut conn, "x").await;
    let r = call(&mut conn, SyncRequest::default()).await;
    assert!(matches!(r, Message::Refusal(r) if r.code == RefusalCode::ProtocolViolation as i32));

    // A second token is still usable; then a restart keeps everything.
    enroll(&ca, addr, "desktop-1", &t2).await.expect("enrolled");
    drop((via_gw, kept, conn));
    connector.shutdown().await;
    gw.shutdown().await;
    server.listener.shutdown().await;
    drop(server.service);

    let reg = stored_registry(path.parent().unwrap());
    assert_eq!(reg.devices().len(), 2);
    assert_eq!(reg.device("laptop-1").unwrap().group, "branch");
    let server = start_server(&ca, reg, &path, Arc::new(MemoryObjects::default())).await;
    let mut conn = dial(agent_cfg, server.listener.local_addr(), SERVER).await;
    hello(&mut conn, "laptop-1").await;
    let Message::SyncResponse(s) = call(&mut conn, SyncRequest::default()).await else {
        panic!("expected SyncResponse")
    };
    assert_eq!(
        &s.settings[0].json[..],
        br#"{"group":"branch","via":"direct"}"#
    );
    assert!(matches!(server.service.registry().device("desktop-1"), Some(d) if d.group == "root"));
}

/// A frame header announcing `len` payload bytes (message type 1).
fn frame_header(len: u32) -> Vec<u8> {
    let mut h = vec![b'O', b'P', 1, 0, 0, 1];
    h.extend_from_slice(&len.to_be_bytes());
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_enrollment_channel_costs_little_before_its_peer_is_known() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let ca = Arc::new(ServerCa::create(PkiConfig::default(), now).unwrap());
    let mut reg = Registry::new("server-1").unwrap();
    reg.add_group("lab", "Lab", None).unwrap();
    let t1 = reg
        .issue_token("lab", Some("laptop-1"), Duration::from_secs(600), now)
        .unwrap();
    let t2 = reg
        .issue_token("lab", Some("laptop-2"), Duration::from_secs(600), now)
        .unwrap();
    let mut config = ServiceConfig::new();
    config.max_enrolling = 16;
    config.max_enrolling_per_source = 8;
    config.enroll_failures_per_source = 3;
    // Longer than any wait below: a prompt close is the server's decision, not a deadline.
    config.hello_timeout = Duration::from_secs(60);
    let server = start_server_with(
        &ca,
        reg,
        dir.path(),
        config,
        Arc::new(MemoryObjects::default()),
    )
    .await;
    let addr = server.listener.local_addr();
    let cert = enroll(&ca, addr, "laptop-1", &t1).await.expect("enrolled");
    let enroll_cfg = enrollment_client_config(ca.server_ca(), &TlsOptions::default()).unwrap();

    // A frame larger than the enrollment limit is refused from its header, at once.
    let mut big = dial(enroll_cfg.clone(), addr, SERVER).await;
    hello(&mut big, "hostile").await;
    big.get_mut()
        .write_all(&frame_header(16 * 1024 * 1024 - 1))
        .await
        .unwrap();
    big.get_mut().flush().await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(20), big.next()).await;
    assert!(
        matches!(
            closed,
            Ok(None | Some(Err(_)) | Some(Ok(Message::Refusal(_))))
        ),
        "refused at the header: {closed:?}"
    );

    // Connections up to the source's share may hold a partial frame below the limit; past it
    // they are refused at once.
    let mut stalled = Vec::new();
    for _ in 0..8 {
        let mut c = dial(enroll_cfg.clone(), addr, SERVER).await;
        hello(&mut c, "hostile").await;
        c.get_mut().write_all(&frame_header(60_000)).await.unwrap();
        c.get_mut().write_all(&[0u8; 30_000]).await.unwrap();
        c.get_mut().flush().await.unwrap();
        stalled.push(c);
    }
    let mut over = dial(enroll_cfg.clone(), addr, SERVER).await;
    over.send(Message::from(Hello {
        min_version: 1,
        max_version: 1,
        ..Default::default()
    }))
    .await
    .unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(20), over.next()).await;
    assert!(
        matches!(&refused, Ok(Some(Ok(Message::Refusal(r))))
            if r.code == RefusalCode::Overloaded as i32 && r.reason.contains("from this address")),
        "{refused:?}"
    );
    // An enrolled device is served meanwhile.
    let agent_cfg = agent_client_config(&cert, ca.server_ca(), &TlsOptions::default()).unwrap();
    let mut conn = dial(agent_cfg, addr, SERVER).await;
    hello(&mut conn, "laptop-1").await;
    assert!(matches!(
        call(&mut conn, SyncRequest::default()).await,
        Message::SyncResponse(_)
    ));
    drop(stalled);

    // Failed enrollments are throttled per source: after 3 bad tokens even a good one is
    // refused unchecked (and not used up).
    let mut last = None;
    for _ in 0..100 {
        match enroll(&ca, addr, "laptop-2", "0000").await {
            Err(r) if r.code == RefusalCode::Overloaded as i32 && r.reason.contains("open") => {
                // The stalled connections are still being let go.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(r) => {
                last = Some(r);
                break;
            }
            Ok(_) => panic!("a bad token enrolled"),
        }
    }
    assert_eq!(
        last.map(|r| r.code),
        Some(RefusalCode::BadEnrollmentToken as i32)
    );
    for _ in 0..2 {
        let r = enroll(&ca, addr, "laptop-2", "0000").await.unwrap_err();
        assert_eq!(r.code, RefusalCode::BadEnrollmentToken as i32);
    }
    let r = enroll(&ca, addr, "laptop-2", &t2).await.unwrap_err();
    assert_eq!(r.code, RefusalCode::Overloaded as i32, "{}", r.reason);
    assert!(r.reason.contains("failed enrollments"), "{}", r.reason);
    let stats = server.service.stats();
    assert!(stats.enroll_throttled.load(Ordering::Relaxed) >= 2);
    assert_eq!(
        server.service.registry().pending_tokens(),
        1,
        "t2 not used up"
    );
}

/// A registry written before certificate serials were kept: its devices get the serial of
/// the certificate they present on their next connection, and revocation then holds for
/// them as for every other device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_enrolled_before_serials_were_kept_is_checked_for_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    // The administrator's copy of the CA (which revokes) and the server's own.
    let mut admin_ca = ServerCa::create(PkiConfig::default(), now).unwrap();
    outpost_pki::store::save_server_ca(&mut admin_ca, dir.path(), now).unwrap();
    let ca =
        Arc::new(outpost_pki::store::load_server_ca(dir.path(), PkiConfig::default()).unwrap());
    let mut reg = Registry::new("server-1").unwrap();
    reg.add_group("lab", "Lab", None).unwrap();
    let token = reg
        .issue_token("lab", Some("laptop-1"), Duration::from_secs(600), now)
        .unwrap();
    let server = start_server(
        &ca,
        reg,
        &dir.path().join("registry.json"),
        Arc::new(MemoryObjects::default()),
    )
    .await;
    let addr = server.listener.local_addr();
    let cert = enroll(&ca, addr, "laptop-1", &token)
        .await
        .expect("enrolled");
    let serial = outpost_pki::Serial::of_certificate(&cert.cert_der)
        .unwrap()
        .to_string();
    let serial_on_record = || {
        let device = server.service.registry().device("laptop-1").cloned();
        device.unwrap().cert_serial
    };
    assert_eq!(serial_on_record(), serial);

    // As an older registry file has it: no serial.
    let file = dir.path().join("registry.json");
    server.service.registry().save(&file).unwrap();
    let mut doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    doc["devices"]["laptop-1"]
        .as_object_mut()
        .unwrap()
        .remove("cert_serial");
    std::fs::write(&file, serde_json::to_vec(&doc).unwrap()).unwrap();
    let legacy = Registry::load(&file).unwrap().unwrap();
    server
        .service
        .update_registry(|reg| {
            reg.put_device("laptop-1", legacy.device("laptop-1").unwrap().clone())
        })
        .await
        .unwrap();
    assert_eq!(serial_on_record(), "");

    let agent_cfg = agent_client_config(&cert, ca.server_ca(), &TlsOptions::default()).unwrap();
    let mut conn = dial(agent_cfg.clone(), addr, SERVER).await;
    hello(&mut conn, "laptop-1").await;
    let answer = call(&mut conn, SyncRequest::default()).await;
    assert!(matches!(answer, Message::SyncResponse(_)), "{answer:?}");
    assert_eq!(
        serial_on_record(),
        serial,
        "the serial was recorded from the presented certificate"
    );
    drop(conn);

    admin_ca.revoke(&cert.cert_der, now).unwrap();
    server.service.set_revocations(&admin_ca);
    let mut conn = dial(agent_cfg, addr, SERVER).await;
    hello(&mut conn, "laptop-1").await;
    let answer = call(&mut conn, SyncRequest::default()).await;
    assert!(
        matches!(&answer, Message::Refusal(r) if r.code == RefusalCode::NotAuthorized as i32),
        "{answer:?}"
    );
}

/// A full enrollment pool closes its oldest connection to make room for a new one, so
/// connections that hold their place without finishing cannot keep a device from enrolling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_enrollment_pool_makes_room_from_its_oldest_connection() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let ca = Arc::new(ServerCa::create(PkiConfig::default(), now).unwrap());
    let mut reg = Registry::new("server-1").unwrap();
    reg.add_group("lab", "Lab", None).unwrap();
    let token = reg
        .issue_token("lab", Some("laptop-1"), Duration::from_secs(600), now)
        .unwrap();
    let mut config = ServiceConfig::new();
    config.max_enrolling = 4;
    config.hello_timeout = Duration::from_secs(60);
    let server = start_server_with(
        &ca,
        reg,
        dir.path(),
        config,
        Arc::new(MemoryObjects::default()),
    )
    .await;
    let addr = server.listener.local_addr();
    let enroll_cfg = enrollment_client_config(ca.server_ca(), &TlsOptions::default()).unwrap();
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut c = dial(enroll_cfg.clone(), addr, SERVER).await;
        hello(&mut c, "hostile").await;
        c.get_mut().write_all(&frame_header(60_000)).await.unwrap();
        c.get_mut().flush().await.unwrap();
        stalled.push(c);
    }
    // The device enrolls at once, and the oldest stalled connection was closed for it.
    let cert = tokio::time::timeout(
        Duration::from_secs(20),
        enroll(&ca, addr, "laptop-1", &token),
    )
    .await
    .expect("enrolled in time");
    assert!(cert.is_ok(), "{:?}", cert.err());
    let oldest = tokio::time::timeout(Duration::from_secs(20), stalled[0].next()).await;
    assert!(matches!(oldest, Ok(None | Some(Err(_)))), "{oldest:?}");
    assert!(
        server
            .service
            .stats()
            .enroll_throttled
            .load(Ordering::Relaxed)
            >= 1
    );
}

/// A connection whose peer the registry does not know (here one from the unauthenticated
/// mobile port, relayed by a gateway) is held to the small frame limit too: a large frame is
/// refused from its header, before any of it is buffered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_not_known_yet_may_send_only_small_frames() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let ca = Arc::new(ServerCa::create(PkiConfig::default(), now).unwrap());
    let mut config = ServiceConfig::new();
    // Longer than any wait below: a prompt close is the server's decision, not a deadline.
    config.hello_timeout = Duration::from_secs(60);
    let server = start_server_with(
        &ca,
        Registry::new("server-1").unwrap(),
        dir.path(),
        config,
        Arc::new(MemoryObjects::default()),
    )
    .await;
    let (mut client, stream) = tokio::io::duplex(64 * 1024);
    server
        .tx
        .send(DeviceConnection {
            stream: Box::new(stream),
            peer: outpost_gateway::DevicePeer::from_certificates(
                None,
                "192.0.2.7:40000".into(),
                ChannelKind::MobileUnauthenticated,
            ),
            via: outpost_gateway::Via::DmzGateway("dmz-1".into()),
        })
        .await
        .unwrap();
    client
        .write_all(&frame_header(8 * 1024 * 1024))
        .await
        .unwrap();
    // The server closes without waiting for the frame's bytes.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), client.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "still open after 20 s");
}

/// A CSR for a fresh key that names `cn` (the server names the certificate itself).
fn csr_naming(cn: &str) -> (rcgen::KeyPair, Bytes) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let csr = params.serialize_request(&key).unwrap();
    (key, Bytes::from(csr.der().to_vec()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_is_issued_its_reserve_certificate_and_switches_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.json");
    let now = SystemTime::now();
    let ca = Arc::new(ServerCa::create(PkiConfig::default(), now).unwrap());
    let mut reg = Registry::new("server-1").unwrap();
    let token = reg
        .issue_token("root", Some("laptop-1"), Duration::from_secs(600), now)
        .unwrap();
    let server = start_server(&ca, reg, &path, Arc::new(MemoryObjects::default())).await;
    let addr = server.listener.local_addr();
    let cert = enroll(&ca, addr, "laptop-1", &token)
        .await
        .expect("enrolled");
    let cfg = agent_client_config(&cert, ca.server_ca(), &TlsOptions::default()).unwrap();
    let mut conn = dial(cfg, addr, SERVER).await;
    hello(&mut conn, "laptop-1").await;

    // A request naming another device still gets a certificate of this one.
    let (key, csr) = csr_naming("someone-else");
    let Message::RenewResponse(r) = call(&mut conn, RenewRequest { csr_der: csr }).await else {
        panic!("expected RenewResponse");
    };
    let who = outpost_pki::PeerIdentity::from_der(&r.certificate_der).unwrap();
    assert_eq!(who.common_name.as_deref(), Some("laptop-1"));
    let reserve_sha: [u8; 32] =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &r.certificate_der)
            .as_ref()
            .try_into()
            .unwrap();
    let reserve_serial = who.serial.to_string();
    server.service.with_registry(|reg| {
        let d = reg.device("laptop-1").unwrap();
        let rc = d.reserve_cert.as_ref().expect("recorded before answered");
        assert_eq!(rc.serial, reserve_serial);
        assert_ne!(d.cert_serial, reserve_serial, "the first is still current");
    });
    assert!(
        stored_registry(dir.path())
            .device("laptop-1")
            .unwrap()
            .reserve_cert
            .is_some(),
        "committed"
    );

    // Asked again at once: refused as too soon (the agent retries later), never NotAuthorized.
    let (_, csr) = csr_naming("laptop-1");
    let Message::Refusal(too_soon) = call(&mut conn, RenewRequest { csr_der: csr }).await else {
        panic!("expected a refusal");
    };
    assert_eq!(
        too_soon.code,
        RefusalCode::Overloaded as i32,
        "{}",
        too_soon.reason
    );

    // The reserve authenticates the device, and becomes its current certificate.
    let mut chain = vec![CertificateDer::from(r.certificate_der.to_vec())];
    chain.push(ca.server_ca().der().clone());
    let reserve =
        IssuedCert::from_parts(chain, PrivatePkcs8KeyDer::from(key.serialize_der())).unwrap();
    let cfg = agent_client_config(&reserve, ca.server_ca(), &TlsOptions::default()).unwrap();
    let mut conn = dial(cfg, addr, SERVER).await;
    hello(&mut conn, "laptop-1").await;
    assert!(matches!(
        call(&mut conn, SyncRequest::default()).await,
        Message::SyncResponse(_)
    ));
    server.service.with_registry(|reg| {
        let d = reg.device("laptop-1").unwrap();
        assert_eq!(d.cert_serial, reserve_serial);
        assert!(d.reserve_cert.is_none());
        assert_eq!(
            reg.device_by_fingerprint(&reserve_sha).map(|(id, _)| id),
            Some("laptop-1")
        );
    });
}
