//! The gateway runtime: a thin tokio adapter around the ticket table and the splice.

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

/// A running gateway. See [`Gateway::start`].
pub struct Gateway;

impl Gateway {
    /// Validates the configuration, builds every TLS configuration, binds every configured
    /// port and starts serving. Returns once the ports are bound.
    pub async fn start(
        config: GatewayConfig,
        tls: TlsMaterial,
    ) -> Result<GatewayHandle, GatewayError> {
        let span = tracing::info_span!("gateway", gateway = %config.gateway_id);
        Gateway::start_in_span(config, tls).instrument(span).await
    }

    async fn start_in_span(
        config: GatewayConfig,
        tls: TlsMaterial,
    ) -> Result<GatewayHandle, GatewayError> {
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
        Ok(GatewayHandle {
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

/// Control of a running gateway.
pub struct GatewayHandle {
    shared: Arc<Shared>,
    addrs: LocalAddrs,
    accept_tasks: Vec<JoinHandle<()>>,
}

impl GatewayHandle {
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

    async fn handle_main(self: Arc<Self>, tcp: TcpStream, addr: SocketAddr, handshake: Admission) {
        let deadline = self.handshake_deadline();
        let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
        let start = match tokio::time::timeout_at(deadline, acceptor).await {
            Ok(Ok(s)) => s,
            _ => {
                self.counters
                    .handshake_failures
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let alpn = offered_alpn(&start);
        let wants = |p: &[u8]| alpn.iter().any(|a| a == p);
        let dmz = self.config.mode.is_dmz();
        let tls = self.tls();
        if dmz && wants(ALPN_SIGNAL) {
            let cfg = tls.signal.clone();
            let tls = self
                .finish_handshake(start.into_stream(cfg), deadline)
                .await;
            drop(handshake);
            if let Some(tls) = tls {
                self.serve_signal(tls, addr).await;
            }
        } else if dmz && wants(ALPN_DATA) {
            let cfg = tls.data.clone();
            let tls = self
                .finish_handshake(start.into_stream(cfg), deadline)
                .await;
            drop(handshake);
            if let Some(tls) = tls {
                self.serve_data(tls, addr).await;
            }
        } else {
            let accept = start.into_stream(tls.agent.clone());
            let link = self
                .device_handshake(accept, deadline, addr, ChannelKind::Agent)
                .await;
            drop(handshake);
            // Authenticated: only now does the device take a slot.
            let (Some((tls, peer)), Some(permit)) = (link, self.device_slot()) else {
                return;
            };
            self.relay_device(tls, peer, permit, true, BytesMut::new())
                .await;
        }
    }

    /// Completes a device's TLS handshake and names the device by its certificate.
    async fn device_handshake(
        &self,
        accept: tokio_rustls::Accept<TcpStream>,
        deadline: tokio::time::Instant,
        addr: SocketAddr,
        channel: ChannelKind,
    ) -> Option<(BoxStream, DevicePeer)> {
        let tls = self.finish_handshake(accept, deadline).await?;
        let peer = DevicePeer::from_certificates(
            tls.get_ref().1.peer_certificates(),
            addr.to_string(),
            channel,
        );
        Some((Box::new(tls), peer))
    }

    async fn finish_handshake(
        &self,
        accept: tokio_rustls::Accept<TcpStream>,
        deadline: tokio::time::Instant,
    ) -> Option<ServerLink> {
        let why = match tokio::time::timeout_at(deadline, accept).await {
            Ok(Ok(tls)) => return Some(tls),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_string(),
        };
        tracing::debug!("TLS handshake failed: {why}");
        self.counters
            .handshake_failures
            .fetch_add(1, Ordering::Relaxed);
        None
    }

    async fn handle_device_port(
        self: Arc<Self>,
        tcp: TcpStream,
        addr: SocketAddr,
        port: DevicePort,
        handshake: Admission,
    ) {
        let deadline = self.handshake_deadline();
        let tls = self.tls();
        let (channel, cfg) = match port {
            DevicePort::Mobile => (ChannelKind::Mobile, tls.mobile.clone()),
            DevicePort::MobileUnauthenticated => (
                ChannelKind::MobileUnauthenticated,
                tls.mobile_unauthenticated.clone(),
            ),
            DevicePort::WebConsole => {
                return self
                    .handle_web_console(tcp, addr, handshake, deadline)
                    .await;
            }
        };
        let Some(cfg) = cfg else {
            return;
        };
        let accept = TlsAcceptor::from(cfg).accept(tcp);
        let link = self.device_handshake(accept, deadline, addr, channel).await;
        // Authenticated by now (on the port without client authentication nobody is, so
        // such a peer keeps its handshake place, bounded per source, for as long as it is
        // relayed); only now does the device take a slot.
        let unknown = (channel == ChannelKind::MobileUnauthenticated).then_some(handshake);
        let (Some((stream, peer)), Some(permit)) = (link, self.device_slot()) else {
            return;
        };
        self.relay_device(stream, peer, (permit, unknown), true, BytesMut::new())
            .await;
    }

    /// A Web Console client: nothing is opened toward the server until it has sent its first
    /// bytes, which must come before `deadline`; then it takes a tunnel place (bounded in
    /// all and per source) and those bytes go first through the tunnel.
    async fn handle_web_console(
        &self,
        mut tcp: TcpStream,
        addr: SocketAddr,
        handshake: Admission,
        deadline: tokio::time::Instant,
    ) {
        let mut first = BytesMut::with_capacity(self.config.limits.relay_buffer.min(16 * 1024));
        match tokio::time::timeout_at(deadline, tcp.read_buf(&mut first)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => {
                self.counters
                    .consoles_silent
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        drop(handshake);
        let permit = match self.console_tunnels.try_admit(addr.ip()) {
            Ok(p) => p,
            Err(_) => {
                self.counters
                    .refused_consoles
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let peer = DevicePeer::anonymous(addr.to_string(), ChannelKind::WebConsole);
        self.relay_device(Box::new(tcp), peer, permit, false, first)
            .await;
    }

    /// Relays an admitted device to the server; `first` (what a Web Console client sent
    /// before its tunnel was opened) goes to the server first. `place` (a device slot or a
    /// tunnel place) is held until the relay ends.
    async fn relay_device<P>(
        &self,
        mut device: BoxStream,
        peer: DevicePeer,
        place: P,
        speaks_wire: bool,
        first: BytesMut,
    ) {
        self.counters
            .devices_accepted
            .fetch_add(1, Ordering::Relaxed);
        self.counters.devices_active.fetch_add(1, Ordering::Relaxed);
        // A warm connection if one is idle (checked alive first), else one opened for this
        // device.
        let pools = self.pools();
        let link: Result<Link, (RefusalCode, String)> = match self.pooled_link(&pools, &peer).await
        {
            Err(refused) => Err(refused),
            Ok(Some(pooled)) => Ok(pooled),
            Ok(None) => match &self.remote {
                None => self
                    .request_data_link(&peer)
                    .await
                    .map(|l| Link::Raw(Box::new(l))),
                Some(ro) => self
                    .open_tunnel(ro, &peer)
                    .await
                    .map(|l| Link::Raw(Box::new(l))),
            },
        };
        let link = match link {
            Ok(mut link) if !first.is_empty() => {
                let limit = self.config.limits.handshake_timeout();
                match tokio::time::timeout(limit, link.write_all(&first)).await {
                    Ok(Ok(())) => Ok(link),
                    _ => {
                        link.gone();
                        Err((
                            RefusalCode::ServerUnreachable,
                            "the tunnel did not take the client's first bytes".to_string(),
                        ))
                    }
                }
            }
            other => other,
        };
        // A pooled connection whose stream ended in chunks is given back after the relay.
        let mut give_back = None;
        match link {
            Ok(Link::Raw(link)) => self.relay(device, link).await,
            Ok(Link::Pooled {
                mut link,
                pool,
                lent,
            }) => {
                self.relay(device, &mut link).await;
                give_back = Some((link, pool, lent));
            }
            Ok(Link::PooledRaw { link, pool, lent }) => {
                self.relay(device, link).await;
                pool.not_returned(lent);
            }
            Err((code, reason)) => {
                match code {
                    RefusalCode::Overloaded => &self.counters.refused_overloaded,
                    _ => &self.counters.refused_unreachable,
                }
                .fetch_add(1, Ordering::Relaxed);
                tracing::info!("refusing {} ({}): {reason}", peer.remote_addr, peer.subject);
                if speaks_wire {
                    let refusal = Refusal {
                        code: code as i32,
                        reason,
                    };
                    let write = async {
                        write_message(&mut device, refusal).await?;
                        device.shutdown().await?;
                        Ok::<(), GatewayError>(())
                    };
                    let _ =
                        tokio::time::timeout(self.config.limits.handshake_timeout(), write).await;
                }
            }
        }
        drop(place);
        self.counters.devices_active.fetch_sub(1, Ordering::Relaxed);
        let Some((mut link, pool, lent)) = give_back else {
            return;
        };
        // However the device left (many close without a TLS close_notify), the connection
        // is reusable once both its directions have ended; this task then watches it idle.
        if link
            .settle(self.config.limits.pool_claim_timeout(), MAX_DRAIN)
            .await
        {
            let idle = self.config.limits.pool_idle();
            tokio::select! {
                _ = pool.give_back(lent, link.into_inner(), idle) => {}
                () = self.hard_stop.cancelled() => {}
            }
        } else {
            pool.not_returned(lent);
        }
    }

    /// Relays until both sides are done, counting how it ended.
    async fn relay<L>(&self, device: BoxStream, link: L)
    where
        L: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    {
        let limits = &self.config.limits;
        let relay = splice(
            device,
            link,
            limits.relay_buffer,
            limits.idle_timeout(),
            Some(self.relayed.clone()),
        );
        tokio::select! {
            r = relay => match r {
                Ok(_) => { self.counters.relays_finished.fetch_add(1, Ordering::Relaxed); }
                Err(e) => {
                    tracing::debug!("relay ended: {e}");
                    self.counters.relay_errors.fetch_add(1, Ordering::Relaxed);
                }
            },
            () = self.hard_stop.cancelled() => {
                self.counters.relay_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Every warm pool a device may be served from, the next signal session's first.
    fn pools(&self) -> Vec<Arc<Parking>> {
        if let Some(p) = &self.remote_pool {
            return vec![p.clone()];
        }
        let sessions = lock(&self.sessions);
        let mut pools: Vec<Arc<Parking>> = sessions.values().map(|e| e.pool.clone()).collect();
        if !pools.is_empty() {
            let n = pools.len();
            pools.rotate_left(self.round_robin.load(Ordering::Relaxed) % n);
        }
        pools
    }

    /// Idle connections now and the largest high water of any pool, live or ended.
    fn pool_sizes(&self) -> (usize, usize) {
        let mut idle = 0;
        let mut high = self.pool_high_water.load(Ordering::Relaxed);
        for p in self.pools() {
            let (i, h) = p.sizes();
            idle += i;
            high = high.max(h);
        }
        (idle, high)
    }

    /// A pooled connection for `peer`, found alive: `TunnelOpen` answered by `TunnelAccept`
    /// within the claim timeout. Dead ones are discarded and the next is tried; `Ok(None)`
    /// when none is idle. A refusal from the server is the device's answer.
    async fn pooled_link(
        &self,
        pools: &[Arc<Parking>],
        peer: &DevicePeer,
    ) -> Result<Option<Link>, (RefusalCode, String)> {
        let limit = self.config.limits.pool_claim_timeout();
        for pool in pools {
            while let Some((mut link, lent)) = pool.take().await {
                match tokio::time::timeout(limit, self.open_relay(&mut link, peer, true)).await {
                    Ok(Ok(reuse)) => {
                        pool.claimed();
                        let pool = pool.clone();
                        return Ok(Some(if reuse {
                            Link::Pooled {
                                link: ChunkedLink::new(link),
                                pool,
                                lent,
                            }
                        } else {
                            Link::PooledRaw { link, pool, lent }
                        }));
                    }
                    Ok(Err(Opening::Refused(code, reason))) => {
                        pool.claimed();
                        pool.not_returned(lent);
                        return Err((code, reason));
                    }
                    Ok(Err(Opening::Broken(why))) => {
                        pool.discarded(lent);
                        tracing::debug!("a pooled connection was dead ({why}); trying another");
                    }
                    Err(_) => {
                        pool.discarded(lent);
                        tracing::debug!(
                            "a pooled connection did not answer within {} ms; trying another",
                            limit.as_millis()
                        );
                    }
                }
            }
        }
        Ok(None)
    }

    /// Opens a relayed stream for `peer` on `link` (a pooled connection, or a tunnel just
    /// dialled): `TunnelOpen`, answered by `TunnelAccept` or a `Refusal`. With `reuse` the
    /// stream is asked to go in chunks; `Ok(true)` if the server agreed.
    async fn open_relay<S>(
        &self,
        link: &mut S,
        peer: &DevicePeer,
        reuse: bool,
    ) -> Result<bool, Opening>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let open = TunnelOpen {
            peer: Some(peer.to_wire()),
            gateway_id: self.config.gateway_id.clone(),
            reuse,
        };
        write_message(link, open)
            .await
            .map_err(|e| Opening::Broken(e.to_string()))?;
        match read_message(link, self.config.limits.max_frame_len).await {
            Ok(Message::TunnelAccept(a)) => Ok(reuse && a.reuse),
            Ok(Message::Refusal(r)) => Err(Opening::Refused(
                RefusalCode::try_from(r.code).unwrap_or(RefusalCode::Unspecified),
                r.reason,
            )),
            Ok(other) => Err(Opening::Broken(format!(
                "the server answered TunnelOpen with {}",
                other.message_type().name()
            ))),
            Err(e) => Err(Opening::Broken(e.to_string())),
        }
    }

    fn pick_session(&self) -> Option<(u64, mpsc::Sender<Message>, [u8; 32])> {
        let sessions = lock(&self.sessions);
        if sessions.is_empty() {
            return None;
        }
        let i = self.round_robin.fetch_add(1, Ordering::Relaxed) % sessions.len();
        let (id, e) = sessions.iter().nth(i)?;
        Some((*id, e.tx.clone(), e.server))
    }

    async fn request_data_link(
        &self,
        peer: &DevicePeer,
    ) -> Result<ServerLink, (RefusalCode, String)> {
        let Some((session, signal, server)) = self.pick_session() else {
            return Err((
                RefusalCode::ServerUnreachable,
                "no signal connection to the Administration Server is up".into(),
            ));
        };
        let Some(ticket) = random_u128() else {
            return Err((
                RefusalCode::Internal,
                "the random source failed; no ticket issued".into(),
            ));
        };
        let (tx, rx) = oneshot::channel();
        let wire_peer = peer.to_wire();
        let ttl = Duration::from_millis(self.config.limits.ticket_ttl_ms);
        let issued = lock(&self.tickets).issue(
            ticket,
            Binding { session, server },
            Instant::now(),
            Waiter::Device {
                tx,
                peer: wire_peer.clone(),
            },
        );
        match issued {
            Ok(_) => {}
            Err(IssueError::Full { max_pending }) => {
                return Err((
                    RefusalCode::Overloaded,
                    format!("{max_pending} devices already wait for the server"),
                ));
            }
            Err(_) => {
                return Err((RefusalCode::Internal, "ticket collision".into()));
            }
        }
        let request = ConnectRequest {
            ticket: Some(Ticket::from_u128(ticket)),
            peer: Some(wire_peer),
            expires_in_ms: u32::try_from(ttl.as_millis()).unwrap_or(u32::MAX),
        };
        if signal.try_send(request.into()).is_err() {
            lock(&self.tickets).cancel(ticket);
            return Err((
                RefusalCode::ServerUnreachable,
                "the signal connection is closing or congested".into(),
            ));
        }
        match tokio::time::timeout(ttl, rx).await {
            Ok(Ok(Outcome::Link(link))) => Ok(*link),
            Ok(Ok(Outcome::Refused(code, reason))) => Err((code, reason)),
            Ok(Err(_)) => Err((
                RefusalCode::ServerUnreachable,
                "the signal connection closed".into(),
            )),
            Err(_) => {
                lock(&self.tickets).cancel(ticket);
                Err((
                    RefusalCode::ServerUnreachable,
                    format!(
                        "no data connection from the server within {} ms",
                        ttl.as_millis()
                    ),
                ))
            }
        }
    }

    /// Dials the server (remote-office mode): TCP and TLS, within the handshake timeout.
    async fn dial_server(
        &self,
        ro: &RemoteOffice,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, (RefusalCode, String)> {
        let unreachable = |e: String| (RefusalCode::ServerUnreachable, e);
        let dial = async {
            let tcp = TcpStream::connect(ro.addr)
                .await
                .map_err(|e| unreachable(format!("cannot connect to {}: {e}", ro.addr)))?;
            let _ = tcp.set_nodelay(true);
            let config = self.tls().tunnel.clone().ok_or_else(|| {
                (
                    RefusalCode::Internal,
                    "no tunnel configuration in remote-office mode".to_string(),
                )
            })?;
            TlsConnector::from(config)
                .connect(ro.name.clone(), tcp)
                .await
                .map_err(|e| unreachable(format!("TLS with {} failed: {e}", ro.addr)))
        };
        tokio::time::timeout(self.config.limits.handshake_timeout(), dial)
            .await
            .unwrap_or_else(|_| Err(unreachable("the server did not answer in time".into())))
    }

    /// A tunnel dialled for one device (remote-office mode, no pooled one idle).
    async fn open_tunnel(
        &self,
        ro: &RemoteOffice,
        peer: &DevicePeer,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, (RefusalCode, String)> {
        let open = async {
            let mut tls = self.dial_server(ro).await?;
            self.open_relay(&mut tls, peer, false)
                .await
                .map_err(Opening::into_refusal)?;
            Ok(tls)
        };
        let r = tokio::time::timeout(self.config.limits.handshake_timeout(), open)
            .await
            .unwrap_or_else(|_| {
                Err((
                    RefusalCode::ServerUnreachable,
                    "the server did not answer in time".into(),
                ))
            });
        if r.is_ok() {
            self.counters
                .data_connections
                .fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// Keeps the remote-office pool full: dials the server whenever the pool wants more,
    /// parks each tunnel until a device takes it, and after a failed dial waits the jittered
    /// backoff before dialling again.
    async fn keep_remote_pool(self: Arc<Self>, pool: Arc<Parking>) {
        if self.remote.is_none() {
            return;
        }
        let mut backoff = Backoff::new(
            Duration::from_millis(200),
            Duration::from_secs(30),
            outpost_wire::backoff::seed_for(&self.config.gateway_id),
        );
        let (done_tx, mut done_rx) = mpsc::channel::<bool>(64);
        let mut next_id: u128 = 0;
        let mut retry_at: Option<Instant> = None;
        let limit = self.config.limits.handshake_timeout();
        loop {
            let now = Instant::now();
            pool.with_book(|b| b.handle_timeout(now));
            if retry_at.is_some_and(|t| t <= now) {
                retry_at = None;
            }
            let waiting = retry_at.is_some();
            let wanted = if waiting {
                0
            } else {
                pool.with_book(|b| b.wanted())
            };
            for _ in 0..wanted {
                next_id += 1;
                let id = next_id;
                pool.with_book(|b| b.opening(id, now + limit + Duration::from_secs(1)));
                let (this, pool, done) = (self.clone(), pool.clone(), done_tx.clone());
                self.tracker.spawn(
                    async move {
                        let Some(ro) = this.remote.as_ref() else {
                            return;
                        };
                        let dialled = tokio::select! {
                            () = pool.closed.cancelled() => return,
                            r = this.dial_server(ro) => r,
                        };
                        match dialled {
                            Ok(tls) => {
                                this.counters
                                    .data_connections
                                    .fetch_add(1, Ordering::Relaxed);
                                let parked = Instant::now();
                                let taken = pool
                                    .park(id, Box::new(tls), this.config.limits.pool_idle())
                                    .await;
                                // A tunnel the server closes at once (it refuses this gateway,
                                // or is shutting down) is a failed dial: the next waits the
                                // backoff instead of redialling in a loop.
                                let held = taken || parked.elapsed() >= Duration::from_secs(1);
                                let _ = done.send(held).await;
                            }
                            Err((_, why)) => {
                                pool.with_book(|b| b.failed(id));
                                tracing::warn!("warm pool: {why}");
                                let _ = done.send(false).await;
                            }
                        }
                    }
                    .instrument(tracing::Span::current()),
                );
            }
            // The book's next deadline, or the end of the backoff, whichever comes first.
            let deadline = match (retry_at, pool.poll_timeout()) {
                (Some(r), Some(b)) => Some(r.min(b)),
                (r, b) => r.or(b),
            };
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = pool.refill.notified() => {}
                () = sleep_until(deadline) => {}
                ok = done_rx.recv() => match ok {
                    Some(true) => backoff.reset(),
                    Some(false) => {
                        retry_at = Some(Instant::now() + backoff.next_delay());
                    }
                    None => return,
                },
            }
        }
    }

    async fn serve_signal(&self, tls: ServerLink, addr: SocketAddr) {
        let Some(server) = cert_fingerprint(tls.get_ref().1.peer_certificates()) else {
            return;
        };
        let limits = &self.config.limits;
        let mut framed = Framed::new(tls, MessageCodec::with_max_frame_len(limits.max_frame_len));
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        tracing::Span::current().record("session", session);
        let mut sig = SignalSession::gateway(
            &self.config.gateway_id,
            session,
            limits.handshake_timeout(),
            Duration::from_millis(limits.signal_dead_after_ms),
            Instant::now(),
        );
        let (tx, mut rx) = mpsc::channel(limits.max_pending.clamp(16, 4096));
        let write_limit = limits.handshake_timeout();
        let mut registered = false;
        let mut just_up = false;
        // The session's warm pool: sized once the server's hello says what it wants.
        let pool = Arc::new(Parking::new(
            0,
            limits.pool_reuse_grace(),
            self.shutdown.child_token(),
            self.pool_counters.clone(),
        ));
        let _close_pool = pool.closed.clone().drop_guard();
        let binding = Binding { session, server };
        let why = 'session: loop {
            // The pool tickets the session's pool wants, sent with the rest.
            if registered {
                self.grant_pool(&mut sig, &pool, binding);
            }
            // What the session has to say, each write bounded (a server that stops reading
            // must not hold the session past its deadlines); a goodbye gets a second.
            while let Some(m) = sig.poll_transmit() {
                let ty = m.message_type().name();
                let limit = if sig.end().is_some() {
                    Duration::from_secs(1)
                } else {
                    write_limit
                };
                let until = sig
                    .poll_timeout()
                    .map_or(Instant::now() + limit, |t| t.min(Instant::now() + limit));
                tokio::select! {
                    () = self.hard_stop.cancelled() => break 'session "hard stop".to_string(),
                    r = tokio::time::timeout_at(until.into(), framed.send(m)) => match r {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => break 'session format!("writing {ty} failed: {e}"),
                        Err(_) if sig.end().is_some() => break,
                        Err(_) => {
                            sig.handle_timeout(Instant::now());
                            if sig.end().is_none() {
                                break 'session format!(
                                    "the server did not take {ty} within {} ms",
                                    limit.as_millis()
                                );
                            }
                        }
                    },
                }
            }
            while let Some(event) = sig.poll_event() {
                match event {
                    SignalEvent::Up { peer_id, .. } => {
                        let target = (sig.pool_size() as usize).min(limits.max_pooled);
                        pool.with_book(|b| b.set_target(target));
                        lock(&self.sessions).insert(
                            session,
                            SignalEntry {
                                tx: tx.clone(),
                                server,
                                pool: pool.clone(),
                            },
                        );
                        registered = true;
                        just_up = true;
                        self.counters
                            .signal_sessions_total
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::info!(
                            "signal connection {session} from server {peer_id:?} at {addr} is up"
                        );
                    }
                    SignalEvent::ConnectRefusal(r) => {
                        let waiter = r
                            .ticket
                            .and_then(|t| lock(&self.tickets).cancel(t.as_u128()));
                        if let Some(Waiter::Device { tx, .. }) = waiter {
                            let code =
                                RefusalCode::try_from(r.code).unwrap_or(RefusalCode::Unspecified);
                            let _ = tx.send(Outcome::Refused(code, r.reason));
                        }
                    }
                    _ => {}
                }
            }
            if let Some(end) = sig.end() {
                break end.to_string();
            }
            if std::mem::take(&mut just_up) {
                // Round again: the pool's first tickets go out now.
                continue;
            }
            let deadline = match (sig.poll_timeout(), pool.poll_timeout()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                () = self.hard_stop.cancelled() => break "hard stop".to_string(),
                () = self.shutdown.cancelled() => sig.shut_down(),
                () = pool.refill.notified() => {}
                () = sleep_until(deadline) => {
                    let now = Instant::now();
                    sig.handle_timeout(now);
                    let late = pool.with_book(|b| b.handle_timeout(now));
                    let mut tickets = lock(&self.tickets);
                    for t in late {
                        tickets.cancel(t);
                    }
                }
                m = framed.next() => match m {
                    None => sig.handle_closed("closed by the server"),
                    Some(Err(e)) => sig.handle_closed(e.to_string()),
                    Some(Ok(m)) => sig.handle(Instant::now(), m),
                },
                out = rx.recv() => match out {
                    Some(Message::ConnectRequest(r)) => sig.request_connection(r),
                    Some(_) => {}
                    None => break "channel closed".into(),
                },
            }
        };
        if !registered {
            tracing::warn!("signal connection from {addr} ended before it was up: {why}");
        }
        // Order matters: stop new requests reaching this session, then fail those pending.
        drop(rx);
        lock(&self.sessions).remove(&session);
        let orphans = lock(&self.tickets).drop_session(session);
        for (_, w) in orphans {
            if let Waiter::Device { tx, .. } = w {
                let _ = tx.send(Outcome::Refused(
                    RefusalCode::ServerUnreachable,
                    "the signal connection to the server was lost".into(),
                ));
            }
        }
        // Its parked connections close with it (the guard), and its high water is kept.
        self.pool_high_water
            .fetch_max(pool.sizes().1, Ordering::Relaxed);
        if registered {
            tracing::info!("signal connection {session} ended: {why}");
        }
    }

    /// Grants the server the pool tickets its session's pool wants now.
    fn grant_pool(&self, sig: &mut SignalSession, pool: &Parking, binding: Binding) {
        let wanted = pool.with_book(|b| b.wanted());
        if wanted == 0 {
            return;
        }
        let now = Instant::now();
        let mut granted = Vec::with_capacity(wanted);
        let ttl = {
            let mut tickets = lock(&self.tickets);
            for _ in 0..wanted {
                let Some(value) = random_u128() else { break };
                match tickets.issue(value, binding, now, Waiter::Pool) {
                    Ok(expires) => {
                        pool.with_book(|b| b.opening(value, expires));
                        granted.push(Ticket::from_u128(value));
                    }
                    // Devices waiting come first: the pool waits for room.
                    Err(_) => break,
                }
            }
            tickets.ttl()
        };
        if granted.is_empty() {
            return;
        }
        sig.grant_pool(PoolTickets {
            tickets: granted,
            expires_in_ms: u32::try_from(ttl.as_millis()).unwrap_or(u32::MAX),
        });
    }

    async fn serve_data(&self, mut tls: ServerLink, addr: SocketAddr) {
        let Some(server) = cert_fingerprint(tls.get_ref().1.peer_certificates()) else {
            return;
        };
        let limits = &self.config.limits;
        let first = tokio::time::timeout(
            limits.handshake_timeout(),
            read_message(&mut tls, limits.max_frame_len),
        )
        .await;
        let (ticket, session) = match first {
            Ok(Ok(Message::DataAttach(d))) => match d.ticket {
                Some(t) => (t, d.session_id),
                None => return,
            },
            _ => {
                tracing::warn!("{addr} opened a data connection without DataAttach");
                return;
            }
        };
        let redeemed = lock(&self.tickets).redeem(
            ticket.as_u128(),
            Binding { session, server },
            Instant::now(),
        );
        match redeemed {
            Ok(Waiter::Pool) => {
                // A warm-pool connection: parked (its task is this one) until a device takes
                // it; nothing is answered until then.
                let pool = lock(&self.sessions).get(&session).map(|e| e.pool.clone());
                if let Some(pool) = pool {
                    self.counters
                        .data_connections
                        .fetch_add(1, Ordering::Relaxed);
                    tokio::select! {
                        _ = pool.park(ticket.as_u128(), Box::new(tls), limits.pool_idle()) => {}
                        () = self.hard_stop.cancelled() => {}
                    }
                }
            }
            Ok(Waiter::Device { tx, peer }) => {
                let ack = DataAttachAck {
                    ticket: Some(ticket),
                    peer: Some(peer),
                };
                let written = tokio::select! {
                    () = self.hard_stop.cancelled() => false,
                    r = tokio::time::timeout(limits.handshake_timeout(), write_message(&mut tls, ack)) => {
                        matches!(r, Ok(Ok(())))
                    }
                };
                if !written {
                    let _ = tx.send(Outcome::Refused(
                        RefusalCode::ServerUnreachable,
                        "the data connection failed".into(),
                    ));
                    return;
                }
                self.counters
                    .data_connections
                    .fetch_add(1, Ordering::Relaxed);
                // If the device gave up meanwhile, the link is dropped (closed) here.
                let _ = tx.send(Outcome::Link(Box::new(tls)));
            }
            Err(why) => {
                tracing::warn!("refused ticket from {addr}: {why:?}");
                let refusal = Refusal {
                    code: RefusalCode::BadTicket as i32,
                    reason: format!("ticket refused: {why:?}"),
                };
                let _ = tokio::time::timeout(limits.handshake_timeout(), async {
                    write_message(&mut tls, refusal).await?;
                    tls.shutdown().await?;
                    Ok::<(), GatewayError>(())
                })
                .await;
            }
        }
    }
}
