//! The crate's error type: [`PkiError`], one variant per kind of failure, each holding a
//! typed error that says exactly what was wrong.

use std::path::PathBuf;
use std::time::SystemTime;

use crate::time::Timestamp;

/// Everything that can go wrong in `outpost-pki`.
///
/// Each variant is one kind of failure and holds the typed error of that kind, which names
/// what was wrong and the offending value, so that a message shown to an administrator (or
/// written to a log) is enough to act on. The message of a `PkiError` is its inner error's.
///
/// ```
/// use outpost_pki::{NameError, PkiError, validate_dns_name};
///
/// let err = validate_dns_name("gw_1.example.com").unwrap_err();
/// assert!(matches!(
///     &err,
///     PkiError::Name(NameError::InvalidDnsName { name, .. }) if name == "gw_1.example.com"
/// ));
/// assert!(err.to_string().starts_with("invalid DNS name \"gw_1.example.com\""));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// A name, identity or host given for a certificate or a check is refused.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A configuration field, serial number or time passed in is refused.
    #[error(transparent)]
    Input(#[from] InputError),
    /// A key is unsupported, unreadable or does not fit, or a signature failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A certificate is unreadable, a CA cannot issue, or issuance failed.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// A certificate signing request is refused.
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// A certificate revocation list is unreadable or missing.
    #[error(transparent)]
    Crl(#[from] CrlError),
    /// A presented certificate does not pass the check.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// A file cannot be read or written, or holds the wrong thing.
    #[error(transparent)]
    File(#[from] FileError),
    /// A TLS configuration cannot be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// A name, identity or host refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// A name given for a certificate is not a valid DNS name.
    #[error("invalid DNS name {name:?}: {reason}")]
    InvalidDnsName {
        /// The name as given.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The same name or address was given twice for one certificate.
    #[error("duplicate subject alternative name {name:?}")]
    Duplicate {
        /// The repeated name.
        name: String,
    },
    /// A certificate that must name its host was given no DNS name and no IP address.
    #[error("a {role} certificate needs at least one DNS name or IP address")]
    NoNames {
        /// The role of the certificate being made.
        role: &'static str,
    },
    /// A device identity or common name is empty, too long or holds characters not allowed.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidIdentity {
        /// Which identity (`device id`, `common name`, ...).
        what: &'static str,
        /// The value as given.
        value: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A host name given for a check is neither a DNS name nor an IP address.
    #[error("host {host:?} is neither a valid DNS name nor an IP address")]
    InvalidHost {
        /// The host as given.
        host: String,
    },
}

/// A value passed in that is out of range or malformed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// A configuration field holds a value outside its allowed range.
    #[error("invalid configuration field `{field}`: {value} {reason}")]
    InvalidConfig {
        /// The field name as written in the configuration file.
        field: &'static str,
        /// The value refused, as shown in the message.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A configuration field holds a name that cannot go into a certificate.
    #[error("invalid configuration field `{field}`: {source}")]
    InvalidConfigName {
        /// The field name as written in the configuration file.
        field: &'static str,
        /// What is wrong with the name.
        #[source]
        source: NameError,
    },
    /// A serial number is not acceptable (zero, too long, or not hexadecimal).
    #[error("invalid serial number {value:?}: {reason}")]
    InvalidSerial {
        /// The value as given.
        value: String,
        /// What was wrong.
        reason: &'static str,
    },
    /// A wall-clock time before the Unix epoch or beyond the year 9999 was passed in.
    #[error("time {time:?} is outside the range certificates can express")]
    TimeOutOfRange {
        /// The time as given.
        time: SystemTime,
    },
}

/// A key or a signature refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A key uses an algorithm this crate does not issue or accept.
    #[error("unsupported key algorithm: {name}")]
    UnsupportedAlgorithm {
        /// The algorithm as given or found.
        name: String,
    },
    /// An RSA public key is shorter than 2048 bits.
    #[error("RSA key of {bits} bits is too small (at least 2048 bits are required)")]
    RsaTooSmall {
        /// The key's modulus length in bits.
        bits: usize,
    },
    /// A private key could not be decoded.
    #[error("malformed private key ({what}): {source}")]
    Malformed {
        /// Which key (file name or role).
        what: String,
        /// The decoder's error.
        #[source]
        source: rcgen::Error,
    },
    /// A private key file or text holds no PEM block at all.
    #[error("malformed private key ({what}): no PEM block")]
    NoPemBlock {
        /// Which key (file name or role).
        what: String,
    },
    /// A private key does not belong to the certificate it was loaded with.
    #[error("private key does not match the public key of certificate {subject:?}")]
    Mismatch {
        /// Subject of the certificate.
        subject: String,
    },
    /// A signature does not verify with the key of the certificate that claims it.
    #[error("signature does not verify with the key of certificate {subject:?}")]
    BadSignature {
        /// Subject of the certificate.
        subject: String,
    },
    /// Signing failed.
    #[error("signing with the key of {subject:?} failed: {source}")]
    SigningFailed {
        /// Subject of the certificate.
        subject: String,
        /// The signer's error.
        #[source]
        source: rcgen::Error,
    },
}

/// A certificate unreadable, a CA that cannot issue, or an issuance that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// Bytes that should hold a certificate do not.
    #[error("malformed certificate ({what}): {reason}")]
    Malformed {
        /// Which certificate (file name or role).
        what: String,
        /// The parser's complaint.
        reason: String,
    },
    /// A certificate loaded as a CA does not carry `basicConstraints CA:TRUE`.
    #[error("certificate {subject:?} is not a CA certificate (basicConstraints CA:TRUE missing)")]
    NotACa {
        /// Subject of the offending certificate.
        subject: String,
    },
    /// A CA certificate whose key usage does not allow signing certificates.
    #[error("CA certificate {subject:?} may not sign certificates (keyUsage lacks keyCertSign)")]
    CaCannotSign {
        /// Subject of the offending certificate.
        subject: String,
    },
    /// A CA may not issue at this time because its own certificate is not valid then.
    #[error("CA {subject:?} is not valid at {now} (valid {not_before} to {not_after})")]
    CaNotValid {
        /// Subject of the CA certificate.
        subject: String,
        /// The time issuance was asked for.
        now: Timestamp,
        /// Start of the CA's validity.
        not_before: Timestamp,
        /// End of the CA's validity.
        not_after: Timestamp,
    },
    /// A certificate cannot be rotated because its CA ends no later than it does: any
    /// certificate the CA issues now would end at the same time.
    #[error(
        "cannot rotate certificate {subject:?} (valid until {not_after}): its CA {ca:?} ends at {ca_not_after}, so no certificate it issues would outlive it; renew the CA"
    )]
    CaExpiresFirst {
        /// Subject of the certificate being rotated.
        subject: String,
        /// Its end of validity.
        not_after: Timestamp,
        /// Subject of the issuing CA.
        ca: String,
        /// End of the CA's validity.
        ca_not_after: Timestamp,
    },
    /// The certificate generator refused the request (internal error of the signer).
    #[error("certificate generation failed for {what}: {source}")]
    Generation {
        /// What was being generated.
        what: &'static str,
        /// The generator's error.
        #[source]
        source: rcgen::Error,
    },
}

/// A certificate signing request refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    /// The request is larger than the accepted maximum.
    #[error("CSR of {len} bytes is larger than the {max}-byte limit")]
    TooLarge {
        /// Length of the input.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The request could not be decoded.
    #[error("malformed CSR: {reason}")]
    Malformed {
        /// What the decoder found wrong.
        reason: String,
    },
    /// The request's self-signature does not verify.
    #[error("CSR signature does not verify against its own public key: {source}")]
    BadSignature {
        /// What the verifier reported.
        #[source]
        source: x509_parser::error::X509Error,
    },
    /// The request asks for CA rights and the policy refuses such requests.
    #[error("CSR from {subject:?} asks for CA rights ({what}); refused")]
    RequestsCa {
        /// The subject written in the CSR.
        subject: String,
        /// Which part of the request asked for CA rights.
        what: &'static str,
    },
}

/// A certificate revocation list unreadable or missing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CrlError {
    /// A CRL could not be decoded or was not signed by the CA.
    #[error("malformed CRL ({what}): {reason}")]
    Malformed {
        /// Which CRL (file name or CA).
        what: String,
        /// What was wrong.
        reason: String,
    },
    /// A CA directory holds a CA but not its revocation list.
    #[error("CA revocation list {path} is missing: loading the CA without it would forget every revocation (restore the file from a backup)", path = path.display())]
    Missing {
        /// The missing CRL file.
        path: PathBuf,
    },
}

/// Why a presented certificate does not pass the check.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The certificate was not signed by the expected CA.
    #[error("certificate {subject:?} was not issued by CA {ca:?}")]
    WrongIssuer {
        /// Subject of the checked certificate.
        subject: String,
        /// Subject of the CA it was checked against.
        ca: String,
    },
    /// The certificate does not name the host that was dialled.
    #[error("certificate {subject:?} does not name host {host:?} (it names {names:?})")]
    NameMismatch {
        /// Subject of the checked certificate.
        subject: String,
        /// The host name or address that was checked.
        host: String,
        /// The names and addresses the certificate holds.
        names: Vec<String>,
    },
    /// The certificate has expired.
    #[error("certificate {subject:?} expired at {not_after} (time of check {now})")]
    Expired {
        /// Subject of the checked certificate.
        subject: String,
        /// Its end of validity.
        not_after: Timestamp,
        /// The time of the check.
        now: Timestamp,
    },
    /// The certificate is not valid yet.
    #[error("certificate {subject:?} is not valid before {not_before} (time of check {now})")]
    NotYetValid {
        /// Subject of the checked certificate.
        subject: String,
        /// Its start of validity.
        not_before: Timestamp,
        /// The time of the check.
        now: Timestamp,
    },
    /// The certificate appears on its issuer's revocation list.
    #[error("certificate {subject:?} with serial {serial} is revoked")]
    Revoked {
        /// Subject of the checked certificate.
        subject: String,
        /// Its serial number (hex).
        serial: String,
    },
    /// A certificate in the chain that signed others is not a CA.
    #[error("certificate {subject:?} was signed by a certificate that is not a CA")]
    IssuerNotCa {
        /// Subject of the checked certificate.
        subject: String,
    },
    /// The certificate is not meant for the use it was presented for.
    #[error("certificate {subject:?} may not be used for {usage}")]
    WrongUsage {
        /// Subject of the checked certificate.
        subject: String,
        /// The use it was checked for.
        usage: &'static str,
    },
    /// The certificate was issued for a different role than the connection needs.
    #[error("certificate {subject:?} has role {found:?}, this connection accepts only {expected}")]
    WrongRole {
        /// Subject of the checked certificate.
        subject: String,
        /// The role the certificate carries (if any).
        found: Option<String>,
        /// The role the connection needs.
        expected: &'static str,
    },
    /// Any other reason the path validator refused the certificate.
    #[error("certificate {subject:?} rejected: {reason}")]
    Rejected {
        /// Subject of the checked certificate.
        subject: String,
        /// The validator's reason.
        reason: String,
    },
}

/// A file that cannot be read or written, or that holds the wrong thing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// A file could not be read, written or created.
    #[error("cannot {op} {path}: {source}", path = path.display())]
    Io {
        /// The operation (`read`, `write`, `create`, ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A private key file can be read by the group or by others.
    #[error("key file {path} has mode {mode:04o}: group or others may access it (it must be 0600)", path = path.display())]
    KeyTooOpen {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A file is larger than this kind of file may be.
    #[error("file {path} is {len} bytes, more than the {max} allowed for a {what}", path = path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// The limit.
        max: u64,
        /// What the file should hold.
        what: &'static str,
    },
    /// A PEM file holds no block of the expected kind, or a malformed one.
    #[error("file {path} holds no valid {what} PEM block: {reason}", path = path.display())]
    MalformedPem {
        /// The file.
        path: PathBuf,
        /// The kind of block expected.
        what: &'static str,
        /// What was wrong.
        reason: String,
    },
}

/// A TLS configuration that cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// rustls refused a configuration (for example a key that does not fit its certificate).
    #[error("TLS configuration for {what}: {source}")]
    Config {
        /// The configuration being built.
        what: &'static str,
        /// rustls' error.
        #[source]
        source: rustls::Error,
    },
    /// A certificate verifier could not be built from the given roots and CRLs.
    #[error("certificate verifier for {what}: {source}")]
    VerifierBuild {
        /// The configuration being built.
        what: &'static str,
        /// rustls' error.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
}

/// Result alias for this crate.
pub type Result<T, E = PkiError> = std::result::Result<T, E>;

impl PkiError {
    pub(crate) fn generation(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
        move |source| CertError::Generation { what, source }.into()
    }

    pub(crate) fn io(
        op: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> PkiError {
        let path = path.to_path_buf();
        move |source| FileError::Io { op, path, source }.into()
    }
}
