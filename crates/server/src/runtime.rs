//! The Administration Server assembled: its device port, the DMZ gateways it dials, the
//! device service, the registry and the CA, from one configuration.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use outpost_gateway::{
    ConnectorConfig, ConnectorHandle, DeviceListener, DmzGatewayEntry, ListenerHandle,
    ListenerLimits, ServerConnector, TlsFiles,
};
use outpost_pki::{PkiConfig, store};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use outpost_election::ElectionConfig;
use outpost_policy::{Resolver, State};

use crate::{
    AdminService, DataDirLock, DpCoordinator, FleetSync, ObjectStore, PolicySync, Registry,
    ServerError, ServiceConfig, SyncNowSigner, SyncSource,
};

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 13000))
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
        log::info!(
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
///     data_dir = "state"              # CA files (as `pki init` writes them) and registry.json
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
    /// Directory of the CA files and `registry.json` (relative to the configuration file).
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
}

impl AdminServerConfig {
    /// Parses TOML.
    pub fn from_toml(text: &str) -> Result<Self, ServerError> {
        toml::from_str(text).map_err(|e| ServerError::Config(e.to_string()))
    }

    /// The registry file.
    pub fn registry_path(&self, base: &Path) -> PathBuf {
        self.data_path(base).join("registry.json")
    }

    /// The file the distribution point scopes' fencing epochs are kept in.
    pub fn epochs_path(&self, base: &Path) -> PathBuf {
        self.data_path(base).join("dp-epochs.json")
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
        self.connector
            .validate()
            .map_err(|e| ServerError::Config(format!("connector: {e}")))
    }

    /// The sync source these settings describe: policies from `policy_state` (if set),
    /// distribution points from the registry, the election's sync interval rule.
    pub fn fleet_sync(&self, base: &Path, registry: &Registry) -> Result<FleetSync, ServerError> {
        let policy = match &self.policy_state {
            None => None,
            Some(p) => {
                let path = base.join(p);
                let bad = |e: String| {
                    ServerError::Config(format!("policy_state: {}: {e}", path.display()))
                };
                let bytes = crate::store::read_bounded(&path, 64 * 1024 * 1024)?
                    .ok_or_else(|| bad("does not exist".into()))?;
                let mut state = if path.extension().is_some_and(|e| e == "toml") {
                    let text = String::from_utf8(bytes).map_err(|_| bad("not UTF-8".into()))?;
                    State::from_toml(&text)
                } else {
                    State::from_json(&bytes)
                }
                .map_err(|e| bad(e.to_string()))?;
                // The resolver knows every enrolled device, where the registry puts it.
                crate::place_registry_devices(&mut state, registry);
                let resolver = Resolver::new(&state).map_err(|e| bad(e.to_string()))?;
                Some(PolicySync::new(resolver, self.election.sync))
            }
        };
        let mut dps = DpCoordinator::new(self.election.clone(), registry)?;
        dps.set_multicast_port(self.multicast_port);
        dps.keep_epochs(self.epochs_path(base))?;
        Ok(FleetSync::new(policy, Some(dps), self.election.sync))
    }

    /// The data directory.
    pub fn data_path(&self, base: &Path) -> PathBuf {
        base.join(&self.data_dir)
    }

    /// Changes the registry of a server that is not running: takes the data directory's
    /// lock (refused with [`ServerError::DataDirBusy`] while a server or another command
    /// holds it), loads the registry, runs `f`, and saves the result only if `f` succeeded.
    pub fn edit_registry<T>(
        &self,
        base: &Path,
        f: impl FnOnce(&mut Registry) -> Result<T, ServerError>,
    ) -> Result<T, ServerError> {
        let _lock = DataDirLock::acquire(&self.data_path(base), "offline command")?;
        remove_stale_temporaries(&self.data_path(base))?;
        let mut registry = self.load_registry(base)?;
        let out = f(&mut registry)?;
        registry.save(&self.registry_path(base))?;
        Ok(out)
    }

    /// Loads the registry, or makes a new one for this instance.
    pub fn load_registry(&self, base: &Path) -> Result<Registry, ServerError> {
        let path = self.registry_path(base);
        match Registry::load(&path)? {
            Some(r) if r.instance_id == self.instance_id => Ok(r),
            Some(r) => Err(ServerError::Config(format!(
                "{} belongs to server instance {:?}, this configuration is {:?}",
                path.display(),
                r.instance_id,
                self.instance_id
            ))),
            None => Registry::new(&self.instance_id),
        }
    }
}

/// A running Administration Server.
pub struct AdminServer {
    service: Arc<AdminService>,
    push: SyncNowSigner,
    listener: ListenerHandle,
    connector: ConnectorHandle,
    dispatch: JoinHandle<()>,
    ticker: JoinHandle<()>,
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
    /// (which verifies the list's signature) and hands the new list to the service.
    fn poll(&mut self, service: &AdminService) {
        let now = store::FileStamps::of(&self.file);
        if now == self.seen {
            return;
        }
        match store::load_server_ca(&self.dir, PkiConfig::default()) {
            Ok(ca) => {
                self.seen = now;
                let n = service.set_revocations(&ca);
                log::info!("revocation list reloaded: {n} certificate(s) revoked");
            }
            // Perhaps caught between writes; tried again at the next tick.
            Err(e) => log::warn!("revocation list changed but does not load: {e}"),
        }
    }
}

/// Every second: reload the revocation list if it changed, let the sync source run its
/// timers (distribution point failover) and push "sync now" to every device with a kept
/// connection when it says something changed.
async fn tick(service: Arc<AdminService>, sync: Arc<dyn SyncSource>, mut crl: CrlWatch) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    loop {
        every.tick().await;
        crl.poll(&service);
        if sync.tick(std::time::Instant::now()) {
            nonce = nonce.wrapping_add(1);
            let online = service.online();
            let n = service.push_all(&online, "distribution point roles changed", nonce);
            log::info!("distribution point roles changed: pushed sync-now to {n} devices");
        }
    }
}

impl AdminServer {
    /// Loads the CA and registry, binds the device port, starts dialling the DMZ gateways and
    /// serves every device. `sync` answers syncs (if `None`, the configuration's
    /// [`fleet_sync`](AdminServerConfig::fleet_sync)); `objects` serves file chunks. `base` is
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
        objects: Arc<dyn ObjectStore>,
    ) -> Result<Self, ServerError> {
        config.validate()?;
        let ca = Arc::new(store::load_server_ca(
            &config.data_path(base),
            PkiConfig::default(),
        )?);
        let lock = DataDirLock::acquire(&config.data_path(base), "server")?;
        remove_stale_temporaries(&config.data_path(base))?;
        let registry = config.load_registry(base)?;
        let registry_path = config.registry_path(base);
        registry.save(&registry_path)?;
        let tls = config.tls.load(base)?;
        let sync: Arc<dyn SyncSource> = match sync {
            Some(s) => s,
            None => Arc::new(config.fleet_sync(base, &registry)?),
        };
        let sync_for_tick = sync.clone();
        let service = AdminService::new(
            ServiceConfig::new(registry_path),
            ca,
            registry,
            sync,
            objects,
        );
        let (tx, dispatch) = service.dispatcher(1024);
        let listener =
            DeviceListener::start(config.listen, &tls, &config.listener_limits(), tx.clone())
                .await?;
        // Gateways registered in the registry are dialled too.
        let mut connector_config = config.connector.clone();
        for (id, g) in service.registry().gateways() {
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
        let connector = ServerConnector::start(connector_config, &tls, tx)?;
        let crl = CrlWatch::new(config.data_path(base));
        let ticker = tokio::spawn(tick(service.clone(), sync_for_tick, crl));
        Ok(AdminServer {
            push: SyncNowSigner::new(tls.identity),
            service,
            listener,
            connector,
            dispatch,
            ticker,
            _lock: lock,
        })
    }

    /// The device service (registry, push, counters).
    pub fn service(&self) -> &Arc<AdminService> {
        &self.service
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
        let io = |e: std::io::Error| ServerError::Io {
            path: "UDP sync-now socket".into(),
            source: e,
        };
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
    }
}
