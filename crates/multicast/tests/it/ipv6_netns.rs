//! IPv6 multicast over real sockets, inside a private network namespace made for the test.
//!
//! The loopback interface carries no IPv6 multicast, so the outer test re-runs this test
//! binary under `unshare --net` with a veth pair (`va`, `vb`, addresses fd00:251::1 and
//! ::2) that exists only in that namespace and disappears with it: the sender sends on
//! `va`, the receivers join on `vb`, to a link-scoped group. Nothing can reach any other
//! network. Where a network namespace cannot be created (not privileged, no `unshare` or
//! `ip`), the outer test says so and does not fail.

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::process::Command;
use std::time::Duration;

use outpost_multicast::SigningKey;
use outpost_multicast::driver::{self, SocketConfig};

use crate::common;

const INNER: &str = "ipv6_netns::inner_ipv6_two_receivers_over_a_veth_pair";
const MARK: &str = "OUTPOST_IPV6_NETNS_INNER";

#[test]
fn ipv6_multicast_in_a_private_network_namespace() {
    let exe = std::env::current_exe().unwrap();
    let setup = "ip link set lo up && ip link add va type veth peer name vb \
        && ip addr add fd00:251::1/64 dev va nodad && ip addr add fd00:251::2/64 dev vb nodad \
        && ip link set va up && ip link set vb up \
        && exec \"$0\" --exact \"$1\" --ignored --nocapture --test-threads 1";
    let out = match Command::new("unshare")
        .args(["--net", "--", "sh", "-c", setup])
        .arg(&exe)
        .arg(INNER)
        .env(MARK, "1")
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            eprintln!("skipped: cannot run unshare: {e}");
            return;
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !stdout.contains(&format!("test {INNER} ...")) {
        // The namespace or the veth pair could not be made: nothing of ours ran.
        eprintln!(
            "skipped: no private network namespace here ({}): {}",
            out.status,
            stderr.trim()
        );
        return;
    }
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "inner test failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

/// Interface index of `name`, from this namespace's IPv6 address table (`/sys` may still
/// show the namespace the process came from; `/proc/net` follows the process).
fn ifindex(name: &str) -> u32 {
    let table = std::fs::read_to_string("/proc/net/if_inet6").unwrap();
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() == 6 && f[5] == name)
        .and_then(|f| u32::from_str_radix(f[1], 16).ok())
        .unwrap_or_else(|| panic!("{name} not in /proc/net/if_inet6:\n{table}"))
}

/// Runs only inside the namespace the outer test makes (ignored otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by ipv6_multicast_in_a_private_network_namespace inside its namespace"]
async fn inner_ipv6_two_receivers_over_a_veth_pair() {
    assert!(
        std::env::var_os(MARK).is_some(),
        "run through ipv6_multicast_in_a_private_network_namespace"
    );
    let group: Ipv6Addr = "ff12::90:2".parse().unwrap();
    let port = 15001;
    let mut rx_cfg = SocketConfig::default();
    rx_cfg.group = SocketAddr::V6(SocketAddrV6::new(group, port, 0, 0));
    rx_cfg.iface_v6 = ifindex("vb");
    let mut tx_cfg = rx_cfg.clone();
    tx_cfg.iface_v6 = ifindex("va");

    // A link-scoped group without an interface is refused with the field named.
    let mut no_iface = rx_cfg.clone();
    no_iface.iface_v6 = 0;
    let e = driver::group_socket(&no_iface).unwrap_err().to_string();
    assert!(e.contains("iface_v6"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("update.bin");
    let data = outpost_testkit::payload(2, 2_500_000);
    std::fs::write(&src, &data).unwrap();
    let key = SigningKey::from_seed(&[9u8; 32]).unwrap();
    let pk = key.public_key();

    // Receiver 1 loses 5% of what arrives (seeded), so repair crosses IPv6 too.
    let handles = common::spawn_receivers(&rx_cfg, 2, 1, 7, pk, |_| {});
    tokio::time::sleep(Duration::from_millis(50)).await;

    let mut scfg = common::test_sender_config();
    scfg.expect_receivers = 2;
    scfg.done_linger_ms = 10_000;
    let sock = driver::send_socket(&tx_cfg).unwrap();
    let stats = common::send_file(&sock, tx_cfg.group, &key, &src, 0x66, scfg).await;

    for h in handles {
        let (res, written, _dir) = h.await.unwrap();
        assert!(written == data, "file byte-exact");
        assert_eq!(res.fetched_blocks, 0, "everything came by multicast");
        if res.injected_drops > 0 {
            assert!(res.stats.repair_symbols > 0, "repaired: {:?}", res.stats);
        }
    }
    assert!(stats.repair_packets > 0, "{stats:?}");
    assert_eq!(stats.receivers_done, 2, "both reports arrived over IPv6");
}
