#!/usr/bin/env bash
# Measure multicast distribution with receivers in separate network namespaces.
#
# Builds an isolated bridge with one sender namespace and N receiver namespaces (veth
# pairs), drops a share of the multicast packets entering each receiver with an nftables
# `numgen random` rule (this kernel has no netem), runs the `multicast` example in each
# namespace and compares the received files. Nothing leaves the bridge: the namespaces
# have no route to any other network. Run by hand as root; not part of CI.
#
#   crates/multicast/scripts/netns_multicast.sh [RECEIVERS] [LOSS_PERCENT] [SIZE_MIB]
#
# Requires: ip (iproute2), nft, the release example built with
#   cargo build --release --example multicast
set -euo pipefail

N=${1:-4}
LOSS=${2:-5}
SIZE=${3:-64}
BIN=${BIN:-target/release/examples/multicast}
GROUP=239.255.90.1:15001
PFX=omc$$
BR=${PFX}br
WORK=$(mktemp -d)

cleanup() {
    set +e
    for i in $(seq 0 "$N"); do ip netns del "${PFX}n$i" 2>/dev/null; done
    ip link del "$BR" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

[ -x "$BIN" ] || { echo "build first: cargo build --release --example multicast" >&2; exit 1; }

ip link add "$BR" type bridge
ip link set "$BR" up
for i in $(seq 0 "$N"); do
    ns=${PFX}n$i
    ip netns add "$ns"
    ip link add "${PFX}v$i" type veth peer name eth0 netns "$ns"
    ip link set "${PFX}v$i" master "$BR" up
    ip -n "$ns" addr add "10.250.0.$((i + 1))/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    ip -n "$ns" route add 224.0.0.0/4 dev eth0
    if [ "$i" -gt 0 ] && [ "$LOSS" -gt 0 ]; then
        ip netns exec "$ns" nft -f - <<NFT
table inet loss {
    chain input {
        type filter hook input priority 0;
        ip daddr 224.0.0.0/4 numgen random mod 100 < $LOSS drop
    }
}
NFT
    fi
done

head -c "$((SIZE * 1048576))" /dev/urandom > "$WORK/update.bin"
"$BIN" keygen --out "$WORK/key" > "$WORK/pk.txt"
PK=$(awk '{print $NF}' "$WORK/pk.txt")

pids=()
for i in $(seq 1 "$N"); do
    mkdir -p "$WORK/r$i"
    ip netns exec "${PFX}n$i" "$BIN" receive --group "$GROUP" --iface "10.250.0.$((i + 1))" \
        --sender-key "$PK" --out "$WORK/r$i" --fetch-from "$WORK/update.bin" \
        > "$WORK/r$i.log" 2>&1 &
    pids+=($!)
done
sleep 1
ip netns exec "${PFX}n0" "$BIN" send --group "$GROUP" --iface 10.250.0.1 --key "$WORK/key" \
    --rate "${RATE:-1000}" "$WORK/update.bin"
for p in "${pids[@]}"; do wait "$p"; done
for i in $(seq 1 "$N"); do
    tail -n 1 "$WORK/r$i.log"
    cmp "$WORK/update.bin" "$WORK/r$i/update.bin" && echo "receiver $i: identical"
done
