//! Format version 4: FROZEN once released. Never edit these definitions; add a new version instead.
//!
//! Same rules as [`super::v1`]: bincode encodes fields in declaration order, serde names are not
//! stored, so field order and types are the format. v4 = v3 with one trailing field of
//! [`PartialName`], `start_lsn` (a `u64`: the first LSN the piece holds, the segment start for a
//! base piece, inside the segment for an increment), and [`PartialObject`] has one trailing field,
//! `level` (a `u8`: the piece's merge level); so [`RemoteObjects`] and [`ClusterState`] are new
//! structs too, field for field as in v3. The other nested structs are v1's, unchanged.

use serde::{Deserialize, Serialize};

pub use super::v1::{HistoryObject, ObjectStatus, SegmentRange, TermSwitch};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialName {
    pub timeline: u32,
    pub segno: u64,
    pub commit_lsn: u64,
    pub term: u64,
    pub sk_id: u64,
    /// First LSN of WAL the piece holds.
    pub start_lsn: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialObject {
    pub name: PartialName,
    pub status: ObjectStatus,
    pub size: u64,
    pub crc32c: u32,
    /// Merge level of the piece (0 for an increment or a base).
    pub level: u8,
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
    /// Milliseconds since the Unix epoch of the last completed remote GC; 0 = never.
    pub last_gc_at_unix_ms: u64,
    /// Partial upload interval in milliseconds; 0 = the service default.
    pub partial_interval_ms: u64,
    /// `xlp_magic` of the WAL pages the primary sends; 0 = not learned yet.
    pub wal_page_magic: u16,
}
