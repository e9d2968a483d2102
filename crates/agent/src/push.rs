//! The signed "sync now" datagram, as the agent receives it on its discovery port.
//!
//! A datagram is acted on only if every check passes: it decodes
//! (`outpost_wire::push`), it is for this device or for every device, it was issued within
//! `max_age` of now (either way), the certificate it carries is the server's (signed by the
//! server CA, valid now, naming the server the agent enrolled with, with the server role),
//! and the signature over the datagram verifies with that certificate's key. Replays within
//! `max_age` are stopped by the nonce check of the core.

use std::time::{Duration, SystemTime};

use outpost_pki::{CertChecker, Role, verify_signature};
use outpost_wire::push::PushDatagram;

use crate::AgentError;

/// Checks pushed datagrams.
#[derive(Debug)]
pub struct PushVerifier {
    checker: CertChecker,
    server_name: String,
    device_id: String,
    max_age: Duration,
}

fn refuse(reason: impl Into<String>) -> AgentError {
    AgentError::PushRefused(reason.into())
}

impl PushVerifier {
    /// A verifier for `device_id`, trusting pushes signed by the certificate of
    /// `server_name` issued by `checker`'s CA, issued at most `max_age` ago.
    pub fn new(
        checker: CertChecker,
        server_name: impl Into<String>,
        device_id: impl Into<String>,
        max_age: Duration,
    ) -> Self {
        PushVerifier {
            checker,
            server_name: server_name.into(),
            device_id: device_id.into(),
            max_age,
        }
    }

    /// The nonce of a datagram that passes every check.
    pub fn verify(&self, datagram: &[u8], now: SystemTime) -> Result<u64, AgentError> {
        let (d, signed) = PushDatagram::decode(datagram).map_err(|e| refuse(e.to_string()))?;
        if !d.device_id.is_empty() && d.device_id != self.device_id {
            return Err(refuse(format!("for device {:?}", d.device_id)));
        }
        let issued = SystemTime::UNIX_EPOCH
            .checked_add(Duration::from_secs(d.issued_at_unix))
            .ok_or_else(|| {
                refuse(format!(
                    "issued at {} s after 1970, beyond this system's clock",
                    d.issued_at_unix
                ))
            })?;
        let age = now.duration_since(issued).unwrap_or_else(|e| e.duration());
        if age > self.max_age {
            return Err(refuse(format!(
                "issued {} s from now, more than {} s",
                age.as_secs(),
                self.max_age.as_secs()
            )));
        }
        let who = self
            .checker
            .check_server(&d.signer_cert_der, &self.server_name, now)?;
        if who.role != Some(Role::Server) {
            return Err(refuse(format!(
                "signed by {:?}, not the server",
                who.subject
            )));
        }
        verify_signature(&d.signer_cert_der, &datagram[..signed], &d.signature)?;
        Ok(d.nonce)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use outpost_pki::{IssuedCert, PkiConfig, ServerCa, sign_with};

    fn datagram(signer: &IssuedCert, device: &str, nonce: u64, at: SystemTime) -> Vec<u8> {
        let mut d = PushDatagram {
            nonce,
            issued_at_unix: at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            device_id: device.into(),
            signer_cert_der: Bytes::copy_from_slice(&signer.cert_der),
            signature: Bytes::new(),
        };
        d.signature = sign_with(signer, &d.signed_part().unwrap()).unwrap().into();
        d.encode().unwrap()
    }

    /// A CA, its server certificate for `server.test`, and a verifier for `laptop-1`
    /// accepting pushes up to 300 s old.
    fn fixture(now: SystemTime) -> (ServerCa, IssuedCert, PushVerifier) {
        let ca = ServerCa::create(PkiConfig::default(), now).unwrap();
        let server = ca
            .issue_server("server-1", &["server.test".into()], &[], now)
            .unwrap();
        let v = PushVerifier::new(
            CertChecker::new(ca.server_ca(), &[]).unwrap(),
            "server.test",
            "laptop-1",
            Duration::from_secs(300),
        );
        (ca, server, v)
    }

    #[test]
    fn only_the_servers_fresh_signed_push_for_this_device_passes() {
        let now = SystemTime::now();
        let (ca, server, v) = fixture(now);
        assert_eq!(
            v.verify(&datagram(&server, "laptop-1", 5, now), now)
                .unwrap(),
            5
        );
        assert_eq!(
            v.verify(&datagram(&server, "", 6, now), now).unwrap(),
            6,
            "for everyone"
        );

        let refused = |d: Vec<u8>| v.verify(&d, now).unwrap_err().to_string();
        assert!(refused(datagram(&server, "laptop-2", 7, now)).contains("for device"));
        assert!(
            refused(datagram(
                &server,
                "laptop-1",
                8,
                now - Duration::from_secs(600)
            ))
            .contains("more than 300")
        );
        // A gateway certificate from the same CA is not the server.
        let gw = ca.issue_gateway(&["server.test".into()], &[], now).unwrap();
        assert!(v.verify(&datagram(&gw, "laptop-1", 9, now), now).is_err());
        // A server certificate from another CA.
        let other = ServerCa::create(PkiConfig::default(), now).unwrap();
        let rogue = other
            .issue_server("server-1", &["server.test".into()], &[], now)
            .unwrap();
        assert!(
            v.verify(&datagram(&rogue, "laptop-1", 10, now), now)
                .is_err()
        );
        // Tampered after signing.
        let mut d = datagram(&server, "laptop-1", 11, now);
        d[6] ^= 1;
        assert!(refused(d).contains("signature"));
        assert!(v.verify(b"OPSN", now).is_err());
    }

    #[test]
    fn a_timestamp_beyond_the_clock_is_refused_not_a_panic() {
        let now = SystemTime::now();
        let (_ca, server, v) = fixture(now);
        for issued_at_unix in [u64::MAX, i64::MAX as u64 + 1] {
            // Unsigned: the time is checked before the certificate and the signature.
            let d = PushDatagram {
                nonce: 1,
                issued_at_unix,
                device_id: "laptop-1".into(),
                signer_cert_der: Bytes::copy_from_slice(&server.cert_der),
                signature: Bytes::from_static(&[0; 64]),
            };
            let e = v.verify(&d.encode().unwrap(), now).unwrap_err().to_string();
            assert!(
                e.contains("beyond this system's clock"),
                "{issued_at_unix}: {e}"
            );
        }
    }
}
