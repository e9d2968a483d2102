//! The settings document: one application's settings as the server sends them in
//! [`AppSettings::json`](crate::messages::AppSettings::json), and as the agent reads
//! them.
//!
//! The document is JSON, `{"locked": ["path.a", ...], "values": {<nested settings>}}`:
//! `values` holds the settings, and each entry of `locked` is a path of object keys joined
//! by `.` or `/` (both mean the same) that a policy locked. Locking a path locks everything
//! beneath it; the empty path `""` locks the whole document. An agent overlays its local
//! settings only on the paths not locked.
//!
//! A document without a top-level `locked` array is itself the values, with everything
//! locked: [`SettingsDocument::from_json`] reads it so.
//!
//! ```
//! use outpost_wire::settings::SettingsDocument;
//! use serde_json::json;
//!
//! let doc = SettingsDocument::new(json!({"proxy": {"host": "p.corp"}}), vec!["proxy.host".into()]);
//! let bytes = doc.to_vec();
//! assert_eq!(bytes, br#"{"locked":["proxy.host"],"values":{"proxy":{"host":"p.corp"}}}"#);
//! let back = SettingsDocument::parse(&bytes)?;
//! assert_eq!(back, doc);
//! assert_eq!(back.lock_paths().next(), Some(vec!["proxy", "host"]));
//!
//! // Without a "locked" list, everything is locked.
//! let plain = SettingsDocument::parse(br#"{"theme": "dark"}"#)?;
//! assert_eq!(plain.values, json!({"theme": "dark"}));
//! assert_eq!(plain.locked, [""]);
//! # Ok::<(), outpost_wire::WireError>(())
//! ```

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::WireError;

/// What separates the keys of a locked path: `.` (as `outpost-policy` writes paths) or `/`.
pub const LOCK_SEPARATORS: [char; 2] = ['.', '/'];

/// One application's settings and the paths a policy locked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SettingsDocument {
    /// Locked paths (keys joined by `.` or `/`; `""` is the whole document). Serialized
    /// first: the server's document versions are digests of these bytes.
    pub locked: Vec<String>,
    /// The settings.
    #[serde(default = "empty_object")]
    pub values: Value,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

impl Default for SettingsDocument {
    fn default() -> Self {
        SettingsDocument {
            locked: Vec::new(),
            values: empty_object(),
        }
    }
}

impl SettingsDocument {
    /// A document with these values and locked paths.
    pub fn new(values: Value, locked: Vec<String>) -> Self {
        SettingsDocument { locked, values }
    }

    /// Reads a received JSON value: the values-and-locks form when it has a top-level
    /// `locked` array (entries that are not strings are skipped; no `values` means none),
    /// and otherwise the whole value as the values, with everything locked.
    pub fn from_json(doc: &Value) -> Self {
        Self::from_locked_form(doc).unwrap_or_else(|| SettingsDocument {
            locked: vec![String::new()],
            values: doc.clone(),
        })
    }

    /// Reads `doc` only if it is in the values-and-locks form (a top-level `locked` array);
    /// `None` for any other value.
    pub fn from_locked_form(doc: &Value) -> Option<Self> {
        let o = doc.as_object()?;
        let locked = o.get("locked")?.as_array()?;
        Some(SettingsDocument {
            locked: locked
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            values: o.get("values").cloned().unwrap_or_else(empty_object),
        })
    }

    /// Parses a received document (see [`from_json`](Self::from_json)).
    ///
    /// # Errors
    /// [`WireError::SettingsJson`] when the bytes are not JSON.
    pub fn parse(bytes: &[u8]) -> Result<Self, WireError> {
        let v: Value = serde_json::from_slice(bytes).map_err(WireError::SettingsJson)?;
        Ok(Self::from_json(&v))
    }

    /// The document's bytes, as the server sends them.
    pub fn to_vec(&self) -> Vec<u8> {
        // Serializing a `Value` and strings to a buffer cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Each locked path as its keys (`""` gives no keys: the whole document).
    pub fn lock_paths(&self) -> impl Iterator<Item = Vec<&str>> {
        self.locked.iter().map(|p| {
            if p.is_empty() {
                Vec::new()
            } else {
                p.split(LOCK_SEPARATORS).collect()
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn a_document_without_a_locked_array_is_all_values_all_locked() {
        for v in [json!({"locked": "x", "a": 1}), json!([1, 2]), json!(3)] {
            let d = SettingsDocument::from_json(&v);
            assert_eq!(d.values, v);
            assert_eq!(d.lock_paths().collect::<Vec<_>>(), [Vec::<&str>::new()]);
        }
        let d = SettingsDocument::from_json(&json!({"locked": ["a/b", 7, "c.d"]}));
        assert_eq!(d.values, json!({}));
        assert_eq!(d.lock_paths().collect::<Vec<_>>(), [["a", "b"], ["c", "d"]]);
    }

    #[test]
    fn bytes_that_are_not_json_are_refused_by_name() {
        let e = SettingsDocument::parse(b"{\"locked\": [").unwrap_err();
        assert!(e.to_string().contains("settings document"), "{e}");
    }

    proptest! {
        #[test]
        fn a_document_reads_back_as_itself(
            locked in proptest::collection::vec("[a-z]{1,4}(\\.[a-z]{1,4}){0,2}", 0..4),
            keys in proptest::collection::btree_map("[a-z]{1,6}", any::<i32>(), 0..6),
        ) {
            let values = Value::Object(keys.into_iter().map(|(k, v)| (k, json!(v))).collect());
            let doc = SettingsDocument::new(values, locked);
            prop_assert_eq!(SettingsDocument::parse(&doc.to_vec()).unwrap(), doc);
        }
    }
}
