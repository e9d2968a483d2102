//! Frame encode + decode at 64 B, 1 KiB and 64 KiB payloads: outpost-wire's `FrameCodec`
//! against tokio-util's `LengthDelimitedCodec`, in the same run, plus the full
//! `MessageCodec` carrying a `ChunkResponse`.
//!
//! `cargo bench --bench wire` runs the criterion groups and then prints, per size, the time
//! ratio outpost-wire / LengthDelimitedCodec from interleaved rounds (below 1.0 = faster).

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput};
use outpost_wire::messages::ChunkResponse;
use outpost_wire::{Frame, FrameCodec, Message, MessageCodec};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

const SIZES: [(usize, &str); 3] = [(64, "64B"), (1024, "1KiB"), (64 * 1024, "64KiB")];

fn outpost_round(codec: &mut FrameCodec, buf: &mut BytesMut, payload: &Bytes) -> usize {
    codec
        .encode(Frame::new(0x0053, payload.clone()), buf)
        .expect("encode");
    let f = codec.decode(buf).expect("decode").expect("complete");
    f.payload.len()
}

fn ldc_round(codec: &mut LengthDelimitedCodec, buf: &mut BytesMut, payload: &Bytes) -> usize {
    codec.encode(payload.clone(), buf).expect("encode");
    let f = codec.decode(buf).expect("decode").expect("complete");
    f.len()
}

fn message_round(codec: &mut MessageCodec, buf: &mut BytesMut, payload: &Bytes) -> usize {
    let m = Message::from(ChunkResponse {
        object_id: "update-1".into(),
        offset: 0,
        data: payload.clone(),
        total_size: payload.len() as u64,
    });
    codec.encode(&m, buf).expect("encode");
    match codec.decode(buf).expect("decode").expect("complete") {
        Message::ChunkResponse(c) => c.data.len(),
        _ => unreachable!("encoded a ChunkResponse"),
    }
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_encode_decode");
    for (size, label) in SIZES {
        let payload = Bytes::from(vec![0xA5u8; size]);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("outpost_wire", label), &payload, |b, p| {
            let (mut codec, mut buf) = (FrameCodec::new(), BytesMut::with_capacity(2 * size + 64));
            b.iter(|| black_box(outpost_round(&mut codec, &mut buf, p)))
        });
        g.bench_with_input(
            BenchmarkId::new("length_delimited", label),
            &payload,
            |b, p| {
                let mut codec = LengthDelimitedCodec::builder()
                    .max_frame_length(16 * 1024 * 1024)
                    .new_codec();
                let mut buf = BytesMut::with_capacity(2 * size + 64);
                b.iter(|| black_box(ldc_round(&mut codec, &mut buf, p)))
            },
        );
        g.bench_with_input(
            BenchmarkId::new("message_chunk", label),
            &payload,
            |b, p| {
                let (mut codec, mut buf) =
                    (MessageCodec::new(), BytesMut::with_capacity(2 * size + 64));
                b.iter(|| black_box(message_round(&mut codec, &mut buf, p)))
            },
        );
    }
    g.finish();
}

/// Median time per iteration of `f` over `rounds` rounds of `iters` iterations, interleaved
/// with `g` so both see the same machine state.
fn interleaved(
    rounds: usize,
    iters: usize,
    mut f: impl FnMut() -> usize,
    mut g: impl FnMut() -> usize,
) -> (Duration, Duration) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..iters {
            black_box(f());
        }
        a.push(t.elapsed() / iters as u32);
        let t = Instant::now();
        for _ in 0..iters {
            black_box(g());
        }
        b.push(t.elapsed() / iters as u32);
    }
    a.sort();
    b.sort();
    (a[rounds / 2], b[rounds / 2])
}

fn print_ratios() {
    println!(
        "\nratio outpost-wire FrameCodec / LengthDelimitedCodec (encode+decode, median of 31 interleaved rounds):"
    );
    println!(
        "{:>8} {:>14} {:>14} {:>8} {:>14} {:>8}",
        "payload", "outpost", "length_delim", "ratio", "msg_codec", "ratio"
    );
    for (size, label) in SIZES {
        let payload = Bytes::from(vec![0xA5u8; size]);
        let iters = (4_000_000 / (size + 64)).max(200);
        let (mut oc, mut ob) = (FrameCodec::new(), BytesMut::new());
        let mut lc = LengthDelimitedCodec::builder()
            .max_frame_length(16 << 20)
            .new_codec();
        let mut lb = BytesMut::new();
        let (mut mc, mut mb) = (MessageCodec::new(), BytesMut::new());
        let (o, l) = interleaved(
            31,
            iters,
            || outpost_round(&mut oc, &mut ob, &payload),
            || ldc_round(&mut lc, &mut lb, &payload),
        );
        let (m, l2) = interleaved(
            31,
            iters,
            || message_round(&mut mc, &mut mb, &payload),
            || ldc_round(&mut lc, &mut lb, &payload),
        );
        println!(
            "{label:>8} {:>12.1}ns {:>12.1}ns {:>8.3} {:>12.1}ns {:>8.3}",
            o.as_secs_f64() * 1e9,
            l.as_secs_f64() * 1e9,
            o.as_secs_f64() / l.as_secs_f64(),
            m.as_secs_f64() * 1e9,
            m.as_secs_f64() / l2.as_secs_f64(),
        );
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
    // `cargo test --benches` runs this binary in test mode: skip the ratio table there.
    if !std::env::args().any(|a| a == "--test" || a == "--list") {
        print_ratios();
    }
}
