//! Tally's load generator: throughput and tail latency of a cluster under fault injection.
