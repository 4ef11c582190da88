#!/usr/bin/env bash
# Tally's main job: a local 3-node cluster under a mixed transfer load (half of the transfers
# cross-shard) with node 2 killed in the middle and restarted; prints the load generator's report
# and end-of-run checks (exit code 1 if a check fails), and writes its files and chart.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked -p tally
target_dir="${CARGO_TARGET_DIR:-target}"
"$target_dir/release/tally" loadgen --nodes 3 --accounts 20000 --clients 64 --duration 20 \
    --cross-shard 0.5 --fault kill:node=2,at=8s,for=3s --out "$target_dir/loadgen"
