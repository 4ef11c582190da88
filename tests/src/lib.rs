//! Multi-process crash-restart durability tests of a real Tally cluster (the tests live in `tests/`).
