//! The Administration Server assembled: its device port, the DMZ gateways it dials, the
//! device service, the registry and the CA, from one configuration.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use outpost_gateway::{
    ConnectorConfig, DeviceListener, DmzGatewayEntry, ListenerLimits, ServerConnector, TlsFiles,
};
use outpost_pki::{PkiConfig, store};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use outpost_election::ElectionConfig;
use outpost_policy::{Resolver, State};

use crate::{
    AdminService, DataDirLock, DatabaseConfig, DpCoordinator, FleetSync, ObjectStore, Op,
    PolicySync, Registry, ServerError, ServiceConfig, Snapshot, Storage, SyncNowSigner, SyncSource,
};

/// Markers of the one-time imports, in `server_meta`.
const IMPORTED_REGISTRY: &str = "import.registry";
const IMPORTED_POLICY: &str = "import.policy";

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], outpost_wire::ports::DEVICE))
}
fn default_multicast_port() -> u16 {
    crate::dp::DEFAULT_MULTICAST_PORT
}
fn default_handshake() -> u64 {
    ListenerLimits::default().handshake_timeout.as_millis() as u64
}

fn default_max_handshakes() -> usize {
    ListenerLimits::default().max_handshakes
}

fn default_max_handshakes_per_source() -> usize {
    ListenerLimits::default().max_handshakes_per_source
}

/// Removes what writes interrupted by a crash left in the data directory (the caller holds
/// its lock, so no write is under way).
fn remove_stale_temporaries(dir: &Path) -> Result<(), ServerError> {
    let n = store::remove_stale_temporaries(dir)?;
    if n > 0 {
        tracing::info!(
            "{}: removed {n} temporary file(s) left by an interrupted write",
            dir.display()
        );
    }
    Ok(())
}

/// Configuration of an Administration Server, as written in TOML.
///
/// ```
/// let cfg = outpost_server::AdminServerConfig::from_toml(r#"
///     instance_id = "server-1"
///     data_dir = "state"              # CA files (as `pki init` writes them) and outpost.db (SQLite)
///     listen = "127.0.0.1:13100"
///     [tls]
///     cert = "state/server.chain.pem"
///     key = "state/server.key"
///     server_ca = "state/ca.crt"
///     [connector]
///     server_id = "server-1"
///     [[connector.gateways]]
///     id = "dmz-1"
///     addr = "127.0.0.1:13000"
///     name = "gw.example.test"
/// "#).unwrap();
/// assert!(cfg.policy_state.is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct AdminServerConfig {
    /// The server instance every object belongs to.
    pub instance_id: String,
    /// Directory of the CA files and the SQLite database (relative to the configuration file).
    pub data_dir: PathBuf,
    /// The server's own device port (default `0.0.0.0:13000`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The server's TLS certificate files.
    pub tls: TlsFiles,
    /// DMZ gateways to dial.
    #[serde(default)]
    pub connector: ConnectorConfig,
    /// Time allowed for a device's TLS handshake, in ms (default 5 s).
    #[serde(default = "default_handshake")]
    pub handshake_timeout_ms: u64,
    /// Connections in their TLS handshake on the device port at once (default 1,024); past it
    /// the oldest is closed to make room.
    #[serde(default = "default_max_handshakes")]
    pub max_handshakes: usize,
    /// Of those, how many one source address (an IPv6 source: its /64) may hold (default
    /// 256; devices behind one NAT address share it).
    #[serde(default = "default_max_handshakes_per_source")]
    pub max_handshakes_per_source: usize,
    /// The policies (an `outpost-policy` state document, `.json` or `.toml`), relative to
    /// the configuration file. Without it devices get no settings.
    #[serde(default)]
    pub policy_state: Option<PathBuf>,
    /// Distribution point election settings (heartbeats, disk thresholds, multicast range,
    /// the sync interval rule).
    #[serde(default)]
    pub election: ElectionConfig,
    /// The multicast UDP port distribution points send on (default 15001).
    #[serde(default = "default_multicast_port")]
    pub multicast_port: u16,
    /// The database (default: SQLite in the data directory).
    #[serde(default)]
    pub database: DatabaseConfig,
    /// The HTTPS administration API (served when the section is present; default port
    /// 13299).
    #[serde(default)]
    pub api: Option<crate::ApiConfig>,
    /// Virtual servers: how many at most, and the multicast addresses they use.
    #[serde(default)]
    pub virtual_servers: crate::VirtualServersConfig,
}

impl AdminServerConfig {
    /// Parses TOML.
    pub fn from_toml(text: &str) -> Result<Self, ServerError> {
        toml::from_str(text).map_err(|e| ServerError::Config(e.to_string()))
    }

    /// The registry file servers before the database wrote, imported at the first start.
    pub fn registry_path(&self, base: &Path) -> PathBuf {
        self.data_path(base).join("registry.json")
    }

    /// The file servers before the database kept the distribution point epochs in,
    /// imported with the registry.
    pub fn epochs_path(&self, base: &Path) -> PathBuf {
        self.data_path(base).join("dp-epochs.json")
    }

    /// The database, its URL made concrete (SQLite in the data directory by default).
    pub fn database(&self, base: &Path) -> DatabaseConfig {
        self.database.resolve(&self.data_path(base))
    }

    /// The device port's bounds on connections before their peer is known.
    pub fn listener_limits(&self) -> ListenerLimits {
        ListenerLimits::default()
            .with_handshake_timeout(Duration::from_millis(self.handshake_timeout_ms))
            .with_handshakes(self.max_handshakes, self.max_handshakes_per_source)
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), ServerError> {
        crate::check_id("instance_id", &self.instance_id)?;
        if self.multicast_port == 0 {
            return Err(ServerError::Config(
                "multicast_port: must be above 0".into(),
            ));
        }
        self.listener_limits()
            .validate()
            .map_err(|e| ServerError::Config(e.to_string()))?;
        self.election
            .validate()
            .map_err(|e| ServerError::Config(format!("election: {e}")))?;
        self.database.validate()?;
        self.virtual_servers.validate(&self.election.multicast)?;
        if let Some(api) = &self.api {
            api.validate()?;
        }
        self.connector
            .validate()
            .map_err(|e| ServerError::Config(format!("connector: {e}")))
    }

    /// The sync source these settings describe over what the database holds: policies
    /// (if any are stored), distribution points and their epochs from the registry, the
    /// election's sync interval rule.
    pub fn fleet_sync(
        &self,
        snapshot: &Snapshot,
        storage: &Storage,
    ) -> Result<FleetSync, ServerError> {
        self.fleet_sync_with(&self.election, snapshot, storage)
    }

    /// [`fleet_sync`](Self::fleet_sync) with other election settings (a virtual server's
    /// multicast block).
    pub fn fleet_sync_with(
        &self,
        election: &ElectionConfig,
        snapshot: &Snapshot,
        storage: &Storage,
    ) -> Result<FleetSync, ServerError> {
        // With no policies stored yet, an empty state: the groups and devices of the
        // registry, so policies added later through the API resolve at once.
        let mut state = crate::policy_state(&snapshot.policy)?.unwrap_or_default();
        // The resolver knows every enrolled device, where the registry puts it.
        crate::place_registry_devices(&mut state, &snapshot.registry);
        let resolver = Resolver::new(&state)
            .map_err(|e| ServerError::Config(format!("the stored policies do not resolve: {e}")))?;
        let policy = Some(PolicySync::new(resolver, election.sync));
        let mut dps = DpCoordinator::new(election.clone(), &snapshot.registry)?;
        dps.set_multicast_port(self.multicast_port);
        dps.keep_epochs(storage.clone(), snapshot.epochs.clone());
        let fleet = FleetSync::new(policy, Some(dps), election.sync);
        for u in &snapshot.updates {
            fleet.publish_update(crate::objects::announcement(u));
        }
        Ok(fleet)
    }

    /// Reads the policy state file at `path` (`.json` or `.toml`).
    pub fn read_policy_file(path: &Path) -> Result<State, ServerError> {
        let bad = |e: String| ServerError::Config(format!("policy_state: {}: {e}", path.display()));
        let bytes = crate::store::read_bounded(path, 64 * 1024 * 1024)?
            .ok_or_else(|| bad("does not exist".into()))?;
        if path.extension().is_some_and(|e| e == "toml") {
            let text = String::from_utf8(bytes).map_err(|_| bad("not UTF-8".into()))?;
            State::from_toml(&text)
        } else {
            State::from_json(&bytes)
        }
        .map_err(|e| bad(e.to_string()))
    }

    /// Opens the database (the caller holds the data directory's lock), imports what
    /// servers before it kept in files (`registry.json`, `dp-epochs.json`, the
    /// `policy_state` file) if it was never imported, and reads the state.
    pub fn open_storage(&self, base: &Path) -> Result<(Storage, Snapshot), ServerError> {
        let storage = Storage::open(&self.database(base), &self.instance_id)?;
        let snapshot = storage.load()?;
        let mut ops = Vec::new();
        let mut imported_registry = false;
        if !snapshot.meta.contains_key(IMPORTED_REGISTRY)
            && let Some(old) = Registry::load(&self.registry_path(base))?
        {
            if old.instance_id != self.instance_id {
                return Err(ServerError::Config(format!(
                    "{} belongs to server instance {:?}, this configuration is {:?}",
                    self.registry_path(base).display(),
                    old.instance_id,
                    self.instance_id
                )));
            }
            if !snapshot.registry.devices().is_empty() {
                return Err(ServerError::Config(format!(
                    "{} was never imported, but the database already holds {} device(s): \
                     move the file away, or import it into an empty database",
                    self.registry_path(base).display(),
                    snapshot.registry.devices().len()
                )));
            }
            ops.extend(old.as_ops());
            if let Some(epochs) = crate::dp::read_epoch_file(&self.epochs_path(base))? {
                ops.extend(
                    epochs
                        .into_iter()
                        .map(|(scope, epoch)| Op::PutEpoch { scope, epoch }),
                );
            }
            ops.push(Op::PutMeta {
                key: IMPORTED_REGISTRY.into(),
                value: format!(
                    "{} devices from {}",
                    old.devices().len(),
                    self.registry_path(base).display()
                ),
            });
            imported_registry = true;
        }
        if !snapshot.meta.contains_key(IMPORTED_POLICY)
            && snapshot.policy.is_empty()
            && let Some(p) = &self.policy_state
        {
            let path = base.join(p);
            let state = Self::read_policy_file(&path)?;
            // Checked before it is stored: a state that does not resolve is refused here.
            Resolver::new(&state).map_err(|e| {
                ServerError::Config(format!("policy_state: {}: {e}", path.display()))
            })?;
            ops.extend(crate::policy_ops(&state, &snapshot.policy)?);
            ops.push(Op::PutMeta {
                key: IMPORTED_POLICY.into(),
                value: path.display().to_string(),
            });
        }
        if ops.is_empty() {
            return Ok((storage, snapshot));
        }
        storage.commit_blocking(ops)?;
        if imported_registry {
            let from = self.registry_path(base);
            let to = from.with_extension("json.imported");
            match std::fs::rename(&from, &to) {
                Ok(()) => tracing::info!(
                    "{} imported into the database; kept as {}",
                    from.display(),
                    to.display()
                ),
                Err(e) => tracing::warn!("{} imported, but not renamed: {e}", from.display()),
            }
        }
        let snapshot = storage.load()?;
        Ok((storage, snapshot))
    }

    /// The registry as the database holds it now (safe while a server runs: it only reads;
    /// nothing is imported).
    pub fn load_registry(&self, base: &Path) -> Result<Registry, ServerError> {
        Ok(Storage::open(&self.database(base), &self.instance_id)?
            .load()?
            .registry)
    }

    /// Makes the first administrator account (offline: refused while a server runs on the
    /// data directory, and once any account exists).
    pub fn bootstrap_account(
        &self,
        base: &Path,
        name: &str,
        password: &str,
    ) -> Result<(), ServerError> {
        let _lock = DataDirLock::acquire(&self.data_path(base), "offline command")?;
        let (storage, snapshot) = self.open_storage(base)?;
        let book = crate::AccountBook::new(snapshot.accounts, snapshot.api_tokens);
        let op = book.bootstrap(name, password, std::time::SystemTime::now())?;
        storage.commit_blocking(vec![op])
    }

    /// Imports a registry file (as servers before the database wrote it) into a database
    /// that holds no device yet (offline: refused while a server runs on the data
    /// directory). Returns how many devices it brought.
    pub fn import_registry(&self, base: &Path, path: &Path) -> Result<usize, ServerError> {
        let _lock = DataDirLock::acquire(&self.data_path(base), "offline command")?;
        let (storage, _) = self.open_storage(base)?;
        let old = Registry::load(path)?.ok_or_else(|| ServerError::Io {
            op: "read",
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such registry file"),
        })?;
        if old.instance_id != self.instance_id {
            return Err(ServerError::Config(format!(
                "{} belongs to server instance {:?}, this configuration is {:?}",
                path.display(),
                old.instance_id,
                self.instance_id
            )));
        }
        storage.import_registry(&old)?;
        storage.commit_blocking(vec![Op::PutMeta {
            key: IMPORTED_REGISTRY.into(),
            value: format!("{} devices from {}", old.devices().len(), path.display()),
        }])?;
        Ok(old.devices().len())
    }

    /// Replaces the stored policies with the state file at `path` (offline: refused while
    /// a server runs on the data directory). Returns how many rows changed.
    pub fn import_policy(&self, base: &Path, path: &Path) -> Result<usize, ServerError> {
        let _lock = DataDirLock::acquire(&self.data_path(base), "offline command")?;
        let (storage, snapshot) = self.open_storage(base)?;
        let state = Self::read_policy_file(path)?;
        let mut check = state.clone();
        crate::place_registry_devices(&mut check, &snapshot.registry);
        Resolver::new(&check)
            .map_err(|e| ServerError::Config(format!("{}: {e}", path.display())))?;
        let mut ops = crate::policy_ops(&state, &snapshot.policy)?;
        let n = ops.len();
        ops.push(Op::PutMeta {
            key: IMPORTED_POLICY.into(),
            value: path.display().to_string(),
        });
        storage.commit_blocking(ops)?;
        Ok(n)
    }

    /// The data directory.
    pub fn data_path(&self, base: &Path) -> PathBuf {
        base.join(&self.data_dir)
    }

    /// Changes the registry of a server that is not running: takes the data directory's
    /// lock (refused with [`ServerError::DataDirBusy`] while a server or another command
    /// holds it), loads the registry from the database, runs `f`, and commits what it
    /// changed only if `f` succeeded.
    pub fn edit_registry<T>(
        &self,
        base: &Path,
        f: impl FnOnce(&mut Registry) -> Result<T, ServerError>,
    ) -> Result<T, ServerError> {
        let _lock = DataDirLock::acquire(&self.data_path(base), "offline command")?;
        remove_stale_temporaries(&self.data_path(base))?;
        let (storage, mut snapshot) = self.open_storage(base)?;
        let out = f(&mut snapshot.registry)?;
        storage.commit_blocking(snapshot.registry.take_journal().into_ops())?;
        Ok(out)
    }
}

/// A running Administration Server.
pub struct AdminServer {
    service: Arc<AdminService>,
    /// The main server and its virtual servers.
    servers: Arc<crate::VirtualServers>,
    /// The sync source built from the configuration (when none was given).
    fleet: Option<Arc<FleetSync>>,
    /// The update objects kept in the data directory (when no other store was given).
    updates: Option<Arc<crate::StoredObjects>>,
    push: SyncNowSigner,
    listener: DeviceListener,
    connector: ServerConnector,
    dispatch: JoinHandle<()>,
    ticker: JoinHandle<()>,
    api: Option<crate::api::ApiHandle>,
    /// Held while the server runs: offline commands and a second server are refused.
    _lock: DataDirLock,
}

/// The server CA's revocation list file, as last seen.
struct CrlWatch {
    dir: PathBuf,
    file: [PathBuf; 1],
    seen: store::FileStamps,
}

impl CrlWatch {
    fn new(dir: PathBuf) -> Self {
        let file = [dir.join(store::files::CA_CRL)];
        let seen = store::FileStamps::of(&file);
        CrlWatch { dir, file, seen }
    }

    /// When the file changed (`pki revoke` rewrote it), reloads the CA from the directory
    /// (which verifies the list's signature) and hands the new list to every service.
    fn poll(&mut self, servers: &crate::VirtualServers) {
        let now = store::FileStamps::of(&self.file);
        if now == self.seen {
            return;
        }
        match store::load_server_ca(&self.dir, PkiConfig::default()) {
            Ok(ca) => {
                self.seen = now;
                let mut n = 0;
                for t in servers.all() {
                    n = t.service().set_revocations(&ca);
                }
                tracing::info!("revocation list reloaded: {n} certificate(s) revoked");
            }
            // Perhaps caught between writes; tried again at the next tick.
            Err(e) => tracing::warn!("revocation list changed but does not load: {e}"),
        }
    }
}

/// Every second: reload the revocation list if it changed, let the sync source run its
/// timers (distribution point failover) and push "sync now" to every device with a kept
/// connection when it says something changed.
/// The DMZ gateways' signal connections as last seen, to record when one comes up or goes
/// down.
struct GatewayWatch {
    up: outpost_gateway::GatewaysUp,
    seen: std::collections::BTreeMap<String, u64>,
}

impl GatewayWatch {
    /// Events for the gateways whose signal connection came up, went down or was made
    /// again (a new session) since the last call.
    fn poll(&mut self) -> Vec<crate::EventRecord> {
        use outpost_wire::messages::Severity;
        let now = self.up.now();
        let mut events = Vec::new();
        for (id, session) in &now {
            match self.seen.get(id) {
                Some(s) if s == session => {}
                _ => events.push(crate::EventRecord::server(
                    None,
                    Severity::Info,
                    "gateway.up",
                    format!("DMZ gateway {id:?}: signal connection up (session {session})"),
                )),
            }
        }
        for id in self.seen.keys().filter(|id| !now.contains_key(*id)) {
            events.push(crate::EventRecord::server(
                None,
                Severity::Warning,
                "gateway.down",
                format!("DMZ gateway {id:?}: signal connection down"),
            ));
        }
        self.seen = now;
        events
    }
}

async fn tick(
    servers: Arc<crate::VirtualServers>,
    sync: Arc<dyn SyncSource>,
    mut crl: CrlWatch,
    mut gateways: GatewayWatch,
) {
    let service = servers.main().service().clone();
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    loop {
        every.tick().await;
        crl.poll(&servers);
        let events = gateways.poll();
        if !events.is_empty() {
            drop(service.storage().queue_events(events));
        }
        let now = std::time::Instant::now();
        let mut rounds: Vec<(Arc<AdminService>, Vec<String>)> =
            vec![(service.clone(), sync.tick(now))];
        for t in servers.all().iter().filter(|t| t.is_virtual()) {
            if let Some(f) = t.fleet() {
                rounds.push((t.service().clone(), f.tick(now)));
            }
        }
        for (svc, changed) in rounds.into_iter().filter(|(_, c)| !c.is_empty()) {
            nonce = nonce.wrapping_add(1);
            let n = svc.push_all(&changed, "distribution point roles changed", nonce);
            tracing::info!(
                virtual_server = %svc.storage().server_id(),
                "distribution point roles changed for {} device(s): pushed sync-now to the {n} online",
                changed.len()
            );
        }
    }
}

/// The connector's configuration: the configured DMZ gateways, and those registered in any
/// server's registry (dialled too).
fn dialled_gateways(
    config: &AdminServerConfig,
    servers: &crate::VirtualServers,
) -> ConnectorConfig {
    let mut connector_config = config.connector.clone();
    for t in servers.all() {
        t.service().with_registry(|reg| {
            for (id, g) in reg.gateways() {
                if let crate::GatewayRegistration::Dmz { addr, dns_names } = g
                    && let Some(name) = dns_names.first()
                    && !connector_config.gateways.iter().any(|e| &e.id == id)
                {
                    connector_config.gateways.push(DmzGatewayEntry::new(
                        id.clone(),
                        *addr,
                        name.clone(),
                    ));
                }
            }
        });
    }
    connector_config
}

/// The administration API on its own TLS configuration.
async fn start_api(
    api: &crate::ApiConfig,
    api_tls: Arc<tokio_rustls::rustls::ServerConfig>,
    config: &AdminServerConfig,
    base: &Path,
    servers: &Arc<crate::VirtualServers>,
    connector: &ServerConnector,
) -> Result<crate::api::ApiHandle, ServerError> {
    crate::api::start(
        api,
        api_tls,
        crate::api::ApiParts {
            servers: servers.clone(),
            gateways: connector.gateways_up(),
            gateway_control: connector.control(),
            configured_gateways: config.connector.gateways.clone(),
            import_dir: api.import_dir.as_ref().map(|d| base.join(d)),
        },
    )
    .await
}

impl AdminServer {
    /// Loads the CA, opens the database (importing what older servers kept in files), binds
    /// the device port, starts dialling the DMZ gateways and serves every device. `sync`
    /// answers syncs (if `None`, the configuration's
    /// [`fleet_sync`](AdminServerConfig::fleet_sync), then at [`fleet`](Self::fleet));
    /// `objects` serves file chunks (if `None`, the published update objects kept in the
    /// data directory's `objects/`, see [`publish_update`](Self::publish_update)). `base` is
    /// the configuration file's directory.
    ///
    /// The server holds the data directory's [`DataDirLock`] until it is shut down (or its
    /// process ends): a second server on the same directory, and every offline
    /// [`edit_registry`](AdminServerConfig::edit_registry), is refused with
    /// [`ServerError::DataDirBusy`].
    pub async fn start(
        config: AdminServerConfig,
        base: &Path,
        sync: Option<Arc<dyn SyncSource>>,
        objects: Option<Arc<dyn ObjectStore>>,
    ) -> Result<Self, ServerError> {
        config.validate()?;
        let ca = Arc::new(store::load_server_ca(
            &config.data_path(base),
            PkiConfig::default(),
        )?);
        let lock = DataDirLock::acquire(&config.data_path(base), "server")?;
        remove_stale_temporaries(&config.data_path(base))?;
        let (storage, mut snapshot) = config.open_storage(base)?;
        let virtual_records = std::mem::take(&mut snapshot.virtual_servers);
        tracing::info!(
            "{} database {}: {} device(s), {} group(s)",
            storage.backend(),
            config.database(base).redacted_url(),
            snapshot.registry.devices().len(),
            snapshot.registry.groups().len()
        );
        let tls = config.tls.load(base)?;
        let api_tls = match &config.api {
            Some(_) => Some(outpost_pki::tls::api_server_config(
                &tls.identity,
                &outpost_pki::tls::TlsOptions::default(),
            )?),
            None => None,
        };
        let accounts = crate::AccountBook::new(
            std::mem::take(&mut snapshot.accounts),
            std::mem::take(&mut snapshot.api_tokens),
        );
        let (sync, fleet): (Arc<dyn SyncSource>, _) = match sync {
            Some(s) => (s, None),
            None => {
                let f = Arc::new(config.fleet_sync(&snapshot, &storage)?);
                (f.clone(), Some(f))
            }
        };
        let (objects, updates): (Arc<dyn ObjectStore>, _) = match objects {
            Some(o) => (o, None),
            None => {
                let u = Arc::new(crate::StoredObjects::open(
                    config.data_path(base).join("objects"),
                    storage.clone(),
                    &snapshot.updates,
                )?);
                (u.clone(), Some(u))
            }
        };
        let sync_for_tick = sync.clone();
        let service = AdminService::new(
            ServiceConfig::new(),
            ca.clone(),
            storage,
            snapshot.registry,
            sync,
            objects,
        );
        let sessions = crate::SessionConfig::default().with_ttl(Duration::from_secs(
            config.api.as_ref().map_or(3600, |a| a.session_secs),
        ));
        let servers = crate::VirtualServers::start(
            crate::Tenant::main(
                service.clone(),
                fleet.clone(),
                updates.clone(),
                accounts,
                sessions,
            ),
            &config,
            base,
            ca,
            ServiceConfig::new(),
            sessions,
            &virtual_records,
        )?;
        if !virtual_records.is_empty() {
            tracing::info!("{} virtual server(s) loaded", virtual_records.len());
        }
        let (tx, dispatch) = servers.dispatcher(1024);
        let tunnels = outpost_gateway::TunnelPolicy::Registered(Arc::new(RegisteredTunnels(
            Arc::downgrade(&servers),
        )));
        let listener = DeviceListener::start(
            config.listen,
            &tls,
            &config.listener_limits(),
            tunnels,
            tx.clone(),
        )
        .await?;
        let connector = ServerConnector::start(dialled_gateways(&config, &servers), &tls, tx)?;
        let crl = CrlWatch::new(config.data_path(base));
        let gateways = GatewayWatch {
            up: connector.gateways_up(),
            seen: Default::default(),
        };
        let api = match (&config.api, api_tls) {
            (Some(api), Some(api_tls)) => {
                Some(start_api(api, api_tls, &config, base, &servers, &connector).await?)
            }
            _ => None,
        };
        let ticker = tokio::spawn(tick(servers.clone(), sync_for_tick, crl, gateways));
        Ok(AdminServer {
            servers,
            push: SyncNowSigner::new(tls.identity),
            service,
            fleet,
            updates,
            listener,
            connector,
            dispatch,
            ticker,
            api,
            _lock: lock,
        })
    }

    /// The device service (registry, push, counters).
    pub fn service(&self) -> &Arc<AdminService> {
        &self.service
    }

    /// The main server and its virtual servers.
    pub fn virtual_servers(&self) -> &Arc<crate::VirtualServers> {
        &self.servers
    }

    /// The sync source built from the configuration (policies, distribution points,
    /// updates), unless [`start`](Self::start) was given another.
    pub fn fleet(&self) -> Option<&Arc<FleetSync>> {
        self.fleet.as_ref()
    }

    /// Publishes `data` as update `object_id`: stored (content in the data directory,
    /// metadata committed) and announced to every device that syncs, so a restart keeps it.
    /// Needs the server's own object store and sync source (`None` for both at
    /// [`start`](Self::start)).
    pub async fn publish_update(
        &self,
        object_id: &str,
        name: &str,
        version: u64,
        data: &[u8],
    ) -> Result<outpost_wire::messages::UpdateAnnouncement, ServerError> {
        let (Some(updates), Some(fleet)) = (&self.updates, &self.fleet) else {
            return Err(ServerError::Config(
                "publishing updates needs the server's own object store and sync source".into(),
            ));
        };
        let a = updates.publish(object_id, name, version, data).await?;
        fleet.publish_update(a.clone());
        Ok(a)
    }

    /// Sends a signed "sync now" datagram to each of `targets` (agents' discovery ports, or a
    /// broadcast address of a domain, port 15000), for `device` or, with `None`, every device
    /// that hears it. Returns how many datagrams were sent.
    pub fn push_udp(
        &self,
        targets: &[SocketAddr],
        device: Option<&str>,
        nonce: u64,
    ) -> Result<usize, ServerError> {
        let datagram = self
            .push
            .datagram(device, nonce, std::time::SystemTime::now())?;
        let bind: SocketAddr = match targets.first() {
            Some(SocketAddr::V6(_)) => SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
            _ => SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0)),
        };
        let io = ServerError::os("open the UDP sync-now socket");
        let socket = std::net::UdpSocket::bind(bind).map_err(io)?;
        socket.set_broadcast(true).map_err(io)?;
        let mut sent = 0;
        for t in targets {
            socket.send_to(&datagram, t).map_err(io)?;
            sent += 1;
        }
        Ok(sent)
    }

    /// The bound device port.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// The bound administration API address, if the configuration has an `[api]` section.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api.as_ref().map(|a| a.addr)
    }

    /// The DMZ gateways whose signal connection is up, with their session ids.
    pub fn gateways_connected(&self) -> std::collections::BTreeMap<String, u64> {
        self.connector.connected()
    }

    /// Stops accepting devices and dialling gateways. Connections already served finish on
    /// their own.
    pub async fn shutdown(self) {
        self.connector.shutdown().await;
        self.listener.shutdown().await;
        self.dispatch.abort();
        self.ticker.abort();
        if let Some(api) = self.api {
            api.task.abort();
        }
    }
}

/// Tunnels are taken from the remote-office gateways registered with their certificate (on
/// the main server or any virtual server), as the registries hold them when the tunnel
/// opens.
struct RegisteredTunnels(std::sync::Weak<crate::VirtualServers>);

impl outpost_gateway::TunnelAuthority for RegisteredTunnels {
    fn gateway_for(&self, certificate: &outpost_pki::PeerIdentity) -> Option<String> {
        let servers = self.0.upgrade()?;
        servers.all().iter().find_map(|t| {
            t.service().with_registry(|r| {
                r.remote_office_gateway_for(&certificate.sha256)
                    .map(str::to_owned)
            })
        })
    }
}
