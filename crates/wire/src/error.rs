//! The crate's one error type.

use crate::version::VersionRange;

/// Everything that can go wrong reading or writing the wire protocol.
///
/// Offsets are stream positions (bytes consumed by the decoder before the failing frame's
/// first byte), so a failure can be located in a capture.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// A settings document is not JSON.
    #[error("settings document is not JSON: {0}")]
    SettingsJson(#[source] serde_json::Error),
    /// The frame did not start with the magic bytes `"OP"`.
    #[error("bad magic at stream offset {offset}: expected \"OP\" (4f 50), found {:02x} {:02x}", found[0], found[1])]
    BadMagic {
        /// Stream offset of the frame.
        offset: u64,
        /// The two bytes found instead.
        found: [u8; 2],
    },
    /// The frame format version byte is not one this crate reads.
    #[error(
        "unsupported frame format version {found} at stream offset {offset} (this side reads version {})",
        crate::frame::FRAME_VERSION
    )]
    UnsupportedFrameVersion {
        /// Stream offset of the frame.
        offset: u64,
        /// The version byte found.
        found: u8,
    },
    /// Reserved flag bits were set.
    #[error("reserved flag bits set in frame at stream offset {offset}: flags {flags:#010b}")]
    ReservedFlags {
        /// Stream offset of the frame.
        offset: u64,
        /// The whole flags byte.
        flags: u8,
    },
    /// A caller asked to send a frame with flag bits this version does not define.
    #[error("cannot send flags {flags:#010b}: only bit 0 (IGNORABLE) is defined")]
    UnknownFlagsToSend {
        /// The flags byte given.
        flags: u8,
    },
    /// The peer announced a payload larger than this connection accepts.
    #[error(
        "frame at stream offset {offset} (message type {message_type:#06x}) announces {len} bytes, more than the maximum of {max}"
    )]
    FrameTooLarge {
        /// Stream offset of the frame.
        offset: u64,
        /// The announced message type.
        message_type: u16,
        /// The announced payload length.
        len: u64,
        /// The configured maximum.
        max: usize,
    },
    /// A message to send encodes to more than the configured maximum.
    #[error(
        "message type {message_type:#06x} encodes to {len} bytes, more than the maximum frame length of {max}"
    )]
    PayloadTooLarge {
        /// The message type.
        message_type: u16,
        /// The encoded payload length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside the frame at offset {offset}: {have} of {expected} bytes")]
    TruncatedFrame {
        /// Stream offset of the frame.
        offset: u64,
        /// Bytes of the frame received.
        have: u64,
        /// Bytes the frame needed (header plus announced payload).
        expected: u64,
    },
    /// A frame of a type this side does not know, without the IGNORABLE flag.
    #[error(
        "unknown message type {message_type:#06x} at stream offset {offset} (not marked ignorable)"
    )]
    UnknownMessageType {
        /// Stream offset of the frame.
        offset: u64,
        /// The type code.
        message_type: u16,
    },
    /// The payload of a known message type is not a valid encoding.
    #[error("malformed {message} payload in frame at stream offset {offset}: {source}")]
    Malformed {
        /// Stream offset of the frame.
        offset: u64,
        /// The message name.
        message: &'static str,
        /// What the payload decoder found.
        #[source]
        source: prost::DecodeError,
    },
    /// A field the message cannot do without is absent.
    #[error("{message}.{field} is required but missing (frame at stream offset {offset})")]
    MissingField {
        /// Stream offset of the frame.
        offset: u64,
        /// The message name.
        message: &'static str,
        /// The field name.
        field: &'static str,
    },
    /// A field is present but its value is not acceptable.
    #[error("{message}.{field} is invalid (frame at stream offset {offset}): {reason}")]
    InvalidField {
        /// Stream offset of the frame.
        offset: u64,
        /// The message name.
        message: &'static str,
        /// The field name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The two sides speak no common protocol version.
    #[error("no common protocol version: this side speaks {ours}, the peer speaks {theirs}")]
    NoCommonVersion {
        /// Our range.
        ours: VersionRange,
        /// The peer's range.
        theirs: VersionRange,
    },
    /// A version range whose minimum is above its maximum.
    #[error("invalid protocol version range {min}..={max}: minimum above maximum")]
    InvalidVersionRange {
        /// The stated minimum.
        min: u32,
        /// The stated maximum.
        max: u32,
    },
    /// A datagram (see [`crate::push`]) is malformed.
    #[error("malformed datagram: {reason}")]
    BadDatagram {
        /// What is wrong, and where.
        reason: String,
    },
    /// An I/O error from the transport under a `Framed` stream.
    #[error("transport error: {0}")]
    Io(#[from] std::io::Error),
}
