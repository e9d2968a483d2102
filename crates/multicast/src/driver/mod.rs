//! Thin tokio driver: socket2 sockets for the group, the send and receive loops that run
//! the sans-IO cores over them, the worker threads for FEC and hashing, and the kernel's
//! drop counters (in `drops`). The files at both ends are in [`crate::files`].

mod drops;

pub use drops::socket_drops;

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use crate::error::{MulticastError, Result};
use crate::files::{Fetcher, Sink};
use crate::manifest::{Manifest, block_hash};
use crate::packet::{DATA_HEADER_LEN, MAX_DATAGRAM};
use crate::receiver::{BlockJob, BlockResult, Receiver, ReceiverEvent};
use crate::sender::{EncodeJob, Sender, SenderEvent, SenderStats};
use drops::DropWatch;

/// Socket settings for one group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct SocketConfig {
    /// Group address and port (the election crate allocates one per distribution point).
    pub group: SocketAddr,
    /// IPv4: address of the interface to join on and send from (unspecified: let the
    /// kernel choose).
    pub iface_v4: Ipv4Addr,
    /// IPv6: interface index (0: let the kernel choose).
    pub iface_v6: u32,
    /// Multicast TTL / hop limit (1 keeps traffic on the local link).
    pub ttl: u32,
    /// Deliver our own multicast to local listeners.
    pub loopback: bool,
    /// Receive buffer size requested, bytes.
    pub recv_buffer: usize,
    /// Send buffer size requested, bytes.
    pub send_buffer: usize,
    /// Where the kernel caps a buffer below the size asked for (`net.core.rmem_max` /
    /// `wmem_max`), ask again with `SO_RCVBUFFORCE` / `SO_SNDBUFFORCE` (Linux; granted only
    /// to a process with `CAP_NET_ADMIN`, silently capped otherwise). Off: the cap stands.
    pub force_buffers: bool,
}

impl Default for SocketConfig {
    fn default() -> Self {
        SocketConfig {
            group: SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(239, 255, 0, 1)),
                crate::DEFAULT_PORT,
            ),
            iface_v4: Ipv4Addr::UNSPECIFIED,
            iface_v6: 0,
            ttl: 1,
            loopback: false,
            recv_buffer: 8 << 20,
            send_buffer: 4 << 20,
            force_buffers: true,
        }
    }
}

impl SocketConfig {
    /// Checks the fields; the error names the field.
    pub fn validate(&self) -> Result<()> {
        if !self.group.ip().is_multicast() {
            return Err(MulticastError::config(
                "group",
                format!("{} is not a multicast address", self.group.ip()),
            ));
        }
        if self.group.port() == 0 {
            return Err(MulticastError::config("group", "port 0"));
        }
        if let SocketAddr::V6(g) = self.group
            && link_scoped(g.ip())
            && self.iface_v6 == 0
        {
            return Err(MulticastError::config(
                "iface_v6",
                format!(
                    "{} is an interface- or link-scoped group: name the interface index",
                    g.ip()
                ),
            ));
        }
        if self.ttl > 255 {
            return Err(MulticastError::config(
                "ttl",
                format!("{} above 255", self.ttl),
            ));
        }
        if self.recv_buffer == 0 || self.send_buffer == 0 {
            return Err(MulticastError::config(
                "recv_buffer/send_buffer",
                "must be positive",
            ));
        }
        Ok(())
    }

    fn local_unicast(&self) -> SocketAddr {
        match self.group {
            SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(self.iface_v4), 0),
            SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
        }
    }
}

fn sockerr(what: &str, cfg: &SocketConfig) -> impl FnOnce(std::io::Error) -> MulticastError {
    let ctx = format!("{what} (group {})", cfg.group);
    move |e| MulticastError::io(ctx, e)
}

fn new_socket(cfg: &SocketConfig) -> Result<Socket> {
    let s = Socket::new(
        Domain::for_address(cfg.group),
        Type::DGRAM,
        Some(Protocol::UDP),
    )
    .map_err(sockerr("create socket", cfg))?;
    s.set_nonblocking(true)
        .map_err(sockerr("set non-blocking", cfg))?;
    Ok(s)
}

/// Whether an IPv6 multicast address has interface-local (1) or link-local (2) scope
/// (RFC 4291 §2.7: the low 4 bits of the second byte), so it needs an interface.
fn link_scoped(ip: &Ipv6Addr) -> bool {
    matches!(ip.octets()[1] & 0x0f, 1 | 2)
}

#[derive(Clone, Copy)]
enum Buffer {
    Recv,
    Send,
}

/// Sets a socket buffer size. The kernel caps the request at `net.core.rmem_max` /
/// `wmem_max`; a process allowed to (`CAP_NET_ADMIN`, Linux) gets the size it asked for
/// through `SO_RCVBUFFORCE` / `SO_SNDBUFFORCE` instead, so a receiver rides out a few
/// milliseconds without being scheduled at multi-gigabit rates. Unprivileged, the capped
/// size stands.
fn set_buffer(s: &Socket, which: Buffer, size: usize, cfg: &SocketConfig) -> Result<()> {
    let (set, what) = match which {
        Buffer::Recv => (s.set_recv_buffer_size(size), "SO_RCVBUF"),
        Buffer::Send => (s.set_send_buffer_size(size), "SO_SNDBUF"),
    };
    set.map_err(sockerr(what, cfg))?;
    #[cfg(target_os = "linux")]
    if cfg.force_buffers {
        let got = match which {
            Buffer::Recv => s.recv_buffer_size(),
            Buffer::Send => s.send_buffer_size(),
        };
        // Linux reports twice the size granted (the other half is bookkeeping).
        if got.is_ok_and(|g| g < size.saturating_mul(2)) {
            let _ = match which {
                Buffer::Recv => rustix::net::sockopt::set_socket_recv_buffer_size_force(s, size),
                Buffer::Send => rustix::net::sockopt::set_socket_send_buffer_size_force(s, size),
            };
        }
    }
    Ok(())
}

/// A socket bound to the group's address and port, joined on the configured interface,
/// with address and port reuse so several receivers on one host can share the port.
pub fn group_socket(cfg: &SocketConfig) -> Result<UdpSocket> {
    cfg.validate()?;
    let s = new_socket(cfg)?;
    s.set_reuse_address(true)
        .map_err(sockerr("SO_REUSEADDR", cfg))?;
    #[cfg(all(
        unix,
        not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin"))
    ))]
    s.set_reuse_port(true)
        .map_err(sockerr("SO_REUSEPORT", cfg))?;
    set_buffer(&s, Buffer::Recv, cfg.recv_buffer, cfg)?;
    match cfg.group {
        SocketAddr::V4(g) => {
            s.bind(&SocketAddr::V4(g).into())
                .map_err(sockerr("bind group", cfg))?;
            s.join_multicast_v4(g.ip(), &cfg.iface_v4)
                .map_err(sockerr("join group (IPv4)", cfg))?;
        }
        SocketAddr::V6(g) => {
            s.set_only_v6(true).map_err(sockerr("IPV6_V6ONLY", cfg))?;
            // A link-scoped group address is only meaningful with its interface: binding
            // to it without a scope id fails (EINVAL).
            let mut bind = g;
            if link_scoped(g.ip()) {
                bind.set_scope_id(cfg.iface_v6);
            }
            s.bind(&SocketAddr::V6(bind).into())
                .map_err(sockerr("bind group", cfg))?;
            s.join_multicast_v6(g.ip(), cfg.iface_v6)
                .map_err(sockerr("join group (IPv6)", cfg))?;
        }
    }
    UdpSocket::from_std(s.into()).map_err(sockerr("register socket", cfg))
}

/// A socket for sending to the group (interface, TTL, loopback set) that also receives the
/// unicast replies (NAKs, completion reports) sent back to it.
pub fn send_socket(cfg: &SocketConfig) -> Result<UdpSocket> {
    cfg.validate()?;
    let s = new_socket(cfg)?;
    set_buffer(&s, Buffer::Send, cfg.send_buffer, cfg)?;
    set_buffer(&s, Buffer::Recv, cfg.recv_buffer.min(4 << 20), cfg)?;
    match cfg.group {
        SocketAddr::V4(_) => {
            s.set_multicast_if_v4(&cfg.iface_v4)
                .map_err(sockerr("IP_MULTICAST_IF", cfg))?;
            s.set_multicast_ttl_v4(cfg.ttl)
                .map_err(sockerr("IP_MULTICAST_TTL", cfg))?;
            s.set_multicast_loop_v4(cfg.loopback)
                .map_err(sockerr("IP_MULTICAST_LOOP", cfg))?;
        }
        SocketAddr::V6(_) => {
            s.set_only_v6(true).map_err(sockerr("IPV6_V6ONLY", cfg))?;
            s.set_multicast_if_v6(cfg.iface_v6)
                .map_err(sockerr("IPV6_MULTICAST_IF", cfg))?;
            s.set_multicast_hops_v6(cfg.ttl)
                .map_err(sockerr("IPV6_MULTICAST_HOPS", cfg))?;
            s.set_multicast_loop_v6(cfg.loopback)
                .map_err(sockerr("IPV6_MULTICAST_LOOP", cfg))?;
        }
    }
    s.bind(&cfg.local_unicast().into())
        .map_err(sockerr("bind sender", cfg))?;
    UdpSocket::from_std(s.into()).map_err(sockerr("register socket", cfg))
}

/// A unicast socket a receiver sends its NAKs and completion report from.
pub fn control_socket(cfg: &SocketConfig) -> Result<UdpSocket> {
    cfg.validate()?;
    let s = new_socket(cfg)?;
    s.bind(&cfg.local_unicast().into())
        .map_err(sockerr("bind control", cfg))?;
    UdpSocket::from_std(s.into()).map_err(sockerr("register socket", cfg))
}

/// Runs a sender until its session ends, calling `progress` about every 250 ms.
///
/// With [`crate::SenderConfig::offload_encoding`] set, blocks' encoders are built on a
/// separate thread while source data keeps going out.
pub async fn run_sender(
    socket: &UdpSocket,
    group: SocketAddr,
    sender: &mut Sender,
    mut progress: impl FnMut(&SenderStats, Option<SenderEvent>),
) -> Result<SenderStats> {
    let mut bufs: Vec<Vec<u8>> = (0..SEND_BATCH)
        .map(|_| Vec::with_capacity(MAX_DATAGRAM))
        .collect();
    let mut rbuf = vec![0u8; MAX_DATAGRAM];
    let mut last_progress = Instant::now();
    let mut worker = Worker::new("multicast-encode", EncodeJob::run);
    loop {
        let mut now = Instant::now();
        drain(socket, &mut rbuf, |from, d| {
            sender.handle_datagram(now, from, d)
        })?;
        while let Some(r) = worker.try_result() {
            sender.complete_job(r);
        }
        let mut n = 0u32;
        loop {
            // Up to SEND_BATCH datagrams the token bucket allows now, in one system call.
            let mut k = 0;
            while k < SEND_BATCH && sender.poll_transmit(now, &mut bufs[k])? {
                k += 1;
            }
            if k == 0 {
                break;
            }
            send_batch(socket, &bufs[..k], group).await?;
            n += k as u32;
            if n >= 64 {
                n = 0;
                // Let the runtime poll its I/O driver: a sender that always has tokens
                // never waits, and without this the socket's readiness would never be
                // refreshed, so NAKs and load reports would go unread until the data
                // ends (and other tasks on the same runtime would starve).
                tokio::task::yield_now().await;
                now = Instant::now();
                drain(socket, &mut rbuf, |from, d| {
                    sender.handle_datagram(now, from, d)
                })?;
                while let Some(job) = sender.poll_job() {
                    worker.submit(job)?;
                }
                while let Some(r) = worker.try_result() {
                    sender.complete_job(r);
                }
            }
        }
        while let Some(job) = sender.poll_job() {
            worker.submit(job)?;
        }
        while let Some(ev) = sender.poll_event() {
            progress(sender.stats(), Some(ev));
        }
        if now >= last_progress + Duration::from_millis(250) {
            last_progress = now;
            progress(sender.stats(), None);
        }
        if sender.is_finished() {
            return Ok(sender.stats().clone());
        }
        let deadline = sender
            .poll_timeout()
            .unwrap_or(now + Duration::from_millis(50));
        if deadline > Instant::now() {
            tokio::select! {
                r = socket.readable() => r.map_err(|e| MulticastError::io("wait for NAKs", e))?,
                r = worker.next_result() => sender.complete_job(r?),
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
        }
    }
}

/// Datagrams handed to the kernel at once by [`run_sender`].
const SEND_BATCH: usize = 32;

/// Sends every datagram of `bufs` to `to`, as [`run_sender`] does: one `sendmmsg` system
/// call for the lot on Linux (repeated for what the kernel did not take), one `send_to`
/// each elsewhere; a full device queue (`ENOBUFS`) is waited out briefly, a bounded number
/// of times.
#[cfg(target_os = "linux")]
pub async fn send_batch(socket: &UdpSocket, bufs: &[Vec<u8>], to: SocketAddr) -> Result<()> {
    use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny};
    use std::io::IoSlice;
    let addr = SocketAddrAny::from(to);
    let mut sent = 0;
    let mut no_buffer = 0;
    while sent < bufs.len() {
        // The message headers are built per call: they hold raw pointers, are not `Send`,
        // and so cannot live across the awaits below (the sending task may move threads).
        let r = socket.try_io(tokio::io::Interest::WRITABLE, || {
            let iovs: Vec<[IoSlice<'_>; 1]> =
                bufs[sent..].iter().map(|b| [IoSlice::new(b)]).collect();
            let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> = iovs
                .iter()
                .map(|_| SendAncillaryBuffer::default())
                .collect();
            let mut msgs: Vec<MMsgHdr<'_>> = iovs
                .iter()
                .zip(controls.iter_mut())
                .map(|(iov, c)| MMsgHdr::new_with_addr(&addr, iov, c))
                .collect();
            rustix::net::sendmmsg(socket, &mut msgs, SendFlags::empty())
                .map_err(std::io::Error::from)
        });
        match r {
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => socket
                .writable()
                .await
                .map_err(|e| MulticastError::io(format!("wait to send to {to}"), e))?,
            Err(e) if e.raw_os_error() == Some(ENOBUFS) && no_buffer < NOBUFS_RETRIES => {
                no_buffer += 1;
                tokio::time::sleep(NOBUFS_WAIT).await;
            }
            Err(e) => {
                return Err(MulticastError::io(
                    format!("send {} datagrams to {to}", bufs.len() - sent),
                    e,
                ));
            }
        }
    }
    Ok(())
}

/// Sends every datagram of `bufs` to `to` (one `send_to` each on this platform).
#[cfg(not(target_os = "linux"))]
pub async fn send_batch(socket: &UdpSocket, bufs: &[Vec<u8>], to: SocketAddr) -> Result<()> {
    for b in bufs {
        send_retrying(socket, b, to).await?;
    }
    Ok(())
}

/// `ENOBUFS` (Linux): the device queue is full. Sends wait [`NOBUFS_WAIT`] and retry, at
/// most [`NOBUFS_RETRIES`] times in a row.
const ENOBUFS: i32 = 105;
const NOBUFS_RETRIES: u32 = 1000;
const NOBUFS_WAIT: Duration = Duration::from_micros(200);

async fn send_retrying(socket: &UdpSocket, buf: &[u8], to: SocketAddr) -> Result<()> {
    for _ in 0..NOBUFS_RETRIES {
        match socket.send_to(buf, to).await {
            Ok(_) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(ENOBUFS) => tokio::time::sleep(NOBUFS_WAIT).await,
            Err(e) => {
                return Err(MulticastError::io(
                    format!("send {} bytes to {to}", buf.len()),
                    e,
                ));
            }
        }
    }
    Err(MulticastError::io(
        format!("send to {to}"),
        std::io::Error::other(format!("no buffer space after {NOBUFS_RETRIES} retries")),
    ))
}

/// Reads what is waiting on `socket`, at most 256 datagrams so timers get their turn.
fn drain(socket: &UdpSocket, rbuf: &mut [u8], mut f: impl FnMut(SocketAddr, &[u8])) -> Result<()> {
    for _ in 0..256 {
        match socket.try_recv_from(rbuf) {
            Ok((n, from)) => f(from, &rbuf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            // An ICMP error for an earlier datagram (peer gone): not fatal.
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
            Err(e) => return Err(MulticastError::io("receive", e)),
        }
    }
    Ok(())
}

/// Reads what is waiting on the group socket into `rx`, at most 256 datagrams so timers get
/// their turn; `keep` decides for each datagram whether it is handed over (loss injection).
/// On Linux a symbol the receiver expects lands straight in its block buffer
/// ([`Receiver::symbol_slot`]): one `recvmsg` with three buffers, header, slot and tail.
#[cfg(target_os = "linux")]
fn drain_receiver(
    socket: &UdpSocket,
    rx: &mut Receiver,
    head: &mut [u8; DATA_HEADER_LEN],
    tail: &mut [u8],
    mut keep: impl FnMut() -> bool,
) -> Result<()> {
    use rustix::net::{RecvAncillaryBuffer, RecvFlags, recvmsg};
    use std::io::IoSliceMut;
    for _ in 0..256 {
        let mut scattered = false;
        let r = socket.try_io(tokio::io::Interest::READABLE, || {
            let mut control = RecvAncillaryBuffer::default();
            match rx.symbol_slot() {
                Some(slot) => {
                    let mut iov = [
                        IoSliceMut::new(head),
                        IoSliceMut::new(slot),
                        IoSliceMut::new(tail),
                    ];
                    scattered = true;
                    recvmsg(socket, &mut iov, &mut control, RecvFlags::empty())
                }
                None => recvmsg(
                    socket,
                    &mut [IoSliceMut::new(tail)],
                    &mut control,
                    RecvFlags::empty(),
                ),
            }
            .map_err(std::io::Error::from)
        });
        let msg = match r {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            // An ICMP error for an earlier datagram (peer gone): not fatal.
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => continue,
            Err(e) => return Err(MulticastError::io("receive", e)),
        };
        // UDP always reports the source; without one the datagram cannot be answered.
        let Some(from) = msg.address.and_then(|a| SocketAddr::try_from(a).ok()) else {
            continue;
        };
        if !keep() {
            continue;
        }
        if scattered {
            rx.handle_scattered(Instant::now(), from, &head[..], tail, msg.bytes);
        } else {
            rx.handle_datagram(Instant::now(), from, &tail[..msg.bytes]);
        }
    }
    Ok(())
}

/// Reads what is waiting on the group socket into `rx` (see the Linux version).
#[cfg(not(target_os = "linux"))]
fn drain_receiver(
    socket: &UdpSocket,
    rx: &mut Receiver,
    _head: &mut [u8; DATA_HEADER_LEN],
    tail: &mut [u8],
    mut keep: impl FnMut() -> bool,
) -> Result<()> {
    drain(socket, tail, |from, d| {
        if keep() {
            rx.handle_datagram(Instant::now(), from, d);
        }
    })
}

/// Runs synchronous file work (reading back and hashing a whole file) without holding up the
/// other tasks of a multi-threaded runtime: they move to another worker meanwhile.
fn heavy<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Options for [`run_receiver`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReceiveOptions {
    /// Drop this fraction of incoming datagrams (seeded), to measure repair under loss.
    pub inject_loss: f64,
    /// Seed for the injected loss.
    pub loss_seed: u64,
    /// After the file is committed, how long at most the receiver stays on the session to
    /// answer polls with its report again (a `Done` lost on the way), while the session
    /// still asks for it ([`Receiver::session_alive`]; default 30 s, zero: not at all).
    pub linger: Duration,
}

impl Default for ReceiveOptions {
    fn default() -> Self {
        ReceiveOptions {
            inject_loss: 0.0,
            loss_seed: 0,
            linger: Duration::from_secs(30),
        }
    }
}

impl ReceiveOptions {
    /// Injects `loss` (0..1) with `seed`.
    pub fn with_loss(loss: f64, seed: u64) -> ReceiveOptions {
        ReceiveOptions {
            inject_loss: loss,
            loss_seed: seed,
            ..ReceiveOptions::default()
        }
    }
}

/// What a receive run ended with.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReceiveOutcome {
    /// The manifest received.
    pub manifest: Manifest,
    /// Blocks fetched by unicast.
    pub fetched_blocks: u32,
    /// Blocks found verified on disk from an earlier run.
    pub resumed_blocks: u32,
    /// Datagrams dropped by injected loss.
    pub injected_drops: u64,
    /// Datagrams the group socket dropped for want of buffer room while the session ran
    /// (read every few milliseconds on Linux; `None` where the count is not available).
    pub socket_drops: Option<u64>,
    /// Receiver counters.
    pub stats: crate::receiver::ReceiverStats,
}

/// A thread that runs compute jobs (block decoding and hashing, encoder building) off the
/// socket loop, started on the first job and ended when the loop drops it.
struct Worker<J, R> {
    name: &'static str,
    run: fn(J) -> R,
    jobs: Option<std::sync::mpsc::Sender<J>>,
    results: tokio::sync::mpsc::UnboundedReceiver<R>,
    results_tx: Option<tokio::sync::mpsc::UnboundedSender<R>>,
    out: usize,
}

impl<J: Send + 'static, R: Send + 'static> Worker<J, R> {
    fn new(name: &'static str, run: fn(J) -> R) -> Worker<J, R> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        Worker {
            name,
            run,
            jobs: None,
            results: rx,
            results_tx: Some(tx),
            out: 0,
        }
    }

    fn submit(&mut self, job: J) -> Result<()> {
        if self.jobs.is_none() {
            let (jtx, jrx) = std::sync::mpsc::channel::<J>();
            let rtx = self
                .results_tx
                .take()
                .ok_or_else(|| MulticastError::invalid("worker thread", self.name))?;
            let run = self.run;
            std::thread::Builder::new()
                .name(self.name.into())
                .spawn(move || {
                    // Ends when the socket loop drops its end of the job channel.
                    while let Ok(job) = jrx.recv() {
                        if rtx.send(run(job)).is_err() {
                            return;
                        }
                    }
                })
                .map_err(|e| MulticastError::io(format!("start {} thread", self.name), e))?;
            self.jobs = Some(jtx);
        }
        self.jobs
            .as_ref()
            .and_then(|j| j.send(job).ok())
            .ok_or_else(|| MulticastError::invalid("worker thread stopped", self.name))?;
        self.out += 1;
        Ok(())
    }

    fn try_result(&mut self) -> Option<R> {
        let r = self.results.try_recv().ok()?;
        self.out -= 1;
        Some(r)
    }

    /// Waits for the next result; pends forever when nothing is out.
    async fn next_result(&mut self) -> Result<R> {
        if self.out == 0 {
            std::future::pending::<()>().await;
        }
        match self.results.recv().await {
            Some(r) => {
                self.out -= 1;
                Ok(r)
            }
            None => Err(MulticastError::invalid(
                "worker thread",
                format!("{} stopped with {} jobs out", self.name, self.out),
            )),
        }
    }
}

/// Runs a receiver until the file is complete, verified, committed and reported, and the
/// session no longer asks for its report (or [`ReceiveOptions::linger`] passed).
/// Wrap in `tokio::time::timeout` to bound the wait for a session to appear.
///
/// With [`crate::ReceiverConfig::offload_block_work`] set, block decoding and hashing run
/// on a separate thread so the group socket keeps being read meanwhile. `progress` is
/// called when the manifest is accepted, then every 250 ms, and once at the end.
pub async fn run_receiver(
    group_sock: &UdpSocket,
    control_sock: &UdpSocket,
    rx: &mut Receiver,
    sink: &mut dyn Sink,
    fetcher: &mut dyn Fetcher,
    opts: &ReceiveOptions,
    mut progress: impl FnMut(&Receiver),
) -> Result<ReceiveOutcome> {
    let mut run = ReceiveLoop::new(group_sock, opts);
    loop {
        run.read_group(group_sock, rx)?;
        run.exchange_jobs(rx)?;
        let now = Instant::now();
        if rx.poll_timeout().is_some_and(|t| t <= now) {
            rx.handle_timeout(now);
        }
        run.answer_events(rx, sink, fetcher, &mut progress).await?;
        while let Some((to, p)) = rx.poll_transmit() {
            send_retrying(control_sock, &p, to).await?;
        }
        if now >= run.last_progress + Duration::from_millis(250) {
            run.last_progress = now;
            progress(rx);
        }
        if run.finished(rx, now, opts.linger) {
            progress(rx);
            return run.outcome(rx);
        }
        run.wait(group_sock, rx, now).await?;
    }
}

/// What [`run_receiver`] keeps from one turn of its loop to the next: the receive
/// buffers, the injected loss, the block worker, the socket's drop count and the counts
/// it reports.
struct ReceiveLoop {
    rbuf: Vec<u8>,
    head: [u8; DATA_HEADER_LEN],
    rng: ChaCha8Rng,
    loss: f64,
    drops: u64,
    fetched: u32,
    resumed: u32,
    last_progress: Instant,
    worker: Worker<BlockJob, BlockResult>,
    socket_drops: DropWatch,
    /// When the receiver was first seen finished.
    finished_at: Option<Instant>,
}

impl ReceiveLoop {
    /// Before the first turn: nothing read, counted or handed out yet; the injected loss
    /// seeded from `opts`.
    fn new(group_sock: &UdpSocket, opts: &ReceiveOptions) -> ReceiveLoop {
        ReceiveLoop {
            rbuf: vec![0u8; MAX_DATAGRAM],
            head: [0u8; DATA_HEADER_LEN],
            rng: ChaCha8Rng::seed_from_u64(opts.loss_seed),
            loss: opts.inject_loss.clamp(0.0, 1.0),
            drops: 0,
            fetched: 0,
            resumed: 0,
            last_progress: Instant::now(),
            worker: Worker::new("multicast-blocks", BlockJob::run),
            socket_drops: DropWatch::new(group_sock),
            finished_at: None,
        }
    }

    /// Hands `rx` what is waiting on the group socket, less the injected loss.
    fn read_group(&mut self, group_sock: &UdpSocket, rx: &mut Receiver) -> Result<()> {
        // Before the datagrams: a poll among them is answered with the drops counted so far.
        if let Some(n) = self.socket_drops.poll(Instant::now()) {
            rx.note_socket_drops(n);
        }
        let loss = self.loss;
        drain_receiver(group_sock, rx, &mut self.head, &mut self.rbuf, || {
            let drop = loss > 0.0 && self.rng.random_bool(loss);
            self.drops += u64::from(drop);
            !drop
        })
    }

    /// Hands `rx` the results of its block jobs that are back, and the worker its new jobs.
    fn exchange_jobs(&mut self, rx: &mut Receiver) -> Result<()> {
        while let Some(r) = self.worker.try_result() {
            rx.complete_job(r);
        }
        while let Some(job) = rx.poll_job() {
            self.worker.submit(job)?;
        }
        Ok(())
    }

    /// Carries out what `rx` asks for: opens the file and resumes the blocks already in
    /// it once the manifest is in, writes verified blocks, fetches missing ones, and
    /// checks, reports and commits the whole file at the end.
    async fn answer_events(
        &mut self,
        rx: &mut Receiver,
        sink: &mut dyn Sink,
        fetcher: &mut dyn Fetcher,
        progress: &mut impl FnMut(&Receiver),
    ) -> Result<()> {
        while let Some(ev) = rx.poll_event() {
            match ev {
                ReceiverEvent::ManifestAccepted(m) => {
                    sink.begin(&m)?;
                    self.resumed += heavy(|| offer_stored(rx, sink, &m))?;
                    // The session's start (and what was resumed) is a progress point.
                    progress(rx);
                }
                ReceiverEvent::BlockVerified { offset, data, .. } => {
                    sink.write_block(offset, &data)?;
                    rx.recycle(data);
                }
                ReceiverEvent::FetchNeeded { blocks } => {
                    self.fetched += fetch_blocks(rx, sink, fetcher, blocks).await?;
                }
                ReceiverEvent::Complete { .. } => {
                    let h = heavy(|| sink.file_hash())?;
                    rx.finish(h)?;
                    sink.commit()?;
                }
            }
        }
        Ok(())
    }

    /// Finished: committed and reported. The receiver stays while the session still
    /// asks for it (a poll after a lost `Done` is answered), up to `linger`.
    fn finished(&mut self, rx: &Receiver, now: Instant, linger: Duration) -> bool {
        rx.is_finished() && {
            let at = *self.finished_at.get_or_insert(now);
            !rx.session_alive(now) || now >= at + linger
        }
    }

    /// What the run ended with.
    fn outcome(&self, rx: &Receiver) -> Result<ReceiveOutcome> {
        let manifest = rx
            .manifest()
            .cloned()
            .ok_or_else(|| MulticastError::invalid("finished without manifest", 0))?;
        Ok(ReceiveOutcome {
            manifest,
            fetched_blocks: self.fetched,
            resumed_blocks: self.resumed,
            injected_drops: self.drops,
            socket_drops: self.socket_drops.during(),
            stats: rx.stats().clone(),
        })
    }

    /// Waits for group data, a block job's result or `rx`'s next timer, at most 250 ms
    /// from `now`.
    async fn wait(
        &mut self,
        group_sock: &UdpSocket,
        rx: &mut Receiver,
        now: Instant,
    ) -> Result<()> {
        let deadline = rx
            .poll_timeout()
            .unwrap_or(now + Duration::from_millis(250))
            .min(now + Duration::from_millis(250));
        tokio::select! {
            r = group_sock.readable() => r.map_err(|e| MulticastError::io("wait for group data", e))?,
            r = self.worker.next_result() => rx.complete_job(r?),
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
        Ok(())
    }
}

/// Resuming: offers `rx` every block of `m` that `sink` already holds verified; returns
/// how many it took.
fn offer_stored(rx: &mut Receiver, sink: &mut dyn Sink, m: &Manifest) -> Result<u32> {
    let mut n = 0;
    for b in 0..m.block_count() {
        if let Some(d) = sink.stored_block(m, b)?
            && block_hash(&d) == m.block_hashes[b as usize]
            && rx.offer_block(b, &d)?
        {
            n += 1;
        }
    }
    Ok(n)
}

/// Fetches `blocks` by unicast for `rx` and writes those it takes; returns how many.
async fn fetch_blocks(
    rx: &mut Receiver,
    sink: &mut dyn Sink,
    fetcher: &mut dyn Fetcher,
    blocks: Vec<u32>,
) -> Result<u32> {
    let Some(m) = rx.manifest().cloned() else {
        return Ok(0);
    };
    let mut fetched = 0;
    for b in blocks {
        let data = fetcher.fetch_block(&m, b).await?;
        if rx.offer_block(b, &data)? {
            sink.write_block(m.block_offset(b), &data)?;
            fetched += 1;
        }
    }
    Ok(fetched)
}
