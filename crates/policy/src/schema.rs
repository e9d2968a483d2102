//! Application settings schemas (what a management plug-in declares).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::PolicyError;
use crate::value::Value;

/// Deepest nesting of item specifications (lists of maps of lists ...).
pub const MAX_SPEC_DEPTH: usize = 8;
/// Deepest nesting accepted in a setting value.
pub const MAX_VALUE_DEPTH: usize = 16;
/// Longest setting path, in bytes.
pub const MAX_PATH_LEN: usize = 256;

/// The type of a setting value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ValueKind {
    /// `true` / `false`.
    #[default]
    Bool,
    /// A signed 64-bit integer.
    Int,
    /// A string.
    String,
    /// A list; its items follow [`SettingSpec::item`].
    List,
    /// A map with string keys; its values follow [`SettingSpec::item`].
    Map,
}

/// One setting's declaration: its type, allowed range, default and list merge mode.
///
/// Written in JSON as for example
/// `{"type": "int", "min": 1, "max": 3, "default": 2}` or
/// `{"type": "list", "item": {"type": "string"}, "merge": true}`.
///
/// Rules by type:
/// - `int`: `min` and `max` (inclusive) bound the value.
/// - `string`: `allowed` lists the only permitted strings; `max_len` bounds the length in
///   characters.
/// - `list`: `item` declares every element; `max_len` bounds the number of elements;
///   `merge: true` makes policy layers add items instead of replacing the list (see the
///   crate documentation, "List merging").
/// - `map`: `item` declares every value; `max_len` bounds the number of entries.
///
/// When `default` is absent the default is `false`, `0` (or `min` when 0 is out of range),
/// the first `allowed` string or `""`, `[]` or `{}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct SettingSpec {
    /// The value type.
    #[serde(rename = "type")]
    pub kind: ValueKind,
    /// Smallest allowed integer (ints only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<i64>,
    /// Largest allowed integer (ints only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<i64>,
    /// The only allowed strings (strings only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed: Option<Vec<String>>,
    /// Longest string (characters), list (items) or map (entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_len: Option<usize>,
    /// Declaration of list items or map values (lists and maps only; required for them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<Box<SettingSpec>>,
    /// Merge list layers instead of replacing (top-level lists only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub merge: bool,
    /// The value used when nothing else sets the setting (top level only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
}

impl SettingSpec {
    /// A spec of the given kind with no further rules.
    pub fn new(kind: ValueKind) -> Self {
        SettingSpec {
            kind,
            ..SettingSpec::default()
        }
    }

    /// Checks `value` against this spec; on failure returns the rule that was broken.
    pub fn check(&self, value: &Value) -> Result<(), String> {
        if value.depth() > MAX_VALUE_DEPTH {
            return Err(format!(
                "must be nested at most {MAX_VALUE_DEPTH} levels deep"
            ));
        }
        self.check_inner(value)
    }

    fn check_inner(&self, value: &Value) -> Result<(), String> {
        match (self.kind, value) {
            (ValueKind::Bool, Value::Bool(_)) => Ok(()),
            (ValueKind::Int, Value::Int(i)) => {
                if let Some(min) = self.min
                    && *i < min
                {
                    return Err(format!("must be at least {min}"));
                }
                if let Some(max) = self.max
                    && *i > max
                {
                    return Err(format!("must be at most {max}"));
                }
                Ok(())
            }
            (ValueKind::String, Value::Str(s)) => {
                if let Some(allowed) = &self.allowed
                    && !allowed.iter().any(|a| a == s)
                {
                    return Err(format!("must be one of {allowed:?}"));
                }
                if let Some(max) = self.max_len
                    && s.chars().count() > max
                {
                    return Err(format!("must have at most {max} characters"));
                }
                Ok(())
            }
            (ValueKind::List, Value::List(items)) => {
                if let Some(max) = self.max_len
                    && items.len() > max
                {
                    return Err(format!("must have at most {max} items"));
                }
                if let Some(item) = &self.item {
                    for (i, v) in items.iter().enumerate() {
                        item.check_inner(v).map_err(|r| format!("item {i} {r}"))?;
                    }
                }
                Ok(())
            }
            (ValueKind::Map, Value::Map(entries)) => {
                if let Some(max) = self.max_len
                    && entries.len() > max
                {
                    return Err(format!("must have at most {max} entries"));
                }
                if let Some(item) = &self.item {
                    for (k, v) in entries {
                        item.check_inner(v)
                            .map_err(|r| format!("entry {k:?} {r}"))?;
                    }
                }
                Ok(())
            }
            (kind, v) => Err(format!(
                "must be of type {}, not {}",
                kind_name(kind),
                v.type_name()
            )),
        }
    }

    /// The default value: `default` when given, otherwise the type's zero (see the type docs).
    pub fn default_value(&self) -> Value {
        if let Some(d) = &self.default {
            return d.clone();
        }
        match self.kind {
            ValueKind::Bool => Value::Bool(false),
            ValueKind::Int => {
                let lo = self.min.unwrap_or(i64::MIN);
                let hi = self.max.unwrap_or(i64::MAX);
                Value::Int(0.clamp(lo, hi.max(lo)))
            }
            ValueKind::String => Value::Str(
                self.allowed
                    .as_ref()
                    .and_then(|a| a.first().cloned())
                    .unwrap_or_default(),
            ),
            ValueKind::List => Value::List(Vec::new()),
            ValueKind::Map => Value::Map(BTreeMap::new()),
        }
    }

    fn validate(&self, app: &str, path: &str, depth: usize) -> Result<(), PolicyError> {
        let bad = |field: &'static str, reason: String| PolicyError::InvalidSchema {
            app: app.to_owned(),
            path: path.to_owned(),
            field,
            reason,
        };
        if depth > MAX_SPEC_DEPTH {
            return Err(bad(
                "item",
                format!("item declarations nest deeper than {MAX_SPEC_DEPTH} levels"),
            ));
        }
        let kind = kind_name(self.kind);
        if (self.min.is_some() || self.max.is_some()) && self.kind != ValueKind::Int {
            return Err(bad("min", format!("min/max apply to int, not {kind}")));
        }
        if let (Some(min), Some(max)) = (self.min, self.max)
            && min > max
        {
            return Err(bad("max", format!("max {max} is below min {min}")));
        }
        if let Some(allowed) = &self.allowed {
            if self.kind != ValueKind::String {
                return Err(bad(
                    "allowed",
                    format!("allowed applies to string, not {kind}"),
                ));
            }
            if allowed.is_empty() {
                return Err(bad(
                    "allowed",
                    "the list of allowed strings is empty".into(),
                ));
            }
        }
        if self.max_len.is_some() && matches!(self.kind, ValueKind::Bool | ValueKind::Int) {
            return Err(bad("max_len", format!("max_len does not apply to {kind}")));
        }
        match (self.kind, &self.item) {
            (ValueKind::List | ValueKind::Map, None) => {
                return Err(bad("item", format!("a {kind} needs an item declaration")));
            }
            (ValueKind::List | ValueKind::Map, Some(item)) => {
                if item.default.is_some() {
                    return Err(bad(
                        "item.default",
                        "item declarations take no default".into(),
                    ));
                }
                if item.merge {
                    return Err(bad("item.merge", "item declarations cannot merge".into()));
                }
                item.validate(app, path, depth + 1)?;
            }
            (_, Some(_)) => {
                return Err(bad(
                    "item",
                    format!("item applies to list and map, not {kind}"),
                ));
            }
            _ => {}
        }
        if self.merge && self.kind != ValueKind::List {
            return Err(bad("merge", format!("merge applies to list, not {kind}")));
        }
        if let Some(d) = &self.default {
            self.check(d)
                .map_err(|rule| bad("default", format!("default {d} {rule}")))?;
        } else {
            let d = self.default_value();
            self.check(&d)
                .map_err(|rule| bad("default", format!("implicit default {d} {rule}")))?;
        }
        Ok(())
    }
}

pub(crate) fn kind_name(kind: ValueKind) -> &'static str {
    match kind {
        ValueKind::Bool => "bool",
        ValueKind::Int => "int",
        ValueKind::String => "string",
        ValueKind::List => "list",
        ValueKind::Map => "map",
    }
}

/// An application's settings schema: every setting it has, by path.
///
/// Paths are dot-separated segments of ASCII letters, digits, `_` and `-`
/// (`device_control.flash_drives`). No path may be a prefix of another at a dot
/// (`scan` and `scan.level` cannot both exist), so that effective settings form one nested
/// JSON document per application.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct AppSchema {
    /// Application identifier.
    pub app: String,
    /// Setting declarations by path.
    #[serde(default)]
    pub settings: BTreeMap<String, SettingSpec>,
}

impl AppSchema {
    /// An empty schema for `app`.
    pub fn new(app: impl Into<String>) -> Self {
        AppSchema {
            app: app.into(),
            settings: BTreeMap::new(),
        }
    }

    /// Adds (or replaces) one setting declaration; builder style.
    pub fn with(mut self, path: impl Into<String>, spec: SettingSpec) -> Self {
        self.settings.insert(path.into(), spec);
        self
    }

    /// Validates identifiers, paths and every declaration.
    pub fn validate(&self) -> Result<(), PolicyError> {
        crate::model::check_id("application", &self.app)?;
        for (path, spec) in &self.settings {
            check_path(&self.app, path)?;
            spec.validate(&self.app, path, 0)?;
        }
        let keys: BTreeSet<&str> = self.settings.keys().map(String::as_str).collect();
        for path in &keys {
            for (i, _) in path.match_indices('.') {
                let prefix = &path[..i];
                if keys.contains(prefix) {
                    return Err(PolicyError::InvalidSchema {
                        app: self.app.clone(),
                        path: (*path).to_owned(),
                        field: "path",
                        reason: format!("setting {prefix:?} is a prefix of this path"),
                    });
                }
            }
        }
        Ok(())
    }
}

fn check_path(app: &str, path: &str) -> Result<(), PolicyError> {
    let bad = |reason: String| PolicyError::InvalidSchema {
        app: app.to_owned(),
        path: path.to_owned(),
        field: "path",
        reason,
    };
    if path.is_empty() || path.len() > MAX_PATH_LEN {
        return Err(bad(format!("length must be 1..={MAX_PATH_LEN} bytes")));
    }
    for seg in path.split('.') {
        if seg.is_empty() {
            return Err(bad("empty path segment".into()));
        }
        if let Some(c) = seg
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            return Err(bad(format!(
                "character {c:?} is not allowed (letters, digits, '_', '-', '.')"
            )));
        }
    }
    Ok(())
}
