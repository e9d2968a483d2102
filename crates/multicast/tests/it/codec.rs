//! Packet and manifest codecs: round trips, arbitrary bytes, the fuzz corpus.

use outpost_multicast::packet::{BlockCount, Packet};
use outpost_multicast::{Manifest, ManifestLimits, SigningKey};
use proptest::prelude::*;

fn entries() -> impl Strategy<Value = Vec<BlockCount>> {
    prop::collection::vec(
        (any::<u32>(), any::<u32>()).prop_map(|(block, count)| BlockCount { block, count }),
        0..40,
    )
}

fn packet_parts() -> impl Strategy<Value = (u8, u64, u64, u32, u32, Vec<u8>, Vec<BlockCount>, u16)>
{
    (
        1u8..=8,
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
        0u32..(1 << 24),
        prop::collection::vec(any::<u8>(), 1..300),
        entries(),
        0u16..=1000,
    )
}

fn build<'a>(p: &'a (u8, u64, u64, u32, u32, Vec<u8>, Vec<BlockCount>, u16)) -> Packet<'a> {
    let (ty, session, a64, a32, esi, bytes, entries, small) = p;
    let (session, a64, a32, esi, small) = (*session, *a64, *a32, *esi, *small);
    match ty {
        1 => Packet::Data {
            session,
            seq: a64,
            block: a32,
            esi,
            symbol: bytes,
        },
        2 => {
            let chunks = small.max(1);
            Packet::Announce {
                session,
                chunk: small % chunks,
                chunks,
                total: a32,
                bytes,
            }
        }
        3 => Packet::Poll {
            session,
            poll: a32,
            upto_block: esi,
            high_seq: a64,
        },
        4 => Packet::Nak {
            session,
            poll: a32,
            loss_permille: small,
            entries: entries.clone(),
        },
        5 => Packet::Ncf {
            session,
            poll: a32,
            entries: entries.clone(),
        },
        6 => Packet::End {
            session,
            high_seq: a64,
        },
        8 => Packet::Load {
            session,
            poll: a32,
            jobs: esi,
            dropped: a64 as u32,
        },
        _ => {
            let mut file_hash = [0u8; 32];
            for (d, s) in file_hash.iter_mut().zip(bytes.iter().cycle()) {
                *d = *s;
            }
            Packet::Done { session, file_hash }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn packet_round_trip(parts in packet_parts()) {
        let p = build(&parts);
        let mut out = Vec::new();
        p.encode(&mut out);
        prop_assert_eq!(Packet::decode(&out).unwrap(), p);
    }

    #[test]
    fn truncated_packets_are_errors(parts in packet_parts(), cut in 0usize..64) {
        let p = build(&parts);
        let mut out = Vec::new();
        p.encode(&mut out);
        // Fixed-size packets must fail when cut; variable ones may still decode but
        // never as the original.
        let cut = cut.min(out.len() - 1);
        if let Ok(q) = Packet::decode(&out[..cut]) {
            prop_assert_ne!(q, p);
        }
    }

    #[test]
    fn manifest_round_trip(
        size in 0usize..20_000,
        symbol in 16u16..600,
        k in 1u32..40,
        session in any::<u64>(),
        seed in any::<u8>(),
    ) {
        let data = outpost_testkit::payload(u64::from(seed), size);
        let key = SigningKey::from_seed(&[seed; 32]).unwrap();
        let m = Manifest::for_bytes(session, "file-1.bin", &data, symbol, k).unwrap();
        let signed = m.sign(key.key_pair());
        let back = Manifest::decode_verified(&signed, &key.public_key(), &ManifestLimits::default()).unwrap();
        prop_assert_eq!(&back, &m);
        // Block layout covers the file exactly.
        let total: usize = (0..m.block_count()).map(|b| m.block_len(b)).sum();
        prop_assert_eq!(total, size);
        // Any flipped bit is rejected.
        let mut bad = signed.clone();
        let i = (session as usize) % bad.len();
        bad[i] ^= 1 << (seed % 8);
        prop_assert!(Manifest::decode_verified(&bad, &key.public_key(), &ManifestLimits::default()).is_err());
    }
}

#[test]
fn decode_errors_name_the_problem() {
    let e = Packet::decode(&[0x12, 0x34, 1, 1]).unwrap_err().to_string();
    assert!(e.contains("0x1234"), "{e}");
    let mut p = Vec::new();
    Packet::End {
        session: 1,
        high_seq: 2,
    }
    .encode(&mut p);
    p[2] = 9;
    assert!(
        Packet::decode(&p)
            .unwrap_err()
            .to_string()
            .contains("version 9")
    );
    p[2] = 1;
    p[3] = 42;
    assert!(
        Packet::decode(&p)
            .unwrap_err()
            .to_string()
            .contains("type 42")
    );
    // A NAK claiming 1000 entries with 1 present.
    let mut nak = Vec::new();
    Packet::Nak {
        session: 1,
        poll: 1,
        loss_permille: 0,
        entries: vec![BlockCount { block: 1, count: 1 }],
    }
    .encode(&mut nak);
    let at = nak.len() - 10;
    nak[at..at + 2].copy_from_slice(&1000u16.to_be_bytes());
    let e = Packet::decode(&nak).unwrap_err().to_string();
    assert!(e.contains("8000"), "{e}");
}
