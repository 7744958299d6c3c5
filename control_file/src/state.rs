//! The in-memory persisted state of one cluster ([`ClusterState`]) and the remote object list.
//!
//! Owns the domain invariants checked by [`ClusterState::validate`] on every load and save:
//! a valid `wal_segment_size`; non-zero sk id, timelines and terms; a non-empty term history with
//! strictly increasing terms and non-decreasing start LSNs whose last entry is the current term and
//! timeline; `commit_lsn <= flush_lsn`; full segment ranges non-empty, sorted and non-overlapping per
//! timeline; every partial piece names WAL `[start_lsn, commit_lsn)` with `commit_lsn` in
//! `(segment start, segment end]` and `start_lsn` in `[segment start, commit_lsn)`, and its size is
//! the WAL bytes it names (1 to `seg_size`).
//!
//! `wal_page_magic` and `pg_major_version` are stored as given: which page magic belongs to which
//! PostgreSQL major is the service's knowledge, so no invariant ties them together here.
//!
//! These types are NOT the encoding: the bytes on disk are defined by the frozen structs of the
//! `format` module, so these can gain methods or derives without changing any file format. (This
//! module depends only on `lsn` and `names`; `format` depends on it, never the other way round.)

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::lsn::{Lsn, is_valid_segment_size};
use crate::names::{PartialName, TimelineId, max_segno};

/// One entry of the term history: from `start_lsn` on, WAL belongs to `term` on `timeline`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermSwitch {
    pub term: u64,
    pub timeline: TimelineId,
    pub start_lsn: Lsn,
}

/// Where a remote object is in the partial upload protocol (docs/architecture.md, "Partial upload protocol").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ObjectStatus {
    /// Intent recorded, the PUT may or may not have happened.
    InProgress,
    /// The PUT succeeded.
    Uploaded,
    /// Superseded; to be deleted remotely, then dropped from the list.
    Deleting,
}

/// Full segments `[start_segno, end_segno)` of `timeline`, all uploaded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRange {
    pub timeline: TimelineId,
    pub start_segno: u64,
    pub end_segno: u64,
}

/// One partial segment piece (base or increment) this safekeeper may have created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialObject {
    pub name: PartialName,
    pub status: ObjectStatus,
    /// WAL bytes the piece holds, [`PartialName::bytes`] (not the stored, possibly compressed, size).
    pub size: u64,
    /// crc32c of those WAL bytes.
    pub crc32c: u32,
    /// Merge level: how many times the bytes in it were merged into a bigger piece (0 for an
    /// increment or a base); the writer's chain policy uses it (`safekeeper/src/chain.rs`).
    pub level: u8,
}

/// One timeline history file this safekeeper may have uploaded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryObject {
    pub timeline: TimelineId,
    pub status: ObjectStatus,
    pub size: u64,
    pub crc32c: u32,
}

/// Everything in remote storage this safekeeper knows about.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteObjects {
    /// Sorted by `(timeline, start_segno)`, merged: no two ranges of a timeline overlap or touch.
    pub full_segments: Vec<SegmentRange>,
    pub partials: Vec<PartialObject>,
    pub history: Vec<HistoryObject>,
}

impl RemoteObjects {
    /// Records that full segment `segno` of `timeline` is uploaded, merging it into the ranges.
    pub fn add_full_segment(&mut self, timeline: TimelineId, segno: u64) {
        if self.contains_full_segment(timeline, segno) {
            return;
        }
        let end = segno.saturating_add(1);
        // Insert at its sorted position, then merge with the neighbours it touches.
        let pos = self
            .full_segments
            .partition_point(|r| (r.timeline, r.start_segno) < (timeline, segno));
        self.full_segments.insert(
            pos,
            SegmentRange {
                timeline,
                start_segno: segno,
                end_segno: end,
            },
        );
        if pos + 1 < self.full_segments.len() {
            let next = &self.full_segments[pos + 1];
            if next.timeline == timeline && next.start_segno == end {
                self.full_segments[pos].end_segno = next.end_segno;
                self.full_segments.remove(pos + 1);
            }
        }
        if pos > 0 {
            let prev = &self.full_segments[pos - 1];
            if prev.timeline == timeline && prev.end_segno == segno {
                self.full_segments[pos - 1].end_segno = self.full_segments[pos].end_segno;
                self.full_segments.remove(pos);
            }
        }
    }

    /// True when full segment `segno` of `timeline` is recorded as uploaded.
    pub fn contains_full_segment(&self, timeline: TimelineId, segno: u64) -> bool {
        self.full_segments
            .iter()
            .any(|r| r.timeline == timeline && r.start_segno <= segno && segno < r.end_segno)
    }

    /// Number of full segments recorded.
    pub fn full_segment_count(&self) -> u64 {
        self.full_segments
            .iter()
            .map(|r| r.end_segno - r.start_segno)
            .sum()
    }
}

/// The persisted state of one cluster, as of the newest format version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub sk_id: u64,
    pub cluster_name: String,
    pub system_identifier: u64,
    pub wal_segment_size: u32,
    pub pg_major_version: u32,
    /// `xlp_magic` of the WAL pages the primary sends: the `u16` at the start of every WAL page
    /// header, which identifies the WAL format of the primary's PostgreSQL major version. Recorded
    /// once the first page arrives, so that local WAL can be checked against it after a restart.
    /// 0 = not learned yet (a cluster created before its first WAL page arrived, or loaded from a
    /// format v1/v2 file). Stored as is; see the module docs. (v3)
    pub wal_page_magic: u16,
    pub timeline: TimelineId,
    pub term: u64,
    pub term_history: Vec<TermSwitch>,
    pub flush_lsn: Lsn,
    pub commit_lsn: Lsn,
    pub backup_lsn: Lsn,
    pub remote: RemoteObjects,
    /// Wall-clock time (ms since the Unix epoch) of the last completed remote GC; 0 = never. (v2)
    pub last_gc_at_unix_ms: u64,
    /// Partial upload interval for this cluster in ms; 0 = use the service default. (v2)
    pub partial_interval_ms: u64,
}

impl ClusterState {
    /// A fresh cluster: term 1 starting at `start_lsn`, flush/commit = `start_lsn`,
    /// backup_lsn = start of its segment, nothing remote, no GC yet, the default partial interval
    /// and no WAL page magic learned yet (`wal_page_magic` 0).
    pub fn new(
        sk_id: u64,
        cluster_name: &str,
        system_identifier: u64,
        wal_segment_size: u32,
        pg_major_version: u32,
        timeline: TimelineId,
        start_lsn: Lsn,
    ) -> ClusterState {
        let backup_lsn = if is_valid_segment_size(wal_segment_size) {
            start_lsn.segment_start(wal_segment_size)
        } else {
            start_lsn // rejected by validate() anyway
        };
        ClusterState {
            sk_id,
            cluster_name: cluster_name.to_owned(),
            system_identifier,
            wal_segment_size,
            pg_major_version,
            wal_page_magic: 0,
            timeline,
            term: 1,
            term_history: vec![TermSwitch {
                term: 1,
                timeline,
                start_lsn,
            }],
            flush_lsn: start_lsn,
            commit_lsn: start_lsn,
            backup_lsn,
            remote: RemoteObjects::default(),
            last_gc_at_unix_ms: 0,
            partial_interval_ms: 0,
        }
    }

    /// Starts a new term at `start_lsn` on `timeline`: bumps the term, appends it to the history and
    /// switches `self.timeline`. Returns the new term. Does not touch flush/commit LSNs.
    pub fn start_term(&mut self, timeline: TimelineId, start_lsn: Lsn) -> u64 {
        self.term += 1;
        self.term_history.push(TermSwitch {
            term: self.term,
            timeline,
            start_lsn,
        });
        self.timeline = timeline;
        self.term
    }

    /// The term owning the byte at `lsn`: the last history entry with `start_lsn <= lsn`
    /// (0 when `lsn` precedes the whole history). For the term of the last byte before an end
    /// position `end` (e.g. a partial's commit LSN), ask for `end - 1`.
    pub fn term_at(&self, lsn: Lsn) -> u64 {
        self.term_history
            .iter()
            .rev()
            .find(|s| s.start_lsn <= lsn)
            .map_or(0, |s| s.term)
    }

    /// Checks the invariants listed in the module docs; `Err` holds a one-line reason.
    pub fn validate(&self) -> Result<(), String> {
        let seg = self.wal_segment_size;
        if !is_valid_segment_size(seg) {
            return Err(format!(
                "wal_segment_size {seg} is not a power of two between 1 MiB and 1 GiB"
            ));
        }
        if self.sk_id == 0 {
            return Err("sk_id must be positive".into());
        }
        validate_cluster_name(&self.cluster_name)?;
        if self.timeline == 0 {
            return Err("timeline 0 does not exist".into());
        }
        if self.commit_lsn > self.flush_lsn {
            return Err(format!(
                "commit_lsn {} is ahead of flush_lsn {}",
                self.commit_lsn, self.flush_lsn
            ));
        }
        self.validate_term_history()?;
        self.validate_remote()
    }

    fn validate_term_history(&self) -> Result<(), String> {
        let Some(last) = self.term_history.last() else {
            return Err("term_history is empty".into());
        };
        let mut prev: Option<&TermSwitch> = None;
        for s in &self.term_history {
            if s.term == 0 || s.timeline == 0 {
                return Err(format!(
                    "term_history has term {} timeline {}",
                    s.term, s.timeline
                ));
            }
            if let Some(p) = prev {
                if s.term <= p.term {
                    return Err(format!(
                        "term_history terms not increasing: {} then {}",
                        p.term, s.term
                    ));
                }
                if s.start_lsn < p.start_lsn {
                    return Err(format!(
                        "term_history start LSNs decrease: term {} at {} then term {} at {}",
                        p.term, p.start_lsn, s.term, s.start_lsn
                    ));
                }
            }
            prev = Some(s);
        }
        if last.term != self.term || last.timeline != self.timeline {
            return Err(format!(
                "current term {} timeline {} differ from the last term_history entry (term {} timeline {})",
                self.term, self.timeline, last.term, last.timeline
            ));
        }
        Ok(())
    }

    fn validate_remote(&self) -> Result<(), String> {
        let seg = self.wal_segment_size;
        let limit = max_segno(seg).saturating_add(1);
        let mut prev: Option<&SegmentRange> = None;
        for r in &self.remote.full_segments {
            if r.timeline == 0 || r.start_segno >= r.end_segno || r.end_segno > limit {
                return Err(format!(
                    "bad full segment range: timeline {} [{}, {})",
                    r.timeline, r.start_segno, r.end_segno
                ));
            }
            if let Some(p) = prev {
                let ordered = (p.timeline, p.end_segno) <= (r.timeline, r.start_segno);
                if !ordered {
                    return Err(format!(
                        "full segment ranges unsorted or overlapping: timeline {} [{}, {}) then timeline {} [{}, {})",
                        p.timeline,
                        p.start_segno,
                        p.end_segno,
                        r.timeline,
                        r.start_segno,
                        r.end_segno
                    ));
                }
            }
            prev = Some(r);
        }
        let mut names = HashSet::new();
        for p in &self.remote.partials {
            let n = &p.name;
            let end = n.commit_offset(seg);
            let inside = n.segno <= max_segno(seg)
                && end >= 1
                && end <= u64::from(seg)
                && n.start_lsn >= n.segment_start(seg)
                && n.start_lsn < n.commit_lsn;
            if n.timeline == 0 || n.term == 0 || !inside {
                return Err(format!(
                    "partial object {:?} does not name 1 to {seg} bytes of a segment",
                    n
                ));
            }
            let expected = n.bytes();
            if p.size != expected {
                return Err(format!(
                    "partial object {} has size {} but its name covers {expected} bytes",
                    n.to_file_name(seg),
                    p.size
                ));
            }
            if !names.insert(n) {
                return Err(format!(
                    "partial object {} listed twice",
                    n.to_file_name(seg)
                ));
            }
        }
        let mut timelines = HashSet::new();
        for h in &self.remote.history {
            if h.timeline == 0 || !timelines.insert(h.timeline) {
                return Err(format!(
                    "history object of timeline {} is invalid or listed twice",
                    h.timeline
                ));
            }
        }
        Ok(())
    }
}

fn validate_cluster_name(name: &str) -> Result<(), String> {
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name.len() > 255
        || name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control());
    if bad {
        return Err(format!(
            "cluster_name {name:?} is not usable as a path component (1-255 bytes, no '/', '\\', control characters, '.' or '..')"
        ));
    }
    Ok(())
}
