//! Reading and writing single control messages on a stream that afterwards carries raw
//! relayed bytes: a message is read with exact reads (header, then the announced payload),
//! so not one byte past it leaves the socket.

use bytes::BytesMut;
use outpost_wire::frame::{FrameHeader, HEADER_LEN};
use outpost_wire::{Message, MessageCodec, MessageType};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::Encoder;

use crate::GatewayError;

/// Reads exactly one message. Frames of unknown ignorable types are skipped (at most 16).
pub async fn read_message<S: AsyncRead + Unpin>(
    stream: &mut S,
    max_frame_len: usize,
) -> Result<Message, GatewayError> {
    let mut offset = 0u64;
    for _ in 0..16 {
        let mut head = [0u8; HEADER_LEN];
        stream.read_exact(&mut head).await?;
        let header = FrameHeader::parse(&head, offset, max_frame_len)?;
        // Bounded by max_frame_len, checked in parse.
        let mut payload = BytesMut::zeroed(header.len as usize);
        stream.read_exact(&mut payload).await?;
        match MessageType::from_code(header.message_type) {
            Some(ty) => return Ok(Message::decode_body(ty, payload.freeze(), offset)?),
            None if header.flags & outpost_wire::frame::flags::IGNORABLE != 0 => {
                offset += (HEADER_LEN + payload.len()) as u64;
            }
            None => {
                return Err(outpost_wire::WireError::UnknownMessageType {
                    offset,
                    message_type: header.message_type,
                }
                .into());
            }
        }
    }
    Err(GatewayError::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "more than 16 unknown frames before a control message",
    )))
}

/// Writes one message and flushes.
pub async fn write_message<S: AsyncWrite + Unpin>(
    stream: &mut S,
    message: impl Into<Message>,
) -> Result<(), GatewayError> {
    let mut buf = BytesMut::new();
    MessageCodec::new().encode(message.into(), &mut buf)?;
    stream.write_all(&buf).await?;
    stream.flush().await?;
    Ok(())
}

/// Waits until `deadline`, or forever when there is none: the timer branch of a driver
/// loop whose sans-IO core may have nothing scheduled.
pub(crate) async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_wire::messages::Keepalive;

    #[tokio::test]
    async fn reads_exactly_one_message_and_leaves_the_rest() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write_message(
            &mut a,
            Keepalive {
                seq: 3,
                reply: false,
            },
        )
        .await
        .unwrap();
        a.write_all(b"raw bytes after").await.unwrap();
        drop(a);
        let m = read_message(&mut b, 1024).await.unwrap();
        assert_eq!(
            m,
            Message::from(Keepalive {
                seq: 3,
                reply: false
            })
        );
        let mut rest = Vec::new();
        b.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"raw bytes after");
    }

    #[tokio::test]
    async fn oversized_announcement_is_refused_before_reading_it() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(b"OP\x01\x00\x00\x40\x7f\xff\xff\xff")
            .await
            .unwrap();
        let err = read_message(&mut b, 4096).await.unwrap_err();
        assert!(
            err.to_string().contains("more than the maximum of 4096"),
            "{err}"
        );
    }
}
