//! Wall-clock time as certificates see it: whole seconds since the Unix epoch.
//!
//! Every operation that depends on the time takes it as an argument (`now: SystemTime`);
//! nothing in this crate reads the clock, so expiry and rotation are testable without waiting.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::UnixTime;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::{InputError, PkiError, Result};

/// Seconds in one day.
pub const DAY: Duration = Duration::from_secs(86_400);

/// Latest time an X.509 certificate can express (9999-12-31T23:59:59Z).
const MAX_SECS: i64 = 253_402_300_799;

/// A point in time with one-second resolution, shown as RFC 3339 (`2026-11-21T07:48:11Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// Converts a wall-clock time, truncating to whole seconds.
    ///
    /// # Errors
    /// [`InputError::TimeOutOfRange`] for a time before 1970 or after the year 9999.
    pub fn from_system_time(t: SystemTime) -> Result<Self> {
        let secs = t
            .duration_since(UNIX_EPOCH)
            .map_err(|_| PkiError::Input(InputError::TimeOutOfRange { time: t }))?
            .as_secs();
        let secs = i64::try_from(secs)
            .map_err(|_| PkiError::Input(InputError::TimeOutOfRange { time: t }))?;
        if secs > MAX_SECS {
            return Err(PkiError::Input(InputError::TimeOutOfRange { time: t }));
        }
        Ok(Self(secs))
    }

    /// From seconds since the Unix epoch (clamped to the range certificates can express).
    pub fn from_unix_seconds(secs: i64) -> Self {
        Self(secs.clamp(0, MAX_SECS))
    }

    /// Seconds since the Unix epoch.
    pub fn unix_seconds(self) -> i64 {
        self.0
    }

    /// As a [`SystemTime`].
    pub fn to_system_time(self) -> SystemTime {
        // The value is never negative (see the constructors).
        UNIX_EPOCH + Duration::from_secs(self.0.unsigned_abs())
    }

    /// Adds a duration, saturating at the latest time certificates can express.
    pub fn saturating_add(self, d: Duration) -> Self {
        let add = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        Self::from_unix_seconds(self.0.saturating_add(add))
    }

    /// Subtracts a duration, saturating at the Unix epoch.
    pub fn saturating_sub(self, d: Duration) -> Self {
        let sub = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        Self::from_unix_seconds(self.0.saturating_sub(sub))
    }

    pub(crate) fn to_offset(self) -> OffsetDateTime {
        // In range by construction; the fallback is never taken.
        OffsetDateTime::from_unix_timestamp(self.0).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    pub(crate) fn to_unix_time(self) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(self.0.unsigned_abs()))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_offset().format(&Rfc3339) {
            Ok(s) => f.write_str(&s),
            Err(_) => write!(f, "@{}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_rfc3339_and_rejects_pre_epoch() {
        let t = Timestamp::from_unix_seconds(1_795_247_291);
        assert_eq!(t.to_string(), "2026-11-21T07:48:11Z");
        assert!(Timestamp::from_system_time(UNIX_EPOCH - Duration::from_secs(1)).is_err());
        let far = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert!(matches!(
            Timestamp::from_system_time(far),
            Err(PkiError::Input(InputError::TimeOutOfRange { .. }))
        ));
    }
}
