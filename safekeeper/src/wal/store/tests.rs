//! WalStore scenarios: layout on disk, gap and overlap handling, and the resume point after a
//! crash with every combination of verified WAL and recorded flush LSN.

use super::*;
use crate::wal::format::testutil::WalBuilder;

const SEG: u32 = 1 << 20;
const SYSID: u64 = 7_123_456_789;

fn identity() -> WalIdentity {
    WalIdentity {
        system_identifier: SYSID,
        timeline: 1,
        seg_size: SEG,
        page_magic: None,
    }
}

fn seg_lsn(segno: u64) -> Lsn {
    Lsn::from_segment(segno, SEG)
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (i.wrapping_mul(2_654_435_761) ^ seed) as u8)
        .collect()
}

#[test]
fn writes_segments_in_pg_wal_layout() {
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("wal");
    let start = seg_lsn(3);
    let mut store = WalStore::open(&wal, identity(), start).unwrap();
    assert_eq!(store.written_lsn(), start);
    let stream = pattern(2 * SEG as usize + 12_345, 7);
    // Odd chunk sizes so that chunks straddle segment boundaries.
    let mut lsn = start;
    for chunk in stream.chunks(100_003) {
        store.write(lsn, chunk).unwrap();
        lsn = lsn + chunk.len() as u64;
    }
    assert_eq!(store.flush().unwrap(), lsn);
    let full3 = fs::read(wal.join("000000010000000000000003")).unwrap();
    let full4 = fs::read(wal.join("000000010000000000000004")).unwrap();
    let part5 = fs::read(wal.join("000000010000000000000005.partial")).unwrap();
    assert_eq!(full3, stream[..SEG as usize]);
    assert_eq!(full4, stream[SEG as usize..2 * SEG as usize]);
    assert_eq!(
        part5.len(),
        SEG as usize,
        "the open segment is preallocated"
    );
    assert_eq!(&part5[..12_345], &stream[2 * SEG as usize..]);
    assert!(part5[12_345..].iter().all(|b| *b == 0));
    let listed: Vec<u64> = store
        .list_segments()
        .unwrap()
        .iter()
        .map(|s| s.segno)
        .collect();
    assert_eq!(listed, vec![3, 4]);
}

#[test]
fn gap_is_refused_and_overlap_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let start = seg_lsn(1);
    let mut store = WalStore::open(dir.path(), identity(), start).unwrap();
    store.write(start, &[1, 2, 3, 4]).unwrap();
    // Re-sent bytes are ignored, new ones appended.
    store.write(start + 2, &[3, 4, 5, 6]).unwrap();
    assert_eq!(store.written_lsn(), start + 6);
    let err = store.write(start + 10, &[9]).unwrap_err();
    assert!(err.to_string().contains("WAL gap"), "{err}");
    store.flush().unwrap();
    let part = fs::read(dir.path().join("000000010000000000000001.partial")).unwrap();
    assert_eq!(&part[..7], &[1, 2, 3, 4, 5, 6, 0]);
}

/// Writes a valid partial segment holding `records`, flushed, and returns the builder.
fn write_partial(dir: &Path, segno: u64, records: &[usize], extra: &[u8]) -> WalBuilder {
    let mut b = WalBuilder::new(seg_lsn(segno).0, SEG, SYSID, 0);
    for r in records {
        b.record(*r);
    }
    let mut store = WalStore::open(dir, identity(), seg_lsn(segno)).unwrap();
    store.write(seg_lsn(segno), &b.buf).unwrap();
    store
        .write(seg_lsn(segno) + b.buf.len() as u64, extra)
        .unwrap();
    store.flush().unwrap();
    b
}

#[test]
fn resumes_at_end_of_verified_wal_when_control_file_lags() {
    let dir = tempfile::tempdir().unwrap();
    // Trailing bytes that are not a complete record: a record header claiming more than follows.
    let mut torn = 5000u32.to_le_bytes().to_vec();
    torn.extend_from_slice(&[0xEE; 60]);
    let b = write_partial(dir.path(), 2, &[100, 9000, 300], &torn);
    let store = WalStore::open(dir.path(), identity(), seg_lsn(2)).unwrap();
    let expected = seg_lsn(2) + *b.record_ends.last().unwrap() as u64;
    assert_eq!(store.written_lsn(), expected);
    // The torn tail was cleared so re-streamed bytes land on zeros.
    let part = fs::read(dir.path().join("000000010000000000000002.partial")).unwrap();
    assert!(part[b.buf.len()..].iter().all(|x| *x == 0));
}

#[test]
fn resumes_at_recorded_flush_inside_an_incomplete_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut torn = 5000u32.to_le_bytes().to_vec();
    torn.extend_from_slice(&[0xEE; 60]);
    let b = write_partial(dir.path(), 2, &[100, 200], &torn);
    // The primary got an ack for part of the torn record: those bytes must be kept.
    let recorded = seg_lsn(2) + (b.buf.len() + 30) as u64;
    let store = WalStore::open(dir.path(), identity(), recorded).unwrap();
    assert_eq!(store.written_lsn(), recorded);
    let part = fs::read(dir.path().join("000000010000000000000002.partial")).unwrap();
    assert_eq!(&part[b.buf.len()..b.buf.len() + 30], &torn[..30]);
    assert!(part[b.buf.len() + 30..].iter().all(|x| *x == 0));
}

#[test]
fn damage_below_the_recorded_flush_lsn_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let b = write_partial(dir.path(), 2, &[100, 200, 300], &[]);
    let path = dir.path().join("000000010000000000000002.partial");
    let mut bytes = fs::read(&path).unwrap();
    bytes[b.record_starts[1] + 30] ^= 0xFF;
    fs::write(&path, &bytes).unwrap();
    let recorded = seg_lsn(2) + *b.record_ends.last().unwrap() as u64;
    let err = WalStore::open(dir.path(), identity(), recorded)
        .err()
        .expect("open must fail");
    assert!(err.to_string().contains("damaged"), "{err}");
    // The file is left as it was for inspection.
    assert_eq!(fs::read(&path).unwrap(), bytes);
}

#[test]
fn damage_above_the_recorded_flush_lsn_is_restreamed() {
    let dir = tempfile::tempdir().unwrap();
    let b = write_partial(dir.path(), 2, &[100, 200, 300], &[]);
    let path = dir.path().join("000000010000000000000002.partial");
    let mut bytes = fs::read(&path).unwrap();
    bytes[b.record_starts[2] + 30] ^= 0xFF;
    fs::write(&path, &bytes).unwrap();
    let store = WalStore::open(dir.path(), identity(), seg_lsn(2)).unwrap();
    assert_eq!(store.written_lsn(), seg_lsn(2) + b.record_ends[1] as u64);
}

#[test]
fn missing_wal_files_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = WalStore::open(dir.path(), identity(), seg_lsn(4) + 500)
        .err()
        .expect("open must fail");
    assert!(err.to_string().contains("missing"), "{err}");
}

#[test]
fn resumes_after_last_completed_segment() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = WalStore::open(dir.path(), identity(), seg_lsn(1)).unwrap();
    store.write(seg_lsn(1), &pattern(SEG as usize, 1)).unwrap();
    store.flush().unwrap();
    drop(store);
    let store = WalStore::open(dir.path(), identity(), seg_lsn(1) + 77).unwrap();
    assert_eq!(store.written_lsn(), seg_lsn(2));
}

#[test]
fn leftover_preallocation_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let leftover = dir.path().join("000000010000000000000009.prealloc");
    fs::write(&leftover, [0u8; 10]).unwrap();
    let store = WalStore::open(dir.path(), identity(), seg_lsn(9)).unwrap();
    assert!(!leftover.exists());
    assert_eq!(store.written_lsn(), seg_lsn(9));
}

#[test]
fn segment_switches_take_the_spare_prepared_ahead_and_write_identical_segments() {
    use std::os::unix::fs::MetadataExt;

    use crate::wal::spare::SPARE_FILE_NAME;

    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("wal");
    let start = seg_lsn(3);
    let policy = SpacePolicy {
        spare: true,
        ..SpacePolicy::none()
    };
    let mut store = WalStore::open(&wal, identity(), start)
        .unwrap()
        .with_space(policy);
    store.wait_for_spare();
    assert!(!wal.join(SPARE_FILE_NAME).exists(), "none before WAL moves");
    let tail = SEG as usize / 2 + 777;
    let stream = pattern(2 * SEG as usize + tail, 11);
    let mut lsn = start;
    let mut spare_inodes = Vec::new();
    for chunk in stream.chunks(65_521) {
        store.write(lsn, chunk).unwrap();
        lsn = lsn + chunk.len() as u64;
        store.flush().unwrap();
        store.wait_for_spare();
        if let Ok(meta) = fs::metadata(wal.join(SPARE_FILE_NAME)) {
            if spare_inodes.last() != Some(&meta.ino()) {
                spare_inodes.push(meta.ino());
            }
        }
    }
    // Half way through segments 3, 4 and 5 a spare was prepared; 4 and 5 are the first two.
    assert_eq!(spare_inodes.len(), 3, "{spare_inodes:?}");
    let seg3 = wal.join(segment_file_name(1, 3, SEG));
    let seg4 = wal.join(segment_file_name(1, 4, SEG));
    let seg5 = wal.join(format!("{}.partial", segment_file_name(1, 5, SEG)));
    assert_eq!(fs::metadata(&seg4).unwrap().ino(), spare_inodes[0]);
    assert_eq!(fs::metadata(&seg5).unwrap().ino(), spare_inodes[1]);
    assert!(
        wal.join(SPARE_FILE_NAME).exists(),
        "a spare is ready for the next switch"
    );
    // Byte-identical to what was streamed, and the partial is zeros past the written end.
    assert_eq!(fs::read(&seg3).unwrap(), stream[..SEG as usize]);
    assert_eq!(
        fs::read(&seg4).unwrap(),
        stream[SEG as usize..2 * SEG as usize]
    );
    let partial = fs::read(&seg5).unwrap();
    assert_eq!(partial.len(), SEG as usize);
    assert_eq!(&partial[..tail], &stream[2 * SEG as usize..]);
    assert!(partial[tail..].iter().all(|b| *b == 0));
    assert_eq!(store.written_lsn(), lsn);
}
