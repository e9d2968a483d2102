//! Sender and receiver configuration (serde, with defaults, validated once).

use serde::{Deserialize, Serialize};

use crate::error::{MulticastError, Result};
use crate::manifest::{validate_block_symbols, validate_symbol_size};

/// Default UDP port for multicast distribution ([`outpost_wire::ports::MULTICAST`]).
pub const DEFAULT_PORT: u16 = outpost_wire::ports::MULTICAST;

/// Sender settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct SenderConfig {
    /// Bytes of file data per packet. 1400 keeps a data packet inside a 1500-byte Ethernet MTU
    /// over IPv4 and IPv6.
    pub symbol_size: u16,
    /// Source symbols per FEC block.
    pub block_symbols: u32,
    /// Rate ceiling in bits per second (token bucket).
    pub max_rate_bps: u64,
    /// Rate never backed off below this, bits per second.
    pub min_rate_bps: u64,
    /// Token bucket depth in bytes (at least 4 ms of the ceiling is used when larger: the
    /// pacing timer wakes with millisecond granularity, and a shallower bucket would
    /// overflow while the sender sleeps and so pace below the ceiling).
    pub burst_bytes: u64,
    /// Loss (per mille) reported by a receiver above which the rate is cut.
    pub loss_backoff_permille: u16,
    /// Factor (0..1) the rate is multiplied by on back-off.
    pub backoff_factor: f64,
    /// Repeat the manifest every this many milliseconds.
    pub announce_interval_ms: u64,
    /// Send a poll after every this many blocks.
    pub poll_every_blocks: u32,
    /// Milliseconds between polls once all data is sent.
    pub poll_interval_ms: u64,
    /// Polls in a row without any NAK that end the session.
    pub quiet_polls: u32,
    /// Most polls after the data is sent before the session ends regardless.
    pub max_drain_polls: u32,
    /// Extra repair symbols sent beyond the worst reported loss per block.
    pub repair_margin: u32,
    /// Repair symbols sent with every block up front, per mille of the block.
    pub proactive_fec_permille: u32,
    /// Most repair symbols planned for one block in one poll round, per mille of the block.
    pub max_repair_permille: u32,
    /// Copies of each End packet.
    pub end_copies: u32,
    /// After the End packets, keep listening this many milliseconds: for receivers' `Done`
    /// reports (a receiver sends its report after checking the whole file, which may be
    /// after the sender has ended), and for manifest requests from receivers that lost
    /// the manifest for the whole session (they get it once more, then fetch the blocks by
    /// unicast). 0: finish at once.
    pub done_linger_ms: u64,
    /// Receivers expected to report `Done` (0: unknown). Once that many have reported, the
    /// session ends without waiting for further quiet polls, and the linger stops. Until
    /// then the session does not end on quiet polls or `max_drain_polls`: it keeps polling
    /// and repairing (a receiver that missed the manifest and the data gets them by NAK)
    /// until every expected receiver reported or `expect_timeout_ms` passed.
    pub expect_receivers: u32,
    /// With `expect_receivers`, the longest the session waits for them after its data was
    /// sent, in milliseconds (default 10 min); past it the session ends and the receivers
    /// that did not report are missing.
    pub expect_timeout_ms: u64,
    /// Hand the building of blocks' RaptorQ encoders out as
    /// [`crate::sender::EncodeJob`]s through [`crate::Sender::poll_job`] instead of doing it
    /// inside [`crate::Sender::poll_transmit`]. [`crate::driver::run_sender`] then runs them on
    /// a worker thread while source data keeps flowing. Callers that drive the core
    /// themselves must run the jobs when this is set.
    pub offload_encoding: bool,
}

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            symbol_size: 1400,
            block_symbols: 1024,
            max_rate_bps: 100_000_000,
            min_rate_bps: 1_000_000,
            burst_bytes: 64 * 1024,
            loss_backoff_permille: 100,
            backoff_factor: 0.75,
            announce_interval_ms: 250,
            poll_every_blocks: 4,
            poll_interval_ms: 30,
            quiet_polls: 3,
            max_drain_polls: 200,
            repair_margin: 1,
            proactive_fec_permille: 0,
            max_repair_permille: 500,
            end_copies: 3,
            done_linger_ms: 1000,
            expect_receivers: 0,
            expect_timeout_ms: 600_000,
            offload_encoding: false,
        }
    }
}

impl SenderConfig {
    /// Checks every field; the error names the field.
    pub fn validate(&self) -> Result<()> {
        validate_symbol_size(self.symbol_size, "symbol_size").map_err(|_| {
            MulticastError::config(
                "symbol_size",
                format!("{} not in 16..=65479", self.symbol_size),
            )
        })?;
        validate_block_symbols(self.block_symbols, "block_symbols").map_err(|_| {
            MulticastError::config(
                "block_symbols",
                format!("{} not in 1..=56403", self.block_symbols),
            )
        })?;
        if self.max_rate_bps < 8_000 {
            return Err(MulticastError::config(
                "max_rate_bps",
                format!("{} below 8000", self.max_rate_bps),
            ));
        }
        if self.min_rate_bps == 0 || self.min_rate_bps > self.max_rate_bps {
            return Err(MulticastError::config(
                "min_rate_bps",
                format!(
                    "{} not in 1..=max_rate_bps ({})",
                    self.min_rate_bps, self.max_rate_bps
                ),
            ));
        }
        if self.burst_bytes < 65_536 {
            return Err(MulticastError::config(
                "burst_bytes",
                format!("{} below 65536", self.burst_bytes),
            ));
        }
        if self.loss_backoff_permille > 1000 {
            return Err(MulticastError::config(
                "loss_backoff_permille",
                format!("{} above 1000", self.loss_backoff_permille),
            ));
        }
        if !(self.backoff_factor > 0.0 && self.backoff_factor < 1.0) {
            return Err(MulticastError::config(
                "backoff_factor",
                format!("{} not in (0, 1)", self.backoff_factor),
            ));
        }
        if self.announce_interval_ms == 0 {
            return Err(MulticastError::config(
                "announce_interval_ms",
                "must be positive",
            ));
        }
        if self.poll_every_blocks == 0 {
            return Err(MulticastError::config(
                "poll_every_blocks",
                "must be positive",
            ));
        }
        if self.poll_interval_ms == 0 {
            return Err(MulticastError::config(
                "poll_interval_ms",
                "must be positive",
            ));
        }
        if self.quiet_polls == 0 {
            return Err(MulticastError::config("quiet_polls", "must be positive"));
        }
        if self.max_drain_polls < self.quiet_polls {
            return Err(MulticastError::config(
                "max_drain_polls",
                format!(
                    "{} below quiet_polls ({})",
                    self.max_drain_polls, self.quiet_polls
                ),
            ));
        }
        if self.proactive_fec_permille > 1000 {
            return Err(MulticastError::config(
                "proactive_fec_permille",
                format!("{} above 1000", self.proactive_fec_permille),
            ));
        }
        if self.max_repair_permille == 0 || self.max_repair_permille > 2000 {
            return Err(MulticastError::config(
                "max_repair_permille",
                format!("{} not in 1..=2000", self.max_repair_permille),
            ));
        }
        if self.done_linger_ms > 600_000 {
            return Err(MulticastError::config(
                "done_linger_ms",
                format!("{} above 600000 (10 minutes)", self.done_linger_ms),
            ));
        }
        if self.end_copies == 0 || self.end_copies > 100 {
            return Err(MulticastError::config(
                "end_copies",
                format!("{} not in 1..=100", self.end_copies),
            ));
        }
        Ok(())
    }
}

/// Bounds a receiver applies to anything a manifest claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ManifestLimits {
    /// Largest file accepted, bytes.
    pub max_file_size: u64,
    /// Largest signed manifest accepted, bytes.
    pub max_manifest_len: u32,
    /// Largest block (symbol size × block symbols) accepted, bytes.
    pub max_block_bytes: u64,
}

impl Default for ManifestLimits {
    fn default() -> Self {
        ManifestLimits {
            max_file_size: 64 << 30,
            max_manifest_len: 4 << 20,
            max_block_bytes: 64 << 20,
        }
    }
}

/// Receiver settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ReceiverConfig {
    /// Bounds on what a manifest may claim.
    pub limits: ManifestLimits,
    /// Most bytes held in not-yet-verified blocks; symbols beyond it are dropped and repaired later.
    pub max_buffered_bytes: u64,
    /// A NAK is sent after a random delay up to this many milliseconds (suppression window).
    pub nak_backoff_ms: u64,
    /// With no packet for this long, the session is taken as over, milliseconds.
    pub idle_timeout_ms: u64,
    /// Seed of the NAK delay generator (vary it per receiver).
    pub seed: u64,
    /// Above this loss (per mille, measured by the receiver since it joined) it sends no NAK
    /// and fetches what it lacks by unicast after the session, so one bad link does not
    /// make every receiver take its repair.
    pub nak_max_loss_permille: u16,
    /// Hand the work that completes a block (FEC decoding, block hash) out as
    /// [`crate::receiver::BlockJob`]s through [`crate::Receiver::poll_job`] instead of
    /// doing it inside [`crate::Receiver::handle_datagram`]. [`crate::driver::run_receiver`]
    /// then runs it on a worker thread, so the socket keeps being read while a block is
    /// decoded. Callers that drive the core themselves must run the jobs when this is set.
    pub offload_block_work: bool,
    /// When this many block jobs (default 16) or more are out and not yet back, the
    /// receiver answers each poll with a [`crate::packet::Packet::Load`] report at once,
    /// and the sender slows down while the backlog grows: the receiver's CPU is not keeping
    /// up with the rate, and a receiver that falls further behind overflows its socket
    /// (loss the sender then repairs, at the cost of every receiver) or its
    /// `max_buffered_bytes`. 0: not reported. Only meaningful with `offload_block_work`
    /// (inline work is never out). Socket drops are reported regardless (see
    /// [`crate::Receiver::note_socket_drops`]). Lower values react sooner but also to short
    /// bursts: with 4, two loss-free receivers on one 2-core host made the sender cut an
    /// 8 Gbit/s rate they kept up with (2–3 cuts per transfer, about 5% less goodput).
    pub backlog_report_blocks: u32,
    /// Whether this receiver has a unicast source for what the session cannot repair cheaply
    /// (default `true`): the blocks that went by before it joined, and everything when its
    /// loss is above `nak_max_loss_permille`. Without one (`false`) it asks by NAK for every
    /// missing block from the first, never withholds its NAKs, and so is carried to the end
    /// by repair while the sender still polls (a sender expecting it keeps polling).
    pub unicast_fallback: bool,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            limits: ManifestLimits::default(),
            max_buffered_bytes: 256 << 20,
            nak_backoff_ms: 5,
            idle_timeout_ms: 5_000,
            seed: 0,
            nak_max_loss_permille: 400,
            offload_block_work: false,
            backlog_report_blocks: 16,
            unicast_fallback: true,
        }
    }
}

impl ReceiverConfig {
    /// Checks every field; the error names the field.
    pub fn validate(&self) -> Result<()> {
        if self.limits.max_manifest_len < 256 {
            return Err(MulticastError::config(
                "limits.max_manifest_len",
                format!("{} below 256", self.limits.max_manifest_len),
            ));
        }
        if self.limits.max_block_bytes < 16 {
            return Err(MulticastError::config(
                "limits.max_block_bytes",
                format!("{} below 16", self.limits.max_block_bytes),
            ));
        }
        if self.max_buffered_bytes < self.limits.max_block_bytes.min(1 << 20) {
            return Err(MulticastError::config(
                "max_buffered_bytes",
                format!("{} below one block", self.max_buffered_bytes),
            ));
        }
        if self.nak_max_loss_permille > 1000 {
            return Err(MulticastError::config(
                "nak_max_loss_permille",
                format!("{} above 1000", self.nak_max_loss_permille),
            ));
        }
        if self.idle_timeout_ms == 0 {
            return Err(MulticastError::config(
                "idle_timeout_ms",
                "must be positive",
            ));
        }
        if self.nak_backoff_ms >= self.idle_timeout_ms {
            return Err(MulticastError::config(
                "nak_backoff_ms",
                format!(
                    "{} not below idle_timeout_ms ({})",
                    self.nak_backoff_ms, self.idle_timeout_ms
                ),
            ));
        }
        Ok(())
    }
}
