//! A deterministic in-memory network: one sender, many receivers, a virtual clock and a
//! seeded per-receiver link model (loss, loss bursts, reordering, duplication, latency,
//! partitions).
//!
//! The same seed gives the same run, packet for packet.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::{ReceiverConfig, SenderConfig};
use crate::error::Result;
use crate::manifest::{Manifest, PUBLIC_KEY_LEN, SigningKey, block_hash, sha256};
use crate::receiver::{BlockJob, Receiver, ReceiverEvent, ReceiverStats};
use crate::sender::{EncodeJob, Sender, SenderStats};

/// Behaviour of one link (sender → receiver, and back).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LinkModel {
    /// Probability a packet is lost outside a burst.
    pub loss: f64,
    /// Probability a burst of losses starts at a packet.
    pub burst_start: f64,
    /// Packets lost in a row once a burst starts (at least 1).
    pub burst_len: u32,
    /// Probability a packet is held back (reordered).
    pub reorder: f64,
    /// Extra delay of a held-back packet.
    pub reorder_delay: Duration,
    /// Probability a packet is delivered twice.
    pub duplicate: f64,
    /// One-way latency.
    pub latency: Duration,
    /// Partitions: time windows `[from, to)` (from the start of the run) in which the
    /// link carries nothing, either way.
    pub partitions: Vec<(Duration, Duration)>,
}

impl Default for LinkModel {
    fn default() -> Self {
        LinkModel {
            loss: 0.0,
            burst_start: 0.0,
            burst_len: 1,
            reorder: 0.0,
            reorder_delay: Duration::from_micros(500),
            duplicate: 0.0,
            latency: Duration::from_micros(200),
            partitions: Vec::new(),
        }
    }
}

impl LinkModel {
    /// A lossy link: independent loss `loss`, bursts, a little reordering and duplication.
    pub fn lossy(loss: f64) -> LinkModel {
        LinkModel {
            loss,
            burst_start: loss / 20.0,
            burst_len: 8,
            reorder: 0.02,
            duplicate: 0.01,
            ..LinkModel::default()
        }
    }
}

struct LinkState {
    model: LinkModel,
    burst_left: u32,
}

impl LinkState {
    /// Delivery delays for one packet sent at `now` (empty: lost).
    fn fate(&mut self, now: Duration, rng: &mut ChaCha8Rng) -> Vec<Duration> {
        if self
            .model
            .partitions
            .iter()
            .any(|(from, to)| (*from..*to).contains(&now))
        {
            return Vec::new();
        }
        if self.burst_left > 0 {
            self.burst_left -= 1;
            return Vec::new();
        }
        if self.model.burst_start > 0.0 && rng.random_bool(self.model.burst_start.min(1.0)) {
            self.burst_left = self.model.burst_len.saturating_sub(1);
            return Vec::new();
        }
        if self.model.loss > 0.0 && rng.random_bool(self.model.loss.min(1.0)) {
            return Vec::new();
        }
        let mut d = self.model.latency;
        if self.model.reorder > 0.0 && rng.random_bool(self.model.reorder.min(1.0)) {
            d += self.model.reorder_delay;
        }
        let mut v = vec![d];
        if self.model.duplicate > 0.0 && rng.random_bool(self.model.duplicate.min(1.0)) {
            v.push(d + Duration::from_micros(50));
        }
        v
    }
}

/// Settings of one simulated run.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SimConfig {
    /// Seed of every random choice in the run.
    pub seed: u64,
    /// Sender settings.
    pub sender: SenderConfig,
    /// Receiver settings (the seed is varied per receiver).
    pub receiver: ReceiverConfig,
    /// One link model per receiver.
    pub links: Vec<LinkModel>,
    /// Receivers that join late: (receiver index, virtual time it starts listening).
    pub late: Vec<(usize, Duration)>,
    /// Receivers that crash once: (receiver index, blocks verified when it crashes). It
    /// restarts at once, resuming from the blocks it had written.
    pub crash: Vec<(usize, u32)>,
    /// The run gives up after this much virtual time.
    pub max_time: Duration,
    /// When the sender or receiver settings hand their compute work out as jobs
    /// (`offload_encoding`, `offload_block_work`), each job's result comes back this much
    /// virtual time after it was handed out; datagrams keep arriving meanwhile.
    pub job_delay: Duration,
    /// Slow receivers: (receiver index, virtual time one block job takes). Their jobs run
    /// one at a time, as on a device whose CPU checks one block after another, so a rate
    /// above what it can check builds a backlog (`offload_block_work` only).
    pub slow: Vec<(usize, Duration)>,
}

impl SimConfig {
    /// `receivers` receivers all behind `link`.
    pub fn new(seed: u64, receivers: usize, link: LinkModel) -> SimConfig {
        let sender = SenderConfig {
            symbol_size: 256,
            block_symbols: 64,
            max_rate_bps: 200_000_000,
            ..SenderConfig::default()
        };
        SimConfig {
            seed,
            sender,
            receiver: ReceiverConfig::default(),
            links: vec![link; receivers],
            late: Vec::new(),
            crash: Vec::new(),
            max_time: Duration::from_secs(120),
            job_delay: Duration::from_micros(500),
            slow: Vec::new(),
        }
    }
}

/// What one receiver ended with.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReceiverOutcome {
    /// The file as written (blocks at their offsets).
    pub data: Vec<u8>,
    /// Whether the receiver finished (all blocks, whole-file hash checked).
    pub finished: bool,
    /// Blocks fetched by unicast.
    pub fetched_blocks: u64,
    /// Bytes written by verified blocks (multicast, fetched and resumed).
    pub bytes_written: u64,
    /// The receiver's counters (of its last incarnation, after a crash).
    pub stats: ReceiverStats,
}

/// What a run ended with.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SimOutcome {
    /// Per receiver.
    pub receivers: Vec<ReceiverOutcome>,
    /// Sender counters.
    pub sender: SenderStats,
    /// Whether the sender ended its session.
    pub sender_finished: bool,
    /// Virtual time the run took.
    pub elapsed: Duration,
}

/// One simulated receiver: its state machine (none before it starts listening), its link,
/// its "disk" and what it wrote there.
struct Node {
    rx: Option<Receiver>,
    link: LinkState,
    disk: Vec<u8>,
    fetched: u64,
    written: u64,
    start: Duration,
    crash_at: Option<u32>,
    rcfg: ReceiverConfig,
    jobs: Vec<(Duration, BlockJob)>,
    /// Time per job of a slow receiver, and when its worker is free again.
    job_time: Option<Duration>,
    worker_free: Duration,
    /// Finished and no longer read, as a driver stops once the session no longer asks for
    /// it ([`Receiver::session_alive`]).
    left: bool,
}

impl Node {
    /// Receiver `i` of `cfg` behind `link`, with an empty disk of `len` bytes: its own
    /// seed, and its start, crash point and job time from `cfg`.
    fn new(cfg: &SimConfig, i: usize, link: &LinkModel, len: usize) -> Node {
        let mut rcfg = cfg.receiver.clone();
        rcfg.seed = cfg.seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let start = cfg
            .late
            .iter()
            .find(|(r, _)| *r == i)
            .map_or(Duration::ZERO, |(_, t)| *t);
        Node {
            rx: None,
            link: LinkState {
                model: link.clone(),
                burst_left: 0,
            },
            disk: vec![0; len],
            fetched: 0,
            written: 0,
            start,
            crash_at: cfg.crash.iter().find(|(r, _)| *r == i).map(|(_, b)| *b),
            rcfg,
            jobs: Vec::new(),
            job_time: cfg.slow.iter().find(|(r, _)| *r == i).map(|(_, d)| *d),
            worker_free: Duration::ZERO,
            left: false,
        }
    }

    /// Hands out the receiver's new block jobs, each due `job_delay` from `now`, or, on a
    /// slow receiver, when its one worker has got through the jobs before it.
    fn queue_jobs(&mut self, now: Duration, job_delay: Duration) {
        let Some(rx) = self.rx.as_mut() else { return };
        while let Some(job) = rx.poll_job() {
            let due = match self.job_time {
                Some(d) => {
                    self.worker_free = self.worker_free.max(now) + d;
                    self.worker_free
                }
                None => now + job_delay,
            };
            self.jobs.push((due, job));
        }
    }

    /// Answers the receiver's events as a driver does: offers the blocks already on disk
    /// once the manifest is in, writes verified blocks, fetches missing ones from `data`
    /// (when the receivers have a unicast source), and checks the whole file at the end.
    /// Returns whether the receiver reached its crash point.
    fn answer_events(&mut self, cfg: &SimConfig, manifest: &Manifest, data: &[u8]) -> Result<bool> {
        let Some(rx) = self.rx.as_mut() else {
            return Ok(false);
        };
        while let Some(ev) = rx.poll_event() {
            match ev {
                ReceiverEvent::ManifestAccepted(m) => offer_stored(rx, &m, &self.disk)?,
                ReceiverEvent::BlockVerified { offset, data, .. } => {
                    let off = offset as usize;
                    self.disk[off..off + data.len()].copy_from_slice(&data);
                    self.written += data.len() as u64;
                    rx.recycle(data);
                    if self.crash_at.is_some_and(|c| rx.blocks_done() >= c) {
                        return Ok(true);
                    }
                }
                // Receivers configured without a unicast source
                // (`unicast_fallback = false`) have no fetcher to answer this.
                ReceiverEvent::FetchNeeded { blocks } if cfg.receiver.unicast_fallback => {
                    for b in blocks {
                        let off = manifest.block_offset(b) as usize;
                        let len = manifest.block_len(b);
                        let block = &data[off..off + len];
                        if rx.offer_block(b, block)? {
                            self.disk[off..off + len].copy_from_slice(block);
                            self.fetched += 1;
                            self.written += len as u64;
                        }
                    }
                }
                ReceiverEvent::FetchNeeded { .. } => {}
                ReceiverEvent::Complete { .. } => {
                    let h = sha256(&self.disk);
                    rx.finish(h)?;
                }
            }
        }
        Ok(false)
    }

    /// A crash: all in-memory state is lost (the receiver, its jobs), the disk survives and
    /// a new receiver starts at once.
    fn crash_and_restart(&mut self, sender_key: &[u8]) -> Result<()> {
        self.crash_at = None;
        self.jobs.clear();
        self.worker_free = Duration::ZERO;
        self.rx = Some(Receiver::new(self.rcfg.clone(), sender_key)?);
        Ok(())
    }

    /// What the receiver ended with.
    fn outcome(self) -> ReceiverOutcome {
        let (finished, stats) = self
            .rx
            .as_ref()
            .map_or((false, ReceiverStats::default()), |r| {
                (r.is_finished(), r.stats().clone())
            });
        ReceiverOutcome {
            data: self.disk,
            finished,
            fetched_blocks: self.fetched,
            bytes_written: self.written,
            stats,
        }
    }
}

/// Resuming: offers `rx` every block of `m` already on `disk` (whose hash matches).
fn offer_stored(rx: &mut Receiver, m: &Manifest, disk: &[u8]) -> Result<()> {
    for b in 0..m.block_count() {
        let off = m.block_offset(b) as usize;
        let len = m.block_len(b);
        let stored = &disk[off..off + len];
        if block_hash(stored) == m.block_hashes[b as usize] {
            rx.offer_block(b, stored)?;
        }
    }
    Ok(())
}

/// `Ev::to` and `Ev::from` of a datagram to or from the sender (otherwise a node's index).
const SENDER: usize = usize::MAX;

/// The sender's address, as receivers see it.
const SENDER_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15001);

/// Receiver `i`'s address, as the sender sees it.
fn receiver_addr(i: usize) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(127, 1, (i >> 8) as u8, i as u8)),
        15001,
    )
}

/// One delivery of a datagram: when, which datagram, to and from whom. Ordered by time,
/// then by the order the datagrams were sent.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Ev {
    at: Duration,
    seq: u64,
    to: usize,
    from: usize,
}

/// The datagrams in flight, and the run's random choices of their fate.
struct Network {
    rng: ChaCha8Rng,
    queue: BinaryHeap<Reverse<Ev>>,
    /// Payload of each in-flight datagram, with the number of deliveries still queued.
    payloads: HashMap<u64, (Arc<[u8]>, usize)>,
    next_seq: u64,
}

impl Network {
    /// A number for the next datagram sent.
    fn next_id(&mut self) -> u64 {
        let id = self.next_seq;
        self.next_seq += 1;
        id
    }

    /// The fate of a datagram put on `link` at `now` (see [`LinkState::fate`]).
    fn fate(&mut self, link: &mut LinkState, now: Duration) -> Vec<Duration> {
        link.fate(now, &mut self.rng)
    }

    /// Queues a delivery of datagram `id` for each delay of its `fate`, from `now`.
    fn queue_deliveries(
        &mut self,
        fate: Vec<Duration>,
        now: Duration,
        id: u64,
        to: usize,
        from: usize,
    ) {
        for d in fate {
            self.queue.push(Reverse(Ev {
                at: now + d,
                seq: id,
                to,
                from,
            }));
        }
    }

    /// Keeps the `payload` of datagram `id` until its `copies` deliveries are made.
    fn hold(&mut self, id: u64, payload: Arc<[u8]>, copies: usize) {
        if copies > 0 {
            self.payloads.insert(id, (payload, copies));
        }
    }

    /// The next delivery due at `now`, with its payload.
    fn pop_due(&mut self, now: Duration) -> Option<(Ev, Arc<[u8]>)> {
        while let Some(Reverse(ev)) = self.queue.peek() {
            if ev.at > now {
                return None;
            }
            let Reverse(ev) = self.queue.pop()?;
            let Some(entry) = self.payloads.get_mut(&ev.seq) else {
                continue;
            };
            let bytes = entry.0.clone();
            entry.1 -= 1;
            if entry.1 == 0 {
                self.payloads.remove(&ev.seq);
            }
            return Some((ev, bytes));
        }
        None
    }

    /// When the next delivery is due.
    fn next_at(&self) -> Option<Duration> {
        self.queue.peek().map(|Reverse(e)| e.at)
    }
}

/// Runs the jobs of `jobs` due at `now` (in the order they were handed out) through
/// `complete`, keeping the others in order.
fn complete_due<J>(jobs: &mut Vec<(Duration, J)>, now: Duration, mut complete: impl FnMut(J)) {
    for (due, job) in std::mem::take(jobs) {
        if due <= now {
            complete(job);
        } else {
            jobs.push((due, job));
        }
    }
}

/// One run: the sender, the receivers, the network between them and the virtual clock.
struct Sim<'a> {
    cfg: &'a SimConfig,
    data: &'a [u8],
    manifest: Manifest,
    sender_key: [u8; PUBLIC_KEY_LEN],
    base: Instant,
    now: Duration,
    sender: Sender,
    sender_jobs: Vec<(Duration, EncodeJob)>,
    nodes: Vec<Node>,
    net: Network,
    buf: Vec<u8>,
}

/// Runs one session of `data` from one sender to every receiver in `cfg.links`.
pub fn run(cfg: &SimConfig, data: &[u8]) -> Result<SimOutcome> {
    let mut sim = Sim::new(cfg, data)?;
    loop {
        let t = sim.base + sim.now;
        sim.start_receivers()?;
        sim.complete_due_jobs();
        sim.deliver_due(t);
        sim.queue_receiver_jobs();
        sim.fire_receiver_timers(t);
        sim.send_from_sender(t)?;
        sim.serve_receivers()?;
        sim.let_finished_receivers_leave(t);
        if sim.is_over() {
            break;
        }
        sim.advance_clock();
    }
    Ok(sim.outcome())
}

impl<'a> Sim<'a> {
    /// The session's signed manifest and its sender, and one node per link, none of them
    /// listening yet.
    fn new(cfg: &'a SimConfig, data: &'a [u8]) -> Result<Sim<'a>> {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let key = SigningKey::from_seed(&sha256(&cfg.seed.to_be_bytes()))?;
        let session = rng.random::<u64>();
        let manifest = Manifest::for_bytes(
            session,
            "object.bin",
            data,
            cfg.sender.symbol_size,
            cfg.sender.block_symbols,
        )?;
        let signed = manifest.sign(key.key_pair());
        let base = Instant::now();
        let source: Arc<[u8]> = Arc::from(data);
        let sender = Sender::new(
            cfg.sender.clone(),
            manifest.clone(),
            &signed,
            Box::new(source),
            base,
        )?;
        let mut nodes = Vec::new();
        for (i, link) in cfg.links.iter().enumerate() {
            nodes.push(Node::new(cfg, i, link, data.len()));
        }
        Ok(Sim {
            cfg,
            data,
            manifest,
            sender_key: key.public_key(),
            base,
            now: Duration::ZERO,
            sender,
            sender_jobs: Vec::new(),
            nodes,
            net: Network {
                rng,
                queue: BinaryHeap::new(),
                payloads: HashMap::new(),
                next_seq: 0,
            },
            buf: Vec::new(),
        })
    }

    /// Starts the receivers whose time has come.
    fn start_receivers(&mut self) -> Result<()> {
        for n in self.nodes.iter_mut() {
            if n.rx.is_none() && self.now >= n.start {
                n.rx = Some(Receiver::new(n.rcfg.clone(), &self.sender_key)?);
            }
        }
        Ok(())
    }

    /// Hands back the offloaded work whose result is due: the sender's, then each
    /// receiver's.
    fn complete_due_jobs(&mut self) {
        let sender = &mut self.sender;
        complete_due(&mut self.sender_jobs, self.now, |job| {
            sender.complete_job(job.run());
        });
        for n in self.nodes.iter_mut() {
            let Some(rx) = n.rx.as_mut() else { continue };
            complete_due(&mut n.jobs, self.now, |job| rx.complete_job(job.run()));
        }
    }

    /// Delivers every datagram due now (at `t`): to the sender, or to a receiver that still
    /// listens.
    fn deliver_due(&mut self, t: Instant) {
        while let Some((ev, bytes)) = self.net.pop_due(self.now) {
            if ev.to == SENDER {
                self.sender
                    .handle_datagram(t, receiver_addr(ev.from), &bytes);
            } else if !self.nodes[ev.to].left
                && let Some(rx) = self.nodes[ev.to].rx.as_mut()
            {
                // Even receivers read as the Linux driver does (symbols straight into their
                // block), odd ones whole datagrams: both paths run in every simulation.
                if ev.to % 2 == 0 {
                    deliver_scattered(rx, t, SENDER_ADDR, &bytes);
                } else {
                    rx.handle_datagram(t, SENDER_ADDR, &bytes);
                }
            }
        }
    }

    /// Hands out the receivers' new block jobs.
    fn queue_receiver_jobs(&mut self) {
        for n in self.nodes.iter_mut() {
            n.queue_jobs(self.now, self.cfg.job_delay);
        }
    }

    /// Fires the receivers' timers that are due at `t`.
    fn fire_receiver_timers(&mut self, t: Instant) {
        for n in self.nodes.iter_mut() {
            if let Some(rx) = n.rx.as_mut()
                && rx.poll_timeout().is_some_and(|d| d <= t)
            {
                rx.handle_timeout(t);
            }
        }
    }

    /// Sends what the sender may send at `t`, each datagram to every listening receiver
    /// over its link; hands out its encoder jobs and drops its events.
    fn send_from_sender(&mut self, t: Instant) -> Result<()> {
        while self.sender.poll_transmit(t, &mut self.buf)? {
            // The payload before the fates, a reply's after its fate: the heap's layout, and
            // with it the time a run takes (page faults), follows the order of allocations.
            let payload: Arc<[u8]> = Arc::from(self.buf.as_slice());
            let id = self.net.next_id();
            let mut copies = 0;
            for (i, n) in self.nodes.iter_mut().enumerate() {
                if n.rx.is_some() {
                    let fate = self.net.fate(&mut n.link, self.now);
                    copies += fate.len();
                    self.net.queue_deliveries(fate, self.now, id, i, SENDER);
                }
            }
            self.net.hold(id, payload, copies);
        }
        while let Some(job) = self.sender.poll_job() {
            self.sender_jobs.push((self.now + self.cfg.job_delay, job));
        }
        while self.sender.poll_event().is_some() {}
        Ok(())
    }

    /// Answers each receiver's events and sends its datagrams to the sender over its
    /// link; a receiver that reaches its crash point restarts instead.
    fn serve_receivers(&mut self) -> Result<()> {
        for (i, n) in self.nodes.iter_mut().enumerate() {
            if n.answer_events(self.cfg, &self.manifest, self.data)? {
                n.crash_and_restart(&self.sender_key)?;
                continue;
            }
            let Some(rx) = n.rx.as_mut() else { continue };
            while let Some((_, bytes)) = rx.poll_transmit() {
                let id = self.net.next_id();
                let fate = self.net.fate(&mut n.link, self.now);
                if !fate.is_empty() {
                    self.net.hold(id, Arc::from(bytes.as_slice()), fate.len());
                }
                self.net.queue_deliveries(fate, self.now, id, SENDER, i);
            }
        }
        Ok(())
    }

    /// A finished receiver whose session no longer asks for it (at `t`) is left, as its
    /// driver returns then: a `Done` it sent and lost is not sent again.
    fn let_finished_receivers_leave(&mut self, t: Instant) {
        for n in self.nodes.iter_mut() {
            if let Some(rx) = n.rx.as_ref()
                && rx.is_finished()
                && !rx.session_alive(t)
            {
                n.left = true;
            }
        }
    }

    /// Whether the run is over: the sender and every receiver finished, or time is up.
    fn is_over(&self) -> bool {
        let all_done = self
            .nodes
            .iter()
            .all(|n| n.rx.as_ref().is_some_and(|r| r.is_finished()));
        (self.sender.is_finished() && all_done) || self.now >= self.cfg.max_time
    }

    /// Advances the virtual clock to the next thing that happens: a delivery, a timer, a
    /// job's result or a receiver's start (at most to the end of the run).
    fn advance_clock(&mut self) {
        let mut next = self.cfg.max_time;
        if let Some(at) = self.net.next_at() {
            next = next.min(at);
        }
        if let Some(s) = self.sender.poll_timeout() {
            next = next.min(s.saturating_duration_since(self.base));
        }
        let job_dues = self.sender_jobs.iter().map(|(d, _)| *d);
        let node_dues = self
            .nodes
            .iter()
            .flat_map(|n| n.jobs.iter().map(|(d, _)| *d));
        for due in job_dues.chain(node_dues) {
            next = next.min(due);
        }
        for n in &self.nodes {
            match &n.rx {
                Some(rx) => {
                    if let Some(d) = rx.poll_timeout() {
                        next = next.min(d.saturating_duration_since(self.base));
                    }
                }
                None => next = next.min(n.start),
            }
        }
        // Always move forward a little so a timer that keeps firing cannot stall the run.
        self.now = next.max(self.now + Duration::from_micros(1));
    }

    /// What the run ended with.
    fn outcome(self) -> SimOutcome {
        SimOutcome {
            receivers: self.nodes.into_iter().map(Node::outcome).collect(),
            sender: self.sender.stats().clone(),
            sender_finished: self.sender.is_finished(),
            elapsed: self.now,
        }
    }
}

/// Hands `datagram` to `rx` the way a driver with scatter IO reads it: when the receiver
/// offers a [`Receiver::symbol_slot`], the first
/// [`DATA_HEADER_LEN`](crate::packet::DATA_HEADER_LEN) bytes go to a header buffer, the
/// next ones into the slot, the rest to a tail; otherwise the datagram is handed over whole.
pub fn deliver_scattered(rx: &mut Receiver, now: Instant, from: SocketAddr, datagram: &[u8]) {
    let Some(slot) = rx.symbol_slot() else {
        rx.handle_datagram(now, from, datagram);
        return;
    };
    let head = datagram.len().min(crate::packet::DATA_HEADER_LEN);
    let rest = &datagram[head..];
    let in_slot = rest.len().min(slot.len());
    slot[..in_slot].copy_from_slice(&rest[..in_slot]);
    rx.handle_scattered(
        now,
        from,
        &datagram[..head],
        &rest[in_slot..],
        datagram.len(),
    );
}
