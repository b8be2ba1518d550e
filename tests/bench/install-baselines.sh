#!/usr/bin/env bash
# Installs the comparison tunnels `tunbench lab` can run beside tunneld
# (Debian packages). Idempotent: installs only what is missing.
#   - IPsec baseline: strongSwan IKEv2 with kernel-libipsec (userspace ESP;
#     openssl/gcm/aesni/curve25519 plugins come from libstrongswan-*-plugins),
#     used where the kernel has no ESP (kernel ESP needs no package: ip xfrm).
#   - wireguard-go + wireguard-tools (`wg`).
#   - iputils-ping (emulated RTT check), iproute2 (ip, tc), procps.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
pkgs=(iproute2 iputils-ping procps
      strongswan-charon strongswan-swanctl libcharon-extra-plugins
      libstrongswan-standard-plugins libstrongswan-extra-plugins
      wireguard-go wireguard-tools)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-baselines: all present"
  exit 0
fi
echo "install-baselines: installing ${missing[*]}"
apt-get install -y --no-install-recommends "${missing[@]}" \
  || { apt-get update && apt-get install -y --no-install-recommends "${missing[@]}"; }
# The charon-systemd / ipsec units must not hold the host's /run/charon.*:
# tunbench runs its own charon per namespace. Debian does not start charon
# from strongswan-charon alone (no init script without strongswan-starter).
