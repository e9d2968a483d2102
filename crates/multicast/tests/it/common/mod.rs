//! Helpers shared by the multicast integration tests (each test file uses a part).
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket as StdUdp};
use std::path::Path;
use std::time::{Duration, Instant};

use outpost_multicast::driver::{self, ReceiveOptions, ReceiveOutcome, SocketConfig};
use outpost_multicast::files::{self, Fetcher, FileSink};
use outpost_multicast::packet::Packet;
use outpost_multicast::{
    Manifest, Receiver, ReceiverConfig, Sender, SenderConfig, SenderStats, SigningKey,
};
use raptorq::{ObjectTransmissionInformation, SourceBlockEncoder};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// A group on 127.0.0.1 with a port free right now: joined on 127.0.0.1, sent with
/// IP_MULTICAST_IF 127.0.0.1, TTL 1, looped back to local receivers.
pub fn loopback_config(group_last: u8) -> SocketConfig {
    // A port that is free right now on loopback.
    let port = StdUdp::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = SocketConfig::default();
    cfg.group = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(239, 255, 61, group_last)), port);
    cfg.iface_v4 = Ipv4Addr::LOCALHOST;
    cfg.ttl = 1;
    cfg.loopback = true;
    cfg.recv_buffer = 4 << 20;
    cfg
}

/// The address test datagrams come from.
pub fn from() -> SocketAddr {
    "127.0.0.1:40000".parse().unwrap()
}

/// An encoded data packet.
pub fn data_packet(session: u64, seq: u64, block: u32, esi: u32, symbol: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    Packet::Data {
        session,
        seq,
        block,
        esi,
        symbol,
    }
    .encode(&mut out);
    out
}

/// What a receiver task ends with: the outcome, the file it wrote, and its directory (kept
/// alive until the test looks at the file).
pub type Received = (ReceiveOutcome, Vec<u8>, tempfile::TempDir);

/// Starts `n` receivers on `sc` with [`spawn_receiver`], none fetching by unicast: receiver
/// `i` has seed `i` and `tweak` applied to its configuration; receiver `lossy` drops 5% of
/// what arrives (seeded by `loss_seed`), so repair is exercised.
pub fn spawn_receivers(
    sc: &SocketConfig,
    n: u64,
    lossy: u64,
    loss_seed: u64,
    sender_key: [u8; 32],
    tweak: impl Fn(&mut ReceiverConfig),
) -> Vec<JoinHandle<Received>> {
    (0..n)
        .map(|i| {
            let g = driver::group_socket(sc).unwrap();
            let c = driver::control_socket(sc).unwrap();
            let mut rcfg = ReceiverConfig::default();
            rcfg.seed = i;
            tweak(&mut rcfg);
            let opts = if i == lossy {
                ReceiveOptions::with_loss(0.05, loss_seed)
            } else {
                ReceiveOptions::default()
            };
            spawn_receiver(g, c, rcfg, sender_key, opts, Box::new(files::NoFetcher))
        })
        .collect()
}

/// Runs a receiver with a [`FileSink`] on the given group and control sockets, in a task
/// that must finish within 30 s.
pub fn spawn_receiver(
    group: UdpSocket,
    control: UdpSocket,
    rcfg: ReceiverConfig,
    sender_key: [u8; 32],
    opts: ReceiveOptions,
    mut fetcher: Box<dyn Fetcher + Send>,
) -> JoinHandle<Received> {
    tokio::spawn(async move {
        let out = tempfile::tempdir().unwrap();
        let mut rx = Receiver::new(rcfg, &sender_key).unwrap();
        let mut sink = FileSink::new(out.path()).unwrap();
        let mut with_manifest = 0;
        let res = tokio::time::timeout(
            Duration::from_secs(30),
            driver::run_receiver(
                &group,
                &control,
                &mut rx,
                &mut sink,
                fetcher.as_mut(),
                &opts,
                |r| with_manifest += usize::from(r.manifest().is_some()),
            ),
        )
        .await
        .expect("receiver finished in time")
        .expect("receiver ok");
        // Progress is reported when the session starts and at its end, however short.
        assert!(
            with_manifest >= 2,
            "progress with a manifest {with_manifest} times"
        );
        let written = std::fs::read(sink.final_path()).unwrap();
        (res, written, out)
    })
}

/// Sends the file at `src` as session `session` on `sock` to `group`, with `scfg`; must
/// finish within 30 s.
pub async fn send_file(
    sock: &UdpSocket,
    group: SocketAddr,
    key: &SigningKey,
    src: &Path,
    session: u64,
    scfg: SenderConfig,
) -> SenderStats {
    let manifest = files::manifest_for_file(
        src,
        session,
        "update.bin",
        scfg.symbol_size,
        scfg.block_symbols,
    )
    .unwrap();
    let signed = manifest.sign(key.key_pair());
    let source = files::FileSource::open(src).unwrap();
    let mut sender =
        Sender::new(scfg, manifest, &signed, Box::new(source), Instant::now()).unwrap();
    tokio::time::timeout(
        Duration::from_secs(30),
        driver::run_sender(sock, group, &mut sender, |_, _| {}),
    )
    .await
    .expect("sender finished in time")
    .expect("sender ok")
}

/// A file of `len` bytes that differs with `seed`.
pub fn file(len: usize, seed: u32) -> Vec<u8> {
    outpost_testkit::payload(u64::from(seed), len)
}

/// Source symbol `esi` of `block` for symbols of `t` bytes, `k` per block (zero-padded past
/// the end of the file).
pub fn symbol(data: &[u8], t: u16, k: u32, block: u32, esi: u32) -> Vec<u8> {
    let t = usize::from(t);
    let start = (block * k + esi) as usize * t;
    let mut s = vec![0u8; t];
    if start < data.len() {
        let end = (start + t).min(data.len());
        s[..end - start].copy_from_slice(&data[start..end]);
    }
    s
}

/// Repair symbol `n` (ESI `k + n`) of `block`: its symbol id and bytes.
pub fn repair(data: &[u8], m: &Manifest, t: u16, k: u32, block: u32, n: u32) -> (u32, Vec<u8>) {
    let off = m.block_offset(block) as usize;
    let mut buf = data[off..off + m.block_len(block)].to_vec();
    buf.resize((k * u32::from(t)) as usize, 0);
    let oti = ObjectTransmissionInformation::new(0, t, 0, 1, 1);
    let p = SourceBlockEncoder::new(0, &oti, &buf)
        .repair_packets(n, 1)
        .pop()
        .unwrap();
    (p.payload_id().encoding_symbol_id(), p.data().to_vec())
}

/// A sender of a `blocks`-block file in `t`-byte symbols, `k` per block, that polls after
/// every block, with `tune` applied to its settings; and the instant it started.
pub fn small_sender(
    session: u64,
    t: u16,
    k: u32,
    blocks: u32,
    tune: impl FnOnce(&mut SenderConfig),
) -> (Sender, Instant) {
    let key = SigningKey::from_seed(&[8u8; 32]).unwrap();
    let data = file((blocks * k * u32::from(t)) as usize, 3);
    let m = Manifest::for_bytes(session, "s.bin", &data, t, k).unwrap();
    let signed = m.sign(key.key_pair());
    let mut cfg = SenderConfig::default();
    cfg.symbol_size = t;
    cfg.block_symbols = k;
    cfg.poll_every_blocks = 1;
    tune(&mut cfg);
    let now = Instant::now();
    let sender = Sender::new(cfg, m, &signed, Box::new(data), now).unwrap();
    (sender, now)
}

/// Sender settings for transfers over loopback in test builds: 400 Mbit/s, generous poll
/// spacing (test builds are slow and the machine is shared), small blocks (RaptorQ stays
/// quick unoptimised).
pub fn test_sender_config() -> SenderConfig {
    let mut scfg = SenderConfig::default();
    scfg.max_rate_bps = 400_000_000;
    scfg.poll_interval_ms = 100;
    scfg.block_symbols = 64;
    scfg
}
