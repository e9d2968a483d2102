//! The storage's one connection and the thread that owns it: jobs come in order from a
//! queue; the writes among them that are waiting together go into one transaction.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use sqlx::any::{AnyConnectOptions, AnyRow};
use sqlx::{AnyConnection, ConnectOptions, Connection, Executor, Row};
use tokio::sync::mpsc;

use super::{
    Backend, Counts, DatabaseConfig, EventRecord, Job, Op, PolicyObjectKind, SecurityIssue,
    Snapshot, StoredEvent, UpdateObject, VirtualServerRecord,
};
use crate::error::StorageError;
use crate::registry::{Device, GatewayRegistration, Group, ReserveCertificate, TokenRecord, unix};
use crate::{ROOT_GROUP, Registry, ServerError};
use std::sync::Arc;

/// A last-seen time's (server, device).
type TouchKey = (Arc<str>, String);

/// How long last-seen times wait to be written at most.
const TOUCH_INTERVAL: Duration = Duration::from_secs(1);
/// Last-seen times written per transaction at most, so a whole fleet's worth (after a
/// burst of syncs) is written between other jobs, not ahead of them.
const TOUCHES_PER_TRANSACTION: usize = 2_000;
/// How often events past their age are dropped.
const TRIM_INTERVAL: Duration = Duration::from_secs(60);
/// Events per INSERT statement (8 parameters each, within both backends' limits).
const EVENTS_PER_STATEMENT: usize = 500;

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(super) fn run(
    config: DatabaseConfig,
    server_id: String,
    up_to: Option<i64>,
    jobs: mpsc::UnboundedReceiver<(Arc<str>, Job)>,
    ready: std::sync::mpsc::SyncSender<Result<(), ServerError>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(ServerError::Io {
                path: "storage runtime".into(),
                source: e,
            }));
            return;
        }
    };
    rt.block_on(async move {
        match Writer::connect(config, server_id, up_to).await {
            Ok(w) => {
                let _ = ready.send(Ok(()));
                w.serve(jobs).await;
            }
            Err(e) => {
                let _ = ready.send(Err(e));
            }
        }
    });
}

/// Begins a write transaction. On SQLite it takes the write lock at once (`BEGIN
/// IMMEDIATE`), waiting out the busy timeout: a deferred transaction that reads first and
/// then writes fails at once, unwaited, when another connection wrote meanwhile.
async fn begin(
    conn: &mut AnyConnection,
    backend: Backend,
) -> Result<sqlx::Transaction<'_, sqlx::Any>, sqlx::Error> {
    match backend {
        Backend::Sqlite => conn.begin_with("BEGIN IMMEDIATE").await,
        _ => conn.begin().await,
    }
}

/// Opens one connection, with SQLite's settings.
async fn open_connection(
    options: &AnyConnectOptions,
    backend: Backend,
) -> Result<AnyConnection, sqlx::Error> {
    let mut conn = AnyConnection::connect_with(options).await?;
    if backend == Backend::Sqlite {
        // WAL: readers never wait for the writer; FULL: a commit is on disk when it
        // returns, so what was acknowledged survives a power cut, not only a crash.
        // The busy timeout first: another process's writer (a server that is stopping) may
        // hold the lock the next statements need.
        for pragma in [
            "PRAGMA busy_timeout = 10000",
            "PRAGMA journal_mode = WAL",
            "PRAGMA synchronous = FULL",
            "PRAGMA foreign_keys = ON",
            // 64 MiB of page cache: the device table's indexes of a 100,000-device fleet
            // stay in memory.
            "PRAGMA cache_size = -65536",
        ] {
            conn.execute(pragma).await?;
        }
    }
    Ok(conn)
}

struct Writer {
    conn: AnyConnection,
    options: AnyConnectOptions,
    /// The connection failed; a new one is made before the next job.
    broken: bool,
    backend: Backend,
    config: DatabaseConfig,
    /// The server whose rows the read being served concerns (set per job).
    server_id: String,
    /// Last-seen times not written yet: (server, device) → (seconds, free disk).
    touched: HashMap<TouchKey, (u64, Option<u64>)>,
    touched_since: Option<Instant>,
    last_trim: Instant,
}

/// A write job taken from the queue, with where its answer goes.
enum Write {
    Ops(Arc<str>, Vec<Op>),
    Events(Arc<str>, Vec<EventRecord>),
}

impl Writer {
    async fn connect(
        config: DatabaseConfig,
        server_id: String,
        up_to: Option<i64>,
    ) -> Result<Self, ServerError> {
        sqlx::any::install_default_drivers();
        let backend = config.backend();
        let url = config.url.clone().unwrap_or_default();
        let connect = |source| {
            ServerError::Storage(StorageError::Connect {
                backend,
                url: config.redacted_url(),
                source,
            })
        };
        let url = match backend {
            // Create the file on first use.
            Backend::Sqlite if !url.contains('?') => format!("{url}?mode=rwc"),
            _ => url,
        };
        if let Some(dir) = config
            .sqlite_file()
            .as_deref()
            .and_then(std::path::Path::parent)
            && !dir.as_os_str().is_empty()
            && !dir.is_dir()
        {
            return Err(ServerError::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the directory of the SQLite database does not exist",
                ),
            });
        }
        let options: AnyConnectOptions = url.parse().map_err(connect)?;
        let options = options.disable_statement_logging();
        let mut conn = open_connection(&options, backend).await.map_err(connect)?;
        let migrator = super::schema::migrator(backend, up_to)
            .await
            .map_err(|source| ServerError::Storage(StorageError::Migrate { backend, source }))?;
        migrator
            .run(&mut conn)
            .await
            .map_err(|source| ServerError::Storage(StorageError::Migrate { backend, source }))?;
        let mut w = Writer {
            conn,
            options,
            broken: false,
            backend,
            config,
            server_id,
            touched: HashMap::new(),
            touched_since: None,
            last_trim: Instant::now(),
        };
        // Virtual servers came with version 6: a database held at an older version (to test
        // upgrades) has no `parent` column.
        w.ensure_server(up_to.is_none_or(|v| v >= 6)).await?;
        Ok(w)
    }

    fn query_error(&self, what: &'static str) -> impl Fn(sqlx::Error) -> ServerError + use<> {
        let backend = self.backend;
        move |source| {
            ServerError::Storage(StorageError::Query {
                backend,
                what,
                source,
            })
        }
    }

    /// The server instance's row and its root group.
    async fn ensure_server(&mut self, virtual_servers: bool) -> Result<(), ServerError> {
        let err = self.query_error("creating the server instance");
        let mut tx = begin(&mut self.conn, self.backend).await.map_err(&err)?;
        // A database holds one server's state (its virtual servers are added by it): a
        // configuration naming another instance is refused, not given an empty fleet.
        let known: Vec<String> = sqlx::query_scalar(if virtual_servers {
            "SELECT id FROM servers WHERE parent IS NULL ORDER BY created_at, id"
        } else {
            "SELECT id FROM servers ORDER BY created_at, id"
        })
        .fetch_all(&mut *tx)
        .await
        .map_err(&err)?;
        if let Some(first) = known.first()
            && !known.contains(&self.server_id)
        {
            return Err(ServerError::Config(format!(
                "the database {} belongs to server instance {first:?}, this configuration is {:?}",
                self.config.redacted_url(),
                self.server_id
            )));
        }
        sqlx::query(
            "INSERT INTO servers (id, created_at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&self.server_id)
        .bind(i64_of(unix(SystemTime::now())))
        .execute(&mut *tx)
        .await
        .map_err(&err)?;
        sqlx::query(
            "INSERT INTO admin_groups (server_id, id, name, parent) VALUES ($1, $2, $3, NULL) \
             ON CONFLICT (server_id, id) DO NOTHING",
        )
        .bind(&self.server_id)
        .bind(ROOT_GROUP)
        .bind("Managed devices")
        .execute(&mut *tx)
        .await
        .map_err(&err)?;
        tx.commit().await.map_err(&err)
    }

    async fn serve(mut self, mut jobs: mpsc::UnboundedReceiver<(Arc<str>, Job)>) {
        loop {
            let wait = self
                .touched_since
                .map(|t| (t + TOUCH_INTERVAL).saturating_duration_since(Instant::now()));
            let first = match wait {
                Some(wait) => match tokio::time::timeout(wait, jobs.recv()).await {
                    Ok(j) => j,
                    Err(_) => {
                        self.flush_touched().await;
                        continue;
                    }
                },
                None => jobs.recv().await,
            };
            let Some(first) = first else {
                break;
            };
            let mut batch = vec![first];
            while batch.len() < self.config.max_batch {
                match jobs.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
            self.process(batch).await;
            if self
                .touched_since
                .is_some_and(|t| t.elapsed() >= TOUCH_INTERVAL)
            {
                self.flush_touched().await;
            }
            if self.last_trim.elapsed() >= TRIM_INTERVAL {
                self.last_trim = Instant::now();
                if let Err(e) = self.trim_by_age(SystemTime::now()).await {
                    tracing::warn!("dropping old events failed: {e}");
                }
            }
        }
        while !self.touched.is_empty() {
            self.flush_touched().await;
        }
    }

    /// After a failure: if the connection itself is gone (the server restarted, the
    /// network failed), makes a new one, now or before the next job.
    async fn heal(&mut self) {
        if !self.broken && self.conn.ping().await.is_ok() {
            return;
        }
        match open_connection(&self.options, self.backend).await {
            Ok(conn) => {
                if self.broken {
                    tracing::info!("{} database reachable again", self.backend);
                }
                self.conn = conn;
                self.broken = false;
            }
            Err(e) => {
                if !self.broken {
                    tracing::error!("{} database unreachable: {e}", self.backend);
                }
                self.broken = true;
            }
        }
    }

    async fn process(&mut self, batch: Vec<(Arc<str>, Job)>) {
        if self.broken {
            self.heal().await;
        }
        let mut writes = Vec::new();
        let mut reads = Vec::new();
        for (sid, job) in batch {
            match job {
                Job::Commit(ops, reply) => writes.push((Write::Ops(sid, ops), reply)),
                Job::Events(events, reply) => writes.push((Write::Events(sid, events), reply)),
                Job::Touch(seen) => {
                    for (device, at, disk) in seen {
                        self.touched.insert((sid.clone(), device), (at, disk));
                    }
                    self.touched_since.get_or_insert_with(Instant::now);
                }
                other => reads.push((sid, other)),
            }
        }
        if !writes.is_empty() {
            self.commit_group(writes).await;
        }
        for (sid, job) in reads {
            if *self.server_id != *sid {
                self.server_id = sid.to_string();
            }
            self.read(job).await;
        }
    }

    /// Commits every write in one transaction; if that fails, each on its own, so a bad
    /// write fails only its caller.
    async fn commit_group(&mut self, writes: Vec<(Write, super::Reply<()>)>) {
        let all: Vec<&Write> = writes.iter().map(|(w, _)| w).collect();
        let events = all.iter().any(|w| matches!(w, Write::Events(..)));
        let mut first = self.transaction(&all).await;
        if first.is_err() {
            // A connection lost since the last job fails the first statement: once more
            // on a new one.
            self.heal().await;
            first = self.transaction(&all).await;
        }
        match first {
            Ok(()) => {
                for (_, reply) in writes {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(e) if writes.len() == 1 => {
                if let Some((_, reply)) = writes.into_iter().next() {
                    let _ = reply.send(Err(e));
                }
                return;
            }
            Err(_) => {
                for (w, reply) in writes {
                    let r = self.transaction(&[&w]).await;
                    let _ = reply.send(r);
                }
            }
        }
        if events && let Err(e) = self.trim_by_count().await {
            tracing::warn!("dropping events past the count limit failed: {e}");
        }
    }

    async fn transaction(&mut self, writes: &[&Write]) -> Result<(), ServerError> {
        let err = self.query_error("committing changes");
        let events_err = self.query_error("storing events");
        let backend = self.backend;
        let mut tx = begin(&mut self.conn, self.backend).await.map_err(&err)?;
        for w in writes {
            match w {
                Write::Ops(sid, ops) => {
                    for op in ops {
                        apply(&mut tx, sid, op).await.map_err(|source| {
                            ServerError::Storage(StorageError::Query {
                                backend,
                                what: op_name(op),
                                source,
                            })
                        })?;
                    }
                }
                Write::Events(sid, events) => insert_events(&mut tx, sid, events)
                    .await
                    .map_err(&events_err)?,
            }
        }
        tx.commit().await.map_err(&err)
    }

    async fn flush_touched(&mut self) {
        self.touched_since = None;
        if self.touched.is_empty() {
            return;
        }
        let touched: Vec<(TouchKey, (u64, Option<u64>))> =
            if self.touched.len() <= TOUCHES_PER_TRANSACTION {
                self.touched.drain().collect()
            } else {
                let keys: Vec<TouchKey> = self
                    .touched
                    .keys()
                    .take(TOUCHES_PER_TRANSACTION)
                    .cloned()
                    .collect();
                // The rest go in the next turns, right after the jobs waiting now.
                let now = Instant::now();
                self.touched_since = Some(now.checked_sub(TOUCH_INTERVAL).unwrap_or(now));
                keys.into_iter()
                    .filter_map(|k| self.touched.remove_entry(&k))
                    .collect()
            };
        let n = touched.len();
        let err = self.query_error("writing last-seen times");
        let r: Result<(), ServerError> = async {
            let mut tx = begin(&mut self.conn, self.backend).await.map_err(&err)?;
            for ((sid, device), (at, disk)) in &touched {
                sqlx::query(
                    "UPDATE devices SET last_seen = $1, free_disk_bytes = COALESCE($2, free_disk_bytes) \
                     WHERE server_id = $3 AND id = $4",
                )
                .bind(i64_of(*at))
                .bind(disk.map(i64_of))
                .bind(&**sid)
                .bind(device)
                .execute(&mut *tx)
                .await
                .map_err(&err)?;
            }
            tx.commit().await.map_err(&err)
        }
        .await;
        if let Err(e) = r {
            tracing::warn!("last-seen times of {n} device(s) not written: {e}");
        }
    }

    async fn trim_by_count(&mut self) -> Result<u64, ServerError> {
        let err = self.query_error("dropping events past the count limit");
        let max: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM events")
            .fetch_one(&mut self.conn)
            .await
            .map_err(&err)?;
        let Some(cut) = max.map(|m| m - i64_of(self.config.max_events)) else {
            return Ok(0);
        };
        if cut <= 0 {
            return Ok(0);
        }
        let r = sqlx::query("DELETE FROM events WHERE seq <= $1")
            .bind(cut)
            .execute(&mut self.conn)
            .await
            .map_err(&err)?;
        Ok(r.rows_affected())
    }

    async fn trim_by_age(&mut self, now: SystemTime) -> Result<u64, ServerError> {
        let err = self.query_error("dropping events past their age");
        let cutoff = unix(now).saturating_sub(self.config.max_event_age().as_secs());
        let r = sqlx::query("DELETE FROM events WHERE received_at < $1")
            .bind(i64_of(cutoff))
            .execute(&mut self.conn)
            .await
            .map_err(&err)?;
        Ok(r.rows_affected())
    }

    async fn read(&mut self, job: Job) {
        match job {
            Job::Load(reply) => {
                let _ = reply.send(self.load().await);
            }
            Job::Counts(reply) => {
                let _ = reply.send(self.counts().await);
            }
            Job::Issues(reply) => {
                let _ = reply.send(self.security_issues().await);
            }
            Job::ReadEvents(query, reply) => {
                let _ = reply.send(self.events(&query).await);
            }
            Job::Trim(now, reply) => {
                let _ = reply.send(self.trim_by_age(now).await);
            }
            Job::Raw(sql, reply) => {
                let err = self.query_error("running a statement");
                let r = self.conn.execute(sql.as_str()).await.map(drop).map_err(err);
                let _ = reply.send(r);
            }
            Job::PolicyObjects(kind, id, reply) => {
                let err = self.query_error("reading policy objects");
                let rows = sqlx::query(
                    "SELECT id, document FROM policy_objects WHERE server_id = $1 AND kind = $2 \
                     AND (CAST($3 AS TEXT) IS NULL OR id = $3) ORDER BY id",
                )
                .bind(&self.server_id)
                .bind(kind.as_str())
                .bind(id.as_deref())
                .fetch_all(&mut self.conn)
                .await
                .map_err(&err)
                .and_then(|rows| {
                    rows.iter()
                        .map(|r| Ok((r.try_get("id")?, r.try_get("document")?)))
                        .collect::<Result<Vec<(String, String)>, sqlx::Error>>()
                        .map_err(&err)
                });
                let _ = reply.send(rows);
            }
            Job::Flush(reply) => {
                while !self.touched.is_empty() {
                    self.flush_touched().await;
                }
                let _ = reply.send(Ok(()));
            }
            Job::Commit(..) | Job::Events(..) | Job::Touch(_) => {}
        }
    }

    async fn security_issues(&mut self) -> Result<Vec<SecurityIssue>, ServerError> {
        let err = self.query_error("reading security issues");
        let mut issues = Vec::new();
        for r in sqlx::query(
            "SELECT device_id, kind, severity, opened_at, body, acknowledged_at, acknowledged_by \
             FROM security_issues WHERE server_id = $1 ORDER BY device_id, kind",
        )
        .bind(&self.server_id)
        .fetch_all(&mut self.conn)
        .await
        .map_err(&err)?
        {
            issues.push(SecurityIssue {
                device: r.try_get("device_id").map_err(&err)?,
                kind: r.try_get("kind").map_err(&err)?,
                severity: i32::try_from(r.try_get::<i64, _>("severity").map_err(&err)?)
                    .unwrap_or_default(),
                opened_at_unix: u64_of(r.try_get("opened_at").map_err(&err)?),
                body: r.try_get("body").map_err(&err)?,
                acknowledged_at_unix: r
                    .try_get::<Option<i64>, _>("acknowledged_at")
                    .map_err(&err)?
                    .map(u64_of),
                acknowledged_by: r.try_get("acknowledged_by").map_err(&err)?,
            });
        }
        Ok(issues)
    }

    async fn counts(&mut self) -> Result<Counts, ServerError> {
        let err = self.query_error("counting rows");
        let sid = self.server_id.clone();
        let mut count = async |sql: &'static str| -> Result<u64, ServerError> {
            let n: i64 = sqlx::query_scalar(sql)
                .bind(&sid)
                .fetch_one(&mut self.conn)
                .await
                .map_err(&err)?;
            Ok(u64_of(n))
        };
        Ok(Counts {
            devices: count("SELECT COUNT(*) FROM devices WHERE server_id = $1").await?,
            tokens: count("SELECT COUNT(*) FROM enrollment_tokens WHERE server_id = $1").await?,
            events: count("SELECT COUNT(*) FROM events WHERE server_id = $1").await?,
        })
    }

    async fn events(&mut self, q: &super::EventQuery) -> Result<Vec<StoredEvent>, ServerError> {
        let err = self.query_error("reading events");
        // `CAST(.. AS TEXT) IS NULL` reads the same in both dialects: an absent filter.
        let rows = sqlx::query(
            "SELECT seq, device_id, device_seq, at_ms, severity, kind, body FROM events \
             WHERE server_id = $1 AND seq > $2 \
             AND (CAST($4 AS TEXT) IS NULL OR kind = $4) \
             AND (CAST($5 AS TEXT) IS NULL OR device_id = $5) \
             ORDER BY seq LIMIT $3",
        )
        .bind(&self.server_id)
        .bind(i64_of(q.after))
        .bind(i64::try_from(q.limit).unwrap_or(i64::MAX))
        .bind(q.kind.as_deref())
        .bind(q.device.as_deref())
        .fetch_all(&mut self.conn)
        .await
        .map_err(&err)?;
        rows.iter()
            .map(|r| {
                Ok(StoredEvent {
                    seq: u64_of(r.try_get("seq")?),
                    event: EventRecord {
                        device: r.try_get("device_id")?,
                        device_seq: r.try_get::<Option<i64>, _>("device_seq")?.map(u64_of),
                        at_unix_ms: r.try_get("at_ms")?,
                        severity: i32::try_from(r.try_get::<i64, _>("severity")?)
                            .unwrap_or_default(),
                        kind: r.try_get("kind")?,
                        body: r.try_get("body")?,
                    },
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(&err)
    }

    async fn load(&mut self) -> Result<Snapshot, ServerError> {
        let err = self.query_error("loading the server's state");
        let sid = self.server_id.clone();
        let mut registry = Registry::new(&sid)?;
        let fetch = async |conn: &mut AnyConnection, sql: &'static str| {
            sqlx::query(sql).bind(&sid).fetch_all(conn).await
        };
        let rows = fetch(
            &mut self.conn,
            "SELECT id, name, parent FROM admin_groups WHERE server_id = $1",
        )
        .await
        .map_err(&err)?;
        for r in &rows {
            registry.apply(Op::PutGroup {
                id: r.try_get("id").map_err(&err)?,
                group: Group {
                    name: r.try_get("name").map_err(&err)?,
                    parent: r.try_get("parent").map_err(&err)?,
                },
            });
        }
        let rows = fetch(
            &mut self.conn,
            "SELECT id, group_id, cert_sha256, cert_serial, enrolled_at, last_seen, \
             broadcast_domain, os_class, free_disk_bytes, enrolled_with, tags, cert_expires_at, \
             reserve_cert_sha256, reserve_cert_serial, reserve_cert_expires_at, network_location \
             FROM devices \
             WHERE server_id = $1",
        )
        .await
        .map_err(&err)?;
        for r in &rows {
            let (id, device) = device_of(r).map_err(&err)?;
            registry.apply(Op::PutDevice { id, device });
        }
        let rows = fetch(
            &mut self.conn,
            "SELECT token_sha256, group_id, device_id, expires_at FROM enrollment_tokens \
             WHERE server_id = $1",
        )
        .await
        .map_err(&err)?;
        for r in &rows {
            registry.apply(Op::PutToken {
                key: r.try_get("token_sha256").map_err(&err)?,
                token: TokenRecord {
                    group: r.try_get("group_id").map_err(&err)?,
                    device: r.try_get("device_id").map_err(&err)?,
                    expires_unix: u64_of(r.try_get("expires_at").map_err(&err)?),
                },
            });
        }
        let rows = fetch(
            &mut self.conn,
            "SELECT id, kind, device_id, addr, dns_names, cert_sha256 FROM gateways WHERE server_id = $1",
        )
        .await
        .map_err(&err)?;
        for r in &rows {
            let id: String = r.try_get("id").map_err(&err)?;
            let gateway = gateway_of(r).map_err(&err)?.ok_or_else(|| {
                ServerError::Storage(StorageError::BadRow {
                    what: format!("gateway {id:?}: unknown kind or bad address"),
                })
            })?;
            registry.apply(Op::PutGateway { id, gateway });
        }
        // Group scopes (which the database ties to their group) and the others, merged in
        // registration order.
        let rows = fetch(
            &mut self.conn,
            "SELECT device_id, group_id AS scope, position FROM dp_scopes WHERE server_id = $1 \
             UNION ALL SELECT device_id, scope, position FROM dp_scope_refs \
             WHERE server_id = $1 ORDER BY device_id, position",
        )
        .await
        .map_err(&err)?;
        let mut dps: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in &rows {
            dps.entry(r.try_get("device_id").map_err(&err)?)
                .or_default()
                .push(r.try_get("scope").map_err(&err)?);
        }
        for (device, scopes) in dps {
            registry.apply(Op::PutDpScopes { device, scopes });
        }
        let mut epochs = BTreeMap::new();
        for r in fetch(
            &mut self.conn,
            "SELECT scope, epoch FROM dp_epochs WHERE server_id = $1",
        )
        .await
        .map_err(&err)?
        {
            epochs.insert(
                r.try_get("scope").map_err(&err)?,
                u64_of(r.try_get("epoch").map_err(&err)?),
            );
        }
        let mut policy = BTreeMap::new();
        for r in fetch(
            &mut self.conn,
            "SELECT kind, id, document FROM policy_objects WHERE server_id = $1",
        )
        .await
        .map_err(&err)?
        {
            let kind: String = r.try_get("kind").map_err(&err)?;
            let kind = PolicyObjectKind::parse(&kind).ok_or_else(|| {
                ServerError::Storage(StorageError::BadRow {
                    what: format!("policy object kind {kind:?}"),
                })
            })?;
            policy.insert(
                (kind, r.try_get("id").map_err(&err)?),
                r.try_get("document").map_err(&err)?,
            );
        }
        let mut updates = Vec::new();
        for r in fetch(
            &mut self.conn,
            "SELECT id, name, version, size, sha256, published_at FROM update_objects \
             WHERE server_id = $1 ORDER BY id",
        )
        .await
        .map_err(&err)?
        {
            updates.push(UpdateObject {
                id: r.try_get("id").map_err(&err)?,
                name: r.try_get("name").map_err(&err)?,
                version: u64_of(r.try_get("version").map_err(&err)?),
                size: u64_of(r.try_get("size").map_err(&err)?),
                sha256: r.try_get("sha256").map_err(&err)?,
                published_at_unix: u64_of(r.try_get("published_at").map_err(&err)?),
            });
        }
        let issues = self.security_issues().await?;
        let mut meta = BTreeMap::new();
        for r in fetch(
            &mut self.conn,
            "SELECT key, value FROM server_meta WHERE server_id = $1",
        )
        .await
        .map_err(&err)?
        {
            meta.insert(
                r.try_get("key").map_err(&err)?,
                r.try_get("value").map_err(&err)?,
            );
        }
        let mut accounts = Vec::new();
        for r in fetch(
            &mut self.conn,
            "SELECT name, role, password_hash, created_at, disabled FROM accounts \
             WHERE server_id = $1 ORDER BY name",
        )
        .await
        .map_err(&err)?
        {
            let name: String = r.try_get("name").map_err(&err)?;
            let role: String = r.try_get("role").map_err(&err)?;
            let role = crate::Role::parse(&role).ok_or_else(|| {
                ServerError::Storage(StorageError::BadRow {
                    what: format!("role {role:?} of account {name:?}"),
                })
            })?;
            let mut a = crate::Account::new(
                name,
                role,
                r.try_get("password_hash").map_err(&err)?,
                u64_of(r.try_get("created_at").map_err(&err)?),
            );
            a.disabled = r.try_get::<i64, _>("disabled").map_err(&err)? != 0;
            accounts.push(a);
        }
        let mut api_tokens = Vec::new();
        for r in fetch(
            &mut self.conn,
            "SELECT id, account, token_sha256, label, created_at, revoked_at FROM api_tokens \
             WHERE server_id = $1 ORDER BY id",
        )
        .await
        .map_err(&err)?
        {
            api_tokens.push(crate::ApiToken {
                id: r.try_get("id").map_err(&err)?,
                account: r.try_get("account").map_err(&err)?,
                token_sha256: r.try_get("token_sha256").map_err(&err)?,
                label: r.try_get("label").map_err(&err)?,
                created_at_unix: u64_of(r.try_get("created_at").map_err(&err)?),
                revoked_at_unix: r
                    .try_get::<Option<i64>, _>("revoked_at")
                    .map_err(&err)?
                    .map(u64_of),
            });
        }
        let mut virtual_servers = Vec::new();
        for r in fetch(
            &mut self.conn,
            "SELECT id, name, disabled, multicast_block, created_at FROM servers \
             WHERE parent = $1 ORDER BY id",
        )
        .await
        .map_err(&err)?
        {
            virtual_servers.push(VirtualServerRecord {
                id: r.try_get("id").map_err(&err)?,
                name: r.try_get("name").map_err(&err)?,
                disabled: r.try_get::<i64, _>("disabled").map_err(&err)? != 0,
                multicast_block: u32::try_from(
                    r.try_get::<Option<i64>, _>("multicast_block")
                        .map_err(&err)?
                        .unwrap_or(0),
                )
                .unwrap_or(0),
                created_at_unix: u64_of(r.try_get("created_at").map_err(&err)?),
            });
        }
        // What loading applied is the state itself, not changes to commit.
        let _ = registry.take_journal();
        Ok(Snapshot {
            virtual_servers,
            accounts,
            api_tokens,
            registry,
            epochs,
            policy,
            updates,
            issues,
            meta,
        })
    }
}

fn device_of(r: &AnyRow) -> Result<(String, Device), sqlx::Error> {
    Ok((
        r.try_get("id")?,
        Device {
            group: r.try_get("group_id")?,
            cert_sha256: r.try_get("cert_sha256")?,
            cert_serial: r.try_get("cert_serial")?,
            enrolled_at_unix: u64_of(r.try_get("enrolled_at")?),
            last_seen_unix: r.try_get::<Option<i64>, _>("last_seen")?.map_or(0, u64_of),
            broadcast_domain: r.try_get("broadcast_domain")?,
            os_class: r.try_get("os_class")?,
            free_disk_bytes: r.try_get::<Option<i64>, _>("free_disk_bytes")?.map(u64_of),
            enrolled_with: r.try_get("enrolled_with")?,
            tags: r
                .try_get::<String, _>("tags")?
                .split(',')
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect(),
            cert_expires_unix: r
                .try_get::<Option<i64>, _>("cert_expires_at")?
                .map_or(0, u64_of),
            reserve_cert: match (
                r.try_get::<Option<String>, _>("reserve_cert_sha256")?,
                r.try_get::<Option<String>, _>("reserve_cert_serial")?,
                r.try_get::<Option<i64>, _>("reserve_cert_expires_at")?,
            ) {
                (Some(sha256), Some(serial), Some(expires)) => Some(ReserveCertificate {
                    sha256,
                    serial,
                    expires_unix: u64_of(expires),
                }),
                _ => None,
            },
            network_location: r.try_get("network_location")?,
        },
    ))
}

fn gateway_of(r: &AnyRow) -> Result<Option<GatewayRegistration>, sqlx::Error> {
    let kind: String = r.try_get("kind")?;
    Ok(match kind.as_str() {
        "remote_office" => {
            let cert: Option<String> = r.try_get("cert_sha256")?;
            r.try_get::<Option<String>, _>("device_id")?
                .map(|device_id| GatewayRegistration::RemoteOffice {
                    device_id,
                    certificate_sha256: cert.unwrap_or_default(),
                })
        }
        "dmz" => {
            let addr: Option<String> = r.try_get("addr")?;
            let names: Option<String> = r.try_get("dns_names")?;
            addr.and_then(|a| a.parse().ok())
                .map(|addr| GatewayRegistration::Dmz {
                    addr,
                    dns_names: names
                        .unwrap_or_default()
                        .split(' ')
                        .filter(|n| !n.is_empty())
                        .map(String::from)
                        .collect(),
                })
        }
        _ => None,
    })
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::PutGroup { .. } => "writing a group",
        Op::DeleteGroup { .. } => "removing a group",
        Op::PutDevice { .. } => "writing a device",
        Op::DeleteDevice { .. } => "removing a device",
        Op::PutToken { .. } => "writing an enrollment token",
        Op::DeleteToken { .. } => "removing an enrollment token",
        Op::PutGateway { .. } => "writing a gateway",
        Op::DeleteGateway { .. } => "removing a gateway",
        Op::PutDpScopes { .. } => "writing distribution point scopes",
        Op::PutEpoch { .. } => "writing a distribution point epoch",
        Op::PutPolicyObject { .. } => "writing a policy object",
        Op::DeletePolicyObject { .. } => "removing a policy object",
        Op::PutUpdateObject(_) => "writing an update object",
        Op::PutSecurityIssue(_) => "writing a security issue",
        Op::DeleteSecurityIssue { .. } => "closing a security issue",
        Op::AcknowledgeSecurityIssue { .. } => "acknowledging a security issue",
        Op::PutMeta { .. } => "writing a marker",
        Op::PutAccount(_) => "writing an account",
        Op::PutApiToken(_) => "writing an API token",
        Op::PutVirtualServer(_) => "writing a virtual server",
        Op::DeleteVirtualServer { .. } => "removing a virtual server",
    }
}

/// The tables holding a server's rows, children before parents.
const SERVER_TABLES: &[&str] = &[
    "api_tokens",
    "accounts",
    "dp_scope_refs",
    "dp_scopes",
    "dp_epochs",
    "security_issues",
    "events",
    "policy_objects",
    "update_objects",
    "server_meta",
    "gateways",
    "enrollment_tokens",
    "devices",
    "admin_groups",
];

async fn put_virtual_server(
    conn: &mut AnyConnection,
    parent: &str,
    v: &VirtualServerRecord,
) -> Result<(), sqlx::Error> {
    // Never turns another server's row (the main server's) into a virtual server.
    sqlx::query(
        "INSERT INTO servers (id, created_at, parent, name, disabled, multicast_block) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, disabled = excluded.disabled \
         WHERE servers.parent = excluded.parent",
    )
    .bind(&v.id)
    .bind(i64_of(v.created_at_unix))
    .bind(parent)
    .bind(&v.name)
    .bind(i64::from(v.disabled))
    .bind(i64::from(v.multicast_block))
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO admin_groups (server_id, id, name, parent) VALUES ($1, $2, $3, NULL) \
         ON CONFLICT (server_id, id) DO NOTHING",
    )
    .bind(&v.id)
    .bind(ROOT_GROUP)
    .bind("Managed devices")
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn delete_virtual_server(
    conn: &mut AnyConnection,
    parent: &str,
    id: &str,
) -> Result<(), sqlx::Error> {
    let ours: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM servers WHERE id = $1 AND parent = $2")
            .bind(id)
            .bind(parent)
            .fetch_one(&mut *conn)
            .await?;
    if ours == 0 {
        return Ok(());
    }
    for table in SERVER_TABLES {
        sqlx::query(&format!("DELETE FROM {table} WHERE server_id = $1"))
            .bind(id)
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query("DELETE FROM servers WHERE id = $1 AND parent = $2")
        .bind(id)
        .bind(parent)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn apply(conn: &mut AnyConnection, sid: &str, op: &Op) -> Result<(), sqlx::Error> {
    let q = match op {
        Op::PutVirtualServer(v) => return put_virtual_server(conn, sid, v).await,
        Op::DeleteVirtualServer { id } => return delete_virtual_server(conn, sid, id).await,
        Op::PutGroup { id, group } => sqlx::query(
            "INSERT INTO admin_groups (server_id, id, name, parent) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (server_id, id) DO UPDATE SET name = excluded.name, parent = excluded.parent",
        )
        .bind(sid)
        .bind(id)
        .bind(&group.name)
        .bind(group.parent.as_deref()),
        Op::DeleteGroup { id } => {
            sqlx::query("DELETE FROM admin_groups WHERE server_id = $1 AND id = $2")
                .bind(sid)
                .bind(id)
        }
        Op::PutDevice { id, device: d } => sqlx::query(
            "INSERT INTO devices (server_id, id, group_id, cert_sha256, cert_serial, enrolled_at, \
             last_seen, broadcast_domain, os_class, free_disk_bytes, enrolled_with, tags, \
             cert_expires_at, reserve_cert_sha256, reserve_cert_serial, reserve_cert_expires_at, \
             network_location) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) \
             ON CONFLICT (server_id, id) DO UPDATE SET group_id = excluded.group_id, \
             cert_sha256 = excluded.cert_sha256, cert_serial = excluded.cert_serial, \
             enrolled_at = excluded.enrolled_at, last_seen = excluded.last_seen, \
             broadcast_domain = excluded.broadcast_domain, os_class = excluded.os_class, \
             free_disk_bytes = excluded.free_disk_bytes, enrolled_with = excluded.enrolled_with, \
             tags = excluded.tags, cert_expires_at = excluded.cert_expires_at, \
             reserve_cert_sha256 = excluded.reserve_cert_sha256, \
             reserve_cert_serial = excluded.reserve_cert_serial, \
             reserve_cert_expires_at = excluded.reserve_cert_expires_at, \
             network_location = excluded.network_location",
        )
        .bind(sid)
        .bind(id)
        .bind(&d.group)
        .bind(&d.cert_sha256)
        .bind(&d.cert_serial)
        .bind(i64_of(d.enrolled_at_unix))
        .bind((d.last_seen_unix > 0).then(|| i64_of(d.last_seen_unix)))
        .bind(d.broadcast_domain.as_deref())
        .bind(d.os_class.as_deref())
        .bind(d.free_disk_bytes.map(i64_of))
        .bind(&d.enrolled_with)
        .bind(d.tags.iter().map(String::as_str).collect::<Vec<_>>().join(","))
        .bind((d.cert_expires_unix > 0).then(|| i64_of(d.cert_expires_unix)))
        .bind(d.reserve_cert.as_ref().map(|r| r.sha256.as_str()))
        .bind(d.reserve_cert.as_ref().map(|r| r.serial.as_str()))
        .bind(d.reserve_cert.as_ref().map(|r| i64_of(r.expires_unix)))
        .bind(d.network_location.as_deref()),
        Op::DeleteDevice { id } => {
            for table in ["dp_scopes", "dp_scope_refs"] {
                sqlx::query(&format!(
                    "DELETE FROM {table} WHERE server_id = $1 AND device_id = $2"
                ))
                .bind(sid)
                .bind(id)
                .execute(&mut *conn)
                .await?;
            }
            sqlx::query("DELETE FROM devices WHERE server_id = $1 AND id = $2")
                .bind(sid)
                .bind(id)
        }
        Op::PutToken { key, token } => sqlx::query(
            "INSERT INTO enrollment_tokens (server_id, token_sha256, group_id, device_id, expires_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (server_id, token_sha256) DO UPDATE SET \
             group_id = excluded.group_id, device_id = excluded.device_id, expires_at = excluded.expires_at",
        )
        .bind(sid)
        .bind(key)
        .bind(&token.group)
        .bind(token.device.as_deref())
        .bind(i64_of(token.expires_unix)),
        Op::DeleteToken { key } => {
            sqlx::query("DELETE FROM enrollment_tokens WHERE server_id = $1 AND token_sha256 = $2")
                .bind(sid)
                .bind(key)
        }
        Op::PutGateway { id, gateway } => {
            let (kind, device, addr, names, cert) = match gateway {
                GatewayRegistration::RemoteOffice {
                    device_id,
                    certificate_sha256,
                } => (
                    "remote_office",
                    Some(device_id.clone()),
                    None,
                    None,
                    Some(certificate_sha256.clone()).filter(|c| !c.is_empty()),
                ),
                GatewayRegistration::Dmz { addr, dns_names } => (
                    "dmz",
                    None,
                    Some(addr.to_string()),
                    Some(dns_names.join(" ")),
                    None,
                ),
            };
            sqlx::query(
                "INSERT INTO gateways (server_id, id, kind, device_id, addr, dns_names, \
                 cert_sha256) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (server_id, id) DO UPDATE SET kind = excluded.kind, \
                 device_id = excluded.device_id, addr = excluded.addr, \
                 dns_names = excluded.dns_names, cert_sha256 = excluded.cert_sha256",
            )
            .bind(sid)
            .bind(id)
            .bind(kind)
            .bind(device)
            .bind(addr)
            .bind(names)
            .bind(cert)
        }
        Op::DeleteGateway { id } => {
            sqlx::query("DELETE FROM gateways WHERE server_id = $1 AND id = $2")
                .bind(sid)
                .bind(id)
        }
        Op::PutDpScopes { device, scopes } => {
            for table in ["dp_scopes", "dp_scope_refs"] {
                sqlx::query(&format!(
                    "DELETE FROM {table} WHERE server_id = $1 AND device_id = $2"
                ))
                .bind(sid)
                .bind(device)
                .execute(&mut *conn)
                .await?;
            }
            for (i, key) in scopes.iter().enumerate() {
                let sql = match crate::DpScope::parse(key) {
                    Ok(crate::DpScope::Group(_)) => {
                        "INSERT INTO dp_scopes (server_id, device_id, group_id, position) \
                         VALUES ($1, $2, $3, $4)"
                    }
                    _ => {
                        "INSERT INTO dp_scope_refs (server_id, device_id, scope, position) \
                         VALUES ($1, $2, $3, $4)"
                    }
                };
                sqlx::query(sql)
                    .bind(sid)
                    .bind(device)
                    .bind(key)
                    .bind(i as i64)
                    .execute(&mut *conn)
                    .await?;
            }
            return Ok(());
        }
        Op::PutEpoch { scope, epoch } => sqlx::query(
            "INSERT INTO dp_epochs (server_id, scope, epoch) VALUES ($1, $2, $3) \
             ON CONFLICT (server_id, scope) DO UPDATE SET epoch = excluded.epoch \
             WHERE excluded.epoch > dp_epochs.epoch",
        )
        .bind(sid)
        .bind(scope)
        .bind(i64_of(*epoch)),
        Op::PutPolicyObject { kind, id, document } => sqlx::query(
            "INSERT INTO policy_objects (server_id, kind, id, document) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (server_id, kind, id) DO UPDATE SET document = excluded.document",
        )
        .bind(sid)
        .bind(kind.as_str())
        .bind(id)
        .bind(document),
        Op::DeletePolicyObject { kind, id } => sqlx::query(
            "DELETE FROM policy_objects WHERE server_id = $1 AND kind = $2 AND id = $3",
        )
        .bind(sid)
        .bind(kind.as_str())
        .bind(id),
        Op::PutUpdateObject(u) => sqlx::query(
            "INSERT INTO update_objects (server_id, id, name, version, size, sha256, published_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (server_id, id) DO UPDATE SET \
             name = excluded.name, version = excluded.version, size = excluded.size, \
             sha256 = excluded.sha256, published_at = excluded.published_at",
        )
        .bind(sid)
        .bind(&u.id)
        .bind(&u.name)
        .bind(i64_of(u.version))
        .bind(i64_of(u.size))
        .bind(&u.sha256)
        .bind(i64_of(u.published_at_unix)),
        Op::PutSecurityIssue(i) => sqlx::query(
            "INSERT INTO security_issues (server_id, device_id, kind, severity, opened_at, body) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (server_id, device_id, kind) DO UPDATE SET \
             severity = excluded.severity, body = excluded.body",
        )
        .bind(sid)
        .bind(&i.device)
        .bind(&i.kind)
        .bind(i64::from(i.severity))
        .bind(i64_of(i.opened_at_unix))
        .bind(&i.body),
        Op::DeleteSecurityIssue { device, kind } => sqlx::query(
            "DELETE FROM security_issues WHERE server_id = $1 AND device_id = $2 AND kind = $3",
        )
        .bind(sid)
        .bind(device)
        .bind(kind),
        Op::AcknowledgeSecurityIssue {
            device,
            kind,
            by,
            at_unix,
        } => sqlx::query(
            "UPDATE security_issues SET acknowledged_at = $1, acknowledged_by = $2 \
             WHERE server_id = $3 AND device_id = $4 AND kind = $5",
        )
        .bind(i64_of(*at_unix))
        .bind(by)
        .bind(sid)
        .bind(device)
        .bind(kind),
        Op::PutAccount(a) => sqlx::query(
            "INSERT INTO accounts (server_id, name, role, password_hash, created_at, disabled) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (server_id, name) DO UPDATE SET \
             role = excluded.role, password_hash = excluded.password_hash, \
             disabled = excluded.disabled",
        )
        .bind(sid)
        .bind(&a.name)
        .bind(a.role.as_str())
        .bind(&a.password_hash)
        .bind(i64_of(a.created_at_unix))
        .bind(i64::from(a.disabled)),
        Op::PutApiToken(t) => sqlx::query(
            "INSERT INTO api_tokens (server_id, id, account, token_sha256, label, created_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (server_id, id) DO UPDATE SET \
             revoked_at = excluded.revoked_at, label = excluded.label",
        )
        .bind(sid)
        .bind(&t.id)
        .bind(&t.account)
        .bind(&t.token_sha256)
        .bind(&t.label)
        .bind(i64_of(t.created_at_unix))
        .bind(t.revoked_at_unix.map(i64_of)),
        Op::PutMeta { key, value } => sqlx::query(
            "INSERT INTO server_meta (server_id, key, value) VALUES ($1, $2, $3) \
             ON CONFLICT (server_id, key) DO UPDATE SET value = excluded.value",
        )
        .bind(sid)
        .bind(key)
        .bind(value),
    };
    q.execute(conn).await.map(drop)
}

async fn insert_events(
    conn: &mut AnyConnection,
    sid: &str,
    events: &[EventRecord],
) -> Result<(), sqlx::Error> {
    let received = i64_of(unix(SystemTime::now()));
    for chunk in events.chunks(EVENTS_PER_STATEMENT) {
        // `$n` placeholders, which both backends read (the `Any` query builder writes `?`,
        // which PostgreSQL does not).
        let mut sql = String::from(
            "INSERT INTO events (server_id, received_at, at_ms, device_id, device_seq, severity, kind, body) VALUES ",
        );
        for i in 0..chunk.len() {
            let b = i * 8;
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                b + 5,
                b + 6,
                b + 7,
                b + 8
            ));
        }
        let mut q = sqlx::query(&sql);
        for e in chunk {
            q = q
                .bind(sid)
                .bind(received)
                .bind(e.at_unix_ms)
                .bind(e.device.as_deref())
                .bind(e.device_seq.map(i64_of))
                .bind(i64::from(e.severity))
                .bind(e.kind.as_str())
                .bind(e.body.as_str());
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}
