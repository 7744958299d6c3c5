//! The JSON bodies of the admin API. Their `ToSchema` derives are the OpenAPI document's schemas,
//! so what is served and what is documented are the same types.
//!
//! Conventions: LSNs are strings in PostgreSQL's notation (`16/B374D848`, as in
//! `pg_stat_replication`); lags are bytes (integers) and seconds (numbers); optional values are
//! `null` until known (e.g. before the first connection to the primary).

use control_file::Lsn;
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::{RefOr, schema::SchemaType};
use utoipa::{IntoParams, PartialSchema, ToSchema};

use crate::cluster::lag::{Lags, StageLag};
use crate::cluster::status::ConnectionState;
use crate::process::cluster_set::{Origin, Outcome};

/// An LSN in PostgreSQL's notation.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ApiLsn(String);

impl From<Lsn> for ApiLsn {
    fn from(lsn: Lsn) -> ApiLsn {
        ApiLsn(lsn.to_string())
    }
}

impl PartialSchema for ApiLsn {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::String))
            .pattern(Some("^[0-9A-F]{1,8}/[0-9A-F]{1,8}$"))
            .description(Some("A WAL position in PostgreSQL's notation"))
            .examples([serde_json::json!("0/3000148")])
            .into()
    }
}

impl ToSchema for ApiLsn {}

/// `GET /v1/status`.
#[derive(Serialize, ToSchema)]
pub(crate) struct StatusResponse {
    /// This safekeeper's id (`--id`).
    pub id: u64,
    pub version: String,
    /// Seconds since the process started.
    pub uptime_seconds: f64,
    /// Clusters followed (running or stopped on an error).
    pub clusters: usize,
}

/// Where a cluster's settings come from.
#[derive(Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ApiOrigin {
    /// The command line or config file; cannot be removed through the API.
    Config,
    /// Added through `POST /v1/clusters` (kept in `<data-dir>/clusters.toml`).
    Api,
}

impl From<Origin> for ApiOrigin {
    fn from(o: Origin) -> ApiOrigin {
        match o {
            Origin::Config => ApiOrigin::Config,
            Origin::Api => ApiOrigin::Api,
        }
    }
}

/// Whether the cluster's tasks run.
#[derive(Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RunState {
    Running,
    /// Stopped at shutdown.
    Stopped,
    /// Stopped on a permanent error (see `last_error`).
    Failed,
}

impl From<&Outcome> for RunState {
    fn from(o: &Outcome) -> RunState {
        match o {
            Outcome::Running => RunState::Running,
            Outcome::Stopped => RunState::Stopped,
            Outcome::Failed(_) => RunState::Failed,
        }
    }
}

/// The replication connection to the primary.
#[derive(Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ApiConnection {
    Connecting,
    Streaming,
    /// Waiting before the next attempt after an error.
    Retrying,
    /// The data directory is full and nothing uploaded is left to free: the session is kept,
    /// nothing more is acknowledged until space appears (see `disk_full`).
    DiskFull,
    /// A permanent error: the cluster is not followed.
    Failed,
    Stopped,
}

impl From<ConnectionState> for ApiConnection {
    fn from(c: ConnectionState) -> ApiConnection {
        match c {
            ConnectionState::Connecting => ApiConnection::Connecting,
            ConnectionState::Streaming => ApiConnection::Streaming,
            ConnectionState::Retrying => ApiConnection::Retrying,
            ConnectionState::DiskFull => ApiConnection::DiskFull,
            ConnectionState::Failed => ApiConnection::Failed,
            ConnectionState::Stopped => ApiConnection::Stopped,
        }
    }
}

/// One line per cluster.
#[derive(Serialize, ToSchema)]
pub(crate) struct ClusterSummary {
    pub name: String,
    pub origin: ApiOrigin,
    pub state: RunState,
    pub connection: ApiConnection,
    pub timeline: Option<u32>,
    pub term: Option<u64>,
    pub flush_lsn: ApiLsn,
    pub commit_lsn: ApiLsn,
    pub remote_lsn: ApiLsn,
    /// `commit_lsn - remote_lsn`: acknowledged WAL not yet in remote storage.
    pub upload_lag_bytes: u64,
    /// Age of the oldest acknowledged byte not yet in remote storage.
    pub upload_lag_seconds: f64,
    pub last_error: Option<String>,
}

/// `GET /v1/clusters`.
#[derive(Serialize, ToSchema)]
pub(crate) struct ClusterList {
    pub clusters: Vec<ClusterSummary>,
}

/// How the primary is reached (no password).
#[derive(Serialize, ToSchema)]
pub(crate) struct PrimaryInfo {
    /// `host:port` of each host of the connection string.
    pub hosts: Vec<String>,
    pub user: String,
    pub slot: String,
    /// The name to use in the primary's `synchronous_standby_names`.
    pub application_name: String,
}

/// One term of the history: from `start_lsn` on, WAL belongs to `term` on `timeline`.
#[derive(Serialize, ToSchema)]
pub(crate) struct ApiTermSwitch {
    pub term: u64,
    pub timeline: u32,
    pub start_lsn: ApiLsn,
}

/// The positions of one cluster.
#[derive(Serialize, ToSchema)]
pub(crate) struct LsnSet {
    /// End of the WAL received from the primary (written, maybe not fsynced).
    pub received: ApiLsn,
    /// End of the WAL fsynced locally.
    pub flush: ApiLsn,
    /// Highest position acknowledged to the primary as flushed.
    pub commit: ApiLsn,
    /// Every full segment below it is in remote storage.
    pub backup: ApiLsn,
    /// Everything below it is in remote storage without a hole: `backup`, extended by the newest
    /// uploaded partial of the segment that starts there.
    pub remote: ApiLsn,
}

/// Lag of one stage.
#[derive(Serialize, ToSchema)]
pub(crate) struct ApiStageLag {
    pub bytes: u64,
    /// How long the oldest byte of the stage has waited (counted from this process's start at
    /// the earliest; precision about 10 ms).
    pub seconds: f64,
}

impl From<StageLag> for ApiStageLag {
    fn from(l: StageLag) -> ApiStageLag {
        ApiStageLag {
            bytes: l.bytes,
            seconds: l.seconds,
        }
    }
}

/// How far behind each stage is. The primary's own end of WAL is not known to a receiver: the
/// receive lag is in the primary's `pg_stat_replication`.
#[derive(Serialize, ToSchema)]
pub(crate) struct LagSet {
    /// Received but not fsynced: `received - flush`.
    pub flush: ApiStageLag,
    /// Acknowledged but not in remote storage in any form: `commit - remote`.
    pub upload: ApiStageLag,
    /// Acknowledged but not in a full remote segment: `commit - backup`.
    pub backup: ApiStageLag,
}

impl From<Lags> for LagSet {
    fn from(l: Lags) -> LagSet {
        LagSet {
            flush: l.flush.into(),
            upload: l.upload.into(),
            backup: l.backup.into(),
        }
    }
}

/// Object-storage activity since the cluster started in this process.
#[derive(Serialize, ToSchema)]
pub(crate) struct OffloadInfo {
    pub uploads_in_flight: usize,
    /// Partial and history objects the control file lists.
    pub listed_objects: usize,
    pub full_uploaded: u64,
    pub partial_uploaded: u64,
    /// Bytes sent to object storage (objects as stored, compressed) in this process.
    pub bytes_uploaded: u64,
    /// WAL bytes written locally in this process.
    pub wal_bytes: u64,
    /// `bytes_uploaded / wal_bytes`: what keeping the archive current costs per byte of WAL
    /// (null before any WAL arrived).
    pub upload_amplification: Option<f64>,
    pub upload_failures: u64,
    pub gc_deleted: u64,
    /// Objects of this safekeeper found in the archive that the control file did not list
    /// (requests that landed late): listed again, then collected or kept.
    pub objects_adopted: u64,
    pub last_error: Option<String>,
}

/// `GET /v1/clusters/{name}`.
#[derive(Serialize, ToSchema)]
pub(crate) struct ClusterDetail {
    pub name: String,
    pub origin: ApiOrigin,
    pub state: RunState,
    pub primary: PrimaryInfo,
    pub connection: ApiConnection,
    /// Connection attempts after a failed session.
    pub reconnects: u64,
    /// The newest error of the connection, or the one the cluster stopped on.
    pub last_error: Option<String>,
    /// Times the primary could not continue the WAL held here (a fork below our end, or WAL no
    /// longer available), and the last such event.
    pub gaps: u64,
    pub last_gap: Option<String>,
    /// Set while ingest is stalled on a full data directory: what it needs, what is available.
    pub disk_full: Option<ApiDiskFull>,
    /// Times ingest stalled on a full data directory since the process started.
    pub disk_full_stalls: u64,
    pub system_identifier: Option<u64>,
    pub timeline: Option<u32>,
    pub wal_segment_size: Option<u32>,
    pub term: Option<u64>,
    pub term_history: Vec<ApiTermSwitch>,
    pub lsn: LsnSet,
    /// Object name of the newest uploaded partial segment.
    pub newest_partial: Option<String>,
    pub lag: LagSet,
    pub offload: OffloadInfo,
}

/// A stall on a full data directory.
#[derive(Serialize, ToSchema)]
pub(crate) struct ApiDiskFull {
    /// Unix time (seconds) the stall began.
    pub since_unix: u64,
    /// Bytes the next write needs (a segment, plus the space reserve while it is released).
    pub needed_bytes: u64,
    /// Bytes available on the filesystem at the last attempt (retried every 500 ms).
    pub available_bytes: u64,
}

/// `POST /v1/clusters`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddClusterRequest {
    /// 1-63 letters, digits, `_` or `-`, not starting with `-`; also the local directory name.
    #[schema(pattern = "^[A-Za-z0-9_][A-Za-z0-9_-]{0,62}$", example = "orders")]
    pub name: String,
    /// libpq connection string (keyword/value or URI) of the primary.
    #[schema(min_length = 1, example = "host=db1 port=5432 user=replicator")]
    pub primary: String,
    /// Physical replication slot (default `safekeeper_<id>`).
    #[schema(pattern = "^[a-z0-9_]{1,63}$")]
    pub slot: Option<String>,
    /// Name for `synchronous_standby_names` (default `safekeeper<id>`).
    #[schema(pattern = "^[ -~]{1,63}$")]
    pub application_name: Option<String>,
}

/// Query of `DELETE /v1/clusters/{name}`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeleteParams {
    /// Also delete the cluster's local directory (control file and WAL). Remote objects are
    /// always kept.
    pub purge_local: Option<bool>,
}

/// `DELETE /v1/clusters/{name}`.
#[derive(Serialize, ToSchema)]
pub(crate) struct DeleteResponse {
    pub name: String,
    /// How the cluster's tasks ended.
    pub state: RunState,
    pub purged_local: bool,
}

/// `POST /v1/clusters/{name}/partial_upload`.
#[derive(Serialize, ToSchema)]
pub(crate) struct PartialUploadResponse {
    /// The uploaded object (or the newest existing one when nothing changed); `null` when there
    /// is no partial WAL (e.g. the commit position is exactly at a segment boundary).
    pub object_name: Option<String>,
}

/// `POST /v1/clusters/{name}/gc`.
#[derive(Serialize, ToSchema)]
pub(crate) struct GcResponse {
    /// Names of the objects deleted from remote storage.
    pub deleted: Vec<String>,
}

/// `POST /v1/clusters/{name}/term_bump`.
#[derive(Serialize, ToSchema)]
pub(crate) struct TermBumpResponse {
    /// The new term.
    pub term: u64,
    pub timeline: u32,
    /// Where the new term starts (the flush position when it was started).
    pub start_lsn: ApiLsn,
}
