//! A deterministic in-memory network: one sender, many receivers, a virtual clock and a
//! seeded per-receiver link model (loss, loss bursts, reordering, duplication, latency,
//! partitions).
//!
//! The same seed gives the same run, packet for packet.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::{ReceiverConfig, SenderConfig};
use crate::error::Result;
use crate::manifest::{Manifest, SigningKey, block_hash, sha256};
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

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Ev {
    at: Duration,
    seq: u64,
    to: usize, // usize::MAX: the sender
    from: usize,
}

/// Runs one session of `data` from one sender to every receiver in `cfg.links`.
pub fn run(cfg: &SimConfig, data: &[u8]) -> Result<SimOutcome> {
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
    let mut sender = Sender::new(
        cfg.sender.clone(),
        manifest.clone(),
        &signed,
        Box::new(source.clone()),
        base,
    )?;
    let sender_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15001);
    let addr_of = |i: usize| {
        SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(127, 1, (i >> 8) as u8, i as u8)),
            15001,
        )
    };
    let mut nodes: Vec<Node> = Vec::new();
    for (i, link) in cfg.links.iter().enumerate() {
        let mut rcfg = cfg.receiver.clone();
        rcfg.seed = cfg.seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let start = cfg
            .late
            .iter()
            .find(|(r, _)| *r == i)
            .map_or(Duration::ZERO, |(_, t)| *t);
        nodes.push(Node {
            rx: None,
            link: LinkState {
                model: link.clone(),
                burst_left: 0,
            },
            disk: vec![0; data.len()],
            fetched: 0,
            written: 0,
            start,
            crash_at: cfg.crash.iter().find(|(r, _)| *r == i).map(|(_, b)| *b),
            rcfg,
            jobs: Vec::new(),
            job_time: cfg.slow.iter().find(|(r, _)| *r == i).map(|(_, d)| *d),
            worker_free: Duration::ZERO,
            left: false,
        });
    }
    let pk = key.public_key();
    let mut queue: BinaryHeap<Reverse<Ev>> = BinaryHeap::new();
    // Payload of each in-flight datagram, with the number of deliveries still queued.
    let mut payloads: std::collections::HashMap<u64, (Arc<[u8]>, usize)> =
        std::collections::HashMap::new();
    let mut ev_seq = 0u64;
    let mut now = Duration::ZERO;
    let mut buf = Vec::new();
    let mut sender_jobs: Vec<(Duration, EncodeJob)> = Vec::new();
    loop {
        let t = base + now;
        // Start receivers whose time has come.
        for n in nodes.iter_mut() {
            if n.rx.is_none() && now >= n.start {
                n.rx = Some(Receiver::new(n.rcfg.clone(), &pk)?);
            }
        }
        // Offloaded work whose result is due.
        for (due, job) in std::mem::take(&mut sender_jobs) {
            if due <= now {
                sender.complete_job(job.run());
            } else {
                sender_jobs.push((due, job));
            }
        }
        for n in nodes.iter_mut() {
            let Some(rx) = n.rx.as_mut() else { continue };
            for (due, job) in std::mem::take(&mut n.jobs) {
                if due <= now {
                    rx.complete_job(job.run());
                } else {
                    n.jobs.push((due, job));
                }
            }
        }
        // Deliver everything due now.
        while let Some(Reverse(ev)) = queue.peek() {
            if ev.at > now {
                break;
            }
            let Some(Reverse(ev)) = queue.pop() else {
                break;
            };
            let Some(entry) = payloads.get_mut(&ev.seq) else {
                continue;
            };
            let bytes = entry.0.clone();
            entry.1 -= 1;
            if entry.1 == 0 {
                payloads.remove(&ev.seq);
            }
            if ev.to == usize::MAX {
                sender.handle_datagram(t, addr_of(ev.from), &bytes);
            } else if !nodes[ev.to].left
                && let Some(rx) = nodes[ev.to].rx.as_mut()
            {
                // Even receivers read as the Linux driver does (symbols straight into their
                // block), odd ones whole datagrams: both paths run in every simulation.
                if ev.to % 2 == 0 {
                    deliver_scattered(rx, t, sender_addr, &bytes);
                } else {
                    rx.handle_datagram(t, sender_addr, &bytes);
                }
            }
        }
        for n in nodes.iter_mut() {
            if let Some(rx) = n.rx.as_mut() {
                while let Some(job) = rx.poll_job() {
                    let due = match n.job_time {
                        Some(d) => {
                            n.worker_free = n.worker_free.max(now) + d;
                            n.worker_free
                        }
                        None => now + cfg.job_delay,
                    };
                    n.jobs.push((due, job));
                }
            }
        }
        // Timers.
        for n in nodes.iter_mut() {
            if let Some(rx) = n.rx.as_mut()
                && rx.poll_timeout().is_some_and(|d| d <= t)
            {
                rx.handle_timeout(t);
            }
        }
        // Sender output.
        while sender.poll_transmit(t, &mut buf)? {
            let p: Arc<[u8]> = Arc::from(buf.as_slice());
            let id = ev_seq;
            ev_seq += 1;
            let mut copies = 0;
            for (i, n) in nodes.iter_mut().enumerate() {
                if n.rx.is_none() {
                    continue;
                }
                for d in n.link.fate(now, &mut rng) {
                    queue.push(Reverse(Ev {
                        at: now + d,
                        seq: id,
                        to: i,
                        from: usize::MAX,
                    }));
                    copies += 1;
                }
            }
            if copies > 0 {
                payloads.insert(id, (p, copies));
            }
        }
        while let Some(job) = sender.poll_job() {
            sender_jobs.push((now + cfg.job_delay, job));
        }
        while sender.poll_event().is_some() {}
        // Receiver output and events.
        for (i, n) in nodes.iter_mut().enumerate() {
            let Some(rx) = n.rx.as_mut() else { continue };
            let mut crash = false;
            while let Some(ev) = rx.poll_event() {
                match ev {
                    ReceiverEvent::ManifestAccepted(m) => {
                        // Resume: offer every block already on "disk".
                        for b in 0..m.block_count() {
                            let off = m.block_offset(b) as usize;
                            let len = m.block_len(b);
                            let stored = &n.disk[off..off + len];
                            if block_hash(stored) == m.block_hashes[b as usize] {
                                rx.offer_block(b, stored)?;
                            }
                        }
                    }
                    ReceiverEvent::BlockVerified { offset, data, .. } => {
                        let off = offset as usize;
                        n.disk[off..off + data.len()].copy_from_slice(&data);
                        n.written += data.len() as u64;
                        rx.recycle(data);
                        if n.crash_at.is_some_and(|c| rx.blocks_done() >= c) {
                            crash = true;
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
                                n.disk[off..off + len].copy_from_slice(block);
                                n.fetched += 1;
                                n.written += len as u64;
                            }
                        }
                    }
                    ReceiverEvent::FetchNeeded { .. } => {}
                    ReceiverEvent::Complete { .. } => {
                        let h = sha256(&n.disk);
                        rx.finish(h)?;
                    }
                }
                if crash {
                    break;
                }
            }
            if crash {
                // Lose all in-memory state; the disk survives.
                n.crash_at = None;
                n.jobs.clear();
                n.worker_free = Duration::ZERO;
                n.rx = Some(Receiver::new(n.rcfg.clone(), &pk)?);
                continue;
            }
            while let Some((_, bytes)) = rx.poll_transmit() {
                let id = ev_seq;
                ev_seq += 1;
                let fate = n.link.fate(now, &mut rng);
                if !fate.is_empty() {
                    payloads.insert(id, (Arc::from(bytes.as_slice()), fate.len()));
                }
                for d in fate {
                    queue.push(Reverse(Ev {
                        at: now + d,
                        seq: id,
                        to: usize::MAX,
                        from: i,
                    }));
                }
            }
        }
        // A finished receiver whose session no longer asks for it is left, as its driver
        // returns then: a `Done` it sent and lost is not sent again.
        for n in nodes.iter_mut() {
            if let Some(rx) = n.rx.as_ref()
                && rx.is_finished()
                && !rx.session_alive(t)
            {
                n.left = true;
            }
        }
        let all_done = nodes
            .iter()
            .all(|n| n.rx.as_ref().is_some_and(|r| r.is_finished()));
        if (sender.is_finished() && all_done) || now >= cfg.max_time {
            break;
        }
        // Advance the virtual clock to the next thing that happens.
        let mut next = cfg.max_time;
        if let Some(Reverse(e)) = queue.peek() {
            next = next.min(e.at);
        }
        if let Some(s) = sender.poll_timeout() {
            next = next.min(s.saturating_duration_since(base));
        }
        let job_dues = sender_jobs.iter().map(|(d, _)| *d);
        for due in job_dues.chain(nodes.iter().flat_map(|n| n.jobs.iter().map(|(d, _)| *d))) {
            next = next.min(due);
        }
        for n in &nodes {
            match &n.rx {
                Some(rx) => {
                    if let Some(d) = rx.poll_timeout() {
                        next = next.min(d.saturating_duration_since(base));
                    }
                }
                None => next = next.min(n.start),
            }
        }
        // Always move forward a little so a timer that keeps firing cannot stall the run.
        now = next.max(now + Duration::from_micros(1));
    }
    Ok(SimOutcome {
        receivers: nodes
            .into_iter()
            .map(|n| {
                let (finished, stats) =
                    n.rx.as_ref()
                        .map_or((false, ReceiverStats::default()), |r| {
                            (r.is_finished(), r.stats().clone())
                        });
                ReceiverOutcome {
                    data: n.disk,
                    finished,
                    fetched_blocks: n.fetched,
                    bytes_written: n.written,
                    stats,
                }
            })
            .collect(),
        sender: sender.stats().clone(),
        sender_finished: sender.is_finished(),
        elapsed: now,
    })
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
