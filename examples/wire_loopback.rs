//! The wire protocol over a real loopback TCP connection: a Network Agent and an
//! Administration Server negotiate a protocol version, sync once, and the agent fetches an
//! update in chunks and checks it byte for byte.
//!
//! ```text
//! cargo run --release --example wire_loopback [-- --size-mib N --chunk-kib K]
//! cargo run --example wire_loopback -- --help
//! ```

use std::time::Instant;

use bytes::Bytes;
use clap::Parser;
use clap::builder::TypedValueParser;
use futures_util::{SinkExt, StreamExt};
use outpost::wire::messages::*;
use outpost::wire::{Message, MessageCodec, VersionRange, WireError, negotiate};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

/// The largest chunk asked for: a chunk and its message header must fit one frame.
const MAX_CHUNK_KIB: u32 = (outpost::wire::DEFAULT_MAX_FRAME_LEN / 1024) as u32 - 1;

/// The wire protocol over a loopback TCP connection: an agent and a server negotiate a
/// version, sync once, and the agent fetches an update in chunks and checks it byte for byte.
#[derive(Parser)]
#[command(name = "wire_loopback", version, args_override_self = true)]
struct Args {
    /// Size of the update, MiB.
    #[arg(long, value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=4096).map(|n| n as usize))]
    size_mib: usize,
    /// Bytes asked for per chunk request, KiB (a chunk and its header fit one frame).
    #[arg(long, value_name = "K", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_CHUNK_KIB)))]
    chunk_kib: u32,
}

type Conn = Framed<TcpStream, MessageCodec>;

async fn expect(conn: &mut Conn) -> Result<Message, String> {
    match conn.next().await {
        Some(Ok(m)) => Ok(m),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("peer closed the connection".into()),
    }
}

async fn server(listener: TcpListener, update: Bytes, digest_stub: Bytes) -> Result<(), String> {
    let (sock, _) = listener.accept().await.map_err(|e| e.to_string())?;
    let mut conn = Framed::new(sock, MessageCodec::new());
    let Message::Hello(hello) = expect(&mut conn).await? else {
        return Err("expected Hello".into());
    };
    let theirs =
        VersionRange::new(hello.min_version, hello.max_version).map_err(|e| e.to_string())?;
    let version = match negotiate(VersionRange::CURRENT, theirs) {
        Ok(v) => v,
        Err(e) => {
            let refusal = Refusal {
                code: RefusalCode::VersionMismatch as i32,
                reason: e.to_string(),
            };
            conn.send(Message::from(refusal))
                .await
                .map_err(|e| e.to_string())?;
            return Err(e.to_string());
        }
    };
    let ack = HelloAck {
        version,
        role: Role::Server as i32,
        node_id: "server-1".into(),
    };
    conn.send(Message::from(ack))
        .await
        .map_err(|e| e.to_string())?;
    while let Some(m) = conn.next().await {
        let reply = match m.map_err(|e: WireError| e.to_string())? {
            Message::SyncRequest(_) => Message::from(SyncResponse {
                settings: vec![AppSettings {
                    application: "endpoint-protection".into(),
                    version: 1,
                    json: Bytes::from_static(br#"{"usb":{"block":true}}"#),
                }],
                next_sync_secs: 900,
                updates: vec![UpdateAnnouncement {
                    object_id: "update-1".into(),
                    name: "signatures".into(),
                    version: 1,
                    size: update.len() as u64,
                    sha256: digest_stub.clone(),
                }],
                ..Default::default()
            }),
            Message::ChunkRequest(req) => {
                let start = usize::try_from(req.offset)
                    .unwrap_or(usize::MAX)
                    .min(update.len());
                let end = start.saturating_add(req.length as usize).min(update.len());
                Message::from(ChunkResponse {
                    object_id: req.object_id,
                    offset: req.offset,
                    data: update.slice(start..end),
                    total_size: update.len() as u64,
                })
            }
            other => return Err(format!("unexpected {:?}", other.message_type())),
        };
        conn.send(reply).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

async fn agent(
    addr: std::net::SocketAddr,
    chunk: u32,
    max_size: usize,
) -> Result<(u32, SyncResponse, Vec<u8>, f64), String> {
    let sock = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut conn = Framed::new(sock, MessageCodec::new());
    let hello = Hello {
        min_version: outpost::wire::PROTOCOL_VERSION_MIN,
        max_version: outpost::wire::PROTOCOL_VERSION_MAX,
        role: Role::Agent as i32,
        node_id: "device-1".into(),
        software: "wire_loopback example".into(),
    };
    conn.send(Message::from(hello))
        .await
        .map_err(|e| e.to_string())?;
    let version = match expect(&mut conn).await? {
        Message::HelloAck(a) => a.version,
        Message::Refusal(r) => return Err(format!("refused: {}", r.reason)),
        other => return Err(format!("expected HelloAck, got {:?}", other.message_type())),
    };
    let sync = SyncRequest {
        device_id: "device-1".into(),
        on_corporate_network: true,
        ..Default::default()
    };
    conn.send(Message::from(sync))
        .await
        .map_err(|e| e.to_string())?;
    let Message::SyncResponse(resp) = expect(&mut conn).await? else {
        return Err("expected SyncResponse".into());
    };
    let update = resp.updates.first().ok_or("no update announced")?.clone();
    let size = usize::try_from(update.size).map_err(|_| "update too large for this host")?;
    if size > max_size {
        return Err(format!(
            "the server announced {size} bytes, more than the {max_size} asked for"
        ));
    }
    let mut data = Vec::with_capacity(size);
    let start = Instant::now();
    // Pipelined: keep a window of requests in flight.
    let window = 8u64;
    let mut next_offset = 0u64;
    let mut in_flight = 0u64;
    while data.len() < size {
        while in_flight < window && next_offset < update.size {
            let req = ChunkRequest {
                object_id: update.object_id.clone(),
                offset: next_offset,
                length: chunk,
            };
            conn.feed(Message::from(req))
                .await
                .map_err(|e| e.to_string())?;
            next_offset += u64::from(chunk);
            in_flight += 1;
        }
        SinkExt::<Message>::flush(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        let Message::ChunkResponse(c) = expect(&mut conn).await? else {
            return Err("expected ChunkResponse".into());
        };
        if c.offset != data.len() as u64 || c.data.is_empty() {
            return Err(format!(
                "chunk at offset {} does not follow {} bytes",
                c.offset,
                data.len()
            ));
        }
        data.extend_from_slice(&c.data);
        in_flight -= 1;
    }
    Ok((version, resp, data, start.elapsed().as_secs_f64()))
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let size = args.size_mib * 1024 * 1024;
    let update: Bytes = (0..size)
        .map(|i| (i.wrapping_mul(31) >> 3) as u8)
        .collect::<Vec<_>>()
        .into();
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1");
    let addr = listener.local_addr().expect("local addr");
    println!("server listening on {addr}");
    let srv = tokio::spawn(server(listener, update.clone(), Bytes::from(vec![0u8; 32])));
    let result = agent(addr, args.chunk_kib * 1024, size).await;
    let (version, resp, data, secs) = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wire_loopback: agent failed: {e}");
            std::process::exit(1);
        }
    };
    match srv.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("wire_loopback: server failed: {e}");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("wire_loopback: server task: {e}");
            std::process::exit(1);
        }
    }
    println!("negotiated protocol version {version}");
    for s in &resp.settings {
        println!(
            "settings for {} v{}: {}",
            s.application,
            s.version,
            String::from_utf8_lossy(&s.json)
        );
    }
    println!("next sync in {} s", resp.next_sync_secs);
    let ok = data == update[..];
    println!(
        "fetched {} MiB in {} KiB chunks in {:.3} s ({:.0} MiB/s), byte-exact: {}",
        args.size_mib,
        args.chunk_kib,
        secs,
        args.size_mib as f64 / secs,
        if ok { "yes" } else { "NO" }
    );
    if !ok {
        std::process::exit(1);
    }
}
