//! The message codec: [`Message`]s over [`FrameCodec`] frames.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use crate::frame::{self, FrameCodec, HEADER_LEN};
use crate::{Message, MessageType, WireError};

/// Sans-IO codec of the message catalogue, for `tokio_util::codec::Framed` over any byte
/// stream (TCP, TLS).
///
/// Frames of an unknown type are skipped when the sender marked them IGNORABLE (and counted,
/// see [`skipped_frames`](Self::skipped_frames)); otherwise they are refused with
/// [`WireError::UnknownMessageType`]. Unknown fields inside known messages are skipped.
///
/// ```
/// use bytes::BytesMut;
/// use outpost_wire::{Message, MessageCodec, messages::Keepalive};
/// use tokio_util::codec::{Decoder, Encoder};
///
/// let mut codec = MessageCodec::new();
/// let mut buf = BytesMut::new();
/// codec.encode(Message::from(Keepalive { seq: 1, reply: false }), &mut buf).unwrap();
/// let back = codec.decode(&mut buf).unwrap().unwrap();
/// assert_eq!(back, Message::from(Keepalive { seq: 1, reply: false }));
/// ```
#[derive(Debug, Clone, Default)]
pub struct MessageCodec {
    frames: FrameCodec,
    skipped: u64,
}

impl MessageCodec {
    /// A codec with the default 16 MiB maximum frame length.
    pub fn new() -> Self {
        Self::default()
    }

    /// A codec with the given maximum frame payload length.
    pub fn with_max_frame_len(max_frame_len: usize) -> Self {
        MessageCodec {
            frames: FrameCodec::with_max_frame_len(max_frame_len),
            skipped: 0,
        }
    }

    /// The maximum frame payload length.
    pub fn max_frame_len(&self) -> usize {
        self.frames.max_frame_len()
    }

    /// Changes the maximum frame payload length.
    pub fn set_max_frame_len(&mut self, max: usize) {
        self.frames.set_max_frame_len(max);
    }

    /// How many ignorable frames of unknown types were skipped.
    pub fn skipped_frames(&self) -> u64 {
        self.skipped
    }

    /// The number of bytes consumed from the stream so far.
    pub fn stream_offset(&self) -> u64 {
        self.frames.stream_offset()
    }

    fn message_from(&mut self, f: frame::Frame) -> Result<Option<Message>, WireError> {
        let offset = self.frames.stream_offset() - (HEADER_LEN + f.payload.len()) as u64;
        match MessageType::from_code(f.message_type) {
            Some(ty) => Message::decode_body(ty, f.payload, offset).map(Some),
            None if f.is_ignorable() => {
                self.skipped += 1;
                Ok(None)
            }
            None => Err(WireError::UnknownMessageType {
                offset,
                message_type: f.message_type,
            }),
        }
    }
}

impl Decoder for MessageCodec {
    type Item = Message;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, WireError> {
        while let Some(f) = self.frames.decode(src)? {
            if let Some(m) = self.message_from(f)? {
                return Ok(Some(m));
            }
        }
        Ok(None)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Message>, WireError> {
        while let Some(f) = self.frames.decode_eof(src)? {
            if let Some(m) = self.message_from(f)? {
                return Ok(Some(m));
            }
        }
        Ok(None)
    }
}

impl Encoder<&Message> for MessageCodec {
    type Error = WireError;

    fn encode(&mut self, m: &Message, dst: &mut BytesMut) -> Result<(), WireError> {
        let ty = m.message_type();
        let len = m.encoded_len();
        let flags = if ty.is_ignorable() {
            frame::flags::IGNORABLE
        } else {
            0
        };
        dst.reserve(HEADER_LEN + len);
        self.frames.write_header(ty.code(), flags, len, dst)?;
        m.encode_body(dst);
        Ok(())
    }
}

impl Encoder<Message> for MessageCodec {
    type Error = WireError;

    fn encode(&mut self, m: Message, dst: &mut BytesMut) -> Result<(), WireError> {
        self.encode(&m, dst)
    }
}
