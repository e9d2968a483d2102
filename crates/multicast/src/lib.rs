//! Reliable UDP multicast distribution of update files.
//!
//! A distribution point sends a file once to a multicast group (default port
//! [`DEFAULT_PORT`], 15001) and every receiver of its scope ends with a byte-exact copy,
//! however many receivers listen and whatever each of them loses.
//!
//! * [`Manifest`]: object name, size, block layout, per-block BLAKE3 and whole-file SHA-256, signed
//!   with the sender's Ed25519 key. Receivers accept data only for a session whose manifest
//!   verifies with the key they were given, and keep only blocks that match their hash.
//! * [`Sender`] / [`Receiver`]: sans-IO state machines (datagrams and the current time in,
//!   datagrams and events out). Loss is healed with RaptorQ repair symbols (one repair symbol
//!   helps every receiver that lacks *any* symbol of that block) after NAKs that the sender
//!   confirms to the group, so other receivers suppress theirs; the sender sends enough repair
//!   for the worst report, paced by a token bucket that backs off on heavy loss and when a
//!   receiver reports it cannot keep up (its socket dropped datagrams, or its block checks
//!   fall further and further behind: [`packet::Packet::Load`]).
//! * [`sim`]: a deterministic in-memory network (seeded loss, bursts, reordering,
//!   duplication, partitions) driving one sender and many receivers.
//! * [`driver`]: socket2/tokio sockets (group join, interface, TTL, loopback, buffers; IPv4
//!   and IPv6) and the loops that run the cores over them.
//! * [`files`]: the file source and the sink (temporary name, whole-file check, writeback
//!   while the session runs, rename and resume), and a pluggable unicast
//!   [`files::Fetcher`] for blocks the session did not deliver.
//!   With [`SenderConfig::offload_encoding`] and [`ReceiverConfig::offload_block_work`] the
//!   cores hand their FEC and hashing work out as [`EncodeJob`]s / [`BlockJob`]s, which the
//!   driver runs on worker threads so the sockets keep being served.
//!
//! ```
//! use outpost_multicast::sim::{self, LinkModel, SimConfig};
//!
//! let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
//! // Three receivers, each losing 10% of packets (in bursts, reordered, duplicated).
//! let cfg = SimConfig::new(42, 3, LinkModel::lossy(0.10));
//! let out = sim::run(&cfg, &data)?;
//! for r in &out.receivers {
//!     assert!(r.finished);
//!     assert_eq!(r.data, data);
//! }
//! # Ok::<(), outpost_multicast::MulticastError>(())
//! ```

pub mod config;
pub mod driver;
pub mod error;
pub mod files;
#[cfg(any(fuzzing, test))]
#[doc(hidden)]
pub mod fuzz;
pub mod manifest;
pub mod packet;
pub mod rate;
pub mod receiver;
pub mod sender;
pub mod sim;

pub use config::{DEFAULT_PORT, ManifestLimits, ReceiverConfig, SenderConfig};
pub use error::{MulticastError, Result};
pub use manifest::{Manifest, ManifestBuilder, SigningKey};
pub use packet::Packet;
pub use receiver::{BlockJob, BlockResult, Receiver, ReceiverEvent, ReceiverStats};
pub use sender::{BlockSource, EncodeJob, EncodeResult, Sender, SenderEvent, SenderStats};
