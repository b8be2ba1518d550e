#!/usr/bin/env bash
# Builds the .deb from the release build (cargo-deb), installs it with dpkg,
# and checks the installed programs, unit and example config; purges it
# again on exit (also on failure). Run after `cargo build --release --workspace`.
# Prints "package: N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

if [ "$(id -u)" != 0 ]; then
  if [ "${CI:-}" = true ]; then echo "package: CI=true and not root" >&2; exit 1; fi
  echo "package: SKIPPED (needs root to install with dpkg)"; exit 0
fi
# Never replace a tunneld package this script did not install.
if dpkg -s tunneld >/dev/null 2>&1 && [ ! -e /var/lib/tunneld-package-test ]; then
  echo "package: a tunneld package is already installed here; not touching it" >&2
  exit 1
fi
command -v cargo-deb >/dev/null 2>&1 || cargo install --locked cargo-deb

cargo deb -p tunneld --no-build --strip --fast
deb=$(ls -t target/debian/tunneld_*_amd64.deb | head -n 1)
tmp=$(mktemp -d)
cleanup() {
  dpkg -P tunneld >/dev/null 2>&1 || true
  rm -f /var/lib/tunneld-package-test
  rm -rf "$tmp"
}
trap cleanup EXIT
touch /var/lib/tunneld-package-test
dpkg -i "$deb"

passed=0 failed=0
check() { # NAME COMMAND...: runs it, counts the result
  local name=$1; shift
  if out=$("$@" 2>&1); then
    passed=$((passed + 1)); echo "ok      $name"
  else
    failed=$((failed + 1)); echo "FAILED  $name"; echo "$out" | sed 's/^/        /'
  fi
}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
check "tunneld --version is $version" sh -c "/usr/bin/tunneld --version | grep -qx 'tunneld $version'"
check "tunbench --version" /usr/bin/tunbench --version
check "unit installed" test -f /lib/systemd/system/tunneld@.service
check "unit verifies" sh -c "out=\$(systemd-analyze verify tunneld@ci.service 2>&1); echo \"\$out\"; [ -z \"\$out\" ]"
check "/etc/tunneld created" test -d /etc/tunneld
cp /usr/share/doc/tunneld/examples/tunnel-example.yaml "$tmp/"
(umask 077; /usr/bin/tunneld genkey > "$tmp/gw-a.key")
check "tunneld check on the installed example" /usr/bin/tunneld check --config "$tmp/tunnel-example.yaml"
check "tunneld init, then check" sh -c "/usr/bin/tunneld init ci --address 198.19.0.1/24 --dir '$tmp/etc' >/dev/null && /usr/bin/tunneld check --config '$tmp/etc/ci.yaml'"
check "docs installed" test -f /usr/share/doc/tunneld/quickstart.md
dpkg -r tunneld >/dev/null
check "removed cleanly" sh -c "! test -e /usr/bin/tunneld && ! test -e /lib/systemd/system/tunneld@.service"
echo "package: $passed passed, $failed failed"
[ "$failed" = 0 ]
