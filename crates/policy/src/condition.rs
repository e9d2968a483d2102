//! Profile activation conditions.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::model::Device;

/// Deepest nesting of `all` / `any` / `not` in one condition.
pub const MAX_CONDITION_DEPTH: usize = 16;
/// Most rules (nodes) in one condition.
pub const MAX_CONDITION_NODES: usize = 256;

/// A profile activation condition: a small boolean expression over facts about the device
/// and its owner.
///
/// Evaluation, exactly:
/// - `all: [c1, c2, ...]` holds when every `ci` holds; `all: []` always holds. This is the
///   default condition, so a profile without a condition is active whenever it is enabled.
/// - `any: [c1, c2, ...]` holds when at least one `ci` holds; `any: []` never holds.
/// - `not: c` holds when `c` does not.
/// - `online: true|false` compares with [`Device::online`] (the device is connected to the
///   server).
/// - `network_location: "name"` holds when [`Device::network_location`] equals `name`.
/// - `tags: {names, all, invert}` holds when the device carries any (`all: false`, the
///   default) or every (`all: true`) tag in `names`; `invert: true` negates the result
///   ("devices without these tags"). With empty `names`, "any" is false and "all" is true,
///   before inversion.
/// - `owner: "name"` holds when the device's owner has that name.
/// - `role: "name"` holds when the device's owner has that role.
/// - `ou: {name, of, include_nested}` holds when the organisational unit of the device
///   (`of: "device"`, the default) or of its owner (`of: "owner"`) equals `name`, or, with
///   `include_nested: true`, lies below it (OU paths are `/`-separated: `corp/finance`
///   contains `corp/finance/accounting`).
/// - `directory_group: {name, of}` holds when the device (or owner) is a member of that
///   directory group.
/// - `ram_mb: {min, max}` and `cpu_count: {min, max}` hold when the device's RAM in MiB or
///   logical CPU count lies in the inclusive range; a missing bound is open; an unknown
///   amount never matches.
///
/// Missing facts (no owner, no OU, ...) make the rules about them false; `not` and
/// `invert` then make them true.
///
/// In JSON: `{"all": [{"tags": {"names": ["senior"]}}, {"not": {"online": false}}]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Condition {
    /// Every sub-condition holds (AND); empty holds.
    All(Vec<Condition>),
    /// At least one sub-condition holds (OR); empty does not hold.
    Any(Vec<Condition>),
    /// Negation.
    Not(Box<Condition>),
    /// Device online (`true`) or offline (`false`).
    Online(bool),
    /// Device is in the named network location.
    NetworkLocation(String),
    /// Device tags.
    Tags(TagRule),
    /// Owner's name.
    Owner(String),
    /// Owner's role.
    Role(String),
    /// Organisational unit of the device or of its owner.
    Ou(DirectoryRule),
    /// Directory group membership of the device or of its owner.
    DirectoryGroup(DirectoryRule),
    /// RAM in MiB.
    RamMb(Range),
    /// Logical CPU count.
    CpuCount(Range),
}

impl Default for Condition {
    /// `all: []`: always holds.
    fn default() -> Self {
        Condition::All(Vec::new())
    }
}

/// A tag rule: see [`Condition`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TagRule {
    /// The tags to look for.
    pub names: Vec<String>,
    /// Require every tag (`true`) or any one of them (`false`, the default).
    #[serde(default)]
    pub all: bool,
    /// Negate the result: match devices without the tags.
    #[serde(default)]
    pub invert: bool,
}

impl TagRule {
    /// A rule matching devices that carry `tag`.
    pub fn has(tag: impl Into<String>) -> Self {
        TagRule {
            names: vec![tag.into()],
            all: false,
            invert: false,
        }
    }
}

/// Whose directory facts a rule looks at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Subject {
    /// The device itself.
    #[default]
    Device,
    /// The device's owner.
    Owner,
}

/// An OU or directory group rule: see [`Condition`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct DirectoryRule {
    /// OU path or directory group name.
    pub name: String,
    /// Device or owner.
    #[serde(default)]
    pub of: Subject,
    /// For OUs: also match OUs below `name`.
    #[serde(default)]
    pub include_nested: bool,
}

/// An inclusive numeric range with optional bounds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Range {
    /// Lower bound, inclusive.
    #[serde(default)]
    pub min: Option<u64>,
    /// Upper bound, inclusive.
    #[serde(default)]
    pub max: Option<u64>,
}

impl Range {
    fn contains(&self, v: Option<u64>) -> bool {
        match v {
            None => false,
            Some(v) => self.min.is_none_or(|m| v >= m) && self.max.is_none_or(|m| v <= m),
        }
    }
}

impl Condition {
    /// (depth, node count) of this expression.
    pub(crate) fn size(&self) -> (usize, usize) {
        match self {
            Condition::All(v) | Condition::Any(v) => {
                let mut depth = 0;
                let mut nodes = 1usize;
                for c in v {
                    let (d, n) = c.size();
                    depth = depth.max(d);
                    nodes = nodes.saturating_add(n);
                }
                (depth + 1, nodes)
            }
            Condition::Not(c) => {
                let (d, n) = c.size();
                (d + 1, n.saturating_add(1))
            }
            _ => (1, 1),
        }
    }
}

/// String interner shared by compiled conditions and device facts.
#[derive(Debug, Default, Clone)]
pub(crate) struct Interner {
    ids: HashMap<String, u32>,
}

impl Interner {
    pub(crate) fn id(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = u32::try_from(self.ids.len()).unwrap_or(u32::MAX);
        self.ids.insert(s.to_owned(), id);
        id
    }
    fn ids<'a>(&mut self, it: impl IntoIterator<Item = &'a String>) -> Vec<u32> {
        let mut v: Vec<u32> = it.into_iter().map(|s| self.id(s)).collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// Device facts with strings interned, for fast condition evaluation. Devices with equal
/// facts satisfy exactly the same conditions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Facts {
    online: bool,
    location: Option<u32>,
    tags: Vec<u32>,
    owner: Option<u32>,
    roles: Vec<u32>,
    ou: Option<String>,
    owner_ou: Option<String>,
    groups: Vec<u32>,
    owner_groups: Vec<u32>,
    ram_mb: Option<u64>,
    cpus: Option<u64>,
}

impl Facts {
    /// Interned tag ids, sorted.
    pub(crate) fn tags(&self) -> &[u32] {
        &self.tags
    }

    /// Facts with only these tags (sorted interned ids) and nothing else: what a condition
    /// that reads only tags sees of a device with them.
    pub(crate) fn only_tags(tags: Vec<u32>) -> Facts {
        Facts {
            online: false,
            location: None,
            tags,
            owner: None,
            roles: Vec::new(),
            ou: None,
            owner_ou: None,
            groups: Vec::new(),
            owner_groups: Vec::new(),
            ram_mb: None,
            cpus: None,
        }
    }

    pub(crate) fn new(d: &Device, i: &mut Interner) -> Facts {
        let owner = d.owner.as_ref();
        Facts {
            online: d.online,
            location: d.network_location.as_deref().map(|s| i.id(s)),
            tags: i.ids(&d.tags),
            owner: owner.map(|o| i.id(&o.name)),
            roles: owner.map(|o| i.ids(&o.roles)).unwrap_or_default(),
            ou: d.ou.clone(),
            owner_ou: owner.and_then(|o| o.ou.clone()),
            groups: i.ids(&d.directory_groups),
            owner_groups: owner
                .map(|o| i.ids(&o.directory_groups))
                .unwrap_or_default(),
            ram_mb: d.ram_mb,
            cpus: d.cpu_count.map(u64::from),
        }
    }
}

/// A condition with strings interned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Compiled {
    All(Vec<Compiled>),
    Any(Vec<Compiled>),
    Not(Box<Compiled>),
    Online(bool),
    Location(u32),
    Tags {
        ids: Vec<u32>,
        all: bool,
        invert: bool,
    },
    Owner(u32),
    Role(u32),
    Ou {
        name: String,
        of: Subject,
        nested: bool,
    },
    Group {
        id: u32,
        of: Subject,
    },
    Ram(Range),
    Cpu(Range),
}

impl Compiled {
    pub(crate) fn new(c: &Condition, i: &mut Interner) -> Compiled {
        match c {
            Condition::All(v) => Compiled::All(v.iter().map(|c| Compiled::new(c, i)).collect()),
            Condition::Any(v) => Compiled::Any(v.iter().map(|c| Compiled::new(c, i)).collect()),
            Condition::Not(c) => Compiled::Not(Box::new(Compiled::new(c, i))),
            Condition::Online(b) => Compiled::Online(*b),
            Condition::NetworkLocation(s) => Compiled::Location(i.id(s)),
            Condition::Tags(t) => Compiled::Tags {
                ids: t.names.iter().map(|s| i.id(s)).collect(),
                all: t.all,
                invert: t.invert,
            },
            Condition::Owner(s) => Compiled::Owner(i.id(s)),
            Condition::Role(s) => Compiled::Role(i.id(s)),
            Condition::Ou(r) => Compiled::Ou {
                name: r.name.clone(),
                of: r.of,
                nested: r.include_nested,
            },
            Condition::DirectoryGroup(r) => Compiled::Group {
                id: i.id(&r.name),
                of: r.of,
            },
            Condition::RamMb(r) => Compiled::Ram(*r),
            Condition::CpuCount(r) => Compiled::Cpu(*r),
        }
    }

    /// When the condition reads no fact but the device's tags, adds the tag ids it looks
    /// at to `out` and returns true; otherwise returns false.
    pub(crate) fn tags_read(&self, out: &mut Vec<u32>) -> bool {
        match self {
            Compiled::All(v) | Compiled::Any(v) => v.iter().all(|c| c.tags_read(out)),
            Compiled::Not(c) => c.tags_read(out),
            Compiled::Tags { ids, .. } => {
                out.extend_from_slice(ids);
                true
            }
            _ => false,
        }
    }

    pub(crate) fn eval(&self, f: &Facts) -> bool {
        match self {
            Compiled::All(v) => v.iter().all(|c| c.eval(f)),
            Compiled::Any(v) => v.iter().any(|c| c.eval(f)),
            Compiled::Not(c) => !c.eval(f),
            Compiled::Online(b) => f.online == *b,
            Compiled::Location(id) => f.location == Some(*id),
            Compiled::Tags { ids, all, invert } => {
                let has = |id: &u32| f.tags.binary_search(id).is_ok();
                let m = if *all {
                    ids.iter().all(has)
                } else {
                    ids.iter().any(has)
                };
                m != *invert
            }
            Compiled::Owner(id) => f.owner == Some(*id),
            Compiled::Role(id) => f.roles.binary_search(id).is_ok(),
            Compiled::Ou { name, of, nested } => {
                let ou = match of {
                    Subject::Device => f.ou.as_deref(),
                    Subject::Owner => f.owner_ou.as_deref(),
                };
                match ou {
                    None => false,
                    Some(ou) => {
                        ou == name
                            || (*nested
                                && ou.len() > name.len()
                                && ou.starts_with(name.as_str())
                                && ou.as_bytes()[name.len()] == b'/')
                    }
                }
            }
            Compiled::Group { id, of } => match of {
                Subject::Device => f.groups.binary_search(id).is_ok(),
                Subject::Owner => f.owner_groups.binary_search(id).is_ok(),
            },
            Compiled::Ram(r) => r.contains(f.ram_mb),
            Compiled::Cpu(r) => r.contains(f.cpus),
        }
    }
}
