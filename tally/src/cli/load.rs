//! `tally loadgen` and `tally hist`: the load generator, and comparing its latency files.

use clap::Subcommand;

use super::{Exit, Failure};

#[derive(Debug, Subcommand)]
pub(super) enum HistCommand {
    /// Compare percentile distributions (.hgrm files, e.g. two loadgen runs): prints percentiles
    /// side by side with ratios to the first file, and with --out draws them in one chart.
    Compare(loadgen::hist::CompareArgs),
}

/// `tally hist compare`: prints the table.
pub(super) fn hist_compare(args: &loadgen::hist::CompareArgs) -> Result<Exit, Failure> {
    match loadgen::hist::compare(args) {
        Ok(table) => {
            print!("{table}");
            Ok(Exit::Success)
        }
        Err(error) => Err(Failure::error(format!("{error:#}"))),
    }
}

/// `tally loadgen`: exits 1 when a check fails at the end of the run.
pub(super) fn loadgen(args: loadgen::LoadgenArgs) -> Result<Exit, Failure> {
    match loadgen::main(args) {
        Ok(true) => Ok(Exit::Success),
        Ok(false) => Err(Failure::error(
            "the end-of-run checks failed (see the report)",
        )),
        Err(error) => Err(Failure::error(format!("{error:#}"))),
    }
}
