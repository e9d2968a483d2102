//! Standalone certificate checks and peer identities.
//!
//! [`check_server_certificate`] answers the question a mobile device (or a tool) asks of a
//! gateway: "is this certificate signed by the server CA, does it name the host I dialled, is
//! it valid now and not revoked?", with a distinct error for each way it can fail.

use std::time::SystemTime;

use rustls_pki_types::{CertificateDer, ServerName};
use webpki::{
    CertRevocationList, EndEntityCert, KeyUsage, OwnedCertRevocationList, RevocationCheckDepth,
    RevocationOptionsBuilder, UnknownStatusPolicy,
};

use crate::ca::{CaCertificate, Crl, Role, Serial, common_name_of, parse_cert, role_of, san_of};
use crate::error::{CertError, CrlError, NameError, PkiError, Result, VerifyError};
use crate::time::Timestamp;

/// Who is at the other end of a connection: what the gateway forwards to the server about a
/// device it relays.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerIdentity {
    /// SHA-256 over the certificate's DER encoding.
    pub sha256: [u8; 32],
    /// The subject, as `O=..., OU=..., CN=...`.
    pub subject: String,
    /// The subject common name (device id for agents and mobile devices).
    pub common_name: Option<String>,
    /// The role written by this crate's CA, if any.
    pub role: Option<Role>,
    /// The serial number.
    pub serial: Serial,
    /// End of validity.
    pub not_after: Timestamp,
    /// The virtual server a device certificate is bound to (`None`: the main server).
    pub virtual_server: Option<String>,
}

impl PeerIdentity {
    /// Reads the identity of a certificate (no trust decision is made here).
    ///
    /// # Errors
    /// [`CertError::Malformed`].
    pub fn from_der(der: &[u8]) -> Result<Self> {
        let cert = parse_cert(der, "peer certificate")?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(digest.as_ref());
        Ok(Self {
            sha256,
            subject: cert.subject().to_string(),
            common_name: common_name_of(&cert),
            role: role_of(&cert),
            serial: Serial::from_bytes(cert.raw_serial())?,
            not_after: Timestamp::from_unix_seconds(cert.validity().not_after.timestamp()),
            virtual_server: crate::ca::virtual_server_of(&cert),
        })
    }

    /// The fingerprint as colon-separated upper-case hex, as `openssl x509 -fingerprint
    /// -sha256` prints it.
    pub fn fingerprint(&self) -> String {
        self.sha256
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// Checks that `cert_der` was issued by `ca`, is a TLS server certificate valid at `now`,
/// names `host` (a DNS name or an IP address) and is not on any of `crls`.
///
/// For many checks against the same CA and CRLs, build a [`CertChecker`] once instead (the
/// CRLs are then decoded once, not on every call).
///
/// # Errors
/// [`VerifyError::WrongIssuer`], [`VerifyError::NameMismatch`], [`VerifyError::Expired`],
/// [`VerifyError::NotYetValid`], [`VerifyError::Revoked`], [`VerifyError::IssuerNotCa`],
/// [`VerifyError::WrongUsage`], [`NameError::InvalidHost`], [`CertError::Malformed`],
/// [`CrlError::Malformed`] or [`VerifyError::Rejected`].
pub fn check_server_certificate(
    cert_der: &[u8],
    host: &str,
    ca: &CaCertificate,
    crls: &[Crl],
    now: SystemTime,
) -> Result<PeerIdentity> {
    CertChecker::new(ca, crls)?.check_server(cert_der, host, now)
}

/// Checks that `cert_der` was issued by `ca`, is a TLS client certificate valid at `now` and
/// is not on any of `crls`.
///
/// # Errors
/// As [`check_server_certificate`], without the name errors.
pub fn check_client_certificate(
    cert_der: &[u8],
    ca: &CaCertificate,
    crls: &[Crl],
    now: SystemTime,
) -> Result<PeerIdentity> {
    CertChecker::new(ca, crls)?.check_client(cert_der, now)
}

/// A reusable certificate check against one CA and its revocation lists, decoded once.
///
/// ```
/// use std::time::SystemTime;
/// use outpost_pki::{CaKind, CertChecker, PkiConfig, ServerCa};
///
/// let now = SystemTime::now();
/// let mut ca = ServerCa::create(PkiConfig::default(), now)?;
/// let agent = ca.issue_agent("device-1", now)?;
/// let crl = ca.crl(CaKind::Server, now)?;
/// let checker = CertChecker::new(ca.server_ca(), &[crl])?;
/// let who = checker.check_client(&agent.cert_der, now)?;
/// assert_eq!(who.common_name.as_deref(), Some("device-1"));
/// # Ok::<(), outpost_pki::PkiError>(())
/// ```
#[derive(Debug)]
pub struct CertChecker {
    ca: CaCertificate,
    crls: Vec<CertRevocationList<'static>>,
}

impl CertChecker {
    /// Decodes the CRLs once.
    ///
    /// # Errors
    /// [`CrlError::Malformed`] for a CRL that cannot be decoded.
    pub fn new(ca: &CaCertificate, crls: &[Crl]) -> Result<Self> {
        let crls = crls
            .iter()
            .map(|c| {
                OwnedCertRevocationList::from_der(c.der())
                    .map(CertRevocationList::from)
                    .map_err(|e| {
                        PkiError::Crl(CrlError::Malformed {
                            what: "CRL given for the check".to_owned(),
                            reason: format!("{e:?}"),
                        })
                    })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            ca: ca.clone(),
            crls,
        })
    }

    /// As [`check_server_certificate`].
    ///
    /// # Errors
    /// As [`check_server_certificate`].
    pub fn check_server(
        &self,
        cert_der: &[u8],
        host: &str,
        now: SystemTime,
    ) -> Result<PeerIdentity> {
        self.check_server_chain(&[CertificateDer::from(cert_der)], host, now)
    }

    /// As [`CertChecker::check_server`] for a chain as a peer sends it: the certificate
    /// first, then any intermediates (the CA certificate itself may be included).
    ///
    /// # Errors
    /// As [`check_server_certificate`]; [`VerifyError::IssuerNotCa`] when a certificate in the
    /// chain that signed the one before it is not a CA; [`CertError::Malformed`]
    /// for an empty chain.
    pub fn check_server_chain(
        &self,
        chain: &[CertificateDer<'_>],
        host: &str,
        now: SystemTime,
    ) -> Result<PeerIdentity> {
        let cert_der: &[u8] = first(chain)?;
        let server_name = ServerName::try_from(host).map_err(|_| {
            PkiError::Name(NameError::InvalidHost {
                host: host.to_owned(),
            })
        })?;
        self.check(
            chain,
            now,
            KeyUsage::server_auth(),
            "TLS server",
            |ee, identity| {
                ee.verify_is_valid_for_subject_name(&server_name)
                    .map_err(|_| {
                        let names = parse_cert(cert_der, "certificate")
                            .map(|c| {
                                let (dns, ips) = san_of(&c);
                                dns.into_iter()
                                    .chain(ips.iter().map(ToString::to_string))
                                    .collect()
                            })
                            .unwrap_or_default();
                        PkiError::Verify(VerifyError::NameMismatch {
                            subject: identity.subject.clone(),
                            host: host.to_owned(),
                            names,
                        })
                    })
            },
        )
    }

    /// As [`check_client_certificate`].
    ///
    /// # Errors
    /// As [`check_client_certificate`].
    pub fn check_client(&self, cert_der: &[u8], now: SystemTime) -> Result<PeerIdentity> {
        self.check_client_chain(&[CertificateDer::from(cert_der)], now)
    }

    /// As [`CertChecker::check_client`] for a chain as a peer sends it.
    ///
    /// # Errors
    /// As [`CertChecker::check_server_chain`], without the name errors.
    pub fn check_client_chain(
        &self,
        chain: &[CertificateDer<'_>],
        now: SystemTime,
    ) -> Result<PeerIdentity> {
        self.check(chain, now, KeyUsage::client_auth(), "TLS client", |_, _| {
            Ok(())
        })
    }

    fn check(
        &self,
        chain: &[CertificateDer<'_>],
        now: SystemTime,
        usage: KeyUsage,
        usage_name: &'static str,
        then: impl FnOnce(&EndEntityCert<'_>, &PeerIdentity) -> Result<()>,
    ) -> Result<PeerIdentity> {
        let cert = first(chain)?;
        let cert_der: &[u8] = cert;
        let identity = PeerIdentity::from_der(cert_der)?;
        let now_ts = Timestamp::from_system_time(now)?;
        let ee = EndEntityCert::try_from(cert).map_err(|e| {
            PkiError::Cert(CertError::Malformed {
                what: "certificate".to_owned(),
                reason: format!("{e:?}"),
            })
        })?;
        let anchor = webpki::anchor_from_trusted_cert(self.ca.der()).map_err(|e| {
            PkiError::Cert(CertError::Malformed {
                what: format!("CA certificate {}", self.ca.subject()),
                reason: format!("{e:?}"),
            })
        })?;
        let refs: Vec<&CertRevocationList<'_>> = self.crls.iter().collect();
        let revocation = RevocationOptionsBuilder::new(&refs).ok().map(|b| {
            b.with_depth(RevocationCheckDepth::EndEntity)
                .with_status_policy(UnknownStatusPolicy::Allow)
                .build()
        });
        let anchors = [anchor];
        ee.verify_for_usage(
            verification_algorithms(),
            &anchors,
            &chain[1..],
            now_ts.to_unix_time(),
            usage,
            revocation,
            None,
        )
        .map_err(|e| map_webpki_error(e, cert_der, &identity, &self.ca, now_ts, usage_name))?;
        then(&ee, &identity)?;
        Ok(identity)
    }
}

fn first<'a, 'b>(chain: &'a [CertificateDer<'b>]) -> Result<&'a CertificateDer<'b>> {
    chain.first().ok_or_else(|| {
        PkiError::Cert(CertError::Malformed {
            what: "certificate chain".to_owned(),
            reason: "empty".to_owned(),
        })
    })
}

/// The signature algorithms of the aws-lc-rs provider.
fn verification_algorithms()
-> &'static [&'static dyn rustls_pki_types::SignatureVerificationAlgorithm] {
    static ALGS: std::sync::OnceLock<
        &'static [&'static dyn rustls_pki_types::SignatureVerificationAlgorithm],
    > = std::sync::OnceLock::new();
    ALGS.get_or_init(|| {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .all
    })
}

pub(crate) fn map_webpki_error(
    e: webpki::Error,
    cert_der: &[u8],
    identity: &PeerIdentity,
    ca: &CaCertificate,
    now: Timestamp,
    usage: &'static str,
) -> PkiError {
    let subject = identity.subject.clone();
    let validity = parse_cert(cert_der, "certificate").ok().map(|c| {
        (
            Timestamp::from_unix_seconds(c.validity().not_before.timestamp()),
            Timestamp::from_unix_seconds(c.validity().not_after.timestamp()),
        )
    });
    match e {
        webpki::Error::UnknownIssuer
        | webpki::Error::InvalidSignatureForPublicKey
        | webpki::Error::SignatureAlgorithmMismatch => PkiError::Verify(VerifyError::WrongIssuer {
            subject,
            ca: ca.subject().to_owned(),
        }),
        webpki::Error::CertExpired { .. } => PkiError::Verify(VerifyError::Expired {
            subject,
            not_after: validity.map_or(now, |v| v.1),
            now,
        }),
        webpki::Error::CertNotValidYet { .. } => PkiError::Verify(VerifyError::NotYetValid {
            subject,
            not_before: validity.map_or(now, |v| v.0),
            now,
        }),
        webpki::Error::CertRevoked => PkiError::Verify(VerifyError::Revoked {
            subject,
            serial: identity.serial.to_string(),
        }),
        webpki::Error::EndEntityUsedAsCa => PkiError::Verify(VerifyError::IssuerNotCa { subject }),
        #[allow(deprecated)]
        webpki::Error::RequiredEkuNotFound | webpki::Error::RequiredEkuNotFoundContext(_) => {
            PkiError::Verify(VerifyError::WrongUsage { subject, usage })
        }
        other => PkiError::Verify(VerifyError::Rejected {
            subject,
            reason: format!("{other:?}"),
        }),
    }
}
