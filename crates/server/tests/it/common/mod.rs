//! Set-up shared by the server's integration tests.

#![allow(dead_code)]

pub mod postgres;

/// An enrollment request for `device` with `token` and a fresh key's CSR, as an agent
/// makes one.
pub fn enroll_request(device: &str, token: &str) -> outpost_wire::messages::EnrollRequest {
    enroll_request_with_key(device, token).1
}

/// [`enroll_request`], with the key it is for (to connect as the device afterwards).
pub fn enroll_request_with_key(
    device: &str,
    token: &str,
) -> (rcgen::KeyPair, outpost_wire::messages::EnrollRequest) {
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::new(vec![])
        .unwrap()
        .serialize_request(&key)
        .unwrap();
    let req = outpost_wire::messages::EnrollRequest {
        device_id: device.into(),
        csr_der: csr.der().to_vec().into(),
        enrollment_token: token.into(),
        group_hint: String::new(),
    };
    (key, req)
}

/// A fresh server state directory under `base` (CA for `server.test`).
pub fn init_state(base: &std::path::Path, now: std::time::SystemTime) -> outpost_pki::ServerCa {
    outpost_pki::store::init_server_dir(
        &base.join("state"),
        "server-1",
        &["server.test".into()],
        now,
    )
    .unwrap()
}

/// A server on `state/` of the test's directory, listening on any loopback port; `top` adds
/// top-level keys, `tables` tables after `[tls]`.
pub fn server_config(top: &str, tables: &str) -> outpost_server::AdminServerConfig {
    outpost_server::AdminServerConfig::from_toml(&format!(
        r#"
        instance_id = "server-1"
        data_dir = "state"
        listen = "127.0.0.1:0"
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

/// A device's connection, as `cfg`, to `addr` (a server's port named `server.test`), past
/// Hello.
pub async fn connect_device(
    cfg: std::sync::Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
) -> DeviceConnection {
    let mut f = dial_device(cfg, addr, "server.test").await;
    use futures_util::StreamExt;
    assert!(matches!(
        f.next().await,
        Some(Ok(outpost_wire::Message::HelloAck(_)))
    ));
    f
}

/// A device's connection on the wire protocol.
pub type DeviceConnection = tokio_util::codec::Framed<
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    outpost_wire::MessageCodec,
>;

/// A device's connection, as `cfg`, to `addr` whose certificate names `name`, with its
/// Hello sent (the answer not read).
pub async fn dial_device(
    cfg: std::sync::Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
    name: &str,
) -> DeviceConnection {
    use futures_util::SinkExt;
    use outpost_wire::Message;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(
            rustls::pki_types::ServerName::try_from(name.to_string()).unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let mut f = tokio_util::codec::Framed::new(tls, outpost_wire::MessageCodec::new());
    f.send(Message::from(outpost_wire::messages::Hello {
        min_version: 1,
        max_version: 1,
        ..Default::default()
    }))
    .await
    .unwrap();
    f
}

/// Sends `m` on a new device connection ([`connect_device`]) and returns the answer.
pub async fn exchange(
    cfg: std::sync::Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
    m: outpost_wire::Message,
) -> outpost_wire::Message {
    use futures_util::{SinkExt, StreamExt};
    let mut f = connect_device(cfg, addr).await;
    f.send(m).await.unwrap();
    f.next().await.unwrap().unwrap()
}
