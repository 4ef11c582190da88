//! A Tally node: participant for its shard, coordinator for the transfers it receives.
