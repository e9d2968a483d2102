#!/usr/bin/env bash
# Measure multicast distribution with receivers in separate network namespaces.
#
# Builds an isolated bridge with one sender namespace and N receiver namespaces (veth
# pairs), runs the `multicast` example in each namespace and compares the received files.
# Nothing leaves the bridge: the namespaces have no route to any other network.
#
# Loss: with `nft` installed, an nftables `numgen random` rule drops that share of the
# multicast packets entering each receiver's namespace (this kernel has no netem);
# without it, each receiver drops that share of what it reads (the example's --loss,
# seeded per process). The output says which was used.
#
# Run by hand as root; not part of CI.
#
#   crates/multicast/scripts/netns_multicast.sh [RECEIVERS] [LOSS_PERCENT] [SIZE_MIB]
#
# Environment: FAMILY=4|6 (default 4: group 239.255.90.1, addresses 10.250.0.0/24;
# 6: group ff15::90:1, addresses fd00:250::/64), RATE (Mbit/s, default 1000),
# BIN (default target/release/examples/multicast).
#
# Requires: ip (iproute2), the release example built with
#   cargo build --release --example multicast
set -euo pipefail

N=${1:-4}
LOSS=${2:-5}
SIZE=${3:-64}
FAMILY=${FAMILY:-4}
RATE=${RATE:-1000}
BIN=${BIN:-target/release/examples/multicast}
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
case "$FAMILY" in
    4) GROUP=239.255.90.1:15001 ;;
    6) GROUP='[ff15::90:1]:15001' ;;
    *) echo "FAMILY must be 4 or 6" >&2; exit 2 ;;
esac

# Where the loss is injected.
APP_LOSS=0
if [ "$LOSS" -gt 0 ]; then
    if command -v nft > /dev/null; then
        echo "loss: nftables numgen random drop of ${LOSS}% at each receiver's namespace"
    else
        APP_LOSS=$(awk "BEGIN { print $LOSS / 100 }")
        echo "loss: nft not installed; each receiver drops ${LOSS}% of what it reads (--loss $APP_LOSS)"
    fi
fi

ip link add "$BR" type bridge
ip link set "$BR" up
for i in $(seq 0 "$N"); do
    ns=${PFX}n$i
    ip netns add "$ns"
    ip link add "${PFX}v$i" type veth peer name eth0 netns "$ns"
    ip link set "${PFX}v$i" master "$BR" up
    ip -n "$ns" link set lo up
    if [ "$FAMILY" = 4 ]; then
        ip -n "$ns" addr add "10.250.0.$((i + 1))/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" route add 224.0.0.0/4 dev eth0
    else
        ip -n "$ns" addr add "fd00:250::$((i + 1))/64" dev eth0 nodad
        ip -n "$ns" link set eth0 up
    fi
    if [ "$i" -gt 0 ] && [ "$LOSS" -gt 0 ] && command -v nft > /dev/null; then
        ip netns exec "$ns" nft -f - <<NFT
table inet loss {
    chain input {
        type filter hook input priority 0;
        meta pkttype multicast numgen random mod 100 < $LOSS drop
    }
}
NFT
    fi
done

# The interface argument: the IPv4 address, or the IPv6 interface index of eth0.
iface() {
    if [ "$FAMILY" = 4 ]; then
        echo "10.250.0.$(($1 + 1))"
    else
        ip -n "${PFX}n$1" -o link show eth0 | cut -d: -f1
    fi
}

head -c "$((SIZE * 1048576))" /dev/urandom > "$WORK/update.bin"
"$BIN" keygen --out "$WORK/key" > "$WORK/pk.txt"
PK=$(awk '{print $NF}' "$WORK/pk.txt")

pids=()
for i in $(seq 1 "$N"); do
    mkdir -p "$WORK/r$i"
    ip netns exec "${PFX}n$i" "$BIN" receive --group "$GROUP" --iface "$(iface "$i")" \
        --sender-key "$PK" --out "$WORK/r$i" --fetch-from "$WORK/update.bin" \
        --loss "$APP_LOSS" > "$WORK/r$i.log" 2>&1 &
    pids+=($!)
done
sleep 1
start=$(date +%s.%N)
ip netns exec "${PFX}n0" "$BIN" send --group "$GROUP" --iface "$(iface 0)" --key "$WORK/key" \
    --rate "$RATE" --expect "$N" "$WORK/update.bin"
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
end=$(date +%s.%N)
for i in $(seq 1 "$N"); do
    tail -n 1 "$WORK/r$i.log"
    if cmp -s "$WORK/update.bin" "$WORK/r$i/update.bin"; then
        echo "receiver $i: identical"
    else
        echo "receiver $i: DIFFERENT or missing"
        status=1
    fi
done
awk "BEGIN { printf \"IPv$FAMILY, $N receivers, ${LOSS}%% loss, $SIZE MiB at a $RATE Mbit/s ceiling: all done in %.2f s\n\", $end - $start }"
exit "$status"
