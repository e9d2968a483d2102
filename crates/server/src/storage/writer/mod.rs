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

mod apply;
mod read;

use apply::{apply, insert_events, op_name};

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
            let _ = ready.send(Err(ServerError::os("start the storage runtime")(e)));
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
                op: "open",
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
        apply::ensure_root_group(&mut tx, &self.server_id)
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
}
