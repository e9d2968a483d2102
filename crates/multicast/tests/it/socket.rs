//! Real sockets over loopback: one sender, three receivers on this host, multicast joined on
//! 127.0.0.1, sent with IP_MULTICAST_IF 127.0.0.1 and TTL 1, receivers sharing the port.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket as StdUdp};
use std::time::{Duration, Instant};

use outpost_multicast::driver::{self, ReceiveOptions};
use outpost_multicast::files::{self, FileSink, LocalFileFetcher, NoFetcher};
use outpost_multicast::{Receiver, ReceiverConfig, Sender, SenderConfig, SigningKey};

use crate::common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_receivers_over_loopback_multicast() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("update.bin");
    let data = outpost_testkit::payload(1, 3_000_000);
    std::fs::write(&src, &data).unwrap();
    let sock_cfg = common::loopback_config(1);
    let key = SigningKey::from_seed(&[7u8; 32]).unwrap();
    let pk = key.public_key();

    // Receivers first, so they hear the first announcement.
    let mut handles = Vec::new();
    for i in 0..3u64 {
        let g = driver::group_socket(&sock_cfg).unwrap();
        let c = driver::control_socket(&sock_cfg).unwrap();
        assert_eq!(
            c.local_addr().unwrap().ip(),
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        );
        let mut rcfg = ReceiverConfig::default();
        rcfg.seed = i;
        // Receiver 2 loses 5% of what arrives (seeded), to exercise repair.
        let opts = if i == 2 {
            ReceiveOptions::with_loss(0.05, 99)
        } else {
            ReceiveOptions::default()
        };
        let fetcher = Box::new(LocalFileFetcher::open(&src).unwrap());
        handles.push(common::spawn_receiver(g, c, rcfg, pk, opts, fetcher));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;

    let scfg = common::test_sender_config();
    let sock = driver::send_socket(&sock_cfg).unwrap();
    assert_eq!(
        sock.local_addr().unwrap().ip(),
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    );
    let stats = common::send_file(&sock, sock_cfg.group, &key, &src, 0x1234, scfg).await;

    let mut lossy_repaired = false;
    let i_lossy = |r: &driver::ReceiveOutcome| r.injected_drops > 0;
    for h in handles {
        let (res, written, _dir) = h.await.unwrap();
        assert!(written == data, "file byte-exact");
        assert_eq!(
            res.manifest.file_hash,
            outpost_multicast::manifest::sha256(&data)
        );
        // Most blocks arrive by multicast, repaired where lost; under heavy machine load a
        // slow receiver may still finish a few blocks through the unicast fetcher.
        assert!(
            res.fetched_blocks * 4 < res.manifest.block_count(),
            "fetched {} of {} blocks: {:?}, sender {stats:?}",
            res.fetched_blocks,
            res.manifest.block_count(),
            res.stats
        );
        if i_lossy(&res) {
            lossy_repaired = res.stats.repair_symbols > 0;
        }
    }
    assert!(
        stats.repair_packets > 0,
        "the lossy receiver was repaired: {stats:?}"
    );
    assert!(lossy_repaired, "repair symbols reached the lossy receiver");
    // Repair covers the one lossy receiver, not one copy per receiver.
    assert!(stats.repair_packets < stats.source_packets / 5, "{stats:?}");
    assert!(stats.receivers_done >= 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_receiver_fetches_and_crash_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("pkg.bin");
    let data: Vec<u8> = (0..1_500_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&src, &data).unwrap();
    let sock_cfg = common::loopback_config(2);
    let key = SigningKey::from_seed(&[9u8; 32]).unwrap();
    let pk = key.public_key();
    let mut scfg = SenderConfig::default();
    scfg.max_rate_bps = 50_000_000;
    scfg.announce_interval_ms = 20;
    scfg.block_symbols = 64;
    let manifest =
        files::manifest_for_file(&src, 0x77, "pkg.bin", scfg.symbol_size, scfg.block_symbols)
            .unwrap();
    let signed = manifest.sign(key.key_pair());

    // A previous run left half of the blocks on disk, plus one corrupted block.
    let out = tempfile::tempdir().unwrap();
    let part = out
        .path()
        .join(files::part_file_name("pkg.bin", &manifest.file_hash));
    let mut partial = vec![0u8; data.len()];
    let half = manifest.block_offset(manifest.block_count() / 2) as usize;
    partial[..half].copy_from_slice(&data[..half]);
    partial[10] ^= 0xff;
    std::fs::write(&part, &partial).unwrap();

    let sock = driver::send_socket(&sock_cfg).unwrap();
    let mut sender = Sender::new(
        scfg,
        manifest.clone(),
        &signed,
        Box::new(files::FileSource::open(&src).unwrap()),
        Instant::now(),
    )
    .unwrap();
    let send = tokio::spawn(async move {
        driver::run_sender(&sock, sock_cfg.group, &mut sender, |_, _| {})
            .await
            .unwrap()
    });
    // Join late: the first blocks have gone by.
    tokio::time::sleep(Duration::from_millis(60)).await;
    let g = driver::group_socket(&sock_cfg).unwrap();
    let c = driver::control_socket(&sock_cfg).unwrap();
    let mut rx = Receiver::new(ReceiverConfig::default(), &pk).unwrap();
    let mut sink = FileSink::new(out.path()).unwrap();
    let mut fetcher = LocalFileFetcher::open(&src).unwrap();
    let res = tokio::time::timeout(
        Duration::from_secs(30),
        driver::run_receiver(
            &g,
            &c,
            &mut rx,
            &mut sink,
            &mut fetcher,
            &ReceiveOptions::default(),
            |_| {},
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(std::fs::read(out.path().join("pkg.bin")).unwrap(), data);
    assert!(!part.exists(), "temporary file renamed");
    let half_blocks = manifest.block_count() / 2;
    assert_eq!(
        res.resumed_blocks,
        half_blocks - 1,
        "all intact blocks resumed, the corrupted one not"
    );
    send.await.unwrap();

    // Without a fetcher, a missing block is a clear error naming the block.
    use outpost_multicast::files::Fetcher;
    let err = NoFetcher
        .fetch_block(&manifest, 3)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("block 3"), "{err}");
}

/// A receive buffer above the system cap (`net.core.rmem_max`) is granted in full to a
/// process allowed to force it (`CAP_NET_ADMIN`) and capped for any other, or when
/// `force_buffers` is off.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn receive_buffer_beyond_the_system_cap_when_allowed() {
    let cap: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut cfg = common::loopback_config(9);
    cfg.recv_buffer = cap * 2;
    let g = driver::group_socket(&cfg).unwrap();
    // Linux reports twice the size granted.
    let got = socket2::SockRef::from(&g).recv_buffer_size().unwrap();
    let probe = StdUdp::bind("127.0.0.1:0").unwrap();
    let allowed = rustix::net::sockopt::set_socket_recv_buffer_size_force(&probe, cap * 2).is_ok();
    assert_eq!(
        got >= 2 * cfg.recv_buffer,
        allowed,
        "granted {got} (reported), asked {}, cap {cap}, force allowed: {allowed}",
        cfg.recv_buffer
    );
    if !allowed {
        assert!(got <= 2 * cap, "unprivileged socket above the cap: {got}");
    }
    // Not forced: the cap stands whatever the privileges.
    cfg.force_buffers = false;
    let g = driver::group_socket(&cfg).unwrap();
    let got = socket2::SockRef::from(&g).recv_buffer_size().unwrap();
    assert!(
        got <= 2 * cap,
        "force_buffers off, still above the cap: {got}"
    );
}

/// The kernel's drop count for a socket whose buffer overflows: 0 before, then the
/// datagrams that found no room (Linux; IPv4 and, where the host has it, IPv6 loopback).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn socket_drops_counts_an_overflowing_receive_buffer() {
    for addr in ["127.0.0.1:0", "[::1]:0"] {
        let Ok(std_sock) = StdUdp::bind(addr) else {
            assert!(addr.starts_with('['), "no IPv4 loopback");
            continue;
        };
        // The smallest buffer the kernel grants (a few KiB).
        socket2::SockRef::from(&std_sock)
            .set_recv_buffer_size(1)
            .unwrap();
        std_sock.set_nonblocking(true).unwrap();
        let reader = std_sock.try_clone().unwrap();
        let sock = tokio::net::UdpSocket::from_std(std_sock).unwrap();
        let to = sock.local_addr().unwrap();
        assert_eq!(driver::socket_drops(&sock), Some(0), "{addr}");
        let tx = StdUdp::bind(SocketAddr::new(to.ip(), 0)).unwrap();
        for _ in 0..64 {
            tx.send_to(&[7u8; 1200], to).unwrap();
        }
        let dropped = driver::socket_drops(&sock).unwrap();
        // Whatever the buffer held is still there to read; the rest was dropped.
        let mut buf = [0u8; 2048];
        let mut held = 0u64;
        while reader.recv_from(&mut buf).is_ok() {
            held += 1;
        }
        assert!(
            held > 0 && dropped > 0,
            "{addr}: held {held}, dropped {dropped}"
        );
        assert_eq!(held + dropped, 64, "{addr}");
    }
}

/// Counts its calls and notes, at each block read, how often another task of the same
/// runtime has run by then.
struct WatchedSource {
    data: Vec<u8>,
    ticks: std::sync::Arc<std::sync::atomic::AtomicU64>,
    seen_at_last_read: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl outpost_multicast::sender::BlockSource for WatchedSource {
    fn read_block(&mut self, offset: u64, buf: &mut [u8]) -> outpost_multicast::Result<()> {
        use std::sync::atomic::Ordering;
        let start = offset as usize;
        buf.copy_from_slice(&self.data[start..start + buf.len()]);
        self.seen_at_last_read
            .store(self.ticks.load(Ordering::Relaxed), Ordering::Relaxed);
        Ok(())
    }
}

/// A sender that always has tokens (ceiling far above what the host can send) still lets
/// the other tasks of its runtime run while data flows: its socket's readiness is only
/// refreshed then, so without it NAKs would go unread until the data ends.
#[test]
fn a_sender_without_pauses_still_yields_to_its_runtime() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let key = SigningKey::from_seed(&[3u8; 32]).unwrap();
    let data = common::file(24 << 20, 4);
    let m = outpost_multicast::Manifest::for_bytes(5, "y.bin", &data, 8192, 128).unwrap();
    let signed = m.sign(key.key_pair());
    let ticks = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut cfg = SenderConfig::default();
    cfg.symbol_size = 8192;
    cfg.block_symbols = 128;
    cfg.max_rate_bps = 1_000_000_000_000;
    cfg.burst_bytes = 64 << 20;
    cfg.done_linger_ms = 0;
    cfg.quiet_polls = 1;
    let source = WatchedSource {
        data,
        ticks: ticks.clone(),
        seen_at_last_read: seen.clone(),
    };
    let sc = common::loopback_config(12);
    rt.block_on(async {
        let ticker = {
            let (ticks, stop) = (ticks.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    ticks.fetch_add(1, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            })
        };
        let mut sender = Sender::new(cfg, m, &signed, Box::new(source), Instant::now()).unwrap();
        let sock = driver::send_socket(&sc).unwrap();
        let stats = driver::run_sender(&sock, sc.group, &mut sender, |_, _| {})
            .await
            .unwrap();
        stop.store(true, Ordering::Relaxed);
        ticker.await.unwrap();
        assert_eq!(stats.source_packets, 3072);
    });
    // By the time the last block was read the other task had run many times.
    let seen = seen.load(Ordering::Relaxed);
    assert!(
        seen >= 10,
        "other task ran {seen} times before the last block"
    );
}

/// A receiver whose group socket cannot hold what the sender sends: `run_receiver` reads
/// the kernel's drop count, the receiver reports it, the sender cuts its rate, and the
/// file still ends byte-exact (Linux: the count comes from `/proc/net/udp`).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_overflow_is_reported_and_slows_the_sender() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("update.bin");
    let data = common::file(1 << 20, 6);
    std::fs::write(&src, &data).unwrap();
    let sock_cfg = common::loopback_config(13);
    let key = SigningKey::from_seed(&[9u8; 32]).unwrap();
    // A receive buffer of some twenty datagrams, where the default holds thousands.
    let mut small = sock_cfg.clone();
    small.recv_buffer = 32 << 10;
    small.force_buffers = false;
    let g = driver::group_socket(&small).unwrap();
    let c = driver::control_socket(&sock_cfg).unwrap();
    let mut rcfg = ReceiverConfig::default();
    // Keep answering polls however much it loses (no fallback to unicast only).
    rcfg.nak_max_loss_permille = 1000;
    let fetcher = Box::new(LocalFileFetcher::open(&src).unwrap());
    let h = common::spawn_receiver(
        g,
        c,
        rcfg,
        key.public_key(),
        ReceiveOptions::default(),
        fetcher,
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut scfg = SenderConfig::default();
    scfg.max_rate_bps = 2_000_000_000;
    scfg.min_rate_bps = 20_000_000;
    scfg.block_symbols = 64;
    scfg.expect_receivers = 1;
    let sock = driver::send_socket(&sock_cfg).unwrap();
    let stats = common::send_file(&sock, sock_cfg.group, &key, &src, 0x77, scfg).await;
    let (res, written, _dir) = h.await.unwrap();
    assert!(written == data, "file byte-exact");
    let dropped = res.socket_drops.expect("drop count readable");
    assert!(dropped > 0, "{res:?}");
    assert!(res.stats.load_reports > 0, "{:?}", res.stats);
    assert!(stats.load_reports > 0 && stats.backoffs > 0, "{stats:?}");
}

/// The case a namespace run once lost, over real loopback sockets: neither receiver has a
/// unicast source; one loses 5% of what arrives, the other starts listening only after the
/// sender has begun, so it misses the session's first block and more. The sender expects
/// both: it keeps polling and repairing until both report done, and both finish byte-exact
/// without fetching anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_without_a_unicast_source_are_carried_to_the_end_by_repair() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("update.bin");
    let data = common::file(2_000_000, 77);
    std::fs::write(&src, &data).unwrap();
    let sock_cfg = common::loopback_config(9);
    let key = SigningKey::from_seed(&[9u8; 32]).unwrap();
    let pk = key.public_key();
    let receiver = |i: u64, opts: ReceiveOptions| {
        let g = driver::group_socket(&sock_cfg).unwrap();
        let c = driver::control_socket(&sock_cfg).unwrap();
        let mut rcfg = ReceiverConfig::default();
        rcfg.seed = i;
        rcfg.unicast_fallback = false;
        common::spawn_receiver(g, c, rcfg, pk, opts, Box::new(NoFetcher))
    };
    let lossy = receiver(1, ReceiveOptions::with_loss(0.05, 5));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut scfg = common::test_sender_config();
    // Slow enough that the late receiver misses the start, not the whole data phase.
    scfg.max_rate_bps = 40_000_000;
    scfg.expect_receivers = 2;
    scfg.expect_timeout_ms = 20_000;
    let sock = driver::send_socket(&sock_cfg).unwrap();
    let sending = common::send_file(&sock, sock_cfg.group, &key, &src, 0x77, scfg);
    // Starts the late receiver's task and hands back its handle, awaited below.
    #[allow(clippy::async_yields_async)]
    let late = async {
        tokio::time::sleep(Duration::from_millis(60)).await;
        receiver(2, ReceiveOptions::default())
    };
    let (stats, late) = tokio::join!(sending, late);
    for h in [lossy, late] {
        let (res, written, _dir) = h.await.unwrap();
        assert!(written == data, "file byte-exact");
        assert_eq!(res.fetched_blocks, 0, "{:?}", res.stats);
        // Each missed blocks (the lossy one symbols, the late one the start) and got them
        // by repair.
        assert!(res.stats.repair_symbols > 0, "{:?}", res.stats);
    }
    assert_eq!(stats.receivers_done, 2, "{stats:?}");
    assert!(stats.repair_packets > 0, "{stats:?}");
}
