//! Connection setup through a TCP tunnel, measured as a client sees it: an echo target to put
//! behind the tunnel, and a probe that opens connections one after another (connect, one
//! byte each way, close) and reports the median and 99th percentile.
//!
//! ```text
//! cargo run --release --example tunnel_probe -- echo --listen 127.0.0.1:9000
//! cargo run --release --example tunnel_probe -- setup --to 127.0.0.1:9000 --count 500 --label direct
//! ```
//!
//! `crates/gateway/scripts/side_by_side.sh` runs it against the outpost Web Console tunnel
//! and rathole, interleaved, in one run.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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
        /// The tunnel's entry (or the echo target itself, for the direct baseline).
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
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Echo { listen } => echo(listen).await,
        Command::Setup {
            to,
            count,
            warmup,
            label,
            timeout_ms,
        } => setup(to, count, warmup, &label, Duration::from_millis(timeout_ms)).await,
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

async fn setup(
    to: SocketAddr,
    count: u32,
    warmup: u32,
    label: &str,
    limit: Duration,
) -> Result<(), String> {
    let mut times = Vec::with_capacity(count as usize);
    for i in 0..warmup + count {
        let t = tokio::time::timeout(limit, one(to, i as u8))
            .await
            .map_err(|_| format!("connection {i} took longer than {} ms", limit.as_millis()))??;
        if i >= warmup {
            times.push(t);
        }
    }
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{label}: {} connections, median {:.3} ms, p99 {:.3} ms",
        times.len(),
        ms(at(0.5)),
        ms(at(0.99))
    );
    Ok(())
}
