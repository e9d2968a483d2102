//! The Administration Server's own TLS port: devices that connect directly, remote-office
//! gateways that open tunnels for their devices, and devices that come to enroll, all handed
//! over as [`DeviceConnection`]s.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use outpost_pki::tls::{self as pki_tls, TlsOptions};
use outpost_wire::Message;
use outpost_wire::messages::*;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::LazyConfigAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::admission::AdmissionPool;
use crate::chunked::{ChunkedLink, Lending};
use crate::config::TlsMaterial;
use crate::io::{read_message, write_message};
use crate::peer::{DeviceConnection, DevicePeer, Via, offered_alpn};
use crate::{ALPN_ENROLL, ALPN_TUNNEL, GatewayError};

/// Which remote-office gateways may open tunnels through a [`DeviceListener`].
#[derive(Clone)]
#[non_exhaustive]
pub enum TunnelPolicy {
    /// None: every tunnel opening is refused.
    Refuse,
    /// Any certificate of the gateway role, under the gateway id the gateway itself gives.
    /// Every gateway certificate the server CA issued is then trusted as every gateway: for
    /// a closed test network only.
    AnyGateway,
    /// Only gateways whose certificate is registered: the authority names the gateway a
    /// certificate is registered to, and a tunnel that claims another id is refused.
    Registered(Arc<dyn TunnelAuthority>),
}

impl std::fmt::Debug for TunnelPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TunnelPolicy::Refuse => "Refuse",
            TunnelPolicy::AnyGateway => "AnyGateway",
            TunnelPolicy::Registered(_) => "Registered",
        })
    }
}

/// Maps a remote-office gateway's certificate to the gateway it is registered to.
pub trait TunnelAuthority: Send + Sync {
    /// The id of the gateway `certificate` is registered to, if any. Asked once per tunnel,
    /// so a registration changed at run time applies to the next tunnel.
    fn gateway_for(&self, certificate: &outpost_pki::PeerIdentity) -> Option<String>;
}

impl TunnelPolicy {
    /// The gateway id a tunnel is served under, or the reason it is refused.
    /// Why a tunnel from `certificate` is refused before it says anything, if it is: no
    /// tunnels at all, or (with a registry) a certificate registered to no gateway.
    fn refuses(&self, certificate: &outpost_pki::PeerIdentity) -> Option<String> {
        match self {
            TunnelPolicy::Refuse => Some("this server accepts no remote-office tunnels".into()),
            TunnelPolicy::AnyGateway => None,
            TunnelPolicy::Registered(a) => a.gateway_for(certificate).is_none().then(|| {
                format!(
                    "certificate {} (serial {}) is not registered to any remote-office gateway",
                    hex(&certificate.sha256),
                    certificate.serial
                )
            }),
        }
    }

    fn admit(
        &self,
        certificate: &outpost_pki::PeerIdentity,
        claimed: &str,
    ) -> Result<String, String> {
        match self {
            TunnelPolicy::Refuse => Err("this server accepts no remote-office tunnels".into()),
            TunnelPolicy::AnyGateway => Ok(claimed.to_owned()),
            TunnelPolicy::Registered(a) => match a.gateway_for(certificate) {
                None => Err(format!(
                    "certificate {} (serial {}) is not registered to any remote-office gateway",
                    hex(&certificate.sha256),
                    certificate.serial
                )),
                Some(id) if id != claimed => Err(format!(
                    "this certificate is registered to gateway {id:?}, not {claimed:?}"
                )),
                Some(id) => Ok(id),
            },
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The server's own TLS port: devices that connect directly (agent port rules: a client
/// certificate from the server CA), remote-office gateways that open tunnels for their
/// devices (TLS ALPN `outpost-tunnel/1`, gateway certificate required), and devices without a
/// certificate yet on the enrollment channel (TLS ALPN `outpost-enroll/1`, no client
/// certificate; handed over with [`ChannelKind::Enrollment`], which the server must restrict
/// to enrollment).
///
/// Started by [`DeviceListener::start`].
pub struct DeviceListener {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
    tracker: TaskTracker,
    handshake_failures: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    handshakes: AdmissionPool,
}

/// Bounds on a [`DeviceListener`]'s connections before their peer is known.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListenerLimits {
    /// Time allowed from accept to an authenticated peer: the TLS handshake and, for a
    /// remote-office gateway's tunnel, its opening (default 5 s).
    pub handshake_timeout: Duration,
    /// Connections in that phase at once (default 1,024); past it the oldest is closed to
    /// make room.
    pub max_handshakes: usize,
    /// Of `max_handshakes`, how many one source address (an IPv6 source: its /64) may hold
    /// (default 256).
    pub max_handshakes_per_source: usize,
    /// How long an authenticated remote-office gateway's tunnel may wait idle for its
    /// `TunnelOpen` (its warm pool; default 5 min: the gateway recycles its own sooner).
    pub pooled_tunnel_idle: Duration,
    /// Idle pooled tunnels at once, every gateway together (default 4,096).
    pub max_pooled_tunnels: usize,
    /// Of `max_pooled_tunnels`, how many one source address may hold (default 1,024).
    pub max_pooled_tunnels_per_source: usize,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            handshake_timeout: Duration::from_secs(5),
            max_handshakes: 1_024,
            max_handshakes_per_source: 256,
            pooled_tunnel_idle: Duration::from_secs(300),
            max_pooled_tunnels: 4_096,
            max_pooled_tunnels_per_source: 1_024,
        }
    }
}

impl ListenerLimits {
    /// Checks every bound; the field names in errors are those of a server configuration.
    pub fn validate(&self) -> Result<(), GatewayError> {
        let fields = [
            (
                "handshake_timeout_ms",
                self.handshake_timeout.as_millis() as u64,
            ),
            ("max_handshakes", self.max_handshakes as u64),
            (
                "max_handshakes_per_source",
                self.max_handshakes_per_source as u64,
            ),
            (
                "pooled_tunnel_idle_ms",
                self.pooled_tunnel_idle.as_millis() as u64,
            ),
            ("max_pooled_tunnels", self.max_pooled_tunnels as u64),
            (
                "max_pooled_tunnels_per_source",
                self.max_pooled_tunnels_per_source as u64,
            ),
        ];
        for (field, v) in fields {
            if v == 0 {
                return Err(GatewayError::config(field, "must be above 0"));
            }
        }
        for (field, v) in [
            ("max_handshakes", self.max_handshakes),
            ("max_pooled_tunnels", self.max_pooled_tunnels),
        ] {
            if v > crate::Limits::MAX_COUNT {
                return Err(GatewayError::config(
                    field,
                    format!("must be at most {}, got {v}", crate::Limits::MAX_COUNT),
                ));
            }
        }
        Ok(())
    }

    /// The defaults with another handshake deadline.
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// The defaults with other handshake bounds.
    pub fn with_handshakes(mut self, max: usize, per_source: usize) -> Self {
        self.max_handshakes = max;
        self.max_handshakes_per_source = per_source;
        self
    }
}

impl DeviceListener {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
    /// TLS handshakes and tunnel openings that failed.
    pub fn handshake_failures(&self) -> u64 {
        self.handshake_failures.load(Ordering::Relaxed)
    }
    /// Connections closed at accept because `max_handshakes_per_source` from their source
    /// were in their handshake (a full pool evicts its oldest handshake instead).
    pub fn refused_handshakes(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
    /// Handshakes closed to make room for a newer one when the pool was full.
    pub fn evicted_handshakes(&self) -> u64 {
        self.handshakes.evicted()
    }
    /// Connections in their handshake now.
    pub fn handshakes_in_progress(&self) -> usize {
        self.handshakes.in_use()
    }
    /// Stops accepting and waits for pending handshakes.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
        self.tracker.close();
        self.tracker.wait().await;
    }
}

impl DeviceListener {
    /// Binds `addr` and hands every authenticated device to `out`. `limits` bound the
    /// connections still in their handshake; `tunnels` says which remote-office gateways may
    /// open tunnels for their devices.
    pub async fn start(
        addr: SocketAddr,
        tls: &TlsMaterial,
        limits: &ListenerLimits,
        tunnels: TunnelPolicy,
        out: mpsc::Sender<DeviceConnection>,
    ) -> Result<DeviceListener, GatewayError> {
        let opts = TlsOptions::default().with_crls(tls.crls.clone());
        let direct = pki_tls::agent_port_server_config(&tls.identity, &tls.server_ca, &opts)?;
        let tunnel = pki_tls::tunnel_server_config(
            &tls.identity,
            &tls.server_ca,
            &opts.clone().with_alpn(vec![ALPN_TUNNEL.to_vec()]),
        )?;
        let enroll = pki_tls::mobile_port_server_config_without_client_auth(
            &tls.identity,
            &opts.clone().with_alpn(vec![ALPN_ENROLL.to_vec()]),
        )?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| GatewayError::Bind { addr, source })?;
        let bound = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let failures = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let handshakes =
            AdmissionPool::new(limits.max_handshakes, limits.max_handshakes_per_source);
        let pooled = AdmissionPool::new(
            limits.max_pooled_tunnels,
            limits.max_pooled_tunnels_per_source,
        );
        let task = tokio::spawn(
            accept_devices(
                listener,
                Configs {
                    direct,
                    tunnel,
                    enroll,
                },
                Admitting {
                    timeout: limits.handshake_timeout,
                    pooled_idle: limits.pooled_tunnel_idle,
                    pooled,
                    pool: handshakes.clone(),
                    refused: refused.clone(),
                    failures: failures.clone(),
                    tunnels,
                },
                out,
                shutdown.clone(),
                tracker.clone(),
            )
            .instrument(tracing::info_span!("device_port", addr = %bound)),
        );
        Ok(DeviceListener {
            addr: bound,
            shutdown,
            task,
            tracker,
            handshake_failures: failures,
            refused,
            handshakes,
        })
    }
}

#[derive(Clone)]
struct Configs {
    direct: Arc<ServerConfig>,
    tunnel: Arc<ServerConfig>,
    enroll: Arc<ServerConfig>,
}

/// How a listener admits connections before their peer is known, and its counters.
struct Admitting {
    timeout: Duration,
    /// How long an authenticated gateway's tunnel may wait for its `TunnelOpen`.
    pooled_idle: Duration,
    /// Places of the tunnels waiting so.
    pooled: AdmissionPool,
    pool: AdmissionPool,
    refused: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
    tunnels: TunnelPolicy,
}

/// What the handshake phase found.
enum Accepted {
    /// A device, ready to hand over.
    Device(DeviceConnection),
    /// A remote-office gateway's tunnel, authenticated, before its `TunnelOpen`.
    Tunnel {
        tls: Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
        gateway: outpost_pki::PeerIdentity,
    },
}

async fn accept_devices(
    listener: TcpListener,
    configs: Configs,
    admitting: Admitting,
    out: mpsc::Sender<DeviceConnection>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let admitting = Arc::new(admitting);
    loop {
        let (tcp, addr) = tokio::select! {
            () = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(admission) = admitting.pool.admit_evicting_oldest(addr.ip()) else {
            admitting.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (configs, out, admitting) = (configs.clone(), out.clone(), admitting.clone());
        let stop = shutdown.clone();
        let evicted = admission.eviction();
        tracker.spawn(
            async move {
                let handshake = tokio::time::timeout(
                    admitting.timeout,
                    handshake(tcp, addr, &configs, &admitting.tunnels),
                );
                // A full pool evicts its oldest handshake to make room for a newer one.
                let accepted = tokio::select! {
                    r = handshake => r,
                    () = evicted.cancelled() => {
                        admitting.failures.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                };
                // Known (or gone) by now: the place goes back before the hand-over, which may
                // wait for the server.
                drop(admission);
                let conn = match accepted {
                    Ok(Ok(Accepted::Device(conn))) => Ok(conn),
                    Ok(Ok(Accepted::Tunnel { tls, gateway })) => {
                        serve_tunnel(*tls, addr, gateway, &admitting, &out, &stop).await;
                        return;
                    }
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(GatewayError::Timeout {
                        what: "the TLS handshake on the server port",
                        millis: admitting.timeout.as_millis() as u64,
                    }),
                };
                match conn {
                    Ok(conn) => {
                        let _ = out.send(conn).await;
                    }
                    Err(e) => {
                        admitting.failures.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!("{e}");
                    }
                }
            }
            .instrument(tracing::info_span!("connection", peer = %addr)),
        );
    }
}

/// The TLS handshake, the configuration chosen by ALPN: an enrolling device, a direct
/// device, or a remote-office gateway's tunnel (gateway role required; with a registry, a
/// registered certificate).
async fn handshake(
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
    configs: &Configs,
    tunnels: &TunnelPolicy,
) -> Result<Accepted, GatewayError> {
    let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await?;
    let alpn = offered_alpn(&start);
    let wants = |p: &[u8]| alpn.iter().any(|a| a == p);
    if wants(ALPN_ENROLL) {
        let tls = start.into_stream(configs.enroll.clone()).await?;
        let peer = DevicePeer::anonymous(addr.to_string(), ChannelKind::Enrollment);
        return Ok(Accepted::Device(DeviceConnection {
            stream: Box::new(tls),
            peer,
            via: Via::Direct,
        }));
    }
    if !wants(ALPN_TUNNEL) {
        let tls = start.into_stream(configs.direct.clone()).await?;
        let peer = DevicePeer::from_certificates(
            tls.get_ref().1.peer_certificates(),
            addr.to_string(),
            ChannelKind::Agent,
        );
        return Ok(Accepted::Device(DeviceConnection {
            stream: Box::new(tls),
            peer,
            via: Via::Direct,
        }));
    }
    let mut tls = start.into_stream(configs.tunnel.clone()).await?;
    let gateway = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(<[_]>::first)
        .and_then(|c| outpost_pki::PeerIdentity::from_der(c).ok());
    let refused = match &gateway {
        Some(g) if g.role == Some(outpost_pki::Role::Gateway) => tunnels.refuses(g),
        _ => Some("tunnels are opened only by connection gateways".to_string()),
    };
    if let Some(reason) = refused {
        return Err(refuse_tunnel(&mut tls, addr, reason).await);
    }
    let gateway = gateway.ok_or_else(|| GatewayError::Protocol {
        peer: addr,
        reason: "no gateway certificate".into(),
    })?;
    Ok(Accepted::Tunnel {
        tls: Box::new(tls),
        gateway,
    })
}

/// Tells a tunnel it is not authorised (`reason`), and gives the error it ends with.
async fn refuse_tunnel(tls: &mut TunnelLink, addr: SocketAddr, reason: String) -> GatewayError {
    tracing::warn!("tunnel refused: {reason}");
    let refusal = Refusal {
        code: RefusalCode::NotAuthorized as i32,
        reason: reason.clone(),
    };
    let _ = write_message(tls, refusal).await;
    GatewayError::Protocol { peer: addr, reason }
}

/// A remote-office gateway's tunnel connection: each `TunnelOpen` on it is a device, handed
/// over; with chunks agreed the connection waits for the next one once the device's stream
/// has ended cleanly both ways.
async fn serve_tunnel(
    mut tls: TunnelLink,
    addr: SocketAddr,
    gateway: outpost_pki::PeerIdentity,
    admitting: &Admitting,
    out: &mpsc::Sender<DeviceConnection>,
    stop: &CancellationToken,
) {
    loop {
        let opened = tokio::select! {
            () = stop.cancelled() => return,
            r = open_tunnel(tls, addr, &gateway, admitting) => r,
        };
        let opened = match opened {
            Ok(o) => o,
            Err(e) => {
                admitting.failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("{e}");
                return;
            }
        };
        let via = Via::RemoteGateway(opened.gateway_id);
        if !opened.reuse {
            let conn = DeviceConnection {
                stream: Box::new(opened.tls),
                peer: opened.peer,
                via,
            };
            let _ = out.send(conn).await;
            return;
        }
        let (lending, back) = Lending::new(ChunkedLink::new(opened.tls));
        let conn = DeviceConnection {
            stream: Box::new(lending),
            peer: opened.peer,
            via,
        };
        if out.send(conn).await.is_err() {
            return;
        }
        let back = tokio::select! {
            () = stop.cancelled() => return,
            r = back => r,
        };
        let Ok(mut link) = back else { return };
        if !link
            .settle(admitting.timeout.min(Duration::from_secs(1)), 256 * 1024)
            .await
        {
            return;
        }
        tls = link.into_inner();
    }
}

/// A gateway's tunnel connection on the server's port.
type TunnelLink = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

/// A `TunnelOpen` admitted and answered.
struct Opened {
    tls: TunnelLink,
    peer: DevicePeer,
    gateway_id: String,
    reuse: bool,
}

/// A gateway's tunnel after its handshake (or its previous device): it may wait idle (a
/// warm-pool tunnel, holding a place among `max_pooled_tunnels`) until its `TunnelOpen`,
/// which is admitted by the listener's policy and answered `TunnelAccept`.
async fn open_tunnel(
    mut tls: TunnelLink,
    addr: SocketAddr,
    gateway: &outpost_pki::PeerIdentity,
    admitting: &Admitting,
) -> Result<Opened, GatewayError> {
    let Ok(_place) = admitting.pooled.try_admit(addr.ip()) else {
        let refusal = Refusal {
            code: RefusalCode::Overloaded as i32,
            reason: "too many idle tunnels from this address".into(),
        };
        let _ = write_message(&mut tls, refusal).await;
        return Err(GatewayError::Protocol {
            peer: addr,
            reason: "too many idle tunnels".into(),
        });
    };
    let open = match tokio::time::timeout(admitting.pooled_idle, read_message(&mut tls, 64 * 1024))
        .await
    {
        Err(_) => {
            return Err(GatewayError::Timeout {
                what: "a pooled tunnel's TunnelOpen",
                millis: admitting.pooled_idle.as_millis() as u64,
            });
        }
        Ok(r) => match r? {
            Message::TunnelOpen(o) => o,
            other => {
                return Err(GatewayError::Protocol {
                    peer: addr,
                    reason: format!("expected TunnelOpen, got {}", other.message_type().name()),
                });
            }
        },
    };
    let gateway_id = match admitting.tunnels.admit(gateway, &open.gateway_id) {
        Ok(id) => id,
        Err(reason) => return Err(refuse_tunnel(&mut tls, addr, reason).await),
    };
    let peer = open
        .peer
        .as_ref()
        .map(DevicePeer::from_wire)
        .ok_or_else(|| GatewayError::Protocol {
            peer: addr,
            reason: "TunnelOpen without peer".into(),
        })?;
    write_message(
        &mut tls,
        TunnelAccept {
            idle_timeout_ms: 600_000,
            reuse: open.reuse,
        },
    )
    .await?;
    Ok(Opened {
        tls,
        peer,
        gateway_id,
        reuse: open.reuse,
    })
}
