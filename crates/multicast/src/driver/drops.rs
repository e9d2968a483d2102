//! The kernel's drop counters: how many datagrams a UDP socket dropped for want of
//! receive-buffer room, read from the kernel's UDP tables (Linux), shared by every
//! receiver of the process.

use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

/// The kernel's count of datagrams this UDP socket dropped for want of receive-buffer
/// room since it was opened: on Linux the `drops` column of `/proc/net/udp` (or `udp6`),
/// found by the socket's inode. `None` elsewhere, or when the table cannot be read (no
/// `/proc`). One call reads the whole table: some tens of microseconds.
pub fn socket_drops(socket: &UdpSocket) -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let (slot, inode) = socket_id(socket)?;
        udp_table_all_drops(&std::fs::read_to_string(UDP_TABLES[slot]).ok()?)
            .get(&inode)
            .copied()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = socket;
        None
    }
}

/// The kernel's UDP tables, IPv4 then IPv6.
#[cfg(target_os = "linux")]
const UDP_TABLES: [&str; 2] = ["/proc/net/udp", "/proc/net/udp6"];

/// Which of [`UDP_TABLES`] lists `socket` (0 for IPv4, 1 for IPv6), and its inode there.
#[cfg(target_os = "linux")]
fn socket_id(socket: &UdpSocket) -> Option<(usize, u64)> {
    let slot = usize::from(socket.local_addr().ok()?.is_ipv6());
    Some((slot, rustix::fs::fstat(socket).ok()?.st_ino))
}

/// The kernel's UDP tables as last read, shared by every receiver of the process: one
/// read gives the drop counts of all sockets, and a process running many receivers (a
/// test bed, a simulation of a fleet) would otherwise read the table once per receiver,
/// each read as long as the table.
#[cfg(target_os = "linux")]
struct DropTable {
    read_at: Option<Instant>,
    every: Duration,
    drops: std::collections::HashMap<u64, u64>,
}

#[cfg(target_os = "linux")]
static DROP_TABLES: std::sync::Mutex<[Option<DropTable>; 2]> = std::sync::Mutex::new([None, None]);

/// A socket's drop count through the process-wide [`DropTable`]s (`slot` 0 for IPv4,
/// 1 for IPv6), each read again at most every `SOCKET_DROPS_EVERY`, or less often (up to
/// `SOCKET_DROPS_SLOWEST`) when the table is so long that reading it would take more than
/// 1% of a core. A table that cannot be read is tried again after `SOCKET_DROPS_SLOWEST`.
#[cfg(target_os = "linux")]
fn shared_socket_drops(slot: usize, inode: u64, now: Instant) -> Option<u64> {
    let path = UDP_TABLES[slot];
    let mut tables = DROP_TABLES.lock().unwrap_or_else(|e| e.into_inner());
    let t = tables[slot].get_or_insert_with(|| DropTable {
        read_at: None,
        every: SOCKET_DROPS_EVERY,
        drops: std::collections::HashMap::new(),
    });
    if t.read_at.is_none_or(|at| now >= at + t.every) {
        let started = Instant::now();
        t.read_at = Some(now);
        match std::fs::read_to_string(path) {
            Ok(text) => {
                t.drops = udp_table_all_drops(&text);
                t.every = (started.elapsed() * 100).clamp(SOCKET_DROPS_EVERY, SOCKET_DROPS_SLOWEST);
            }
            Err(_) => {
                t.drops.clear();
                t.every = SOCKET_DROPS_SLOWEST;
            }
        }
    }
    t.drops.get(&inode).copied()
}

/// Every socket's `drops` of a `/proc/net/udp` table, by inode.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn udp_table_all_drops(table: &str) -> std::collections::HashMap<u64, u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            Some((cols.get(9)?.parse().ok()?, cols.get(12)?.parse().ok()?))
        })
        .collect()
}

/// The drop count of one receiver's socket over its run (see [`DropTable`]), looked up
/// at most every `SOCKET_DROPS_EVERY`.
pub(super) struct DropWatch {
    /// Table slot and inode of the socket (Linux).
    socket: Option<(usize, u64)>,
    next: Instant,
    first: Option<u64>,
    last: Option<u64>,
}

impl DropWatch {
    pub(super) fn new(socket: &UdpSocket) -> DropWatch {
        #[cfg(target_os = "linux")]
        let id = socket_id(socket);
        #[cfg(not(target_os = "linux"))]
        let id = {
            let _ = socket;
            None
        };
        DropWatch {
            socket: id,
            next: Instant::now(),
            first: None,
            last: None,
        }
    }

    /// The current count, when due and readable.
    pub(super) fn poll(&mut self, now: Instant) -> Option<u64> {
        let (slot, inode) = self.socket?;
        if now < self.next {
            return None;
        }
        self.next = now + SOCKET_DROPS_EVERY;
        #[cfg(target_os = "linux")]
        let count = shared_socket_drops(slot, inode, now);
        #[cfg(not(target_os = "linux"))]
        let count = {
            let _ = (slot, inode);
            None
        };
        self.first = self.first.or(count);
        self.last = count.or(self.last);
        count
    }

    /// Drops between the first and the last count read.
    pub(super) fn during(&self) -> Option<u64> {
        Some(self.last?.saturating_sub(self.first?))
    }
}

/// How often the kernel's UDP table is read at most for [`run_receiver`](super::run_receiver)'s drop counts (a
/// read costs some tens of microseconds with a short table).
const SOCKET_DROPS_EVERY: Duration = Duration::from_millis(4);
/// The longest the kernel's UDP table goes unread while receivers run (see
/// `shared_socket_drops`).
#[cfg(target_os = "linux")]
const SOCKET_DROPS_SLOWEST: Duration = Duration::from_millis(250);

#[cfg(test)]
mod tests {
    use super::udp_table_all_drops;

    fn udp_table_drops(table: &str, inode: u64) -> Option<u64> {
        udp_table_all_drops(table).get(&inode).copied()
    }

    #[test]
    fn udp_table_drops_finds_the_socket_by_inode() {
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops            \n\
  1: 0100007F:3A99 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 41234 2 0000000000000000 0          \n\
  7: 0100007F:3A98 00000000:0000 07 00000000:0001F400 00:00000000 00000000     0        0 41240 2 0000000000000000 17         \n";
        assert_eq!(udp_table_drops(table, 41240), Some(17));
        assert_eq!(udp_table_drops(table, 41234), Some(0));
        assert_eq!(udp_table_drops(table, 99), None);
        assert_eq!(udp_table_drops("", 41240), None);
        assert_eq!(
            udp_table_drops("header\n  1: short line 41240\n", 41240),
            None
        );
    }
}
