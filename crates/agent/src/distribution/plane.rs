//! The tokio side of distribution: carries out [`Plan`]s with files, sockets and tasks.
//! Owned by the agent's driver; dropping it stops every task it started.

use std::collections::{BTreeMap, HashMap};
use std::future::pending;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tracing::Instrument;

use bytes::Bytes;
use outpost_multicast::driver::{self, ReceiveOptions, SocketConfig};
use outpost_multicast::files::{self, FetchFuture, Fetcher, FileSink, FileSource, Sink};
use outpost_multicast::{Manifest, Receiver, ReceiverConfig, Sender, SenderConfig, SigningKey};
use outpost_wire::MessageCodec;
use outpost_wire::messages::{DpStatus, ScopeRef, UpdateAnnouncement};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::codec::Framed;

use super::chunks::{self, ChunkService};
use super::{Delivery, DistributionStatus, Plan, Planner, Route, ScopeKey, SentSession, Source};
use crate::AgentError;
use crate::config::{DistributionConfig, Endpoint};
use crate::identity;
use crate::store::{free_disk_bytes, read_bounded};

/// Wait before retrying a failed attempt when the route stays the same.
const RETRY: Duration = Duration::from_secs(1);
/// The DP's multicast signing key seed, in the data directory.
pub(crate) const KEY_FILE: &str = "dp-signing.seed";

fn dist(e: impl std::fmt::Display) -> AgentError {
    AgentError::Distribution(e.to_string())
}

/// Random bytes from the system's secure generator.
fn random_bytes<const N: usize>() -> Result<[u8; N], AgentError> {
    let mut b = [0u8; N];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| dist("the system random generator failed"))?;
    Ok(b)
}

fn random_u64() -> u64 {
    random_bytes::<8>().map_or_else(
        |_| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        },
        u64::from_le_bytes,
    )
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the plane needs from the agent.
pub(crate) struct Params {
    pub device_id: String,
    pub data_dir: PathBuf,
    pub cfg: DistributionConfig,
    pub tls: crate::runtime::SharedTls,
    pub endpoints: Vec<Endpoint>,
    pub timeout: Duration,
}

struct Ctx {
    p: Params,
    dir: PathBuf,
    status: Arc<Mutex<DistributionStatus>>,
}

impl Ctx {
    fn progress(&self, id: &str, f: impl FnOnce(&mut super::UpdateProgress)) {
        if let Some(u) = lock(&self.status).updates.get_mut(id) {
            f(u);
        }
    }
}

/// An update obtained by a task: the announcement it was obtained for.
pub(crate) struct Done {
    pub ann: UpdateAnnouncement,
}

/// Loads the DP signing key from the data directory, creating it on first use.
fn load_or_create_key(data_dir: &Path) -> Result<SigningKey, AgentError> {
    let path = data_dir.join(KEY_FILE);
    let seed = if path.exists() {
        let seed = read_bounded(&path, 64)?;
        if seed.len() != 32 {
            return Err(AgentError::Corrupt {
                path,
                reason: format!("{} bytes, a key seed is 32", seed.len()),
            });
        }
        seed
    } else {
        let seed: [u8; 32] = random_bytes()?;
        // Created 0600: the seed is never readable by others, not even for a moment.
        outpost_pki::store::write_atomic(&path, &seed, 0o600)?;
        seed.to_vec()
    };
    SigningKey::from_seed(&seed).map_err(dist)
}

pub(crate) struct Plane {
    ctx: Arc<Ctx>,
    planner: Planner,
    plan: watch::Sender<Arc<Plan>>,
    key: Option<Arc<SigningKey>>,
    service: Option<ChunkService>,
    advertise: String,
    held: BTreeMap<String, UpdateAnnouncement>,
    /// Obtain tasks by update id, with the SHA-256 each is after.
    fetching: HashMap<String, (Bytes, AbortHandle)>,
    senders: HashMap<String, (BTreeMap<ScopeKey, u64>, AbortHandle)>,
    tasks: JoinSet<()>,
    done: mpsc::UnboundedSender<Done>,
    started: Instant,
}

impl Plane {
    /// Creates the update directory; with `serve`, loads the DP key and starts the block
    /// service.
    pub(crate) async fn start(
        p: Params,
    ) -> Result<(Plane, mpsc::UnboundedReceiver<Done>), AgentError> {
        let dir = p.data_dir.join("updates");
        std::fs::create_dir_all(&dir).map_err(AgentError::io("create", &dir))?;
        let (key, service, advertise) = if p.cfg.serve {
            let key = load_or_create_key(&p.data_dir)?;
            let service =
                ChunkService::start(p.cfg.unicast_bind, dir.clone(), p.device_id.clone()).await?;
            let bound = service.local_addr();
            let advertise = match &p.cfg.unicast_advertise {
                Some(a) => a.clone(),
                None if !bound.ip().is_unspecified() => bound.to_string(),
                None if !p.cfg.multicast_iface.is_unspecified() => {
                    format!("{}:{}", p.cfg.multicast_iface, bound.port())
                }
                None => {
                    tracing::warn!(
                        "agent {}: block service on {bound} has no address to advertise \
                         (set distribution.unicast_advertise); devices will fetch missed \
                         blocks from the server",
                        p.device_id
                    );
                    String::new()
                }
            };
            (Some(Arc::new(key)), Some(service), advertise)
        } else {
            (None, None, String::new())
        };
        let (done, done_rx) = mpsc::unbounded_channel();
        let planner = Planner::new(p.device_id.clone(), p.cfg.serve);
        let (plan, _) = watch::channel(Arc::new(Plan {
            route: Route::Server,
            serve: None,
            roles: Vec::new(),
            updates: Vec::new(),
            stepped_down: false,
            stale: 0,
        }));
        Ok((
            Plane {
                ctx: Arc::new(Ctx {
                    p,
                    dir,
                    status: Arc::new(Mutex::new(DistributionStatus::default())),
                }),
                planner,
                plan,
                key,
                service,
                advertise,
                held: BTreeMap::new(),
                fetching: HashMap::new(),
                senders: HashMap::new(),
                tasks: JoinSet::new(),
                done,
                started: Instant::now(),
            },
            done_rx,
        ))
    }

    /// The status shared with the agent handle.
    pub(crate) fn status(&self) -> Arc<Mutex<DistributionStatus>> {
        self.ctx.status.clone()
    }

    /// The block service's count of bytes served, if this device may serve.
    pub(crate) fn served_counter(&self) -> Option<Arc<std::sync::atomic::AtomicU64>> {
        self.service.as_ref().map(ChunkService::counter)
    }

    /// What the next sync reports as this DP's heartbeat details (empty unless it serves).
    pub(crate) fn dp_status(&self) -> Vec<DpStatus> {
        let Some(key) = &self.key else {
            return Vec::new();
        };
        let base = DpStatus {
            free_disk_bytes: free_disk_bytes(&self.ctx.dir),
            uptime_secs: self.started.elapsed().as_secs(),
            signing_key: Bytes::copy_from_slice(&key.public_key()),
            unicast_addr: self.advertise.clone(),
            ..Default::default()
        };
        let roles = &self.plan.borrow().roles;
        if roles.is_empty() {
            return vec![base];
        }
        roles
            .iter()
            .map(|((kind, id), role, epoch)| DpStatus {
                scope: Some(ScopeRef {
                    kind: *kind,
                    id: id.clone(),
                }),
                epoch: *epoch,
                role: *role as i32,
                ..base.clone()
            })
            .collect()
    }

    /// Takes the distribution part of a sync answer.
    pub(crate) fn apply(
        &mut self,
        assignments: &[outpost_wire::messages::DpAssignment],
        updates: Vec<UpdateAnnouncement>,
    ) {
        let plan = self.planner.plan(assignments, updates);
        if plan.stepped_down {
            tracing::warn!("replaced as active distribution point; sending stops");
        }
        lock(&self.ctx.status).roles = plan.roles.clone();
        let fresh: Vec<UpdateAnnouncement> = plan
            .updates
            .iter()
            .filter(|u| match chunks::check_announcement(u) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!("{e}; ignored");
                    false
                }
            })
            .cloned()
            .collect();
        self.plan.send_replace(Arc::new(plan));
        for u in fresh {
            let have = self
                .held
                .get(&u.object_id)
                .is_some_and(|h| h.sha256 == u.sha256);
            match self.fetching.get(&u.object_id) {
                _ if have => continue,
                Some((sha, _)) if *sha == u.sha256 => continue,
                // Published again under the same id while the old content was on its way:
                // the server serves only the new content now.
                Some((_, old)) => {
                    tracing::info!(
                        "{:?} replaced by version {} while being obtained",
                        u.object_id,
                        u.version
                    );
                    old.abort();
                }
                None => {}
            }
            // A new content under a held id: the old one is no longer sent, nor held.
            if self.held.remove(&u.object_id).is_some()
                && let Some((_, h)) = self.senders.remove(&u.object_id)
            {
                h.abort();
            }
            lock(&self.ctx.status).updates.insert(
                u.object_id.clone(),
                super::UpdateProgress {
                    size: u.size,
                    ..Default::default()
                },
            );
            let (ctx, plan, done) = (self.ctx.clone(), self.plan.subscribe(), self.done.clone());
            let (id, sha) = (u.object_id.clone(), u.sha256.clone());
            let h = self.tasks.spawn(
                async move {
                    let r = obtain(&ctx, &u, plan).await;
                    ctx.progress(&u.object_id, |p| {
                        p.via = Some(r);
                        p.done_bytes = u.size;
                        p.last_error = None;
                    });
                    let _ = done.send(Done { ann: u });
                }
                .instrument(tracing::info_span!("update", object = %id)),
            );
            self.fetching.insert(id, (sha, h));
        }
        self.reconcile_senders();
    }

    /// An obtain task finished. Its update is held if it is still the content wanted under
    /// its id (a task that finished just before its update was published again is not);
    /// returns whether it is.
    pub(crate) fn on_done(&mut self, d: &Done) -> bool {
        let id = &d.ann.object_id;
        let current = self
            .fetching
            .get(id)
            .is_some_and(|(sha, _)| *sha == d.ann.sha256);
        if current {
            self.fetching.remove(id);
            self.held.insert(id.clone(), d.ann.clone());
            self.reconcile_senders();
        }
        current
    }

    /// Starts a sender for every held update in the current active term; stops senders of a
    /// term that ended.
    fn reconcile_senders(&mut self) {
        let serve = self.plan.borrow().serve.clone();
        self.senders.retain(|_, (scopes, h)| {
            let keep = serve.as_ref().is_some_and(|s| s.scopes == *scopes);
            if !keep {
                h.abort();
            }
            keep
        });
        let (Some(serve), Some(key)) = (serve, &self.key) else {
            return;
        };
        for (id, ann) in &self.held {
            if self.senders.contains_key(id) {
                continue;
            }
            let slot = {
                let mut st = lock(&self.ctx.status);
                st.sent.push(SentSession {
                    object_id: id.clone(),
                    group: serve.group.to_string(),
                    ..Default::default()
                });
                st.sent.len() - 1
            };
            let (ctx, ann, key, group) = (self.ctx.clone(), ann.clone(), key.clone(), serve.group);
            let span = tracing::info_span!("multicast", object = %ann.object_id);
            let h = self.tasks.spawn(
                async move {
                    let r = multicast(&ctx, &ann, group, &key, slot).await;
                    let mut st = lock(&ctx.status);
                    if let Some(s) = st.sent.get_mut(slot) {
                        s.finished = true;
                        if let Err(e) = r {
                            tracing::warn!("multicast of {:?}: {e}", ann.object_id);
                            s.error = Some(e.to_string());
                        }
                    }
                }
                .instrument(span),
            );
            self.senders.insert(id.clone(), (serve.scopes.clone(), h));
        }
    }
}

/// Waits until the plan's route differs from `current` (never, if the plane is gone).
async fn route_change(plan: &mut watch::Receiver<Arc<Plan>>, current: &Route) {
    loop {
        if plan.changed().await.is_err() {
            pending::<()>().await;
        }
        if plan.borrow().route != *current {
            return;
        }
    }
}

/// Obtains one update by whatever route the plan names, switching when it changes, retrying
/// while it fails; ends only with the verified file in place.
async fn obtain(
    ctx: &Ctx,
    ann: &UpdateAnnouncement,
    mut plan: watch::Receiver<Arc<Plan>>,
) -> Delivery {
    if chunks::holds(&ctx.dir, ann).await {
        return Delivery::Disk;
    }
    loop {
        let route = plan.borrow_and_update().route.clone();
        let source = match &route {
            Route::Server => "server".to_string(),
            Route::ActiveDp { dp, .. } => dp.clone(),
            Route::Multicast(s) => s.dp.clone(),
        };
        ctx.progress(&ann.object_id, |p| p.source = source.clone());
        tokio::select! {
            r = attempt(ctx, ann, &route) => match r {
                Ok(via) => {
                    // A partial multicast file left by an earlier route is of no use now.
                    let part = ctx.dir.join(files::part_file_name(&ann.object_id, &ann.sha256));
                    let _ = tokio::fs::remove_file(part).await;
                    tracing::info!("update {:?} complete from {source}", ann.object_id);
                    return via;
                }
                Err(e) => {
                    tracing::info!("update {:?} from {source}: {e}", ann.object_id);
                    ctx.progress(&ann.object_id, |p| p.last_error = Some(e.to_string()));
                    tokio::select! {
                        () = tokio::time::sleep(RETRY) => {}
                        () = route_change(&mut plan, &route) => {}
                    }
                }
            },
            () = route_change(&mut plan, &route) => {
                tracing::info!(
                    "update {:?}: source changed from {source}",
                    ann.object_id
                );
            }
        }
    }
}

async fn dial_server(ctx: &Ctx) -> Result<identity::Connection, AgentError> {
    let mut last = None;
    for ep in &ctx.p.endpoints {
        let tls = lock(&ctx.p.tls).clone();
        match identity::dial(tls, ep, ctx.p.timeout).await {
            Ok(mut c) => {
                chunks::hello(&mut c, &ctx.p.device_id, ctx.p.timeout).await?;
                return Ok(c);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| dist("no endpoints")))
}

async fn attempt(
    ctx: &Ctx,
    ann: &UpdateAnnouncement,
    route: &Route,
) -> Result<Delivery, AgentError> {
    let chunk = ctx.p.cfg.chunk_bytes;
    let progress = |n: u64| ctx.progress(&ann.object_id, |p| p.done_bytes = n);
    match route {
        Route::Server => {
            let mut c = dial_server(ctx).await?;
            chunks::download(&mut c, ann, &ctx.dir, chunk, ctx.p.timeout, progress).await?;
            Ok(Delivery::Server)
        }
        Route::ActiveDp { addr, .. } => {
            let mut c = chunks::dial_dp(addr, &ctx.p.device_id, ctx.p.timeout).await?;
            chunks::download(&mut c, ann, &ctx.dir, chunk, ctx.p.timeout, progress).await?;
            Ok(Delivery::Dp)
        }
        Route::Multicast(src) => receive(ctx, ann, src).await,
    }
}

fn socket_config(cfg: &DistributionConfig, group: std::net::SocketAddr) -> SocketConfig {
    let mut s = SocketConfig::default();
    s.group = group;
    s.iface_v4 = cfg.multicast_iface;
    s.ttl = cfg.multicast_ttl;
    s.loopback = cfg.multicast_loopback;
    s
}

/// Accepts only the announced update: its name, size and whole-file hash.
struct CheckedSink<'a> {
    inner: FileSink,
    ann: &'a UpdateAnnouncement,
}

impl Sink for CheckedSink<'_> {
    fn begin(&mut self, m: &Manifest) -> outpost_multicast::Result<()> {
        if m.name != self.ann.object_id
            || m.file_size != self.ann.size
            || m.file_hash[..] != self.ann.sha256[..]
        {
            return Err(outpost_multicast::MulticastError::InvalidField {
                field: "manifest",
                value: format!(
                    "session {:#x} sends {:?} of {} bytes, not the announced {:?} of {}",
                    m.session_id, m.name, m.file_size, self.ann.object_id, self.ann.size
                ),
            });
        }
        self.inner.begin(m)
    }
    fn stored_block(
        &mut self,
        m: &Manifest,
        block: u32,
    ) -> outpost_multicast::Result<Option<Vec<u8>>> {
        self.inner.stored_block(m, block)
    }
    fn write_block(&mut self, offset: u64, data: &[u8]) -> outpost_multicast::Result<()> {
        self.inner.write_block(offset, data)
    }
    fn file_hash(&mut self) -> outpost_multicast::Result<[u8; 32]> {
        self.inner.file_hash()
    }
    fn commit(&mut self) -> outpost_multicast::Result<()> {
        self.inner.commit()
    }
}

/// Fetches blocks a session did not deliver from the DP's block service.
struct DpFetcher<'a> {
    ctx: &'a Ctx,
    addr: Option<String>,
    conn: Option<Framed<TcpStream, MessageCodec>>,
}

impl Fetcher for DpFetcher<'_> {
    fn fetch_block<'a>(&'a mut self, m: &'a Manifest, block: u32) -> FetchFuture<'a> {
        Box::pin(async move {
            let fail = |reason: String| outpost_multicast::MulticastError::Fetch { block, reason };
            let addr = self
                .addr
                .clone()
                .ok_or_else(|| fail("the DP serves no unicast".into()))?;
            let t = self.ctx.p.timeout;
            if self.conn.is_none() {
                let c = chunks::dial_dp(&addr, &self.ctx.p.device_id, t)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                self.conn = Some(c);
            }
            let conn = self
                .conn
                .as_mut()
                .ok_or_else(|| fail("no connection".into()))?;
            let r = chunks::fetch_range(
                conn,
                &m.name,
                m.block_offset(block),
                m.block_len(block),
                self.ctx.p.cfg.chunk_bytes,
                t,
            )
            .await;
            if r.is_err() {
                self.conn = None;
            }
            r.map_err(|e| fail(e.to_string()))
        })
    }
}

/// Receives the serving DP's session; fetches the whole update from it by unicast if no
/// session shows up within `session_wait_ms`.
async fn receive(
    ctx: &Ctx,
    ann: &UpdateAnnouncement,
    src: &Source,
) -> Result<Delivery, AgentError> {
    let cfg = &ctx.p.cfg;
    let sc = socket_config(cfg, src.group);
    let group = driver::group_socket(&sc).map_err(dist)?;
    let control = driver::control_socket(&sc).map_err(dist)?;
    let mut rc = ReceiverConfig::default();
    rc.idle_timeout_ms = cfg.session_idle_ms;
    rc.limits.max_file_size = ann.size.max(1);
    rc.seed = random_u64();
    let mut rx = Receiver::new(rc, &src.key).map_err(dist)?;
    let mut sink = CheckedSink {
        inner: FileSink::new(&ctx.dir).map_err(dist)?,
        ann,
    };
    let mut fetcher = DpFetcher {
        ctx,
        addr: src.unicast.clone(),
        conn: None,
    };
    let seen = AtomicBool::new(false);
    let progress = |r: &Receiver| {
        if let Some(m) = r.manifest() {
            seen.store(true, Ordering::Relaxed);
            let bytes = (u64::from(r.blocks_done()) * m.block_bytes()).min(m.file_size);
            ctx.progress(&ann.object_id, |p| p.done_bytes = bytes);
        }
    };
    let wait = async {
        tokio::time::sleep(Duration::from_millis(cfg.session_wait_ms)).await;
        if seen.load(Ordering::Relaxed) {
            pending::<()>().await;
        }
    };
    let opts = ReceiveOptions::default();
    tokio::select! {
        r = driver::run_receiver(&group, &control, &mut rx, &mut sink, &mut fetcher, &opts, progress) => {
            let out = r.map_err(dist)?;
            ctx.progress(&ann.object_id, |p| {
                p.fetched_blocks += out.fetched_blocks;
                p.resumed_blocks += out.resumed_blocks;
            });
            Ok(Delivery::Multicast)
        }
        () = wait => {
            let Some(addr) = &src.unicast else {
                return Err(dist(format!(
                    "no session from {} within {} ms, and it serves no unicast",
                    src.dp, cfg.session_wait_ms
                )));
            };
            tracing::info!(
                "no session from {} within {} ms; fetching {:?} by unicast", src.dp, cfg.session_wait_ms, ann.object_id
            );
            let mut c = chunks::dial_dp(addr, &ctx.p.device_id, ctx.p.timeout).await?;
            let progress = |n: u64| ctx.progress(&ann.object_id, |p| p.done_bytes = n);
            chunks::download(&mut c, ann, &ctx.dir, cfg.chunk_bytes, ctx.p.timeout, progress).await?;
            Ok(Delivery::Dp)
        }
    }
}

/// Sends a held update to the DP's group once.
async fn multicast(
    ctx: &Ctx,
    ann: &UpdateAnnouncement,
    group: std::net::SocketAddr,
    key: &SigningKey,
    slot: usize,
) -> Result<(), AgentError> {
    let cfg = &ctx.p.cfg;
    tokio::time::sleep(Duration::from_millis(cfg.start_delay_ms)).await;
    let path = ctx.dir.join(&ann.object_id);
    let (p, name, sym, bs) = (
        path.clone(),
        ann.object_id.clone(),
        cfg.symbol_size,
        cfg.block_symbols,
    );
    let session = random_u64();
    let manifest =
        tokio::task::spawn_blocking(move || files::manifest_for_file(&p, session, &name, sym, bs))
            .await
            .map_err(dist)?
            .map_err(dist)?;
    if manifest.file_hash[..] != ann.sha256[..] {
        return Err(AgentError::Corrupt {
            path,
            reason: "does not match the announced SHA-256".into(),
        });
    }
    let signed = manifest.sign(key.key_pair());
    let mut sc = SenderConfig::default();
    sc.symbol_size = cfg.symbol_size;
    sc.block_symbols = cfg.block_symbols;
    sc.max_rate_bps = cfg.max_rate_mbps.saturating_mul(1_000_000);
    sc.min_rate_bps = sc.min_rate_bps.min(sc.max_rate_bps);
    let socket = driver::send_socket(&socket_config(cfg, group)).map_err(dist)?;
    let source = FileSource::open(&path).map_err(dist)?;
    let mut sender =
        Sender::new(sc, manifest, &signed, Box::new(source), Instant::now()).map_err(dist)?;
    tracing::info!("sending {:?} to {group}", ann.object_id);
    driver::run_sender(&socket, group, &mut sender, |st, _| {
        if let Some(s) = lock(&ctx.status).sent.get_mut(slot) {
            s.bytes_sent = st.bytes_sent;
            s.receivers_done = st.receivers_done;
        }
    })
    .await
    .map_err(dist)?;
    let st = sender.stats();
    if let Some(s) = lock(&ctx.status).sent.get_mut(slot) {
        s.bytes_sent = st.bytes_sent;
        s.receivers_done = st.receivers_done;
    }
    Ok(())
}
