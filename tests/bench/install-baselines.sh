#!/usr/bin/env bash
# Installs the comparison tunnels `tunbench lab` can run beside tunneld.
# Idempotent: installs only what is missing.
#   - IPsec baseline: strongSwan IKEv2 with kernel-libipsec (userspace ESP;
#     openssl/gcm/aesni/curve25519 plugins come from libstrongswan-*-plugins),
#     used where the kernel has no ESP (kernel ESP needs no package: ip xfrm).
#   - wireguard-go + wireguard-tools (`wg`, also configures boringtun).
#   - openvpn (2.6 on Debian 12) + openssl (the lab makes a throwaway CA).
#   - boringtun-cli (Cloudflare's userspace WireGuard) from crates.io, built
#     with `cargo install --locked --root /usr/local` so that it lands in
#     /usr/local/bin (on every PATH); skipped when a boringtun-cli binary is
#     already there (the build takes a few minutes on 2 cores).
#     Set TUNBENCH_SKIP_BORINGTUN=1 to skip it.
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

if [ "${TUNBENCH_SKIP_BORINGTUN:-0}" = 1 ]; then
  echo "install-baselines: boringtun-cli skipped (TUNBENCH_SKIP_BORINGTUN=1)"
elif command -v boringtun-cli >/dev/null 2>&1 || [ -x /usr/local/bin/boringtun-cli ] \
     || [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/boringtun-cli" ]; then
  echo "install-baselines: boringtun-cli present"
elif ! command -v cargo >/dev/null 2>&1; then
  echo "install-baselines: no cargo, boringtun-cli not installed (the lab reports the row as not installed)" >&2
else
  echo "install-baselines: building boringtun-cli (cargo install, a few minutes)"
  start=$(date +%s)
  cargo install --locked --root /usr/local boringtun-cli
  echo "install-baselines: boringtun-cli installed in $(( $(date +%s) - start )) s"
fi
