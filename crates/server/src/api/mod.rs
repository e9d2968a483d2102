//! The administration API: JSON over HTTPS (rustls; HTTP/1.1), under `/api/v1/`, for
//! administrators and their scripts, taking effect on the running server.
//!
//! - `POST /api/v1/login` `{"name", "password"}` opens a session (`{"token",
//!   "expires_in_secs"}`); failed logins are throttled per account and per source address.
//!   `POST /api/v1/logout` closes it. Every other call carries `Authorization: Bearer
//!   <session or API token>`.
//! - `GET /api/v1/status`; `GET /metrics` (Prometheus text); `GET /api/v1/groups`,
//!   `POST /api/v1/groups` `{"id", "name", "parent"}` (known to the policies and the
//!   election at once), `PATCH /api/v1/groups/{id}` `{"name"}`, `DELETE /api/v1/groups/{id}`
//!   (refused while not empty); `GET /api/v1/events?after=&limit=&kind=&device=`;
//!   `GET /api/v1/policies`, `GET|PUT|DELETE /api/v1/policies/{id}` (an `outpost-policy`
//!   policy document: resolved incrementally, committed, and "sync now" pushed to the
//!   online devices whose settings changed; the answer says how many);
//!   `GET /api/v1/devices/{id}/settings` (effective values and locks); `GET /api/v1/devices?limit=&after=&group=` (pages in id order: `next` is the
//!   `after` of the next page); `POST /api/v1/devices/{id}/move` `{"group"}` (its settings
//!   and distribution point placement follow, and it is pushed "sync now");
//!   `DELETE /api/v1/devices/{id}` (its certificate revoked and the CRL rewritten first, so
//!   it is refused from then on); `POST /api/v1/enrollment-tokens` `{"group", "device",
//!   "ttl_secs"}`, `GET /api/v1/enrollment-tokens` (pending, by the SHA-256 that is their
//!   id), `DELETE /api/v1/enrollment-tokens/{id}`; `POST /api/v1/api-tokens` `{"label"}`
//!   (shown once).
//! - Writes need the `administrator` role (an `auditor` gets 403); each is recorded in the
//!   event log (`audit.*`, who and what) once committed.
//! - Errors are RFC 9457 problem documents naming the field at fault; bodies are at most
//!   64 KiB and unknown fields are refused.

mod problem;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use problem::Problem;

use crate::{
    AccountBook, AdminService, EnrollThrottle, EventRecord, Role, ServerError, SessionConfig,
    Sessions,
};

/// The administration API's default port.
pub const DEFAULT_API_PORT: u16 = 13299;
/// The largest request body read.
pub const MAX_BODY: usize = 64 * 1024;
/// The most devices one page lists.
pub const MAX_PAGE: usize = 1000;

fn default_api_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], DEFAULT_API_PORT))
}

fn default_session_secs() -> u64 {
    3600
}

fn default_login_failures() -> u32 {
    5
}

fn default_login_window_secs() -> u64 {
    300
}

/// The `[api]` section of the server configuration: present, the API is served.
///
/// ```
/// let api: outpost_server::ApiConfig = toml::from_str("").unwrap();
/// assert_eq!(api.listen.port(), 13299);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ApiConfig {
    /// Where the API listens (default `0.0.0.0:13299`).
    #[serde(default = "default_api_listen")]
    pub listen: SocketAddr,
    /// How long a session lasts from login, seconds (default 3,600).
    #[serde(default = "default_session_secs")]
    pub session_secs: u64,
    /// Failed logins an account, or a source address, may make per window before its
    /// logins are refused unchecked until the window ends (default 5).
    #[serde(default = "default_login_failures")]
    pub login_failures: u32,
    /// That window, seconds (default 300).
    #[serde(default = "default_login_window_secs")]
    pub login_window_secs: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: default_api_listen(),
            session_secs: default_session_secs(),
            login_failures: default_login_failures(),
            login_window_secs: default_login_window_secs(),
        }
    }
}

impl ApiConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ServerError> {
        let bad = |m: &str| Err(ServerError::Config(format!("api: {m}")));
        if !(60..=86_400).contains(&self.session_secs) {
            return bad("session_secs: must be 60 to 86,400");
        }
        if self.login_failures == 0 {
            return bad("login_failures: must be at least 1");
        }
        if !(1..=86_400).contains(&self.login_window_secs) {
            return bad("login_window_secs: must be 1 to 86,400");
        }
        Ok(())
    }
}

/// What the API's handlers share.
pub(crate) struct ApiState {
    service: Arc<AdminService>,
    accounts: Mutex<AccountBook>,
    sessions: Mutex<Sessions>,
    by_account: Mutex<EnrollThrottle>,
    by_source: Mutex<EnrollThrottle>,
    gateways: outpost_gateway::GatewaysUp,
    session_ttl: Duration,
    /// The data directory (the CA files, whose revocation list a removal rewrites).
    data_dir: std::path::PathBuf,
    /// Held while the revocation list is rewritten, so two removals never race.
    crl: Mutex<()>,
    /// The server's own sync source (policies), if it runs one.
    fleet: Option<Arc<crate::FleetSync>>,
    /// Held for the whole of a policy edit, so edits (and their undo) never interleave.
    policy_edit: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The running API.
pub(crate) struct ApiHandle {
    pub(crate) addr: SocketAddr,
    pub(crate) task: JoinHandle<()>,
}

/// Binds `config.listen` and serves the API with `tls` until the task is aborted.
pub(crate) async fn start(
    config: &ApiConfig,
    tls: Arc<tokio_rustls::rustls::ServerConfig>,
    service: Arc<AdminService>,
    accounts: AccountBook,
    gateways: outpost_gateway::GatewaysUp,
    data_dir: std::path::PathBuf,
    fleet: Option<Arc<crate::FleetSync>>,
) -> Result<ApiHandle, ServerError> {
    config.validate()?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Io {
            path: format!("administration API {}", config.listen).into(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Io {
        path: "administration API".into(),
        source,
    })?;
    let window = Duration::from_secs(config.login_window_secs);
    let sessions = SessionConfig::default().with_ttl(Duration::from_secs(config.session_secs));
    let state = Arc::new(ApiState {
        service,
        accounts: Mutex::new(accounts),
        sessions: Mutex::new(Sessions::new(sessions)),
        by_account: Mutex::new(EnrollThrottle::new(config.login_failures, window, 4096)),
        by_source: Mutex::new(EnrollThrottle::new(config.login_failures, window, 4096)),
        gateways,
        session_ttl: sessions.ttl,
        data_dir,
        crl: Mutex::new(()),
        fleet,
        policy_edit: tokio::sync::Mutex::new(()),
    });
    let app = router(state);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    log::info!("administration API on https://{addr}/api/v1/");
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        log::warn!("administration API: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            conns.spawn(async move {
                let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(tls)) => tls,
                    _ => return,
                };
                let svc = hyper::service::service_fn(
                    move |mut req: axum::http::Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(ConnectInfo(peer));
                        let mut app = app.clone();
                        async move { tower_service::Service::call(&mut app, req).await }
                    },
                );
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc);
                if let Err(e) = conn.await {
                    log::debug!("administration API connection from {peer}: {e}");
                }
            });
        }
    });
    Ok(ApiHandle { addr, task })
}

fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/api/v1/login", post(login))
        .route("/api/v1/logout", post(logout))
        .route("/api/v1/status", get(status))
        .route("/api/v1/groups", get(list_groups).post(create_group))
        .route(
            "/api/v1/groups/{id}",
            axum::routing::patch(rename_group).delete(remove_group),
        )
        .route(
            "/api/v1/enrollment-tokens/{id}",
            axum::routing::delete(revoke_enrollment_token),
        )
        .route("/api/v1/events", get(list_events))
        .route("/api/v1/policies", get(list_policies))
        .route(
            "/api/v1/policies/{id}",
            get(get_policy).put(put_policy).delete(delete_policy),
        )
        .route("/api/v1/devices/{id}/settings", get(device_settings))
        .route("/metrics", get(metrics))
        .route("/api/v1/devices", get(list_devices))
        .route("/api/v1/devices/{id}", axum::routing::delete(remove_device))
        .route("/api/v1/devices/{id}/move", post(move_device))
        .route(
            "/api/v1/enrollment-tokens",
            get(list_enrollment_tokens).post(issue_enrollment_token),
        )
        .route("/api/v1/api-tokens", post(issue_api_token))
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "Not found", "no such API path") })
        .method_not_allowed_fallback(|| async {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method not allowed",
                "this path does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Who is calling.
struct Caller {
    account: String,
    role: Role,
}

impl Caller {
    fn may_write(&self) -> Result<(), Problem> {
        if self.role.may_write() {
            Ok(())
        } else {
            Err(Problem::forbidden(format!(
                "account {:?} has the {} role, which changes nothing",
                self.account,
                self.role.as_str()
            )))
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

fn caller(st: &ApiState, headers: &HeaderMap) -> Result<Caller, Problem> {
    let token = bearer(headers).ok_or_else(|| {
        Problem::unauthenticated("send Authorization: Bearer <session or API token>")
    })?;
    if let Some((account, role)) = lock(&st.sessions).check(token, Instant::now()) {
        return Ok(Caller {
            account: account.to_string(),
            role,
        });
    }
    match lock(&st.accounts).check_api_token(token) {
        Some((account, role)) => Ok(Caller {
            account: account.to_string(),
            role,
        }),
        None => Err(Problem::unauthenticated(
            "the session expired or the token is not valid (log in again)",
        )),
    }
}

/// A page size asked for (100 if none), refused outside 1..=[`MAX_PAGE`].
fn page_limit(limit: Option<usize>) -> Result<usize, Problem> {
    let limit = limit.unwrap_or(100);
    if (1..=MAX_PAGE).contains(&limit) {
        Ok(limit)
    } else {
        Err(Problem::invalid(format!("limit {limit}: must be 1 to {MAX_PAGE}")).field("limit"))
    }
}

/// The body as read, or the problem of reading it (too large: 413).
fn raw(bytes: Result<Bytes, BytesRejection>) -> Result<Bytes, Problem> {
    bytes.map_err(|e| {
        Problem::new(
            e.status(),
            "Unreadable body",
            format!("{} (bodies are at most {MAX_BODY} bytes)", e.body_text()),
        )
    })
}

/// [`caller`], who must be allowed to write.
fn writer(st: &ApiState, headers: &HeaderMap) -> Result<Caller, Problem> {
    let who = caller(st, headers)?;
    who.may_write()?;
    Ok(who)
}

/// Reads and parses a JSON body, naming the field at fault.
fn json_body<T: serde::de::DeserializeOwned>(
    bytes: Result<Bytes, BytesRejection>,
) -> Result<T, Problem> {
    body(&raw(bytes)?)
}

/// Parses a JSON body, naming the field at fault.
fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let p = Problem::bad_request(e.into_inner().to_string());
        if path == "." { p } else { p.field(path) }
    })
}

fn json<T: Serialize>(status: StatusCode, v: &T) -> Response {
    (status, axum::Json(v)).into_response()
}

/// Records what `who` changed, once it is committed.
async fn audit(st: &ApiState, who: &Caller, kind: &'static str, what: String) {
    let e = EventRecord::server(
        None,
        outpost_wire::messages::Severity::Info,
        kind,
        format!("{} ({}): {what}", who.account, who.role.as_str()),
    );
    if let Err(e) = st.service.storage().record_events(vec![e]).await {
        log::error!("audit event {kind} not stored: {e}");
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    name: String,
    password: String,
}

async fn login(
    State(st): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let req: Login = json_body(bytes)?;
    let now = Instant::now();
    let source = peer.ip().to_string();
    let name: String = req.name.chars().take(128).collect();
    let throttled =
        !lock(&st.by_source).admit(&source, now) || !lock(&st.by_account).admit(&name, now);
    if throttled {
        return Err(Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many failed logins",
            "too many failed logins for this account or from this address; wait and try again",
        ));
    }
    // The hash check is slow on purpose: off the async threads.
    let book = lock(&st.accounts).clone();
    let password = req.password;
    let checked_name = name.clone();
    let role = tokio::task::spawn_blocking(move || book.check_password(&checked_name, &password))
        .await
        .ok()
        .flatten();
    let Some(role) = role else {
        lock(&st.by_source).failed(&source, now);
        lock(&st.by_account).failed(&name, now);
        log::warn!("administration API: failed login for {name:?} from {peer}");
        return Err(Problem::unauthenticated("wrong name or password"));
    };
    let token = lock(&st.sessions).open(&name, role, now).map_err(|e| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many sessions",
            e.to_string(),
        )
    })?;
    log::info!("administration API: {name:?} logged in from {peer}");
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "token": token,
            "role": role.as_str(),
            "expires_in_secs": st.session_ttl.as_secs(),
        }),
    ))
}

async fn logout(State(st): State<Arc<ApiState>>, headers: HeaderMap) -> Result<Response, Problem> {
    let token = bearer(&headers).ok_or_else(|| Problem::unauthenticated("no session"))?;
    if lock(&st.sessions).close(token) {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(Problem::unauthenticated("no such session"))
    }
}

async fn status(State(st): State<Arc<ApiState>>, headers: HeaderMap) -> Result<Response, Problem> {
    caller(&st, &headers)?;
    let (instance, devices, groups, tokens) = st.service.with_registry(|r| {
        (
            r.instance_id.clone(),
            r.devices().len(),
            r.groups().len(),
            r.pending_tokens(),
        )
    });
    let gateways: Vec<String> = st.gateways.now().into_keys().collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "instance_id": instance,
            "devices": devices,
            "devices_online": st.service.online().len(),
            "groups": groups,
            "pending_enrollment_tokens": tokens,
            "dmz_gateways_up": gateways,
            "database": st.service.storage().backend().to_string(),
        }),
    ))
}

#[derive(Serialize)]
struct GroupOut {
    id: String,
    name: String,
    parent: Option<String>,
}

async fn list_groups(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    caller(&st, &headers)?;
    let groups: Vec<GroupOut> = st.service.with_registry(|r| {
        r.groups()
            .iter()
            .map(|(id, g)| GroupOut {
                id: id.clone(),
                name: g.name.clone(),
                parent: g.parent.clone(),
            })
            .collect()
    });
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "groups": groups }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewGroup {
    id: String,
    name: String,
    #[serde(default)]
    parent: Option<String>,
}

async fn create_group(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let who = writer(&st, &headers)?;
    let g: NewGroup = json_body(bytes)?;
    st.service
        .add_group(&g.id, &g.name, g.parent.as_deref())
        .await
        .map_err(|e| {
            let field = match &e {
                ServerError::UnknownGroup(_) => "parent",
                _ => "id",
            };
            Problem::from_error(&e, Some(field))
        })?;
    audit(
        &st,
        &who,
        "audit.group.create",
        format!(
            "created group {:?} under {:?}",
            g.id,
            g.parent.as_deref().unwrap_or(crate::ROOT_GROUP)
        ),
    )
    .await;
    Ok(json(
        StatusCode::CREATED,
        &GroupOut {
            id: g.id,
            name: g.name,
            parent: Some(g.parent.unwrap_or_else(|| crate::ROOT_GROUP.into())),
        },
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupChange {
    name: String,
}

async fn rename_group(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let who = writer(&st, &headers)?;
    let c: GroupChange = json_body(bytes)?;
    st.service
        .update_registry(|r| r.rename_group(&id, &c.name))
        .await
        .map_err(|e| {
            let field = matches!(e, ServerError::InvalidId { .. }).then_some("name");
            Problem::from_error(&e, field)
        })?;
    audit(
        &st,
        &who,
        "audit.group.rename",
        format!("renamed group {id:?} to {:?}", c.name),
    )
    .await;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "id": id, "name": c.name }),
    ))
}

async fn remove_group(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, Problem> {
    let who = writer(&st, &headers)?;
    st.service.update_registry(|r| r.remove_group(&id)).await?;
    audit(
        &st,
        &who,
        "audit.group.remove",
        format!("removed group {id:?}"),
    )
    .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DevicePage {
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    group: Option<String>,
}

#[derive(Serialize)]
struct DeviceOut {
    id: String,
    group: String,
    enrolled_at_unix: u64,
    last_seen_unix: Option<u64>,
    online: bool,
    certificate_sha256: String,
}

async fn list_devices(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    query: Result<Query<DevicePage>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    caller(&st, &headers)?;
    let Query(q) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    let limit = page_limit(q.limit)?;
    let (devices, more) = st.service.with_registry(|r| {
        use std::ops::Bound;
        let start = match &q.after {
            Some(a) => Bound::Excluded(a.clone()),
            None => Bound::Unbounded,
        };
        let mut page = Vec::with_capacity(limit);
        let mut more = false;
        for (id, d) in r.devices().range((start, Bound::Unbounded)) {
            if q.group.as_deref().is_some_and(|g| g != d.group) {
                continue;
            }
            if page.len() == limit {
                more = true;
                break;
            }
            page.push(DeviceOut {
                id: id.clone(),
                group: d.group.clone(),
                enrolled_at_unix: d.enrolled_at_unix,
                last_seen_unix: (d.last_seen_unix > 0).then_some(d.last_seen_unix),
                online: st.service.is_online(id),
                certificate_sha256: d.cert_sha256.clone(),
            });
        }
        (page, more)
    });
    let next = if more {
        devices.last().map(|d| d.id.clone())
    } else {
        None
    };
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "devices": devices, "next": next }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveTo {
    group: String,
}

async fn move_device(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let who = writer(&st, &headers)?;
    let m: MoveTo = json_body(bytes)?;
    let pushed = st.service.move_device(&id, &m.group).await.map_err(|e| {
        let field = match &e {
            ServerError::UnknownGroup(_) => Some("group"),
            _ => None,
        };
        Problem::from_error(&e, field)
    })?;
    audit(
        &st,
        &who,
        "audit.device.move",
        format!("moved device {id:?} to group {:?}", m.group),
    )
    .await;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "id": id, "group": m.group, "pushed_sync_now": pushed }),
    ))
}

async fn remove_device(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, Problem> {
    let who = writer(&st, &headers)?;
    let revoke = |serial: &str| -> Result<outpost_pki::ServerCa, ServerError> {
        use outpost_pki::{CaKind, PkiConfig, Serial, store};
        let _one_at_a_time = lock(&st.crl);
        let now = SystemTime::now();
        let mut ca = store::load_server_ca(&st.data_dir, PkiConfig::default())?;
        ca.authority_mut(CaKind::Server)
            .revoke(Serial::from_hex(serial)?, now)?;
        store::save_crl(&mut ca, CaKind::Server, &st.data_dir, now)?;
        Ok(ca)
    };
    st.service.remove_device(&id, revoke).await?;
    audit(
        &st,
        &who,
        "audit.device.remove",
        format!("removed device {id:?} and revoked its certificate"),
    )
    .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewEnrollmentToken {
    group: String,
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    ttl_secs: Option<u64>,
}

async fn issue_enrollment_token(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let who = writer(&st, &headers)?;
    let t: NewEnrollmentToken = json_body(bytes)?;
    let ttl = Duration::from_secs(t.ttl_secs.unwrap_or(86_400));
    let now = SystemTime::now();
    let token = st
        .service
        .update_registry(|r| r.issue_token(&t.group, t.device.as_deref(), ttl, now))
        .await
        .map_err(|e| {
            let field = match &e {
                ServerError::UnknownGroup(_) => "group",
                ServerError::InvalidId { .. } => "device",
                _ => "ttl_secs",
            };
            Problem::from_error(&e, Some(field))
        })?;
    audit(
        &st,
        &who,
        "audit.enrollment_token.issue",
        format!(
            "issued an enrollment token for group {:?}{} valid {} s",
            t.group,
            t.device
                .as_deref()
                .map(|d| format!(", device {d:?}"))
                .unwrap_or_default(),
            ttl.as_secs()
        ),
    )
    .await;
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({ "token": token, "group": t.group, "expires_in_secs": ttl.as_secs() }),
    ))
}

async fn list_enrollment_tokens(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    caller(&st, &headers)?;
    let tokens: Vec<serde_json::Value> = st.service.with_registry(|r| {
        r.tokens()
            .iter()
            .map(|(id, t)| {
                serde_json::json!({
                    "id": id,
                    "group": t.group,
                    "device": t.device,
                    "expires_unix": t.expires_unix,
                })
            })
            .collect()
    });
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "tokens": tokens }),
    ))
}

async fn revoke_enrollment_token(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, Problem> {
    let who = writer(&st, &headers)?;
    st.service.update_registry(|r| r.revoke_token(&id)).await?;
    audit(
        &st,
        &who,
        "audit.enrollment_token.revoke",
        format!("revoked enrollment token {id}"),
    )
    .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventPage {
    #[serde(default)]
    after: Option<u64>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    device: Option<String>,
}

async fn list_events(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    query: Result<Query<EventPage>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    caller(&st, &headers)?;
    let Query(q) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    let limit = page_limit(q.limit)?;
    let mut query = crate::EventQuery::after(q.after.unwrap_or(0), limit + 1);
    query.kind = q.kind;
    query.device = q.device;
    let storage = st.service.storage().clone();
    let mut events = blocking(move || storage.events(&query)).await?;
    let more = events.len() > limit;
    events.truncate(limit);
    let next = if more {
        events.last().map(|e| e.seq)
    } else {
        None
    };
    let out: Vec<serde_json::Value> = events
        .iter()
        .map(|e| {
            serde_json::json!({
                "seq": e.seq,
                "device": e.event.device,
                "at_unix_ms": e.event.at_unix_ms,
                "severity": e.event.severity,
                "kind": e.event.kind,
                "body": e.event.body,
            })
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "events": out, "next": next }),
    ))
}

fn policies_of(st: &ApiState) -> Result<&crate::PolicySync, Problem> {
    st.fleet.as_ref().and_then(|f| f.policy()).ok_or_else(|| {
        Problem::new(
            StatusCode::NOT_FOUND,
            "Not found",
            "this server answers syncs from another source: it serves no policies",
        )
    })
}

/// Runs a blocking storage call off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ServerError> + Send + 'static,
) -> Result<T, Problem> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(Problem::internal)?
        .map_err(Problem::from)
}

async fn list_policies(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    caller(&st, &headers)?;
    let storage = st.service.storage().clone();
    let rows = blocking(move || storage.policy_objects(crate::PolicyObjectKind::Policy)).await?;
    let policies: Vec<serde_json::Value> = rows
        .iter()
        .filter_map(|(_, doc)| serde_json::from_str(doc).ok())
        .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "policies": policies }),
    ))
}

async fn get_policy(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, Problem> {
    caller(&st, &headers)?;
    let storage = st.service.storage().clone();
    let key = id.clone();
    let doc = blocking(move || storage.policy_object(crate::PolicyObjectKind::Policy, &key))
        .await?
        .ok_or_else(|| {
            Problem::new(
                StatusCode::NOT_FOUND,
                "Not found",
                format!("no policy {id:?}"),
            )
        })?;
    let v: serde_json::Value = serde_json::from_str(&doc).map_err(Problem::internal)?;
    Ok(json(StatusCode::OK, &v))
}

/// Applies `change` to the policies, commits `row`, and on a failed commit puts the policy
/// back as the database has it (`old`). Returns the devices whose settings changed.
async fn edit_policy(
    st: &ApiState,
    id: &str,
    change: outpost_policy::Change,
    row: crate::Op,
) -> Result<Vec<Arc<str>>, Problem> {
    use crate::PolicyObjectKind::Policy as Kind;
    let policies = policies_of(st)?;
    let storage = st.service.storage().clone();
    let key = id.to_string();
    let old = blocking(move || storage.policy_object(Kind, &key)).await?;
    let changed = policies.apply(change).map_err(|e| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid policy",
            e.to_string(),
        )
    })?;
    if let Err(e) = st.service.storage().commit(vec![row]).await {
        let undo = match old
            .as_deref()
            .map(serde_json::from_str::<outpost_policy::Policy>)
        {
            Some(Ok(p)) => outpost_policy::Change::UpsertPolicy(p),
            _ => outpost_policy::Change::RemovePolicy(id.to_string()),
        };
        if let Err(u) = policies.apply(undo) {
            log::error!("policy {id:?}: commit failed and the change could not be undone: {u}");
        }
        return Err(Problem::from_error(&e, None));
    }
    Ok(changed)
}

/// Pushes "sync now" to the online devices among `changed`; returns how many.
/// (`push_all` reaches only the devices with a kept connection.)
fn push_changed(st: &ApiState, changed: &[Arc<str>], reason: &str) -> usize {
    let nonce = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    st.service.push_all(changed, reason, nonce)
}

async fn put_policy(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let who = writer(&st, &headers)?;
    let policy: outpost_policy::Policy = json_body(bytes)?;
    if policy.id != id {
        return Err(Problem::invalid(format!(
            "the body's id {:?} is not the path's {id:?}",
            policy.id
        ))
        .field("id"));
    }
    let document = serde_json::to_string(&policy).map_err(Problem::internal)?;
    let _one_at_a_time = st.policy_edit.lock().await;
    let row = crate::Op::PutPolicyObject {
        kind: crate::PolicyObjectKind::Policy,
        id: id.clone(),
        document,
    };
    let changed = edit_policy(&st, &id, outpost_policy::Change::UpsertPolicy(policy), row).await?;
    let pushed = push_changed(&st, &changed, "policy changed");
    audit(
        &st,
        &who,
        "audit.policy.put",
        format!(
            "set policy {id:?}: {} device(s) changed, {pushed} pushed",
            changed.len()
        ),
    )
    .await;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "id": id, "devices_changed": changed.len(), "pushed_sync_now": pushed }),
    ))
}

async fn delete_policy(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, Problem> {
    let who = writer(&st, &headers)?;
    let _one_at_a_time = st.policy_edit.lock().await;
    let row = crate::Op::DeletePolicyObject {
        kind: crate::PolicyObjectKind::Policy,
        id: id.clone(),
    };
    let changed = edit_policy(
        &st,
        &id,
        outpost_policy::Change::RemovePolicy(id.clone()),
        row,
    )
    .await
    .map_err(|p| {
        if p.status == StatusCode::UNPROCESSABLE_ENTITY {
            Problem::new(StatusCode::NOT_FOUND, "Not found", p.detail)
        } else {
            p
        }
    })?;
    let pushed = push_changed(&st, &changed, "policy removed");
    audit(
        &st,
        &who,
        "audit.policy.remove",
        format!("removed policy {id:?}: {} device(s) changed", changed.len()),
    )
    .await;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "id": id, "devices_changed": changed.len(), "pushed_sync_now": pushed }),
    ))
}

async fn device_settings(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, Problem> {
    caller(&st, &headers)?;
    let settings = policies_of(&st)?.effective(&id).ok_or_else(|| {
        Problem::new(
            StatusCode::NOT_FOUND,
            "Not found",
            format!("no device {id:?}"),
        )
    })?;
    let mut apps = serde_json::Map::new();
    let mut names: Vec<&str> = settings.apps().collect();
    names.sort_unstable();
    for app in names {
        if let Some((version, doc)) = crate::settings_document(&settings, app)
            && let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&doc)
        {
            v["version"] = serde_json::Value::from(version);
            apps.insert(app.to_string(), v);
        }
    }
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "device": id, "settings": apps }),
    ))
}

/// The server's counters in Prometheus' text format.
async fn metrics(State(st): State<Arc<ApiState>>, headers: HeaderMap) -> Result<Response, Problem> {
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    caller(&st, &headers)?;
    let s = st.service.stats();
    let (devices, tokens) = st
        .service
        .with_registry(|r| (r.devices().len(), r.pending_tokens()));
    let storage = st.service.storage().clone();
    let events = blocking(move || storage.counts()).await?.events;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "outpost_devices",
        "gauge",
        "Enrolled devices.",
        devices as u64,
    );
    metric(
        "outpost_devices_online",
        "gauge",
        "Devices with a kept connection.",
        st.service.online().len() as u64,
    );
    metric(
        "outpost_enrollment_tokens_pending",
        "gauge",
        "Unused enrollment tokens.",
        tokens as u64,
    );
    metric(
        "outpost_gateways_up",
        "gauge",
        "DMZ gateways whose signal connection is up.",
        st.gateways.now().len() as u64,
    );
    metric(
        "outpost_events_stored",
        "gauge",
        "Events in the database.",
        events,
    );
    metric(
        "outpost_enrollments_total",
        "counter",
        "Devices enrolled.",
        s.enrolled.load(Relaxed),
    );
    metric(
        "outpost_enrollments_refused_total",
        "counter",
        "Enrollments refused.",
        s.enroll_refused.load(Relaxed),
    );
    metric(
        "outpost_syncs_total",
        "counter",
        "Syncs answered.",
        s.syncs.load(Relaxed),
    );
    metric(
        "outpost_events_received_total",
        "counter",
        "Events received from agents.",
        s.events.load(Relaxed),
    );
    metric(
        "outpost_connections_refused_total",
        "counter",
        "Device connections refused.",
        s.refused.load(Relaxed),
    );
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        out,
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewApiToken {
    label: String,
}

async fn issue_api_token(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let who = writer(&st, &headers)?;
    let t: NewApiToken = json_body(bytes)?;
    let (secret, op) = lock(&st.accounts)
        .issue_api_token(&who.account, &t.label, SystemTime::now())
        .map_err(|e| Problem::from_error(&e, Some("label")))?;
    let id = match &op {
        crate::Op::PutApiToken(t) => t.id.clone(),
        _ => String::new(),
    };
    st.service.storage().commit(vec![op.clone()]).await?;
    lock(&st.accounts).apply(&op);
    audit(
        &st,
        &who,
        "audit.api_token.issue",
        format!("issued API token {id} ({:?})", t.label),
    )
    .await;
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({ "id": id, "token": secret, "label": t.label }),
    ))
}
