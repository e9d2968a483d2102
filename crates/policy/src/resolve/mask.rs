//! Sets of active profiles as bit masks, and the hasher for the keys the resolver computes.

use std::hash::{BuildHasherDefault, Hasher};

/// The set of active profiles of a chain, by index: inline up to 128 profiles.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Mask {
    Inline([u64; 2]),
    Heap(Box<[u64]>),
}

impl Mask {
    pub(super) fn new(profiles: usize) -> Mask {
        if profiles <= 128 {
            Mask::Inline([0; 2])
        } else {
            Mask::Heap(vec![0; profiles.div_ceil(64)].into_boxed_slice())
        }
    }
    pub(super) fn words(&self) -> &[u64] {
        match self {
            Mask::Inline(w) => w,
            Mask::Heap(b) => b,
        }
    }
    pub(super) fn words_mut(&mut self) -> &mut [u64] {
        match self {
            Mask::Inline(w) => w,
            Mask::Heap(b) => b,
        }
    }
    pub(super) fn set(&mut self, i: usize) {
        let words: &mut [u64] = match self {
            Mask::Inline(w) => w,
            Mask::Heap(b) => b,
        };
        if let Some(w) = words.get_mut(i / 64) {
            *w |= 1u64 << (i % 64);
        }
    }
}

/// Whether bit `i` of the mask words `mask` is set.
pub(super) fn mask_has(mask: &[u64], i: usize) -> bool {
    mask.get(i / 64)
        .is_some_and(|w| w & (1u64 << (i % 64)) != 0)
}

/// A small multiplicative hasher for profile masks and interned ids (keys are not
/// attacker-chosen strings: they are bit sets and dense ids computed here).
#[derive(Default, Clone, Copy)]
pub(super) struct FastHasher(u64);

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(buf));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// The hash map builder of [`FastHasher`].
pub(super) type Fast = BuildHasherDefault<FastHasher>;
