//! Connection setup through a TCP tunnel, measured as a client sees it: an echo target to put
//! behind the tunnel, and a probe that opens connections one after another (connect, one
//! byte each way, close) and reports the median and 99th percentile; and the same for a
//! device (connect, TLS with an agent certificate, `Hello` answered by `HelloAck`, close).
//!
//! ```text
//! cargo run --release --example tunnel_probe -- echo --listen 127.0.0.1:9000
//! cargo run --release --example tunnel_probe -- setup --to 127.0.0.1:9000 --count 500 --label direct
//! cargo run --release --example tunnel_probe -- device --to 127.0.0.1:13000 --name gw.outpost.test \
//!     --ca $W/ca.crt --cert $W/laptop-1.chain.pem --key $W/laptop-1.key --label gateway
//! ```
//!
//! `crates/gateway/scripts/side_by_side.sh` runs it against the outpost Web Console tunnel
//! and rathole, interleaved, in one run.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use outpost::pki::IssuedCert;
use outpost::pki::store;
use outpost::pki::tls::{TlsOptions, agent_client_config};
use outpost::wire::messages::{Hello, Role};
use outpost::wire::{Message, MessageCodec, PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_util::codec::Framed;

#[derive(Parser)]
#[command(about = "Connection setup through a TCP tunnel: an echo target and a probe")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Echoes every connection's bytes back until it closes.
    Echo {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Opens `count` connections one after another (connect, one byte each way, close) and
    /// prints one line: label, median and p99 in milliseconds.
    Setup {
        #[command(flatten)]
        run: Run,
    },
    /// As `setup`, as a device: connect, TLS with an agent certificate, `Hello` answered by
    /// `HelloAck`, close.
    Device {
        #[command(flatten)]
        run: Run,
        /// The name the peer's certificate must carry (the gateway's, or the server's).
        #[arg(long)]
        name: String,
        /// The server CA certificate (PEM).
        #[arg(long)]
        ca: PathBuf,
        /// The agent certificate chain (PEM).
        #[arg(long)]
        cert: PathBuf,
        /// Its private key (PEM).
        #[arg(long)]
        key: PathBuf,
    },
}

/// What each probe run takes.
#[derive(Args)]
struct Run {
    /// The tunnel's entry (or the target itself, for the direct baseline).
    #[arg(long)]
    to: SocketAddr,
    /// Connections to open.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    count: u32,
    /// Connections opened first and not counted (warming caches and pools).
    #[arg(long, default_value_t = 20)]
    warmup: u32,
    /// What to call the path in the output.
    #[arg(long, default_value = "path")]
    label: String,
    /// Time allowed for each connection.
    #[arg(long, default_value_t = 5_000)]
    timeout_ms: u64,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Echo { listen } => echo(listen).await,
        Command::Setup { run } => {
            let to = run.to;
            measure(&run, |i| one(to, i as u8)).await
        }
        Command::Device {
            run,
            name,
            ca,
            cert,
            key,
        } => match device_config(&ca, &cert, &key, &name) {
            Ok((cfg, name)) => {
                let to = run.to;
                measure(&run, |_| hello(to, cfg.clone(), name.clone())).await
            }
            Err(e) => Err(e),
        },
    };
    if let Err(e) = result {
        eprintln!("tunnel_probe: {e}");
        std::process::exit(1);
    }
}

async fn echo(listen: SocketAddr) -> Result<(), String> {
    let l = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    println!("echo on {}", l.local_addr().map_err(|e| e.to_string())?);
    loop {
        let (s, _) = l.accept().await.map_err(|e| format!("accept: {e}"))?;
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let (mut r, mut w) = s.into_split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        });
    }
}

/// One connection: connect, one byte each way, close.
async fn one(to: SocketAddr, byte: u8) -> Result<Duration, String> {
    let start = Instant::now();
    let mut s = TcpStream::connect(to)
        .await
        .map_err(|e| format!("connect to {to}: {e}"))?;
    let _ = s.set_nodelay(true);
    s.write_all(&[byte])
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let took = start.elapsed();
    if b[0] != byte {
        return Err(format!("echo sent {byte}, got {}", b[0]));
    }
    drop(s);
    Ok(took)
}

/// The TLS configuration of a device with the agent certificate `cert`/`key`.
fn device_config(
    ca: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
    name: &str,
) -> Result<(Arc<rustls::ClientConfig>, ServerName<'static>), String> {
    let ca = store::read_ca_certificate(ca).map_err(|e| e.to_string())?;
    let chain = store::read_certificates(cert).map_err(|e| e.to_string())?;
    let key = store::read_private_key_der(key).map_err(|e| e.to_string())?;
    let id = IssuedCert::from_parts(chain, key).map_err(|e| e.to_string())?;
    let cfg = agent_client_config(&id, &ca, &TlsOptions::default()).map_err(|e| e.to_string())?;
    let name = ServerName::try_from(name.to_string()).map_err(|e| format!("--name: {e}"))?;
    Ok((cfg, name))
}

/// One device connection: connect, TLS, `Hello` answered by `HelloAck`, close.
async fn hello(
    to: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
) -> Result<Duration, String> {
    let start = Instant::now();
    let tcp = TcpStream::connect(to)
        .await
        .map_err(|e| format!("connect to {to}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let tls = TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {to}: {e}"))?;
    let mut framed = Framed::new(tls, MessageCodec::new());
    let hello = Hello {
        min_version: PROTOCOL_VERSION_MIN,
        max_version: PROTOCOL_VERSION_MAX,
        role: Role::Agent as i32,
        node_id: "probe".into(),
        software: "tunnel_probe".into(),
    };
    framed
        .send(Message::from(hello))
        .await
        .map_err(|e| format!("Hello: {e}"))?;
    match framed.next().await {
        Some(Ok(Message::HelloAck(_))) => Ok(start.elapsed()),
        Some(Ok(other)) => Err(format!("answered {}", other.message_type().name())),
        Some(Err(e)) => Err(format!("reading HelloAck: {e}")),
        None => Err("closed before HelloAck".into()),
    }
}

/// Runs `connect` for the warm-up and the counted connections, one after another, and prints
/// the median and p99.
async fn measure<F, Fut>(run: &Run, mut connect: F) -> Result<(), String>
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = Result<Duration, String>>,
{
    let limit = Duration::from_millis(run.timeout_ms);
    let mut times = Vec::with_capacity(run.count as usize);
    for i in 0..run.warmup + run.count {
        let t = tokio::time::timeout(limit, connect(i))
            .await
            .map_err(|_| format!("connection {i} took longer than {} ms", limit.as_millis()))??;
        if i >= run.warmup {
            times.push(t);
        }
    }
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{}: {} connections, median {:.3} ms, p99 {:.3} ms",
        run.label,
        times.len(),
        ms(at(0.5)),
        ms(at(0.99))
    );
    Ok(())
}
