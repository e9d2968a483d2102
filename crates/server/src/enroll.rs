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

/// Enrolls the device of `req`. On success the registry holds the device (save it); on
/// refusal nothing changes and the token stays usable (a request with a bad CSR does not burn
/// the legitimate agent's token).
pub fn enroll(
    registry: &mut Registry,
    ca: &ServerCa,
    req: &EnrollRequest,
    now: SystemTime,
) -> Result<EnrollResponse, ServerError> {
    let group = admit(registry, req, now)?;
    let device = req.device_id.as_str();
    let refuse = |reason| refusal(device, reason);
    let profile =
        CertProfile::agent(device).map_err(|e| refuse(EnrollmentRefusal::BadCsr(e.to_string())))?;
    let signed = ca
        .sign_csr(&req.csr_der, &profile, now)
        .map_err(|e| refuse(EnrollmentRefusal::BadCsr(e.to_string())))?;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &signed.cert_der);
    let serial = outpost_pki::Serial::of_certificate(&signed.cert_der)
        .map_err(|e| refuse(EnrollmentRefusal::BadCsr(e.to_string())))?;
    registry.complete_enrollment(
        &req.enrollment_token,
        device,
        &group,
        digest.as_ref(),
        serial.to_string(),
        now,
    );
    Ok(EnrollResponse {
        certificate_der: Bytes::copy_from_slice(&signed.cert_der),
        chain_der: signed
            .chain
            .iter()
            .skip(1)
            .map(|c| Bytes::copy_from_slice(c))
            .collect(),
        ca_der: Bytes::copy_from_slice(ca.server_ca().der()),
        group,
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
    crate::registry::check_id("device id", device)?;
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
        _ => RefusalCode::Internal,
    }
}
