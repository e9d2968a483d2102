//! The Administration Server's connector to DMZ gateways: it dials each registered gateway,
//! keeps its signal connection (the shared [`SignalSession`]), answers connect requests by
//! opening data connections, and hands every device it carries to one channel of
//! [`DeviceConnection`]s (the same channel the [`DeviceListener`](crate::DeviceListener)
//! feeds).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use outpost_pki::tls::{self as pki_tls, TlsOptions};
use outpost_wire::backoff::Backoff;
use outpost_wire::messages::*;
use outpost_wire::{Message, MessageCodec};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::GatewayError;
use crate::chunked::{ChunkedLink, Lending};
use crate::config::{ConnectorConfig, DmzGatewayEntry, TlsMaterial};
use crate::io::{read_message, sleep_until, write_message};
use crate::peer::{BoxStream, DeviceConnection, DevicePeer, Via};
use crate::signal::{End, Event as SignalEvent, SignalSession};
use crate::splice::splice;

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
    /// Warm-pool data connections opened (each on a pool ticket the gateway granted).
    pub pool_opened: AtomicU64,
    /// Pooled connections a device was spliced to.
    pub pool_claimed: AtomicU64,
    /// Pooled connections closed idle after `pool_idle_ms` (the gateway grants a new ticket).
    pub pool_recycled: AtomicU64,
    /// Pooled connections that carried a device in chunks and waited for the next one.
    pub pool_reused: AtomicU64,
    /// Pool tickets not used: more were granted than `pool_size` connections could use
    /// within their lifetime.
    pub pool_tickets_unused: AtomicU64,
    /// Pooled connections open or opening now, every gateway together.
    pub pool_open: AtomicU64,
}

/// Which DMZ gateways' signal connections are up, as the connector sees them now; cheap
/// to clone (see [`ServerConnector::gateways_up`]).
#[derive(Clone, Debug)]
pub struct GatewaysUp(Arc<Mutex<BTreeMap<String, u64>>>);

impl GatewaysUp {
    /// The gateways whose signal connection is up, with their signal session ids.
    pub fn now(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The server-side connector, started by [`ServerConnector::start`]. Its tasks outlive
/// this value when it is dropped; [`shutdown`](ServerConnector::shutdown) stops them.
pub struct ServerConnector {
    stats: Arc<ConnectorStats>,
    up: Arc<Mutex<BTreeMap<String, u64>>>,
    shutdown: CancellationToken,
    gateways: GatewayControl,
    tracker: TaskTracker,
}

/// The one task that keeps each gateway's signal connection, by gateway id.
type Kept = Arc<Mutex<BTreeMap<String, (CancellationToken, JoinHandle<()>)>>>;

/// Adds and removes DMZ gateways of a running connector (see
/// [`ServerConnector::control`]); cheap to clone.
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
        let span = tracing::info_span!(
            "gateway_link",
            gateway = %gw.id,
            addr = %gw.addr,
            session = tracing::field::Empty
        );
        let task = tokio::spawn(self.link.clone().keep(gw, stop.clone()).instrument(span));
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

impl ServerConnector {
    /// Counters.
    pub fn stats(&self) -> &ConnectorStats {
        &self.stats
    }

    /// The counters, shared (for a task that watches them while the connector runs).
    pub fn stats_handle(&self) -> Arc<ConnectorStats> {
        self.stats.clone()
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
    ) -> Result<ServerConnector, GatewayError> {
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
        Ok(ServerConnector {
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
        // Jittered, so a server that lost many gateways at once does not redial them in step.
        let mut backoff = Backoff::new(
            Duration::from_millis(self.config.backoff_initial_ms),
            Duration::from_millis(self.config.backoff_max_ms),
            outpost_wire::backoff::seed_for(&gw.id),
        );
        // Shared by successive signal sessions: data connections still being opened for an
        // earlier session count too.
        let in_flight = Arc::new(Semaphore::new(self.config.max_data_in_flight));
        while !stop.is_cancelled() {
            let outcome = tokio::select! {
                () = stop.cancelled() => Ok(()),
                r = self.signal_session(&gw, &in_flight) => r,
            };
            let delay = match outcome {
                Ok(()) => {
                    backoff.reset();
                    backoff.next_delay()
                }
                Err((e, established)) => {
                    if established {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay();
                    self.stats.signal_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        "signal connection: {e}; retrying in {} ms",
                        delay.as_millis()
                    );
                    delay
                }
            };
            self.up
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&gw.id);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
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
        let pool_size = u32::try_from(self.config.pool_size).unwrap_or(u32::MAX);
        let mut sig =
            SignalSession::server(&self.config.server_id, keepalive, pool_size, Instant::now());
        // Also the limit of every control write: a gateway that takes nothing for this long is
        // as dead as one that says nothing.
        let write_limit = sig.dead_after();
        let (refuse_tx, mut refuse_rx) = mpsc::channel::<ConnectRefusal>(256);
        let mut session: Option<u64> = None;
        let pool = SessionPool::new(self.config.pool_size, self.shutdown.child_token());
        let _close_pool = pool.stop.clone().drop_guard();
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
                        tracing::Span::current().record("session", session_id);
                        tracing::info!("signal connection is up");
                        session = Some(session_id);
                    }
                    SignalEvent::PoolTickets(grant) => {
                        if let Some(id) = session {
                            pool.open(self, gw, id, grant);
                        }
                    }
                    SignalEvent::ConnectRequest(req) => {
                        let Some(id) = session else { continue };
                        match in_flight.clone().try_acquire_owned() {
                            Ok(permit) => {
                                let this = self.clone();
                                let gw = gw.clone();
                                let refuse = refuse_tx.clone();
                                self.tracker.spawn(
                                    async move { this.answer(gw, id, req, refuse, permit).await }
                                        .instrument(tracing::Span::current()),
                                );
                            }
                            Err(_) => {
                                self.stats.data_failures.fetch_add(1, Ordering::Relaxed);
                                let max = self.config.max_data_in_flight;
                                tracing::warn!(
                                    "{max} data connections are already being opened; refusing a connect request"
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
            tokio::select! {
                () = sleep_until(sig.poll_timeout()) => sig.handle_timeout(Instant::now()),
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
            let mut tls = self.open_data(&gw, ticket, session).await?;
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
                tracing::warn!("data connection: {e}");
                return;
            }
        };
        self.stats.data_connections.fetch_add(1, Ordering::Relaxed);
        self.deliver(&gw, Box::new(tls), peer, web_target).await;
    }

    /// Opens a data connection to `gw` and presents `ticket` of signal session `session`.
    async fn open_data(
        &self,
        gw: &DmzGatewayEntry,
        ticket: Ticket,
        session: u64,
    ) -> Result<DataLink, GatewayError> {
        let mut tls = self.connect(gw, &self.data).await?;
        write_message(
            &mut tls,
            DataAttach {
                ticket: Some(ticket),
                session_id: session,
            },
        )
        .await?;
        Ok(tls)
    }

    /// Hands a data connection that now carries `peer` to the server, or splices it to the
    /// Web Console target.
    async fn deliver(
        &self,
        gw: &DmzGatewayEntry,
        link: BoxStream,
        peer: PeerIdentity,
        web_target: Option<SocketAddr>,
    ) {
        if let Some(target) = web_target {
            self.web_console(link, target).await;
            return;
        }
        let conn = DeviceConnection {
            stream: link,
            peer: DevicePeer::from_wire(&peer),
            via: Via::DmzGateway(gw.id.clone()),
        };
        // At shutdown a connection nobody takes is closed rather than waited on.
        tokio::select! {
            () = self.shutdown.cancelled() => {}
            _ = self.out.send(conn) => {}
        }
    }

    /// Splices `link` to the Web Console target; `true` if both ended cleanly.
    async fn web_console<L>(&self, link: L, target: SocketAddr) -> bool
    where
        L: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    {
        self.stats
            .web_console_tunnels
            .fetch_add(1, Ordering::Relaxed);
        let Ok(console) = TcpStream::connect(target).await else {
            tracing::warn!("Web Console target {target} unreachable");
            return false;
        };
        let _ = console.set_nodelay(true);
        let idle = Duration::from_millis(self.config.idle_timeout_ms);
        tokio::select! {
            r = splice(link, console, 16 * 1024, idle, None) => match r {
                Ok(_) => true,
                Err(e) => {
                    tracing::debug!("Web Console tunnel ended: {e}");
                    false
                }
            },
            () = self.shutdown.cancelled() => false,
        }
    }

    /// One warm-pool data connection: opened on a pool ticket and presented, then idle until
    /// the gateway says `TunnelOpen` on it for a device (answered `TunnelAccept`, then
    /// delivered like any data connection), or closed after `pool_idle_ms`, or with the
    /// session. `place` is its place among the session's `pool_size`, given back as soon as
    /// a device takes the connection, so the gateway's next ticket can be used. With chunks
    /// agreed, a connection whose device stream ended cleanly waits for the next device, if
    /// a place is free.
    async fn pooled(
        self: Arc<Self>,
        gw: DmzGatewayEntry,
        session: u64,
        ticket: Ticket,
        place: PoolPlace,
        stop: CancellationToken,
        slots: Arc<Semaphore>,
    ) {
        let mut tls = tokio::select! {
            () = stop.cancelled() => return,
            r = self.open_data(&gw, ticket, session) => match r {
                Ok(tls) => tls,
                Err(e) => {
                    self.stats.data_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("warm-pool connection: {e}");
                    return;
                }
            },
        };
        self.stats.pool_opened.fetch_add(1, Ordering::Relaxed);
        let mut place = Some(place);
        loop {
            let Some((open, web_target)) = self.claimed(&mut tls, &stop).await else {
                return;
            };
            drop(place.take());
            let Some(peer) = open.peer else { return };
            self.stats.pool_claimed.fetch_add(1, Ordering::Relaxed);
            self.stats.data_connections.fetch_add(1, Ordering::Relaxed);
            if !open.reuse {
                self.deliver(&gw, Box::new(tls), peer, web_target).await;
                return;
            }
            let mut link = ChunkedLink::new(tls);
            let back = match web_target {
                Some(target) => self.web_console(&mut link, target).await.then_some(link),
                None => {
                    let (lending, back) = Lending::new(link);
                    self.deliver(&gw, Box::new(lending), peer, None).await;
                    tokio::select! {
                        () = stop.cancelled() => None,
                        r = back => r.ok(),
                    }
                }
            };
            let Some(mut link) = back else { return };
            // The server side is done with the device: its direction ends too, and the
            // gateway's is read to its end. Reused only then, and if a place is free.
            let limit = Duration::from_millis(self.config.connect_timeout_ms.min(1_000));
            if !link.settle(limit, 256 * 1024).await {
                return;
            }
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                return;
            };
            place = Some(PoolPlace::new(slot, &self.stats));
            self.stats.pool_reused.fetch_add(1, Ordering::Relaxed);
            tls = link.into_inner();
        }
    }

    /// Waits on an idle pooled connection for the gateway's `TunnelOpen` (at most
    /// `pool_idle_ms`) and answers it: `TunnelAccept`, or a `Refusal` (then `None`, as for
    /// every end of the connection). With the open, the Web Console target it goes to, if
    /// it is a console tunnel.
    async fn claimed(
        &self,
        tls: &mut DataLink,
        stop: &CancellationToken,
    ) -> Option<(TunnelOpen, Option<SocketAddr>)> {
        let idle = Duration::from_millis(self.config.pool_idle_ms);
        let first = tokio::select! {
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(idle) => {
                self.stats.pool_recycled.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            m = read_message(tls, self.config.max_frame_len) => m,
        };
        let open = match first {
            Ok(Message::TunnelOpen(open)) => open,
            // The gateway refused the ticket, closed the connection, or spoke out of turn.
            Ok(Message::Refusal(r)) => {
                tracing::warn!("the gateway refused a pool ticket: {}", r.reason);
                return None;
            }
            Ok(other) => {
                tracing::warn!(
                    "{} on an idle pooled connection",
                    other.message_type().name()
                );
                return None;
            }
            Err(_) => return None,
        };
        let channel = open
            .peer
            .as_ref()
            .and_then(|p| ChannelKind::try_from(p.channel).ok())
            .unwrap_or(ChannelKind::Unspecified);
        let web_target = match (channel, self.config.web_console_target) {
            (ChannelKind::WebConsole, None) => {
                let refusal = Refusal {
                    code: RefusalCode::NotAuthorized as i32,
                    reason: "no Web Console target is configured on the server side".into(),
                };
                let _ = write_message(tls, refusal).await;
                return None;
            }
            (ChannelKind::WebConsole, Some(t)) => Some(t),
            _ => None,
        };
        let accept = TunnelAccept {
            idle_timeout_ms: u32::try_from(self.config.idle_timeout_ms).unwrap_or(u32::MAX),
            reuse: open.reuse,
        };
        let limit = Duration::from_millis(self.config.connect_timeout_ms);
        if !matches!(
            tokio::time::timeout(limit, write_message(tls, accept)).await,
            Ok(Ok(()))
        ) {
            return None;
        }
        Some((open, web_target))
    }
}

/// A data connection the connector opened.
type DataLink = tokio_rustls::client::TlsStream<TcpStream>;

/// The server's half of one signal session's warm pool: at most `pool_size` connections
/// open, opening or idle, whatever the gateway grants; all closed when `stop` fires (the
/// session's end).
struct SessionPool {
    size: usize,
    slots: Arc<Semaphore>,
    /// Tickets waiting for a place.
    waiting: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl SessionPool {
    fn new(size: usize, stop: CancellationToken) -> Self {
        SessionPool {
            size,
            slots: Arc::new(Semaphore::new(size)),
            waiting: Arc::new(AtomicUsize::new(0)),
            stop,
        }
    }

    /// Opens a pooled connection for each ticket of `grant` (session `session` of `gw`).
    /// A ticket may come while the connection it replaces is still being claimed (the
    /// gateway counts it gone when it takes it, the server when it reads its `TunnelOpen`):
    /// it waits for that place, within the ticket's lifetime. At most `size` wait so; the
    /// rest are not used.
    fn open(&self, link: &Arc<Link>, gw: &DmzGatewayEntry, session: u64, grant: PoolTickets) {
        let expires = Duration::from_millis(u64::from(grant.expires_in_ms));
        for ticket in grant.tickets {
            let Some(wait) = PoolWait::enter(&self.waiting, self.size) else {
                link.stats
                    .pool_tickets_unused
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let (this, gw, stop) = (link.clone(), gw.clone(), self.stop.clone());
            let slots = self.slots.clone();
            link.tracker.spawn(
                async move {
                    let slot = tokio::select! {
                        () = stop.cancelled() => return,
                        r = tokio::time::timeout(expires, slots.clone().acquire_owned()) => r,
                    };
                    drop(wait);
                    let Ok(Ok(slot)) = slot else {
                        this.stats
                            .pool_tickets_unused
                            .fetch_add(1, Ordering::Relaxed);
                        return;
                    };
                    let place = PoolPlace::new(slot, &this.stats);
                    this.pooled(gw, session, ticket, place, stop, slots).await
                }
                .instrument(tracing::Span::current()),
            );
        }
    }
}

/// A pool ticket waiting for a place: at most `pool_size` at once.
struct PoolWait(Arc<AtomicUsize>);

impl PoolWait {
    fn enter(waiting: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| PoolWait(waiting.clone()))
    }
}

impl Drop for PoolWait {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A pooled connection's place among its session's `pool_size`, counted in
/// [`ConnectorStats::pool_open`] while held.
struct PoolPlace {
    _slot: OwnedSemaphorePermit,
    stats: Arc<ConnectorStats>,
}

impl PoolPlace {
    fn new(slot: OwnedSemaphorePermit, stats: &Arc<ConnectorStats>) -> Self {
        stats.pool_open.fetch_add(1, Ordering::Relaxed);
        PoolPlace {
            _slot: slot,
            stats: stats.clone(),
        }
    }
}

impl Drop for PoolPlace {
    fn drop(&mut self) {
        self.stats.pool_open.fetch_sub(1, Ordering::Relaxed);
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
