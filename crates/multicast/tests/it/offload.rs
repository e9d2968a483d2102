//! Compute work handed out as jobs (receiver block decoding and hashing, sender encoder
//! building): the result must be the same byte-exact file, whatever arrives while a job is
//! out, including forged symbols and blocks completed another way meanwhile.

use std::time::{Duration, Instant};

use outpost_multicast::sender::announce_packets;
use outpost_multicast::sim::{self, LinkModel, SimConfig};
use outpost_multicast::{Manifest, Receiver, ReceiverConfig, ReceiverEvent, SigningKey};
use proptest::prelude::*;

use crate::common;
use common::file;

const T: u16 = 64;
const K: u32 = 8;

fn offloading_receiver() -> (Vec<u8>, Manifest, Receiver) {
    let key = SigningKey::from_seed(&[4u8; 32]).unwrap();
    let data = file(3 * (K * u32::from(T)) as usize - 10, 11);
    let m = Manifest::for_bytes(9, "j.bin", &data, T, K).unwrap();
    let mut cfg = ReceiverConfig::default();
    cfg.offload_block_work = true;
    let mut rx = Receiver::new(cfg, &key.public_key()).unwrap();
    for p in announce_packets(9, &m.sign(key.key_pair()), 256).unwrap() {
        rx.handle_datagram(Instant::now(), common::from(), &p);
    }
    assert!(rx.manifest().is_some());
    assert!(matches!(
        rx.poll_event(),
        Some(ReceiverEvent::ManifestAccepted(_))
    ));
    (data, m, rx)
}

fn verified(rx: &mut Receiver) -> Vec<(u32, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(ev) = rx.poll_event() {
        if let ReceiverEvent::BlockVerified { block, data, .. } = ev {
            out.push((block, data));
        }
    }
    out
}

#[test]
fn decoding_job_uses_symbols_and_checks_hash() {
    let (data, m, mut rx) = offloading_receiver();
    let now = Instant::now();
    let mut seq = 0;
    let mut feed = |rx: &mut Receiver, block: u32, esi: u32, sym: &[u8]| {
        seq += 1;
        rx.handle_datagram(
            now,
            common::from(),
            &common::data_packet(9, seq, block, esi, sym),
        );
    };
    // Block 0: one source symbol lost, one repair symbol instead.
    for esi in (0..K).filter(|e| *e != 3) {
        feed(&mut rx, 0, esi, &common::symbol(&data, T, K, 0, esi));
    }
    let (esi, sym) = common::repair(&data, &m, T, K, 0, 0);
    feed(&mut rx, 0, esi, &sym);
    // Nothing is decoded inside handle_datagram: the work is a job.
    assert!(verified(&mut rx).is_empty());
    let job = rx.poll_job().expect("a job for block 0");
    assert_eq!(job.block(), 0);
    assert!(job.needs_decoding());
    assert!(rx.poll_job().is_none());
    // Symbols arriving meanwhile are held, then dropped as duplicates on success.
    feed(&mut rx, 0, 3, &common::symbol(&data, T, K, 0, 3));
    rx.complete_job(job.run());
    let got = verified(&mut rx);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, 0);
    assert_eq!(got[0].1, data[..m.block_len(0)]);
    assert_eq!(rx.stats().blocks_decoded, 1);
    assert_eq!(rx.stats().duplicates, 1);
    assert_eq!(rx.blocks_done(), 1);

    // Block 1: a forged symbol makes the job fail the block hash; nothing is written and
    // the block is collected again.
    for esi in 0..K {
        let mut s = common::symbol(&data, T, K, 1, esi);
        if esi == 5 {
            s[0] ^= 0x80;
        }
        feed(&mut rx, 1, esi, &s);
    }
    let job = rx.poll_job().expect("a job for block 1");
    assert!(!job.needs_decoding());
    rx.complete_job(job.run());
    assert!(verified(&mut rx).is_empty());
    assert_eq!(rx.stats().blocks_rejected, 1);
    for esi in 0..K {
        feed(&mut rx, 1, esi, &common::symbol(&data, T, K, 1, esi));
    }
    let job = rx.poll_job().expect("block 1 again");
    rx.complete_job(job.run());
    let got = verified(&mut rx);
    assert_eq!(got.len(), 1);
    let off = m.block_offset(1) as usize;
    assert_eq!(got[0].1, data[off..off + m.block_len(1)]);
}

#[test]
fn block_offered_while_its_job_is_out() {
    let (data, m, mut rx) = offloading_receiver();
    let now = Instant::now();
    for esi in 0..K {
        let p = common::data_packet(
            9,
            u64::from(esi) + 1,
            2,
            esi,
            &common::symbol(&data, T, K, 2, esi),
        );
        rx.handle_datagram(now, common::from(), &p);
    }
    let job = rx.poll_job().expect("a job for block 2");
    let off = m.block_offset(2) as usize;
    assert!(rx.offer_block(2, &data[off..off + m.block_len(2)]).unwrap());
    assert_eq!(rx.blocks_done(), 1);
    // The late result changes nothing: no second write, no second count.
    rx.complete_job(job.run());
    assert!(verified(&mut rx).is_empty());
    assert_eq!(rx.blocks_done(), 1);
}

#[test]
fn offloaded_runs_are_byte_exact_under_heavy_loss() {
    let data = file(150_000, 7);
    let links = (0..24)
        .map(|i| LinkModel::lossy(f64::from(i % 5) * 0.05)) // 0% .. 20%
        .collect();
    let mut cfg = SimConfig::new(3, 0, LinkModel::default());
    cfg.links = links;
    cfg.sender.offload_encoding = true;
    cfg.receiver.offload_block_work = true;
    cfg.job_delay = Duration::from_millis(2);
    let out = sim::run(&cfg, &data).unwrap();
    assert!(out.sender_finished);
    for (i, r) in out.receivers.iter().enumerate() {
        assert!(r.finished, "receiver {i}: {:?}", r.stats);
        assert!(r.data == data, "receiver {i} differs");
    }
    assert!(out.sender.repair_packets > 0);
    let decoded: u64 = out.receivers.iter().map(|r| r.stats.blocks_decoded).sum();
    assert!(decoded > 0, "jobs decoded blocks");
    // Offloading changes when work is done, not how much repair the protocol needs.
    cfg.sender.offload_encoding = false;
    cfg.receiver.offload_block_work = false;
    let inline = sim::run(&cfg, &data).unwrap();
    assert!(
        out.sender.repair_packets <= inline.sender.repair_packets * 3 / 2 + 20,
        "offloaded {} vs inline {} repair symbols",
        out.sender.repair_packets,
        inline.sender.repair_packets
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn offloaded_sessions_end_byte_exact(
        seed in any::<u64>(),
        len in 1usize..40_000,
        receivers in 1usize..6,
        loss in 0.0f64..0.25,
        delay_us in 0u64..20_000,
        send_side in any::<bool>(),
    ) {
        let data = file(len, seed as u32);
        let mut cfg = SimConfig::new(seed, receivers, LinkModel::lossy(loss));
        cfg.sender.offload_encoding = send_side;
        cfg.receiver.offload_block_work = true;
        cfg.job_delay = Duration::from_micros(delay_us);
        let out = sim::run(&cfg, &data).unwrap();
        prop_assert!(out.sender_finished);
        for r in &out.receivers {
            prop_assert!(r.finished, "{:?}", r.stats);
            prop_assert!(r.data == data);
        }
    }
}

/// Real loopback sockets with both sides offloading: the driver runs the jobs on worker
/// threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_runs_jobs_over_loopback_multicast() {
    use outpost_multicast::Sender;
    use outpost_multicast::driver;

    let sc = common::loopback_config(9);
    let data = file(2_000_000, 13);
    let key = SigningKey::from_seed(&[6u8; 32]).unwrap();
    let pk = key.public_key();
    // Receiver 1 loses 5% (seeded), so blocks need decoding.
    let handles = common::spawn_receivers(&sc, 2, 1, 5, pk, |r| r.offload_block_work = true);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut scfg = common::test_sender_config();
    scfg.offload_encoding = true;
    let m =
        Manifest::for_bytes(0x51, "o.bin", &data, scfg.symbol_size, scfg.block_symbols).unwrap();
    let signed = m.sign(key.key_pair());
    let mut sender = Sender::new(scfg, m, &signed, Box::new(data.clone()), Instant::now()).unwrap();
    let sock = driver::send_socket(&sc).unwrap();
    let stats = tokio::time::timeout(
        Duration::from_secs(30),
        driver::run_sender(&sock, sc.group, &mut sender, |_, _| {}),
    )
    .await
    .expect("sender finished in time")
    .expect("sender ok");
    assert!(stats.repair_packets > 0, "{stats:?}");
    for h in handles {
        let (res, written, _dir) = h.await.unwrap();
        assert!(written == data, "file byte-exact");
        if res.injected_drops > 0 {
            assert!(res.stats.blocks_decoded > 0, "{:?}", res.stats);
        }
    }
}
