#!/usr/bin/env bash
# Soak: a tunneld pair in two network namespaces (198.18.0.1 <-> 198.18.0.2
# underlay, 198.19.0.1 <-> 198.19.0.2 inside the tunnel) under continuous
# UDP load from `tunbench client` (gw-a) to `tunbench server` (gw-b), with
# rekeys every REKEY, gw-b's tunneld restarted every RESTART_EVERY and
# gw-a's config reloaded (SIGHUP, keepalive toggled 5s/6s) every
# RELOAD_EVERY when this tunneld has a `reload` command. Every SAMPLE it
# records, for gw-a's tunneld (never restarted) and the tunbench server,
# RSS, open descriptors, handshakes and drops, into a CSV; at the end a
# summary. Fails (exit 1) when gw-a's RSS grew more than MAX_GROWTH percent
# from the first sample after WARMUP to the end (median of the last three
# samples), when its descriptor count grew, or when the tunnel is down at
# the end.
#
# Usage (as root, after `cargo build --release --workspace`):
#   tests/bench/soak.sh                       # 30 min
#   DURATION=120 tests/bench/soak.sh          # what CI runs
#   DURATION=3600 RATE=200M OUT=/tmp/soak tests/bench/soak.sh
# Knobs (seconds unless stated): DURATION=1800 SAMPLE=5 WARMUP=30 REKEY=5s
# RESTART_EVERY=300 (CI: a third of the run) RELOAD_EVERY=20 RATE=50M
# (UDP, tunbench units) MAX_GROWTH=10 (percent) OUT=<dir> (kept; default a
# fresh directory under /tmp).
# Needs: ip (iproute2), ping, awk. Addresses: 198.18.0.0/15 only, inside
# namespaces this script creates and always deletes.
set -euo pipefail

DURATION=${DURATION:-1800}
SAMPLE=${SAMPLE:-5}
WARMUP=${WARMUP:-30}
REKEY=${REKEY:-5s}
RELOAD_EVERY=${RELOAD_EVERY:-20}
RATE=${RATE:-50M}
MAX_GROWTH=${MAX_GROWTH:-10}
if [ "$DURATION" -le 600 ]; then
  RESTART_EVERY=${RESTART_EVERY:-$((DURATION / 3))}
else
  RESTART_EVERY=${RESTART_EVERY:-300}
fi
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TUNNELD=${TUNNELD:-$ROOT/target/release/tunneld}
TUNBENCH=${TUNBENCH:-$ROOT/target/release/tunbench}
OUT=${OUT:-$(mktemp -d /tmp/soak.XXXXXX)}
mkdir -p "$OUT"
PFX="tbsoak$$"
NA="${PFX}a"
NB="${PFX}b"
PIDS=()

for t in "$TUNNELD" "$TUNBENCH"; do
  [ -x "$t" ] || { echo "soak: $t missing: cargo build --release --workspace" >&2; exit 2; }
done
[ "$(id -u)" -eq 0 ] || { echo "soak: needs root (network namespaces)" >&2; exit 2; }

cleanup() {
  set +e
  # Only the processes this script started, by PID (the load loop's
  # current client first).
  if [ -n "${PID_LOAD:-}" ]; then
    for c in $(cat /proc/"$PID_LOAD"/task/*/children 2>/dev/null); do kill "$c" 2>/dev/null; done
  fi
  for p in "${PIDS[@]}" ${PID_A:-} ${PID_B:-} ${PID_SRV:-} ${PID_LOAD:-}; do
    kill "$p" 2>/dev/null
  done
  sleep 0.5
  for p in "${PIDS[@]}" ${PID_A:-} ${PID_B:-} ${PID_SRV:-} ${PID_LOAD:-}; do
    kill -9 "$p" 2>/dev/null
  done
  ip netns del "$NA" 2>/dev/null
  ip netns del "$NB" 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ip netns add "$NA"
ip netns add "$NB"
ip link add "${PFX}x" netns "$NA" type veth peer name "${PFX}y" netns "$NB"
ip -n "$NA" addr add 198.18.0.1/24 dev "${PFX}x"
ip -n "$NB" addr add 198.18.0.2/24 dev "${PFX}y"
for n in "$NA" "$NB"; do
  ip -n "$n" link set lo up
done
ip -n "$NA" link set "${PFX}x" up
ip -n "$NB" link set "${PFX}y" up

umask 077
"$TUNNELD" genkey >"$OUT/a.key"
"$TUNNELD" genkey >"$OUT/b.key"
PUB_A=$("$TUNNELD" pubkey <"$OUT/a.key")
PUB_B=$("$TUNNELD" pubkey <"$OUT/b.key")
umask 022

# config SIDE KEEPALIVE
config() {
  local me=$1 ka=$2 peer ip pip pub
  if [ "$me" = a ]; then peer=b ip=1 pip=2 pub=$PUB_B; else peer=a ip=2 pip=1 pub=$PUB_A; fi
  cat <<EOF
kind: tunnel
interface:
  name: ${PFX}t$me
  addresses: [198.19.0.$ip/24]
  mtu: 1420
listen: 198.18.0.$ip:51820
private_key_file: $OUT/$me.key
cipher: aes-256-gcm
control_socket: $OUT/$me.sock
rekey:
  after_time: $REKEY
  after_bytes: 64G
peers:
  - name: $peer
    public_key: $pub
    endpoint: 198.18.0.$pip:51820
    allowed_prefixes: [198.19.0.$pip/32]
    keepalive: $ka
EOF
}
config a 5s >"$OUT/a.yaml"
config b 5s >"$OUT/b.yaml"

start_tunneld() { # SIDE NS; sets PID_<SIDE>
  ip netns exec "$2" "$TUNNELD" run --config "$OUT/$1.yaml" >>"$OUT/tunneld-$1.log" 2>&1 &
  if [ "$1" = a ]; then PID_A=$!; else PID_B=$!; fi
}
wait_status() { # SIDE
  for _ in $(seq 100); do
    "$TUNNELD" status --config "$OUT/$1.yaml" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "soak: tunneld $1 does not answer status" >&2
  tail -20 "$OUT/tunneld-$1.log" >&2
  return 1
}
start_tunneld a "$NA"
start_tunneld b "$NB"
wait_status a
wait_status b
up=0
for _ in $(seq 100); do
  if ip netns exec "$NA" ping -c1 -W1 198.19.0.2 >/dev/null 2>&1; then up=1; break; fi
  sleep 0.2
done
[ "$up" = 1 ] || { echo "soak: tunnel never came up" >&2; tail "$OUT"/tunneld-*.log >&2; exit 1; }

ip netns exec "$NB" "$TUNBENCH" server --bind 0.0.0.0 --max-duration 1h >"$OUT/server.log" 2>&1 &
PID_SRV=$!
sleep 0.5

# Load: back-to-back 10 s UDP tests; each result line says ok or failed.
(
  while :; do
    if ip netns exec "$NA" "$TUNBENCH" client 198.19.0.2 --udp --rate "$RATE" -t 10s \
      --connect-timeout 3s >/dev/null 2>>"$OUT/client.err"; then
      echo ok
    else
      echo failed
      sleep 1
    fi
  done >"$OUT/client.results"
) &
PID_LOAD=$!

has_reload=0
"$TUNNELD" --help 2>/dev/null | grep -qE '^\s+reload' && has_reload=1

rss() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
fds() { ls "/proc/$1/fd" 2>/dev/null | wc -l; }
# status counter NAME of SIDE (0 if absent)
counter() {
  "$TUNNELD" status --config "$OUT/$1.yaml" 2>/dev/null \
    | grep -o "\"$2\": *[0-9]*" | head -1 | awk -F: '{print $2 + 0}' || true
}
drops() { # sum of every drop_* counter of SIDE
  "$TUNNELD" status --config "$OUT/$1.yaml" 2>/dev/null \
    | grep -o '"drop_[a-z_]*": *[0-9]*' | awk -F: '{s += $2} END {print s + 0}'
}

CSV="$OUT/soak.csv"
echo "t_s,tunneld_a_rss_kib,tunneld_a_fds,server_rss_kib,server_fds,handshakes_a,tx_packets_a,rx_packets_a,drops_a,restarts_b,reloads_a,tests_ok,tests_failed" >"$CSV"
start=$(date +%s)
restarts=0
reloads=0
next_restart=$RESTART_EVERY
next_reload=$RELOAD_EVERY
ka=5s
echo "soak: ${DURATION}s, rekey every $REKEY, gw-b restart every ${RESTART_EVERY}s, reload every ${RELOAD_EVERY}s (supported: $has_reload), UDP $RATE; output in $OUT"
while :; do
  now=$(( $(date +%s) - start ))
  [ "$now" -ge "$DURATION" ] && break
  if [ "$RESTART_EVERY" -gt 0 ] && [ "$now" -ge "$next_restart" ]; then
    kill "$PID_B" 2>/dev/null || true
    wait "$PID_B" 2>/dev/null || true
    start_tunneld b "$NB"
    wait_status b
    restarts=$((restarts + 1))
    next_restart=$((next_restart + RESTART_EVERY))
  fi
  if [ "$has_reload" = 1 ] && [ "$RELOAD_EVERY" -gt 0 ] && [ "$now" -ge "$next_reload" ]; then
    if [ "$ka" = 5s ]; then ka=6s; else ka=5s; fi
    config a "$ka" >"$OUT/a.yaml.new" && mv "$OUT/a.yaml.new" "$OUT/a.yaml"
    kill -HUP "$PID_A"
    reloads=$((reloads + 1))
    next_reload=$((next_reload + RELOAD_EVERY))
  fi
  ok=$(grep -c '^ok' "$OUT/client.results" 2>/dev/null || true)
  bad=$(grep -c '^failed' "$OUT/client.results" 2>/dev/null || true)
  echo "$now,$(rss "$PID_A"),$(fds "$PID_A"),$(rss "$PID_SRV"),$(fds "$PID_SRV"),$(counter a handshakes),$(counter a tx_packets),$(counter a rx_packets),$(drops a),$restarts,$reloads,${ok:-0},${bad:-0}" >>"$CSV"
  kill -0 "$PID_A" 2>/dev/null || { echo "soak: tunneld a died" >&2; tail -20 "$OUT/tunneld-a.log" >&2; exit 1; }
  kill -0 "$PID_SRV" 2>/dev/null || { echo "soak: tunbench server died" >&2; tail -20 "$OUT/server.log" >&2; exit 1; }
  sleep "$SAMPLE"
done
for c in $(cat /proc/"$PID_LOAD"/task/*/children 2>/dev/null); do kill "$c" 2>/dev/null || true; done
kill "$PID_LOAD" 2>/dev/null || true

# The tunnel is up at the end (a restart may have just happened: allow 10 s).
up=0
for _ in $(seq 50); do
  if ip netns exec "$NA" ping -c1 -W1 198.19.0.2 >/dev/null 2>&1; then up=1; break; fi
  sleep 0.2
done

awk -F, -v warm="$WARMUP" -v max="$MAX_GROWTH" -v up="$up" -v out="$OUT/summary.txt" '
  NR == 1 { next }
  { n++; t[n] = $1; rss[n] = $2; fd[n] = $3; srss[n] = $4; hs = $6; dr = $9; rs = $10; rl = $11; ok = $12; bad = $13
    if (base == "" && $1 >= warm) { base = $2; fbase = $3; sbase = $4 }
    if ($2 > peak) peak = $2 }
  END {
    if (n < 3 || base == "") { print "soak: too few samples after the warm-up" > "/dev/stderr"; exit 1 }
    # Median of the last three samples.
    a = rss[n]; b = rss[n-1]; c = rss[n-2]
    fin = (a > b) ? ((b > c) ? b : ((a > c) ? c : a)) : ((a > c) ? a : ((b > c) ? c : b))
    growth = (fin - base) * 100.0 / base
    s = sprintf("soak summary (%d samples over %d s)\n", n, t[n])
    s = s sprintf("  tunneld a RSS: %d KiB after warm-up, %d KiB at the end (median of last 3), peak %d KiB: %+.1f%% (limit %d%%)\n", base, fin, peak, growth, max)
    s = s sprintf("  tunneld a descriptors: %d after warm-up, %d at the end\n", fbase, fd[n])
    s = s sprintf("  tunbench server RSS: %d KiB after warm-up, %d KiB at the end\n", sbase, srss[n])
    s = s sprintf("  handshakes (a): %d; drops (a, all drop_* counters): %d\n", hs, dr)
    s = s sprintf("  gw-b restarts: %d; gw-a reloads: %d; load tests ok/failed: %d/%d\n", rs, rl, ok, bad)
    s = s sprintf("  tunnel up at the end: %s\n", up ? "yes" : "NO")
    printf "%s", s; printf "%s", s > out
    fail = 0
    if (growth > max) { print "soak: FAIL: RSS grew more than " max "%" > "/dev/stderr"; fail = 1 }
    if (fd[n] > fbase) { print "soak: FAIL: descriptor count grew" > "/dev/stderr"; fail = 1 }
    if (!up) { print "soak: FAIL: tunnel down at the end" > "/dev/stderr"; fail = 1 }
    if (ok == 0) { print "soak: FAIL: no load test completed" > "/dev/stderr"; fail = 1 }
    exit fail
  }' "$CSV"
echo "soak: CSV $CSV"
