//! The device identifier, with the one rule every part of the system checks it by: the
//! server's registry and enrollment, the certificate authority (it is the subject of a
//! device's certificate), the policies, the agent's configuration and the discovery datagram.
//!
//! A device id is 1 to [`MAX_DEVICE_ID_LEN`] bytes of ASCII letters, digits and `.`, `_`,
//! `:`, `-`. That fits a certificate's common name (at most 64 characters), a URL path
//! segment and a file name without escaping.
//!
//! ```
//! use outpost_wire::DeviceId;
//!
//! let id: DeviceId = "laptop:7".parse()?;
//! assert_eq!(id.as_str(), "laptop:7");
//! assert!(DeviceId::check("host-42.corp").is_ok());
//! let e = DeviceId::check("a/b").unwrap_err();
//! assert_eq!(e.to_string(), r#"device id "a/b": only letters, digits and . _ : - are allowed"#);
//! # Ok::<(), outpost_wire::WireError>(())
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::WireError;

/// The longest device id, in bytes: the most a certificate's common name holds.
pub const MAX_DEVICE_ID_LEN: usize = 64;

/// A device's identifier, checked by [`DeviceId::check`]: 1 to [`MAX_DEVICE_ID_LEN`] bytes of
/// ASCII letters, digits and `.`, `_`, `:`, `-`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceId(String);

impl DeviceId {
    /// Checks `id` against the rule.
    ///
    /// # Errors
    /// [`WireError::InvalidDeviceId`] naming the value (at most its first 100 characters) and
    /// the part of the rule it breaks.
    pub fn check(id: &str) -> Result<(), WireError> {
        match Self::rule_broken(id) {
            None => Ok(()),
            Some(reason) => Err(WireError::InvalidDeviceId {
                value: id.chars().take(100).collect(),
                reason,
            }),
        }
    }

    /// The part of the rule `id` breaks, `None` for a valid id: for a crate that reports it
    /// in an error of its own.
    pub fn rule_broken(id: &str) -> Option<&'static str> {
        if id.is_empty() {
            Some("empty")
        } else if id.len() > MAX_DEVICE_ID_LEN {
            Some("longer than 64 bytes")
        } else if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        {
            Some("only letters, digits and . _ : - are allowed")
        } else {
            None
        }
    }

    /// A device id from `id`, checked.
    ///
    /// # Errors
    /// As [`check`](Self::check).
    pub fn new(id: impl Into<String>) -> Result<Self, WireError> {
        let id = id.into();
        Self::check(&id)?;
        Ok(DeviceId(id))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id's string.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl FromStr for DeviceId {
    type Err = WireError;
    fn from_str(s: &str) -> Result<Self, WireError> {
        DeviceId::new(s)
    }
}

impl TryFrom<String> for DeviceId {
    type Error = WireError;
    fn try_from(s: String) -> Result<Self, WireError> {
        DeviceId::new(s)
    }
}

impl From<DeviceId> for String {
    fn from(id: DeviceId) -> String {
        id.0
    }
}

impl AsRef<str> for DeviceId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for DeviceId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_rule_at_its_edges() {
        let longest = "x".repeat(64);
        for ok in ["a", "laptop:7", "host-42.corp_x", longest.as_str()] {
            assert!(DeviceId::check(ok).is_ok(), "{ok}");
        }
        let long = "x".repeat(65);
        for (bad, why) in [
            ("", "empty"),
            (long.as_str(), "longer than 64"),
            ("a b", "only letters"),
            ("a/b", "only letters"),
            ("alice@corp", "only letters"),
            ("caf\u{e9}", "only letters"),
        ] {
            let e = DeviceId::check(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn a_long_bad_value_is_named_in_part() {
        let e = DeviceId::check(&"y".repeat(10_000))
            .unwrap_err()
            .to_string();
        assert!(e.len() < 200, "{}", e.len());
    }

    #[test]
    fn deserializing_checks_the_rule() {
        let ok: DeviceId = serde_json::from_str(r#""pc-1""#).unwrap();
        assert_eq!(serde_json::to_string(&ok).unwrap(), r#""pc-1""#);
        let e = serde_json::from_str::<DeviceId>(r#""pc 1""#).unwrap_err();
        assert!(e.to_string().contains("only letters"), "{e}");
    }

    proptest! {
        #[test]
        fn an_id_is_valid_exactly_when_every_byte_and_the_length_are(s in "[a-z0-9.:_ /@-]{0,70}") {
            let expected = !s.is_empty()
                && s.len() <= MAX_DEVICE_ID_LEN
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b".:_-".contains(&b));
            prop_assert_eq!(DeviceId::check(&s).is_ok(), expected);
            if expected {
                let id: DeviceId = s.parse().unwrap();
                prop_assert_eq!(id.as_str(), s.as_str());
            }
        }
    }
}
