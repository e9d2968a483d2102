//! Policies, profiles, locks and each device's effective settings, with an explanation for
//! every value.
//!
//! An Administration Server configures the applications on its devices through *policies*.
//! This crate computes, for every device and every application, the *effective settings*
//! (what the device must apply) from the group hierarchy, policies, locks, profiles, local
//! settings and the out-of-office state, answers "why this value" for any setting
//! ([`Resolver::explain`]), and after a change re-resolves only the devices it can affect and
//! says which of them changed ([`Resolver::apply`]), so a server pushes to exactly those.
//!
//! Pure: no IO and no clock. The loaders parse strings and bytes the caller read.
//!
//! # Example: senior accountants may use flash drives
//!
//! All accountants work under one policy that locks flash drives off; a profile of that
//! policy, active for devices tagged `senior`, allows them.
//!
//! ```
//! use outpost_policy::{Resolver, Source, State, Value};
//!
//! let state = State::from_json(br#"{
//!   "schemas": [{"app": "endpoint", "settings": {
//!       "device_control.flash_drives": {"type": "bool", "default": true}}}],
//!   "groups": [{"id": "company"}, {"id": "accounting", "parent": "company"}],
//!   "policies": [{
//!       "id": "accountants", "app": "endpoint", "group": "accounting",
//!       "settings": {"device_control.flash_drives": {"value": false, "locked": true}},
//!       "profiles": [{"name": "senior accountants",
//!                     "condition": {"tags": {"names": ["senior"]}},
//!                     "settings": {"device_control.flash_drives": true}}]}],
//!   "devices": [{"id": "pc-junior", "group": "accounting"},
//!               {"id": "pc-senior", "group": "accounting", "tags": ["senior"]}]
//! }"#)?;
//! let resolver = Resolver::new(&state)?;
//!
//! let junior = resolver.effective("pc-junior")?;
//! assert_eq!(junior.get("endpoint", "device_control.flash_drives"), Some(&Value::Bool(false)));
//!
//! let why = resolver.explain("pc-senior", "endpoint", "device_control.flash_drives")?;
//! assert_eq!(why.value, Value::Bool(true));
//! assert!(matches!(&why.source, Source::Profile { profile, .. } if profile == "senior accountants"));
//! // The policy's locked `false` and the default `true` lost, and the explanation says why.
//! assert_eq!(why.candidates.len(), 3);
//! # Ok::<(), outpost_policy::PolicyError>(())
//! ```
//!
//! # Semantics
//!
//! **Settings and schemas.** Settings are typed [`Value`]s (bool, integer, string, list, map)
//! addressed by a dotted path. Each application declares an [`AppSchema`] (its management
//! plug-in): for every path a [`SettingSpec`] with type, default and allowed range. Every
//! policy, profile and local value is checked against it; a violation is refused with
//! [`PolicyError::SchemaViolation`] naming the path and the rule, an undeclared path with
//! [`PolicyError::UnknownSetting`].
//!
//! **Policies.** A [`Policy`] belongs to one application and one group and has a
//! [`PolicyStatus`]: active, inactive or out-of-office. At most one active policy per
//! application per group; a second is refused ([`PolicyError::SecondPolicy`]); the same holds
//! for out-of-office policies. Every setting in a policy carries a lock flag
//! ([`PolicySetting::locked`]).
//!
//! **Inheritance.** For one application, a group's *policy chain* is:
//! - the group has an active policy `P` and `P.inherit` is on (the default), or an ancestor
//!   policy in the parent's chain has `force_inheritance`: the parent's chain followed by `P`;
//! - the group has an active policy `P` that does not inherit: just `P`;
//! - the group has no active policy: its parent's chain (empty for a root).
//!
//! Inactive policies are never part of a chain. Walking a chain from the root down, a
//! policy's value replaces the value so far unless an earlier (ancestor) policy locked that
//! setting: locked ancestor values override the descendants' values; unlocked ones can be
//! re-set, and locked, by a descendant.
//!
//! **Out-of-office.** A device that is off the corporate network
//! ([`Device::on_corporate_network`] `false`) uses its group's out-of-office policy in place
//! of the active one: the chain is the parent's (in-office) chain followed by the
//! out-of-office policy, with the same inheritance rules. Out-of-office policies do not
//! propagate down: a subgroup's devices use their own group's out-of-office policy or, when
//! it has none, the normal chain.
//!
//! **Profiles.** A [`Profile`] has a name, an enabled flag, a condition and a subset of
//! settings; at most [`MAX_PROFILES`] per policy (more are refused), names unique per
//! policy. Along a chain the profiles are listed root policy first, each policy's in its own
//! order: so profiles inherited from a parent rank above the child's own, and listed order is
//! priority (first is highest). Profiles with the same name merge into the position of the
//! ancestor's: the ancestor's settings win where both set a path, and the ancestor's condition
//! and enabled flag apply. A profile is *active* for a device when enabled and its
//! [`Condition`] holds; several can be active at once. Profile values are locked.
//!
//! **Order for one setting of one device** (non-merged settings):
//! 1. the schema default;
//! 2. policy values along the chain, as above (unlocked values, then descendants, until a
//!    lock);
//! 3. the highest-priority active profile that sets the path wins, unless the path is locked
//!    by a policy *above* the policy that defined that profile value;
//! 4. the device's local value, only if the setting is not locked (by a policy or an active
//!    profile); a local value for a locked setting is kept but reported as lost
//!    ([`LossReason::Locked`]).
//!
//! So: unlocked policy values, then local values, then locked policy and profile values.
//!
//! **List merging.** A list setting declared with `merge: true` is merged instead of
//! replaced: every policy in the chain and every active profile adds the items it has that
//! the list does not yet contain (ancestors first, so inherited items stay and come first);
//! a lock cannot remove them, it only stops the local value, which otherwise adds its items
//! too. The default applies only when nothing contributes.
//!
//! # State format
//!
//! A [`State`] document (JSON via [`State::from_json`], TOML via [`State::from_toml`]) has
//! four lists, all optional:
//! - `schemas`: `{"app": ID, "settings": {PATH: SettingSpec}}`;
//! - `groups`: `{"id": ID, "parent": ID?}`;
//! - `policies`: `{"id", "app", "group", "status": "active"|"inactive"|"out-of-office",
//!   "inherit": bool = true, "force_inheritance": bool = false,
//!   "settings": {PATH: {"value": V, "locked": bool = false}},
//!   "profiles": [{"name", "enabled": bool = true, "condition": Condition = always,
//!   "settings": {PATH: V}}]}`;
//! - `devices`: `{"id", "group", "tags": [..], "online": bool = true,
//!   "on_corporate_network": bool = true, "network_location", "ram_mb", "cpu_count", "ou",
//!   "directory_groups": [..], "owner": {"name", "roles", "ou", "directory_groups"},
//!   "local": {APP: {PATH: V}}}`.
//!
//! Unknown fields are refused. Parse errors name the line and column and, for JSON, the
//! field path (`policies[0].profiles[2].condition`); validation errors name the object, the
//! path and the value.
//!
//! # Costs
//!
//! Devices of one group that share a mode (in or out of the office) and the same set of
//! active profiles form a class with one resolved result; resolution of a device is then a
//! condition evaluation per profile in its chain and one lookup. After a policy edit each
//! class is re-resolved once, on the changed paths only, and a changed class marks all its
//! members changed without visiting them; devices are visited one by one only when they
//! have local values for the application or when a profile's condition changed (then the
//! changed conditions are evaluated once per distinct set of device facts, or, for
//! conditions on tags only, once per distinct combination of the tags they read; then only
//! the devices that carry one of those tags are looked at when the others keep their
//! profiles). [`ChangeReport::changed`] lists the changed devices' ids
//! as `Arc<str>`s shared with the resolver, and [`Resolver::apply_each`] hands them to a
//! callback: neither allocates per device.

mod condition;
mod error;
mod explain;
#[cfg(any(fuzzing, test))]
#[doc(hidden)]
pub mod fuzz;
mod model;
mod resolve;
mod schema;
mod value;

pub use condition::{
    Condition, DirectoryRule, MAX_CONDITION_DEPTH, MAX_CONDITION_NODES, Range, Subject, TagRule,
};
pub use error::{PolicyError, SchemaViolation};
pub use explain::{Candidate, EffectiveSettings, Explanation, LossReason, Outcome, Source};
pub use model::{
    Device, Group, MAX_ID_LEN, MAX_STATE_BYTES, Owner, Policy, PolicySetting, PolicyStatus,
    Profile, State,
};
pub use resolve::{Change, ChangeReport, MAX_GROUP_DEPTH, MAX_PROFILES, Resolver};
pub use schema::{
    AppSchema, MAX_PATH_LEN, MAX_SPEC_DEPTH, MAX_VALUE_DEPTH, SettingSpec, ValueKind,
};
pub use value::Value;

/// The syntax of a state document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StateFormat {
    /// JSON ([`State::from_json`]).
    Json,
    /// TOML ([`State::from_toml`]).
    Toml,
}

/// Loads a state document, resolves it, and renders either one setting's explanation
/// (`path` given as `APPLICATION/PATH`) or every effective setting of the device, one
/// `APPLICATION/PATH = VALUE` line each, `(locked)` marking locked settings.
///
/// This is the entry point of the `policy` example.
///
/// ```
/// use outpost_policy::{StateFormat, render_explain};
/// let state = br#"{"schemas": [{"app": "a", "settings": {"x": {"type": "int"}}}],
///                  "groups": [{"id": "g"}], "devices": [{"id": "d", "group": "g"}]}"#;
/// assert_eq!(render_explain(state, StateFormat::Json, "d", None)?, "a/x = 0\n");
/// # Ok::<(), outpost_policy::PolicyError>(())
/// ```
pub fn render_explain(
    input: &[u8],
    format: StateFormat,
    device: &str,
    path: Option<&str>,
) -> Result<String, PolicyError> {
    let state = match format {
        StateFormat::Json => State::from_json(input)?,
        StateFormat::Toml => {
            let text = std::str::from_utf8(input).map_err(|e| PolicyError::Parse {
                format: "TOML",
                location: format!("byte {}", e.valid_up_to()),
                message: "input is not valid UTF-8".into(),
            })?;
            State::from_toml(text)?
        }
    };
    let resolver = Resolver::new(&state)?;
    if let Some(path) = path {
        return Ok(resolver.explain_ref(device, path)?.to_string());
    }
    let eff = resolver.effective(device)?;
    let mut out = String::new();
    for app in eff.apps() {
        for (path, value, locked) in eff.iter(app) {
            out.push_str(&format!(
                "{app}/{path} = {value}{}\n",
                if locked { " (locked)" } else { "" }
            ));
        }
    }
    Ok(out)
}
