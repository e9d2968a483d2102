//! Send or receive one file over UDP multicast.
//!
//! ```text
//! cargo run --release --example multicast -- keygen --out KEYFILE
//! cargo run --release --example multicast -- send --group 239.255.0.1 --iface 127.0.0.1 --key KEYFILE FILE
//! cargo run --release --example multicast -- receive --group 239.255.0.1 --iface 127.0.0.1 \
//!     --sender-key HEX --out DIR [--fetch-from FILE] [--loss 0.05]
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

use outpost::multicast::driver::{self, ReceiveOptions, SocketConfig};
use outpost::multicast::files::{self, Fetcher, FileSink, LocalFileFetcher, NoFetcher};
use outpost::multicast::manifest::hex;
use outpost::multicast::{
    DEFAULT_PORT, Receiver, ReceiverConfig, Sender, SenderConfig, SenderEvent, SigningKey,
};

const USAGE: &str = "usage:
  multicast keygen --out KEYFILE
  multicast send --group ADDR[:PORT] --iface IF --key KEYFILE [--rate MBIT] [--ttl N] [--loopback] [--expect N] [--expect-timeout-ms MS] [--linger-ms MS] FILE
  multicast receive --group ADDR[:PORT] --iface IF --sender-key HEX --out DIR [--fetch-from FILE] [--loss FRACTION] [--loopback]";

struct Args {
    cmd: String,
    group: Option<SocketAddr>,
    iface: Option<String>,
    key: Option<PathBuf>,
    sender_key: Option<Vec<u8>>,
    out: Option<PathBuf>,
    fetch_from: Option<PathBuf>,
    rate_mbit: u64,
    ttl: u32,
    loss: f64,
    loopback: bool,
    expect: u32,
    expect_timeout_ms: u64,
    linger_ms: u64,
    file: Option<PathBuf>,
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

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let cmd = it.next().ok_or("missing command")?;
    let mut a = Args {
        cmd,
        group: None,
        iface: None,
        key: None,
        sender_key: None,
        out: None,
        fetch_from: None,
        rate_mbit: 100,
        ttl: 1,
        loss: 0.0,
        loopback: false,
        expect: 0,
        expect_timeout_ms: 600_000,
        linger_ms: 3000,
        file: None,
    };
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match flag.as_str() {
            "--group" => {
                let v = value("--group")?;
                let g = v
                    .parse::<SocketAddr>()
                    .or_else(|_| {
                        v.parse::<IpAddr>()
                            .map(|ip| SocketAddr::new(ip, DEFAULT_PORT))
                    })
                    .map_err(|_| format!("--group: {v:?} is not ADDR or ADDR:PORT"))?;
                if !g.ip().is_multicast() {
                    return Err(format!("--group: {} is not a multicast address", g.ip()));
                }
                a.group = Some(g);
            }
            "--iface" => a.iface = Some(value("--iface")?),
            "--key" => a.key = Some(value("--key")?.into()),
            "--sender-key" => {
                let v = value("--sender-key")?;
                let k = parse_hex(&v, "--sender-key")?;
                if k.len() != 32 {
                    return Err(format!("--sender-key: {} bytes, expected 32", k.len()));
                }
                a.sender_key = Some(k);
            }
            "--out" => a.out = Some(value("--out")?.into()),
            "--fetch-from" => a.fetch_from = Some(value("--fetch-from")?.into()),
            "--rate" => {
                let v = value("--rate")?;
                a.rate_mbit = v
                    .parse()
                    .ok()
                    .filter(|r| *r > 0)
                    .ok_or(format!("--rate: {v:?} is not a positive number of Mbit/s"))?;
            }
            "--ttl" => {
                let v = value("--ttl")?;
                a.ttl = v
                    .parse()
                    .ok()
                    .filter(|t| *t <= 255)
                    .ok_or(format!("--ttl: {v:?} not in 0..=255"))?;
            }
            "--loss" => {
                let v = value("--loss")?;
                a.loss = v
                    .parse()
                    .ok()
                    .filter(|l: &f64| (0.0..1.0).contains(l))
                    .ok_or(format!("--loss: {v:?} not in [0, 1)"))?;
            }
            "--loopback" => a.loopback = true,
            "--expect-timeout-ms" => {
                let v = value("--expect-timeout-ms")?;
                a.expect_timeout_ms = v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    format!("--expect-timeout-ms: {v:?} is not a positive number of milliseconds")
                })?;
            }
            "--expect" => {
                let v = value("--expect")?;
                a.expect = v
                    .parse()
                    .map_err(|_| format!("--expect: {v:?} is not a number of receivers"))?;
            }
            "--linger-ms" => {
                let v = value("--linger-ms")?;
                // The range is checked with the rest of the sender's settings.
                a.linger_ms = v
                    .parse()
                    .map_err(|_| format!("--linger-ms: {v:?} is not a number of ms"))?;
            }
            f if f.starts_with("--") => return Err(format!("unknown flag {f}")),
            f => {
                if a.file.replace(f.into()).is_some() {
                    return Err(format!("unexpected extra argument {f:?}"));
                }
            }
        }
    }
    Ok(a)
}

fn socket_config(a: &Args) -> Result<SocketConfig, String> {
    let group = a.group.ok_or("--group is required")?;
    let iface = a.iface.as_deref().ok_or("--iface is required")?;
    let mut c = SocketConfig::default();
    c.group = group;
    c.ttl = a.ttl;
    c.loopback = a.loopback;
    match group {
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

async fn send(a: Args) -> Result<(), String> {
    let sc = socket_config(&a)?;
    let file = a.file.clone().ok_or("send needs a FILE")?;
    let key_path = a.key.clone().ok_or("--key is required")?;
    let seed_hex = std::fs::read_to_string(&key_path)
        .map_err(|e| format!("--key {}: {e}", key_path.display()))?;
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
        files::manifest_for_file(&file, session, &name, cfg.symbol_size, cfg.block_symbols)
            .map_err(|e| e.to_string())?;
    let size = manifest.file_size;
    eprintln!(
        "sending {name} ({size} bytes, {} blocks, sha256 {}) to {} via {}; receivers need --sender-key {}",
        manifest.block_count(),
        hex(&manifest.file_hash),
        sc.group,
        a.iface.as_deref().unwrap_or("?"),
        hex(&key.public_key())
    );
    let signed = manifest.sign(key.key_pair());
    let source = files::FileSource::open(&file).map_err(|e| e.to_string())?;
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

async fn receive(a: Args) -> Result<(), String> {
    let sc = socket_config(&a)?;
    let out = a.out.clone().ok_or("--out is required")?;
    let pk = a.sender_key.clone().ok_or("--sender-key is required")?;
    let mut rcfg = ReceiverConfig::default();
    rcfg.seed = u64::from(std::process::id());
    // Blocks are decoded and hashed on a worker thread while the socket keeps being read.
    rcfg.offload_block_work = true;
    // Without a unicast source, every missing block is asked for by NAK, from the first.
    rcfg.unicast_fallback = a.fetch_from.is_some();
    let mut rx = Receiver::new(rcfg, &pk).map_err(|e| e.to_string())?;
    let mut sink = FileSink::new(&out).map_err(|e| e.to_string())?;
    let mut fetcher: Box<dyn Fetcher> = match &a.fetch_from {
        Some(p) => Box::new(LocalFileFetcher::open(p).map_err(|e| e.to_string())?),
        None => Box::new(NoFetcher),
    };
    let g = driver::group_socket(&sc).map_err(|e| e.to_string())?;
    let c = driver::control_socket(&sc).map_err(|e| e.to_string())?;
    let opts = ReceiveOptions::with_loss(a.loss, u64::from(std::process::id()));
    eprintln!(
        "listening on {} via {}",
        sc.group,
        a.iface.as_deref().unwrap_or("?")
    );
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

fn keygen(a: Args) -> Result<(), String> {
    let out = a.out.ok_or("--out is required")?;
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
    let r = match parse_args() {
        Ok(a) => match a.cmd.as_str() {
            "send" => send(a).await,
            "receive" => receive(a).await,
            "keygen" => keygen(a),
            other => Err(format!("unknown command {other:?}")),
        },
        Err(e) => Err(e),
    };
    if let Err(e) = r {
        eprintln!("error: {e}\n{USAGE}");
        std::process::exit(2);
    }
}
