//! The crate's error type.

use std::path::PathBuf;

use crate::time::Timestamp;

/// Everything that can go wrong in `outpost-pki`.
///
/// Each variant names what was wrong and the offending value, so that a message shown to an
/// administrator (or written to a log) is enough to act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
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
    DuplicateName {
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
    /// A configuration field holds a value outside its allowed range.
    #[error("invalid configuration field `{field}`: {reason}")]
    InvalidConfig {
        /// The field name as written in the configuration file.
        field: &'static str,
        /// What was wrong, including the value.
        reason: String,
    },
    /// A key uses an algorithm this crate does not issue or accept.
    #[error("unsupported key algorithm: {0}")]
    UnsupportedKeyAlgorithm(String),
    /// An RSA public key is shorter than 2048 bits.
    #[error("RSA key of {bits} bits is too small (at least 2048 bits are required)")]
    RsaKeyTooSmall {
        /// The key's modulus length in bits.
        bits: usize,
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
    /// Bytes that should hold a certificate do not.
    #[error("malformed certificate ({what}): {reason}")]
    MalformedCertificate {
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
    /// A private key does not belong to the certificate it was loaded with.
    #[error("private key does not match the public key of certificate {subject:?}")]
    KeyMismatch {
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
    #[error("signing with the key of {subject:?} failed: {reason}")]
    SigningFailed {
        /// Subject of the certificate.
        subject: String,
        /// Why.
        reason: String,
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
    /// A certificate signing request is larger than the accepted maximum.
    #[error("CSR of {len} bytes is larger than the {max}-byte limit")]
    CsrTooLarge {
        /// Length of the input.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A certificate signing request could not be decoded.
    #[error("malformed CSR: {reason}")]
    MalformedCsr {
        /// What the decoder found wrong.
        reason: String,
    },
    /// A certificate signing request's self-signature does not verify.
    #[error("CSR signature does not verify against its own public key: {reason}")]
    CsrBadSignature {
        /// What the verifier reported.
        reason: String,
    },
    /// A certificate signing request asks for CA rights and the policy refuses such requests.
    #[error("CSR from {subject:?} asks for CA rights ({what}); refused")]
    CsrRequestsCa {
        /// The subject written in the CSR.
        subject: String,
        /// Which part of the request asked for CA rights.
        what: &'static str,
    },
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
    /// A host name given for a check is neither a DNS name nor an IP address.
    #[error("host {host:?} is neither a valid DNS name nor an IP address")]
    InvalidHost {
        /// The host as given.
        host: String,
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
    /// A certificate revocation list could not be decoded or was not signed by the CA.
    #[error("malformed CRL ({what}): {reason}")]
    MalformedCrl {
        /// Which CRL (file name or CA).
        what: String,
        /// What was wrong.
        reason: String,
    },
    /// A serial number string is not valid hexadecimal.
    #[error("invalid serial number {value:?}: {reason}")]
    InvalidSerial {
        /// The value as given.
        value: String,
        /// What was wrong.
        reason: &'static str,
    },
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
    KeyFileTooOpen {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A CA directory holds a CA but not its revocation list.
    #[error("CA revocation list {path} is missing: loading the CA without it would forget every revocation (restore the file from a backup)", path = path.display())]
    CrlMissing {
        /// The missing CRL file.
        path: PathBuf,
    },
    /// A file is larger than this kind of file may be.
    #[error("file {path} is {len} bytes, more than the {max} allowed for a {what}", path = path.display())]
    FileTooLarge {
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
    /// A private key could not be decoded.
    #[error("malformed private key ({what}): {reason}")]
    MalformedKey {
        /// Which key (file name or role).
        what: String,
        /// What was wrong.
        reason: String,
    },
    /// rustls refused a configuration (for example a key that does not fit its certificate).
    #[error("TLS configuration for {what}: {source}")]
    Tls {
        /// The configuration being built.
        what: &'static str,
        /// rustls' error.
        #[source]
        source: rustls::Error,
    },
    /// A certificate verifier could not be built from the given roots and CRLs.
    #[error("certificate verifier for {what}: {reason}")]
    VerifierBuild {
        /// The configuration being built.
        what: &'static str,
        /// rustls' reason.
        reason: String,
    },
    /// A wall-clock time before the Unix epoch or beyond the year 9999 was passed in.
    #[error("time {0:?} is outside the range certificates can express")]
    TimeOutOfRange(std::time::SystemTime),
}

/// Result alias for this crate.
pub type Result<T, E = PkiError> = std::result::Result<T, E>;

impl PkiError {
    pub(crate) fn generation(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
        move |source| PkiError::Generation { what, source }
    }

    pub(crate) fn io(
        op: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> PkiError {
        let path = path.to_path_buf();
        move |source| PkiError::Io { op, path, source }
    }
}
