//! Load test of a DMZ connection gateway over loopback with real TLS.
//!
//! The gateway runs in a child process (so its memory is its own); this process plays the
//! Administration Server (the DMZ connector plus its own device port, for the direct
//! baseline) and the devices. It reports, in one run:
//! - connection setup (TCP + TLS + first echoed byte), through the gateway vs directly to the
//!   server: median and p99, and the ratio;
//! - throughput of one device streaming to the server, through the gateway vs directly;
//! - N concurrent device sessions held through the gateway: held, failures, setup median/p99,
//!   and the gateway's resident memory.
//!
//! `cargo run --release --example gateway_load -- [--sessions 10000] [--mib 256] [--samples 300] [--relay-kib 16]`

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use outpost::gateway::{
    ConnectorConfig, DeviceConnection, DeviceListener, DmzGatewayEntry, Gateway, GatewayConfig,
    ServerConnector, TlsFiles, TlsMaterial,
};
use outpost::pki::tls::{TlsOptions, agent_client_config};
use outpost::pki::{PkiConfig, ServerCa, store};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::TlsConnector;

const GATEWAY_NAME: &str = "gateway.load.test";

struct Args {
    sessions: usize,
    mib: usize,
    samples: usize,
    relay_kib: usize,
    role_gateway: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        sessions: 10_000,
        mib: 256,
        samples: 300,
        relay_kib: 16,
        role_gateway: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut num = |name: &str, max: usize| -> Result<usize, String> {
            let v = it.next().ok_or(format!("{name} needs a value"))?;
            v.parse()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or(format!("{name} must be 1..={max}, got {v:?}"))
        };
        match flag.as_str() {
            "--sessions" => a.sessions = num("--sessions", 100_000)?,
            "--mib" => a.mib = num("--mib", 65_536)?,
            "--samples" => a.samples = num("--samples", 100_000)?,
            "--relay-kib" => a.relay_kib = num("--relay-kib", 16_384)?,
            "--role-gateway" => {
                a.role_gateway = Some(it.next().ok_or("--role-gateway needs a directory")?.into())
            }
            other => {
                return Err(format!(
                    "unknown flag {other:?} (flags: --sessions N, --mib M, --samples S, --relay-kib K)"
                ));
            }
        }
    }
    Ok(a)
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("gateway_load: {msg}");
    std::process::exit(1);
}

/// The child process: a DMZ gateway from the files in `dir`.
async fn run_gateway(dir: &Path, sessions: usize, relay_kib: usize) {
    let mut tls = TlsFiles::default();
    tls.cert = "gw.chain.pem".into();
    tls.key = "gw.key.pem".into();
    tls.server_ca = "ca.pem".into();
    let mut cfg = GatewayConfig::dmz("load-gw", "127.0.0.1:0".parse().expect("addr"));
    cfg.tls = tls;
    cfg.limits.max_devices = sessions + 1_000;
    cfg.limits.max_pending = 2_000;
    cfg.limits.relay_buffer = relay_kib * 1024;
    let material = cfg.load_tls(dir).unwrap_or_else(|e| fail(e));
    let gw = Gateway::start(cfg, material)
        .await
        .unwrap_or_else(|e| fail(e));
    println!("LISTEN {}", gw.local_addr());
    // Run until the parent closes our stdin.
    let mut line = String::new();
    let _ = BufReader::new(tokio::io::stdin())
        .read_line(&mut line)
        .await;
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

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The server's per-device behaviour, chosen by the device's first byte:
/// `E` echo, `S` sink (count to end of stream, answer the count), `H` hold (answer one byte,
/// then wait for end of stream).
async fn serve(conn: DeviceConnection) {
    let (mut r, mut w) = tokio::io::split(conn.stream);
    let mut mode = [0u8; 1];
    if r.read_exact(&mut mode).await.is_err() {
        return;
    }
    match mode[0] {
        b'E' => {
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        }
        b'S' => {
            let n = tokio::io::copy(&mut r, &mut tokio::io::sink())
                .await
                .unwrap_or(0);
            let _ = w.write_all(&n.to_be_bytes()).await;
            let _ = w.shutdown().await;
        }
        b'H' => {
            if w.write_all(b"!").await.is_ok() && w.flush().await.is_ok() {
                let _ = tokio::io::copy(&mut r, &mut tokio::io::sink()).await;
            }
            let _ = w.shutdown().await;
        }
        _ => {}
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

    /// Connect, then one echoed byte: the time a device waits before it can talk.
    async fn setup(&self, addr: SocketAddr, name: &str) -> std::io::Result<Duration> {
        let t = Instant::now();
        let mut tls = self.connect(addr, name, None).await?;
        tls.write_all(b"Ex").await?;
        tls.flush().await?;
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await?;
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

fn raise_fd_limit(want: u64) -> u64 {
    use rlimit::Resource;
    if Resource::NOFILE.set(want, want).is_err() {
        let _ = rlimit::increase_nofile_limit(want);
    }
    Resource::NOFILE.get().map(|(soft, _)| soft).unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("gateway_load: {e}");
        std::process::exit(2)
    });
    let want = (args.sessions as u64) * 3 + 2_048;
    let limit = raise_fd_limit(want);
    if let Some(dir) = &args.role_gateway {
        run_gateway(dir, args.sessions, args.relay_kib).await;
        return;
    }
    if limit < want {
        eprintln!(
            "gateway_load: open-file limit is {limit}, {want} wanted; sessions may fail for lack of descriptors"
        );
    }

    // PKI in memory; the gateway's files for the child process.
    let now = SystemTime::now();
    let ca = ServerCa::create(PkiConfig::default(), now).unwrap_or_else(|e| fail(e));
    let dir = std::env::temp_dir().join(format!("outpost-gateway-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| fail(format!("{}: {e}", dir.display())));
    let gw_cert = ca
        .issue_gateway(
            &[GATEWAY_NAME.to_string()],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
            now,
        )
        .unwrap_or_else(|e| fail(e));
    store::write_public(&dir.join("gw.chain.pem"), &gw_cert.chain_pem())
        .unwrap_or_else(|e| fail(e));
    store::write_private_key(&dir.join("gw.key.pem"), &gw_cert.key_pem())
        .unwrap_or_else(|e| fail(e));
    store::write_public(&dir.join("ca.pem"), &ca.server_ca().to_pem()).unwrap_or_else(|e| fail(e));

    let exe = std::env::current_exe().unwrap_or_else(|e| fail(e));
    let mut child = tokio::process::Command::new(exe)
        .arg("--role-gateway")
        .arg(&dir)
        .arg("--sessions")
        .arg(args.sessions.to_string())
        .arg("--relay-kib")
        .arg(args.relay_kib.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| fail(format!("cannot start the gateway process: {e}")));
    let gw_pid = child.id().unwrap_or(0);
    let mut child_out = BufReader::new(child.stdout.take().expect("piped")).lines();
    let gw_addr: SocketAddr = match child_out.next_line().await {
        Ok(Some(l)) if l.starts_with("LISTEN ") => l[7..].parse().unwrap_or_else(|e| fail(e)),
        other => fail(format!("gateway process did not start: {other:?}")),
    };
    let _ = std::fs::remove_dir_all(&dir);

    // The server: DMZ connector to the gateway, and its own device port for the baseline.
    let server_id = ca
        .issue_server("server", &["server.load.test".to_string()], &[], now)
        .unwrap_or_else(|e| fail(e));
    let server = TlsMaterial::new(server_id, ca.server_ca().clone());
    let (tx, mut rx) = mpsc::channel::<DeviceConnection>(4096);
    tokio::spawn(async move {
        while let Some(c) = rx.recv().await {
            tokio::spawn(serve(c));
        }
    });
    let mut cc = ConnectorConfig::default();
    cc.server_id = "load-server".into();
    cc.gateways = vec![DmzGatewayEntry::new("load-gw", gw_addr, GATEWAY_NAME)];
    let connector = ServerConnector::start(cc, &server, tx.clone()).unwrap_or_else(|e| fail(e));
    let direct = DeviceListener::start(
        "127.0.0.1:0".parse().expect("addr"),
        &server,
        Duration::from_secs(30),
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

    let agent = ca
        .issue_agent("load-device", now)
        .unwrap_or_else(|e| fail(e));
    let client = Arc::new(Client {
        cfg: agent_client_config(&agent, ca.server_ca(), &TlsOptions::default())
            .unwrap_or_else(|e| fail(e)),
    });
    let direct_addr = direct.local_addr();
    println!("gateway {gw_addr} (pid {gw_pid}), server port {direct_addr}");

    // 1. Connection setup, interleaved.
    let (mut via_gw, mut via_direct) = (Vec::new(), Vec::new());
    for _ in 0..args.samples {
        via_direct.push(
            client
                .setup(direct_addr, "server.load.test")
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
    let (gm, g99, dm, d99) = (
        percentile(&via_gw, 0.5),
        percentile(&via_gw, 0.99),
        percentile(&via_direct, 0.5),
        percentile(&via_direct, 0.99),
    );
    println!(
        "setup ({} samples each): direct median {:.2} ms p99 {:.2} ms; via gateway median {:.2} ms p99 {:.2} ms; ratio {:.2}x",
        args.samples,
        ms(dm),
        ms(d99),
        ms(gm),
        ms(g99),
        ms(gm) / ms(dm)
    );

    // 2. Throughput, interleaved, median of 3.
    let bytes = args.mib * 1024 * 1024;
    let (mut tg, mut td) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        td.push(
            client
                .stream(direct_addr, "server.load.test", bytes)
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
        args.mib,
        mibs(td[1]),
        mibs(tg[1]),
        100.0 * tg[1] / td[1]
    );

    // 3. Concurrent sessions held through the gateway.
    let rss_before = rss_kib(gw_pid).unwrap_or(0);
    let handshakes = Arc::new(Semaphore::new(128));
    let (close_tx, close_rx) = watch::channel(false);
    let failures = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let (held_tx, mut held_rx) = mpsc::channel::<Duration>(args.sessions);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.sessions);
    for i in 0..args.sessions {
        let (client, handshakes, mut close_rx) =
            (client.clone(), handshakes.clone(), close_rx.clone());
        let (failures, first_error, held_tx) =
            (failures.clone(), first_error.clone(), held_tx.clone());
        // Spread source addresses over 127.0.0.2-127.0.0.201 so ephemeral ports never run out.
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % 200) as u8));
        tasks.push(tokio::spawn(async move {
            let permit = handshakes.acquire().await.ok();
            let t = Instant::now();
            let opened = async {
                let mut tls = client.connect(gw_addr, GATEWAY_NAME, Some(source)).await?;
                tls.write_all(b"H").await?;
                tls.flush().await?;
                let mut b = [0u8; 1];
                tls.read_exact(&mut b).await?;
                Ok::<_, std::io::Error>(tls)
            };
            let mut tls = match opened.await {
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
    let mut setups = Vec::with_capacity(args.sessions);
    while setups.len() + (failures.load(Ordering::Relaxed) as usize) < args.sessions {
        match tokio::time::timeout(Duration::from_secs(60), held_rx.recv()).await {
            Ok(Some(d)) => setups.push(d),
            Ok(None) => break,
            Err(_) => break,
        }
    }
    let ramp = started.elapsed();
    let held = setups.len();
    let rss_peak = rss_kib(gw_pid).unwrap_or(0);
    setups.sort();
    println!(
        "sessions: {held} of {} held at once, {} failures, ramp-up {:.1} s, setup median {:.2} ms p99 {:.2} ms (128 handshakes in flight)",
        args.sessions,
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
    drop(child.stdin.take());
    if let Ok(Some(l)) = child_out.next_line().await {
        println!(
            "gateway {}",
            l.trim_start_matches("STATS ").replace(' ', ", ")
        );
    }
    let _ = child.wait().await;
    connector.shutdown().await;
    direct.shutdown().await;
    if failures.load(Ordering::Relaxed) > 0 || held < args.sessions {
        std::process::exit(1);
    }
}
