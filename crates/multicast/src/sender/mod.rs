//! The sans-IO sender state machine: the manifest, then every block's source symbols at the
//! paced rate, polls, and repair symbols for the worst NAK. Encoders are built by
//! [`EncodeJob`]s (on another thread when the driver offloads them); the rate's reaction to
//! loss and load is in `rate_control`.

mod encode;
mod rate_control;

pub use encode::{EncodeJob, EncodeResult};

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use raptorq::{ObjectTransmissionInformation, SourceBlockEncoder};

use crate::config::SenderConfig;
use crate::error::{MulticastError, Result};
use crate::manifest::Manifest;
use crate::packet::{self, BlockCount, DATA_HEADER_LEN, MAX_ESI, Packet};
use crate::rate::TokenBucket;

/// Where the sender reads block data from.
pub trait BlockSource {
    /// Fills `buf` (exactly the block's real length) with the bytes at `offset`.
    fn read_block(&mut self, offset: u64, buf: &mut [u8]) -> Result<()>;
}

impl BlockSource for Arc<[u8]> {
    fn read_block(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        read_from_slice(self, offset, buf)
    }
}

impl BlockSource for Vec<u8> {
    fn read_block(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        read_from_slice(self, offset, buf)
    }
}

/// Splits a manifest of `total` bytes into `chunks` pieces of `piece` bytes (the last one
/// shorter, never empty) with pieces at most `max_piece` bytes. Receivers derive the same
/// `piece` as `ceil(total / chunks)`.
pub(crate) fn manifest_pieces(total: usize, max_piece: usize) -> Option<(usize, usize)> {
    if total == 0 {
        return None;
    }
    let max_piece = max_piece.max(256);
    let mut chunks = total.div_ceil(max_piece);
    while chunks <= usize::from(u16::MAX) {
        let piece = total.div_ceil(chunks);
        if (chunks - 1) * piece < total && piece <= max_piece {
            return Some((chunks, piece));
        }
        chunks += 1;
    }
    None
}

/// The `Announce` datagrams that carry a signed manifest for `session`, in pieces of at
/// most `max_piece` bytes (at least 256), as a [`Sender`] sends them.
pub fn announce_packets(
    session: u64,
    signed_manifest: &[u8],
    max_piece: usize,
) -> Result<Vec<Vec<u8>>> {
    let len = signed_manifest.len();
    let (chunks, piece) = manifest_pieces(len, max_piece)
        .ok_or_else(|| MulticastError::invalid("manifest length", len))?;
    let chunks =
        u16::try_from(chunks).map_err(|_| MulticastError::invalid("manifest pieces", chunks))?;
    let total = u32::try_from(len).map_err(|_| MulticastError::invalid("manifest length", len))?;
    Ok(signed_manifest
        .chunks(piece)
        .enumerate()
        .map(|(i, bytes)| {
            let mut out = Vec::new();
            Packet::Announce {
                session,
                chunk: i as u16,
                chunks,
                total,
                bytes,
            }
            .encode(&mut out);
            out
        })
        .collect())
}

fn read_from_slice(data: &[u8], offset: u64, buf: &mut [u8]) -> Result<()> {
    let start =
        usize::try_from(offset).map_err(|_| MulticastError::invalid("read offset", offset))?;
    let end = start
        .checked_add(buf.len())
        .filter(|e| *e <= data.len())
        .ok_or_else(|| MulticastError::invalid("read range", format!("{start}+{}", buf.len())))?;
    buf.copy_from_slice(&data[start..end]);
    Ok(())
}

/// Something the sender reports to its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SenderEvent {
    /// A receiver reported the file complete.
    ReceiverDone {
        /// Where the report came from.
        from: SocketAddr,
        /// Whether its hash matches the manifest.
        hash_matches: bool,
    },
    /// The session is over (End packets sent).
    Finished,
}

/// Counters kept by the sender.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct SenderStats {
    /// Datagrams sent, all kinds.
    pub packets_sent: u64,
    /// Bytes sent in datagrams, all kinds, headers included.
    pub bytes_sent: u64,
    /// Source symbols sent.
    pub source_packets: u64,
    /// Repair symbols sent.
    pub repair_packets: u64,
    /// Manifest pieces sent.
    pub announce_packets: u64,
    /// Polls sent.
    pub polls: u64,
    /// NAKs accepted.
    pub naks: u64,
    /// Datagrams that did not decode.
    pub malformed: u64,
    /// Datagrams for other sessions.
    pub foreign_session: u64,
    /// NAK entries naming blocks not yet sent or out of range.
    pub bad_nak_entries: u64,
    /// Receivers (distinct addresses) that reported done with the right hash.
    pub receivers_done: u64,
    /// Load reports accepted (a receiver's block checks falling behind, or its socket
    /// dropping datagrams).
    pub load_reports: u64,
    /// Load reports answering a poll not sent, or one too old to matter.
    pub stale_load_reports: u64,
    /// Rate back-offs taken.
    pub backoffs: u64,
    /// Current rate, bits per second.
    pub rate_bps: u64,
}

#[derive(Debug, Clone, Default)]
struct RepairState {
    next_repair: u32,
    pending: u32,
    plan_poll: u32,
    plan_count: u32,
    queued: bool,
    /// Sequence numbers of this block's repair symbols sent since the oldest poll still
    /// tracked: a NAK answering a poll did not count those sent after that poll.
    sent_seqs: Vec<u64>,
}

/// Polls whose `high_seq` is kept, to tell which repair a NAK could not have counted.
const POLLS_TRACKED: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Data,
    Drain,
    Ending,
    /// End sent; collecting `Done` reports until the instant.
    Lingering(Instant),
    Finished,
}

const ENCODER_CACHE: usize = 32;

/// How much more loss (per mille) than at the last loss-driven cut makes another cut.
const LOSS_GROWTH_PERMILLE: u16 = 50;

/// While lingering, the End is repeated this often.
const LINGER_END_INTERVAL: Duration = Duration::from_millis(25);

/// Most distinct receivers counted in [`SenderStats::receivers_done`].
const MAX_DONE_TRACKED: usize = 1 << 16;
/// Receivers whose last load report is kept (a backlog reported by others still holds
/// the rate but cannot cut it).
const MAX_LOAD_TRACKED: usize = 1 << 12;

/// Most encoder jobs out at once when encoding is offloaded.
const MAX_ENCODE_JOBS: usize = 2;
/// New source data waits while more blocks than this wait for their encoders (offloaded
/// encoding): a sender whose encoding cannot keep up with the repair it owes would
/// otherwise run ahead of it, and every receiver would hold more and more incomplete
/// blocks in memory meanwhile (on a busy machine paging them in while its socket
/// overflows), past its buffer budget in the end.
const MAX_BLOCKS_AWAITING_ENCODER: usize = 4;

/// The sender of one session.
pub struct Sender {
    cfg: SenderConfig,
    manifest: Manifest,
    announce: Vec<Vec<u8>>,
    source: Box<dyn BlockSource + Send>,
    bucket: TokenBucket,
    seq: u64,
    next_block: u32,
    next_esi: u32,
    cur_block: Option<u32>,
    cur_data: Vec<u8>,
    control: VecDeque<Vec<u8>>,
    repair_queue: VecDeque<u32>,
    blocks: Vec<RepairState>,
    encoders: HashMap<u32, SourceBlockEncoder>,
    /// Block buffers kept for the next encoder (at most [`MAX_ENCODE_JOBS`]).
    spare_blocks: Vec<Vec<u8>>,
    encoder_order: VecDeque<u32>,
    encoding: Vec<u32>,
    /// Addresses that reported done with the right hash (bounded).
    done_from: HashSet<SocketAddr>,
    /// The last load report per receiver: (poll answered, block jobs waiting).
    load_from: HashMap<SocketAddr, (u32, u32)>,
    /// `poll_seq` when the rate was last cut: reports answering that poll or an earlier
    /// one describe the rate before the cut.
    cut_poll: u32,
    /// Lingering: a manifest request came in; one round of the manifest is due.
    linger_announce: bool,
    /// The first drain poll after all source data was sent.
    drain_since: Option<Instant>,
    /// Lingering: when the End goes out again.
    next_linger_end: Instant,
    jobs: VecDeque<EncodeJob>,
    poll_seq: u32,
    /// `(poll, high_seq)` of the last [`POLLS_TRACKED`] polls.
    poll_high: VecDeque<(u32, u64)>,
    want_poll: bool,
    last_poll: Option<Instant>,
    naks_since_poll: u64,
    quiet: u32,
    drain_polls: u32,
    next_announce: Instant,
    announce_pos: usize,
    /// Time between unrequested rounds of the manifest: `announce_interval_ms`, longer
    /// when the manifest would otherwise take more than 1% of the rate ceiling.
    announce_every: Duration,
    phase: Phase,
    last_backoff: Option<Instant>,
    /// The loss (per mille) that made the last loss-driven cut, while reports stay above
    /// `loss_backoff_permille`: loss that does not fall when the rate does is the link's,
    /// not congestion, and cuts again only when it grows past this.
    loss_at_cut: Option<u16>,
    last_reannounce: Option<Instant>,
    /// A receiver reported loss above `loss_backoff_permille` or its load since the last
    /// poll: the rate is not raised at the next one (even when the cut itself was held).
    slowdown_since_poll: bool,
    events: VecDeque<SenderEvent>,
    stats: SenderStats,
    oti: ObjectTransmissionInformation,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("session", &self.manifest.session_id)
            .field("next_block", &self.next_block)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Sender {
    /// Starts a session for `manifest`, announcing `signed_manifest` (from [`Manifest::sign`]),
    /// reading blocks from `source`.
    pub fn new(
        cfg: SenderConfig,
        manifest: Manifest,
        signed_manifest: &[u8],
        source: Box<dyn BlockSource + Send>,
        now: Instant,
    ) -> Result<Sender> {
        cfg.validate()?;
        let announce = announce_packets(
            manifest.session_id,
            signed_manifest,
            usize::from(manifest.symbol_size),
        )?;
        let rate = cfg.max_rate_bps as f64 / 8.0;
        let manifest_bytes: usize = announce.iter().map(Vec::len).sum();
        let announce_every = Duration::from_millis(cfg.announce_interval_ms).max(
            Duration::from_secs_f64(manifest_bytes as f64 * 100.0 / rate.max(1.0)),
        );
        let capacity = (cfg.burst_bytes as f64).max(rate * 0.004);
        let oti = ObjectTransmissionInformation::new(0, manifest.symbol_size, 0, 1, 1);
        let stats = SenderStats {
            rate_bps: cfg.max_rate_bps,
            ..SenderStats::default()
        };
        Ok(Sender {
            blocks: vec![RepairState::default(); manifest.block_count() as usize],
            bucket: TokenBucket::new(now, rate, capacity),
            cfg,
            manifest,
            announce,
            source,
            seq: 0,
            next_block: 0,
            next_esi: 0,
            cur_block: None,
            cur_data: Vec::new(),
            control: VecDeque::new(),
            repair_queue: VecDeque::new(),
            encoders: HashMap::new(),
            spare_blocks: Vec::new(),
            encoder_order: VecDeque::new(),
            encoding: Vec::new(),
            done_from: HashSet::new(),
            load_from: HashMap::new(),
            cut_poll: 0,
            linger_announce: false,
            drain_since: None,
            next_linger_end: now,
            jobs: VecDeque::new(),
            poll_seq: 0,
            poll_high: VecDeque::new(),
            want_poll: false,
            last_poll: None,
            naks_since_poll: 0,
            quiet: 0,
            drain_polls: 0,
            next_announce: now,
            announce_pos: 0,
            announce_every,
            phase: Phase::Data,
            last_backoff: None,
            loss_at_cut: None,
            last_reannounce: None,
            slowdown_since_poll: false,
            events: VecDeque::new(),
            stats,
            oti,
        })
    }

    /// The manifest being sent.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Counters.
    pub fn stats(&self) -> &SenderStats {
        &self.stats
    }

    /// Whether the session is over.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// Next event, if any.
    pub fn poll_event(&mut self) -> Option<SenderEvent> {
        self.events.pop_front()
    }

    fn data_len(&self) -> usize {
        DATA_HEADER_LEN + usize::from(self.manifest.symbol_size)
    }

    /// When the driver should call [`Sender::poll_transmit`] next (if nothing arrives before).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Finished => None,
            Phase::Ending => Some(self.bucket.ready_at(0)),
            Phase::Lingering(_) if self.linger_announce => {
                Some(self.bucket.ready_at(self.data_len()))
            }
            Phase::Lingering(until) => Some(until.min(self.next_linger_end)),
            _ if !self.control.is_empty() => Some(self.bucket.ready_at(0)),
            // Encoder results wake the driver; the manifest repeat may go out meanwhile.
            Phase::Data
                if !self.want_poll && self.ready_repair().is_none() && self.source_held() =>
            {
                Some(
                    self.next_announce
                        .max(self.bucket.ready_at(self.data_len())),
                )
            }
            Phase::Data => Some(
                self.bucket
                    .ready_at(self.data_len())
                    .min(self.next_announce),
            ),
            Phase::Drain => {
                if self.ready_repair().is_some() {
                    return Some(self.bucket.ready_at(self.data_len()));
                }
                if !self.repair_queue.is_empty() {
                    // Waiting for encoder jobs (their results wake the driver); only the
                    // manifest repeat may go out meanwhile.
                    return Some(
                        self.next_announce
                            .max(self.bucket.ready_at(self.data_len())),
                    );
                }
                let poll_at = self
                    .last_poll
                    .map(|t| t + Duration::from_millis(self.cfg.poll_interval_ms))
                    .unwrap_or(self.next_announce);
                Some(poll_at.min(self.next_announce))
            }
        }
    }

    /// Writes the next datagram to send to the group into `out` (cleared first).
    /// Returns `Ok(false)` when nothing may be sent now; see [`Sender::poll_timeout`].
    pub fn poll_transmit(&mut self, now: Instant, out: &mut Vec<u8>) -> Result<bool> {
        out.clear();
        if self.phase == Phase::Finished {
            return Ok(false);
        }
        self.bucket.refill(now);
        self.schedule_encodes()?;
        if let Some(p) = self.control.pop_front() {
            *out = p;
            return Ok(self.sent(out.len()));
        }
        if self.phase == Phase::Ending {
            self.start_lingering(now);
        }
        if let Phase::Lingering(until) = self.phase {
            return Ok(self.write_lingering(now, until, out));
        }
        if !self.bucket.has(self.data_len()) {
            return Ok(false);
        }
        if now >= self.next_announce {
            if self.write_announce_piece(out) {
                self.next_announce = now + self.announce_every;
            }
            return Ok(self.sent(out.len()));
        }
        if let Some(pos) = self.ready_repair() {
            self.write_repair(pos, out)?;
            return Ok(self.sent(out.len()));
        }
        // A poll goes out behind all repair that is ready, so the answers reflect it, but
        // not behind repair still waiting for its encoder: the rate and the repair plan
        // need the answers meanwhile (repair sent after a poll is not counted by the NAKs
        // answering it, see `handle_nak`).
        let repair_waiting = !self.repair_queue.is_empty();
        if self.want_poll && (self.phase == Phase::Data || !repair_waiting) {
            self.want_poll = false;
            self.write_poll(now, out);
            return Ok(self.sent(out.len()));
        }
        match self.phase {
            Phase::Data => {
                if self.source_held() {
                    return Ok(false);
                }
                self.write_source(out)?;
                Ok(self.sent(out.len()))
            }
            Phase::Drain => {
                if repair_waiting || !self.drain_poll_due(now) {
                    return Ok(false);
                }
                if self.drain_done(now) {
                    self.queue_end();
                    return self.poll_transmit(now, out);
                }
                self.drain_polls += 1;
                self.write_poll(now, out);
                Ok(self.sent(out.len()))
            }
            Phase::Ending | Phase::Lingering(_) | Phase::Finished => Ok(false),
        }
    }

    /// The End packets are out: the sender lingers for `done_linger_ms` from `now`.
    fn start_lingering(&mut self, now: Instant) {
        let linger = Duration::from_millis(self.cfg.done_linger_ms);
        self.phase = Phase::Lingering(now + linger);
        self.next_linger_end = now + LINGER_END_INTERVAL;
    }

    /// Lingering until `until`, collecting `Done` reports: the session finishes then, or
    /// once every expected receiver reported. Meanwhile a round of the manifest goes out
    /// when a receiver asked for it, and the End now and then. Returns whether a datagram
    /// was written.
    #[inline]
    fn write_lingering(&mut self, now: Instant, until: Instant, out: &mut Vec<u8>) -> bool {
        if now >= until || self.all_expected_done() {
            self.phase = Phase::Finished;
            self.events.push_back(SenderEvent::Finished);
            return false;
        }
        if self.linger_announce && self.bucket.has(self.data_len()) {
            if self.write_announce_piece(out) {
                self.linger_announce = false;
            }
            return self.sent(out.len());
        }
        // The End again now and then: a receiver that heard nothing of the session
        // (a burst of loss covering it) learns of it and asks for the manifest.
        if now >= self.next_linger_end {
            self.next_linger_end = now + LINGER_END_INTERVAL;
            self.write_end(out);
            return self.sent(out.len());
        }
        false
    }

    /// Writes the next piece of the manifest into `out`. Returns whether it was the last
    /// of the round (the next round starts from the first piece).
    #[inline]
    fn write_announce_piece(&mut self, out: &mut Vec<u8>) -> bool {
        out.extend_from_slice(&self.announce[self.announce_pos]);
        self.announce_pos += 1;
        self.stats.announce_packets += 1;
        let last = self.announce_pos == self.announce.len();
        if last {
            self.announce_pos = 0;
        }
        last
    }

    /// Writes the End of the session into `out`.
    fn write_end(&self, out: &mut Vec<u8>) {
        Packet::End {
            session: self.manifest.session_id,
            high_seq: self.seq,
        }
        .encode(out);
    }

    /// Draining, with no repair ready or waiting: whether the next poll (or the End) is
    /// due at `now`, one poll interval after the last poll.
    #[inline]
    fn drain_poll_due(&self, now: Instant) -> bool {
        self.last_poll
            .is_none_or(|t| now >= t + Duration::from_millis(self.cfg.poll_interval_ms))
    }

    /// The session is done: the End packets are queued (`end_copies` of them), to go out
    /// first.
    fn queue_end(&mut self) {
        for _ in 0..self.cfg.end_copies {
            let mut p = Vec::new();
            self.write_end(&mut p);
            self.control.push_back(p);
        }
        self.phase = Phase::Ending;
    }

    /// At a drain poll due at `now`, counts the polls in a row that brought no NAK and
    /// tells whether the session is done: every expected receiver reported or, when none
    /// is expected or their deadline passed, enough quiet polls or the most drain polls.
    fn drain_done(&mut self, now: Instant) -> bool {
        if self.naks_since_poll == 0 {
            self.quiet += 1;
        } else {
            self.quiet = 0;
        }
        // Expecting receivers that have not reported, the session goes on (polls
        // and repair) until they do or the expectation's deadline passes.
        let since = *self.drain_since.get_or_insert(now);
        let waiting = self.cfg.expect_receivers > 0
            && now < since + Duration::from_millis(self.cfg.expect_timeout_ms);
        if waiting {
            self.all_expected_done()
        } else {
            self.quiet >= self.cfg.quiet_polls
                || self.drain_polls >= self.cfg.max_drain_polls
                || self.all_expected_done()
        }
    }

    fn all_expected_done(&self) -> bool {
        self.cfg.expect_receivers > 0
            && self.stats.receivers_done >= u64::from(self.cfg.expect_receivers)
    }

    fn sent(&mut self, len: usize) -> bool {
        self.bucket.consume(len);
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += len as u64;
        true
    }

    fn write_poll(&mut self, now: Instant, out: &mut Vec<u8>) {
        // Receivers that missed a piece of the manifest (or joined late) answer the poll
        // with an empty NAK, which brings a round of the manifest (`handle_nak`).
        self.poll_seq += 1;
        self.naks_since_poll = 0;
        self.last_poll = Some(now);
        self.stats.polls += 1;
        if !self.slowdown_since_poll {
            let max = self.cfg.max_rate_bps as f64 / 8.0;
            let r = (self.bucket.rate() + max / 8.0).min(max);
            self.bucket.set_rate(now, r);
            self.stats.rate_bps = (r * 8.0) as u64;
        }
        self.slowdown_since_poll = false;
        if self.poll_high.len() == POLLS_TRACKED {
            self.poll_high.pop_front();
        }
        self.poll_high.push_back((self.poll_seq, self.seq));
        Packet::Poll {
            session: self.manifest.session_id,
            poll: self.poll_seq,
            upto_block: self.next_block,
            high_seq: self.seq,
        }
        .encode(out);
    }

    fn load_block(&mut self, block: u32, buf: &mut Vec<u8>) -> Result<()> {
        let k = self.manifest.symbols_in_block(block) as usize;
        let len = self.manifest.block_len(block);
        // The buffer is reused from block to block and not zeroed first: the read fills
        // `..len`, the padding of a short last symbol is zeroed here.
        buf.resize(k * usize::from(self.manifest.symbol_size), 0);
        buf[len..].fill(0);
        self.source
            .read_block(self.manifest.block_offset(block), &mut buf[..len])
    }

    fn write_source(&mut self, out: &mut Vec<u8>) -> Result<()> {
        let block = self.next_block;
        if self.cur_block != Some(block) {
            let mut buf = std::mem::take(&mut self.cur_data);
            self.load_block(block, &mut buf)?;
            self.cur_data = buf;
            self.cur_block = Some(block);
        }
        let t = usize::from(self.manifest.symbol_size);
        let esi = self.next_esi;
        let start = esi as usize * t;
        packet::write_header(out, 1, self.manifest.session_id);
        packet::write_data_header(out, self.seq, block, esi);
        out.extend_from_slice(&self.cur_data[start..start + t]);
        self.seq += 1;
        self.stats.source_packets += 1;
        self.next_esi += 1;
        let k = self.manifest.symbols_in_block(block);
        if self.next_esi == k {
            self.next_esi = 0;
            self.next_block += 1;
            let proactive =
                (u64::from(k) * u64::from(self.cfg.proactive_fec_permille)).div_ceil(1000);
            if proactive > 0 {
                self.add_repair(block, proactive as u32);
            }
            let last = self.next_block == self.manifest.block_count();
            if last || self.next_block.is_multiple_of(self.cfg.poll_every_blocks) {
                self.want_poll = true;
            }
            if last {
                self.phase = Phase::Drain;
                self.cur_block = None;
                self.cur_data = Vec::new();
            }
        }
        Ok(())
    }

    fn add_repair(&mut self, block: u32, n: u32) {
        let st = &mut self.blocks[block as usize];
        st.pending = st.pending.saturating_add(n);
        if !st.queued {
            st.queued = true;
            self.repair_queue.push_back(block);
        }
    }

    /// Whether new source data waits for the encoders (see
    /// [`MAX_BLOCKS_AWAITING_ENCODER`]).
    fn source_held(&self) -> bool {
        self.cfg.offload_encoding
            && self.repair_queue.len() > MAX_BLOCKS_AWAITING_ENCODER
            && self
                .repair_queue
                .iter()
                .filter(|b| !self.encoders.contains_key(b))
                .nth(MAX_BLOCKS_AWAITING_ENCODER)
                .is_some()
    }

    /// Position in the repair queue of the first block whose encoder is ready (inline
    /// encoding: the head, built on demand).
    fn ready_repair(&self) -> Option<usize> {
        if !self.cfg.offload_encoding {
            return if self.repair_queue.is_empty() {
                None
            } else {
                Some(0)
            };
        }
        self.repair_queue
            .iter()
            .position(|b| self.encoders.contains_key(b))
    }

    /// Offloaded encoding: hands out jobs for the first blocks waiting for repair that have
    /// no encoder yet, at most [`MAX_ENCODE_JOBS`] out at once.
    fn schedule_encodes(&mut self) -> Result<()> {
        if !self.cfg.offload_encoding || self.encoding.len() >= MAX_ENCODE_JOBS {
            return Ok(());
        }
        let wanted: Vec<u32> = self
            .repair_queue
            .iter()
            .filter(|b| !self.encoders.contains_key(b) && !self.encoding.contains(b))
            .take(MAX_ENCODE_JOBS - self.encoding.len())
            .copied()
            .collect();
        for block in wanted {
            // A buffer from an earlier job: already mapped, so no page faults, and every
            // byte of it is overwritten by `load_block`.
            let mut data = self.spare_blocks.pop().unwrap_or_default();
            self.load_block(block, &mut data)?;
            self.encoding.push(block);
            self.jobs.push_back(EncodeJob {
                block,
                symbol_size: self.manifest.symbol_size,
                data,
            });
        }
        Ok(())
    }

    /// Next encoder job to run, when [`SenderConfig::offload_encoding`] is set (never
    /// otherwise). Run it with [`EncodeJob::run`], anywhere, and hand the result to
    /// [`Sender::complete_job`].
    pub fn poll_job(&mut self) -> Option<EncodeJob> {
        self.jobs.pop_front()
    }

    /// Takes back a built encoder; the repair waiting for it becomes sendable. A result
    /// for a block not handed out is ignored.
    pub fn complete_job(&mut self, mut result: EncodeResult) {
        if self.spare_blocks.len() < MAX_ENCODE_JOBS {
            self.spare_blocks.push(std::mem::take(&mut result.spare));
        }
        let Some(i) = self.encoding.iter().position(|b| *b == result.block) else {
            return;
        };
        self.encoding.swap_remove(i);
        if matches!(self.phase, Phase::Data | Phase::Drain) {
            self.cache_encoder(result.block, result.encoder);
        }
    }

    fn cache_encoder(&mut self, block: u32, enc: SourceBlockEncoder) {
        // Evict the oldest encoder no repair is waiting for.
        while self.encoder_order.len() >= ENCODER_CACHE {
            let blocks = &self.blocks;
            match self
                .encoder_order
                .iter()
                .position(|b| !blocks[*b as usize].queued)
            {
                Some(i) => {
                    if let Some(old) = self.encoder_order.remove(i) {
                        self.encoders.remove(&old);
                    }
                }
                None => break,
            }
        }
        self.encoders.insert(block, enc);
        self.encoder_order.push_back(block);
    }

    fn write_repair(&mut self, pos: usize, out: &mut Vec<u8>) -> Result<()> {
        let block = self.repair_queue[pos];
        if !self.encoders.contains_key(&block) {
            let mut buf = self.spare_blocks.pop().unwrap_or_default();
            self.load_block(block, &mut buf)?;
            let enc = SourceBlockEncoder::new(0, &self.oti, &buf);
            self.spare_blocks.push(buf);
            self.cache_encoder(block, enc);
        }
        let st = &mut self.blocks[block as usize];
        let enc = &self.encoders[&block];
        let pkt = enc
            .repair_packets(st.next_repair, 1)
            .pop()
            .ok_or_else(|| MulticastError::invalid("repair symbol", block))?;
        let esi = pkt.payload_id().encoding_symbol_id();
        st.sent_seqs.push(self.seq);
        packet::write_header(out, 1, self.manifest.session_id);
        packet::write_data_header(out, self.seq, block, esi);
        out.extend_from_slice(pkt.data());
        self.seq += 1;
        self.stats.repair_packets += 1;
        st.pending -= 1;
        // Repair ids wrap before the 24-bit limit; old ids are long gone by then.
        st.next_repair = if esi >= MAX_ESI - 1 {
            0
        } else {
            st.next_repair + 1
        };
        if st.pending == 0 {
            st.queued = false;
            self.repair_queue.remove(pos);
        }
        Ok(())
    }

    /// Feeds a datagram that arrived from `from` (NAKs and completion reports).
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let p = match Packet::decode(data) {
            Ok(p) => p,
            Err(_) => {
                self.stats.malformed += 1;
                return;
            }
        };
        if p.session() != self.manifest.session_id {
            self.stats.foreign_session += 1;
            return;
        }
        match p {
            Packet::Nak {
                poll,
                loss_permille,
                entries,
                ..
            } => self.handle_nak(now, poll, loss_permille, &entries),
            Packet::Load {
                poll,
                jobs,
                dropped,
                ..
            } => self.handle_load(now, from, poll, jobs, dropped),
            Packet::Done { file_hash, .. } => {
                let hash_matches = file_hash == self.manifest.file_hash;
                // Counted once per address; the set stops growing at MAX_DONE_TRACKED (a
                // flood of forged reports can at worst end the session early: receivers
                // still lacking blocks then fetch them by unicast).
                if hash_matches
                    && self.done_from.len() < MAX_DONE_TRACKED
                    && self.done_from.insert(from)
                {
                    self.stats.receivers_done = self.done_from.len() as u64;
                }
                self.events
                    .push_back(SenderEvent::ReceiverDone { from, hash_matches });
            }
            _ => {}
        }
    }

    fn handle_nak(&mut self, now: Instant, poll: u32, loss_permille: u16, entries: &[BlockCount]) {
        let lingering = matches!(self.phase, Phase::Lingering(_));
        if matches!(self.phase, Phase::Finished | Phase::Ending)
            || (lingering && !entries.is_empty())
            || (!lingering && poll > self.poll_seq)
        {
            self.stats.bad_nak_entries += entries.len() as u64;
            return;
        }
        self.stats.naks += 1;
        if !lingering {
            self.naks_since_poll += 1;
        }
        if entries.is_empty() {
            self.reannounce(now, lingering);
            return;
        }
        // Repair sent after the poll was not counted by the NAK's sender: it is on its way,
        // or behind the poll in a slow receiver's queue.
        let Some(&(_, poll_high)) = self.poll_high.iter().find(|(p, _)| *p == poll) else {
            // Answers a poll too old to tell what it counted: stale, a newer one follows.
            self.stats.bad_nak_entries += entries.len() as u64;
            return;
        };
        let oldest_high = self.poll_high.front().map_or(0, |(_, h)| *h);
        let mut confirmed = Vec::with_capacity(entries.len());
        for e in entries {
            if let Some(c) = self.plan_repair(e, poll, poll_high, oldest_high, loss_permille) {
                confirmed.push(c);
            }
        }
        if !confirmed.is_empty() {
            let mut p = Vec::new();
            Packet::Ncf {
                session: self.manifest.session_id,
                poll,
                entries: confirmed,
            }
            .encode(&mut p);
            self.control.push_back(p);
        }
        if loss_permille > self.cfg.loss_backoff_permille {
            self.slow_down(now, loss_permille);
        } else {
            self.loss_at_cut = None;
        }
    }

    /// A receiver lacks (part of) the manifest: one more round, at most once per poll
    /// interval. While lingering too: a receiver that missed the manifest for the whole
    /// session then fetches the blocks by unicast.
    fn reannounce(&mut self, now: Instant, lingering: bool) {
        let hold = Duration::from_millis(self.cfg.poll_interval_ms);
        if self.last_reannounce.is_none_or(|t| now >= t + hold) {
            self.last_reannounce = Some(now);
            self.announce_pos = 0;
            if lingering {
                self.linger_announce = true;
            } else {
                self.next_announce = now;
            }
        }
    }

    /// Plans the repair of one NAK entry answering `poll` with `loss_permille`: the symbols
    /// missing, inflated by the loss and the margin, capped at `max_repair_permille`. A
    /// later NAK for the same poll adds what it wants beyond the plan; the first for a
    /// newer poll replaces the plan, less the repair still pending and the repair sent
    /// since the poll (`poll_high`: the poll's `high_seq`; `oldest_high`: the oldest
    /// tracked poll's, before which sent repair is forgotten). Returns the block's planned
    /// count to confirm, or `None` for an entry out of range or answering a poll older
    /// than the plan's.
    #[inline]
    fn plan_repair(
        &mut self,
        e: &BlockCount,
        poll: u32,
        poll_high: u64,
        oldest_high: u64,
        loss_permille: u16,
    ) -> Option<BlockCount> {
        if e.block >= self.next_block || e.count == 0 {
            self.stats.bad_nak_entries += 1;
            return None;
        }
        let k = self.manifest.symbols_in_block(e.block);
        let missing = e.count.min(k);
        let inflate = (u64::from(missing) * u64::from(loss_permille)).div_ceil(1000) as u32;
        let cap = (u64::from(k) * u64::from(self.cfg.max_repair_permille)).div_ceil(1000) as u32;
        let want = (missing + inflate + self.cfg.repair_margin).min(cap.max(1));
        let st = &mut self.blocks[e.block as usize];
        if poll < st.plan_poll {
            return None;
        }
        let extra = if poll == st.plan_poll {
            let extra = want.saturating_sub(st.plan_count);
            st.plan_count = st.plan_count.max(want);
            extra
        } else {
            // A poll carries the sequence number the next data packet gets.
            st.sent_seqs.retain(|s| *s >= oldest_high);
            let unseen = st.sent_seqs.iter().filter(|s| **s >= poll_high).count() as u32;
            st.plan_poll = poll;
            st.plan_count = want;
            want.saturating_sub(st.pending.saturating_add(unseen))
        };
        let confirmed = BlockCount {
            block: e.block,
            count: st.plan_count,
        };
        if extra > 0 {
            self.add_repair(e.block, extra);
        }
        Some(confirmed)
    }
}
