//! Token bucket pacing (time passed in).

use std::time::{Duration, Instant};

/// A token bucket counting bytes.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket refilling at `rate_bytes_per_sec`, holding at most `capacity` bytes.
    pub fn new(now: Instant, rate_bytes_per_sec: f64, capacity: f64) -> TokenBucket {
        TokenBucket {
            rate: rate_bytes_per_sec,
            capacity,
            tokens: capacity,
            last: now,
        }
    }

    /// Current refill rate, bytes per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Changes the refill rate (tokens already there stay).
    pub fn set_rate(&mut self, now: Instant, rate_bytes_per_sec: f64) {
        self.refill(now);
        self.rate = rate_bytes_per_sec;
    }

    /// Adds the tokens accrued since the last call.
    pub fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + dt * self.rate).min(self.capacity);
    }

    /// Whether `len` bytes may be sent now.
    pub fn has(&self, len: usize) -> bool {
        self.tokens >= len as f64
    }

    /// Takes `len` bytes (may go negative for control packets).
    pub fn consume(&mut self, len: usize) {
        self.tokens -= len as f64;
    }

    /// Earliest time `len` bytes will be available.
    pub fn ready_at(&self, len: usize) -> Instant {
        let missing = len as f64 - self.tokens;
        if missing <= 0.0 {
            self.last
        } else {
            self.last + Duration::from_secs_f64(missing / self.rate)
        }
    }
}
