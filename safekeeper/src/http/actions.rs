//! Handlers that make a cluster act now (upload the partial, GC, start a new term), plus
//! `/metrics` and the OpenAPI document.
//!
//! Actions are requests to the cluster's manager task (`ManagerCommand`), which owns the control
//! file; the handler waits for its answer, bounded by [`ACTION_TIMEOUT`].

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::oneshot;

use super::ApiState;
use super::error::{ApiError, ApiPath, ErrorBody, ErrorCode};
use super::model::{GcResponse, PartialUploadResponse, TermBumpResponse};
use super::routes::{find, not_initialized};
use crate::cluster::manager::ManagerCommand;
use crate::process::cluster_set::{ClusterEntry, Outcome};

/// Bound on waiting for the manager (an upload with the storage layer's retries included).
const ACTION_TIMEOUT: Duration = Duration::from_secs(120);

/// Sends a command to the cluster's manager and waits for the answer.
async fn ask<T>(
    entry: &ClusterEntry,
    command: impl FnOnce(oneshot::Sender<anyhow::Result<T>>) -> ManagerCommand,
) -> Result<T, ApiError> {
    let name = entry.name();
    let stopped = || {
        ApiError::conflict(
            ErrorCode::ClusterStopped,
            format!("cluster {name:?} is not running"),
        )
    };
    if entry.outcome() != Outcome::Running {
        return Err(stopped());
    }
    if entry.state.borrow().is_none() {
        return Err(not_initialized(name));
    }
    let (tx, rx) = oneshot::channel();
    let exchange = async {
        entry
            .commands
            .send(command(tx))
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())
    };
    match tokio::time::timeout(ACTION_TIMEOUT, exchange).await {
        Err(_) => Err(ApiError::unavailable(
            ErrorCode::Timeout,
            format!(
                "cluster {name:?} did not answer within {}s",
                ACTION_TIMEOUT.as_secs()
            ),
        )),
        Ok(Err(e)) => Err(e),
        Ok(Ok(Err(e))) => Err(ApiError::unavailable(
            ErrorCode::OperationFailed,
            format!("{e:#}"),
        )),
        Ok(Ok(Ok(v))) => Ok(v),
    }
}

/// Upload the partial segment now
///
/// Uploads the WAL of the current segment up to the commit position (the partial upload
/// protocol of docs/architecture.md) and answers with the object name once it is durable in the storage
/// and recorded in the control file.
#[utoipa::path(post, path = "/v1/clusters/{name}/partial_upload", tag = "actions",
    params(("name" = String, Path, description = "Cluster name")),
    responses(
        (status = 200, description = "Uploaded (or already up to date)", body = PartialUploadResponse),
        (status = 400, description = "Malformed path", body = ErrorBody),
        (status = 404, description = "No such cluster", body = ErrorBody),
        (status = 409, description = "Not initialized or not running", body = ErrorBody),
        (status = 503, description = "The upload failed or timed out", body = ErrorBody),
    ))]
pub(crate) async fn partial_upload(
    State(state): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<PartialUploadResponse>, ApiError> {
    let entry = find(&state, &name)?;
    let object_name = ask(&entry, ManagerCommand::UploadPartialNow).await?;
    Ok(Json(PartialUploadResponse { object_name }))
}

/// Run GC now
///
/// Deletes the superseded remote objects the control file marks for deletion (and stale
/// in-progress ones); never the newest uploaded partial.
#[utoipa::path(post, path = "/v1/clusters/{name}/gc", tag = "actions",
    params(("name" = String, Path, description = "Cluster name")),
    responses(
        (status = 200, description = "Deleted objects", body = GcResponse),
        (status = 400, description = "Malformed path", body = ErrorBody),
        (status = 404, description = "No such cluster", body = ErrorBody),
        (status = 409, description = "Not initialized or not running", body = ErrorBody),
        (status = 503, description = "The deletion failed or timed out", body = ErrorBody),
    ))]
pub(crate) async fn gc(
    State(state): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<GcResponse>, ApiError> {
    let entry = find(&state, &name)?;
    let deleted = ask(&entry, ManagerCommand::GcNow).await?;
    Ok(Json(GcResponse { deleted }))
}

/// Start a new term
///
/// Appends `(term + 1, timeline, flush position)` to the term history, durably. WAL received
/// from then on belongs to the new term, and so does the name of the next partial object.
#[utoipa::path(post, path = "/v1/clusters/{name}/term_bump", tag = "actions",
    params(("name" = String, Path, description = "Cluster name")),
    responses(
        (status = 200, description = "The new term", body = TermBumpResponse),
        (status = 400, description = "Malformed path", body = ErrorBody),
        (status = 404, description = "No such cluster", body = ErrorBody),
        (status = 409, description = "Not initialized or not running", body = ErrorBody),
        (status = 503, description = "The control file could not be saved, or timeout", body = ErrorBody),
    ))]
pub(crate) async fn term_bump(
    State(state): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<TermBumpResponse>, ApiError> {
    let entry = find(&state, &name)?;
    let term = ask(&entry, ManagerCommand::TermBump).await?;
    // The manager published the new state before answering.
    let cf = entry.state.borrow().clone();
    let switch = cf
        .as_ref()
        .and_then(|s| s.term_history.iter().find(|t| t.term == term).cloned())
        .ok_or_else(|| not_initialized(&name))?;
    Ok(Json(TermBumpResponse {
        term,
        timeline: switch.timeline,
        start_lsn: switch.start_lsn.into(),
    }))
}

/// Prometheus metrics
///
/// Text exposition format. Per cluster: LSN gauges, lag in bytes and seconds per stage,
/// connection state, reconnects, GC deletions; uploads, failures, retries and latency by kind;
/// WAL fsync latency and batch size. See the README for the names.
#[utoipa::path(get, path = "/metrics", tag = "service",
    responses((status = 200, description = "Metrics", body = String, content_type = "text/plain")))]
pub(crate) async fn metrics(State(state): State<ApiState>) -> Response {
    let mut text = crate::http::metrics::render(&state.clusters, state.sk_id, state.started);
    text.push_str(&crate::http::disk::render(&state.data_dir));
    text.push_str(&state.observer.render_metrics());
    if let Some(handle) = &state.recorder {
        text.push_str(&handle.render());
    }
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// This document
#[utoipa::path(get, path = "/v1/openapi.json", tag = "service",
    responses((status = 200, description = "The OpenAPI document of this server", body = Object)))]
pub(crate) async fn openapi(State(state): State<ApiState>) -> Response {
    let mut response = state
        .openapi
        .get()
        .cloned()
        .unwrap_or_default()
        .into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
