#!/usr/bin/env bash
# Every check CI runs: set-up, formatting, lints, and all tests. Slow suites (soaks) are opt-in,
# see README.md. Ends with one line totalling every test binary's results.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --all-targets --locked 2>&1 | tee "$log"
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "tally: %d passed, %d failed\n", passed, failed }' "$log"
