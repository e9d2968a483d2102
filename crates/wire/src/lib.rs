//! # outpost-wire
//!
//! The wire protocol spoken between Network Agents, connection gateways, distribution points
//! and the Administration Server: a small binary frame format, the message catalogue of the
//! whole system, protocol version negotiation, and a sans-IO codec that implements
//! tokio-util's [`Decoder`](tokio_util::codec::Decoder) and
//! [`Encoder`](tokio_util::codec::Encoder), so `Framed<TcpStream, MessageCodec>` and
//! `Framed<TlsStream<TcpStream>, MessageCodec>` just work.
//!
//! Layers:
//! - [`frame`]: a 10-byte header (magic `"OP"`, frame format version, flags, message type,
//!   payload length) and the payload as zero-copy [`Bytes`](bytes::Bytes);
//!   [`FrameCodec`] refuses an announced length above its maximum (default 16 MiB) before
//!   allocating anything.
//! - [`messages`]: the message bodies, Protocol Buffers messages, so unknown fields from a
//!   newer peer are skipped.
//! - [`Message`] / [`MessageType`]: the catalogue; [`MessageCodec`] decodes frames into
//!   messages, skipping unknown types the sender marked ignorable and refusing the others.
//! - [`negotiate`]: the highest protocol version both sides speak.
//! - [`push`]: the signed "sync now" datagram for UDP port 15000.
//! - [`backoff`]: the jittered reconnect schedule every redialling peer uses.
//! - [`DeviceId`]: the device identifier and its one rule.
//! - [`ports`]: the well-known ports.
//! - [`rng`]: the seedable generator of the jitter, the simulations and test payloads.
//! - [`settings`]: the settings document an application's settings travel in.
//!
//! The byte-by-byte format is in `docs/protocol.md`.
//!
//! ```
//! use bytes::BytesMut;
//! use outpost_wire::{Message, MessageCodec, VersionRange, negotiate, messages::{Hello, HelloAck, Role}};
//! use tokio_util::codec::{Decoder, Encoder};
//!
//! // The agent opens with a Hello...
//! let mut agent = MessageCodec::new();
//! let mut to_server = BytesMut::new();
//! let hello = Hello {
//!     min_version: 1,
//!     max_version: 1,
//!     role: Role::Agent as i32,
//!     node_id: "device-42".into(),
//!     software: "example".into(),
//! };
//! agent.encode(Message::from(hello), &mut to_server)?;
//!
//! // ...the server decodes it (possibly in pieces) and answers with the chosen version.
//! let mut server = MessageCodec::new();
//! let Some(Message::Hello(h)) = server.decode(&mut to_server)? else { panic!("expected Hello") };
//! let theirs = VersionRange::new(h.min_version, h.max_version)?;
//! let version = negotiate(VersionRange::CURRENT, theirs)?;
//! let ack = HelloAck { version, role: Role::Server as i32, node_id: "server".into() };
//! let mut to_agent = BytesMut::new();
//! server.encode(Message::from(ack), &mut to_agent)?;
//! assert!(matches!(agent.decode(&mut to_agent)?, Some(Message::HelloAck(a)) if a.version == 1));
//! # Ok::<(), outpost_wire::WireError>(())
//! ```

pub mod backoff;
mod catalogue;
mod codec;
mod error;
pub mod frame;
mod id;
pub mod messages;
pub mod ports;
pub mod push;
pub mod rng;
pub mod settings;
mod version;

pub use catalogue::{Message, MessageType};
pub use codec::MessageCodec;
pub use error::WireError;
pub use frame::{DEFAULT_MAX_FRAME_LEN, Frame, FrameCodec, MAX_RESERVE_AHEAD};
pub use id::{DeviceId, MAX_DEVICE_ID_LEN};
pub use version::{PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN, VersionRange, negotiate};

#[cfg(any(fuzzing, test))]
#[doc(hidden)]
pub mod fuzz;
