//! The sans-IO receiver state machine.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use raptorq::{EncodingPacket, ObjectTransmissionInformation, PayloadId, SourceBlockDecoder};

use crate::config::ReceiverConfig;
use crate::error::{Error, Result};
use crate::manifest::{Manifest, block_hash, hex};
use crate::packet::{BlockCount, DataHeader, Packet};

/// Something the receiver asks its driver to do or reports to it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReceiverEvent {
    /// An authenticated manifest was accepted; the driver opens the temporary file and may
    /// offer blocks already on disk through [`Receiver::offer_block`].
    ManifestAccepted(Box<Manifest>),
    /// A block was verified against its hash; write `data` at `offset`.
    BlockVerified {
        /// Block index.
        block: u32,
        /// Byte offset in the file.
        offset: u64,
        /// The block's bytes (its real length).
        data: Vec<u8>,
    },
    /// The multicast session is over and these blocks are still missing: fetch them by unicast
    /// and hand them to [`Receiver::offer_block`].
    FetchNeeded {
        /// Missing block indices.
        blocks: Vec<u32>,
    },
    /// Every block is verified; the driver checks the whole-file hash, renames the file and
    /// calls [`Receiver::finish`].
    Complete {
        /// The manifest's whole-file hash.
        file_hash: [u8; 32],
    },
}

/// Counters kept by the receiver. Every dropped datagram lands in exactly one counter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReceiverStats {
    /// Datagrams fed in.
    pub datagrams: u64,
    /// Datagrams that did not decode.
    pub malformed: u64,
    /// Data or control for a session not announced (or not yet authenticated).
    pub unknown_session: u64,
    /// Manifests that failed to parse, exceeded limits or did not verify.
    pub manifests_rejected: u64,
    /// Manifest pieces inconsistent with earlier pieces or limits.
    pub bad_announce: u64,
    /// Data packets whose block, symbol id or length do not fit the manifest.
    pub bad_data: u64,
    /// Symbols for blocks already complete, or repeated.
    pub duplicates: u64,
    /// Symbols dropped because the buffer budget was used up.
    pub over_budget: u64,
    /// Source symbols accepted.
    pub source_symbols: u64,
    /// Repair symbols accepted.
    pub repair_symbols: u64,
    /// Blocks completed with the help of FEC decoding.
    pub blocks_decoded: u64,
    /// Blocks (assembled or offered) that failed their hash and were thrown away.
    pub blocks_rejected: u64,
    /// Blocks obtained by unicast fetch or resumed from disk.
    pub blocks_offered: u64,
    /// Requests for the manifest (NAKs without entries) sent.
    pub manifest_requests: u64,
    /// NAKs not sent because this receiver's loss since it joined was above
    /// `nak_max_loss_permille`.
    pub naks_withheld: u64,
    /// NAKs sent.
    pub naks_sent: u64,
    /// NAKs suppressed by a confirmation that covered them.
    pub naks_suppressed: u64,
    /// Load reports sent (polls answered while `backlog_report_blocks` or more block jobs
    /// were out, or after the socket dropped datagrams).
    pub load_reports: u64,
    /// Most block jobs out at once.
    pub peak_jobs_out: u64,
}

struct Partial {
    data: Vec<u8>,
    have: Vec<bool>,
    sources: u32,
    repairs: Vec<EncodingPacket>,
    repair_ids: HashSet<u32>,
    failed_at: u32,
}

/// Symbols that arrived for a block while its job was out (kept in case decoding fails).
#[derive(Default)]
struct Late {
    symbols: Vec<(u32, Vec<u8>)>,
    ids: HashSet<u32>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum BlockState {
    Missing,
    Partial,
    /// Handed out as a [`BlockJob`]; its result is not back yet.
    Working,
    Done,
}

/// The work that completes one block: FEC decoding when source symbols are missing, then
/// the check against the block's hash. Handed out by [`Receiver::poll_job`] when
/// [`ReceiverConfig::offload_block_work`] is set, so the driver can run it on another
/// thread while it keeps reading the socket; the result goes back through
/// [`Receiver::complete_job`].
pub struct BlockJob {
    block: u32,
    k: u32,
    symbol_size: u16,
    len: usize,
    expected: [u8; 32],
    partial: Partial,
}

impl std::fmt::Debug for BlockJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockJob")
            .field("block", &self.block)
            .field("sources", &self.partial.sources)
            .field("repairs", &self.partial.repairs.len())
            .finish_non_exhaustive()
    }
}

impl BlockJob {
    /// The block this job completes.
    pub fn block(&self) -> u32 {
        self.block
    }

    /// Whether the job needs FEC decoding (some source symbols are missing).
    pub fn needs_decoding(&self) -> bool {
        self.partial.sources < self.k
    }

    /// Decodes (if needed) and checks the block hash. Pure computation: no IO, no clock.
    pub fn run(self) -> BlockResult {
        let BlockJob {
            block,
            k,
            symbol_size,
            len,
            expected,
            mut partial,
        } = self;
        let t = usize::from(symbol_size);
        let decoded = partial.sources < k;
        let data = if decoded {
            match decode_partial(&partial, k, symbol_size) {
                Some(d) => {
                    partial.repairs = Vec::new();
                    // Only the missing symbols are taken from the decoder's output, which is
                    // dropped here, on the thread that allocated it: the block's own buffer
                    // stays in use and the decoder's memory is reused by the next decode
                    // instead of being mapped (and zeroed by the kernel) afresh.
                    for (i, _) in partial.have.iter().enumerate().filter(|(_, h)| !**h) {
                        partial.data[i * t..(i + 1) * t].copy_from_slice(&d[i * t..(i + 1) * t]);
                    }
                    std::mem::take(&mut partial.data)
                }
                None => {
                    partial.failed_at = partial.sources + partial.repairs.len() as u32;
                    return BlockResult {
                        block,
                        outcome: Outcome::Undecodable(partial),
                    };
                }
            }
        } else {
            std::mem::take(&mut partial.data)
        };
        debug_assert_eq!(data.len(), k as usize * t);
        let mut data = data;
        data.truncate(len);
        let outcome = if block_hash(&data) == expected {
            Outcome::Verified { data, decoded }
        } else {
            Outcome::Rejected
        };
        BlockResult { block, outcome }
    }
}

/// What a [`BlockJob`] ended with; hand it to [`Receiver::complete_job`].
pub struct BlockResult {
    block: u32,
    outcome: Outcome,
}

impl std::fmt::Debug for BlockResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match &self.outcome {
            Outcome::Verified { .. } => "verified",
            Outcome::Rejected => "rejected",
            Outcome::Undecodable(_) => "undecodable",
        };
        f.debug_struct("BlockResult")
            .field("block", &self.block)
            .field("outcome", &what)
            .finish()
    }
}

impl BlockResult {
    /// The block the job was for.
    pub fn block(&self) -> u32 {
        self.block
    }
}

enum Outcome {
    /// `data`: the block's bytes, in the buffer its symbols were collected in.
    Verified {
        data: Vec<u8>,
        decoded: bool,
    },
    Rejected,
    Undecodable(Partial),
}

/// Runs the RaptorQ decoder over what `p` holds. `None`: not decodable yet.
fn decode_partial(p: &Partial, k: u32, symbol_size: u16) -> Option<Vec<u8>> {
    let t = usize::from(symbol_size);
    let oti = ObjectTransmissionInformation::new(0, symbol_size, 0, 1, 1);
    let mut dec = SourceBlockDecoder::new(0, &oti, (k as usize * t) as u64);
    let sources = p
        .have
        .iter()
        .enumerate()
        .filter(|(_, h)| **h)
        .map(|(i, _)| {
            EncodingPacket::new(
                PayloadId::new(0, i as u32),
                p.data[i * t..(i + 1) * t].to_vec(),
            )
        });
    dec.decode(sources.chain(p.repairs.iter().cloned()))
}

struct PendingNak {
    poll: u32,
    due: Instant,
    entries: Vec<BlockCount>,
    loss_permille: u16,
}

struct Active {
    manifest: Manifest,
    state: Vec<BlockState>,
    partial: HashMap<u32, Partial>,
    late: HashMap<u32, Late>,
    jobs_out: u32,
    buffered: u64,
    done: u32,
    join_block: Option<u32>,
    sender: Option<SocketAddr>,
    pending_nak: Option<PendingNak>,
    high_seq: u64,
    report_seq: u64,
    received_since: u64,
    total_expected: u64,
    total_received: u64,
    ended: bool,
    fetch_requested: bool,
    complete: bool,
    finished: bool,
    /// Where the next source symbol probably goes: the one after the last accepted.
    next_slot: Option<(u32, u32)>,
}

struct Assembly {
    session: u64,
    total: u32,
    chunks: u16,
    piece: usize,
    got: Vec<bool>,
    n_got: usize,
    buf: Vec<u8>,
}

const MAX_ASSEMBLIES: usize = 4;

/// Bytes of block buffers kept for reuse (see [`Receiver::recycle`]): under loss every
/// block waits for its repair, so as many buffers are in use as blocks are between their
/// source symbols and their repair, and each one not reused is fresh memory the kernel
/// must zero page by page.
const MAX_SPARE_BYTES: usize = 32 << 20;

/// The receiving side of one session.
pub struct Receiver {
    cfg: ReceiverConfig,
    sender_key: Vec<u8>,
    assemblies: VecDeque<Assembly>,
    active: Option<Active>,
    events: VecDeque<ReceiverEvent>,
    transmit: VecDeque<(SocketAddr, Vec<u8>)>,
    /// The socket's drop counter as last noted, and its value at the last load report.
    socket_drops: Option<(u64, u64)>,
    jobs: VecDeque<BlockJob>,
    spare: Vec<Vec<u8>>,
    /// Capacity of the buffers in `spare`.
    spare_bytes: usize,
    stats: ReceiverStats,
    rng: ChaCha8Rng,
    last_activity: Option<Instant>,
    /// When the manifest was last asked for (no session accepted yet).
    last_manifest_request: Option<Instant>,
    /// The last session heard of without its manifest (no session accepted yet): its id,
    /// its sender, and whether its End was heard.
    unknown: Option<(u64, SocketAddr, bool)>,
    /// Manifest requests still to repeat for it, one per MANIFEST_RETRY_INTERVAL (each
    /// answer may be lost too; the sender answers until its linger ends).
    manifest_retries: u32,
    /// The slot handed out by [`Receiver::symbol_slot`] for the next datagram: block,
    /// symbol id, and the address of the block buffer it is in.
    slot_out: Option<(u32, u32, usize)>,
    /// A scattered datagram put back together (see [`Receiver::handle_scattered`]).
    reassembly: Vec<u8>,
}

/// Manifest requests repeated after the last packet heard of a session without its
/// manifest.
const MANIFEST_RETRIES: u32 = 10;
/// Time between those repeats.
const MANIFEST_RETRY_INTERVAL: Duration = Duration::from_millis(50);

/// Least time between two manifest requests from a receiver without a session.
const MANIFEST_REQUEST_INTERVAL: Duration = Duration::from_millis(20);

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field(
                "session",
                &self.active.as_ref().map(|a| a.manifest.session_id),
            )
            .field("blocks_done", &self.blocks_done())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Receiver {
    /// A receiver that accepts sessions whose manifest verifies with `sender_key`
    /// (a raw 32-byte Ed25519 public key the server vouches for).
    pub fn new(cfg: ReceiverConfig, sender_key: &[u8]) -> Result<Receiver> {
        cfg.validate()?;
        if sender_key.len() != crate::manifest::PUBLIC_KEY_LEN {
            return Err(Error::config(
                "sender_key",
                format!("{} bytes, expected 32", sender_key.len()),
            ));
        }
        Ok(Receiver {
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            cfg,
            sender_key: sender_key.to_vec(),
            assemblies: VecDeque::new(),
            active: None,
            events: VecDeque::new(),
            transmit: VecDeque::new(),
            socket_drops: None,
            jobs: VecDeque::new(),
            spare: Vec::new(),
            spare_bytes: 0,
            stats: ReceiverStats::default(),
            last_activity: None,
            last_manifest_request: None,
            unknown: None,
            manifest_retries: 0,
            slot_out: None,
            reassembly: Vec::new(),
        })
    }

    /// Counters.
    pub fn stats(&self) -> &ReceiverStats {
        &self.stats
    }

    /// The accepted manifest, once there is one.
    pub fn manifest(&self) -> Option<&Manifest> {
        self.active.as_ref().map(|a| &a.manifest)
    }

    /// Blocks verified so far.
    pub fn blocks_done(&self) -> u32 {
        self.active.as_ref().map_or(0, |a| a.done)
    }

    /// Whether every block is verified.
    pub fn is_complete(&self) -> bool {
        self.active.as_ref().is_some_and(|a| a.complete)
    }

    /// Whether [`Receiver::finish`] succeeded.
    pub fn is_finished(&self) -> bool {
        self.active.as_ref().is_some_and(|a| a.finished)
    }

    /// Whether the sender ended the session (or it went idle).
    pub fn session_ended(&self) -> bool {
        self.active.as_ref().is_some_and(|a| a.ended)
    }

    /// Whether the session may still ask for this receiver (no End heard, and something of
    /// it arrived within `idle_timeout_ms` of `now`). A driver keeps feeding a finished
    /// receiver datagrams while this holds, so a sender that lost its `Done` and polls again
    /// is answered.
    pub fn session_alive(&self, now: Instant) -> bool {
        self.active.as_ref().is_some_and(|a| !a.ended)
            && self
                .last_activity
                .is_some_and(|t| now < t + Duration::from_millis(self.cfg.idle_timeout_ms))
    }

    /// Next event, if any.
    pub fn poll_event(&mut self) -> Option<ReceiverEvent> {
        self.events.pop_front()
    }

    /// Next datagram to send (unicast to the sender), if any.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.transmit.pop_front()
    }

    /// When [`Receiver::handle_timeout`] should run next.
    pub fn next_timeout(&self) -> Option<Instant> {
        if self.active.is_none() && self.unknown.is_some() && self.manifest_retries > 0 {
            return self
                .last_manifest_request
                .map(|t| t + MANIFEST_RETRY_INTERVAL);
        }
        let a = self.active.as_ref()?;
        if a.complete {
            return None;
        }
        let nak = a.pending_nak.as_ref().map(|p| p.due);
        let idle = if a.ended {
            None
        } else {
            self.last_activity
                .map(|t| t + Duration::from_millis(self.cfg.idle_timeout_ms))
        };
        match (nak, idle) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        }
    }

    /// Runs timers: sends a due NAK, notices an idle session.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.active.is_none()
            && self.manifest_retries > 0
            && let Some((session, to, _)) = self.unknown
            && self
                .last_manifest_request
                .is_none_or(|t| now >= t + MANIFEST_RETRY_INTERVAL)
        {
            self.manifest_retries -= 1;
            self.request_manifest(now, session, 0, to);
        }
        let idle_ms = self.cfg.idle_timeout_ms;
        let last = self.last_activity;
        let Some(a) = self.active.as_mut() else {
            return;
        };
        if let Some(p) = a.pending_nak.take_if(|p| now >= p.due)
            && let Some(to) = a.sender
        {
            let mut out = Vec::new();
            Packet::Nak {
                session: a.manifest.session_id,
                poll: p.poll,
                loss_permille: p.loss_permille,
                entries: p.entries,
            }
            .encode(&mut out);
            self.transmit.push_back((to, out));
            self.stats.naks_sent += 1;
        }
        if !a.ended
            && !a.complete
            && last.is_some_and(|t| now >= t + Duration::from_millis(idle_ms))
        {
            a.ended = true;
        }
        self.request_fetch();
    }

    fn request_fetch(&mut self) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        if a.ended && !a.complete && !a.fetch_requested && a.jobs_out == 0 {
            a.fetch_requested = true;
            a.pending_nak = None;
            let blocks = (0..a.manifest.block_count())
                .filter(|b| a.state[*b as usize] != BlockState::Done)
                .collect();
            self.events.push_back(ReceiverEvent::FetchNeeded { blocks });
        }
    }

    /// A place where the symbol of the next datagram can land directly, saving a copy: the
    /// slot, in its block's buffer, of the source symbol after the last one accepted, when
    /// that block is being collected and the symbol is still missing. `None` otherwise;
    /// then read the datagram whole and hand it to [`Receiver::handle_datagram`].
    ///
    /// With a slot, read the next datagram with scatter IO: its first
    /// [`DATA_HEADER_LEN`](crate::packet::DATA_HEADER_LEN) bytes into a header buffer, the
    /// next `slot.len()` into the slot, the rest into a tail buffer, and hand them to
    /// [`Receiver::handle_scattered`] before calling anything else on the receiver. Whatever
    /// the datagram turns out to be, nothing is lost or corrupted: it is put back together
    /// when it is not that symbol, and the bytes of a slot are only read once its symbol is
    /// marked received.
    pub fn symbol_slot(&mut self) -> Option<&mut [u8]> {
        self.slot_out = None;
        let a = self.active.as_mut()?;
        let (block, esi) = a.next_slot?;
        // Blocks in `partial` are the ones being collected.
        let p = a.partial.get_mut(&block)?;
        if *p.have.get(esi as usize)? {
            return None;
        }
        let t = usize::from(a.manifest.symbol_size);
        let i = esi as usize;
        self.slot_out = Some((block, esi, p.data.as_ptr() as usize));
        p.data.get_mut(i * t..(i + 1) * t)
    }

    /// The symbol bytes a scattered read left in the slot handed out, if that slot is
    /// still where it was (same block buffer, symbol still missing).
    fn landed(&self, slot: Option<(u32, u32, usize)>, len: usize) -> Option<&[u8]> {
        let (block, esi, buffer) = slot?;
        let a = self.active.as_ref()?;
        let p = a.partial.get(&block)?;
        if p.data.as_ptr() as usize != buffer || *p.have.get(esi as usize)? {
            return None;
        }
        let t = usize::from(a.manifest.symbol_size);
        let start = esi as usize * t;
        p.data.get(start..start + len.min(t))
    }

    /// Takes one datagram of `len` bytes read with scatter IO after
    /// [`Receiver::symbol_slot`]: its first bytes in `head` (up to
    /// [`DATA_HEADER_LEN`](crate::packet::DATA_HEADER_LEN)), then as many as the slot holds
    /// in the slot (none if no slot was handed out), the rest at the start of `tail`. The
    /// expected symbol is taken where it landed; anything else is put back together and
    /// handled as by [`Receiver::handle_datagram`].
    pub fn handle_scattered(
        &mut self,
        now: Instant,
        from: SocketAddr,
        head: &[u8],
        tail: &[u8],
        len: usize,
    ) {
        let slot = self.slot_out.take();
        let t = match (slot, self.active.as_ref()) {
            (Some(_), Some(a)) => usize::from(a.manifest.symbol_size),
            _ => 0,
        };
        let h = len.min(crate::packet::DATA_HEADER_LEN);
        let in_slot = (len - h).min(t);
        let (Some(head), Some(tail)) = (head.get(..h), tail.get(..len - h - in_slot)) else {
            // Buffers shorter than the length given: a driver error, not data.
            self.stats.datagrams += 1;
            self.stats.malformed += 1;
            return;
        };
        if let Some((block, esi, _)) = slot
            && tail.is_empty()
            && in_slot == t
            && let Ok(hd) = DataHeader::decode(head)
            && (hd.block, hd.esi) == (block, esi)
            && self
                .active
                .as_ref()
                .is_some_and(|a| a.manifest.session_id == hd.session)
            && self.landed(slot, in_slot).is_some()
        {
            self.stats.datagrams += 1;
            self.last_activity = Some(now);
            if self.note_data(from, hd.seq, block, esi, in_slot) {
                self.source_received(block, esi);
            }
            return;
        }
        let mut buf = std::mem::take(&mut self.reassembly);
        buf.clear();
        buf.extend_from_slice(head);
        if in_slot > 0 {
            match self.landed(slot, in_slot) {
                Some(bytes) => buf.extend_from_slice(bytes),
                None => {
                    // The slot moved since it was handed out: a driver error, not data.
                    self.stats.datagrams += 1;
                    self.stats.malformed += 1;
                    self.reassembly = buf;
                    return;
                }
            }
        }
        buf.extend_from_slice(tail);
        self.handle_datagram(now, from, &buf);
        self.reassembly = buf;
    }

    /// Takes one datagram read whole.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        self.stats.datagrams += 1;
        let p = match Packet::decode(data) {
            Ok(p) => p,
            Err(_) => {
                self.stats.malformed += 1;
                return;
            }
        };
        let session = p.session();
        if let Packet::Announce {
            chunk,
            chunks,
            total,
            bytes,
            ..
        } = p
        {
            self.handle_announce(now, session, chunk, chunks, total, bytes);
            return;
        }
        let matches = self
            .active
            .as_ref()
            .is_some_and(|a| a.manifest.session_id == session);
        if !matches {
            self.stats.unknown_session += 1;
            // A sender's packet while no session is accepted yet: ask it for the manifest (a
            // NAK without entries; at most one small datagram per
            // MANIFEST_REQUEST_INTERVAL, no amplification), and again on a timer a few
            // times after the last such packet. An End is remembered, so a manifest that
            // comes after it (the sender answers while it lingers) goes straight to unicast
            // fetching.
            let from_sender = matches!(
                p,
                Packet::Data { .. } | Packet::Poll { .. } | Packet::Ncf { .. } | Packet::End { .. }
            );
            if from_sender && self.active.is_none() {
                let is_end = matches!(p, Packet::End { .. });
                let ended = match self.unknown {
                    Some((s, _, e)) if s == session => e || is_end,
                    _ => is_end,
                };
                self.unknown = Some((session, from, ended));
                self.manifest_retries = MANIFEST_RETRIES;
                if self
                    .last_manifest_request
                    .is_none_or(|t| now >= t + MANIFEST_REQUEST_INTERVAL)
                {
                    let poll = match p {
                        Packet::Poll { poll, .. } => poll,
                        _ => 0,
                    };
                    self.request_manifest(now, session, poll, from);
                }
            }
            return;
        }
        match p {
            Packet::Data {
                seq,
                block,
                esi,
                symbol,
                ..
            } => {
                self.last_activity = Some(now);
                self.handle_data(from, seq, block, esi, symbol);
            }
            Packet::Poll {
                poll,
                upto_block,
                high_seq,
                ..
            } => {
                self.last_activity = Some(now);
                self.handle_poll(now, from, poll, upto_block, high_seq);
            }
            Packet::Ncf { poll, entries, .. } => {
                self.last_activity = Some(now);
                self.handle_ncf(poll, &entries);
            }
            Packet::End { .. } => {
                if let Some(a) = self.active.as_mut() {
                    a.ended = true;
                    if a.sender.is_none() {
                        a.sender = Some(from);
                    }
                }
                self.request_fetch();
            }
            // NAKs, load and completion reports are for the sender.
            _ => {}
        }
    }

    fn handle_announce(
        &mut self,
        now: Instant,
        session: u64,
        chunk: u16,
        chunks: u16,
        total: u32,
        bytes: &[u8],
    ) {
        if let Some(a) = &self.active {
            if a.manifest.session_id != session {
                self.stats.unknown_session += 1;
            }
            return;
        }
        if total == 0 || total > self.cfg.limits.max_manifest_len {
            self.stats.bad_announce += 1;
            return;
        }
        let piece = (total as usize).div_ceil(usize::from(chunks));
        if (usize::from(chunks) - 1) * piece >= total as usize {
            self.stats.bad_announce += 1;
            return;
        }
        let start = usize::from(chunk) * piece;
        let expected = piece.min(total as usize - start);
        if bytes.len() != expected {
            self.stats.bad_announce += 1;
            return;
        }
        let pos = self
            .assemblies
            .iter()
            .position(|x| x.session == session && x.total == total && x.chunks == chunks);
        let idx = match pos {
            Some(i) => i,
            None => {
                if self.assemblies.len() >= MAX_ASSEMBLIES {
                    self.assemblies.pop_front();
                }
                self.assemblies.push_back(Assembly {
                    session,
                    total,
                    chunks,
                    piece,
                    got: vec![false; usize::from(chunks)],
                    n_got: 0,
                    buf: vec![0; total as usize],
                });
                self.assemblies.len() - 1
            }
        };
        let asm = &mut self.assemblies[idx];
        let c = usize::from(chunk);
        if asm.got[c] {
            return;
        }
        asm.got[c] = true;
        asm.n_got += 1;
        let start = c * asm.piece;
        asm.buf[start..start + bytes.len()].copy_from_slice(bytes);
        if asm.n_got < asm.got.len() {
            return;
        }
        let Some(asm) = self.assemblies.remove(idx) else {
            return;
        };
        match Manifest::decode_verified(&asm.buf, &self.sender_key, &self.cfg.limits) {
            Ok(m) if m.session_id == session => self.accept(now, m),
            _ => self.stats.manifests_rejected += 1,
        }
    }

    fn accept(&mut self, now: Instant, manifest: Manifest) {
        self.assemblies.clear();
        let n = manifest.block_count() as usize;
        self.active = Some(Active {
            state: vec![BlockState::Missing; n],
            partial: HashMap::new(),
            late: HashMap::new(),
            jobs_out: 0,
            buffered: 0,
            done: 0,
            join_block: None,
            sender: None,
            pending_nak: None,
            high_seq: 0,
            report_seq: 0,
            received_since: 0,
            total_expected: 0,
            total_received: 0,
            ended: false,
            fetch_requested: false,
            complete: false,
            finished: false,
            next_slot: None,
            manifest: manifest.clone(),
        });
        self.last_activity = Some(now);
        let session = manifest.session_id;
        self.events
            .push_back(ReceiverEvent::ManifestAccepted(Box::new(manifest)));
        // The session already ended before its manifest got here: fetch everything.
        if let Some((s, from, true)) = self.unknown.take()
            && s == session
            && let Some(a) = self.active.as_mut()
        {
            a.ended = true;
            a.sender = Some(from);
            self.request_fetch();
        }
    }

    /// Asks `to` for the manifest of `session`: a NAK without entries.
    fn request_manifest(&mut self, now: Instant, session: u64, poll: u32, to: SocketAddr) {
        self.last_manifest_request = Some(now);
        let mut out = Vec::new();
        Packet::Nak {
            session,
            poll,
            loss_permille: 0,
            entries: Vec::new(),
        }
        .encode(&mut out);
        self.transmit.push_back((to, out));
        self.stats.manifest_requests += 1;
    }

    /// What every data packet of the active session counts for: the sender's address, where
    /// this receiver joined, the loss count. `false` (and counted) when the packet does not
    /// fit the manifest.
    fn note_data(&mut self, from: SocketAddr, seq: u64, block: u32, esi: u32, len: usize) -> bool {
        let Some(a) = self.active.as_mut() else {
            return false;
        };
        let m = &a.manifest;
        if block >= m.block_count() || len != usize::from(m.symbol_size) {
            self.stats.bad_data += 1;
            return false;
        }
        if a.sender.is_none() {
            a.sender = Some(from);
        }
        // The first source symbol heard marks where this receiver joined; blocks before it
        // went by unheard and are fetched by unicast rather than repaired for everyone.
        if a.join_block.is_none() && esi < m.symbols_in_block(block) {
            a.join_block = Some(block);
            a.report_seq = seq.saturating_sub(1);
            a.received_since = 0;
        }
        a.high_seq = a.high_seq.max(seq);
        a.received_since += 1;
        true
    }

    /// One data packet of the active session, read whole.
    fn handle_data(&mut self, from: SocketAddr, seq: u64, block: u32, esi: u32, symbol: &[u8]) {
        if !self.note_data(from, seq, block, esi, symbol.len()) {
            return;
        }
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let m = &a.manifest;
        let k = m.symbols_in_block(block);
        let t = usize::from(m.symbol_size);
        let b = block as usize;
        if a.state[b] == BlockState::Done {
            self.stats.duplicates += 1;
            return;
        }
        if a.state[b] == BlockState::Working {
            // Kept until the job's result is back, in case decoding needs more symbols.
            let late = a.late.entry(block).or_default();
            if late.ids.len() >= k as usize || !late.ids.insert(esi) {
                self.stats.duplicates += 1;
                return;
            }
            if a.buffered + t as u64 > self.cfg.max_buffered_bytes {
                late.ids.remove(&esi);
                self.stats.over_budget += 1;
                return;
            }
            a.buffered += t as u64;
            late.symbols.push((esi, symbol.to_vec()));
            return;
        }
        if a.state[b] == BlockState::Missing {
            let bytes = k as u64 * t as u64;
            if a.buffered + bytes > self.cfg.max_buffered_bytes {
                self.stats.over_budget += 1;
                return;
            }
            a.buffered += bytes;
            a.state[b] = BlockState::Partial;
            // A buffer handed back through `recycle` is already mapped (no page faults) and
            // is not zeroed again: every byte of it is either overwritten by a symbol or
            // not read (decoding takes only the symbols marked in `have`).
            let mut data = self.spare.pop().unwrap_or_default();
            self.spare_bytes -= data.capacity();
            data.resize(k as usize * t, 0);
            a.partial.insert(
                block,
                Partial {
                    data,
                    have: vec![false; k as usize],
                    sources: 0,
                    repairs: Vec::new(),
                    repair_ids: HashSet::new(),
                    failed_at: 0,
                },
            );
        }
        let Some(p) = a.partial.get_mut(&block) else {
            return;
        };
        if esi < k {
            let i = esi as usize;
            if p.have[i] {
                self.stats.duplicates += 1;
                return;
            }
            p.data[i * t..(i + 1) * t].copy_from_slice(symbol);
            self.source_received(block, esi);
        } else {
            if !p.repair_ids.insert(esi) {
                self.stats.duplicates += 1;
                return;
            }
            p.repairs
                .push(EncodingPacket::new(PayloadId::new(0, esi), symbol.to_vec()));
            self.stats.repair_symbols += 1;
            self.complete_if_enough(block);
        }
    }

    /// Marks source symbol `esi` of `block`, a block being collected, as received: its
    /// bytes are in its slot already (copied there, or read there by a scatter read).
    fn source_received(&mut self, block: u32, esi: u32) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let k = a.manifest.symbols_in_block(block);
        let Some(p) = a.partial.get_mut(&block) else {
            return;
        };
        p.have[esi as usize] = true;
        p.sources += 1;
        self.stats.source_symbols += 1;
        a.next_slot = (esi + 1 < k).then_some((block, esi + 1));
        self.complete_if_enough(block);
    }

    /// Hands a block being collected to decoding once it holds enough symbols (more than
    /// at its last failed attempt).
    fn complete_if_enough(&mut self, block: u32) {
        let Some(a) = self.active.as_ref() else {
            return;
        };
        let k = a.manifest.symbols_in_block(block);
        if let Some(p) = a.partial.get(&block) {
            let count = p.sources + p.repairs.len() as u32;
            if count >= k && count > p.failed_at {
                self.try_complete(block);
            }
        }
    }

    fn try_complete(&mut self, block: u32) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let Some(p) = a.partial.remove(&block) else {
            return;
        };
        let job = BlockJob {
            block,
            k: a.manifest.symbols_in_block(block),
            symbol_size: a.manifest.symbol_size,
            len: a.manifest.block_len(block),
            expected: a.manifest.block_hashes[block as usize],
            partial: p,
        };
        if self.cfg.offload_block_work {
            a.state[block as usize] = BlockState::Working;
            a.jobs_out += 1;
            self.stats.peak_jobs_out = self.stats.peak_jobs_out.max(u64::from(a.jobs_out));
            self.jobs.push_back(job);
        } else {
            let result = job.run();
            self.apply_result(result);
        }
    }

    /// Notes the receiving socket's count of datagrams dropped for want of buffer room
    /// (cumulative, as the kernel keeps it; [`crate::driver::run_receiver`] reads it on
    /// Linux). Drops since the previous load report are reported at the next poll, and the
    /// sender slows down: a socket that overflows means the receiver is not keeping up.
    /// The first value noted (and any value lower than the last) is the baseline.
    pub fn note_socket_drops(&mut self, total: u64) {
        self.socket_drops = match self.socket_drops {
            Some((noted, reported)) if total >= noted => Some((total, reported)),
            _ => Some((total, total)),
        };
    }

    /// Hands back the buffer of a [`ReceiverEvent::BlockVerified`] once its bytes are
    /// stored, so the next block reuses it instead of fresh memory (up to 32 MiB of them
    /// are kept; the rest are freed). Optional.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        if buf.capacity() > 0 && self.spare_bytes + buf.capacity() <= MAX_SPARE_BYTES {
            self.spare_bytes += buf.capacity();
            self.spare.push(buf);
        }
    }

    /// Next block job to run, when [`ReceiverConfig::offload_block_work`] is set (never
    /// otherwise). Run it with [`BlockJob::run`], anywhere, and hand the result to
    /// [`Receiver::complete_job`].
    pub fn poll_job(&mut self) -> Option<BlockJob> {
        self.jobs.pop_front()
    }

    /// Takes back the result of a job from [`Receiver::poll_job`]: a verified block becomes
    /// a [`ReceiverEvent::BlockVerified`]; a block that failed its hash is collected again;
    /// one that could not be decoded yet goes on collecting symbols (including those that
    /// arrived meanwhile). A result for a block that is no longer out (another session, or
    /// completed by [`Receiver::offer_block`] meanwhile) is ignored.
    pub fn complete_job(&mut self, result: BlockResult) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let b = result.block as usize;
        match a.state.get(b) {
            Some(BlockState::Working) => {
                a.jobs_out = a.jobs_out.saturating_sub(1);
                self.apply_result(result);
            }
            Some(BlockState::Done) => {
                // Completed another way (offered) while the job was out.
                a.jobs_out = a.jobs_out.saturating_sub(1);
                let bytes = a.manifest.symbols_in_block(result.block) as u64
                    * u64::from(a.manifest.symbol_size);
                a.buffered = a.buffered.saturating_sub(bytes);
                self.drop_late(result.block);
            }
            _ => return,
        }
        self.request_fetch();
    }

    fn drop_late(&mut self, block: u32) {
        if let Some(a) = self.active.as_mut()
            && let Some(late) = a.late.remove(&block)
        {
            let t = u64::from(a.manifest.symbol_size);
            a.buffered = a.buffered.saturating_sub(late.symbols.len() as u64 * t);
            self.stats.duplicates += late.symbols.len() as u64;
        }
    }

    fn apply_result(&mut self, result: BlockResult) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let block = result.block;
        let k = a.manifest.symbols_in_block(block);
        let t = usize::from(a.manifest.symbol_size);
        let bytes = k as u64 * t as u64;
        match result.outcome {
            Outcome::Undecodable(mut p) => {
                a.state[block as usize] = BlockState::Partial;
                if let Some(late) = a.late.remove(&block) {
                    a.buffered = a
                        .buffered
                        .saturating_sub(late.symbols.len() as u64 * t as u64);
                    for (esi, sym) in late.symbols {
                        if esi < k {
                            let i = esi as usize;
                            if p.have[i] {
                                self.stats.duplicates += 1;
                            } else {
                                p.have[i] = true;
                                p.sources += 1;
                                p.data[i * t..(i + 1) * t].copy_from_slice(&sym);
                                self.stats.source_symbols += 1;
                            }
                        } else if p.repair_ids.insert(esi) {
                            p.repairs
                                .push(EncodingPacket::new(PayloadId::new(0, esi), sym));
                            self.stats.repair_symbols += 1;
                        } else {
                            self.stats.duplicates += 1;
                        }
                    }
                }
                a.partial.insert(block, p);
                self.complete_if_enough(block);
            }
            Outcome::Rejected => {
                a.buffered = a.buffered.saturating_sub(bytes);
                // A forged or corrupted symbol: throw the block away and collect it again.
                self.stats.blocks_rejected += 1;
                a.state[block as usize] = BlockState::Missing;
                self.drop_late(block);
            }
            Outcome::Verified { data, decoded } => {
                a.buffered = a.buffered.saturating_sub(bytes);
                if decoded {
                    self.stats.blocks_decoded += 1;
                }
                self.drop_late(block);
                let offset = self
                    .active
                    .as_ref()
                    .map_or(0, |a| a.manifest.block_offset(block));
                self.mark_done(block);
                self.events.push_back(ReceiverEvent::BlockVerified {
                    block,
                    offset,
                    data,
                });
                self.check_complete();
            }
        }
    }

    fn mark_done(&mut self, block: u32) {
        if let Some(a) = self.active.as_mut() {
            if let Some(p) = a.partial.remove(&block) {
                a.buffered -= (p.have.len() * usize::from(a.manifest.symbol_size)) as u64;
            }
            if a.state[block as usize] != BlockState::Done {
                a.state[block as usize] = BlockState::Done;
                a.done += 1;
            }
        }
    }

    fn check_complete(&mut self) {
        if let Some(a) = self.active.as_mut()
            && !a.complete
            && a.done == a.manifest.block_count()
        {
            a.complete = true;
            a.pending_nak = None;
            self.events.push_back(ReceiverEvent::Complete {
                file_hash: a.manifest.file_hash,
            });
        }
    }

    /// Offers a whole block obtained another way (resumed from disk or fetched by unicast).
    /// Returns `Ok(true)` if it was new and verified, `Ok(false)` if already held; an error
    /// (and nothing kept) if it does not match the manifest.
    pub fn offer_block(&mut self, block: u32, data: &[u8]) -> Result<bool> {
        let Some(a) = self.active.as_ref() else {
            return Err(Error::invalid("offered block without manifest", block));
        };
        if block >= a.manifest.block_count() {
            return Err(Error::invalid("offered block index", block));
        }
        if data.len() != a.manifest.block_len(block) {
            return Err(Error::invalid(
                "offered block length",
                format!(
                    "{} for block {block}, expected {}",
                    data.len(),
                    a.manifest.block_len(block)
                ),
            ));
        }
        if a.state[block as usize] == BlockState::Done {
            return Ok(false);
        }
        if block_hash(data) != a.manifest.block_hashes[block as usize] {
            self.stats.blocks_rejected += 1;
            return Err(Error::BlockHashMismatch { block });
        }
        self.stats.blocks_offered += 1;
        self.mark_done(block);
        self.check_complete();
        Ok(true)
    }

    /// Reports the whole-file hash the driver computed over the written file. On a match,
    /// queues the completion report to the sender.
    pub fn finish(&mut self, computed: [u8; 32]) -> Result<()> {
        let Some(a) = self.active.as_mut() else {
            return Err(Error::invalid("finish without manifest", hex(&computed)));
        };
        if computed != a.manifest.file_hash {
            return Err(Error::FileHashMismatch {
                expected: hex(&a.manifest.file_hash),
                actual: hex(&computed),
            });
        }
        a.finished = true;
        if let Some(to) = a.sender {
            let mut out = Vec::new();
            Packet::Done {
                session: a.manifest.session_id,
                file_hash: computed,
            }
            .encode(&mut out);
            self.transmit.push_back((to, out));
        }
        Ok(())
    }

    fn handle_poll(&mut self, now: Instant, from: SocketAddr, poll: u32, upto: u32, high_seq: u64) {
        let backoff_us = self.cfg.nak_backoff_ms * 1000;
        let delay = Duration::from_micros(self.rng.random_range(0..=backoff_us));
        let Some(a) = self.active.as_mut() else {
            return;
        };
        if a.sender.is_none() {
            a.sender = Some(from);
        }
        if a.finished {
            // Still polled after reporting: the report may have been lost, so it goes again
            // (one small datagram per poll, only to the sender that polls).
            let mut out = Vec::new();
            Packet::Done {
                session: a.manifest.session_id,
                file_hash: a.manifest.file_hash,
            }
            .encode(&mut out);
            self.transmit.push_back((from, out));
            return;
        }
        if a.complete || a.ended {
            return;
        }
        // Loss seen since the last report, from the sender's sequence numbers.
        a.high_seq = a.high_seq.max(high_seq);
        let expected = a.high_seq.saturating_sub(a.report_seq);
        let loss_permille = if expected == 0 {
            0
        } else {
            let got = a.received_since.min(expected);
            ((expected - got) * 1000 / expected) as u16
        };
        a.report_seq = a.high_seq;
        a.total_expected += expected;
        a.total_received += a.received_since.min(expected);
        a.received_since = 0;
        let total_loss_permille = ((a.total_expected - a.total_received) * 1000)
            .checked_div(a.total_expected)
            .unwrap_or(0);
        // Blocks that went by before this receiver joined are fetched by unicast, and so is
        // everything for a receiver losing more than the configured share: repair sized for
        // it would cost every other receiver.
        // Without a unicast source everything missing is asked for, from the first block
        // (even one that went by before this receiver joined, or before its manifest came).
        let fallback = self.cfg.unicast_fallback;
        let join = match a.join_block {
            _ if !fallback => 0,
            Some(j) => j,
            None => return,
        };
        if fallback && total_loss_permille > u64::from(self.cfg.nak_max_loss_permille) {
            self.stats.naks_withheld += 1;
            a.pending_nak = None;
            return;
        }
        // Falling behind is reported at once, not after the NAK delay: it is news for the
        // sender's rate, not a repair request other receivers could suppress. (A receiver
        // that withholds its NAKs above has left the session's repair to the others and
        // does not steer its rate either.)
        let dropped = self
            .socket_drops
            .map_or(0, |(total, reported)| total - reported);
        let backlog = self.cfg.backlog_report_blocks;
        if (dropped > 0 || (backlog > 0 && a.jobs_out >= backlog))
            && let Some(to) = a.sender
        {
            let mut out = Vec::new();
            Packet::Load {
                session: a.manifest.session_id,
                poll,
                jobs: a.jobs_out,
                dropped: u32::try_from(dropped).unwrap_or(u32::MAX),
            }
            .encode(&mut out);
            self.transmit.push_back((to, out));
            self.stats.load_reports += 1;
            if let Some((total, reported)) = self.socket_drops.as_mut() {
                *reported = *total;
            }
        }
        let max_entries =
            (usize::from(a.manifest.symbol_size) / 8).clamp(16, crate::packet::MAX_ENTRIES);
        let mut entries = Vec::new();
        for b in join..upto.min(a.manifest.block_count()) {
            if entries.len() >= max_entries {
                break;
            }
            let have = match a.state[b as usize] {
                // A block whose job is out holds at least K symbols already.
                BlockState::Done | BlockState::Working => continue,
                BlockState::Missing => 0,
                BlockState::Partial => a
                    .partial
                    .get(&b)
                    .map_or(0, |p| p.sources + p.repairs.len() as u32),
            };
            let k = a.manifest.symbols_in_block(b);
            entries.push(BlockCount {
                block: b,
                count: k.saturating_sub(have).max(1),
            });
        }
        // A newer poll replaces a NAK not yet sent, but never postpones it.
        let due = a
            .pending_nak
            .as_ref()
            .map_or(now + delay, |p| p.due.min(now + delay));
        a.pending_nak = if entries.is_empty() {
            None
        } else {
            Some(PendingNak {
                poll,
                due,
                entries,
                loss_permille,
            })
        };
    }

    fn handle_ncf(&mut self, poll: u32, confirmed: &[BlockCount]) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let Some(p) = a.pending_nak.as_mut() else {
            return;
        };
        if p.poll != poll {
            return;
        }
        let planned: HashMap<u32, u32> = confirmed.iter().map(|e| (e.block, e.count)).collect();
        p.entries
            .retain(|e| planned.get(&e.block).is_none_or(|c| *c < e.count));
        if p.entries.is_empty() {
            a.pending_nak = None;
            self.stats.naks_suppressed += 1;
        }
    }
}
