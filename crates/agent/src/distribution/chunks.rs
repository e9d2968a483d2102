//! The unicast side of distribution: a DP's block service (chunk requests over the wire
//! protocol, plain TCP) and a resumable download, verified against the SHA-256 the server
//! announced, from that service or from the server.
//!
//! The block service carries the same bytes as the DP's multicast, which is not encrypted
//! either: what a device keeps is checked against the signed manifest's block hashes (fill-in
//! during a session) or the announced whole-file hash (downloads), both of which come from a
//! party the device trusts, never from the unicast peer.

use std::io::{ErrorKind, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tracing::Instrument;

use futures_util::{SinkExt, StreamExt};
use outpost_multicast::manifest::{FileHasher, hex};
use outpost_wire::messages::{
    ChunkRequest, ChunkResponse, HelloAck, Refusal, RefusalCode, Role, UpdateAnnouncement,
};
use outpost_wire::{Message, MessageCodec, VersionRange, negotiate};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;

use crate::AgentError;
use crate::config::valid_name;

/// The largest chunk served or asked for.
pub const MAX_CHUNK: u32 = 1 << 20;
/// Largest frame accepted on a chunk connection (a chunk and its header).
pub const MAX_CHUNK_FRAME: usize = 2 << 20;
/// Chunk requests kept in flight by a download.
pub const WINDOW: u64 = 4;
/// Connections the block service serves at once; more wait for a slot.
pub const MAX_CONNECTIONS: usize = 256;
/// A block service connection with no request for this long is closed, and so is one whose
/// peer does not take an answer for this long (a reader that stopped reading would
/// otherwise hold its connection slot for good).
pub const IDLE: Duration = Duration::from_secs(30);

fn protocol(what: impl Into<String>) -> AgentError {
    AgentError::Protocol(what.into())
}

async fn next_within<T: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Framed<T, MessageCodec>,
    timeout: Duration,
    waiting_for: &str,
) -> Result<Message, AgentError> {
    match tokio::time::timeout(timeout, conn.next()).await {
        Ok(Some(Ok(m))) => Ok(m),
        Ok(Some(Err(e))) => Err(protocol(format!("{waiting_for}: {e}"))),
        Ok(None) => Err(protocol(format!("{waiting_for}: connection closed"))),
        Err(_) => Err(protocol(format!("no {waiting_for} within {timeout:?}"))),
    }
}

async fn send<T: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Framed<T, MessageCodec>,
    m: Message,
) -> Result<(), AgentError> {
    send_within(conn, m, IDLE).await
}

/// Sends `m`, failing if the peer does not take it within `limit`.
async fn send_within<T: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Framed<T, MessageCodec>,
    m: Message,
    limit: Duration,
) -> Result<(), AgentError> {
    match tokio::time::timeout(limit, conn.send(m)).await {
        Ok(r) => r.map_err(|e| protocol(format!("send: {e}"))),
        Err(_) => Err(protocol(format!(
            "send: the peer took nothing for {limit:?}"
        ))),
    }
}

/// Opens a chunk connection: Hello, then the peer's HelloAck, within `timeout`.
///
/// # Errors
/// [`AgentError::Protocol`] naming what was missing or refused.
pub async fn hello<T: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Framed<T, MessageCodec>,
    device_id: &str,
    timeout: Duration,
) -> Result<(), AgentError> {
    send(conn, crate::protocol::hello(device_id)).await?;
    match next_within(conn, timeout, "HelloAck").await? {
        Message::HelloAck(a) if VersionRange::CURRENT.contains(a.version) => Ok(()),
        Message::HelloAck(a) => Err(protocol(format!(
            "the peer chose protocol version {}, outside {}",
            a.version,
            VersionRange::CURRENT
        ))),
        Message::Refusal(r) => Err(refused(r)),
        other => Err(protocol(format!(
            "expected HelloAck, got {}",
            other.message_type().name()
        ))),
    }
}

fn refused(r: Refusal) -> AgentError {
    let code = RefusalCode::try_from(r.code).unwrap_or(RefusalCode::Unspecified);
    AgentError::Refused {
        code: format!("{code:?}"),
        reason: r.reason,
    }
}

/// Dials a DP's block service at `addr` and says hello.
///
/// # Errors
/// [`AgentError::Connect`] or [`AgentError::Protocol`].
pub async fn dial_dp(
    addr: &str,
    device_id: &str,
    timeout: Duration,
) -> Result<Framed<TcpStream, MessageCodec>, AgentError> {
    let err = |reason: String| AgentError::Connect {
        addr: addr.parse().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
        name: addr.to_string(),
        reason,
    };
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(err(e.to_string())),
        Err(_) => return Err(err(format!("no connection within {timeout:?}"))),
    };
    let _ = stream.set_nodelay(true);
    let mut conn = Framed::new(stream, MessageCodec::with_max_frame_len(MAX_CHUNK_FRAME));
    hello(&mut conn, device_id, timeout).await?;
    Ok(conn)
}

/// Fetches `len` bytes of `object_id` at `offset`, in requests of at most `chunk` bytes.
///
/// # Errors
/// [`AgentError::Refused`] (no such object here), [`AgentError::Protocol`] for an answer
/// that is late, for another range, or of the wrong length.
pub async fn fetch_range<T: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Framed<T, MessageCodec>,
    object_id: &str,
    offset: u64,
    len: usize,
    chunk: u32,
    timeout: Duration,
) -> Result<Vec<u8>, AgentError> {
    let chunk = chunk.clamp(1, MAX_CHUNK);
    let mut out = Vec::with_capacity(len.min(64 << 20));
    while out.len() < len {
        let at = offset + out.len() as u64;
        let want = u32::try_from(len - out.len())
            .unwrap_or(u32::MAX)
            .min(chunk);
        send(
            conn,
            Message::from(ChunkRequest {
                object_id: object_id.into(),
                offset: at,
                length: want,
            }),
        )
        .await?;
        let r = chunk_answer(conn, object_id, at, want, timeout).await?;
        out.extend_from_slice(&r.data);
    }
    Ok(out)
}

async fn chunk_answer<T: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Framed<T, MessageCodec>,
    object_id: &str,
    offset: u64,
    want: u32,
    timeout: Duration,
) -> Result<ChunkResponse, AgentError> {
    match next_within(conn, timeout, "ChunkResponse").await? {
        Message::ChunkResponse(r) => {
            if r.object_id != object_id || r.offset != offset {
                return Err(protocol(format!(
                    "asked for {object_id:?} at {offset}, got {:?} at {}",
                    r.object_id, r.offset
                )));
            }
            let expected = u64::from(want).min(r.total_size.saturating_sub(offset));
            if r.data.len() as u64 != expected || expected == 0 {
                return Err(protocol(format!(
                    "{object_id:?} at {offset}: {} bytes, expected {expected} of {}",
                    r.data.len(),
                    r.total_size
                )));
            }
            Ok(r)
        }
        Message::Refusal(r) => Err(refused(r)),
        other => Err(protocol(format!(
            "expected ChunkResponse, got {}",
            other.message_type().name()
        ))),
    }
}

/// SHA-256 of a file, read in 1 MiB pieces (blocking: call from a blocking task).
///
/// # Errors
/// [`AgentError::Io`].
pub fn hash_file(path: &Path) -> Result<[u8; 32], AgentError> {
    let mut f = std::fs::File::open(path).map_err(AgentError::io("open", path))?;
    let mut h = FileHasher::default();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok(h.finish()),
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(AgentError::io("read", path)(e)),
        }
    }
}

/// Whether `dir/<object_id>` holds exactly the announced update.
pub async fn holds(dir: &Path, ann: &UpdateAnnouncement) -> bool {
    let path = dir.join(&ann.object_id);
    match tokio::fs::metadata(&path).await {
        Ok(m) if m.len() == ann.size => {}
        _ => return false,
    }
    tokio::task::spawn_blocking(move || hash_file(&path))
        .await
        .ok()
        .and_then(Result::ok)
        .is_some_and(|h| h[..] == ann.sha256[..])
}

/// Whether `id` can name an update file: a valid id, not hidden, and not the name of a
/// partial file (`.part`, `.download`).
pub fn plain_update_id(id: &str) -> bool {
    valid_name(id) && !id.starts_with('.') && !id.ends_with(".part") && !id.ends_with(".download")
}

/// Checks what an announcement names before it is used for a path.
///
/// # Errors
/// [`AgentError::Protocol`] naming the bad field.
pub fn check_announcement(ann: &UpdateAnnouncement) -> Result<(), AgentError> {
    if !plain_update_id(&ann.object_id) {
        return Err(protocol(format!(
            "update id {:?} is not a plain name",
            ann.object_id
        )));
    }
    if ann.sha256.len() != 32 {
        return Err(protocol(format!(
            "update {:?}: SHA-256 of {} bytes",
            ann.object_id,
            ann.sha256.len()
        )));
    }
    Ok(())
}

/// Downloads `ann` into `dir/<object_id>` over `conn`: into
/// `<object_id>.<hash>.download` first, resuming from what an earlier attempt left there,
/// with [`WINDOW`] requests in flight; then the whole file is checked against the announced
/// SHA-256 and renamed. `progress` is called with the verified length so far.
///
/// # Errors
/// As [`fetch_range`]; [`AgentError::Corrupt`] if the whole-file hash does not match (the
/// partial file is removed, so the next attempt starts over); [`AgentError::Io`].
pub async fn download<T: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Framed<T, MessageCodec>,
    ann: &UpdateAnnouncement,
    dir: &Path,
    chunk: u32,
    timeout: Duration,
    mut progress: impl FnMut(u64),
) -> Result<PathBuf, AgentError> {
    check_announcement(ann)?;
    let chunk = u64::from(chunk.clamp(1, MAX_CHUNK));
    let id = &ann.object_id;
    let done = dir.join(id);
    let part = dir.join(format!("{id}.{}.download", hex(&ann.sha256[..8])));
    // (A multicast reception of the same update uses `files::part_file_name`; the two
    // layouts differ: this one is a prefix, that one a sparse file.)
    let mut f = tokio::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&part)
        .await
        .map_err(AgentError::io("open", &part))?;
    let have = f
        .metadata()
        .await
        .map_err(AgentError::io("inspect", &part))?
        .len();
    let start = if have > ann.size {
        0
    } else {
        have - have % chunk
    };
    f.set_len(start)
        .await
        .map_err(AgentError::io("truncate", &part))?;
    f.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(AgentError::io("seek", &part))?;
    progress(start);
    let (mut asked, mut got) = (start, start);
    while got < ann.size {
        while asked < ann.size && asked - got < WINDOW * chunk {
            let want = chunk.min(ann.size - asked);
            send(
                conn,
                Message::from(ChunkRequest {
                    object_id: id.clone(),
                    offset: asked,
                    length: want as u32,
                }),
            )
            .await?;
            asked += want;
        }
        let want = chunk.min(ann.size - got) as u32;
        let r = chunk_answer(conn, id, got, want, timeout).await?;
        if r.total_size != ann.size {
            return Err(protocol(format!(
                "{id:?} is {} bytes there, {} announced",
                r.total_size, ann.size
            )));
        }
        f.write_all(&r.data)
            .await
            .map_err(AgentError::io("write", &part))?;
        got += r.data.len() as u64;
        progress(got);
    }
    f.sync_all().await.map_err(AgentError::io("sync", &part))?;
    drop(f);
    let p = part.clone();
    let hash = tokio::task::spawn_blocking(move || hash_file(&p))
        .await
        .map_err(|e| protocol(format!("hash task: {e}")))??;
    if hash[..] != ann.sha256[..] {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(AgentError::Corrupt {
            path: part,
            reason: format!(
                "SHA-256 {} is not the announced {}",
                hex(&hash),
                hex(&ann.sha256)
            ),
        });
    }
    tokio::fs::rename(&part, &done)
        .await
        .map_err(AgentError::io("rename", &part))?;
    Ok(done)
}

/// A DP's block service: serves byte ranges of the complete updates in its directory.
#[derive(Debug)]
pub struct ChunkService {
    addr: SocketAddr,
    served: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl ChunkService {
    /// Binds `bind` and serves `dir` as `device_id`, closing connections idle for [`IDLE`].
    ///
    /// # Errors
    /// [`AgentError::Io`] if the address cannot be bound.
    pub async fn start(
        bind: SocketAddr,
        dir: PathBuf,
        device_id: String,
    ) -> Result<ChunkService, AgentError> {
        Self::start_with_idle(bind, dir, device_id, IDLE).await
    }

    /// [`start`](Self::start) with another limit than [`IDLE`] on waiting for a request and
    /// on a peer taking an answer.
    ///
    /// # Errors
    /// [`AgentError::Io`] if the address cannot be bound.
    pub async fn start_with_idle(
        bind: SocketAddr,
        dir: PathBuf,
        device_id: String,
        idle: Duration,
    ) -> Result<ChunkService, AgentError> {
        let listener = TcpListener::bind(bind)
            .await
            .map_err(AgentError::io("bind block service on", bind.to_string()))?;
        let addr = listener
            .local_addr()
            .map_err(AgentError::io("address of", bind.to_string()))?;
        let served = Arc::new(AtomicU64::new(0));
        let counter = served.clone();
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let task = tokio::spawn(
            async move {
                let dir = Arc::new(dir);
                let device_id = Arc::new(device_id);
                loop {
                    let Ok(permit) = slots.clone().acquire_owned().await else {
                        return;
                    };
                    let (stream, peer) = match listener.accept().await {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::warn!("block service {addr}: accept: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let (dir, id, counter) = (dir.clone(), device_id.clone(), counter.clone());
                    tokio::spawn(
                        async move {
                            if let Err(e) = serve(stream, &dir, &id, &counter, idle).await {
                                tracing::debug!("block service {addr}: {peer}: {e}");
                            }
                            drop(permit);
                        }
                        .instrument(tracing::info_span!("fetch", %peer)),
                    );
                }
            }
            .instrument(tracing::info_span!("block_service", %addr)),
        );
        Ok(ChunkService { addr, served, task })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Chunk bytes served so far.
    pub fn bytes_served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// The counter behind [`bytes_served`](Self::bytes_served), to read it elsewhere.
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.served.clone()
    }
}

impl Drop for ChunkService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    stream: TcpStream,
    dir: &Path,
    device_id: &str,
    served: &AtomicU64,
    idle: Duration,
) -> Result<(), AgentError> {
    let _ = stream.set_nodelay(true);
    let mut conn = Framed::new(stream, MessageCodec::with_max_frame_len(MAX_CHUNK_FRAME));
    let refuse = |code: RefusalCode, reason: String| {
        Message::from(Refusal {
            code: code as i32,
            reason,
        })
    };
    let version = match next_within(&mut conn, Duration::from_secs(10), "Hello").await? {
        Message::Hello(h) => match VersionRange::new(h.min_version, h.max_version)
            .and_then(|v| negotiate(VersionRange::CURRENT, v))
        {
            Ok(v) => v,
            Err(e) => {
                return send_within(
                    &mut conn,
                    refuse(RefusalCode::VersionMismatch, e.to_string()),
                    idle,
                )
                .await;
            }
        },
        other => {
            let m = format!("expected Hello, got {}", other.message_type().name());
            return send_within(&mut conn, refuse(RefusalCode::ProtocolViolation, m), idle).await;
        }
    };
    send_within(
        &mut conn,
        Message::from(HelloAck {
            version,
            role: Role::DistributionPoint as i32,
            node_id: device_id.into(),
        }),
        idle,
    )
    .await?;
    let mut open: Option<(String, tokio::fs::File, u64)> = None;
    loop {
        let m = match tokio::time::timeout(idle, conn.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => return Err(protocol(e.to_string())),
            Ok(None) | Err(_) => return Ok(()),
        };
        let Message::ChunkRequest(c) = m else {
            let m = format!("{} is not served here", m.message_type().name());
            return send_within(&mut conn, refuse(RefusalCode::ProtocolViolation, m), idle).await;
        };
        if !plain_update_id(&c.object_id) {
            let m = format!("{:?} is not an update id", c.object_id);
            return send_within(&mut conn, refuse(RefusalCode::ProtocolViolation, m), idle).await;
        }
        if open.as_ref().is_none_or(|(id, _, _)| *id != c.object_id) {
            let path = dir.join(&c.object_id);
            match tokio::fs::File::open(&path).await {
                Ok(f) => {
                    let len = f
                        .metadata()
                        .await
                        .map_err(AgentError::io("inspect", &path))?
                        .len();
                    open = Some((c.object_id.clone(), f, len));
                }
                Err(_) => {
                    let m = format!("{:?} is not held here (yet)", c.object_id);
                    send_within(&mut conn, refuse(RefusalCode::NotFound, m), idle).await?;
                    continue;
                }
            }
        }
        let Some((id, f, total)) = open.as_mut() else {
            continue;
        };
        let start = c.offset.min(*total);
        let n = u64::from(c.length.min(MAX_CHUNK)).min(*total - start) as usize;
        let mut data = vec![0u8; n];
        f.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(AgentError::io("seek", dir.join(id.as_str())))?;
        f.read_exact(&mut data)
            .await
            .map_err(AgentError::io("read", dir.join(id.as_str())))?;
        served.fetch_add(n as u64, Ordering::Relaxed);
        send_within(
            &mut conn,
            Message::from(ChunkResponse {
                object_id: id.clone(),
                offset: c.offset,
                data: data.into(),
                total_size: *total,
            }),
            idle,
        )
        .await?;
    }
}
