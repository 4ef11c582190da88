//! WAL benchmarks: durable appends per second with 1, 8 and 64 concurrent appenders of 128-byte
//! records (threads, and tokio tasks), next to the raw disk figures measured in the same run (4 KiB write + fdatasync over
//! already-written blocks, into a fallocate'd extent, and growing the file).
//!
//! Run: `cargo bench -p bench --bench wal`. Files go to `TALLY_BENCH_DIR` (default: the system
//! temp directory), which must be on the disk being measured. After the criterion output, a
//! markdown table of the figures is printed for docs/benchmarks.md.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bench::bench_directory;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use engine::wal::{RECORD_HEADER_SIZE, Wal, WalOptions, WalStats};

const RECORD_PAYLOAD_BYTES: usize = 128;
const RAW_WRITE_BYTES: usize = 4096;
/// Raw-disk files cycle over this much space, so overwrites stay within written blocks and
/// appends do not grow a file without end.
const RAW_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// One line of the summary table.
struct Figure {
    name: String,
    /// Operations per second of each criterion sample; the table gives their median.
    sample_rates: Vec<f64>,
    extra: String,
}

impl Figure {
    fn per_second(&self) -> f64 {
        median(&mut self.sample_rates.clone())
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn percentile(values: &mut [f64], fraction: f64) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let index = ((values.len() as f64 - 1.0) * fraction).round() as usize;
    values.get(index).copied().unwrap_or(f64::NAN)
}

/// Threads that append-and-wait in lock step with the measuring thread, so that thread start-up
/// stays out of the timings.
struct AppenderPool {
    start: Arc<Barrier>,
    done: Arc<Barrier>,
    work: Vec<mpsc::Sender<Option<u64>>>,
    handles: Vec<JoinHandle<()>>,
}

impl AppenderPool {
    fn new(wal: Arc<Wal>, appenders: usize) -> Self {
        let start = Arc::new(Barrier::new(appenders + 1));
        let done = Arc::new(Barrier::new(appenders + 1));
        let mut work = Vec::new();
        let mut handles = Vec::new();
        for _ in 0..appenders {
            let (sender, receiver) = mpsc::channel::<Option<u64>>();
            let (wal, start, done) = (wal.clone(), start.clone(), done.clone());
            handles.push(std::thread::spawn(move || {
                let payload = [0x5Au8; RECORD_PAYLOAD_BYTES];
                while let Ok(Some(count)) = receiver.recv() {
                    start.wait();
                    for _ in 0..count {
                        wal.append_durable(1, &payload).expect("durable append");
                    }
                    done.wait();
                }
            }));
            work.push(sender);
        }
        Self {
            start,
            done,
            work,
            handles,
        }
    }

    /// Runs `total` appends spread over the pool; returns the wall time.
    fn run(&self, total: u64) -> Duration {
        let appenders = self.work.len() as u64;
        let per_appender = total.div_ceil(appenders);
        for sender in &self.work {
            sender.send(Some(per_appender)).unwrap();
        }
        self.start.wait();
        let began = Instant::now();
        self.done.wait();
        began.elapsed()
    }
}

impl Drop for AppenderPool {
    fn drop(&mut self) {
        for sender in &self.work {
            let _ = sender.send(None);
        }
        for handle in self.handles.drain(..) {
            handle.join().unwrap();
        }
    }
}

/// A new, empty, durable WAL in a fresh benchmark directory (kept as long as the guard lives).
fn open_bench_wal() -> (tempfile::TempDir, Arc<Wal>) {
    let directory = bench_directory();
    let (wal, _) =
        Wal::open_directory(directory.path().join("wal"), WalOptions::default()).expect("open WAL");
    (directory, Arc::new(wal))
}

fn wal_appends(criterion: &mut Criterion, figures: &Mutex<Vec<Figure>>) {
    let mut group = criterion.benchmark_group("wal_durable_append_128B");
    group.throughput(Throughput::Elements(1));
    for appenders in [1usize, 8, 64] {
        let (_directory, wal) = open_bench_wal();
        let pool = AppenderPool::new(wal.clone(), appenders);
        let before = wal.stats();
        let mut sample_rates = Vec::new();
        group.bench_function(BenchmarkId::from_parameter(appenders), |bencher| {
            bencher.iter_custom(|iterations| {
                let time = pool.run(iterations);
                let done = iterations.div_ceil(appenders as u64) * appenders as u64;
                sample_rates.push(done as f64 / time.as_secs_f64());
                // criterion divides by `iterations`; the pool may have done a few more.
                time.mul_f64(iterations as f64 / done as f64)
            });
        });
        drop(pool);
        figures.lock().unwrap().push(append_figure(
            format!("WAL durable append, 128 B records, {appenders} appender(s)"),
            sample_rates,
            before,
            wal.stats(),
        ));
    }
    group.finish();
}

/// The same load from tokio tasks awaiting `Wal::durable` on a two-worker runtime: how the node
/// drives the log, where a wake-up is a task switch rather than a thread context switch.
fn wal_appends_async(criterion: &mut Criterion, figures: &Mutex<Vec<Figure>>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("tokio runtime");
    let mut group = criterion.benchmark_group("wal_durable_append_128B_async_tasks");
    group.throughput(Throughput::Elements(1));
    for appenders in [1usize, 8, 64] {
        let (_directory, wal) = open_bench_wal();
        let before = wal.stats();
        let mut sample_rates = Vec::new();
        group.bench_function(BenchmarkId::from_parameter(appenders), |bencher| {
            bencher.iter_custom(|iterations| {
                let per_task = iterations.div_ceil(appenders as u64);
                let began = Instant::now();
                runtime.block_on(async {
                    let tasks: Vec<_> = (0..appenders)
                        .map(|_| {
                            let wal = wal.clone();
                            tokio::spawn(async move {
                                let payload = [0x5Au8; RECORD_PAYLOAD_BYTES];
                                for _ in 0..per_task {
                                    let lsn = wal.append(1, &payload).expect("append");
                                    wal.durable(lsn).await.expect("durable");
                                }
                            })
                        })
                        .collect();
                    for task in tasks {
                        task.await.expect("appender task");
                    }
                });
                let time = began.elapsed();
                let done = per_task * appenders as u64;
                sample_rates.push(done as f64 / time.as_secs_f64());
                time.mul_f64(iterations as f64 / done as f64)
            });
        });
        figures.lock().unwrap().push(append_figure(
            format!("WAL durable append, 128 B records, {appenders} async task(s)"),
            sample_rates,
            before,
            wal.stats(),
        ));
    }
    group.finish();
}

/// The table line of an append benchmark: median rate, MB/s, and records per fdatasync from the
/// WAL's counters before and after.
fn append_figure(
    name: String,
    sample_rates: Vec<f64>,
    before: WalStats,
    after: WalStats,
) -> Figure {
    let records = after.records_appended - before.records_appended;
    let groups = (after.groups_written - before.groups_written).max(1);
    let bytes_per_second =
        median(&mut sample_rates.clone()) * (RECORD_HEADER_SIZE + RECORD_PAYLOAD_BYTES) as f64;
    Figure {
        name,
        sample_rates,
        extra: format!(
            "{:.1} MB/s, {:.1} records per fdatasync",
            bytes_per_second / 1e6,
            records as f64 / groups as f64
        ),
    }
}

fn create_written_file(path: &std::path::Path) -> File {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    let zeroes = vec![0u8; 1024 * 1024];
    let mut offset = 0;
    while offset < RAW_FILE_BYTES {
        file.write_all_at(&zeroes, offset).unwrap();
        offset += zeroes.len() as u64;
    }
    file.sync_all().unwrap();
    file
}

fn fallocate(file: &File, length: u64) {
    // SAFETY: plain syscall on an open descriptor; mode 0 allocates unwritten extents.
    let result = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, length as libc::off_t) };
    assert_eq!(result, 0, "fallocate: {}", std::io::Error::last_os_error());
    file.sync_all().unwrap();
}

/// How each raw iteration finds its file.
#[derive(Clone, Copy)]
enum RawMode {
    /// Overwrite blocks that were written and synced before.
    OverwriteWritten,
    /// Write into space reserved with fallocate but never written ("unwritten" extents).
    IntoFallocated,
    /// Write past the end, growing the file.
    Append,
}

fn raw_disk(criterion: &mut Criterion, figures: &Mutex<Vec<Figure>>) {
    let mut group = criterion.benchmark_group("raw_4KiB_write_fdatasync");
    group.throughput(Throughput::Elements(1));
    let block = vec![0xA5u8; RAW_WRITE_BYTES];
    for (mode, label) in [
        (RawMode::OverwriteWritten, "overwrite_written"),
        (RawMode::IntoFallocated, "into_fallocated"),
        (RawMode::Append, "append"),
    ] {
        let directory = bench_directory();
        let path = directory.path().join("raw");
        let reset = |path: &std::path::Path| -> File {
            match mode {
                RawMode::OverwriteWritten => create_written_file(path),
                RawMode::IntoFallocated => {
                    let file = OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .open(path)
                        .unwrap();
                    fallocate(&file, RAW_FILE_BYTES);
                    file
                }
                RawMode::Append => {
                    let file = OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .open(path)
                        .unwrap();
                    file.sync_all().unwrap();
                    file
                }
            }
        };
        let mut file = reset(&path);
        let mut offset = 0u64;
        let mut sample_rates = Vec::new();
        let mut latencies_ms = Vec::new();
        group.bench_function(label, |bencher| {
            bencher.iter_custom(|iterations| {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    if offset + RAW_WRITE_BYTES as u64 > RAW_FILE_BYTES {
                        match mode {
                            // Written blocks stay written: just start over.
                            RawMode::OverwriteWritten => {}
                            RawMode::IntoFallocated | RawMode::Append => file = reset(&path),
                        }
                        offset = 0;
                    }
                    let began = Instant::now();
                    file.write_all_at(&block, offset).unwrap();
                    file.sync_data().unwrap();
                    let took = began.elapsed();
                    latencies_ms.push(took.as_secs_f64() * 1e3);
                    total += took;
                    offset += RAW_WRITE_BYTES as u64;
                }
                sample_rates.push(iterations as f64 / total.as_secs_f64());
                total
            });
        });
        figures.lock().unwrap().push(Figure {
            name: format!("raw 4 KiB write + fdatasync, {}", label.replace('_', " ")),
            sample_rates,
            extra: format!(
                "median {:.3} ms, p99 {:.3} ms per write + fdatasync",
                median(&mut latencies_ms),
                percentile(&mut latencies_ms, 0.99)
            ),
        });
    }
    group.finish();
}

fn benches(criterion: &mut Criterion) {
    let figures = Mutex::new(Vec::new());
    raw_disk(criterion, &figures);
    wal_appends(criterion, &figures);
    wal_appends_async(criterion, &figures);
    let figures = figures.into_inner().unwrap();
    println!("\n| figure | operations/s | notes |\n|---|---:|---|");
    for figure in &figures {
        println!(
            "| {} | {:.0} | {} |",
            figure.name,
            figure.per_second(),
            figure.extra
        );
    }
    let rate = |prefix: &str| {
        figures
            .iter()
            .find(|f| f.name.starts_with(prefix))
            .map(Figure::per_second)
    };
    if let Some(raw) = rate("raw 4 KiB write + fdatasync, overwrite") {
        println!("\nratios to raw overwrite + fdatasync:");
        for figure in figures
            .iter()
            .filter(|figure| figure.name.starts_with("WAL"))
        {
            println!("- {}: {:.2}x", figure.name, figure.per_second() / raw);
        }
    }
}

criterion_group!(wal, benches);
criterion_main!(wal);
