#!/usr/bin/env bash
# outpost's multicast distribution against UFTP on one bridge of network namespaces.
#
# One sender namespace and RECEIVERS receiver namespaces on an isolated bridge (veth pairs,
# no route anywhere else). Random loss of incoming multicast in every receiver namespace
# with an nftables `numgen random` rule. For each loss in LOSSES, ROUNDS interleaved runs:
# UFTP (`uftp -R -1` to `uftpd` in every receiver) then the `multicast` example with no
# --fetch-from (repair by NAK only) at each rate of RATES. Every received file is checked
# by SHA-256; a run with a missing or different file counts as failed. Prints one table:
# wall time per run (sender start to the last receiver done), goodput (file size / median
# wall), bytes sent per file byte (outpost's repair overhead), the most datagrams the
# receivers' sockets dropped in one run (all receivers together), and the ratio against UFTP.
#
#   crates/multicast/scripts/vs_uftp.sh
#   MODE=reliability crates/multicast/scripts/vs_uftp.sh   # outpost only: 30 runs at 5%,
#                                                           # 10 at 20%, every file checked
#   MODE=profile LOSSES=5 crates/multicast/scripts/vs_uftp.sh  # one run of each under perf
#
# Environment: RECEIVERS (2), SIZE_MIB (256), LOSSES ("0 1 5"), ROUNDS (3),
# RATES ("8000 3000", Mbit/s ceilings), BIN (target/release/examples/multicast), PERF_KEEP
# (a directory to keep MODE=profile's recordings in).
# Run by hand as root; not part of CI. Requires ip, nft, uftp/uftpd (Debian: uftp,
# nftables; perf, from linux-perf, for MODE=profile) and `cargo build --release --example multicast`.
set -euo pipefail

N=${RECEIVERS:-2}
SIZE=${SIZE_MIB:-256}
LOSSES=${LOSSES:-"0 1 5"}
ROUNDS=${ROUNDS:-3}
RATES=${RATES:-"8000 3000"}
MODE=${MODE:-compare}
BIN=${BIN:-target/release/examples/multicast}
PFX=ovu$$
BR=${PFX}br
WORK=$(mktemp -d)
GROUP=239.255.91.1:15001

cleanup() {
    set +e
    pkill -f "uftpd .*${PFX}" 2>/dev/null
    for i in $(seq 0 "$N"); do ip netns del "${PFX}n$i" 2>/dev/null; done
    ip link del "$BR" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

for tool in ip nft uftp uftpd; do
    command -v "$tool" > /dev/null || { echo "needs $tool" >&2; exit 1; }
done
[ -x "$BIN" ] || { echo "build first: cargo build --release --example multicast" >&2; exit 1; }

ns() { echo "${PFX}n$1"; }
addr() { echo "10.251.0.$(($1 + 1))"; }

ip link add "$BR" type bridge
ip link set "$BR" up
for i in $(seq 0 "$N"); do
    ip netns add "$(ns "$i")"
    ip link add "${PFX}v$i" type veth peer name eth0 netns "$(ns "$i")"
    ip link set "${PFX}v$i" master "$BR" up
    ip -n "$(ns "$i")" link set lo up
    ip -n "$(ns "$i")" addr add "$(addr "$i")/24" dev eth0
    ip -n "$(ns "$i")" link set eth0 up
    ip -n "$(ns "$i")" route add 224.0.0.0/4 dev eth0
done

# Drops LOSS percent of the multicast packets entering every receiver namespace.
set_loss() {
    for i in $(seq 1 "$N"); do
        ip netns exec "$(ns "$i")" nft delete table inet loss 2> /dev/null || true
        [ "$1" -gt 0 ] || continue
        ip netns exec "$(ns "$i")" nft -f - <<NFT
table inet loss {
    chain input {
        type filter hook input priority 0;
        meta pkttype multicast numgen random mod 100 < $1 drop
    }
}
NFT
    done
}

head -c "$((SIZE * 1048576))" /dev/urandom > "$WORK/update.bin"
WANT=$(sha256sum "$WORK/update.bin" | cut -d' ' -f1)
"$BIN" keygen --out "$WORK/key" > "$WORK/pk.txt"
PK=$(awk '{print $NF}' "$WORK/pk.txt")

# Every receiver's copy in $1/r<i>/update.bin is the file.
all_exact() {
    for i in $(seq 1 "$N"); do
        [ -f "$1/r$i/update.bin" ] || return 1
        [ "$(sha256sum "$1/r$i/update.bin" | cut -d' ' -f1)" = "$WANT" ] || return 1
    done
}

now() { date +%s.%N; }

# One outpost run at rate $1 Mbit/s: prints "wall overhead", returns 1 if a file is wrong.
run_outpost() {
    local dir=$WORK/o.$RANDOM pids=() status=0
    for i in $(seq 1 "$N"); do
        mkdir -p "$dir/r$i"
        ip netns exec "$(ns "$i")" "$BIN" receive --group "$GROUP" --iface "$(addr "$i")" \
            --sender-key "$PK" --out "$dir/r$i" > "$dir/r$i.log" 2>&1 &
        pids+=($!)
    done
    sleep 1
    local start end
    start=$(now)
    ip netns exec "$(ns 0)" "$BIN" send --group "$GROUP" --iface "$(addr 0)" --key "$WORK/key" \
        --rate "$1" --expect "$N" --expect-timeout-ms 120000 "$WORK/update.bin" \
        > "$dir/send.log" 2>&1 || status=1
    for p in "${pids[@]}"; do wait "$p" || status=1; done
    end=$(now)
    all_exact "$dir" || status=1
    grep -q "fetched blocks 0," "$dir"/r*.log || status=1
    local over drops
    over=$(grep -o '([0-9.]*x)' "$dir/send.log" | tr -d '()x' | tail -n 1)
    drops=$(cat "$dir"/r*.log | grep -o 'socket drops [0-9]*' | awk '{ n += $3 } END { print n + 0 }')
    awk "BEGIN { printf \"%.2f %s %s\n\", $end - $start, \"${over:-?}\", \"$drops\" }"
    rm -rf "$dir"
    return "$status"
}

# One UFTP run: prints the wall time, returns 1 if a file is wrong.
run_uftp() {
    local dir=$WORK/u.$RANDOM pids=() status=0
    for i in $(seq 1 "$N"); do
        mkdir -p "$dir/r$i"
        ip netns exec "$(ns "$i")" uftpd -d -q -D "$dir/r$i" -I "$(addr "$i")" \
            -x 0 -P "$WORK/uftpd.$i.pid.${PFX}" > "$dir/r$i.log" 2>&1 &
        pids+=($!)
    done
    sleep 1
    local start end
    start=$(now)
    (cd "$WORK" && ip netns exec "$(ns 0)" uftp -R -1 -I "$(addr 0)" -x 0 update.bin) \
        > "$dir/send.log" 2>&1 || status=1
    end=$(now)
    for p in "${pids[@]}"; do kill "$p" 2> /dev/null || true; wait "$p" 2> /dev/null || true; done
    all_exact "$dir" || status=1
    awk "BEGIN { printf \"%.2f\n\", $end - $start }"
    rm -rf "$dir"
    return "$status"
}

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

if [ "$MODE" = profile ]; then
    # One run of each under a system-wide sampling profile (software clock: the counters are
    # often not available in a VM); prints where the CPU went by program and function.
    set_loss "${LOSSES%% *}"
    for what in outpost uftp; do
        perf record -q -a -e cpu-clock -F 1999 -o "$WORK/$what.perf" -- bash -c \
            "$(declare -f run_outpost run_uftp all_exact now ns addr); $(declare -p N WORK BIN PK WANT GROUP PFX); \
             $( [ $what = outpost ] && echo "run_outpost ${RATES%% *}" || echo run_uftp )" \
            > "$WORK/$what.wall" 2> /dev/null || echo "$what run failed" >&2
        echo "== $what: $(cat "$WORK/$what.wall") (wall s, overhead) =="
        for sort in comm comm,dso comm,symbol; do
            perf report -q -i "$WORK/$what.perf" --sort "$sort" --percent-limit 1 2> /dev/null \
                | sed 's/ *$//' | head -n 30
            echo
        done
        [ -z "${PERF_KEEP:-}" ] || cp "$WORK/$what.perf" "$PERF_KEEP/$what.perf"
    done
    exit 0
fi

if [ "$MODE" = reliability ]; then
    for spec in "5 30" "20 10"; do
        set -- $spec
        set_loss "$1"
        ok=0
        for r in $(seq 1 "$2"); do
            if out=$(run_outpost "${RATES%% *}"); then ok=$((ok + 1)); else echo "loss $1%, run $r FAILED ($out)"; fi
        done
        echo "loss $1%: $ok of $2 runs, every receiver byte-exact, no fetch"
    done
    exit 0
fi

echo "| loss | UFTP wall ($ROUNDS runs) | UFTP MB/s | $(for r in $RATES; do printf 'outpost --rate %s wall | MB/s | bytes/file byte | socket drops | ratio | ' "$r"; done)"
failed=0
for loss in $LOSSES; do
    set_loss "$loss"
    declare -A walls=()
    declare -A overs=()
    declare -A drops=()
    for round in $(seq 1 "$ROUNDS"); do
        if w=$(run_uftp); then walls[uftp]+="$w "; else walls[uftp]+="$w "; failed=$((failed + 1)); echo "UFTP run failed at ${loss}%" >&2; fi
        for r in $RATES; do
            if out=$(run_outpost "$r"); then :; else failed=$((failed + 1)); echo "outpost run failed at ${loss}% (rate $r)" >&2; fi
            read -r w o d <<< "$out"
            walls[$r]+="$w "
            overs[$r]+="$o "
            drops[$r]+="$d "
        done
    done
    range() { echo "$1" | tr ' ' '\n' | grep . | sort -n | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.1f–%.1f s", lo, hi }'; }
    mu=$(echo "${walls[uftp]}" | tr ' ' '\n' | grep . | median)
    line="| ${loss}% | $(range "${walls[uftp]}") | $(awk "BEGIN { printf \"%.0f\", $SIZE * 1.048576 / $mu }") | "
    for r in $RATES; do
        m=$(echo "${walls[$r]}" | tr ' ' '\n' | grep . | median)
        o=$(echo "${overs[$r]}" | tr ' ' '\n' | grep . | sort -n | tail -n 1)
        d=$(echo "${drops[$r]}" | tr ' ' '\n' | grep . | sort -n | tail -n 1)
        line+="$(range "${walls[$r]}") | $(awk "BEGIN { printf \"%.0f\", $SIZE * 1.048576 / $m }") | ≤ $o | ≤ $d | $(awk "BEGIN { printf \"%.2fx\", $mu / $m }") | "
    done
    echo "$line"
    unset walls overs drops
done
echo "($N receivers, $SIZE MiB, ratio = UFTP median wall / outpost median wall: above 1 is faster than UFTP; $failed failed runs)"
[ "$failed" -eq 0 ]
