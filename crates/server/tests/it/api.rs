//! The administration API through a real HTTPS client on loopback.

use crate::common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use common::{init_state, server_config};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use outpost_server::{AccountBook, AdminServer, Role, Storage};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};

#[derive(Clone)]
struct Client {
    addr: SocketAddr,
    tls: tokio_rustls::TlsConnector,
    /// The virtual server every request names (`Outpost-Virtual-Server`).
    virtual_server: Option<String>,
}

struct Answer {
    status: u16,
    content_type: String,
    body: Value,
}

impl Client {
    fn new(addr: SocketAddr, ca: &outpost_pki::ServerCa) -> Self {
        let cfg = outpost_pki::tls::api_client_config(
            ca.server_ca(),
            &outpost_pki::tls::TlsOptions::default(),
        )
        .unwrap();
        Client {
            addr,
            tls: tokio_rustls::TlsConnector::from(cfg),
            virtual_server: None,
        }
    }

    /// This client, naming virtual server `id` in every request.
    fn in_virtual_server(&self, id: &str) -> Client {
        Client {
            virtual_server: Some(id.into()),
            ..self.clone()
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        self.send(method, path, token, "application/json", bytes.into_bytes())
            .await
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        bytes: Vec<u8>,
    ) -> Answer {
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("server.test").unwrap();
        let tls = self.tls.connect(name, tcp).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "server.test");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(vs) = &self.virtual_server {
            req = req.header("outpost-virtual-server", vs);
        }
        if !bytes.is_empty() {
            req = req.header("content-type", content_type);
        }
        let resp = match send
            .send_request(req.body(Full::new(Bytes::from(bytes))).unwrap())
            .await
        {
            Ok(r) => r,
            // The server answered and closed before it took the whole body.
            Err(e) if e.is_body_write_aborted() || e.to_string().contains("writing a body") => {
                return Answer {
                    status: 0,
                    content_type: String::new(),
                    body: Value::String(e.to_string()),
                };
            }
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let raw = resp.into_body().collect().await.unwrap().to_bytes();
        let body = if raw.is_empty() {
            Value::Null
        } else if content_type.contains("json") {
            serde_json::from_slice(&raw).unwrap_or_else(|e| panic!("{e}: {raw:?}"))
        } else {
            Value::String(String::from_utf8_lossy(&raw).into_owned())
        };
        Answer {
            status,
            content_type,
            body,
        }
    }

    /// A call with `body` sent as it is (`application/octet-stream`).
    async fn call_raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> Answer {
        self.send(method, path, token, "application/octet-stream", body)
            .await
    }

    async fn login(&self, name: &str, password: &str) -> Answer {
        self.call(
            "POST",
            "/api/v1/login",
            None,
            Some(json!({"name": name, "password": password})),
        )
        .await
    }
}

const API_TABLE: &str = r#"
    [api]
    listen = "127.0.0.1:0"
    login_failures = 3
    max_upload_bytes = 1048576
    import_dir = "imports"
    [connector]
    server_id = "server-1"
    keepalive_ms = 200
    backoff_initial_ms = 50
"#;

/// A server with the API on, an administrator "admin", an auditor "watcher" and
/// `devices` enrolled devices.
async fn server(base: &std::path::Path, devices: usize) -> (AdminServer, Client) {
    server_with(base, devices, "").await
}

/// [`server`] with `top` added to the configuration's top-level keys.
async fn server_with(base: &std::path::Path, devices: usize, top: &str) -> (AdminServer, Client) {
    let now = SystemTime::now();
    let ca = init_state(base, now);
    let config = server_config(top, API_TABLE);
    config
        .bootstrap_account(base, "admin", "correct horse battery")
        .unwrap();
    {
        let storage = Storage::open(&config.database(base), "server-1").unwrap();
        let snap = storage.load().unwrap();
        let book = AccountBook::new(snap.accounts, snap.api_tokens);
        let op = book
            .create("watcher", Role::Auditor, "audit all the things", now)
            .unwrap();
        let mut reg = snap.registry;
        reg.add_group("lab", "Lab", None).unwrap();
        let token = reg
            .issue_token("lab", None, Duration::from_secs(600), now)
            .unwrap();
        let req = common::enroll_request("template", &token);
        let template = {
            outpost_server::enroll(&mut reg, &ca, &req, now).unwrap();
            reg.device("template").unwrap().clone()
        };
        for i in 0..devices {
            let mut d = template.clone();
            d.cert_sha256 = format!("{i:064x}");
            d.cert_serial = format!("{i:040x}");
            reg.put_device(&format!("dev-{i:04}"), d).unwrap();
        }
        let mut ops = reg.take_journal().into_ops();
        ops.push(op);
        storage.commit_blocking(ops).unwrap();
    }
    let running = AdminServer::start(config, base, None, None).await.unwrap();
    let client = Client::new(running.api_addr().unwrap(), &ca);
    (running, client)
}

/// The server of [`server`] started again on the same directory.
async fn server_again(base: &std::path::Path) -> (AdminServer, Client) {
    server_again_with(base, "").await
}

/// [`server_again`] with `top` added to the configuration's top-level keys.
async fn server_again_with(base: &std::path::Path, top: &str) -> (AdminServer, Client) {
    let config = server_config(top, API_TABLE);
    let ca =
        outpost_pki::store::load_server_ca(&base.join("state"), outpost_pki::PkiConfig::default())
            .unwrap();
    let running = AdminServer::start(config, base, None, None).await.unwrap();
    let client = Client::new(running.api_addr().unwrap(), &ca);
    (running, client)
}

/// A session of the administrator "admin".
async fn admin_token(api: &Client) -> String {
    let a = api.login("admin", "correct horse battery").await;
    assert_eq!(a.status, 200, "{}", a.body);
    a.body["token"].as_str().unwrap().to_string()
}

/// Enrolls `device` into "lab" with a token issued through the API and a key this test
/// keeps; returns the answer and a TLS configuration to connect as the device.
async fn enroll_device(
    running: &AdminServer,
    api: &Client,
    admin: &str,
    base: &std::path::Path,
    device: &str,
) -> (
    outpost_wire::messages::EnrollResponse,
    std::sync::Arc<rustls::ClientConfig>,
) {
    let t = api
        .call(
            "POST",
            "/api/v1/enrollment-tokens",
            Some(admin),
            Some(json!({"group": "lab", "device": device})),
        )
        .await;
    let (key, req) = common::enroll_request_with_key(device, t.body["token"].as_str().unwrap());
    let resp = running.service().enroll(&req, "127.0.0.1:1").await.unwrap();
    let me = outpost_pki::IssuedCert::from_parts(
        vec![
            CertificateDer::from(resp.certificate_der.to_vec()),
            CertificateDer::from(resp.ca_der.to_vec()),
        ],
        PrivatePkcs8KeyDer::from(key.serialize_der()),
    )
    .unwrap();
    let ca_cert = outpost_pki::store::read_ca_certificate(&base.join("state/ca.crt")).unwrap();
    let cfg = outpost_pki::tls::agent_client_config(
        &me,
        &ca_cert,
        &outpost_pki::tls::TlsOptions::default(),
    )
    .unwrap();
    (resp, cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_roles_and_problems() {
    let dir = tempfile::tempdir().unwrap();
    let (running, api) = server(dir.path(), 0).await;

    // Not logged in; a wrong password; the right one.
    let a = api.call("GET", "/api/v1/status", None, None).await;
    assert_eq!(a.status, 401);
    assert_eq!(a.content_type, "application/problem+json");
    assert_eq!(a.body["status"], 401);
    assert_eq!(api.login("admin", "wrong password!").await.status, 401);
    let a = api.login("admin", "correct horse battery").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["role"], "administrator");
    let admin = a.body["token"].as_str().unwrap().to_string();
    let a = api.call("GET", "/api/v1/status", Some(&admin), None).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body["instance_id"], "server-1");
    assert_eq!(a.body["database"], "SQLite");

    // Writes, and the problems they can meet, each naming the field.
    let a = api
        .call(
            "POST",
            "/api/v1/groups",
            Some(&admin),
            Some(json!({"id": "paris", "name": "Paris", "parent": "lab"})),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let dup = api
        .call(
            "POST",
            "/api/v1/groups",
            Some(&admin),
            Some(json!({"id": "paris", "name": "Paris"})),
        )
        .await;
    assert_eq!((dup.status, dup.body["field"].as_str()), (409, Some("id")));
    let orphan = api
        .call(
            "POST",
            "/api/v1/groups",
            Some(&admin),
            Some(json!({"id": "lyon", "name": "Lyon", "parent": "nowhere"})),
        )
        .await;
    assert_eq!(
        (orphan.status, orphan.body["field"].as_str()),
        (404, Some("parent"))
    );
    let typo = api
        .call(
            "POST",
            "/api/v1/groups",
            Some(&admin),
            Some(json!({"id": "lyon", "name": "Lyon", "parnet": "lab"})),
        )
        .await;
    assert_eq!(typo.status, 400);
    assert!(
        typo.body["detail"].as_str().unwrap().contains("parnet"),
        "{}",
        typo.body
    );
    let wrong_type = api
        .call(
            "POST",
            "/api/v1/enrollment-tokens",
            Some(&admin),
            Some(json!({"group": "paris", "ttl_secs": "long"})),
        )
        .await;
    assert_eq!(
        (wrong_type.status, wrong_type.body["field"].as_str()),
        (400, Some("ttl_secs"))
    );
    let huge = api
        .call(
            "POST",
            "/api/v1/groups",
            Some(&admin),
            Some(json!({"id": "x", "name": "y".repeat(70_000)})),
        )
        .await;
    assert_eq!(huge.status, 413, "bodies are bounded");
    let t = api
        .call(
            "POST",
            "/api/v1/enrollment-tokens",
            Some(&admin),
            Some(json!({"group": "paris", "device": "pc-1", "ttl_secs": 600})),
        )
        .await;
    assert_eq!(t.status, 201, "{}", t.body);
    assert_eq!(t.body["token"].as_str().unwrap().len(), 64);
    // Both took effect at once.
    running.service().with_registry(|r| {
        assert!(r.groups().contains_key("paris"));
        assert_eq!(r.pending_tokens(), 1);
    });

    // The auditor reads, and is refused every write.
    let w = api.login("watcher", "audit all the things").await;
    let watcher = w.body["token"].as_str().unwrap().to_string();
    assert_eq!(w.body["role"], "auditor");
    let g = api
        .call("GET", "/api/v1/groups", Some(&watcher), None)
        .await;
    assert_eq!(g.status, 200);
    assert!(
        g.body["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["id"] == "paris")
    );
    for (path, body) in [
        ("/api/v1/groups", json!({"id": "x", "name": "X"})),
        ("/api/v1/enrollment-tokens", json!({"group": "paris"})),
        ("/api/v1/api-tokens", json!({"label": "mine"})),
    ] {
        let a = api.call("POST", path, Some(&watcher), Some(body)).await;
        assert_eq!(a.status, 403, "{path}: {}", a.body);
    }

    // An API token acts as its account; logging out ends a session.
    let k = api
        .call(
            "POST",
            "/api/v1/api-tokens",
            Some(&admin),
            Some(json!({"label": "ci"})),
        )
        .await;
    assert_eq!(k.status, 201, "{}", k.body);
    let key = k.body["token"].as_str().unwrap().to_string();
    assert_eq!(
        api.call("GET", "/api/v1/status", Some(&key), None)
            .await
            .status,
        200
    );
    assert_eq!(
        api.call("POST", "/api/v1/logout", Some(&admin), None)
            .await
            .status,
        204
    );
    assert_eq!(
        api.call("GET", "/api/v1/status", Some(&admin), None)
            .await
            .status,
        401
    );

    // Every change is in the event log: who and what.
    let events = running.service().storage().events_after(0, 100).unwrap();
    let audit: Vec<&str> = events
        .iter()
        .filter(|e| e.event.kind.starts_with("audit."))
        .map(|e| e.event.body.as_str())
        .collect();
    assert_eq!(audit.len(), 3, "{audit:?}");
    assert!(
        audit.iter().all(|b| b.starts_with("admin (administrator)")),
        "{audit:?}"
    );
    assert!(audit[0].contains("paris"));

    // Failed logins are throttled: past three, even the right password is refused.
    // (The admin's wrong password above counted against this address too.)
    for _ in 0..3 {
        let status = api.login("watcher", "not the password").await.status;
        assert!(status == 401 || status == 429, "{status}");
    }
    assert_eq!(
        api.login("watcher", "audit all the things").await.status,
        429
    );
    // The OpenAPI document, served without a token, is the one the code generates.
    let spec = api.call("GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(spec.status, 200);
    assert_eq!(spec.body, outpost_server::api::openapi());
    assert_eq!(
        api.call("GET", "/api/v1/nothing", Some(&key), None)
            .await
            .status,
        404
    );
    running.shutdown().await;
}

/// 100,000 devices listed page by page, each once and in id order; bad page sizes refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_are_listed_page_by_page() {
    let dir = tempfile::tempdir().unwrap();
    let (running, api) = server(dir.path(), 100_000).await;
    let a = api.login("admin", "correct horse battery").await;
    let token = a.body["token"].as_str().unwrap().to_string();
    let mut seen = Vec::with_capacity(100_001);
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &after {
            Some(a) => format!("/api/v1/devices?limit=1000&after={a}"),
            None => "/api/v1/devices?limit=1000".to_string(),
        };
        let p = api.call("GET", &path, Some(&token), None).await;
        assert_eq!(p.status, 200, "{}", p.body);
        pages += 1;
        for d in p.body["devices"].as_array().unwrap() {
            seen.push(d["id"].as_str().unwrap().to_string());
        }
        match p.body["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => break,
        }
        assert!(pages < 200, "the pages end");
    }
    assert_eq!(pages, 101);
    assert_eq!(seen.len(), 100_001, "every device once (the template too)");
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, seen, "in id order, none twice");
    let a = api
        .call("GET", "/api/v1/devices?limit=5000", Some(&token), None)
        .await;
    assert_eq!((a.status, a.body["field"].as_str()), (422, Some("limit")));
    let a = api
        .call("GET", "/api/v1/devices?limit=ten", Some(&token), None)
        .await;
    assert_eq!(a.status, 400);
    let a = api
        .call("GET", "/api/v1/devices?group=nowhere", Some(&token), None)
        .await;
    assert_eq!(a.body["devices"].as_array().unwrap().len(), 0);
    running.shutdown().await;
}

/// A device moved through the API is placed in its new group at once; a device removed
/// through the API has its certificate revoked and is refused from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_are_moved_and_removed() {
    use outpost_wire::Message;
    use outpost_wire::messages::{RefusalCode, SyncRequest};
    let dir = tempfile::tempdir().unwrap();
    let (running, api) = server(dir.path(), 0).await;
    let a = api.login("admin", "correct horse battery").await;
    let admin = a.body["token"].as_str().unwrap().to_string();
    assert_eq!(
        api.call(
            "POST",
            "/api/v1/groups",
            Some(&admin),
            Some(json!({"id": "paris", "name": "Paris"}))
        )
        .await
        .status,
        201
    );
    // A device enrolls (with a key this test keeps) and syncs.
    let (resp, cfg) = enroll_device(&running, &api, &admin, dir.path(), "pc-1").await;
    let port = running.local_addr();
    let synced = common::exchange(cfg.clone(), port, SyncRequest::default().into()).await;
    assert!(matches!(synced, Message::SyncResponse(_)), "{synced:?}");

    // Moved: the registry and the database have it in its new group.
    let m = api
        .call(
            "POST",
            "/api/v1/devices/pc-1/move",
            Some(&admin),
            Some(json!({"group": "paris"})),
        )
        .await;
    assert_eq!(m.status, 200, "{}", m.body);
    assert_eq!(m.body["group"], "paris");
    running
        .service()
        .with_registry(|r| assert_eq!(r.device("pc-1").unwrap().group, "paris"));
    let bad = api
        .call(
            "POST",
            "/api/v1/devices/pc-1/move",
            Some(&admin),
            Some(json!({"group": "nowhere"})),
        )
        .await;
    assert_eq!(
        (bad.status, bad.body["field"].as_str()),
        (404, Some("group"))
    );
    let ghost = api
        .call(
            "POST",
            "/api/v1/devices/ghost/move",
            Some(&admin),
            Some(json!({"group": "paris"})),
        )
        .await;
    assert_eq!(ghost.status, 404);

    // Removed: refused at the server from then on, its serial on the CRL file.
    let d = api
        .call("DELETE", "/api/v1/devices/pc-1", Some(&admin), None)
        .await;
    assert_eq!(d.status, 204, "{}", d.body);
    let refused = common::exchange(cfg, port, SyncRequest::default().into()).await;
    assert!(
        matches!(&refused, Message::Refusal(r) if r.code == RefusalCode::NotAuthorized as i32),
        "{refused:?}"
    );
    let ca = server_ca(dir.path());
    let serial = outpost_pki::Serial::of_certificate(&resp.certificate_der).unwrap();
    assert!(
        ca.authority(outpost_pki::CaKind::Server)
            .is_revoked(&serial)
    );
    let db = outpost_server::DatabaseConfig::sqlite_in(&dir.path().join("state"));
    let stored = Storage::open(&db, "server-1").unwrap().load().unwrap();
    assert!(
        stored.registry.device("pc-1").is_none(),
        "removed in the database"
    );
    let kinds: Vec<String> = running
        .service()
        .storage()
        .events_after(0, 100)
        .unwrap()
        .into_iter()
        .map(|e| e.event.kind)
        .collect();
    assert!(kinds.iter().any(|k| k == "audit.device.move"), "{kinds:?}");
    assert!(
        kinds.iter().any(|k| k == "audit.device.remove"),
        "{kinds:?}"
    );
    running
        .service()
        .with_registry(|r| assert!(r.device("pc-1").is_none()));
    assert_eq!(
        api.call("DELETE", "/api/v1/devices/pc-1", Some(&admin), None)
            .await
            .status,
        404,
        "gone"
    );
    // A removed device enrolls again with a new token, and its new certificate is served.
    let (_, again) = enroll_device(&running, &api, &admin, dir.path(), "pc-1").await;
    let served = common::exchange(again, port, SyncRequest::default().into()).await;
    assert!(matches!(served, Message::SyncResponse(_)), "{served:?}");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_tokens_events_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let (running, api) = server(dir.path(), 0).await;
    let a = api.login("admin", "correct horse battery").await;
    let admin = a.body["token"].as_str().unwrap().to_string();
    let call = |method: &'static str, path: String, body: Option<Value>| {
        let admin = admin.clone();
        let api = &api;
        async move { api.call(method, &path, Some(&admin), body).await }
    };

    // A group made through the API is known to the election at once.
    let g = call(
        "POST",
        "/api/v1/groups".into(),
        Some(json!({"id": "sales", "name": "Sales"})),
    )
    .await;
    assert_eq!(g.status, 201);
    let fleet = running.fleet().unwrap();
    assert!(
        fleet
            .with_dps(|c| c.register_group_dp("template", "sales"))
            .unwrap()
            .is_ok(),
        "the new group is in the election's tree"
    );
    let m = call(
        "POST",
        "/api/v1/devices/template/move".into(),
        Some(json!({"group": "sales"})),
    )
    .await;
    assert_eq!(m.status, 200, "{}", m.body);

    // Renamed; not removable while a device is in it; removable once empty; never the root.
    let r = call(
        "PATCH",
        "/api/v1/groups/sales".into(),
        Some(json!({"name": "Sales EMEA"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    running
        .service()
        .with_registry(|r| assert_eq!(r.groups()["sales"].name, "Sales EMEA"));
    assert_eq!(
        call(
            "PATCH",
            "/api/v1/groups/nope".into(),
            Some(json!({"name": "x"}))
        )
        .await
        .status,
        404
    );
    let busy = call("DELETE", "/api/v1/groups/sales".into(), None).await;
    assert_eq!(busy.status, 409);
    assert!(
        busy.body["detail"]
            .as_str()
            .unwrap()
            .contains("1 device(s)"),
        "{}",
        busy.body
    );
    call(
        "POST",
        "/api/v1/groups".into(),
        Some(json!({"id": "empty", "name": "Empty"})),
    )
    .await;
    assert_eq!(
        call("DELETE", "/api/v1/groups/empty".into(), None)
            .await
            .status,
        204
    );
    assert_eq!(
        call("DELETE", "/api/v1/groups/root".into(), None)
            .await
            .status,
        409
    );
    assert_eq!(
        call("DELETE", "/api/v1/groups/empty".into(), None)
            .await
            .status,
        404
    );

    // Enrollment tokens: listed (never the token itself), revoked.
    for d in ["pc-1", "pc-2"] {
        let t = call(
            "POST",
            "/api/v1/enrollment-tokens".into(),
            Some(json!({"group": "sales", "device": d})),
        )
        .await;
        assert_eq!(t.status, 201);
    }
    let l = call("GET", "/api/v1/enrollment-tokens".into(), None).await;
    let tokens = l.body["tokens"].as_array().unwrap().clone();
    assert_eq!(tokens.len(), 2, "{}", l.body);
    let id = tokens[0]["id"].as_str().unwrap().to_string();
    assert_eq!(
        call("DELETE", format!("/api/v1/enrollment-tokens/{id}"), None)
            .await
            .status,
        204
    );
    let l = call("GET", "/api/v1/enrollment-tokens".into(), None).await;
    assert_eq!(l.body["tokens"].as_array().unwrap().len(), 1);
    assert_eq!(
        call("DELETE", format!("/api/v1/enrollment-tokens/{id}"), None)
            .await
            .status,
        404
    );

    // Events by kind, a page at a time.
    let mut seen = Vec::new();
    let mut after = 0;
    for _ in 0..10 {
        let p = call(
            "GET",
            format!("/api/v1/events?kind=audit.group.create&limit=1&after={after}"),
            None,
        )
        .await;
        assert_eq!(p.status, 200, "{}", p.body);
        for e in p.body["events"].as_array().unwrap() {
            assert_eq!(e["kind"], "audit.group.create");
            seen.push(e["body"].as_str().unwrap().to_string());
        }
        match p.body["next"].as_u64() {
            Some(n) => after = n,
            None => break,
        }
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen[0].contains("sales") && seen[1].contains("empty"),
        "{seen:?}"
    );

    // Metrics, for a scraper with a token.
    let m = call("GET", "/metrics".into(), None).await;
    assert_eq!(m.status, 200);
    assert!(
        m.content_type.starts_with("text/plain"),
        "{}",
        m.content_type
    );
    let text = m.body.as_str().unwrap();
    assert!(text.contains("\noutpost_devices 1\n"), "{text}");
    assert!(
        text.contains("\noutpost_enrollment_tokens_pending 1\n"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE outpost_syncs_total counter"),
        "{text}"
    );
    // The DP registered above has sent no heartbeat: inactive.
    assert!(
        text.contains("\noutpost_distribution_points{role=\"inactive\"} 1\n")
            && text.contains("\noutpost_distribution_points{role=\"active\"} 0\n"),
        "{text}"
    );
    assert!(text.contains("\noutpost_devices_relayed 0\n"), "{text}");
    assert_eq!(api.call("GET", "/metrics", None, None).await.status, 401);
    running.shutdown().await;
}

/// A policy edited through the API resolves at once, is stored, and pushes "sync now" to
/// the online devices whose settings it changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_edit_reaches_an_online_device() {
    use futures_util::{SinkExt, StreamExt};
    use outpost_wire::Message;
    use outpost_wire::messages::SyncRequest;
    let dir = tempfile::tempdir().unwrap();
    let policy = |value: bool| {
        json!({"id": "lab-usb", "app": "endpoint", "group": "lab",
               "settings": {"usb.block": {"value": value, "locked": true}}})
    };
    std::fs::write(
        dir.path().join("policies.json"),
        json!({"schemas": [{"app": "endpoint", "settings": {"usb.block": {"type": "bool", "default": false}}}],
               "groups": [{"id": "root"}, {"id": "lab", "parent": "root"}],
               "policies": [policy(true)]})
        .to_string(),
    )
    .unwrap();
    let (running, api) = server_with(dir.path(), 0, r#"policy_state = "policies.json""#).await;
    let a = api.login("admin", "correct horse battery").await;
    let admin = a.body["token"].as_str().unwrap().to_string();

    // A device enrolls into "lab" and keeps its connection after a sync.
    let (_, cfg) = enroll_device(&running, &api, &admin, dir.path(), "pc-1").await;
    let mut kept = common::connect_device(cfg, running.local_addr()).await;
    kept.send(Message::from(SyncRequest::default()))
        .await
        .unwrap();
    assert!(matches!(
        kept.next().await,
        Some(Ok(Message::SyncResponse(_)))
    ));
    let s = api
        .call("GET", "/api/v1/devices/pc-1/settings", Some(&admin), None)
        .await;
    assert_eq!(s.status, 200, "{}", s.body);
    assert_eq!(
        s.body["settings"]["endpoint"]["values"]["usb"]["block"], true,
        "{}",
        s.body
    );

    // The edit: resolved, stored, pushed to the one online device it changed.
    let p = api
        .call(
            "PUT",
            "/api/v1/policies/lab-usb",
            Some(&admin),
            Some(policy(false)),
        )
        .await;
    assert_eq!(p.status, 200, "{}", p.body);
    // Both devices of "lab" changed (the seeded "template" too); only pc-1 is online.
    assert_eq!(p.body["devices_changed"], 2, "{}", p.body);
    assert_eq!(p.body["pushed_sync_now"], 1, "{}", p.body);
    let pushed = tokio::time::timeout(Duration::from_secs(5), kept.next()).await;
    assert!(
        matches!(pushed, Ok(Some(Ok(Message::SyncNow(_))))),
        "{pushed:?}"
    );
    let s = api
        .call("GET", "/api/v1/devices/pc-1/settings", Some(&admin), None)
        .await;
    assert_eq!(
        s.body["settings"]["endpoint"]["values"]["usb"]["block"], false,
        "{}",
        s.body
    );
    let stored = running
        .service()
        .storage()
        .policy_object(outpost_server::PolicyObjectKind::Policy, "lab-usb")
        .unwrap()
        .unwrap();
    assert!(stored.contains("false"), "{stored}");
    let g = api
        .call("GET", "/api/v1/policies/lab-usb", Some(&admin), None)
        .await;
    assert_eq!(
        g.body["settings"]["usb.block"]["value"], false,
        "{}",
        g.body
    );

    // Refused: a body for another id, a policy that does not resolve, an auditor.
    let other = api
        .call(
            "PUT",
            "/api/v1/policies/other",
            Some(&admin),
            Some(policy(false)),
        )
        .await;
    assert_eq!(
        (other.status, other.body["field"].as_str()),
        (422, Some("id"))
    );
    let mut bad = policy(true);
    bad["id"] = json!("bad");
    bad["app"] = json!("no-such-app");
    let bad = api
        .call("PUT", "/api/v1/policies/bad", Some(&admin), Some(bad))
        .await;
    assert_eq!(bad.status, 422, "{}", bad.body);
    assert_eq!(
        api.call("GET", "/api/v1/policies/bad", Some(&admin), None)
            .await
            .status,
        404,
        "nothing of it kept"
    );
    let w = api.login("watcher", "audit all the things").await;
    let watcher = w.body["token"].as_str().unwrap().to_string();
    let denied = api
        .call(
            "PUT",
            "/api/v1/policies/lab-usb",
            Some(&watcher),
            Some(policy(true)),
        )
        .await;
    assert_eq!(denied.status, 403);

    // Removed: the setting falls back to its default.
    let d = api
        .call("DELETE", "/api/v1/policies/lab-usb", Some(&admin), None)
        .await;
    assert_eq!(d.status, 200, "{}", d.body);
    let l = api
        .call("GET", "/api/v1/policies", Some(&admin), None)
        .await;
    assert_eq!(
        l.body["policies"].as_array().unwrap().len(),
        0,
        "{}",
        l.body
    );
    assert_eq!(
        api.call("DELETE", "/api/v1/policies/lab-usb", Some(&admin), None)
            .await
            .status,
        404
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_and_api_tokens_are_managed() {
    let dir = tempfile::tempdir().unwrap();
    let (running, api) = server(dir.path(), 0).await;
    let admin = admin_token(&api).await;

    // A new auditor, made through the API, logs in and writes nothing.
    let a = api
        .call(
            "POST",
            "/api/v1/accounts",
            Some(&admin),
            Some(json!({"name": "olga", "role": "auditor", "password": "short"})),
        )
        .await;
    assert_eq!(
        (a.status, a.body["field"].as_str()),
        (422, Some("password"))
    );
    let a = api
        .call(
            "POST",
            "/api/v1/accounts",
            Some(&admin),
            Some(json!({"name": "olga", "role": "root", "password": "long enough here"})),
        )
        .await;
    assert_eq!((a.status, a.body["field"].as_str()), (422, Some("role")));
    let a = api
        .call(
            "POST",
            "/api/v1/accounts",
            Some(&admin),
            Some(json!({"name": "olga", "role": "auditor", "password": "long enough here"})),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert!(a.body.get("password_hash").is_none());
    let olga = api.login("olga", "long enough here").await;
    assert_eq!(olga.body["role"], "auditor");
    let olga = olga.body["token"].as_str().unwrap().to_string();
    let list = api.call("GET", "/api/v1/accounts", Some(&olga), None).await;
    let names: Vec<&str> = list.body["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "olga", "watcher"]);
    let a = api
        .call(
            "PATCH",
            "/api/v1/accounts/olga",
            Some(&olga),
            Some(json!({"role": "administrator"})),
        )
        .await;
    assert_eq!(a.status, 403, "an auditor cannot promote itself");

    // Disabling an account ends its sessions and its logins.
    let a = api
        .call(
            "PATCH",
            "/api/v1/accounts/olga",
            Some(&admin),
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!((a.status, &a.body["disabled"]), (200, &json!(true)));
    assert_eq!(
        api.call("GET", "/api/v1/status", Some(&olga), None)
            .await
            .status,
        401
    );
    assert_eq!(api.login("olga", "long enough here").await.status, 401);

    // The last enabled administrator cannot be demoted or disabled.
    let a = api
        .call(
            "PATCH",
            "/api/v1/accounts/admin",
            Some(&admin),
            Some(json!({"role": "auditor"})),
        )
        .await;
    assert_eq!(a.status, 409, "{}", a.body);

    // An API token: listed without its secret, revoked, refused from then on.
    let k = api
        .call(
            "POST",
            "/api/v1/api-tokens",
            Some(&admin),
            Some(json!({"label": "nightly"})),
        )
        .await;
    let (id, key) = (
        k.body["id"].as_str().unwrap().to_string(),
        k.body["token"].as_str().unwrap().to_string(),
    );
    let list = api
        .call("GET", "/api/v1/api-tokens", Some(&key), None)
        .await;
    assert_eq!(list.status, 200);
    let listed = &list.body["api_tokens"][0];
    assert_eq!(
        (listed["id"].as_str(), listed["label"].as_str()),
        (Some(id.as_str()), Some("nightly"))
    );
    assert!(
        !list.body.to_string().contains(&key),
        "the secret is shown once"
    );
    let r = api
        .call(
            "DELETE",
            &format!("/api/v1/api-tokens/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(
        api.call("GET", "/api/v1/status", Some(&key), None)
            .await
            .status,
        401
    );
    assert_eq!(
        api.call("DELETE", "/api/v1/api-tokens/nope", Some(&admin), None)
            .await
            .status,
        404
    );

    // All of it survives a restart; the audit trail names every change.
    running.shutdown().await;
    let (running, api) = server_again(dir.path()).await;
    assert_eq!(api.login("olga", "long enough here").await.status, 401);
    let admin = admin_token(&api).await;
    let list = api
        .call("GET", "/api/v1/api-tokens", Some(&admin), None)
        .await;
    assert!(
        list.body["api_tokens"][0]["revoked_at_unix"].is_u64(),
        "{}",
        list.body
    );
    let kinds: Vec<String> = running
        .service()
        .storage()
        .events_after(0, 100)
        .unwrap()
        .into_iter()
        .map(|e| e.event.kind)
        .filter(|k| k.starts_with("audit."))
        .collect();
    assert_eq!(
        kinds,
        [
            "audit.account.create",
            "audit.account.change",
            "audit.api_token.issue",
            "audit.api_token.revoke"
        ]
    );
    running.shutdown().await;
}

/// Device details (facts, certificate expiry, connection path), tags, every list filter,
/// and security issues listed and acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_details_filters_and_security_issues() {
    use futures_util::{SinkExt, StreamExt};
    use outpost_wire::Message;
    let dir = tempfile::tempdir().unwrap();
    let (running, api) = server(dir.path(), 30).await;
    let admin = admin_token(&api).await;
    let (resp, cfg) = enroll_device(&running, &api, &admin, dir.path(), "pc-1").await;
    let mut kept = common::connect_device(cfg, running.local_addr()).await;
    kept.send(Message::from(outpost_wire::messages::SyncRequest::default()))
        .await
        .unwrap();
    assert!(matches!(
        kept.next().await,
        Some(Ok(Message::SyncResponse(_)))
    ));

    // Details: the certificate's expiry is the one issued; online, directly.
    let d = api
        .call("GET", "/api/v1/devices/pc-1", Some(&admin), None)
        .await;
    assert_eq!(d.status, 200, "{}", d.body);
    let cert = outpost_pki::CertInfo::of_certificate(&resp.certificate_der).unwrap();
    assert_eq!(
        d.body["certificate"]["expires_unix"],
        json!(cert.not_after.unix_seconds())
    );
    assert_eq!(
        (&d.body["online"], &d.body["connected_via"]),
        (&json!(true), &json!("direct"))
    );
    assert_eq!(d.body["group"], "lab");
    assert_eq!(
        api.call("GET", "/api/v1/devices/pc-9", Some(&admin), None)
            .await
            .status,
        404
    );

    // Tags: set, validated, filtered on.
    for i in [3, 7, 11] {
        let t = api
            .call(
                "PATCH",
                &format!("/api/v1/devices/dev-{i:04}"),
                Some(&admin),
                Some(json!({"tags": ["kiosk", "floor-2"]})),
            )
            .await;
        assert_eq!(t.status, 200, "{}", t.body);
    }
    let bad = api
        .call(
            "PATCH",
            "/api/v1/devices/dev-0001",
            Some(&admin),
            Some(json!({"tags": ["no spaces"]})),
        )
        .await;
    assert_eq!(
        (bad.status, bad.body["field"].as_str()),
        (422, Some("tags"))
    );
    let ids = |a: &Answer| -> Vec<String> {
        a.body["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_string())
            .collect()
    };
    let list = |q: &'static str| {
        let (api, admin) = (&api, &admin);
        async move {
            let a = api
                .call("GET", &format!("/api/v1/devices?{q}"), Some(admin), None)
                .await;
            assert_eq!(a.status, 200, "{q}: {}", a.body);
            a
        }
    };
    assert_eq!(
        ids(&list("tag=kiosk").await),
        ["dev-0003", "dev-0007", "dev-0011"]
    );
    let page = list("tag=kiosk&limit=2").await;
    assert_eq!(ids(&page), ["dev-0003", "dev-0007"]);
    assert_eq!(page.body["next"], "dev-0007");
    assert_eq!(ids(&list("online=true").await), ["pc-1"]);
    assert_eq!(
        list("online=false&limit=1000").await.body["devices"]
            .as_array()
            .unwrap()
            .len(),
        31
    );
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    running.service().storage().flush_touched().unwrap();
    let seen = api
        .call(
            "GET",
            &format!("/api/v1/devices?seen_since={}", now - 60),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(ids(&seen), ["pc-1"], "only pc-1 synced");
    assert_eq!(ids(&list("dp=true").await), Vec::<String>::new());
    assert_eq!(
        api.call("GET", "/api/v1/devices?online=maybe", Some(&admin), None)
            .await
            .status,
        400
    );

    // Security issues: filtered, acknowledged (once, by whom), still open.
    running
        .service()
        .storage()
        .commit(vec![
            outpost_server::Op::PutSecurityIssue(outpost_server::SecurityIssue::new(
                "dev-0005",
                "dp.low_disk",
                2,
                "1 GiB free",
                SystemTime::now(),
            )),
            outpost_server::Op::PutSecurityIssue(outpost_server::SecurityIssue::new(
                "pc-1",
                "av.outdated",
                3,
                "definitions 9 days old",
                SystemTime::now(),
            )),
        ])
        .await
        .unwrap();
    assert_eq!(ids(&list("issue=true").await), ["dev-0005", "pc-1"]);
    assert_eq!(
        list("issue=false&limit=1000").await.body["devices"]
            .as_array()
            .unwrap()
            .len(),
        30
    );
    let open = api
        .call(
            "GET",
            "/api/v1/security-issues?acknowledged=false",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(
        open.body["security_issues"].as_array().unwrap().len(),
        2,
        "{}",
        open.body
    );
    let first = api
        .call("GET", "/api/v1/security-issues?limit=1", Some(&admin), None)
        .await;
    assert_eq!(first.body["next"], "dev-0005/dp.low_disk");
    let rest = api
        .call(
            "GET",
            "/api/v1/security-issues?limit=1&after=dev-0005/dp.low_disk",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(rest.body["security_issues"][0]["device"], "pc-1");
    assert_eq!(rest.body["next"], Value::Null);
    let w = api.login("watcher", "audit all the things").await;
    let watcher = w.body["token"].as_str().unwrap().to_string();
    let path = "/api/v1/security-issues/pc-1/av.outdated/acknowledge";
    assert_eq!(
        api.call("POST", path, Some(&watcher), None).await.status,
        403
    );
    let ack = api.call("POST", path, Some(&admin), None).await;
    assert_eq!(ack.status, 200, "{}", ack.body);
    assert_eq!(ack.body["acknowledged_by"], "admin");
    let unacked = api
        .call(
            "GET",
            "/api/v1/security-issues?acknowledged=false",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(unacked.body["security_issues"][0]["device"], "dev-0005");
    assert_eq!(unacked.body["security_issues"].as_array().unwrap().len(), 1);
    let d = api
        .call("GET", "/api/v1/devices/pc-1", Some(&admin), None)
        .await;
    assert_eq!(
        d.body["security_issues"][0]["acknowledged_by"], "admin",
        "{}",
        d.body
    );
    assert_eq!(
        api.call(
            "POST",
            "/api/v1/security-issues/pc-1/none/acknowledge",
            Some(&admin),
            None
        )
        .await
        .status,
        404
    );
    running.shutdown().await;
}

/// Updates published by a streamed upload and from the import directory, listed with how
/// many devices hold them; a device that syncs is offered the update and, once it holds it,
/// counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_are_uploaded_imported_and_delivered() {
    use futures_util::{SinkExt, StreamExt};
    use outpost_wire::Message;
    use outpost_wire::messages::{HeldVersion, ObjectKind, SyncRequest};
    let dir = tempfile::tempdir().unwrap();
    let (running, api) = server(dir.path(), 0).await;
    let admin = admin_token(&api).await;
    let content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let up = api
        .call_raw(
            "PUT",
            "/api/v1/updates/agent?name=Agent%202&version=2",
            Some(&admin),
            content.clone(),
        )
        .await;
    assert_eq!(up.status, 201, "{}", up.body);
    let sha: String = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &content)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        (up.body["size"].as_u64(), up.body["sha256"].as_str()),
        (Some(300_000), Some(sha.as_str()))
    );

    // Refused: too large (nothing kept), no name, an auditor, a path outside the directory.
    let big = api
        .call_raw(
            "PUT",
            "/api/v1/updates/big?name=B&version=1",
            Some(&admin),
            vec![0; 1_100_000],
        )
        .await;
    // 413, or the connection closed on the body the server would not take.
    assert!(
        big.status == 413 || big.status == 0,
        "{} {}",
        big.status,
        big.body
    );
    let unnamed = api
        .call_raw("PUT", "/api/v1/updates/x?version=1", Some(&admin), vec![1])
        .await;
    assert_eq!(unnamed.status, 400, "{}", unnamed.body);
    let w = api.login("watcher", "audit all the things").await;
    let watcher = w.body["token"].as_str().unwrap().to_string();
    let denied = api
        .call_raw(
            "PUT",
            "/api/v1/updates/x?name=X&version=1",
            Some(&watcher),
            vec![1],
        )
        .await;
    assert_eq!(denied.status, 403);
    std::fs::create_dir_all(dir.path().join("imports")).unwrap();
    std::fs::write(dir.path().join("imports/tool.bin"), b"a tool").unwrap();
    std::fs::write(dir.path().join("secret"), b"not for import").unwrap();
    let outside = api
        .call(
            "POST",
            "/api/v1/updates/tool/import",
            Some(&admin),
            Some(json!({"path": "../secret", "name": "Tool", "version": 1})),
        )
        .await;
    assert_eq!(
        (outside.status, outside.body["field"].as_str()),
        (404, Some("path"))
    );
    let imported = api
        .call(
            "POST",
            "/api/v1/updates/tool/import",
            Some(&admin),
            Some(json!({"path": "tool.bin", "name": "Tool", "version": 1})),
        )
        .await;
    assert_eq!(imported.status, 201, "{}", imported.body);
    let staging = std::fs::read_dir(dir.path().join("state/objects/.staging"))
        .unwrap()
        .count();
    assert_eq!(staging, 0, "refused uploads leave nothing behind");

    // A device is offered both; once it says it holds "agent" 2, it is counted.
    let (_, cfg) = enroll_device(&running, &api, &admin, dir.path(), "pc-1").await;
    let mut conn = common::connect_device(cfg, running.local_addr()).await;
    conn.send(Message::from(SyncRequest::default()))
        .await
        .unwrap();
    let Some(Ok(Message::SyncResponse(r))) = conn.next().await else {
        panic!("no sync answer")
    };
    let mut offered: Vec<&str> = r.updates.iter().map(|u| u.object_id.as_str()).collect();
    offered.sort_unstable();
    assert_eq!(offered, ["agent", "tool"]);
    conn.send(Message::from(SyncRequest {
        held: vec![HeldVersion {
            kind: ObjectKind::Update as i32,
            id: "agent".into(),
            version: 2,
        }],
        ..Default::default()
    }))
    .await
    .unwrap();
    let Some(Ok(Message::SyncResponse(r))) = conn.next().await else {
        panic!("no sync answer")
    };
    assert_eq!(r.updates.len(), 1, "only what it lacks");
    let list = api
        .call("GET", "/api/v1/updates", Some(&watcher), None)
        .await;
    assert_eq!(list.status, 200);
    let agent = &list.body["updates"][0];
    assert_eq!(
        (agent["id"].as_str(), agent["devices_holding"].as_u64()),
        (Some("agent"), Some(1))
    );
    assert_eq!(list.body["updates"][1]["devices_holding"], 0);
    running.shutdown().await;

    // Kept across a restart, content and all.
    let (running, api) = server_again(dir.path()).await;
    let admin = admin_token(&api).await;
    let list = api.call("GET", "/api/v1/updates", Some(&admin), None).await;
    assert_eq!(
        list.body["updates"].as_array().unwrap().len(),
        2,
        "{}",
        list.body
    );
    assert_eq!(list.body["updates"][0]["sha256"], up.body["sha256"]);
    running.shutdown().await;
}

/// Distribution points assigned, reported, made active and removed through the API, with
/// the devices' syncs as heartbeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribution_points_are_assigned_reported_and_switched() {
    use outpost_wire::messages::DpRole;
    let dir = tempfile::tempdir().unwrap();
    let (running, api) = server(dir.path(), 0).await;
    let admin = admin_token(&api).await;
    let mut conns = Vec::new();
    for d in ["dp-a", "dp-b", "pc-1"] {
        let (_, cfg) = enroll_device(&running, &api, &admin, dir.path(), d).await;
        conns.push(common::connect_device(cfg, running.local_addr()).await);
    }
    // One sync each: a DP's carries its health, and is its heartbeat.
    for c in conns.iter_mut() {
        dp_sync(c, false, &[]).await;
    }

    // Assigned: the device is told at once.
    for d in ["dp-a", "dp-b"] {
        let a = api
            .call(
                "POST",
                "/api/v1/distribution-points",
                Some(&admin),
                Some(json!({"device": d, "group": "lab"})),
            )
            .await;
        assert_eq!(a.status, 201, "{}", a.body);
        assert_eq!(a.body["pushed_sync_now"], 1);
    }
    let bad = api
        .call(
            "POST",
            "/api/v1/distribution-points",
            Some(&admin),
            Some(json!({"device": "dp-a", "group": "nowhere"})),
        )
        .await;
    assert_eq!(
        (bad.status, bad.body["field"].as_str()),
        (404, Some("group"))
    );
    let twice = api
        .call(
            "POST",
            "/api/v1/distribution-points",
            Some(&admin),
            Some(json!({"device": "dp-a", "group": "lab"})),
        )
        .await;
    assert_eq!(twice.status, 409);

    // Their heartbeats elect dp-a (first on equal facts); pc-1 is served by it.
    let a = dp_sync(&mut conns[0], true, &[]).await;
    dp_sync(&mut conns[1], true, &[]).await;
    let a2 = dp_sync(&mut conns[0], true, &[]).await;
    let role = |r: &outpost_wire::messages::SyncResponse, dp: &str| {
        r.assignments
            .iter()
            .find(|x| x.dp_device_id == dp)
            .map(|x| DpRole::try_from(x.role).unwrap())
    };
    assert!(role(&a, "dp-a").is_some() || role(&a2, "dp-a").is_some());
    assert_eq!(role(&a2, "dp-a"), Some(DpRole::Active));
    dp_sync(&mut conns[2], false, &[]).await;
    let rows = report(&api, &admin).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    let row = |rows: &[Value], d: &str| rows.iter().find(|r| r["device"] == d).unwrap().clone();
    let (a_row, b_row) = (row(&rows, "dp-a"), row(&rows, "dp-b"));
    assert_eq!(
        (a_row["role"].as_str(), b_row["role"].as_str()),
        (Some("active"), Some("standby"))
    );
    assert_eq!(a_row["free_disk_bytes"], json!(50u64 << 30));
    assert!(a_row["last_heartbeat_unix"].is_u64(), "{a_row}");
    assert!(a_row["multicast_group"].is_string(), "{a_row}");
    assert_ne!(a_row["multicast_group"], b_row["multicast_group"]);
    assert!(a_row["devices_served"].as_u64().unwrap() >= 1, "{a_row}");
    let epoch = a_row["epoch"].as_u64().unwrap();

    // Made active by hand: a new epoch at once.
    let w = api.login("watcher", "audit all the things").await;
    let watcher = w.body["token"].as_str().unwrap().to_string();
    let path = "/api/v1/distribution-points/dp-b/lab/activate";
    assert_eq!(
        api.call("POST", path, Some(&watcher), None).await.status,
        403
    );
    let act = api.call("POST", path, Some(&admin), None).await;
    assert_eq!(act.status, 200, "{}", act.body);
    assert!(act.body["epoch"].as_u64().unwrap() > epoch, "{}", act.body);
    let rows = report(&api, &watcher).await;
    assert_eq!(row(&rows, "dp-b")["role"], "active");
    assert_ne!(row(&rows, "dp-a")["role"], "active");
    let b = dp_sync(&mut conns[1], true, &[]).await;
    assert_eq!(role(&b, "dp-b"), Some(DpRole::Active));
    let not_member = api
        .call(
            "POST",
            "/api/v1/distribution-points/pc-1/lab/activate",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(not_member.status, 409, "{}", not_member.body);

    // Removed: gone from the report and the registry (and so from the next start).
    let del = api
        .call(
            "DELETE",
            "/api/v1/distribution-points/dp-a/lab",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(del.status, 204, "{}", del.body);
    dp_sync(&mut conns[0], true, &[]).await;
    let rows = report(&api, &admin).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    running
        .service()
        .with_registry(|r| assert_eq!(r.dps().keys().collect::<Vec<_>>(), ["dp-b"]));
    assert_eq!(
        api.call(
            "DELETE",
            "/api/v1/distribution-points/dp-a/lab",
            Some(&admin),
            None
        )
        .await
        .status,
        404
    );
    running.shutdown().await;
}

/// The report of distribution points, as `token` reads it.
async fn report(api: &Client, token: &str) -> Vec<Value> {
    let r = api
        .call("GET", "/api/v1/distribution-points", Some(token), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["distribution_points"].as_array().unwrap().clone()
}

/// A DMZ gateway registered on the running server is dialled at once; a device through it
/// shows as relayed; once the device is removed it is refused through the gateway too; the
/// gateway unregistered, its signal connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_are_registered_watched_and_unregistered() {
    use futures_util::{SinkExt, StreamExt};
    use outpost_gateway::{Gateway, GatewayConfig, TlsMaterial};
    use outpost_wire::Message;
    let dir = tempfile::tempdir().unwrap();
    let (running, api) = server(dir.path(), 0).await;
    let admin = admin_token(&api).await;
    let ca = server_ca(dir.path());
    let now = SystemTime::now();
    let gw = Gateway::start(
        GatewayConfig::dmz("dmz-1", "127.0.0.1:0".parse().unwrap()),
        TlsMaterial::new(
            ca.issue_gateway(&["gw.test".into()], &[], now).unwrap(),
            ca.server_ca().clone(),
        ),
    )
    .await
    .unwrap();
    let bad = api
        .call(
            "POST",
            "/api/v1/gateways",
            Some(&admin),
            Some(json!({"id": "dmz-1", "kind": "dmz", "addr": gw.local_addr(), "dns_names": ["not a name"]})),
        )
        .await;
    assert_eq!(
        (bad.status, bad.body["field"].as_str()),
        (422, Some("dns_names")),
        "{}",
        bad.body
    );
    let r = api
        .call(
            "POST",
            "/api/v1/gateways",
            Some(&admin),
            Some(json!({"id": "dmz-1", "kind": "dmz", "addr": gw.local_addr(), "dns_names": ["gw.test"]})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let mut up = false;
    for _ in 0..500 {
        if listed_gateway(&api, &admin, "dmz-1")
            .await
            .is_some_and(|g| g["signal_up"] == true)
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(up, "dialled at once, no restart");

    // A device through the gateway: relayed, and its path known.
    let (_, cfg) = enroll_device(&running, &api, &admin, dir.path(), "pc-1").await;
    let mut via = common::dial_device(cfg.clone(), gw.local_addr(), "gw.test").await;
    assert!(matches!(via.next().await, Some(Ok(Message::HelloAck(_)))));
    via.send(Message::from(outpost_wire::messages::SyncRequest::default()))
        .await
        .unwrap();
    assert!(matches!(
        via.next().await,
        Some(Ok(Message::SyncResponse(_)))
    ));
    let g = listed_gateway(&api, &admin, "dmz-1").await.unwrap();
    assert_eq!(g["devices_relayed"], 1, "{g}");
    let d = api
        .call("GET", "/api/v1/devices/pc-1", Some(&admin), None)
        .await;
    assert_eq!(d.body["connected_via"], "DMZ gateway dmz-1");

    // Removed: its kept connection is cut, and it is refused through the gateway as at the
    // server.
    let del = api
        .call("DELETE", "/api/v1/devices/pc-1", Some(&admin), None)
        .await;
    assert_eq!(del.status, 204, "{}", del.body);
    let cut = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match via.next().await {
                Some(Ok(Message::Refusal(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(
        cut.is_ok(),
        "the kept connection through the gateway is cut"
    );
    for (addr, name) in [
        (gw.local_addr(), "gw.test"),
        (running.local_addr(), "server.test"),
    ] {
        let mut again = common::dial_device(cfg.clone(), addr, name).await;
        let first = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match again.next().await {
                    Some(Ok(Message::HelloAck(_))) => {
                        again
                            .send(Message::from(outpost_wire::messages::SyncRequest::default()))
                            .await
                            .ok();
                    }
                    other => return other,
                }
            }
        })
        .await
        .expect("an answer");
        assert!(
            matches!(first, Some(Ok(Message::Refusal(_))) | None | Some(Err(_))),
            "{name}: {first:?}"
        );
    }

    // Unregistered: not listed, and the gateway's signal connection ends.
    let w = api.login("watcher", "audit all the things").await;
    let watcher = w.body["token"].as_str().unwrap().to_string();
    assert_eq!(
        api.call("DELETE", "/api/v1/gateways/dmz-1", Some(&watcher), None)
            .await
            .status,
        403
    );
    let r = api
        .call("DELETE", "/api/v1/gateways/dmz-1", Some(&admin), None)
        .await;
    assert_eq!(r.status, 204, "{}", r.body);
    assert!(listed_gateway(&api, &admin, "dmz-1").await.is_none());
    assert!(running.service().with_registry(|r| r.gateways().is_empty()));
    assert_eq!(
        api.call("DELETE", "/api/v1/gateways/dmz-1", Some(&admin), None)
            .await
            .status,
        404
    );
    gw.shutdown().await;
    running.shutdown().await;
}

/// Gateway `id` as the gateway list shows it, if listed.
async fn listed_gateway(api: &Client, token: &str, id: &str) -> Option<Value> {
    let l = api.call("GET", "/api/v1/gateways", Some(token), None).await;
    l.body["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["id"] == id)
        .cloned()
}

/// A group moved under another takes its devices along: their settings follow at once and
/// the online ones are pushed; a move under its own subtree is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_moved_takes_its_devices_settings_along() {
    use futures_util::{SinkExt, StreamExt};
    use outpost_wire::Message;
    use outpost_wire::messages::SyncRequest;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("policies.json"),
        json!({"schemas": [{"app": "endpoint", "settings": {"usb.block": {"type": "bool", "default": false}}}],
               "groups": [{"id": "root"}, {"id": "lab", "parent": "root"}]})
        .to_string(),
    )
    .unwrap();
    let (running, api) = server_with(dir.path(), 0, r#"policy_state = "policies.json""#).await;
    let admin = admin_token(&api).await;
    let (_, cfg) = enroll_device(&running, &api, &admin, dir.path(), "pc-1").await;
    let mut kept = common::connect_device(cfg, running.local_addr()).await;
    kept.send(Message::from(SyncRequest::default()))
        .await
        .unwrap();
    assert!(matches!(
        kept.next().await,
        Some(Ok(Message::SyncResponse(_)))
    ));
    let secure = api
        .call(
            "POST",
            "/api/v1/groups",
            Some(&admin),
            Some(json!({"id": "secure", "name": "Secure"})),
        )
        .await;
    assert_eq!(secure.status, 201, "{}", secure.body);
    let p = api
        .call(
            "PUT",
            "/api/v1/policies/secure-usb",
            Some(&admin),
            Some(
                json!({"id": "secure-usb", "app": "endpoint", "group": "secure",
                        "settings": {"usb.block": {"value": true, "locked": true}}}),
            ),
        )
        .await;
    assert_eq!(
        (p.status, &p.body["devices_changed"]),
        (200, &json!(0)),
        "{}",
        p.body
    );
    assert_eq!(usb(&api, &admin).await, false);

    let m = api
        .call(
            "PATCH",
            "/api/v1/groups/lab",
            Some(&admin),
            Some(json!({"parent": "secure"})),
        )
        .await;
    assert_eq!(m.status, 200, "{}", m.body);
    assert_eq!(
        (&m.body["parent"], &m.body["pushed_sync_now"]),
        (&json!("secure"), &json!(1))
    );
    assert_eq!(
        usb(&api, &admin).await,
        true,
        "the policy of its new parent applies"
    );
    let pushed = tokio::time::timeout(Duration::from_secs(5), kept.next()).await;
    assert!(
        matches!(pushed, Ok(Some(Ok(Message::SyncNow(_))))),
        "{pushed:?}"
    );
    running
        .service()
        .with_registry(|r| assert_eq!(r.groups()["lab"].parent.as_deref(), Some("secure")));

    // Under its own subtree: refused, nothing changed.
    let cycle = api
        .call(
            "PATCH",
            "/api/v1/groups/secure",
            Some(&admin),
            Some(json!({"parent": "lab"})),
        )
        .await;
    assert_eq!(
        (cycle.status, cycle.body["field"].as_str()),
        (422, Some("parent")),
        "{}",
        cycle.body
    );
    let empty = api
        .call("PATCH", "/api/v1/groups/lab", Some(&admin), Some(json!({})))
        .await;
    assert_eq!(empty.status, 422);
    running.shutdown().await;

    // Kept across a restart: the settings still come from the new parent.
    let (running, api) = server_again_with(dir.path(), r#"policy_state = "policies.json""#).await;
    let admin = admin_token(&api).await;
    assert_eq!(usb(&api, &admin).await, true);
    running.shutdown().await;
}

/// pc-1's effective `usb.block`.
async fn usb(api: &Client, token: &str) -> Value {
    api.call("GET", "/api/v1/devices/pc-1/settings", Some(token), None)
        .await
        .body["settings"]["endpoint"]["values"]["usb"]["block"]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_status_validation_and_explanations() {
    use futures_util::{SinkExt, StreamExt};
    use outpost_wire::Message;
    use outpost_wire::messages::SyncRequest;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("policies.json"),
        json!({"schemas": [{"app": "endpoint", "settings": {
                   "usb.block": {"type": "bool", "default": false},
                   "scan.level": {"type": "int", "min": 0, "max": 5, "default": 1}}}],
               "groups": [{"id": "root"}, {"id": "lab", "parent": "root"}],
               "policies": [
                   {"id": "lab-usb", "app": "endpoint", "group": "lab",
                    "settings": {"usb.block": {"value": true, "locked": true}}},
                   {"id": "lab-next", "app": "endpoint", "group": "lab", "status": "inactive",
                    "settings": {"scan.level": {"value": 4, "locked": false}}}]})
        .to_string(),
    )
    .unwrap();
    let top = r#"policy_state = "policies.json""#;
    let (running, api) = server_with(dir.path(), 0, top).await;
    let admin = admin_token(&api).await;
    let (_, cfg) = enroll_device(&running, &api, &admin, dir.path(), "pc-1").await;
    let mut kept = common::connect_device(cfg, running.local_addr()).await;
    kept.send(Message::from(SyncRequest::default()))
        .await
        .unwrap();
    assert!(matches!(
        kept.next().await,
        Some(Ok(Message::SyncResponse(_)))
    ));
    assert_eq!(usb(&api, &admin).await, true);

    // A second active policy in a plain PUT is refused, naming the field.
    let mut next = api
        .call("GET", "/api/v1/policies/lab-next", Some(&admin), None)
        .await
        .body;
    next["status"] = json!("active");
    let second = api
        .call("PUT", "/api/v1/policies/lab-next", Some(&admin), Some(next))
        .await;
    assert_eq!(
        (second.status, second.body["field"].as_str()),
        (422, Some("status")),
        "{}",
        second.body
    );

    // Activating it makes the old one inactive in the same step, and pushes the device.
    let s = api
        .call(
            "POST",
            "/api/v1/policies/lab-next/status",
            Some(&admin),
            Some(json!({"status": "active"})),
        )
        .await;
    assert_eq!(s.status, 200, "{}", s.body);
    assert_eq!(
        (&s.body["deactivated"], &s.body["pushed_sync_now"]),
        (&json!("lab-usb"), &json!(1)),
        "{}",
        s.body
    );
    let pushed = tokio::time::timeout(Duration::from_secs(5), kept.next()).await;
    assert!(
        matches!(pushed, Ok(Some(Ok(Message::SyncNow(_))))),
        "{pushed:?}"
    );
    assert_eq!(
        usb(&api, &admin).await,
        false,
        "the old policy no longer applies"
    );
    let old = api
        .call("GET", "/api/v1/policies/lab-usb", Some(&admin), None)
        .await;
    assert_eq!(old.body["status"], "inactive", "{}", old.body);

    // Every value explained: where it came from and what lost.
    let all = api
        .call(
            "GET",
            "/api/v1/devices/pc-1/settings/explain",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(all.status, 200, "{}", all.body);
    let settings = all.body["settings"].as_array().unwrap();
    assert_eq!(settings.len(), 2, "{}", all.body);
    let level = settings.iter().find(|e| e["path"] == "scan.level").unwrap();
    assert_eq!(level["value"], 4);
    assert_eq!(
        (&level["source"]["kind"], &level["source"]["policy"]),
        (&json!("policy"), &json!("lab-next"))
    );
    let lost = &level["candidates"][0];
    assert_eq!(
        (&lost["source"]["kind"], &lost["outcome"], &lost["reason"]),
        (&json!("default"), &json!("lost"), &json!("overridden")),
        "{level}"
    );
    let one = api
        .call(
            "GET",
            "/api/v1/devices/pc-1/settings/explain?app=endpoint&path=usb.block",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(
        one.body["settings"][0]["source"]["kind"], "default",
        "{}",
        one.body
    );
    for (query, status, field) in [
        ("?app=nothing", 404, "app"),
        ("?app=endpoint&path=no.such", 404, "path"),
        ("?path=usb.block", 422, "app"),
    ] {
        let r = api
            .call(
                "GET",
                &format!("/api/v1/devices/pc-1/settings/explain{query}"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(
            (r.status, r.body["field"].as_str()),
            (status, Some(field)),
            "{query}: {}",
            r.body
        );
    }

    // Validation names the setting's place in the document.
    let bad_value = json!({"id": "lab-bad", "app": "endpoint", "group": "root", "status": "inactive",
                           "settings": {"scan.level": {"value": 9}}});
    let bad_profile = json!({"id": "lab-bad", "app": "endpoint", "group": "root", "status": "inactive",
                             "profiles": [{"name": "night", "settings": {"scan.level": 7}}]});
    let unknown = json!({"id": "lab-bad", "app": "endpoint", "group": "root", "status": "inactive",
                         "settings": {"scan.speed": {"value": 1}}});
    for (body, field) in [
        (bad_value, "settings.scan.level"),
        (bad_profile, "profiles[0].settings.scan.level"),
        (unknown, "settings.scan.speed"),
    ] {
        let r = api
            .call("PUT", "/api/v1/policies/lab-bad", Some(&admin), Some(body))
            .await;
        assert_eq!(
            (r.status, r.body["field"].as_str()),
            (422, Some(field)),
            "{}",
            r.body
        );
    }
    // A status that does not exist, an unknown field, an unknown policy, an auditor.
    for (body, status, field) in [
        (json!({"status": "paused"}), 400, Some("status")),
        (json!({"status": "active", "when": 1}), 400, None),
    ] {
        let r = api
            .call(
                "POST",
                "/api/v1/policies/lab-usb/status",
                Some(&admin),
                Some(body),
            )
            .await;
        assert_eq!(r.status, status, "{}", r.body);
        if field.is_some() {
            assert_eq!(r.body["field"].as_str(), field, "{}", r.body);
        }
    }
    let none = api
        .call(
            "POST",
            "/api/v1/policies/nothing/status",
            Some(&admin),
            Some(json!({"status": "active"})),
        )
        .await;
    assert_eq!(none.status, 404);
    let w = api.login("watcher", "audit all the things").await;
    let watcher = w.body["token"].as_str().unwrap().to_string();
    let denied = api
        .call(
            "POST",
            "/api/v1/policies/lab-usb/status",
            Some(&watcher),
            Some(json!({"status": "active"})),
        )
        .await;
    assert_eq!(denied.status, 403);
    running.shutdown().await;

    // Both rows were stored in the step: a restart resolves the same.
    let (running, api) = server_again_with(dir.path(), top).await;
    let admin = admin_token(&api).await;
    assert_eq!(usb(&api, &admin).await, false);
    for (id, status) in [("lab-usb", "inactive"), ("lab-next", "active")] {
        let p = api
            .call("GET", &format!("/api/v1/policies/{id}"), Some(&admin), None)
            .await;
        assert_eq!(p.body["status"], status, "{id}: {}", p.body);
    }
    running.shutdown().await;
}

/// A remote-office gateway is registered with its certificate; the server takes tunnels from
/// that certificate only, under that id, and closes what it relayed once unregistered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_office_gateways_are_bound_to_their_certificate() {
    use futures_util::{SinkExt, StreamExt};
    use outpost_gateway::{Gateway, GatewayConfig, TlsMaterial};
    use outpost_wire::Message;
    let dir = tempfile::tempdir().unwrap();
    let (running, api) = server(dir.path(), 0).await;
    let admin = admin_token(&api).await;
    let ca = server_ca(dir.path());
    let now = SystemTime::now();
    let (_, cfg) = enroll_device(&running, &api, &admin, dir.path(), "pc-1").await;
    let office = ca.issue_gateway(&["office.test".into()], &[], now).unwrap();
    let stranger = ca.issue_gateway(&["office.test".into()], &[], now).unwrap();
    let agent = ca.issue_agent("pc-9", now).unwrap();
    let register = |id: &str, pem: Option<String>| json!({"id": id, "kind": "remote_office", "device": "pc-1", "certificate_pem": pem});
    for (body, status) in [
        (register("office-1", None), 422),
        (register("office-1", Some("not a certificate".into())), 422),
        (register("office-1", Some(agent.chain_pem())), 422),
    ] {
        let r = api
            .call("POST", "/api/v1/gateways", Some(&admin), Some(body))
            .await;
        assert_eq!(
            (r.status, r.body["field"].as_str()),
            (status, Some("certificate_pem")),
            "{}",
            r.body
        );
    }
    let r = api
        .call(
            "POST",
            "/api/v1/gateways",
            Some(&admin),
            Some(register("office-1", Some(office.chain_pem()))),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let again = api
        .call(
            "POST",
            "/api/v1/gateways",
            Some(&admin),
            Some(register("office-2", Some(office.chain_pem()))),
        )
        .await;
    assert_eq!(
        (again.status, again.body["field"].as_str()),
        (409, Some("certificate_pem")),
        "one certificate, one gateway: {}",
        again.body
    );
    let digest: String = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &office.cert_der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let listed = listed_gateway(&api, &admin, "office-1").await.unwrap();
    assert_eq!(listed["certificate_sha256"], digest.as_str(), "{listed}");

    let material = |c: &outpost_pki::IssuedCert| {
        TlsMaterial::new(
            outpost_pki::IssuedCert::from_parts(c.chain.clone(), c.key_der.clone_key()).unwrap(),
            ca.server_ca().clone(),
        )
    };
    let gateway_as = |id: &str| {
        GatewayConfig::remote_office(
            id,
            "127.0.0.1:0".parse().unwrap(),
            running.local_addr(),
            "server.test",
        )
    };
    // Served through the registered gateway, under its id.
    let good = Gateway::start(gateway_as("office-1"), material(&office))
        .await
        .unwrap();
    let mut via = common::dial_device(cfg.clone(), good.local_addr(), "office.test").await;
    assert!(matches!(via.next().await, Some(Ok(Message::HelloAck(_)))));
    via.send(Message::from(outpost_wire::messages::SyncRequest::default()))
        .await
        .unwrap();
    assert!(matches!(
        via.next().await,
        Some(Ok(Message::SyncResponse(_)))
    ));
    let d = api
        .call("GET", "/api/v1/devices/pc-1", Some(&admin), None)
        .await;
    assert_eq!(d.body["connected_via"], "remote-office gateway office-1");
    assert_eq!(
        listed_gateway(&api, &admin, "office-1").await.unwrap()["devices_relayed"],
        1
    );

    // Another gateway certificate of the same CA claiming that id, and the registered
    // certificate claiming another id: refused.
    let impostors = [
        Gateway::start(gateway_as("office-1"), material(&stranger))
            .await
            .unwrap(),
        Gateway::start(gateway_as("office-2"), material(&office))
            .await
            .unwrap(),
    ];
    for gw in &impostors {
        let mut d = common::dial_device(cfg.clone(), gw.local_addr(), "office.test").await;
        let first = tokio::time::timeout(Duration::from_secs(5), d.next())
            .await
            .expect("an answer");
        match first {
            Some(Ok(Message::Refusal(r))) => {
                assert!(r.reason.contains("registered"), "{}", r.reason)
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    // Unregistered: the connection it relayed is closed, and it is refused from then on.
    let del = api
        .call("DELETE", "/api/v1/gateways/office-1", Some(&admin), None)
        .await;
    assert_eq!(del.status, 204, "{}", del.body);
    let cut = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match via.next().await {
                Some(Ok(Message::Refusal(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(cut.is_ok(), "the relayed connection is closed");
    let mut after = common::dial_device(cfg.clone(), good.local_addr(), "office.test").await;
    let first = tokio::time::timeout(Duration::from_secs(5), after.next())
        .await
        .expect("an answer");
    assert!(matches!(first, Some(Ok(Message::Refusal(_)))), "{first:?}");
    for gw in impostors {
        gw.shutdown().await;
    }
    good.shutdown().await;

    // The binding is stored: registered again, it is there after a restart.
    let r = api
        .call(
            "POST",
            "/api/v1/gateways",
            Some(&admin),
            Some(register("office-1", Some(office.chain_pem()))),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    running.shutdown().await;
    let (running, api) = server_again(dir.path()).await;
    let admin = admin_token(&api).await;
    assert_eq!(
        listed_gateway(&api, &admin, "office-1").await.unwrap()["certificate_sha256"],
        digest.as_str()
    );
    running.shutdown().await;
}

/// Distribution points of a network location and of a broadcast domain, through the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribution_points_serve_network_locations_and_broadcast_domains() {
    use outpost_wire::messages::ScopeKind;
    let dir = tempfile::tempdir().unwrap();
    let (running, api) = server(dir.path(), 0).await;
    let admin = admin_token(&api).await;
    let mut conns = Vec::new();
    for d in ["dp-l", "pc-1"] {
        let (_, cfg) = enroll_device(&running, &api, &admin, dir.path(), d).await;
        conns.push(common::connect_device(cfg, running.local_addr()).await);
    }
    dp_sync(&mut conns[0], false, &[]).await;
    dp_sync(&mut conns[1], false, &[]).await;

    // pc-1 is put in network location "lab-2", which dp-l serves.
    let moved = api
        .call(
            "PATCH",
            "/api/v1/devices/pc-1",
            Some(&admin),
            Some(json!({"network_location": "lab-2"})),
        )
        .await;
    assert_eq!(moved.status, 200, "{}", moved.body);
    assert_eq!(moved.body["network_location"], "lab-2");
    let a = api
        .call(
            "POST",
            "/api/v1/distribution-points",
            Some(&admin),
            Some(json!({"device": "dp-l", "network_location": "lab-2"})),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.body["scope"], "location~lab-2");
    dp_sync(&mut conns[0], true, &[]).await;
    dp_sync(&mut conns[0], true, &[]).await;
    let r = dp_sync(&mut conns[1], false, &[]).await;
    let served = r
        .assignments
        .iter()
        .find(|x| x.dp_device_id == "dp-l")
        .expect("pc-1 is served by the lab's DP");
    let scope = served.scope.as_ref().unwrap();
    assert_eq!(
        (scope.kind, scope.id.as_str()),
        (ScopeKind::NetworkLocation as i32, "lab-2")
    );
    let rows = report(&api, &admin).await;
    let row = rows
        .iter()
        .find(|r| r["scope"] == "location~lab-2")
        .unwrap();
    assert_eq!(
        (&row["kind"], &row["network_location"], &row["role"]),
        (
            &json!("network_location"),
            &json!("lab-2"),
            &json!("active")
        ),
        "{row}"
    );
    let act = api
        .call(
            "POST",
            "/api/v1/distribution-points/dp-l/location~lab-2/activate",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(act.status, 200, "{}", act.body);
    assert!(act.body["epoch"].as_u64().unwrap() > 0);

    // Its own broadcast domain: known once the discovery reports link it with pc-1.
    let own = api
        .call(
            "POST",
            "/api/v1/distribution-points",
            Some(&admin),
            Some(json!({"device": "dp-l", "broadcast_domain": true})),
        )
        .await;
    assert_eq!(own.status, 201, "{}", own.body);
    dp_sync(&mut conns[0], true, &["pc-1"]).await;
    dp_sync(&mut conns[1], false, &["dp-l"]).await;
    // The domains are derived again at the server's next tick (once a second).
    let mut facts = Value::Null;
    for _ in 0..300 {
        facts = api
            .call("GET", "/api/v1/devices/pc-1", Some(&admin), None)
            .await
            .body["facts"]
            .clone();
        if facts["broadcast_domain"] == "dp-l" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(facts["broadcast_domain"], "dp-l", "{facts}");
    let details = api
        .call("GET", "/api/v1/devices/pc-1", Some(&admin), None)
        .await;
    assert_eq!(details.body["network_location"], "lab-2");
    let rows = report(&api, &admin).await;
    let row = rows
        .iter()
        .find(|r| r["scope"] == "broadcast-domain~own")
        .unwrap();
    assert_eq!(row["broadcast_domain"], "dp-l", "{row}");

    // Refused: two scopes at once, a malformed scope, a bad location name, nothing to change.
    for (method, path, body, status, field) in [
        (
            "POST",
            "/api/v1/distribution-points",
            json!({"device": "dp-l", "group": "lab", "network_location": "x"}),
            422,
            "group",
        ),
        (
            "DELETE",
            "/api/v1/distribution-points/dp-l/weird~x",
            Value::Null,
            422,
            "scope",
        ),
        (
            "PATCH",
            "/api/v1/devices/pc-1",
            json!({"network_location": "not a name"}),
            422,
            "network_location",
        ),
    ] {
        let body = (!body.is_null()).then_some(body);
        let r = api.call(method, path, Some(&admin), body).await;
        assert_eq!(
            (r.status, r.body["field"].as_str()),
            (status, Some(field)),
            "{method} {path}: {}",
            r.body
        );
    }
    let nothing = api
        .call(
            "PATCH",
            "/api/v1/devices/pc-1",
            Some(&admin),
            Some(json!({})),
        )
        .await;
    assert_eq!(nothing.status, 422);

    // Removed from the location; what is left is kept across a restart.
    let del = api
        .call(
            "DELETE",
            "/api/v1/distribution-points/dp-l/location~lab-2",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(del.status, 204, "{}", del.body);
    running.shutdown().await;
    let (running, api) = server_again(dir.path()).await;
    let admin = admin_token(&api).await;
    running.service().with_registry(|r| {
        assert_eq!(r.dps()["dp-l"], ["broadcast-domain~own"]);
        assert_eq!(
            r.device("pc-1").unwrap().network_location.as_deref(),
            Some("lab-2")
        );
    });
    let rows = report(&api, &admin).await;
    assert!(
        rows.iter().any(|r| r["scope"] == "broadcast-domain~own"),
        "{rows:?}"
    );
    running.shutdown().await;
}

/// One sync of a device: a DP's carries its health (and is its heartbeat); `peers` are the
/// devices it reports hearing in its broadcast domain. "Sync now" pushes on the way are
/// skipped.
async fn dp_sync(
    conn: &mut common::DeviceConnection,
    dp: bool,
    peers: &[&str],
) -> outpost_wire::messages::SyncResponse {
    use futures_util::{SinkExt, StreamExt};
    use outpost_wire::Message;
    use outpost_wire::messages::{DpStatus, SyncRequest};
    let req = SyncRequest {
        free_disk_bytes: 50 << 30,
        uptime_secs: 3600,
        dp_status: if dp {
            vec![DpStatus::default()]
        } else {
            vec![]
        },
        visible_peers: peers.iter().map(|p| p.to_string()).collect(),
        ..Default::default()
    };
    conn.send(Message::from(req)).await.unwrap();
    loop {
        match conn.next().await {
            Some(Ok(Message::SyncResponse(r))) => return r,
            Some(Ok(Message::SyncNow(_))) => continue,
            other => panic!("{other:?}"),
        }
    }
}

/// The CA of the server on `base`, as its data directory holds it.
fn server_ca(base: &std::path::Path) -> outpost_pki::ServerCa {
    outpost_pki::store::load_server_ca(&base.join("state"), outpost_pki::PkiConfig::default())
        .unwrap()
}

/// Every write the API offers (as its OpenAPI document lists them) is refused to an auditor,
/// before anything of the request is looked at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auditor_is_refused_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let (running, api) = server(dir.path(), 1).await;
    let w = api.login("watcher", "audit all the things").await;
    let watcher = w.body["token"].as_str().unwrap().to_string();
    let spec = outpost_server::api::openapi();
    let mut writes = 0;
    for (path, ops) in spec["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            if method == "get" || path == "/api/v1/login" || path == "/api/v1/logout" {
                continue;
            }
            let concrete: String = path
                .split('/')
                .map(|seg| if seg.starts_with('{') { "x" } else { seg })
                .collect::<Vec<_>>()
                .join("/");
            let m = method.to_uppercase();
            let r = api
                .call(&m, &concrete, Some(&watcher), Some(json!({})))
                .await;
            assert_eq!(r.status, 403, "{m} {path}: {}", r.body);
            writes += 1;
        }
    }
    assert!(writes >= 20, "only {writes} writes listed");
    running.shutdown().await;
}

/// Enrolls `device` over the device port's enrollment channel with `token`; returns a TLS
/// configuration to connect as it, and its certificate.
async fn enroll_over_the_network(
    running: &AdminServer,
    base: &std::path::Path,
    device: &str,
    token: &str,
) -> Result<(std::sync::Arc<rustls::ClientConfig>, Vec<u8>), outpost_wire::messages::Refusal> {
    use outpost_pki::tls::{TlsOptions, agent_client_config, enrollment_client_config};
    let ca_cert = outpost_pki::store::read_ca_certificate(&base.join("state/ca.crt")).unwrap();
    let (key, req) = common::enroll_request_with_key(device, token);
    let answer = common::exchange(
        enrollment_client_config(&ca_cert, &TlsOptions::default()).unwrap(),
        running.local_addr(),
        req.into(),
    )
    .await;
    let r = match answer {
        outpost_wire::Message::EnrollResponse(r) => r,
        outpost_wire::Message::Refusal(r) => return Err(r),
        other => panic!("{other:?}"),
    };
    let me = outpost_pki::IssuedCert::from_parts(
        vec![
            CertificateDer::from(r.certificate_der.to_vec()),
            CertificateDer::from(r.ca_der.to_vec()),
        ],
        PrivatePkcs8KeyDer::from(key.serialize_der()),
    )
    .unwrap();
    let cfg = agent_client_config(&me, &ca_cert, &TlsOptions::default()).unwrap();
    Ok((cfg, r.certificate_der.to_vec()))
}

/// The code of a refusal (panics on any other answer).
fn refused_with(m: outpost_wire::Message) -> outpost_wire::messages::RefusalCode {
    match m {
        outpost_wire::Message::Refusal(r) => {
            outpost_wire::messages::RefusalCode::try_from(r.code).unwrap()
        }
        other => panic!("not refused: {other:?}"),
    }
}

/// Disables or enables virtual server `id` as `admin`.
async fn set_disabled(api: &Client, admin: &str, id: &str, disabled: bool) -> Answer {
    api.call(
        "PATCH",
        &format!("/api/v1/virtual-servers/{id}"),
        Some(admin),
        Some(json!({ "disabled": disabled })),
    )
    .await
}

/// A sync as the device `cfg` connects: the answer, or the refusal.
async fn sync_as(
    running: &AdminServer,
    cfg: std::sync::Arc<rustls::ClientConfig>,
) -> outpost_wire::Message {
    use futures_util::{SinkExt, StreamExt};
    let mut f = common::dial_device(cfg, running.local_addr(), "server.test").await;
    let first = f.next().await.unwrap().unwrap();
    if matches!(first, outpost_wire::Message::Refusal(_)) {
        return first;
    }
    f.send(outpost_wire::Message::from(
        outpost_wire::messages::SyncRequest::default(),
    ))
    .await
    .unwrap();
    f.next().await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_servers_are_isolated_tenants() {
    use outpost_wire::messages::RefusalCode;
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    std::fs::write(
        base.join("policies.json"),
        json!({"schemas": [{"app": "endpoint", "settings": {"usb.block": {"type": "bool", "default": false}}}],
               "groups": [{"id": "root"}]})
        .to_string(),
    )
    .unwrap();
    let (running, api) = server_with(base, 0, r#"policy_state = "policies.json""#).await;
    let admin = admin_token(&api).await;

    // Created by the main server's administrator, each with its own multicast block.
    for (id, name) in [("acme", "Acme Corp"), ("globex", "Globex")] {
        let a = api
            .call(
                "POST",
                "/api/v1/virtual-servers",
                Some(&admin),
                Some(json!({"id": id, "name": name})),
            )
            .await;
        assert_eq!(a.status, 201, "{}", a.body);
        assert_eq!(a.body["name"], name);
    }
    let dup = api
        .call(
            "POST",
            "/api/v1/virtual-servers",
            Some(&admin),
            Some(json!({"id": "acme"})),
        )
        .await;
    assert_eq!(dup.status, 409, "{}", dup.body);
    let bad = api
        .call(
            "POST",
            "/api/v1/virtual-servers",
            Some(&admin),
            Some(json!({"id": "a/b"})),
        )
        .await;
    assert_eq!(
        (bad.status, bad.body["field"].as_str()),
        (422, Some("id")),
        "{}",
        bad.body
    );
    let list = api
        .call("GET", "/api/v1/virtual-servers", Some(&admin), None)
        .await;
    let vs = list.body["virtual_servers"].as_array().unwrap();
    assert_eq!(vs.len(), 2);
    assert_ne!(vs[0]["multicast_first"], vs[1]["multicast_first"]);

    // The main administrator works inside a virtual server by naming it.
    let acme = api.in_virtual_server("acme");
    let globex = api.in_virtual_server("globex");
    for (c, group) in [(&acme, "sales"), (&globex, "sales")] {
        let a = c
            .call(
                "POST",
                "/api/v1/groups",
                Some(&admin),
                Some(json!({"id": group, "name": "Sales"})),
            )
            .await;
        assert_eq!(a.status, 201, "{}", a.body);
    }
    let a = acme
        .call(
            "POST",
            "/api/v1/groups",
            Some(&admin),
            Some(json!({"id": "acme-only", "name": "A"})),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let groups = |v: &Value| -> Vec<String> {
        v["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["id"].as_str().unwrap().to_string())
            .collect()
    };
    let main_groups = groups(
        &api.call("GET", "/api/v1/groups", Some(&admin), None)
            .await
            .body,
    );
    assert!(
        !main_groups.contains(&"sales".to_string()),
        "{main_groups:?}"
    );
    let g = groups(
        &globex
            .call("GET", "/api/v1/groups", Some(&admin), None)
            .await
            .body,
    );
    assert!(!g.contains(&"acme-only".to_string()), "{g:?}");
    let nowhere = api.in_virtual_server("initech");
    let a = nowhere
        .call("GET", "/api/v1/groups", Some(&admin), None)
        .await;
    assert_eq!(a.status, 404, "{}", a.body);

    // An account of acme: sees acme only; another tenant is "not found", never "forbidden".
    let a = acme
        .call(
            "POST",
            "/api/v1/accounts",
            Some(&admin),
            Some(json!({"name": "acme-admin", "role": "administrator", "password": "acme secret pass"})),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let main_login = api.login("acme-admin", "acme secret pass").await;
    assert_eq!(
        main_login.status, 401,
        "no role on the main server: {}",
        main_login.body
    );
    let l = acme.login("acme-admin", "acme secret pass").await;
    assert_eq!(l.status, 200, "{}", l.body);
    let tenant = l.body["token"].as_str().unwrap().to_string();
    let own = api.call("GET", "/api/v1/groups", Some(&tenant), None).await;
    assert!(
        groups(&own.body).contains(&"acme-only".to_string()),
        "{}",
        own.body
    );
    let other = globex
        .call("GET", "/api/v1/groups", Some(&tenant), None)
        .await;
    assert_eq!(other.status, 404, "{}", other.body);
    assert_eq!(
        other.body["detail"],
        nowhere
            .call("GET", "/api/v1/groups", Some(&tenant), None)
            .await
            .body["detail"]
            .as_str()
            .unwrap()
            .replace("initech", "globex"),
        "another tenant answers as one that does not exist"
    );
    let manage = api
        .call("GET", "/api/v1/virtual-servers", Some(&tenant), None)
        .await;
    assert_eq!(manage.status, 403, "{}", manage.body);

    // Enrollment tokens of each tenant; devices enrolled over the network land in theirs.
    let token_in = |c: Client, device: &'static str| {
        let admin = admin.clone();
        async move {
            let t = c
                .call(
                    "POST",
                    "/api/v1/enrollment-tokens",
                    Some(&admin),
                    Some(json!({"group": "sales", "device": device})),
                )
                .await;
            assert_eq!(t.status, 201, "{}", t.body);
            t.body["token"].as_str().unwrap().to_string()
        }
    };
    let ta = token_in(acme.clone(), "pc-1").await;
    let tg = token_in(globex.clone(), "pc-1").await;
    let (cfg_a, cert_a) = enroll_over_the_network(&running, base, "pc-1", &ta)
        .await
        .unwrap();
    let (cfg_g, cert_g) = enroll_over_the_network(&running, base, "pc-1", &tg)
        .await
        .unwrap();
    let id_a = outpost_pki::PeerIdentity::from_der(&cert_a).unwrap();
    let id_g = outpost_pki::PeerIdentity::from_der(&cert_g).unwrap();
    assert_eq!(id_a.virtual_server.as_deref(), Some("acme"));
    assert_eq!(id_g.virtual_server.as_deref(), Some("globex"));
    // Same device id in both, two devices; none on the main server.
    for c in [&acme, &globex] {
        let d = c
            .call("GET", "/api/v1/devices/pc-1", Some(&admin), None)
            .await;
        assert_eq!(d.status, 200, "{}", d.body);
        assert_eq!(d.body["group"], "sales");
    }
    assert_eq!(
        api.call("GET", "/api/v1/devices/pc-1", Some(&admin), None)
            .await
            .status,
        404
    );
    let a_fp = acme
        .call("GET", "/api/v1/devices/pc-1", Some(&admin), None)
        .await
        .body["certificate"]["sha256"]
        .clone();
    let g_fp = globex
        .call("GET", "/api/v1/devices/pc-1", Some(&admin), None)
        .await
        .body["certificate"]["sha256"]
        .clone();
    assert_ne!(a_fp, g_fp);

    // A policy of acme reaches acme's device only.
    let policy = json!({"id": "usb", "app": "endpoint", "group": "sales",
                        "settings": {"usb.block": {"value": true, "locked": true}}});
    let schema_put = acme
        .call("PUT", "/api/v1/policies/usb", Some(&admin), Some(policy))
        .await;
    let a_sync = sync_as(&running, cfg_a.clone()).await;
    let g_sync = sync_as(&running, cfg_g.clone()).await;
    // The value of usb.block a sync hands out.
    let settings = |m: &outpost_wire::Message| match m {
        outpost_wire::Message::SyncResponse(s) => s
            .settings
            .iter()
            .map(|d| {
                serde_json::from_slice::<Value>(&d.json).unwrap()["values"]["usb"]["block"].clone()
            })
            .collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(schema_put.status, 200, "{}", schema_put.body);
    assert_eq!(
        settings(&a_sync),
        [json!(true)],
        "acme's device has acme's policy"
    );
    assert_eq!(
        settings(&g_sync),
        [json!(false)],
        "globex's device has none of acme's"
    );
    // Its events land in its tenant.
    let ev = |c: Client| {
        let admin = admin.clone();
        async move {
            c.call(
                "GET",
                "/api/v1/events?kind=audit.group.create",
                Some(&admin),
                None,
            )
            .await
            .body["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["body"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    let acme_events = ev(acme.clone()).await;
    assert!(
        acme_events.iter().any(|b| b.contains("acme-only")),
        "{acme_events:?}"
    );
    assert!(
        !ev(globex.clone())
            .await
            .iter()
            .any(|b| b.contains("acme-only"))
    );
    assert!(
        !ev(api.clone())
            .await
            .iter()
            .any(|b| b.contains("acme-only"))
    );

    // A token of acme never enrolls into globex, and a used one is refused.
    let again = enroll_over_the_network(&running, base, "pc-2", &ta)
        .await
        .unwrap_err();
    assert_eq!(
        again.code,
        outpost_wire::messages::RefusalCode::BadEnrollmentToken as i32
    );

    // Disabled: its device refused with ServerDisabled, its data kept, its accounts shut out.
    let off = set_disabled(&api, &admin, "acme", true).await;
    assert_eq!(
        (off.status, off.body["disabled"].as_bool()),
        (200, Some(true)),
        "{}",
        off.body
    );
    assert_eq!(
        refused_with(sync_as(&running, cfg_a.clone()).await),
        RefusalCode::ServerDisabled
    );
    assert_eq!(
        settings(&sync_as(&running, cfg_g.clone()).await),
        [json!(false)],
        "globex still served"
    );
    assert_eq!(
        api.call("GET", "/api/v1/groups", Some(&tenant), None)
            .await
            .status,
        403
    );
    let kept = acme
        .call("GET", "/api/v1/devices/pc-1", Some(&admin), None)
        .await;
    assert_eq!(kept.status, 200, "data kept: {}", kept.body);
    let ta2 = token_in(acme.clone(), "pc-3").await;
    let refused = enroll_over_the_network(&running, base, "pc-3", &ta2)
        .await
        .unwrap_err();
    assert_eq!(
        refused.code,
        outpost_wire::messages::RefusalCode::ServerDisabled as i32
    );
    let on = set_disabled(&api, &admin, "acme", false).await;
    assert_eq!(on.status, 200, "{}", on.body);
    assert!(matches!(
        sync_as(&running, cfg_a.clone()).await,
        outpost_wire::Message::SyncResponse(_)
    ));

    // A restart keeps every tenant and its data.
    running.shutdown().await;
    let (running, api) = server_again_with(base, r#"policy_state = "policies.json""#).await;
    let admin = admin_token(&api).await;
    let acme = api.in_virtual_server("acme");
    assert_eq!(
        acme.call("GET", "/api/v1/devices/pc-1", Some(&admin), None)
            .await
            .status,
        200
    );
    assert!(matches!(
        sync_as(&running, cfg_a.clone()).await,
        outpost_wire::Message::SyncResponse(_)
    ));

    // Deleted: its devices' certificates revoked, its data gone.
    let del = api
        .call("DELETE", "/api/v1/virtual-servers/acme", Some(&admin), None)
        .await;
    assert_eq!(
        (del.status, del.body["revoked_certificates"].as_u64()),
        (200, Some(1)),
        "{}",
        del.body
    );
    assert_eq!(
        acme.call("GET", "/api/v1/groups", Some(&admin), None)
            .await
            .status,
        404
    );
    assert_eq!(
        refused_with(sync_as(&running, cfg_a).await),
        RefusalCode::NotAuthorized
    );
    assert!(matches!(
        sync_as(&running, cfg_g).await,
        outpost_wire::Message::SyncResponse(_)
    ));
    let storage = running.service().storage().scoped("acme");
    let rows = storage.load().unwrap();
    assert!(rows.registry.devices().is_empty() && rows.accounts.is_empty());
    running.shutdown().await;
    // Created again with the same id: empty.
    let (running, api) = server_again(base).await;
    let admin = admin_token(&api).await;
    let a = api
        .call(
            "POST",
            "/api/v1/virtual-servers",
            Some(&admin),
            Some(json!({"id": "acme"})),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.body["devices"], 0);
    running.shutdown().await;
}
