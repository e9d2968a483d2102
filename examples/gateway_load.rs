//! Load test of a DMZ connection gateway over loopback with real TLS.
//!
//! Three processes: the gateway, the server side (the DMZ connector plus the server's own
//! device port, for the direct baseline), and the devices (this process). Each holds its own
//! descriptors, and the gateway's memory is its own. Reported in one run:
//! - connection setup (TCP + TLS + first echoed byte), through the gateway vs directly to the
//!   server: median and p99, and the ratio;
//! - throughput of one device streaming to the server, through the gateway vs directly;
//! - N concurrent device sessions held through the gateway: held, failures, setup median/p99,
//!   and the gateway's resident memory.
//!
//! ```text
//! cargo run --release --example gateway_load -- [--sessions 10000] [--mib 256] [--samples 300] [--relay-kib 16]
//! cargo run --example gateway_load -- --help
//! ```
//!
//! A gateway holds two sockets per session (the device's and the server's data connection),
//! so N sessions need 2N descriptors in the gateway process; the example raises its
//! open-file limit as far as the system lets it and says when that is short.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use clap::builder::TypedValueParser;
use clap::{CommandFactory, Parser};
use outpost::gateway::{
    ConnectorConfig, DeviceConnection, DeviceListener, DmzGatewayEntry, Gateway, GatewayConfig,
    ListenerLimits, ServerConnector, TlsFiles,
};
use outpost::pki::tls::{TlsOptions, agent_client_config};
use outpost::pki::{PkiConfig, ServerCa, store};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, ChildStdout};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::TlsConnector;

const GATEWAY_NAME: &str = "gateway.load.test";
const SERVER_NAME: &str = "server.load.test";

enum Role {
    Devices,
    Gateway(PathBuf),
    Server(PathBuf, SocketAddr),
}

/// Load test of a DMZ connection gateway over loopback with real TLS, in three processes
/// (the gateway, the server side, the devices): connection setup and throughput through the
/// gateway against directly to the server, then N concurrent sessions held through it and
/// the gateway's memory.
#[derive(Parser)]
#[command(name = "gateway_load", version, args_override_self = true)]
struct Args {
    /// Concurrent device sessions held through the gateway (2 descriptors each in the
    /// gateway process).
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..=100_000).map(|n| n as usize))]
    sessions: usize,
    /// Bytes one device streams to the server for the throughput figures, MiB.
    #[arg(long, value_name = "M", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=65_536).map(|n| n as usize))]
    mib: usize,
    /// Connection setups timed each way, through the gateway and directly.
    #[arg(long, value_name = "S", default_value_t = 300,
          value_parser = clap::value_parser!(u32).range(1..=100_000).map(|n| n as usize))]
    samples: usize,
    /// The gateway's relay buffer per direction, KiB.
    #[arg(long, value_name = "K", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=16_384).map(|n| n as usize))]
    relay_kib: usize,
    /// Run as the gateway process, on the files in DIR (started by the devices process).
    #[arg(long, value_name = "DIR", hide = true, conflicts_with = "role_server")]
    role_gateway: Option<PathBuf>,
    /// Run as the server process, on the files in DIR, dialling the gateway at ADDR
    /// (started by the devices process).
    #[arg(long, hide = true, num_args = 2, value_names = ["DIR", "ADDR"])]
    role_server: Option<Vec<String>>,
}

impl Args {
    /// Which of the three processes this is.
    fn role(&self) -> Result<Role, clap::Error> {
        Ok(match (&self.role_gateway, self.role_server.as_deref()) {
            (Some(dir), _) => Role::Gateway(dir.clone()),
            (None, Some([dir, gw])) => {
                let gw = gw.parse().map_err(|e| {
                    Args::command().error(
                        clap::error::ErrorKind::ValueValidation,
                        format!("--role-server: gateway address {gw:?}: {e}"),
                    )
                })?;
                Role::Server(dir.into(), gw)
            }
            (None, _) => Role::Devices,
        })
    }
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("gateway_load: {msg}");
    std::process::exit(1);
}

fn tls_files(cert: &str, key: &str) -> TlsFiles {
    let mut tls = TlsFiles::default();
    tls.cert = cert.into();
    tls.key = key.into();
    tls.server_ca = "ca.pem".into();
    tls
}

async fn wait_for_stdin_close() {
    let mut line = String::new();
    let _ = BufReader::new(tokio::io::stdin())
        .read_line(&mut line)
        .await;
}

/// The gateway process.
async fn run_gateway(dir: &Path, sessions: usize, relay_kib: usize) {
    let mut cfg = GatewayConfig::dmz("load-gw", "127.0.0.1:0".parse().expect("addr"));
    cfg.tls = tls_files("gw.chain.pem", "gw.key.pem");
    cfg.limits.max_devices = sessions + 1_000;
    cfg.limits.max_pending = 2_000;
    cfg.limits.relay_buffer = relay_kib * 1024;
    let material = cfg.load_tls(dir).unwrap_or_else(|e| fail(e));
    let gw = Gateway::start(cfg, material)
        .await
        .unwrap_or_else(|e| fail(e));
    println!("LISTEN {}", gw.local_addr());
    wait_for_stdin_close().await;
    let s = gw.stats();
    println!(
        "STATS accepted={} refused_limit={} refused_unreachable={} refused_overloaded={} handshake_failures={} tickets_redeemed={} tickets_refused={} bytes_up={} bytes_down={}",
        s.devices_accepted,
        s.refused_limit,
        s.refused_unreachable,
        s.refused_overloaded,
        s.handshake_failures,
        s.tickets.redeemed,
        s.tickets.refused(),
        s.bytes_up,
        s.bytes_down
    );
    gw.shutdown().await;
}

/// The server's behaviour per device, chosen by the device's first byte: `E` echo, `S` sink
/// (count to end of stream, answer the count), `H` hold (answer `!`, then wait for the end).
async fn serve(conn: DeviceConnection) {
    let (mut r, mut w) = tokio::io::split(conn.stream);
    let mut mode = [0u8; 1];
    if r.read_exact(&mut mode).await.is_err() {
        return;
    }
    match mode[0] {
        b'E' => {
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
        b'S' => {
            let n = tokio::io::copy(&mut r, &mut tokio::io::sink())
                .await
                .unwrap_or(0);
            let _ = w.write_all(&n.to_be_bytes()).await;
        }
        b'H' if w.write_all(b"!").await.is_ok() && w.flush().await.is_ok() => {
            let _ = tokio::io::copy(&mut r, &mut tokio::io::sink()).await;
        }
        _ => {}
    }
    let _ = w.shutdown().await;
}

/// The server process: the DMZ connector and the server's own device port.
async fn run_server(dir: &Path, gw_addr: SocketAddr) {
    let material = tls_files("server.chain.pem", "server.key.pem")
        .load(dir)
        .unwrap_or_else(|e| fail(e));
    let (tx, mut rx) = mpsc::channel::<DeviceConnection>(4096);
    tokio::spawn(async move {
        while let Some(c) = rx.recv().await {
            tokio::spawn(serve(c));
        }
    });
    let mut cc = ConnectorConfig::default();
    cc.server_id = "load-server".into();
    cc.gateways = vec![DmzGatewayEntry::new("load-gw", gw_addr, GATEWAY_NAME)];
    let connector = ServerConnector::start(cc, &material, tx.clone()).unwrap_or_else(|e| fail(e));
    let direct = DeviceListener::start(
        "127.0.0.1:0".parse().expect("addr"),
        &material,
        &ListenerLimits::default().with_handshake_timeout(Duration::from_secs(30)),
        outpost::gateway::TunnelPolicy::Refuse,
        tx,
    )
    .await
    .unwrap_or_else(|e| fail(e));
    for _ in 0..500 {
        if !connector.connected().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if connector.connected().is_empty() {
        fail("the signal connection to the gateway did not come up");
    }
    println!("LISTEN {}", direct.local_addr());
    wait_for_stdin_close().await;
    connector.shutdown().await;
    direct.shutdown().await;
}

type Lines = tokio::io::Lines<BufReader<ChildStdout>>;

/// Starts this program again in another role and reads its `LISTEN addr` line.
async fn spawn_role(args: &[String]) -> (Child, Lines, SocketAddr) {
    let exe = std::env::current_exe().unwrap_or_else(|e| fail(e));
    let mut child = tokio::process::Command::new(exe)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| fail(format!("cannot start {args:?}: {e}")));
    let mut out = BufReader::new(child.stdout.take().expect("piped")).lines();
    let addr = match out.next_line().await {
        Ok(Some(l)) if l.starts_with("LISTEN ") => l[7..].parse().unwrap_or_else(|e| fail(e)),
        other => fail(format!("{args:?} did not start: {other:?}")),
    };
    (child, out, addr)
}

/// Resident memory of a process, read through a handle opened once (reading it then needs no
/// new descriptor when the process is near its limit).
struct Rss(Option<std::fs::File>);

impl Rss {
    fn open(pid: u32) -> Self {
        Rss(std::fs::File::open(format!("/proc/{pid}/status")).ok())
    }
    fn kib(&mut self) -> Option<u64> {
        use std::io::{Read, Seek};
        let f = self.0.as_mut()?;
        f.seek(std::io::SeekFrom::Start(0)).ok()?;
        let mut status = String::new();
        f.read_to_string(&mut status).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }
}

struct Client {
    cfg: Arc<rustls::ClientConfig>,
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

impl Client {
    async fn connect(
        &self,
        addr: SocketAddr,
        name: &str,
        source: Option<IpAddr>,
    ) -> std::io::Result<Tls> {
        let sock = TcpSocket::new_v4()?;
        if let Some(ip) = source {
            sock.bind(SocketAddr::new(ip, 0))?;
        }
        let tcp = sock.connect(addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(name.to_string()).map_err(std::io::Error::other)?;
        TlsConnector::from(self.cfg.clone())
            .connect(name, tcp)
            .await
    }

    /// Sends the mode byte (and more) and checks the server's first answer byte; a refusal
    /// from the gateway is a Refusal frame, which starts with another byte.
    async fn open(
        &self,
        addr: SocketAddr,
        name: &str,
        source: Option<IpAddr>,
        hello: &[u8],
        expect: u8,
    ) -> std::io::Result<Tls> {
        let mut tls = self.connect(addr, name, source).await?;
        tls.write_all(hello).await?;
        tls.flush().await?;
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await?;
        if b[0] != expect {
            return Err(std::io::Error::other("refused by the gateway"));
        }
        Ok(tls)
    }

    /// Connect, then one echoed byte: the time a device waits before it can talk.
    async fn setup(&self, addr: SocketAddr, name: &str) -> std::io::Result<Duration> {
        let t = Instant::now();
        let mut tls = self.open(addr, name, None, b"Ex", b'x').await?;
        let d = t.elapsed();
        tls.shutdown().await?;
        Ok(d)
    }

    /// Streams `bytes` to the server's sink and waits for its count: bytes per second.
    async fn stream(&self, addr: SocketAddr, name: &str, bytes: usize) -> std::io::Result<f64> {
        let mut tls = self.connect(addr, name, None).await?;
        let chunk = vec![0x5Au8; 256 * 1024];
        let t = Instant::now();
        tls.write_all(b"S").await?;
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            tls.write_all(&chunk[..n]).await?;
            left -= n;
        }
        tls.shutdown().await?;
        let mut count = [0u8; 8];
        tls.read_exact(&mut count).await?;
        let secs = t.elapsed().as_secs_f64();
        if u64::from_be_bytes(count) != bytes as u64 {
            return Err(std::io::Error::other(format!(
                "server counted {} of {bytes} bytes",
                u64::from_be_bytes(count)
            )));
        }
        Ok(bytes as f64 / secs)
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Raises the open-file limit towards `want`; returns the soft limit in force.
fn raise_fd_limit(want: u64) -> u64 {
    use rlimit::Resource;
    if Resource::NOFILE.set(want, want).is_err() {
        let _ = rlimit::increase_nofile_limit(want);
    }
    Resource::NOFILE.get().map(|(soft, _)| soft).unwrap_or(0)
}

/// The certificates and keys the gateway and server processes read from `dir`.
fn write_role_files(ca: &ServerCa, dir: &std::path::Path, now: SystemTime) {
    let write = |name: &str, pem: String, secret: bool| {
        let path = dir.join(name);
        let r = if secret {
            store::write_private_key(&path, &pem)
        } else {
            store::write_public(&path, &pem)
        };
        r.unwrap_or_else(|e| fail(e));
    };
    let gw_cert = ca
        .issue_gateway(
            &[GATEWAY_NAME.to_string()],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
            now,
        )
        .unwrap_or_else(|e| fail(e));
    write("gw.chain.pem", gw_cert.chain_pem(), false);
    write("gw.key.pem", gw_cert.key_pem(), true);
    let server_cert = ca
        .issue_server("server", &[SERVER_NAME.to_string()], &[], now)
        .unwrap_or_else(|e| fail(e));
    write("server.chain.pem", server_cert.chain_pem(), false);
    write("server.key.pem", server_cert.key_pem(), true);
    write("ca.pem", ca.server_ca().to_pem(), false);
}

/// Connection setup through the gateway and directly, interleaved, `samples` of each.
async fn measure_setup(
    client: &Client,
    samples: usize,
    gw_addr: SocketAddr,
    direct_addr: SocketAddr,
) {
    let (mut via_gw, mut via_direct) = (Vec::new(), Vec::new());
    for _ in 0..samples {
        via_direct.push(
            client
                .setup(direct_addr, SERVER_NAME)
                .await
                .unwrap_or_else(|e| fail(format!("direct setup: {e}"))),
        );
        via_gw.push(
            client
                .setup(gw_addr, GATEWAY_NAME)
                .await
                .unwrap_or_else(|e| fail(format!("gateway setup: {e}"))),
        );
    }
    via_gw.sort();
    via_direct.sort();
    let (gm, g99) = (percentile(&via_gw, 0.5), percentile(&via_gw, 0.99));
    let (dm, d99) = (percentile(&via_direct, 0.5), percentile(&via_direct, 0.99));
    println!(
        "setup ({} samples each): direct median {:.2} ms p99 {:.2} ms; via gateway median {:.2} ms p99 {:.2} ms; ratio {:.2}x",
        samples,
        ms(dm),
        ms(d99),
        ms(gm),
        ms(g99),
        ms(gm) / ms(dm)
    );
}

/// Throughput of `mib` MiB through the gateway and directly, interleaved, median of 3.
async fn measure_throughput(
    client: &Client,
    mib: usize,
    gw_addr: SocketAddr,
    direct_addr: SocketAddr,
) {
    let bytes = mib * 1024 * 1024;
    let (mut tg, mut td) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        td.push(
            client
                .stream(direct_addr, SERVER_NAME, bytes)
                .await
                .unwrap_or_else(|e| fail(format!("direct stream: {e}"))),
        );
        tg.push(
            client
                .stream(gw_addr, GATEWAY_NAME, bytes)
                .await
                .unwrap_or_else(|e| fail(format!("gateway stream: {e}"))),
        );
    }
    tg.sort_by(f64::total_cmp);
    td.sort_by(f64::total_cmp);
    let mibs = |b: f64| b / (1024.0 * 1024.0);
    println!(
        "throughput ({} MiB, median of 3): direct {:.0} MiB/s; via gateway {:.0} MiB/s; ratio {:.0}%",
        mib,
        mibs(td[1]),
        mibs(tg[1]),
        100.0 * tg[1] / td[1]
    );
}

/// `sessions` devices held through the gateway at once, and its memory meanwhile; returns
/// how many were held and how many failed.
async fn hold_sessions(
    client: &Arc<Client>,
    sessions: usize,
    gw_addr: SocketAddr,
    gw_rss: &mut Rss,
) -> (usize, u64) {
    let rss_before = gw_rss.kib().unwrap_or(0);
    let handshakes = Arc::new(Semaphore::new(128));
    let (close_tx, close_rx) = watch::channel(false);
    let failures = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let (held_tx, mut held_rx) = mpsc::channel::<Duration>(sessions);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(sessions);
    for i in 0..sessions {
        let (client, handshakes, mut close_rx) =
            (Arc::clone(client), handshakes.clone(), close_rx.clone());
        let (failures, first_error, held_tx) =
            (failures.clone(), first_error.clone(), held_tx.clone());
        // Spread source addresses over 127.0.0.2-127.0.0.201 so ephemeral ports never run out.
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % 200) as u8));
        tasks.push(tokio::spawn(async move {
            let permit = handshakes.acquire().await.ok();
            let t = Instant::now();
            let mut tls = match client
                .open(gw_addr, GATEWAY_NAME, Some(source), b"H", b'!')
                .await
            {
                Ok(tls) => tls,
                Err(e) => {
                    failures.fetch_add(1, Ordering::Relaxed);
                    first_error
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert(e.to_string());
                    return;
                }
            };
            drop(permit);
            let _ = held_tx.send(t.elapsed()).await;
            let _ = close_rx.wait_for(|c| *c).await;
            let _ = tls.shutdown().await;
            let mut rest = Vec::new();
            let _ = tls.read_to_end(&mut rest).await;
        }));
    }
    drop(held_tx);
    let mut setups = Vec::with_capacity(sessions);
    while setups.len() + (failures.load(Ordering::Relaxed) as usize) < sessions {
        match tokio::time::timeout(Duration::from_secs(60), held_rx.recv()).await {
            Ok(Some(d)) => setups.push(d),
            Ok(None) | Err(_) => break,
        }
    }
    let ramp = started.elapsed();
    let held = setups.len();
    let rss_peak = gw_rss.kib().unwrap_or(0);
    setups.sort();
    println!(
        "sessions: {held} of {} held at once, {} failures, ramp-up {:.1} s, setup median {:.2} ms p99 {:.2} ms (128 handshakes in flight)",
        sessions,
        failures.load(Ordering::Relaxed),
        ramp.as_secs_f64(),
        ms(percentile(&setups, 0.5)),
        ms(percentile(&setups, 0.99)),
    );
    println!(
        "gateway memory: {:.1} MiB resident before, {:.1} MiB with {held} sessions ({:.1} KiB per session)",
        rss_before as f64 / 1024.0,
        rss_peak as f64 / 1024.0,
        (rss_peak.saturating_sub(rss_before)) as f64 / held.max(1) as f64
    );
    if let Some(e) = first_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        println!("first failure: {e}");
    }
    let _ = close_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    (held, failures.load(Ordering::Relaxed))
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let role = args.role().unwrap_or_else(|e| e.exit());
    // The gateway holds two sockets per session; the others one.
    let want = (args.sessions as u64) * 2 + 1_024;
    let limit = raise_fd_limit(want);
    match &role {
        Role::Gateway(dir) => {
            if limit < want {
                eprintln!(
                    "gateway_load: the gateway process may open {limit} files, {want} wanted for {} sessions (2 per session); the hard limit can only be raised with CAP_SYS_RESOURCE",
                    args.sessions
                );
            }
            return run_gateway(dir, args.sessions, args.relay_kib).await;
        }
        Role::Server(dir, gw) => return run_server(dir, *gw).await,
        Role::Devices => {}
    }

    // PKI in memory; the files the other two processes need.
    let now = SystemTime::now();
    let ca = ServerCa::create(PkiConfig::default(), now).unwrap_or_else(|e| fail(e));
    let dir = std::env::temp_dir().join(format!("outpost-gateway-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| fail(format!("{}: {e}", dir.display())));
    write_role_files(&ca, &dir, now);

    let dir_arg = dir.to_string_lossy().into_owned();
    let (mut gw_child, mut gw_out, gw_addr) = spawn_role(&[
        "--role-gateway".into(),
        dir_arg.clone(),
        "--sessions".into(),
        args.sessions.to_string(),
        "--relay-kib".into(),
        args.relay_kib.to_string(),
    ])
    .await;
    let mut gw_rss = Rss::open(gw_child.id().unwrap_or(0));
    let (mut server_child, _server_out, direct_addr) =
        spawn_role(&["--role-server".into(), dir_arg, gw_addr.to_string()]).await;
    let _ = std::fs::remove_dir_all(&dir);

    let agent = ca
        .issue_agent("load-device", now)
        .unwrap_or_else(|e| fail(e));
    let client = Arc::new(Client {
        cfg: agent_client_config(&agent, ca.server_ca(), &TlsOptions::default())
            .unwrap_or_else(|e| fail(e)),
    });
    println!(
        "gateway {gw_addr}, server port {direct_addr}, relay buffer {} KiB per direction",
        args.relay_kib
    );

    measure_setup(&client, args.samples, gw_addr, direct_addr).await;
    measure_throughput(&client, args.mib, gw_addr, direct_addr).await;
    let (held, failed) = hold_sessions(&client, args.sessions, gw_addr, &mut gw_rss).await;
    drop(gw_child.stdin.take());
    if let Ok(Some(l)) = gw_out.next_line().await {
        println!(
            "gateway {}",
            l.trim_start_matches("STATS ").replace(' ', ", ")
        );
    }
    let _ = gw_child.wait().await;
    drop(server_child.stdin.take());
    let _ = server_child.wait().await;
    if failed > 0 || held < args.sessions {
        std::process::exit(1);
    }
}
