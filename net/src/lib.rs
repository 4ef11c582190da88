//! Tally's wire protocol: the binary framing, every message family, and the tokio TCP transport.
