//! `tally`: the command line of a Tally node, its cluster tooling and its client.

fn main() -> std::process::ExitCode {
    tally::main()
}
