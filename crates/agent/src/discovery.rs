//! Broadcast-domain discovery: each agent announces its device id over UDP (port 15000 by
//! default) and remembers the peers it heard within a window; the sync reports them as
//! `visible_peers`, from which the server infers broadcast domains.
//!
//! The datagram is a tiny fixed binary format, decoded without trusting any length:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `"OPDA"` |
//! | 1 | format version, 1 |
//! | 1 | `n`, the device id's length, 1..=128 |
//! | n | the device id: ASCII letters, digits, `.`, `-`, `_` |
//!
//! Nothing may follow. [`PeerTable`] is the sans-IO part (time passed in); [`spawn`] runs it
//! over a tokio UDP socket that binds only the configured address and sends only to the
//! configured targets.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::Instrument;

use crate::AgentError;
use crate::config::DiscoveryConfig;
use outpost_wire::{DeviceId, MAX_DEVICE_ID_LEN};

/// The datagram's magic.
pub const MAGIC: [u8; 4] = *b"OPDA";
/// The format version.
pub const VERSION: u8 = 1;
/// The largest datagram of the format.
pub const MAX_DATAGRAM: usize = 6 + MAX_DEVICE_ID_LEN;

/// Encodes an announcement of `device_id`.
///
/// # Errors
/// [`AgentError::Discovery`] if `device_id` is not a valid device id.
pub fn encode(device_id: &str) -> Result<Vec<u8>, AgentError> {
    if DeviceId::check(device_id).is_err() {
        return Err(AgentError::Discovery(format!(
            "device id {device_id:?} cannot be announced"
        )));
    }
    let mut out = Vec::with_capacity(6 + device_id.len());
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(device_id.len() as u8);
    out.extend_from_slice(device_id.as_bytes());
    Ok(out)
}

/// Decodes an announcement, returning the device id.
///
/// # Errors
/// [`AgentError::Discovery`] saying what is wrong: length, magic, version, id length or id.
pub fn decode(datagram: &[u8]) -> Result<String, AgentError> {
    let err = |m: String| Err(AgentError::Discovery(m));
    if datagram.len() < 6 {
        return err(format!(
            "{} bytes, shorter than the 6-byte header",
            datagram.len()
        ));
    }
    if datagram[..4] != MAGIC {
        return err(format!("magic {:02x?} is not \"OPDA\"", &datagram[..4]));
    }
    if datagram[4] != VERSION {
        return err(format!("format version {} is not {VERSION}", datagram[4]));
    }
    let n = usize::from(datagram[5]);
    if n == 0 || n > MAX_DEVICE_ID_LEN {
        return err(format!(
            "device id length {n} is outside 1..={MAX_DEVICE_ID_LEN}"
        ));
    }
    if datagram.len() != 6 + n {
        return err(format!(
            "{} bytes, but the header announces {}",
            datagram.len(),
            6 + n
        ));
    }
    let id = std::str::from_utf8(&datagram[6..])
        .ok()
        .filter(|id| DeviceId::check(id).is_ok())
        .ok_or_else(|| {
            AgentError::Discovery("the device id has characters outside [A-Za-z0-9._:-]".into())
        })?;
    Ok(id.to_string())
}

/// The peers heard, with when each was last heard. Bounded: past `max_peers` the least
/// recently heard peer is forgotten.
#[derive(Debug, Clone)]
pub struct PeerTable {
    own: String,
    window: Duration,
    max_peers: usize,
    heard: HashMap<String, Instant>,
}

impl PeerTable {
    /// A table for the agent `own` (its own announcements are ignored).
    pub fn new(own: impl Into<String>, window: Duration, max_peers: usize) -> Self {
        PeerTable {
            own: own.into(),
            window,
            max_peers: max_peers.max(1),
            heard: HashMap::new(),
        }
    }

    /// Records a datagram received at `now`; returns the peer's id if it was a valid
    /// announcement from another device.
    pub fn on_datagram(&mut self, datagram: &[u8], now: Instant) -> Option<String> {
        let id = decode(datagram).ok()?;
        if id == self.own {
            return None;
        }
        self.heard_at(&id, now);
        Some(id)
    }

    fn heard_at(&mut self, id: &str, now: Instant) {
        if let Some(t) = self.heard.get_mut(id) {
            *t = now;
            return;
        }
        if self.heard.len() >= self.max_peers {
            self.expire(now);
        }
        if self.heard.len() >= self.max_peers
            && let Some(oldest) = self
                .heard
                .iter()
                .min_by_key(|(id, t)| (**t, (*id).clone()))
                .map(|(id, _)| id.clone())
        {
            self.heard.remove(&oldest);
        }
        self.heard.insert(id.to_string(), now);
    }

    fn expire(&mut self, now: Instant) {
        let window = self.window;
        self.heard
            .retain(|_, t| now.saturating_duration_since(*t) <= window);
    }

    /// The peers heard within the window before `now`, sorted.
    pub fn visible(&mut self, now: Instant) -> Vec<String> {
        self.expire(now);
        let mut v: Vec<String> = self.heard.keys().cloned().collect();
        v.sort();
        v
    }
}

/// A running discovery task.
#[derive(Debug)]
pub struct DiscoveryHandle {
    table: Arc<Mutex<PeerTable>>,
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl DiscoveryHandle {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The peers visible at `now`.
    pub fn visible(&self, now: Instant) -> Vec<String> {
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .visible(now)
    }

    /// Stops the task.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for DiscoveryHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `config.bind` (with `SO_REUSEADDR`, and `SO_BROADCAST` when a target is a
/// broadcast address) and announces `device_id` to every target each interval.
///
/// # Errors
/// [`AgentError::Io`] naming the address if the socket cannot be bound;
/// [`AgentError::Discovery`] for an id that cannot be announced.
pub fn spawn(device_id: &str, config: &DiscoveryConfig) -> Result<DiscoveryHandle, AgentError> {
    spawn_with_pushes(device_id, config, None)
}

/// As [`spawn`], also handing every datagram that looks like the server's signed "sync now"
/// (magic `OPSN`) to `pushes`, unchecked: the receiver verifies it. When `pushes` is full the
/// datagram is dropped.
pub fn spawn_with_pushes(
    device_id: &str,
    config: &DiscoveryConfig,
    pushes: Option<tokio::sync::mpsc::Sender<Vec<u8>>>,
) -> Result<DiscoveryHandle, AgentError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let datagram = encode(device_id)?;
    let bind = config.bind;
    let io = |action| AgentError::io(action, bind.to_string());
    let socket = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))
        .map_err(io("create a UDP socket for"))?;
    socket
        .set_reuse_address(true)
        .map_err(io("set SO_REUSEADDR on"))?;
    let broadcast = config.targets.iter().any(|t| match t {
        SocketAddr::V4(a) => a.ip().is_broadcast(),
        SocketAddr::V6(_) => false,
    });
    if broadcast {
        socket
            .set_broadcast(true)
            .map_err(io("set SO_BROADCAST on"))?;
    }
    socket
        .set_nonblocking(true)
        .map_err(io("set non-blocking"))?;
    socket.bind(&bind.into()).map_err(io("bind"))?;
    let std_socket: std::net::UdpSocket = socket.into();
    let socket = tokio::net::UdpSocket::from_std(std_socket).map_err(io("register"))?;
    let local = socket.local_addr().map_err(io("read the address of"))?;
    let table = Arc::new(Mutex::new(PeerTable::new(
        device_id,
        Duration::from_millis(config.window_ms),
        config.max_peers,
    )));
    let targets = config.targets.clone();
    let interval = Duration::from_millis(config.interval_ms);
    let t = table.clone();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_DATAGRAM.max(outpost_wire::push::MAX_DATAGRAM) + 1];
        let mut tick = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    for target in &targets {
                        if let Err(e) = socket.send_to(&datagram, target).await {
                            tracing::debug!("discovery: send to {target}: {e}");
                        }
                    }
                }
                r = socket.recv_from(&mut buf) => match r {
                    Ok((n, from)) if buf[..n].starts_with(&outpost_wire::push::MAGIC) => {
                        if let Some(p) = &pushes
                            && p.try_send(buf[..n].to_vec()).is_err()
                        {
                            tracing::debug!("discovery: push datagram from {from} dropped (queue full)");
                        }
                    }
                    Ok((n, from)) => {
                        let now = Instant::now();
                        let mut table = t.lock().unwrap_or_else(|e| e.into_inner());
                        if n > MAX_DATAGRAM {
                            tracing::debug!("discovery: oversized datagram from {from}");
                        } else if table.on_datagram(&buf[..n], now).is_none() {
                            tracing::trace!("discovery: ignored datagram from {from}");
                        }
                    }
                    Err(e) => {
                        tracing::debug!("discovery: receive: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
    }.instrument(tracing::info_span!("discovery", device = %device_id)));
    Ok(DiscoveryHandle { table, local, task })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id() -> impl Strategy<Value = String> {
        "[A-Za-z0-9._:-]{1,64}"
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn round_trip(id in id()) {
            let d = encode(&id).unwrap();
            prop_assert!(d.len() <= MAX_DATAGRAM);
            prop_assert_eq!(decode(&d).unwrap(), id);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(id) = decode(&bytes) {
                prop_assert!(DeviceId::check(&id).is_ok());
                prop_assert_eq!(encode(&id).unwrap(), bytes);
            }
        }

        #[test]
        fn damaged_datagrams_are_refused(id in id(), cut in 0usize..6, flip in 0usize..6) {
            let d = encode(&id).unwrap();
            prop_assert!(decode(&d[..cut]).is_err());
            let mut bad = d.clone();
            bad[flip] ^= 0x80;
            prop_assert!(decode(&bad).is_err());
            let mut long = d;
            long.push(b'x');
            prop_assert!(decode(&long).is_err());
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert!(decode(b"OPD").unwrap_err().to_string().contains("3 bytes"));
        assert!(
            decode(b"XXXX\x01\x01a")
                .unwrap_err()
                .to_string()
                .contains("magic")
        );
        assert!(
            decode(b"OPDA\x02\x01a")
                .unwrap_err()
                .to_string()
                .contains("version 2")
        );
        assert!(
            decode(b"OPDA\x01\x00")
                .unwrap_err()
                .to_string()
                .contains("length 0")
        );
        assert!(
            decode(b"OPDA\x01\x01/")
                .unwrap_err()
                .to_string()
                .contains("characters")
        );
    }

    #[test]
    fn table_window_own_id_and_bound() {
        let t0 = Instant::now();
        let mut t = PeerTable::new("me", Duration::from_secs(10), 2);
        assert_eq!(t.on_datagram(&encode("me").unwrap(), t0), None);
        t.on_datagram(&encode("a").unwrap(), t0);
        t.on_datagram(&encode("b").unwrap(), t0 + Duration::from_secs(1));
        assert_eq!(t.visible(t0 + Duration::from_secs(5)), vec!["a", "b"]);
        // A third peer evicts the least recently heard.
        t.on_datagram(&encode("c").unwrap(), t0 + Duration::from_secs(2));
        assert_eq!(t.visible(t0 + Duration::from_secs(5)), vec!["b", "c"]);
        // Past the window they are gone.
        assert_eq!(t.visible(t0 + Duration::from_secs(12)), vec!["c"]);
        assert!(t.visible(t0 + Duration::from_secs(13)).is_empty());
        assert_eq!(t.on_datagram(b"junk", t0), None);
    }
}
