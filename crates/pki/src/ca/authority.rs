//! One certificate authority: its certificate, its signing key, and issuance.

use std::fmt;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyIdMethod,
    KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};

use super::parse::parse_cert;
use super::profile::VIRTUAL_SERVER_URI_PREFIX;
use super::{CaCertificate, CertInfo, CertProfile, Revocation, Serial, SignedCert};
use crate::config::PkiConfig;
use crate::error::{CertError, KeyError, PkiError, Result};
use crate::names::validate_identity;
use crate::time::Timestamp;

/// A certificate authority: its certificate, its signing key and its revocation list.
pub struct CertificateAuthority {
    pub(super) cert: CaCertificate,
    pub(super) issuer: Issuer<'static, KeyPair>,
    pub(super) revoked: Vec<Revocation>,
    pub(super) crl_number: u64,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("subject", &self.cert.subject())
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
    /// [`CertError::NotACa`], [`CertError::CaCannotSign`], [`KeyError::Mismatch`],
    /// [`CertError::Malformed`] or [`KeyError::Malformed`].
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let cert = CaCertificate::from_pem(cert_pem)?;
        let key = KeyPair::from_pem(key_pem).map_err(|source| KeyError::Malformed {
            what: "CA key".to_owned(),
            source,
        })?;
        Self::from_parts(cert, key)
    }

    /// As [`CertificateAuthority::from_pem`], from an already checked certificate and a key.
    ///
    /// # Errors
    /// [`KeyError::Mismatch`] if the key does not belong to the certificate.
    pub fn from_parts(cert: CaCertificate, key: KeyPair) -> Result<Self> {
        let parsed = parse_cert(cert.der(), "CA certificate")?;
        if key.subject_public_key_info() != parsed.public_key().raw {
            return Err(PkiError::Key(KeyError::Mismatch {
                subject: cert.subject().to_owned(),
            }));
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
        if now < self.cert.not_before() || now > self.cert.not_after() {
            return Err(PkiError::Cert(CertError::CaNotValid {
                subject: self.cert.subject().to_owned(),
                now,
                not_before: self.cert.not_before(),
                not_after: self.cert.not_after(),
            }));
        }
        Ok(())
    }

    /// The end of validity of a certificate issued at `now`: the configured lifetime, capped
    /// at the CA's own end.
    pub(super) fn issued_not_after(&self, config: &PkiConfig, now: Timestamp) -> Timestamp {
        now.saturating_add(config.leaf_validity())
            .min(self.cert.not_after())
    }

    /// Signs a certificate for `profile` over `public_key`. The lifetime is capped at the
    /// CA's own end of validity.
    pub(super) fn sign(
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
            .max(self.cert.not_before());
        let not_after = self.issued_not_after(config, now);
        let serial = Serial::random()?;
        let mut params = CertificateParams::default();
        params.not_before = not_before.to_offset();
        params.not_after = not_after.to_offset();
        params.serial_number = Some(SerialNumber::from_slice(serial.as_bytes()));
        params.distinguished_name = subject(
            &config.organization,
            Some(profile.role().tag()),
            profile.common_name(),
        );
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = profile.role().extended_key_usages();
        params.use_authority_key_identifier_extension = true;
        for name in profile.dns_names() {
            let ia5 = name
                .clone()
                .try_into()
                .map_err(PkiError::generation("subjectAltName"))?;
            params.subject_alt_names.push(SanType::DnsName(ia5));
        }
        for ip in profile.ip_addresses() {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        if let Some(vs) = profile.virtual_server() {
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
            chain: vec![cert_der.clone(), self.cert.der().clone()],
            cert_der,
            info: CertInfo {
                serial,
                not_before,
                not_after,
                profile: profile.clone(),
            },
        })
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

/// The subject `O=<organization>, OU=<unit>, CN=<common name>` (no `OU` without a unit).
fn subject(organization: &str, unit: Option<&str>, common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, organization);
    if let Some(unit) = unit {
        dn.push(DnType::OrganizationalUnitName, unit);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}
