#!/usr/bin/env bash
# Installs everything the test suite uses on a Debian 12 machine, as root,
# so that no test skips for a missing tool. Idempotent: installs only what
# is missing. Needs a Rust toolchain (rustup) already; the rest comes from
# Debian's packages and crates.io:
#   - iproute2, iputils-ping, procps: namespaces, veths, routes, ping, ps
#   - iperf3: the engine cross-check script
#   - chromium: the sweep report is loaded headless and checked for errors
#   - prometheus (and its promtool): a real server scrapes tunneld's /metrics
#   - bird2: BGP on the gateways and site routers of the HA tests
#   - systemd (systemd-analyze), dpkg-dev: the unit check and the .deb
#   - the comparison tunnels of the lab (tests/bench/install-baselines.sh)
#   - cargo-deb: builds the .deb
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
pkgs=(iproute2 iputils-ping iperf3 procps chromium prometheus bird2 systemd dpkg-dev)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt-get install -y --no-install-recommends "${missing[@]}" \
    || { apt-get update && apt-get install -y --no-install-recommends "${missing[@]}"; }
else
  echo "setup: all Debian packages present"
fi
bash tests/bench/install-baselines.sh
if ! command -v cargo-deb >/dev/null 2>&1; then
  echo "setup: installing cargo-deb (cargo install, about two minutes)"
  cargo install --locked cargo-deb
fi
