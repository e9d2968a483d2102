//! The server's registry of administration groups, devices, gateways and enrollment tokens,
//! held in memory (rebuilt from the database at start, every change journaled as row writes to
//! commit), and readable from and writable to one JSON document: the import format of servers
//! that kept their state in a file.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use outpost_server::Registry;
//!
//! let dir = std::env::temp_dir().join(format!("outpost-registry-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("registry.json");
//!
//! let mut reg = Registry::new("server-1").unwrap();
//! reg.add_group("accounting", "Accounting", None).unwrap();
//! let token = reg.issue_token("accounting", Some("laptop-7"), Duration::from_secs(3600), SystemTime::now()).unwrap();
//! reg.save(&path).unwrap();
//!
//! // After a restart, the same state.
//! let back = Registry::load(&path).unwrap().unwrap();
//! assert_eq!(back, reg);
//! assert_eq!(token.len(), 64);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::error::EnrollmentRefusal;
use crate::storage::Op;
use crate::{ServerError, store};

mod devices;
mod enrollment;
mod gateways;
mod groups;

/// The registry format this crate writes and the newest it reads.
pub const FORMAT: u32 = 1;
/// The id of the root administration group ("Managed devices").
pub const ROOT_GROUP: &str = "root";
/// The largest registry file read (64 MiB: ample for 100,000 devices).
pub const MAX_REGISTRY_BYTES: u64 = 64 * 1024 * 1024;
/// The longest an enrollment token may stay usable: one year.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// An administration group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Group {
    /// Display name.
    pub name: String,
    /// The parent group (`None` only for the root).
    pub parent: Option<String>,
}

/// An enrolled device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Device {
    /// Its administration group.
    pub group: String,
    /// SHA-256 of its certificate, lower-case hex.
    pub cert_sha256: String,
    /// When it enrolled, seconds since the Unix epoch.
    pub enrolled_at_unix: u64,
    /// Its certificate's serial, lower-case hex, so revocation is checked on every
    /// connection, relayed ones included (empty in registries written before it was kept).
    #[serde(default)]
    pub cert_serial: String,
    /// When it last synced, seconds since the Unix epoch (0: not since it enrolled).
    #[serde(default)]
    pub last_seen_unix: u64,
    /// The broadcast domain it reported, which distribution point election reads.
    #[serde(default)]
    pub broadcast_domain: Option<String>,
    /// Its operating system class.
    #[serde(default)]
    pub os_class: Option<String>,
    /// Free disk space it last reported, in bytes.
    #[serde(default)]
    pub free_disk_bytes: Option<u64>,
    /// SHA-256 (hex) of the token it enrolled with, so an enrollment whose answer was lost
    /// (the server stopped after the commit, before the answer went out) can be made again
    /// with the same token while the device has never connected.
    #[serde(default)]
    pub enrolled_with: String,
    /// The administrator's tags (ids), which device lists filter on.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub tags: BTreeSet<String>,
    /// When its certificate expires, seconds since the Unix epoch (0: not recorded).
    #[serde(default)]
    pub cert_expires_unix: u64,
    /// The reserve certificate issued to it over its authenticated connection, which will
    /// succeed the current one: a connection presenting it is the same device, and makes it
    /// the current certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve_cert: Option<ReserveCertificate>,
    /// The network location the administrator put it in: distribution points of that
    /// location serve it before any group's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_location: Option<String>,
}

/// The scope a distribution point is registered for, as the registry keeps it and the API
/// names it ([`DpScope::key`]): a group id (the group and its subgroups), `location~NAME`
/// (the devices placed in that network location), or `broadcast-domain~own` (the devices of
/// the DP's own network segment, as the agents' discovery reports find it). `~` is not
/// allowed in ids, so a key is never also a group id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum DpScope {
    /// An administration group and its subgroups.
    Group(String),
    /// A network location.
    NetworkLocation(String),
    /// The DP's own broadcast domain.
    OwnBroadcastDomain,
}

impl DpScope {
    /// The scope a key names.
    ///
    /// # Errors
    /// [`ServerError::InvalidId`] for a malformed key or name.
    pub fn parse(key: &str) -> Result<Self, ServerError> {
        match key.split_once('~') {
            None => {
                check_id("group id", key)?;
                Ok(DpScope::Group(key.into()))
            }
            Some(("location", name)) => {
                check_id("network location", name)?;
                Ok(DpScope::NetworkLocation(name.into()))
            }
            Some(("broadcast-domain", "own")) => Ok(DpScope::OwnBroadcastDomain),
            Some(_) => Err(ServerError::InvalidId {
                what: "distribution point scope",
                value: key.chars().take(200).collect(),
                reason: "a group id, location~NAME or broadcast-domain~own",
            }),
        }
    }

    /// Its key.
    pub fn key(&self) -> String {
        match self {
            DpScope::Group(g) => g.clone(),
            DpScope::NetworkLocation(l) => format!("location~{l}"),
            DpScope::OwnBroadcastDomain => "broadcast-domain~own".into(),
        }
    }

    /// `group`, `network_location` or `broadcast_domain`.
    pub fn kind(&self) -> &'static str {
        match self {
            DpScope::Group(_) => "group",
            DpScope::NetworkLocation(_) => "network_location",
            DpScope::OwnBroadcastDomain => "broadcast_domain",
        }
    }
}

/// A device's reserve certificate: issued ahead of its current certificate's expiry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ReserveCertificate {
    /// SHA-256 of the certificate, lower-case hex.
    pub sha256: String,
    /// Its serial, lower-case hex.
    pub serial: String,
    /// When it expires, seconds since the Unix epoch.
    pub expires_unix: u64,
}

impl ReserveCertificate {
    /// A reserve certificate record.
    pub fn new(sha256: &[u8; 32], serial: impl Into<String>, expires_unix: u64) -> Self {
        ReserveCertificate {
            sha256: hex(sha256),
            serial: serial.into(),
            expires_unix,
        }
    }
}

impl Device {
    /// The SHA-256s (hex) that identify it: its certificate's, and its reserve's.
    fn fingerprints(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.cert_sha256).chain(self.reserve_cert.as_ref().map(|r| &r.sha256))
    }

    /// Its certificate's SHA-256 as bytes (`None` if the recorded hex is not 32 bytes).
    pub fn fingerprint(&self) -> Option<[u8; 32]> {
        let hex = self.cert_sha256.as_bytes();
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            let pair = std::str::from_utf8(&hex[2 * i..2 * i + 2]).ok()?;
            *b = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(out)
    }
}

/// A registered connection gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum GatewayRegistration {
    /// A remote-office gateway: a distribution point with "keep connection" that dials the
    /// server itself.
    RemoteOffice {
        /// The device that holds the role.
        device_id: String,
        /// SHA-256 of the gateway's certificate (hex): tunnels are taken from this very
        /// certificate only. Empty for a registration made before gateways were bound to
        /// their certificates: its tunnels are refused until it is registered again.
        #[serde(default)]
        certificate_sha256: String,
    },
    /// A DMZ gateway: the server dials it.
    Dmz {
        /// The address the server dials.
        addr: SocketAddr,
        /// The DNS names its certificate carries (the first is dialled by name).
        dns_names: Vec<String>,
    },
}

/// An unused enrollment token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TokenRecord {
    /// The group an enrolling device is placed in.
    pub group: String,
    /// If set, only this device id may use the token.
    pub device: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    pub expires_unix: u64,
}

/// The registry. Every object belongs to the server instance named by
/// [`instance_id`](Self::instance_id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    format: u32,
    /// The server instance the objects belong to.
    pub instance_id: String,
    groups: BTreeMap<String, Group>,
    devices: BTreeMap<String, Device>,
    gateways: BTreeMap<String, GatewayRegistration>,
    /// Keyed by the SHA-256 (hex) of the token: the token itself is never stored.
    tokens: BTreeMap<String, TokenRecord>,
    /// Distribution points registered by the administrator: device id → the groups whose
    /// subtrees each serves.
    #[serde(default)]
    dps: BTreeMap<String, Vec<String>>,
    /// Device id by certificate SHA-256 (hex): derived from `devices`, rebuilt on load, so a
    /// connecting device is found without a scan.
    #[serde(skip)]
    by_fingerprint: HashMap<String, String>,
    /// The row writes made since [`take_journal`](Self::take_journal) was last called, each
    /// with the write that undoes it: what the storage layer commits.
    #[serde(skip)]
    journal: Journal,
}

/// The writes a registry made, with their undo; never part of its value.
#[derive(Debug, Default)]
struct Journal(Vec<(Op, Op)>);

impl Clone for Journal {
    fn clone(&self) -> Self {
        Journal::default()
    }
}

impl PartialEq for Journal {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Journal {}

/// The changes a registry made, ready to commit ([`crate::Storage::commit`]) and to undo
/// in memory if the commit fails.
#[derive(Debug, Default)]
#[must_use = "commit the writes, or undo them"]
pub struct Changes {
    writes: Vec<(Op, Op)>,
}

impl Changes {
    /// The row writes, in order.
    pub fn ops(&self) -> impl Iterator<Item = &Op> {
        self.writes.iter().map(|(op, _)| op)
    }

    /// No write at all.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// The writes, by value.
    pub fn into_ops(self) -> Vec<Op> {
        self.writes.into_iter().map(|(op, _)| op).collect()
    }
}

pub(crate) fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn token_key(token: &str) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()).as_ref())
}

/// Checks an identifier: 1 to 128 characters of `A-Z a-z 0-9 . _ : -`.
/// The most tags one device has.
pub const MAX_TAGS: usize = 32;

/// Checks a device id by the one rule of [`outpost_wire::DeviceId`] (the agent, the
/// certificate authority and the policies check the same).
pub fn check_device_id(value: &str) -> Result<(), ServerError> {
    match outpost_wire::DeviceId::rule_broken(value) {
        None => Ok(()),
        Some(reason) => Err(ServerError::InvalidId {
            what: "device id",
            value: value.chars().take(200).collect(),
            reason,
        }),
    }
}

/// Checks an identifier (ids of groups, devices, tags): 1 to 128 letters, digits, `.`, `_`, `:`, `-`.
pub fn check_id(what: &'static str, value: &str) -> Result<(), ServerError> {
    let bad = |reason| {
        Err(ServerError::InvalidId {
            what,
            value: value.chars().take(200).collect(),
            reason,
        })
    };
    if value.is_empty() {
        return bad("empty");
    }
    if value.len() > 128 {
        return bad("longer than 128 characters");
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
    {
        return bad("only letters, digits and . _ : - are allowed");
    }
    Ok(())
}

impl Registry {
    /// An empty registry with only the root group.
    pub fn new(instance_id: &str) -> Result<Self, ServerError> {
        check_id("server instance id", instance_id)?;
        let mut groups = BTreeMap::new();
        groups.insert(
            ROOT_GROUP.to_string(),
            Group {
                name: "Managed devices".into(),
                parent: None,
            },
        );
        Ok(Registry {
            format: FORMAT,
            instance_id: instance_id.into(),
            groups,
            devices: BTreeMap::new(),
            gateways: BTreeMap::new(),
            tokens: BTreeMap::new(),
            dps: BTreeMap::new(),
            by_fingerprint: HashMap::new(),
            journal: Journal::default(),
        })
    }

    /// Loads the registry at `path`; `Ok(None)` if there is none yet. The whole document is
    /// checked (known parents, no cycles, devices in known groups).
    pub fn load(path: &Path) -> Result<Option<Self>, ServerError> {
        let Some(bytes) = store::read_bounded(path, MAX_REGISTRY_BYTES)? else {
            return Ok(None);
        };
        let corrupt = |reason: String| ServerError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        #[derive(Deserialize)]
        struct Head {
            format: u32,
        }
        let head: Head = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if head.format > FORMAT {
            return Err(ServerError::UnsupportedFormat {
                path: path.to_path_buf(),
                found: head.format,
                supported: FORMAT,
            });
        }
        let mut reg: Registry =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        reg.check().map_err(|e| corrupt(e.to_string()))?;
        reg.by_fingerprint = reg
            .devices
            .iter()
            .flat_map(|(id, d)| d.fingerprints().map(move |f| (f.clone(), id.clone())))
            .collect();
        Ok(Some(reg))
    }

    /// Writes the registry to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<(), ServerError> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| ServerError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        store::write_atomic(path, &bytes)
    }

    fn check(&self) -> Result<(), ServerError> {
        check_id("server instance id", &self.instance_id)?;
        match self.groups.get(ROOT_GROUP) {
            Some(Group { parent: None, .. }) => {}
            _ => return Err(ServerError::UnknownGroup(ROOT_GROUP.into())),
        }
        for (id, g) in &self.groups {
            check_id("group id", id)?;
            if id != ROOT_GROUP {
                let parent = g
                    .parent
                    .as_deref()
                    .ok_or_else(|| ServerError::UnknownGroup(format!("parent of {id}")))?;
                if !self.groups.contains_key(parent) {
                    return Err(ServerError::UnknownGroup(parent.into()));
                }
            }
            // Walking up must reach the root within the number of groups.
            let mut at = id.as_str();
            for _ in 0..=self.groups.len() {
                match self.groups.get(at).and_then(|g| g.parent.as_deref()) {
                    Some(p) => at = p,
                    None => break,
                }
            }
            if at != ROOT_GROUP {
                return Err(ServerError::Cycle {
                    group: id.clone(),
                    parent: g.parent.clone().unwrap_or_default(),
                });
            }
        }
        for (id, d) in &self.devices {
            check_device_id(id)?;
            if !self.groups.contains_key(&d.group) {
                return Err(ServerError::UnknownGroup(d.group.clone()));
            }
        }
        for t in self.tokens.values() {
            if !self.groups.contains_key(&t.group) {
                return Err(ServerError::UnknownGroup(t.group.clone()));
            }
        }
        for (d, scopes) in &self.dps {
            if !self.devices.contains_key(d) {
                return Err(ServerError::UnknownDevice(d.clone()));
            }
            for s in scopes {
                if let DpScope::Group(g) = DpScope::parse(s)?
                    && !self.groups.contains_key(&g)
                {
                    return Err(ServerError::UnknownGroup(g));
                }
            }
        }
        Ok(())
    }

    /// The groups.
    pub fn groups(&self) -> &BTreeMap<String, Group> {
        &self.groups
    }

    /// The enrolled devices.
    pub fn devices(&self) -> &BTreeMap<String, Device> {
        &self.devices
    }

    /// One device.
    pub fn device(&self, id: &str) -> Option<&Device> {
        self.devices.get(id)
    }

    /// The enrolled device whose certificate has this SHA-256.
    pub fn device_by_fingerprint(&self, sha256: &[u8; 32]) -> Option<(&str, &Device)> {
        let id = self.by_fingerprint.get(&hex(sha256))?;
        let (id, d) = self.devices.get_key_value(id)?;
        Some((id.as_str(), d))
    }

    fn write(&mut self, op: Op) {
        let undo = self.apply(op.clone());
        self.journal.0.push((op, undo));
    }

    /// Applies one row write to memory (as loading from the database does) and returns the
    /// write that undoes it. Writes of rows the registry does not hold (events, policy
    /// objects, epochs) change nothing.
    pub(crate) fn apply(&mut self, op: Op) -> Op {
        match op {
            Op::PutGroup { id, group } => match self.groups.insert(id.clone(), group) {
                Some(group) => Op::PutGroup { id, group },
                None => Op::DeleteGroup { id },
            },
            Op::DeleteGroup { id } => match self.groups.remove(&id) {
                Some(group) => Op::PutGroup { id, group },
                None => Op::DeleteGroup { id },
            },
            Op::PutDevice { id, device } => {
                for f in device.fingerprints() {
                    self.by_fingerprint.insert(f.clone(), id.clone());
                }
                match self.devices.insert(id.clone(), device) {
                    Some(old) => {
                        let new = &self.devices[&id];
                        for f in old.fingerprints() {
                            if !new.fingerprints().any(|n| n == f) {
                                self.by_fingerprint.remove(f);
                            }
                        }
                        Op::PutDevice { id, device: old }
                    }
                    None => Op::DeleteDevice { id },
                }
            }
            Op::DeleteDevice { id } => match self.devices.remove(&id) {
                Some(device) => {
                    for f in device.fingerprints() {
                        self.by_fingerprint.remove(f);
                    }
                    Op::PutDevice { id, device }
                }
                None => Op::DeleteDevice { id },
            },
            Op::PutToken { key, token } => match self.tokens.insert(key.clone(), token) {
                Some(token) => Op::PutToken { key, token },
                None => Op::DeleteToken { key },
            },
            Op::DeleteToken { key } => match self.tokens.remove(&key) {
                Some(token) => Op::PutToken { key, token },
                None => Op::DeleteToken { key },
            },
            Op::PutGateway { id, gateway } => match self.gateways.insert(id.clone(), gateway) {
                Some(gateway) => Op::PutGateway { id, gateway },
                None => Op::DeleteGateway { id },
            },
            Op::DeleteGateway { id } => match self.gateways.remove(&id) {
                Some(gateway) => Op::PutGateway { id, gateway },
                None => Op::DeleteGateway { id },
            },
            Op::PutDpScopes { device, scopes } => {
                let old = if scopes.is_empty() {
                    self.dps.remove(&device)
                } else {
                    self.dps.insert(device.clone(), scopes)
                };
                Op::PutDpScopes {
                    device,
                    scopes: old.unwrap_or_default(),
                }
            }
            other => other,
        }
    }

    /// The writes made since the last call, to commit.
    pub fn take_journal(&mut self) -> Changes {
        Changes {
            writes: std::mem::take(&mut self.journal.0),
        }
    }

    /// Undoes `changes` in memory (their commit failed), newest first.
    pub fn undo(&mut self, changes: Changes) {
        for (_, undo) in changes.writes.into_iter().rev() {
            self.apply(undo);
        }
    }

    /// Rows of the whole registry as writes, parents before children: what an import
    /// commits.
    pub fn as_ops(&self) -> Vec<Op> {
        let mut ops = Vec::with_capacity(
            self.groups.len() + self.devices.len() + self.tokens.len() + self.gateways.len(),
        );
        // Parents first: the root, then each group after its parent.
        let mut placed: std::collections::HashSet<&str> = std::collections::HashSet::new();
        while placed.len() < self.groups.len() {
            let before = placed.len();
            for (id, g) in &self.groups {
                if !placed.contains(id.as_str())
                    && g.parent.as_deref().is_none_or(|p| placed.contains(p))
                {
                    placed.insert(id);
                    ops.push(Op::PutGroup {
                        id: id.clone(),
                        group: g.clone(),
                    });
                }
            }
            if placed.len() == before {
                break;
            }
        }
        ops.extend(self.devices.iter().map(|(id, d)| Op::PutDevice {
            id: id.clone(),
            device: d.clone(),
        }));
        ops.extend(self.tokens.iter().map(|(k, t)| Op::PutToken {
            key: k.clone(),
            token: t.clone(),
        }));
        ops.extend(self.gateways.iter().map(|(id, g)| Op::PutGateway {
            id: id.clone(),
            gateway: g.clone(),
        }));
        ops.extend(self.dps.iter().map(|(d, s)| Op::PutDpScopes {
            device: d.clone(),
            scopes: s.clone(),
        }));
        ops
    }

    /// The unused tokens, keyed by the SHA-256 (hex) of each.
    pub fn tokens(&self) -> &BTreeMap<String, TokenRecord> {
        &self.tokens
    }
}
