//! The status page at `/`: one self-contained HTML document (styles and script inline, no
//! external asset, no build step) that shows every cluster at a glance and refreshes itself, and
//! the route its chart reads, `/v1/clusters/{name}/lag_history`.
//!
//! Invariants:
//! - The page is a fixed document holding no data: everything it shows comes from the admin API
//!   under the API's own auth rules (the page asks for the token when the API answers 401 and
//!   keeps it for the browser tab only). Whether the document itself needs the token is the
//!   `page` entry of `--http-auth-public-routes`.
//! - Its `Content-Security-Policy` forbids every origin but this server's, so the page works
//!   offline and cannot load or send anything elsewhere; values are written with `textContent`
//!   only, so a cluster name or an error message cannot inject markup.
//! - The lag history comes from the process's observer (`process::observer`), sampled whether
//!   or not anyone looks, so a page opened during an incident shows the minutes before it.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::ApiState;
use super::error::{ApiError, ApiPath, ErrorBody};
use super::routes::find;
use crate::process::observer::{HISTORY, LagSample, SAMPLE_INTERVAL};

/// The page, embedded at compile time.
const PAGE: &str = include_str!("page.html");

/// Only this server; inline styles and script are the page's own.
const CSP: &str = "default-src 'none'; connect-src 'self'; script-src 'unsafe-inline'; \
                   style-src 'unsafe-inline'; img-src 'self' data:; form-action 'none'; \
                   base-uri 'none'; frame-ancestors 'none'";

/// Status page
///
/// A self-refreshing HTML page of every cluster: connection state, LSNs, the archive's end,
/// the age of the oldest acknowledged byte not yet in object storage (with a chart of the last
/// minutes), last error and gaps.
#[utoipa::path(get, path = "/", tag = "service",
    responses((status = 200, description = "The status page", body = String, content_type = "text/html")))]
pub(crate) async fn page() -> Response {
    let mut response = PAGE.into_response();
    let headers = response.headers_mut();
    let pairs = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    for (name, value) in pairs {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// `GET /v1/clusters/{name}/lag_history`.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct LagHistory {
    /// Seconds between samples.
    pub interval_seconds: f64,
    /// How far back samples are kept, seconds.
    pub window_seconds: f64,
    /// Upload lag samples, oldest first (only since this process started).
    pub samples: Vec<LagSample>,
    /// Uploads have been failing since the last success.
    pub storage_failing: bool,
    /// Whether the primary's `synchronous_standby_names` names this safekeeper (`null`: not
    /// known yet).
    pub sync_standby: Option<bool>,
}

/// Upload lag over the last minutes
///
/// The upload lag (acknowledged WAL not yet in object storage: bytes, and the age of its oldest
/// byte) sampled every few seconds and kept in memory for the last minutes; what the status
/// page's chart draws.
#[utoipa::path(get, path = "/v1/clusters/{name}/lag_history", tag = "clusters",
    params(("name" = String, Path, description = "Cluster name")),
    responses(
        (status = 200, description = "Samples, oldest first", body = LagHistory),
        (status = 400, description = "Malformed path", body = ErrorBody),
        (status = 404, description = "No such cluster", body = ErrorBody),
    ))]
pub(crate) async fn lag_history(
    State(state): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<LagHistory>, ApiError> {
    let entry = find(&state, &name)?;
    Ok(Json(LagHistory {
        interval_seconds: SAMPLE_INTERVAL.as_secs_f64(),
        window_seconds: HISTORY.as_secs_f64(),
        samples: state.observer.lag_history(entry.name()),
        storage_failing: state.observer.storage_failing(entry.name()),
        sync_standby: state.observer.sync_standby(entry.name()),
    }))
}
