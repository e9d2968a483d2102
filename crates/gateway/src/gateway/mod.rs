//! The gateway runtime: a thin tokio adapter around the ticket table and the splice.
//! Here: start-up, the accept loops and the shared state; serving devices is in `devices`,
//! the data links to the server in `links`, the server's own connections in `server_side`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use outpost_pki::Crl;
use outpost_pki::store::FileStamps;
use outpost_pki::tls::{self as pki_tls, ALPN_DATA, ALPN_SIGNAL, TlsOptions};
use outpost_wire::backoff::Backoff;
use outpost_wire::messages::*;
use outpost_wire::{Message, MessageCodec};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_rustls::{LazyConfigAcceptor, TlsAcceptor, TlsConnector};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::admission::{Admission, AdmissionPool};
use crate::chunked::ChunkedLink;
use crate::config::{GatewayConfig, GatewayMode, TlsMaterial, read_crls};
use crate::io::{read_message, sleep_until, write_message};
use crate::parking::{Lent, Parking, PoolCounters};
use crate::peer::{BoxStream, DevicePeer, cert_fingerprint, offered_alpn, random_u128};
use crate::signal::{Event as SignalEvent, SignalSession};
use crate::splice::{RelayCounters, splice};
use crate::tickets::{Binding, IssueError, TicketStats, TicketTable};
use crate::{ALPN_TUNNEL, GatewayError};

mod devices;
mod links;
mod server_side;

type ServerLink = tokio_rustls::server::TlsStream<TcpStream>;

/// The most bytes the server may still send for a device that has gone before its pooled
/// connection is given back rather than closed.
const MAX_DRAIN: usize = 256 * 1024;

/// The connection a device is relayed over.
enum Link {
    /// Opened for this device; closed with it.
    Raw(BoxStream),
    /// Lent from a warm pool, the stream in chunks: given back when it ends cleanly.
    Pooled {
        link: ChunkedLink<BoxStream>,
        pool: Arc<Parking>,
        lent: Lent,
    },
    /// Lent from a warm pool, the server not agreeing to chunks: closed with the device.
    PooledRaw {
        link: BoxStream,
        pool: Arc<Parking>,
        lent: Lent,
    },
}

impl Link {
    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Link::Raw(l) | Link::PooledRaw { link: l, .. } => l.write_all(bytes).await,
            Link::Pooled { link, .. } => link.write_all(bytes).await,
        }
    }

    /// The link is given up before its relay: a lent one is not coming back.
    fn gone(&self) {
        if let Link::Pooled { pool, lent, .. } | Link::PooledRaw { pool, lent, .. } = self {
            pool.not_returned(*lent);
        }
    }
}

/// Why a relayed stream could not be opened on a connection.
enum Opening {
    /// The server said no: the device's answer.
    Refused(RefusalCode, String),
    /// The connection is dead or spoke out of turn.
    Broken(String),
}

impl Opening {
    fn into_refusal(self) -> (RefusalCode, String) {
        match self {
            Opening::Refused(code, reason) => (code, reason),
            Opening::Broken(why) => (RefusalCode::ServerUnreachable, why),
        }
    }
}

enum Outcome {
    Link(Box<ServerLink>),
    Refused(RefusalCode, String),
}

/// Who waits for a ticket's data connection.
enum Waiter {
    /// A device.
    Device {
        tx: oneshot::Sender<Outcome>,
        peer: PeerIdentity,
    },
    /// The session's warm pool.
    Pool,
}

struct SignalEntry {
    tx: mpsc::Sender<Message>,
    server: [u8; 32],
    pool: Arc<Parking>,
}

#[derive(Default)]
struct Counters {
    devices_accepted: AtomicU64,
    devices_active: AtomicUsize,
    refused_limit: AtomicU64,
    refused_handshakes_per_source: AtomicU64,
    refused_consoles: AtomicU64,
    consoles_silent: AtomicU64,
    crl_reloads: AtomicU64,
    refused_unreachable: AtomicU64,
    refused_overloaded: AtomicU64,
    handshake_failures: AtomicU64,
    signal_sessions_total: AtomicU64,
    data_connections: AtomicU64,
    relays_finished: AtomicU64,
    relay_errors: AtomicU64,
}

/// A snapshot of a gateway's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GatewayStats {
    /// Device connections that completed their TLS handshake.
    pub devices_accepted: u64,
    /// Devices being relayed or waiting for a data connection now.
    pub devices_active: usize,
    /// Authenticated devices closed because `max_devices` were already connected.
    pub refused_limit: u64,
    /// Connections still in their handshake closed to make room for a newer one when all
    /// `max_handshakes` places were taken.
    pub evicted_handshakes: u64,
    /// Connections closed at accept because their source already held
    /// `max_handshakes_per_source` handshakes.
    pub refused_handshakes_per_source: u64,
    /// Web Console connections closed because `max_console_tunnels` were already open, or
    /// `max_console_tunnels_per_source` from their source.
    pub refused_consoles: u64,
    /// Web Console connections closed because their client sent nothing within
    /// `unauthenticated_timeout_ms` (no tunnel was opened for them).
    pub consoles_silent: u64,
    /// Revocation lists taken in since start (at start, and each time a file changed).
    pub crl_reloads: u64,
    /// Devices refused because no signal connection was up (or it broke, or no data
    /// connection came in time).
    pub refused_unreachable: u64,
    /// Devices refused because `max_pending` were already waiting.
    pub refused_overloaded: u64,
    /// TLS handshakes that failed or timed out (unauthenticated devices among them).
    pub handshake_failures: u64,
    /// Signal connections up now.
    pub signal_sessions: usize,
    /// Signal connections accepted since start.
    pub signal_sessions_total: u64,
    /// Data connections accepted (tickets redeemed, warm-pool ones included) or, in
    /// remote-office mode, tunnels dialled (pooled ones included).
    pub data_connections: u64,
    /// Ticket counters (refused presentations: unknown, replayed, late, wrong session).
    pub tickets: TicketStats,
    /// Bytes relayed from devices to the server.
    pub bytes_up: u64,
    /// Bytes relayed from the server to devices.
    pub bytes_down: u64,
    /// Relays finished cleanly.
    pub relays_finished: u64,
    /// Relays ended by an error or the idle timeout.
    pub relay_errors: u64,
    /// Warm-pool connections idle now (every signal session's, or the remote-office pool).
    pub pool_idle: usize,
    /// The most pooled connections opening and idle together in one pool, ever: never above
    /// the pool's target, however many devices come at once.
    pub pool_high_water: usize,
    /// Pooled connections that arrived and were parked.
    pub pool_parked: u64,
    /// Devices spliced to a pooled connection.
    pub pool_claimed: u64,
    /// Idle pooled connections that left by themselves (closed, broken, past their idle
    /// limit).
    pub pool_lost: u64,
    /// Pooled connections taken for a device but found dead (never handed to it).
    pub pool_discarded: u64,
    /// Pooled connections given back after a device's stream ended cleanly (in chunks) and
    /// waiting for the next device: a short connection that costs no handshake at all.
    pub pool_reused: u64,
}

struct RemoteOffice {
    name: ServerName<'static>,
    addr: SocketAddr,
}

/// Every TLS configuration of a gateway, built together from one set of revocation lists and
/// replaced together when the lists change.
struct TlsConfigs {
    agent: Arc<ServerConfig>,
    signal: Arc<ServerConfig>,
    data: Arc<ServerConfig>,
    mobile: Option<Arc<ServerConfig>>,
    mobile_unauthenticated: Option<Arc<ServerConfig>>,
    /// Remote-office mode: the tunnel to the server.
    tunnel: Option<Arc<ClientConfig>>,
}

impl TlsConfigs {
    fn build(config: &GatewayConfig, tls: &TlsMaterial) -> Result<Self, GatewayError> {
        config.check_material(tls)?;
        let opts = TlsOptions::default().with_crls(tls.crls.clone());
        let id = &tls.identity;
        let mobile = match (config.mobile_listen, &tls.mobile_ca) {
            (Some(_), Some(ca)) => Some(pki_tls::mobile_port_server_config(id, ca, &opts)?),
            _ => None,
        };
        let mobile_unauthenticated = match config.mobile_unauthenticated_listen {
            None => None,
            Some(_) => Some(pki_tls::mobile_port_server_config_without_client_auth(
                id, &opts,
            )?),
        };
        let tunnel = match config.mode {
            GatewayMode::Dmz => None,
            GatewayMode::RemoteOffice { .. } => Some(pki_tls::tunnel_client_config(
                id,
                &tls.server_ca,
                &opts.clone().with_alpn(vec![ALPN_TUNNEL.to_vec()]),
            )?),
        };
        Ok(TlsConfigs {
            agent: pki_tls::agent_port_server_config(id, &tls.server_ca, &opts)?,
            signal: pki_tls::gateway_signal_server_config(id, &tls.server_ca, &opts)?,
            data: pki_tls::gateway_data_server_config(id, &tls.server_ca, &opts)?,
            mobile,
            mobile_unauthenticated,
            tunnel,
        })
    }
}

struct Shared {
    config: GatewayConfig,
    /// The certificates and keys, with the revocation lists in force.
    material: Mutex<TlsMaterial>,
    tls: RwLock<Arc<TlsConfigs>>,
    remote: Option<RemoteOffice>,
    tickets: Mutex<TicketTable<Waiter>>,
    sessions: Mutex<BTreeMap<u64, SignalEntry>>,
    next_session: AtomicU64,
    round_robin: AtomicUsize,
    device_slots: Arc<Semaphore>,
    /// Connections whose peer is not known yet: in their TLS handshake, or on the Web Console
    /// port before their first bytes.
    handshakes: AdmissionPool,
    console_tunnels: AdmissionPool,
    counters: Counters,
    relayed: Arc<RelayCounters>,
    /// Remote-office mode: the pool of tunnels to the server.
    remote_pool: Option<Arc<Parking>>,
    pool_counters: Arc<PoolCounters>,
    /// The largest high water of the pools that have ended.
    pool_high_water: AtomicUsize,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
}

/// The warning a Web Console tunnel bound to `addr` deserves, if any: the tunnel does not
/// authenticate its clients (the console behind it does), so on an address other hosts reach
/// it offers the server-side console to all of them.
pub fn web_console_exposure(addr: SocketAddr) -> Option<String> {
    (!addr.ip().is_loopback()).then(|| {
        format!(
            "Web Console tunnel on {addr}, reachable from other hosts: it does not authenticate \
             its clients, so everyone who reaches this address reaches the console target \
             (bind it to a loopback address for a Web Console on this host)"
        )
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave them inconsistent (single inserts and
    // removals), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Clone, Copy)]
enum DevicePort {
    Mobile,
    MobileUnauthenticated,
    WebConsole,
}

impl Gateway {
    /// Validates the configuration, builds every TLS configuration, binds every configured
    /// port and starts serving. Returns once the ports are bound.
    pub async fn start(config: GatewayConfig, tls: TlsMaterial) -> Result<Gateway, GatewayError> {
        let span = tracing::info_span!("gateway", gateway = %config.gateway_id);
        Gateway::start_in_span(config, tls).instrument(span).await
    }

    async fn start_in_span(
        config: GatewayConfig,
        tls: TlsMaterial,
    ) -> Result<Gateway, GatewayError> {
        config.validate()?;
        let configs = TlsConfigs::build(&config, &tls)?;
        let remote = match &config.mode {
            GatewayMode::Dmz => None,
            GatewayMode::RemoteOffice {
                server,
                server_name,
            } => Some(RemoteOffice {
                name: ServerName::try_from(server_name.clone()).map_err(|_| {
                    GatewayError::config(
                        "mode.remote_office.server_name",
                        format!("{server_name:?} is not a DNS name or IP address"),
                    )
                })?,
                addr: *server,
            }),
        };
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| GatewayError::Bind { addr, source })
        };
        let main = bind(config.listen).await?;
        let mut extra = Vec::new();
        if let Some(addr) = config.mobile_listen {
            extra.push((bind(addr).await?, DevicePort::Mobile));
        }
        if let Some(addr) = config.mobile_unauthenticated_listen {
            let l = bind(addr).await?;
            tracing::warn!(
                "mobile port WITHOUT client authentication is open on {} (explicitly enabled)",
                l.local_addr()?
            );
            extra.push((l, DevicePort::MobileUnauthenticated));
        }
        if let Some(addr) = config.web_console_listen {
            let l = bind(addr).await?;
            if let Some(warning) = web_console_exposure(l.local_addr()?) {
                tracing::warn!("{warning}");
            }
            tracing::info!("Web Console tunnel on {}", l.local_addr()?);
            extra.push((l, DevicePort::WebConsole));
        }
        let limits = &config.limits;
        let counters = Counters::default();
        let shutdown = CancellationToken::new();
        let pool_counters = Arc::new(PoolCounters::default());
        let remote_pool = remote.as_ref().map(|_| {
            Arc::new(Parking::new(
                limits.remote_pool_size,
                limits.pool_reuse_grace(),
                shutdown.child_token(),
                pool_counters.clone(),
            ))
        });
        // The lists taken in at start count as the first.
        counters
            .crl_reloads
            .store(u64::from(!tls.crls.is_empty()), Ordering::Relaxed);
        let shared = Arc::new(Shared {
            tickets: Mutex::new(TicketTable::new(
                Duration::from_millis(limits.ticket_ttl_ms),
                limits.max_pending,
            )),
            sessions: Mutex::new(BTreeMap::new()),
            next_session: AtomicU64::new(1),
            round_robin: AtomicUsize::new(0),
            device_slots: Arc::new(Semaphore::new(limits.max_devices)),
            handshakes: AdmissionPool::new(limits.max_handshakes, limits.max_handshakes_per_source),
            console_tunnels: AdmissionPool::new(
                limits.max_console_tunnels,
                limits.max_console_tunnels_per_source,
            ),
            counters,
            relayed: Arc::new(RelayCounters::default()),
            remote_pool,
            pool_counters,
            pool_high_water: AtomicUsize::new(0),
            tracker: TaskTracker::new(),
            shutdown,
            hard_stop: CancellationToken::new(),
            tls: RwLock::new(Arc::new(configs)),
            material: Mutex::new(tls),
            remote,
            config,
        });
        let mut addrs = LocalAddrs {
            main: main.local_addr()?,
            ..LocalAddrs::default()
        };
        let mut accept_tasks = vec![tokio::spawn(
            accept_loop(shared.clone(), main, None).in_current_span(),
        )];
        for (l, port) in extra {
            let a = l.local_addr()?;
            match port {
                DevicePort::Mobile => addrs.mobile = Some(a),
                DevicePort::MobileUnauthenticated => addrs.mobile_unauthenticated = Some(a),
                DevicePort::WebConsole => addrs.web_console = Some(a),
            }
            accept_tasks.push(tokio::spawn(
                accept_loop(shared.clone(), l, Some(port)).in_current_span(),
            ));
        }
        if let Some(pool) = shared.remote_pool.clone()
            && pool.with_book(|b| b.target()) > 0
        {
            accept_tasks.push(tokio::spawn(
                shared.clone().keep_remote_pool(pool).in_current_span(),
            ));
        }
        let crl_files = lock(&shared.material).crl_files.clone();
        if !crl_files.is_empty() {
            accept_tasks.push(tokio::spawn(
                watch_crls(shared.clone(), crl_files).in_current_span(),
            ));
        }
        tracing::info!(
            "{} gateway listening on {}",
            if shared.config.mode.is_dmz() {
                "DMZ"
            } else {
                "remote-office"
            },
            addrs.main
        );
        Ok(Gateway {
            shared,
            addrs,
            accept_tasks,
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct LocalAddrs {
    main: SocketAddr,
    mobile: Option<SocketAddr>,
    mobile_unauthenticated: Option<SocketAddr>,
    web_console: Option<SocketAddr>,
}

impl Default for LocalAddrs {
    fn default() -> Self {
        LocalAddrs {
            main: SocketAddr::from(([0, 0, 0, 0], 0)),
            mobile: None,
            mobile_unauthenticated: None,
            web_console: None,
        }
    }
}

/// A running gateway, started by [`Gateway::start`]. Its tasks outlive this value when it
/// is dropped; [`shutdown`](Gateway::shutdown) drains and stops them.
pub struct Gateway {
    shared: Arc<Shared>,
    addrs: LocalAddrs,
    accept_tasks: Vec<JoinHandle<()>>,
}

impl Gateway {
    /// The agent port's bound address (also where the server dials in DMZ mode).
    pub fn local_addr(&self) -> SocketAddr {
        self.addrs.main
    }
    /// The mobile port's address, if on.
    pub fn mobile_addr(&self) -> Option<SocketAddr> {
        self.addrs.mobile
    }
    /// The unauthenticated mobile port's address, if on.
    pub fn mobile_unauthenticated_addr(&self) -> Option<SocketAddr> {
        self.addrs.mobile_unauthenticated
    }
    /// The Web Console tunnel port's address, if on.
    pub fn web_console_addr(&self) -> Option<SocketAddr> {
        self.addrs.web_console
    }

    /// Current counters.
    pub fn stats(&self) -> GatewayStats {
        let c = &self.shared.counters;
        let p = &self.shared.pool_counters;
        let (pool_idle, pool_high_water) = self.shared.pool_sizes();
        GatewayStats {
            pool_idle,
            pool_high_water,
            pool_parked: p.parked.load(Ordering::Relaxed),
            pool_claimed: p.claimed.load(Ordering::Relaxed),
            pool_lost: p.lost.load(Ordering::Relaxed),
            pool_discarded: p.discarded.load(Ordering::Relaxed),
            pool_reused: p.reused.load(Ordering::Relaxed),
            devices_accepted: c.devices_accepted.load(Ordering::Relaxed),
            devices_active: c.devices_active.load(Ordering::Relaxed),
            refused_limit: c.refused_limit.load(Ordering::Relaxed),
            evicted_handshakes: self.shared.handshakes.evicted(),
            refused_handshakes_per_source: c.refused_handshakes_per_source.load(Ordering::Relaxed),
            refused_consoles: c.refused_consoles.load(Ordering::Relaxed),
            consoles_silent: c.consoles_silent.load(Ordering::Relaxed),
            crl_reloads: c.crl_reloads.load(Ordering::Relaxed),
            refused_unreachable: c.refused_unreachable.load(Ordering::Relaxed),
            refused_overloaded: c.refused_overloaded.load(Ordering::Relaxed),
            handshake_failures: c.handshake_failures.load(Ordering::Relaxed),
            signal_sessions: lock(&self.shared.sessions).len(),
            signal_sessions_total: c.signal_sessions_total.load(Ordering::Relaxed),
            data_connections: c.data_connections.load(Ordering::Relaxed),
            tickets: lock(&self.shared.tickets).stats(),
            bytes_up: self.shared.relayed.a_to_b.load(Ordering::Relaxed),
            bytes_down: self.shared.relayed.b_to_a.load(Ordering::Relaxed),
            relays_finished: c.relays_finished.load(Ordering::Relaxed),
            relay_errors: c.relay_errors.load(Ordering::Relaxed),
        }
    }

    /// Replaces the revocation lists every port honours from now on (connections already
    /// authenticated are not re-checked here: the server checks every device connection and
    /// cuts a revoked device's). A gateway started from [`TlsFiles`](crate::TlsFiles) calls
    /// this itself whenever one of its CRL files changes.
    pub fn set_crls(&self, crls: Vec<Crl>) -> Result<(), GatewayError> {
        self.shared.set_crls(crls)
    }

    /// Graceful shutdown: stops accepting, closes signal connections (waiting devices are
    /// refused), lets relayed connections finish for up to `limits.drain_timeout_ms`, then
    /// closes the rest.
    pub async fn shutdown(self) {
        let s = &self.shared;
        s.shutdown.cancel();
        for t in self.accept_tasks {
            let _ = t.await;
        }
        s.tracker.close();
        let drain = Duration::from_millis(s.config.limits.drain_timeout_ms);
        if tokio::time::timeout(drain, s.tracker.wait()).await.is_err() {
            tracing::warn!("drain timeout, closing remaining connections");
            s.hard_stop.cancel();
            s.tracker.wait().await;
        }
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, port: Option<DevicePort>) {
    loop {
        let accepted = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((tcp, addr)) => {
                // Nobody is known yet: the connection costs a handshake place, not a slot.
                // A full pool makes room from its oldest handshake: a flood must outpace a
                // device's handshake to starve it.
                // Only a source over its share is refused.
                let Ok(handshake) = shared.handshakes.admit_evicting_oldest(addr.ip()) else {
                    shared
                        .counters
                        .refused_handshakes_per_source
                        .fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let s = shared.clone();
                let evicted = handshake.eviction();
                shared.tracker.spawn(async move {
                    let serve = async {
                        match port {
                            None => s.handle_main(tcp, addr, handshake).await,
                            Some(p) => s.handle_device_port(tcp, addr, p, handshake).await,
                        }
                    };
                    // Once authenticated the place is given back and no eviction comes.
                    tokio::select! {
                        () = serve => {}
                        () = evicted.cancelled() => {}
                    }
                }.instrument(tracing::info_span!("connection", peer = %addr, session = tracing::field::Empty)));
            }
            Err(e) => {
                // Out of descriptors or similar: back off briefly instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// How often the CRL files of a gateway started from files are looked at.
pub const CRL_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Reloads the revocation lists whenever one of their files changes. A list that does not
/// load (caught between writes, or removed) keeps the lists in force, and is tried again.
async fn watch_crls(shared: Arc<Shared>, files: Vec<std::path::PathBuf>) {
    let mut seen = FileStamps::of(&files);
    let mut every = tokio::time::interval(CRL_CHECK_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let now = FileStamps::of(&files);
        if now == seen {
            continue;
        }
        if now.lost_since(&seen) {
            // Revocations are not dropped because a file went away.
            tracing::warn!("a revocation list file is gone; keeping the lists in force");
            seen = now;
            continue;
        }
        // A file that was never there is no list yet; one that went away was caught above.
        match read_crls(&files, true).and_then(|crls| {
            let n = crls.len();
            shared.set_crls(crls).map(|()| n)
        }) {
            Ok(n) => {
                seen = now;
                tracing::info!("revocation lists reloaded ({n} file(s))");
            }
            Err(e) => tracing::warn!("a revocation list changed but does not load: {e}"),
        }
    }
}

impl Shared {
    /// When a peer not known yet must have finished its handshake.
    fn handshake_deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.config.limits.unauthenticated_timeout()
    }

    fn tls(&self) -> Arc<TlsConfigs> {
        self.tls.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_crls(&self, crls: Vec<Crl>) -> Result<(), GatewayError> {
        let mut material = lock(&self.material);
        let previous = std::mem::replace(&mut material.crls, crls);
        match TlsConfigs::build(&self.config, &material) {
            Ok(configs) => {
                *self.tls.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(configs);
                self.counters.crl_reloads.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                material.crls = previous;
                Err(e)
            }
        }
    }

    /// A slot for an authenticated device, or `None` (counted) when all are taken.
    fn device_slot(&self) -> Option<OwnedSemaphorePermit> {
        match self.device_slots.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                self.counters.refused_limit.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}
