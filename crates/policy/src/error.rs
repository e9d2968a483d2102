//! The crate's error type.

/// Everything that can go wrong while loading, validating, changing or querying policy state.
///
/// Every variant names what was wrong and with which value, so that a message can be shown to
/// an administrator as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The input could not be parsed; `location` is a line/column or a field path.
    #[error("cannot parse {format} policy state at {location}: {message}")]
    Parse {
        /// `JSON` or `TOML`.
        format: &'static str,
        /// Where in the input: `line L column C`, or the field path such as `policies[2].status`.
        location: String,
        /// What the parser said.
        message: String,
    },
    /// The input is larger than the loader accepts.
    #[error("policy state input is {len} bytes, more than the limit of {max} bytes")]
    InputTooLarge {
        /// Size of the input.
        len: usize,
        /// The limit ([`crate::MAX_STATE_BYTES`]).
        max: usize,
    },
    /// Two objects of the same kind share an identifier.
    #[error("duplicate {kind} id {id:?}")]
    DuplicateId {
        /// `application`, `group`, `policy` or `device`.
        kind: &'static str,
        /// The repeated identifier.
        id: String,
    },
    /// A reference to an object that does not exist.
    #[error("{referrer} refers to unknown {kind} {id:?}")]
    UnknownReference {
        /// Who holds the reference, for example `policy "p1"`.
        referrer: String,
        /// `application`, `group`, `policy`, `device` or `setting`.
        kind: &'static str,
        /// The identifier that was not found.
        id: String,
    },
    /// An identifier is empty, too long or uses characters outside the allowed set.
    #[error("invalid {kind} id {id:?}: {reason}")]
    InvalidId {
        /// What kind of identifier.
        kind: &'static str,
        /// The offending identifier.
        id: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The group hierarchy contains a cycle through this group.
    #[error("group {group:?} is its own ancestor (cycle in the group hierarchy)")]
    GroupCycle {
        /// A group on the cycle.
        group: String,
    },
    /// The group hierarchy is deeper than [`crate::MAX_GROUP_DEPTH`].
    #[error("group {group:?} is at depth {depth}, deeper than the limit of {max}")]
    HierarchyTooDeep {
        /// The group that is too deep.
        group: String,
        /// Its depth (a root group has depth 1).
        depth: usize,
        /// The limit.
        max: usize,
    },
    /// A second active (or out-of-office) policy for the same application in the same group.
    #[error(
        "policy {refused:?} refused: group {group:?} already has {status} policy {existing:?} for application {app:?}"
    )]
    SecondPolicy {
        /// The application.
        app: String,
        /// The group.
        group: String,
        /// `active` or `out-of-office`.
        status: &'static str,
        /// The policy that was there first (in identifier order).
        existing: String,
        /// The policy that was refused.
        refused: String,
    },
    /// A policy has more profiles than [`crate::MAX_PROFILES`].
    #[error("policy {policy:?} has {count} profiles, more than the limit of {max}")]
    TooManyProfiles {
        /// The policy.
        policy: String,
        /// How many profiles it has.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Two profiles of one policy share a name.
    #[error("policy {policy:?} has two profiles named {name:?}")]
    DuplicateProfile {
        /// The policy.
        policy: String,
        /// The repeated profile name.
        name: String,
    },
    /// A setting value violates the application's schema.
    #[error("{0}")]
    SchemaViolation(Box<SchemaViolation>),
    /// A setting path that the application's schema does not declare.
    #[error("{origin}: application {app:?} declares no setting {path:?}")]
    UnknownSetting {
        /// Where the path was used.
        origin: String,
        /// The application.
        app: String,
        /// The undeclared path.
        path: String,
        /// Where the path sits in the document that was given, as for
        /// [`PolicyError::SchemaViolation`]; the path itself for an explain query.
        field: String,
    },
    /// A schema declaration is itself invalid.
    #[error("schema of application {app:?}, setting {path:?}, field {field}: {reason}")]
    InvalidSchema {
        /// The application.
        app: String,
        /// The setting path.
        path: String,
        /// The schema field at fault, such as `min` or `default`.
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// A profile activation condition is nested deeper or is larger than allowed.
    #[error("condition of profile {profile:?} in policy {policy:?} is too large: {reason}")]
    ConditionTooLarge {
        /// The policy.
        policy: String,
        /// The profile.
        profile: String,
        /// Which limit was exceeded.
        reason: String,
    },
    /// A setting reference such as `app/path` is malformed.
    #[error("invalid setting reference {reference:?}: expected APPLICATION/PATH")]
    InvalidSettingRef {
        /// The reference given.
        reference: String,
    },
}

impl PolicyError {
    /// Where in the given document the fault is, for an answer that names the field: the
    /// setting's location for a schema fault, `status` for a second active policy, `profiles`
    /// for a profile fault. `None` when the fault is not in one field.
    pub fn field(&self) -> Option<&str> {
        match self {
            PolicyError::SchemaViolation(v) => Some(&v.field),
            PolicyError::UnknownSetting { field, .. } => Some(field),
            PolicyError::SecondPolicy { .. } => Some("status"),
            PolicyError::TooManyProfiles { .. }
            | PolicyError::DuplicateProfile { .. }
            | PolicyError::ConditionTooLarge { .. } => Some("profiles"),
            _ => None,
        }
    }
}

/// A setting value that violates its application's schema: where it was, and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: value {value} for {app}/{path} violates the schema: {rule}")]
#[non_exhaustive]
pub struct SchemaViolation {
    /// Where the value came from, for example `policy "p1"` or `profile "senior" of policy "p1"`.
    pub origin: String,
    /// The application.
    pub app: String,
    /// The setting path.
    pub path: String,
    /// Where the value sits in the document that was given: `settings.PATH` or
    /// `profiles[N].settings.PATH` of a policy, `local.APP.PATH` of a device.
    pub field: String,
    /// The offending value, as JSON.
    pub value: String,
    /// The rule that was broken.
    pub rule: String,
}
