//! The signed "sync now" datagram, as the agent receives it on its discovery port.
//!
//! A datagram is acted on only if every check passes: it decodes
//! (`outpost_wire::push`), it is for this device or for every device, it was issued within
//! `max_age` of now (either way), the certificate it carries is the server's (signed by the
//! server CA, valid now, naming the server the agent enrolled with, with the server role),
//! and the signature over the datagram verifies with that certificate's key, and it is not a
//! replay: every authentic datagram's (issue time, nonce) is remembered for the whole
//! acceptance window, up to [`REPLAYS_REMEMBERED`] of them; past that the oldest is forgotten
//! and datagrams issued no later than it are refused from then on, so a replay is never
//! accepted again.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use outpost_pki::{CertChecker, Role, verify_signature};
use outpost_wire::push::PushDatagram;

use crate::AgentError;

/// How many authentic pushes the verifier remembers within its acceptance window.
pub const REPLAYS_REMEMBERED: usize = 4096;

/// The authentic pushes seen within the acceptance window.
#[derive(Debug, Default)]
pub(crate) struct ReplayGuard {
    /// (issued at, nonce) of every authentic datagram still within the window.
    seen: BTreeSet<(u64, u64)>,
    /// Datagrams issued at or before this are refused: newer entries pushed them out.
    floor: Option<u64>,
}

impl ReplayGuard {
    /// Records a datagram issued at `issued` (Unix seconds) with `nonce`, at `now` (Unix
    /// seconds), with acceptance window `window` seconds and at most `capacity` entries.
    pub(crate) fn check(
        &mut self,
        issued: u64,
        nonce: u64,
        now: u64,
        window: u64,
        capacity: usize,
    ) -> Result<(), String> {
        // Entries that can no longer pass the age check are not needed.
        while self
            .seen
            .first()
            .is_some_and(|&(t, _)| t.saturating_add(window) < now)
        {
            self.seen.pop_first();
        }
        if let Some(f) = self.floor
            && issued <= f
        {
            return Err(format!(
                "issued at {issued} s, not after {f} s, the oldest push no longer remembered"
            ));
        }
        if !self.seen.insert((issued, nonce)) {
            return Err(format!("nonce {nonce} issued at {issued} s seen before"));
        }
        while self.seen.len() > capacity.max(1) {
            if let Some((t, _)) = self.seen.pop_first() {
                self.floor = Some(self.floor.map_or(t, |f| f.max(t)));
            }
        }
        Ok(())
    }
}

/// Checks pushed datagrams.
#[derive(Debug)]
pub struct PushVerifier {
    checker: CertChecker,
    server_name: String,
    device_id: String,
    max_age: Duration,
    replays: Mutex<ReplayGuard>,
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
            replays: Mutex::new(ReplayGuard::default()),
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
        // Only authentic datagrams are remembered: forgeries cannot fill the memory.
        let now_unix = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.replays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check(
                d.issued_at_unix,
                d.nonce,
                now_unix,
                self.max_age.as_secs(),
                REPLAYS_REMEMBERED,
            )
            .map_err(refuse)?;
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
    fn a_replay_is_refused_however_many_pushes_came_after_it() {
        let now = SystemTime::now();
        let (_ca, server, v) = fixture(now);
        let first = datagram(&server, "laptop-1", 1, now - Duration::from_secs(10));
        v.verify(&first, now).unwrap();
        // More than the core's nonce memory of 256.
        for nonce in 2..=300 {
            v.verify(&datagram(&server, "", nonce, now), now).unwrap();
        }
        let e = v.verify(&first, now).unwrap_err().to_string();
        assert!(e.contains("seen before"), "{e}");
    }

    #[test]
    fn a_full_replay_memory_refuses_the_oldest_instead_of_forgetting_them() {
        let mut g = ReplayGuard::default();
        let (window, cap) = (300, 3);
        for (t, n) in [(100, 1), (101, 2), (102, 3)] {
            g.check(t, n, 110, window, cap).unwrap();
        }
        // A fourth pushes out (100, 1): it and anything issued at or before 100 is refused.
        g.check(103, 4, 110, window, cap).unwrap();
        assert!(
            g.check(100, 1, 110, window, cap).is_err(),
            "replay of the forgotten one"
        );
        assert!(g.check(99, 9, 110, window, cap).is_err());
        assert!(
            g.check(101, 2, 110, window, cap).is_err(),
            "still remembered"
        );
        g.check(104, 5, 110, window, cap).unwrap();
        // Entries past the window are dropped without raising the floor.
        let mut g = ReplayGuard::default();
        g.check(100, 1, 100, window, cap).unwrap();
        g.check(500, 2, 500, window, cap).unwrap();
        assert_eq!(g.seen.len(), 1);
        assert_eq!(g.floor, None);
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
