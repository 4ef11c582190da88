#!/usr/bin/env bash
# Every check CI runs: set-up, formatting, lints, and all tests. Slow suites (soaks) are opt-in,
# see README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --all-targets --locked
