//! Decoding of certificate signing requests (untrusted input).
//!
//! Only the public key of a request is ever used for issuance. The rest (subject, requested
//! names, requested CA rights) is decoded so that it can be reported and refused, never copied.

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use crate::error::{CsrError, KeyError, PkiError, Result};
use crate::pem_util::all_pem_blocks;

/// Largest CSR accepted, PEM or DER, in bytes. Real requests are under 4 KiB even with
/// RSA-4096 keys; the bound is checked before anything else is done with the input.
pub const MAX_CSR_LEN: usize = 64 * 1024;

/// Most requested names recorded from one CSR (the rest are counted, not stored).
pub(crate) const MAX_RECORDED_NAMES: usize = 64;

/// What a decoded, signature-checked certificate signing request holds.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CsrInfo {
    /// The subject the requester wrote (reported, never copied into a certificate).
    pub subject: String,
    /// Names the requester asked for in a subjectAltName extension (never granted).
    pub requested_names: Vec<String>,
    /// Set if the request asks for CA rights, naming how.
    pub requests_ca: Option<&'static str>,
    /// The key algorithm, for example `ecdsa-p256` or `rsa-2048`.
    pub key_algorithm: String,
    /// The SubjectPublicKeyInfo (DER) the certificate will be issued for.
    pub spki_der: Vec<u8>,
    pub(crate) public_key: rcgen::SubjectPublicKeyInfo,
}

/// Decodes a certificate signing request from PEM (`CERTIFICATE REQUEST` or
/// `NEW CERTIFICATE REQUEST`) or DER, checks its self-signature and its key.
///
/// # Errors
/// [`CsrError::TooLarge`], [`CsrError::Malformed`], [`CsrError::BadSignature`],
/// [`KeyError::UnsupportedAlgorithm`] or [`KeyError::RsaTooSmall`].
pub fn decode_csr(input: &[u8]) -> Result<CsrInfo> {
    if input.len() > MAX_CSR_LEN {
        return Err(PkiError::Csr(CsrError::TooLarge {
            len: input.len(),
            max: MAX_CSR_LEN,
        }));
    }
    let malformed = |reason: String| PkiError::Csr(CsrError::Malformed { reason });
    let trimmed = input.trim_ascii_start();
    let der_owned;
    let der: &[u8] = if trimmed.starts_with(b"-----BEGIN") {
        let text = std::str::from_utf8(input)
            .map_err(|e| malformed(format!("PEM text is not UTF-8: {e}")))?;
        let mut blocks = all_pem_blocks(text, "CERTIFICATE REQUEST").map_err(&malformed)?;
        if blocks.is_empty() {
            blocks = all_pem_blocks(text, "NEW CERTIFICATE REQUEST").map_err(&malformed)?;
        }
        der_owned = blocks
            .into_iter()
            .next()
            .ok_or_else(|| malformed("no CERTIFICATE REQUEST PEM block".to_owned()))?;
        &der_owned
    } else {
        input
    };
    let (rest, csr) =
        X509CertificationRequest::from_der(der).map_err(|e| malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(malformed(format!(
            "{} trailing bytes after the request",
            rest.len()
        )));
    }
    let info = &csr.certification_request_info;
    let spki = &info.subject_pki;
    let public_key = rcgen::SubjectPublicKeyInfo::from_der(spki.raw).map_err(|_| {
        PkiError::Key(KeyError::UnsupportedAlgorithm {
            name: format!(
                "public key algorithm {}",
                spki.algorithm.algorithm.to_id_string()
            ),
        })
    })?;
    let key_algorithm = match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => {
            let bits = rsa_modulus_bits(rsa.modulus);
            if bits < 2048 {
                return Err(PkiError::Key(KeyError::RsaTooSmall { bits }));
            }
            format!("rsa-{bits}")
        }
        _ => {
            use rcgen::PublicKeyData;
            let alg = public_key.algorithm();
            if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
                "ecdsa-p256".to_owned()
            } else if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
                "ecdsa-p384".to_owned()
            } else if alg == &rcgen::PKCS_ECDSA_P521_SHA512 {
                "ecdsa-p521".to_owned()
            } else if alg == &rcgen::PKCS_ED25519 {
                "ed25519".to_owned()
            } else {
                return Err(PkiError::Key(KeyError::UnsupportedAlgorithm {
                    name: format!("{alg:?}"),
                }));
            }
        }
    };

    // The key is checked first so that a weak key gets the clearer error.
    csr.verify_signature()
        .map_err(|source| CsrError::BadSignature { source })?;

    let mut requests_ca = None;
    let mut requested_names = Vec::new();
    if let Some(exts) = csr.requested_extensions() {
        for ext in exts {
            match ext {
                ParsedExtension::BasicConstraints(bc) if bc.ca => {
                    requests_ca = Some("basicConstraints CA:TRUE");
                }
                ParsedExtension::KeyUsage(ku) if ku.key_cert_sign() => {
                    requests_ca = requests_ca.or(Some("keyUsage keyCertSign"));
                }
                ParsedExtension::KeyUsage(ku) if ku.crl_sign() => {
                    requests_ca = requests_ca.or(Some("keyUsage cRLSign"));
                }
                ParsedExtension::SubjectAlternativeName(san) => {
                    for n in &san.general_names {
                        if requested_names.len() >= MAX_RECORDED_NAMES {
                            break;
                        }
                        requested_names.push(match n {
                            GeneralName::DNSName(d) => format!("DNS:{d}"),
                            GeneralName::IPAddress(b) => format!("IP:{b:02x?}"),
                            other => format!("{other:?}").chars().take(80).collect(),
                        });
                    }
                }
                ParsedExtension::ParseError { error } => {
                    return Err(malformed(format!("requested extension: {error}")));
                }
                _ => {}
            }
        }
    }
    Ok(CsrInfo {
        subject: info.subject.to_string(),
        requested_names,
        requests_ca,
        key_algorithm,
        spki_der: spki.raw.to_vec(),
        public_key,
    })
}

/// Number of significant bits of a big-endian RSA modulus.
fn rsa_modulus_bits(modulus: &[u8]) -> usize {
    let start = modulus
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(modulus.len());
    let m = &modulus[start..];
    match m.first() {
        None => 0,
        Some(first) => m.len() * 8 - first.leading_zeros() as usize,
    }
}
