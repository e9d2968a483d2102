//! The frame layer: a fixed 10-byte header followed by an opaque payload.
//!
//! ```text
//! offset  size  field
//! 0       2     magic, the ASCII bytes "OP" (0x4F 0x50)
//! 2       1     frame format version, currently 1
//! 3       1     flags (bit 0: IGNORABLE; bits 1-7 reserved, sent as 0, refused if set)
//! 4       2     message type, unsigned big-endian
//! 6       4     payload length in bytes, unsigned big-endian
//! 10      n     payload
//! ```
//!
//! [`FrameCodec`] implements tokio-util's [`Decoder`] and [`Encoder`]. The payload of a decoded
//! [`Frame`] is a [`Bytes`] split off the read buffer, so it is never copied.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::WireError;

/// The two magic bytes that open every frame: ASCII `"OP"`.
pub const MAGIC: [u8; 2] = *b"OP";
/// The frame format version this crate reads and writes.
pub const FRAME_VERSION: u8 = 1;
/// Length of the frame header in bytes.
pub const HEADER_LEN: usize = 10;
/// The default maximum payload length of one frame: 16 MiB.
pub const DEFAULT_MAX_FRAME_LEN: usize = 16 * 1024 * 1024;
/// The largest maximum a codec can be configured with (the header's length field is 32-bit).
pub const MAX_CONFIGURABLE_FRAME_LEN: usize = u32::MAX as usize;
/// The most the decoder reserves for a payload ahead of the bytes received (64 KiB): a peer
/// that announces a large frame and sends little of it costs what it sent, not what it
/// announced. Larger payloads grow the buffer as their bytes arrive.
pub const MAX_RESERVE_AHEAD: usize = 64 * 1024;

/// Frame flag bits.
pub mod flags {
    /// A receiver that does not know the frame's message type skips the frame instead of
    /// refusing the stream.
    pub const IGNORABLE: u8 = 0b0000_0001;
    /// Every bit this version of the frame format defines.
    pub const KNOWN: u8 = IGNORABLE;
}

/// One frame: message type, flags and the still-encoded payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The message type code (see [`crate::MessageType`]).
    pub message_type: u16,
    /// Flag bits (see [`flags`]).
    pub flags: u8,
    /// The payload, shared with the buffer it was read from.
    pub payload: Bytes,
}

impl Frame {
    /// A frame with no flags set.
    pub fn new(message_type: u16, payload: impl Into<Bytes>) -> Self {
        Frame {
            message_type,
            flags: 0,
            payload: payload.into(),
        }
    }

    /// Whether a receiver that does not know this type may skip the frame.
    pub fn is_ignorable(&self) -> bool {
        self.flags & flags::IGNORABLE != 0
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The message type code.
    pub message_type: u16,
    /// Flag bits.
    pub flags: u8,
    /// Payload length in bytes.
    pub len: u32,
}

impl FrameHeader {
    /// Parses and checks a header. `offset` is the stream position of its first byte, used
    /// in errors.
    pub fn parse(bytes: &[u8; HEADER_LEN], offset: u64, max_len: usize) -> Result<Self, WireError> {
        if bytes[0..2] != MAGIC {
            return Err(WireError::BadMagic {
                offset,
                found: [bytes[0], bytes[1]],
            });
        }
        if bytes[2] != FRAME_VERSION {
            return Err(WireError::UnsupportedFrameVersion {
                offset,
                found: bytes[2],
            });
        }
        let flags = bytes[3];
        if flags & !flags::KNOWN != 0 {
            return Err(WireError::ReservedFlags { offset, flags });
        }
        let message_type = u16::from_be_bytes([bytes[4], bytes[5]]);
        let len = u32::from_be_bytes([bytes[6], bytes[7], bytes[8], bytes[9]]);
        if len as usize > max_len {
            return Err(WireError::FrameTooLarge {
                offset,
                message_type,
                len: u64::from(len),
                max: max_len,
            });
        }
        Ok(FrameHeader {
            message_type,
            flags,
            len,
        })
    }

    /// The header's 10 bytes.
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let t = self.message_type.to_be_bytes();
        let l = self.len.to_be_bytes();
        [
            MAGIC[0],
            MAGIC[1],
            FRAME_VERSION,
            self.flags,
            t[0],
            t[1],
            l[0],
            l[1],
            l[2],
            l[3],
        ]
    }
}

#[derive(Debug, Clone, Copy)]
enum DecodeState {
    Head,
    Payload(FrameHeader),
}

/// Sans-IO frame codec: bytes in, [`Frame`]s out, and back.
///
/// Follows the tokio-util contract: `Ok(None)` means "need more bytes"; an announced length
/// above the configured maximum is refused as soon as the header is read, before anything is
/// allocated for the payload.
///
/// ```
/// use bytes::BytesMut;
/// use outpost_wire::{Frame, FrameCodec};
/// use tokio_util::codec::{Decoder, Encoder};
///
/// let mut codec = FrameCodec::new();
/// let mut buf = BytesMut::new();
/// codec.encode(Frame::new(7, &b"hello"[..]), &mut buf).unwrap();
/// let frame = codec.decode(&mut buf).unwrap().unwrap();
/// assert_eq!(frame.message_type, 7);
/// assert_eq!(&frame.payload[..], b"hello");
/// ```
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_frame_len: usize,
    state: DecodeState,
    /// Stream offset of the next byte `decode` will consume.
    offset: u64,
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameCodec {
    /// A codec with the default 16 MiB maximum payload length.
    pub fn new() -> Self {
        Self::with_max_frame_len(DEFAULT_MAX_FRAME_LEN)
    }

    /// A codec with the given maximum payload length (clamped to
    /// [`MAX_CONFIGURABLE_FRAME_LEN`]).
    pub fn with_max_frame_len(max_frame_len: usize) -> Self {
        FrameCodec {
            max_frame_len: max_frame_len.min(MAX_CONFIGURABLE_FRAME_LEN),
            state: DecodeState::Head,
            offset: 0,
        }
    }

    /// The maximum payload length this codec accepts and produces.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// Changes the maximum payload length (for example after a handshake).
    pub fn set_max_frame_len(&mut self, max_frame_len: usize) {
        self.max_frame_len = max_frame_len.min(MAX_CONFIGURABLE_FRAME_LEN);
    }

    /// The number of bytes consumed from the stream so far.
    pub fn stream_offset(&self) -> u64 {
        self.offset
    }

    /// Writes a header and payload. Shared by [`Encoder<Frame>`] and the message codec.
    pub(crate) fn write_header(
        &self,
        message_type: u16,
        flags: u8,
        len: usize,
        dst: &mut BytesMut,
    ) -> Result<(), WireError> {
        if len > self.max_frame_len {
            return Err(WireError::PayloadTooLarge {
                message_type,
                len,
                max: self.max_frame_len,
            });
        }
        if flags & !flags::KNOWN != 0 {
            return Err(WireError::UnknownFlagsToSend { flags });
        }
        let header = FrameHeader {
            message_type,
            flags,
            // Fits: max_frame_len <= u32::MAX.
            len: len as u32,
        };
        dst.put_slice(&header.to_bytes());
        Ok(())
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = WireError;

    #[inline]
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        let header = match self.state {
            DecodeState::Head => {
                let Some(head) = src.first_chunk::<HEADER_LEN>() else {
                    src.reserve(HEADER_LEN - src.len());
                    return Ok(None);
                };
                let header = FrameHeader::parse(head, self.offset, self.max_frame_len)?;
                src.advance(HEADER_LEN);
                self.offset += HEADER_LEN as u64;
                self.state = DecodeState::Payload(header);
                header
            }
            DecodeState::Payload(header) => header,
        };
        let len = header.len as usize;
        if src.len() < len {
            // Bounded by max_frame_len (checked in FrameHeader::parse), and reserved at most
            // MAX_RESERVE_AHEAD ahead of what arrived.
            src.reserve((len - src.len()).min(MAX_RESERVE_AHEAD));
            return Ok(None);
        }
        let payload = src.split_to(len).freeze();
        self.offset += len as u64;
        self.state = DecodeState::Head;
        src.reserve(HEADER_LEN);
        Ok(Some(Frame {
            message_type: header.message_type,
            flags: header.flags,
            payload,
        }))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        if let Some(frame) = self.decode(src)? {
            return Ok(Some(frame));
        }
        let in_frame = matches!(self.state, DecodeState::Payload(_));
        if src.is_empty() && !in_frame {
            return Ok(None);
        }
        let (expected, frame_start) = match self.state {
            DecodeState::Head => (HEADER_LEN as u64, self.offset),
            DecodeState::Payload(h) => (
                HEADER_LEN as u64 + u64::from(h.len),
                self.offset - HEADER_LEN as u64,
            ),
        };
        let have = match self.state {
            DecodeState::Head => src.len() as u64,
            DecodeState::Payload(_) => HEADER_LEN as u64 + src.len() as u64,
        };
        Err(WireError::TruncatedFrame {
            offset: frame_start,
            have,
            expected,
        })
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = WireError;

    #[inline]
    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), WireError> {
        self.encode(&frame, dst)
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = WireError;

    #[inline]
    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), WireError> {
        dst.reserve(HEADER_LEN + frame.payload.len());
        self.write_header(frame.message_type, frame.flags, frame.payload.len(), dst)?;
        dst.put_slice(&frame.payload);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(frames: &[Frame]) -> BytesMut {
        let mut codec = FrameCodec::new();
        let mut buf = BytesMut::new();
        for f in frames {
            codec.encode(f, &mut buf).unwrap();
        }
        buf
    }

    #[test]
    fn header_layout_is_as_documented() {
        let buf = encoded(&[Frame {
            message_type: 0x0102,
            flags: flags::IGNORABLE,
            payload: Bytes::from_static(b"abc"),
        }]);
        assert_eq!(
            &buf[..],
            &[b'O', b'P', 1, 1, 0x01, 0x02, 0, 0, 0, 3, b'a', b'b', b'c']
        );
    }

    #[test]
    fn oversized_announcement_is_refused_before_allocation() {
        let mut codec = FrameCodec::with_max_frame_len(1024);
        let header = FrameHeader {
            message_type: 1,
            flags: 0,
            len: u32::MAX,
        };
        let mut buf = BytesMut::from(&header.to_bytes()[..]);
        let cap_before = buf.capacity();
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(
            matches!(err, WireError::FrameTooLarge { len, max: 1024, offset: 0, .. } if len == u64::from(u32::MAX)),
            "{err}"
        );
        assert_eq!(
            buf.capacity(),
            cap_before,
            "nothing reserved for the payload"
        );
    }

    #[test]
    fn an_announced_payload_is_not_reserved_ahead_of_its_bytes() {
        let mut codec = FrameCodec::new();
        let header = FrameHeader {
            message_type: 1,
            flags: 0,
            len: 16 * 1024 * 1024,
        };
        let mut buf = BytesMut::from(&header.to_bytes()[..]);
        buf.extend_from_slice(&[0u8; 100]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(
            buf.capacity() <= 2 * MAX_RESERVE_AHEAD,
            "{} bytes reserved for 100 received",
            buf.capacity()
        );
        // The payload still arrives whole, however it is cut.
        let mut rest = vec![7u8; 16 * 1024 * 1024 - 100];
        while !rest.is_empty() {
            let n = rest.len().min(300_000);
            buf.extend_from_slice(&rest[..n]);
            rest.drain(..n);
            if let Some(f) = codec.decode(&mut buf).unwrap() {
                assert!(rest.is_empty());
                assert_eq!(f.payload.len(), 16 * 1024 * 1024);
                return;
            }
        }
        panic!("the frame never completed");
    }

    #[test]
    fn bad_magic_version_and_flags_name_the_offset() {
        let good = encoded(&[Frame::new(1, &b"x"[..])]);
        let mut second = good.clone();
        second.extend_from_slice(b"XX\x01\x00\x00\x01\x00\x00\x00\x00");
        let mut codec = FrameCodec::new();
        assert!(codec.decode(&mut second).unwrap().is_some());
        match codec.decode(&mut second).unwrap_err() {
            WireError::BadMagic { offset, found } => {
                assert_eq!(offset, good.len() as u64);
                assert_eq!(&found, b"XX");
            }
            e => panic!("unexpected {e}"),
        }

        let mut v2 = BytesMut::from(&b"OP\x02\x00\x00\x01\x00\x00\x00\x00"[..]);
        assert!(matches!(
            FrameCodec::new().decode(&mut v2),
            Err(WireError::UnsupportedFrameVersion { found: 2, .. })
        ));
        let mut f = BytesMut::from(&b"OP\x01\x80\x00\x01\x00\x00\x00\x00"[..]);
        assert!(matches!(
            FrameCodec::new().decode(&mut f),
            Err(WireError::ReservedFlags { flags: 0x80, .. })
        ));
    }

    #[test]
    fn partial_input_needs_more_and_eof_reports_truncation() {
        let full = encoded(&[Frame::new(9, vec![7u8; 100])]);
        let mut codec = FrameCodec::new();
        let mut buf = BytesMut::from(&full[..50]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        match codec.decode_eof(&mut buf).unwrap_err() {
            WireError::TruncatedFrame {
                offset,
                have,
                expected,
            } => {
                assert_eq!((offset, have, expected), (0, 50, 110));
            }
            e => panic!("unexpected {e}"),
        }
        // A clean end of stream between frames is not an error.
        let mut codec = FrameCodec::new();
        let mut buf = full.clone();
        assert!(codec.decode_eof(&mut buf).unwrap().is_some());
        assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
    }

    #[test]
    fn payload_is_not_copied() {
        let full = encoded(&[Frame::new(3, vec![1u8; 65536])]);
        let mut buf = full;
        let base = buf.as_ptr() as usize;
        let frame = FrameCodec::new().decode(&mut buf).unwrap().unwrap();
        assert_eq!(frame.payload.as_ptr() as usize, base + HEADER_LEN);
    }

    #[test]
    fn encoder_refuses_payload_over_maximum() {
        let mut codec = FrameCodec::with_max_frame_len(4);
        let mut buf = BytesMut::new();
        let err = codec
            .encode(Frame::new(5, &b"12345"[..]), &mut buf)
            .unwrap_err();
        assert!(matches!(
            err,
            WireError::PayloadTooLarge {
                len: 5,
                max: 4,
                message_type: 5
            }
        ));
        assert!(buf.is_empty(), "nothing written on refusal");
    }
}
