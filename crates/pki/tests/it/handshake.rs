//! Real TLS handshakes over loopback for every rustls configuration, accepted and refused.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use outpost_pki::rustls::{ClientConfig, ServerConfig};
use outpost_pki::tls::{self, FixedTime, TlsOptions};
use outpost_pki::{CaKind, IssuedCert, PeerIdentity, Role, ServerCa};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// What each side saw.
struct Outcome {
    /// Server side: the client's identity (if it sent a certificate) and the ALPN protocol.
    server: Result<(Option<PeerIdentity>, Option<Vec<u8>>), String>,
    /// Client side: the server's identity.
    client: Result<PeerIdentity, String>,
}

impl Outcome {
    fn accepted(&self) -> bool {
        self.server.is_ok() && self.client.is_ok()
    }
    fn refused(&self) -> bool {
        self.server.is_err() && self.client.is_err()
    }
}

/// Runs one handshake on 127.0.0.1 followed by a ping/pong exchange (which surfaces a
/// client certificate refused after the TLS 1.3 client finished). Bounded by a timeout.
async fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>, host: &str) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server);
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        tls.write_all(b"pong").await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        let (_, conn) = tls.get_ref();
        let peer = match conn.peer_certificates() {
            Some(c) => Some(tls::peer_identity(Some(c)).map_err(|e| e.to_string())?),
            None => None,
        };
        let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
        let _ = tls.shutdown().await;
        Ok::<_, String>((peer, alpn))
    });
    let name = ServerName::try_from(host.to_owned()).unwrap();
    let client_fut = async move {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut tls = TlsConnector::from(client)
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        if &buf != b"pong" {
            return Err("bad reply".to_owned());
        }
        let (_, conn) = tls.get_ref();
        tls::peer_identity(conn.peer_certificates()).map_err(|e| e.to_string())
    };
    let limit = Duration::from_secs(10);
    let client = match tokio::time::timeout(limit, client_fut).await {
        Ok(r) => r,
        Err(_) => Err("client timed out".to_owned()),
    };
    let server = match tokio::time::timeout(limit, server_task).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("server timed out".to_owned()),
    };
    Outcome { server, client }
}

struct Fleet {
    ca: ServerCa,
    server: IssuedCert,
    gateway: IssuedCert,
    agent: IssuedCert,
    mobile: IssuedCert,
}

fn fleet() -> Fleet {
    // Handshakes read the real clock unless told otherwise; issue at the real time.
    let now = std::time::SystemTime::now();
    let ca = ServerCa::create(outpost_pki::PkiConfig::default(), now).unwrap();
    Fleet {
        server: ca
            .issue_server("admin-server", &names(&["ksc.example.com"]), &[], now)
            .unwrap(),
        gateway: ca
            .issue_gateway(&names(&["gw.example.com", "dmz.example.com"]), &[], now)
            .unwrap(),
        agent: ca.issue_agent("agent-1", now).unwrap(),
        mobile: ca.issue_mobile("phone-1", now).unwrap(),
        ca,
    }
}

fn opts() -> TlsOptions {
    TlsOptions::default()
}

#[tokio::test]
async fn agent_port_accepts_agents_and_refuses_others() {
    let f = fleet();
    let srv = tls::agent_port_server_config(&f.gateway, f.ca.server_ca(), &opts()).unwrap();
    let agent = tls::agent_client_config(&f.agent, f.ca.server_ca(), &opts()).unwrap();
    let out = handshake(srv.clone(), agent, "gw.example.com").await;
    assert!(out.accepted(), "{:?} {:?}", out.server, out.client);
    let (peer, _) = out.server.unwrap();
    let peer = peer.unwrap();
    assert_eq!(peer.role, Some(Role::Agent));
    assert_eq!(peer.common_name.as_deref(), Some("agent-1"));
    assert_eq!(peer, PeerIdentity::from_der(&f.agent.cert_der).unwrap());
    assert_eq!(out.client.unwrap().role, Some(Role::Gateway));

    // No client certificate.
    let anon = tls::mobile_client_config(None, f.ca.server_ca(), &opts()).unwrap();
    let out = handshake(srv.clone(), anon, "gw.example.com").await;
    assert!(out.refused(), "{:?} {:?}", out.server, out.client);
    // A mobile certificate (other CA).
    let mobile = tls::mobile_client_config(Some(&f.mobile), f.ca.server_ca(), &opts()).unwrap();
    let out = handshake(srv, mobile, "gw.example.com").await;
    assert!(out.refused(), "{:?} {:?}", out.server, out.client);
    assert!(out.server.unwrap_err().contains("UnknownIssuer"));
}

#[tokio::test]
async fn agent_port_honours_the_crl_and_the_clock() {
    let mut f = fleet();
    let now = std::time::SystemTime::now();
    f.ca.revoke(&f.agent.cert_der, now).unwrap();
    let crl = f.ca.crl(CaKind::Server, now).unwrap();
    let with_crl = TlsOptions::default().with_crls([crl]);
    let srv = tls::agent_port_server_config(&f.gateway, f.ca.server_ca(), &with_crl).unwrap();
    let agent = tls::agent_client_config(&f.agent, f.ca.server_ca(), &opts()).unwrap();
    let out = handshake(srv.clone(), agent, "gw.example.com").await;
    assert!(out.refused(), "{:?} {:?}", out.server, out.client);
    assert!(out.server.unwrap_err().contains("Revoked"));
    // Another agent still gets in.
    let other = f.ca.issue_agent("agent-2", now).unwrap();
    let agent2 = tls::agent_client_config(&other, f.ca.server_ca(), &opts()).unwrap();
    assert!(handshake(srv, agent2, "gw.example.com").await.accepted());

    // Both sides' clocks 400 days ahead: every certificate has expired.
    let later = TlsOptions::default().with_time_provider(Arc::new(FixedTime(now + days(400))));
    let srv = tls::agent_port_server_config(&f.gateway, f.ca.server_ca(), &later).unwrap();
    let agent = tls::agent_client_config(&other, f.ca.server_ca(), &later).unwrap();
    let out = handshake(srv, agent, "gw.example.com").await;
    assert!(out.refused());
    let err = out.client.unwrap_err();
    assert!(err.contains("expired"), "{err}");
}

#[tokio::test]
async fn mobile_port_with_client_auth() {
    let f = fleet();
    let srv = tls::mobile_port_server_config(&f.gateway, f.ca.mobile_ca(), &opts()).unwrap();
    let mobile = tls::mobile_client_config(Some(&f.mobile), f.ca.server_ca(), &opts()).unwrap();
    let out = handshake(srv.clone(), mobile, "dmz.example.com").await;
    assert!(out.accepted(), "{:?} {:?}", out.server, out.client);
    assert_eq!(out.server.unwrap().0.unwrap().role, Some(Role::Mobile));
    // An agent certificate is from the wrong CA for this port.
    let agent = tls::agent_client_config(&f.agent, f.ca.server_ca(), &opts()).unwrap();
    assert!(
        handshake(srv.clone(), agent, "dmz.example.com")
            .await
            .refused()
    );
    // No certificate at all.
    let anon = tls::mobile_client_config(None, f.ca.server_ca(), &opts()).unwrap();
    assert!(handshake(srv, anon, "dmz.example.com").await.refused());
}

#[tokio::test]
async fn mobile_port_without_client_auth_and_gateway_name_checks() {
    let f = fleet();
    let srv = tls::mobile_port_server_config_without_client_auth(&f.gateway, &opts()).unwrap();
    let anon = tls::mobile_client_config(None, f.ca.server_ca(), &opts()).unwrap();
    let out = handshake(srv.clone(), anon.clone(), "gw.example.com").await;
    assert!(out.accepted(), "{:?} {:?}", out.server, out.client);
    assert!(
        out.server.unwrap().0.is_none(),
        "no client certificate was asked for"
    );
    // The device dialled a name the gateway certificate does not hold.
    let out = handshake(srv, anon.clone(), "other.example.com").await;
    assert!(out.refused());
    let err = out.client.unwrap_err();
    assert!(err.contains("not valid for name"), "{err}");
    // A gateway certificate from another CA.
    let rogue_ca = ServerCa::create(
        outpost_pki::PkiConfig::default(),
        std::time::SystemTime::now(),
    )
    .unwrap();
    let rogue = rogue_ca
        .issue_gateway(
            &names(&["gw.example.com"]),
            &[],
            std::time::SystemTime::now(),
        )
        .unwrap();
    let srv = tls::mobile_port_server_config_without_client_auth(&rogue, &opts()).unwrap();
    let out = handshake(srv, anon.clone(), "gw.example.com").await;
    assert!(out.refused());
    // The server's own certificate is from the right CA but is not a gateway certificate.
    let srv = tls::mobile_port_server_config_without_client_auth(&f.server, &opts()).unwrap();
    let out = handshake(srv, anon, "ksc.example.com").await;
    assert!(out.refused());
    let err = out.client.unwrap_err();
    assert!(
        err.contains("WrongRole") && err.contains("expected: \"gateway\""),
        "{err}"
    );
}

#[tokio::test]
async fn signal_link_is_mutual_and_role_checked() {
    let f = fleet();
    let gw_side = tls::gateway_signal_server_config(&f.gateway, f.ca.server_ca(), &opts()).unwrap();
    let srv_side = tls::gateway_signal_client_config(&f.server, f.ca.server_ca(), &opts()).unwrap();
    let out = handshake(gw_side.clone(), srv_side.clone(), "dmz.example.com").await;
    assert!(out.accepted(), "{:?} {:?}", out.server, out.client);
    let (peer, alpn) = out.server.unwrap();
    assert_eq!(peer.unwrap().role, Some(Role::Server));
    assert_eq!(alpn.as_deref(), Some(tls::ALPN_SIGNAL));
    assert_eq!(out.client.unwrap().role, Some(Role::Gateway));

    // An agent certificate (same CA) cannot pose as the server on the signal link.
    let agent_as_server = ClientConfig::clone(
        &tls::agent_client_config(&f.agent, f.ca.server_ca(), &opts()).unwrap(),
    );
    let mut agent_as_server = agent_as_server;
    agent_as_server.alpn_protocols = vec![tls::ALPN_SIGNAL.to_vec()];
    let out = handshake(
        gw_side.clone(),
        Arc::new(agent_as_server),
        "dmz.example.com",
    )
    .await;
    assert!(out.refused(), "{:?} {:?}", out.server, out.client);
    let err = out.server.unwrap_err();
    assert!(
        err.contains("WrongRole") && err.contains("expected: \"server\""),
        "{err}"
    );
    // The server refuses a peer that is not a gateway (here: another server certificate).
    let fake_gw = tls::gateway_signal_server_config(&f.server, f.ca.server_ca(), &opts()).unwrap();
    let out = handshake(fake_gw, srv_side.clone(), "ksc.example.com").await;
    assert!(out.refused());
    // And a gateway that does not hold the dialled name.
    let out = handshake(gw_side, srv_side, "gw2.example.com").await;
    assert!(out.refused());
}

#[tokio::test]
async fn data_link_is_mutual_and_distinct_from_signal() {
    let f = fleet();
    let gw_side = tls::gateway_data_server_config(&f.gateway, f.ca.server_ca(), &opts()).unwrap();
    let srv_side = tls::gateway_data_client_config(&f.server, f.ca.server_ca(), &opts()).unwrap();
    let out = handshake(gw_side.clone(), srv_side, "gw.example.com").await;
    assert!(out.accepted(), "{:?} {:?}", out.server, out.client);
    assert_eq!(out.server.unwrap().1.as_deref(), Some(tls::ALPN_DATA));
    // A signal client does not land on a data port.
    let signal = tls::gateway_signal_client_config(&f.server, f.ca.server_ca(), &opts()).unwrap();
    let out = handshake(gw_side.clone(), signal, "gw.example.com").await;
    assert!(out.refused(), "{:?} {:?}", out.server, out.client);
    // Without a client certificate.
    let anon = tls::mobile_client_config(
        None,
        f.ca.server_ca(),
        &TlsOptions::default().with_alpn(vec![tls::ALPN_DATA.to_vec()]),
    )
    .unwrap();
    assert!(handshake(gw_side, anon, "gw.example.com").await.refused());
}

#[tokio::test]
async fn agent_client_reaches_the_server_by_name() {
    let f = fleet();
    let srv = tls::agent_port_server_config(&f.server, f.ca.server_ca(), &opts()).unwrap();
    let agent = tls::agent_client_config(&f.agent, f.ca.server_ca(), &opts()).unwrap();
    let out = handshake(srv.clone(), agent.clone(), "ksc.example.com").await;
    assert!(out.accepted(), "{:?} {:?}", out.server, out.client);
    assert_eq!(out.client.unwrap().role, Some(Role::Server));
    assert!(handshake(srv, agent, "gw.example.com").await.refused());
}

#[tokio::test]
async fn chain_through_a_ca_false_certificate_is_refused() {
    let f = fleet();
    let now = std::time::SystemTime::now();
    // A client certificate "issued" by the agent's own (CA:false) key, sent with the agent
    // certificate as intermediate.
    let agent_key = rcgen::KeyPair::try_from(f.agent.key_der.secret_pkcs8_der()).unwrap();
    let fake_issuer = rcgen::Issuer::from_ca_cert_der(&f.agent.cert_der, agent_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.not_before = ::time::OffsetDateTime::from(now - days(1));
    params.not_after = ::time::OffsetDateTime::from(now + days(30));
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let forged = params.signed_by(&leaf_key, &fake_issuer).unwrap();
    let chain = vec![forged.der().clone(), f.agent.cert_der.clone()];
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let srv = tls::agent_port_server_config(&f.gateway, f.ca.server_ca(), &opts()).unwrap();
    let mut client = ClientConfig::clone(
        &tls::agent_client_config(&f.agent, f.ca.server_ca(), &opts()).unwrap(),
    );
    let certified =
        outpost_pki::rustls::sign::CertifiedKey::from_der(chain, key, &tls::provider()).unwrap();
    client.client_auth_cert_resolver =
        Arc::new(outpost_pki::rustls::sign::SingleCertAndKey::from(certified));
    let out = handshake(srv, Arc::new(client), "gw.example.com").await;
    assert!(out.refused(), "{:?} {:?}", out.server, out.client);
    let err = out.server.unwrap_err();
    assert!(
        err.contains("CaUsedAsEndEntity")
            || err.contains("EndEntityUsedAsCa")
            || err.contains("UnknownIssuer"),
        "{err}"
    );
}

#[tokio::test]
async fn enrollment_channel_needs_the_server_and_asks_no_client_certificate() {
    let f = fleet();
    let enroll_alpn = TlsOptions::default().with_alpn(vec![tls::ALPN_ENROLL.to_vec()]);
    let srv = tls::mobile_port_server_config_without_client_auth(&f.server, &enroll_alpn).unwrap();
    let client = tls::enrollment_client_config(f.ca.server_ca(), &opts()).unwrap();
    let out = handshake(srv.clone(), client.clone(), "ksc.example.com").await;
    assert!(out.accepted(), "{:?} {:?}", out.server, out.client);
    let (peer, alpn) = out.server.unwrap();
    assert!(
        peer.is_none(),
        "the enrolling device presents no certificate"
    );
    assert_eq!(alpn.as_deref(), Some(tls::ALPN_ENROLL));
    // A gateway certificate is not the server's: a device does not enroll through it.
    let gw = tls::mobile_port_server_config_without_client_auth(&f.gateway, &enroll_alpn).unwrap();
    let out = handshake(gw, client.clone(), "gw.example.com").await;
    assert!(out.refused());
    assert!(out.client.unwrap_err().contains("WrongRole"));
    // Nor is a server certificate from another CA, nor a name it does not hold.
    let rogue_ca = ServerCa::create(
        outpost_pki::PkiConfig::default(),
        std::time::SystemTime::now(),
    )
    .unwrap();
    let rogue = rogue_ca
        .issue_server(
            "admin-server",
            &names(&["ksc.example.com"]),
            &[],
            std::time::SystemTime::now(),
        )
        .unwrap();
    let srv_rogue =
        tls::mobile_port_server_config_without_client_auth(&rogue, &enroll_alpn).unwrap();
    assert!(
        handshake(srv_rogue, client.clone(), "ksc.example.com")
            .await
            .refused()
    );
    assert!(handshake(srv, client, "other.example.com").await.refused());
}

#[tokio::test]
async fn agent_port_accepts_only_agent_certificates() {
    let f = fleet();
    for port_identity in [&f.gateway, &f.server] {
        let srv = tls::agent_port_server_config(port_identity, f.ca.server_ca(), &opts()).unwrap();
        let host = dns_sans(&port_identity.cert_der).remove(0);
        let agent = tls::agent_client_config(&f.agent, f.ca.server_ca(), &opts()).unwrap();
        let out = handshake(srv.clone(), agent, &host).await;
        assert!(out.accepted(), "{:?} {:?}", out.server, out.client);
        assert_eq!(out.server.unwrap().0.unwrap().role, Some(Role::Agent));
        // A server or gateway certificate from the same CA cannot pose as a device.
        for (who, id) in [("server", &f.server), ("gateway", &f.gateway)] {
            let client = tls::agent_client_config(id, f.ca.server_ca(), &opts()).unwrap();
            let out = handshake(srv.clone(), client, &host).await;
            assert!(out.refused(), "{who}: {:?} {:?}", out.server, out.client);
            let err = out.server.unwrap_err();
            assert!(
                err.contains("WrongRole") && err.contains("expected: \"agent\""),
                "{who}: {err}"
            );
        }
    }
}

#[tokio::test]
async fn tunnel_configs_accept_only_a_gateway_dialling_the_server() {
    let f = fleet();
    let srv = tls::tunnel_server_config(&f.server, f.ca.server_ca(), &opts()).unwrap();
    let gw = tls::tunnel_client_config(&f.gateway, f.ca.server_ca(), &opts()).unwrap();
    let out = handshake(srv.clone(), gw.clone(), "ksc.example.com").await;
    assert!(out.accepted(), "{:?} {:?}", out.server, out.client);
    assert_eq!(out.server.unwrap().0.unwrap().role, Some(Role::Gateway));
    assert_eq!(out.client.unwrap().role, Some(Role::Server));
    // An agent certificate does not open a tunnel.
    let agent = tls::agent_client_config(&f.agent, f.ca.server_ca(), &opts()).unwrap();
    let out = handshake(srv, agent, "ksc.example.com").await;
    assert!(out.refused(), "{:?} {:?}", out.server, out.client);
    assert!(out.server.unwrap_err().contains("expected: \"gateway\""));
    // A gateway certificate naming the server's host cannot pose as the server to a
    // remote-office gateway (the agent client config would accept it).
    let now = std::time::SystemTime::now();
    let impostor =
        f.ca.issue_gateway(&names(&["ksc.example.com"]), &[], now)
            .unwrap();
    let fake = tls::tunnel_server_config(&impostor, f.ca.server_ca(), &opts()).unwrap();
    let out = handshake(fake.clone(), gw, "ksc.example.com").await;
    assert!(out.refused(), "{:?} {:?}", out.server, out.client);
    assert!(out.client.unwrap_err().contains("expected: \"server\""));
}
