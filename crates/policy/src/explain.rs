//! Effective settings and the explanation of one value.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use crate::value::Value;

/// Where a value came from. Serialized as an object tagged by `kind` (`default`, `policy`,
/// `profile`, `local`, `merged`) with the variant's fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Source {
    /// The application schema's default.
    Default,
    /// A policy's setting.
    Policy {
        /// Policy identifier.
        policy: String,
        /// The policy's group.
        group: String,
        /// The policy locked the setting.
        locked: bool,
    },
    /// A profile's setting (always locked).
    Profile {
        /// Profile name.
        profile: String,
        /// The policy whose profile of this name set the value.
        policy: String,
        /// That policy's group.
        group: String,
        /// Priority rank among the device's profiles for this application, 1 is highest.
        rank: usize,
    },
    /// The device's local setting.
    Local,
    /// A merged list: every candidate marked [`Outcome::Contributed`] added items.
    Merged,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("schema default"),
            Source::Policy {
                policy,
                group,
                locked,
            } => write!(
                f,
                "policy {policy:?} of group {group:?} ({})",
                if *locked { "locked" } else { "unlocked" }
            ),
            Source::Profile {
                profile,
                policy,
                group,
                rank,
            } => write!(
                f,
                "profile {profile:?} (priority {rank}) of policy {policy:?} of group {group:?} (locked)"
            ),
            Source::Local => f.write_str("local setting"),
            Source::Merged => f.write_str("merged list"),
        }
    }
}

/// Why a candidate value did not become (or join) the effective value. Serialized as an
/// object tagged by `reason` (`overridden`, `locked`, `lower-priority`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum LossReason {
    /// A later layer replaced it: a default by a policy, an unlocked ancestor value by a
    /// descendant, a policy value by a profile, an unlocked policy value by a local value.
    Overridden {
        /// The value that replaced it.
        by: Source,
    },
    /// A lock stopped it: an ancestor policy's lock (against a descendant's policy or profile
    /// value, or a local value), or an active profile's lock (against a local value).
    Locked {
        /// The locked value.
        by: Source,
    },
    /// Another active profile with a higher priority set the setting.
    LowerPriority {
        /// The winning profile.
        winner: Source,
    },
    /// A same-named profile of an ancestor policy sets this setting; the ancestor's wins.
    ShadowedByAncestorProfile {
        /// The ancestor's profile value.
        by: Source,
    },
    /// The profile is disabled.
    ProfileDisabled,
    /// The profile's activation condition does not hold for the device.
    ConditionNotMet,
}

impl fmt::Display for LossReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LossReason::Overridden { by } => write!(f, "overridden by {by}"),
            LossReason::Locked { by } => write!(f, "setting locked by {by}"),
            LossReason::LowerPriority { winner } => {
                write!(f, "lower priority than {winner}")
            }
            LossReason::ShadowedByAncestorProfile { by } => {
                write!(f, "same-named profile of an ancestor policy wins: {by}")
            }
            LossReason::ProfileDisabled => f.write_str("profile is disabled"),
            LossReason::ConditionNotMet => f.write_str("activation condition not met"),
        }
    }
}

/// What happened to a candidate. Serialized as an object tagged by `outcome` (`won`,
/// `contributed`, `lost`); a lost one carries its [`LossReason`] beside the tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Outcome {
    /// It is the effective value.
    Won,
    /// Its items are part of a merged list.
    Contributed,
    /// It lost, and why.
    Lost(LossReason),
}

/// One value that was considered for a setting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Candidate {
    /// Where it came from.
    pub source: Source,
    /// The value it offered.
    pub value: Value,
    /// Whether it won, contributed or lost.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The answer to "why does this device have this value": the winner and every candidate, in
/// the order they were considered (default, policies from the root down, profiles by
/// priority, local value).
///
/// Serializes to JSON for an API:
///
/// ```
/// use outpost_policy::{Resolver, State};
/// let state = State::from_json(br#"{
///   "schemas": [{"app": "a", "settings": {"x": {"type": "int", "default": 1}}}],
///   "groups": [{"id": "g"}],
///   "policies": [{"id": "p", "app": "a", "group": "g",
///                 "settings": {"x": {"value": 5, "locked": true}}}],
///   "devices": [{"id": "d", "group": "g"}]}"#)?;
/// let why = Resolver::new(&state)?.explain("d", "a", "x")?;
/// let json = serde_json::to_value(&why).unwrap();
/// assert_eq!(json["value"], 5);
/// assert_eq!(json["source"]["kind"], "policy");
/// assert_eq!(json["candidates"][0]["outcome"], "lost");
/// assert_eq!(json["candidates"][0]["reason"], "overridden");
/// # Ok::<(), outpost_policy::PolicyError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Explanation {
    /// Device identifier.
    pub device: String,
    /// Application.
    pub app: String,
    /// Setting path.
    pub path: String,
    /// The effective value.
    pub value: Value,
    /// Whether the effective value is locked (a local change would be overridden).
    pub locked: bool,
    /// Where the effective value came from.
    pub source: Source,
    /// Every candidate with its outcome.
    pub candidates: Vec<Candidate>,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}/{} = {}{} on device {:?}",
            self.app,
            self.path,
            self.value,
            if self.locked { " (locked)" } else { "" },
            self.device
        )?;
        writeln!(f, "  from: {}", self.source)?;
        for c in &self.candidates {
            match &c.outcome {
                Outcome::Won => writeln!(f, "  [won]         {} = {}", c.source, c.value)?,
                Outcome::Contributed => writeln!(f, "  [contributed] {} = {}", c.source, c.value)?,
                Outcome::Lost(r) => {
                    writeln!(f, "  [lost]        {} = {}: {}", c.source, c.value, r)?
                }
            }
        }
        Ok(())
    }
}

/// One application's resolved values, shared between devices that resolve identically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AppValues {
    pub(crate) values: Vec<Arc<Value>>,
    pub(crate) locked: Vec<bool>,
}

/// One application's effective settings for one device.
#[derive(Debug, Clone)]
pub(crate) struct AppEffective {
    pub(crate) app: Arc<str>,
    pub(crate) paths: Arc<[String]>,
    pub(crate) values: Arc<AppValues>,
}

/// A device's effective settings for every application with a schema.
///
/// Cheap to clone: devices that resolve identically share their values.
#[derive(Debug, Clone)]
pub struct EffectiveSettings {
    pub(crate) device: String,
    pub(crate) apps: Vec<AppEffective>,
}

impl PartialEq for EffectiveSettings {
    fn eq(&self, other: &Self) -> bool {
        self.device == other.device
            && self.apps.len() == other.apps.len()
            && self.apps.iter().zip(&other.apps).all(|(a, b)| {
                a.app == b.app
                    && a.paths == b.paths
                    && (Arc::ptr_eq(&a.values, &b.values) || a.values == b.values)
            })
    }
}
impl Eq for EffectiveSettings {}

impl EffectiveSettings {
    /// The device these settings belong to.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Application identifiers, in order.
    pub fn apps(&self) -> impl Iterator<Item = &str> {
        self.apps.iter().map(|a| &*a.app)
    }

    fn app(&self, app: &str) -> Option<&AppEffective> {
        self.apps
            .binary_search_by(|a| (*a.app).cmp(app))
            .ok()
            .map(|i| &self.apps[i])
    }

    /// The effective value of `app`'s setting `path`.
    pub fn get(&self, app: &str, path: &str) -> Option<&Value> {
        let a = self.app(app)?;
        let i = a.paths.binary_search_by(|p| p.as_str().cmp(path)).ok()?;
        a.values.values.get(i).map(|v| &**v)
    }

    /// Whether `app`'s setting `path` is locked for the device.
    pub fn is_locked(&self, app: &str, path: &str) -> Option<bool> {
        let a = self.app(app)?;
        let i = a.paths.binary_search_by(|p| p.as_str().cmp(path)).ok()?;
        a.values.locked.get(i).copied()
    }

    /// Every `(path, value, locked)` of `app`, in path order; empty for an unknown app.
    pub fn iter(&self, app: &str) -> impl Iterator<Item = (&str, &Value, bool)> {
        self.app(app).into_iter().flat_map(|a| {
            a.paths
                .iter()
                .zip(&a.values.values)
                .zip(&a.values.locked)
                .map(|((p, v), l)| (p.as_str(), &**v, *l))
        })
    }

    /// `app`'s effective settings as the JSON document sent to the device: paths are split at
    /// dots into nested objects (`scan.level = 2` becomes `{"scan": {"level": 2}}`).
    pub fn app_json(&self, app: &str) -> Option<serde_json::Value> {
        let a = self.app(app)?;
        let mut root = serde_json::Map::new();
        for (path, value) in a.paths.iter().zip(&a.values.values) {
            let mut node = &mut root;
            let mut segs = path.split('.').peekable();
            while let Some(seg) = segs.next() {
                if segs.peek().is_none() {
                    node.insert(seg.to_owned(), value.to_json());
                } else {
                    let entry = node
                        .entry(seg.to_owned())
                        .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
                    // Schema validation forbids a path that is a prefix of another, so the
                    // entry is always an object; replace defensively otherwise.
                    if !entry.is_object() {
                        *entry = serde_json::Value::Object(serde_json::Map::new());
                    }
                    match entry {
                        serde_json::Value::Object(m) => node = m,
                        _ => break,
                    }
                }
            }
        }
        Some(serde_json::Value::Object(root))
    }

    /// All applications' documents: `{"app": {...app_json...}, ...}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for a in &self.apps {
            if let Some(doc) = self.app_json(&a.app) {
                m.insert(a.app.to_string(), doc);
            }
        }
        serde_json::Value::Object(m)
    }
}
