//! `tally`: the command line of a Tally node, its cluster tooling and its client.

/// mimalloc instead of glibc's malloc: the request and apply paths allocate many small, short-
/// lived buffers across threads, where glibc's arenas spend a tenth of a node's CPU
/// (`_int_malloc`, `unlink_chunk`, `malloc_consolidate`). Measured in docs/benchmarks.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tally::main()
}
