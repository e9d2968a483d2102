//! The sans-IO receiver state machine: the session's manifest, datagrams in, NAKs and
//! completion reports out. Blocks are completed in `blocks` (the work itself, FEC
//! decoding and the hash check, is a [`BlockJob`] the driver may run on another thread);
//! the answers to the sender's polls and confirmations in `repair`.

mod blocks;
mod job;
mod repair;

use job::Outcome;
pub use job::{BlockJob, BlockResult};

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use raptorq::{EncodingPacket, PayloadId};

use crate::config::ReceiverConfig;
use crate::error::{MulticastError, Result};
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
            return Err(MulticastError::config(
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
    pub fn poll_timeout(&self) -> Option<Instant> {
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
}
