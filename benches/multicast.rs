//! The CPU cost of the multicast protocol per byte delivered, without sockets: one sender
//! and one receiver through the deterministic in-memory network (`sim`), loss-free and
//! with 5% loss (every block then decoded by RaptorQ at the receiver and encoded at the
//! sender), against copying the same bytes once (the baseline: what a raw receive loop
//! costs in user space at least), plus the block hash (BLAKE3) and SHA-256 over one
//! block. These are the costs that decide how close goodput gets to a raw UDP blast on a
//! host where sender and receivers share the cores (`multicast_bench`).
//!
//! `cargo bench --bench multicast -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use outpost::multicast::manifest::{block_hash, sha256};
use outpost::multicast::sim::{self, LinkModel, SimConfig};

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
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
