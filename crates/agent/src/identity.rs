//! The agent's identity: its key, its certificate chain and the server CA, loaded from the
//! data directory or obtained by enrolling.
//!
//! Enrollment goes directly to the server's device port over its enrollment channel (TLS
//! without a client certificate, ALPN `outpost-enroll/1`), trusting the server CA named in
//! the configuration; connection gateways do not relay enrollment. The agent makes its own
//! key pair, sends a certificate request bound to no name (the server names the certificate
//! after the device id it accepts) with the one-time token, and stores the answer: key mode
//! 0600, the chain, and the CA it must trust from then on.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use outpost_pki::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use outpost_pki::tls::{TlsOptions, enrollment_client_config};
use outpost_pki::{CaCertificate, IssuedCert, KeyPair};
use outpost_wire::messages::{EnrollRequest, Hello, RefusalCode, Role};
use outpost_wire::{Message, MessageCodec, VersionRange};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_util::codec::Framed;

use crate::AgentError;
use crate::config::{AgentConfig, Endpoint};
use crate::store::{CA_FILE, CHAIN_FILE, KEY_FILE, RESERVE_CHAIN_FILE, RESERVE_KEY_FILE};

/// A TLS connection speaking the wire protocol.
pub type Connection = Framed<tokio_rustls::client::TlsStream<TcpStream>, MessageCodec>;

/// The agent's certificate and key, and the server CA it trusts.
#[derive(Debug)]
#[non_exhaustive]
pub struct Identity {
    /// The agent certificate (chain) and key.
    pub cert: IssuedCert,
    /// The server CA.
    pub ca: CaCertificate,
}

/// Dials `ep` and completes the TLS handshake within `timeout`.
///
/// # Errors
/// [`AgentError::Connect`] naming the endpoint and why.
pub async fn dial(
    tls: Arc<ClientConfig>,
    ep: &Endpoint,
    timeout: Duration,
) -> Result<Connection, AgentError> {
    let err = |reason: String| AgentError::Connect {
        addr: ep.addr,
        name: ep.name.clone(),
        reason,
    };
    let name = ServerName::try_from(ep.name.clone())
        .map_err(|_| err("not a DNS name or IP address".into()))?;
    let fut = async {
        let tcp = TcpStream::connect(ep.addr)
            .await
            .map_err(|e| err(format!("TCP: {e}")))?;
        let _ = tcp.set_nodelay(true);
        TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| err(format!("TLS: {e}")))
    };
    let tls = tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| err(format!("no connection within {timeout:?}")))??;
    Ok(Framed::new(tls, MessageCodec::new()))
}

/// Loads the identity stored in `dir`; `None` if none of its files exist.
///
/// # Errors
/// [`AgentError::IncompleteIdentity`] if only some files exist, [`AgentError::Pki`] if one
/// is unreadable or the key does not match the certificate.
pub fn load(dir: &Path) -> Result<Option<Identity>, AgentError> {
    let files = [KEY_FILE, CHAIN_FILE, CA_FILE];
    let present: Vec<bool> = files.iter().map(|f| dir.join(f).exists()).collect();
    if present.iter().all(|p| !p) {
        return Ok(None);
    }
    if let Some(i) = present.iter().position(|p| !p) {
        return Err(AgentError::IncompleteIdentity {
            dir: dir.to_path_buf(),
            missing: files[i],
        });
    }
    let ca = outpost_pki::store::read_ca_certificate(&dir.join(CA_FILE))?;
    let cert = match read_pair(dir, CHAIN_FILE, KEY_FILE) {
        Ok(cert) => cert,
        // A switch to the reserve stopped between its two files: finish it.
        Err(e) => match load_reserve(dir) {
            Ok(Some(reserve)) => {
                tracing::warn!(
                    "agent identity in {}: {e}; finishing the switch to the reserve certificate",
                    dir.display()
                );
                switch_to_reserve(dir)?;
                reserve
            }
            _ => return Err(e),
        },
    };
    Ok(Some(Identity { cert, ca }))
}

fn read_pair(dir: &Path, chain: &str, key: &str) -> Result<IssuedCert, AgentError> {
    let chain = outpost_pki::store::read_certificates(&dir.join(chain))?;
    let key = outpost_pki::store::read_private_key_der(&dir.join(key))?;
    Ok(IssuedCert::from_parts(chain, key)?)
}

/// The reserve certificate kept in `dir`, if one is.
///
/// # Errors
/// [`AgentError::Pki`] if its files are unreadable or do not belong together.
pub fn load_reserve(dir: &Path) -> Result<Option<IssuedCert>, AgentError> {
    if !dir.join(RESERVE_CHAIN_FILE).exists() || !dir.join(RESERVE_KEY_FILE).exists() {
        return Ok(None);
    }
    read_pair(dir, RESERVE_CHAIN_FILE, RESERVE_KEY_FILE).map(Some)
}

/// Stores a reserve certificate (key first, mode 0600, then the chain; each atomically).
///
/// # Errors
/// A file error.
pub fn save_reserve(dir: &Path, cert: &IssuedCert) -> Result<(), AgentError> {
    outpost_pki::store::write_private_key(&dir.join(RESERVE_KEY_FILE), &cert.key_pem())?;
    crate::store::write_atomic(&dir.join(RESERVE_CHAIN_FILE), cert.chain_pem().as_bytes())?;
    Ok(())
}

/// Makes the reserve certificate in `dir` the agent's certificate: its key and chain replace
/// the current ones, then the reserve files go. A stop half-way is finished by [`load`].
///
/// # Errors
/// [`AgentError::Pki`] if there is no usable reserve, or a file error.
pub fn switch_to_reserve(dir: &Path) -> Result<IssuedCert, AgentError> {
    let reserve = read_pair(dir, RESERVE_CHAIN_FILE, RESERVE_KEY_FILE)?;
    outpost_pki::store::write_private_key(&dir.join(KEY_FILE), &reserve.key_pem())?;
    crate::store::write_atomic(&dir.join(CHAIN_FILE), reserve.chain_pem().as_bytes())?;
    for f in [RESERVE_CHAIN_FILE, RESERVE_KEY_FILE] {
        let p = dir.join(f);
        std::fs::remove_file(&p).map_err(AgentError::io("remove", &p))?;
    }
    Ok(reserve)
}

/// A fresh key and a certificate request for it, for a reserve certificate (the server names
/// the certificate after the device its connection authenticated).
///
/// # Errors
/// [`AgentError::Pki`] if the key or the request cannot be made.
pub fn reserve_request() -> Result<(KeyPair, Vec<u8>), AgentError> {
    key_and_request()
}

fn key_and_request() -> Result<(KeyPair, Vec<u8>), AgentError> {
    let key =
        KeyPair::generate().map_err(|e| AgentError::Protocol(format!("key generation: {e}")))?;
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .and_then(|p| p.serialize_request(&key))
        .map_err(|e| AgentError::Protocol(format!("certificate request: {e}")))?;
    Ok((key, csr.der().to_vec()))
}

/// The certificate a `RenewResponse` carries, for `key`, checked: it belongs to `key`, was
/// issued by `ca` to `device_id`, and is valid at `now`.
///
/// # Errors
/// [`AgentError::Pki`] naming what does not hold, or [`AgentError::Protocol`] for a
/// certificate of another device.
pub fn reserve_from(
    resp: &outpost_wire::messages::RenewResponse,
    key: &KeyPair,
    ca: &CaCertificate,
    device_id: &str,
    now: std::time::SystemTime,
) -> Result<IssuedCert, AgentError> {
    let mut chain = vec![CertificateDer::from(resp.certificate_der.to_vec())];
    chain.extend(
        resp.chain_der
            .iter()
            .map(|c| CertificateDer::from(c.to_vec())),
    );
    chain.push(ca.der().clone());
    let cert = IssuedCert::from_parts(chain, PrivatePkcs8KeyDer::from(key.serialize_der()))?;
    let who = outpost_pki::check_client_certificate(&cert.cert_der, ca, &[], now)?;
    if who.common_name.as_deref() != Some(device_id) {
        return Err(AgentError::Protocol(format!(
            "the reserve certificate names {:?}, not {device_id:?}",
            who.common_name
        )));
    }
    Ok(cert)
}

fn save(dir: &Path, id: &Identity) -> Result<(), AgentError> {
    std::fs::create_dir_all(dir).map_err(AgentError::io("create", dir))?;
    outpost_pki::store::write_private_key(&dir.join(KEY_FILE), &id.cert.key_pem())?;
    crate::store::write_atomic(&dir.join(CHAIN_FILE), id.cert.chain_pem().as_bytes())?;
    crate::store::write_atomic(&dir.join(CA_FILE), id.ca.to_pem().as_bytes())?;
    Ok(())
}

async fn next(conn: &mut Connection, timeout: Duration, what: &str) -> Result<Message, AgentError> {
    match tokio::time::timeout(timeout, conn.next()).await {
        Err(_) => Err(AgentError::Protocol(format!(
            "no {what} within {timeout:?}"
        ))),
        Ok(None) => Err(AgentError::Protocol(format!(
            "closed while waiting for {what}"
        ))),
        Ok(Some(Err(e))) => Err(AgentError::Protocol(format!("waiting for {what}: {e}"))),
        Ok(Some(Ok(m))) => Ok(m),
    }
}

fn refusal_name(code: i32) -> String {
    format!(
        "{:?}",
        RefusalCode::try_from(code).unwrap_or(RefusalCode::Unspecified)
    )
}

/// Enrolls with the server named in `config.enrollment` and stores the identity in
/// `config.data_dir`.
///
/// # Errors
/// [`AgentError::Config`] if the enrollment settings are missing,
/// [`AgentError::EnrollmentRefused`] with the server's code and reason, or a connection,
/// protocol or file error.
pub async fn enroll(config: &AgentConfig) -> Result<Identity, AgentError> {
    let e = &config.enrollment;
    let server = e.server.as_ref().ok_or_else(|| {
        AgentError::config(
            "enrollment.server",
            format!(
                "required: {} holds no identity, so the agent must enroll",
                config.data_dir.display()
            ),
        )
    })?;
    if e.token.is_empty() {
        return Err(AgentError::config(
            "enrollment.token",
            "required: the agent holds no identity and must enroll with a token",
        ));
    }
    let ca = outpost_pki::store::read_ca_certificate(&e.server_ca)?;
    let tls = enrollment_client_config(&ca, &TlsOptions::default())?;
    let timeout = Duration::from_millis(config.request_timeout_ms);
    let mut conn = dial(tls, server, config.connect_timeout()).await?;
    let send_err = |e| AgentError::Protocol(format!("sending to {}: {e}", server.addr));
    conn.send(Message::from(Hello {
        min_version: VersionRange::CURRENT.min,
        max_version: VersionRange::CURRENT.max,
        role: Role::Agent as i32,
        node_id: config.device_id.clone(),
        software: concat!("outpost-agent ", env!("CARGO_PKG_VERSION")).into(),
    }))
    .await
    .map_err(send_err)?;
    let refused = |code: i32, reason: String| AgentError::EnrollmentRefused {
        device_id: config.device_id.clone(),
        code: refusal_name(code),
        reason,
    };
    match next(&mut conn, timeout, "HelloAck").await? {
        Message::HelloAck(a) if VersionRange::CURRENT.contains(a.version) => {}
        Message::HelloAck(a) => {
            return Err(AgentError::Protocol(format!(
                "the server chose protocol version {}, outside {}",
                a.version,
                VersionRange::CURRENT
            )));
        }
        Message::Refusal(r) => return Err(refused(r.code, r.reason)),
        other => {
            return Err(AgentError::Protocol(format!(
                "expected HelloAck, got {}",
                other.message_type().name()
            )));
        }
    }
    let (key, csr) = key_and_request()?;
    conn.send(Message::from(EnrollRequest {
        device_id: config.device_id.clone(),
        csr_der: csr.into(),
        enrollment_token: e.token.clone(),
        group_hint: e.group_hint.clone(),
    }))
    .await
    .map_err(send_err)?;
    let resp = match next(&mut conn, timeout, "EnrollResponse").await? {
        Message::EnrollResponse(r) => r,
        Message::Refusal(r) => return Err(refused(r.code, r.reason)),
        other => {
            return Err(AgentError::Protocol(format!(
                "expected EnrollResponse, got {}",
                other.message_type().name()
            )));
        }
    };
    let new_ca = CaCertificate::from_der(CertificateDer::from(resp.ca_der.to_vec()))?;
    let mut chain = vec![CertificateDer::from(resp.certificate_der.to_vec())];
    chain.extend(
        resp.chain_der
            .iter()
            .map(|c| CertificateDer::from(c.to_vec())),
    );
    chain.push(new_ca.der().clone());
    let cert = IssuedCert::from_parts(chain, PrivatePkcs8KeyDer::from(key.serialize_der()))?;
    let id = Identity { cert, ca: new_ca };
    save(&config.data_dir, &id)?;
    tracing::info!("enrolled in group {:?}", resp.group);
    Ok(id)
}

/// The stored identity, or a new one from enrolling; the flag says whether it enrolled.
///
/// # Errors
/// As [`load`] and [`enroll`].
pub async fn load_or_enroll(config: &AgentConfig) -> Result<(Identity, bool), AgentError> {
    if let Some(id) = load(&config.data_dir)? {
        return Ok((id, false));
    }
    let give_up = std::time::Instant::now() + Duration::from_millis(config.enrollment.retry_for_ms);
    let mut backoff = outpost_wire::backoff::Backoff::new(
        Duration::from_millis(config.backoff.initial_ms),
        Duration::from_millis(config.backoff.max_ms),
        config
            .backoff
            .seed
            .unwrap_or_else(|| outpost_wire::backoff::seed_for(&config.device_id)),
    );
    loop {
        match enroll(config).await {
            Ok(id) => return Ok((id, true)),
            Err(e) if e.enrollment_may_pass_later() => {
                let delay = backoff.next_delay();
                if std::time::Instant::now() + delay > give_up {
                    return Err(e);
                }
                tracing::warn!(
                    "enrollment failed, trying again in {} ms: {e}",
                    delay.as_millis()
                );
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}
