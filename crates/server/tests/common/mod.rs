//! Set-up shared by the server's integration tests.

#![allow(dead_code)]

pub mod postgres;

/// An enrollment request for `device` with `token` and a fresh key's CSR, as an agent
/// makes one.
pub fn enroll_request(device: &str, token: &str) -> outpost_wire::messages::EnrollRequest {
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::new(vec![])
        .unwrap()
        .serialize_request(&key)
        .unwrap();
    outpost_wire::messages::EnrollRequest {
        device_id: device.into(),
        csr_der: csr.der().to_vec().into(),
        enrollment_token: token.into(),
        group_hint: String::new(),
    }
}
