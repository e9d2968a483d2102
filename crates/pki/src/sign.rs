//! Signing a message with an issued identity's key, and checking a signature against a
//! certificate. Used for messages that travel outside TLS, such as the server's "sync now"
//! datagram: the sender signs with its TLS key and sends its certificate along; the receiver
//! checks the certificate with a [`crate::CertChecker`] and the signature with
//! [`verify_signature`].
//!
//! ```
//! use std::time::SystemTime;
//! use outpost_pki::{PkiConfig, ServerCa, sign_with, verify_signature};
//!
//! let now = SystemTime::now();
//! let ca = ServerCa::create(PkiConfig::default(), now).unwrap();
//! let server = ca.issue_server("server-1", &["server.example".into()], &[], now).unwrap();
//! let sig = sign_with(&server, b"sync now").unwrap();
//! verify_signature(&server.cert_der, b"sync now", &sig).unwrap();
//! assert!(verify_signature(&server.cert_der, b"sync later", &sig).is_err());
//! ```

use rcgen::{KeyPair, SigningKey};
use webpki::EndEntityCert;

use crate::error::{CertError, KeyError, PkiError, Result};
use crate::{IssuedCert, PeerIdentity};

/// The subject of a certificate, for messages.
pub(crate) fn subject_of(cert_der: &[u8]) -> String {
    PeerIdentity::from_der(cert_der)
        .map(|p| p.subject)
        .unwrap_or_else(|_| "(unreadable certificate)".into())
}

/// Signs `msg` with the private key of `identity` (ECDSA P-256 with SHA-256 or P-384 with
/// SHA-384 in ASN.1 form, Ed25519, or RSA PKCS#1 with SHA-256, as the key is).
///
/// # Errors
/// [`KeyError::SigningFailed`].
pub fn sign_with(identity: &IssuedCert, msg: &[u8]) -> Result<Vec<u8>> {
    let failed = |source| {
        PkiError::from(KeyError::SigningFailed {
            subject: subject_of(&identity.cert_der),
            source,
        })
    };
    let key = KeyPair::try_from(identity.key_der.secret_pkcs8_der()).map_err(failed)?;
    key.sign(msg).map_err(failed)
}

/// Checks that `sig` over `msg` was made with the key of the certificate `cert_der`, with
/// the algorithm [`sign_with`] uses for that kind of key. This is no trust decision about the
/// certificate itself.
///
/// # Errors
/// [`CertError::Malformed`] or [`KeyError::BadSignature`].
pub fn verify_signature(cert_der: &[u8], msg: &[u8], sig: &[u8]) -> Result<()> {
    let der = rustls_pki_types::CertificateDer::from(cert_der);
    let cert = EndEntityCert::try_from(&der).map_err(|e| {
        PkiError::Cert(CertError::Malformed {
            what: "signing certificate".to_owned(),
            reason: format!("{e:?}"),
        })
    })?;
    let algorithms = [
        webpki::aws_lc_rs::ECDSA_P256_SHA256,
        webpki::aws_lc_rs::ECDSA_P384_SHA384,
        webpki::aws_lc_rs::ED25519,
        webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA256,
    ];
    if algorithms
        .iter()
        .any(|alg| cert.verify_signature(*alg, msg, sig).is_ok())
    {
        return Ok(());
    }
    Err(PkiError::Key(KeyError::BadSignature {
        subject: subject_of(cert_der),
    }))
}
