//! What a cluster task publishes about itself: connection state, LSNs and the last error.
//!
//! Owned and written only by the cluster's own task (through a `watch` channel); everything else
//! (the admin API, metrics, the offload manager) reads snapshots.

use control_file::Lsn;
use serde::Serialize;

/// State of the connection to the upstream primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ConnectionState {
    Connecting,
    Streaming,
    /// Waiting before the next connection attempt after an error.
    Retrying,
    /// The session is kept open but nothing more is written or acknowledged: the data
    /// directory's disk is full and nothing uploaded is left to free (see `wal::space`).
    DiskFull,
    /// A permanent error (e.g. a different system identifier): the cluster is not followed.
    Failed,
    Stopped,
}

/// Snapshot of one cluster.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ClusterStatus {
    pub name: String,
    pub connection: ConnectionState,
    pub system_identifier: Option<u64>,
    pub timeline: Option<u32>,
    pub received_lsn: Lsn,
    pub flush_lsn: Lsn,
    pub commit_lsn: Lsn,
    pub last_error: Option<String>,
    pub reconnects: u64,
    /// The last time the upstream could not continue the WAL this safekeeper holds (a fork of
    /// the history below our end, or WAL no longer available): what happened, never silent.
    pub last_gap: Option<String>,
    pub gaps: u64,
    /// The WAL page magic verified on the stream of this session, for the manager to record in
    /// the control file when it has none yet (see `wal::stream_check`).
    #[serde(skip)]
    pub wal_page_magic: Option<u16>,
    /// The LSNs above come from local WAL checked in this process, not from the control file's
    /// recorded (lagging) values: the manager uploads partials only from then on.
    #[serde(skip)]
    pub local_end_checked: bool,
    /// Set while ingest is stalled on a full disk: what it needs and what is available.
    pub disk_full: Option<DiskFullInfo>,
    /// Times ingest stalled on a full disk since the process started.
    pub disk_full_stalls: u64,
}

/// Why and since when ingest is stalled on a full disk.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct DiskFullInfo {
    /// Unix time (seconds) the stall began.
    pub since_unix: u64,
    /// Bytes the next write needs (a segment, plus the reserve when it is released).
    pub needed_bytes: u64,
    /// Bytes available on the filesystem at the last attempt.
    pub available_bytes: u64,
}

impl ClusterStatus {
    pub(crate) fn new(name: &str) -> ClusterStatus {
        ClusterStatus {
            name: name.to_string(),
            connection: ConnectionState::Connecting,
            system_identifier: None,
            timeline: None,
            received_lsn: Lsn::INVALID,
            flush_lsn: Lsn::INVALID,
            commit_lsn: Lsn::INVALID,
            last_error: None,
            reconnects: 0,
            last_gap: None,
            gaps: 0,
            wal_page_magic: None,
            local_end_checked: false,
            disk_full: None,
            disk_full_stalls: 0,
        }
    }
}

/// What a cluster's manager publishes about object storage.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct OffloadStatus {
    /// Every full segment below it is in remote storage.
    pub backup_lsn: Lsn,
    /// Everything below it is in remote storage without a hole: `backup_lsn`, extended by the
    /// newest uploaded partial of the segment starting there (`bookkeeping::remote_end`).
    pub remote_lsn: Lsn,
    /// Object name of the newest uploaded partial segment.
    pub newest_partial: Option<String>,
    pub uploads_in_flight: usize,
    /// Partial and history objects the control file lists.
    pub listed_objects: usize,
    pub last_error: Option<String>,
    pub upload_failures: u64,
    pub full_uploaded: u64,
    pub partial_uploaded: u64,
    /// Bytes sent by finished uploads (full segments and partial pieces, as stored: compressed)
    /// in this process.
    pub bytes_uploaded: u64,
    /// WAL bytes the follower wrote in this process: what `bytes_uploaded` is compared with.
    pub wal_bytes: u64,
    pub gc_deleted: u64,
    /// Objects of this safekeeper that a listing found and the control file did not list
    /// (requests that landed after every bound): listed again, then collected or kept.
    pub objects_adopted: u64,
}
