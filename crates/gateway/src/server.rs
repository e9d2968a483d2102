//! The Administration Server's half: a connector that dials registered DMZ gateways and keeps
//! their signal connections, and a listener for devices that come directly or through a
//! remote-office gateway. Both feed one channel of [`DeviceConnection`]s.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use outpost_pki::tls::{self as pki_tls, TlsOptions};
use outpost_wire::messages::*;
use outpost_wire::{Message, MessageCodec};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::{LazyConfigAcceptor, TlsConnector};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::AdmissionPool;
use crate::config::{ConnectorConfig, DmzGatewayEntry, TlsMaterial};
use crate::io::{read_message, write_message};
use crate::peer::{DeviceConnection, DevicePeer, Via, offered_alpn};
use crate::signal::{End, Event as SignalEvent, SignalSession};
use crate::splice::splice;
use crate::{ALPN_ENROLL, ALPN_TUNNEL, GatewayError};

/// Counters of the connector, per gateway and in total.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct ConnectorStats {
    /// Signal connections established (including re-establishments).
    pub signal_established: AtomicU64,
    /// Signal connection attempts that failed.
    pub signal_failures: AtomicU64,
    /// Data connections opened for devices.
    pub data_connections: AtomicU64,
    /// Data connections that failed or timed out, and connect requests refused because
    /// `max_data_in_flight` data connections were already being opened.
    pub data_failures: AtomicU64,
    /// Web Console tunnels carried.
    pub web_console_tunnels: AtomicU64,
}

/// The server-side connector. See [`ServerConnector::start`].
pub struct ServerConnector;

/// Which DMZ gateways' signal connections are up, as the connector sees them now; cheap
/// to clone (see [`ConnectorHandle::gateways_up`]).
#[derive(Clone, Debug)]
pub struct GatewaysUp(Arc<Mutex<BTreeMap<String, u64>>>);

impl GatewaysUp {
    /// The gateways whose signal connection is up, with their signal session ids.
    pub fn now(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Control of a running connector.
pub struct ConnectorHandle {
    stats: Arc<ConnectorStats>,
    up: Arc<Mutex<BTreeMap<String, u64>>>,
    shutdown: CancellationToken,
    gateways: GatewayControl,
    tracker: TaskTracker,
}

/// The one task that keeps each gateway's signal connection, by gateway id.
type Kept = Arc<Mutex<BTreeMap<String, (CancellationToken, JoinHandle<()>)>>>;

/// Adds and removes DMZ gateways of a running connector (see
/// [`ConnectorHandle::control`]); cheap to clone.
#[derive(Clone)]
pub struct GatewayControl {
    link: Arc<Link>,
    kept: Kept,
}

impl GatewayControl {
    /// Starts keeping a signal connection to `gw` at once. Refused if a gateway with its
    /// id is kept already, or the entry is not valid.
    pub fn add(&self, gw: DmzGatewayEntry) -> Result<(), GatewayError> {
        gw.validate()?;
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        if kept.contains_key(&gw.id) {
            return Err(GatewayError::config(
                "gateways.id",
                format!("gateway {:?} is kept already", gw.id),
            ));
        }
        let stop = self.link.shutdown.child_token();
        let id = gw.id.clone();
        let task = tokio::spawn(self.link.clone().keep(gw, stop.clone()));
        kept.insert(id, (stop, task));
        Ok(())
    }

    /// Stops keeping gateway `id`: its signal connection is closed and not dialled again
    /// (data connections already handed out are not affected). Returns whether it was kept.
    pub async fn remove(&self, id: &str) -> bool {
        let entry = self
            .kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        let Some((stop, task)) = entry else {
            return false;
        };
        stop.cancel();
        let _ = task.await;
        self.link
            .up
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        true
    }

    /// The ids of the gateways kept.
    pub fn ids(&self) -> Vec<String> {
        self.kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }
}

impl ConnectorHandle {
    /// Counters.
    pub fn stats(&self) -> &ConnectorStats {
        &self.stats
    }

    /// The gateways whose signal connection is up now, with their signal session ids.
    pub fn connected(&self) -> BTreeMap<String, u64> {
        self.up.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A view of [`connected`](Self::connected) that outlives this handle's borrow (for a
    /// task that watches gateways come and go).
    pub fn gateways_up(&self) -> GatewaysUp {
        GatewaysUp(self.up.clone())
    }

    /// Adds and removes gateways while the connector runs.
    pub fn control(&self) -> GatewayControl {
        self.gateways.clone()
    }

    /// Closes every signal connection and stops reconnecting; data connections already
    /// handed out are not affected, those still being opened or not yet taken from the
    /// channel are closed.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let tasks: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.gateways.kept.lock().unwrap_or_else(|e| e.into_inner()))
                .into_values()
                .map(|(_, t)| t)
                .collect();
        for t in tasks {
            let _ = t.await;
        }
        self.tracker.close();
        self.tracker.wait().await;
    }
}

struct Link {
    config: ConnectorConfig,
    signal: Arc<ClientConfig>,
    data: Arc<ClientConfig>,
    out: mpsc::Sender<DeviceConnection>,
    stats: Arc<ConnectorStats>,
    up: Arc<Mutex<BTreeMap<String, u64>>>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl ServerConnector {
    /// Starts one task per configured DMZ gateway: each dials its gateway, keeps the signal
    /// connection with keepalives, re-establishes it with exponential backoff whenever it
    /// breaks, and answers connect requests by opening data connections, handing each
    /// device to `out` (or, for Web Console tunnels, splicing to the configured target).
    ///
    /// `tls` holds the server's own certificate and the server CA that gateway certificates
    /// must chain to.
    pub fn start(
        config: ConnectorConfig,
        tls: &TlsMaterial,
        out: mpsc::Sender<DeviceConnection>,
    ) -> Result<ConnectorHandle, GatewayError> {
        config.validate()?;
        let opts = TlsOptions::default().with_crls(tls.crls.clone());
        let signal = pki_tls::gateway_signal_client_config(&tls.identity, &tls.server_ca, &opts)?;
        let data = pki_tls::gateway_data_client_config(&tls.identity, &tls.server_ca, &opts)?;
        let link = Arc::new(Link {
            signal,
            data,
            out,
            stats: Arc::new(ConnectorStats::default()),
            up: Arc::new(Mutex::new(BTreeMap::new())),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            config,
        });
        let gateways = GatewayControl {
            link: link.clone(),
            kept: Arc::default(),
        };
        for gw in link.config.gateways.iter().cloned() {
            gateways.add(gw)?;
        }
        Ok(ConnectorHandle {
            stats: link.stats.clone(),
            up: link.up.clone(),
            shutdown: link.shutdown.clone(),
            tracker: link.tracker.clone(),
            gateways,
        })
    }
}

impl Link {
    async fn connect(
        &self,
        gw: &DmzGatewayEntry,
        cfg: &Arc<ClientConfig>,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, GatewayError> {
        let name = ServerName::try_from(gw.name.clone()).map_err(|_| {
            GatewayError::config("gateways.name", format!("{:?} is not a name", gw.name))
        })?;
        let timeout = Duration::from_millis(self.config.connect_timeout_ms);
        let fut = async {
            let tcp = TcpStream::connect(gw.addr)
                .await
                .map_err(|e| GatewayError::Connect {
                    addr: gw.addr,
                    reason: e.to_string(),
                })?;
            let _ = tcp.set_nodelay(true);
            TlsConnector::from(cfg.clone())
                .connect(name, tcp)
                .await
                .map_err(|source| GatewayError::Handshake {
                    peer: gw.addr,
                    source,
                })
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| GatewayError::Timeout {
                what: "connecting to the gateway",
                millis: self.config.connect_timeout_ms,
            })?
    }

    /// Keeps the signal connection to one gateway up until `stop` (a child of the
    /// connector's shutdown) is cancelled.
    async fn keep(self: Arc<Self>, gw: DmzGatewayEntry, stop: CancellationToken) {
        let initial = Duration::from_millis(self.config.backoff_initial_ms);
        let max = Duration::from_millis(self.config.backoff_max_ms);
        let mut backoff = initial;
        // Shared by successive signal sessions: data connections still being opened for an
        // earlier session count too.
        let in_flight = Arc::new(Semaphore::new(self.config.max_data_in_flight));
        while !stop.is_cancelled() {
            let outcome = tokio::select! {
                () = stop.cancelled() => Ok(()),
                r = self.signal_session(&gw, &in_flight) => r,
            };
            match outcome {
                Ok(()) => backoff = initial,
                Err((e, established)) => {
                    if established {
                        backoff = initial;
                    }
                    self.stats.signal_failures.fetch_add(1, Ordering::Relaxed);
                    log::warn!(
                        "signal connection to gateway {} ({}): {e}; retrying in {} ms",
                        gw.id,
                        gw.addr,
                        backoff.as_millis()
                    );
                }
            }
            self.up
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&gw.id);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(max);
        }
    }

    /// One signal session, until it fails (shutdown is handled by the caller). `Err((e,
    /// true))` if it was established before failing. The protocol is the shared
    /// [`SignalSession`]; this loop only carries its messages and timers.
    async fn signal_session(
        self: &Arc<Self>,
        gw: &DmzGatewayEntry,
        in_flight: &Arc<Semaphore>,
    ) -> Result<(), (GatewayError, bool)> {
        let tls = self
            .connect(gw, &self.signal)
            .await
            .map_err(|e| (e, false))?;
        let mut framed = Framed::new(
            tls,
            MessageCodec::with_max_frame_len(self.config.max_frame_len),
        );
        let keepalive = Duration::from_millis(self.config.keepalive_ms);
        let mut sig = SignalSession::server(&self.config.server_id, keepalive, Instant::now());
        // Also the limit of every control write: a gateway that takes nothing for this long is
        // as dead as one that says nothing.
        let write_limit = sig.dead_after();
        let (refuse_tx, mut refuse_rx) = mpsc::channel::<ConnectRefusal>(256);
        let mut session: Option<u64> = None;
        loop {
            while let Some(event) = sig.poll_event() {
                match event {
                    SignalEvent::Up { session_id, .. } => {
                        self.stats
                            .signal_established
                            .fetch_add(1, Ordering::Relaxed);
                        self.up
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(gw.id.clone(), session_id);
                        log::info!(
                            "signal connection to gateway {} ({}) is up, session {session_id}",
                            gw.id,
                            gw.addr
                        );
                        session = Some(session_id);
                    }
                    SignalEvent::ConnectRequest(req) => {
                        let Some(id) = session else { continue };
                        match in_flight.clone().try_acquire_owned() {
                            Ok(permit) => {
                                let this = self.clone();
                                let gw = gw.clone();
                                let refuse = refuse_tx.clone();
                                self.tracker.spawn(async move {
                                    this.answer(gw, id, req, refuse, permit).await
                                });
                            }
                            Err(_) => {
                                self.stats.data_failures.fetch_add(1, Ordering::Relaxed);
                                let max = self.config.max_data_in_flight;
                                log::warn!(
                                    "gateway {}: {max} data connections are already being opened; refusing a connect request",
                                    gw.id
                                );
                                if let Some(ticket) = req.ticket {
                                    sig.refuse_connection(ConnectRefusal {
                                        ticket: Some(ticket),
                                        code: RefusalCode::Overloaded as i32,
                                        reason: format!(
                                            "the server is already opening {max} data connections to this gateway"
                                        ),
                                    });
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            // After the events: answering one may have queued a refusal.
            let up = session.is_some();
            while let Some(m) = sig.poll_transmit() {
                write_control(&mut framed, m, write_limit)
                    .await
                    .map_err(|e| (e, up))?;
            }
            if let Some(end) = sig.end() {
                return Err((signal_error(gw, end), session.is_some()));
            }
            let deadline = sig.poll_timeout();
            let timer = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = timer => sig.handle_timeout(Instant::now()),
                r = refuse_rx.recv() => {
                    if let Some(r) = r {
                        sig.refuse_connection(r);
                    }
                }
                m = framed.next() => match m {
                    None => sig.handle_closed("gateway closed the signal connection"),
                    Some(Err(e)) => return Err((e.into(), session.is_some())),
                    Some(Ok(m)) => sig.handle(Instant::now(), m),
                },
            }
        }
    }

    /// Answers one connect request: opens the data connection, presents the ticket, and
    /// hands the device over (or splices a Web Console tunnel). `permit` is this request's
    /// place among the data connections being opened to the gateway.
    async fn answer(
        self: Arc<Self>,
        gw: DmzGatewayEntry,
        session: u64,
        req: ConnectRequest,
        refuse: mpsc::Sender<ConnectRefusal>,
        permit: OwnedSemaphorePermit,
    ) {
        let (Some(ticket), Some(peer)) = (req.ticket, req.peer) else {
            return;
        };
        let channel = ChannelKind::try_from(peer.channel).unwrap_or(ChannelKind::Unspecified);
        let web_target = match (channel, self.config.web_console_target) {
            (ChannelKind::WebConsole, None) => {
                let _ = refuse
                    .send(ConnectRefusal {
                        ticket: Some(ticket),
                        code: RefusalCode::NotAuthorized as i32,
                        reason: "no Web Console target is configured on the server side".into(),
                    })
                    .await;
                return;
            }
            (ChannelKind::WebConsole, Some(t)) => Some(t),
            _ => None,
        };
        // The ticket is worthless once expired, so the whole opening (connect, TLS, attach,
        // acknowledgement) gets at most its remaining lifetime (0: not stated).
        let mut limit_ms = self.config.connect_timeout_ms;
        if req.expires_in_ms > 0 {
            limit_ms = limit_ms.min(u64::from(req.expires_in_ms));
        }
        let opened = async {
            let mut tls = self.connect(&gw, &self.data).await?;
            write_message(
                &mut tls,
                DataAttach {
                    ticket: Some(ticket),
                    session_id: session,
                },
            )
            .await?;
            match read_message(&mut tls, self.config.max_frame_len).await? {
                Message::DataAttachAck(ack) => Ok((tls, ack.peer.unwrap_or(peer))),
                Message::Refusal(r) => Err(GatewayError::Refused {
                    peer: gw.addr,
                    code: RefusalCode::try_from(r.code).unwrap_or(RefusalCode::Unspecified),
                    reason: r.reason,
                }),
                other => Err(GatewayError::Protocol {
                    peer: gw.addr,
                    reason: format!("answered DataAttach with {}", other.message_type().name()),
                }),
            }
        };
        let opened = tokio::select! {
            // The gateway drops the session's tickets with the signal connection anyway.
            () = self.shutdown.cancelled() => return,
            r = tokio::time::timeout(Duration::from_millis(limit_ms), opened) => {
                r.unwrap_or(Err(GatewayError::Timeout {
                    what: "opening a data connection (connect, DataAttach, DataAttachAck)",
                    millis: limit_ms,
                }))
            }
        };
        drop(permit);
        let (tls, peer) = match opened {
            Ok(x) => x,
            Err(e) => {
                self.stats.data_failures.fetch_add(1, Ordering::Relaxed);
                log::warn!("data connection to gateway {}: {e}", gw.id);
                return;
            }
        };
        self.stats.data_connections.fetch_add(1, Ordering::Relaxed);
        if let Some(target) = web_target {
            self.stats
                .web_console_tunnels
                .fetch_add(1, Ordering::Relaxed);
            let Ok(console) = TcpStream::connect(target).await else {
                log::warn!("Web Console target {target} unreachable");
                return;
            };
            let idle = Duration::from_millis(self.config.idle_timeout_ms);
            tokio::select! {
                r = splice(tls, console, 16 * 1024, idle, None) => {
                    if let Err(e) = r { log::debug!("Web Console tunnel ended: {e}"); }
                }
                () = self.shutdown.cancelled() => {}
            }
            return;
        }
        let conn = DeviceConnection {
            stream: Box::new(tls),
            peer: DevicePeer::from_wire(&peer),
            via: Via::DmzGateway(gw.id.clone()),
        };
        // At shutdown a connection nobody takes is closed rather than waited on.
        tokio::select! {
            () = self.shutdown.cancelled() => {}
            _ = self.out.send(conn) => {}
        }
    }
}

/// Writes one control message, giving up after `limit`.
async fn write_control<S>(
    framed: &mut Framed<S, MessageCodec>,
    message: Message,
    limit: Duration,
) -> Result<(), GatewayError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match tokio::time::timeout(limit, framed.send(message)).await {
        Ok(r) => r.map_err(GatewayError::from),
        Err(_) => Err(GatewayError::Timeout {
            what: "a control write on the signal connection",
            millis: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
        }),
    }
}

/// The error a signal session's end is reported as.
fn signal_error(gw: &DmzGatewayEntry, end: &End) -> GatewayError {
    match end {
        End::Silent { after } => GatewayError::Timeout {
            what: "signal keepalive",
            millis: u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
        },
        End::Refused { code, reason } => GatewayError::Refused {
            peer: gw.addr,
            code: *code,
            reason: reason.clone(),
        },
        other => GatewayError::Protocol {
            peer: gw.addr,
            reason: other.to_string(),
        },
    }
}

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
