//! The CPU cost of the multicast protocol per byte delivered, without sockets: one sender
//! and one receiver through the deterministic in-memory network (`sim`), loss-free and
//! with 5% loss (every block then decoded by RaptorQ at the receiver and encoded at the
//! sender), against copying the same bytes once (the baseline: what a raw receive loop
//! costs in user space at least), plus the block hash (BLAKE3) and SHA-256 over one
//! block. These are the costs that decide how close goodput gets to a raw UDP blast on a
//! host where sender and receivers share the cores (`multicast_bench`).
//!
//! The `fec` group prices the forward error correction of one 1 MiB block (128 symbols of
//! 8 KiB) with 7 symbols lost (about 5%), and of a 32-symbol block with 2 lost: RaptorQ as
//! the protocol runs it (the sender builds the block's encoder and takes a repair symbol
//! per loss; a receiver decodes the rest of the source symbols and those repair symbols),
//! against the Reed-Solomon codec of `reed-solomon-simd` doing the same work, the
//! alternative FEC crate.
//!
//! `cargo bench --bench multicast -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use outpost::multicast::manifest::{block_hash, sha256};
use outpost::multicast::sim::{self, LinkModel, SimConfig};
use raptorq::{
    EncodingPacket, ObjectTransmissionInformation, PayloadId, SourceBlockDecoder,
    SourceBlockEncoder,
};
use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

const SYMBOL: u16 = 8192;
const BLOCK: u32 = 128;
const FILE: usize = 8 << 20;

fn file() -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..FILE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn config(loss: f64) -> SimConfig {
    let mut link = LinkModel::default();
    link.loss = loss;
    let mut cfg = SimConfig::new(7, 1, link);
    cfg.sender.symbol_size = SYMBOL;
    cfg.sender.block_symbols = BLOCK;
    cfg.sender.max_rate_bps = 8_000_000_000;
    cfg.sender.expect_receivers = 1;
    cfg
}

fn bench(c: &mut Criterion) {
    let data = file();
    let mut g = c.benchmark_group("multicast");
    g.throughput(Throughput::Bytes(FILE as u64));
    g.bench_function("baseline: copy every symbol once", |b| {
        let mut out = vec![0u8; FILE];
        b.iter(|| {
            for (dst, src) in out
                .chunks_mut(usize::from(SYMBOL))
                .zip(data.chunks(usize::from(SYMBOL)))
            {
                dst.copy_from_slice(black_box(src));
            }
            black_box(&out);
        })
    });
    for (name, loss) in [
        ("sender + receiver, 0% loss", 0.0),
        ("sender + receiver, 5% loss", 0.05),
    ] {
        let cfg = config(loss);
        let check = sim::run(&cfg, &data).expect("sim");
        assert!(
            check.receivers[0].finished && check.receivers[0].data == data,
            "{name}: byte-exact"
        );
        g.bench_function(name, |b| {
            b.iter(|| black_box(sim::run(&cfg, black_box(&data)).expect("sim")))
        });
    }
    let block = &data[..usize::from(SYMBOL) * BLOCK as usize];
    g.throughput(Throughput::Bytes(block.len() as u64));
    g.bench_function("block hash (BLAKE3), 1 MiB", |b| {
        b.iter(|| black_box(block_hash(black_box(block))))
    });
    g.bench_function("SHA-256, 1 MiB", |b| {
        b.iter(|| black_box(sha256(black_box(block))))
    });
    g.finish();
    fec(c, &data);
}

/// The `fec` group's blocks: symbols per block, symbols lost (5%, rounded up), and the
/// recovery counts Reed-Solomon is set up with. Its recovery count is fixed when it
/// encodes: 32 leaves room for a second round of repair, 128 allows as much repair as
/// there are source symbols.
const FEC_SHAPES: [(usize, usize, &[usize]); 2] = [(128, 7, &[32, 128]), (32, 2, &[32])];

fn fec(c: &mut Criterion, data: &[u8]) {
    let t = usize::from(SYMBOL);
    let mut g = c.benchmark_group("fec");
    // The same transmission parameters as the sender and receiver use.
    let oti = ObjectTransmissionInformation::new(0, SYMBOL, 0, 1, 1);
    for (k, lost_count, recoveries) in FEC_SHAPES {
        let block = &data[..k * t];
        let lost: Vec<usize> = (0..lost_count).map(|i| (i * 17 + 3) % k).collect();
        let kept = || (0..k).filter(|i| !lost.contains(i));
        let symbol = |i: usize| &block[i * t..(i + 1) * t];
        g.throughput(Throughput::Bytes(block.len() as u64));
        let raptorq_encode =
            || SourceBlockEncoder::new(0, &oti, block).repair_packets(0, lost_count as u32);
        let repairs = raptorq_encode();
        let raptorq_decode = || {
            let mut dec = SourceBlockDecoder::new(0, &oti, block.len() as u64);
            let sources = kept()
                .map(|i| EncodingPacket::new(PayloadId::new(0, i as u32), symbol(i).to_vec()));
            dec.decode(sources.chain(repairs.iter().cloned()))
        };
        assert_eq!(
            raptorq_decode().as_deref(),
            Some(block),
            "RaptorQ restores the block"
        );
        g.bench_function(
            format!("RaptorQ, {k} symbols: encoder + {lost_count} repair"),
            |b| b.iter(|| black_box(raptorq_encode())),
        );
        g.bench_function(
            format!("RaptorQ, {k} symbols: decode, {lost_count} lost"),
            |b| b.iter(|| black_box(raptorq_decode())),
        );
        for &recovery in recoveries {
            let rs_encode = || {
                let mut enc = ReedSolomonEncoder::new(k, recovery, t).expect("encoder");
                for i in 0..k {
                    enc.add_original_shard(symbol(i)).expect("shard");
                }
                let out = enc.encode().expect("encode");
                out.recovery_iter()
                    .take(lost_count)
                    .map(<[u8]>::to_vec)
                    .collect::<Vec<_>>()
            };
            let recovered = rs_encode();
            let rs_decode = || {
                let mut dec = ReedSolomonDecoder::new(k, recovery, t).expect("decoder");
                for i in kept() {
                    dec.add_original_shard(i, symbol(i)).expect("shard");
                }
                for (j, r) in recovered.iter().enumerate() {
                    dec.add_recovery_shard(j, r).expect("shard");
                }
                let out = dec.decode().expect("decode");
                out.restored_original_iter()
                    .map(|(i, s)| (i, s.to_vec()))
                    .collect::<Vec<_>>()
            };
            let restored = rs_decode();
            assert_eq!(
                restored.len(),
                lost_count,
                "Reed-Solomon restores every lost symbol"
            );
            for (i, s) in &restored {
                assert_eq!(s.as_slice(), symbol(*i), "symbol {i}");
            }
            let name = format!("Reed-Solomon ({recovery} recovery), {k} symbols");
            g.bench_function(format!("{name}: encode, {lost_count} taken"), |b| {
                b.iter(|| black_box(rs_encode()))
            });
            g.bench_function(format!("{name}: decode, {lost_count} lost"), |b| {
                b.iter(|| black_box(rs_decode()))
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
