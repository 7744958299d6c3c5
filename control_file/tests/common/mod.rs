//! Shared test data: the exact contents of the golden fixtures and small helpers.
//!
//! The fixture contents below are FROZEN together with the fixture files: changing them requires
//! regenerating the files, which must only ever happen for the newest, unreleased format.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use control_file::format::{v1, v2, v3};
use control_file::{
    ClusterState, HistoryObject, Lsn, ObjectStatus, PartialName, PartialObject, RemoteObjects,
    SegmentRange, TermSwitch,
};

pub const SEG16: u32 = 16 << 20;

pub fn fixture_path(version: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("v{version}.control"))
}

/// The v1 payload stored in `tests/fixtures/v1.control`, spelled in v1's own frozen types.
pub fn v1_fixture_wire() -> v1::ClusterState {
    v1::ClusterState {
        sk_id: 1,
        cluster_name: "main".into(),
        system_identifier: 7_301_234_567_890_123_456,
        wal_segment_size: SEG16,
        pg_major_version: 15,
        timeline: 2,
        term: 3,
        term_history: vec![
            v1::TermSwitch {
                term: 1,
                timeline: 1,
                start_lsn: 0x0100_0000,
            },
            v1::TermSwitch {
                term: 2,
                timeline: 1,
                start_lsn: 0x0500_0000,
            },
            v1::TermSwitch {
                term: 3,
                timeline: 2,
                start_lsn: 0x06A0_0000,
            },
        ],
        flush_lsn: 0x0734_5678,
        commit_lsn: 0x0734_5000,
        backup_lsn: 0x0700_0000,
        remote: v1::RemoteObjects {
            full_segments: vec![
                v1::SegmentRange {
                    timeline: 1,
                    start_segno: 1,
                    end_segno: 6,
                },
                v1::SegmentRange {
                    timeline: 2,
                    start_segno: 6,
                    end_segno: 7,
                },
            ],
            partials: vec![
                v1::PartialObject {
                    name: v1::PartialName {
                        timeline: 2,
                        segno: 7,
                        commit_lsn: 0x0720_0000,
                        term: 3,
                        sk_id: 1,
                    },
                    status: v1::ObjectStatus::Deleting,
                    size: 0x20_0000,
                    crc32c: 0x1234_5678,
                },
                v1::PartialObject {
                    name: v1::PartialName {
                        timeline: 2,
                        segno: 7,
                        commit_lsn: 0x0734_5000,
                        term: 3,
                        sk_id: 1,
                    },
                    status: v1::ObjectStatus::Uploaded,
                    size: 0x34_5000,
                    crc32c: 0x9ABC_DEF0,
                },
                v1::PartialObject {
                    name: v1::PartialName {
                        timeline: 2,
                        segno: 7,
                        commit_lsn: 0x0734_5678,
                        term: 3,
                        sk_id: 1,
                    },
                    status: v1::ObjectStatus::InProgress,
                    size: 0x34_5678,
                    crc32c: 0,
                },
            ],
            history: vec![v1::HistoryObject {
                timeline: 2,
                status: v1::ObjectStatus::Uploaded,
                size: 42,
                crc32c: 0xE306_9283,
            }],
        },
    }
}

fn partial(commit: u64, status: ObjectStatus, crc32c: u32) -> PartialObject {
    PartialObject {
        name: PartialName {
            timeline: 2,
            segno: 7,
            commit_lsn: Lsn(commit),
            term: 3,
            sk_id: 1,
            start_lsn: Lsn(7 * u64::from(SEG16)),
        },
        status,
        size: commit - 7 * u64::from(SEG16),
        crc32c,
        level: 0,
    }
}

/// What loading the v1 fixture must produce (in the newest in-memory form).
pub fn v1_fixture_upgraded() -> ClusterState {
    ClusterState {
        sk_id: 1,
        cluster_name: "main".into(),
        system_identifier: 7_301_234_567_890_123_456,
        wal_segment_size: SEG16,
        pg_major_version: 15,
        wal_page_magic: 0,
        timeline: 2,
        term: 3,
        term_history: vec![
            TermSwitch {
                term: 1,
                timeline: 1,
                start_lsn: Lsn(0x0100_0000),
            },
            TermSwitch {
                term: 2,
                timeline: 1,
                start_lsn: Lsn(0x0500_0000),
            },
            TermSwitch {
                term: 3,
                timeline: 2,
                start_lsn: Lsn(0x06A0_0000),
            },
        ],
        flush_lsn: Lsn(0x0734_5678),
        commit_lsn: Lsn(0x0734_5000),
        backup_lsn: Lsn(0x0700_0000),
        remote: RemoteObjects {
            full_segments: vec![
                SegmentRange {
                    timeline: 1,
                    start_segno: 1,
                    end_segno: 6,
                },
                SegmentRange {
                    timeline: 2,
                    start_segno: 6,
                    end_segno: 7,
                },
            ],
            partials: vec![
                partial(0x0720_0000, ObjectStatus::Deleting, 0x1234_5678),
                partial(0x0734_5000, ObjectStatus::Uploaded, 0x9ABC_DEF0),
                partial(0x0734_5678, ObjectStatus::InProgress, 0),
            ],
            history: vec![HistoryObject {
                timeline: 2,
                status: ObjectStatus::Uploaded,
                size: 42,
                crc32c: 0xE306_9283,
            }],
        },
        last_gc_at_unix_ms: 0,
        partial_interval_ms: 0,
    }
}

/// The v2 payload stored in `tests/fixtures/v2.control`, spelled in v2's own frozen types (the v1
/// fixture with another cluster and safekeeper, and the v2 fields set).
pub fn v2_fixture_wire() -> v2::ClusterState {
    let mut v1 = v1_fixture_wire();
    v1.cluster_name = "orders-db".into();
    v1.sk_id = 2;
    for p in &mut v1.remote.partials {
        p.name.sk_id = 2;
    }
    v2::ClusterState {
        last_gc_at_unix_ms: 1_767_225_600_000, // 2026-01-01T00:00:00Z
        partial_interval_ms: 500,
        ..v1.upgrade()
    }
}

/// What loading the v2 fixture must produce (v2 fields set, no WAL page magic yet).
pub fn v2_fixture_state() -> ClusterState {
    let mut s = v1_fixture_upgraded();
    s.cluster_name = "orders-db".into();
    s.sk_id = 2;
    for p in &mut s.remote.partials {
        p.name.sk_id = 2;
    }
    s.last_gc_at_unix_ms = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    s.partial_interval_ms = 500;
    s
}

/// The state stored in `tests/fixtures/v3.control`: the v2 fixture's state with another safekeeper
/// and the v3 field set (PostgreSQL 15's WAL page magic).
pub fn v3_fixture_state() -> ClusterState {
    let mut s = v2_fixture_state();
    s.sk_id = 3;
    for p in &mut s.remote.partials {
        p.name.sk_id = 3;
    }
    s.wal_page_magic = 0xD110;
    s
}

/// The v3 payload stored in `tests/fixtures/v3.control`, spelled in v3's own frozen types.
pub fn v3_fixture_wire() -> v3::ClusterState {
    let mut v3 = v2_fixture_wire().upgrade();
    v3.sk_id = 3;
    for p in &mut v3.remote.partials {
        p.name.sk_id = 3;
    }
    v3.wal_page_magic = 0xD110;
    v3
}

/// The WAL start of the increment piece in the v4 fixture.
pub const V4_DELTA_START: u64 = 0x0734_5000;

/// The state stored in `tests/fixtures/v4.control`: the v3 fixture's state with another safekeeper
/// and its in-progress piece an increment `[0/7345000, 0/7345678)` on top of the uploaded base
/// `[0/7000000, 0/7345000)` (the v4 field, `start_lsn`, inside the segment).
pub fn v4_fixture_state() -> ClusterState {
    let mut s = v3_fixture_state();
    s.sk_id = 4;
    for p in &mut s.remote.partials {
        p.name.sk_id = 4;
    }
    let delta = &mut s.remote.partials[2];
    assert_eq!(delta.status, ObjectStatus::InProgress);
    delta.name.start_lsn = Lsn(V4_DELTA_START);
    delta.size = delta.name.commit_lsn.0 - V4_DELTA_START;
    delta.crc32c = 0x0BAD_F00D;
    // The other v4 field: the merge level of a piece.
    delta.level = 2;
    s
}

/// The fixture state of every format version, as loading that fixture must produce it.
pub fn fixture_state(version: u32) -> ClusterState {
    match version {
        1 => v1_fixture_upgraded(),
        2 => v2_fixture_state(),
        3 => v3_fixture_state(),
        4 => v4_fixture_state(),
        _ => panic!("no fixture for format version {version}"),
    }
}

/// A small, valid state for tests that do not care about the contents.
pub fn simple_state(sk_id: u64) -> ClusterState {
    ClusterState::new(sk_id, "main", 42, SEG16, 15, 1, Lsn(0x0100_0028))
}
