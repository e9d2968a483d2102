//! Failed enrollments throttled per source address (sans-IO: the time is passed in).
//!
//! A source that fails `max_failures` enrollments within `window` is refused without a token
//! check until the window that began with its first failure has passed. The table is bounded:
//! when full, entries whose window has ended are dropped, and if none has, the new source is
//! throttled at once rather than the table growing (an attacker with many addresses then pays
//! for them, and a legitimate device retries after the window).
//!
//! ```
//! use std::time::{Duration, Instant};
//! use outpost_server::EnrollThrottle;
//!
//! let mut t = EnrollThrottle::new(3, Duration::from_secs(10), 1024);
//! let t0 = Instant::now();
//! for _ in 0..3 {
//!     assert!(t.admit("192.0.2.7", t0));
//!     t.failed("192.0.2.7", t0);
//! }
//! assert!(!t.admit("192.0.2.7", t0 + Duration::from_secs(1)));
//! assert!(t.admit("192.0.2.8", t0), "other sources are not affected");
//! assert!(t.admit("192.0.2.7", t0 + Duration::from_secs(10)));
//! ```

use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
struct Entry {
    since: Instant,
    failures: u32,
    /// Whether refusing this source was already logged in this window.
    logged: bool,
}

/// Failed-enrollment counts per source address.
#[derive(Debug)]
pub struct EnrollThrottle {
    max_failures: u32,
    window: Duration,
    capacity: usize,
    sources: HashMap<String, Entry>,
}

impl EnrollThrottle {
    /// At most `max_failures` failures per source per `window`, for at most `capacity`
    /// sources at a time.
    pub fn new(max_failures: u32, window: Duration, capacity: usize) -> Self {
        EnrollThrottle {
            max_failures: max_failures.max(1),
            window,
            capacity: capacity.max(1),
            sources: HashMap::new(),
        }
    }

    fn current(&mut self, source: &str, now: Instant) -> Option<&mut Entry> {
        let window = self.window;
        let expired = self
            .sources
            .get(source)
            .is_some_and(|e| now.saturating_duration_since(e.since) >= window);
        if expired {
            self.sources.remove(source);
        }
        self.sources.get_mut(source)
    }

    /// Whether an enrollment from `source` may be tried now.
    pub fn admit(&mut self, source: &str, now: Instant) -> bool {
        let max = self.max_failures;
        match self.current(source, now) {
            Some(e) => e.failures < max,
            None => true,
        }
    }

    /// Records a failed enrollment from `source`. Returns `true` the first time in a window
    /// that the source reaches the limit, so the caller logs once per burst, not once per
    /// attempt.
    pub fn failed(&mut self, source: &str, now: Instant) -> bool {
        let max = self.max_failures;
        if let Some(e) = self.current(source, now) {
            e.failures = e.failures.saturating_add(1);
            let first = e.failures >= max && !e.logged;
            e.logged |= first;
            return first;
        }
        if self.sources.len() >= self.capacity {
            let window = self.window;
            self.sources
                .retain(|_, e| now.saturating_duration_since(e.since) < window);
        }
        if self.sources.len() >= self.capacity
            && let Some(oldest) = self
                .sources
                .iter()
                .min_by_key(|(_, e)| e.since)
                .map(|(k, _)| k.clone())
        {
            self.sources.remove(&oldest);
        }
        let first = max == 1;
        self.sources.insert(
            source.to_string(),
            Entry {
                since: now,
                failures: 1,
                logged: first,
            },
        );
        first
    }

    /// The sources tracked now.
    pub fn len(&self) -> usize {
        self.sources.len()
    }

    /// Whether no source is tracked.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }
}
