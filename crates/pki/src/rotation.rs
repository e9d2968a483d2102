//! Certificate rotation without a gap: a reserve certificate is made ahead of expiry and
//! takes over shortly before the active one ends (the product makes it 90 days before and
//! switches one day before).
//!
//! [`Rotation`] is a sans-IO state machine: call [`Rotation::poll`] with the current time and
//! it tells what happened; the caller persists certificates and reloads TLS configurations.

use std::time::{Duration, SystemTime};

use crate::ca::{IssuedCert, ServerCa};
use crate::config::PkiConfig;
use crate::error::{CertError, PkiError, Result};
use crate::time::{DAY, Timestamp};

/// Where a certificate stands in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RotationState {
    /// Not valid yet.
    NotYetValid,
    /// Valid, nothing to do.
    Current,
    /// Valid, and it is time to have a reserve certificate.
    ReserveDue,
    /// Valid, and it is time to switch to the reserve certificate.
    SwitchDue,
    /// No longer valid.
    Expired,
}

/// When to make the reserve certificate and when to switch to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RotationSchedule {
    /// Make the reserve this long before the active certificate expires.
    pub reserve_before: Duration,
    /// Switch to the reserve this long before the active certificate expires.
    pub switch_before: Duration,
}

impl Default for RotationSchedule {
    /// The product's schedule: reserve 90 days before expiry, switch 1 day before.
    fn default() -> Self {
        Self {
            reserve_before: DAY * 90,
            switch_before: DAY,
        }
    }
}

impl RotationSchedule {
    /// The schedule configured in `config`.
    pub fn from_config(config: &PkiConfig) -> Self {
        Self {
            reserve_before: DAY * config.reserve_before_days,
            switch_before: DAY * config.switch_before_days,
        }
    }

    /// The state of a certificate valid from `not_before` to `not_after` at `now`.
    pub fn state(
        &self,
        not_before: Timestamp,
        not_after: Timestamp,
        now: Timestamp,
    ) -> RotationState {
        if now < not_before {
            RotationState::NotYetValid
        } else if now > not_after {
            RotationState::Expired
        } else if now >= not_after.saturating_sub(self.switch_before) {
            RotationState::SwitchDue
        } else if now >= not_after.saturating_sub(self.reserve_before) {
            RotationState::ReserveDue
        } else {
            RotationState::Current
        }
    }
}

/// What [`Rotation::poll`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RotationEvent {
    /// Nothing to do.
    Idle,
    /// A reserve certificate was issued (persist it).
    ReserveIssued,
    /// The reserve became the active certificate (persist it and reload TLS configurations).
    Switched,
}

/// An active certificate and, near its end, its reserve.
#[derive(Debug)]
pub struct Rotation {
    schedule: RotationSchedule,
    active: IssuedCert,
    reserve: Option<IssuedCert>,
}

impl Rotation {
    /// Starts tracking `active` with `schedule`.
    pub fn new(active: IssuedCert, schedule: RotationSchedule) -> Self {
        Self {
            schedule,
            active,
            reserve: None,
        }
    }

    /// The certificate to present now.
    pub fn active(&self) -> &IssuedCert {
        &self.active
    }

    /// The reserve certificate, once made.
    pub fn reserve(&self) -> Option<&IssuedCert> {
        self.reserve.as_ref()
    }

    /// Advances the rotation to `now`: issues the reserve (same identity, fresh key) when it
    /// is due, and switches to it when that is due. A reserve is also made at once if the
    /// switch is due and none exists yet, so the switch never leaves a gap. A reserve is only
    /// made, and a switch only happens, if the new certificate ends later than the active
    /// one; once the issuing CA itself ends no later than the active certificate, that is
    /// impossible and [`CertError::CaExpiresFirst`] says so.
    ///
    /// # Errors
    /// [`CertError::CaExpiresFirst`], or as [`ServerCa::issue`]; the state is unchanged on
    /// error.
    pub fn poll(&mut self, ca: &ServerCa, now: SystemTime) -> Result<RotationEvent> {
        let ts = Timestamp::from_system_time(now)?;
        let active_end = self.active.info.not_after;
        let state = self
            .schedule
            .state(self.active.info.not_before, active_end, ts);
        let switch = match state {
            RotationState::ReserveDue if self.reserve.is_none() => false,
            RotationState::SwitchDue | RotationState::Expired => true,
            _ => return Ok(RotationEvent::Idle),
        };
        let profile = &self.active.info.profile;
        let (ca_cert, new_end) = ca.issuance_end(profile.role(), ts);
        if new_end <= active_end {
            if ca_cert.not_after() <= active_end {
                return Err(PkiError::Cert(CertError::CaExpiresFirst {
                    subject: crate::sign::subject_of(&self.active.cert_der),
                    not_after: active_end,
                    ca: ca_cert.subject().to_owned(),
                    ca_not_after: ca_cert.not_after(),
                }));
            }
            return Ok(RotationEvent::Idle);
        }
        if !switch {
            self.reserve = Some(ca.issue(profile, now)?);
            return Ok(RotationEvent::ReserveIssued);
        }
        // A reserve that ends no later than the active certificate is no successor.
        let next = match self
            .reserve
            .take()
            .filter(|r| r.info.not_after > active_end)
        {
            Some(r) => r,
            None => ca.issue(profile, now)?,
        };
        self.active = next;
        Ok(RotationEvent::Switched)
    }
}
