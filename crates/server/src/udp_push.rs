//! "Sync now" as a signed UDP datagram (port 15000 inside a broadcast domain), for agents
//! without a kept connection. The datagram carries the server's certificate and a signature
//! by its key (`outpost_wire::push`); the agent checks both before it syncs.

use std::time::SystemTime;

use bytes::Bytes;
use outpost_pki::{IssuedCert, sign_with};
use outpost_wire::push::PushDatagram;

use crate::ServerError;
use crate::registry::unix;

/// Builds signed "sync now" datagrams with the server's TLS identity.
pub struct SyncNowSigner {
    identity: IssuedCert,
}

impl SyncNowSigner {
    /// A signer with the server's certificate and key.
    pub fn new(identity: IssuedCert) -> Self {
        SyncNowSigner { identity }
    }

    /// A datagram telling `device` (or, with `None`, every device that hears it) to sync now.
    pub fn datagram(
        &self,
        device: Option<&str>,
        nonce: u64,
        now: SystemTime,
    ) -> Result<Vec<u8>, ServerError> {
        let mut d = PushDatagram {
            nonce,
            issued_at_unix: unix(now),
            device_id: device.unwrap_or_default().to_string(),
            signer_cert_der: Bytes::copy_from_slice(&self.identity.cert_der),
            signature: Bytes::new(),
        };
        let bad =
            |e: outpost_wire::WireError| ServerError::Config(format!("sync-now datagram: {e}"));
        let signed = d.signed_part().map_err(bad)?;
        d.signature = Bytes::from(sign_with(&self.identity, &signed)?);
        d.encode().map_err(bad)
    }
}
