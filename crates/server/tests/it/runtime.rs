//! The assembled server from a configuration file and data directory.

use crate::common;

use std::time::{Duration, SystemTime};

use common::{exchange, init_state, server_config};
use outpost_gateway::{Gateway, GatewayConfig, TlsMaterial};
use outpost_pki::IssuedCert;
use outpost_pki::tls::{TlsOptions, agent_client_config, enrollment_client_config};
use outpost_server::{AdminServer, AdminServerConfig};
use outpost_wire::Message;
use outpost_wire::messages::{EnrollRequest, SyncRequest};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};

/// Starts the server of `config` with the sync source it describes and no published objects.
async fn start(
    config: &AdminServerConfig,
    base: &std::path::Path,
) -> Result<AdminServer, outpost_server::ServerError> {
    AdminServer::start(config.clone(), base, None, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_dmz_gateways_are_dialled_and_state_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    let now = SystemTime::now();
    let ca = init_state(base, now);
    let gw_cert = ca.issue_gateway(&["gw.test".into()], &[], now).unwrap();
    let gw = Gateway::start(
        GatewayConfig::dmz("dmz-1", "127.0.0.1:0".parse().unwrap()),
        TlsMaterial::new(gw_cert, ca.server_ca().clone()),
    )
    .await
    .unwrap();
    let config = server_config(
        "",
        r#"
        [connector]
        server_id = "server-1"
        keepalive_ms = 200
        backoff_initial_ms = 50
        "#,
    );
    // Registered while the server is stopped, as the admin_server example does.
    let token = config
        .edit_registry(base, |reg| {
            reg.register_dmz_gateway("dmz-1", gw.local_addr(), vec!["gw.test".into()])?;
            reg.add_group("lab", "Lab", None)?;
            reg.issue_token("lab", None, Duration::from_secs(60), now)
        })
        .unwrap();
    let running = start(&config, base).await.unwrap();
    for _ in 0..500 {
        if gw.stats().signal_sessions == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        gw.stats().signal_sessions,
        1,
        "the registered gateway was dialled"
    );
    assert!(running.gateways_connected().contains_key("dmz-1"));
    // The gateway's coming and going are events in the database.
    let kinds = |running: &outpost_server::AdminServer| -> Vec<String> {
        let storage = running.service().storage();
        let events = storage.events_after(0, 100).unwrap();
        events.into_iter().map(|e| e.event.kind).collect()
    };
    let mut seen = Vec::new();
    for _ in 0..300 {
        seen = kinds(&running);
        if seen.iter().any(|k| k == "gateway.up") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(seen.iter().any(|k| k == "gateway.up"), "{seen:?}");
    gw.shutdown().await;
    for _ in 0..500 {
        seen = kinds(&running);
        if seen.iter().any(|k| k == "gateway.down") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(seen.iter().any(|k| k == "gateway.down"), "{seen:?}");
    running.shutdown().await;

    // A configuration for another instance refuses the database.
    let mut other = config.clone();
    other.instance_id = "server-2".into();
    let e = other.load_registry(base).unwrap_err().to_string();
    assert!(e.contains("belongs to server instance"), "{e}");
    // The token survived.
    let reg = config.load_registry(base).unwrap();
    assert_eq!(reg.pending_tokens(), 1);
    assert!(!token.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolled_devices_get_their_policy_settings() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    let now = SystemTime::now();
    let ca = init_state(base, now);
    std::fs::write(
        base.join("policies.json"),
        br#"{"schemas": [{"app": "endpoint", "settings": {"usb.block": {"type": "bool", "default": false}}}],
             "groups": [{"id": "root"}, {"id": "lab", "parent": "root"}],
             "policies": [{"id": "lab-usb", "app": "endpoint", "group": "lab",
                           "settings": {"usb.block": {"value": true, "locked": true}}}]}"#,
    )
    .unwrap();
    let config = server_config(r#"policy_state = "policies.json""#, "");
    let token = config
        .edit_registry(base, |reg| {
            reg.add_group("lab", "Lab", None)?;
            reg.issue_token("lab", None, Duration::from_secs(60), now)
        })
        .unwrap();
    let running = start(&config, base).await.unwrap();
    let addr = running.local_addr();

    let key = outpost_pki::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::new(vec![])
        .unwrap()
        .serialize_request(&key)
        .unwrap();
    let req = EnrollRequest {
        device_id: "bench-1".into(),
        csr_der: csr.der().to_vec().into(),
        enrollment_token: token,
        group_hint: String::new(),
    };
    let Message::EnrollResponse(r) = exchange(
        enrollment_client_config(ca.server_ca(), &TlsOptions::default()).unwrap(),
        addr,
        req.into(),
    )
    .await
    else {
        panic!("not enrolled");
    };
    let chain = vec![
        CertificateDer::from(r.certificate_der.to_vec()),
        CertificateDer::from(r.ca_der.to_vec()),
    ];
    let me = IssuedCert::from_parts(chain, PrivatePkcs8KeyDer::from(key.serialize_der())).unwrap();
    let cfg = agent_client_config(&me, ca.server_ca(), &TlsOptions::default()).unwrap();
    let Message::SyncResponse(s) = exchange(cfg, addr, SyncRequest::default().into()).await else {
        panic!("no sync")
    };
    assert_eq!(
        s.settings.len(),
        1,
        "the newly enrolled device has its group's policy"
    );
    let doc: serde_json::Value = serde_json::from_slice(&s.settings[0].json).unwrap();
    assert_eq!(doc["values"]["usb"]["block"], true);
    assert_eq!(doc["locked"], serde_json::json!(["usb.block"]));
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_holder_of_a_data_directory_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    init_state(base, SystemTime::now());
    let config = server_config("", "");
    config
        .edit_registry(base, |r| r.add_group("lab", "Lab", None))
        .unwrap();
    // What a crash in the middle of a registry write leaves behind, and a file that only
    // looks similar.
    let stale = base.join("state/.registry.json.0123456789abcdef.tmp");
    let other = base.join("state/.registry.json.notes.tmp");
    std::fs::write(&stale, b"{\"format\": 1, \"instan").unwrap();
    std::fs::write(&other, b"kept").unwrap();
    let running = start(&config, base).await.unwrap();
    let pid = format!("pid {} (server)", std::process::id());
    assert!(
        !stale.exists(),
        "the interrupted write's temporary was removed"
    );
    assert!(other.exists());

    // An offline command is refused and changes nothing.
    let e = config
        .edit_registry(base, |r| {
            r.issue_token("lab", None, Duration::from_secs(60), SystemTime::now())
        })
        .unwrap_err();
    assert!(
        matches!(&e, outpost_server::ServerError::DataDirBusy { holder, .. } if *holder == pid),
        "{e}"
    );
    assert!(e.to_string().contains("stop that process first"), "{e}");
    assert_eq!(config.load_registry(base).unwrap().pending_tokens(), 0);

    // A second server on the same directory does not start.
    let e = start(&config, base)
        .await
        .err()
        .expect("a second server was refused");
    assert!(
        matches!(&e, outpost_server::ServerError::DataDirBusy { .. }),
        "{e}"
    );

    // Once the server is stopped, offline commands work again.
    running.shutdown().await;
    config
        .edit_registry(base, |r| {
            r.issue_token("lab", None, Duration::from_secs(60), SystemTime::now())
        })
        .unwrap();
    assert_eq!(config.load_registry(base).unwrap().pending_tokens(), 1);
}

/// What a server before the database kept in files is imported once, at the first start;
/// from then on the database is the source of truth, and `import_policy` replaces the
/// policies on purpose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_of_an_older_server_are_imported_once() {
    use outpost_server::Registry;
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    let now = SystemTime::now();
    init_state(base, now);
    // As an older server left its data directory.
    let mut old = Registry::new("server-1").unwrap();
    old.add_group("lab", "Lab", None).unwrap();
    let token = old
        .issue_token("lab", Some("pc-1"), Duration::from_secs(600), now)
        .unwrap();
    old.save(&base.join("state/registry.json")).unwrap();
    std::fs::write(base.join("state/dp-epochs.json"), br#"{"lab": 9}"#).unwrap();
    let policy = |value: bool| {
        format!(
            r#"{{"schemas": [{{"app": "endpoint", "settings": {{"usb.block": {{"type": "bool", "default": false}}}}}}],
                "groups": [{{"id": "root"}}, {{"id": "lab", "parent": "root"}}],
                "policies": [{{"id": "lab-usb", "app": "endpoint", "group": "lab",
                              "settings": {{"usb.block": {{"value": {value}, "locked": true}}}}}}]}}"#
        )
    };
    std::fs::write(base.join("policies.json"), policy(true)).unwrap();
    let config = server_config(r#"policy_state = "policies.json""#, "");

    let running = start(&config, base).await.unwrap();
    let storage = running.service().storage().clone();
    let snap = storage.load().unwrap();
    assert!(
        snap.registry.groups().contains_key("lab"),
        "the registry was imported"
    );
    assert_eq!(snap.registry.pending_tokens(), 1);
    assert_eq!(snap.epochs.get("lab"), Some(&9), "the epochs too");
    assert_eq!(
        snap.policy.len(),
        4,
        "schema, two groups and the policy: {:?}",
        snap.policy.keys()
    );
    assert!(!base.join("state/registry.json").exists());
    assert!(base.join("state/registry.json.imported").exists());
    running.shutdown().await;
    drop(storage);

    // A registry file appearing again is not imported over the database; an edited policy
    // file changes nothing until it is imported on purpose.
    let mut other = Registry::new("server-1").unwrap();
    other.add_group("elsewhere", "Elsewhere", None).unwrap();
    other.save(&base.join("state/registry.json")).unwrap();
    std::fs::write(base.join("policies.json"), policy(false)).unwrap();
    let doc = |config: &AdminServerConfig| {
        let storage = outpost_server::Storage::open(&config.database(base), "server-1").unwrap();
        let snap = storage.load().unwrap();
        assert!(!snap.registry.groups().contains_key("elsewhere"));
        snap.policy
            .get(&(outpost_server::PolicyObjectKind::Policy, "lab-usb".into()))
            .cloned()
            .unwrap()
    };
    let running = start(&config, base).await.unwrap();
    running.shutdown().await;
    assert!(doc(&config).contains("true"), "{}", doc(&config));
    let changed = config
        .import_policy(base, &base.join("policies.json"))
        .unwrap();
    assert_eq!(changed, 1, "only the policy changed");
    assert!(doc(&config).contains("false"), "{}", doc(&config));

    // An import by command goes into an empty database only.
    let e = config
        .import_registry(base, &base.join("state/registry.json.imported"))
        .unwrap_err();
    assert!(e.to_string().contains("already holds"), "{e}");
    assert!(!token.is_empty());
}

#[test]
fn the_first_account_is_made_offline_once() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    init_state(base, SystemTime::now());
    let config = server_config("", "");
    let e = config.bootstrap_account(base, "x", "short").unwrap_err();
    assert!(e.to_string().contains("password"), "{e}");
    config
        .bootstrap_account(base, "admin", "correct horse battery")
        .unwrap();
    let e = config
        .bootstrap_account(base, "admin2", "correct horse battery")
        .unwrap_err();
    assert!(e.to_string().contains("accounts exist already"), "{e}");
    let snap = outpost_server::Storage::open(&config.database(base), "server-1")
        .unwrap()
        .load()
        .unwrap();
    assert_eq!(snap.accounts.len(), 1);
    assert_eq!(snap.accounts[0].role, outpost_server::Role::Administrator);
}
