#!/usr/bin/env bash
# tunbench vs iperf3 on the same path: two network namespaces joined by a veth pair
# (198.18.0.1/24 <-> 198.18.0.2/24). Runs 1-stream TCP, 4-stream TCP and fixed-rate
# UDP with both tools, alternating them, REPS times each, and prints the median
# receiver-side throughput of each tool and the ratio tunbench/iperf3.
#
# Usage (as root, after `cargo build --release -p tunbench`):
#   tests/bench/tunbench_vs_iperf3.sh            # REPS=5 TIME=5 OMIT=1 UDP_RATE=1G
#   REPS=7 TIME=10 tests/bench/tunbench_vs_iperf3.sh
#   LIMIT=3gbit CASES="tcp-1 tcp-4" tests/bench/tunbench_vs_iperf3.sh
# LIMIT puts a tbf rate limit on the client's veth egress, so that the path (not the
# tools' CPU use) is the bottleneck: then both tools must read the same rate.
# Needs: ip (iproute2), iperf3, python3. A benchmark, not a test: it prints numbers.
set -euo pipefail

REPS=${REPS:-5}
TIME=${TIME:-5}
OMIT=${OMIT:-1}
UDP_RATE=${UDP_RATE:-1G}
UDP_SIZE=${UDP_SIZE:-1400}
LIMIT=${LIMIT:-}
RUN_CASES=${CASES:-tcp-1 tcp-4 udp}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TB=${TUNBENCH:-$ROOT/target/release/tunbench}
IPERF3=${IPERF3:-/usr/bin/iperf3}
PFX="tbv$$-"
NA="${PFX}a"
NB="${PFX}b"
WORK=$(mktemp -d)
PIDS=()

cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    ip netns del "$NA" 2>/dev/null || true
    ip netns del "$NB" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces)" >&2; exit 1; }
[ -x "$TB" ] || { echo "no $TB: run cargo build --release -p tunbench" >&2; exit 1; }
[ -x "$IPERF3" ] || { echo "no iperf3 at $IPERF3" >&2; exit 1; }

ip netns add "$NA"
ip netns add "$NB"
ip link add ve0 netns "$NA" type veth peer name ve0 netns "$NB"
ip -n "$NA" addr add 198.18.0.1/24 dev ve0
ip -n "$NB" addr add 198.18.0.2/24 dev ve0
for ns in "$NA" "$NB"; do
    ip -n "$ns" link set lo up
    ip -n "$ns" link set ve0 up
done

if [ -n "$LIMIT" ]; then
    ip netns exec "$NA" tc qdisc add dev ve0 root tbf rate "$LIMIT" burst 1mb latency 20ms
fi

ip netns exec "$NB" "$IPERF3" -s -p 5201 >/dev/null 2>&1 &
PIDS+=($!)
ip netns exec "$NB" "$TB" server -p 5301 >/dev/null 2>&1 &
PIDS+=($!)
sleep 0.5

# Receiver-side bit/s, sender-side bit/s, loss from bytes (iperf3's lost_percent is
# wrong with -O: it can exceed 100%) from one JSON result.
parse() { # tool file
    python3 - "$1" "$2" <<'PY'
import json, sys
tool, path = sys.argv[1], sys.argv[2]
d = json.load(open(path))
if tool == "iperf3":
    e = d["end"]
    rx, tx = e["sum_received"], e["sum_sent"]
    loss = 1 - rx["bytes"] / tx["bytes"] if tx["bytes"] else 0
    print(rx["bits_per_second"], tx["bits_per_second"], loss * 100)
else:
    x = d["directions"][0]
    sb = x.get("sender_bits_per_second") or 0
    loss = (x.get("udp") or {}).get("loss_percent", 0.0)
    print(x["bits_per_second"], sb, loss)
PY
}

run_iperf3() { # out args...
    local out=$1; shift
    ip netns exec "$NA" "$IPERF3" -c 198.18.0.2 -p 5201 -t "$TIME" -O "$OMIT" -J "$@" >"$out"
}
run_tunbench() { # out args...
    local out=$1; shift
    ip netns exec "$NA" "$TB" client 198.18.0.2 -p 5301 -t "$TIME" -O "$OMIT" --json "$@" >"$out"
}

median() { python3 -c 'import sys,statistics as s; v=[float(x) for x in sys.argv[1:]]; print(s.median(v))' "$@"; }

declare -A CASES=(
    [tcp-1]="-P 1"
    [tcp-4]="-P 4"
    [udp]="udp"
)
printf "%-6s %14s %14s %8s   %14s %14s   %s\n" case iperf3_rx tunbench_rx ratio iperf3_tx tunbench_tx "loss% iperf3/tunbench"
for c in $RUN_CASES; do
    ia=(); ta=(); isx=(); tsx=(); il=(); tl=()
    for r in $(seq 1 "$REPS"); do
        if [ "$c" = udp ]; then
            iargs=(-u -b "$UDP_RATE" -l "$UDP_SIZE"); targs=(--udp --rate "$UDP_RATE" --size "$UDP_SIZE")
        else
            iargs=(${CASES[$c]}); targs=(${CASES[$c]})
        fi
        # Alternate which tool goes first.
        if [ $((r % 2)) = 1 ]; then order="iperf3 tunbench"; else order="tunbench iperf3"; fi
        for tool in $order; do
            f="$WORK/$c-$r-$tool.json"
            if [ "$tool" = iperf3 ]; then run_iperf3 "$f" "${iargs[@]}"; else run_tunbench "$f" "${targs[@]}"; fi
            read -r rx tx loss < <(parse "$tool" "$f")
            if [ "$tool" = iperf3 ]; then ia+=("$rx"); isx+=("$tx"); il+=("$loss"); else ta+=("$rx"); tsx+=("$tx"); tl+=("$loss"); fi
        done
    done
    mi=$(median "${ia[@]}"); mt=$(median "${ta[@]}")
    mis=$(median "${isx[@]}"); mts=$(median "${tsx[@]}")
    mil=$(median "${il[@]}"); mtl=$(median "${tl[@]}")
    python3 -c "
import sys
c, mi, mt, mis, mts, mil, mtl = sys.argv[1], *map(float, sys.argv[2:])
g = lambda v: f'{v/1e9:.3f} Gbit/s'
print(f'{c:<6} {g(mi):>14} {g(mt):>14} {mt/mi:8.3f}   {g(mis):>14} {g(mts):>14}   {mil:.2f}/{mtl:.2f}')
" "$c" "$mi" "$mt" "$mis" "$mts" "$mil" "$mtl"
done
echo "(medians of $REPS runs, ${TIME}s measured after ${OMIT}s warm-up; rx = receiver goodput, tx = sender rate${LIMIT:+; path limited by tbf $LIMIT})"
