//! The assembled server from a configuration file and data directory.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use outpost_gateway::{Gateway, GatewayConfig, TlsMaterial};
use outpost_pki::{PkiConfig, ServerCa, store};
use outpost_server::{AdminServer, AdminServerConfig, MemoryObjects};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_dmz_gateways_are_dialled_and_state_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    let now = SystemTime::now();
    let mut ca = ServerCa::create(PkiConfig::default(), now).unwrap();
    store::save_server_ca(&mut ca, &base.join("state"), now).unwrap();
    let server = ca
        .issue_server("server-1", &["server.test".into()], &[], now)
        .unwrap();
    store::write_public(&base.join("state/server.chain.pem"), &server.chain_pem()).unwrap();
    store::write_private_key(&base.join("state/server.key"), &server.key_pem()).unwrap();
    let gw_cert = ca.issue_gateway(&["gw.test".into()], &[], now).unwrap();
    let gw = Gateway::start(
        GatewayConfig::dmz("dmz-1", "127.0.0.1:0".parse().unwrap()),
        TlsMaterial::new(gw_cert, ca.server_ca().clone()),
    )
    .await
    .unwrap();
    let text = r#"
        instance_id = "server-1"
        data_dir = "state"
        listen = "127.0.0.1:0"
        [tls]
        cert = "state/server.chain.pem"
        key = "state/server.key"
        server_ca = "state/ca.crt"
        [connector]
        server_id = "server-1"
        keepalive_ms = 200
        backoff_initial_ms = 50
    "#;
    let config = AdminServerConfig::from_toml(text).unwrap();
    // Registered while the server is stopped, as the admin_server example does.
    let mut reg = config.load_registry(base).unwrap();
    reg.register_dmz_gateway("dmz-1", gw.local_addr(), vec!["gw.test".into()])
        .unwrap();
    reg.add_group("lab", "Lab", None).unwrap();
    let token = reg
        .issue_token("lab", None, Duration::from_secs(60), now)
        .unwrap();
    reg.save(&config.registry_path(base)).unwrap();

    let running = AdminServer::start(
        config.clone(),
        base,
        None,
        Arc::new(MemoryObjects::default()),
    )
    .await
    .unwrap();
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
    running.shutdown().await;

    // A configuration for another instance refuses the registry.
    let other = AdminServerConfig::from_toml(
        &text.replace("instance_id = \"server-1\"", "instance_id = \"server-2\""),
    )
    .unwrap();
    let e = other.load_registry(base).unwrap_err().to_string();
    assert!(e.contains("belongs to server instance"), "{e}");
    // The token survived.
    let reg = config.load_registry(base).unwrap();
    assert_eq!(reg.pending_tokens(), 1);
    assert!(!token.is_empty());
    gw.shutdown().await;
}
