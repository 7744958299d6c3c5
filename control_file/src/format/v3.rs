//! Format version 3: FROZEN once released. Never edit these definitions; add a new version instead.
//!
//! Same rules as [`super::v1`]: bincode encodes fields in declaration order, serde names are not
//! stored, so field order and types are the format. v3 = v2 plus one trailing field of
//! [`ClusterState`], `wal_page_magic` (a `u16`, two bytes little endian); all nested structs are
//! v1's, unchanged.
//!
//! [`ClusterState::upgrade`] is the v3 → v4 step of the upgrade chain (added with v4; the
//! definitions above it are untouched).

use serde::{Deserialize, Serialize};

use super::v4;

pub use super::v1::{
    HistoryObject, ObjectStatus, PartialName, PartialObject, RemoteObjects, SegmentRange,
    TermSwitch,
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub sk_id: u64,
    pub cluster_name: String,
    pub system_identifier: u64,
    pub wal_segment_size: u32,
    pub pg_major_version: u32,
    pub timeline: u32,
    pub term: u64,
    pub term_history: Vec<TermSwitch>,
    pub flush_lsn: u64,
    pub commit_lsn: u64,
    pub backup_lsn: u64,
    pub remote: RemoteObjects,
    /// Milliseconds since the Unix epoch of the last completed remote GC; 0 = never.
    pub last_gc_at_unix_ms: u64,
    /// Partial upload interval in milliseconds; 0 = the service default.
    pub partial_interval_ms: u64,
    /// `xlp_magic` of the WAL pages the primary sends; 0 = not learned yet.
    pub wal_page_magic: u16,
}

impl ClusterState {
    /// v3 → v4: every partial object of v3 is a base piece, so its `start_lsn` is the start of its
    /// segment (`segno * wal_segment_size`; a value that overflows saturates, and validation then
    /// rejects the entry as it rejected it in v3).
    pub fn upgrade(self) -> v4::ClusterState {
        let seg_size = u64::from(self.wal_segment_size);
        let partials = self
            .remote
            .partials
            .into_iter()
            .map(|p| v4::PartialObject {
                name: v4::PartialName {
                    timeline: p.name.timeline,
                    segno: p.name.segno,
                    commit_lsn: p.name.commit_lsn,
                    term: p.name.term,
                    sk_id: p.name.sk_id,
                    start_lsn: p.name.segno.saturating_mul(seg_size),
                },
                status: p.status,
                size: p.size,
                crc32c: p.crc32c,
                level: 0,
            })
            .collect();
        v4::ClusterState {
            sk_id: self.sk_id,
            cluster_name: self.cluster_name,
            system_identifier: self.system_identifier,
            wal_segment_size: self.wal_segment_size,
            pg_major_version: self.pg_major_version,
            timeline: self.timeline,
            term: self.term,
            term_history: self.term_history,
            flush_lsn: self.flush_lsn,
            commit_lsn: self.commit_lsn,
            backup_lsn: self.backup_lsn,
            remote: v4::RemoteObjects {
                full_segments: self.remote.full_segments,
                partials,
                history: self.remote.history,
            },
            last_gc_at_unix_ms: self.last_gc_at_unix_ms,
            partial_interval_ms: self.partial_interval_ms,
            wal_page_magic: self.wal_page_magic,
        }
    }
}
