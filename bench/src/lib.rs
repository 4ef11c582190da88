//! Shared helpers for Tally's criterion benchmarks (the benchmarks live in `benches/`).

/// A fresh directory for a benchmark's files, under `TALLY_BENCH_DIR` when set (it must be on the
/// disk being measured), else under the system temp directory. Deleted when dropped.
pub fn bench_directory() -> tempfile::TempDir {
    match std::env::var_os("TALLY_BENCH_DIR") {
        Some(directory) => {
            std::fs::create_dir_all(&directory).expect("create TALLY_BENCH_DIR");
            tempfile::tempdir_in(directory).expect("temp dir")
        }
        None => tempfile::tempdir().expect("temp dir"),
    }
}
