//! The `tally` binary built with the `failpoints` feature, for the multi-process tests: the same
//! code, plus crash points armed by `TALLY_FAILPOINTS`.

fn main() -> std::process::ExitCode {
    tally::main()
}
