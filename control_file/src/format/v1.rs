//! Format version 1: FROZEN. Never edit these definitions; add a new version instead.
//!
//! The payload is these structs encoded with [`super::CONFIG`] (bincode 2, fixed-width little-endian
//! integers). Bincode writes fields in declaration order and ignores serde names, so the ORDER and the
//! TYPES of fields are the format: reordering, retyping, adding or removing a field (or an enum
//! variant) changes the bytes. Only plain integers, strings, vectors and unit enums are used here, so
//! no type from outside this module can change the encoding. LSNs are raw `u64`, timelines `u32`.
//!
//! Version 2 reuses every struct below except [`ClusterState`].

use serde::{Deserialize, Serialize};

use super::v2;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermSwitch {
    pub term: u64,
    pub timeline: u32,
    pub start_lsn: u64,
}

/// Encoded as a `u32` variant index: 0, 1, 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObjectStatus {
    InProgress,
    Uploaded,
    Deleting,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRange {
    pub timeline: u32,
    pub start_segno: u64,
    pub end_segno: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialName {
    pub timeline: u32,
    pub segno: u64,
    pub commit_lsn: u64,
    pub term: u64,
    pub sk_id: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialObject {
    pub name: PartialName,
    pub status: ObjectStatus,
    pub size: u64,
    pub crc32c: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryObject {
    pub timeline: u32,
    pub status: ObjectStatus,
    pub size: u64,
    pub crc32c: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteObjects {
    pub full_segments: Vec<SegmentRange>,
    pub partials: Vec<PartialObject>,
    pub history: Vec<HistoryObject>,
}

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
}

impl ClusterState {
    /// v1 → v2: no GC has run yet (`last_gc_at_unix_ms` 0) and the service default partial
    /// interval applies (`partial_interval_ms` 0).
    pub fn upgrade(self) -> v2::ClusterState {
        v2::ClusterState {
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
            last_gc_at_unix_ms: 0,
            partial_interval_ms: 0,
        }
    }
}
