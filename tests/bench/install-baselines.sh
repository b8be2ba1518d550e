#!/usr/bin/env bash
# Installs the comparison tunnels `tunbench lab` can run beside tunneld.
# Idempotent: installs only what is missing.
#   - IPsec baseline: strongSwan IKEv2 with kernel-libipsec (userspace ESP;
#     openssl/gcm/aesni/curve25519 plugins come from libstrongswan-*-plugins),
#     used where the kernel has no ESP (kernel ESP needs no package: ip xfrm).
#   - wireguard-go + wireguard-tools (`wg`, also configures boringtun).
#   - openvpn (2.6 on Debian 12) + openssl (the lab makes a throwaway CA).
#   - boringtun-cli (Cloudflare's userspace WireGuard) and gotatun (Mullvad's
#     boringtun fork with UDP GRO and batching; crate gotatun-cli, pinned,
#     needs Rust >= 1.95) from crates.io, built with
#     `cargo install --locked --root /usr/local` so that they land in
#     /usr/local/bin (on every PATH); each is skipped when its binary is
#     already there (each build takes about 3 minutes on 2 cores).
#     Set TUNBENCH_SKIP_BORINGTUN=1 / TUNBENCH_SKIP_GOTATUN=1 to skip one.
#     A gotatun build that fails is reported and left out (the lab then
#     reports its row as not installed); boringtun's failure stops the script.
#   - iputils-ping (emulated RTT check), iproute2 (ip, tc), procps.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
pkgs=(iproute2 iputils-ping procps
      strongswan-charon strongswan-swanctl libcharon-extra-plugins
      libstrongswan-standard-plugins libstrongswan-extra-plugins
      wireguard-go wireguard-tools
      openvpn openssl)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-baselines: all Debian packages present"
else
  echo "install-baselines: installing ${missing[*]}"
  apt-get install -y --no-install-recommends "${missing[@]}" \
    || { apt-get update && apt-get install -y --no-install-recommends "${missing[@]}"; }
fi
# Debian's openvpn package ships systemd units only for configs placed in
# /etc/openvpn; tunbench starts its own openvpn per namespace.
# The charon-systemd / ipsec units must not hold the host's /run/charon.*:
# tunbench runs its own charon per namespace. Debian does not start charon
# from strongswan-charon alone (no init script without strongswan-starter).

# cargo_tool CRATE VERSION BIN SKIP_VAR FATAL: installs crate CRATE (at
# VERSION, or the newest when empty) unless BIN is already installed.
cargo_tool() {
  local crate=$1 version=$2 bin=$3 skip=$4 fatal=$5
  if [ "${!skip:-0}" = 1 ]; then
    echo "install-baselines: $bin skipped ($skip=1)"
  elif command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/local/bin/$bin" ] \
       || [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/$bin" ]; then
    echo "install-baselines: $bin present"
  elif ! command -v cargo >/dev/null 2>&1; then
    echo "install-baselines: no cargo, $bin not installed (the lab reports the row as not installed)" >&2
  else
    echo "install-baselines: building $crate${version:+ $version} (cargo install, a few minutes)"
    local start
    start=$(date +%s)
    if cargo install --locked --root /usr/local ${version:+--version "$version"} "$crate"; then
      echo "install-baselines: $bin installed in $(( $(date +%s) - start )) s"
    elif [ "$fatal" = fatal ]; then
      return 1
    else
      echo "install-baselines: $crate did not build after $(( $(date +%s) - start )) s" \
           "(rustc $(rustc --version 2>/dev/null | cut -d' ' -f2); see above); the lab reports $bin as not installed" >&2
    fi
  fi
}

cargo_tool boringtun-cli "" boringtun-cli TUNBENCH_SKIP_BORINGTUN fatal
# 0.10.2: the release measured in docs/measurements/2026-12-04-peers.md.
cargo_tool gotatun-cli 0.10.2 gotatun TUNBENCH_SKIP_GOTATUN warn
