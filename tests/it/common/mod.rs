//! What the workspace's own tests share: an Administration Server's configuration.

use std::path::Path;
use std::time::SystemTime;

use outpost::server::AdminServerConfig;

/// Makes the server's CA and certificate for `localhost` in `base/state`.
#[allow(dead_code)]
pub fn localhost_ca(base: &Path) {
    outpost::pki::store::init_server_dir(
        &base.join("state"),
        "server-1",
        &["localhost".into()],
        SystemTime::now(),
    )
    .unwrap();
}

/// A server on `state/` of its configuration's directory, its device port at `listen`;
/// `top` adds top-level keys and `tables` whole tables (such as `[api]`).
pub fn server_config(listen: &str, top: &str, tables: &str) -> AdminServerConfig {
    AdminServerConfig::from_toml(&format!(
        r#"
        instance_id = "server-1"
        data_dir = "state"
        listen = "{listen}"
        {top}
        [tls]
        cert = "state/server.chain.pem"
        key = "state/server.key"
        server_ca = "state/ca.crt"
        {tables}
        "#
    ))
    .unwrap()
}
