//! Enrollment tokens: issued, revoked, expired, and checked when a device enrolls with one.

use super::*;

impl Registry {
    /// Issues a one-time enrollment token placing the device in `group`, usable until
    /// `now + ttl`, optionally only by `device`. The token is returned once and stored only
    /// as its SHA-256. `ttl` is at most [`MAX_TOKEN_TTL`] (a [`ServerError::Config`] error
    /// beyond).
    pub fn issue_token(
        &mut self,
        group: &str,
        device: Option<&str>,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<String, ServerError> {
        use aws_lc_rs::rand::SecureRandom;
        if !self.groups.contains_key(group) {
            return Err(ServerError::UnknownGroup(group.into()));
        }
        if let Some(d) = device {
            check_id("device id", d)?;
        }
        if ttl > MAX_TOKEN_TTL {
            return Err(ServerError::Config(format!(
                "enrollment token lifetime of {} s, more than the maximum of {} s (one year)",
                ttl.as_secs(),
                MAX_TOKEN_TTL.as_secs()
            )));
        }
        let mut raw = [0u8; 32];
        aws_lc_rs::rand::SystemRandom::new()
            .fill(&mut raw)
            .map_err(|_| ServerError::Random)?;
        let token = hex(&raw);
        self.write(Op::PutToken {
            key: token_key(&token),
            token: TokenRecord {
                group: group.into(),
                device: device.map(Into::into),
                expires_unix: unix(now + ttl),
            },
        });
        Ok(token)
    }

    /// Revokes the unused token whose SHA-256 (hex) is `key`.
    pub fn revoke_token(&mut self, key: &str) -> Result<(), ServerError> {
        if !self.tokens.contains_key(key) {
            return Err(ServerError::Unknown {
                kind: "enrollment token",
                id: key.chars().take(64).collect(),
            });
        }
        self.write(Op::DeleteToken { key: key.into() });
        Ok(())
    }

    /// Number of unused tokens.
    pub fn pending_tokens(&self) -> usize {
        self.tokens.len()
    }

    /// Drops expired tokens; returns how many.
    pub fn purge_expired_tokens(&mut self, now: SystemTime) -> usize {
        let now = unix(now);
        let expired: Vec<String> = self
            .tokens
            .iter()
            .filter(|(_, t)| t.expires_unix <= now)
            .map(|(k, _)| k.clone())
            .collect();
        let n = expired.len();
        for key in expired {
            self.write(Op::DeleteToken { key });
        }
        n
    }

    /// Whether `device` enrolled with `token` and has never connected since: its
    /// enrollment's answer may have been lost, and the token's holder may enroll it again.
    pub(crate) fn unanswered_enrollment(&self, token: &str, device: &str) -> Option<&Device> {
        self.devices
            .get(device)
            .filter(|d| d.last_seen_unix == 0 && d.enrolled_with == token_key(token))
    }

    /// Whether `token` is one of this registry's (unused, or the one `device` enrolled with
    /// and may enroll with again): which (virtual) server an enrollment goes to.
    pub(crate) fn holds_token(&self, token: &str, device: &str) -> bool {
        self.tokens.contains_key(&token_key(token))
            || self.unanswered_enrollment(token, device).is_some()
    }

    /// Checks a token for `device` without using it up.
    pub(crate) fn check_token(
        &self,
        token: &str,
        device: &str,
        now: SystemTime,
    ) -> Result<&TokenRecord, EnrollmentRefusal> {
        let t = self
            .tokens
            .get(&token_key(token))
            .ok_or(EnrollmentRefusal::UnknownToken)?;
        if unix(now) >= t.expires_unix {
            return Err(EnrollmentRefusal::ExpiredToken);
        }
        if let Some(d) = &t.device
            && d != device
        {
            return Err(EnrollmentRefusal::OtherDevice(d.clone()));
        }
        Ok(t)
    }

    /// Uses up a token and records the enrolled device (`record`, whose `enrolled_with`
    /// is set to the token's).
    pub(crate) fn complete_enrollment(&mut self, token: &str, device: &str, mut record: Device) {
        self.write(Op::DeleteToken {
            key: token_key(token),
        });
        record.enrolled_with = token_key(token);
        self.write(Op::PutDevice {
            id: device.into(),
            device: record,
        });
    }
}
