//! The administration API under load, on a server with 100,000 enrolled devices (SQLite,
//! the default): requests per second over HTTPS on loopback, each client on one kept-alive
//! connection, 4 clients at once.
//!
//! - `GET /api/v1/status`: the baseline (authentication, routing, TLS, one small answer);
//! - device list pages of 100 and of 1,000, walking the whole fleet page by page;
//! - a policy edit on the group that holds every device: resolved for 100,000 devices,
//!   committed, answered (one at a time, as edits are serialised); and on a group of 1,000.
//!
//! ```text
//! cargo bench --bench api
//! OUTPOST_API_DEVICES=10000 cargo bench --bench api     # a smaller fleet
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http_body_util::{BodyExt, Full};
use outpost::server::{AdminServer, AdminServerConfig, Storage};
use serde_json::{Value, json};

const CLIENTS: usize = 4;
const STATUS_CALLS: usize = 2_000;
const EDITS: usize = 20;

type Conn = hyper::client::conn::http1::SendRequest<Full<bytes::Bytes>>;

async fn connect(addr: SocketAddr, tls: &tokio_rustls::TlsConnector) -> Conn {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("server.test").unwrap();
    let tls = tls.connect(name, tcp).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn call(
    conn: &mut Conn,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> Value {
    conn.ready().await.unwrap();
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "server.test")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))
        .unwrap();
    let resp = conn.send_request(req).await.unwrap();
    let status = resp.status();
    let raw = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(status.is_success(), "{method} {path}: {status} {raw:?}");
    serde_json::from_slice(&raw).unwrap_or(Value::Null)
}

/// A policy setting `usb.block`, not locked, so the subgroup's own policy wins there.
fn policy(id: &str, group: &str, value: bool) -> Value {
    json!({"id": id, "app": "endpoint", "group": group,
           "settings": {"usb.block": {"value": value, "locked": false}}})
}

fn main() {
    let devices: usize = std::env::var("OUTPOST_API_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    let now = SystemTime::now();
    let ca = outpost::pki::store::init_server_dir(
        &base.join("state"),
        "server-1",
        &["server.test".into()],
        now,
    )
    .unwrap();
    std::fs::write(
        base.join("policies.json"),
        json!({"schemas": [{"app": "endpoint", "settings": {"usb.block": {"type": "bool", "default": false}}}],
               "groups": [{"id": "root"}, {"id": "fleet", "parent": "root"}, {"id": "small", "parent": "fleet"}],
               "policies": [policy("fleet-usb", "fleet", true), policy("small-usb", "small", true)]})
        .to_string(),
    )
    .unwrap();
    let config = AdminServerConfig::from_toml(
        r#"
        instance_id = "server-1"
        data_dir = "state"
        listen = "127.0.0.1:0"
        policy_state = "policies.json"
        [api]
        listen = "127.0.0.1:0"
        [tls]
        cert = "state/server.chain.pem"
        key = "state/server.key"
        server_ca = "state/ca.crt"
        "#,
    )
    .unwrap();
    config
        .bootstrap_account(base, "admin", "correct horse battery")
        .unwrap();

    // The fleet: one real enrollment, then copies with their own fingerprints; the first
    // 1,000 in the subgroup "small".
    let fill = Instant::now();
    {
        let storage = Storage::open(&config.database(base), "server-1").unwrap();
        let mut reg = storage.load().unwrap().registry;
        reg.add_group("fleet", "Fleet", None).unwrap();
        reg.add_group("small", "Small", Some("fleet")).unwrap();
        let token = reg
            .issue_token("fleet", None, Duration::from_secs(600), now)
            .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let csr = rcgen::CertificateParams::new(vec![])
            .unwrap()
            .serialize_request(&key)
            .unwrap();
        let req = outpost::wire::messages::EnrollRequest {
            device_id: "template".into(),
            csr_der: csr.der().to_vec().into(),
            enrollment_token: token,
            group_hint: String::new(),
        };
        outpost::server::enroll(&mut reg, &ca, &req, now).unwrap();
        let template = reg.device("template").unwrap().clone();
        for i in 0..devices {
            let mut d = template.clone();
            d.cert_sha256 = format!("{i:064x}");
            d.cert_serial = format!("{i:040x}");
            if i < 1_000 {
                d.group = "small".into();
            }
            reg.put_device(&format!("dev-{i:06}"), d).unwrap();
            if i % 5_000 == 4_999 {
                storage
                    .commit_blocking(reg.take_journal().into_ops())
                    .unwrap();
            }
        }
        storage
            .commit_blocking(reg.take_journal().into_ops())
            .unwrap();
    }
    let fill = fill.elapsed();

    rt.block_on(async {
        let started = Instant::now();
        let running = AdminServer::start(config, base, None, None).await.unwrap();
        let start = started.elapsed();
        let addr = running.api_addr().unwrap();
        let tls = tokio_rustls::TlsConnector::from(
            outpost::pki::tls::api_client_config(ca.server_ca(), &Default::default()).unwrap(),
        );
        let mut admin = connect(addr, &tls).await;
        let login = {
            admin.ready().await.unwrap();
            let req = hyper::Request::builder()
                .method("POST")
                .uri("/api/v1/login")
                .header("host", "server.test")
                .body(Full::new(bytes::Bytes::from(
                    json!({"name": "admin", "password": "correct horse battery"}).to_string(),
                )))
                .unwrap();
            let resp = admin.send_request(req).await.unwrap();
            let raw = resp.into_body().collect().await.unwrap().to_bytes();
            serde_json::from_slice::<Value>(&raw).unwrap()
        };
        let token: Arc<str> = login["token"].as_str().unwrap().into();
        println!(
            "api: {devices} devices (filled in {:.1} s; the server started in {:.2} s), {CLIENTS} clients, SQLite",
            fill.as_secs_f64(),
            start.as_secs_f64()
        );

        // Baseline: status.
        let t = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..CLIENTS {
            let (tls, token) = (tls.clone(), token.clone());
            set.spawn(async move {
                let mut c = connect(addr, &tls).await;
                for _ in 0..STATUS_CALLS / CLIENTS {
                    call(&mut c, "GET", "/api/v1/status", &token, None).await;
                }
            });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
        let status_rps = STATUS_CALLS as f64 / t.elapsed().as_secs_f64();
        println!("  GET status                      {status_rps:>9.0} req/s   (baseline)");

        // Device pages: each client walks the whole fleet.
        for limit in [100usize, 1000] {
            let t = Instant::now();
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..CLIENTS {
                let (tls, token) = (tls.clone(), token.clone());
                set.spawn(async move {
                    let mut c = connect(addr, &tls).await;
                    let mut after: Option<String> = None;
                    let (mut pages, mut seen) = (0usize, 0usize);
                    loop {
                        let path = match &after {
                            Some(a) => format!("/api/v1/devices?limit={limit}&after={a}"),
                            None => format!("/api/v1/devices?limit={limit}"),
                        };
                        let page = call(&mut c, "GET", &path, &token, None).await;
                        pages += 1;
                        seen += page["devices"].as_array().unwrap().len();
                        match page["next"].as_str() {
                            Some(n) => after = Some(n.to_string()),
                            None => break,
                        }
                    }
                    (pages, seen)
                });
            }
            let mut pages = 0;
            while let Some(r) = set.join_next().await {
                let (p, seen) = r.unwrap();
                assert_eq!(seen, devices + 1, "every device listed once");
                pages += p;
            }
            let secs = t.elapsed().as_secs_f64();
            println!(
                "  GET devices, pages of {limit:<5}    {:>9.0} req/s   {:>9.0} devices/s   ({:.2}x the baseline's requests)",
                pages as f64 / secs,
                (pages * limit) as f64 / secs,
                pages as f64 / secs / status_rps
            );
        }

        // Policy edits, one at a time (they are serialised), alternating the value.
        for (id, group) in [("fleet-usb", "fleet"), ("small-usb", "small")] {
            let mut times = Vec::new();
            let mut changed = 0;
            for i in 0..EDITS {
                let t = Instant::now();
                let a = call(
                    &mut admin,
                    "PUT",
                    &format!("/api/v1/policies/{id}"),
                    &token,
                    Some(&policy(id, group, i % 2 == 1)),
                )
                .await;
                times.push(t.elapsed());
                changed = a["devices_changed"].as_u64().unwrap();
                assert!(changed > 0, "every edit flips the value: {a}");
            }
            times.sort();
            let median = times[times.len() / 2].as_secs_f64();
            println!(
                "  PUT policy on {group:<5} ({changed:>6} devices changed)   {:>7.1} edits/s   median {:>7.1} ms   max {:>7.1} ms",
                1.0 / median,
                median * 1e3,
                times[times.len() - 1].as_secs_f64() * 1e3
            );
        }
        running.shutdown().await;
    });
}
