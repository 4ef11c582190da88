#!/usr/bin/env bash
# Tally's main job. For now: a short run of the WAL benchmark (durable appends with 1, 8 and 64
# appenders next to the raw disk figures), printing its table. The load-generator issue turns this
# into a local cluster under load.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo bench -p bench --bench wal -- --warm-up-time 1 --measurement-time 3
