//! Ready rustls configurations for every TLS role in the system.
//!
//! | port / link | builder | peer must present |
//! |---|---|---|
//! | agent port (server or gateway side) | [`agent_port_server_config`] | an agent certificate (role `agent`) chaining to the server CA |
//! | remote-office tunnel, server side | [`tunnel_server_config`] | a gateway certificate (role `gateway`) chaining to the server CA |
//! | mobile port with client authentication | [`mobile_port_server_config`] | a client certificate chaining to the mobile CA |
//! | mobile port without client authentication | [`mobile_port_server_config_without_client_auth`] | nothing (only when the administrator asks for it) |
//! | signal / data link, DMZ gateway side | [`gateway_signal_server_config`], [`gateway_data_server_config`] | the server's certificate (role `server`) |
//! | signal / data link, server side | [`gateway_signal_client_config`], [`gateway_data_client_config`] | a gateway certificate (role `gateway`) naming the dialled host |
//! | agent dialling the server or a gateway | [`agent_client_config`] | a server or gateway certificate naming the dialled host |
//! | remote-office gateway dialling the server's tunnel | [`tunnel_client_config`] | a server certificate (role `server`) naming the dialled host |
//! | mobile device dialling a gateway | [`mobile_client_config`] | a gateway certificate naming the dialled host |
//! | device enrolling at the server | [`enrollment_client_config`] | a server certificate naming the dialled host (no client certificate) |
//!
//! All use the aws-lc-rs provider ([`provider`]). Every verifier honours the CRLs given in
//! [`TlsOptions`]: a certificate listed on its issuer's CRL is refused; a certificate whose
//! issuer has no CRL among them is not refused for that reason. The wall-clock time used for
//! validity checks comes from [`TlsOptions::time_provider`] (the system clock by default).

use std::sync::Arc;
use std::time::SystemTime;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::time_provider::{DefaultTimeProvider, TimeProvider};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::ca::{CaCertificate, Crl, IssuedCert, Role, parse_cert, role_of};
use crate::error::{CertError, PkiError, Result, TlsError, VerifyError};
use crate::verify::PeerIdentity;

/// ALPN protocol of the signal connection (server to DMZ gateway; never carries data).
pub const ALPN_SIGNAL: &[u8] = b"outpost-signal/1";
/// ALPN protocol of a data connection (server to DMZ gateway, spliced to one device).
pub const ALPN_DATA: &[u8] = b"outpost-data/1";
/// ALPN protocol of the server's enrollment channel: a device without a certificate yet asks
/// for one there (no client certificate is presented).
pub const ALPN_ENROLL: &[u8] = b"outpost-enroll/1";

/// The crypto provider of the whole workspace: aws-lc-rs.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A clock stopped at one instant, for tests and simulations that need a TLS handshake to
/// happen "at" a chosen time (for example after a certificate expired).
#[derive(Debug, Clone, Copy)]
pub struct FixedTime(pub SystemTime);

impl TimeProvider for FixedTime {
    fn current_time(&self) -> Option<UnixTime> {
        self.0
            .duration_since(SystemTime::UNIX_EPOCH)
            .ok()
            .map(UnixTime::since_unix_epoch)
    }
}

/// Options shared by every builder.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct TlsOptions {
    /// Revocation lists the verifiers honour.
    pub crls: Vec<Crl>,
    /// The wall-clock source for validity checks; the system clock if `None`.
    pub time_provider: Option<Arc<dyn TimeProvider>>,
    /// ALPN protocols to offer or accept, replacing the builder's default (the signal and data
    /// builders default to [`ALPN_SIGNAL`] / [`ALPN_DATA`], the others to none).
    pub alpn: Option<Vec<Vec<u8>>>,
}

impl TlsOptions {
    /// Adds revocation lists.
    pub fn with_crls(mut self, crls: impl IntoIterator<Item = Crl>) -> Self {
        self.crls.extend(crls);
        self
    }

    /// Sets the wall-clock source.
    pub fn with_time_provider(mut self, time: Arc<dyn TimeProvider>) -> Self {
        self.time_provider = Some(time);
        self
    }

    /// Sets the ALPN protocols.
    pub fn with_alpn(mut self, protocols: Vec<Vec<u8>>) -> Self {
        self.alpn = Some(protocols);
        self
    }

    fn time(&self) -> Arc<dyn TimeProvider> {
        self.time_provider
            .clone()
            .unwrap_or_else(|| Arc::new(DefaultTimeProvider))
    }

    fn crl_ders(&self) -> Vec<rustls_pki_types::CertificateRevocationListDer<'static>> {
        self.crls.iter().map(|c| c.der().clone()).collect()
    }

    fn alpn_or(&self, default: &[&[u8]]) -> Vec<Vec<u8>> {
        self.alpn
            .clone()
            .unwrap_or_else(|| default.iter().map(|p| p.to_vec()).collect())
    }
}

fn roots(ca: &CaCertificate, what: &'static str) -> Result<Arc<RootCertStore>> {
    let mut store = RootCertStore::empty();
    store
        .add(ca.der().clone())
        .map_err(|source| PkiError::Tls(TlsError::Config { what, source }))?;
    Ok(Arc::new(store))
}

fn client_verifier(
    ca: &CaCertificate,
    opts: &TlsOptions,
    what: &'static str,
) -> Result<Arc<dyn ClientCertVerifier>> {
    WebPkiClientVerifier::builder_with_provider(roots(ca, what)?, provider())
        .with_crls(opts.crl_ders())
        .only_check_end_entity_revocation()
        .allow_unknown_revocation_status()
        .build()
        .map_err(|source| TlsError::VerifierBuild { what, source }.into())
}

fn server_verifier(
    ca: &CaCertificate,
    opts: &TlsOptions,
    what: &'static str,
) -> Result<Arc<WebPkiServerVerifier>> {
    WebPkiServerVerifier::builder_with_provider(roots(ca, what)?, provider())
        .with_crls(opts.crl_ders())
        .only_check_end_entity_revocation()
        .allow_unknown_revocation_status()
        .build()
        .map_err(|source| TlsError::VerifierBuild { what, source }.into())
}

fn server_config(
    identity: &IssuedCert,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    opts: &TlsOptions,
    alpn: Vec<Vec<u8>>,
    what: &'static str,
) -> Result<Arc<ServerConfig>> {
    let tls = |source| PkiError::Tls(TlsError::Config { what, source });
    let builder = ServerConfig::builder_with_details(provider(), opts.time())
        .with_safe_default_protocol_versions()
        .map_err(tls)?;
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(identity.chain.clone(), identity.private_key())
        .map_err(tls)?;
    cfg.alpn_protocols = alpn;
    Ok(Arc::new(cfg))
}

fn client_config(
    identity: Option<&IssuedCert>,
    verifier: Arc<dyn ServerCertVerifier>,
    opts: &TlsOptions,
    alpn: Vec<Vec<u8>>,
    what: &'static str,
) -> Result<Arc<ClientConfig>> {
    let tls = |source| PkiError::Tls(TlsError::Config { what, source });
    let builder = ClientConfig::builder_with_details(provider(), opts.time())
        .with_safe_default_protocol_versions()
        .map_err(tls)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut cfg = match identity {
        Some(id) => builder
            .with_client_auth_cert(id.chain.clone(), id.private_key())
            .map_err(tls)?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn;
    Ok(Arc::new(cfg))
}

/// The agent port (13000) of the server or of a gateway: presents `identity` and requires a
/// client certificate chaining to `server_ca` with role `agent` (a server or gateway
/// certificate from the same CA cannot pose as a device).
///
/// # Errors
/// [`TlsError::Config`] if the key does not fit the certificate, [`TlsError::VerifierBuild`] for
/// an unusable CRL.
pub fn agent_port_server_config(
    identity: &IssuedCert,
    server_ca: &CaCertificate,
    opts: &TlsOptions,
) -> Result<Arc<ServerConfig>> {
    role_server_config(identity, server_ca, opts, Role::Agent, "agent port")
}

/// The server's side of a remote-office gateway's tunnel: presents the server certificate
/// and requires a client certificate chaining to `server_ca` with role `gateway`. Offers no
/// ALPN protocol unless `opts` gives one (the caller passes its tunnel protocol id).
///
/// # Errors
/// As [`agent_port_server_config`].
pub fn tunnel_server_config(
    server_identity: &IssuedCert,
    server_ca: &CaCertificate,
    opts: &TlsOptions,
) -> Result<Arc<ServerConfig>> {
    role_server_config(
        server_identity,
        server_ca,
        opts,
        Role::Gateway,
        "tunnel (server)",
    )
}

fn role_server_config(
    identity: &IssuedCert,
    server_ca: &CaCertificate,
    opts: &TlsOptions,
    role: Role,
    what: &'static str,
) -> Result<Arc<ServerConfig>> {
    let inner = client_verifier(server_ca, opts, what)?;
    let v: Arc<dyn ClientCertVerifier> = Arc::new(RoleClientVerifier { inner, role });
    server_config(identity, Some(v), opts, opts.alpn_or(&[]), what)
}

/// A gateway's mobile port with client authentication: requires a client certificate
/// chaining to the mobile CA.
///
/// # Errors
/// As [`agent_port_server_config`].
pub fn mobile_port_server_config(
    identity: &IssuedCert,
    mobile_ca: &CaCertificate,
    opts: &TlsOptions,
) -> Result<Arc<ServerConfig>> {
    let what = "mobile port";
    let v = client_verifier(mobile_ca, opts, what)?;
    server_config(identity, Some(v), opts, opts.alpn_or(&[]), what)
}

/// A gateway's mobile port **without** client authentication. Less secure; build it only
/// when the administrator explicitly opened such a port, and say so in the log.
///
/// # Errors
/// [`TlsError::Config`] if the key does not fit the certificate.
pub fn mobile_port_server_config_without_client_auth(
    identity: &IssuedCert,
    opts: &TlsOptions,
) -> Result<Arc<ServerConfig>> {
    server_config(
        identity,
        None,
        opts,
        opts.alpn_or(&[]),
        "mobile port without client authentication",
    )
}

/// The DMZ gateway's side of the signal connection: presents the gateway certificate and
/// accepts only the Administration Server's certificate (role `server`, server CA).
///
/// # Errors
/// As [`agent_port_server_config`].
pub fn gateway_signal_server_config(
    gateway_identity: &IssuedCert,
    server_ca: &CaCertificate,
    opts: &TlsOptions,
) -> Result<Arc<ServerConfig>> {
    link_server_config(
        gateway_identity,
        server_ca,
        opts,
        ALPN_SIGNAL,
        "signal link (gateway)",
    )
}

/// The DMZ gateway's side of a data connection (as the signal side, with [`ALPN_DATA`]).
///
/// # Errors
/// As [`agent_port_server_config`].
pub fn gateway_data_server_config(
    gateway_identity: &IssuedCert,
    server_ca: &CaCertificate,
    opts: &TlsOptions,
) -> Result<Arc<ServerConfig>> {
    link_server_config(
        gateway_identity,
        server_ca,
        opts,
        ALPN_DATA,
        "data link (gateway)",
    )
}

fn link_server_config(
    identity: &IssuedCert,
    server_ca: &CaCertificate,
    opts: &TlsOptions,
    alpn: &[u8],
    what: &'static str,
) -> Result<Arc<ServerConfig>> {
    let inner = client_verifier(server_ca, opts, what)?;
    let v: Arc<dyn ClientCertVerifier> = Arc::new(RoleClientVerifier {
        inner,
        role: Role::Server,
    });
    server_config(identity, Some(v), opts, opts.alpn_or(&[alpn]), what)
}

/// The server's side of the signal connection it dials to a DMZ gateway: presents the
/// server certificate and accepts only a gateway certificate (role `gateway`) from the
/// server CA naming the host dialled.
///
/// # Errors
/// As [`agent_port_server_config`].
pub fn gateway_signal_client_config(
    server_identity: &IssuedCert,
    server_ca: &CaCertificate,
    opts: &TlsOptions,
) -> Result<Arc<ClientConfig>> {
    link_client_config(
        server_identity,
        server_ca,
        opts,
        ALPN_SIGNAL,
        "signal link (server)",
    )
}

/// The server's side of a data connection to a DMZ gateway (as the signal side, with
/// [`ALPN_DATA`]).
///
/// # Errors
/// As [`agent_port_server_config`].
pub fn gateway_data_client_config(
    server_identity: &IssuedCert,
    server_ca: &CaCertificate,
    opts: &TlsOptions,
) -> Result<Arc<ClientConfig>> {
    link_client_config(
        server_identity,
        server_ca,
        opts,
        ALPN_DATA,
        "data link (server)",
    )
}

fn link_client_config(
    identity: &IssuedCert,
    server_ca: &CaCertificate,
    opts: &TlsOptions,
    alpn: &[u8],
    what: &'static str,
) -> Result<Arc<ClientConfig>> {
    let inner = server_verifier(server_ca, opts, what)?;
    let v = Arc::new(RoleServerVerifier {
        inner,
        roles: &[Role::Gateway],
    });
    client_config(Some(identity), v, opts, opts.alpn_or(&[alpn]), what)
}

/// A Network Agent dialling the server or a gateway: presents the agent certificate and
/// accepts a server or gateway certificate from the server CA naming the host dialled.
///
/// # Errors
/// As [`agent_port_server_config`].
pub fn agent_client_config(
    agent_identity: &IssuedCert,
    server_ca: &CaCertificate,
    opts: &TlsOptions,
) -> Result<Arc<ClientConfig>> {
    let what = "agent client";
    let inner = server_verifier(server_ca, opts, what)?;
    let v = Arc::new(RoleServerVerifier {
        inner,
        roles: &[Role::Server, Role::Gateway],
    });
    client_config(Some(agent_identity), v, opts, opts.alpn_or(&[]), what)
}

/// A remote-office gateway dialling the server to open a tunnel: presents the gateway
/// certificate and accepts only the server's certificate (role `server`) from the server CA
/// naming the host dialled. Offers no ALPN protocol unless `opts` gives one.
///
/// # Errors
/// As [`agent_port_server_config`].
pub fn tunnel_client_config(
    gateway_identity: &IssuedCert,
    server_ca: &CaCertificate,
    opts: &TlsOptions,
) -> Result<Arc<ClientConfig>> {
    let what = "tunnel (gateway)";
    let inner = server_verifier(server_ca, opts, what)?;
    let v = Arc::new(RoleServerVerifier {
        inner,
        roles: &[Role::Server],
    });
    client_config(Some(gateway_identity), v, opts, opts.alpn_or(&[]), what)
}

/// A device without a certificate yet, dialling the server's enrollment channel: accepts only
/// a server certificate signed by the server CA naming the host dialled, presents no client
/// certificate, and offers ALPN [`ALPN_ENROLL`] unless `opts` says otherwise.
///
/// # Errors
/// As [`agent_port_server_config`].
pub fn enrollment_client_config(
    server_ca: &CaCertificate,
    opts: &TlsOptions,
) -> Result<Arc<ClientConfig>> {
    let what = "enrollment client";
    let inner = server_verifier(server_ca, opts, what)?;
    let v = Arc::new(RoleServerVerifier {
        inner,
        roles: &[Role::Server],
    });
    client_config(None, v, opts, opts.alpn_or(&[ALPN_ENROLL]), what)
}

/// The ALPN protocol of the administration API (HTTP/1.1 over TLS).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The Administration Server's HTTPS administration API: presents `identity` (the server
/// certificate), asks no client certificate (callers authenticate with a session or API
/// token), and offers ALPN [`ALPN_HTTP1`] unless `opts` says otherwise.
///
/// # Errors
/// [`TlsError::Config`] if the key does not fit the certificate.
pub fn api_server_config(identity: &IssuedCert, opts: &TlsOptions) -> Result<Arc<ServerConfig>> {
    server_config(
        identity,
        None,
        opts,
        opts.alpn_or(&[ALPN_HTTP1]),
        "administration API",
    )
}

/// A client of the administration API: accepts only a server certificate signed by the
/// server CA, with the server role, naming the host dialled; offers ALPN [`ALPN_HTTP1`].
///
/// # Errors
/// As [`agent_port_server_config`].
pub fn api_client_config(
    server_ca: &CaCertificate,
    opts: &TlsOptions,
) -> Result<Arc<ClientConfig>> {
    let what = "administration API client";
    let inner = server_verifier(server_ca, opts, what)?;
    let v = Arc::new(RoleServerVerifier {
        inner,
        roles: &[Role::Server],
    });
    client_config(None, v, opts, opts.alpn_or(&[ALPN_HTTP1]), what)
}

/// A mobile device dialling a gateway: accepts a gateway certificate signed by the server CA
/// naming the host dialled; presents `mobile_identity` if given (required by the port with
/// client authentication).
///
/// # Errors
/// As [`agent_port_server_config`].
pub fn mobile_client_config(
    mobile_identity: Option<&IssuedCert>,
    server_ca: &CaCertificate,
    opts: &TlsOptions,
) -> Result<Arc<ClientConfig>> {
    let what = "mobile client";
    let inner = server_verifier(server_ca, opts, what)?;
    let v = Arc::new(RoleServerVerifier {
        inner,
        roles: &[Role::Gateway],
    });
    client_config(mobile_identity, v, opts, opts.alpn_or(&[]), what)
}

/// The identity (SHA-256 fingerprint, subject, role) of the peer of a finished handshake,
/// from `peer_certificates()` of a rustls connection.
///
/// # Errors
/// [`CertError::Malformed`] if the peer sent no certificate or an unreadable one.
pub fn peer_identity(peer_certificates: Option<&[CertificateDer<'_>]>) -> Result<PeerIdentity> {
    let first = peer_certificates.and_then(<[_]>::first).ok_or_else(|| {
        PkiError::Cert(CertError::Malformed {
            what: "peer certificate".to_owned(),
            reason: "the peer presented no certificate".to_owned(),
        })
    })?;
    PeerIdentity::from_der(first)
}

fn check_role(cert: &CertificateDer<'_>, allowed: &[Role]) -> Result<(), rustls::Error> {
    let parsed = parse_cert(cert, "peer certificate")
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let found = role_of(&parsed);
    if found.is_some_and(|r| allowed.contains(&r)) {
        return Ok(());
    }
    let expected = match allowed {
        [Role::Server] => "server",
        [Role::Gateway] => "gateway",
        [Role::Agent] => "agent",
        [Role::Mobile] => "mobile",
        _ => "server or gateway",
    };
    let err = PkiError::Verify(VerifyError::WrongRole {
        subject: parsed.subject().to_string(),
        found: found.map(|r| r.to_string()),
        expected,
    });
    Err(rustls::Error::InvalidCertificate(CertificateError::Other(
        OtherError(Arc::new(err)),
    )))
}

/// Client verifier that also requires the client certificate to carry a given role.
#[derive(Debug)]
struct RoleClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    role: Role,
}

impl ClientCertVerifier for RoleClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        true
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        check_role(end_entity, &[self.role])?;
        Ok(ok)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Server verifier (name, chain, CRL) that also requires one of the given roles.
#[derive(Debug)]
struct RoleServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    roles: &'static [Role],
}

impl ServerCertVerifier for RoleServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ok = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        check_role(end_entity, self.roles)?;
        Ok(ok)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
