//! Deterministic in-memory runs: one sender, up to 100 receivers, seeded loss, bursts,
//! reordering and duplication. Every receiver must end byte-exact.

use std::time::Duration;

use outpost_multicast::sim::{self, LinkModel, SimConfig};
use proptest::prelude::*;

fn file(len: usize, seed: u32) -> Vec<u8> {
    outpost_testkit::payload(u64::from(seed), len)
}

fn check(out: &sim::SimOutcome, data: &[u8]) {
    for (i, r) in out.receivers.iter().enumerate() {
        assert!(r.finished, "receiver {i} did not finish: {:?}", r.stats);
        assert!(r.data == data, "receiver {i} differs");
    }
    assert!(out.sender_finished);
}

#[test]
fn hundred_receivers_mixed_loss() {
    let data = file(120_000, 7);
    let links = (0..100)
        .map(|i| LinkModel::lossy(f64::from(i % 21) / 100.0)) // 0% .. 20%
        .collect();
    let mut cfg = SimConfig::new(1, 0, LinkModel::default());
    cfg.links = links;
    let out = sim::run(&cfg, &data).unwrap();
    check(&out, &data);
    // Repair is sized for the worst receiver, not summed over 100 receivers: compare with
    // what unicast retransmission of every lost source symbol would have cost.
    let source = out.sender.source_packets;
    let lost: u64 = out
        .receivers
        .iter()
        .map(|r| source.saturating_sub(r.stats.source_symbols))
        .sum();
    assert!(
        out.sender.repair_packets * 10 < lost,
        "repair {} vs {} source symbols lost over all receivers",
        out.sender.repair_packets,
        lost
    );
    let suppressed: u64 = out.receivers.iter().map(|r| r.stats.naks_suppressed).sum();
    assert!(suppressed > 0, "NAK suppression took effect");
}

#[test]
fn same_seed_same_run() {
    let data = file(60_000, 3);
    let cfg = SimConfig::new(77, 8, LinkModel::lossy(0.1));
    let a = sim::run(&cfg, &data).unwrap();
    let b = sim::run(&cfg, &data).unwrap();
    assert_eq!(a.sender, b.sender);
    assert_eq!(a.elapsed, b.elapsed);
    for (x, y) in a.receivers.iter().zip(&b.receivers) {
        assert_eq!(x.stats, y.stats);
    }
    let c = sim::run(&SimConfig::new(78, 8, LinkModel::lossy(0.1)), &data).unwrap();
    assert_ne!(a.sender, c.sender, "a different seed gives a different run");
}

#[test]
fn sender_bytes_do_not_grow_with_receivers() {
    let data = file(80_000, 5);
    let few = sim::run(&SimConfig::new(9, 2, LinkModel::lossy(0.05)), &data).unwrap();
    let many = sim::run(&SimConfig::new(9, 64, LinkModel::lossy(0.05)), &data).unwrap();
    check(&few, &data);
    check(&many, &data);
    // The worst of 64 receivers needs somewhat more repair than the worst of 2, but the
    // sender's total stays far below one copy per receiver.
    assert!(
        many.sender.bytes_sent < few.sender.bytes_sent * 2,
        "2 receivers: {} bytes, 64 receivers: {} bytes",
        few.sender.bytes_sent,
        many.sender.bytes_sent
    );
}

#[test]
fn late_joiner_and_crash_resume() {
    let data = file(150_000, 11);
    let mut cfg = SimConfig::new(5, 4, LinkModel::lossy(0.05));
    // Slow the sender so the session lasts long enough to join late.
    cfg.sender.max_rate_bps = 20_000_000;
    cfg.sender.announce_interval_ms = 10;
    cfg.late = vec![(1, Duration::from_millis(30))];
    cfg.crash = vec![(2, 3)];
    let out = sim::run(&cfg, &data).unwrap();
    check(&out, &data);
    assert!(
        out.receivers[1].fetched_blocks > 0,
        "late joiner fetched the blocks it missed"
    );
    assert!(
        out.receivers[2].stats.blocks_offered >= 3,
        "restarted receiver resumed from disk"
    );
}

#[test]
fn total_loss_then_unicast() {
    // A receiver behind a dead link for data still ends complete through the fetcher once
    // the session is over (idle timeout), with nothing corrupted.
    let data = file(30_000, 13);
    let mut cfg = SimConfig::new(3, 2, LinkModel::default());
    let mut dead = LinkModel::default();
    dead.loss = 1.0;
    cfg.links[1] = dead;
    cfg.max_time = Duration::from_secs(5);
    let out = sim::run(&cfg, &data).unwrap();
    assert!(out.receivers[0].finished);
    // The dead receiver never even got the manifest: it knows of no session and writes nothing.
    assert!(!out.receivers[1].finished);
    assert_eq!(out.receivers[1].bytes_written, 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn byte_exact_under_any_loss_pattern(
        seed in any::<u64>(),
        loss in 0.0f64..0.20,
        burst_start in 0.0f64..0.02,
        burst_len in 1u32..20,
        reorder in 0.0f64..0.1,
        duplicate in 0.0f64..0.05,
        receivers in 1usize..12,
        len in 1usize..60_000,
    ) {
        let (data, out) = loss_pattern(seed, loss, burst_start, burst_len, reorder, duplicate, receivers, len);
        for r in &out.receivers {
            prop_assert!(r.finished);
            prop_assert!(r.data == data);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// One receiver partitioned off for up to 300 ms somewhere in the first 100 ms (short
    /// files are over by then: it may miss all of the data, the End and the first repeats
    /// of it), on top of independent loss: everyone still ends byte-exact.
    #[test]
    fn byte_exact_across_a_partition(
        seed in any::<u64>(),
        loss in 0.0f64..0.10,
        from_ms in 0u64..100,
        len_ms in 0u64..300,
        receivers in 1usize..8,
        len in 1usize..60_000,
    ) {
        let data = file(len, seed as u32);
        let mut cfg = SimConfig::new(seed, receivers, LinkModel::lossy(loss));
        cfg.links[0].partitions =
            vec![(Duration::from_millis(from_ms), Duration::from_millis(from_ms + len_ms))];
        let out = sim::run(&cfg, &data).unwrap();
        for r in &out.receivers {
            prop_assert!(r.finished, "{:?}", r.stats);
            prop_assert!(r.data == data);
        }
    }
}

/// One run of the property above: a file of `len` bytes to `receivers` receivers behind
/// links with that loss pattern.
#[allow(clippy::too_many_arguments)]
fn loss_pattern(
    seed: u64,
    loss: f64,
    burst_start: f64,
    burst_len: u32,
    reorder: f64,
    duplicate: f64,
    receivers: usize,
    len: usize,
) -> (Vec<u8>, sim::SimOutcome) {
    let data = file(len, seed as u32);
    // Total loss stays within 0-20%: independent loss plus what bursts add.
    let burst_start = burst_start.min((0.20 - loss).max(0.0) / f64::from(burst_len));
    let mut link = LinkModel::default();
    link.loss = loss;
    link.burst_start = burst_start;
    link.burst_len = burst_len;
    link.reorder = reorder;
    link.duplicate = duplicate;
    let out = sim::run(&SimConfig::new(seed, receivers, link), &data).unwrap();
    (data, out)
}

/// Short sessions where one receiver lost the manifest and every poll (it heard only a
/// few data packets, an NCF or the End), or lost every packet of the session: it asks the
/// sender for the manifest, which answers and repeats its End while it lingers, and then
/// fetches the blocks by unicast. Found by the property above.
#[test]
fn receivers_that_missed_the_manifest_or_the_whole_session_still_finish() {
    let cases = [
        (
            17_635_883_138_931_459_278,
            0.1650888399452985,
            0.002168970919445413,
            16,
            0.0,
            0.003893044769137134,
            10,
            2817,
        ),
        (
            12_994_391_541_721_183_702,
            0.13044853191089964,
            0.01674260803501029,
            18,
            0.021665588348826755,
            0.0007919686612089582,
            6,
            769,
        ),
        (
            3_841_471_505_511_025_154,
            0.07745808772156645,
            0.013408218714127982,
            17,
            0.048161265595367854,
            0.03245983021913812,
            4,
            513,
        ),
    ];
    for (seed, loss, burst_start, burst_len, reorder, duplicate, receivers, len) in cases {
        let (data, out) = loss_pattern(
            seed,
            loss,
            burst_start,
            burst_len,
            reorder,
            duplicate,
            receivers,
            len,
        );
        check(&out, &data);
        assert!(
            out.receivers
                .iter()
                .any(|r| r.stats.manifest_requests > 0 && r.fetched_blocks > 0),
            "seed {seed}: some receiver asked for the manifest and fetched"
        );
    }
}

/// With `done_linger_ms`, the sender keeps collecting `Done` reports after the End packets;
/// with `expect_receivers`, it stops as soon as that many distinct receivers reported, and
/// waits for them at most `expect_timeout_ms` (here 1 s) before ending.
#[test]
fn sender_collects_done_reports_and_stops_when_all_expected_reported() {
    let data = file(200_000, 11);
    let linger = Duration::from_secs(5);
    let run = |expect: u32, linger_ms: u64| {
        let mut cfg = SimConfig::new(5, 6, LinkModel::default());
        cfg.sender.done_linger_ms = linger_ms;
        cfg.sender.expect_receivers = expect;
        cfg.sender.expect_timeout_ms = 1_000;
        let out = sim::run(&cfg, &data).unwrap();
        check(&out, &data);
        out
    };
    // All six expected: every report counted, and the session ends long before the linger.
    let all = run(6, linger.as_millis() as u64);
    assert_eq!(all.sender.receivers_done, 6);
    assert!(all.elapsed < linger, "stopped early: {:?}", all.elapsed);
    // One more expected than there are: every report counted; the session waits for the
    // seventh until its deadline, then the linger runs out.
    let short = run(7, linger.as_millis() as u64);
    assert_eq!(short.sender.receivers_done, 6);
    assert!(
        short.elapsed >= linger + Duration::from_secs(1),
        "waited, then lingered: {:?}",
        short.elapsed
    );
    // Expecting all six ends the session before the quiet polls would have.
    let plain = run(0, 0);
    assert!(
        all.elapsed <= plain.elapsed,
        "{:?} vs {:?}",
        all.elapsed,
        plain.elapsed
    );
}

/// A manifest of many blocks is not repeated after every poll: receivers that lack it ask
/// for it, and the unrequested repeats are spaced so they cost at most about 1% of the rate
/// ceiling. Here the manifest (8,192 block hashes, about 260 KB in 256-byte pieces) is an
/// eighth of the file.
#[test]
fn a_large_manifest_is_not_repeated_after_every_poll() {
    let data = file(2 << 20, 5);
    let mut cfg = SimConfig::new(21, 3, LinkModel::lossy(0.02));
    cfg.sender.symbol_size = 64;
    cfg.sender.block_symbols = 4;
    let out = sim::run(&cfg, &data).unwrap();
    check(&out, &data);
    let key = outpost_multicast::SigningKey::from_seed(&[1u8; 32]).unwrap();
    let signed = outpost_multicast::Manifest::for_bytes(1, "update.bin", &data, 64, 4)
        .unwrap()
        .sign(key.key_pair());
    let pieces = signed.len().div_ceil(256) as u64;
    let s = &out.sender;
    // Repeating it after every poll (each 4 blocks) would have sent over 2,000 rounds.
    assert!(s.polls > 2_000, "{s:?}");
    assert!(
        s.announce_packets <= 6 * pieces,
        "{} manifest pieces sent, {pieces} per round: {s:?}",
        s.announce_packets
    );
}

/// Partitions: one receiver cut off for the middle of the data, another from the middle of
/// the data until after the sender has gone (past its linger). Both end byte-exact, what
/// they missed fetched by unicast (their loss exceeds the level at which a receiver stops
/// asking the group for repair), and the receivers that stayed connected do not pay for
/// them in repair.
#[test]
fn partitioned_receivers_still_finish() {
    let data = file(2_000_000, 13);
    let mut cfg = SimConfig::new(33, 4, LinkModel::lossy(0.01));
    let ms = Duration::from_millis;
    cfg.links[1].partitions = vec![(ms(20), ms(60))];
    cfg.links[2].partitions = vec![(ms(40), ms(3_000))];
    let out = sim::run(&cfg, &data).unwrap();
    check(&out, &data);
    let blocks = data.len().div_ceil(256 * 64) as u64;
    // What a partition cut off comes by unicast (a tenth of the file at least); a receiver
    // that stayed connected fetches at most the blocks before it joined (one that loses
    // the first manifest pieces joins a block or two late).
    for i in [1, 2] {
        assert!(
            out.receivers[i].fetched_blocks >= blocks / 10,
            "receiver {i}: {} of {blocks} blocks fetched",
            out.receivers[i].fetched_blocks
        );
    }
    for i in [0, 3] {
        assert!(
            out.receivers[i].fetched_blocks <= 2,
            "receiver {i}: {} fetched",
            out.receivers[i].fetched_blocks
        );
    }
    // Repair sized for 1% loss plus what the short partition cost, not for everything the
    // partitioned receivers missed.
    assert!(
        out.sender.repair_packets < out.sender.source_packets / 4,
        "{:?}, {blocks} blocks",
        out.sender
    );
}

/// The case a namespace run at 5% loss once lost: a receiver that misses the session's first
/// block and more (here a partition over the session's start), with no unicast source. With
/// `expect_receivers` the sender keeps repairing until every receiver reports done, and the
/// receivers keep asking by NAK: both finish byte-exact, nothing fetched.
#[test]
fn a_receiver_without_a_fetcher_that_missed_the_start_still_finishes() {
    let data = file(400_000, 21);
    for seed in 0..8 {
        let mut cfg = SimConfig::new(seed, 2, LinkModel::lossy(0.05));
        cfg.links[1].partitions = vec![(Duration::ZERO, Duration::from_millis(40))];
        cfg.receiver.unicast_fallback = false;
        cfg.sender.expect_receivers = 2;
        cfg.sender.done_linger_ms = 30_000;
        let out = sim::run(&cfg, &data).unwrap();
        for (i, r) in out.receivers.iter().enumerate() {
            assert!(
                r.finished,
                "seed {seed}: receiver {i} did not finish: {:?}",
                r.stats
            );
            assert_eq!(r.fetched_blocks, 0);
            assert!(r.data == data, "seed {seed}: receiver {i} differs");
        }
        assert_eq!(out.sender.receivers_done, 2, "seed {seed}");
    }
}

/// Receivers that stop as their driver does (once the session no longer asks for them),
/// over links losing 20% both ways: a `Done` lost on the way is sent again when the sender
/// polls, so the sender hears every expected receiver, and none is left with a report
/// nobody heard.
#[test]
fn a_lost_done_is_sent_again_while_the_session_asks() {
    let data = file(300_000, 22);
    for seed in 0..8 {
        let mut cfg = SimConfig::new(seed, 6, LinkModel::lossy(0.20));
        cfg.receiver.unicast_fallback = false;
        cfg.sender.expect_receivers = 6;
        cfg.sender.done_linger_ms = 30_000;
        let out = sim::run(&cfg, &data).unwrap();
        for (i, r) in out.receivers.iter().enumerate() {
            assert!(r.finished, "seed {seed}: receiver {i}: {:?}", r.stats);
            assert!(r.data == data, "seed {seed}: receiver {i} differs");
        }
        assert!(out.sender_finished, "seed {seed}");
        assert_eq!(
            out.sender.receivers_done, 6,
            "seed {seed}: {:?}",
            out.sender
        );
    }
}

/// Random loss that stays at 20% however slow the sender goes is the link's, not
/// congestion: after a cut it is not cut again and again to its floor (which left a
/// 256 MiB session at 1 Mbit/s for minutes on a bridge with 20% loss).
#[test]
fn steady_random_loss_does_not_drive_the_rate_to_its_floor() {
    let data = file(2_000_000, 23);
    for seed in 0..4 {
        let mut cfg = SimConfig::new(seed, 2, LinkModel::lossy(0.20));
        cfg.receiver.unicast_fallback = false;
        cfg.sender.expect_receivers = 2;
        let out = sim::run(&cfg, &data).unwrap();
        assert!(
            out.receivers.iter().all(|r| r.finished && r.data == data),
            "seed {seed}"
        );
        let floor = cfg.sender.min_rate_bps;
        assert!(
            out.sender.rate_bps >= 4 * floor && out.sender.backoffs <= 4,
            "seed {seed}: rate {} bit/s after {} cuts (floor {floor})",
            out.sender.rate_bps,
            out.sender.backoffs
        );
    }
}
