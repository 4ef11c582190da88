//! Disk faults and bad environments, with real node processes: a WAL write or fdatasync that
//! fails (injected through the engine's `failpoints` feature), a full disk (a small tmpfs as the
//! data dir), and start-ups that must be refused with one clear message and nothing modified (an
//! unwritable data dir, a WAL segment of a newer format version, a corrupt record in the middle of
//! the log).
//!
//! Mounting a tmpfs needs root. Where it fails, the test says so in its output and falls back to
//! the injected write failure (full disk) or skips the part that needs the mount (read-only data
//! dir).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use client::{ClientError, TallyClient};
use net::{AbortReason, ErrorCode, TransferOutcome, TransferState};
use tests::{Cluster, account_on, assert_audit_passes, balance, funded};

const PROGRAM: &str = env!("CARGO_BIN_EXE_tally-failpoints");
/// What a node answers to every write once its storage has failed.
const STOPPED: &str = "node stopped accepting writes after a storage failure";
/// WAL segments this small rotate every few hundred records (`TALLY_WAL_SEGMENT_BYTES`).
const SMALL_SEGMENT_BYTES: &str = "16384";
const SEGMENT_SIZE_VARIABLE: &str = "TALLY_WAL_SEGMENT_BYTES";
const FAIL_WRITE_VARIABLE: &str = "TALLY_FAIL_WAL_WRITE_AFTER";
const FAIL_SYNC_VARIABLE: &str = "TALLY_FAIL_WAL_SYNC_AFTER";
/// Ids of the test transfers: `TRANSFER_BASE + n`.
const TRANSFER_BASE: u128 = 1 << 100;

/// The write was refused because the node's storage failed earlier, for `cause`.
#[track_caller]
fn assert_refused_write<T: std::fmt::Debug>(result: Result<T, ClientError>, cause: &str) {
    match result {
        Err(ClientError::Remote { code, message, .. }) => {
            assert_eq!(code, ErrorCode::Internal, "{message}");
            assert!(
                message.contains(STOPPED) && message.contains(cause),
                "expected \"{STOPPED}\" and \"{cause}\" in: {message}"
            );
        }
        other => panic!("expected a write refused after a storage failure, got {other:?}"),
    }
}

/// Same-shard transfers of 1 from `from` to `to`, one at a time with ids `TRANSFER_BASE + first..`,
/// until one fails (at most `max`). Returns how many were acknowledged, and the failed one's id and
/// error.
async fn transfer_until_failure(
    client: &TallyClient,
    from: u64,
    to: u64,
    first: u128,
    max: u128,
) -> (u64, u128, ClientError) {
    for n in first..first + max {
        let id = TRANSFER_BASE + n;
        match client.transfer(id, from, to, 1).await {
            Ok(TransferOutcome::Committed) => {}
            Ok(other) => panic!("transfer {n} was not committed: {other:?}"),
            Err(error) => return (u64::try_from(n - first).unwrap(), id, error),
        }
    }
    panic!("no write failed in {max} transfers");
}

/// `count` same-shard transfers of 1 from `from` to `to`, ids `TRANSFER_BASE + first..`, each
/// committed.
async fn transfers(client: &TallyClient, from: u64, to: u64, first: u128, count: u128) {
    for n in first..first + count {
        assert_eq!(
            client
                .transfer(TRANSFER_BASE + n, from, to, 1)
                .await
                .unwrap(),
            TransferOutcome::Committed,
            "transfer {n}"
        );
    }
}

/// Polls `check` every 50 ms until it returns true (at most 30 s).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Once nothing is in doubt (waited for), the audit passes with `total` in the accounts.
async fn assert_conserved(client: &TallyClient, total: u128) {
    eventually("nothing in doubt", || async {
        match client.cluster_status().await {
            Ok(status) => status
                .iter()
                .all(|node| node.up && node.in_doubt_count == 0),
            Err(_) => false,
        }
    })
    .await;
    assert_audit_passes(client, total).await;
}

/// A tmpfs mounted on a fresh temporary directory; unmounted when dropped (declare it before the
/// cluster whose nodes use it, so that they are killed first).
struct Tmpfs {
    directory: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it), or says why it cannot.
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let directory = tempfile::tempdir().expect("temporary directory");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(directory.path())
            .output()
            .map_err(|error| format!("cannot run mount: {error}"))?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).trim().to_owned());
        }
        Ok(Tmpfs { directory })
    }

    fn path(&self) -> &Path {
        self.directory.path()
    }

    /// `mount -o remount,OPTIONS`: a new size, `ro` or `rw`.
    fn remount(&self, options: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(self.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "remount,{options} failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

/// Fills the file system holding `path` up to its last byte with a file at `path`; returns its
/// size.
fn fill_disk(path: &Path) -> u64 {
    use std::io::Write;
    let mut file = std::fs::File::create(path).expect("create the filler");
    let mut size = 0u64;
    for chunk in [64 * 1024, 4096, 512, 1] {
        let bytes = vec![0xAB; chunk];
        loop {
            match file.write(&bytes) {
                Ok(0) => break,
                Ok(written) => size += written as u64,
                Err(error) if error.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(error) => panic!("filling the disk: {error}"),
            }
        }
    }
    size
}

/// Every file under `directory` with its bytes, except the node's own log `tally.log` (every
/// start appends to it by design, a refused one included).
fn files_under(directory: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![directory.to_owned()];
    while let Some(directory) = stack.pop() {
        for entry in std::fs::read_dir(&directory).expect("read dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|name| name != "tally.log") {
                let bytes = std::fs::read(&path).expect("read file");
                files.insert(path, bytes);
            }
        }
    }
    files
}

#[track_caller]
fn assert_unchanged(
    before: &BTreeMap<PathBuf, Vec<u8>>,
    after: &BTreeMap<PathBuf, Vec<u8>>,
    what: &str,
) {
    let added: Vec<_> = after
        .keys()
        .filter(|path| !before.contains_key(*path))
        .collect();
    let removed: Vec<_> = before
        .keys()
        .filter(|path| !after.contains_key(*path))
        .collect();
    let changed: Vec<_> = before
        .iter()
        .filter(|(path, bytes)| after.get(*path).is_some_and(|now| now != *bytes))
        .map(|(path, _)| path)
        .collect();
    assert!(
        added.is_empty() && removed.is_empty() && changed.is_empty(),
        "{what} modified the data dir: added {added:?}, removed {removed:?}, changed {changed:?}"
    );
}

/// Runs node `id`'s start, which must be refused: exit code 1 and exactly one `tally: error:`
/// line on stderr, which is returned.
fn refused_start(cluster: &mut Cluster, id: u32) -> String {
    let (status, stderr) = cluster.run_start_expecting_exit(id);
    assert_eq!(
        status.code(),
        Some(1),
        "exit status {status}; stderr:\n{stderr}"
    );
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("tally: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "stderr:\n{stderr}");
    assert!(errors[0].starts_with("tally: error: "), "{}", errors[0]);
    println!("refused as expected: {}", errors[0]);
    errors[0].to_owned()
}

/// The WAL segment files of a data dir, oldest first.
fn segments(data_dir: &Path) -> Vec<PathBuf> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(data_dir.join("wal"))
        .expect("read the WAL dir")
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "wal"))
        .collect();
    segments.sort();
    segments
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .expect("a file name")
        .to_string_lossy()
        .into_owned()
}

/// A one-node cluster with small WAL segments and account `a` (started with `INITIAL`) having
/// paid `count` transfers of 1 to `a2`, then killed once its spare segment is ready: every
/// segment and the spare stay on disk, as after a crash. Returns the cluster and the two accounts.
async fn populated_node(count: u128) -> (Cluster, u64, u64) {
    let mut cluster = Cluster::configure(PROGRAM.as_ref(), 1);
    cluster.set_env(1, SEGMENT_SIZE_VARIABLE, SMALL_SEGMENT_BYTES);
    cluster.start_all();
    let client = cluster.client();
    let a = account_on(&cluster.config, 1, 1, 0);
    let a2 = account_on(&cluster.config, 1, 1, 1);
    funded(&client, a, INITIAL).await;
    funded(&client, a2, 0).await;
    transfers(&client, a, a2, 0, count).await;
    // The preallocator makes the spare in the background: wait for it, so that a refused start
    // has it to leave alone.
    let wal = cluster.data_dir(1).join("wal");
    eventually("a spare WAL segment", || {
        let wal = wal.clone();
        async move {
            std::fs::read_dir(&wal).unwrap().any(|entry| {
                let entry = entry.unwrap();
                entry.file_name().to_string_lossy().ends_with(".tmp")
                    && entry.metadata().unwrap().len().to_string() == SMALL_SEGMENT_BYTES
            })
        }
    })
    .await;
    cluster.kill(1);
    (cluster, a, a2)
}

const INITIAL: u64 = 1_000_000;

/// After a refused start was undone: the node starts and has every acknowledged transfer.
async fn assert_recovers(cluster: &mut Cluster, a: u64, a2: u64, count: u64) {
    cluster.start_node(1, &[]);
    cluster.wait_up(1);
    let client = cluster.client();
    assert_eq!(balance(&client, a2).await, count);
    assert_eq!(balance(&client, a).await, INITIAL - count);
}

/// A WAL write or fdatasync fails (injected through `variable`, after a known count): that write
/// and every later one are refused with a clear error while reads, status and retries of recorded
/// transfers are answered; a transfer the healthy node coordinates into the failed one aborts. The
/// node shuts down cleanly (`kill` false) or is killed, and after a restart it has everything it
/// acknowledged, a retry of the failed transfer applies it exactly once, and money is conserved.
async fn injected_failure(variable: &str, kill: bool) {
    // Node 1's writes before the transfers: its group's first configuration and its election
    // (the new term, the vote and the leader's empty entry), then two account creations and one
    // deposit, each one write and one sync of the WAL; the transfers after them are one of each
    // too (the commit index that follows each is written with the next appends).
    const WRITES_BEFORE_TRANSFERS: u64 = 5;
    const WRITES_THAT_SUCCEED: u64 = 8;
    let mut cluster = Cluster::configure(PROGRAM.as_ref(), 2);
    cluster.set_env(1, variable, &WRITES_THAT_SUCCEED.to_string());
    cluster.start_all();
    let client = cluster.client();
    let config = cluster.config.clone();
    let a = account_on(&config, 1, 1, 0);
    let a2 = account_on(&config, 1, 1, 1);
    let b = account_on(&config, 2, 1, 0);
    funded(&client, a, 1_000).await;
    funded(&client, a2, 0).await;
    funded(&client, b, 1_000).await;

    let (acked, failed, error) = transfer_until_failure(&client, a, a2, 0, 100).await;
    println!("{variable}: {acked} transfers acknowledged, then: {error}");
    assert_refused_write::<()>(Err(error), "injected");
    assert_eq!(
        acked,
        WRITES_THAT_SUCCEED - WRITES_BEFORE_TRANSFERS,
        "the write after the {WRITES_THAT_SUCCEED} that succeed fails"
    );

    // Sticky: every later write is refused, whatever its kind, the failed transfer's retry too.
    assert_refused_write(
        client.deposit(TallyClient::new_transfer_id(), a, 5).await,
        "injected",
    );
    assert_refused_write(
        client
            .create_account(account_on(&config, 1, 1, 2), None, 0)
            .await,
        "injected",
    );
    assert_refused_write(client.transfer(failed, a, a2, 1).await, "injected");
    assert_refused_write(
        client.transfer(TRANSFER_BASE + 500, a, a2, 1).await,
        "injected",
    );
    // Reads are answered: balances (one and consistent), history, transfer status, the retry
    // of an acknowledged transfer, cluster status (`tally status` too).
    assert_eq!(balance(&client, a).await, 1_000 - acked);
    assert_eq!(balance(&client, a2).await, acked);
    let both = client.balances(&[a, a2]).await.expect("consistent read");
    assert_eq!(
        both.iter().map(|entry| entry.balance).collect::<Vec<_>>(),
        vec![1_000 - acked, acked]
    );
    assert_eq!(
        client.history(a2, 100, 0).await.unwrap().entries.len() as u64,
        acked
    );
    assert_eq!(
        client.transfer_status(TRANSFER_BASE).await.unwrap(),
        TransferState::Committed
    );
    assert_eq!(
        client.transfer(TRANSFER_BASE, a, a2, 1).await.unwrap(),
        TransferOutcome::Committed
    );
    let status = client.cluster_status().await.expect("cluster status");
    assert!(status.iter().all(|node| node.up), "{status:?}");
    let output = Command::new(PROGRAM)
        .arg("status")
        .arg("--cluster")
        .arg(&cluster.cluster_file)
        .output()
        .expect("run tally status");
    assert!(
        output.status.success(),
        "tally status: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Across shards: coordinated by the healthy node into the failed one, it aborts (the failed
    // node refuses the prepare); coordinated by the failed node, it is refused.
    assert_eq!(
        client.transfer(TRANSFER_BASE + 600, b, a, 1).await.unwrap(),
        TransferOutcome::Aborted(AbortReason::ParticipantUnavailable)
    );
    assert_eq!(balance(&client, b).await, 1_000);
    assert_refused_write(
        client.transfer(TRANSFER_BASE + 601, a, b, 1).await,
        "injected",
    );

    if kill {
        cluster.kill(1);
    } else {
        let status = cluster.stop(1);
        assert!(
            status.success(),
            "clean shutdown after a storage failure: {status}"
        );
    }
    cluster.remove_env(1, variable);
    cluster.start_node(1, &[]);
    cluster.wait_up(1);
    let recovered = balance(&client, a2).await;
    if variable == FAIL_WRITE_VARIABLE {
        // The failed write wrote nothing.
        assert_eq!(recovered, acked);
    } else {
        // The failed sync's bytes were written, never acknowledged: they may come back.
        assert!(
            recovered == acked || recovered == acked + 1,
            "{recovered} after {acked} acknowledged"
        );
    }
    println!("{variable}: after restart {recovered} transfers applied ({acked} acknowledged)");
    for _ in 0..2 {
        assert_eq!(
            client.transfer(failed, a, a2, 1).await.unwrap(),
            TransferOutcome::Committed
        );
    }
    assert_eq!(balance(&client, a2).await, acked + 1);
    assert_eq!(balance(&client, a).await, 1_000 - acked - 1);
    client
        .deposit(TallyClient::new_transfer_id(), a, 10)
        .await
        .expect("writes work again");
    assert_conserved(&client, 2_010).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_wal_write_stops_writes_keeps_reads_and_recovers_what_was_acknowledged() {
    injected_failure(FAIL_WRITE_VARIABLE, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_wal_sync_stops_writes_keeps_reads_and_recovers_what_was_acknowledged() {
    injected_failure(FAIL_SYNC_VARIABLE, true).await;
}

/// A full disk: a node refuses to start on a tmpfs too small for its first WAL segment, and
/// starts once the tmpfs is made bigger; a running node whose disk fills up (a filler file takes
/// the rest) stops accepting writes when its WAL needs a new segment, keeps answering reads,
/// and after the filler is deleted and the node restarted has everything it acknowledged and
/// rotates segments again. Without a tmpfs, an injected write failure stands in for the full disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_writes_with_a_clear_error_and_recovers_once_space_returns() {
    let disk = match Tmpfs::mount("8k") {
        Ok(disk) => Some(disk),
        Err(why) => {
            println!(
                "full disk: cannot mount a tmpfs ({why}); falling back to an injected WAL write \
                 failure ({FAIL_WRITE_VARIABLE})"
            );
            None
        }
    };
    let mut cluster = Cluster::configure(PROGRAM.as_ref(), 1);
    cluster.set_env(1, SEGMENT_SIZE_VARIABLE, SMALL_SEGMENT_BYTES);
    let cause = match &disk {
        Some(disk) => {
            cluster.set_data_dir(1, disk.path().join("node-1"));
            // 8 KiB cannot hold the first segment: refused, with the reason.
            let line = refused_start(&mut cluster, 1);
            assert!(
                line.contains("cannot open the WAL") && line.contains("No space left on device"),
                "{line}"
            );
            disk.remount("size=4m");
            "No space left on device"
        }
        None => {
            cluster.set_env(1, FAIL_WRITE_VARIABLE, "400");
            "injected"
        }
    };
    cluster.start_node(1, &[]);
    cluster.wait_up(1);
    let client = cluster.client();
    let a = account_on(&cluster.config, 1, 1, 0);
    let a2 = account_on(&cluster.config, 1, 1, 1);
    funded(&client, a, INITIAL).await;
    funded(&client, a2, 0).await;
    if let Some(disk) = &disk {
        let filled = fill_disk(&disk.path().join("filler"));
        println!("full disk: a filler of {filled} bytes took the rest of the tmpfs");
    }

    // The segment being written and the spare were made before the disk filled up, so writes go
    // on until the WAL needs a segment it cannot make.
    let (acked, failed, error) = transfer_until_failure(&client, a, a2, 0, 5_000).await;
    println!("full disk: {acked} transfers acknowledged, then: {error}");
    assert_refused_write::<()>(Err(error), cause);
    assert_refused_write(
        client.deposit(TallyClient::new_transfer_id(), a, 1).await,
        cause,
    );
    assert_refused_write(
        client.transfer(TRANSFER_BASE + 10_000, a, a2, 1).await,
        cause,
    );
    assert_eq!(balance(&client, a2).await, acked);
    assert_eq!(balance(&client, a).await, INITIAL - acked);
    let status = client.cluster_status().await.expect("cluster status");
    assert!(status[0].up, "{status:?}");

    let status = cluster.stop(1);
    println!("full disk: the node stopped with {status}");
    assert!(status.success(), "clean shutdown on a full disk: {status}");
    match &disk {
        Some(disk) => std::fs::remove_file(disk.path().join("filler")).expect("remove filler"),
        None => cluster.remove_env(1, FAIL_WRITE_VARIABLE),
    }
    cluster.start_node(1, &[]);
    cluster.wait_up(1);
    let recovered = balance(&client, a2).await;
    assert!(
        recovered == acked || recovered == acked + 1,
        "{recovered} after {acked} acknowledged"
    );
    assert_eq!(
        client.transfer(failed, a, a2, 1).await.unwrap(),
        TransferOutcome::Committed
    );
    assert_eq!(balance(&client, a2).await, acked + 1);
    // Enough for several new segments: preallocation works again.
    let first = u128::from(acked) + 1;
    transfers(&client, a, a2, first, 700).await;
    assert_eq!(balance(&client, a2).await, acked + 1 + 700);
    assert_conserved(&client, u128::from(INITIAL)).await;
}

/// A WAL segment written by a newer format version: the node refuses to start, naming the
/// segment and the versions, and modifies nothing; with the segment as it was, it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wal_segment_of_a_newer_format_version_is_refused_and_nothing_is_modified() {
    const COUNT: u128 = 600;
    let (mut cluster, a, a2) = populated_node(COUNT).await;
    let data_dir = cluster.data_dir(1);
    let segments = segments(&data_dir);
    assert!(segments.len() >= 2, "{segments:?}");
    let oldest = &segments[0];
    let original = std::fs::read(oldest).unwrap();
    let mut newer = original.clone();
    let version = u32::from_le_bytes(newer[8..12].try_into().unwrap());
    assert_eq!(version, engine::wal::FORMAT_VERSION);
    newer[8..12].copy_from_slice(&(version + 1).to_le_bytes());
    let crc = crc32fast::hash(&newer[..24]);
    newer[24..28].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(oldest, &newer).unwrap();

    let before = files_under(&data_dir);
    let line = refused_start(&mut cluster, 1);
    assert!(
        line.contains("format version")
            && line.contains(&file_name(oldest))
            && line.contains(&format!("version {}", version + 1)),
        "{line}"
    );
    assert_unchanged(&before, &files_under(&data_dir), "a refused start");

    std::fs::write(oldest, &original).unwrap();
    assert_recovers(&mut cluster, a, a2, COUNT as u64).await;
}

/// A record in the middle of the log (in a segment that has a successor) is damaged: the node
/// refuses to start, naming the segment and the offset of the bad record, and modifies nothing;
/// with the byte restored, it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_record_in_the_middle_of_the_log_is_refused_and_nothing_is_modified() {
    const COUNT: u128 = 600;
    let (mut cluster, a, a2) = populated_node(COUNT).await;
    let data_dir = cluster.data_dir(1);
    let segments = segments(&data_dir);
    assert!(segments.len() >= 3, "{segments:?}");
    let middle = &segments[segments.len() / 2];
    let original = std::fs::read(middle).unwrap();
    // Walk the records (header 32 bytes; each record: 4-byte length, 13 more header bytes,
    // payload) to the middle one, and flip a byte of its payload.
    let mut offsets = Vec::new();
    let mut offset = engine::wal::SEGMENT_HEADER_SIZE;
    while offset + engine::wal::RECORD_HEADER_SIZE <= original.len()
        && original[offset..offset + engine::wal::RECORD_HEADER_SIZE]
            .iter()
            .any(|&byte| byte != 0)
    {
        offsets.push(offset);
        let length = u32::from_le_bytes(original[offset..offset + 4].try_into().unwrap());
        offset += engine::wal::RECORD_HEADER_SIZE + length as usize;
    }
    assert!(offsets.len() >= 10, "{} records", offsets.len());
    let bad = offsets[offsets.len() / 2];
    let mut damaged = original.clone();
    damaged[bad + engine::wal::RECORD_HEADER_SIZE] ^= 0x40;
    std::fs::write(middle, &damaged).unwrap();

    let before = files_under(&data_dir);
    let line = refused_start(&mut cluster, 1);
    assert!(
        line.contains("corrupt")
            && line.contains(&file_name(middle))
            && line.contains(&format!("offset {bad}:")),
        "{line}"
    );
    assert_unchanged(&before, &files_under(&data_dir), "a refused start");

    std::fs::write(middle, &original).unwrap();
    assert_recovers(&mut cluster, a, a2, COUNT as u64).await;
}

/// A data dir the node cannot write: under a regular file (it cannot be created), and on a
/// read-only file system with a node's data in it. The node refuses to start, naming the path;
/// nothing is modified; once the file system is writable again, it starts with its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_data_dir_is_refused_naming_the_path() {
    // Under a regular file: even root cannot create it.
    let mut cluster = Cluster::configure(PROGRAM.as_ref(), 1);
    let plain = cluster.directory().join("plain-file");
    std::fs::write(&plain, b"not a directory").unwrap();
    let data_dir = plain.join("node-1");
    cluster.set_data_dir(1, &data_dir);
    let line = refused_start(&mut cluster, 1);
    assert!(
        line.contains("cannot create the data dir")
            && line.contains(&data_dir.display().to_string()),
        "{line}"
    );
    assert_eq!(std::fs::read(&plain).unwrap(), b"not a directory");

    // On a read-only file system (root can write anywhere else).
    let disk = match Tmpfs::mount("8m") {
        Ok(disk) => disk,
        Err(why) => {
            println!("read-only data dir: cannot mount a tmpfs ({why}); that part is skipped");
            return;
        }
    };
    let mut cluster = Cluster::configure(PROGRAM.as_ref(), 1);
    let data_dir = disk.path().join("node-1");
    cluster.set_data_dir(1, &data_dir);
    cluster.set_env(1, SEGMENT_SIZE_VARIABLE, SMALL_SEGMENT_BYTES);
    cluster.start_all();
    let client = cluster.client();
    let a = account_on(&cluster.config, 1, 1, 0);
    funded(&client, a, 100).await;
    assert!(cluster.stop(1).success());
    let before = files_under(&data_dir);
    disk.remount("ro");
    let line = refused_start(&mut cluster, 1);
    assert!(
        line.contains(&format!(
            "cannot write in the data dir {}",
            data_dir.display()
        )) && line.contains("Read-only file system"),
        "{line}"
    );
    assert_unchanged(&before, &files_under(&data_dir), "a refused start");
    disk.remount("rw");
    cluster.start_node(1, &[]);
    cluster.wait_up(1);
    assert_eq!(balance(&client, a).await, 100);
}
