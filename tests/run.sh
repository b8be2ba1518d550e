#!/usr/bin/env bash
# The test command (the README's, and what CI runs): installs what the tests
# use, builds, runs every test (unit, real-socket, and namespace end-to-end
# tests as root), then builds the .deb, installs it and checks it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
cargo build --release --workspace
cargo test --release --workspace
bash tests/package.sh
