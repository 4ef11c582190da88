//! Shared helpers for Tally's criterion benchmarks (the benchmarks live in `benches/`).
