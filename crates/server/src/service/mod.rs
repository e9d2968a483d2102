//! The server's side of every device connection: version negotiation, enrollment on the
//! enrollment channel, then sync, events and file chunks on an authenticated connection,
//! which the server keeps open to push "sync now".
//!
//! What a sync answers comes from a [`SyncSource`] (the policy and election crates plug in
//! there), and file chunks from an [`ObjectStore`]; the service itself holds no policy.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use outpost_gateway::admission::{self, AdmissionPool};
use outpost_gateway::{DeviceConnection, Via};
use outpost_pki::ServerCa;
use outpost_wire::messages::*;
use outpost_wire::{Message, MessageCodec, VersionRange, negotiate};
use tokio::sync::mpsc;
use tokio_util::codec::Framed;
use tracing::Instrument;

use crate::{
    EnrollThrottle, EventRecord, Registry, ServerError, Storage, admit, record_enrollment,
    refusal_code, sign_enrollment,
};

mod changes;
mod connection;
mod enrollment;

/// Who a sync is for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceContext {
    /// The enrolled device id (from its certificate, never from what it claims).
    pub device_id: String,
    /// Its administration group.
    pub group: String,
    /// How it reached the server.
    pub via: Via,
    /// The number of enrolled devices (the sync interval grows with it).
    pub fleet_size: u64,
}

impl DeviceContext {
    /// A context (the service builds these; this is for sync sources' own tests and tools).
    pub fn new(
        device_id: impl Into<String>,
        group: impl Into<String>,
        via: Via,
        fleet_size: u64,
    ) -> Self {
        DeviceContext {
            device_id: device_id.into(),
            group: group.into(),
            via,
            fleet_size,
        }
    }
}

/// Answers a device's sync: what changed for it and when to sync next.
pub trait SyncSource: Send + Sync + 'static {
    /// The answer to `req` from `device`.
    fn sync(&self, device: &DeviceContext, req: &SyncRequest) -> SyncResponse;

    /// A device was enrolled into `group`, or moved there (the default does nothing).
    fn on_enrolled(&self, _device: &str, _group: &str) {}

    /// A device was removed (the default does nothing).
    fn on_removed(&self, _device: &str) {}

    /// A group was added under `parent` (the default does nothing).
    fn on_group_added(&self, _group: &str, _parent: &str) {}

    /// A group was moved under `parent`; returns the devices whose answers changed (to be
    /// pushed "sync now"). The default does nothing.
    fn on_group_moved(&self, _group: &str, _parent: &str) -> Vec<Arc<str>> {
        Vec::new()
    }

    /// Called about once a second by the server runtime; returns the devices whose answer
    /// changed without any of them asking (a distribution point was replaced: the DPs of
    /// that scope and the devices it serves, or served), which are pushed "sync now" if they
    /// hold a kept connection. The default does nothing.
    fn tick(&self, _now: std::time::Instant) -> Vec<String> {
        Vec::new()
    }
}

/// A sync source that only hands out the next sync interval.
#[derive(Debug, Clone, Copy)]
pub struct FixedInterval(pub u32);

impl SyncSource for FixedInterval {
    fn sync(&self, _: &DeviceContext, _: &SyncRequest) -> SyncResponse {
        SyncResponse {
            next_sync_secs: self.0,
            ..Default::default()
        }
    }
}

/// Serves byte ranges of published objects (updates, installation packages).
pub trait ObjectStore: Send + Sync + 'static {
    /// Up to `len` bytes of `object_id` from `offset`, and the object's total size; `None` if
    /// there is no such object.
    fn read(&self, object_id: &str, offset: u64, len: u32) -> Option<(Bytes, u64)>;
}

/// Objects held in memory.
#[derive(Debug, Default)]
pub struct MemoryObjects {
    objects: RwLock<HashMap<String, Bytes>>,
}

impl MemoryObjects {
    /// Publishes `data` as `object_id` and returns its announcement (with its SHA-256).
    pub fn publish(
        &self,
        object_id: &str,
        name: &str,
        version: u64,
        data: Bytes,
    ) -> UpdateAnnouncement {
        let sha = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &data);
        let a = UpdateAnnouncement {
            object_id: object_id.into(),
            name: name.into(),
            version,
            size: data.len() as u64,
            sha256: Bytes::copy_from_slice(sha.as_ref()),
        };
        self.objects
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(object_id.into(), data);
        a
    }
}

impl ObjectStore for MemoryObjects {
    fn read(&self, object_id: &str, offset: u64, len: u32) -> Option<(Bytes, u64)> {
        let objects = self.objects.read().unwrap_or_else(|e| e.into_inner());
        let data = objects.get(object_id)?;
        let total = data.len() as u64;
        let start = offset.min(total) as usize;
        let end = (start as u64).saturating_add(u64::from(len)).min(total) as usize;
        Some((data.slice(start..end), total))
    }
}

/// The largest frame read on the enrollment channel, before the peer is known (64 KiB: an
/// `EnrollRequest` is a CSR of about a kilobyte and a token).
pub const ENROLLMENT_MAX_FRAME_LEN: usize = 64 * 1024;

/// Settings of the service.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServiceConfig {
    /// Largest chunk served per request (default 1 MiB).
    pub max_chunk: u32,
    /// Time allowed for a device's first message (default 10 s).
    pub hello_timeout: Duration,
    /// Largest frame accepted from an enrolled device (default 16 MiB).
    pub max_frame_len: usize,
    /// Largest frame accepted before the registry knows the peer: everything on the
    /// enrollment channel, and the Hello of every other connection, certificate or not
    /// (default [`ENROLLMENT_MAX_FRAME_LEN`]).
    pub max_enrollment_frame_len: usize,
    /// Enrollment-channel connections served at once (default 128); past it the oldest is
    /// closed to make room, so connections that hold a place without finishing cannot keep
    /// devices from enrolling.
    pub max_enrolling: usize,
    /// Of `max_enrolling`, how many one source address (an IPv6 source: its /64) may hold
    /// (default 32); more are refused with `RefusalCode::Overloaded`, which an agent retries
    /// with its backoff.
    pub max_enrolling_per_source: usize,
    /// Time an enrollment connection has, once its TLS handshake is done, to send its Hello
    /// and its request (default 10 s, and never more than `hello_timeout`); it is closed
    /// then.
    pub enrollment_timeout: Duration,
    /// Failed enrollments a source address may make per `enroll_failure_window` before
    /// its attempts are refused unchecked (default 10).
    pub enroll_failures_per_source: u32,
    /// The window of `enroll_failures_per_source` (default 60 s).
    pub enroll_failure_window: Duration,
    /// How soon a device may be issued another reserve certificate after one (default 1 h):
    /// each costs a signature and a commit, and a device needs one per certificate life.
    pub min_renewal_interval: Duration,
    /// The virtual server this service serves (`None`: the main server). Its devices'
    /// certificates are bound to it, and a certificate bound to another is refused.
    pub virtual_server: Option<String>,
}

impl ServiceConfig {
    /// The defaults.
    pub fn new() -> Self {
        ServiceConfig {
            max_chunk: 1 << 20,
            hello_timeout: Duration::from_secs(10),
            max_frame_len: outpost_wire::DEFAULT_MAX_FRAME_LEN,
            max_enrollment_frame_len: ENROLLMENT_MAX_FRAME_LEN,
            max_enrolling: 128,
            max_enrolling_per_source: 32,
            enrollment_timeout: Duration::from_secs(10),
            min_renewal_interval: Duration::from_secs(3600),
            enroll_failures_per_source: 10,
            enroll_failure_window: Duration::from_secs(60),
            virtual_server: None,
        }
    }

    /// These settings for the service of virtual server `id`.
    pub fn for_virtual_server(mut self, id: impl Into<String>) -> Self {
        self.virtual_server = Some(id.into());
        self
    }
}

/// Finds the virtual server that holds an enrollment token: the main server's service
/// serves every enrollment connection and hands a request it holds no token for to the
/// service this names.
pub trait EnrollmentRouter: Send + Sync {
    /// The service of the (virtual) server holding `token` for `device`, if another does.
    fn service_for_token(&self, token: &str, device: &str) -> Option<Arc<AdminService>>;
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// Counters of the service.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct ServiceStats {
    /// Devices enrolled.
    pub enrolled: AtomicU64,
    /// Enrollments refused.
    pub enroll_refused: AtomicU64,
    /// Enrollment attempts refused unchecked: the source failed too often, or too many
    /// enrollment connections were open.
    pub enroll_throttled: AtomicU64,
    /// Syncs answered.
    pub syncs: AtomicU64,
    /// Connections refused (unknown certificate, version, protocol).
    pub refused: AtomicU64,
    /// Events received.
    pub events: AtomicU64,
    /// Chunk bytes served.
    pub bytes_served: AtomicU64,
    /// "Sync now" pushes sent.
    pub pushes: AtomicU64,
    /// Reserve certificates issued.
    pub renewed: AtomicU64,
}

/// The Administration Server's device service. Hand every [`DeviceConnection`] to
/// [`serve`](Self::serve), from whatever listener or gateway connector it came.
pub struct AdminService {
    config: ServiceConfig,
    ca: Arc<ServerCa>,
    storage: Storage,
    registry: Mutex<Registry>,
    sync: Arc<dyn SyncSource>,
    objects: Arc<dyn ObjectStore>,
    /// Devices with a kept connection: its id, where pushes go, the path it came by.
    online: Mutex<HashMap<String, KeptConnection>>,
    next_conn: AtomicU64,
    stats: ServiceStats,
    /// Permits for enrollment-channel connections.
    enrolling: AdmissionPool,
    /// Failed enrollments per source address.
    throttle: Mutex<EnrollThrottle>,
    /// Serials (lower-case hex) on the server CA's revocation list, checked on every
    /// connection whatever path it came by.
    revoked: RwLock<HashSet<String>>,
    /// When each device was last issued a reserve certificate.
    renewed: Mutex<HashMap<String, Instant>>,
    /// Disabled (a virtual server): its devices are refused with `ServerDisabled`.
    disabled: std::sync::atomic::AtomicBool,
    /// Where enrollments for tokens this service does not hold go.
    router: std::sync::OnceLock<std::sync::Weak<dyn EnrollmentRouter>>,
}

/// A queue for device connections and the task that serves each with the service `route`
/// picks for it. Connections are served in a set the task owns: aborting the task (server
/// shutdown) closes every connection it serves.
pub(crate) fn dispatch(
    capacity: usize,
    route: impl Fn(&DeviceConnection) -> Arc<AdminService> + Send + 'static,
) -> (mpsc::Sender<DeviceConnection>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<DeviceConnection>(capacity);
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                c = rx.recv() => match c {
                    Some(c) => {
                        let span = tracing::info_span!(
                            "device_connection",
                            peer = %c.peer.remote_addr,
                            device = tracing::field::Empty
                        );
                        conns.spawn(route(&c).serve(c).instrument(span));
                    }
                    None => break,
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        while conns.join_next().await.is_some() {}
    });
    (tx, task)
}

/// A device's kept connection: its id, where pushes go, the path it came by.
type KeptConnection = (u64, mpsc::Sender<Message>, Via);

/// A "sync now" nonce that does not repeat within a run.
fn next_nonce() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    base.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Sources tracked by the enrollment throttle at most.
const THROTTLE_SOURCES: usize = 4096;

/// The serials the server CA has revoked, as hex.
fn revoked_serials(ca: &ServerCa) -> HashSet<String> {
    ca.authority(outpost_pki::CaKind::Server)
        .revocations()
        .iter()
        .map(|r| r.serial.to_string())
        .collect()
}

/// The address part of a peer's `ip:port` (the unspecified address if it does not parse:
/// every connection's address comes from its socket, so it does).
fn source_of(remote_addr: &str) -> std::net::IpAddr {
    remote_addr
        .parse::<std::net::SocketAddr>()
        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |a| a.ip())
}

fn refusal(code: RefusalCode, reason: String) -> Message {
    Message::from(Refusal {
        code: code as i32,
        reason,
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl AdminService {
    /// A service over `registry` (as loaded from `storage`, which every change is
    /// committed to before it is acknowledged).
    pub fn new(
        config: ServiceConfig,
        ca: Arc<ServerCa>,
        storage: Storage,
        registry: Registry,
        sync: Arc<dyn SyncSource>,
        objects: Arc<dyn ObjectStore>,
    ) -> Arc<Self> {
        let revoked = revoked_serials(&ca);
        let mut registry = registry;
        // What was done to it before is in `storage` already.
        let _ = registry.take_journal();
        Arc::new(AdminService {
            revoked: RwLock::new(revoked),
            renewed: Mutex::new(HashMap::new()),
            disabled: std::sync::atomic::AtomicBool::new(false),
            router: std::sync::OnceLock::new(),
            enrolling: AdmissionPool::new(config.max_enrolling, config.max_enrolling_per_source),
            throttle: Mutex::new(EnrollThrottle::new(
                config.enroll_failures_per_source,
                config.enroll_failure_window,
                THROTTLE_SOURCES,
            )),
            config,
            ca,
            storage,
            registry: Mutex::new(registry),
            sync,
            objects,
            online: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            stats: ServiceStats::default(),
        })
    }

    /// Checks that `cert_der` was issued by this server's CA, is valid now and is not
    /// revoked; returns who it names.
    pub fn verify_issued(&self, cert_der: &[u8]) -> Result<outpost_pki::PeerIdentity, ServerError> {
        let who = outpost_pki::check_client_certificate(
            cert_der,
            self.ca.server_ca(),
            &[],
            SystemTime::now(),
        )?;
        if self
            .revoked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&who.serial.to_string())
        {
            return Err(ServerError::Pki(outpost_pki::PkiError::Verify(
                outpost_pki::VerifyError::Revoked {
                    subject: who.subject.clone(),
                    serial: who.serial.to_string(),
                },
            )));
        }
        Ok(who)
    }

    /// Takes the revocation list of `ca` (a reloaded CA: the CRL file changed) as the one
    /// every new device connection is checked against. Returns how many serials it lists.
    ///
    /// Devices now revoked that hold a kept connection are refused on it (`NotAuthorized`),
    /// which closes it.
    pub fn set_revocations(&self, ca: &ServerCa) -> usize {
        let revoked = revoked_serials(ca);
        let n = revoked.len();
        let cut: Vec<(String, mpsc::Sender<Message>)> = {
            let reg = lock(&self.registry);
            lock(&self.online)
                .iter()
                .filter(|(id, _)| {
                    reg.device(id)
                        .is_some_and(|d| revoked.contains(&d.cert_serial))
                })
                .map(|(id, (_, tx, _))| (id.clone(), tx.clone()))
                .collect()
        };
        *self.revoked.write().unwrap_or_else(|e| e.into_inner()) = revoked;
        for (id, tx) in cut {
            tracing::warn!(device = %id, "its certificate was revoked; closing its connection");
            let _ = tx.try_send(refusal(
                RefusalCode::NotAuthorized,
                format!("the certificate of {id:?} is revoked"),
            ));
        }
        n
    }

    /// The virtual server this service serves (`None`: the main server).
    pub fn virtual_server(&self) -> Option<&str> {
        self.config.virtual_server.as_deref()
    }

    /// Sets where enrollments for tokens this service does not hold are handed (once).
    pub fn set_enrollment_router(&self, router: std::sync::Weak<dyn EnrollmentRouter>) {
        let _ = self.router.set(router);
    }

    /// Whether `token` (for `device`) is one of this service's.
    pub fn holds_token(&self, token: &str, device: &str) -> bool {
        lock(&self.registry).holds_token(token, device)
    }

    /// Whether the service is disabled.
    pub fn is_disabled(&self) -> bool {
        self.disabled.load(Ordering::Acquire)
    }

    /// Disables (its devices are refused with `ServerDisabled`, their kept connections
    /// closed) or enables the service. Returns how many connections were closed.
    pub fn set_disabled(&self, disabled: bool) -> usize {
        self.disabled.store(disabled, Ordering::Release);
        if !disabled {
            return 0;
        }
        let cut: Vec<mpsc::Sender<Message>> = lock(&self.online)
            .values()
            .map(|(_, tx, _)| tx.clone())
            .collect();
        for tx in &cut {
            let _ = tx.try_send(self.disabled_refusal());
        }
        cut.len()
    }

    fn disabled_refusal(&self) -> Message {
        refusal(
            RefusalCode::ServerDisabled,
            format!(
                "virtual server {:?} is disabled by an administrator; retry later",
                self.virtual_server().unwrap_or_default()
            ),
        )
    }

    /// Closes the kept connections that came through gateway `id` (it was unregistered):
    /// each is refused (`NotAuthorized`), and its device connects again by another path.
    /// Returns how many were closed.
    pub fn disconnect_gateway(&self, id: &str) -> usize {
        let cut: Vec<(String, mpsc::Sender<Message>)> = lock(&self.online)
            .iter()
            .filter(|(_, (_, _, via))| {
                matches!(via, Via::DmzGateway(g) | Via::RemoteGateway(g) if g == id)
            })
            .map(|(device, (_, tx, _))| (device.clone(), tx.clone()))
            .collect();
        for (device, tx) in &cut {
            tracing::info!(
                device = %device, gateway = %id, "its gateway was unregistered; closing its connection"
            );
            let _ = tx.try_send(refusal(
                RefusalCode::NotAuthorized,
                format!("gateway {id:?} is no longer registered"),
            ));
        }
        cut.len()
    }

    /// Counters.
    pub fn stats(&self) -> &ServiceStats {
        &self.stats
    }

    /// Runs `f` on the registry and commits the rows it changed; returns once they are
    /// durable. When `f` fails or the commit fails, its changes are undone in memory too,
    /// so nothing changes anywhere. No copy of the registry is made: `f` changes it in
    /// place, and the commit is queued while the registry is still locked, so the database
    /// sees changes in the order memory did.
    pub async fn update_registry<T>(
        &self,
        f: impl FnOnce(&mut Registry) -> Result<T, ServerError>,
    ) -> Result<T, ServerError> {
        let (out, changes, ticket) = {
            let mut reg = lock(&self.registry);
            let out = f(&mut reg);
            let changes = reg.take_journal();
            let out = match out {
                Ok(out) => out,
                Err(e) => {
                    reg.undo(changes);
                    return Err(e);
                }
            };
            if changes.is_empty() {
                return Ok(out);
            }
            let ticket = self.storage.queue(changes.ops().cloned().collect());
            (out, changes, ticket)
        };
        match ticket.await {
            Ok(()) => Ok(out),
            Err(e) => {
                lock(&self.registry).undo(changes);
                Err(e)
            }
        }
    }

    /// Runs `f` on the registry (held locked meanwhile: keep `f` short).
    pub fn with_registry<T>(&self, f: impl FnOnce(&Registry) -> T) -> T {
        f(&lock(&self.registry))
    }

    /// A copy of the registry (the whole fleet: for tests and reports, not for every
    /// request).
    pub fn registry(&self) -> Registry {
        lock(&self.registry).clone()
    }

    /// The storage changes are committed to.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Records an event of the server's own; logged, not waited for.
    fn server_event(&self, e: EventRecord) {
        drop(self.storage.queue_events(vec![e]));
    }

    /// The devices with a kept connection now (one they have synced on).
    pub fn online(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.online).keys().cloned().collect();
        v.sort();
        v
    }

    /// Pushes "sync now" to each of `devices` that has a kept connection; returns how many
    /// were reached (the others get the change at their next sync).
    pub fn push_all<S: AsRef<str>>(&self, devices: &[S], reason: &str, nonce: u64) -> usize {
        devices
            .iter()
            .filter(|d| self.push_sync_now(d.as_ref(), reason, nonce))
            .count()
    }

    /// Whether `device` has a kept connection now.
    pub fn is_online(&self, device: &str) -> bool {
        lock(&self.online).contains_key(device)
    }

    /// The path of `device`'s kept connection, if it has one.
    pub fn connected_via(&self, device: &str) -> Option<Via> {
        lock(&self.online)
            .get(device)
            .map(|(_, _, via)| via.clone())
    }

    /// How many devices hold a kept connection through each gateway, by gateway id.
    pub fn relayed(&self) -> HashMap<String, usize> {
        let mut n = HashMap::new();
        for (_, _, via) in lock(&self.online).values() {
            if let Via::DmzGateway(g) | Via::RemoteGateway(g) = via {
                *n.entry(g.clone()).or_insert(0) += 1;
            }
        }
        n
    }

    /// Pushes "sync now" to a device over its kept connection; `false` if it has none.
    pub fn push_sync_now(&self, device: &str, reason: &str, nonce: u64) -> bool {
        let tx = lock(&self.online).get(device).map(|(_, tx, _)| tx.clone());
        let sent = tx.is_some_and(|tx| {
            tx.try_send(Message::from(SyncNow {
                reason: reason.into(),
                nonce,
            }))
            .is_ok()
        });
        if sent {
            self.stats.pushes.fetch_add(1, Ordering::Relaxed);
        }
        sent
    }

    /// A channel to hand device connections to (from a `DeviceListener`, a
    /// `ServerConnector`, or both), and the task that serves each one it receives; aborting
    /// the task closes them all.
    pub fn dispatcher(
        self: &Arc<Self>,
        capacity: usize,
    ) -> (mpsc::Sender<DeviceConnection>, tokio::task::JoinHandle<()>) {
        let service = self.clone();
        dispatch(capacity, move |_| service.clone())
    }
}
