//! The README's walkthrough runs as written without exposing secrets.

/// `$W` holds the CA's private key: no step may serve it over HTTP (the Web Console tunnel
/// serves whatever its target serves to anyone who reaches the gateway's port).
#[test]
fn the_walkthrough_serves_no_directory_with_keys() {
    let readme = include_str!("../../README.md");
    let servers: Vec<&str> = readme
        .lines()
        .filter(|l| l.contains("http.server"))
        .collect();
    assert!(!servers.is_empty(), "the Web Console step is in the README");
    for line in servers {
        let dir = line
            .split_whitespace()
            .skip_while(|w| *w != "--directory")
            .nth(1)
            .unwrap_or_else(|| panic!("no --directory (it would serve the current one): {line}"));
        assert!(
            dir != "$W" && dir != "$W/" && !dir.is_empty() && dir != ".",
            "serves the walkthrough directory with its keys: {line}"
        );
    }
}

/// Every example configuration parses and validates, and the gateways' load on the files
/// `pki init` and `pki issue-gateway` write (laid out as the walkthrough's `$W`), the CA's
/// revocation lists included.
#[test]
fn the_example_configurations_load_and_the_gateways_honour_the_crls() {
    use outpost::gateway::{GatewayConfig, ServerSideConfig};
    use outpost::pki::store;
    let config = |name: &str| {
        std::fs::read_to_string(format!(
            "{}/examples/config/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    };
    outpost::server::AdminServerConfig::from_toml(&config("admin-server.toml"))
        .and_then(|c| c.validate())
        .unwrap();
    outpost::agent::AgentConfig::from_toml(&config("agent.toml")).unwrap();
    ServerSideConfig::from_toml(&config("server.toml"))
        .and_then(|c| c.validate())
        .unwrap();

    let root = tempfile::tempdir().unwrap();
    let walkthrough = root.path().join("target/walkthrough");
    let base = root.path().join("examples/config");
    std::fs::create_dir_all(&base).unwrap();
    let now = std::time::SystemTime::now();
    let mut ca = outpost::pki::ServerCa::create(Default::default(), now).unwrap();
    store::save_server_ca(&mut ca, &walkthrough, now).unwrap();
    let gw = ca
        .issue_gateway(&["gw.outpost.test".into()], &[], now)
        .unwrap();
    store::write_public(&walkthrough.join("gw.chain.pem"), &gw.chain_pem()).unwrap();
    store::write_private_key(&walkthrough.join("gw.key"), &gw.key_pem()).unwrap();
    let office = ca
        .issue_gateway(&["office.outpost.test".into()], &[], now)
        .unwrap();
    store::write_public(&walkthrough.join("office.chain.pem"), &office.chain_pem()).unwrap();
    store::write_private_key(&walkthrough.join("office.key"), &office.key_pem()).unwrap();
    // The server side binds tunnels to the remote-office gateway's certificate.
    let server = ServerSideConfig::from_toml(&config("server.toml")).unwrap();
    assert!(matches!(
        server.tunnel_policy(&base).unwrap(),
        outpost::gateway::TunnelPolicy::Registered(_)
    ));
    for (name, lists) in [
        ("gateway-dmz.toml", vec!["ca.crl", "mobile-ca.crl"]),
        ("gateway-remote-office.toml", vec!["ca.crl"]),
    ] {
        let cfg = GatewayConfig::from_toml(&config(name)).unwrap();
        cfg.validate().unwrap();
        let tls = cfg
            .load_tls(&base)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let files: Vec<_> = tls
            .crl_files
            .iter()
            .map(|f| f.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        assert_eq!(files, lists, "{name}");
        assert_eq!(tls.crls.len(), lists.len(), "{name}");
    }
}
