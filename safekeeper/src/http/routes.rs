//! Handlers of the read routes and of adding/removing clusters. Each handler's `utoipa::path`
//! attribute is its OpenAPI operation: the route, parameters, bodies and every status it returns.
//!
//! Handlers only read `watch` snapshots and call the [`ClusterSet`](crate::process::cluster_set); they
//! never block the runtime (the control file is read on a blocking thread).

use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use super::ApiState;
use super::control_doc::{ControlFileDocument, RemoteListing};
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody, ErrorCode};
use super::model::*;
use crate::cluster::config::ClusterConfig;
use crate::cluster::follower::CONTROL_FILE_NAME;
use crate::pg::ConnInfo;
use crate::process::cluster_set::{ClusterEntry, Outcome};

pub(super) fn find(state: &ApiState, name: &str) -> Result<Arc<ClusterEntry>, ApiError> {
    state
        .clusters
        .get(name)
        .ok_or_else(|| ApiError::unknown_cluster(name))
}

/// Process status
#[utoipa::path(get, path = "/v1/status", tag = "service",
    responses((status = 200, description = "This safekeeper", body = StatusResponse)))]
pub(crate) async fn get_status(State(state): State<ApiState>) -> Json<StatusResponse> {
    Json(StatusResponse {
        id: state.sk_id,
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_seconds: state.started.elapsed().as_secs_f64(),
        clusters: state.clusters.list().len(),
    })
}

fn summary(e: &ClusterEntry) -> ClusterSummary {
    let (status, offload, lags) = e.snapshot();
    let term = e.state.borrow().as_ref().map(|s| s.term);
    let outcome = e.outcome();
    ClusterSummary {
        name: e.name().to_string(),
        origin: e.origin.into(),
        state: (&outcome).into(),
        connection: status.connection.into(),
        timeline: status.timeline,
        term,
        flush_lsn: status.flush_lsn.into(),
        commit_lsn: status.commit_lsn.into(),
        remote_lsn: offload.remote_lsn.into(),
        upload_lag_bytes: lags.upload.bytes,
        upload_lag_seconds: lags.upload.seconds,
        last_error: last_error(&outcome, status.last_error),
    }
}

fn last_error(outcome: &Outcome, connection: Option<String>) -> Option<String> {
    match outcome {
        Outcome::Failed(e) => Some(e.clone()),
        _ => connection,
    }
}

/// List clusters
#[utoipa::path(get, path = "/v1/clusters", tag = "clusters",
    responses((status = 200, description = "One summary per followed cluster", body = ClusterList)))]
pub(crate) async fn list_clusters(State(state): State<ApiState>) -> Json<ClusterList> {
    let clusters = state.clusters.list().iter().map(|e| summary(e)).collect();
    Json(ClusterList { clusters })
}

fn detail(e: &Arc<ClusterEntry>) -> ClusterDetail {
    let (status, offload, lags) = e.snapshot();
    let cf = e.state.borrow().clone();
    let outcome = e.outcome();
    let conninfo = ConnInfo::parse(&e.config.primary).ok();
    ClusterDetail {
        name: e.name().to_string(),
        origin: e.origin.into(),
        state: (&outcome).into(),
        primary: PrimaryInfo {
            hosts: conninfo
                .as_ref()
                .map(|c| c.hosts.iter().map(|(h, p)| format!("{h}:{p}")).collect())
                .unwrap_or_default(),
            user: conninfo.map(|c| c.user).unwrap_or_default(),
            slot: e.config.slot.clone(),
            application_name: e.config.application_name.clone(),
        },
        connection: status.connection.into(),
        reconnects: status.reconnects,
        last_error: last_error(&outcome, status.last_error.clone()),
        gaps: status.gaps,
        last_gap: status.last_gap.clone(),
        disk_full: status.disk_full.as_ref().map(|d| ApiDiskFull {
            since_unix: d.since_unix,
            needed_bytes: d.needed_bytes,
            available_bytes: d.available_bytes,
        }),
        disk_full_stalls: status.disk_full_stalls,
        system_identifier: status
            .system_identifier
            .or(cf.as_ref().map(|s| s.system_identifier)),
        timeline: status.timeline.or(cf.as_ref().map(|s| s.timeline)),
        wal_segment_size: cf.as_ref().map(|s| s.wal_segment_size),
        term: cf.as_ref().map(|s| s.term),
        term_history: cf
            .as_ref()
            .map(|s| {
                s.term_history
                    .iter()
                    .map(|t| ApiTermSwitch {
                        term: t.term,
                        timeline: t.timeline,
                        start_lsn: t.start_lsn.into(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        lsn: LsnSet {
            received: status.received_lsn.into(),
            flush: status.flush_lsn.into(),
            commit: status.commit_lsn.into(),
            backup: offload.backup_lsn.into(),
            remote: offload.remote_lsn.into(),
        },
        newest_partial: offload.newest_partial.clone(),
        lag: lags.into(),
        offload: OffloadInfo {
            uploads_in_flight: offload.uploads_in_flight,
            listed_objects: offload.listed_objects,
            full_uploaded: offload.full_uploaded,
            partial_uploaded: offload.partial_uploaded,
            bytes_uploaded: offload.bytes_uploaded,
            wal_bytes: offload.wal_bytes,
            upload_amplification: (offload.wal_bytes > 0)
                .then(|| offload.bytes_uploaded as f64 / offload.wal_bytes as f64),
            upload_failures: offload.upload_failures,
            gc_deleted: offload.gc_deleted,
            objects_adopted: offload.objects_adopted,
            last_error: offload.last_error,
        },
    }
}

/// One cluster in detail
///
/// Identity, term history, every LSN, the newest partial object, the lag of each stage in bytes
/// and seconds, the connection state and the last error.
#[utoipa::path(get, path = "/v1/clusters/{name}", tag = "clusters",
    params(("name" = String, Path, description = "Cluster name")),
    responses(
        (status = 200, description = "The cluster", body = ClusterDetail),
        (status = 400, description = "Malformed path", body = ErrorBody),
        (status = 404, description = "No such cluster", body = ErrorBody),
    ))]
pub(crate) async fn get_cluster(
    State(state): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ClusterDetail>, ApiError> {
    Ok(Json(detail(&find(&state, &name)?)))
}

/// Remote objects the control file lists
///
/// Uploaded full segments (as ranges), and each partial and history object with its status in
/// the partial upload protocol. Reflects the control file, not a listing of the storage.
#[utoipa::path(get, path = "/v1/clusters/{name}/remote", tag = "clusters",
    params(("name" = String, Path, description = "Cluster name")),
    responses(
        (status = 200, description = "Listed objects", body = RemoteListing),
        (status = 400, description = "Malformed path", body = ErrorBody),
        (status = 404, description = "No such cluster", body = ErrorBody),
        (status = 409, description = "No control file yet (never reached its primary)", body = ErrorBody),
    ))]
pub(crate) async fn get_remote(
    State(state): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<RemoteListing>, ApiError> {
    let entry = find(&state, &name)?;
    let cf = entry.state.borrow().clone();
    let cf = cf.ok_or_else(|| not_initialized(&name))?;
    Ok(Json(RemoteListing::from(&cf)))
}

pub(super) fn not_initialized(name: &str) -> ApiError {
    ApiError::conflict(
        ErrorCode::NotInitialized,
        format!("cluster {name:?} has no control file yet: it never reached its primary"),
    )
}

/// The decoded control file
///
/// Read from disk: the same document as `safekeeper control-file show --json`.
#[utoipa::path(get, path = "/v1/clusters/{name}/control_file", tag = "clusters",
    params(("name" = String, Path, description = "Cluster name")),
    responses(
        (status = 200, description = "The control file", body = ControlFileDocument),
        (status = 400, description = "Malformed path", body = ErrorBody),
        (status = 404, description = "No such cluster", body = ErrorBody),
        (status = 409, description = "No control file yet (never reached its primary)", body = ErrorBody),
        (status = 503, description = "The file cannot be read or is damaged", body = ErrorBody),
    ))]
pub(crate) async fn get_control_file(
    State(state): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ControlFileDocument>, ApiError> {
    let entry = find(&state, &name)?;
    let path: PathBuf = state.data_dir.join(entry.name()).join(CONTROL_FILE_NAME);
    if !path.exists() {
        return Err(not_initialized(&name));
    }
    let shown = path.display().to_string();
    let loaded = tokio::task::spawn_blocking(move || control_file::load_versioned(&path))
        .await
        .map_err(|e| ApiError::unavailable(ErrorCode::OperationFailed, e.to_string()))?;
    let (cf, version) =
        loaded.map_err(|e| ApiError::unavailable(ErrorCode::OperationFailed, e.to_string()))?;
    Ok(Json(ControlFileDocument::new(shown, version, cf)))
}

/// Start following a cluster
///
/// Starts at once and is recorded in `<data-dir>/clusters.toml`, so a restart keeps following
/// it. A name whose directory exists from an earlier run resumes from its local data.
#[utoipa::path(post, path = "/v1/clusters", tag = "clusters",
    request_body = AddClusterRequest,
    responses(
        (status = 201, description = "Now followed", body = ClusterDetail),
        (status = 400, description = "Invalid body, name or connection string", body = ErrorBody),
        (status = 409, description = "The name is taken, or too many clusters", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not application/json", body = ErrorBody),
        (status = 503, description = "Could not start or record it", body = ErrorBody),
    ))]
pub(crate) async fn add_cluster(
    State(state): State<ApiState>,
    ApiJson(req): ApiJson<AddClusterRequest>,
) -> Result<(StatusCode, Json<ClusterDetail>), ApiError> {
    let id = state.sk_id;
    let config = ClusterConfig {
        name: req.name,
        primary: req.primary,
        slot: req.slot.unwrap_or_else(|| format!("safekeeper_{id}")),
        application_name: req
            .application_name
            .unwrap_or_else(|| format!("safekeeper{id}")),
    };
    let entry = state.clusters.add(config).await?;
    Ok((StatusCode::CREATED, Json(detail(&entry))))
}

/// Stop following a cluster
///
/// Only clusters added through the API (409 for configured ones). Waits until the cluster has
/// stopped (its final partial upload included). Local and remote data are kept unless
/// `purge_local=true`, which deletes the local directory; remote objects are never deleted.
#[utoipa::path(delete, path = "/v1/clusters/{name}", tag = "clusters",
    params(("name" = String, Path, description = "Cluster name"), DeleteParams),
    responses(
        (status = 200, description = "Stopped and forgotten", body = DeleteResponse),
        (status = 400, description = "Malformed path or query", body = ErrorBody),
        (status = 404, description = "No such cluster", body = ErrorBody),
        (status = 409, description = "A configured cluster", body = ErrorBody),
        (status = 503, description = "Could not record or purge", body = ErrorBody),
    ))]
pub(crate) async fn delete_cluster(
    State(state): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(params): ApiQuery<DeleteParams>,
) -> Result<Json<DeleteResponse>, ApiError> {
    let purge = params.purge_local.unwrap_or(false);
    let outcome = state.clusters.remove(&name, purge).await?;
    Ok(Json(DeleteResponse {
        name,
        state: (&outcome).into(),
        purged_local: purge,
    }))
}
