//! Certificate authorities and typed issuance.

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PublicKeyData, RevokedCertParams, SanType, SerialNumber,
};
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, PrivatePkcs8KeyDer,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::config::{CsrCaRequestPolicy, PkiConfig};
use crate::csr::CsrInfo;
use crate::error::{PkiError, Result};
use crate::names::{validate_device_id, validate_identity, validate_san_set};
use crate::pem_util::{encode_pem, single_pem_block};
use crate::time::Timestamp;

/// Longest common name written into a certificate (X.520 ub-common-name).
const MAX_COMMON_NAME_LEN: usize = 64;

/// What an issued certificate is for. Written into the subject as `OU=outpost-<role>` so that
/// a peer can tell a server certificate from an agent certificate signed by the same CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Role {
    /// The Administration Server (TLS server for agents, TLS client towards DMZ gateways).
    Server,
    /// A connection gateway (TLS server for agents, mobile devices and the server's links).
    Gateway,
    /// A Network Agent (TLS client).
    Agent,
    /// A mobile device (TLS client, issued by the mobile CA).
    Mobile,
}

impl Role {
    /// The organisational-unit tag written into the subject (`outpost-server`, ...).
    pub fn tag(self) -> &'static str {
        match self {
            Role::Server => "outpost-server",
            Role::Gateway => "outpost-gateway",
            Role::Agent => "outpost-agent",
            Role::Mobile => "outpost-mobile",
        }
    }

    /// Parses a tag written by [`Role::tag`].
    pub fn from_tag(tag: &str) -> Option<Role> {
        [Role::Server, Role::Gateway, Role::Agent, Role::Mobile]
            .into_iter()
            .find(|r| r.tag() == tag)
    }

    fn extended_key_usages(self) -> Vec<ExtendedKeyUsagePurpose> {
        match self {
            // The server and gateways are TLS servers and also dial each other with client
            // authentication (signal and data connections).
            Role::Server | Role::Gateway => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Role::Agent | Role::Mobile => vec![ExtendedKeyUsagePurpose::ClientAuth],
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Server => "server",
            Role::Gateway => "gateway",
            Role::Agent => "agent",
            Role::Mobile => "mobile",
        })
    }
}

/// The identity a certificate is issued for, decided by the server (never by a requester).
///
/// Built only through the validating constructors, so every value is well-formed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertProfile {
    role: Role,
    common_name: String,
    dns_names: Vec<String>,
    ip_addresses: Vec<IpAddr>,
    virtual_server: Option<String>,
}

/// The subjectAltName URI prefix that binds a device certificate to a virtual server:
/// `urn:outpost:virtual-server:<id>`.
pub const VIRTUAL_SERVER_URI_PREFIX: &str = "urn:outpost:virtual-server:";

impl CertProfile {
    /// The Administration Server: `common_name` plus the DNS names and addresses agents dial.
    ///
    /// # Errors
    /// An invalid or duplicate name, or no name and no address at all.
    pub fn server(common_name: &str, dns_names: &[String], ips: &[IpAddr]) -> Result<Self> {
        validate_identity("common name", common_name)?;
        let (dns_names, ip_addresses) = validate_san_set(dns_names, ips)?;
        if dns_names.is_empty() && ip_addresses.is_empty() {
            return Err(PkiError::NoNames { role: "server" });
        }
        Ok(Self {
            role: Role::Server,
            common_name: common_name.to_owned(),
            dns_names,
            ip_addresses,
            virtual_server: None,
        })
    }

    /// A connection gateway: every DNS name (and address) the administrator entered. The
    /// common name is the first DNS name that fits in a common name (at most 64 characters,
    /// X.520's upper bound), else the first address, else `outpost-gateway`. Peers match the
    /// subjectAltName, never the common name.
    ///
    /// # Errors
    /// [`PkiError::InvalidDnsName`] naming the first bad name, [`PkiError::DuplicateName`],
    /// or [`PkiError::NoNames`].
    pub fn gateway(dns_names: &[String], ips: &[IpAddr]) -> Result<Self> {
        let (dns_names, ip_addresses) = validate_san_set(dns_names, ips)?;
        if dns_names.is_empty() && ip_addresses.is_empty() {
            return Err(PkiError::NoNames { role: "gateway" });
        }
        let common_name = dns_names
            .iter()
            .find(|n| n.len() <= MAX_COMMON_NAME_LEN)
            .cloned()
            .or_else(|| ip_addresses.first().map(IpAddr::to_string))
            .unwrap_or_else(|| Role::Gateway.tag().to_owned());
        Ok(Self {
            role: Role::Gateway,
            common_name,
            dns_names,
            ip_addresses,
            virtual_server: None,
        })
    }

    /// A Network Agent bound to `device_id` (the common name).
    ///
    /// # Errors
    /// [`PkiError::InvalidIdentity`] for a bad device id.
    pub fn agent(device_id: &str) -> Result<Self> {
        Self::device(Role::Agent, device_id)
    }

    /// A mobile device bound to `device_id`; issued by the mobile CA.
    ///
    /// # Errors
    /// [`PkiError::InvalidIdentity`] for a bad device id.
    pub fn mobile(device_id: &str) -> Result<Self> {
        Self::device(Role::Mobile, device_id)
    }

    fn device(role: Role, device_id: &str) -> Result<Self> {
        validate_device_id(device_id)?;
        Ok(Self {
            role,
            common_name: device_id.to_owned(),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            virtual_server: None,
        })
    }

    /// Binds a device profile to virtual server `id`: the certificate carries the
    /// subjectAltName URI `urn:outpost:virtual-server:<id>`, and a server routes its
    /// connections to that virtual server only.
    ///
    /// # Errors
    /// [`PkiError::InvalidIdentity`] for a bad id, or a profile that is not a device's
    /// (servers and gateways serve every virtual server).
    pub fn in_virtual_server(mut self, id: &str) -> Result<Self> {
        validate_identity("virtual server id", id)?;
        if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(PkiError::InvalidIdentity {
                what: "virtual server id",
                value: id.to_owned(),
                reason: "only letters, digits and - _ . are allowed",
            });
        }
        if !matches!(self.role, Role::Agent | Role::Mobile) {
            return Err(PkiError::InvalidIdentity {
                what: "virtual server id",
                value: id.to_owned(),
                reason: "only device certificates are bound to a virtual server",
            });
        }
        self.virtual_server = Some(id.to_owned());
        Ok(self)
    }

    /// Reads the profile back from a certificate issued by this crate (role from the `OU`,
    /// identity from the `CN`, names from the subjectAltName), re-validating every part.
    ///
    /// # Errors
    /// [`PkiError::MalformedCertificate`] if the certificate is unreadable or carries no role.
    pub fn from_certificate(der: &[u8]) -> Result<Self> {
        let cert = parse_cert(der, "certificate")?;
        let malformed = |reason: String| PkiError::MalformedCertificate {
            what: "certificate".to_owned(),
            reason,
        };
        let role =
            role_of(&cert).ok_or_else(|| malformed("no outpost role in subject OU".into()))?;
        let cn = common_name_of(&cert).ok_or_else(|| malformed("no common name".into()))?;
        let (dns, ips) = san_of(&cert);
        let profile = match role {
            Role::Server => Self::server(&cn, &dns, &ips),
            Role::Gateway => Self::gateway(&dns, &ips),
            Role::Agent => Self::agent(&cn),
            Role::Mobile => Self::mobile(&cn),
        }?;
        match virtual_server_of(&cert) {
            Some(vs) => profile.in_virtual_server(&vs),
            None => Ok(profile),
        }
    }

    /// The role.
    pub fn role(&self) -> Role {
        self.role
    }
    /// The subject common name.
    pub fn common_name(&self) -> &str {
        &self.common_name
    }
    /// DNS names for the subjectAltName, lower case, in the order given.
    pub fn dns_names(&self) -> &[String] {
        &self.dns_names
    }
    /// IP addresses for the subjectAltName.
    pub fn ip_addresses(&self) -> &[IpAddr] {
        &self.ip_addresses
    }
    /// The virtual server a device certificate is bound to (`None`: the main server).
    pub fn virtual_server(&self) -> Option<&str> {
        self.virtual_server.as_deref()
    }
}

/// A certificate serial number (positive, at most 20 bytes), shown as lower-case hex.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Serial(Vec<u8>);

impl Serial {
    /// The serial of a DER certificate.
    ///
    /// # Errors
    /// [`PkiError`] if `cert_der` is not a certificate or its serial is not acceptable.
    pub fn of_certificate(cert_der: &[u8]) -> Result<Self> {
        Serial::from_bytes(parse_cert(cert_der, "certificate")?.raw_serial())
    }
}

impl Serial {
    /// A fresh random 16-byte serial.
    pub(crate) fn random() -> Result<Self> {
        let mut b = [0u8; 16];
        aws_lc_rs::rand::fill(&mut b).map_err(|_| PkiError::Generation {
            what: "serial number",
            source: rcgen::Error::RingUnspecified,
        })?;
        // Positive and without a leading zero byte, so the DER encoding is exactly 16 bytes.
        b[0] = (b[0] & 0x7f) | 0x40;
        Ok(Self(b.to_vec()))
    }

    /// From big-endian bytes (leading zero bytes are dropped).
    ///
    /// # Errors
    /// [`PkiError::InvalidSerial`] if empty or longer than 20 significant bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
        let b = &bytes[start..];
        let shown = || bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        if b.is_empty() {
            return Err(PkiError::InvalidSerial {
                value: shown(),
                reason: "zero",
            });
        }
        if b.len() > 20 {
            return Err(PkiError::InvalidSerial {
                value: shown(),
                reason: "longer than 20 bytes",
            });
        }
        Ok(Self(b.to_vec()))
    }

    /// Parses hex (colons allowed between bytes).
    ///
    /// # Errors
    /// [`PkiError::InvalidSerial`] naming the value.
    pub fn from_hex(s: &str) -> Result<Self> {
        let clean: String = s.chars().filter(|c| *c != ':').collect();
        let bad = |reason| PkiError::InvalidSerial {
            value: s.to_owned(),
            reason,
        };
        if clean.is_empty() || clean.len() > 40 || !clean.len().is_multiple_of(2) {
            return Err(bad("expected 2 to 40 hex digits, an even number"));
        }
        let mut out = Vec::with_capacity(clean.len() / 2);
        for pair in clean.as_bytes().chunks(2) {
            let hex = std::str::from_utf8(pair).map_err(|_| bad("not hex"))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad("not hex"))?);
        }
        Self::from_bytes(&out)
    }

    /// Big-endian bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Facts about an issued certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Serial number.
    pub serial: Serial,
    /// Start of validity.
    pub not_before: Timestamp,
    /// End of validity.
    pub not_after: Timestamp,
    /// The identity it was issued for.
    pub profile: CertProfile,
}

impl CertInfo {
    /// The serial, validity and identity of a DER certificate.
    pub fn of_certificate(der: &[u8]) -> Result<Self> {
        let parsed = parse_cert(der, "certificate")?;
        Ok(CertInfo {
            serial: Serial::from_bytes(parsed.raw_serial())?,
            not_before: Timestamp::from_unix_seconds(parsed.validity().not_before.timestamp()),
            not_after: Timestamp::from_unix_seconds(parsed.validity().not_after.timestamp()),
            profile: CertProfile::from_certificate(der)?,
        })
    }
}

/// Certificates as concatenated PEM blocks.
fn chain_pem(chain: &[CertificateDer<'static>]) -> String {
    chain.iter().map(|c| encode_pem("CERTIFICATE", c)).collect()
}

/// A certificate issued for a public key the server did not generate (from a CSR).
#[derive(Debug, Clone)]
pub struct SignedCert {
    /// The certificate (DER).
    pub cert_der: CertificateDer<'static>,
    /// The chain to present in TLS: the certificate, then the issuing CA certificate.
    pub chain: Vec<CertificateDer<'static>>,
    /// Serial, validity and identity.
    pub info: CertInfo,
}

impl SignedCert {
    /// The certificate as PEM.
    pub fn cert_pem(&self) -> String {
        encode_pem("CERTIFICATE", &self.cert_der)
    }

    /// The chain (certificate then CA) as concatenated PEM blocks.
    pub fn chain_pem(&self) -> String {
        chain_pem(&self.chain)
    }
}

/// A certificate together with the private key generated for it.
pub struct IssuedCert {
    /// The certificate (DER).
    pub cert_der: CertificateDer<'static>,
    /// The private key, PKCS#8 DER. Secret: write it only with [`crate::store::write_private_key`].
    pub key_der: PrivatePkcs8KeyDer<'static>,
    /// The chain to present in TLS: the certificate, then the issuing CA certificate.
    pub chain: Vec<CertificateDer<'static>>,
    /// Serial, validity and identity.
    pub info: CertInfo,
}

impl IssuedCert {
    /// The certificate as PEM.
    pub fn cert_pem(&self) -> String {
        encode_pem("CERTIFICATE", &self.cert_der)
    }

    /// The chain (certificate then CA) as concatenated PEM blocks.
    pub fn chain_pem(&self) -> String {
        chain_pem(&self.chain)
    }

    /// The private key as PKCS#8 PEM (`PRIVATE KEY`). Secret.
    pub fn key_pem(&self) -> String {
        encode_pem("PRIVATE KEY", self.key_der.secret_pkcs8_der())
    }

    /// The private key in the form rustls takes.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key_der.clone_key())
    }

    /// Builds an `IssuedCert` from a chain and key read back from files (for example with
    /// [`crate::store::read_certificates`] and [`crate::store::read_private_key`]).
    ///
    /// # Errors
    /// [`PkiError::MalformedCertificate`] for an empty chain or an unreadable certificate,
    /// [`PkiError::KeyMismatch`] if the key does not belong to the first certificate.
    pub fn from_parts(
        chain: Vec<CertificateDer<'static>>,
        key_der: PrivatePkcs8KeyDer<'static>,
    ) -> Result<Self> {
        let first = chain
            .first()
            .ok_or_else(|| PkiError::MalformedCertificate {
                what: "certificate chain".to_owned(),
                reason: "empty".to_owned(),
            })?;
        let cert_der = first.clone();
        let parsed = parse_cert(&cert_der, "certificate")?;
        let key =
            KeyPair::try_from(key_der.secret_pkcs8_der()).map_err(|e| PkiError::MalformedKey {
                what: "certificate key".to_owned(),
                reason: e.to_string(),
            })?;
        if key.subject_public_key_info() != parsed.public_key().raw {
            return Err(PkiError::KeyMismatch {
                subject: parsed.subject().to_string(),
            });
        }
        let info = CertInfo::of_certificate(&cert_der)?;
        Ok(Self {
            cert_der,
            key_der,
            chain,
            info,
        })
    }
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("info", &self.info)
            .field("key_der", &"[secret]")
            .finish_non_exhaustive()
    }
}

/// A CA certificate checked to be one: `basicConstraints CA:TRUE` and, if key usage is
/// present, `keyCertSign`. Used as the trust anchor of every verifier in this crate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaCertificate {
    der: CertificateDer<'static>,
    subject: String,
    not_before: Timestamp,
    not_after: Timestamp,
}

impl CaCertificate {
    /// Checks and wraps a DER certificate.
    ///
    /// # Errors
    /// [`PkiError::MalformedCertificate`], [`PkiError::NotACa`] or [`PkiError::CaCannotSign`].
    pub fn from_der(der: CertificateDer<'static>) -> Result<Self> {
        let cert = parse_cert(&der, "CA certificate")?;
        let subject = cert.subject().to_string();
        let is_ca = cert
            .basic_constraints()
            .map_err(|e| PkiError::MalformedCertificate {
                what: "CA certificate".to_owned(),
                reason: format!("basicConstraints: {e}"),
            })?
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(PkiError::NotACa { subject });
        }
        let ku = cert
            .key_usage()
            .map_err(|e| PkiError::MalformedCertificate {
                what: "CA certificate".to_owned(),
                reason: format!("keyUsage: {e}"),
            })?;
        if ku.is_some_and(|ku| !ku.value.key_cert_sign()) {
            return Err(PkiError::CaCannotSign { subject });
        }
        let not_before = Timestamp::from_unix_seconds(cert.validity().not_before.timestamp());
        let not_after = Timestamp::from_unix_seconds(cert.validity().not_after.timestamp());
        Ok(Self {
            der,
            subject,
            not_before,
            not_after,
        })
    }

    /// Checks and wraps the first `CERTIFICATE` block of a PEM text.
    ///
    /// # Errors
    /// As [`CaCertificate::from_der`], or [`PkiError::MalformedCertificate`] for bad PEM.
    pub fn from_pem(pem: &str) -> Result<Self> {
        let der = single_pem_block(pem, "CERTIFICATE").map_err(|reason| {
            PkiError::MalformedCertificate {
                what: "CA certificate PEM".to_owned(),
                reason,
            }
        })?;
        Self::from_der(CertificateDer::from(der))
    }

    /// The certificate (DER).
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }
    /// The certificate as PEM.
    pub fn to_pem(&self) -> String {
        encode_pem("CERTIFICATE", &self.der)
    }
    /// The subject, as `CN=..., O=...`.
    pub fn subject(&self) -> &str {
        &self.subject
    }
    /// Start of validity.
    pub fn not_before(&self) -> Timestamp {
        self.not_before
    }
    /// End of validity.
    pub fn not_after(&self) -> Timestamp {
        self.not_after
    }
}

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The revoked certificate's serial.
    pub serial: Serial,
    /// When the CA processed the revocation.
    pub revoked_at: Timestamp,
}

/// A certificate revocation list signed by one CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crl {
    der: CertificateRevocationListDer<'static>,
}

impl Crl {
    /// Wraps DER bytes (not checked here; verifiers and [`CertificateAuthority::load_crl`] check).
    pub fn from_der(der: Vec<u8>) -> Self {
        Self {
            der: CertificateRevocationListDer::from(der),
        }
    }
    /// Reads the first `X509 CRL` block of a PEM text.
    ///
    /// # Errors
    /// [`PkiError::MalformedCrl`] for bad PEM.
    pub fn from_pem(pem: &str) -> Result<Self> {
        let der = single_pem_block(pem, "X509 CRL").map_err(|reason| PkiError::MalformedCrl {
            what: "CRL PEM".to_owned(),
            reason,
        })?;
        Ok(Self::from_der(der))
    }
    /// The CRL (DER).
    pub fn der(&self) -> &CertificateRevocationListDer<'static> {
        &self.der
    }
    /// The CRL as PEM (`X509 CRL`).
    pub fn to_pem(&self) -> String {
        encode_pem("X509 CRL", &self.der)
    }
}

/// A certificate authority: its certificate, its signing key and its revocation list.
pub struct CertificateAuthority {
    cert: CaCertificate,
    issuer: Issuer<'static, KeyPair>,
    revoked: Vec<Revocation>,
    crl_number: u64,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("subject", &self.cert.subject)
            .field("revoked", &self.revoked.len())
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Creates a self-signed root CA valid from `now` for `validity`.
    ///
    /// # Errors
    /// Invalid names, a time out of range, or a key generation failure.
    pub fn create(
        common_name: &str,
        organization: &str,
        key: KeyPair,
        validity: Duration,
        now: SystemTime,
    ) -> Result<Self> {
        validate_identity("common name", common_name)?;
        validate_identity("organization", organization)?;
        let now = Timestamp::from_system_time(now)?;
        let mut params = CertificateParams::default();
        params.not_before = now.to_offset();
        params.not_after = now.saturating_add(validity).to_offset();
        params.serial_number = Some(SerialNumber::from_slice(Serial::random()?.as_bytes()));
        params.distinguished_name = subject(organization, None, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.key_identifier_method = KeyIdMethod::Sha256;
        let cert = params
            .self_signed(&key)
            .map_err(PkiError::generation("CA certificate"))?;
        let cert = CaCertificate::from_der(cert.der().clone())?;
        Ok(Self {
            cert,
            issuer: Issuer::new(params, key),
            revoked: Vec::new(),
            crl_number: 0,
        })
    }

    /// Loads a CA from its certificate and private key (PEM), checking that the certificate
    /// is a CA and that the key belongs to it.
    ///
    /// # Errors
    /// [`PkiError::NotACa`], [`PkiError::CaCannotSign`], [`PkiError::KeyMismatch`],
    /// [`PkiError::MalformedCertificate`] or [`PkiError::MalformedKey`].
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let cert = CaCertificate::from_pem(cert_pem)?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::MalformedKey {
            what: "CA key".to_owned(),
            reason: e.to_string(),
        })?;
        Self::from_parts(cert, key)
    }

    /// As [`CertificateAuthority::from_pem`], from an already checked certificate and a key.
    ///
    /// # Errors
    /// [`PkiError::KeyMismatch`] if the key does not belong to the certificate.
    pub fn from_parts(cert: CaCertificate, key: KeyPair) -> Result<Self> {
        let parsed = parse_cert(cert.der(), "CA certificate")?;
        if key.subject_public_key_info() != parsed.public_key().raw {
            return Err(PkiError::KeyMismatch {
                subject: cert.subject().to_owned(),
            });
        }
        let issuer =
            Issuer::from_ca_cert_der(cert.der(), key).map_err(PkiError::generation("CA issuer"))?;
        Ok(Self {
            cert,
            issuer,
            revoked: Vec::new(),
            crl_number: 0,
        })
    }

    /// The CA certificate.
    pub fn certificate(&self) -> &CaCertificate {
        &self.cert
    }

    /// The CA's private key as PKCS#8 PEM. Secret.
    pub fn private_key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    fn check_valid_at(&self, now: Timestamp) -> Result<()> {
        if now < self.cert.not_before || now > self.cert.not_after {
            return Err(PkiError::CaNotValid {
                subject: self.cert.subject.clone(),
                now,
                not_before: self.cert.not_before,
                not_after: self.cert.not_after,
            });
        }
        Ok(())
    }

    /// The end of validity of a certificate issued at `now`: the configured lifetime, capped
    /// at the CA's own end.
    fn issued_not_after(&self, config: &PkiConfig, now: Timestamp) -> Timestamp {
        now.saturating_add(config.leaf_validity())
            .min(self.cert.not_after)
    }

    /// Signs a certificate for `profile` over `public_key`. The lifetime is capped at the
    /// CA's own end of validity.
    pub(crate) fn sign(
        &self,
        profile: &CertProfile,
        public_key: &impl PublicKeyData,
        config: &PkiConfig,
        now: SystemTime,
    ) -> Result<SignedCert> {
        let now = Timestamp::from_system_time(now)?;
        self.check_valid_at(now)?;
        let not_before = now
            .saturating_sub(Duration::from_secs(u64::from(config.backdate_secs)))
            .max(self.cert.not_before);
        let not_after = self.issued_not_after(config, now);
        let serial = Serial::random()?;
        let mut params = CertificateParams::default();
        params.not_before = not_before.to_offset();
        params.not_after = not_after.to_offset();
        params.serial_number = Some(SerialNumber::from_slice(serial.as_bytes()));
        params.distinguished_name = subject(
            &config.organization,
            Some(profile.role.tag()),
            &profile.common_name,
        );
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = profile.role.extended_key_usages();
        params.use_authority_key_identifier_extension = true;
        for name in &profile.dns_names {
            let ia5 = name
                .clone()
                .try_into()
                .map_err(PkiError::generation("subjectAltName"))?;
            params.subject_alt_names.push(SanType::DnsName(ia5));
        }
        for ip in &profile.ip_addresses {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        if let Some(vs) = &profile.virtual_server {
            let uri = format!("{VIRTUAL_SERVER_URI_PREFIX}{vs}")
                .try_into()
                .map_err(PkiError::generation("subjectAltName"))?;
            params.subject_alt_names.push(SanType::URI(uri));
        }
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(PkiError::generation("certificate"))?;
        let cert_der = cert.der().clone();
        Ok(SignedCert {
            chain: vec![cert_der.clone(), self.cert.der.clone()],
            cert_der,
            info: CertInfo {
                serial,
                not_before,
                not_after,
                profile: profile.clone(),
            },
        })
    }

    /// Adds `serial` to the revocation list. Returns `false` if it was already revoked.
    ///
    /// # Errors
    /// [`PkiError::TimeOutOfRange`] for an unusable `now`.
    pub fn revoke(&mut self, serial: Serial, now: SystemTime) -> Result<bool> {
        let revoked_at = Timestamp::from_system_time(now)?;
        if self.is_revoked(&serial) {
            return Ok(false);
        }
        self.revoked.push(Revocation { serial, revoked_at });
        Ok(true)
    }

    /// Whether `serial` is on the revocation list.
    pub fn is_revoked(&self, serial: &Serial) -> bool {
        self.revoked.iter().any(|r| &r.serial == serial)
    }

    /// The revocation list entries.
    pub fn revocations(&self) -> &[Revocation] {
        &self.revoked
    }

    /// Signs a CRL listing every revoked serial, fresh from `now` for `validity`. Each CRL
    /// gets a larger CRL number than the one before.
    ///
    /// # Errors
    /// A time out of range or a signing failure.
    pub fn crl(&mut self, now: SystemTime, validity: Duration) -> Result<Crl> {
        let now = Timestamp::from_system_time(now)?;
        let number = self
            .crl_number
            .saturating_add(1)
            .max(u64::try_from(now.unix_seconds()).unwrap_or(0));
        self.crl_number = number;
        let params = CertificateRevocationListParams {
            this_update: now.to_offset(),
            next_update: now
                .saturating_add(validity.max(Duration::from_secs(1)))
                .to_offset(),
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs: self
                .revoked
                .iter()
                .map(|r| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(r.serial.as_bytes()),
                    revocation_time: r.revoked_at.to_offset(),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params
            .signed_by(&self.issuer)
            .map_err(PkiError::generation("CRL"))?;
        Ok(Crl {
            der: crl.der().clone(),
        })
    }

    /// Restores the revocation list (and CRL number) from a CRL this CA signed earlier.
    ///
    /// # Errors
    /// [`PkiError::MalformedCrl`] if the CRL cannot be decoded or was not signed by this CA.
    pub fn load_crl(&mut self, crl: &Crl) -> Result<()> {
        let bad = |reason: String| PkiError::MalformedCrl {
            what: format!("CRL of {}", self.cert.subject),
            reason,
        };
        let (rest, parsed) =
            x509_parser::revocation_list::CertificateRevocationList::from_der(crl.der())
                .map_err(|e| bad(e.to_string()))?;
        if !rest.is_empty() {
            return Err(bad(format!("{} trailing bytes", rest.len())));
        }
        let ca = parse_cert(self.cert.der(), "CA certificate")?;
        parsed
            .verify_signature(ca.public_key())
            .map_err(|e| bad(format!("signature does not verify with the CA key: {e}")))?;
        let mut revoked = Vec::new();
        for r in parsed.iter_revoked_certificates() {
            revoked.push(Revocation {
                serial: Serial::from_bytes(r.raw_serial())?,
                revoked_at: Timestamp::from_unix_seconds(r.revocation_date.timestamp()),
            });
        }
        let number = parsed
            .crl_number()
            .map(|n| {
                n.to_bytes_be().iter().fold(0u64, |acc, b| {
                    acc.saturating_mul(256).saturating_add(u64::from(*b))
                })
            })
            .unwrap_or(0);
        self.revoked = revoked;
        self.crl_number = self.crl_number.max(number);
        Ok(())
    }

    /// Whether `cert_der` carries a valid signature by this CA's key.
    pub fn signed(&self, cert_der: &[u8]) -> bool {
        let (Ok(cert), Ok(ca)) = (
            parse_cert(cert_der, "certificate"),
            parse_cert(self.cert.der(), "CA certificate"),
        ) else {
            return false;
        };
        cert.verify_signature(Some(ca.public_key())).is_ok()
    }
}

/// Which of the server's two CAs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CaKind {
    /// The server CA: server, gateway and agent certificates.
    Server,
    /// The mobile CA: mobile device certificates.
    Mobile,
}

/// The Administration Server's certificate authority: the server CA (for the server, gateways
/// and agents) and the mobile CA (for mobile devices), with the issuance policy.
///
/// ```
/// use std::time::SystemTime;
/// use outpost_pki::{PkiConfig, ServerCa};
///
/// let now = SystemTime::now();
/// let ca = ServerCa::create(PkiConfig::default(), now)?;
/// let gw = ca.issue_gateway(&["gw.example.com".to_owned()], &[], now)?;
/// outpost_pki::check_server_certificate(&gw.cert_der, "gw.example.com", ca.server_ca(), &[], now)?;
/// # Ok::<(), outpost_pki::PkiError>(())
/// ```
#[derive(Debug)]
pub struct ServerCa {
    config: PkiConfig,
    root: CertificateAuthority,
    mobile: CertificateAuthority,
}

impl ServerCa {
    /// Creates both CAs with fresh keys.
    ///
    /// # Errors
    /// [`PkiError::InvalidConfig`] or a generation failure.
    pub fn create(config: PkiConfig, now: SystemTime) -> Result<Self> {
        config.validate()?;
        let validity = crate::time::DAY * config.ca_validity_days;
        // Backdated like issued certificates, so that certificates issued at once can be too.
        let now = now
            .checked_sub(Duration::from_secs(u64::from(config.backdate_secs)))
            .unwrap_or(now);
        let root = CertificateAuthority::create(
            &config.ca_common_name,
            &config.organization,
            config.ca_key_algorithm.generate()?,
            validity,
            now,
        )?;
        let mobile = CertificateAuthority::create(
            &config.mobile_ca_common_name,
            &config.organization,
            config.ca_key_algorithm.generate()?,
            validity,
            now,
        )?;
        Ok(Self {
            config,
            root,
            mobile,
        })
    }

    /// Assembles a `ServerCa` from two loaded CAs.
    ///
    /// # Errors
    /// [`PkiError::InvalidConfig`] for a bad config or if both CAs are the same certificate.
    pub fn from_parts(
        config: PkiConfig,
        root: CertificateAuthority,
        mobile: CertificateAuthority,
    ) -> Result<Self> {
        config.validate()?;
        if root.cert.der == mobile.cert.der {
            return Err(PkiError::InvalidConfig {
                field: "mobile CA",
                reason: "the mobile CA is the same certificate as the server CA".to_owned(),
            });
        }
        Ok(Self {
            config,
            root,
            mobile,
        })
    }

    /// The issuance policy.
    pub fn config(&self) -> &PkiConfig {
        &self.config
    }
    /// The server CA certificate (trust anchor for server, gateway and agent certificates).
    pub fn server_ca(&self) -> &CaCertificate {
        self.root.certificate()
    }
    /// The mobile CA certificate (trust anchor for mobile device certificates).
    pub fn mobile_ca(&self) -> &CaCertificate {
        self.mobile.certificate()
    }
    /// One of the two CAs.
    pub fn authority(&self, kind: CaKind) -> &CertificateAuthority {
        match kind {
            CaKind::Server => &self.root,
            CaKind::Mobile => &self.mobile,
        }
    }
    /// One of the two CAs, mutably (to revoke or make CRLs).
    pub fn authority_mut(&mut self, kind: CaKind) -> &mut CertificateAuthority {
        match kind {
            CaKind::Server => &mut self.root,
            CaKind::Mobile => &mut self.mobile,
        }
    }

    fn ca_for(&self, role: Role) -> &CertificateAuthority {
        match role {
            Role::Mobile => &self.mobile,
            Role::Server | Role::Gateway | Role::Agent => &self.root,
        }
    }

    /// The certificate of the CA that issues `role`'s certificates, and the end of validity
    /// a certificate it issued at `now` would get.
    pub(crate) fn issuance_end(&self, role: Role, now: Timestamp) -> (&CaCertificate, Timestamp) {
        let ca = self.ca_for(role);
        (ca.certificate(), ca.issued_not_after(&self.config, now))
    }

    /// Issues a certificate with a fresh key for any profile (mobile profiles from the mobile
    /// CA, the rest from the server CA). Also how a reserve certificate is made.
    ///
    /// # Errors
    /// [`PkiError::CaNotValid`] if the CA is not valid at `now`, or a generation failure.
    pub fn issue(&self, profile: &CertProfile, now: SystemTime) -> Result<IssuedCert> {
        let key = self.config.leaf_key_algorithm.generate()?;
        let signed = self
            .ca_for(profile.role)
            .sign(profile, &key, &self.config, now)?;
        Ok(IssuedCert {
            cert_der: signed.cert_der,
            key_der: PrivatePkcs8KeyDer::from(key.serialize_der()),
            chain: signed.chain,
            info: signed.info,
        })
    }

    /// The Administration Server's own certificate.
    ///
    /// # Errors
    /// Invalid names, or as [`ServerCa::issue`].
    pub fn issue_server(
        &self,
        common_name: &str,
        dns_names: &[String],
        ips: &[IpAddr],
        now: SystemTime,
    ) -> Result<IssuedCert> {
        self.issue(&CertProfile::server(common_name, dns_names, ips)?, now)
    }

    /// A connection gateway certificate holding every given DNS name and address.
    ///
    /// # Errors
    /// [`PkiError::InvalidDnsName`] naming a bad name, [`PkiError::DuplicateName`],
    /// [`PkiError::NoNames`], or as [`ServerCa::issue`].
    pub fn issue_gateway(
        &self,
        dns_names: &[String],
        ips: &[IpAddr],
        now: SystemTime,
    ) -> Result<IssuedCert> {
        self.issue(&CertProfile::gateway(dns_names, ips)?, now)
    }

    /// A Network Agent client certificate bound to `device_id`.
    ///
    /// # Errors
    /// [`PkiError::InvalidIdentity`], or as [`ServerCa::issue`].
    pub fn issue_agent(&self, device_id: &str, now: SystemTime) -> Result<IssuedCert> {
        self.issue(&CertProfile::agent(device_id)?, now)
    }

    /// A mobile device client certificate bound to `device_id`, from the mobile CA.
    ///
    /// # Errors
    /// [`PkiError::InvalidIdentity`], or as [`ServerCa::issue`].
    pub fn issue_mobile(&self, device_id: &str, now: SystemTime) -> Result<IssuedCert> {
        self.issue(&CertProfile::mobile(device_id)?, now)
    }

    /// Signs a certificate signing request: only the public key is taken from the request;
    /// subject, names, key usage, lifetime and CA flag come from `profile` and the policy.
    /// A request that asks for CA rights is refused (or, with
    /// [`CsrCaRequestPolicy::Ignore`], issued without them).
    ///
    /// # Errors
    /// Any [`crate::decode_csr`] error, [`PkiError::CsrRequestsCa`], or as [`ServerCa::issue`].
    pub fn sign_csr(
        &self,
        csr: &[u8],
        profile: &CertProfile,
        now: SystemTime,
    ) -> Result<SignedCert> {
        let info = crate::csr::decode_csr(csr)?;
        self.sign_decoded_csr(&info, profile, now)
    }

    /// As [`ServerCa::sign_csr`], for a request already decoded with [`crate::decode_csr`].
    ///
    /// # Errors
    /// [`PkiError::CsrRequestsCa`], or as [`ServerCa::issue`].
    pub fn sign_decoded_csr(
        &self,
        csr: &CsrInfo,
        profile: &CertProfile,
        now: SystemTime,
    ) -> Result<SignedCert> {
        if let (Some(what), CsrCaRequestPolicy::Reject) =
            (csr.requests_ca, self.config.csr_ca_request)
        {
            return Err(PkiError::CsrRequestsCa {
                subject: csr.subject.clone(),
                what,
            });
        }
        self.ca_for(profile.role)
            .sign(profile, &csr.public_key, &self.config, now)
    }

    /// Revokes a certificate issued by either CA (found by its signature).
    ///
    /// Returns which CA it belonged to, its serial, and whether it was newly revoked.
    ///
    /// # Errors
    /// [`PkiError::MalformedCertificate`], or [`PkiError::WrongIssuer`] if neither CA signed it.
    pub fn revoke(&mut self, cert_der: &[u8], now: SystemTime) -> Result<(CaKind, Serial, bool)> {
        let cert = parse_cert(cert_der, "certificate")?;
        let serial = Serial::from_bytes(cert.raw_serial())?;
        let kind = if self.root.signed(cert_der) {
            CaKind::Server
        } else if self.mobile.signed(cert_der) {
            CaKind::Mobile
        } else {
            return Err(PkiError::WrongIssuer {
                subject: cert.subject().to_string(),
                ca: format!("{} or {}", self.root.cert.subject, self.mobile.cert.subject),
            });
        };
        let fresh = self.authority_mut(kind).revoke(serial.clone(), now)?;
        Ok((kind, serial, fresh))
    }

    /// A fresh CRL of one CA, valid for the configured number of days.
    ///
    /// # Errors
    /// As [`CertificateAuthority::crl`].
    pub fn crl(&mut self, kind: CaKind, now: SystemTime) -> Result<Crl> {
        let validity = crate::time::DAY * self.config.crl_validity_days;
        self.authority_mut(kind).crl(now, validity)
    }
}

fn subject(organization: &str, unit: Option<&str>, common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, organization);
    if let Some(unit) = unit {
        dn.push(DnType::OrganizationalUnitName, unit);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

pub(crate) fn parse_cert<'a>(der: &'a [u8], what: &str) -> Result<X509Certificate<'a>> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| PkiError::MalformedCertificate {
            what: what.to_owned(),
            reason: e.to_string(),
        })?;
    if !rest.is_empty() {
        return Err(PkiError::MalformedCertificate {
            what: what.to_owned(),
            reason: format!("{} trailing bytes", rest.len()),
        });
    }
    Ok(cert)
}

pub(crate) fn role_of(cert: &X509Certificate<'_>) -> Option<Role> {
    cert.subject()
        .iter_organizational_unit()
        .filter_map(|a| a.as_str().ok())
        .find_map(Role::from_tag)
}

pub(crate) fn common_name_of(cert: &X509Certificate<'_>) -> Option<String> {
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .map(str::to_owned)
}

/// The virtual server a certificate's subjectAltName binds it to, if any.
pub(crate) fn virtual_server_of(cert: &X509Certificate<'_>) -> Option<String> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return None;
    };
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(u) => u.strip_prefix(VIRTUAL_SERVER_URI_PREFIX).map(str::to_owned),
        _ => None,
    })
}

/// The DNS names and IP addresses of a certificate's subjectAltName.
pub(crate) fn san_of(cert: &X509Certificate<'_>) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) => dns.push((*n).to_owned()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => {
                        let a: [u8; 4] = [b[0], b[1], b[2], b[3]];
                        ips.push(IpAddr::from(a));
                    }
                    16 => {
                        let mut a = [0u8; 16];
                        a.copy_from_slice(b);
                        ips.push(IpAddr::from(a));
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    (dns, ips)
}
