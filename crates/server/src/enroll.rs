//! Enrollment: a Network Agent presents a certificate signing request and the one-time token
//! the administrator issued; the server signs the request (taking only its public key) with an
//! agent profile bound to the device id, places the device in the token's group, and uses the
//! token up.

use std::time::SystemTime;

use bytes::Bytes;
use outpost_pki::{CertProfile, ServerCa};
use outpost_wire::messages::{EnrollRequest, EnrollResponse, RefusalCode};

use crate::error::EnrollmentRefusal;
use crate::{Registry, ServerError};

/// Enrolls the device of `req`. On success the registry holds the device (commit its
/// journal); on
/// refusal nothing changes and the token stays usable (a request with a bad CSR does not burn
/// the legitimate agent's token).
pub fn enroll(
    registry: &mut Registry,
    ca: &ServerCa,
    req: &EnrollRequest,
    now: SystemTime,
) -> Result<EnrollResponse, ServerError> {
    admit(registry, req, now)?;
    let signed = sign_enrollment(ca, req, None, now)?;
    record_enrollment(registry, req, signed, now)
}

/// A signed certificate for an enrolling device, not yet recorded.
#[derive(Debug)]
pub struct SignedEnrollment {
    pub(crate) response: EnrollResponse,
    pub(crate) sha256: [u8; 32],
    pub(crate) serial: String,
    pub(crate) expires_unix: u64,
}

/// Signs the request's CSR (the costly part of [`enroll`], which needs no registry: run it
/// between [`admit`] and [`record_enrollment`] without holding the registry).
pub fn sign_enrollment(
    ca: &ServerCa,
    req: &EnrollRequest,
    virtual_server: Option<&str>,
    now: SystemTime,
) -> Result<SignedEnrollment, ServerError> {
    let device = req.device_id.as_str();
    crate::registry::check_device_id(device)?;
    let refuse = |reason| refusal(device, reason);
    let mut profile =
        CertProfile::agent(device).map_err(|e| refuse(EnrollmentRefusal::BadCsr(e.to_string())))?;
    if let Some(vs) = virtual_server {
        profile = profile.in_virtual_server(vs)?;
    }
    let signed = ca
        .sign_csr(&req.csr_der, &profile, now)
        .map_err(|e| refuse(EnrollmentRefusal::BadCsr(e.to_string())))?;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &signed.cert_der);
    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(digest.as_ref());
    let serial = outpost_pki::Serial::of_certificate(&signed.cert_der)
        .map_err(|e| refuse(EnrollmentRefusal::BadCsr(e.to_string())))?;
    Ok(SignedEnrollment {
        response: EnrollResponse {
            certificate_der: Bytes::copy_from_slice(&signed.cert_der),
            chain_der: signed
                .chain
                .iter()
                .skip(1)
                .map(|c| Bytes::copy_from_slice(c))
                .collect(),
            ca_der: Bytes::copy_from_slice(ca.server_ca().der()),
            group: String::new(),
        },
        sha256,
        serial: serial.to_string(),
        expires_unix: u64::try_from(signed.info.not_after.unix_seconds()).unwrap_or(0),
    })
}

/// Checks the request again (another enrollment may have used the token meanwhile), uses
/// the token up and records the device: the registry's journal then holds the writes to
/// commit before the response goes out.
pub fn record_enrollment(
    registry: &mut Registry,
    req: &EnrollRequest,
    signed: SignedEnrollment,
    now: SystemTime,
) -> Result<EnrollResponse, ServerError> {
    let group = admit(registry, req, now)?;
    let record = crate::Device {
        group: group.clone(),
        cert_sha256: crate::registry::hex(&signed.sha256),
        enrolled_at_unix: crate::registry::unix(now),
        cert_serial: signed.serial,
        last_seen_unix: 0,
        broadcast_domain: None,
        os_class: None,
        free_disk_bytes: None,
        enrolled_with: String::new(),
        tags: Default::default(),
        cert_expires_unix: signed.expires_unix,
        reserve_cert: None,
        network_location: None,
    };
    registry.complete_enrollment(&req.enrollment_token, &req.device_id, record);
    Ok(EnrollResponse {
        group,
        ..signed.response
    })
}

/// The checks of [`enroll`] that need only to read the registry: the device id, the token,
/// and that the device is not enrolled yet. Returns the token's group. A service can run
/// them before it prepares a change, so that refusals cost no copy of the registry.
pub fn admit(
    registry: &Registry,
    req: &EnrollRequest,
    now: SystemTime,
) -> Result<String, ServerError> {
    let device = req.device_id.as_str();
    crate::registry::check_device_id(device)?;
    // An enrollment committed whose answer was lost: the same token enrolls it again
    // (a new certificate replaces the one nobody received).
    if let Some(d) = registry.unanswered_enrollment(&req.enrollment_token, device) {
        return Ok(d.group.clone());
    }
    // The token first: without a valid one, nobody learns which device ids are enrolled.
    let group = registry
        .check_token(&req.enrollment_token, device, now)
        .map_err(|r| refusal(device, r))?
        .group
        .clone();
    if registry.device(device).is_some() {
        return Err(refusal(device, EnrollmentRefusal::AlreadyEnrolled));
    }
    Ok(group)
}

fn refusal(device: &str, reason: EnrollmentRefusal) -> ServerError {
    ServerError::EnrollmentRefused {
        device: device.chars().take(200).collect(),
        reason,
    }
}

/// The wire refusal code for an error from [`enroll`].
pub fn refusal_code(e: &ServerError) -> RefusalCode {
    match e {
        ServerError::EnrollmentRefused {
            reason: EnrollmentRefusal::BadCsr(_),
            ..
        } => RefusalCode::BadCsr,
        ServerError::EnrollmentRefused {
            reason: EnrollmentRefusal::AlreadyEnrolled,
            ..
        } => RefusalCode::NotAuthorized,
        ServerError::EnrollmentRefused { .. } => RefusalCode::BadEnrollmentToken,
        ServerError::InvalidId { .. } => RefusalCode::ProtocolViolation,
        ServerError::RenewalTooSoon { .. } => RefusalCode::Overloaded,
        ServerError::Disabled(_) => RefusalCode::ServerDisabled,
        // The database is unreachable or full: the agent retries with its backoff.
        e if e.is_retryable() => RefusalCode::Overloaded,
        _ => RefusalCode::Internal,
    }
}
