//! Virtual Administration Servers: isolated tenants inside one server.
//!
//! A virtual server has its own group tree, devices, enrollment tokens, policies, distribution
//! points and their election, gateway registrations, updates, events, security issues and
//! accounts: its own [`AdminService`], [`FleetSync`] and [`StoredObjects`] over its own rows
//! of the one database ([`Storage::scoped`]). What the virtual servers share is the
//! infrastructure: the CA, the device port, the gateways, the administration API and the
//! storage writer.
//!
//! - **Devices** are routed by their certificate: a virtual server's devices are issued
//!   certificates bound to it (`urn:outpost:virtual-server:<id>`, see
//!   [`outpost_pki::CertProfile::in_virtual_server`]), a connection goes to the virtual
//!   server its certificate names, and that server looks the fingerprint up in its own
//!   registry only. A certificate of A never authenticates a device in B.
//! - **Enrollment** connections are served by the main server's service, which hands a
//!   request whose token it does not hold to the virtual server holding it
//!   ([`EnrollmentRouter`]).
//! - **Multicast**: each virtual server's election allocates group addresses from its own
//!   block of [`VirtualServersConfig::multicast`], so no two tenants on one LAN share one.
//! - **Disabled**: its devices are refused with `ServerDisabled` (their kept connections
//!   closed), its data kept. **Deleted**: its devices' certificates revoked, then every row
//!   it owns and its directory removed.
//!
//! ```
//! use outpost_server::VirtualServersConfig;
//!
//! let cfg = VirtualServersConfig::default();
//! assert_eq!(cfg.capacity(), 500);
//! let a = cfg.block(0).unwrap();
//! let b = cfg.block(1).unwrap();
//! assert!(a.last < b.first);
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use outpost_election::MulticastRange;
use outpost_gateway::DeviceConnection;
use outpost_pki::ServerCa;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::{
    AccountBook, AdminServerConfig, AdminService, EnrollmentRouter, FleetSync, Op, ServerError,
    ServiceConfig, SessionConfig, Sessions, StoredObjects, VirtualServerRecord,
};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Settings of the virtual servers (`[virtual_servers]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct VirtualServersConfig {
    /// The most virtual servers (default 500).
    pub max: usize,
    /// The multicast group addresses virtual servers' distribution points use, carved into
    /// one block per virtual server (default `239.254.0.0`–`239.254.255.255`). Must not
    /// overlap the main server's `election.multicast`.
    pub multicast: MulticastRange,
    /// Addresses per block (default 64).
    pub multicast_block: u32,
}

impl Default for VirtualServersConfig {
    fn default() -> Self {
        VirtualServersConfig {
            max: 500,
            multicast: MulticastRange::new(
                IpAddr::from([239, 254, 0, 0]),
                IpAddr::from([239, 254, 255, 255]),
            ),
            multicast_block: 64,
        }
    }
}

impl VirtualServersConfig {
    /// Checks the settings against the main server's multicast range.
    pub fn validate(&self, main: &MulticastRange) -> Result<(), ServerError> {
        let bad = |m: String| ServerError::Config(format!("virtual_servers: {m}"));
        self.multicast
            .validate()
            .map_err(|e| bad(format!("multicast: {e}")))?;
        if self.multicast_block == 0 {
            return Err(bad("multicast_block: must be above 0".into()));
        }
        let same_family = matches!(
            (self.multicast.first, main.first),
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_))
        );
        if same_family && self.multicast.first <= main.last && main.first <= self.multicast.last {
            return Err(bad(format!(
                "multicast {}..={} overlaps election.multicast {}..={}: tenants on one LAN \
                 would share group addresses",
                self.multicast.first, self.multicast.last, main.first, main.last
            )));
        }
        if self.max > 0 && self.capacity() < self.max {
            return Err(bad(format!(
                "max {}: the multicast range holds only {} blocks of {}",
                self.max,
                self.capacity(),
                self.multicast_block
            )));
        }
        Ok(())
    }

    /// How many virtual servers the settings allow: `max`, and no more than the blocks in
    /// the range.
    pub fn capacity(&self) -> usize {
        let blocks = self.multicast.size() / u128::from(self.multicast_block.max(1));
        usize::try_from(blocks).unwrap_or(usize::MAX).min(self.max)
    }

    /// The multicast addresses of block `n` (`None` past the range).
    pub fn block(&self, n: u32) -> Option<MulticastRange> {
        let size = u128::from(self.multicast_block);
        let start = u128::from(n).checked_mul(size)?;
        if start.checked_add(size)? > self.multicast.size() {
            return None;
        }
        let add = |ip: IpAddr, k: u128| -> Option<IpAddr> {
            Some(match ip {
                IpAddr::V4(a) => IpAddr::V4(std::net::Ipv4Addr::from_bits(
                    u32::try_from(u128::from(a.to_bits()) + k).ok()?,
                )),
                IpAddr::V6(a) => {
                    IpAddr::V6(std::net::Ipv6Addr::from_bits(a.to_bits().checked_add(k)?))
                }
            })
        };
        Some(MulticastRange::new(
            add(self.multicast.first, start)?,
            add(self.multicast.first, start + size - 1)?,
        ))
    }
}

/// One server's state, the main one or a virtual one: the device service (registry,
/// connections), the sync source (policies, distribution points, updates), the update
/// store, and the API's accounts and sessions.
pub struct Tenant {
    id: String,
    /// `None`: the main server.
    record: Option<Mutex<VirtualServerRecord>>,
    pub(crate) service: Arc<AdminService>,
    pub(crate) fleet: Option<Arc<FleetSync>>,
    pub(crate) updates: Option<Arc<StoredObjects>>,
    pub(crate) accounts: Mutex<AccountBook>,
    pub(crate) sessions: Mutex<Sessions>,
    /// Held for the whole of a policy edit, so edits (and their undo) never interleave.
    pub(crate) policy_edit: tokio::sync::Mutex<()>,
    /// A virtual server's own directory (its update objects).
    dir: Option<PathBuf>,
}

impl std::fmt::Debug for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenant")
            .field("id", &self.id)
            .field("virtual", &self.record.is_some())
            .finish()
    }
}

impl Tenant {
    /// The main server's state.
    pub(crate) fn main(
        service: Arc<AdminService>,
        fleet: Option<Arc<FleetSync>>,
        updates: Option<Arc<StoredObjects>>,
        accounts: AccountBook,
        sessions: SessionConfig,
    ) -> Self {
        Tenant {
            id: service.storage().server_id().to_string(),
            record: None,
            service,
            fleet,
            updates,
            accounts: Mutex::new(accounts),
            sessions: Mutex::new(Sessions::new(sessions)),
            policy_edit: tokio::sync::Mutex::new(()),
            dir: None,
        }
    }

    /// Its id (the main server's instance id, or the virtual server's).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its device service.
    pub fn service(&self) -> &Arc<AdminService> {
        &self.service
    }

    /// Its sync source, if the server runs its own.
    pub fn fleet(&self) -> Option<&Arc<FleetSync>> {
        self.fleet.as_ref()
    }

    /// Its update store, if the server runs its own.
    pub fn updates(&self) -> Option<&Arc<StoredObjects>> {
        self.updates.as_ref()
    }

    /// A virtual server's row (`None`: the main server).
    pub fn record(&self) -> Option<VirtualServerRecord> {
        self.record.as_ref().map(|r| lock(r).clone())
    }

    /// Whether this is a virtual server.
    pub fn is_virtual(&self) -> bool {
        self.record.is_some()
    }
}

/// What a new virtual server is built from.
struct Builder {
    config: AdminServerConfig,
    base: PathBuf,
    ca: Arc<ServerCa>,
    service: ServiceConfig,
    sessions: SessionConfig,
}

/// The main server and its virtual servers.
pub struct VirtualServers {
    main: Arc<Tenant>,
    others: RwLock<BTreeMap<String, Arc<Tenant>>>,
    build: Builder,
    /// Held while the revocation list is rewritten, so two revocations never race.
    crl: Mutex<()>,
    /// Serialises creating, changing and deleting virtual servers.
    lifecycle: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for VirtualServers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtualServers")
            .field("main", &self.main.id)
            .field("virtual", &self.read().len())
            .finish()
    }
}

impl VirtualServers {
    /// The main server `main` and the virtual servers `records` (as its storage holds
    /// them), each loaded from its rows.
    pub(crate) fn start(
        main: Tenant,
        config: &AdminServerConfig,
        base: &std::path::Path,
        ca: Arc<ServerCa>,
        service: ServiceConfig,
        sessions: SessionConfig,
        records: &[VirtualServerRecord],
    ) -> Result<Arc<Self>, ServerError> {
        let set = Arc::new(VirtualServers {
            main: Arc::new(main),
            others: RwLock::new(BTreeMap::new()),
            build: Builder {
                config: config.clone(),
                base: base.to_path_buf(),
                ca,
                service,
                sessions,
            },
            crl: Mutex::new(()),
            lifecycle: tokio::sync::Mutex::new(()),
        });
        for r in records {
            let t = set.build_tenant(r.clone())?;
            set.write().insert(r.id.clone(), t);
        }
        let router: Arc<dyn EnrollmentRouter> = set.clone();
        set.main
            .service
            .set_enrollment_router(Arc::downgrade(&router));
        Ok(set)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Tenant>>> {
        self.others.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Tenant>>> {
        self.others.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The main server.
    pub fn main(&self) -> &Arc<Tenant> {
        &self.main
    }

    /// Virtual server `id`.
    pub fn get(&self, id: &str) -> Option<Arc<Tenant>> {
        self.read().get(id).cloned()
    }

    /// The main server, then every virtual server by id.
    pub fn all(&self) -> Vec<Arc<Tenant>> {
        std::iter::once(self.main.clone())
            .chain(self.read().values().cloned())
            .collect()
    }

    /// The virtual servers' rows, by id.
    pub fn list(&self) -> Vec<VirtualServerRecord> {
        self.read().values().filter_map(|t| t.record()).collect()
    }

    /// The settings in force.
    pub fn config(&self) -> &VirtualServersConfig {
        &self.build.config.virtual_servers
    }

    fn directory(&self, id: &str) -> PathBuf {
        self.build
            .config
            .data_path(&self.build.base)
            .join("virtual-servers")
            .join(id)
    }

    fn build_tenant(&self, record: VirtualServerRecord) -> Result<Arc<Tenant>, ServerError> {
        let cfg = &self.build.config;
        let range = cfg
            .virtual_servers
            .block(record.multicast_block)
            .ok_or_else(|| {
                ServerError::Config(format!(
                    "virtual server {:?}: multicast block {} is outside virtual_servers.multicast",
                    record.id, record.multicast_block
                ))
            })?;
        let storage = self.main.service.storage().scoped(&record.id);
        let snapshot = storage.load()?;
        let mut election = cfg.election.clone();
        election.multicast = range;
        let fleet = Arc::new(cfg.fleet_sync_with(&election, &snapshot, &storage)?);
        let dir = self.directory(&record.id);
        let updates = Arc::new(StoredObjects::open(
            dir.join("objects"),
            storage.clone(),
            &snapshot.updates,
        )?);
        let service = AdminService::new(
            self.build.service.clone().for_virtual_server(&record.id),
            self.build.ca.clone(),
            storage,
            snapshot.registry,
            fleet.clone(),
            updates.clone(),
        );
        service.set_disabled(record.disabled);
        Ok(Arc::new(Tenant {
            id: record.id.clone(),
            record: Some(Mutex::new(record)),
            service,
            fleet: Some(fleet),
            updates: Some(updates),
            accounts: Mutex::new(AccountBook::new(snapshot.accounts, snapshot.api_tokens)),
            sessions: Mutex::new(Sessions::new(self.build.sessions)),
            policy_edit: tokio::sync::Mutex::new(()),
            dir: Some(dir),
        }))
    }

    /// Creates virtual server `id` named `name`: its row and root group committed, its
    /// multicast block the lowest free one, the main server's application schemas copied.
    pub async fn create(&self, id: &str, name: &str) -> Result<VirtualServerRecord, ServerError> {
        let _one = self.lifecycle.lock().await;
        check_virtual_id(id)?;
        if name.chars().count() > 200 {
            return Err(ServerError::Config("name: at most 200 characters".into()));
        }
        if id == self.main.id || self.get(id).is_some() {
            return Err(ServerError::Duplicate {
                kind: "virtual server",
                id: id.into(),
            });
        }
        let used: std::collections::BTreeSet<u32> =
            self.list().iter().map(|r| r.multicast_block).collect();
        if used.len() >= self.config().capacity() {
            return Err(ServerError::Config(format!(
                "{} virtual servers exist, the most this server allows (virtual_servers.max \
                 and the multicast blocks)",
                used.len()
            )));
        }
        let block = (0..).find(|b| !used.contains(b)).unwrap_or(0);
        let record = VirtualServerRecord::new(id, name, block);
        let main = self.main.service.storage().clone();
        main.commit(vec![Op::PutVirtualServer(record.clone())])
            .await?;
        // Application schemas describe the software, not the tenant: a new virtual server
        // starts with the main server's, so its policies can be written at once.
        let read = main.clone();
        let schemas = tokio::task::spawn_blocking(move || {
            read.policy_objects(crate::PolicyObjectKind::Schema)
        })
        .await
        .map_err(|e| ServerError::Config(format!("reading the schemas: {e}")))??;
        main.scoped(id)
            .commit(
                schemas
                    .into_iter()
                    .map(|(app, document)| Op::PutPolicyObject {
                        kind: crate::PolicyObjectKind::Schema,
                        id: app,
                        document,
                    })
                    .collect(),
            )
            .await?;
        let t = self.build_tenant(record.clone())?;
        self.write().insert(id.to_string(), t);
        tracing::info!(virtual_server = %id, "created (multicast block {block})");
        Ok(record)
    }

    /// Renames or disables/enables virtual server `id`; committed before it takes effect
    /// (disabling closes its devices' kept connections).
    pub async fn update(
        &self,
        id: &str,
        name: Option<&str>,
        disabled: Option<bool>,
    ) -> Result<VirtualServerRecord, ServerError> {
        let _one = self.lifecycle.lock().await;
        let t = self.get(id).ok_or_else(|| ServerError::Unknown {
            kind: "virtual server",
            id: id.into(),
        })?;
        let mut record = t.record().ok_or_else(|| ServerError::Unknown {
            kind: "virtual server",
            id: id.into(),
        })?;
        if let Some(n) = name {
            if n.chars().count() > 200 {
                return Err(ServerError::Config("name: at most 200 characters".into()));
            }
            record.name = n.to_string();
        }
        if let Some(d) = disabled {
            record.disabled = d;
        }
        self.main
            .service
            .storage()
            .commit(vec![Op::PutVirtualServer(record.clone())])
            .await?;
        if let Some(r) = &t.record {
            *lock(r) = record.clone();
        }
        let cut = t.service.set_disabled(record.disabled);
        tracing::info!(
            virtual_server = %id, "{}; {cut} device connection(s) closed",
            if record.disabled {
                "disabled"
            } else {
                "enabled"
            }
        );
        Ok(record)
    }

    /// Deletes virtual server `id`: disabled (committed) first, then its devices'
    /// certificates revoked, then every row it owns and its directory removed. Returns how
    /// many certificates were revoked. A failure part-way leaves it disabled, to delete again.
    pub async fn delete(&self, id: &str) -> Result<usize, ServerError> {
        self.update(id, None, Some(true)).await?;
        let _one = self.lifecycle.lock().await;
        let Some(t) = self.get(id) else {
            return Err(ServerError::Unknown {
                kind: "virtual server",
                id: id.into(),
            });
        };
        let serials: Vec<String> = t.service.with_registry(|r| {
            r.devices()
                .values()
                .flat_map(|d| {
                    std::iter::once(d.cert_serial.clone())
                        .chain(d.reserve_cert.as_ref().map(|rc| rc.serial.clone()))
                })
                .filter(|s| !s.is_empty())
                .collect()
        });
        if !serials.is_empty() {
            let ca = self.revoke(&serials)?;
            t.service.set_revocations(&ca);
        }
        self.main
            .service
            .storage()
            .commit(vec![Op::DeleteVirtualServer { id: id.into() }])
            .await?;
        self.write().remove(id);
        if let Some(dir) = &t.dir
            && let Err(e) = std::fs::remove_dir_all(dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(
                virtual_server = %id, "its directory {} not removed: {e}",
                dir.display()
            );
        }
        tracing::info!(
            virtual_server = %id, "deleted; {} certificate(s) revoked",
            serials.len()
        );
        Ok(serials.len())
    }

    /// Adds `serials` to the server CA's revocation list and rewrites `ca.crl` (one
    /// revocation at a time); returns the CA as it is now.
    pub fn revoke(&self, serials: &[String]) -> Result<ServerCa, ServerError> {
        use outpost_pki::{CaKind, PkiConfig, Serial, store};
        let _one_at_a_time = lock(&self.crl);
        let dir = self.build.config.data_path(&self.build.base);
        let now = std::time::SystemTime::now();
        let mut ca = store::load_server_ca(&dir, PkiConfig::default())?;
        for serial in serials {
            ca.authority_mut(CaKind::Server)
                .revoke(Serial::from_hex(serial)?, now)?;
        }
        store::save_crl(&mut ca, CaKind::Server, &dir, now)?;
        Ok(ca)
    }

    /// The service a device connection goes to: the virtual server its certificate names
    /// (the main server's when it names none, or one that does not exist: the main service
    /// then refuses it as not enrolled).
    pub fn route(&self, conn: &DeviceConnection) -> Arc<AdminService> {
        match &conn.peer.virtual_server {
            Some(vs) => self
                .get(vs)
                .map_or_else(|| self.main.service.clone(), |t| t.service.clone()),
            None => self.main.service.clone(),
        }
    }

    /// A queue for device connections and the task that serves each with the service of
    /// its (virtual) server ([`route`](Self::route)). Aborting the task closes every
    /// connection it serves.
    pub fn dispatcher(
        self: &Arc<Self>,
        capacity: usize,
    ) -> (mpsc::Sender<DeviceConnection>, tokio::task::JoinHandle<()>) {
        let set = self.clone();
        crate::service::dispatch(capacity, move |c| set.route(c))
    }
}

impl EnrollmentRouter for VirtualServers {
    fn service_for_token(&self, token: &str, device: &str) -> Option<Arc<AdminService>> {
        self.read()
            .values()
            .find(|t| t.service.holds_token(token, device))
            .map(|t| t.service.clone())
    }
}

/// A virtual server id: 1 to 64 letters, digits, `-`, `_`, `.` (it goes into certificates
/// and directory names).
pub fn check_virtual_id(id: &str) -> Result<(), ServerError> {
    crate::check_id("virtual server id", id)?;
    let bad = |reason| ServerError::InvalidId {
        what: "virtual server id",
        value: id.chars().take(200).collect(),
        reason,
    };
    if id.len() > outpost_wire::messages::MAX_VIRTUAL_SERVER_ID {
        return Err(bad("longer than 64 characters"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        || id.starts_with('.')
    {
        return Err(bad(
            "only letters, digits and - _ . are allowed, not first .",
        ));
    }
    Ok(())
}
