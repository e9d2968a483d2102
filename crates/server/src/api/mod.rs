//! The administration API: JSON over HTTPS (rustls; HTTP/1.1), under `/api/v1/`, for
//! administrators and their scripts, taking effect on the running server.
//!
//! - `POST /api/v1/login` `{"name", "password"}` opens a session (`{"token",
//!   "expires_in_secs"}`); failed logins are throttled per account and per source address.
//!   `POST /api/v1/logout` closes it. Every other call carries `Authorization: Bearer
//!   <session or API token>`.
//! - Accounts: `GET|POST /api/v1/accounts` `{"name", "role", "password"}`,
//!   `PATCH /api/v1/accounts/{name}` `{"role", "password", "disabled"}` (its sessions are
//!   closed; the last enabled administrator stays one). API tokens: `GET|POST
//!   /api/v1/api-tokens` `{"label"}` (the secret shown once), `DELETE
//!   /api/v1/api-tokens/{id}`.
//! - `GET /api/v1/status`; `GET /metrics` (Prometheus text).
//! - Groups: `GET|POST /api/v1/groups` `{"id", "name", "parent"}` (known to the policies
//!   and the election at once), `PATCH /api/v1/groups/{id}` `{"name", "parent"}` (a move
//!   takes its subgroups and devices along; the changed online devices are pushed), `DELETE
//!   /api/v1/groups/{id}` (refused while not empty).
//! - Devices: `GET /api/v1/devices?limit=&after=&group=&tag=&online=&seen_since=&seen_before=&dp=&issue=`
//!   (pages in id order: `next` is the `after` of the next page); `GET
//!   /api/v1/devices/{id}` (facts, certificate expiry, connection path, DP scopes, open
//!   issues); `PATCH /api/v1/devices/{id}` `{"tags"}`; `POST /api/v1/devices/{id}/move`
//!   `{"group"}` (its settings and distribution point placement follow, and it is pushed
//!   "sync now"); `DELETE /api/v1/devices/{id}` (its certificate revoked and the CRL
//!   rewritten first, so it is refused from then on); `GET /api/v1/devices/{id}/settings`
//!   (effective values and locks).
//! - Enrollment tokens: `POST /api/v1/enrollment-tokens` `{"group", "device",
//!   "ttl_secs"}`, `GET /api/v1/enrollment-tokens` (pending, by the SHA-256 that is their
//!   id), `DELETE /api/v1/enrollment-tokens/{id}`.
//! - Policies: `GET /api/v1/policies`, `GET|PUT|DELETE /api/v1/policies/{id}` (an
//!   `outpost-policy` policy document: resolved incrementally, committed, and "sync now"
//!   pushed to the online devices whose settings changed; the answer says how many).
//! - Distribution points: `GET /api/v1/distribution-points` (the report: role, epoch,
//!   multicast group, free disk, last heartbeat, devices served), `POST
//!   /api/v1/distribution-points` `{"device", "group"}`, `DELETE
//!   /api/v1/distribution-points/{device}/{group}`, `POST
//!   /api/v1/distribution-points/{device}/{group}/activate`.
//! - Gateways: `GET /api/v1/gateways` (signal connection up, devices relayed), `POST
//!   /api/v1/gateways` `{"id", "kind": "dmz", "addr", "dns_names"}` (dialled at once) or
//!   `{"id", "kind": "remote_office", "device"}`, `DELETE /api/v1/gateways/{id}`.
//! - Updates: `GET /api/v1/updates` (with how many devices hold each), `PUT
//!   /api/v1/updates/{id}?name=&version=` (the body is the file, streamed), `POST
//!   /api/v1/updates/{id}/import` `{"path", "name", "version"}` (from `[api] import_dir`).
//! - Events: `GET /api/v1/events?after=&limit=&kind=&device=`. Security issues: `GET
//!   /api/v1/security-issues?device=&kind=&acknowledged=&limit=&after=`, `POST
//!   /api/v1/security-issues/{device}/{kind}/acknowledge`.
//! - Writes need the `administrator` role (an `auditor` gets 403); each is recorded in the
//!   event log (`audit.*`, who and what) once committed.
//! - Errors are RFC 9457 problem documents naming the field at fault; bodies are at most
//!   64 KiB and unknown fields are refused.
//! - `GET /api/v1/openapi.json`: this list as an OpenAPI 3.1 document ([`openapi`]), built
//!   from the same table as the router.

mod devices;
mod dps;
mod enrollment;
mod events;
mod gateways;
mod groups;
mod issues;
mod policies;
mod problem;
mod session;
mod spec;
mod updates;
mod virtual_servers;

use devices::*;
use dps::*;
use enrollment::*;
use events::*;
use gateways::*;
use groups::*;
use issues::*;
use policies::*;
use session::*;

pub use spec::openapi;
use updates::*;
use virtual_servers::*;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::Instrument;

pub use problem::Problem;

use crate::{EnrollThrottle, EventRecord, Role, ServerError};

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

fn default_max_upload_bytes() -> u64 {
    4 << 30
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
    /// The largest update file an upload may send, bytes (default 4 GiB).
    #[serde(default = "default_max_upload_bytes")]
    pub max_upload_bytes: u64,
    /// The directory on the server that update files may be imported from by path
    /// (`POST /api/v1/updates/{id}/import`), relative to the configuration's directory;
    /// none (the default): import by path is refused.
    #[serde(default)]
    pub import_dir: Option<std::path::PathBuf>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: default_api_listen(),
            session_secs: default_session_secs(),
            login_failures: default_login_failures(),
            login_window_secs: default_login_window_secs(),
            max_upload_bytes: default_max_upload_bytes(),
            import_dir: None,
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
    /// The main server and its virtual servers (each with its service, sync source,
    /// updates, accounts and sessions).
    servers: Arc<crate::VirtualServers>,
    by_account: Mutex<EnrollThrottle>,
    by_source: Mutex<EnrollThrottle>,
    gateways: outpost_gateway::GatewaysUp,
    gateway_control: outpost_gateway::GatewayControl,
    configured_gateways: Vec<outpost_gateway::DmzGatewayEntry>,
    session_ttl: Duration,
    /// The largest update upload, bytes.
    max_upload: u64,
    /// Where `import` may read update files from (none: not at all).
    import_dir: Option<std::path::PathBuf>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The running API.
pub(crate) struct ApiHandle {
    pub(crate) addr: SocketAddr,
    pub(crate) task: JoinHandle<()>,
}

/// What the API works on.
pub(crate) struct ApiParts {
    pub(crate) servers: Arc<crate::VirtualServers>,
    pub(crate) gateways: outpost_gateway::GatewaysUp,
    /// Adds and removes the DMZ gateways the server dials.
    pub(crate) gateway_control: outpost_gateway::GatewayControl,
    /// The DMZ gateways the configuration file names (not registered, not removable here).
    pub(crate) configured_gateways: Vec<outpost_gateway::DmzGatewayEntry>,
    /// [`ApiConfig::import_dir`], resolved against the configuration's directory.
    pub(crate) import_dir: Option<std::path::PathBuf>,
}

/// Binds `config.listen` and serves the API with `tls` until the task is aborted.
pub(crate) async fn start(
    config: &ApiConfig,
    tls: Arc<tokio_rustls::rustls::ServerConfig>,
    parts: ApiParts,
) -> Result<ApiHandle, ServerError> {
    config.validate()?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(ServerError::os("bind the administration API's address"))?;
    let addr = listener
        .local_addr()
        .map_err(ServerError::os("read the administration API's address"))?;
    let window = Duration::from_secs(config.login_window_secs);
    let state = Arc::new(ApiState {
        servers: parts.servers,
        by_account: Mutex::new(EnrollThrottle::new(config.login_failures, window, 4096)),
        by_source: Mutex::new(EnrollThrottle::new(config.login_failures, window, 4096)),
        gateways: parts.gateways,
        gateway_control: parts.gateway_control,
        configured_gateways: parts.configured_gateways,
        session_ttl: Duration::from_secs(config.session_secs),
        max_upload: config.max_upload_bytes,
        import_dir: parts.import_dir,
    });
    let app = router(state);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tracing::info!("administration API on https://{addr}/api/v1/");
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("administration API: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            conns.spawn(
                async move {
                    let tls =
                        match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
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
                        tracing::debug!("connection ended: {e}");
                    }
                }
                .instrument(tracing::info_span!("api_connection", %peer)),
            );
        }
    });
    Ok(ApiHandle { addr, task })
}

fn router(state: Arc<ApiState>) -> Router {
    spec::routes()
        .fallback(|| async { Problem::not_found("no such API path") })
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

/// Who is calling, and the (virtual) server the request is about.
struct Caller {
    account: String,
    role: Role,
    /// The server the request reads and writes: the caller's own, or (for the main
    /// server's accounts) the virtual server the `Outpost-Virtual-Server` header names.
    vs: Arc<crate::Tenant>,
    /// The account is one of the main server's.
    main: bool,
}

/// The header naming the virtual server a request is about.
pub const VIRTUAL_SERVER_HEADER: &str = "outpost-virtual-server";

/// The virtual server a request names (`None`: none named).
fn named_server(headers: &HeaderMap) -> Result<Option<&str>, Problem> {
    match headers.get(VIRTUAL_SERVER_HEADER) {
        None => Ok(None),
        Some(v) => v.to_str().map(Some).map_err(|_| {
            Problem::bad_request("the Outpost-Virtual-Server header is not visible ASCII")
                .field(VIRTUAL_SERVER_HEADER)
        }),
    }
}

fn no_virtual_server(id: &str) -> Problem {
    Problem::not_found(format!("no virtual server {id:?}"))
}

/// The (virtual) server a request without a session names: the main server, or the one of
/// the header.
fn target(st: &ApiState, headers: &HeaderMap) -> Result<Arc<crate::Tenant>, Problem> {
    match named_server(headers)? {
        None => Ok(st.servers.main().clone()),
        Some(id) => st.servers.get(id).ok_or_else(|| no_virtual_server(id)),
    }
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

/// The account a session or API token belongs to, with its (virtual) server.
fn account_of(st: &ApiState, token: &str) -> Option<(String, Role, Arc<crate::Tenant>)> {
    let now = Instant::now();
    // Hashed once, not once per (virtual) server.
    let digest = crate::accounts::api_token_sha256(token);
    st.servers.all().into_iter().find_map(|t| {
        let found = lock(&t.sessions)
            .check(token, now)
            .map(|(a, r)| (a.to_string(), r))
            .or_else(|| {
                lock(&t.accounts)
                    .check_api_token_sha256(digest.as_deref()?)
                    .map(|(a, r)| (a.to_string(), r))
            });
        found.map(|(a, r)| (a, r, t))
    })
}

fn caller(st: &ApiState, headers: &HeaderMap) -> Result<Caller, Problem> {
    let token = bearer(headers).ok_or_else(|| {
        Problem::unauthenticated("send Authorization: Bearer <session or API token>")
    })?;
    let named = named_server(headers)?;
    let (account, role, home) = account_of(st, token).ok_or_else(|| {
        Problem::unauthenticated("the session expired or the token is not valid (log in again)")
    })?;
    if !home.is_virtual() {
        // The main server's accounts manage every virtual server.
        let vs = match named {
            None => home,
            Some(id) => st.servers.get(id).ok_or_else(|| no_virtual_server(id))?,
        };
        return Ok(Caller {
            account,
            role,
            vs,
            main: true,
        });
    }
    // A virtual server's account sees its own server only: another one it names is "not
    // found", as one that does not exist, so ids of other tenants do not leak.
    if let Some(id) = named
        && id != home.id()
    {
        return Err(no_virtual_server(id));
    }
    if home.record().is_some_and(|r| r.disabled) {
        return Err(Problem::forbidden(format!(
            "virtual server {:?} is disabled",
            home.id()
        )));
    }
    Ok(Caller {
        account,
        role,
        vs: home,
        main: false,
    })
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
    let _ = st;
    if let Err(e) = who.vs.service.storage().record_events(vec![e]).await {
        tracing::error!("audit event {kind} not stored: {e}");
    }
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

#[cfg(any(fuzzing, test))]
/// The request bodies the API parses, by the byte [`fuzz_body`] takes first.
const BODIES: &[&str] = &[
    "login",
    "group",
    "group change",
    "device move",
    "device change",
    "enrollment token",
    "API token",
    "account",
    "account change",
    "distribution point",
    "gateway",
    "update import",
    "policy",
    "policy status",
    "virtual server",
    "virtual server change",
];

/// Parses `data[1..]` as the request body `data[0]` selects (see the list in the source:
/// every body a handler reads), as the handlers do; for fuzzing and its seed corpus. `Ok`
/// names the body parsed; a refusal is the problem's status, always a 4xx with a detail.
#[cfg(any(fuzzing, test))]
pub(crate) fn fuzz_body(data: &[u8]) -> Result<&'static str, u16> {
    let Some((&which, rest)) = data.split_first() else {
        return Err(400);
    };
    let i = usize::from(which) % BODIES.len();
    let r = match i {
        0 => body::<Login>(rest).map(drop),
        1 => body::<NewGroup>(rest).map(drop),
        2 => body::<GroupChange>(rest).map(drop),
        3 => body::<MoveTo>(rest).map(drop),
        4 => body::<DeviceChange>(rest).map(drop),
        5 => body::<NewEnrollmentToken>(rest).map(drop),
        6 => body::<NewApiToken>(rest).map(drop),
        7 => body::<NewAccount>(rest).map(drop),
        8 => body::<AccountChange>(rest).map(drop),
        9 => body::<DpScope>(rest).and_then(|b| b.scope()).map(drop),
        10 => body::<NewGateway>(rest).map(drop),
        11 => body::<ImportRequest>(rest).map(drop),
        12 => body::<outpost_policy::Policy>(rest).map(drop),
        13 => body::<StatusChange>(rest).map(drop),
        14 => body::<NewVirtualServer>(rest).map(drop),
        _ => body::<VirtualServerChange>(rest).map(drop),
    };
    match r {
        Ok(()) => Ok(BODIES[i]),
        Err(p) => {
            assert!(
                p.status.is_client_error() && !p.detail.is_empty(),
                "a refused body is a client error with a reason: {p:?}"
            );
            Err(p.status.as_u16())
        }
    }
}
