//! Certificates: serials, issued certificates (with or without their key) and checked CA
//! certificates.

use std::fmt;

use rcgen::{KeyPair, PublicKeyData};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::CertProfile;
use super::parse::parse_cert;
use crate::error::{CertError, InputError, KeyError, PkiError, Result};
use crate::pem_util::{encode_pem, single_pem_block};
use crate::time::Timestamp;

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
    pub(super) fn random() -> Result<Self> {
        let mut b = [0u8; 16];
        aws_lc_rs::rand::fill(&mut b).map_err(|_| {
            PkiError::Cert(CertError::Generation {
                what: "serial number",
                source: rcgen::Error::RingUnspecified,
            })
        })?;
        // Positive and without a leading zero byte, so the DER encoding is exactly 16 bytes.
        b[0] = (b[0] & 0x7f) | 0x40;
        Ok(Self(b.to_vec()))
    }

    /// From big-endian bytes (leading zero bytes are dropped).
    ///
    /// # Errors
    /// [`InputError::InvalidSerial`] if empty or longer than 20 significant bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
        let b = &bytes[start..];
        let shown = || bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        if b.is_empty() {
            return Err(PkiError::Input(InputError::InvalidSerial {
                value: shown(),
                reason: "zero",
            }));
        }
        if b.len() > 20 {
            return Err(PkiError::Input(InputError::InvalidSerial {
                value: shown(),
                reason: "longer than 20 bytes",
            }));
        }
        Ok(Self(b.to_vec()))
    }

    /// Parses hex (colons allowed between bytes).
    ///
    /// # Errors
    /// [`InputError::InvalidSerial`] naming the value.
    pub fn from_hex(s: &str) -> Result<Self> {
        let clean: String = s.chars().filter(|c| *c != ':').collect();
        let bad = |reason| {
            PkiError::Input(InputError::InvalidSerial {
                value: s.to_owned(),
                reason,
            })
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
    /// [`CertError::Malformed`] for an empty chain or an unreadable certificate,
    /// [`KeyError::Mismatch`] if the key does not belong to the first certificate.
    pub fn from_parts(
        chain: Vec<CertificateDer<'static>>,
        key_der: PrivatePkcs8KeyDer<'static>,
    ) -> Result<Self> {
        let first = chain.first().ok_or_else(|| {
            PkiError::Cert(CertError::Malformed {
                what: "certificate chain".to_owned(),
                reason: "empty".to_owned(),
            })
        })?;
        let cert_der = first.clone();
        let parsed = parse_cert(&cert_der, "certificate")?;
        let key = KeyPair::try_from(key_der.secret_pkcs8_der()).map_err(|source| {
            KeyError::Malformed {
                what: "certificate key".to_owned(),
                source,
            }
        })?;
        if key.subject_public_key_info() != parsed.public_key().raw {
            return Err(PkiError::Key(KeyError::Mismatch {
                subject: parsed.subject().to_string(),
            }));
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
    /// [`CertError::Malformed`], [`CertError::NotACa`] or [`CertError::CaCannotSign`].
    pub fn from_der(der: CertificateDer<'static>) -> Result<Self> {
        let cert = parse_cert(&der, "CA certificate")?;
        let subject = cert.subject().to_string();
        let is_ca = cert
            .basic_constraints()
            .map_err(|e| {
                PkiError::Cert(CertError::Malformed {
                    what: "CA certificate".to_owned(),
                    reason: format!("basicConstraints: {e}"),
                })
            })?
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(PkiError::Cert(CertError::NotACa { subject }));
        }
        let ku = cert.key_usage().map_err(|e| {
            PkiError::Cert(CertError::Malformed {
                what: "CA certificate".to_owned(),
                reason: format!("keyUsage: {e}"),
            })
        })?;
        if ku.is_some_and(|ku| !ku.value.key_cert_sign()) {
            return Err(PkiError::Cert(CertError::CaCannotSign { subject }));
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
    /// As [`CaCertificate::from_der`], or [`CertError::Malformed`] for bad PEM.
    pub fn from_pem(pem: &str) -> Result<Self> {
        let der = single_pem_block(pem, "CERTIFICATE").map_err(|reason| {
            PkiError::Cert(CertError::Malformed {
                what: "CA certificate PEM".to_owned(),
                reason,
            })
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
