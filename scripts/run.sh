#!/usr/bin/env bash
# Tally's main job: a local 3-node cluster under a closed-loop cross-shard transfer load, with the
# load generator's report and the end-of-run audit (exit code 1 if the audit fails).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked -p node
target_dir="${CARGO_TARGET_DIR:-target}"
"$target_dir/release/tally" loadgen --nodes 3 --accounts 20000 --clients 64 --duration 20
