//! The tokio driver: carries out the [`AgentCore`]'s actions over a real TLS connection,
//! feeds it what happens, and keeps the settings store and discovery beside it.

use std::collections::BTreeMap;
use std::future::pending;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use futures_util::{SinkExt, StreamExt};
use outpost_pki::tls::{TlsOptions, agent_client_config};
use outpost_wire::messages::Severity;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::rustls::ClientConfig;
use tracing::Instrument;

use crate::AgentError;
use crate::config::AgentConfig;
use crate::discovery::{self, DiscoveryHandle};
use crate::distribution::DistributionStatus;
use crate::distribution::plane::{self, Done, Plane};
use crate::identity::{self, Connection};
use crate::overlay;
use crate::protocol::{Action, AgentCore, CoreConfig, CoreStatus, Input, LocalStatus, Notice};
use crate::push::PushVerifier;
use crate::renewal::{self, Clock, Renewal, RenewalStatus, Step, Validity};
use crate::store::{SettingsStore, free_disk_bytes};

/// What the agent is doing, published after every step.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AgentStatus {
    /// The core's state and counters.
    pub core: CoreStatus,
    /// The certificate, its reserve, and the switches made.
    pub renewal: RenewalStatus,
    /// Why the agent stopped, once it has.
    pub stopped: Option<String>,
}

enum Command {
    Event {
        kind: String,
        severity: Severity,
        body: String,
    },
    Shutdown,
}

/// A running Network Agent, started by [`Agent::start`]. Dropping it stops its task at
/// once; [`shutdown`](Agent::shutdown) stops it in order.
#[derive(Debug)]
pub struct Agent {
    cmd: mpsc::Sender<Command>,
    pub(crate) status: watch::Receiver<AgentStatus>,
    settings: Arc<Mutex<SettingsStore>>,
    local: BTreeMap<String, Value>,
    task: Option<JoinHandle<Result<(), AgentError>>>,
    enrolled: bool,
    discovery_addr: Option<SocketAddr>,
    distribution: Option<Arc<Mutex<DistributionStatus>>>,
    unicast_served: Option<Arc<std::sync::atomic::AtomicU64>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Agent {
    /// Validates `config`, loads the identity from the data directory (enrolling first if
    /// there is none), opens the settings store, starts discovery if enabled and starts
    /// connecting. Returns once the agent runs.
    ///
    /// # Errors
    /// A configuration, file, enrollment or discovery error; connection failures after
    /// this point are retried with backoff and show in [`Agent::status`].
    pub async fn start(config: AgentConfig) -> Result<Agent, AgentError> {
        Agent::start_with_clock(config, renewal::system_clock()).await
    }

    /// [`Agent::start`] with certificate renewal scheduled by `clock` instead of the system's
    /// (a simulation, or a test that moves time on). TLS still checks certificates against
    /// the system's clock.
    ///
    /// # Errors
    /// As [`Agent::start`].
    pub async fn start_with_clock(config: AgentConfig, clock: Clock) -> Result<Agent, AgentError> {
        let span = tracing::info_span!("agent", device = %config.device_id);
        Agent::start_in_span(config, clock).instrument(span).await
    }

    async fn start_in_span(config: AgentConfig, clock: Clock) -> Result<Agent, AgentError> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir)
            .map_err(AgentError::io("create", &config.data_dir))?;
        let (id, enrolled) = identity::load_or_enroll(&config).await?;
        let reserve = identity::load_reserve(&config.data_dir).unwrap_or_else(|e| {
            tracing::warn!("the reserve certificate is unusable and is asked for again: {e}");
            None
        });
        let renewal = Renewal::new(
            config.renewal.schedule(),
            Validity::of(&id.cert),
            reserve.as_ref().map(Validity::of),
        );
        let tls: SharedTls = Arc::new(Mutex::new(agent_client_config(
            &id.cert,
            &id.ca,
            &TlsOptions::default(),
        )?));
        let settings = Arc::new(Mutex::new(SettingsStore::open(&config.data_dir)?));
        // Signed "sync now" datagrams arrive on the discovery port; they are trusted when
        // signed by the certificate of the server this agent enrolls with.
        let (push_tx, pushes) = match (&config.enrollment.server, config.discovery.enabled) {
            (Some(server), true) => {
                let (tx, rx) = mpsc::channel(64);
                let verifier = PushVerifier::new(
                    outpost_pki::CertChecker::new(&id.ca, &[])?,
                    server.name.clone(),
                    config.device_id.clone(),
                    PUSH_MAX_AGE,
                );
                (Some(tx), Some((rx, verifier)))
            }
            _ => (None, None),
        };
        let discovery = if config.discovery.enabled {
            Some(discovery::spawn_with_pushes(
                &config.device_id,
                &config.discovery,
                push_tx,
            )?)
        } else {
            None
        };
        let discovery_addr = discovery.as_ref().map(DiscoveryHandle::local_addr);
        let now = Instant::now();
        let held = lock(&settings).versions();
        let mut core = AgentCore::new(
            CoreConfig::from_agent(&config, outpost_wire::backoff::seed_for(&config.device_id)),
            held,
            now,
        );
        let (status_tx, status) = watch::channel(AgentStatus {
            core: core.status(),
            renewal: RenewalStatus {
                active: renewal.active(),
                reserve: renewal.reserve(),
                switches: 0,
            },
            stopped: None,
        });
        let (plane, plane_done) = if config.distribution.enabled {
            let (p, done) = Plane::start(plane::Params {
                device_id: config.device_id.clone(),
                data_dir: config.data_dir.clone(),
                cfg: config.distribution.clone(),
                tls: tls.clone(),
                endpoints: config.endpoints.clone(),
                timeout: Duration::from_millis(config.request_timeout_ms),
            })
            .await?;
            (Some(p), Some(done))
        } else {
            (None, None)
        };
        let distribution = plane.as_ref().map(Plane::status);
        let unicast_served = plane.as_ref().and_then(Plane::served_counter);
        if let Some(p) = &plane {
            core.set_dp_status(p.dp_status());
        }
        let (cmd, cmd_rx) = mpsc::channel(1024);
        let driver = Driver {
            plane,
            plane_done,
            core,
            tls,
            ca: id.ca,
            renewal,
            clock,
            pending_key: None,
            switches: 0,
            config: config.clone(),
            settings: settings.clone(),
            discovery,
            pushes,
            conn: None,
            status: status_tx,
        };
        let task = tokio::spawn(driver.run(cmd_rx).in_current_span());
        Ok(Agent {
            cmd,
            status,
            settings,
            local: config.local_settings,
            task: Some(task),
            enrolled,
            discovery_addr,
            distribution,
            unicast_served,
        })
    }
}

impl Agent {
    /// Whether this start enrolled (rather than loading a stored identity).
    pub fn enrolled(&self) -> bool {
        self.enrolled
    }

    /// The discovery socket's address, if discovery runs.
    pub fn discovery_addr(&self) -> Option<SocketAddr> {
        self.discovery_addr
    }

    /// Update distribution: roles, updates in progress, sessions sent (`None` when
    /// `distribution.enabled` is off).
    pub fn distribution(&self) -> Option<DistributionStatus> {
        let mut d = self.distribution.as_ref().map(|d| lock(d).clone())?;
        if let Some(c) = &self.unicast_served {
            d.unicast_bytes_served = c.load(std::sync::atomic::Ordering::Relaxed);
        }
        Some(d)
    }

    /// The latest status.
    pub fn status(&self) -> AgentStatus {
        self.status.borrow().clone()
    }

    /// Waits until `pred` holds for the status, at most `timeout`.
    ///
    /// # Errors
    /// [`AgentError::Protocol`] describing the last status if the time runs out, or
    /// [`AgentError::Stopped`] if the agent stops first.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&AgentStatus) -> bool,
    ) -> Result<AgentStatus, AgentError> {
        let mut rx = self.status.clone();
        let r = tokio::time::timeout(timeout, rx.wait_for(|s| pred(s))).await;
        match r {
            Ok(Ok(s)) => Ok(s.clone()),
            Ok(Err(_)) => Err(AgentError::Stopped),
            Err(_) => Err(AgentError::Protocol(format!(
                "condition not met within {timeout:?}; status {:?}",
                self.status()
            ))),
        }
    }

    /// The received settings document of `application` and its version.
    pub fn settings(&self, application: &str) -> Option<(u64, Value)> {
        lock(&self.settings)
            .get(application)
            .map(|s| (s.version, s.document.clone()))
    }

    /// The effective settings of `application`: the received document with the configured
    /// local settings overlaid on the paths it does not lock ([`overlay::effective`]);
    /// `None` until the server has sent a document for it.
    pub fn effective(&self, application: &str) -> Option<Value> {
        let store = lock(&self.settings);
        let doc = &store.get(application)?.document;
        Some(overlay::effective(doc, self.local.get(application)))
    }

    /// Queues an event for the server.
    ///
    /// # Errors
    /// [`AgentError::Stopped`] if the agent is no longer running.
    pub async fn push_event(
        &self,
        kind: &str,
        severity: Severity,
        body: &str,
    ) -> Result<(), AgentError> {
        self.cmd
            .send(Command::Event {
                kind: kind.into(),
                severity,
                body: body.into(),
            })
            .await
            .map_err(|_| AgentError::Stopped)
    }

    /// Runs until the agent stops by itself (a `NotAuthorized` refusal) and returns why.
    ///
    /// # Errors
    /// [`AgentError::Refused`] with the server's reason.
    pub async fn wait(mut self) -> Result<(), AgentError> {
        match self.task.take() {
            Some(t) => t.await.unwrap_or(Err(AgentError::Stopped)),
            None => Ok(()),
        }
    }

    /// Stops the agent: closes the connection and discovery.
    pub async fn shutdown(mut self) {
        let _ = self.cmd.send(Command::Shutdown).await;
        if let Some(t) = self.task.take() {
            let abort = t.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// The TLS configuration every connection of the agent is made with; replaced when the agent
/// switches to its reserve certificate.
pub(crate) type SharedTls = Arc<Mutex<Arc<ClientConfig>>>;

/// Longest wait between two looks at the renewal schedule (the wall clock may jump).
const RENEWAL_LOOK: Duration = Duration::from_secs(3600);

struct Driver {
    core: AgentCore,
    tls: SharedTls,
    ca: outpost_pki::CaCertificate,
    renewal: Renewal,
    clock: Clock,
    /// The key of the reserve asked for.
    pending_key: Option<outpost_pki::KeyPair>,
    switches: u64,
    config: AgentConfig,
    settings: Arc<Mutex<SettingsStore>>,
    discovery: Option<DiscoveryHandle>,
    pushes: Option<(mpsc::Receiver<Vec<u8>>, PushVerifier)>,
    conn: Option<Connection>,
    status: watch::Sender<AgentStatus>,
    plane: Option<Plane>,
    plane_done: Option<mpsc::UnboundedReceiver<Done>>,
}

/// How old a signed "sync now" datagram may be (or how far ahead of the local clock).
const PUSH_MAX_AGE: Duration = Duration::from_secs(300);

async fn next_push(
    pushes: &mut Option<(mpsc::Receiver<Vec<u8>>, PushVerifier)>,
) -> Option<Vec<u8>> {
    match pushes {
        Some((rx, _)) => rx.recv().await,
        None => pending().await,
    }
}

async fn next_done(done: &mut Option<mpsc::UnboundedReceiver<Done>>) -> Option<Done> {
    match done {
        Some(rx) => rx.recv().await,
        None => pending().await,
    }
}

async fn next_message(
    conn: &mut Option<Connection>,
) -> Option<Result<outpost_wire::Message, outpost_wire::WireError>> {
    match conn {
        Some(c) => c.next().await,
        None => pending().await,
    }
}

impl Driver {
    fn refresh_local_status(&mut self, now: Instant) {
        let peers = self
            .discovery
            .as_ref()
            .map(|d| d.visible(now))
            .unwrap_or_default();
        self.core.set_local_status(LocalStatus::new(
            free_disk_bytes(&self.config.data_dir),
            peers,
        ));
    }

    fn publish(&self, stopped: Option<String>) {
        self.status.send_replace(AgentStatus {
            core: self.core.status(),
            renewal: RenewalStatus {
                active: self.renewal.active(),
                reserve: self.renewal.reserve(),
                switches: self.switches,
            },
            stopped,
        });
    }

    /// Whether the renewal schedule can act now: a reserve is asked for on a ready
    /// connection; a switch needs none.
    fn renewal_can_act(&self) -> bool {
        self.renewal.reserve().is_some()
            || self.core.status().phase == crate::protocol::Phase::Ready
    }

    /// Carries out what the renewal schedule says at the clock's time.
    fn renew(&mut self) {
        if !self.renewal_can_act() {
            return;
        }
        let now = (self.clock)();
        match self.renewal.poll(now) {
            Step::RequestReserve => match identity::reserve_request() {
                Ok((key, csr)) => {
                    if self.core.request_renewal(csr.into(), Instant::now()) {
                        tracing::info!(
                            "asking for the certificate that succeeds the one ending {}",
                            unix_time(self.renewal.active().not_after)
                        );
                        self.pending_key = Some(key);
                    } else {
                        self.renewal.request_failed(now);
                    }
                }
                Err(e) => {
                    tracing::error!("{e}");
                    self.renewal.request_failed(now);
                }
            },
            Step::Switch => {
                let switched = identity::switch_to_reserve(&self.config.data_dir)
                    .and_then(|c| Ok(agent_client_config(&c, &self.ca, &TlsOptions::default())?));
                match switched {
                    Ok(tls) => {
                        *lock(&self.tls) = tls;
                        self.renewal.switched();
                        self.switches += 1;
                        tracing::info!(
                            "switched to the reserve certificate (valid until {})",
                            unix_time(self.renewal.active().not_after)
                        );
                        self.core
                            .reconnect_now("switched to the reserve certificate", Instant::now());
                    }
                    Err(e) => {
                        tracing::error!(
                            "cannot switch to the reserve certificate, asking for another: {e}"
                        );
                        self.renewal.reserve_lost(now);
                    }
                }
            }
            _ => {}
        }
    }

    /// The reserve asked for arrived: checked, then stored.
    fn take_reserve(&mut self, resp: &outpost_wire::messages::RenewResponse) {
        let now = (self.clock)();
        let Some(key) = self.pending_key.take() else {
            self.renewal.request_failed(now);
            return;
        };
        let checked = identity::reserve_from(
            resp,
            &key,
            &self.ca,
            &self.config.device_id,
            SystemTime::now(),
        );
        let cert = match checked {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("the reserve certificate is refused: {e}");
                self.renewal.request_failed(now);
                return;
            }
        };
        if let Err(e) = self.renewal.reserve_received(Validity::of(&cert)) {
            tracing::warn!("{e}");
            return;
        }
        match identity::save_reserve(&self.config.data_dir, &cert) {
            Ok(()) => tracing::info!(
                "reserve certificate stored (valid until {})",
                unix_time(Validity::of(&cert).not_after)
            ),
            Err(e) => {
                tracing::error!("the reserve certificate could not be stored: {e}");
                self.renewal.reserve_lost(now);
            }
        }
    }

    /// How long until the renewal schedule must be looked at again, if it can act.
    fn renewal_wait(&self) -> Option<Duration> {
        if !self.renewal_can_act() {
            return None;
        }
        let at = self.renewal.poll_timeout()?;
        Some(
            at.duration_since((self.clock)())
                .unwrap_or(Duration::ZERO)
                .min(RENEWAL_LOOK),
        )
    }

    async fn run(mut self, mut cmds: mpsc::Receiver<Command>) -> Result<(), AgentError> {
        self.refresh_local_status(Instant::now());
        self.core.start(Instant::now());
        loop {
            self.renew();
            let acted = self.act().await;
            self.log_notices();
            if let Err(e) = acted {
                self.publish(Some(e.to_string()));
                return Err(e);
            }
            self.publish(None);
            let deadline = self.core.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => pending().await,
                }
            };
            let renewal = self.renewal_wait();
            let renewal_due = async {
                match renewal {
                    Some(d) => tokio::time::sleep(d).await,
                    None => pending().await,
                }
            };
            tokio::select! {
                () = renewal_due => {}
                m = next_message(&mut self.conn) => {
                    let now = Instant::now();
                    self.refresh_local_status(now);
                    let input = match m {
                        Some(Ok(m)) => Input::Received(m),
                        Some(Err(e)) => {
                            self.conn = None;
                            Input::Disconnected(e.to_string())
                        }
                        None => {
                            self.conn = None;
                            Input::Disconnected("closed by the peer".into())
                        }
                    };
                    self.core.handle(input, now);
                }
                Some(d) = next_push(&mut self.pushes) => {
                    let now = Instant::now();
                    let verified = self.pushes.as_ref().map(|(_, v)| v.verify(&d, SystemTime::now()));
                    match verified {
                        Some(Ok(nonce)) => self.core.sync_now_from_outside(nonce, now),
                        Some(Err(e)) => tracing::warn!("{e}"),
                        None => {}
                    }
                }
                Some(d) = next_done(&mut self.plane_done) => {
                    if self.plane.as_mut().is_some_and(|p| p.on_done(&d)) {
                        self.core.set_update_held(&d.ann.object_id, d.ann.version);
                        self.core.sync_soon(Instant::now());
                    }
                }
                () = sleep => {
                    let now = Instant::now();
                    self.refresh_local_status(now);
                    self.core.handle_timeout(now);
                }
                c = cmds.recv() => match c {
                    Some(Command::Event { kind, severity, body }) => {
                        let ms = SystemTime::now()
                            .duration_since(SystemTime::UNIX_EPOCH)
                            .map_or(0, |d| d.as_millis() as i64);
                        self.core.push_event(&kind, severity, &body, ms, Instant::now());
                    }
                    Some(Command::Shutdown) | None => {
                        self.conn = None;
                        self.publish(Some("shut down".into()));
                        return Ok(());
                    }
                },
            }
        }
    }

    /// Carries out every pending action.
    /// Turns the core's notices into log records.
    fn log_notices(&mut self) {
        while let Some(n) = self.core.poll_notice() {
            match n {
                Notice::InputIgnored { input, phase } => {
                    tracing::debug!(input, ?phase, "input ignored in this phase");
                }
                Notice::NonceRepeated(nonce) => {
                    tracing::debug!(nonce, "sync-now nonce seen before; ignored");
                }
                Notice::Retrying { delay, after } => {
                    tracing::info!("retrying in {delay:?} ({})", after.as_deref().unwrap_or(""));
                }
                Notice::ConnectionLost(reason) => tracing::warn!("{reason}"),
                Notice::NotAuthorized(reason) => {
                    tracing::error!("refused, not authorized: {reason}");
                }
                Notice::SyncRequested(reason) => tracing::info!("sync now ({reason})"),
            }
        }
    }

    async fn act(&mut self) -> Result<(), AgentError> {
        while let Some(a) = self.core.poll_action() {
            match a {
                Action::Connect(ep) => {
                    self.publish(None);
                    let tls = lock(&self.tls).clone();
                    let r = identity::dial(tls, &ep, self.config.connect_timeout()).await;
                    let now = Instant::now();
                    match r {
                        Ok(c) => {
                            tracing::info!("connected to {} at {}", ep.name, ep.addr);
                            self.conn = Some(c);
                            self.core.handle(Input::Connected, now);
                        }
                        Err(e) => self.core.handle(Input::ConnectFailed(e.to_string()), now),
                    }
                }
                Action::Send(m) => {
                    let Some(c) = self.conn.as_mut() else {
                        continue;
                    };
                    let t = Duration::from_millis(self.config.request_timeout_ms);
                    let r = match tokio::time::timeout(t, c.send(m)).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err(format!("send blocked for {t:?}")),
                    };
                    if let Err(e) = r {
                        self.conn = None;
                        self.core.handle(Input::Disconnected(e), Instant::now());
                    }
                }
                Action::Close => {
                    if let Some(mut c) = self.conn.take() {
                        let _ = tokio::time::timeout(
                            Duration::from_millis(200),
                            SinkExt::<outpost_wire::Message>::close(&mut c),
                        )
                        .await;
                    }
                }
                Action::ApplySettings { settings, removed } => {
                    let mut store = lock(&self.settings);
                    for s in settings {
                        if let Err(e) = store.put(&s.application, s.version, &s.json) {
                            tracing::error!("{e}");
                            self.core.forget_settings(&s.application);
                        }
                    }
                    for app in removed {
                        if let Err(e) = store.remove(&app) {
                            tracing::error!("{e}");
                        }
                    }
                }
                Action::Distribution {
                    assignments,
                    updates,
                } => {
                    if let Some(p) = self.plane.as_mut() {
                        p.apply(&assignments, updates);
                        self.core.set_dp_status(p.dp_status());
                    }
                }
                Action::Renewed(resp) => self.take_reserve(&resp),
                Action::RenewalFailed(reason) => {
                    tracing::warn!("no reserve certificate: {reason}");
                    self.pending_key = None;
                    self.renewal.request_failed((self.clock)());
                }
                Action::Stop { code, reason } => {
                    self.conn = None;
                    return Err(AgentError::Refused { code, reason });
                }
            }
        }
        Ok(())
    }
}

/// `t` as seconds since the Unix epoch, for logs.
fn unix_time(t: SystemTime) -> String {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or_else(
        |_| "before 1970".into(),
        |d| format!("Unix time {}", d.as_secs()),
    )
}
