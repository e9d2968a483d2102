//! The sans-IO agent: a state machine fed with what happened (connected, a message, a timer)
//! and the current time, answering with actions (connect, send, apply settings, close). It
//! never reads the clock and never touches a socket; [`crate::Agent`] drives it over TLS.
//!
//! Life of a connection: `Connect` to the endpoints in order until one connects; `Hello`,
//! wait for `HelloAck`; then a sync at once, and every interval the server gives (clamped to
//! [`MIN_SYNC`]..=[`MAX_SYNC`]); events in batches; a keepalive after a quiet period. Any
//! unanswered request past the timeout, a lost connection or a refusal other than
//! `NotAuthorized` closes the connection and retries after the backoff delay, from the first
//! endpoint again. A `NotAuthorized` refusal stops the agent.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use outpost_wire::messages::{
    AppSettings, DpAssignment, DpStatus, Event, EventBatch, HeldVersion, Hello, Keepalive,
    ObjectKind, Refusal, RefusalCode, RenewRequest, RenewResponse, Role, Severity, SyncRequest,
    UpdateAnnouncement,
};
use outpost_wire::{Message, VersionRange};

use crate::config::{AgentConfig, Endpoint};
use outpost_wire::backoff::Backoff;

/// The shortest sync interval accepted from the server (a distribution point syncs at its
/// heartbeat interval, which may be this short).
pub const MIN_SYNC: Duration = Duration::from_secs(1);
/// The longest sync interval accepted from the server.
pub const MAX_SYNC: Duration = Duration::from_secs(24 * 3600);
/// How many "sync now" nonces are remembered to ignore repeats.
pub const NONCES_REMEMBERED: usize = 256;

/// Something that happened, for [`AgentCore::handle`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Input {
    /// The connection asked for by [`Action::Connect`] is up (TLS done).
    Connected,
    /// The connection asked for could not be made.
    ConnectFailed(String),
    /// The connection broke (closed, reset, undecodable bytes).
    Disconnected(String),
    /// A message arrived.
    Received(Message),
}

impl Input {
    /// The input's kind, without its contents (for [`Notice::InputIgnored`]).
    pub fn kind(&self) -> &'static str {
        match self {
            Input::Connected => "connected",
            Input::ConnectFailed(_) => "connect failed",
            Input::Disconnected(_) => "disconnected",
            Input::Received(m) => m.message_type().name(),
        }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Action {
    /// Dial this endpoint, then report [`Input::Connected`] or [`Input::ConnectFailed`].
    Connect(Endpoint),
    /// Send this message on the current connection.
    Send(Message),
    /// Close the current connection (no [`Input::Disconnected`] needed after it).
    Close,
    /// Store these settings documents and drop these applications' documents.
    ApplySettings {
        /// New or changed documents.
        settings: Vec<AppSettings>,
        /// Applications whose documents are dropped.
        removed: Vec<String>,
    },
    /// What the last sync said about distribution: the DP assignments (this device's own
    /// roles, and the DP serving it) and the updates it does not hold yet. Emitted after
    /// every sync answer, so an empty list means "none any more".
    Distribution {
        /// DP assignments.
        assignments: Vec<DpAssignment>,
        /// Updates announced.
        updates: Vec<UpdateAnnouncement>,
    },
    /// The reserve certificate asked for with [`AgentCore::request_renewal`] arrived.
    Renewed(RenewResponse),
    /// The request for a reserve certificate failed: refused, unanswered, or the connection
    /// was lost first.
    RenewalFailed(String),
    /// Stop for good: the server refused this agent.
    Stop {
        /// The refusal code's name.
        code: String,
        /// The reason given.
        reason: String,
    },
}

/// Something the operator may want to know, from [`AgentCore::poll_notice`]. The core does
/// not log; its driver turns these into log records. Only the latest
/// [`NOTICES_KEPT`] are kept when nobody polls.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Notice {
    /// An input that does not fit the current phase was ignored.
    InputIgnored {
        /// The input's kind.
        input: &'static str,
        /// The phase it arrived in.
        phase: Phase,
    },
    /// A "sync now" push repeated a nonce already seen, and was ignored.
    NonceRepeated(u64),
    /// The next connection round starts after this delay.
    Retrying {
        /// The backoff delay.
        delay: Duration,
        /// Why the previous round ended, if known.
        after: Option<String>,
    },
    /// The connection was lost or given up.
    ConnectionLost(String),
    /// The server refused this agent as not authorized; the agent stops.
    NotAuthorized(String),
    /// The server asked for a sync now.
    SyncRequested(String),
}

/// How many notices are kept for [`AgentCore::poll_notice`].
pub const NOTICES_KEPT: usize = 64;

/// The connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// Not connected; waiting for the backoff delay (or for [`AgentCore::start`]).
    Waiting,
    /// Dialling an endpoint.
    Connecting,
    /// Hello sent, waiting for HelloAck.
    Handshaking,
    /// Connected and synchronising.
    Ready,
    /// Stopped for good.
    Stopped,
}

/// What the agent knows about the device at the time of a sync.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LocalStatus {
    /// Free disk bytes of the data directory's file system.
    pub free_disk_bytes: u64,
    /// Peers heard in the broadcast domain.
    pub visible_peers: Vec<String>,
}

impl LocalStatus {
    /// A status with these values.
    pub fn new(free_disk_bytes: u64, visible_peers: Vec<String>) -> Self {
        LocalStatus {
            free_disk_bytes,
            visible_peers,
        }
    }
}

/// Counters and state, for display and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CoreStatus {
    /// The connection state.
    pub phase: Phase,
    /// The endpoint of the current (or last tried) connection.
    pub endpoint: Option<Endpoint>,
    /// Connections that reached `Ready`.
    pub connections: u64,
    /// Sync answers received.
    pub syncs: u64,
    /// The sync interval in force.
    pub sync_interval: Duration,
    /// Events waiting for an acknowledgement.
    pub events_queued: usize,
    /// Events dropped because the queue was full.
    pub events_dropped: u64,
    /// Events the server acknowledged.
    pub events_acknowledged: u64,
    /// "Sync now" pushes acted on.
    pub pushes: u64,
    /// Why the last connection ended or failed; `None` from the moment a connection is
    /// `Ready` again.
    pub last_error: Option<String>,
}

/// The parameters of the core, taken from [`AgentConfig`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CoreConfig {
    /// The device id.
    pub device_id: String,
    /// Endpoints, tried in order.
    pub endpoints: Vec<Endpoint>,
    /// First backoff delay.
    pub backoff_initial: Duration,
    /// Largest backoff delay.
    pub backoff_max: Duration,
    /// Jitter seed.
    pub seed: u64,
    /// Sync interval before the server names one.
    pub default_sync: Duration,
    /// Time allowed for any answer.
    pub request_timeout: Duration,
    /// Quiet time before a keepalive.
    pub keepalive: Duration,
    /// Event queue bound.
    pub event_queue: usize,
    /// Events per batch.
    pub event_batch: usize,
    /// Reported in every sync.
    pub on_corporate_network: bool,
}

impl CoreConfig {
    /// From a validated agent configuration; `seed` is used when the configuration names
    /// none.
    pub fn from_agent(c: &AgentConfig, seed: u64) -> Self {
        CoreConfig {
            device_id: c.device_id.clone(),
            endpoints: c.endpoints.clone(),
            backoff_initial: Duration::from_millis(c.backoff.initial_ms),
            backoff_max: Duration::from_millis(c.backoff.max_ms),
            seed: c.backoff.seed.unwrap_or(seed),
            default_sync: Duration::from_secs(c.default_sync_secs),
            request_timeout: Duration::from_millis(c.request_timeout_ms),
            keepalive: Duration::from_millis(c.keepalive_ms),
            event_queue: c.event_queue.max(1),
            event_batch: c.event_batch.max(1),
            on_corporate_network: c.on_corporate_network,
        }
    }
}

/// The sans-IO Network Agent.
#[derive(Debug)]
pub struct AgentCore {
    cfg: CoreConfig,
    started: Instant,
    phase: Phase,
    endpoint_idx: usize,
    retry_at: Option<Instant>,
    handshake_since: Option<Instant>,
    backoff: Backoff,
    actions: VecDeque<Action>,
    notices: VecDeque<Notice>,
    held: BTreeMap<String, u64>,
    held_updates: BTreeMap<String, u64>,
    dp_status: Vec<DpStatus>,
    status: LocalStatus,
    sync_interval: Duration,
    next_sync: Option<Instant>,
    sync_sent: Option<Instant>,
    sync_pending: bool,
    events: VecDeque<Event>,
    next_event_id: u64,
    batch_sent: Option<(u64, Instant)>,
    last_traffic: Instant,
    keepalive_sent: Option<(u64, Instant)>,
    keepalive_seq: u64,
    renew_sent: Option<Instant>,
    nonces: VecDeque<u64>,
    nonce_set: HashSet<u64>,
    connections: u64,
    syncs: u64,
    pushes: u64,
    dropped: u64,
    acked: u64,
    last_error: Option<String>,
}

/// The agent's opening message on any connection: the versions it speaks, its role and id.
pub fn hello(device_id: &str) -> Message {
    Message::from(Hello {
        min_version: VersionRange::CURRENT.min,
        max_version: VersionRange::CURRENT.max,
        role: Role::Agent as i32,
        node_id: device_id.into(),
        software: concat!("outpost-agent ", env!("CARGO_PKG_VERSION")).into(),
    })
}

/// Clamps a server-given interval (0 keeps `current`).
pub fn clamp_interval(secs: u32, current: Duration) -> Duration {
    if secs == 0 {
        return current;
    }
    Duration::from_secs(u64::from(secs)).clamp(MIN_SYNC, MAX_SYNC)
}

impl AgentCore {
    /// A core created at `now`, holding the settings versions in `held`.
    pub fn new(cfg: CoreConfig, held: BTreeMap<String, u64>, now: Instant) -> Self {
        let backoff = Backoff::new(cfg.backoff_initial, cfg.backoff_max, cfg.seed);
        let sync_interval = cfg.default_sync.clamp(MIN_SYNC, MAX_SYNC);
        AgentCore {
            started: now,
            phase: Phase::Waiting,
            endpoint_idx: 0,
            retry_at: None,
            handshake_since: None,
            backoff,
            actions: VecDeque::new(),
            notices: VecDeque::new(),
            held,
            held_updates: BTreeMap::new(),
            dp_status: Vec::new(),
            status: LocalStatus::default(),
            sync_interval,
            next_sync: None,
            sync_sent: None,
            sync_pending: false,
            events: VecDeque::new(),
            next_event_id: 1,
            batch_sent: None,
            last_traffic: now,
            keepalive_sent: None,
            keepalive_seq: 0,
            renew_sent: None,
            nonces: VecDeque::new(),
            nonce_set: HashSet::new(),
            connections: 0,
            syncs: 0,
            pushes: 0,
            dropped: 0,
            acked: 0,
            last_error: None,
            cfg,
        }
    }

    /// Starts connecting to the first endpoint.
    pub fn start(&mut self, now: Instant) {
        if self.phase == Phase::Waiting {
            self.begin_round(now);
        }
    }

    /// The next action to carry out, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next notice for the operator, oldest first.
    pub fn poll_notice(&mut self) -> Option<Notice> {
        self.notices.pop_front()
    }

    fn notice(&mut self, n: Notice) {
        if self.notices.len() == NOTICES_KEPT {
            self.notices.pop_front();
        }
        self.notices.push_back(n);
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let t = self.request_timeout();
        match self.phase {
            Phase::Waiting => self.retry_at,
            Phase::Connecting | Phase::Stopped => None,
            Phase::Handshaking => self.handshake_since.map(|s| s + t),
            Phase::Ready => [
                if self.sync_sent.is_none() {
                    self.next_sync
                } else {
                    None
                },
                self.sync_sent.map(|s| s + t),
                self.batch_sent.map(|(_, s)| s + t),
                self.keepalive_sent.map(|(_, s)| s + t),
                self.renew_sent.map(|s| s + t),
                if self.keepalive_sent.is_none() {
                    Some(self.last_traffic + self.cfg.keepalive)
                } else {
                    None
                },
            ]
            .into_iter()
            .flatten()
            .min(),
        }
    }

    fn request_timeout(&self) -> Duration {
        self.cfg.request_timeout
    }

    /// Updates what the next sync reports.
    pub fn set_local_status(&mut self, status: LocalStatus) {
        self.status = status;
    }

    /// Records that this version of an update is held (verified on disk); syncs report it
    /// so the server stops announcing it.
    pub fn set_update_held(&mut self, object_id: &str, version: u64) {
        self.held_updates.insert(object_id.to_string(), version);
    }

    /// The distribution point status the next syncs carry (the DP's heartbeat details).
    pub fn set_dp_status(&mut self, status: Vec<DpStatus>) {
        self.dp_status = status;
    }

    /// Syncs as soon as possible: at once when connected and no sync is in flight, after the
    /// one in flight otherwise; when not connected, at the next connection (which syncs
    /// first anyway).
    pub fn sync_soon(&mut self, now: Instant) {
        if self.phase != Phase::Ready {
            return;
        }
        if self.sync_sent.is_some() {
            self.sync_pending = true;
        } else {
            self.send_sync(now);
        }
    }

    /// The settings versions held.
    pub fn held(&self) -> &BTreeMap<String, u64> {
        &self.held
    }

    /// Forgets an application's settings (the driver could not store them), so the next
    /// sync asks for them again.
    pub fn forget_settings(&mut self, application: &str) {
        self.held.remove(application);
    }

    /// The state and counters.
    pub fn status(&self) -> CoreStatus {
        CoreStatus {
            phase: self.phase,
            endpoint: self.cfg.endpoints.get(self.endpoint_idx).cloned(),
            connections: self.connections,
            syncs: self.syncs,
            sync_interval: self.sync_interval,
            events_queued: self.events.len(),
            events_dropped: self.dropped,
            events_acknowledged: self.acked,
            pushes: self.pushes,
            last_error: self.last_error.clone(),
        }
    }

    /// Queues an event (dropping the oldest past the bound) and sends it when connected.
    /// Returns its id.
    pub fn push_event(
        &mut self,
        kind: &str,
        severity: Severity,
        body: &str,
        time_unix_ms: i64,
        now: Instant,
    ) -> u64 {
        let id = self.next_event_id;
        self.next_event_id += 1;
        if self.events.len() >= self.cfg.event_queue {
            self.events.pop_front();
            self.dropped += 1;
        }
        self.events.push_back(Event {
            id,
            time_unix_ms,
            severity: severity as i32,
            kind: kind.into(),
            body: body.into(),
        });
        if self.phase == Phase::Ready {
            self.send_events(now);
        }
        id
    }

    /// Handles something that happened at `now`.
    pub fn handle(&mut self, input: Input, now: Instant) {
        match input {
            Input::Connected if self.phase == Phase::Connecting => {
                self.phase = Phase::Handshaking;
                self.handshake_since = Some(now);
                self.last_traffic = now;
                self.send(hello(&self.cfg.device_id), now);
            }
            Input::ConnectFailed(reason) if self.phase == Phase::Connecting => {
                let ep = &self.cfg.endpoints[self.endpoint_idx];
                self.last_error = Some(format!("{} ({}): {reason}", ep.name, ep.addr));
                if self.endpoint_idx + 1 < self.cfg.endpoints.len() {
                    self.endpoint_idx += 1;
                    self.actions.push_back(Action::Connect(
                        self.cfg.endpoints[self.endpoint_idx].clone(),
                    ));
                } else {
                    self.wait(now);
                }
            }
            Input::Disconnected(reason)
                if matches!(self.phase, Phase::Handshaking | Phase::Ready) =>
            {
                self.lost(format!("connection lost: {reason}"), now, false);
            }
            Input::Received(m) if matches!(self.phase, Phase::Handshaking | Phase::Ready) => {
                self.last_traffic = now;
                self.received(m, now);
            }
            other => self.notice(Notice::InputIgnored {
                input: other.kind(),
                phase: self.phase,
            }),
        }
    }

    /// Whether `nonce` is new (and remembers it); a push with a nonce seen before is ignored.
    fn fresh_nonce(&mut self, nonce: u64) -> bool {
        if !self.nonce_set.insert(nonce) {
            self.notice(Notice::NonceRepeated(nonce));
            return false;
        }
        self.nonces.push_back(nonce);
        if self.nonces.len() > NONCES_REMEMBERED
            && let Some(old) = self.nonces.pop_front()
        {
            self.nonce_set.remove(&old);
        }
        true
    }

    /// A verified "sync now" that came outside the connection (the server's signed UDP
    /// datagram): sync at once when connected; when waiting to reconnect, stop waiting and
    /// connect now. A nonce seen before is ignored.
    pub fn sync_now_from_outside(&mut self, nonce: u64, now: Instant) {
        if self.phase == Phase::Ready {
            let m = outpost_wire::messages::SyncNow {
                reason: "signed datagram".into(),
                nonce,
            };
            self.received(Message::from(m), now);
        } else if self.phase == Phase::Waiting && self.fresh_nonce(nonce) {
            self.pushes += 1;
            self.retry_at = Some(now);
            self.handle_timeout(now);
        }
    }

    /// Handles the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let t = self.request_timeout();
        match self.phase {
            Phase::Waiting => {
                if self.retry_at.is_some_and(|r| r <= now) {
                    self.begin_round(now);
                }
            }
            Phase::Handshaking => {
                if self.handshake_since.is_some_and(|s| s + t <= now) {
                    self.lost(format!("no HelloAck within {t:?}"), now, true);
                }
            }
            Phase::Ready => {
                let late = [
                    ("SyncResponse", self.sync_sent),
                    ("EventAck", self.batch_sent.map(|b| b.1)),
                    ("keepalive answer", self.keepalive_sent.map(|k| k.1)),
                    ("RenewResponse", self.renew_sent),
                ]
                .into_iter()
                .find(|(_, s)| s.is_some_and(|s| s + t <= now));
                if let Some((what, _)) = late {
                    self.lost(format!("no {what} within {t:?}"), now, true);
                    return;
                }
                if self.sync_sent.is_none() && self.next_sync.is_some_and(|n| n <= now) {
                    self.send_sync(now);
                }
                if self.keepalive_sent.is_none() && self.last_traffic + self.cfg.keepalive <= now {
                    self.keepalive_seq += 1;
                    self.keepalive_sent = Some((self.keepalive_seq, now));
                    self.send(
                        Message::from(Keepalive {
                            seq: self.keepalive_seq,
                            reply: false,
                        }),
                        now,
                    );
                }
            }
            Phase::Connecting | Phase::Stopped => {}
        }
    }

    fn begin_round(&mut self, _now: Instant) {
        self.phase = Phase::Connecting;
        self.retry_at = None;
        self.endpoint_idx = 0;
        self.actions
            .push_back(Action::Connect(self.cfg.endpoints[0].clone()));
    }

    fn wait(&mut self, now: Instant) {
        self.phase = Phase::Waiting;
        let delay = self.backoff.next_delay();
        self.retry_at = Some(now + delay);
        self.notice(Notice::Retrying {
            delay,
            after: self.last_error.clone(),
        });
    }

    fn lost(&mut self, reason: String, now: Instant, close: bool) {
        self.notice(Notice::ConnectionLost(reason.clone()));
        if self.renew_sent.take().is_some() {
            self.actions
                .push_back(Action::RenewalFailed(format!("no answer: {reason}")));
        }
        self.last_error = Some(reason);
        if close {
            self.actions.push_back(Action::Close);
        }
        self.handshake_since = None;
        self.sync_sent = None;
        self.sync_pending = false;
        self.batch_sent = None;
        self.keepalive_sent = None;
        self.next_sync = None;
        self.wait(now);
    }

    fn send(&mut self, m: Message, now: Instant) {
        self.last_traffic = now;
        self.actions.push_back(Action::Send(m));
    }

    fn send_sync(&mut self, now: Instant) {
        let req = SyncRequest {
            device_id: self.cfg.device_id.clone(),
            held: self
                .held
                .iter()
                .map(|(app, v)| HeldVersion {
                    kind: ObjectKind::Settings as i32,
                    id: app.clone(),
                    version: *v,
                })
                .chain(self.held_updates.iter().map(|(id, v)| HeldVersion {
                    kind: ObjectKind::Update as i32,
                    id: id.clone(),
                    version: *v,
                }))
                .collect(),
            on_corporate_network: self.cfg.on_corporate_network,
            free_disk_bytes: self.status.free_disk_bytes,
            uptime_secs: now.saturating_duration_since(self.started).as_secs(),
            visible_peers: self.status.visible_peers.clone(),
            dp_status: self.dp_status.clone(),
        };
        self.sync_sent = Some(now);
        self.sync_pending = false;
        self.send(Message::from(req), now);
    }

    fn send_events(&mut self, now: Instant) {
        if self.batch_sent.is_some() || self.events.is_empty() {
            return;
        }
        let events: Vec<Event> = self
            .events
            .iter()
            .take(self.cfg.event_batch)
            .cloned()
            .collect();
        let last = events.last().map_or(0, |e| e.id);
        self.batch_sent = Some((last, now));
        self.send(
            Message::from(EventBatch {
                device_id: self.cfg.device_id.clone(),
                events,
            }),
            now,
        );
    }

    fn refused(&mut self, r: Refusal, now: Instant) {
        let code = RefusalCode::try_from(r.code).unwrap_or(RefusalCode::Unspecified);
        let name = format!("{code:?}");
        if code == RefusalCode::NotAuthorized {
            self.notice(Notice::NotAuthorized(r.reason.clone()));
            self.last_error = Some(format!("refused ({name}): {}", r.reason));
            self.phase = Phase::Stopped;
            self.actions.push_back(Action::Close);
            self.actions.push_back(Action::Stop {
                code: name,
                reason: r.reason,
            });
        } else {
            self.lost(format!("refused ({name}): {}", r.reason), now, true);
        }
    }

    fn received(&mut self, m: Message, now: Instant) {
        if self.phase == Phase::Handshaking {
            match m {
                Message::HelloAck(a) if VersionRange::CURRENT.contains(a.version) => {
                    self.phase = Phase::Ready;
                    // Connected again: what made earlier attempts fail is over.
                    self.last_error = None;
                    self.handshake_since = None;
                    self.connections += 1;
                    self.backoff.reset();
                    self.send_sync(now);
                    self.send_events(now);
                }
                Message::HelloAck(a) => self.lost(
                    format!(
                        "the peer chose protocol version {}, outside {}",
                        a.version,
                        VersionRange::CURRENT
                    ),
                    now,
                    true,
                ),
                Message::Refusal(r) => self.refused(r, now),
                other => self.lost(
                    format!("expected HelloAck, got {}", other.message_type().name()),
                    now,
                    true,
                ),
            }
            return;
        }
        match m {
            Message::SyncResponse(r) => {
                if self.sync_sent.take().is_none() {
                    self.lost("a SyncResponse nobody asked for".into(), now, true);
                    return;
                }
                self.syncs += 1;
                for s in &r.settings {
                    self.held.insert(s.application.clone(), s.version);
                }
                for app in &r.removed_settings {
                    self.held.remove(app);
                }
                if !r.settings.is_empty() || !r.removed_settings.is_empty() {
                    self.actions.push_back(Action::ApplySettings {
                        settings: r.settings,
                        removed: r.removed_settings,
                    });
                }
                self.actions.push_back(Action::Distribution {
                    assignments: r.assignments,
                    updates: r.updates,
                });
                self.sync_interval = clamp_interval(r.next_sync_secs, self.sync_interval);
                self.next_sync = Some(now + self.sync_interval);
                if self.sync_pending {
                    self.send_sync(now);
                }
            }
            Message::EventAck(a) => {
                if self.batch_sent.take().is_none() {
                    self.lost("an EventAck nobody asked for".into(), now, true);
                    return;
                }
                while self.events.front().is_some_and(|e| e.id <= a.up_to_id) {
                    self.events.pop_front();
                    self.acked += 1;
                }
                self.send_events(now);
            }
            Message::SyncNow(s) => {
                if !self.fresh_nonce(s.nonce) {
                    return;
                }
                self.pushes += 1;
                self.notice(Notice::SyncRequested(s.reason.clone()));
                self.sync_soon(now);
            }
            Message::Keepalive(k) if k.reply => {
                if self.keepalive_sent.is_some_and(|(seq, _)| seq == k.seq) {
                    self.keepalive_sent = None;
                }
            }
            Message::Keepalive(k) => self.send(
                Message::from(Keepalive {
                    seq: k.seq,
                    reply: true,
                }),
                now,
            ),
            Message::RenewResponse(r) => {
                if self.renew_sent.take().is_none() {
                    self.lost("a RenewResponse nobody asked for".into(), now, true);
                    return;
                }
                self.actions.push_back(Action::Renewed(r));
            }
            Message::Refusal(r) => {
                if self.renew_sent.take().is_some() {
                    self.actions.push_back(Action::RenewalFailed(format!(
                        "refused ({:?}): {}",
                        RefusalCode::try_from(r.code).unwrap_or(RefusalCode::Unspecified),
                        r.reason
                    )));
                }
                self.refused(r, now)
            }
            other => self.lost(
                format!("unexpected {}", other.message_type().name()),
                now,
                true,
            ),
        }
    }

    /// Asks the server for a reserve certificate with this request (DER) on the current
    /// connection; the answer comes as [`Action::Renewed`] or [`Action::RenewalFailed`].
    /// Returns `false` (nothing sent) unless the connection is ready and no request is out.
    pub fn request_renewal(&mut self, csr_der: bytes::Bytes, now: Instant) -> bool {
        if self.phase != Phase::Ready || self.renew_sent.is_some() {
            return false;
        }
        self.renew_sent = Some(now);
        self.send(Message::from(RenewRequest { csr_der }), now);
        true
    }

    /// Closes the connection and connects again at once (from the first endpoint): the
    /// agent switched to another certificate.
    pub fn reconnect_now(&mut self, reason: &str, now: Instant) {
        if matches!(self.phase, Phase::Handshaking | Phase::Ready) {
            self.lost(format!("reconnecting: {reason}"), now, true);
        }
        if self.phase == Phase::Waiting {
            self.retry_at = Some(now);
        }
    }
}
