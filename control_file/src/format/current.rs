//! Conversion between the newest frozen wire structs and the in-memory [`ClusterState`].
//!
//! This is the only place that knows which version is the newest. When a version 5 is added: add a
//! frozen `v5.rs`, point `Wire` at `v5::ClusterState`, rewrite these two functions for it, give
//! `v4::ClusterState` an `upgrade()` (the v4 definitions themselves stay untouched), extend the
//! chain in `decode_and_upgrade`, and commit a `tests/fixtures/v5.control` written by the
//! regenerator test (v4 was added exactly so: see `v3::ClusterState::upgrade`).
//!
//! Invariant: `from_wire(to_wire(s)) == s` for every state (no field is dropped or defaulted).

use super::v4 as wire;
use crate::lsn::Lsn;
use crate::names::PartialName;
use crate::state::{
    ClusterState, HistoryObject, ObjectStatus, PartialObject, RemoteObjects, SegmentRange,
    TermSwitch,
};

/// The newest format version; a save always writes it.
pub const CURRENT_FORMAT_VERSION: u32 = 4;

/// The payload struct of [`CURRENT_FORMAT_VERSION`].
pub type Wire = wire::ClusterState;

fn status_to_wire(s: ObjectStatus) -> wire::ObjectStatus {
    match s {
        ObjectStatus::InProgress => wire::ObjectStatus::InProgress,
        ObjectStatus::Uploaded => wire::ObjectStatus::Uploaded,
        ObjectStatus::Deleting => wire::ObjectStatus::Deleting,
    }
}

fn status_from_wire(s: wire::ObjectStatus) -> ObjectStatus {
    match s {
        wire::ObjectStatus::InProgress => ObjectStatus::InProgress,
        wire::ObjectStatus::Uploaded => ObjectStatus::Uploaded,
        wire::ObjectStatus::Deleting => ObjectStatus::Deleting,
    }
}

/// In-memory state → newest wire struct.
pub fn to_wire(s: &ClusterState) -> Wire {
    Wire {
        sk_id: s.sk_id,
        cluster_name: s.cluster_name.clone(),
        system_identifier: s.system_identifier,
        wal_segment_size: s.wal_segment_size,
        pg_major_version: s.pg_major_version,
        timeline: s.timeline,
        term: s.term,
        term_history: s
            .term_history
            .iter()
            .map(|t| wire::TermSwitch {
                term: t.term,
                timeline: t.timeline,
                start_lsn: t.start_lsn.0,
            })
            .collect(),
        flush_lsn: s.flush_lsn.0,
        commit_lsn: s.commit_lsn.0,
        backup_lsn: s.backup_lsn.0,
        remote: wire::RemoteObjects {
            full_segments: s
                .remote
                .full_segments
                .iter()
                .map(|r| wire::SegmentRange {
                    timeline: r.timeline,
                    start_segno: r.start_segno,
                    end_segno: r.end_segno,
                })
                .collect(),
            partials: s
                .remote
                .partials
                .iter()
                .map(|p| wire::PartialObject {
                    name: wire::PartialName {
                        timeline: p.name.timeline,
                        segno: p.name.segno,
                        commit_lsn: p.name.commit_lsn.0,
                        term: p.name.term,
                        sk_id: p.name.sk_id,
                        start_lsn: p.name.start_lsn.0,
                    },
                    status: status_to_wire(p.status),
                    size: p.size,
                    crc32c: p.crc32c,
                    level: p.level,
                })
                .collect(),
            history: s
                .remote
                .history
                .iter()
                .map(|h| wire::HistoryObject {
                    timeline: h.timeline,
                    status: status_to_wire(h.status),
                    size: h.size,
                    crc32c: h.crc32c,
                })
                .collect(),
        },
        last_gc_at_unix_ms: s.last_gc_at_unix_ms,
        partial_interval_ms: s.partial_interval_ms,
        wal_page_magic: s.wal_page_magic,
    }
}

/// Newest wire struct → in-memory state (not yet validated).
pub fn from_wire(w: Wire) -> ClusterState {
    ClusterState {
        sk_id: w.sk_id,
        cluster_name: w.cluster_name,
        system_identifier: w.system_identifier,
        wal_segment_size: w.wal_segment_size,
        pg_major_version: w.pg_major_version,
        timeline: w.timeline,
        term: w.term,
        term_history: w
            .term_history
            .into_iter()
            .map(|t| TermSwitch {
                term: t.term,
                timeline: t.timeline,
                start_lsn: Lsn(t.start_lsn),
            })
            .collect(),
        flush_lsn: Lsn(w.flush_lsn),
        commit_lsn: Lsn(w.commit_lsn),
        backup_lsn: Lsn(w.backup_lsn),
        remote: RemoteObjects {
            full_segments: w
                .remote
                .full_segments
                .into_iter()
                .map(|r| SegmentRange {
                    timeline: r.timeline,
                    start_segno: r.start_segno,
                    end_segno: r.end_segno,
                })
                .collect(),
            partials: w
                .remote
                .partials
                .into_iter()
                .map(|p| PartialObject {
                    name: PartialName {
                        timeline: p.name.timeline,
                        segno: p.name.segno,
                        commit_lsn: Lsn(p.name.commit_lsn),
                        term: p.name.term,
                        sk_id: p.name.sk_id,
                        start_lsn: Lsn(p.name.start_lsn),
                    },
                    status: status_from_wire(p.status),
                    size: p.size,
                    crc32c: p.crc32c,
                    level: p.level,
                })
                .collect(),
            history: w
                .remote
                .history
                .into_iter()
                .map(|h| HistoryObject {
                    timeline: h.timeline,
                    status: status_from_wire(h.status),
                    size: h.size,
                    crc32c: h.crc32c,
                })
                .collect(),
        },
        last_gc_at_unix_ms: w.last_gc_at_unix_ms,
        partial_interval_ms: w.partial_interval_ms,
        wal_page_magic: w.wal_page_magic,
    }
}
