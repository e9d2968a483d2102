//! `outpostctl`: the command-line client of the administration API of a running
//! `admin_server` (JSON over HTTPS, port 13299 by default).
//!
//! ```text
//! export OUTPOST_SERVER=https://server.example.test:13299 OUTPOST_CA=state/ca.crt
//! export OUTPOST_TOKEN=$(echo "$PASSWORD" | cargo run --example outpostctl -- login admin)
//! cargo run --example outpostctl -- groups create paris --name Paris
//! cargo run --example outpostctl -- tokens issue --group paris --device pc-1
//! cargo run --example outpostctl -- devices list --group paris --online true
//! cargo run --example outpostctl -- policies put --file usb.json
//! cargo run --example outpostctl -- --json devices show pc-1
//! ```
//!
//! Every subcommand has `--help`. Lists print a table (`--json`: the API's answer as it
//! is, for scripts). The server's certificate is checked against the server CA
//! (`--ca`, the `ca.crt` of the server's data directory), and its name against the URL's
//! host.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

const PROGRAM: &str = "outpostctl";

#[derive(Parser)]
#[command(
    name = "outpostctl",
    version,
    about = "Administer a running outpost server over its HTTPS API"
)]
struct Cli {
    /// The server's API, as https://HOST:PORT.
    #[arg(
        long,
        env = "OUTPOST_SERVER",
        default_value = "https://localhost:13299"
    )]
    server: String,
    /// The server CA certificate (PEM) the server's certificate must chain to.
    #[arg(long, env = "OUTPOST_CA")]
    ca: PathBuf,
    /// A session token (from `login`) or an API token.
    #[arg(long, env = "OUTPOST_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Work on this virtual server (sent as the `Outpost-Virtual-Server` header; the main
    /// server without it).
    #[arg(long, env = "OUTPOST_VIRTUAL_SERVER", global = true)]
    virtual_server: Option<String>,
    /// Print the API's JSON answer instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Log in (the password is read from standard input) and print the session token.
    Login {
        /// The account name.
        name: String,
    },
    /// End the session of --token.
    Logout,
    /// The server's status.
    Status,
    /// The server's counters, in Prometheus' text format.
    Metrics,
    /// Administration groups.
    #[command(subcommand)]
    Groups(Groups),
    /// Enrolled devices.
    #[command(subcommand)]
    Devices(Devices),
    /// Enrollment tokens.
    #[command(subcommand)]
    Tokens(Tokens),
    /// Policies.
    #[command(subcommand)]
    Policies(Policies),
    /// Distribution points.
    #[command(subcommand)]
    Dps(Dps),
    /// Connection gateways.
    #[command(subcommand)]
    Gateways(Gateways),
    /// Update objects.
    #[command(subcommand)]
    Updates(Updates),
    /// The event log.
    Events {
        /// Only events of this kind (such as `audit.device.move`).
        #[arg(long)]
        kind: Option<String>,
        /// Only events of this device.
        #[arg(long)]
        device: Option<String>,
        /// Events after this sequence number.
        #[arg(long)]
        after: Option<u64>,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Security issues.
    #[command(subcommand)]
    Issues(Issues),
    /// Administrator accounts.
    #[command(subcommand)]
    Accounts(Accounts),
    /// API tokens, for automation.
    #[command(subcommand)]
    ApiTokens(ApiTokens),
    /// Virtual servers (the main server's accounts).
    #[command(subcommand)]
    VirtualServers(VirtualServers),
}

#[derive(Subcommand)]
enum VirtualServers {
    /// Every virtual server.
    List,
    /// A new virtual server.
    Create {
        /// Its id: letters, digits, - _ . (at most 64).
        id: String,
        /// Its display name (the id if none).
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Rename, disable or enable a virtual server.
    Set {
        /// Its id.
        id: String,
        /// A new display name.
        #[arg(long)]
        name: Option<String>,
        /// Disable it (its devices are refused, its data kept) or enable it (`false`).
        #[arg(long)]
        disabled: Option<bool>,
    },
    /// Delete a virtual server: its devices' certificates are revoked and its data removed.
    Delete {
        /// Its id.
        id: String,
    },
}

#[derive(Subcommand)]
enum Groups {
    /// The group tree.
    List,
    /// A new group.
    Create {
        /// Its id.
        id: String,
        /// Its display name.
        #[arg(long)]
        name: String,
        /// Its parent (default: the root group).
        #[arg(long)]
        parent: Option<String>,
    },
    /// A new display name.
    Rename {
        /// The group.
        id: String,
        /// Its new display name.
        #[arg(long)]
        name: String,
    },
    /// Moves a group, with its subgroups and devices, under another (their settings and
    /// distribution point placement follow).
    Move {
        /// The group.
        id: String,
        /// Its new parent.
        #[arg(long)]
        parent: String,
    },
    /// Removes an empty group.
    Delete {
        /// The group.
        id: String,
    },
}

#[derive(Args)]
struct DeviceFilter {
    /// Only devices in this group.
    #[arg(long)]
    group: Option<String>,
    /// Only devices with this tag.
    #[arg(long)]
    tag: Option<String>,
    /// Only devices with (true) or without (false) a kept connection.
    #[arg(long)]
    online: Option<bool>,
    /// Only devices seen at or after this Unix time.
    #[arg(long)]
    seen_since: Option<u64>,
    /// Only devices not seen since this Unix time.
    #[arg(long)]
    seen_before: Option<u64>,
    /// Only distribution points (true) or only other devices (false).
    #[arg(long)]
    dp: Option<bool>,
    /// Only devices with (true) or without (false) an open security issue.
    #[arg(long)]
    issue: Option<bool>,
    /// Devices per page (1 to 1000).
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    /// Start after this device id (the `next` of a page).
    #[arg(long)]
    after: Option<String>,
    /// Only one page (default: every page).
    #[arg(long)]
    one_page: bool,
}

#[derive(Subcommand)]
enum Devices {
    /// Lists devices, page by page.
    List(DeviceFilter),
    /// One device: facts, certificate, connection, DP scopes, open issues.
    Show {
        /// The device.
        id: String,
    },
    /// Moves a device to a group (its settings and DP placement follow).
    Move {
        /// The device.
        id: String,
        /// The group.
        #[arg(long)]
        group: String,
    },
    /// Sets a device's tags (none: clears them).
    Tag {
        /// The device.
        id: String,
        /// A tag (repeat for more).
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
    /// Puts a device in a network location (its distribution points serve it first).
    Locate {
        /// The device.
        id: String,
        /// The network location.
        #[arg(long, required_unless_present = "none")]
        location: Option<String>,
        /// Takes it out of any network location.
        #[arg(long, conflicts_with = "location")]
        none: bool,
    },
    /// Removes a device and revokes its certificate.
    Remove {
        /// The device.
        id: String,
    },
    /// A device's effective settings.
    Settings {
        /// The device.
        id: String,
    },
    /// Where each of a device's effective values came from, and what lost and why.
    Explain {
        /// The device.
        id: String,
        /// Only this application.
        #[arg(long)]
        app: Option<String>,
        /// Only this setting path (with --app).
        #[arg(long, requires = "app")]
        path: Option<String>,
    },
}

#[derive(Subcommand)]
enum Tokens {
    /// Issues an enrollment token (printed once).
    Issue {
        /// The group the device enrolls into.
        #[arg(long)]
        group: String,
        /// The one device id the token enrolls.
        #[arg(long)]
        device: Option<String>,
        /// How long it is valid, seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl_secs: u64,
    },
    /// Pending enrollment tokens.
    List,
    /// Revokes a pending token (by the id `list` shows).
    Revoke {
        /// The token's id.
        id: String,
    },
}

#[derive(Subcommand)]
enum Policies {
    /// Every policy.
    List,
    /// One policy document.
    Show {
        /// The policy.
        id: String,
    },
    /// Creates or replaces a policy from a JSON document (its `id` names it).
    Put {
        /// The policy document.
        #[arg(long)]
        file: PathBuf,
    },
    /// Removes a policy.
    Delete {
        /// The policy.
        id: String,
    },
    /// Sets a policy's status; activating one makes the previously active policy of its
    /// application and group inactive in the same step.
    Status {
        /// The policy.
        id: String,
        /// The new status.
        #[arg(value_enum)]
        status: PolicyStatus,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PolicyStatus {
    /// Applied to the group's devices and inherited by subgroups.
    Active,
    /// Neither applied nor inherited.
    Inactive,
    /// Replaces the active policy for the group's own devices off the corporate network.
    OutOfOffice,
}

impl PolicyStatus {
    fn as_str(self) -> &'static str {
        match self {
            PolicyStatus::Active => "active",
            PolicyStatus::Inactive => "inactive",
            PolicyStatus::OutOfOffice => "out-of-office",
        }
    }
}

#[derive(Subcommand)]
enum Dps {
    /// The report of distribution points.
    List,
    /// Makes a device a distribution point of a scope.
    Assign {
        /// The device.
        #[arg(long)]
        device: String,
        #[command(flatten)]
        scope: DpScopeArgs,
    },
    /// Removes a device as a distribution point of a scope.
    Unassign {
        /// The device.
        #[arg(long)]
        device: String,
        #[command(flatten)]
        scope: DpScopeArgs,
    },
    /// Makes a device the active distribution point of a scope now.
    Activate {
        /// The device.
        #[arg(long)]
        device: String,
        #[command(flatten)]
        scope: DpScopeArgs,
    },
}

/// The scope of a distribution point: exactly one of these.
#[derive(Args)]
#[group(required = true, multiple = false)]
struct DpScopeArgs {
    /// A group and its subgroups.
    #[arg(long)]
    group: Option<String>,
    /// The devices placed in this network location (`devices locate`).
    #[arg(long)]
    network_location: Option<String>,
    /// The devices of the DP's own broadcast domain, as discovery finds it.
    #[arg(long)]
    broadcast_domain: bool,
}

impl DpScopeArgs {
    /// The scope's key in the API's paths.
    fn key(&self) -> String {
        match (&self.group, &self.network_location) {
            (Some(g), _) => g.clone(),
            (None, Some(l)) => format!("location~{l}"),
            (None, None) => "broadcast-domain~own".into(),
        }
    }

    /// The scope's fields in a request body.
    fn body(&self, device: &str) -> Value {
        match (&self.group, &self.network_location) {
            (Some(g), _) => json!({"device": device, "group": g}),
            (None, Some(l)) => json!({"device": device, "network_location": l}),
            (None, None) => json!({"device": device, "broadcast_domain": true}),
        }
    }
}

#[derive(Subcommand)]
enum Gateways {
    /// Gateways with their status: signal connection up, devices relayed.
    List,
    /// Registers a DMZ gateway: the server dials it at once.
    AddDmz {
        /// Its id.
        id: String,
        /// The address the server dials (HOST:PORT, an IP address).
        #[arg(long)]
        addr: String,
        /// A DNS name its certificate carries (repeat for more; the first is dialled).
        #[arg(long = "dns", required = true)]
        dns_names: Vec<String>,
    },
    /// Registers a remote-office gateway held by an enrolled device, bound to its
    /// certificate: the server takes tunnels from that certificate only.
    AddRemoteOffice {
        /// Its id.
        id: String,
        /// The device that holds the role.
        #[arg(long)]
        device: String,
        /// The gateway's certificate (PEM, as `pki issue-gateway` wrote it).
        #[arg(long)]
        certificate: PathBuf,
    },
    /// Unregisters a gateway (a DMZ gateway's signal connection is closed).
    Remove {
        /// Its id.
        id: String,
    },
}

#[derive(Subcommand)]
enum Updates {
    /// Update objects, with how many devices hold them.
    List,
    /// Uploads a file as an update object.
    Upload {
        /// The object's id.
        id: String,
        /// The file.
        #[arg(long)]
        file: PathBuf,
        /// Its display name.
        #[arg(long)]
        name: String,
        /// Its version.
        #[arg(long)]
        version: u64,
    },
    /// Publishes a file from the server's import directory.
    Import {
        /// The object's id.
        id: String,
        /// The file, relative to the server's import directory.
        #[arg(long)]
        path: String,
        /// Its display name.
        #[arg(long)]
        name: String,
        /// Its version.
        #[arg(long)]
        version: u64,
    },
}

#[derive(Subcommand)]
enum Issues {
    /// Open security issues.
    List {
        /// Only this device's.
        #[arg(long)]
        device: Option<String>,
        /// Only acknowledged (true) or unacknowledged (false) ones.
        #[arg(long)]
        acknowledged: Option<bool>,
    },
    /// Acknowledges an issue.
    Ack {
        /// The device.
        device: String,
        /// The issue's kind.
        kind: String,
    },
}

#[derive(Subcommand)]
enum Accounts {
    /// Every account.
    List,
    /// A new account (the password is read from standard input).
    Create {
        /// Its name.
        name: String,
        /// `administrator` or `auditor`.
        #[arg(long)]
        role: String,
    },
    /// Changes an account; its sessions are closed.
    Set {
        /// The account.
        name: String,
        /// A new role.
        #[arg(long)]
        role: Option<String>,
        /// Disables (true) or enables (false) it.
        #[arg(long)]
        disabled: Option<bool>,
        /// Reads a new password from standard input.
        #[arg(long)]
        password: bool,
    },
}

#[derive(Subcommand)]
enum ApiTokens {
    /// API tokens (never their secrets).
    List,
    /// Issues an API token acting as your account (the secret is printed once).
    Issue {
        /// What it is for.
        #[arg(long)]
        label: String,
    },
    /// Revokes an API token.
    Revoke {
        /// Its id.
        id: String,
    },
}

/// One HTTPS connection per request to the API.
struct Api {
    host: String,
    port: u16,
    tls: tokio_rustls::TlsConnector,
    token: Option<String>,
    virtual_server: Option<String>,
}

/// A refusal or failure, printed as the API's problem detail.
struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

impl Api {
    fn new(cli: &Cli) -> Result<Self, Failure> {
        let rest = cli.server.strip_prefix("https://").ok_or_else(|| {
            Failure(format!(
                "--server {:?}: must start with https://",
                cli.server
            ))
        })?;
        let authority = rest.split('/').next().unwrap_or(rest);
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h.trim_start_matches('[').trim_end_matches(']').to_string(),
                p.parse()
                    .map_err(|e| Failure(format!("--server port {p:?}: {e}")))?,
            ),
            _ => (authority.to_string(), 13299),
        };
        let ca = outpost::pki::store::read_ca_certificate(&cli.ca)
            .map_err(|e| Failure(format!("--ca {}: {e}", cli.ca.display())))?;
        let cfg = outpost::pki::tls::api_client_config(&ca, &Default::default())?;
        Ok(Api {
            host,
            port,
            tls: tokio_rustls::TlsConnector::from(cfg),
            token: cli.token.clone(),
            virtual_server: cli.virtual_server.clone(),
        })
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Value), Failure> {
        let addr = format!("{}:{}", self.host, self.port);
        let tcp = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(|e| Failure(format!("cannot reach {addr}: {e}")))?;
        let name = rustls::pki_types::ServerName::try_from(self.host.clone())
            .map_err(|e| Failure(format!("server name {:?}: {e}", self.host)))?;
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| Failure(format!("TLS with {addr}: {e}")))?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host)
            .header("content-type", content_type);
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(vs) = &self.virtual_server {
            req = req.header("outpost-virtual-server", vs);
        }
        let resp = send
            .send_request(req.body(Full::new(bytes::Bytes::from(body)))?)
            .await?;
        let status = resp.status().as_u16();
        let raw = resp.into_body().collect().await?.to_bytes();
        let value = if raw.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&raw)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&raw).into_owned()))
        };
        if status >= 400 {
            let detail = value["detail"].as_str().unwrap_or("").to_string();
            let field = value["field"]
                .as_str()
                .map(|f| format!(" (field {f})"))
                .unwrap_or_default();
            let title = value["title"].as_str().unwrap_or("refused");
            return Err(Failure(format!("{status} {title}: {detail}{field}")));
        }
        Ok((status, value))
    }

    async fn get(&self, path: &str) -> Result<Value, Failure> {
        Ok(self
            .call("GET", path, "application/json", Vec::new())
            .await?
            .1)
    }

    async fn send(&self, method: &str, path: &str, body: Value) -> Result<Value, Failure> {
        let bytes = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        Ok(self.call(method, path, "application/json", bytes).await?.1)
    }
}

/// `key=value&...` of the options that are set, percent-encoded.
fn query(pairs: &[(&str, Option<String>)]) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let q: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", enc(v))))
        .collect();
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

fn seg(s: &str) -> String {
    query(&[("x", Some(s.to_string()))])[3..].to_string()
}

fn read_password(what: &str) -> Result<String, Failure> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| Failure(format!("reading the {what} from standard input: {e}")))?;
    let p = line.trim_end_matches(['\r', '\n']).to_string();
    if p.is_empty() {
        return Err(Failure(format!("no {what} on standard input")));
    }
    Ok(p)
}

/// What a command prints: the rows of a list under `key` as a table with `columns`, or an
/// object as `key: value` lines.
enum Show {
    Table(&'static str, &'static [&'static str]),
    Object,
    Text,
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn print(value: &Value, show: Show, as_json: bool) {
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
        return;
    }
    match show {
        Show::Text => match value {
            Value::String(s) => print!("{s}"),
            Value::Null => {}
            v => println!("{v}"),
        },
        Show::Object => {
            if let Value::Object(m) = value {
                for (k, v) in m {
                    match v {
                        Value::Object(_) | Value::Array(_) if !v.to_string().is_empty() => {
                            println!("{k}: {v}")
                        }
                        _ => println!("{k}: {}", cell(v)),
                    }
                }
            }
        }
        Show::Table(key, columns) => {
            let rows: Vec<Vec<String>> = value[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|r| columns.iter().map(|c| cell(&r[*c])).collect())
                        .collect()
                })
                .unwrap_or_default();
            let widths: Vec<usize> = columns
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    rows.iter()
                        .map(|r| r[i].chars().count())
                        .chain([c.len()])
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let line = |cells: Vec<String>| {
                let s: Vec<String> = cells
                    .iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect();
                println!("{}", s.join("  ").trim_end());
            };
            line(columns.iter().map(|c| c.to_uppercase()).collect());
            for r in rows {
                line(r);
            }
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let api = Api::new(&cli)?;
    let j = cli.json;
    match cli.command {
        Command::Login { name } => {
            let password = read_password("password")?;
            let a = api
                .send(
                    "POST",
                    "/api/v1/login",
                    json!({"name": name, "password": password}),
                )
                .await?;
            if j {
                print(&a, Show::Object, true);
            } else {
                println!("{}", a["token"].as_str().unwrap_or(""));
            }
        }
        Command::Logout => {
            api.send("POST", "/api/v1/logout", Value::Null).await?;
        }
        Command::Status => print(&api.get("/api/v1/status").await?, Show::Object, j),
        Command::Metrics => print(&api.get("/metrics").await?, Show::Text, false),
        Command::Groups(g) => match g {
            Groups::List => print(
                &api.get("/api/v1/groups").await?,
                Show::Table("groups", &["id", "name", "parent"]),
                j,
            ),
            Groups::Create { id, name, parent } => {
                let body = json!({"id": id, "name": name, "parent": parent});
                print(
                    &api.send("POST", "/api/v1/groups", body).await?,
                    Show::Object,
                    j,
                )
            }
            Groups::Rename { id, name } => {
                let path = format!("/api/v1/groups/{}", seg(&id));
                print(
                    &api.send("PATCH", &path, json!({"name": name})).await?,
                    Show::Object,
                    j,
                )
            }
            Groups::Move { id, parent } => {
                let path = format!("/api/v1/groups/{}", seg(&id));
                print(
                    &api.send("PATCH", &path, json!({"parent": parent})).await?,
                    Show::Object,
                    j,
                )
            }
            Groups::Delete { id } => {
                let path = format!("/api/v1/groups/{}", seg(&id));
                api.send("DELETE", &path, Value::Null).await?;
            }
        },
        Command::Devices(d) => devices(&api, d, j).await?,
        Command::Tokens(t) => match t {
            Tokens::Issue {
                group,
                device,
                ttl_secs,
            } => {
                let body = json!({"group": group, "device": device, "ttl_secs": ttl_secs});
                let a = api.send("POST", "/api/v1/enrollment-tokens", body).await?;
                if j {
                    print(&a, Show::Object, true);
                } else {
                    println!("{}", a["token"].as_str().unwrap_or(""));
                }
            }
            Tokens::List => print(
                &api.get("/api/v1/enrollment-tokens").await?,
                Show::Table("tokens", &["id", "group", "device", "expires_unix"]),
                j,
            ),
            Tokens::Revoke { id } => {
                let path = format!("/api/v1/enrollment-tokens/{}", seg(&id));
                api.send("DELETE", &path, Value::Null).await?;
            }
        },
        Command::Policies(p) => match p {
            Policies::List => print(
                &api.get("/api/v1/policies").await?,
                Show::Table("policies", &["id", "app", "group", "status"]),
                j,
            ),
            Policies::Show { id } => print(
                &api.get(&format!("/api/v1/policies/{}", seg(&id))).await?,
                Show::Object,
                j,
            ),
            Policies::Put { file } => {
                let text = std::fs::read_to_string(&file)
                    .map_err(|e| Failure(format!("{}: {e}", file.display())))?;
                let doc: Value = serde_json::from_str(&text)
                    .map_err(|e| Failure(format!("{}: {e}", file.display())))?;
                let id = doc["id"].as_str().ok_or_else(|| {
                    Failure(format!("{}: the policy has no \"id\"", file.display()))
                })?;
                let path = format!("/api/v1/policies/{}", seg(id));
                print(&api.send("PUT", &path, doc.clone()).await?, Show::Object, j)
            }
            Policies::Delete { id } => {
                let path = format!("/api/v1/policies/{}", seg(&id));
                print(
                    &api.send("DELETE", &path, Value::Null).await?,
                    Show::Object,
                    j,
                )
            }
            Policies::Status { id, status } => {
                let path = format!("/api/v1/policies/{}/status", seg(&id));
                let body = json!({"status": status.as_str()});
                print(&api.send("POST", &path, body).await?, Show::Object, j)
            }
        },
        Command::Dps(d) => match d {
            Dps::List => print(
                &api.get("/api/v1/distribution-points").await?,
                Show::Table(
                    "distribution_points",
                    &[
                        "device",
                        "scope",
                        "role",
                        "epoch",
                        "multicast_group",
                        "free_disk_bytes",
                        "last_heartbeat_unix",
                        "devices_served",
                    ],
                ),
                j,
            ),
            Dps::Assign { device, scope } => {
                let body = scope.body(&device);
                print(
                    &api.send("POST", "/api/v1/distribution-points", body)
                        .await?,
                    Show::Object,
                    j,
                )
            }
            Dps::Unassign { device, scope } => {
                let path = format!(
                    "/api/v1/distribution-points/{}/{}",
                    seg(&device),
                    seg(&scope.key())
                );
                api.send("DELETE", &path, Value::Null).await?;
            }
            Dps::Activate { device, scope } => {
                let path = format!(
                    "/api/v1/distribution-points/{}/{}/activate",
                    seg(&device),
                    seg(&scope.key())
                );
                print(
                    &api.send("POST", &path, Value::Null).await?,
                    Show::Object,
                    j,
                )
            }
        },
        Command::Gateways(g) => match g {
            Gateways::List => print(
                &api.get("/api/v1/gateways").await?,
                Show::Table(
                    "gateways",
                    &[
                        "id",
                        "kind",
                        "source",
                        "addr",
                        "device",
                        "signal_up",
                        "devices_relayed",
                    ],
                ),
                j,
            ),
            Gateways::AddDmz {
                id,
                addr,
                dns_names,
            } => {
                let body = json!({"id": id, "kind": "dmz", "addr": addr, "dns_names": dns_names});
                print(
                    &api.send("POST", "/api/v1/gateways", body).await?,
                    Show::Object,
                    j,
                )
            }
            Gateways::AddRemoteOffice {
                id,
                device,
                certificate,
            } => {
                let pem = std::fs::read_to_string(&certificate)
                    .map_err(|e| Failure(format!("{}: {e}", certificate.display())))?;
                let body = json!({"id": id, "kind": "remote_office", "device": device,
                                  "certificate_pem": pem});
                print(
                    &api.send("POST", "/api/v1/gateways", body).await?,
                    Show::Object,
                    j,
                )
            }
            Gateways::Remove { id } => {
                let path = format!("/api/v1/gateways/{}", seg(&id));
                api.send("DELETE", &path, Value::Null).await?;
            }
        },
        Command::Updates(u) => match u {
            Updates::List => print(
                &api.get("/api/v1/updates").await?,
                Show::Table(
                    "updates",
                    &["id", "name", "version", "size", "devices_holding", "sha256"],
                ),
                j,
            ),
            Updates::Upload {
                id,
                file,
                name,
                version,
            } => {
                let data = std::fs::read(&file)
                    .map_err(|e| Failure(format!("{}: {e}", file.display())))?;
                let path = format!(
                    "/api/v1/updates/{}{}",
                    seg(&id),
                    query(&[("name", Some(name)), ("version", Some(version.to_string()))])
                );
                let (_, a) = api
                    .call("PUT", &path, "application/octet-stream", data)
                    .await?;
                print(&a, Show::Object, j)
            }
            Updates::Import {
                id,
                path,
                name,
                version,
            } => {
                let body = json!({"path": path, "name": name, "version": version});
                let p = format!("/api/v1/updates/{}/import", seg(&id));
                print(&api.send("POST", &p, body).await?, Show::Object, j)
            }
        },
        Command::Events {
            kind,
            device,
            after,
            limit,
        } => {
            let q = query(&[
                ("kind", kind),
                ("device", device),
                ("after", after.map(|a| a.to_string())),
                ("limit", Some(limit.to_string())),
            ]);
            print(
                &api.get(&format!("/api/v1/events{q}")).await?,
                Show::Table(
                    "events",
                    &["seq", "at_unix_ms", "device", "kind", "severity", "body"],
                ),
                j,
            )
        }
        Command::Issues(i) => match i {
            Issues::List {
                device,
                acknowledged,
            } => {
                let q = query(&[
                    ("device", device),
                    ("acknowledged", acknowledged.map(|a| a.to_string())),
                    ("limit", Some("1000".into())),
                ]);
                print(
                    &api.get(&format!("/api/v1/security-issues{q}")).await?,
                    Show::Table(
                        "security_issues",
                        &[
                            "device",
                            "kind",
                            "severity",
                            "opened_at_unix",
                            "acknowledged_by",
                            "body",
                        ],
                    ),
                    j,
                )
            }
            Issues::Ack { device, kind } => {
                let path = format!(
                    "/api/v1/security-issues/{}/{}/acknowledge",
                    seg(&device),
                    seg(&kind)
                );
                print(
                    &api.send("POST", &path, Value::Null).await?,
                    Show::Object,
                    j,
                )
            }
        },
        Command::Accounts(a) => match a {
            Accounts::List => print(
                &api.get("/api/v1/accounts").await?,
                Show::Table("accounts", &["name", "role", "disabled", "created_at_unix"]),
                j,
            ),
            Accounts::Create { name, role } => {
                let password = read_password("password")?;
                let body = json!({"name": name, "role": role, "password": password});
                print(
                    &api.send("POST", "/api/v1/accounts", body).await?,
                    Show::Object,
                    j,
                )
            }
            Accounts::Set {
                name,
                role,
                disabled,
                password,
            } => {
                let password = if password {
                    Some(read_password("password")?)
                } else {
                    None
                };
                let body = json!({"role": role, "disabled": disabled, "password": password});
                let path = format!("/api/v1/accounts/{}", seg(&name));
                print(&api.send("PATCH", &path, body).await?, Show::Object, j)
            }
        },
        Command::VirtualServers(v) => match v {
            VirtualServers::List => print(
                &api.get("/api/v1/virtual-servers").await?,
                Show::Table(
                    "virtual_servers",
                    &[
                        "id",
                        "name",
                        "disabled",
                        "devices",
                        "online",
                        "multicast_first",
                    ],
                ),
                j,
            ),
            VirtualServers::Create { id, name } => print(
                &api.send(
                    "POST",
                    "/api/v1/virtual-servers",
                    json!({"id": id, "name": name}),
                )
                .await?,
                Show::Object,
                j,
            ),
            VirtualServers::Set { id, name, disabled } => {
                let path = format!("/api/v1/virtual-servers/{}", seg(&id));
                let body = json!({"name": name, "disabled": disabled});
                print(&api.send("PATCH", &path, body).await?, Show::Object, j)
            }
            VirtualServers::Delete { id } => {
                let path = format!("/api/v1/virtual-servers/{}", seg(&id));
                print(
                    &api.send("DELETE", &path, Value::Null).await?,
                    Show::Object,
                    j,
                )
            }
        },
        Command::ApiTokens(t) => match t {
            ApiTokens::List => print(
                &api.get("/api/v1/api-tokens").await?,
                Show::Table(
                    "api_tokens",
                    &[
                        "id",
                        "account",
                        "label",
                        "created_at_unix",
                        "revoked_at_unix",
                    ],
                ),
                j,
            ),
            ApiTokens::Issue { label } => {
                let a = api
                    .send("POST", "/api/v1/api-tokens", json!({"label": label}))
                    .await?;
                if j {
                    print(&a, Show::Object, true);
                } else {
                    println!("{}", a["token"].as_str().unwrap_or(""));
                }
            }
            ApiTokens::Revoke { id } => {
                let path = format!("/api/v1/api-tokens/{}", seg(&id));
                api.send("DELETE", &path, Value::Null).await?;
            }
        },
    }
    Ok(())
}

async fn devices(api: &Api, d: Devices, j: bool) -> Result<(), Failure> {
    let path = |id: &str, rest: &str| format!("/api/v1/devices/{}{rest}", seg(id));
    match d {
        Devices::List(f) => {
            let columns: &[&str] = &["id", "group", "online", "last_seen_unix", "tags"];
            let mut after = f.after.clone();
            let mut all = Vec::new();
            loop {
                let q = query(&[
                    ("limit", Some(f.limit.to_string())),
                    ("after", after.clone()),
                    ("group", f.group.clone()),
                    ("tag", f.tag.clone()),
                    ("online", f.online.map(|v| v.to_string())),
                    ("seen_since", f.seen_since.map(|v| v.to_string())),
                    ("seen_before", f.seen_before.map(|v| v.to_string())),
                    ("dp", f.dp.map(|v| v.to_string())),
                    ("issue", f.issue.map(|v| v.to_string())),
                ]);
                let page = api.get(&format!("/api/v1/devices{q}")).await?;
                if let Some(rows) = page["devices"].as_array() {
                    all.extend(rows.iter().cloned());
                }
                after = page["next"].as_str().map(str::to_string);
                if after.is_none() || f.one_page {
                    let out = json!({"devices": all, "next": after});
                    print(&out, Show::Table("devices", columns), j);
                    return Ok(());
                }
            }
        }
        Devices::Show { id } => print(&api.get(&path(&id, "")).await?, Show::Object, j),
        Devices::Move { id, group } => print(
            &api.send("POST", &path(&id, "/move"), json!({"group": group}))
                .await?,
            Show::Object,
            j,
        ),
        Devices::Tag { id, tags } => print(
            &api.send("PATCH", &path(&id, ""), json!({"tags": tags}))
                .await?,
            Show::Object,
            j,
        ),
        Devices::Locate { id, location, .. } => print(
            &api.send(
                "PATCH",
                &path(&id, ""),
                json!({"network_location": location}),
            )
            .await?,
            Show::Object,
            j,
        ),
        Devices::Remove { id } => {
            api.send("DELETE", &path(&id, ""), Value::Null).await?;
        }
        Devices::Settings { id } => {
            print(&api.get(&path(&id, "/settings")).await?, Show::Object, j)
        }
        Devices::Explain {
            id,
            app,
            path: setting,
        } => {
            let q = query(&[("app", app), ("path", setting)]);
            let v = api
                .get(&path(&id, &format!("/settings/explain{q}")))
                .await?;
            if j {
                print(&v, Show::Object, true);
            } else {
                print_explanations(&v);
            }
        }
    }
    Ok(())
}

/// `source` of an explanation in words: `policy "p" of group "g" (locked)`.
fn source_words(s: &Value) -> String {
    let q = |k: &str| s[k].as_str().unwrap_or("?").to_string();
    match s["kind"].as_str() {
        Some("policy") => format!(
            "policy {:?} of group {:?}{}",
            q("policy"),
            q("group"),
            if s["locked"] == true { " (locked)" } else { "" }
        ),
        Some("profile") => format!(
            "profile {:?} (priority {}) of policy {:?} of group {:?}",
            q("profile"),
            s["rank"],
            q("policy"),
            q("group")
        ),
        Some("default") => "schema default".into(),
        Some("local") => "local setting".into(),
        Some("merged") => "merged list".into(),
        _ => s.to_string(),
    }
}

/// Explanations as an administrator reads them: each value, its source, and every candidate.
fn print_explanations(v: &Value) {
    for e in v["settings"].as_array().into_iter().flatten() {
        println!(
            "{}/{} = {}{}",
            cell(&e["app"]),
            cell(&e["path"]),
            e["value"],
            if e["locked"] == true { " (locked)" } else { "" }
        );
        println!("  from: {}", source_words(&e["source"]));
        for c in e["candidates"].as_array().into_iter().flatten() {
            let why = match c["reason"].as_str() {
                None => String::new(),
                Some(r) => {
                    let by = ["by", "winner"]
                        .iter()
                        .find(|k| c[**k].is_object())
                        .map(|k| format!(" by {}", source_words(&c[*k])))
                        .unwrap_or_default();
                    format!(": {r}{by}")
                }
            };
            println!(
                "  [{}] {} = {}{why}",
                cell(&c["outcome"]),
                source_words(&c["source"]),
                c["value"]
            );
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(e)) => {
            eprintln!("{PROGRAM}: {e}");
            ExitCode::FAILURE
        }
    }
}
