//! Certificate renewal without a gap: a reserve certificate is asked for over the agent's
//! authenticated connection some time before the one it presents expires (90 days by
//! default), and the agent switches to it shortly before that one ends (one day). A fleet is
//! never locked out: every agent that connects at least once in those 89 days holds a
//! successor before it needs one.
//!
//! [`Renewal`] is a sans-IO state machine over the wall clock: call [`Renewal::poll`] with the
//! time, carry out what it says ([`Step::RequestReserve`]: send a `RenewRequest`;
//! [`Step::Switch`]: make the reserve the active certificate), and report the outcome.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use outpost_agent::renewal::{Renewal, Schedule, Step, Validity};
//! let day = Duration::from_secs(86_400);
//! let t0 = SystemTime::UNIX_EPOCH + day * 20_000;
//! let mut r = Renewal::new(Schedule::default(), Validity::new(t0, t0 + day * 397), None);
//! assert_eq!(r.poll(t0 + day * 300), Step::Idle);
//! assert_eq!(r.poll(t0 + day * 308), Step::RequestReserve);
//! r.reserve_received(Validity::new(t0 + day * 308, t0 + day * 705)).unwrap();
//! assert_eq!(r.poll(t0 + day * 395), Step::Idle);
//! assert_eq!(r.poll(t0 + day * 396), Step::Switch);
//! r.switched();
//! assert_eq!(r.active().not_after, t0 + day * 705);
//! ```

use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The wall clock renewal is scheduled by: the system's, or a virtual one in tests and
/// simulations ([`crate::Agent::start_with_clock`]).
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// The system's clock.
pub fn system_clock() -> Clock {
    Arc::new(SystemTime::now)
}

/// Where renewal stands, for display and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RenewalStatus {
    /// The certificate presented now.
    pub active: Validity,
    /// Its reserve, once held.
    pub reserve: Option<Validity>,
    /// Switches to a reserve made by this run.
    pub switches: u64,
}

/// How long after a failed request for a reserve the next one is made (default).
pub const RETRY_AFTER: Duration = Duration::from_secs(600);

/// When to ask for the reserve and when to switch to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Schedule {
    /// Ask for the reserve this long before the active certificate expires.
    pub reserve_before: Duration,
    /// Switch to the reserve this long before the active certificate expires.
    pub switch_before: Duration,
    /// After a failed request, ask again this much later.
    pub retry_after: Duration,
}

impl Default for Schedule {
    /// 90 days before expiry, one day before, ten minutes.
    fn default() -> Self {
        Schedule {
            reserve_before: Duration::from_secs(90 * 86_400),
            switch_before: Duration::from_secs(86_400),
            retry_after: RETRY_AFTER,
        }
    }
}

impl Schedule {
    /// A schedule with these periods.
    pub fn new(reserve_before: Duration, switch_before: Duration, retry_after: Duration) -> Self {
        Schedule {
            reserve_before,
            switch_before,
            retry_after,
        }
    }
}

/// A certificate's validity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Validity {
    /// Valid from.
    pub not_before: SystemTime,
    /// Valid until.
    pub not_after: SystemTime,
}

impl Validity {
    /// A validity period.
    pub fn new(not_before: SystemTime, not_after: SystemTime) -> Self {
        Validity {
            not_before,
            not_after,
        }
    }

    /// The validity of an issued certificate.
    pub fn of(cert: &outpost_pki::IssuedCert) -> Self {
        Validity::new(
            cert.info.not_before.to_system_time(),
            cert.info.not_after.to_system_time(),
        )
    }
}

/// What the driver must do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// Nothing.
    Idle,
    /// Ask the server for a reserve certificate (a fresh key's request), then report
    /// [`Renewal::reserve_received`] or [`Renewal::request_failed`].
    RequestReserve,
    /// Make the reserve the active certificate and reconnect with it, then report
    /// [`Renewal::switched`].
    Switch,
}

/// Why a reserve certificate was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RenewalError {
    /// The certificate offered ends no later than the active one: it would succeed nothing.
    #[error(
        "the reserve certificate ends at {reserve:?}, no later than the active one ({active:?})"
    )]
    NoSuccessor {
        /// The reserve's end.
        reserve: SystemTime,
        /// The active certificate's end.
        active: SystemTime,
    },
    /// No reserve was asked for.
    #[error("a reserve certificate nobody asked for")]
    NotRequested,
}

/// The renewal state of one agent certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewal {
    schedule: Schedule,
    active: Validity,
    reserve: Option<Validity>,
    in_flight: bool,
    retry_at: Option<SystemTime>,
}

impl Renewal {
    /// Tracks `active`, with the reserve already held (from an earlier run), if any. A
    /// reserve that ends no later than `active` is no successor and is not kept.
    pub fn new(schedule: Schedule, active: Validity, reserve: Option<Validity>) -> Self {
        Renewal {
            schedule,
            active,
            reserve: reserve.filter(|r| r.not_after > active.not_after),
            in_flight: false,
            retry_at: None,
        }
    }

    /// The active certificate's validity.
    pub fn active(&self) -> Validity {
        self.active
    }

    /// The reserve's validity, once held.
    pub fn reserve(&self) -> Option<Validity> {
        self.reserve
    }

    /// Whether a request for the reserve is out.
    pub fn in_flight(&self) -> bool {
        self.in_flight
    }

    fn reserve_at(&self) -> SystemTime {
        self.active
            .not_after
            .checked_sub(self.schedule.reserve_before)
            .unwrap_or(SystemTime::UNIX_EPOCH)
            .max(self.active.not_before)
    }

    fn switch_at(&self) -> SystemTime {
        self.active
            .not_after
            .checked_sub(self.schedule.switch_before)
            .unwrap_or(SystemTime::UNIX_EPOCH)
            .max(self.active.not_before)
    }

    /// What to do at `now`. A reserve is asked for from `reserve_before` ahead of expiry
    /// (once at a time, and `retry_after` after a failure) until the active certificate has
    /// expired (then the connection it needs no longer authenticates: the agent must enroll
    /// again); the switch is due from `switch_before` ahead of expiry.
    pub fn poll(&mut self, now: SystemTime) -> Step {
        if self.reserve.is_some() {
            return if now >= self.switch_at() {
                Step::Switch
            } else {
                Step::Idle
            };
        }
        if self.in_flight
            || now < self.reserve_at()
            || now > self.active.not_after
            || self.retry_at.is_some_and(|t| now < t)
        {
            return Step::Idle;
        }
        self.in_flight = true;
        Step::RequestReserve
    }

    /// When [`poll`](Self::poll) has something to do next, if ever.
    pub fn poll_timeout(&self) -> Option<SystemTime> {
        if self.reserve.is_some() {
            return Some(self.switch_at());
        }
        if self.in_flight {
            return None;
        }
        let at = self
            .retry_at
            .map_or(self.reserve_at(), |r| r.max(self.reserve_at()));
        (at <= self.active.not_after).then_some(at)
    }

    /// The reserve asked for arrived and is stored.
    ///
    /// # Errors
    /// [`RenewalError::NoSuccessor`] if it ends no later than the active certificate (asked
    /// again after `retry_after`), [`RenewalError::NotRequested`] if none was asked for.
    pub fn reserve_received(&mut self, reserve: Validity) -> Result<(), RenewalError> {
        if !self.in_flight {
            return Err(RenewalError::NotRequested);
        }
        self.in_flight = false;
        if reserve.not_after <= self.active.not_after {
            self.retry_at = Some(reserve.not_before + self.schedule.retry_after);
            return Err(RenewalError::NoSuccessor {
                reserve: reserve.not_after,
                active: self.active.not_after,
            });
        }
        self.reserve = Some(reserve);
        self.retry_at = None;
        Ok(())
    }

    /// The request failed (refused, the connection lost, the answer unusable): asked again
    /// `retry_after` from `now`.
    pub fn request_failed(&mut self, now: SystemTime) {
        self.in_flight = false;
        self.retry_at = Some(now + self.schedule.retry_after);
    }

    /// The reserve could not be used (its files unreadable): it is dropped, and another is
    /// asked for `retry_after` from `now`.
    pub fn reserve_lost(&mut self, now: SystemTime) {
        self.reserve = None;
        self.in_flight = false;
        self.retry_at = Some(now + self.schedule.retry_after);
    }

    /// The reserve is the active certificate now.
    pub fn switched(&mut self) {
        if let Some(r) = self.reserve.take() {
            self.active = r;
        }
        self.in_flight = false;
        self.retry_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + DAY * 20_000
    }

    #[test]
    fn a_failed_request_is_retried_later_and_an_expired_certificate_asks_nothing() {
        let mut r = Renewal::new(
            Schedule::default(),
            Validity::new(t0(), t0() + DAY * 397),
            None,
        );
        let due = t0() + DAY * 307;
        assert_eq!(r.poll(due), Step::RequestReserve);
        assert_eq!(r.poll(due), Step::Idle, "one request at a time");
        assert_eq!(r.poll_timeout(), None);
        r.request_failed(due);
        assert_eq!(r.poll(due + RETRY_AFTER / 2), Step::Idle);
        assert_eq!(r.poll_timeout(), Some(due + RETRY_AFTER));
        assert_eq!(r.poll(due + RETRY_AFTER), Step::RequestReserve);
        r.request_failed(due + RETRY_AFTER);
        let end = t0() + DAY * 397;
        assert_eq!(
            r.poll(end + DAY),
            Step::Idle,
            "expired: no connection to ask on"
        );
    }

    #[test]
    fn a_reserve_that_succeeds_nothing_is_refused_and_asked_for_again() {
        let mut r = Renewal::new(
            Schedule::default(),
            Validity::new(t0(), t0() + DAY * 397),
            None,
        );
        let due = t0() + DAY * 310;
        assert_eq!(r.poll(due), Step::RequestReserve);
        let same_end = Validity::new(due, t0() + DAY * 397);
        assert!(matches!(
            r.reserve_received(same_end),
            Err(RenewalError::NoSuccessor { .. })
        ));
        assert_eq!(r.reserve(), None);
        assert_eq!(r.poll(due + RETRY_AFTER), Step::RequestReserve);
        assert_eq!(
            r.reserve_received(Validity::new(due, t0() + DAY * 700)),
            Ok(())
        );
        assert_eq!(
            r.reserve_received(Validity::new(due, t0() + DAY * 700)),
            Err(RenewalError::NotRequested)
        );
        assert_eq!(r.poll_timeout(), Some(t0() + DAY * 396));
    }

    #[test]
    fn a_reserve_kept_from_an_earlier_run_is_switched_to_without_asking() {
        let active = Validity::new(t0(), t0() + DAY * 397);
        let kept = Validity::new(t0() + DAY * 310, t0() + DAY * 707);
        let mut r = Renewal::new(Schedule::default(), active, Some(kept));
        assert_eq!(r.poll(t0() + DAY * 320), Step::Idle);
        assert_eq!(
            r.poll(t0() + DAY * 398),
            Step::Switch,
            "late: switch at once"
        );
        r.switched();
        assert_eq!(r.active(), kept);
        // A stale reserve (no later than the active one) is dropped.
        let r = Renewal::new(Schedule::default(), active, Some(active));
        assert_eq!(r.reserve(), None);
    }
}
