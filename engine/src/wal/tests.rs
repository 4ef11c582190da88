//! Tests of the WAL: round trips across segments, crash images, torn tails, corruption, sticky
//! failures, concurrency. Randomized tests print their seed; `TALLY_SEED=N` replays one.

use crate::testing::test_seed;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

fn small_options() -> WalOptions {
    WalOptions {
        segment_size_bytes: 8192,
        ..WalOptions::default()
    }
}

fn open_memory(storage: &MemoryStorage) -> (Wal<MemoryStorage>, RecoveryReport) {
    Wal::open(storage.clone(), small_options()).expect("open")
}

fn read_all<S: Storage>(wal: &Wal<S>) -> Vec<Record> {
    wal.read_from(wal.first_lsn())
        .expect("reader")
        .collect::<Result<_, _>>()
        .expect("read")
}

fn random_payload(random: &mut StdRng, max_bytes: usize) -> Vec<u8> {
    let length = random.random_range(0..=max_bytes);
    (0..length).map(|_| random.random()).collect()
}

/// The payload a test writes for an LSN: derived from it, so a read-back can be checked alone.
fn payload_for(lsn: Lsn) -> Vec<u8> {
    let length = (lsn * 7 % 300) as usize;
    (0..length)
        .map(|index| (lsn as usize * 31 + index) as u8)
        .collect()
}

fn kind_for(lsn: Lsn) -> u8 {
    (lsn % 250) as u8 + 1
}

fn check_record(record: &Record) {
    assert_eq!(
        record.kind,
        kind_for(record.lsn),
        "kind of LSN {}",
        record.lsn
    );
    assert_eq!(
        record.payload,
        payload_for(record.lsn),
        "payload of LSN {}",
        record.lsn
    );
}

#[test]
fn random_records_round_trip_across_many_segments_and_reopens() {
    let seed = test_seed("round_trip");
    let mut random = StdRng::seed_from_u64(seed);
    let storage = MemoryStorage::new();
    let mut expected: Vec<(u8, Vec<u8>)> = Vec::new();
    for _reopen in 0..3 {
        let (wal, report) = open_memory(&storage);
        assert_eq!(report.last_lsn, expected.len() as Lsn);
        assert_eq!(report.torn_bytes_dropped, 0);
        for _ in 0..400 {
            let batch: Vec<(u8, Vec<u8>)> = (0..random.random_range(1..8))
                .map(|_| {
                    (
                        random.random_range(1..=255),
                        random_payload(&mut random, 900),
                    )
                })
                .collect();
            let borrowed: Vec<(u8, &[u8])> =
                batch.iter().map(|(k, p)| (*k, p.as_slice())).collect();
            let last = wal.append_batch(&borrowed).unwrap();
            expected.extend(batch);
            assert_eq!(last, expected.len() as Lsn);
            if random.random_bool(0.3) {
                wal.wait_durable(last).unwrap();
            }
        }
        wal.wait_durable(expected.len() as Lsn).unwrap();
        assert!(wal.segment_names().len() > 20, "expected many segments");
        let records = read_all(&wal);
        assert_eq!(records.len(), expected.len());
        for (record, (kind, payload)) in records.iter().zip(&expected) {
            assert_eq!(
                (record.kind, &record.payload),
                (*kind, payload),
                "LSN {}",
                record.lsn
            );
        }
        // Reading from an arbitrary LSN starts exactly there.
        let from = random.random_range(1..=expected.len() as Lsn);
        let first = wal.read_from(from).unwrap().next().unwrap().unwrap();
        assert_eq!(first.lsn, from);
    }
}

#[test]
fn segment_names_sort_by_first_lsn() {
    let storage = MemoryStorage::new();
    let (wal, _) = open_memory(&storage);
    for lsn in 1..=200 {
        wal.append(kind_for(lsn), &payload_for(lsn)).unwrap();
    }
    wal.wait_durable(200).unwrap();
    let names = wal.segment_names();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert_eq!(names[0], "00000000000000000001.wal");
    assert!(names.iter().all(|name| parse_segment_name(name).is_some()));
}

#[test]
fn concurrent_appenders_get_unique_dense_lsns_and_every_acknowledged_record_reads_back() {
    let storage = MemoryStorage::new();
    let (wal, _) = open_memory(&storage);
    let wal = Arc::new(wal);
    let threads = 8;
    let per_thread = 300;
    let handles: Vec<_> = (0..threads)
        .map(|thread| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                let mut acknowledged = Vec::new();
                for index in 0..per_thread {
                    let payload = format!("thread {thread} record {index}").into_bytes();
                    let lsn = wal.append_durable(1, &payload).unwrap();
                    acknowledged.push((lsn, payload));
                }
                acknowledged
            })
        })
        .collect();
    let mut by_lsn = BTreeMap::new();
    for handle in handles {
        for (lsn, payload) in handle.join().unwrap() {
            assert!(
                by_lsn.insert(lsn, payload).is_none(),
                "LSN {lsn} given twice"
            );
        }
    }
    let total = threads * per_thread;
    assert_eq!(
        by_lsn.keys().copied().collect::<Vec<_>>(),
        (1..=total as Lsn).collect::<Vec<_>>()
    );
    for record in read_all(&wal) {
        assert_eq!(by_lsn[&record.lsn], record.payload);
    }
    let stats = wal.stats();
    assert_eq!(stats.records_appended, total as u64);
    assert!(stats.groups_written <= total as u64);
}

/// Appends derived records until the log fails (or `count` are done); returns the LSNs whose
/// durability was acknowledged.
fn append_until_failure(wal: &Wal<MemoryStorage>, count: u64, random: &mut StdRng) -> Vec<Lsn> {
    let mut acknowledged = Vec::new();
    let mut pending = Vec::new();
    for _ in 0..count {
        let lsn = wal.next_lsn();
        match wal.append(kind_for(lsn), &payload_for(lsn)) {
            Ok(assigned) => {
                assert_eq!(assigned, lsn);
                pending.push(assigned);
            }
            Err(WalError::Failed(_)) => break,
            Err(other) => panic!("unexpected error {other}"),
        }
        if random.random_bool(0.4) {
            let last = *pending.last().unwrap();
            match wal.wait_durable(last) {
                Ok(()) => acknowledged.append(&mut pending),
                Err(WalError::Failed(_)) => break,
                Err(other) => panic!("unexpected error {other}"),
            }
        }
    }
    acknowledged
}

/// Recovery after a crash yields a dense prefix of what was appended that contains every
/// acknowledged record, and the log keeps working after it.
fn check_recovery_after_crash(crashed: &MemoryStorage, acknowledged: &[Lsn], context: &str) {
    let (wal, report) = Wal::open(crashed.clone(), small_options())
        .unwrap_or_else(|error| panic!("{context}: reopen failed: {error}"));
    let records = read_all(&wal);
    for (index, record) in records.iter().enumerate() {
        assert_eq!(record.lsn, index as Lsn + 1, "{context}: LSNs not dense");
        check_record(record);
    }
    let recovered = records.len() as Lsn;
    assert_eq!(report.last_lsn, recovered, "{context}");
    if let Some(&last_acknowledged) = acknowledged.last() {
        assert!(
            recovered >= last_acknowledged,
            "{context}: lost acknowledged LSN {last_acknowledged}, recovered {recovered}"
        );
    }
    for lsn in recovered + 1..recovered + 30 {
        assert_eq!(
            wal.append(kind_for(lsn), &payload_for(lsn)).unwrap(),
            lsn,
            "{context}"
        );
    }
    wal.wait_durable(recovered + 29).unwrap();
    drop(wal);
    let (wal, _) = Wal::open(crashed.clone(), small_options()).unwrap();
    assert_eq!(
        read_all(&wal).len() as Lsn,
        recovered + 29,
        "{context}: after more appends"
    );
}

#[test]
fn crash_at_every_write_and_sync_keeps_every_acknowledged_record() {
    let seed = test_seed("crash_points");
    let mut random = StdRng::seed_from_u64(seed);
    let mut crash_points = 0;
    for fail_at in 1..60 {
        for fail_writes in [false, true] {
            for torn in [false, true] {
                let storage = MemoryStorage::new();
                let (wal, _) = open_memory(&storage);
                if fail_writes {
                    storage.fail_write_after(fail_at);
                } else {
                    storage.fail_sync_after(fail_at);
                }
                let acknowledged = append_until_failure(&wal, 400, &mut random);
                let mode = if torn {
                    CrashMode::KeepUnsyncedPrefix {
                        seed: random.random(),
                    }
                } else {
                    CrashMode::DropUnsynced
                };
                let crashed = storage.crash(mode);
                drop(wal);
                let context = format!(
                    "seed {seed}, fail {} {fail_at}, {mode:?}",
                    if fail_writes { "write" } else { "sync" }
                );
                check_recovery_after_crash(&crashed, &acknowledged, &context);
                crash_points += 1;
            }
        }
    }
    println!("checked {crash_points} crash points");
}

#[test]
fn crash_while_appenders_run_keeps_every_acknowledged_record() {
    let seed = test_seed("crash_live");
    let mut random = StdRng::seed_from_u64(seed);
    for round in 0..40 {
        let storage = MemoryStorage::new();
        let (wal, _) = open_memory(&storage);
        let wal = Arc::new(wal);
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(std::sync::Mutex::new(Vec::new()));
        let appenders: Vec<_> = (0..3)
            .map(|_| {
                let (wal, stop, acknowledged) = (wal.clone(), stop.clone(), acknowledged.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        // Payloads are derived from the LSN, so each appender takes the queue's
                        // next LSN inside one batch of size one, checked after the fact.
                        let Ok(lsn) = wal.append(1, b"") else { return };
                        if wal.wait_durable(lsn).is_ok() {
                            acknowledged.lock().unwrap().push(lsn);
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_micros(
            random.random_range(0..3000),
        ));
        // The acknowledgements seen before the crash image is taken must all be in it.
        let acknowledged_before: Vec<Lsn> = {
            let mut list = acknowledged.lock().unwrap().clone();
            list.sort();
            list
        };
        let mode = if random.random_bool(0.5) {
            CrashMode::KeepUnsyncedPrefix {
                seed: random.random(),
            }
        } else {
            CrashMode::DropUnsynced
        };
        let crashed = storage.crash(mode);
        stop.store(true, Ordering::Relaxed);
        for appender in appenders {
            appender.join().unwrap();
        }
        let (recovered, _) = Wal::open(crashed, small_options()).unwrap();
        let records = read_all(&recovered);
        for (index, record) in records.iter().enumerate() {
            assert_eq!(record.lsn, index as Lsn + 1);
            assert_eq!((record.kind, record.payload.len()), (1, 0));
        }
        if let Some(&last) = acknowledged_before.last() {
            assert!(
                records.len() as Lsn >= last,
                "seed {seed} round {round}: lost LSN {last}"
            );
        }
    }
}

/// A log of `count` derived records, all durable; returns the storage and the segment's name.
fn durable_log(count: Lsn) -> (MemoryStorage, String) {
    let storage = MemoryStorage::new();
    let (wal, _) = Wal::open(
        storage.clone(),
        WalOptions {
            segment_size_bytes: 64 * 1024,
            ..WalOptions::default()
        },
    )
    .unwrap();
    for lsn in 1..=count {
        wal.append(kind_for(lsn), &payload_for(lsn)).unwrap();
    }
    wal.wait_durable(count).unwrap();
    let names = wal.segment_names();
    assert_eq!(names.len(), 1);
    drop(wal);
    (storage, names[0].clone())
}

/// Offsets of each record in a one-segment log of derived records.
fn record_offsets(count: Lsn) -> Vec<(usize, usize)> {
    let mut offsets = Vec::new();
    let mut offset = SEGMENT_HEADER_SIZE;
    for lsn in 1..=count {
        let size = RECORD_HEADER_SIZE + payload_for(lsn).len();
        offsets.push((offset, size));
        offset += size;
    }
    offsets
}

#[test]
fn every_byte_offset_of_a_torn_last_record_is_truncated() {
    let count = 20;
    let (storage, name) = durable_log(count);
    let image = storage.file_bytes(&name).unwrap();
    let (last_offset, last_size) = *record_offsets(count).last().unwrap();
    for cut in 0..last_size {
        for garbage in [false, true] {
            let mut torn = image.clone();
            // Garbage is the complement of what was there, so it always differs from it.
            for byte in &mut torn[last_offset + cut..last_offset + last_size] {
                *byte = if garbage { !*byte } else { 0 };
            }
            let crashed = MemoryStorage::new().crash(CrashMode::DropUnsynced);
            let file = crashed.create(&name).unwrap();
            file.write_at(0, &torn).unwrap();
            let (wal, report) = Wal::open(crashed.clone(), small_options())
                .unwrap_or_else(|error| panic!("cut {cut} garbage {garbage}: {error}"));
            assert_eq!(report.last_lsn, count - 1, "cut {cut} garbage {garbage}");
            let nonzero_torn = torn[last_offset..]
                .iter()
                .rposition(|&b| b != 0)
                .map_or(0, |p| p + 1);
            assert_eq!(report.torn_bytes_dropped, nonzero_torn as u64, "cut {cut}");
            let records = read_all(&wal);
            assert_eq!(records.len() as Lsn, count - 1);
            records.iter().for_each(check_record);
            assert_eq!(
                wal.append(kind_for(count), &payload_for(count)).unwrap(),
                count
            );
            wal.wait_durable(count).unwrap();
            assert_eq!(read_all(&wal).len() as Lsn, count);
        }
    }
}

#[test]
fn random_bit_flips_are_reported_as_corruption_or_truncated_as_a_torn_tail() {
    let seed = test_seed("bit_flips");
    let mut random = StdRng::seed_from_u64(seed);
    let count = 30;
    let (storage, name) = durable_log(count);
    let image = storage.file_bytes(&name).unwrap();
    let offsets = record_offsets(count);
    let (last_offset, _) = *offsets.last().unwrap();
    for _ in 0..300 {
        let position = random.random_range(0..last_offset + 400);
        let bit = random.random_range(0..8);
        let mut damaged = image.clone();
        damaged[position] ^= 1 << bit;
        let crashed = MemoryStorage::new();
        crashed
            .create(&name)
            .unwrap()
            .write_at(0, &damaged)
            .unwrap();
        let context = format!("seed {seed}: bit {bit} of byte {position}");
        let result = Wal::open(crashed.clone(), small_options());
        if position < SEGMENT_HEADER_SIZE {
            let error = result
                .err()
                .unwrap_or_else(|| panic!("{context}: header damage accepted"));
            assert!(
                matches!(error, WalError::Corrupt { offset: 0, .. }),
                "{context}: {error}"
            );
        } else if position < last_offset {
            // A record with valid records after it: corruption naming the damaged record.
            let record_offset = offsets
                .iter()
                .rev()
                .find(|(offset, _)| *offset <= position)
                .unwrap()
                .0;
            match result {
                Err(WalError::Corrupt {
                    segment, offset, ..
                }) => {
                    assert_eq!(segment, name, "{context}");
                    assert_eq!(offset, record_offset as u64, "{context}");
                }
                Err(other) => panic!("{context}: {other}"),
                Ok(_) => panic!("{context}: corruption accepted"),
            }
        } else {
            // The last record or the zero tail after it: a torn tail, truncated.
            let (wal, report) = result.unwrap_or_else(|error| panic!("{context}: {error}"));
            assert!(report.torn_bytes_dropped > 0, "{context}");
            let records = read_all(&wal);
            let expected = if position < last_offset + offsets.last().unwrap().1 {
                count - 1
            } else {
                count
            };
            assert_eq!(records.len() as Lsn, expected, "{context}");
        }
    }
}

#[test]
fn a_missing_middle_segment_is_corruption() {
    let storage = MemoryStorage::new();
    let (wal, _) = open_memory(&storage);
    for lsn in 1..=300 {
        wal.append(kind_for(lsn), &payload_for(lsn)).unwrap();
    }
    wal.wait_durable(300).unwrap();
    let names = wal.segment_names();
    drop(wal);
    assert!(names.len() >= 3);
    storage.remove(&names[1]).unwrap();
    // A leftover spare, as preallocation leaves one: a refused log keeps it too.
    storage.create("spare-000099.tmp").unwrap();
    let files = sorted_files(&storage);
    match Wal::open(storage.clone(), small_options()) {
        Err(WalError::Corrupt {
            segment, offset: 0, ..
        }) => assert_eq!(segment, names[2]),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a gap was accepted"),
    }
    assert_eq!(
        sorted_files(&storage),
        files,
        "a refused log was modified (spare files included)"
    );
}

fn sorted_files(storage: &MemoryStorage) -> Vec<String> {
    let mut names = storage.list().unwrap();
    names.sort();
    names
}

#[test]
fn a_segment_from_a_newer_format_version_is_refused_and_left_alone() {
    let (storage, name) = durable_log(3);
    let mut image = storage.file_bytes(&name).unwrap();
    image[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    let crc = crc32fast::hash(&image[..24]);
    image[24..28].copy_from_slice(&crc.to_le_bytes());
    storage.set_file_bytes(&name, image.clone());
    // A leftover spare, as preallocation leaves one: a refused log keeps it too.
    storage.create("spare-000099.tmp").unwrap();
    let files = sorted_files(&storage);
    match Wal::open(storage.clone(), small_options()) {
        Err(WalError::UnsupportedVersion { version, .. }) => {
            assert_eq!(version, FORMAT_VERSION + 1)
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("newer version accepted"),
    }
    assert_eq!(
        storage.file_bytes(&name).unwrap(),
        image,
        "the segment was modified"
    );
    assert_eq!(sorted_files(&storage), files, "spare files were deleted");
}

#[test]
fn a_failed_sync_is_sticky_until_reopen() {
    let storage = MemoryStorage::new();
    let (wal, _) = open_memory(&storage);
    wal.append_durable(1, b"before").unwrap();
    storage.fail_sync_after(1);
    let lsn = wal.append(1, b"doomed").unwrap();
    let error = wal.wait_durable(lsn).unwrap_err();
    assert!(matches!(error, WalError::Failed(_)), "{error}");
    let original = wal.failure().expect("failure recorded").to_string();
    assert!(original.contains("injected failure of sync"), "{original}");
    for _ in 0..3 {
        match wal.append(1, b"after") {
            Err(WalError::Failed(error)) => assert_eq!(error.to_string(), original),
            other => panic!("append after failure: {other:?}"),
        }
    }
    assert!(matches!(wal.durable_lsn(), 1));
    let crashed = storage.crash(CrashMode::DropUnsynced);
    drop(wal);
    let (wal, report) = Wal::open(crashed, small_options()).unwrap();
    assert_eq!(report.last_lsn, 1);
    assert_eq!(wal.append_durable(1, b"works again").unwrap(), 2);
}

#[test]
fn a_crash_at_any_point_of_truncation_leaves_a_log_that_opens() {
    for fail_at in 1..8 {
        let storage = MemoryStorage::new();
        let (wal, _) = open_memory(&storage);
        for lsn in 1..=400 {
            wal.append(kind_for(lsn), &payload_for(lsn)).unwrap();
        }
        wal.wait_durable(400).unwrap();
        let segments_before = wal.segment_names().len();
        storage.fail_sync_after(fail_at);
        let _ = wal.truncate_below(350);
        let crashed = storage.crash(CrashMode::DropUnsynced);
        drop(wal);
        let (wal, report) =
            Wal::open(crashed, small_options()).unwrap_or_else(|e| panic!("fail {fail_at}: {e}"));
        assert_eq!(report.last_lsn, 400);
        assert!(report.segments <= segments_before);
        let records = read_all(&wal);
        assert_eq!(records.last().unwrap().lsn, 400);
        assert!(
            records[0].lsn <= 350,
            "fail {fail_at}: truncated above the checkpoint"
        );
        records.iter().for_each(check_record);
    }
}

#[test]
fn truncation_deletes_whole_segments_below_the_checkpoint_only() {
    let storage = MemoryStorage::new();
    let (wal, _) = open_memory(&storage);
    for lsn in 1..=400 {
        wal.append(kind_for(lsn), &payload_for(lsn)).unwrap();
    }
    wal.wait_durable(400).unwrap();
    let deleted = wal.truncate_below(200).unwrap();
    assert!(deleted > 0);
    let first = wal.first_lsn();
    assert!(first <= 200 && first > 1, "first LSN {first}");
    assert!(matches!(wal.read_from(1), Err(WalError::Truncated { .. })));
    assert_eq!(
        wal.read_from(200).unwrap().next().unwrap().unwrap().lsn,
        200
    );
    // Never the active segment, even with a checkpoint past the end.
    wal.truncate_below(10_000).unwrap();
    assert_eq!(wal.segment_names().len(), 1);
    assert_eq!(wal.append(1, b"x").unwrap(), 401);
    wal.wait_durable(401).unwrap();
    drop(wal);
    let (_, report) = open_memory(&storage);
    assert_eq!(report.last_lsn, 401);
}

#[test]
fn a_crash_during_rotation_leaves_a_log_that_opens() {
    // Syncs during a rotation: old segment data, new segment header, directory. Failing each
    // sync in turn over a run with several rotations covers every step.
    for fail_at in 1..40 {
        let storage = MemoryStorage::new();
        let (wal, _) = open_memory(&storage);
        storage.fail_sync_after(fail_at);
        let mut acknowledged = Vec::new();
        for lsn in 1..=200 {
            if wal.append(kind_for(lsn), &payload_for(lsn)).is_err() {
                break;
            }
            if lsn % 25 == 0 {
                if wal.wait_durable(lsn).is_err() {
                    break;
                }
                acknowledged.push(lsn);
            }
        }
        let crashed = storage.crash(CrashMode::DropUnsynced);
        drop(wal);
        check_recovery_after_crash(&crashed, &acknowledged, &format!("rotation sync {fail_at}"));
    }
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let storage = MemoryStorage::new();
    let (wal, _) = open_memory(&storage);
    assert!(matches!(wal.append(0, b"x"), Err(WalError::ReservedKind)));
    let too_large = vec![0u8; wal.payload_max_bytes() as usize + 1];
    assert!(matches!(
        wal.append(1, &too_large),
        Err(WalError::RecordTooLarge { .. })
    ));
    assert_eq!(wal.next_lsn(), 1);
    assert!(matches!(
        wal.read_from(5),
        Err(WalError::NotYetDurable { .. })
    ));
    let options = WalOptions {
        segment_size_bytes: 100,
        ..WalOptions::default()
    };
    assert!(matches!(
        Wal::open(MemoryStorage::new(), options),
        Err(WalError::InvalidOptions(_))
    ));
}

#[test]
fn the_durable_future_resolves_after_the_sync() {
    struct Flag(AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let storage = MemoryStorage::new();
    let (wal, _) = open_memory(&storage);
    let lsn = wal.append(1, b"async").unwrap();
    let flag = Arc::new(Flag(AtomicBool::new(false)));
    let waker = Waker::from(flag.clone());
    let mut future = Box::pin(wal.durable(lsn));
    let mut context = Context::from_waker(&waker);
    loop {
        match future.as_mut().poll(&mut context) {
            Poll::Ready(result) => break result.unwrap(),
            Poll::Pending => {
                while !flag.0.swap(false, Ordering::SeqCst) {
                    std::thread::yield_now();
                }
            }
        }
    }
    assert!(wal.durable_lsn() >= lsn);
}

#[test]
fn the_file_backend_round_trips_and_truncates_a_torn_tail() {
    let directory = tempfile::tempdir().unwrap();
    let wal_directory = directory.path().join("wal");
    let options = WalOptions {
        segment_size_bytes: 64 * 1024,
        ..WalOptions::default()
    };
    {
        let (wal, report) = Wal::open_directory(&wal_directory, options.clone()).unwrap();
        assert_eq!(report.last_lsn, 0);
        for lsn in 1..=500 {
            wal.append(kind_for(lsn), &payload_for(lsn)).unwrap();
        }
        wal.wait_durable(500).unwrap();
        assert!(wal.segment_names().len() > 1);
    }
    let last_segment = {
        let mut names: Vec<_> = std::fs::read_dir(&wal_directory)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| !name.ends_with(".tmp"))
            .collect();
        names.sort();
        assert!(
            names.iter().all(|name| parse_segment_name(name).is_some()),
            "{names:?}"
        );
        names.pop().unwrap()
    };
    // Tear the tail: garbage after the last record, as a crash mid-write leaves.
    let (wal, _) = Wal::open_directory(&wal_directory, options.clone()).unwrap();
    let records = read_all(&wal);
    assert_eq!(records.len(), 500);
    records.iter().for_each(check_record);
    drop(wal);
    let path = wal_directory.join(&last_segment);
    let mut image = std::fs::read(&path).unwrap();
    let end = image.iter().rposition(|&b| b != 0).unwrap() + 1;
    image[end..end + 10].copy_from_slice(&[0xAB; 10]);
    std::fs::write(&path, &image).unwrap();
    let (wal, report) = Wal::open_directory(&wal_directory, options).unwrap();
    assert_eq!(report.torn_bytes_dropped, 10);
    assert_eq!(report.last_lsn, 500);
    assert_eq!(wal.append_durable(1, b"next").unwrap(), 501);
}
