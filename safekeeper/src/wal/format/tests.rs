//! Scanner tests on synthetic WAL laid out exactly as PostgreSQL lays it out: long header on the
//! first page, short headers after, records MAXALIGNed, split across pages with continuation
//! headers, CRC-32C over payload then header.

use super::testutil::WalBuilder;
use super::*;

const SEG: u32 = 1 << 20; // 1 MiB segments keep the tests fast
const SYSID: u64 = 7_300_000_000_000_000_001;

fn scan(data: &[u8]) -> ScanResult {
    scan_segment(data, 0x0300_0000, SEG, Expect::system(SYSID))
}

fn builder_with(records: &[usize]) -> WalBuilder {
    let mut b = WalBuilder::new(0x0300_0000, SEG, SYSID, 0);
    for r in records {
        b.record(*r);
    }
    b
}

#[test]
fn finds_end_of_complete_records_followed_by_zeros() {
    let b = builder_with(&[100, 57, 9000, 24, 20000, 333]);
    let end = *b.record_ends.last().unwrap();
    let mut image = b.buf.clone();
    image.resize(SEG as usize, 0);
    let r = scan(&image);
    assert_eq!(r.valid_end, end);
    assert_eq!(r.records, 6);
    assert_eq!(r.stop, ScanStop::EndOfWal);
    assert!(!r.stop.is_corruption());
    assert_eq!(r.pg_version, Some(15));
}

#[test]
fn stops_before_an_incomplete_record_at_every_cut() {
    let b = builder_with(&[100, 9000, 20000, 64]);
    // Cut the image at many positions: valid_end is always the end of the last complete record
    // at or before the cut.
    for cut in (0..b.buf.len()).step_by(97).chain([b.buf.len()]) {
        let r = scan(&b.buf[..cut]);
        let expected = b
            .record_ends
            .iter()
            .copied()
            .filter(|e| *e <= cut)
            .max()
            .unwrap_or(if cut >= LONG_PAGE_HEADER_SIZE {
                LONG_PAGE_HEADER_SIZE
            } else {
                0
            });
        assert_eq!(r.valid_end, expected, "cut at {cut}");
        assert!(r.valid_end <= cut);
    }
}

#[test]
fn segment_starting_with_a_continuation_is_skipped_then_scanned() {
    let mut b = WalBuilder::new(0x0300_0000, SEG, SYSID, 12_000);
    b.record(200);
    b.record(300);
    let r = scan(&b.buf);
    assert_eq!(r.records, 2);
    assert_eq!(r.valid_end, *b.record_ends.last().unwrap());
    // Data that ends inside the continuation has no verified byte past the header.
    let r = scan(&b.buf[..5000]);
    assert_eq!(r.valid_end, 0);
}

#[test]
fn flipped_payload_byte_is_a_bad_record() {
    let b = builder_with(&[100, 500, 700]);
    let mut image = b.buf.clone();
    let victim = b.record_starts[1] + RECORD_HEADER_SIZE + 10;
    image[victim] ^= 0x01;
    let r = scan(&image);
    assert_eq!(r.valid_end, b.record_ends[0]);
    assert!(matches!(r.stop, ScanStop::BadRecord { .. }), "{:?}", r.stop);
    assert!(r.stop.is_corruption());
}

#[test]
fn broken_back_link_is_a_bad_record() {
    let b = builder_with(&[100, 500]);
    let mut image = b.buf.clone();
    let at = b.record_starts[1] + 8;
    image[at] ^= 0x08;
    let r = scan(&image);
    assert_eq!(r.valid_end, b.record_ends[0]);
    assert!(matches!(r.stop, ScanStop::BadRecord { ref reason, .. } if reason.contains("xl_prev")));
}

#[test]
fn wrong_page_address_stops_at_that_page() {
    let b = builder_with(&[100, 20000, 100]);
    let mut image = b.buf.clone();
    image[WAL_PAGE_SIZE + 8] ^= 0x10; // page_addr of the second page
    let r = scan(&image);
    assert_eq!(r.valid_end, b.record_ends[0]);
    assert!(matches!(
        r.stop,
        ScanStop::BadPage {
            offset: WAL_PAGE_SIZE,
            problem: PageProblem::WrongAddress { .. }
        }
    ));
}

#[test]
fn other_system_identifier_is_rejected_on_the_first_page() {
    let b = builder_with(&[100]);
    let r = scan_segment(&b.buf, 0x0300_0000, SEG, Expect::system(SYSID + 1));
    assert_eq!(r.valid_end, 0);
    assert!(matches!(
        r.stop,
        ScanStop::BadPage {
            problem: PageProblem::WrongSystemIdentifier { .. },
            ..
        }
    ));
}

#[test]
fn all_zero_segment_is_empty_not_corrupt() {
    let r = scan(&vec![0u8; 3 * WAL_PAGE_SIZE]);
    assert_eq!(r.valid_end, 0);
    assert_eq!(r.stop, ScanStop::EndOfWal);
    assert!(!r.stop.is_corruption());
}

/// Sets the magic of every page of `image` (as a primary of another major would write it).
fn with_magic(mut image: Vec<u8>, magic: u16) -> Vec<u8> {
    for page in image.chunks_mut(WAL_PAGE_SIZE) {
        page[..2].copy_from_slice(&magic.to_le_bytes());
    }
    image
}

#[test]
fn postgres_18_wal_is_valid_wal() {
    let b = builder_with(&[100, 9000, 20000, 64]);
    let end = *b.record_ends.last().unwrap();
    let r = scan(&with_magic(b.buf.clone(), 0xD118));
    assert_eq!(
        (r.valid_end, r.records, r.stop),
        (end, 4, ScanStop::EndOfData)
    );
    assert_eq!((r.magic, r.pg_version), (Some(0xD118), Some(18)));
}

#[test]
fn an_unknown_magic_with_the_known_page_layout_is_learned_not_damage() {
    let b = builder_with(&[100, 9000, 20000, 64]);
    let end = *b.record_ends.last().unwrap();
    let r = scan(&with_magic(b.buf.clone(), 0xD1F0));
    assert_eq!((r.valid_end, r.records), (end, 4));
    assert!(!r.stop.is_corruption(), "{:?}", r.stop);
    assert_eq!((r.magic, r.pg_version), (Some(0xD1F0), None));
}

#[test]
fn a_page_with_another_magic_than_the_recorded_one_is_damage() {
    let b = builder_with(&[100]);
    let expect = Expect {
        system_identifier: Some(SYSID),
        magic: Some(0xD116),
    };
    let r = scan_segment(&b.buf, 0x0300_0000, SEG, expect);
    assert_eq!(r.valid_end, 0);
    assert_eq!(
        r.stop,
        ScanStop::BadPage {
            offset: 0,
            problem: PageProblem::WrongMagic {
                expected: 0xD116,
                found: 0xD110
            }
        }
    );
    assert!(r.stop.is_corruption());
    let shown = PageProblem::WrongMagic {
        expected: 0xD116,
        found: 0xD110,
    }
    .to_string();
    assert!(shown.contains("0xD110 (PostgreSQL 15)") && shown.contains("0xD116 (PostgreSQL 17)"));
}

#[test]
fn a_later_page_with_another_magic_than_the_first_is_damage() {
    let b = builder_with(&[100, 9000, 20000, 64]);
    let mut image = b.buf.clone();
    image[WAL_PAGE_SIZE..WAL_PAGE_SIZE + 2].copy_from_slice(&0x55u16.to_le_bytes());
    let r = scan(&image);
    assert!(r.stop.is_corruption());
    assert!(matches!(
        r.stop,
        ScanStop::BadPage {
            offset: WAL_PAGE_SIZE,
            problem: PageProblem::WrongMagic { found: 0x55, .. }
        }
    ));
    assert!(r.valid_end <= WAL_PAGE_SIZE);
}
