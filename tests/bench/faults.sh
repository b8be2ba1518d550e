#!/usr/bin/env bash
# The fault matrix at full size: 100 MiB transfers through a tunneld pair
# across the lab's userspace WAN emulator with 5% loss, reordering, a 5 s
# outage and a path-MTU black hole, each checked by SHA-256, with the
# longest stall and the recovery times (outage, black hole) printed per
# case. CI runs the same tests (tests/faults.rs) at 16 MiB.
#
# Usage (as root, after `cargo build --release --workspace`):
#   tests/bench/faults.sh            # MIB=100
#   MIB=50 tests/bench/faults.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
MIB=${MIB:-100}
E2E_FAULT_MIB=$MIB cargo test --release -p e2e --test faults -- \
  --nocapture --test-threads=1 2>&1 \
  | grep -E '^(fault |test |thread .*panicked)|transfer failed'
