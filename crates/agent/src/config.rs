//! The agent's configuration: serde structures with defaults, validated once at load with an
//! error naming the field. Relative paths are resolved against the configuration file's
//! directory by [`AgentConfig::load`].

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::AgentError;

/// Largest configuration file read.
pub const MAX_CONFIG_FILE: u64 = 1024 * 1024;
/// Longest application or update name accepted (names are file names in the data directory).
pub const MAX_NAME: usize = 128;

/// One place the agent can connect to: the server itself or a connection gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Endpoint {
    /// Address to dial.
    pub addr: SocketAddr,
    /// The DNS name its certificate must carry.
    pub name: String,
}

impl Endpoint {
    /// An endpoint at `addr` whose certificate names `name`.
    pub fn new(addr: SocketAddr, name: impl Into<String>) -> Self {
        Endpoint {
            addr,
            name: name.into(),
        }
    }
}

/// How to enroll when the data directory holds no identity yet. Enrollment always goes
/// directly to the server's device port (its enrollment channel); gateways do not relay it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct EnrollmentConfig {
    /// The server's device port.
    pub server: Option<Endpoint>,
    /// The server CA certificate (PEM) trusted for the enrollment connection.
    pub server_ca: PathBuf,
    /// The one-time enrollment token the administrator issued.
    pub token: String,
    /// The administration group asked for (the server may ignore it).
    pub group_hint: String,
    /// How long to keep trying when enrollment fails for a reason that may pass (the server
    /// unreachable or overloaded, a connection lost midway), with the agent's backoff
    /// between attempts, in ms (default 10 min; 0: one attempt). A refused token is never
    /// retried.
    pub retry_for_ms: u64,
}

impl Default for EnrollmentConfig {
    fn default() -> Self {
        EnrollmentConfig {
            server: None,
            server_ca: PathBuf::from("ca.crt"),
            token: String::new(),
            group_hint: String::new(),
            retry_for_ms: 600_000,
        }
    }
}

/// Reconnection backoff: exponential from `initial_ms` to `max_ms`, with "equal jitter"
/// (each delay is uniformly drawn from the upper half of the exponential step).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct BackoffConfig {
    /// First delay, milliseconds (default 200).
    pub initial_ms: u64,
    /// Largest delay, milliseconds (default 60 000).
    pub max_ms: u64,
    /// Seed of the jitter generator; from the clock and device id if absent.
    pub seed: Option<u64>,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial_ms: 200,
            max_ms: 60_000,
            seed: None,
        }
    }
}

/// Broadcast-domain discovery over UDP. Off by default; when on, the agent binds `bind` and
/// sends its announcements only to the addresses in `targets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct DiscoveryConfig {
    /// Whether discovery runs.
    pub enabled: bool,
    /// Local address to listen on (default `0.0.0.0:15000`).
    pub bind: SocketAddr,
    /// Where announcements go (default the broadcast address on port 15000).
    pub targets: Vec<SocketAddr>,
    /// Time between announcements, milliseconds (default 30 000).
    pub interval_ms: u64,
    /// A peer is visible if heard within this window, milliseconds (default 120 000).
    pub window_ms: u64,
    /// Most peers remembered (default 4096); the least recently heard is forgotten first.
    pub max_peers: usize,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            enabled: false,
            bind: SocketAddr::from(([0, 0, 0, 0], outpost_wire::ports::DISCOVERY)),
            targets: vec![SocketAddr::from((
                [255, 255, 255, 255],
                outpost_wire::ports::DISCOVERY,
            ))],
            interval_ms: 30_000,
            window_ms: 120_000,
            max_peers: 4096,
        }
    }
}

/// Update distribution: downloading announced updates, and acting as a distribution point
/// (DP) when the server elects this device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct DistributionConfig {
    /// Whether announced updates are downloaded into `data_dir/updates` (default true).
    pub enabled: bool,
    /// Whether this device may act as a DP: serve blocks by unicast on `unicast_bind` and
    /// multicast updates to its scope when it is the active DP (default false; a DP role
    /// given by the server without it is ignored with a warning).
    pub serve: bool,
    /// Where the DP serves blocks by unicast (default `0.0.0.0:15002`; port 0 picks one).
    pub unicast_bind: SocketAddr,
    /// The `host:port` devices are told to fetch blocks from. Default: the bound address,
    /// with an unspecified IP replaced by `multicast_iface`; when both are unspecified
    /// nothing is advertised and the DP's devices fetch what they miss from the server.
    pub unicast_advertise: Option<String>,
    /// The IPv4 interface address multicast is sent and received on (default 0.0.0.0: the
    /// system's choice).
    pub multicast_iface: Ipv4Addr,
    /// Whether a DP's own multicast is looped back to receivers on the same host (default
    /// false; true when DP and devices share a host, as in tests and the demo).
    pub multicast_loopback: bool,
    /// The multicast TTL (default 1: the local network only).
    pub multicast_ttl: u32,
    /// The DP's sending rate ceiling in Mbit/s (default 100).
    pub max_rate_mbps: u64,
    /// Payload bytes per multicast datagram (default 1400, to fit a 1500-byte MTU).
    pub symbol_size: u16,
    /// Symbols per block (default 1024).
    pub block_symbols: u32,
    /// How long an active DP waits after it holds an update before sending it, so the
    /// devices of its scope have joined the group, milliseconds (default 2000).
    pub start_delay_ms: u64,
    /// How long a device waits for a multicast session before fetching the whole update
    /// from its DP by unicast, milliseconds (default 30 000).
    pub session_wait_ms: u64,
    /// Silence after which a multicast session counts as over and missing blocks are fetched
    /// by unicast, milliseconds (default 3000).
    pub session_idle_ms: u64,
    /// Bytes per chunk request (default 1 MiB, the server's largest).
    pub chunk_bytes: u32,
}

impl Default for DistributionConfig {
    fn default() -> Self {
        DistributionConfig {
            enabled: true,
            serve: false,
            unicast_bind: SocketAddr::from(([0, 0, 0, 0], 15002)),
            unicast_advertise: None,
            multicast_iface: Ipv4Addr::UNSPECIFIED,
            multicast_loopback: false,
            multicast_ttl: 1,
            max_rate_mbps: 100,
            symbol_size: 1400,
            block_symbols: 1024,
            start_delay_ms: 2000,
            session_wait_ms: 30_000,
            session_idle_ms: 3000,
            chunk_bytes: 1 << 20,
        }
    }
}

/// The Network Agent's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct AgentConfig {
    /// The device id (asked for at enrollment; the certificate then carries it).
    pub device_id: String,
    /// Where the identity and the received settings are kept.
    pub data_dir: PathBuf,
    /// Where to connect, tried in order: the server and/or connection gateways.
    pub endpoints: Vec<Endpoint>,
    /// Enrollment, used only when the data directory holds no identity.
    pub enrollment: EnrollmentConfig,
    /// Reconnection backoff.
    pub backoff: BackoffConfig,
    /// Sync interval before the server has named one, seconds (default 900).
    pub default_sync_secs: u64,
    /// Reported in every sync: whether the device is on the corporate network.
    pub on_corporate_network: bool,
    /// Time allowed for the TCP connection and the TLS handshake, milliseconds (default 10 000).
    pub connect_timeout_ms: u64,
    /// Time allowed for any answer (HelloAck, SyncResponse, EventAck, keepalive), milliseconds
    /// (default 30 000); past it the connection is treated as lost.
    pub request_timeout_ms: u64,
    /// A keepalive is sent after this long without traffic, milliseconds (default 60 000),
    /// so gateways do not close the kept connection as idle.
    pub keepalive_ms: u64,
    /// Most events queued (default 1000); the oldest is dropped (and counted) past it.
    pub event_queue: usize,
    /// Most events per batch (default 100).
    pub event_batch: usize,
    /// Local settings per application, overlaid onto the received document on the paths it
    /// does not lock.
    pub local_settings: BTreeMap<String, serde_json::Value>,
    /// Broadcast-domain discovery.
    pub discovery: DiscoveryConfig,
    /// Update distribution and the DP role.
    pub distribution: DistributionConfig,
    /// Certificate renewal over the authenticated connection.
    pub renewal: RenewalConfig,
}

/// When the agent asks for the certificate that succeeds its own, and when it switches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RenewalConfig {
    /// Ask for the reserve certificate this many seconds before the certificate expires
    /// (default 90 days).
    pub reserve_before_secs: u64,
    /// Switch to it this many seconds before the certificate expires (default one day).
    pub switch_before_secs: u64,
    /// After a failed request, ask again this many seconds later (default 600).
    pub retry_after_secs: u64,
}

impl Default for RenewalConfig {
    fn default() -> Self {
        let s = crate::renewal::Schedule::default();
        RenewalConfig {
            reserve_before_secs: s.reserve_before.as_secs(),
            switch_before_secs: s.switch_before.as_secs(),
            retry_after_secs: s.retry_after.as_secs(),
        }
    }
}

impl RenewalConfig {
    /// The schedule it describes.
    pub fn schedule(&self) -> crate::renewal::Schedule {
        crate::renewal::Schedule::new(
            Duration::from_secs(self.reserve_before_secs),
            Duration::from_secs(self.switch_before_secs),
            Duration::from_secs(self.retry_after_secs),
        )
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            device_id: String::new(),
            data_dir: PathBuf::from("agent-data"),
            endpoints: Vec::new(),
            enrollment: EnrollmentConfig::default(),
            backoff: BackoffConfig::default(),
            default_sync_secs: 900,
            on_corporate_network: true,
            connect_timeout_ms: 10_000,
            request_timeout_ms: 30_000,
            keepalive_ms: 60_000,
            event_queue: 1000,
            event_batch: 100,
            local_settings: BTreeMap::new(),
            discovery: DiscoveryConfig::default(),
            distribution: DistributionConfig::default(),
            renewal: RenewalConfig::default(),
        }
    }
}

/// Whether `name` may name an application or an update (it becomes a file name): 1 to
/// [`MAX_NAME`] bytes of ASCII letters, digits, `.`, `-`, `_`. Device ids have their own
/// rule, [`outpost_wire::DeviceId`].
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

impl AgentConfig {
    /// Defaults for `device_id`, keeping its data in `data_dir`.
    pub fn new(device_id: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        AgentConfig {
            device_id: device_id.into(),
            data_dir: data_dir.into(),
            ..Default::default()
        }
    }

    /// Parses TOML text (no path resolution) and validates it.
    ///
    /// # Errors
    /// [`AgentError::ConfigParse`] or [`AgentError::Config`].
    pub fn from_toml(text: &str) -> Result<Self, AgentError> {
        let c: AgentConfig = toml::from_str(text).map_err(|e| AgentError::ConfigParse {
            path: PathBuf::new(),
            reason: e.to_string(),
        })?;
        c.validate()?;
        Ok(c)
    }

    /// Reads a TOML file, resolves `data_dir` and `enrollment.server_ca` against the file's
    /// directory, and validates.
    ///
    /// # Errors
    /// [`AgentError::Io`], [`AgentError::FileTooLarge`], [`AgentError::ConfigParse`] naming
    /// the file, or [`AgentError::Config`].
    pub fn load(path: &Path) -> Result<Self, AgentError> {
        let text = crate::store::read_bounded(path, MAX_CONFIG_FILE)?;
        let text = String::from_utf8(text).map_err(|_| AgentError::ConfigParse {
            path: path.to_path_buf(),
            reason: "not UTF-8".into(),
        })?;
        let mut c: AgentConfig = toml::from_str(&text).map_err(|e| AgentError::ConfigParse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        c.data_dir = base.join(&c.data_dir);
        c.enrollment.server_ca = base.join(&c.enrollment.server_ca);
        c.validate()?;
        Ok(c)
    }

    /// Checks every field.
    ///
    /// # Errors
    /// [`AgentError::Config`] naming the first bad field and its value.
    pub fn validate(&self) -> Result<(), AgentError> {
        if let Err(e) = outpost_wire::DeviceId::check(&self.device_id) {
            return Err(AgentError::config("device_id", e.to_string()));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(AgentError::config("data_dir", "must not be empty"));
        }
        self.validate_connection()?;
        self.validate_renewal()?;
        for app in self.local_settings.keys() {
            if !valid_name(app) {
                return Err(AgentError::config(
                    format!("local_settings.{app}"),
                    "application names are 1 to 128 letters, digits, '.', '-' or '_'",
                ));
            }
        }
        if self.discovery.enabled {
            self.discovery.validate()?;
        }
        self.distribution.validate()
    }

    /// Endpoints, backoff, sync interval, timeouts and the event queue.
    fn validate_connection(&self) -> Result<(), AgentError> {
        if self.endpoints.is_empty() {
            return Err(AgentError::config(
                "endpoints",
                "needs at least one endpoint (the server or a gateway)",
            ));
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            check_endpoint(&format!("endpoints[{i}]"), e)?;
        }
        if let Some(s) = &self.enrollment.server {
            check_endpoint("enrollment.server", s)?;
        }
        let b = &self.backoff;
        if b.initial_ms == 0 {
            return Err(AgentError::config(
                "backoff.initial_ms",
                "0 must be at least 1",
            ));
        }
        if b.max_ms < b.initial_ms {
            return Err(AgentError::config(
                "backoff.max_ms",
                format!("{} is below backoff.initial_ms {}", b.max_ms, b.initial_ms),
            ));
        }
        if b.max_ms > 24 * 3600 * 1000 {
            return Err(AgentError::config(
                "backoff.max_ms",
                format!("{} is more than a day", b.max_ms),
            ));
        }
        in_range(
            "default_sync_secs",
            self.default_sync_secs,
            crate::protocol::MIN_SYNC.as_secs(),
            crate::protocol::MAX_SYNC.as_secs(),
        )?;
        in_range("connect_timeout_ms", self.connect_timeout_ms, 1, 3_600_000)?;
        in_range("request_timeout_ms", self.request_timeout_ms, 1, 3_600_000)?;
        in_range("keepalive_ms", self.keepalive_ms, 1, 3_600_000)?;
        in_range("event_queue", self.event_queue, 1, 1_000_000)?;
        in_range("event_batch", self.event_batch, 1, 10_000)
    }

    fn validate_renewal(&self) -> Result<(), AgentError> {
        let r = &self.renewal;
        if r.switch_before_secs == 0 || r.switch_before_secs >= r.reserve_before_secs {
            return Err(AgentError::config(
                "renewal.switch_before_secs",
                format!(
                    "{} must be above 0 and below renewal.reserve_before_secs ({})",
                    r.switch_before_secs, r.reserve_before_secs
                ),
            ));
        }
        in_range("renewal.retry_after_secs", r.retry_after_secs, 1, 86_400)
    }

    /// The connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

fn check_endpoint(field: &str, e: &Endpoint) -> Result<(), AgentError> {
    if e.addr.port() == 0 {
        return Err(AgentError::config(
            format!("{field}.addr"),
            format!("{} has port 0", e.addr),
        ));
    }
    if tokio_rustls::rustls::pki_types::ServerName::try_from(e.name.as_str()).is_err() {
        return Err(AgentError::config(
            format!("{field}.name"),
            format!("{:?} is not a DNS name or IP address", e.name),
        ));
    }
    Ok(())
}

/// `Ok` when `value` is within `lo..=hi`, else a configuration error naming `field`.
fn in_range<T: PartialOrd + std::fmt::Display>(
    field: &str,
    value: T,
    lo: T,
    hi: T,
) -> Result<(), AgentError> {
    if value < lo || value > hi {
        return Err(AgentError::config(
            field.to_owned(),
            format!("{value} is outside {lo}..={hi}"),
        ));
    }
    Ok(())
}

impl DiscoveryConfig {
    fn validate(&self) -> Result<(), AgentError> {
        if self.targets.is_empty() {
            return Err(AgentError::config(
                "discovery.targets",
                "needs at least one address when discovery is enabled",
            ));
        }
        if self.interval_ms == 0 {
            return Err(AgentError::config(
                "discovery.interval_ms",
                "0 must be at least 1",
            ));
        }
        if self.window_ms < self.interval_ms {
            return Err(AgentError::config(
                "discovery.window_ms",
                format!(
                    "{} is below discovery.interval_ms {}",
                    self.window_ms, self.interval_ms
                ),
            ));
        }
        in_range("discovery.max_peers", self.max_peers, 1, 1_000_000)
    }
}

impl DistributionConfig {
    fn validate(&self) -> Result<(), AgentError> {
        in_range("distribution.max_rate_mbps", self.max_rate_mbps, 1, 100_000)?;
        in_range("distribution.symbol_size", self.symbol_size, 512, 16_384)?;
        in_range("distribution.block_symbols", self.block_symbols, 1, 8192)?;
        if self.multicast_ttl > 255 {
            return Err(AgentError::config(
                "distribution.multicast_ttl",
                format!("{} is above 255", self.multicast_ttl),
            ));
        }
        in_range("distribution.chunk_bytes", self.chunk_bytes, 4096, 1 << 20)?;
        for (field, v) in [
            ("distribution.start_delay_ms", self.start_delay_ms),
            ("distribution.session_wait_ms", self.session_wait_ms),
            ("distribution.session_idle_ms", self.session_idle_ms),
        ] {
            if v > 3_600_000 {
                return Err(AgentError::config(field, format!("{v} is above 3600000")));
            }
        }
        if self.session_idle_ms == 0 {
            return Err(AgentError::config(
                "distribution.session_idle_ms",
                "0 must be at least 1",
            ));
        }
        if let Some(a) = &self.unicast_advertise
            && (a.is_empty() || a.len() > 255 || !a.contains(':'))
        {
            return Err(AgentError::config(
                "distribution.unicast_advertise",
                format!("{a:?} is not host:port"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> AgentConfig {
        let mut c = AgentConfig::new("laptop-1", "/tmp/x");
        c.endpoints = vec![Endpoint::new("127.0.0.1:13000".parse().unwrap(), "gw.test")];
        c
    }

    #[test]
    fn defaults_are_valid_once_identity_and_endpoint_are_set() {
        base().validate().unwrap();
        assert!(AgentConfig::default().validate().is_err());
    }

    #[test]
    fn errors_name_the_field_and_value() {
        let mut c = base();
        c.backoff.max_ms = 10;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("backoff.max_ms") && e.contains("10"), "{e}");
        let mut c = base();
        c.device_id = "a/b".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("device_id") && e.contains("a/b"), "{e}");
        // The device id rule is the one the server and the certificate authority check.
        let mut c = base();
        c.device_id = "laptop:7".into();
        c.validate().unwrap();
        c.device_id = "x".repeat(65);
        assert!(c.validate().is_err());
        let mut c = base();
        c.endpoints[0].name = "not a name!".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("endpoints[0].name"), "{e}");
        let mut c = base();
        c.default_sync_secs = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("default_sync_secs")
        );
        let mut c = base();
        c.distribution.symbol_size = 100;
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("distribution.symbol_size") && e.contains("100"),
            "{e}"
        );
        let mut c = base();
        c.distribution.unicast_advertise = Some("no-port".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("distribution.unicast_advertise"), "{e}");
    }

    #[test]
    fn load_resolves_paths_against_the_file_and_names_the_file_on_errors() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("agent.toml");
        std::fs::write(
            &p,
            r#"
device_id = "pc-7"
data_dir = "data"
endpoints = [{ addr = "127.0.0.1:13000", name = "gw.outpost.test" }]
[enrollment]
server_ca = "certs/ca.crt"
"#,
        )
        .unwrap();
        let c = AgentConfig::load(&p).unwrap();
        assert_eq!(c.data_dir, d.path().join("data"));
        assert_eq!(c.enrollment.server_ca, d.path().join("certs/ca.crt"));
        std::fs::write(&p, "device_id = 7").unwrap();
        let e = AgentConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("agent.toml") && e.contains("device_id"), "{e}");
        let e = AgentConfig::load(&d.path().join("missing.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.toml"), "{e}");
    }

    #[test]
    fn toml_round_trip_and_unknown_fields() {
        let text = r#"
device_id = "pc-7"
data_dir = "data"
endpoints = [{ addr = "127.0.0.1:13000", name = "gw.outpost.test" }]
[backoff]
initial_ms = 100
[local_settings.agent]
proxy = "none"
"#;
        let c = AgentConfig::from_toml(text).unwrap();
        assert_eq!(c.backoff.initial_ms, 100);
        assert_eq!(c.backoff.max_ms, 60_000);
        assert_eq!(c.local_settings["agent"]["proxy"], "none");
        let e = AgentConfig::from_toml("device_id = \"x\"\nbogus = 1").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }
}
