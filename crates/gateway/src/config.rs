//! Configuration of a gateway and of the server-side connector, as serde structs with
//! defaults, validated once with errors that name the field.
//!
//! A gateway configuration in TOML (every field but `gateway_id` and `tls` has a default):
//!
//! ```
//! let cfg: outpost_gateway::GatewayConfig = toml::from_str(r#"
//!     gateway_id = "dmz-gw-1"
//!     mode = "dmz"
//!     listen = "127.0.0.1:13000"
//!     web_console_listen = "127.0.0.1:8443"
//!
//!     [tls]
//!     cert = "gw.chain.pem"
//!     key = "gw.key.pem"
//!     server_ca = "ca.pem"
//!
//!     [limits]
//!     max_devices = 10000
//! "#).unwrap();
//! cfg.validate().unwrap();
//! assert!(cfg.mode.is_dmz());
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use outpost_pki::{CaCertificate, Crl, IssuedCert, store};
use serde::{Deserialize, Serialize};

use crate::GatewayError;

/// Limits and timeouts of a gateway. Defaults are sized for one gateway serving 10,000
/// devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Limits {
    /// Devices relayed at once (default 10,000; at most [`Limits::MAX_COUNT`]). A device takes
    /// its slot only once its TLS handshake authenticated it; a device above the limit is
    /// closed then.
    pub max_devices: usize,
    /// Connections still in their TLS handshake at once, on every port together (default
    /// 1,024; at most [`Limits::MAX_COUNT`]). Past it the oldest of them is closed to make
    /// room, so a flood of handshakes costs bounded memory, never takes a device slot, and
    /// starves a device only by opening this many connections within its handshake time.
    pub max_handshakes: usize,
    /// Of `max_handshakes`, how many one source address (an IPv6 source: its /64) may hold
    /// (default 256). Devices behind one NAT address share it, and so do the server's signal
    /// and data connections to a DMZ gateway; a refused device retries with its backoff.
    pub max_handshakes_per_source: usize,
    /// A connection must finish its TLS handshake within this time of being accepted, and a
    /// Web Console client must send its first bytes within it (default 5 s; never longer
    /// than `handshake_timeout_ms`). Until then the connection holds a handshake place.
    pub unauthenticated_timeout_ms: u64,
    /// Web Console tunnels at once (default 64; at most [`Limits::MAX_COUNT`]): they take no
    /// device slot. A tunnel is opened toward the server only once its client has sent
    /// something.
    pub max_console_tunnels: usize,
    /// Of `max_console_tunnels`, how many one source address may hold (default 16; a browser
    /// opens about six connections to one site).
    pub max_console_tunnels_per_source: usize,
    /// Devices waiting for a data connection at once (default 1,000; at most
    /// [`Limits::MAX_COUNT`]).
    pub max_pending: usize,
    /// Time allowed for a TLS handshake plus the first protocol message (default 10 s).
    pub handshake_timeout_ms: u64,
    /// A relayed connection with no traffic either way for this long is closed (default 10 min).
    pub idle_timeout_ms: u64,
    /// Lifetime of a connect ticket (default 10 s).
    pub ticket_ttl_ms: u64,
    /// A signal connection with nothing from the server for this long is dead (default 30 s).
    pub signal_dead_after_ms: u64,
    /// Largest control frame accepted on signal and data connections (default 64 KiB).
    pub max_frame_len: usize,
    /// Relay buffer per direction in bytes (default 16 KiB; 10,000 devices hold 320 MiB of it).
    pub relay_buffer: usize,
    /// Time graceful shutdown waits for relayed connections to finish (default 30 s).
    pub drain_timeout_ms: u64,
    /// DMZ: the most idle warm-pool data connections one signal session keeps, whatever the
    /// server asks (default 64; at most 1,024).
    pub max_pooled: usize,
    /// Remote office: tunnels kept open and idle to the server, so a device is spliced to
    /// one without a handshake (default 4; 0: a tunnel is dialled per device; at most 1,024).
    pub remote_pool_size: usize,
    /// A pooled connection taken for a device must answer its `TunnelOpen` within this time,
    /// or it is discarded as dead and the next one (or a fresh one) is used (default 1 s).
    pub pool_claim_timeout_ms: u64,
    /// An idle pooled connection is closed after this long (remote office: and redialled;
    /// DMZ: the server recycles its own sooner) (default 2 min).
    pub pool_idle_ms: u64,
    /// A pooled connection taken by a device is expected back (its stream ended in chunks)
    /// within this time before a replacement is opened (default 200 ms): short connections
    /// reuse the pool's connections, long-lived ones are replaced off their critical path.
    pub pool_reuse_grace_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_devices: 10_000,
            max_handshakes: 1_024,
            max_handshakes_per_source: 256,
            unauthenticated_timeout_ms: 5_000,
            max_console_tunnels: 64,
            max_console_tunnels_per_source: 16,
            max_pending: 1_000,
            handshake_timeout_ms: 10_000,
            idle_timeout_ms: 600_000,
            ticket_ttl_ms: 10_000,
            signal_dead_after_ms: 30_000,
            max_frame_len: 64 * 1024,
            relay_buffer: 16 * 1024,
            drain_timeout_ms: 30_000,
            max_pooled: 64,
            remote_pool_size: 4,
            pool_claim_timeout_ms: 1_000,
            pool_idle_ms: 120_000,
            pool_reuse_grace_ms: 200,
        }
    }
}

impl Limits {
    /// Upper bound of `max_devices`, `max_handshakes`, `max_console_tunnels` and `max_pending`.
    pub const MAX_COUNT: usize = 1_000_000;

    /// Checks every limit; `prefix` is prepended to field names in errors.
    pub fn validate(&self, prefix: &str) -> Result<(), GatewayError> {
        let positive = [
            ("max_devices", self.max_devices as u64),
            ("max_handshakes", self.max_handshakes as u64),
            (
                "max_handshakes_per_source",
                self.max_handshakes_per_source as u64,
            ),
            ("max_console_tunnels", self.max_console_tunnels as u64),
            (
                "max_console_tunnels_per_source",
                self.max_console_tunnels_per_source as u64,
            ),
            ("max_pending", self.max_pending as u64),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            (
                "unauthenticated_timeout_ms",
                self.unauthenticated_timeout_ms,
            ),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("ticket_ttl_ms", self.ticket_ttl_ms),
            ("signal_dead_after_ms", self.signal_dead_after_ms),
            ("relay_buffer", self.relay_buffer as u64),
            ("pool_claim_timeout_ms", self.pool_claim_timeout_ms),
            ("pool_idle_ms", self.pool_idle_ms),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(GatewayError::config(
                    format!("{prefix}{name}"),
                    "must be above 0",
                ));
            }
        }
        for (name, v) in [
            ("max_devices", self.max_devices),
            ("max_handshakes", self.max_handshakes),
            ("max_handshakes_per_source", self.max_handshakes_per_source),
            ("max_console_tunnels", self.max_console_tunnels),
            (
                "max_console_tunnels_per_source",
                self.max_console_tunnels_per_source,
            ),
            ("max_pending", self.max_pending),
        ] {
            if v > Self::MAX_COUNT {
                return Err(GatewayError::config(
                    format!("{prefix}{name}"),
                    format!("must be at most {}, got {v}", Self::MAX_COUNT),
                ));
            }
        }
        for (name, v) in [
            ("max_pooled", self.max_pooled),
            ("remote_pool_size", self.remote_pool_size),
        ] {
            if v > outpost_wire::messages::MAX_POOL_TICKETS {
                return Err(GatewayError::config(
                    format!("{prefix}{name}"),
                    format!(
                        "must be at most {}, got {v}",
                        outpost_wire::messages::MAX_POOL_TICKETS
                    ),
                ));
            }
        }
        if self.max_frame_len < 1024 || self.max_frame_len > outpost_wire::DEFAULT_MAX_FRAME_LEN {
            return Err(GatewayError::config(
                format!("{prefix}max_frame_len"),
                format!(
                    "must be between 1024 and {}, got {}",
                    outpost_wire::DEFAULT_MAX_FRAME_LEN,
                    self.max_frame_len
                ),
            ));
        }
        if self.relay_buffer > 16 * 1024 * 1024 {
            return Err(GatewayError::config(
                format!("{prefix}relay_buffer"),
                format!("must be at most 16 MiB, got {}", self.relay_buffer),
            ));
        }
        Ok(())
    }

    pub(crate) fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
    pub(crate) fn unauthenticated_timeout(&self) -> Duration {
        Duration::from_millis(
            self.unauthenticated_timeout_ms
                .min(self.handshake_timeout_ms),
        )
    }
    pub(crate) fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    pub(crate) fn pool_claim_timeout(&self) -> Duration {
        Duration::from_millis(self.pool_claim_timeout_ms)
    }
    pub(crate) fn pool_idle(&self) -> Duration {
        Duration::from_millis(self.pool_idle_ms)
    }
    pub(crate) fn pool_reuse_grace(&self) -> Duration {
        Duration::from_millis(self.pool_reuse_grace_ms)
    }
}

/// How the gateway reaches the Administration Server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum GatewayMode {
    /// DMZ: the server dials the gateway and keeps a signal connection; the gateway never
    /// opens a connection toward the server.
    Dmz,
    /// Remote office ("keep connection"): the gateway dials the server for each device.
    RemoteOffice {
        /// The server's address.
        server: SocketAddr,
        /// The name the server certificate must carry.
        server_name: String,
    },
}

impl GatewayMode {
    /// Whether this is DMZ (server-initiated) mode.
    pub fn is_dmz(&self) -> bool {
        matches!(self, GatewayMode::Dmz)
    }
}

/// Where the gateway's certificate, key and trust anchors are.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TlsFiles {
    /// Certificate chain (PEM): the certificate first, then its CA.
    pub cert: PathBuf,
    /// Private key (PKCS#8 PEM, mode 0600).
    pub key: PathBuf,
    /// The server CA certificate (PEM).
    pub server_ca: PathBuf,
    /// The mobile CA certificate (PEM); needed for a mobile port with client authentication.
    #[serde(default)]
    pub mobile_ca: Option<PathBuf>,
    /// Revocation lists to honour (PEM), reloaded whenever a file changes (looked at every
    /// [`CRL_CHECK_INTERVAL`](crate::CRL_CHECK_INTERVAL)); each must exist at start. Left
    /// out: the server CA's `ca.crl` beside `server_ca` (and the mobile CA's
    /// `mobile-ca.crl` beside `mobile_ca`), taken in when and once they exist. `crls = []`
    /// turns revocation lists off.
    #[serde(default)]
    pub crls: Option<Vec<PathBuf>>,
}

/// Loaded TLS material.
#[derive(Debug)]
#[non_exhaustive]
pub struct TlsMaterial {
    /// This side's certificate and key.
    pub identity: IssuedCert,
    /// The server CA.
    pub server_ca: CaCertificate,
    /// The mobile CA, if configured.
    pub mobile_ca: Option<CaCertificate>,
    /// Revocation lists.
    pub crls: Vec<Crl>,
    /// The files `crls` came from, watched for changes by a running gateway (empty for
    /// material built in memory).
    pub crl_files: Vec<PathBuf>,
}

impl TlsMaterial {
    /// Material from values already in memory.
    pub fn new(identity: IssuedCert, server_ca: CaCertificate) -> Self {
        TlsMaterial {
            identity,
            server_ca,
            mobile_ca: None,
            crls: Vec::new(),
            crl_files: Vec::new(),
        }
    }

    /// Adds the mobile CA.
    pub fn with_mobile_ca(mut self, mobile_ca: CaCertificate) -> Self {
        self.mobile_ca = Some(mobile_ca);
        self
    }

    /// Adds revocation lists.
    pub fn with_crls(mut self, crls: Vec<Crl>) -> Self {
        self.crls = crls;
        self
    }
}

impl TlsFiles {
    /// Reads every file; relative paths are taken from `base` (the configuration file's
    /// directory).
    pub fn load(&self, base: &Path) -> Result<TlsMaterial, GatewayError> {
        let at = |p: &Path| base.join(p);
        let chain = store::read_certificates(&at(&self.cert))?;
        let key = store::read_private_key_der(&at(&self.key))?;
        let identity = IssuedCert::from_parts(chain, key)?;
        let server_ca = store::read_ca_certificate(&at(&self.server_ca))?;
        let mobile_ca = match &self.mobile_ca {
            Some(p) => Some(store::read_ca_certificate(&at(p))?),
            None => None,
        };
        let crl_files = self.crl_files(base);
        // Lists named in the configuration must exist; the CAs' own are taken once they do.
        let crls = read_crls(&crl_files, self.crls.is_none())?;
        Ok(TlsMaterial {
            identity,
            server_ca,
            mobile_ca,
            crls,
            crl_files,
        })
    }

    /// The revocation list files in force, relative paths taken from `base`: those
    /// configured, or by default the CAs' own lists beside their certificates.
    pub fn crl_files(&self, base: &Path) -> Vec<PathBuf> {
        let beside = |cert: &Path, name: &str| base.join(cert).with_file_name(name);
        match &self.crls {
            Some(list) => list.iter().map(|p| base.join(p)).collect(),
            None => std::iter::once(beside(&self.server_ca, store::files::CA_CRL))
                .chain(
                    self.mobile_ca
                        .as_deref()
                        .map(|m| beside(m, store::files::MOBILE_CA_CRL)),
                )
                .collect(),
        }
    }
}

/// Reads the revocation lists in `files`; with `missing_ok`, a file that does not exist is
/// left out rather than an error.
pub(crate) fn read_crls(files: &[PathBuf], missing_ok: bool) -> Result<Vec<Crl>, GatewayError> {
    Ok(files
        .iter()
        .filter(|p| !missing_ok || p.exists())
        .map(|p| store::read_crl(p))
        .collect::<Result<_, _>>()?)
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], outpost_wire::ports::DEVICE))
}

/// Configuration of a connection gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct GatewayConfig {
    /// The gateway's identifier, as registered on the server.
    pub gateway_id: String,
    /// DMZ or remote office (default DMZ).
    #[serde(default = "GatewayConfig::default_mode")]
    pub mode: GatewayMode,
    /// The agent port (default `0.0.0.0:13000`). In DMZ mode the server's signal and data
    /// connections arrive here too, told apart by their TLS ALPN protocol.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Mobile port with client authentication (mobile CA); off unless set.
    #[serde(default)]
    pub mobile_listen: Option<SocketAddr>,
    /// Mobile port without client authentication; off unless set, and then logged as such.
    #[serde(default)]
    pub mobile_unauthenticated_listen: Option<SocketAddr>,
    /// Local port tunnelled to the server side's Web Console (DMZ mode only).
    #[serde(default)]
    pub web_console_listen: Option<SocketAddr>,
    /// Certificate files (used by [`GatewayConfig::load_tls`]; a library caller may build
    /// [`TlsMaterial`] itself).
    #[serde(default)]
    pub tls: TlsFiles,
    /// Limits and timeouts.
    #[serde(default)]
    pub limits: Limits,
}

impl GatewayConfig {
    fn default_mode() -> GatewayMode {
        GatewayMode::Dmz
    }

    /// A DMZ gateway listening on `listen`, other settings at their defaults.
    pub fn dmz(gateway_id: impl Into<String>, listen: SocketAddr) -> Self {
        GatewayConfig {
            gateway_id: gateway_id.into(),
            mode: GatewayMode::Dmz,
            listen,
            mobile_listen: None,
            mobile_unauthenticated_listen: None,
            web_console_listen: None,
            tls: TlsFiles::default(),
            limits: Limits::default(),
        }
    }

    /// A remote-office gateway listening on `listen` and dialling `server`.
    pub fn remote_office(
        gateway_id: impl Into<String>,
        listen: SocketAddr,
        server: SocketAddr,
        server_name: impl Into<String>,
    ) -> Self {
        GatewayConfig {
            mode: GatewayMode::RemoteOffice {
                server,
                server_name: server_name.into(),
            },
            ..Self::dmz(gateway_id, listen)
        }
    }

    /// Parses TOML.
    pub fn from_toml(text: &str) -> Result<Self, GatewayError> {
        toml::from_str(text).map_err(|e| GatewayError::ConfigSyntax(e.to_string()))
    }

    /// Checks the configuration as a whole.
    pub fn validate(&self) -> Result<(), GatewayError> {
        if self.gateway_id.trim().is_empty() {
            return Err(GatewayError::config("gateway_id", "must not be empty"));
        }
        if self.web_console_listen.is_some() && !self.mode.is_dmz() {
            return Err(GatewayError::config(
                "web_console_listen",
                "the Web Console tunnel is allowed only in DMZ mode (server-initiated connections)",
            ));
        }
        if let GatewayMode::RemoteOffice { server_name, .. } = &self.mode
            && server_name.trim().is_empty()
        {
            return Err(GatewayError::config(
                "mode.remote_office.server_name",
                "must not be empty",
            ));
        }
        let ports = [
            ("listen", Some(self.listen)),
            ("mobile_listen", self.mobile_listen),
            (
                "mobile_unauthenticated_listen",
                self.mobile_unauthenticated_listen,
            ),
            ("web_console_listen", self.web_console_listen),
        ];
        for (i, (a, x)) in ports.iter().enumerate() {
            for (b, y) in &ports[i + 1..] {
                if let (Some(x), Some(y)) = (x, y)
                    && x == y
                    && x.port() != 0
                {
                    return Err(GatewayError::config(
                        *b,
                        format!("{y} is already used by {a}"),
                    ));
                }
            }
        }
        self.limits.validate("limits.")
    }

    /// Loads the TLS files named in [`tls`](Self::tls), relative to `base`, and checks that a
    /// mobile CA is there if the authenticated mobile port is on.
    pub fn load_tls(&self, base: &Path) -> Result<TlsMaterial, GatewayError> {
        let m = self.tls.load(base)?;
        self.check_material(&m)?;
        Ok(m)
    }

    pub(crate) fn check_material(&self, m: &TlsMaterial) -> Result<(), GatewayError> {
        if self.mobile_listen.is_some() && m.mobile_ca.is_none() {
            return Err(GatewayError::config(
                "tls.mobile_ca",
                "required when mobile_listen is set (mobile devices must present a certificate from the mobile CA)",
            ));
        }
        Ok(())
    }
}

/// A DMZ gateway the server dials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct DmzGatewayEntry {
    /// The gateway's identifier.
    pub id: String,
    /// The address to dial.
    pub addr: SocketAddr,
    /// The DNS name (or IP address) its certificate must carry.
    pub name: String,
}

impl DmzGatewayEntry {
    /// An entry.
    pub fn new(id: impl Into<String>, addr: SocketAddr, name: impl Into<String>) -> Self {
        DmzGatewayEntry {
            id: id.into(),
            addr,
            name: name.into(),
        }
    }

    /// Checks the entry: an id, and a name a certificate can carry.
    pub fn validate(&self) -> Result<(), GatewayError> {
        if self.id.trim().is_empty() {
            return Err(GatewayError::config("gateways.id", "must not be empty"));
        }
        if rustls::pki_types::ServerName::try_from(self.name.as_str()).is_err() {
            return Err(GatewayError::config(
                "gateways.name",
                format!("{:?} is not a DNS name or IP address", self.name),
            ));
        }
        Ok(())
    }
}

/// Configuration of the server-side connector: which DMZ gateways to dial and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ConnectorConfig {
    /// The server instance id sent in `SignalHello`.
    pub server_id: String,
    /// DMZ gateways to keep signal connections with.
    pub gateways: Vec<DmzGatewayEntry>,
    /// Keepalive interval on signal connections (default 5 s).
    pub keepalive_ms: u64,
    /// First reconnect step after a signal connection fails (default 200 ms), doubled on each
    /// failure up to `backoff_max_ms`; each delay is drawn from the upper half of its step, so
    /// gateways lost together are not redialled in step.
    pub backoff_initial_ms: u64,
    /// Longest reconnect delay (default 30 s).
    pub backoff_max_ms: u64,
    /// Time allowed to connect and complete the TLS handshake (default 10 s).
    pub connect_timeout_ms: u64,
    /// Where Web Console tunnels from DMZ gateways are connected to; tunnels are refused when
    /// unset.
    pub web_console_target: Option<SocketAddr>,
    /// Largest control frame accepted (default 64 KiB).
    pub max_frame_len: usize,
    /// Idle timeout of Web Console tunnels (default 10 min).
    pub idle_timeout_ms: u64,
    /// Data connections being opened to one gateway at once (default 256). A connect request
    /// above it is answered with a `ConnectRefusal` (overloaded).
    pub max_data_in_flight: usize,
    /// Warm pool: data connections kept open, authenticated and idle at each gateway, so a
    /// device is spliced to one without a handshake (default 4; 0: one is opened per device;
    /// at most 1,024). The gateway may grant fewer (its `max_pooled`).
    pub pool_size: usize,
    /// A pooled data connection idle this long is closed and replaced (default 60 s), so
    /// middleboxes that forget quiet connections never hold the pool.
    pub pool_idle_ms: u64,
}

impl Default for ConnectorConfig {
    fn default() -> Self {
        ConnectorConfig {
            server_id: "server".into(),
            gateways: Vec::new(),
            keepalive_ms: 5_000,
            backoff_initial_ms: 200,
            backoff_max_ms: 30_000,
            connect_timeout_ms: 10_000,
            web_console_target: None,
            max_frame_len: 64 * 1024,
            idle_timeout_ms: 600_000,
            max_data_in_flight: 256,
            pool_size: 4,
            pool_idle_ms: 60_000,
        }
    }
}

impl ConnectorConfig {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), GatewayError> {
        if self.server_id.trim().is_empty() {
            return Err(GatewayError::config("server_id", "must not be empty"));
        }
        for (field, v) in [
            ("keepalive_ms", self.keepalive_ms),
            ("backoff_initial_ms", self.backoff_initial_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("pool_idle_ms", self.pool_idle_ms),
        ] {
            if v == 0 {
                return Err(GatewayError::config(field, "must be above 0"));
            }
        }
        if self.pool_size > outpost_wire::messages::MAX_POOL_TICKETS {
            return Err(GatewayError::config(
                "pool_size",
                format!(
                    "must be at most {}, got {}",
                    outpost_wire::messages::MAX_POOL_TICKETS,
                    self.pool_size
                ),
            ));
        }
        if self.max_data_in_flight == 0 || self.max_data_in_flight > Limits::MAX_COUNT {
            return Err(GatewayError::config(
                "max_data_in_flight",
                format!(
                    "must be between 1 and {}, got {}",
                    Limits::MAX_COUNT,
                    self.max_data_in_flight
                ),
            ));
        }
        if self.keepalive_ms > u64::from(u32::MAX) {
            return Err(GatewayError::config("keepalive_ms", "must fit in 32 bits"));
        }
        if self.backoff_max_ms < self.backoff_initial_ms {
            return Err(GatewayError::config(
                "backoff_max_ms",
                format!(
                    "must be at least backoff_initial_ms ({})",
                    self.backoff_initial_ms
                ),
            ));
        }
        let mut ids = std::collections::HashSet::new();
        for (i, g) in self.gateways.iter().enumerate() {
            if !ids.insert(&g.id) {
                return Err(GatewayError::config(
                    format!("gateways[{i}].id"),
                    format!("duplicate id {:?}", g.id),
                ));
            }
            if outpost_pki::pki_types::ServerName::try_from(g.name.as_str()).is_err() {
                return Err(GatewayError::config(
                    format!("gateways[{i}].name"),
                    format!("{:?} is not a DNS name or IP address", g.name),
                ));
            }
        }
        if self.max_frame_len < 1024 || self.max_frame_len > outpost_wire::DEFAULT_MAX_FRAME_LEN {
            return Err(GatewayError::config(
                "max_frame_len",
                format!(
                    "must be between 1024 and 16 MiB, got {}",
                    self.max_frame_len
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn web_console_only_in_dmz_mode() {
        let mut c = GatewayConfig::remote_office(
            "g",
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:1".parse().unwrap(),
            "server",
        );
        c.web_console_listen = Some("127.0.0.1:0".parse().unwrap());
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("web_console_listen") && err.contains("only in DMZ"),
            "{err}"
        );
        c.mode = GatewayMode::Dmz;
        c.validate().unwrap();
    }

    #[test]
    fn errors_name_the_field() {
        let mut c = GatewayConfig::dmz("g", "127.0.0.1:13000".parse().unwrap());
        c.limits.max_devices = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("limits.max_devices")
        );
        let mut c = GatewayConfig::dmz("g", "127.0.0.1:13000".parse().unwrap());
        c.mobile_listen = Some("127.0.0.1:13000".parse().unwrap());
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("mobile_listen")
        );
        let err =
            GatewayConfig::from_toml("gateway_id = \"g\"\nlisten = \"nonsense\"").unwrap_err();
        assert!(err.to_string().contains("listen"), "{err}");
        let err = GatewayConfig::from_toml("gateway_id = \"g\"\nunknown_knob = 1").unwrap_err();
        assert!(err.to_string().contains("unknown_knob"), "{err}");
        let mut k = ConnectorConfig::default();
        k.gateways.push(DmzGatewayEntry::new(
            "a",
            "127.0.0.1:1".parse().unwrap(),
            "not a name!",
        ));
        assert!(
            k.validate()
                .unwrap_err()
                .to_string()
                .contains("gateways[0].name")
        );
        let k = ConnectorConfig {
            max_data_in_flight: 0,
            ..ConnectorConfig::default()
        };
        let err = k.validate().unwrap_err().to_string();
        assert!(err.contains("max_data_in_flight"), "{err}");
    }

    #[test]
    fn device_and_pending_counts_are_bounded() {
        let mut c = GatewayConfig::dmz("g", "127.0.0.1:13000".parse().unwrap());
        c.limits.max_devices = Limits::MAX_COUNT;
        c.limits.max_pending = Limits::MAX_COUNT;
        c.validate().unwrap();
        c.limits.max_devices = usize::MAX;
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("limits.max_devices") && err.contains("at most 1000000"),
            "{err}"
        );
        c.limits.max_devices = Limits::MAX_COUNT;
        c.limits.max_pending = Limits::MAX_COUNT + 1;
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("limits.max_pending") && err.contains("at most 1000000"),
            "{err}"
        );
    }

    #[test]
    fn remote_office_mode_from_toml() {
        let c = GatewayConfig::from_toml(
            "gateway_id = \"ro\"\n[mode.remote_office]\nserver = \"127.0.0.1:13000\"\nserver_name = \"localhost\"\n",
        )
        .unwrap();
        assert_eq!(
            c.mode,
            GatewayMode::RemoteOffice {
                server: "127.0.0.1:13000".parse().unwrap(),
                server_name: "localhost".into()
            }
        );
        c.validate().unwrap();
    }
}

fn default_server_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], outpost_wire::ports::DEVICE))
}

/// Configuration of the Administration Server's side of the gateways: its own device port
/// (direct devices and remote-office tunnels) and the DMZ gateways it dials.
///
/// ```
/// let cfg: outpost_gateway::ServerSideConfig = toml::from_str(r#"
///     listen = "127.0.0.1:13100"
///     [tls]
///     cert = "server.chain.pem"
///     key = "server.key.pem"
///     server_ca = "ca.pem"
///     [connector]
///     server_id = "server-1"
///     web_console_target = "127.0.0.1:8080"
///     [[connector.gateways]]
///     id = "dmz-1"
///     addr = "127.0.0.1:13000"
///     name = "gw.example.test"
/// "#).unwrap();
/// cfg.validate().unwrap();
/// assert_eq!(cfg.connector.gateways.len(), 1);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ServerSideConfig {
    /// The server's own device port (default `0.0.0.0:13000`).
    #[serde(default = "default_server_listen")]
    pub listen: SocketAddr,
    /// The server's certificate files.
    pub tls: TlsFiles,
    /// The DMZ gateways to dial.
    #[serde(default)]
    pub connector: ConnectorConfig,
    /// Time allowed for a device's TLS handshake on the server's port, in ms (default 5 s).
    #[serde(default = "ServerSideConfig::default_handshake_ms")]
    pub handshake_timeout_ms: u64,
    /// Connections in their handshake on the server's port at once (default 1,024).
    #[serde(default = "ServerSideConfig::default_max_handshakes")]
    pub max_handshakes: usize,
    /// Of those, how many one source address may hold (default 256).
    #[serde(default = "ServerSideConfig::default_max_handshakes_per_source")]
    pub max_handshakes_per_source: usize,
    /// The remote-office gateways that may open tunnels, each bound to its certificate
    /// (none: every tunnel is refused).
    #[serde(default)]
    pub remote_office: Vec<RemoteOfficeEntry>,
}

/// A remote-office gateway allowed to open tunnels to the server: its id and its certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RemoteOfficeEntry {
    /// The gateway id it gives in its tunnel openings.
    pub id: String,
    /// Its certificate (PEM; the first certificate of a chain), relative to the configuration
    /// file. A tunnel is accepted only from this very certificate.
    pub certificate: PathBuf,
}

/// Remote-office gateways by the SHA-256 of their certificate: a [`TunnelAuthority`] for a
/// fixed set, such as one read from a configuration file.
///
/// [`TunnelAuthority`]: crate::TunnelAuthority
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StaticTunnels(pub std::collections::HashMap<[u8; 32], String>);

impl crate::TunnelAuthority for StaticTunnels {
    fn gateway_for(&self, certificate: &outpost_pki::PeerIdentity) -> Option<String> {
        self.0.get(&certificate.sha256).cloned()
    }
}

impl ServerSideConfig {
    pub(crate) fn default_handshake_ms() -> u64 {
        crate::ListenerLimits::default()
            .handshake_timeout
            .as_millis() as u64
    }
    pub(crate) fn default_max_handshakes() -> usize {
        crate::ListenerLimits::default().max_handshakes
    }
    pub(crate) fn default_max_handshakes_per_source() -> usize {
        crate::ListenerLimits::default().max_handshakes_per_source
    }

    /// Who may open tunnels on the server's port: the `remote_office` gateways, each bound to
    /// the certificate file it names (relative to `base`); refused for all when there are none.
    pub fn tunnel_policy(&self, base: &Path) -> Result<crate::TunnelPolicy, GatewayError> {
        if self.remote_office.is_empty() {
            return Ok(crate::TunnelPolicy::Refuse);
        }
        let mut by_cert = std::collections::HashMap::new();
        for (i, g) in self.remote_office.iter().enumerate() {
            let chain = store::read_certificates(&base.join(&g.certificate))?;
            let first = chain.first().ok_or_else(|| {
                GatewayError::config(
                    format!("remote_office[{i}].certificate"),
                    format!("{} holds no certificate", g.certificate.display()),
                )
            })?;
            let who = outpost_pki::PeerIdentity::from_der(first)?;
            if who.role != Some(outpost_pki::Role::Gateway) {
                return Err(GatewayError::config(
                    format!("remote_office[{i}].certificate"),
                    format!("{} is not a gateway certificate", g.certificate.display()),
                ));
            }
            if let Some(other) = by_cert.insert(who.sha256, g.id.clone()) {
                return Err(GatewayError::config(
                    format!("remote_office[{i}].certificate"),
                    format!("the same certificate is bound to gateway {other:?} already"),
                ));
            }
        }
        Ok(crate::TunnelPolicy::Registered(std::sync::Arc::new(
            StaticTunnels(by_cert),
        )))
    }

    /// The server port's limits.
    pub fn listener_limits(&self) -> crate::ListenerLimits {
        crate::ListenerLimits::default()
            .with_handshake_timeout(Duration::from_millis(self.handshake_timeout_ms))
            .with_handshakes(self.max_handshakes, self.max_handshakes_per_source)
    }

    /// Parses TOML.
    pub fn from_toml(text: &str) -> Result<Self, GatewayError> {
        toml::from_str(text).map_err(|e| GatewayError::ConfigSyntax(e.to_string()))
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), GatewayError> {
        self.listener_limits().validate()?;
        self.connector.validate().map_err(|e| match e {
            GatewayError::Config { field, reason } => GatewayError::Config {
                field: format!("connector.{field}"),
                reason,
            },
            other => other,
        })
    }
}
