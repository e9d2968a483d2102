//! Send or receive one file over UDP multicast.
//!
//! ```text
//! cargo run --release --example multicast -- keygen --out KEYFILE
//! cargo run --release --example multicast -- send --group 239.255.0.1 --iface 127.0.0.1 --key KEYFILE FILE
//! cargo run --release --example multicast -- receive --group 239.255.0.1 --iface 127.0.0.1 \
//!     --sender-key HEX --out DIR [--fetch-from FILE] [--loss 0.05]
//! cargo run --release --example multicast -- send --help
//! ```
//!
//! `--group` takes `ADDR` or `ADDR:PORT` (default port 15001). `--iface` is the IPv4 address
//! of the interface to use, or for an IPv6 group the interface index. `--rate` is the
//! ceiling in Mbit/s (default 100). The sender's key file holds a 64-hex-digit Ed25519
//! seed; receivers are given the matching public key with `--sender-key`.
//!
//! After the session the sender listens `--linger-ms` (default 3000) for receivers'
//! completion reports and prints a line per receiver; with `--expect N` it keeps polling and
//! repairing until N receivers have reported (a receiver without `--fetch-from` asks by NAK
//! for everything it lacks), at most `--expect-timeout-ms` (default 600000) after the data
//! went out; then it names the receivers that reported and exits non-zero if any is missing.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};

use outpost::multicast::driver::{self, ReceiveOptions, SocketConfig};
use outpost::multicast::files::{self, Fetcher, FileSink, LocalFileFetcher, NoFetcher};
use outpost::multicast::manifest::hex;
use outpost::multicast::{
    DEFAULT_PORT, Receiver, ReceiverConfig, Sender, SenderConfig, SenderEvent, SigningKey,
};

/// Send or receive one file over UDP multicast.
#[derive(Parser)]
#[command(name = "multicast", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a new sender key (a 64-hex-digit Ed25519 seed, mode 0600) and print the public
    /// key receivers are given.
    Keygen {
        /// Key file to create (must not exist).
        #[arg(long, value_name = "KEYFILE")]
        out: PathBuf,
    },
    /// Send FILE to the group, repair what receivers ask for, report who finished.
    Send(SendArgs),
    /// Receive one file from the group into a directory.
    Receive(ReceiveArgs),
}

#[derive(clap::Args)]
struct GroupArgs {
    /// Multicast group, ADDR or ADDR:PORT (port 15001 when left out).
    #[arg(long, value_name = "ADDR[:PORT]", value_parser = parse_group)]
    group: SocketAddr,
    /// IPv4 address of the interface to use; for an IPv6 group, the interface index.
    #[arg(long, value_name = "IF")]
    iface: String,
    /// Multicast TTL / hop limit (1 keeps the traffic on the local link).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=255))]
    ttl: u32,
    /// Deliver to listeners on this host too (set by itself for a loopback --iface).
    #[arg(long)]
    loopback: bool,
}

#[derive(clap::Args)]
struct SendArgs {
    #[command(flatten)]
    group: GroupArgs,
    /// The sender's key file (from `keygen`).
    #[arg(long, value_name = "KEYFILE")]
    key: PathBuf,
    /// Rate ceiling, Mbit/s.
    #[arg(long = "rate", value_name = "MBIT", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..))]
    rate_mbit: u64,
    /// Keep polling and repairing until this many receivers reported done (a receiver
    /// without --fetch-from asks by NAK for everything it lacks); exit non-zero, naming
    /// those that did report, if fewer did.
    #[arg(long, value_name = "N", default_value_t = 0)]
    expect: u32,
    /// How long after the data went out to wait for the --expect receivers, ms.
    #[arg(long, value_name = "MS", default_value_t = 600_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    expect_timeout_ms: u64,
    /// How long to listen for completion reports after the session, ms.
    #[arg(long, value_name = "MS", default_value_t = 3000)]
    linger_ms: u64,
    /// The file to send.
    file: PathBuf,
}

#[derive(clap::Args)]
struct ReceiveArgs {
    #[command(flatten)]
    group: GroupArgs,
    /// The sender's public key, 64 hex digits (printed by `keygen`).
    #[arg(long, value_name = "HEX", value_parser = parse_public_key)]
    sender_key: [u8; 32],
    /// Directory to write the file into.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// A local copy to fetch blocks from that the session did not deliver (without it,
    /// every missing block is asked for by NAK).
    #[arg(long, value_name = "FILE")]
    fetch_from: Option<PathBuf>,
    /// Drop this fraction of the datagrams received, in [0, 1) (loss injection).
    #[arg(long, value_name = "FRACTION", default_value_t = 0.0, value_parser = parse_loss)]
    loss: f64,
}

fn parse_hex(s: &str, what: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{what}: {s:?} is not an even-length hex string"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| format!("{what}: {e}")))
        .collect()
}

fn parse_group(v: &str) -> Result<SocketAddr, String> {
    let g = v
        .parse::<SocketAddr>()
        .or_else(|_| {
            v.parse::<IpAddr>()
                .map(|ip| SocketAddr::new(ip, DEFAULT_PORT))
        })
        .map_err(|_| format!("{v:?} is not ADDR or ADDR:PORT"))?;
    if !g.ip().is_multicast() {
        return Err(format!("{} is not a multicast address", g.ip()));
    }
    Ok(g)
}

fn parse_public_key(v: &str) -> Result<[u8; 32], String> {
    let k = parse_hex(v, "key")?;
    k.as_slice()
        .try_into()
        .map_err(|_| format!("{} bytes, expected 32", k.len()))
}

fn parse_loss(v: &str) -> Result<f64, String> {
    v.parse()
        .ok()
        .filter(|l: &f64| (0.0..1.0).contains(l))
        .ok_or(format!("{v:?} not in [0, 1)"))
}

fn socket_config(a: &GroupArgs) -> Result<SocketConfig, String> {
    let iface = &a.iface;
    let mut c = SocketConfig::default();
    c.group = a.group;
    c.ttl = a.ttl;
    c.loopback = a.loopback;
    match a.group {
        SocketAddr::V4(_) => {
            c.iface_v4 = iface
                .parse::<Ipv4Addr>()
                .map_err(|_| format!("--iface: {iface:?} is not an IPv4 address"))?;
            // Loopback receivers on the same host need the multicast loop.
            if c.iface_v4.is_loopback() {
                c.loopback = true;
            }
        }
        SocketAddr::V6(_) => {
            c.iface_v6 = iface
                .parse()
                .map_err(|_| format!("--iface: {iface:?} is not an interface index"))?;
        }
    }
    c.validate().map_err(|e| e.to_string())?;
    Ok(c)
}

fn mbit(bytes: u64, secs: f64) -> f64 {
    bytes as f64 * 8.0 / secs.max(1e-9) / 1e6
}

async fn send(a: SendArgs) -> Result<(), String> {
    let sc = socket_config(&a.group)?;
    let file = &a.file;
    let seed_hex =
        std::fs::read_to_string(&a.key).map_err(|e| format!("--key {}: {e}", a.key.display()))?;
    let key = SigningKey::from_seed(&parse_hex(seed_hex.trim(), "key file")?)
        .map_err(|e| e.to_string())?;
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or(format!("{}: no usable file name", file.display()))?
        .to_owned();
    let mut cfg = SenderConfig::default();
    cfg.max_rate_bps = a.rate_mbit * 1_000_000;
    // Encoders are built on a worker thread while data keeps going out.
    cfg.offload_encoding = true;
    cfg.done_linger_ms = a.linger_ms;
    cfg.expect_receivers = a.expect;
    cfg.expect_timeout_ms = a.expect_timeout_ms;
    let session = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let manifest =
        files::manifest_for_file(file, session, &name, cfg.symbol_size, cfg.block_symbols)
            .map_err(|e| e.to_string())?;
    let size = manifest.file_size;
    eprintln!(
        "sending {name} ({size} bytes, {} blocks, sha256 {}) to {} via {}; receivers need --sender-key {}",
        manifest.block_count(),
        hex(&manifest.file_hash),
        sc.group,
        a.group.iface,
        hex(&key.public_key())
    );
    let signed = manifest.sign(key.key_pair());
    let source = files::FileSource::open(file).map_err(|e| e.to_string())?;
    let mut sender = Sender::new(cfg, manifest, &signed, Box::new(source), Instant::now())
        .map_err(|e| e.to_string())?;
    let sock = driver::send_socket(&sc).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut done = Vec::new();
    let stats = driver::run_sender(&sock, sc.group, &mut sender, |s, ev| {
        let t = start.elapsed().as_secs_f64();
        match ev {
            Some(SenderEvent::ReceiverDone { from, hash_matches }) => {
                if hash_matches && !done.contains(&from) {
                    done.push(from);
                }
                eprintln!(
                    "\nreceiver {from} done, hash {}",
                    if hash_matches { "matches" } else { "MISMATCH" }
                )
            }
            Some(_) => {}
            None => eprint!(
                "\rsent {:.1} MiB  {:.1} Mbit/s  repairs {}  naks {}  load reports {}  rate cap {} Mbit/s   ",
                s.bytes_sent as f64 / 1048576.0,
                mbit(s.bytes_sent, t),
                s.repair_packets,
                s.naks,
                s.load_reports,
                s.rate_bps / 1_000_000
            ),
        }
    })
    .await
    .map_err(|e| e.to_string())?;
    let t = start.elapsed().as_secs_f64();
    println!(
        "\nsender: {} bytes sent for a {size}-byte file ({:.3}x) in {t:.2}s, {} source + {} repair packets, {} receivers reported done, {} rate cuts",
        stats.bytes_sent,
        stats.bytes_sent as f64 / size.max(1) as f64,
        stats.source_packets,
        stats.repair_packets,
        stats.receivers_done,
        stats.backoffs
    );
    if a.expect > 0 && (done.len() as u64) < u64::from(a.expect) {
        let names: Vec<String> = done.iter().map(|d| d.to_string()).collect();
        return Err(format!(
            "{} of the {} expected receivers reported done within {} ms ({}); {} missing",
            done.len(),
            a.expect,
            a.expect_timeout_ms,
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            },
            u64::from(a.expect) - done.len() as u64
        ));
    }
    Ok(())
}

async fn receive(a: ReceiveArgs) -> Result<(), String> {
    let sc = socket_config(&a.group)?;
    let mut rcfg = ReceiverConfig::default();
    rcfg.seed = u64::from(std::process::id());
    // Blocks are decoded and hashed on a worker thread while the socket keeps being read.
    rcfg.offload_block_work = true;
    // Without a unicast source, every missing block is asked for by NAK, from the first.
    rcfg.unicast_fallback = a.fetch_from.is_some();
    let mut rx = Receiver::new(rcfg, &a.sender_key).map_err(|e| e.to_string())?;
    let mut sink = FileSink::new(&a.out).map_err(|e| e.to_string())?;
    let mut fetcher: Box<dyn Fetcher> = match &a.fetch_from {
        Some(p) => Box::new(LocalFileFetcher::open(p).map_err(|e| e.to_string())?),
        None => Box::new(NoFetcher),
    };
    let g = driver::group_socket(&sc).map_err(|e| e.to_string())?;
    let c = driver::control_socket(&sc).map_err(|e| e.to_string())?;
    let opts = ReceiveOptions::with_loss(a.loss, u64::from(std::process::id()));
    eprintln!("listening on {} via {}", sc.group, a.group.iface);
    // First time the manifest was seen, and the bytes held then.
    let mut start: Option<(Instant, u64)> = None;
    let res = driver::run_receiver(&g, &c, &mut rx, &mut sink, fetcher.as_mut(), &opts, |r| {
        if let Some(m) = r.manifest() {
            let got = (u64::from(r.blocks_done()) * m.block_bytes()).min(m.file_size);
            let (t0, base) = *start.get_or_insert((Instant::now(), got));
            eprint!(
                "\r{}: {:.1}/{:.1} MiB  {:.1} Mbit/s  repair symbols {}  blocks decoded {}   ",
                m.name,
                got as f64 / 1048576.0,
                m.file_size as f64 / 1048576.0,
                mbit(got - base, t0.elapsed().as_secs_f64()),
                r.stats().repair_symbols,
                r.stats().blocks_decoded
            );
        }
    })
    .await
    .map_err(|e| e.to_string())?;
    let t = start.map_or(0.0, |(s, _)| s.elapsed().as_secs_f64());
    println!(
        "\nreceiver: {} ({} bytes) sha256 {} written to {} in {t:.2}s ({:.1} Mbit/s), repair symbols {}, fetched blocks {}, resumed blocks {}, socket drops {}",
        res.manifest.name,
        res.manifest.file_size,
        hex(&res.manifest.file_hash),
        sink.final_path().display(),
        mbit(res.manifest.file_size - start.map_or(0, |(_, b)| b), t),
        res.stats.repair_symbols,
        res.fetched_blocks,
        res.resumed_blocks,
        res.socket_drops
            .map_or_else(|| "unknown".to_string(), |d| d.to_string())
    );
    Ok(())
}

fn keygen(out: PathBuf) -> Result<(), String> {
    let mut seed = [0u8; 32];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(|e| format!("read /dev/urandom: {e}"))?;
    let key = SigningKey::from_seed(&seed).map_err(|e| e.to_string())?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    use std::io::Write;
    opts.open(&out)
        .and_then(|mut f| writeln!(f, "{}", hex(&seed)))
        .map_err(|e| format!("--out {}: {e}", out.display()))?;
    println!(
        "public key (give to receivers as --sender-key): {}",
        hex(&key.public_key())
    );
    Ok(())
}

// One thread: the socket is polled where it is read (a multi-thread runtime would wake this
// thread from a worker for every readiness event); hashing and decoding have their own thread.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let r = match Cli::parse().cmd {
        Cmd::Send(a) => send(a).await,
        Cmd::Receive(a) => receive(a).await,
        Cmd::Keygen { out } => keygen(out),
    };
    if let Err(e) = r {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
