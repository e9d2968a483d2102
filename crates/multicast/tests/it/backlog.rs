//! A receiver whose CPU cannot check blocks at the sender's rate reports its backlog, and
//! the sender slows down to what it can check instead of overrunning the receiver's
//! buffers (loss every receiver would then pay for in repair).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use outpost_multicast::packet::Packet;
use outpost_multicast::sender::announce_packets;
use outpost_multicast::sim::{self, LinkModel, SimConfig};
use outpost_multicast::{Manifest, Receiver, ReceiverConfig, Sender, SigningKey};

use crate::common;
use common::file;

/// Four receivers at 2% loss; with `slow`, receiver 0 checks one 16 KiB block in 2.6 ms
/// while they come every 0.66 ms at the 200 Mbit/s ceiling (a quarter of the rate).
fn run(report_blocks: u32, slow: bool) -> (Vec<u8>, sim::SimOutcome) {
    let data = file(4 << 20, 5);
    let mut cfg = SimConfig::new(21, 4, LinkModel::lossy(0.02));
    cfg.sender.offload_encoding = true;
    cfg.receiver.offload_block_work = true;
    cfg.receiver.max_buffered_bytes = 1 << 20;
    cfg.receiver.backlog_report_blocks = report_blocks;
    if slow {
        cfg.slow = vec![(0, Duration::from_micros(2600))];
    }
    let out = sim::run(&cfg, &data).unwrap();
    for (i, r) in out.receivers.iter().enumerate() {
        assert!(r.finished, "receiver {i} did not finish: {:?}", r.stats);
        assert!(r.data == data, "receiver {i} differs");
    }
    assert!(out.sender_finished);
    (data, out)
}

#[test]
fn a_slow_receiver_slows_the_sender_instead_of_overflowing() {
    let (data, fast) = run(4, false);
    let (_, slow) = run(4, true);
    let (_, unreported) = run(0, true);
    let per_byte = |o: &sim::SimOutcome| o.sender.bytes_sent as f64 / data.len() as f64;
    println!(
        "bytes sent per file byte: {:.2} without a slow receiver, {:.2} with one that \
         reports its load, {:.2} with one that does not",
        per_byte(&fast),
        per_byte(&slow),
        per_byte(&unreported)
    );
    let r0 = &slow.receivers[0].stats;
    // With reports the slow receiver stays a few blocks behind and never runs out of
    // buffer; the sender cut its rate in answer, and sends what it sends without a slow
    // receiver (within 2%).
    assert!(slow.sender.load_reports > 0, "{:?}", slow.sender);
    assert!(slow.sender.backoffs > 0);
    assert!(r0.peak_jobs_out <= 24, "{r0:?}");
    assert_eq!(r0.over_budget, 0, "{r0:?}");
    let ratio = slow.sender.bytes_sent as f64 / fast.sender.bytes_sent as f64;
    assert!(
        ratio < 1.02,
        "{ratio}: {:?} vs {:?}",
        slow.sender,
        fast.sender
    );
    // Without reports the same receiver falls behind until its buffer budget is spent,
    // drops symbols, and the repair for them costs the whole group.
    let u0 = &unreported.receivers[0].stats;
    assert!(u0.peak_jobs_out > 48, "{u0:?}");
    assert!(u0.over_budget > 0, "{u0:?}");
    assert!(
        unreported.sender.bytes_sent as f64 > 1.5 * slow.sender.bytes_sent as f64,
        "{:?} vs {:?}",
        unreported.sender,
        slow.sender
    );
    // Receivers that keep up leave the rate alone.
    assert!(
        fast.sender.load_reports <= 2,
        "{:?}",
        fast.sender.load_reports
    );
    assert_eq!(fast.sender.rate_bps, 200_000_000);
}

const T: u16 = 64;
const K: u32 = 8;
const SESSION: u64 = 77;

fn sender() -> (Sender, Instant) {
    common::small_sender(SESSION, T, K, 40, |c| c.max_rate_bps = 80_000_000)
}

/// Runs the sender until it sends its next poll; returns that poll's number.
fn next_poll(s: &mut Sender, now: &mut Instant) -> u32 {
    let mut buf = Vec::new();
    for _ in 0..100_000 {
        if !s.poll_transmit(*now, &mut buf).unwrap() {
            *now += Duration::from_micros(100);
            continue;
        }
        if let Ok(Packet::Poll { poll, .. }) = Packet::decode(&buf) {
            return poll;
        }
    }
    panic!("no poll");
}

fn report(s: &mut Sender, now: Instant, from: SocketAddr, poll: u32, jobs: u32, dropped: u32) {
    let mut p = Vec::new();
    Packet::Load {
        session: SESSION,
        poll,
        jobs,
        dropped,
    }
    .encode(&mut p);
    s.handle_datagram(now, from, &p);
}

#[test]
fn cuts_follow_socket_drops_and_a_growing_backlog_once_per_poll_round() {
    let (mut s, mut now) = sender();
    let a: SocketAddr = "127.0.0.2:5000".parse().unwrap();
    let b: SocketAddr = "127.0.0.3:5000".parse().unwrap();
    let full = s.stats().rate_bps;
    // A first report holds the rate but does not cut: it may be a burst of blocks that
    // one round of repair completed together.
    let p1 = next_poll(&mut s, &mut now);
    report(&mut s, now, a, p1, 5, 0);
    report(&mut s, now, b, p1, 9, 0);
    assert_eq!(s.stats().backoffs, 0);
    let p2 = next_poll(&mut s, &mut now);
    assert_eq!(s.stats().rate_bps, full);
    // Reported again for the next poll and not shrunk: a cut.
    report(&mut s, now, a, p2, 6, 0);
    assert_eq!(s.stats().backoffs, 1);
    let cut = s.stats().rate_bps;
    assert!(cut < full);
    // Another receiver in the same round: that round is already answered by the cut.
    report(&mut s, now, b, p2, 12, 0);
    assert_eq!(s.stats().backoffs, 1);
    // The next round: no increase at the poll (receivers were behind), and a backlog
    // that still grew cuts again.
    let p3 = next_poll(&mut s, &mut now);
    assert_eq!(s.stats().rate_bps, cut);
    report(&mut s, now, a, p3, 7, 0);
    assert_eq!(s.stats().backoffs, 2);
    let cut2 = s.stats().rate_bps;
    // A backlog that shrank holds the rate: no cut, and no increase at the next poll.
    let p4 = next_poll(&mut s, &mut now);
    assert_eq!(s.stats().rate_bps, cut2);
    report(&mut s, now, a, p4, 4, 0);
    assert_eq!(s.stats().backoffs, 2);
    // A round without reports raises the rate at the poll that ends it; a report that
    // skipped a round starts over: no cut.
    let _ = next_poll(&mut s, &mut now);
    let p6 = next_poll(&mut s, &mut now);
    let raised = s.stats().rate_bps;
    assert!(raised > cut2);
    report(&mut s, now, a, p6, 8, 0);
    assert_eq!(s.stats().backoffs, 2);
    let p7 = next_poll(&mut s, &mut now);
    assert_eq!(s.stats().rate_bps, raised);
    // Datagrams dropped by a receiver's socket cut at once, whatever its backlog.
    report(&mut s, now, b, p7, 0, 12);
    assert_eq!(s.stats().backoffs, 3);
    let cut3 = s.stats().rate_bps;
    assert!(cut3 < raised);
    let _ = next_poll(&mut s, &mut now);
    assert_eq!(s.stats().rate_bps, cut3);
    // A round without reports raises the rate again.
    let _ = next_poll(&mut s, &mut now);
    assert!(s.stats().rate_bps > cut3);
    assert_eq!(s.stats().load_reports, 8);
    assert_eq!(s.stats().stale_load_reports, 0);
}

#[test]
fn reports_for_polls_not_sent_or_other_sessions_change_nothing() {
    let (mut s, mut now) = sender();
    let a: SocketAddr = "127.0.0.2:5000".parse().unwrap();
    let p1 = next_poll(&mut s, &mut now);
    let full = s.stats().rate_bps;
    report(&mut s, now, a, p1 + 1, 50, 0);
    report(&mut s, now, a, 0, 50, 0);
    assert_eq!(s.stats().stale_load_reports, 2);
    let mut other = Vec::new();
    Packet::Load {
        session: SESSION + 1,
        poll: p1,
        jobs: 50,
        dropped: 50,
    }
    .encode(&mut other);
    s.handle_datagram(now, a, &other);
    assert_eq!(s.stats().foreign_session, 1);
    assert_eq!(s.stats().backoffs, 0);
    assert_eq!(s.stats().load_reports, 0);
    assert_eq!(s.stats().rate_bps, full);
}

#[test]
fn a_receiver_reports_socket_drops_once_at_the_next_poll() {
    let key = SigningKey::from_seed(&[5u8; 32]).unwrap();
    let data = file(3 * (K * u32::from(T)) as usize, 2);
    let m = Manifest::for_bytes(SESSION, "d.bin", &data, T, K).unwrap();
    let mut rx = Receiver::new(ReceiverConfig::default(), &key.public_key()).unwrap();
    let now = Instant::now();
    for p in announce_packets(SESSION, &m.sign(key.key_pair()), 256).unwrap() {
        rx.handle_datagram(now, common::from(), &p);
    }
    assert!(rx.manifest().is_some());
    // One source symbol: the receiver has joined the session.
    let sym = &data[..usize::from(T)];
    rx.handle_datagram(
        now,
        common::from(),
        &common::data_packet(SESSION, 0, 0, 0, sym),
    );
    // Feeds poll `n` and returns the `dropped` of every load report it brought.
    let poll = |rx: &mut Receiver, n: u32| {
        let mut p = Vec::new();
        Packet::Poll {
            session: SESSION,
            poll: n,
            upto_block: 0,
            high_seq: 0,
        }
        .encode(&mut p);
        rx.handle_datagram(now, common::from(), &p);
        let mut dropped = Vec::new();
        while let Some((to, bytes)) = rx.poll_transmit() {
            if let Ok(Packet::Load {
                poll,
                jobs,
                dropped: d,
                ..
            }) = Packet::decode(&bytes)
            {
                assert_eq!((to, poll, jobs), (common::from(), n, 0));
                dropped.push(d);
            }
        }
        dropped
    };
    // The first count is the baseline: drops before the session are not news.
    rx.note_socket_drops(100);
    assert_eq!(poll(&mut rx, 1), Vec::<u32>::new());
    rx.note_socket_drops(130);
    assert_eq!(poll(&mut rx, 2), vec![30]);
    assert_eq!(poll(&mut rx, 3), Vec::<u32>::new());
    rx.note_socket_drops(131);
    rx.note_socket_drops(134);
    assert_eq!(poll(&mut rx, 4), vec![4]);
    // A lower count than the last noted (another socket) is a new baseline, even when
    // it is above the count last reported.
    rx.note_socket_drops(200);
    rx.note_socket_drops(150);
    assert_eq!(poll(&mut rx, 5), Vec::<u32>::new());
    rx.note_socket_drops(151);
    assert_eq!(poll(&mut rx, 6), vec![1]);
    assert_eq!(rx.stats().load_reports, 3);
}
