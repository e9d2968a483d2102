//! The Administration Server's two CAs (server and mobile) and the issuance policy.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rustls_pki_types::PrivatePkcs8KeyDer;

use super::parse::parse_cert;
use super::{
    CaCertificate, CertProfile, CertificateAuthority, Crl, IssuedCert, Role, Serial, SignedCert,
};
use crate::config::{CsrCaRequestPolicy, PkiConfig};
use crate::csr::CsrInfo;
use crate::error::{CsrError, InputError, PkiError, Result, VerifyError};
use crate::time::Timestamp;

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
    /// [`InputError::InvalidConfig`] or a generation failure.
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
    /// [`InputError::InvalidConfig`] for a bad config or if both CAs are the same certificate.
    pub fn from_parts(
        config: PkiConfig,
        root: CertificateAuthority,
        mobile: CertificateAuthority,
    ) -> Result<Self> {
        config.validate()?;
        if root.certificate().der() == mobile.certificate().der() {
            return Err(PkiError::Input(InputError::InvalidConfig {
                field: "mobile CA",
                value: format!("{:?}", mobile.certificate().subject()),
                reason: "is the same certificate as the server CA".to_owned(),
            }));
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
    /// [`CertError::CaNotValid`](crate::CertError::CaNotValid) if the CA is not valid at `now`,
    /// or a generation failure.
    pub fn issue(&self, profile: &CertProfile, now: SystemTime) -> Result<IssuedCert> {
        let key = self.config.leaf_key_algorithm.generate()?;
        let signed = self
            .ca_for(profile.role())
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
    /// [`NameError::InvalidDnsName`](crate::NameError::InvalidDnsName) naming a bad name,
    /// [`NameError::Duplicate`](crate::NameError::Duplicate),
    /// [`NameError::NoNames`](crate::NameError::NoNames), or as [`ServerCa::issue`].
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
    /// [`NameError::InvalidIdentity`](crate::NameError::InvalidIdentity), or as
    /// [`ServerCa::issue`].
    pub fn issue_agent(&self, device_id: &str, now: SystemTime) -> Result<IssuedCert> {
        self.issue(&CertProfile::agent(device_id)?, now)
    }

    /// A mobile device client certificate bound to `device_id`, from the mobile CA.
    ///
    /// # Errors
    /// [`NameError::InvalidIdentity`](crate::NameError::InvalidIdentity), or as
    /// [`ServerCa::issue`].
    pub fn issue_mobile(&self, device_id: &str, now: SystemTime) -> Result<IssuedCert> {
        self.issue(&CertProfile::mobile(device_id)?, now)
    }

    /// Signs a certificate signing request: only the public key is taken from the request;
    /// subject, names, key usage, lifetime and CA flag come from `profile` and the policy.
    /// A request that asks for CA rights is refused (or, with
    /// [`CsrCaRequestPolicy::Ignore`], issued without them).
    ///
    /// # Errors
    /// Any [`crate::decode_csr`] error, [`CsrError::RequestsCa`], or as [`ServerCa::issue`].
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
    /// [`CsrError::RequestsCa`], or as [`ServerCa::issue`].
    pub fn sign_decoded_csr(
        &self,
        csr: &CsrInfo,
        profile: &CertProfile,
        now: SystemTime,
    ) -> Result<SignedCert> {
        if let (Some(what), CsrCaRequestPolicy::Reject) =
            (csr.requests_ca, self.config.csr_ca_request)
        {
            return Err(PkiError::Csr(CsrError::RequestsCa {
                subject: csr.subject.clone(),
                what,
            }));
        }
        self.ca_for(profile.role())
            .sign(profile, &csr.public_key, &self.config, now)
    }

    /// Revokes a certificate issued by either CA (found by its signature).
    ///
    /// Returns which CA it belonged to, its serial, and whether it was newly revoked.
    ///
    /// # Errors
    /// [`CertError::Malformed`](crate::CertError::Malformed), or [`VerifyError::WrongIssuer`] if
    /// neither CA signed it.
    pub fn revoke(&mut self, cert_der: &[u8], now: SystemTime) -> Result<(CaKind, Serial, bool)> {
        let cert = parse_cert(cert_der, "certificate")?;
        let serial = Serial::from_bytes(cert.raw_serial())?;
        let kind = if self.root.signed(cert_der) {
            CaKind::Server
        } else if self.mobile.signed(cert_der) {
            CaKind::Mobile
        } else {
            return Err(PkiError::Verify(VerifyError::WrongIssuer {
                subject: cert.subject().to_string(),
                ca: format!(
                    "{} or {}",
                    self.root.certificate().subject(),
                    self.mobile.certificate().subject()
                ),
            }));
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
