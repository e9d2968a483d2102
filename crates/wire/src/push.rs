//! The signed "sync now" datagram the server sends to UDP port 15000 inside a broadcast
//! domain, for agents without a kept connection.
//!
//! ```text
//! offset  size  field
//! 0       4     magic "OPSN"
//! 4       1     format version, 1
//! 5       8     nonce, u64 big-endian (a receiver ignores a nonce it has seen)
//! 13      8     issued at, seconds since the Unix epoch, u64 big-endian
//! 21      1     n = length of the target device id (0: every device that hears it)
//! 22      n     target device id, UTF-8
//! 22+n    2     m = length of the signer's certificate, u16 big-endian (at most 2048)
//! 24+n    m     the signer's certificate, DER (the server's TLS certificate)
//! 24+n+m  1     k = length of the signature (at most 255)
//! 25+n+m  k     the signature over bytes 0 .. 24+n+m, by the certificate's key
//! ```
//!
//! This module only encodes and decodes; checking the certificate and the signature is
//! `outpost-pki`'s job. A decoded datagram says exactly which bytes were signed.
//!
//! ```
//! use bytes::Bytes;
//! use outpost_wire::push::PushDatagram;
//!
//! let d = PushDatagram {
//!     nonce: 7,
//!     issued_at_unix: 1_800_000_000,
//!     device_id: "laptop-7".into(),
//!     signer_cert_der: Bytes::from_static(b"cert"),
//!     signature: Bytes::from_static(b"sig"),
//! };
//! let bytes = d.encode().unwrap();
//! let (back, signed) = PushDatagram::decode(&bytes).unwrap();
//! assert_eq!(back, d);
//! assert_eq!(&bytes[..signed], &d.signed_part().unwrap()[..]);
//! ```

use bytes::Bytes;

use crate::{DeviceId, MAX_DEVICE_ID_LEN, WireError};

/// The datagram's magic.
pub const MAGIC: [u8; 4] = *b"OPSN";
/// The format version.
pub const VERSION: u8 = 1;
/// The largest certificate carried.
pub const MAX_CERT: usize = 2048;
/// The largest datagram of the format.
pub const MAX_DATAGRAM: usize = 25 + MAX_DEVICE_ID_LEN + MAX_CERT + 255;

/// A "sync now" datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushDatagram {
    /// A nonce; receivers ignore one they have seen.
    pub nonce: u64,
    /// When the server issued it, seconds since the Unix epoch.
    pub issued_at_unix: u64,
    /// The device it is for; empty for every device that hears it.
    pub device_id: String,
    /// The signer's certificate (DER).
    pub signer_cert_der: Bytes,
    /// The signature over [`signed_part`](Self::signed_part).
    pub signature: Bytes,
}

fn bad(reason: String) -> WireError {
    WireError::BadDatagram { reason }
}

struct Cursor<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], WireError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.data.len())
            .ok_or_else(|| {
                bad(format!(
                    "ends inside the {what} (needs {n} bytes at offset {}, has {})",
                    self.at,
                    self.data.len()
                ))
            })?;
        let s = &self.data[self.at..end];
        self.at = end;
        Ok(s)
    }
}

impl PushDatagram {
    /// The bytes the signature covers.
    pub fn signed_part(&self) -> Result<Vec<u8>, WireError> {
        if !self.device_id.is_empty() {
            DeviceId::check(&self.device_id)?;
        }
        if self.signer_cert_der.len() > MAX_CERT {
            return Err(bad(format!(
                "certificate of {} bytes, at most {MAX_CERT}",
                self.signer_cert_der.len()
            )));
        }
        let mut out = Vec::with_capacity(24 + self.device_id.len() + self.signer_cert_der.len());
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.nonce.to_be_bytes());
        out.extend_from_slice(&self.issued_at_unix.to_be_bytes());
        out.push(self.device_id.len() as u8);
        out.extend_from_slice(self.device_id.as_bytes());
        out.extend_from_slice(&(self.signer_cert_der.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.signer_cert_der);
        Ok(out)
    }

    /// The whole datagram.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let sig_len = u8::try_from(self.signature.len()).map_err(|_| {
            bad(format!(
                "signature of {} bytes, at most 255",
                self.signature.len()
            ))
        })?;
        let mut out = self.signed_part()?;
        out.push(sig_len);
        out.extend_from_slice(&self.signature);
        Ok(out)
    }

    /// Decodes a datagram; returns it and the length of its signed part.
    pub fn decode(datagram: &[u8]) -> Result<(PushDatagram, usize), WireError> {
        if datagram.len() > MAX_DATAGRAM {
            return Err(bad(format!(
                "{} bytes, more than {MAX_DATAGRAM}",
                datagram.len()
            )));
        }
        let mut c = Cursor {
            data: datagram,
            at: 0,
        };
        if c.take(4, "magic")? != MAGIC {
            return Err(bad(format!(
                "magic {:02x?} is not \"OPSN\"",
                &datagram[..4]
            )));
        }
        let version = c.take(1, "version")?[0];
        if version != VERSION {
            return Err(bad(format!(
                "format version {version}, this side reads {VERSION}"
            )));
        }
        let u64_at = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap_or([0; 8]));
        let nonce = u64_at(c.take(8, "nonce")?);
        let issued_at_unix = u64_at(c.take(8, "issue time")?);
        let n = usize::from(c.take(1, "device id length")?[0]);
        if n > MAX_DEVICE_ID_LEN {
            return Err(bad(format!(
                "device id length {n}, at most {MAX_DEVICE_ID_LEN}"
            )));
        }
        let device_id = std::str::from_utf8(c.take(n, "device id")?)
            .map_err(|_| bad("device id is not UTF-8".into()))?
            .to_string();
        if !device_id.is_empty() {
            DeviceId::check(&device_id)?;
        }
        let m = c.take(2, "certificate length")?;
        let m = usize::from(u16::from_be_bytes([m[0], m[1]]));
        if m > MAX_CERT {
            return Err(bad(format!("certificate length {m}, at most {MAX_CERT}")));
        }
        let cert = Bytes::copy_from_slice(c.take(m, "certificate")?);
        let signed = c.at;
        let k = usize::from(c.take(1, "signature length")?[0]);
        let signature = Bytes::copy_from_slice(c.take(k, "signature")?);
        if c.at != datagram.len() {
            return Err(bad(format!(
                "{} bytes after the signature",
                datagram.len() - c.at
            )));
        }
        Ok((
            PushDatagram {
                nonce,
                issued_at_unix,
                device_id,
                signer_cert_der: cert,
                signature,
            },
            signed,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn datagram() -> impl Strategy<Value = PushDatagram> {
        (
            any::<u64>(),
            any::<u64>(),
            "[a-z0-9.-]{0,40}",
            proptest::collection::vec(any::<u8>(), 0..600),
            proptest::collection::vec(any::<u8>(), 0..100),
        )
            .prop_map(|(nonce, issued_at_unix, device_id, c, s)| PushDatagram {
                nonce,
                issued_at_unix,
                device_id,
                signer_cert_der: c.into(),
                signature: s.into(),
            })
    }

    proptest! {
        #[test]
        fn round_trips_and_names_the_signed_bytes(d in datagram()) {
            let bytes = d.encode().unwrap();
            let (back, signed) = PushDatagram::decode(&bytes).unwrap();
            prop_assert_eq!(&back, &d);
            prop_assert_eq!(&bytes[..signed], &d.signed_part().unwrap()[..]);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let _ = PushDatagram::decode(&bytes);
        }

        #[test]
        fn every_truncation_is_refused(d in datagram(), cut in any::<usize>()) {
            let bytes = d.encode().unwrap();
            let cut = cut % bytes.len();
            prop_assert!(PushDatagram::decode(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let d = PushDatagram {
            nonce: 1,
            issued_at_unix: 2,
            device_id: "x".into(),
            signer_cert_der: Bytes::from_static(b"c"),
            signature: Bytes::from_static(b"s"),
        };
        let mut bytes = d.encode().unwrap();
        bytes.push(0);
        assert!(
            PushDatagram::decode(&bytes)
                .unwrap_err()
                .to_string()
                .contains("1 bytes after the signature")
        );
        assert!(
            PushDatagram::decode(b"OPSX\x01")
                .unwrap_err()
                .to_string()
                .contains("magic")
        );
        let too_long = PushDatagram {
            device_id: "d".repeat(200),
            ..d
        };
        assert!(
            too_long
                .encode()
                .unwrap_err()
                .to_string()
                .contains("longer than 64 bytes")
        );
        let not_an_id = PushDatagram {
            device_id: "a b".into(),
            ..too_long
        };
        assert!(
            not_an_id
                .encode()
                .unwrap_err()
                .to_string()
                .contains("only letters")
        );
    }
}
