//! Format version 2: FROZEN once released. Never edit these definitions; add a new version instead.
//!
//! Same rules as [`super::v1`]: bincode encodes fields in declaration order, serde names are not
//! stored, so field order and types are the format. v2 = v1 plus two trailing fields of
//! [`ClusterState`]; all nested structs are v1's, unchanged.
//!
//! Version 3 reuses every struct below except [`ClusterState`]; [`ClusterState::upgrade`] is the
//! v2 → v3 step of the upgrade chain (added with v3; the definitions above it are untouched).

use serde::{Deserialize, Serialize};

use super::v3;

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
}

impl ClusterState {
    /// v2 → v3: the WAL page magic of the primary is not known yet (`wal_page_magic` 0); the service
    /// learns it from the next WAL page it receives.
    pub fn upgrade(self) -> v3::ClusterState {
        v3::ClusterState {
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
            remote: self.remote,
            last_gc_at_unix_ms: self.last_gc_at_unix_ms,
            partial_interval_ms: self.partial_interval_ms,
            wal_page_magic: 0,
        }
    }
}
