//! What the workspace's own tests share: an Administration Server on loopback.

use std::path::Path;
use std::time::SystemTime;

use outpost::server::AdminServerConfig;

/// The configuration of a server on `base`: a CA for `localhost` made in `base/state`, the
/// device port on loopback; `top` adds top-level keys and `tables` whole tables (such as
/// `[api]`).
pub fn server_config(base: &Path, top: &str, tables: &str) -> AdminServerConfig {
    outpost::pki::store::init_server_dir(
        &base.join("state"),
        "server-1",
        &["localhost".into()],
        SystemTime::now(),
    )
    .unwrap();
    AdminServerConfig::from_toml(&format!(
        r#"
        instance_id = "server-1"
        data_dir = "state"
        listen = "127.0.0.1:0"
        {top}
        {tables}
        [tls]
        cert = "state/server.chain.pem"
        key = "state/server.key"
        server_ca = "state/ca.crt"
        "#
    ))
    .unwrap()
}
