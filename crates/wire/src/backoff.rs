//! Reconnection delays for every peer that redials (agents, the server's connector to DMZ
//! gateways, a remote-office gateway's pool): exponential with "equal jitter" from a seeded
//! generator, so a test (or a simulation) gets the same schedule for the same seed.
//!
//! ```
//! use std::time::Duration;
//! use outpost_wire::backoff::Backoff;
//! let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(30), 7);
//! let first = b.next_delay();
//! assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(200));
//! assert_eq!(b.step(), Duration::from_millis(400));
//! b.reset();
//! assert_eq!(b.step(), Duration::from_millis(200));
//! ```

use crate::rng::SplitMix64;
use std::time::Duration;

/// A jitter seed for `id` (a device or gateway id) when the configuration sets none: the id
/// mixed with the clock, so peers started together do not retry in step.
pub fn seed_for(id: &str) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    // FNV-1a of the device id, mixed with the clock.
    let h = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    h ^ nanos
}

/// The delay schedule. Step `k` (from 0) is `min(max, initial * 2^k)`; the delay is drawn
/// uniformly from the upper half of the step, `[step/2, step]`, so peers that lost the same
/// gateway do not all come back at once.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
    rng: SplitMix64,
}

impl Backoff {
    /// A schedule from `initial` to `max`, jitter seeded with `seed`.
    pub fn new(initial: Duration, max: Duration, seed: u64) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
            rng: SplitMix64::new(seed),
        }
    }

    /// The current step without jitter.
    pub fn step(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.initial
            .checked_mul(factor)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// The next delay, advancing the schedule.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step();
        if self.step() < self.max {
            self.attempt = self.attempt.saturating_add(1);
        }
        let ms = u64::try_from(step.as_millis()).unwrap_or(u64::MAX);
        let half = ms / 2;
        Duration::from_millis(ms - half + self.rng.up_to(half))
    }

    /// Back to the first step (after a successful connection).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_maximum_within_bounds_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(60), 7);
        let mut steps = Vec::new();
        for _ in 0..20 {
            let step = b.step();
            let d = b.next_delay();
            assert!(
                d >= step / 2 && d <= step,
                "{d:?} outside [{:?}, {step:?}]",
                step / 2
            );
            steps.push(step);
        }
        assert_eq!(steps[0], Duration::from_millis(200));
        assert_eq!(steps[1], Duration::from_millis(400));
        assert_eq!(*steps.last().unwrap(), Duration::from_secs(60));
        b.reset();
        assert_eq!(b.step(), Duration::from_millis(200));
    }

    #[test]
    fn same_seed_same_schedule() {
        let mk = |s| Backoff::new(Duration::from_millis(200), Duration::from_secs(60), s);
        let (mut a, mut b, mut c) = (mk(1), mk(1), mk(2));
        let xa: Vec<_> = (0..10).map(|_| a.next_delay()).collect();
        let xb: Vec<_> = (0..10).map(|_| b.next_delay()).collect();
        let xc: Vec<_> = (0..10).map(|_| c.next_delay()).collect();
        assert_eq!(xa, xb);
        assert_ne!(xa, xc);
    }
}
