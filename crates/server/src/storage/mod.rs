//! The server's one storage interface: every row it must not forget, in SQLite (embedded, the
//! default) or PostgreSQL (selected by a connection URL), through one async API (`sqlx`'s
//! `Any` driver, so both backends run the same statements).
//!
//! - **Writes** are [`Op`]s: row puts and deletes that the in-memory indexes (the
//!   [`Registry`], the resolver, the election) have already applied. A [`Storage::commit`]
//!   returns once its writes are durable. Writes from concurrent callers are grouped into one
//!   transaction by a single writer (a thread of its own with one connection), so a burst of
//!   enrollments costs one disk flush, not one each; a group that fails is retried write by
//!   write, so one bad write fails only its caller.
//! - **Reads** on the connection path never reach the database: devices are found by
//!   fingerprint in the registry's index, rebuilt from the database by [`Storage::load`] at
//!   start.
//! - **Events** are appended in batches and trimmed by count and age ([`DatabaseConfig`]).
//! - **Last seen** times are written in batches ([`Storage::touch`]), about once a second: a
//!   crash loses at most the last second of them, never an acknowledged change.
//!
//! Schema changes are versioned migrations (`crates/server/migrations/<backend>/`), applied
//! when the storage opens.
//!
//! ```
//! use outpost_server::{DatabaseConfig, Registry, Storage};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let storage = Storage::open(&DatabaseConfig::sqlite_in(dir.path()), "server-1").unwrap();
//! let mut reg = storage.load().unwrap().registry;
//! reg.add_group("office", "Office", None).unwrap();
//! storage.commit_blocking(reg.take_journal().into_ops()).unwrap();
//! drop(storage);
//!
//! // Opened again (as after a restart): the group is there.
//! let storage = Storage::open(&DatabaseConfig::sqlite_in(dir.path()), "server-1").unwrap();
//! assert!(storage.load().unwrap().registry.groups().contains_key("office"));
//! ```

mod config;
mod policy;
mod schema;
mod writer;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot};

pub use config::{Backend, DatabaseConfig, SQLITE_FILE};
pub use policy::{policy_ops, policy_state};
pub use schema::SCHEMA_VERSION;

use crate::registry::{Device, GatewayRegistration, Group, TokenRecord};
use crate::{Registry, ServerError};

/// One row write.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    /// Inserts or replaces an administration group.
    PutGroup {
        /// Its id.
        id: String,
        /// The group.
        group: Group,
    },
    /// Removes a group.
    DeleteGroup {
        /// Its id.
        id: String,
    },
    /// Inserts or replaces a device.
    PutDevice {
        /// Its id.
        id: String,
        /// The device.
        device: Device,
    },
    /// Removes a device.
    DeleteDevice {
        /// Its id.
        id: String,
    },
    /// Inserts or replaces an enrollment token.
    PutToken {
        /// The token's SHA-256, hex.
        key: String,
        /// The token.
        token: TokenRecord,
    },
    /// Removes a token (used or expired).
    DeleteToken {
        /// The token's SHA-256, hex.
        key: String,
    },
    /// Inserts or replaces a gateway registration.
    PutGateway {
        /// Its id.
        id: String,
        /// The registration.
        gateway: GatewayRegistration,
    },
    /// Removes a gateway registration.
    DeleteGateway {
        /// Its id.
        id: String,
    },
    /// Sets the scopes a distribution point serves (none: it is no DP any more).
    PutDpScopes {
        /// The device.
        device: String,
        /// The keys of the scopes it serves ([`crate::DpScope::key`]), in registration
        /// order.
        scopes: Vec<String>,
    },
    /// Raises the fencing epoch of a distribution point scope.
    PutEpoch {
        /// The scope (a group id).
        scope: String,
        /// The epoch.
        epoch: u64,
    },
    /// Inserts or replaces a policy object.
    PutPolicyObject {
        /// What it is.
        kind: PolicyObjectKind,
        /// Its id (the application, policy or device id).
        id: String,
        /// Its JSON document, as `outpost-policy` writes it.
        document: String,
    },
    /// Removes a policy object.
    DeletePolicyObject {
        /// What it is.
        kind: PolicyObjectKind,
        /// Its id.
        id: String,
    },
    /// Records a published update object.
    PutUpdateObject(UpdateObject),
    /// Opens (or replaces) a security issue of a device.
    PutSecurityIssue(SecurityIssue),
    /// Closes a device's security issue.
    DeleteSecurityIssue {
        /// The device.
        device: String,
        /// The issue's kind.
        kind: String,
    },
    /// Marks a device's open security issue acknowledged (it stays open until its cause
    /// is gone).
    AcknowledgeSecurityIssue {
        /// The device.
        device: String,
        /// The issue's kind.
        kind: String,
        /// The account acknowledging it.
        by: String,
        /// When, seconds since the Unix epoch.
        at_unix: u64,
    },
    /// Inserts or replaces an administrator account.
    PutAccount(crate::Account),
    /// Inserts or replaces an API token (revoking one is a put with its revocation time).
    PutApiToken(crate::ApiToken),
    /// Creates or updates a virtual server of this server (its row, and its root group
    /// when it is new).
    PutVirtualServer(VirtualServerRecord),
    /// Removes a virtual server and every row it owns.
    DeleteVirtualServer {
        /// Its id.
        id: String,
    },
    /// Sets a marker of a one-time step.
    PutMeta {
        /// Its key.
        key: String,
        /// Its value.
        value: String,
    },
}

/// The kinds of policy object stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum PolicyObjectKind {
    /// An application schema.
    Schema,
    /// A group as policies see it (groups of the registry are added to these).
    Group,
    /// A policy (with its profiles, locks and status).
    Policy,
    /// A device's facts and reported local values, as policies read them.
    Device,
}

impl PolicyObjectKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PolicyObjectKind::Schema => "schema",
            PolicyObjectKind::Group => "group",
            PolicyObjectKind::Policy => "policy",
            PolicyObjectKind::Device => "device",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "schema" => PolicyObjectKind::Schema,
            "group" => PolicyObjectKind::Group,
            "policy" => PolicyObjectKind::Policy,
            "device" => PolicyObjectKind::Device,
            _ => return None,
        })
    }
}

/// A published update object's metadata (its content is in the object directory).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UpdateObject {
    /// Its id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Version.
    pub version: u64,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content, hex.
    pub sha256: String,
    /// When it was published, seconds since the Unix epoch.
    pub published_at_unix: u64,
}

impl UpdateObject {
    /// Metadata of content of `size` bytes with SHA-256 `sha256` (hex), published at
    /// `published_at_unix`.
    pub fn new(
        id: impl Into<String>,
        name: impl Into<String>,
        version: u64,
        size: u64,
        sha256: impl Into<String>,
        published_at_unix: u64,
    ) -> Self {
        UpdateObject {
            id: id.into(),
            name: name.into(),
            version,
            size,
            sha256: sha256.into(),
            published_at_unix,
        }
    }
}

/// A virtual server, as its parent server stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VirtualServerRecord {
    /// Its id (the `server_id` of every row it owns).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Disabled: its devices are refused, its data kept.
    pub disabled: bool,
    /// Its block of multicast group addresses (unique among the server's virtual servers).
    pub multicast_block: u32,
    /// When it was created, seconds since the Unix epoch.
    pub created_at_unix: u64,
}

impl VirtualServerRecord {
    /// An enabled virtual server created now.
    pub fn new(id: impl Into<String>, name: impl Into<String>, multicast_block: u32) -> Self {
        VirtualServerRecord {
            id: id.into(),
            name: name.into(),
            disabled: false,
            multicast_block,
            created_at_unix: crate::registry::unix(SystemTime::now()),
        }
    }
}

/// An open security issue of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SecurityIssue {
    /// The device.
    pub device: String,
    /// A machine-readable kind (`"dp.low_disk"`).
    pub kind: String,
    /// Severity, as `outpost_wire::messages::Severity`.
    pub severity: i32,
    /// When it opened, seconds since the Unix epoch.
    pub opened_at_unix: u64,
    /// Details.
    pub body: String,
    /// When an administrator acknowledged it, seconds since the Unix epoch.
    pub acknowledged_at_unix: Option<u64>,
    /// The account that acknowledged it.
    pub acknowledged_by: Option<String>,
}

impl SecurityIssue {
    /// An issue opened now.
    pub fn new(
        device: impl Into<String>,
        kind: impl Into<String>,
        severity: i32,
        body: impl Into<String>,
        now: SystemTime,
    ) -> Self {
        SecurityIssue {
            device: device.into(),
            kind: kind.into(),
            severity,
            opened_at_unix: crate::registry::unix(now),
            body: body.into(),
            acknowledged_at_unix: None,
            acknowledged_by: None,
        }
    }
}

/// One stored event, from an agent or from the server itself.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventRecord {
    /// The device it concerns (`None`: the server's own).
    pub device: Option<String>,
    /// The device's own sequence number of it (agents' events).
    pub device_seq: Option<u64>,
    /// When it happened, milliseconds since the Unix epoch.
    pub at_unix_ms: i64,
    /// Severity, as `outpost_wire::messages::Severity`.
    pub severity: i32,
    /// A machine-readable kind (`"enrollment.refused"`, `"gateway.down"`, ...).
    pub kind: String,
    /// Details.
    pub body: String,
}

impl EventRecord {
    /// An event of the server's own, happening now.
    pub fn server(
        device: Option<&str>,
        severity: outpost_wire::messages::Severity,
        kind: &str,
        body: impl Into<String>,
    ) -> Self {
        EventRecord {
            device: device.map(Into::into),
            device_seq: None,
            at_unix_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            severity: severity as i32,
            kind: kind.into(),
            body: body.into(),
        }
    }

    /// An agent's event.
    pub fn from_agent(device: &str, e: &outpost_wire::messages::Event) -> Self {
        EventRecord {
            device: Some(device.into()),
            device_seq: Some(e.id),
            at_unix_ms: e.time_unix_ms,
            severity: e.severity,
            kind: e.kind.clone(),
            body: e.body.clone(),
        }
    }
}

/// A stored event as read back, with its position in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoredEvent {
    /// Its position in the log (increasing).
    pub seq: u64,
    /// The event.
    pub event: EventRecord,
}

/// Which stored events to read ([`Storage::events`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventQuery {
    /// Only events after this position.
    pub after: u64,
    /// At most this many.
    pub limit: usize,
    /// Only events of this kind.
    pub kind: Option<String>,
    /// Only events of this device.
    pub device: Option<String>,
}

impl EventQuery {
    /// Up to `limit` events after `after`, of any kind and device.
    pub fn after(after: u64, limit: usize) -> Self {
        EventQuery {
            after,
            limit,
            kind: None,
            device: None,
        }
    }

    /// Only events of `kind`.
    pub fn with_kind(mut self, kind: impl Into<String>) -> Self {
        self.kind = Some(kind.into());
        self
    }

    /// Only events of `device`.
    pub fn with_device(mut self, device: impl Into<String>) -> Self {
        self.device = Some(device.into());
        self
    }
}

/// Everything [`Storage::load`] reads at start.
#[derive(Debug)]
#[non_exhaustive]
pub struct Snapshot {
    /// Groups, devices, tokens, gateways and DP scopes.
    pub registry: Registry,
    /// The distribution point scopes' fencing epochs.
    pub epochs: BTreeMap<String, u64>,
    /// Policy objects by kind and id.
    pub policy: BTreeMap<(PolicyObjectKind, String), String>,
    /// Published update objects.
    pub updates: Vec<UpdateObject>,
    /// Open security issues.
    pub issues: Vec<SecurityIssue>,
    /// One-time step markers.
    pub meta: BTreeMap<String, String>,
    /// Administrator accounts.
    pub accounts: Vec<crate::Account>,
    /// API tokens, revoked ones included.
    pub api_tokens: Vec<crate::ApiToken>,
    /// The virtual servers of this server, by id.
    pub virtual_servers: Vec<VirtualServerRecord>,
}

/// Row counts, for reports and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Counts {
    /// Devices.
    pub devices: u64,
    /// Unused tokens.
    pub tokens: u64,
    /// Stored events.
    pub events: u64,
}

type Reply<T> = oneshot::Sender<Result<T, ServerError>>;

enum Job {
    Commit(Vec<Op>, Reply<()>),
    Events(Vec<EventRecord>, Reply<()>),
    Touch(Vec<(String, u64, Option<u64>)>),
    Load(Reply<Snapshot>),
    Counts(Reply<Counts>),
    ReadEvents(EventQuery, Reply<Vec<StoredEvent>>),
    Trim(SystemTime, Reply<u64>),
    Raw(String, Reply<()>),
    Flush(Reply<()>),
    Issues(Reply<Vec<SecurityIssue>>),
    PolicyObjects(
        PolicyObjectKind,
        Option<String>,
        Reply<Vec<(String, String)>>,
    ),
}

struct Inner {
    jobs: mpsc::UnboundedSender<(Arc<str>, Job)>,
    backend: Backend,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue ends the writer once it has done what was queued.
        let (tx, _) = mpsc::unbounded_channel();
        drop(std::mem::replace(&mut self.jobs, tx));
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

/// The server's storage: cheap to clone, every clone the same database and the same
/// (virtual) server's rows; [`scoped`](Storage::scoped) gives another server's rows
/// through the same writer.
#[derive(Clone)]
pub struct Storage {
    inner: Arc<Inner>,
    server_id: Arc<str>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("backend", &self.inner.backend)
            .field("server_id", &self.server_id)
            .finish()
    }
}

fn gone() -> ServerError {
    ServerError::Storage(crate::error::StorageError::Stopped)
}

impl Storage {
    /// Connects to the database `config` names (creating an SQLite file if needed), applies
    /// the migrations it lacks, and makes sure server instance `server_id` and its root group
    /// exist. Blocks until done (it runs on the storage's own thread, so it may be called
    /// from async code and from plain threads alike).
    pub fn open(config: &DatabaseConfig, server_id: &str) -> Result<Self, ServerError> {
        Self::open_at(config, server_id, None)
    }

    /// [`open`](Self::open), applying migrations only up to `version` (to test upgrades
    /// from an older schema).
    #[doc(hidden)]
    pub fn open_at_version(
        config: &DatabaseConfig,
        server_id: &str,
        version: i64,
    ) -> Result<Self, ServerError> {
        Self::open_at(config, server_id, Some(version))
    }

    fn open_at(
        config: &DatabaseConfig,
        server_id: &str,
        up_to: Option<i64>,
    ) -> Result<Self, ServerError> {
        crate::check_id("server instance id", server_id)?;
        config.validate()?;
        let (jobs, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let cfg = config.clone();
        let id = server_id.to_string();
        let thread = std::thread::Builder::new()
            .name("outpost-storage".into())
            .spawn(move || writer::run(cfg, id, up_to, rx, ready_tx))
            .map_err(ServerError::os("start the storage thread"))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(gone());
            }
        }
        Ok(Storage {
            inner: Arc::new(Inner {
                jobs,
                backend: config.backend(),
                thread: std::sync::Mutex::new(Some(thread)),
            }),
            server_id: server_id.into(),
        })
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// The server instance whose rows this storage reads and writes.
    pub fn server_id(&self) -> &str {
        &self.server_id
    }

    /// The storage of (virtual) server `id`: the same database and writer (so its writes
    /// are grouped with every other server's), reading and writing only `id`'s rows.
    pub fn scoped(&self, id: &str) -> Storage {
        Storage {
            inner: self.inner.clone(),
            server_id: id.into(),
        }
    }

    fn send<T>(
        &self,
        job: impl FnOnce(Reply<T>) -> Job,
    ) -> oneshot::Receiver<Result<T, ServerError>> {
        let (tx, rx) = oneshot::channel();
        // A send fails only when the writer ended; the receiver then reports it.
        let _ = self.inner.jobs.send((self.server_id.clone(), job(tx)));
        rx
    }

    /// Queues `ops` and returns a ticket that resolves once they are committed. Queued
    /// writes are committed in the order they were queued, so a caller that queues while it
    /// holds the lock of the memory they changed keeps the database in that order.
    pub fn queue(&self, ops: Vec<Op>) -> Ticket {
        Ticket(self.send(|r| Job::Commit(ops, r)))
    }

    /// Commits `ops` in one transaction (perhaps together with other callers' writes);
    /// returns once they are durable.
    pub async fn commit(&self, ops: Vec<Op>) -> Result<(), ServerError> {
        self.queue(ops).await
    }

    /// [`commit`](Self::commit) for code that is not async (offline commands, sync
    /// callbacks). Must not be called from a single-threaded runtime's only thread while
    /// that runtime has to make progress for the commit (the writer has its own thread, so
    /// this holds for every caller in this crate).
    pub fn commit_blocking(&self, ops: Vec<Op>) -> Result<(), ServerError> {
        self.queue(ops).wait()
    }

    /// Appends events; returns once they are durable. Past the configured count or age
    /// the oldest events are dropped.
    pub async fn record_events(&self, events: Vec<EventRecord>) -> Result<(), ServerError> {
        if events.is_empty() {
            return Ok(());
        }
        self.send(|r| Job::Events(events, r))
            .await
            .unwrap_or_else(|_| Err(gone()))
    }

    /// [`record_events`](Self::record_events) for code that is not async.
    pub fn record_events_blocking(&self, events: Vec<EventRecord>) -> Result<(), ServerError> {
        self.queue_events(events).wait()
    }

    /// Queues events to append; the ticket resolves once they are durable (dropping it
    /// does not cancel them).
    pub fn queue_events(&self, events: Vec<EventRecord>) -> Ticket {
        Ticket(self.send(|r| Job::Events(events, r)))
    }

    /// Queues last-seen times (and reported free disk) of devices, written in the next
    /// group; not waited for.
    pub fn touch(&self, seen: Vec<(String, u64, Option<u64>)>) {
        let _ = self
            .inner
            .jobs
            .send((self.server_id.clone(), Job::Touch(seen)));
    }

    /// Writes every last-seen time queued so far ([`touch`](Self::touch)) and returns once
    /// they are committed.
    pub fn flush_touched(&self) -> Result<(), ServerError> {
        Ticket::wait_on(self.send(Job::Flush))
    }

    /// The stored policy objects of `kind` (`id`, JSON document), by id.
    pub fn policy_objects(
        &self,
        kind: PolicyObjectKind,
    ) -> Result<Vec<(String, String)>, ServerError> {
        Ticket::wait_on(self.send(|r| Job::PolicyObjects(kind, None, r)))
    }

    /// One stored policy object's JSON document.
    pub fn policy_object(
        &self,
        kind: PolicyObjectKind,
        id: &str,
    ) -> Result<Option<String>, ServerError> {
        let id = id.to_string();
        let rows = Ticket::wait_on(self.send(|r| Job::PolicyObjects(kind, Some(id), r)))?;
        Ok(rows.into_iter().next().map(|(_, doc)| doc))
    }

    /// The open security issues, by device and kind.
    pub fn security_issues(&self) -> Result<Vec<SecurityIssue>, ServerError> {
        Ticket::wait_on(self.send(Job::Issues))
    }

    /// Reads everything the server keeps in memory.
    pub fn load(&self) -> Result<Snapshot, ServerError> {
        Ticket::wait_on(self.send(Job::Load))
    }

    /// Row counts.
    pub fn counts(&self) -> Result<Counts, ServerError> {
        Ticket::wait_on(self.send(Job::Counts))
    }

    /// Up to `limit` stored events after position `after`, oldest first.
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>, ServerError> {
        self.events(&EventQuery::after(after, limit))
    }

    /// The stored events `query` selects, oldest first.
    pub fn events(&self, query: &EventQuery) -> Result<Vec<StoredEvent>, ServerError> {
        let q = query.clone();
        Ticket::wait_on(self.send(|r| Job::ReadEvents(q, r)))
    }

    /// Drops events older than the configured age at `now`; returns how many. The writer
    /// also does this by itself every minute.
    pub fn trim_events(&self, now: SystemTime) -> Result<u64, ServerError> {
        Ticket::wait_on(self.send(|r| Job::Trim(now, r)))
    }

    /// A database at `config` holding `registry` (for its instance id): [`open`] and
    /// [`import_registry`], for tools and tests that build a registry in memory first.
    ///
    /// [`open`]: Self::open
    /// [`import_registry`]: Self::import_registry
    pub fn create(config: &DatabaseConfig, registry: &Registry) -> Result<Self, ServerError> {
        let storage = Self::open(config, &registry.instance_id)?;
        storage.import_registry(registry)?;
        Ok(storage)
    }

    /// Runs one SQL statement outside the storage's model, on its connection: for tests that
    /// make the database fail on purpose (a trigger that refuses writes).
    #[doc(hidden)]
    pub fn execute_unchecked(&self, sql: &str) -> Result<(), ServerError> {
        Ticket::wait_on(self.send(|r| Job::Raw(sql.to_string(), r)))
    }

    /// Writes a whole registry (an import): refused if this storage already holds
    /// anything beyond its root group, so an import never mixes two fleets.
    pub fn import_registry(&self, registry: &Registry) -> Result<(), ServerError> {
        let held = self.load()?.registry;
        let (devices, groups, tokens, gateways) = (
            held.devices().len(),
            held.groups().len() - 1,
            held.pending_tokens(),
            held.gateways().len(),
        );
        if devices + groups + tokens + gateways > 0 {
            return Err(ServerError::Config(format!(
                "the database already holds {devices} device(s), {groups} group(s), \
                 {tokens} token(s) and {gateways} gateway(s): an import goes into an empty one"
            )));
        }
        self.commit_blocking(registry.as_ops())
    }
}

/// A queued commit: `.await` it, or [`wait`](Self::wait) for it from plain code.
#[must_use = "a commit is acknowledged only once its ticket resolves"]
pub struct Ticket(oneshot::Receiver<Result<(), ServerError>>);

impl Ticket {
    /// Blocks until the commit is done.
    pub fn wait(self) -> Result<(), ServerError> {
        Self::wait_on(self.0)
    }

    fn wait_on<T>(rx: oneshot::Receiver<Result<T, ServerError>>) -> Result<T, ServerError> {
        // `blocking_recv` refuses to run inside a runtime; parking the thread until the
        // writer answers needs none.
        block_on(rx).unwrap_or_else(|_| Err(gone()))
    }
}

/// Wakes a parked thread.
struct Unpark(std::thread::Thread);

impl std::task::Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs `f` to completion on this thread, parking it while `f` waits.
///
/// Outside tokio's cooperative budget: called from inside a task whose budget is spent
/// (many syncs answered in one poll), a budgeted receiver would answer "not ready" and wake
/// itself at once, forever, and this loop would spin while the answer waits in the channel.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(tokio::task::unconstrained(f));
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

impl std::future::Future for Ticket {
    type Output = Result<(), ServerError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|_| Err(gone())))
    }
}
