#!/usr/bin/env bash
# Regenerates the measured parts of the docs from a sweep run on the current
# code (one command; run as root, about 3 minutes):
#   - docs/figures/sweep-docs.md and .html: the full report of
#     profiles/sweep-docs.yaml (Markdown and the self-contained HTML page);
#   - docs/figures/sweep-docs-tuned.yaml: what `tunbench tune` picks from it;
#   - the generated blocks of docs/tuning.md (`<!-- tunbench:NAME -->`):
#     refilled in place, the prose around them is kept.
# Secrets that a failed baseline's command line could carry (ESP keys,
# private keys) are masked by the report; this script also refuses to leave
# anything key-shaped in the docs. Usage: sudo tests/bench/regen-docs.sh
# (REGEN_DOCS_DIR=DIR keeps the sweep's results in DIR instead of a
# temporary folder that is removed at the end.)
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --workspace
if [ -n "${REGEN_DOCS_DIR:-}" ]; then
  work=$REGEN_DOCS_DIR
  rm -rf "$work/sweep"
else
  work=$(mktemp -d /tmp/tunbench-docs.XXXXXX)
  trap 'rm -rf "$work"' EXIT
fi
tb=target/release/tunbench
rc=0
"$tb" sweep --profile profiles/sweep-docs.yaml --out "$work/sweep" \
  --tunneld target/release/tunneld \
  --tune --max-p99-ms 1000 --max-cores 4 || rc=$?
# 2: some cells failed (the report lists them); anything else: no results.
if [ "$rc" -ne 0 ] && [ "$rc" -ne 2 ]; then
  echo "regen-docs: the sweep failed (exit $rc)" >&2
  exit "$rc"
fi
mkdir -p docs/figures
"$tb" report "$work/sweep" --format md --out docs/figures/sweep-docs.md
"$tb" report "$work/sweep" --format html --out docs/figures/sweep-docs.html
cp "$work/sweep/tuned.yaml" docs/figures/sweep-docs-tuned.yaml
"$tb" report "$work/sweep" --fill docs/tuning.md
if grep -EnH '0x[0-9a-fA-F]{32}|PRIVATE KEY' \
    docs/figures/sweep-docs.* docs/tuning.md; then
  echo "regen-docs: something key-shaped reached the docs (above)" >&2
  exit 1
fi
echo "regen-docs: docs/tuning.md and docs/figures/ regenerated"
