//! Groups, policies, profiles, devices and the state document that holds them.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::PolicyError;
use crate::condition::Condition;
use crate::schema::AppSchema;
use crate::value::Value;

/// Largest state document the loaders accept, in bytes (64 MiB).
pub const MAX_STATE_BYTES: usize = 64 << 20;
/// Longest identifier (application, group, policy, device, profile name), in bytes.
pub const MAX_ID_LEN: usize = 256;

fn yes() -> bool {
    true
}

/// An administration group; groups form a forest through `parent`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Group {
    /// Group identifier.
    pub id: String,
    /// Parent group; `None` for a root group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

impl Group {
    /// A root group.
    pub fn root(id: impl Into<String>) -> Self {
        Group {
            id: id.into(),
            parent: None,
        }
    }
    /// A group below `parent`.
    pub fn child(id: impl Into<String>, parent: impl Into<String>) -> Self {
        Group {
            id: id.into(),
            parent: Some(parent.into()),
        }
    }
}

/// A policy's status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum PolicyStatus {
    /// Applied to the group's devices (and inherited by subgroups). At most one per
    /// application per group.
    #[default]
    Active,
    /// Not applied and not inherited.
    Inactive,
    /// Replaces the group's active policy for devices of this very group while they are off
    /// the corporate network; never propagates to subgroups. At most one per application per
    /// group.
    OutOfOffice,
}

/// One setting value in a policy, with its lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PolicySetting {
    /// The value.
    pub value: Value,
    /// Locked: descendants' policies and the device's local settings cannot change it.
    #[serde(default)]
    pub locked: bool,
}

impl PolicySetting {
    /// An unlocked value.
    pub fn unlocked(value: impl Into<Value>) -> Self {
        PolicySetting {
            value: value.into(),
            locked: false,
        }
    }
    /// A locked value.
    pub fn locked(value: impl Into<Value>) -> Self {
        PolicySetting {
            value: value.into(),
            locked: true,
        }
    }
}

/// A policy profile: a named, conditional, locked subset of settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Profile {
    /// Name, unique within the policy; profiles with the same name in an ancestor's policy
    /// merge with this one.
    pub name: String,
    /// Disabled profiles never activate.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Activation condition; the default holds always.
    #[serde(default)]
    pub condition: Condition,
    /// Setting values applied (locked) while the profile is active.
    #[serde(default)]
    pub settings: BTreeMap<String, Value>,
}

impl Default for Profile {
    /// Enabled, always active, no settings, empty name (a name must be set before use).
    fn default() -> Self {
        Profile::new("", Condition::default())
    }
}

impl Profile {
    /// An enabled profile with the given name and condition and no settings.
    pub fn new(name: impl Into<String>, condition: Condition) -> Self {
        Profile {
            name: name.into(),
            enabled: true,
            condition,
            settings: BTreeMap::new(),
        }
    }
    /// Adds one setting; builder style.
    pub fn with(mut self, path: impl Into<String>, value: impl Into<Value>) -> Self {
        self.settings.insert(path.into(), value.into());
        self
    }
}

/// A policy: settings for one application in one group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Policy {
    /// Policy identifier.
    pub id: String,
    /// Application the policy configures.
    pub app: String,
    /// Group the policy belongs to.
    pub group: String,
    /// Active, inactive or out-of-office.
    #[serde(default)]
    pub status: PolicyStatus,
    /// "Inherit settings from parent policy" (default on).
    #[serde(default = "yes")]
    pub inherit: bool,
    /// "Force inheritance in child policies": turns `inherit` on for every descendant.
    #[serde(default)]
    pub force_inheritance: bool,
    /// Setting values with locks, by path.
    #[serde(default)]
    pub settings: BTreeMap<String, PolicySetting>,
    /// Profiles in priority order: the first has the highest priority.
    #[serde(default)]
    pub profiles: Vec<Profile>,
}

impl Default for Policy {
    /// Active, inheriting, empty; id, application and group must be set before use.
    fn default() -> Self {
        Policy::new("", "", "")
    }
}

impl Policy {
    /// An active policy that inherits, with no settings and no profiles.
    pub fn new(id: impl Into<String>, app: impl Into<String>, group: impl Into<String>) -> Self {
        Policy {
            id: id.into(),
            app: app.into(),
            group: group.into(),
            status: PolicyStatus::Active,
            inherit: true,
            force_inheritance: false,
            settings: BTreeMap::new(),
            profiles: Vec::new(),
        }
    }
    /// Sets one setting; builder style.
    pub fn with(mut self, path: impl Into<String>, setting: PolicySetting) -> Self {
        self.settings.insert(path.into(), setting);
        self
    }
    /// Appends a profile (lowest priority so far); builder style.
    pub fn with_profile(mut self, profile: Profile) -> Self {
        self.profiles.push(profile);
        self
    }
}

/// The person a device belongs to, with directory facts used by profile conditions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Owner {
    /// Owner's name.
    pub name: String,
    /// Roles.
    #[serde(default)]
    pub roles: BTreeSet<String>,
    /// Organisational unit, `/`-separated.
    #[serde(default)]
    pub ou: Option<String>,
    /// Directory groups.
    #[serde(default)]
    pub directory_groups: BTreeSet<String>,
}

/// A managed device with the facts that profile conditions and the out-of-office policy
/// look at, and its local settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Device {
    /// Device identifier.
    pub id: String,
    /// Administration group.
    pub group: String,
    /// Tags.
    #[serde(default)]
    pub tags: BTreeSet<String>,
    /// Connected to the server (default `true`).
    #[serde(default = "yes")]
    pub online: bool,
    /// On the corporate network (default `true`); when `false` the group's out-of-office
    /// policy, if any, replaces the active one.
    #[serde(default = "yes")]
    pub on_corporate_network: bool,
    /// Network location name.
    #[serde(default)]
    pub network_location: Option<String>,
    /// RAM in MiB.
    #[serde(default)]
    pub ram_mb: Option<u64>,
    /// Logical CPU count.
    #[serde(default)]
    pub cpu_count: Option<u32>,
    /// Organisational unit of the device, `/`-separated.
    #[serde(default)]
    pub ou: Option<String>,
    /// Directory groups of the device.
    #[serde(default)]
    pub directory_groups: BTreeSet<String>,
    /// The owner.
    #[serde(default)]
    pub owner: Option<Owner>,
    /// Local application settings: application, then path, then value.
    #[serde(default)]
    pub local: BTreeMap<String, BTreeMap<String, Value>>,
}

impl Default for Device {
    /// Online, in the office, no facts; id and group must be set before use.
    fn default() -> Self {
        Device::new("", "")
    }
}

impl Device {
    /// An online, in-office device in `group` with no other facts.
    pub fn new(id: impl Into<String>, group: impl Into<String>) -> Self {
        Device {
            id: id.into(),
            group: group.into(),
            tags: BTreeSet::new(),
            online: true,
            on_corporate_network: true,
            network_location: None,
            ram_mb: None,
            cpu_count: None,
            ou: None,
            directory_groups: BTreeSet::new(),
            owner: None,
            local: BTreeMap::new(),
        }
    }
    /// Adds a tag; builder style.
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.insert(tag.into());
        self
    }
    /// Sets a local value; builder style.
    pub fn with_local(
        mut self,
        app: impl Into<String>,
        path: impl Into<String>,
        value: impl Into<Value>,
    ) -> Self {
        self.local
            .entry(app.into())
            .or_default()
            .insert(path.into(), value.into());
        self
    }
}

/// Everything resolution needs: schemas, groups, policies and devices.
///
/// See the crate documentation for the JSON and TOML format.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct State {
    /// Application schemas.
    #[serde(default)]
    pub schemas: Vec<AppSchema>,
    /// Administration groups.
    #[serde(default)]
    pub groups: Vec<Group>,
    /// Policies of every status.
    #[serde(default)]
    pub policies: Vec<Policy>,
    /// Devices.
    #[serde(default)]
    pub devices: Vec<Device>,
}

impl State {
    /// Parses a JSON state document. Errors name the line, column and field path.
    ///
    /// Only parses; [`crate::Resolver::new`] validates.
    pub fn from_json(input: &[u8]) -> Result<State, PolicyError> {
        if input.len() > MAX_STATE_BYTES {
            return Err(PolicyError::InputTooLarge {
                len: input.len(),
                max: MAX_STATE_BYTES,
            });
        }
        let mut de = serde_json::Deserializer::from_slice(input);
        let state: State = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let at = format!("line {} column {}", inner.line(), inner.column());
            let location = if path.is_empty() || path == "." {
                at
            } else {
                format!("{at} ({path})")
            };
            PolicyError::Parse {
                format: "JSON",
                location,
                message: inner.to_string(),
            }
        })?;
        de.end().map_err(|e| PolicyError::Parse {
            format: "JSON",
            location: format!("line {} column {}", e.line(), e.column()),
            message: e.to_string(),
        })?;
        Ok(state)
    }

    /// Parses a TOML state document. Errors name the line and column.
    ///
    /// Only parses; [`crate::Resolver::new`] validates.
    pub fn from_toml(input: &str) -> Result<State, PolicyError> {
        if input.len() > MAX_STATE_BYTES {
            return Err(PolicyError::InputTooLarge {
                len: input.len(),
                max: MAX_STATE_BYTES,
            });
        }
        toml::from_str(input).map_err(|e| {
            let location = match e.span() {
                Some(span) => {
                    let (line, col) = line_col(input, span.start);
                    format!("line {line} column {col}")
                }
                None => "an unknown position".to_owned(),
            };
            PolicyError::Parse {
                format: "TOML",
                location,
                message: e.message().to_owned(),
            }
        })
    }

    /// Serialises to pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

fn line_col(input: &str, offset: usize) -> (usize, usize) {
    let mut line = 1;
    let mut col = 1;
    for (i, c) in input.char_indices() {
        if i >= offset {
            break;
        }
        if c == '\n' {
            line += 1;
            col = 1;
        } else {
            col += 1;
        }
    }
    (line, col)
}

/// Checks a device id by the one rule of [`outpost_wire::DeviceId`], which the server, the
/// certificate authority and the agent check too.
pub(crate) fn check_device_id(id: &str) -> Result<(), PolicyError> {
    match outpost_wire::DeviceId::rule_broken(id) {
        None => Ok(()),
        Some(reason) => Err(PolicyError::InvalidId {
            kind: "device",
            id: id.chars().take(MAX_ID_LEN).collect(),
            reason,
        }),
    }
}

/// Checks an identifier: 1..=[`MAX_ID_LEN`] bytes, no control characters and no `/`.
pub(crate) fn check_id(kind: &'static str, id: &str) -> Result<(), PolicyError> {
    let reason = if id.is_empty() {
        Some("must not be empty")
    } else if id.len() > MAX_ID_LEN {
        Some("must be at most 256 bytes long")
    } else if id.chars().any(char::is_control) {
        Some("must not contain control characters")
    } else if id.contains('/') {
        Some("must not contain '/'")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(PolicyError::InvalidId {
            kind,
            id: id.chars().take(MAX_ID_LEN).collect(),
            reason,
        }),
        None => Ok(()),
    }
}
