//! The control file as the admin API shows it: the decoded file (`GET .../control_file`, the same
//! document as `safekeeper control-file show --json`) and the remote objects it lists
//! (`GET .../remote`).
//!
//! The `Cf*` types mirror `control_file::ClusterState` field for field so that they can carry
//! OpenAPI schemas without the control-file crate knowing about HTTP. They are built by
//! exhaustive destructuring: a field added to the state is a compile error here, and a test
//! checks that the JSON is byte-for-byte the state's own serde output.

use control_file::names::{history_file_name, segment_file_name};
use control_file::{
    ClusterState, HistoryObject, ObjectStatus, PartialObject, RemoteObjects, SegmentRange,
    TermSwitch,
};
use serde::Serialize;
use utoipa::ToSchema;

use super::model::ApiLsn;

/// `GET /v1/clusters/{name}/control_file`.
#[derive(Serialize, ToSchema)]
pub(crate) struct ControlFileDocument {
    pub path: String,
    /// Format version of the file on disk.
    pub format_version: u32,
    /// Newest format this safekeeper writes.
    pub current_format_version: u32,
    /// The state's LSNs in PostgreSQL's notation.
    pub lsns: CfLsns,
    /// The decoded state; LSNs are plain byte positions here.
    pub state: CfState,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct CfLsns {
    pub flush: ApiLsn,
    pub commit: ApiLsn,
    pub backup: ApiLsn,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct CfState {
    pub sk_id: u64,
    pub cluster_name: String,
    pub system_identifier: u64,
    pub wal_segment_size: u32,
    pub pg_major_version: u32,
    /// The WAL page magic learned from the primary's stream; 0 = not learned yet.
    pub wal_page_magic: u16,
    pub timeline: u32,
    pub term: u64,
    pub term_history: Vec<CfTermSwitch>,
    pub flush_lsn: u64,
    pub commit_lsn: u64,
    pub backup_lsn: u64,
    pub remote: CfRemote,
    /// Wall-clock time (ms since the Unix epoch) of the last completed GC; 0 = never.
    pub last_gc_at_unix_ms: u64,
    /// Partial upload interval in ms; 0 = the service default.
    pub partial_interval_ms: u64,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct CfTermSwitch {
    pub term: u64,
    pub timeline: u32,
    pub start_lsn: u64,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct CfRemote {
    pub full_segments: Vec<CfSegmentRange>,
    pub partials: Vec<CfPartial>,
    pub history: Vec<CfHistory>,
}

/// Full segments `[start_segno, end_segno)` of `timeline`, all uploaded.
#[derive(Serialize, ToSchema)]
pub(crate) struct CfSegmentRange {
    pub timeline: u32,
    pub start_segno: u64,
    pub end_segno: u64,
}

/// Where an object is in the partial upload protocol.
#[derive(Clone, Copy, Serialize, ToSchema)]
pub(crate) enum CfStatus {
    InProgress,
    Uploaded,
    Deleting,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct CfPartialName {
    pub timeline: u32,
    pub segno: u64,
    pub commit_lsn: u64,
    pub term: u64,
    pub sk_id: u64,
    /// First LSN the piece holds: the segment start for a base piece (`.partial`), inside the
    /// segment for an increment (`.delta`).
    pub start_lsn: u64,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct CfPartial {
    pub name: CfPartialName,
    pub status: CfStatus,
    /// WAL bytes the piece holds.
    pub size: u64,
    /// crc32c of those WAL bytes.
    pub crc32c: u32,
    /// Merge level (0 for an increment or a base).
    pub level: u8,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct CfHistory {
    pub timeline: u32,
    pub status: CfStatus,
    pub size: u64,
    pub crc32c: u32,
}

fn status(s: ObjectStatus) -> CfStatus {
    match s {
        ObjectStatus::InProgress => CfStatus::InProgress,
        ObjectStatus::Uploaded => CfStatus::Uploaded,
        ObjectStatus::Deleting => CfStatus::Deleting,
    }
}

impl ControlFileDocument {
    pub(crate) fn new(
        path: String,
        format_version: u32,
        state: ClusterState,
    ) -> ControlFileDocument {
        ControlFileDocument {
            path,
            format_version,
            current_format_version: control_file::CURRENT_FORMAT_VERSION,
            lsns: CfLsns {
                flush: state.flush_lsn.into(),
                commit: state.commit_lsn.into(),
                backup: state.backup_lsn.into(),
            },
            state: CfState::from(state),
        }
    }
}

impl From<ClusterState> for CfState {
    fn from(s: ClusterState) -> CfState {
        let ClusterState {
            sk_id,
            cluster_name,
            system_identifier,
            wal_segment_size,
            pg_major_version,
            wal_page_magic,
            timeline,
            term,
            term_history,
            flush_lsn,
            commit_lsn,
            backup_lsn,
            remote,
            last_gc_at_unix_ms,
            partial_interval_ms,
        } = s;
        CfState {
            sk_id,
            cluster_name,
            system_identifier,
            wal_segment_size,
            pg_major_version,
            wal_page_magic,
            timeline,
            term,
            term_history: term_history.into_iter().map(CfTermSwitch::from).collect(),
            flush_lsn: flush_lsn.0,
            commit_lsn: commit_lsn.0,
            backup_lsn: backup_lsn.0,
            remote: CfRemote::from(remote),
            last_gc_at_unix_ms,
            partial_interval_ms,
        }
    }
}

impl From<TermSwitch> for CfTermSwitch {
    fn from(t: TermSwitch) -> CfTermSwitch {
        let TermSwitch {
            term,
            timeline,
            start_lsn,
        } = t;
        CfTermSwitch {
            term,
            timeline,
            start_lsn: start_lsn.0,
        }
    }
}

impl From<RemoteObjects> for CfRemote {
    fn from(r: RemoteObjects) -> CfRemote {
        let RemoteObjects {
            full_segments,
            partials,
            history,
        } = r;
        CfRemote {
            full_segments: full_segments
                .into_iter()
                .map(CfSegmentRange::from)
                .collect(),
            partials: partials.into_iter().map(CfPartial::from).collect(),
            history: history.into_iter().map(CfHistory::from).collect(),
        }
    }
}

impl From<SegmentRange> for CfSegmentRange {
    fn from(r: SegmentRange) -> CfSegmentRange {
        let SegmentRange {
            timeline,
            start_segno,
            end_segno,
        } = r;
        CfSegmentRange {
            timeline,
            start_segno,
            end_segno,
        }
    }
}

impl From<PartialObject> for CfPartial {
    fn from(p: PartialObject) -> CfPartial {
        let PartialObject {
            name,
            status: st,
            size,
            crc32c,
            level,
        } = p;
        CfPartial {
            name: CfPartialName {
                timeline: name.timeline,
                segno: name.segno,
                commit_lsn: name.commit_lsn.0,
                term: name.term,
                sk_id: name.sk_id,
                start_lsn: name.start_lsn.0,
            },
            status: status(st),
            size,
            crc32c,
            level,
        }
    }
}

impl From<HistoryObject> for CfHistory {
    fn from(h: HistoryObject) -> CfHistory {
        let HistoryObject {
            timeline,
            status: st,
            size,
            crc32c,
        } = h;
        CfHistory {
            timeline,
            status: status(st),
            size,
            crc32c,
        }
    }
}

/// `GET /v1/clusters/{name}/remote`: the objects the control file lists.
#[derive(Serialize, ToSchema)]
pub(crate) struct RemoteListing {
    /// Every full segment below it is uploaded (and listed in `full_segments`).
    pub backup_lsn: ApiLsn,
    pub full_segments: Vec<RemoteSegmentRange>,
    pub partials: Vec<RemotePartial>,
    pub history: Vec<RemoteHistory>,
}

/// Uploaded full segments `first_segment..=last_segment` of one timeline.
#[derive(Serialize, ToSchema)]
pub(crate) struct RemoteSegmentRange {
    pub timeline: u32,
    pub first_segment: String,
    pub last_segment: String,
    pub count: u64,
}

/// Status of a listed object (DESIGN.md, "Partial upload protocol").
#[derive(Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RemoteStatus {
    /// The intent is recorded; the object may or may not exist.
    InProgress,
    Uploaded,
    /// Superseded, to be deleted by GC.
    Deleting,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct RemotePartial {
    /// Object name under `<cluster>/wal/`.
    pub name: String,
    pub status: RemoteStatus,
    pub size: u64,
    pub crc32c: u32,
    pub timeline: u32,
    pub commit_lsn: ApiLsn,
    pub term: u64,
    pub sk_id: u64,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct RemoteHistory {
    pub name: String,
    pub status: RemoteStatus,
    pub size: u64,
    pub crc32c: u32,
    pub timeline: u32,
}

fn remote_status(s: ObjectStatus) -> RemoteStatus {
    match s {
        ObjectStatus::InProgress => RemoteStatus::InProgress,
        ObjectStatus::Uploaded => RemoteStatus::Uploaded,
        ObjectStatus::Deleting => RemoteStatus::Deleting,
    }
}

impl From<&ClusterState> for RemoteListing {
    fn from(s: &ClusterState) -> RemoteListing {
        let seg = s.wal_segment_size;
        RemoteListing {
            backup_lsn: s.backup_lsn.into(),
            full_segments: s
                .remote
                .full_segments
                .iter()
                .filter(|r| r.end_segno > r.start_segno)
                .map(|r| RemoteSegmentRange {
                    timeline: r.timeline,
                    first_segment: segment_file_name(r.timeline, r.start_segno, seg),
                    last_segment: segment_file_name(r.timeline, r.end_segno - 1, seg),
                    count: r.end_segno - r.start_segno,
                })
                .collect(),
            partials: s
                .remote
                .partials
                .iter()
                .map(|p| RemotePartial {
                    name: p.name.to_file_name(seg),
                    status: remote_status(p.status),
                    size: p.size,
                    crc32c: p.crc32c,
                    timeline: p.name.timeline,
                    commit_lsn: p.name.commit_lsn.into(),
                    term: p.name.term,
                    sk_id: p.name.sk_id,
                })
                .collect(),
            history: s
                .remote
                .history
                .iter()
                .map(|h| RemoteHistory {
                    name: history_file_name(h.timeline),
                    status: remote_status(h.status),
                    size: h.size,
                    crc32c: h.crc32c,
                    timeline: h.timeline,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use control_file::Lsn;
    use control_file::names::PartialName;

    fn state() -> ClusterState {
        let seg = 16 << 20;
        let mut s = ClusterState::new(
            1,
            "main",
            7_000_000_000_000_000_001,
            seg,
            15,
            1,
            Lsn(0x300_0028),
        );
        s.start_term(2, Lsn(0x500_0000));
        s.flush_lsn = Lsn(0x500_1000);
        s.commit_lsn = Lsn(0x500_0800);
        s.backup_lsn = Lsn(0x500_0000);
        s.remote.add_full_segment(1, 3);
        s.remote.add_full_segment(1, 4);
        s.remote.partials.push(PartialObject {
            name: PartialName::base(2, 5, Lsn(0x500_0800), 2, 1, 1 << 24),
            status: ObjectStatus::Uploaded,
            size: 0x800,
            crc32c: 42,
            level: 1,
        });
        s.remote.history.push(HistoryObject {
            timeline: 2,
            status: ObjectStatus::InProgress,
            size: 40,
            crc32c: 7,
        });
        s
    }

    #[test]
    fn the_document_state_is_the_control_files_own_json() {
        let s = state();
        let doc = ControlFileDocument::new("/x".into(), 2, s.clone());
        assert_eq!(
            serde_json::to_value(&doc.state).unwrap(),
            serde_json::to_value(&s).unwrap()
        );
        assert_eq!(serde_json::to_value(&doc.lsns.flush).unwrap(), "0/5001000");
    }

    #[test]
    fn the_listing_names_objects_as_stored() {
        let l = RemoteListing::from(&state());
        let v = serde_json::to_value(&l).unwrap();
        assert_eq!(
            v["full_segments"][0]["first_segment"],
            "000000010000000000000003"
        );
        assert_eq!(
            v["full_segments"][0]["last_segment"],
            "000000010000000000000004"
        );
        assert_eq!(v["full_segments"][0]["count"], 2);
        assert_eq!(
            v["partials"][0]["name"],
            "000000020000000000000005_0000000005000800_0000000000000002_sk1.partial"
        );
        assert_eq!(v["partials"][0]["status"], "uploaded");
        assert_eq!(v["history"][0]["name"], "00000002.history");
        assert_eq!(v["history"][0]["status"], "in_progress");
    }
}
