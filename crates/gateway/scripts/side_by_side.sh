#!/usr/bin/env bash
# Connection setup and throughput through TCP tunnels on loopback, side by side in one run:
#
#   direct                 the target itself
#   outpost                the DMZ gateway's Web Console tunnel (TLS between the gateway and
#                          the server side, warm pool on), `connection_gateway` and
#                          `gateway_server` as two processes
#   rathole tcp            rathole 0.5, TCP transport (no encryption)
#   rathole tls            rathole 0.5, TLS transport
#
# Setup: `tunnel_probe setup` opens COUNT connections one after another (connect, one byte
# each way, close) through each path, ROUNDS times, the paths interleaved; median and p99 of
# each round. The device port the same way with `tunnel_probe device` (connect, TLS with an
# agent certificate, Hello answered by HelloAck, close): to the server's own port directly,
# through the outpost gateway's agent port, and through each rathole transport to the
# server's port. Throughput: iperf3 (10 s, one stream) through each tunnel, interleaved.
#
# rathole runs with `nodelay = true` on every transport (without it, Nagle's algorithm holds
# each small TLS flight of a relayed handshake for a delayed ACK, 40 ms). Everything listens on 127.0.0.1 (ports PORT_BASE.. PORT_BASE+40). rathole is installed with
# `cargo install rathole` into a temporary root (or set RATHOLE to a binary); iperf3 comes from
# Debian's package (installed when missing and this runs as root; without it the throughput
# part is skipped). Run by hand from anywhere in the repository; not part of CI.
#
#   crates/gateway/scripts/side_by_side.sh
#
# Environment: COUNT (default 500), ROUNDS (default 3), PORT_BASE (default 24000),
# POOL (the server side's warm pool, default 4), RATHOLE (a rathole binary to use),
# THROUGHPUT=0 (setup only).
set -euo pipefail

COUNT=${COUNT:-500}
ROUNDS=${ROUNDS:-3}
B=${PORT_BASE:-24000}
POOL=${POOL:-4}
ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
WORK=$(mktemp -d)
PIDS=()

cleanup() {
    set +e
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

say() { printf '%s\n' "$*" >&2; }
start() { "$@" >"$WORK/log.$(basename "$1").$#.$RANDOM" 2>&1 & PIDS+=("$!"); }
stop_all() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null || true
    PIDS=()
}
wait_port() {
    for _ in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    say "nothing listens on 127.0.0.1:$1"; exit 1
}

cd "$ROOT"
say "building the examples (release)"
cargo build --release --quiet --example pki --example connection_gateway \
    --example gateway_server --example tunnel_probe
EX=$ROOT/target/release/examples

if [ -z "${RATHOLE:-}" ]; then
    # Not --locked: its lock file pins crates too old for a current compiler.
    say "installing rathole 0.5 into $WORK/rathole"
    cargo install --quiet rathole --version '^0.5' --root "$WORK/rathole"
    RATHOLE=$WORK/rathole/bin/rathole
fi
if ! command -v iperf3 >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get install -y -qq iperf3 >/dev/null 2>&1 || true
fi

# Certificates: the outpost CA issues the server's and the gateway's; rathole's TLS
# transport takes the gateway's as a PKCS#12 archive.
P=$WORK/pki
"$EX/pki" init --dir "$P" >/dev/null
"$EX/pki" issue-server --dir "$P" --name server-1 --dns server.outpost.test --ip 127.0.0.1 --out "$P/server" >/dev/null
"$EX/pki" issue-gateway --dir "$P" --dns gw.outpost.test --ip 127.0.0.1 --out "$P/gw" >/dev/null
"$EX/pki" issue-agent --dir "$P" --device probe --out "$P/probe" >/dev/null
openssl pkcs12 -export -out "$P/gw.pfx" -inkey "$P/gw.key" -in "$P/gw.chain.pem" \
    -certfile "$P/ca.crt" -passout pass:side-by-side 2>/dev/null

ECHO=$((B)); IPERF=$((B + 1))
GW_AGENT=$((B + 10)); GW_CONSOLE=$((B + 11)); SERVER_PORT=$((B + 12))
RT_CONTROL=$((B + 20)); RT_ENTRY=$((B + 21)); RT_DEVICE=$((B + 22))
RS_CONTROL=$((B + 30)); RS_ENTRY=$((B + 31)); RS_DEVICE=$((B + 32))

# Writes $WORK/$1-server.toml and $WORK/$1-client.toml: rathole with transport $2 (tcp or
# tls), control channel on port $3, the probe's service on $4 toward port $6, the device
# service on $5 toward the server's port.
rathole_configs() {
    local name=$1 transport=$2 control=$3 entry=$4 device=$5 target=$6
    local server_tls="" client_tls=""
    if [ "$transport" = tls ]; then
        server_tls=$(printf '[server.transport.tls]\npkcs12 = "%s"\npkcs12_password = "side-by-side"' "$P/gw.pfx")
        client_tls=$(printf '[client.transport.tls]\ntrusted_root = "%s"\nhostname = "gw.outpost.test"' "$P/ca.crt")
    fi
    cat >"$WORK/$name-server.toml" <<EOF
[server]
bind_addr = "127.0.0.1:$control"
[server.transport]
type = "$transport"
[server.transport.tcp]
nodelay = true
$server_tls
[server.services.probe]
token = "side-by-side"
bind_addr = "127.0.0.1:$entry"
[server.services.device]
token = "side-by-side"
bind_addr = "127.0.0.1:$device"
EOF
    cat >"$WORK/$name-client.toml" <<EOF
[client]
remote_addr = "127.0.0.1:$control"
[client.transport]
type = "$transport"
[client.transport.tcp]
nodelay = true
$client_tls
[client.services.probe]
token = "side-by-side"
local_addr = "127.0.0.1:$target"
[client.services.device]
token = "side-by-side"
local_addr = "127.0.0.1:$SERVER_PORT"
EOF
}

# Starts every tunnel toward 127.0.0.1:$1.
start_tunnels() {
    local target=$1
    cat >"$WORK/gateway.toml" <<EOF
gateway_id = "dmz-1"
mode = "dmz"
listen = "127.0.0.1:$GW_AGENT"
web_console_listen = "127.0.0.1:$GW_CONSOLE"
[tls]
cert = "$P/gw.chain.pem"
key = "$P/gw.key"
server_ca = "$P/ca.crt"
crls = []
[limits]
max_console_tunnels = 4096
max_console_tunnels_per_source = 4096
EOF
    cat >"$WORK/server.toml" <<EOF
listen = "127.0.0.1:$SERVER_PORT"
[tls]
cert = "$P/server.chain.pem"
key = "$P/server.key"
server_ca = "$P/ca.crt"
[connector]
server_id = "server-1"
web_console_target = "127.0.0.1:$target"
pool_size = $POOL
[[connector.gateways]]
id = "dmz-1"
addr = "127.0.0.1:$GW_AGENT"
name = "gw.outpost.test"
EOF
    rathole_configs rt tcp "$RT_CONTROL" "$RT_ENTRY" "$RT_DEVICE" "$target"
    rathole_configs rs tls "$RS_CONTROL" "$RS_ENTRY" "$RS_DEVICE" "$target"
    start "$EX/connection_gateway" --config "$WORK/gateway.toml"
    wait_port "$GW_AGENT"
    start "$EX/gateway_server" --config "$WORK/server.toml"
    start "$RATHOLE" --server "$WORK/rt-server.toml"
    start "$RATHOLE" --client "$WORK/rt-client.toml"
    start "$RATHOLE" --server "$WORK/rs-server.toml"
    start "$RATHOLE" --client "$WORK/rs-client.toml"
    wait_port "$GW_CONSOLE"; wait_port "$RT_ENTRY"; wait_port "$RS_ENTRY"
    wait_port "$SERVER_PORT"; wait_port "$RT_DEVICE"; wait_port "$RS_DEVICE"
    # The signal connection, the warm pool and rathole's control channels come up.
    sleep 2
}

PATHS=("direct:$ECHO" "outpost:$GW_CONSOLE" "rathole-tcp:$RT_ENTRY" "rathole-tls:$RS_ENTRY")
DEVICE_PATHS=("device-direct:$SERVER_PORT:server.outpost.test"
    "device-outpost:$GW_AGENT:gw.outpost.test"
    "device-rathole-tcp:$RT_DEVICE:server.outpost.test"
    "device-rathole-tls:$RS_DEVICE:server.outpost.test")

say "setup: $COUNT sequential connections per path, $ROUNDS rounds, interleaved"
start "$EX/tunnel_probe" echo --listen "127.0.0.1:$ECHO"
wait_port "$ECHO"
start_tunnels "$ECHO"
SETUP=$WORK/setup.txt
for r in $(seq 1 "$ROUNDS"); do
    for p in "${PATHS[@]}"; do
        "$EX/tunnel_probe" setup --to "127.0.0.1:${p#*:}" --count "$COUNT" --label "${p%%:*}" >>"$SETUP"
    done
    for p in "${DEVICE_PATHS[@]}"; do
        IFS=: read -r label port name <<<"$p"
        "$EX/tunnel_probe" device --to "127.0.0.1:$port" --name "$name" --ca "$P/ca.crt" \
            --cert "$P/probe.chain.pem" --key "$P/probe.key" --count "$COUNT" --label "$label" >>"$SETUP"
    done
done
stop_all

TPUT=$WORK/throughput.txt
if [ "${THROUGHPUT:-1}" = 0 ]; then
    say "throughput skipped (THROUGHPUT=0)"
elif command -v iperf3 >/dev/null; then
    say "throughput: iperf3, 10 s, one stream, per path"
    start iperf3 --server --bind 127.0.0.1 --port "$IPERF"
    wait_port "$IPERF"
    start_tunnels "$IPERF"
    for p in "${PATHS[@]}"; do
        port=${p#*:}; [ "${p%%:*}" = direct ] && port=$IPERF
        bps=$(iperf3 --client 127.0.0.1 --port "$port" --time 10 --json |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"])')
        echo "${p%%:*} $bps" >>"$TPUT"
    done
    stop_all
else
    say "iperf3 is not installed: throughput skipped"
fi

python3 - "$SETUP" "$TPUT" "$COUNT" <<'EOF'
import re, sys, os, datetime
setup, through, count = sys.argv[1], sys.argv[2], sys.argv[3]
rows = {}
for line in open(setup):
    m = re.match(r"(\S+): \d+ connections, median ([\d.]+) ms, p99 ([\d.]+) ms", line)
    if m:
        rows.setdefault(m.group(1), []).append((float(m.group(2)), float(m.group(3))))
gbit = {}
if os.path.exists(through):
    for line in open(through):
        name, bps = line.split()
        gbit[name] = float(bps) / 1e9
def span(xs):
    return f"{min(xs):.2f}–{max(xs):.2f}" if len(xs) > 1 else f"{xs[0]:.2f}"
def table(title, names, base_name, with_gbit):
    base = rows.get(base_name)
    print(title)
    print()
    head = "| path | setup median (ms) | setup p99 (ms) | median / " + base_name + " | p99 / " + base_name + " |"
    print(head + (" iperf3 (Gbit/s) |" if with_gbit else ""))
    print("|---|---|---|---|---|" + ("---|" if with_gbit else ""))
    mid = lambda xs: sorted(xs)[len(xs) // 2]
    for name in names:
        r = rows.get(name)
        if not r:
            continue
        med = [a for a, _ in r]; p99 = [b for _, b in r]
        if base:
            ratio_m = f"{mid(med) / mid([a for a, _ in base]):.2f}x"
            ratio_p = f"{mid(p99) / mid([b for _, b in base]):.2f}x"
        else:
            ratio_m = ratio_p = "–"
        line = f"| {name} | {span(med)} | {span(p99)} | {ratio_m} | {ratio_p} |"
        if with_gbit:
            line += f" {gbit[name]:.1f} |" if name in gbit else " – |"
        print(line)
    print()
print(f"side by side on loopback, {datetime.date.today()}, {count} sequential connections per round")
print()
table("Tunnel (connect, one byte each way, close):",
      ["direct", "outpost", "rathole-tcp", "rathole-tls"], "rathole-tcp", True)
table("Device port (connect, TLS with an agent certificate, Hello and HelloAck, close):",
      ["device-direct", "device-outpost", "device-rathole-tcp", "device-rathole-tls"],
      "device-direct", False)
EOF
