//! Every error the admin API returns has one JSON shape, `{"error": "...", "code": "..."}`.
//!
//! Owns the stable error codes ([`ErrorCode`]), the mapping of axum's own rejections (bad JSON,
//! wrong content type, bad path or query) to them, and [`normalize`], the outermost middleware
//! that rewrites any remaining non-JSON error (axum's 404/405, body limits, a caught panic) into
//! the same shape while keeping its status and headers (e.g. `Allow` on a 405).
//!
//! Status rules: 400 bad input, 401 missing/wrong token, 404 unknown cluster or route, 405 wrong
//! method, 409 a request that conflicts with the cluster's state, 413/415 body problems, 503 when
//! the storage or the cluster could not do what was asked. A 500 means a bug, never bad input.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::process::cluster_set::SetError;

/// Stable, machine-readable error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ErrorCode {
    /// The request is malformed: path, query or body values.
    BadRequest,
    /// The body is not valid JSON or does not match the request schema.
    InvalidJson,
    /// The body is not `application/json`.
    UnsupportedMediaType,
    PayloadTooLarge,
    /// No bearer token, or the wrong one.
    Unauthorized,
    /// No such cluster or route.
    NotFound,
    MethodNotAllowed,
    /// A cluster with this name is already followed.
    ClusterExists,
    /// The cluster comes from the command line or config file and cannot be removed at run time.
    ConfiguredCluster,
    /// The cluster has no control file yet: it never reached its primary.
    NotInitialized,
    /// The cluster's tasks have stopped (permanent error or shutdown).
    ClusterStopped,
    TooManyClusters,
    /// Another conflicting request.
    Conflict,
    /// The cluster did not answer in time.
    Timeout,
    /// The operation failed (e.g. remote storage unavailable); the message says why.
    OperationFailed,
    /// A bug: please report it.
    Internal,
}

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    /// Human-readable, one line.
    pub error: String,
    pub code: ErrorCode,
}

/// An error response.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message)
    }

    pub(crate) fn unknown_cluster(name: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("no cluster named {name:?}"),
        )
    }

    pub(crate) fn conflict(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, code, message)
    }

    pub(crate) fn unavailable(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
            code: self.code,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<SetError> for ApiError {
    fn from(e: SetError) -> ApiError {
        let message = e.to_string();
        match e {
            SetError::Invalid(_) => ApiError::bad_request(message),
            SetError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
            }
            SetError::Exists(_) => ApiError::conflict(ErrorCode::ClusterExists, message),
            SetError::Configured(_) => ApiError::conflict(ErrorCode::ConfiguredCluster, message),
            SetError::TooMany => ApiError::conflict(ErrorCode::TooManyClusters, message),
            SetError::Failed(_) => ApiError::unavailable(ErrorCode::OperationFailed, message),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> ApiError {
        let message = r.body_text();
        match r {
            JsonRejection::MissingJsonContentType(_) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::UnsupportedMediaType,
                "expected a request body with Content-Type: application/json",
            ),
            JsonRejection::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::new(b.status(), ErrorCode::PayloadTooLarge, message)
            }
            _ => ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidJson, message),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> ApiError {
        ApiError::bad_request(r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> ApiError {
        ApiError::bad_request(r.body_text())
    }
}

/// `axum::Json` as an extractor, rejecting with an [`ApiError`].
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub(crate) struct ApiJson<T>(pub T);

/// `axum::extract::Path`, rejecting with an [`ApiError`].
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub(crate) struct ApiPath<T>(pub T);

/// `axum::extract::Query`, rejecting with an [`ApiError`].
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub(crate) struct ApiQuery<T>(pub T);

/// Handler of unknown routes.
pub(crate) async fn route_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such route")
}

/// Bound on an error body kept as the message of a normalized error.
const MAX_MESSAGE: usize = 1024;

/// Rewrites error responses that are not JSON yet into an [`ErrorBody`], keeping the status and
/// the headers (`Allow`, `WWW-Authenticate`).
pub(crate) async fn normalize(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let code = match status {
        StatusCode::BAD_REQUEST => ErrorCode::BadRequest,
        StatusCode::UNAUTHORIZED => ErrorCode::Unauthorized,
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
        StatusCode::CONFLICT => ErrorCode::Conflict,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
        StatusCode::REQUEST_TIMEOUT => ErrorCode::Timeout,
        s if s.is_server_error() => ErrorCode::Internal,
        _ => ErrorCode::BadRequest,
    };
    let mut message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_string()
    } else {
        text
    };
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    if status == StatusCode::METHOD_NOT_ALLOWED {
        message = "method not allowed on this route (see the Allow header)".to_string();
    }
    let body = serde_json::to_vec(&ErrorBody {
        error: message,
        code,
    })
    .unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(body))
}
