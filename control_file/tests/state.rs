//! ClusterState behaviour: constructors, terms, the full segment ranges, invariants, and encode/decode
//! round trips of arbitrary valid states.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{SEG16, simple_state, v4_fixture_state};
use control_file::format::{self, CURRENT_FORMAT_VERSION};
use control_file::{
    ClusterState, HistoryObject, Lsn, ObjectStatus, PartialName, PartialObject, RemoteObjects,
    TermSwitch,
};
use proptest::prelude::*;

#[test]
fn new_state() {
    let s = ClusterState::new(3, "main", 42, SEG16, 16, 1, Lsn(0x0100_0028));
    assert_eq!(s.term, 1);
    assert_eq!(
        s.term_history,
        vec![TermSwitch {
            term: 1,
            timeline: 1,
            start_lsn: Lsn(0x0100_0028)
        }]
    );
    assert_eq!(s.flush_lsn, Lsn(0x0100_0028));
    assert_eq!(s.commit_lsn, Lsn(0x0100_0028));
    assert_eq!(s.backup_lsn, Lsn(0x0100_0000));
    assert_eq!(s.remote, RemoteObjects::default());
    assert_eq!((s.last_gc_at_unix_ms, s.partial_interval_ms), (0, 0));
    assert_eq!(s.wal_page_magic, 0, "no WAL page seen yet");
    s.validate().expect("fresh state is valid");
    // Segment 0 of a fresh cluster.
    let s0 = ClusterState::new(1, "c", 1, SEG16, 15, 1, Lsn(0));
    assert_eq!(s0.backup_lsn, Lsn(0));
    s0.validate().expect("valid");
}

#[test]
fn terms() {
    let mut s = simple_state(1);
    assert_eq!(s.start_term(1, Lsn(0x0200_0000)), 2);
    assert_eq!(s.start_term(2, Lsn(0x0300_0000)), 3);
    assert_eq!(s.start_term(2, Lsn(0x0300_0000)), 4); // e.g. an admin request, no new WAL
    assert_eq!((s.term, s.timeline), (4, 2));
    s.validate().expect("valid");
    assert_eq!(s.term_at(Lsn(0)), 0, "before the history");
    assert_eq!(s.term_at(Lsn(0x0100_0028)), 1);
    assert_eq!(s.term_at(Lsn(0x01FF_FFFF)), 1);
    assert_eq!(s.term_at(Lsn(0x0200_0000)), 2);
    assert_eq!(s.term_at(Lsn(0x0300_0000)), 4);
    assert_eq!(s.term_at(Lsn::MAX), 4);
}

#[test]
fn full_segment_ranges_merge() {
    let mut r = RemoteObjects::default();
    for segno in [5, 7, 6, 1, 2, 0, 3, 9, 4] {
        r.add_full_segment(1, segno);
    }
    r.add_full_segment(2, 8);
    r.add_full_segment(1, 3); // already there
    let ranges: Vec<_> = r
        .full_segments
        .iter()
        .map(|x| (x.timeline, x.start_segno, x.end_segno))
        .collect();
    assert_eq!(ranges, vec![(1, 0, 8), (1, 9, 10), (2, 8, 9)]);
    assert!(
        r.contains_full_segment(1, 0)
            && r.contains_full_segment(1, 7)
            && r.contains_full_segment(1, 9)
    );
    assert!(
        !r.contains_full_segment(1, 8)
            && !r.contains_full_segment(2, 7)
            && !r.contains_full_segment(3, 0)
    );
    assert_eq!(r.full_segment_count(), 10);
}

#[test]
fn many_segments_stay_small() {
    let mut s = simple_state(1);
    for segno in 0..100_000 {
        s.remote.add_full_segment(1, segno);
    }
    assert_eq!(s.remote.full_segments.len(), 1);
    assert!(format::encode_file(&s).expect("encode").len() < 256);
}

#[test]
fn invariants_are_enforced() {
    type Breaker = fn(&mut ClusterState);
    let cases: &[(&str, Breaker)] = &[
        ("wal_segment_size", |s| s.wal_segment_size = 1000),
        ("sk_id", |s| s.sk_id = 0),
        ("cluster_name", |s| s.cluster_name.clear()),
        ("cluster_name", |s| s.cluster_name = "a/b".into()),
        ("cluster_name", |s| s.cluster_name = "..".into()),
        ("timeline 0", |s| s.timeline = 0),
        ("commit_lsn", |s| s.commit_lsn = s.flush_lsn + 1),
        ("term_history is empty", |s| s.term_history.clear()),
        ("differ from the last term_history", |s| s.term = 2),
        ("differ from the last term_history", |s| s.timeline = 2),
        ("not increasing", |s| {
            s.start_term(1, Lsn(0x0200_0000));
            s.term_history[1].term = 1;
            s.term = 1;
        }),
        ("start LSNs decrease", |s| {
            s.start_term(1, Lsn(0x0100_0000));
        }),
        ("bad full segment range", |s| {
            s.remote.full_segments.push(control_file::SegmentRange {
                timeline: 1,
                start_segno: 3,
                end_segno: 3,
            })
        }),
        ("overlapping", |s| {
            s.remote.add_full_segment(1, 5);
            s.remote.full_segments.push(control_file::SegmentRange {
                timeline: 1,
                start_segno: 2,
                end_segno: 6,
            })
        }),
        ("name covers", |s| {
            s.remote.partials.push(partial(1, 0x0100_0010, 99));
        }),
        ("does not name", |s| {
            s.remote.partials.push(partial(1, 0x0200_0001, 0x0100_0001));
        }),
        ("listed twice", |s| {
            s.remote.partials.push(partial(1, 0x0100_0010, 0x10));
            s.remote.partials.push(partial(1, 0x0100_0010, 0x10));
        }),
        ("name covers", |s| {
            // An increment's size is what it holds, not its commit offset.
            let mut p = partial(1, 0x0100_0010, 0x10);
            p.name.start_lsn = Lsn(0x0100_0008);
            s.remote.partials.push(p);
        }),
        ("does not name", |s| {
            let mut p = partial(1, 0x0100_0010, 0);
            p.name.start_lsn = Lsn(0x0100_0010); // empty: start = commit
            s.remote.partials.push(p);
        }),
        ("does not name", |s| {
            let mut p = partial(1, 0x0100_0010, 0x11);
            p.name.start_lsn = Lsn(0x00FF_FFFF); // before the segment start
            s.remote.partials.push(p);
        }),
        ("listed twice", |s| {
            let h = HistoryObject {
                timeline: 2,
                status: ObjectStatus::Uploaded,
                size: 1,
                crc32c: 1,
            };
            s.remote.history.push(h.clone());
            s.remote.history.push(h);
        }),
    ];
    for (needle, breaker) in cases {
        let mut s = simple_state(1);
        breaker(&mut s);
        let reason = s.validate().expect_err(needle);
        assert!(reason.contains(needle), "expected {needle:?} in {reason:?}");
        assert!(!reason.contains('\n'));
        let dir = tempfile::tempdir().expect("tempdir");
        let err = control_file::save(&dir.path().join("c"), &s).expect_err(needle);
        assert!(
            matches!(err, control_file::ControlFileError::Invalid { .. }),
            "{err:?}"
        );
    }
}

fn partial(segno: u64, commit: u64, size: u64) -> PartialObject {
    PartialObject {
        name: PartialName {
            timeline: 1,
            segno,
            commit_lsn: Lsn(commit),
            term: 1,
            sk_id: 1,
            start_lsn: Lsn::from_segment(segno, SEG16),
        },
        status: ObjectStatus::InProgress,
        size,
        crc32c: 0,
        level: 0,
    }
}

/// A base and an increment of one segment and term are two objects: both may be listed.
#[test]
fn base_and_increment_with_one_commit_lsn_are_distinct() {
    let mut s = simple_state(1);
    let base = partial(1, 0x0100_0010, 0x10);
    let mut delta = base.clone();
    delta.name.start_lsn = Lsn(0x0100_0008);
    delta.size = 8;
    s.remote.partials.push(base);
    s.remote.partials.push(delta);
    s.validate().expect("valid");
}

#[test]
fn json_round_trip() {
    let s = v4_fixture_state();
    let json = serde_json::to_string(&s).expect("json");
    assert_eq!(
        serde_json::from_str::<ClusterState>(&json).expect("parse"),
        s
    );
    let value = serde_json::to_value(&s).expect("json value");
    assert_eq!(value["wal_page_magic"], 0xD110);
}

#[test]
fn wal_page_magic_is_stored_as_is() {
    // Any value is valid (0 = not learned yet); the file keeps it exactly.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("safekeeper.control");
    for magic in [0, 1, 0xD106, 0xD110, 0xD116, u16::MAX] {
        let mut s = simple_state(1);
        s.wal_page_magic = magic;
        s.validate().expect("any magic is valid");
        control_file::save(&path, &s).expect("save");
        let (loaded, version) = control_file::load_versioned(&path).expect("load");
        assert_eq!(version, CURRENT_FORMAT_VERSION);
        assert_eq!(loaded.wal_page_magic, magic);
        assert_eq!(loaded, s);
    }
}

/// Arbitrary valid states.
fn valid_state() -> impl Strategy<Value = ClusterState> {
    let seg = (20u32..=30).prop_map(|s| 1u32 << s);
    let steps = proptest::collection::vec((1u64..5, 0u32..3, 0u64..1 << 32), 0..6);
    let segments = proptest::collection::vec((1u32..4, 0u64..200), 0..40);
    let partials = proptest::collection::vec(
        (
            0u64..200,
            1u64..=1 << 20,
            0u8..3,
            any::<u32>(),
            any::<prop::sample::Index>(),
        ),
        0..6,
    );
    (
        seg,
        any::<u64>(),
        "[a-z][a-z0-9_-]{0,30}",
        1u64..100,
        steps,
        segments,
        partials,
        any::<(u64, u64, u16)>(),
    )
        .prop_map(
            |(seg, sysid, name, sk_id, steps, segments, partials, (gc, interval, magic))| {
                let mut s = ClusterState::new(sk_id, &name, sysid, seg, 16, 1, Lsn(0x0100_0028));
                let mut lsn = s.flush_lsn;
                for (term_gap, tli_gap, advance) in steps {
                    lsn += advance;
                    s.start_term(s.timeline + tli_gap, lsn);
                    s.term += term_gap - 1;
                    if let Some(last) = s.term_history.last_mut() {
                        last.term = s.term;
                    }
                }
                s.flush_lsn = lsn + 17;
                s.commit_lsn = lsn;
                for (tli, segno) in segments {
                    s.remote.add_full_segment(tli, segno);
                }
                let statuses = [
                    ObjectStatus::InProgress,
                    ObjectStatus::Uploaded,
                    ObjectStatus::Deleting,
                ];
                for (i, (segno, end, status, crc32c, start)) in partials.into_iter().enumerate() {
                    // A piece [start, end) of the segment: a base when start is 0.
                    let end = end.min(u64::from(seg));
                    let start = start.index(end as usize) as u64;
                    let seg_start = Lsn::from_segment(segno, seg);
                    let name = PartialName {
                        timeline: 1,
                        segno,
                        commit_lsn: seg_start + end,
                        term: i as u64 + 1,
                        sk_id,
                        start_lsn: seg_start + start,
                    };
                    s.remote.partials.push(PartialObject {
                        name,
                        status: statuses[status as usize],
                        size: end - start,
                        crc32c,
                        level: (crc32c % 4) as u8,
                    });
                }
                s.remote.history.push(HistoryObject {
                    timeline: 2,
                    status: ObjectStatus::Deleting,
                    size: 7,
                    crc32c: 3,
                });
                s.last_gc_at_unix_ms = gc;
                s.partial_interval_ms = interval;
                s.wal_page_magic = magic;
                s
            },
        )
}

proptest! {
    #[test]
    fn encode_decode_round_trip(s in valid_state()) {
        prop_assert_eq!(s.validate(), Ok(()));
        let bytes = format::encode_file(&s).expect("encode");
        let decoded = format::decode_file(Path::new("mem"), &bytes);
        prop_assert_eq!(decoded.ok(), Some((s, CURRENT_FORMAT_VERSION)));
    }

    #[test]
    fn add_full_segment_matches_a_set(adds in proptest::collection::vec((1u32..4, 0u64..64), 0..100)) {
        let mut remote = RemoteObjects::default();
        let mut model = BTreeSet::new();
        for (tli, segno) in adds {
            remote.add_full_segment(tli, segno);
            model.insert((tli, segno));
        }
        for tli in 0..5 {
            for segno in 0..70 {
                prop_assert_eq!(remote.contains_full_segment(tli, segno), model.contains(&(tli, segno)));
            }
        }
        // Canonical: sorted, non-empty, and neighbours of one timeline neither overlap nor touch.
        for w in remote.full_segments.windows(2) {
            prop_assert!((w[0].timeline, w[0].end_segno) < (w[1].timeline, w[1].start_segno));
        }
        prop_assert!(remote.full_segments.iter().all(|r| r.start_segno < r.end_segno));
        prop_assert_eq!(remote.full_segment_count(), model.len() as u64);
    }
}

#[test]
fn save_load_round_trip_of_generated_states() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("safekeeper.control");
    let mut runner = TestRunner::deterministic();
    for _ in 0..32 {
        let s = valid_state().new_tree(&mut runner).expect("tree").current();
        control_file::save(&path, &s).expect("save");
        assert_eq!(
            control_file::load_versioned(&path).expect("load"),
            (s, CURRENT_FORMAT_VERSION)
        );
    }
}
