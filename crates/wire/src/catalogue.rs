//! The message catalogue: every message type code, its body, and whether a receiver that does
//! not know it may skip it.

use bytes::{Bytes, BytesMut};
use prost::Message as _;

use crate::WireError;
use crate::messages::*;

macro_rules! catalogue {
    ($( $(#[$doc:meta])* $code:literal => $variant:ident, ignorable: $ign:literal; )*) => {
        /// The type code of a message, carried in the frame header.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        #[repr(u16)]
        pub enum MessageType {
            $( $(#[$doc])* $variant = $code, )*
        }

        impl MessageType {
            /// Every message type of the catalogue, in code order.
            pub const ALL: &'static [MessageType] = &[$(MessageType::$variant,)*];

            /// The type with this code, if this side knows it.
            pub fn from_code(code: u16) -> Option<Self> {
                match code {
                    $( $code => Some(MessageType::$variant), )*
                    _ => None,
                }
            }

            /// The type's code.
            pub fn code(self) -> u16 {
                self as u16
            }

            /// The type's name, as used in errors and logs.
            pub fn name(self) -> &'static str {
                match self {
                    $( MessageType::$variant => stringify!($variant), )*
                }
            }

            /// Whether frames of this type are sent with the IGNORABLE flag: a receiver that
            /// does not know the type skips them instead of refusing the stream.
            pub fn is_ignorable(self) -> bool {
                match self {
                    $( MessageType::$variant => $ign, )*
                }
            }
        }

        /// One decoded message of the catalogue.
        ///
        /// ```
        /// use outpost_wire::{Message, MessageType, messages::SyncNow};
        /// let m = Message::from(SyncNow { reason: "policy changed".into(), nonce: 7 });
        /// assert_eq!(m.message_type(), MessageType::SyncNow);
        /// ```
        #[derive(Debug, Clone, PartialEq)]
        #[non_exhaustive]
        pub enum Message {
            $( $(#[$doc])* $variant($variant), )*
        }

        impl Message {
            /// The message's type.
            pub fn message_type(&self) -> MessageType {
                match self {
                    $( Message::$variant(_) => MessageType::$variant, )*
                }
            }

            /// The length of the encoded body (the frame payload).
            pub fn encoded_len(&self) -> usize {
                match self {
                    $( Message::$variant(m) => m.encoded_len(), )*
                }
            }

            /// Appends the encoded body to `dst` (which must have room for
            /// [`encoded_len`](Self::encoded_len) bytes, or will grow).
            pub fn encode_body(&self, dst: &mut BytesMut) {
                match self {
                    $( Message::$variant(m) => m.encode_raw(dst), )*
                }
            }

            /// Decodes and checks a body of the given type. `offset` is the frame's stream
            /// offset, used in errors.
            pub fn decode_body(ty: MessageType, payload: Bytes, offset: u64) -> Result<Message, WireError> {
                let message = match ty {
                    $( MessageType::$variant => Message::$variant(
                        $variant::decode(payload).map_err(|source| WireError::Malformed {
                            offset,
                            message: stringify!($variant),
                            source,
                        })?,
                    ), )*
                };
                message.validate(offset)?;
                Ok(message)
            }
        }

        $(
            impl From<$variant> for Message {
                fn from(m: $variant) -> Message {
                    Message::$variant(m)
                }
            }
        )*
    };
}

catalogue! {
    /// Opens every connection: protocol versions spoken, role, identity.
    0x0001 => Hello, ignorable: false;
    /// Answers [`Hello`] with the negotiated version.
    0x0002 => HelloAck, ignorable: false;
    /// Refuses the last request or the whole connection.
    0x0003 => Refusal, ignorable: false;
    /// Agent asks for a certificate: CSR and enrollment token.
    0x0010 => EnrollRequest, ignorable: false;
    /// Server answers with the issued certificate.
    0x0011 => EnrollResponse, ignorable: false;
    /// Enrolled agent asks for its reserve certificate over its authenticated connection.
    0x0012 => RenewRequest, ignorable: false;
    /// Server answers with the reserve certificate.
    0x0013 => RenewResponse, ignorable: false;
    /// Agent heartbeat with the versions it holds.
    0x0020 => SyncRequest, ignorable: false;
    /// What changed for the agent, and when to sync next.
    0x0021 => SyncResponse, ignorable: false;
    /// A batch of events from an agent.
    0x0022 => EventBatch, ignorable: true;
    /// The server stored events up to an id.
    0x0023 => EventAck, ignorable: true;
    /// Push: sync now.
    0x0024 => SyncNow, ignorable: true;
    /// Server opens a signal connection to a DMZ gateway.
    0x0030 => SignalHello, ignorable: false;
    /// Gateway accepts the signal connection.
    0x0031 => SignalHelloAck, ignorable: false;
    /// Signal connection keepalive (and its answer).
    0x0032 => Keepalive, ignorable: true;
    /// Gateway asks the server for a data connection, with a single-use ticket.
    0x0033 => ConnectRequest, ignorable: false;
    /// Server refuses a connect request.
    0x0034 => ConnectRefusal, ignorable: false;
    /// Gateway to server: tickets for warm-pool data connections.
    0x0035 => PoolTickets, ignorable: true;
    /// Server presents a ticket on a fresh data connection.
    0x0040 => DataAttach, ignorable: false;
    /// Gateway accepts the data connection and splices it.
    0x0041 => DataAttachAck, ignorable: false;
    /// Gateway opens a relayed stream on a connection it dialled (remote office).
    0x0042 => TunnelOpen, ignorable: false;
    /// Server accepts a tunnel.
    0x0043 => TunnelAccept, ignorable: false;
    /// Distribution point assignment or role change, with the election epoch.
    0x0050 => DpAssignment, ignorable: false;
    /// An update is available.
    0x0051 => UpdateAnnouncement, ignorable: true;
    /// Ask for a byte range of an object.
    0x0052 => ChunkRequest, ignorable: false;
    /// A byte range of an object.
    0x0053 => ChunkResponse, ignorable: false;
}

fn require<T>(
    v: &Option<T>,
    offset: u64,
    message: &'static str,
    field: &'static str,
) -> Result<(), WireError> {
    if v.is_none() {
        return Err(WireError::MissingField {
            offset,
            message,
            field,
        });
    }
    Ok(())
}

fn check_digest(
    v: &Bytes,
    allow_empty: bool,
    offset: u64,
    message: &'static str,
    field: &'static str,
) -> Result<(), WireError> {
    if v.len() == 32 || (allow_empty && v.is_empty()) {
        return Ok(());
    }
    Err(WireError::InvalidField {
        offset,
        message,
        field,
        reason: format!("a SHA-256 digest is 32 bytes, got {}", v.len()),
    })
}

fn check_key(
    v: &Bytes,
    offset: u64,
    message: &'static str,
    field: &'static str,
) -> Result<(), WireError> {
    if v.is_empty() || v.len() == 32 {
        return Ok(());
    }
    Err(WireError::InvalidField {
        offset,
        message,
        field,
        reason: format!("an Ed25519 public key is 32 bytes, got {}", v.len()),
    })
}

fn check_peer(
    peer: &Option<PeerIdentity>,
    offset: u64,
    message: &'static str,
) -> Result<(), WireError> {
    require(peer, offset, message, "peer")?;
    if let Some(p) = peer {
        check_digest(&p.cert_sha256, true, offset, message, "peer.cert_sha256")?;
        let serial = &p.cert_serial;
        if serial.len() > crate::messages::MAX_SERIAL_HEX
            || !serial
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(WireError::InvalidField {
                offset,
                message,
                field: "peer.cert_serial",
                reason: format!(
                    "a serial is at most {} lower-case hex digits, got {} characters",
                    crate::messages::MAX_SERIAL_HEX,
                    serial.len()
                ),
            });
        }
        if p.virtual_server.len() > crate::messages::MAX_VIRTUAL_SERVER_ID {
            return Err(WireError::InvalidField {
                offset,
                message,
                field: "peer.virtual_server",
                reason: format!(
                    "a virtual server id is at most {} bytes, got {}",
                    crate::messages::MAX_VIRTUAL_SERVER_ID,
                    p.virtual_server.len()
                ),
            });
        }
    }
    Ok(())
}

impl Message {
    /// Checks what the encoding alone cannot: required fields, fixed lengths, ranges.
    pub fn validate(&self, offset: u64) -> Result<(), WireError> {
        match self {
            Message::Hello(m) if m.min_version > m.max_version => Err(WireError::InvalidField {
                offset,
                message: "Hello",
                field: "min_version",
                reason: format!(
                    "minimum version {} above maximum {}",
                    m.min_version, m.max_version
                ),
            }),
            Message::EnrollRequest(m) if m.csr_der.is_empty() => Err(WireError::MissingField {
                offset,
                message: "EnrollRequest",
                field: "csr_der",
            }),
            Message::RenewRequest(m) if m.csr_der.is_empty() => Err(WireError::MissingField {
                offset,
                message: "RenewRequest",
                field: "csr_der",
            }),
            Message::RenewResponse(m) if m.certificate_der.is_empty() => {
                Err(WireError::MissingField {
                    offset,
                    message: "RenewResponse",
                    field: "certificate_der",
                })
            }
            Message::ConnectRequest(m) => {
                require(&m.ticket, offset, "ConnectRequest", "ticket")?;
                check_peer(&m.peer, offset, "ConnectRequest")
            }
            Message::ConnectRefusal(m) => require(&m.ticket, offset, "ConnectRefusal", "ticket"),
            Message::PoolTickets(m) if m.tickets.len() > crate::messages::MAX_POOL_TICKETS => {
                Err(WireError::InvalidField {
                    offset,
                    message: "PoolTickets",
                    field: "tickets",
                    reason: format!(
                        "{} tickets, at most {} allowed",
                        m.tickets.len(),
                        crate::messages::MAX_POOL_TICKETS
                    ),
                })
            }
            Message::DataAttach(m) => require(&m.ticket, offset, "DataAttach", "ticket"),
            Message::DataAttachAck(m) => {
                require(&m.ticket, offset, "DataAttachAck", "ticket")?;
                check_peer(&m.peer, offset, "DataAttachAck")
            }
            Message::TunnelOpen(m) => check_peer(&m.peer, offset, "TunnelOpen"),
            Message::DpAssignment(m) => {
                require(&m.scope, offset, "DpAssignment", "scope")?;
                check_key(&m.signing_key, offset, "DpAssignment", "signing_key")
            }
            Message::UpdateAnnouncement(m) => {
                check_digest(&m.sha256, false, offset, "UpdateAnnouncement", "sha256")
            }
            Message::SyncRequest(m) => {
                for d in &m.dp_status {
                    check_key(
                        &d.signing_key,
                        offset,
                        "SyncRequest",
                        "dp_status.signing_key",
                    )?;
                }
                Ok(())
            }
            Message::SyncResponse(m) => {
                for a in &m.assignments {
                    require(&a.scope, offset, "SyncResponse", "assignments.scope")?;
                    check_key(
                        &a.signing_key,
                        offset,
                        "SyncResponse",
                        "assignments.signing_key",
                    )?;
                }
                for u in &m.updates {
                    check_digest(&u.sha256, false, offset, "SyncResponse", "updates.sha256")?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for &t in MessageType::ALL {
            assert!(seen.insert(t.code()), "duplicate code {:#06x}", t.code());
            assert_eq!(MessageType::from_code(t.code()), Some(t));
        }
        assert_eq!(MessageType::from_code(0xFFFF), None);
        assert_eq!(MessageType::ConnectRequest.name(), "ConnectRequest");
    }

    #[test]
    fn missing_ticket_is_named() {
        let m = Message::from(ConnectRequest {
            ticket: None,
            peer: Some(PeerIdentity::default()),
            expires_in_ms: 5000,
        });
        let err = m.validate(42).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ConnectRequest.ticket is required but missing (frame at stream offset 42)"
        );
    }

    #[test]
    fn short_digest_is_refused_with_its_length() {
        let m = Message::from(UpdateAnnouncement {
            sha256: Bytes::from_static(&[0; 31]),
            ..Default::default()
        });
        let err = m.validate(0).unwrap_err();
        assert!(err.to_string().contains("got 31"), "{err}");
    }
}
