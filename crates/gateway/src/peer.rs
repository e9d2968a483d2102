//! Who is behind a connection, and the one connection type the server receives whether a
//! device came directly or through any gateway.

use std::fmt;

use outpost_wire::messages::{ChannelKind, PeerIdentity};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream to or from a device: TLS to the device directly, or a data connection /
/// tunnel through a gateway (itself TLS).
pub trait DeviceIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> DeviceIo for T {}

/// A boxed [`DeviceIo`].
pub type BoxStream = Box<dyn DeviceIo>;

/// The identity of a device as authenticated by whoever terminated its TLS connection (the
/// server itself, or a gateway that forwarded it).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DevicePeer {
    /// SHA-256 of the device's certificate; `None` when it presented none (the
    /// unauthenticated mobile port, the Web Console tunnel).
    pub cert_sha256: Option<[u8; 32]>,
    /// The certificate subject (empty without a certificate).
    pub subject: String,
    /// The device's address as seen by the side that accepted it.
    pub remote_addr: String,
    /// The port kind it came in on.
    pub channel: ChannelKind,
    /// The certificate's serial number as lower-case hex (`None` without a certificate).
    pub cert_serial: Option<String>,
    /// The virtual server the certificate is bound to (`None`: the main server, or no
    /// certificate).
    pub virtual_server: Option<String>,
}

impl DevicePeer {
    /// Reads the identity from the certificates a TLS peer presented.
    pub fn from_certificates(
        certs: Option<&[CertificateDer<'_>]>,
        remote_addr: String,
        channel: ChannelKind,
    ) -> Self {
        let identity = certs
            .and_then(<[_]>::first)
            .and_then(|c| outpost_pki::PeerIdentity::from_der(c).ok());
        DevicePeer {
            cert_sha256: identity.as_ref().map(|i| i.sha256),
            cert_serial: identity.as_ref().map(|i| i.serial.to_string()),
            virtual_server: identity.as_ref().and_then(|i| i.virtual_server.clone()),
            subject: identity.map(|i| i.subject).unwrap_or_default(),
            remote_addr,
            channel,
        }
    }

    /// A peer that presented no certificate (enrollment, the Web Console).
    pub fn anonymous(remote_addr: String, channel: ChannelKind) -> Self {
        DevicePeer {
            cert_sha256: None,
            subject: String::new(),
            remote_addr,
            channel,
            cert_serial: None,
            virtual_server: None,
        }
    }

    /// The fingerprint as upper-case colon-separated hex, or `-` without a certificate.
    pub fn fingerprint(&self) -> String {
        match &self.cert_sha256 {
            Some(d) => d
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect::<Vec<_>>()
                .join(":"),
            None => "-".into(),
        }
    }

    pub(crate) fn to_wire(&self) -> PeerIdentity {
        PeerIdentity {
            cert_sha256: self
                .cert_sha256
                .map(|d| bytes::Bytes::copy_from_slice(&d))
                .unwrap_or_default(),
            subject: self.subject.clone(),
            remote_addr: self.remote_addr.clone(),
            channel: self.channel as i32,
            cert_serial: self.cert_serial.clone().unwrap_or_default(),
            virtual_server: self.virtual_server.clone().unwrap_or_default(),
        }
    }

    pub(crate) fn from_wire(p: &PeerIdentity) -> Self {
        DevicePeer {
            // The wire decoder has checked the length is 0 or 32.
            cert_sha256: <[u8; 32]>::try_from(&p.cert_sha256[..]).ok(),
            subject: p.subject.clone(),
            remote_addr: p.remote_addr.clone(),
            channel: ChannelKind::try_from(p.channel).unwrap_or(ChannelKind::Unspecified),
            cert_serial: (!p.cert_serial.is_empty()).then(|| p.cert_serial.clone()),
            virtual_server: (!p.virtual_server.is_empty()).then(|| p.virtual_server.clone()),
        }
    }
}

/// How a device reached the server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Via {
    /// Directly to the server's own port.
    Direct,
    /// Through a DMZ gateway (server-initiated data connection).
    DmzGateway(String),
    /// Through a remote-office gateway (gateway-initiated tunnel).
    RemoteGateway(String),
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Via::Direct => f.write_str("direct"),
            Via::DmzGateway(g) => write!(f, "DMZ gateway {g}"),
            Via::RemoteGateway(g) => write!(f, "remote-office gateway {g}"),
        }
    }
}

/// An authenticated device connection handed to the server: the same type whether the device
/// came directly or through any gateway.
pub struct DeviceConnection {
    /// The device's byte stream (it speaks the wire protocol from here on).
    pub stream: BoxStream,
    /// Who the device is.
    pub peer: DevicePeer,
    /// How it came.
    pub via: Via,
}

impl fmt::Debug for DeviceConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceConnection")
            .field("peer", &self.peer)
            .field("via", &self.via)
            .finish_non_exhaustive()
    }
}

/// SHA-256 of the first certificate a TLS peer presented.
pub(crate) fn cert_fingerprint(certs: Option<&[CertificateDer<'_>]>) -> Option<[u8; 32]> {
    let first = certs?.first()?;
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, first);
    <[u8; 32]>::try_from(d.as_ref()).ok()
}

/// A fresh random 128-bit value from the operating system's random source; `None` if that
/// source fails (the caller then refuses rather than issue a guessable ticket).
pub(crate) fn random_u128() -> Option<u128> {
    use aws_lc_rs::rand::SecureRandom;
    let mut b = [0u8; 16];
    aws_lc_rs::rand::SystemRandom::new().fill(&mut b).ok()?;
    Some(u128::from_be_bytes(b))
}

/// The ALPN protocols a client offered in its ClientHello (empty if none).
pub(crate) fn offered_alpn<IO>(start: &tokio_rustls::StartHandshake<IO>) -> Vec<Vec<u8>>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    start
        .client_hello()
        .alpn()
        .map(|it| it.map(<[u8]>::to_vec).collect())
        .unwrap_or_default()
}
