//! # outpost-pki
//!
//! The Administration Server is a certificate authority: everything that talks TLS in the
//! system gets its identity here. This crate holds that CA and everything around it, with no
//! sockets and no clock reads (every time-dependent call takes `now`):
//!
//! - [`ServerCa`]: the server CA (server, gateway and agent certificates) and the mobile CA
//!   (mobile device certificates); ECDSA P-256 by default, also P-384, Ed25519 and RSA.
//! - Typed issuance with the right key usages: [`ServerCa::issue_server`],
//!   [`ServerCa::issue_gateway`] (every DNS name the administrator entered, validated),
//!   [`ServerCa::issue_agent`], [`ServerCa::issue_mobile`].
//! - Safe CSR signing ([`ServerCa::sign_csr`]): only the public key is taken from a request.
//! - Lifetimes of at most 397 days and gap-free rotation with a reserve certificate
//!   ([`Rotation`]).
//! - Revocation ([`ServerCa::revoke`], [`ServerCa::crl`]), honoured by every verifier here.
//! - Ready rustls configurations for each role ([`tls`]).
//! - A standalone check for mobile devices and tools ([`check_server_certificate`]).
//! - PEM persistence with private keys at mode 0600 ([`store`]).
//!
//! One crypto provider for the whole workspace: aws-lc-rs (rustls, rcgen, webpki and the CSR
//! signature check all use it).
//!
//! ## Example
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use outpost_pki::{PkiConfig, PkiError, ServerCa, VerifyError, check_server_certificate};
//!
//! let now = SystemTime::now();
//! let mut ca = ServerCa::create(PkiConfig::default(), now)?;
//! let names = ["gw.example.com".to_owned(), "dmz.example.com".to_owned()];
//! let gw = ca.issue_gateway(&names, &[], now)?;
//!
//! // A mobile device checks the gateway certificate against the server CA.
//! check_server_certificate(&gw.cert_der, "dmz.example.com", ca.server_ca(), &[], now)?;
//! let err = check_server_certificate(&gw.cert_der, "evil.example.com", ca.server_ca(), &[], now);
//! assert!(matches!(err, Err(PkiError::Verify(VerifyError::NameMismatch { .. }))));
//!
//! // Revoked certificates fail once the CRL is known.
//! ca.revoke(&gw.cert_der, now)?;
//! let crl = ca.crl(outpost_pki::CaKind::Server, now)?;
//! let err = check_server_certificate(&gw.cert_der, "gw.example.com", ca.server_ca(), &[crl], now);
//! assert!(matches!(err, Err(PkiError::Verify(VerifyError::Revoked { .. }))));
//!
//! // Four hundred days later it has expired anyway.
//! let later = now + Duration::from_secs(400 * 86_400);
//! let err = check_server_certificate(&gw.cert_der, "gw.example.com", ca.server_ca(), &[], later);
//! assert!(matches!(err, Err(PkiError::Verify(VerifyError::Expired { .. }))));
//! # Ok::<(), PkiError>(())
//! ```

mod ca;
mod config;
mod csr;
mod error;
#[cfg(any(fuzzing, test))]
#[doc(hidden)]
pub mod fuzz;
mod names;
mod pem_util;
mod rotation;
mod sign;
pub mod store;
mod time;
pub mod tls;
mod verify;

pub use ca::{
    CaCertificate, CaKind, CertInfo, CertProfile, CertificateAuthority, Crl, IssuedCert,
    Revocation, Role, Serial, ServerCa, SignedCert,
};
pub use config::{CsrCaRequestPolicy, KeyAlgorithm, MAX_LEAF_VALIDITY_DAYS, PkiConfig};
pub use csr::{CsrInfo, MAX_CSR_LEN, decode_csr};
pub use error::{
    CertError, CrlError, CsrError, FileError, InputError, KeyError, NameError, PkiError, Result,
    TlsError, VerifyError,
};
pub use names::{
    MAX_DEVICE_ID_LEN, MAX_DNS_LABEL_LEN, MAX_DNS_NAME_LEN, MAX_SAN_ENTRIES, validate_device_id,
    validate_dns_name,
};
pub use rotation::{Rotation, RotationEvent, RotationSchedule, RotationState};
pub use sign::{sign_with, verify_signature};
pub use time::{DAY, Timestamp};
pub use verify::{CertChecker, PeerIdentity, check_client_certificate, check_server_certificate};

/// Re-exported so that callers need not depend on these crates directly for the types this
/// crate's API uses.
pub use rcgen::KeyPair;
pub use rustls;
pub use rustls_pki_types as pki_types;
