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

use crate::admission::AdmissionPool;
use crate::config::TlsMaterial;
use crate::io::{read_message, write_message};
use crate::peer::{DeviceConnection, DevicePeer, Via, offered_alpn};
use crate::{ALPN_ENROLL, ALPN_TUNNEL, GatewayError};

/// The server's own TLS port: devices that connect directly (agent port rules: a client
/// certificate from the server CA), remote-office gateways that open tunnels for their
/// devices (TLS ALPN `outpost-tunnel/1`, gateway certificate required), and devices without a
/// certificate yet on the enrollment channel (TLS ALPN `outpost-enroll/1`, no client
/// certificate; handed over with [`ChannelKind::Enrollment`], which the server must restrict
/// to enrollment).
pub struct DeviceListener;

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

/// Control of a running [`DeviceListener`].
pub struct ListenerHandle {
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
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            handshake_timeout: Duration::from_secs(5),
            max_handshakes: 1_024,
            max_handshakes_per_source: 256,
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
        ];
        for (field, v) in fields {
            if v == 0 {
                return Err(GatewayError::config(field, "must be above 0"));
            }
        }
        if self.max_handshakes > crate::Limits::MAX_COUNT {
            return Err(GatewayError::config(
                "max_handshakes",
                format!(
                    "must be at most {}, got {}",
                    crate::Limits::MAX_COUNT,
                    self.max_handshakes
                ),
            ));
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

impl ListenerHandle {
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
    ) -> Result<ListenerHandle, GatewayError> {
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
        let task = tokio::spawn(accept_devices(
            listener,
            Configs {
                direct,
                tunnel,
                enroll,
            },
            Admitting {
                timeout: limits.handshake_timeout,
                pool: handshakes.clone(),
                refused: refused.clone(),
                failures: failures.clone(),
                tunnels,
            },
            out,
            shutdown.clone(),
            tracker.clone(),
        ));
        Ok(ListenerHandle {
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
    pool: AdmissionPool,
    refused: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
    tunnels: TunnelPolicy,
}

async fn accept_devices(
    listener: TcpListener,
    configs: Configs,
    admitting: Admitting,
    out: mpsc::Sender<DeviceConnection>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let Admitting {
        timeout,
        pool,
        refused,
        failures,
        tunnels,
    } = admitting;
    loop {
        let (tcp, addr) = tokio::select! {
            () = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    log::warn!("server port: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(admission) = pool.admit_evicting_oldest(addr.ip()) else {
            refused.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (configs, out, failures) = (configs.clone(), out.clone(), failures.clone());
        let tunnels = tunnels.clone();
        let evicted = admission.eviction();
        tracker.spawn(async move {
            let handshake = tokio::time::timeout(timeout, async {
                let start =
                    LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await?;
                let alpn = offered_alpn(&start);
                let wants = |p: &[u8]| alpn.iter().any(|a| a == p);
                if wants(ALPN_ENROLL) {
                    let tls = start.into_stream(configs.enroll).await?;
                    let peer = DevicePeer {
                        cert_sha256: None,
                        cert_serial: None,
                        subject: String::new(),
                        remote_addr: addr.to_string(),
                        channel: ChannelKind::Enrollment,
                    };
                    return Ok(DeviceConnection {
                        stream: Box::new(tls),
                        peer,
                        via: Via::Direct,
                    });
                }
                if !wants(ALPN_TUNNEL) {
                    let tls = start.into_stream(configs.direct).await?;
                    let peer = DevicePeer::from_certificates(
                        tls.get_ref().1.peer_certificates(),
                        addr.to_string(),
                        ChannelKind::Agent,
                    );
                    return Ok::<_, GatewayError>(DeviceConnection {
                        stream: Box::new(tls),
                        peer,
                        via: Via::Direct,
                    });
                }
                let mut tls = start.into_stream(configs.tunnel).await?;
                let gateway = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(<[_]>::first)
                    .and_then(|c| outpost_pki::PeerIdentity::from_der(c).ok());
                let Some(gateway) = gateway.filter(|g| g.role == Some(outpost_pki::Role::Gateway))
                else {
                    let refusal = Refusal {
                        code: RefusalCode::NotAuthorized as i32,
                        reason: "tunnels are opened only by connection gateways".into(),
                    };
                    let _ = write_message(&mut tls, refusal).await;
                    return Err(GatewayError::Protocol {
                        peer: addr,
                        reason: "tunnel from a non-gateway certificate".into(),
                    });
                };
                let open = match read_message(&mut tls, 64 * 1024).await? {
                    Message::TunnelOpen(o) => o,
                    other => {
                        return Err(GatewayError::Protocol {
                            peer: addr,
                            reason: format!(
                                "expected TunnelOpen, got {}",
                                other.message_type().name()
                            ),
                        });
                    }
                };
                let gateway_id = match tunnels.admit(&gateway, &open.gateway_id) {
                    Ok(id) => id,
                    Err(reason) => {
                        log::warn!("server port: tunnel from {addr} refused: {reason}");
                        let refusal = Refusal {
                            code: RefusalCode::NotAuthorized as i32,
                            reason: reason.clone(),
                        };
                        let _ = write_message(&mut tls, refusal).await;
                        return Err(GatewayError::Protocol { peer: addr, reason });
                    }
                };
                write_message(
                    &mut tls,
                    TunnelAccept {
                        idle_timeout_ms: 600_000,
                    },
                )
                .await?;
                let peer = open
                    .peer
                    .as_ref()
                    .map(DevicePeer::from_wire)
                    .ok_or_else(|| GatewayError::Protocol {
                        peer: addr,
                        reason: "TunnelOpen without peer".into(),
                    })?;
                Ok(DeviceConnection {
                    stream: Box::new(tls),
                    peer,
                    via: Via::RemoteGateway(gateway_id),
                })
            });
            // A full pool evicts its oldest handshake to make room for a newer one.
            let accepted = tokio::select! {
                r = handshake => r,
                () = evicted.cancelled() => {
                    failures.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            // Known (or gone) by now: the place goes back before the hand-over, which may
            // wait for the server.
            drop(admission);
            match accepted {
                Ok(Ok(conn)) => {
                    let _ = out.send(conn).await;
                }
                Ok(Err(e)) => {
                    failures.fetch_add(1, Ordering::Relaxed);
                    log::debug!("server port: {addr}: {e}");
                }
                Err(_) => {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
}
