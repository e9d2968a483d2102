//! The Administration Server assembled: its device port, the DMZ gateways it dials, the
//! device service, the registry and the CA, from one configuration.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use outpost_gateway::{
    ConnectorConfig, ConnectorHandle, DeviceConnection, DeviceListener, DmzGatewayEntry,
    ListenerHandle, ServerConnector, TlsFiles,
};
use outpost_pki::{PkiConfig, store};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::{
    AdminService, FixedInterval, ObjectStore, Registry, ServerError, ServiceConfig, SyncSource,
};

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 13000))
}
fn default_interval() -> u32 {
    900
}
fn default_handshake() -> u64 {
    10_000
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
/// assert_eq!(cfg.sync_interval_secs, 900);
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
    /// Sync interval handed to agents when no other sync source is plugged in (default 900 s).
    #[serde(default = "default_interval")]
    pub sync_interval_secs: u32,
    /// Time allowed for a device's TLS handshake, in ms (default 10 s).
    #[serde(default = "default_handshake")]
    pub handshake_timeout_ms: u64,
}

impl AdminServerConfig {
    /// Parses TOML.
    pub fn from_toml(text: &str) -> Result<Self, ServerError> {
        toml::from_str(text).map_err(|e| ServerError::Config(e.to_string()))
    }

    /// The registry file.
    pub fn registry_path(&self, base: &Path) -> PathBuf {
        base.join(&self.data_dir).join("registry.json")
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), ServerError> {
        crate::check_id("instance_id", &self.instance_id)?;
        if self.sync_interval_secs == 0 {
            return Err(ServerError::Config(
                "sync_interval_secs: must be above 0".into(),
            ));
        }
        if self.handshake_timeout_ms == 0 {
            return Err(ServerError::Config(
                "handshake_timeout_ms: must be above 0".into(),
            ));
        }
        self.connector
            .validate()
            .map_err(|e| ServerError::Config(format!("connector: {e}")))
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
    listener: ListenerHandle,
    connector: ConnectorHandle,
    dispatch: JoinHandle<()>,
}

impl AdminServer {
    /// Loads the CA and registry, binds the device port, starts dialling the DMZ gateways and
    /// serves every device. `sync` answers syncs (a fixed interval if `None`); `objects` serves
    /// file chunks. `base` is the configuration file's directory.
    pub async fn start(
        config: AdminServerConfig,
        base: &Path,
        sync: Option<Arc<dyn SyncSource>>,
        objects: Arc<dyn ObjectStore>,
    ) -> Result<Self, ServerError> {
        config.validate()?;
        let ca = Arc::new(store::load_server_ca(
            &base.join(&config.data_dir),
            PkiConfig::default(),
        )?);
        let registry = config.load_registry(base)?;
        let registry_path = config.registry_path(base);
        registry.save(&registry_path)?;
        let tls = config.tls.load(base)?;
        let sync = sync.unwrap_or_else(|| Arc::new(FixedInterval(config.sync_interval_secs)));
        let service = AdminService::new(
            ServiceConfig::new(registry_path),
            ca,
            registry,
            sync,
            objects,
        );
        let (tx, mut rx) = mpsc::channel::<DeviceConnection>(1024);
        let listener = DeviceListener::start(
            config.listen,
            &tls,
            Duration::from_millis(config.handshake_timeout_ms),
            tx.clone(),
        )
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
        let s = service.clone();
        let dispatch = tokio::spawn(async move {
            while let Some(c) = rx.recv().await {
                tokio::spawn(s.clone().serve(c));
            }
        });
        Ok(AdminServer {
            service,
            listener,
            connector,
            dispatch,
        })
    }

    /// The device service (registry, push, counters).
    pub fn service(&self) -> &Arc<AdminService> {
        &self.service
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
    }
}
