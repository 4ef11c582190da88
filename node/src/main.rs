//! `tally`: the command line of a Tally node, its cluster tooling and its client.

fn main() {
    eprintln!("tally: no commands yet (see the node issue)");
    std::process::exit(2);
}
