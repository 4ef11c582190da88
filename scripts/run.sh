#!/usr/bin/env bash
# Tally's main job: a local 3-node cluster, each shard a Raft group of 3 replicas, under a mixed
# transfer load (half of the transfers cross-shard) with the leader of shard 0 killed in the middle
# and restarted 5 s later; the clients follow the new leader. Prints the load generator's report
# (with the leader changes it saw) and end-of-run checks (exit code 1 if a check fails), and writes
# its files and chart.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked -p tally
target_dir="${CARGO_TARGET_DIR:-target}"
"$target_dir/release/tally" loadgen --nodes 3 --replicas 3 --accounts 20000 --clients 64 \
    --duration 20 --cross-shard 0.5 --fault kill:leader-of=0,at=10s,for=5s --out "$target_dir/loadgen"
