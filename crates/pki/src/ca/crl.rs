//! Revocation: each CA's list of revoked serials and the CRLs it signs.

use std::time::{Duration, SystemTime};

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use rustls_pki_types::CertificateRevocationListDer;
use x509_parser::prelude::FromDer;

use super::parse::parse_cert;
use super::{CertificateAuthority, Serial};
use crate::error::{CrlError, PkiError, Result};
use crate::pem_util::{encode_pem, single_pem_block};
use crate::time::Timestamp;

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
    /// [`CrlError::Malformed`] for bad PEM.
    pub fn from_pem(pem: &str) -> Result<Self> {
        let der = single_pem_block(pem, "X509 CRL").map_err(|reason| {
            PkiError::Crl(CrlError::Malformed {
                what: "CRL PEM".to_owned(),
                reason,
            })
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

impl CertificateAuthority {
    /// Adds `serial` to the revocation list. Returns `false` if it was already revoked.
    ///
    /// # Errors
    /// [`InputError::TimeOutOfRange`](crate::InputError::TimeOutOfRange) for an unusable `now`.
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
    /// [`CrlError::Malformed`] if the CRL cannot be decoded or was not signed by this CA.
    pub fn load_crl(&mut self, crl: &Crl) -> Result<()> {
        let bad = |reason: String| {
            PkiError::Crl(CrlError::Malformed {
                what: format!("CRL of {}", self.cert.subject()),
                reason,
            })
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
}
