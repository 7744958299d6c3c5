//! The HTTP admin API (`--http-addr`): the status page at `/`, status, clusters, remote objects, the control file,
//! actions (partial upload, GC, term bump), adding/removing clusters, `/metrics`, and its own
//! OpenAPI document at `/v1/openapi.json`.
//!
//! Owns the router and the server's lifetime. Layout: `routes` (reads, add/remove), `actions`
//! (manager commands, metrics, the document), `status_page` (the page and its chart's data),
//! `disk` (the data directory's filesystem space), `model`/`control_doc` (bodies), `error` (the one
//! error shape), `auth` (bearer token), `openapi` (document assembly).
//!
//! Invariants:
//! - The OpenAPI document is generated from the handlers' attributes and the body types by the
//!   same router that serves them (`utoipa-axum`), then adjusted to this server's auth settings:
//!   it cannot describe a route that is not served, and auth is documented exactly where it is
//!   enforced.
//! - Every error response is `{"error", "code"}` JSON ([`error::normalize`] is the outermost
//!   layer); a panic in a handler becomes a 500 of that shape, not a dropped connection.
//! - The server stops accepting at cancellation and finishes in-flight requests.

pub(crate) mod actions;
pub(crate) mod auth;
pub(crate) mod control_doc;
pub(crate) mod disk;
pub(crate) mod error;
pub(crate) mod metrics;
pub(crate) mod model;
mod openapi;
pub(crate) mod routes;
pub(crate) mod status_page;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use anyhow::{Context, Result};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::process::cluster_set::ClusterSet;
use crate::process::observer::Observer;
pub(crate) use auth::Auth;

/// What every handler can see.
#[derive(Clone)]
pub(crate) struct ApiState {
    pub clusters: Arc<ClusterSet>,
    pub sk_id: u64,
    pub data_dir: PathBuf,
    pub started: Instant,
    /// The event metrics recorder; `None` when it could not be installed.
    pub recorder: Option<PrometheusHandle>,
    /// Upload-lag history and storage state for the status page (sampled by its own task).
    pub observer: Arc<Observer>,
    /// The rendered OpenAPI document, set once the router is built.
    openapi: Arc<OnceLock<String>>,
}

impl ApiState {
    pub(crate) fn new(
        clusters: Arc<ClusterSet>,
        sk_id: u64,
        data_dir: PathBuf,
        recorder: Option<PrometheusHandle>,
    ) -> ApiState {
        ApiState {
            clusters,
            sk_id,
            data_dir,
            started: Instant::now(),
            recorder,
            observer: Arc::new(Observer::default()),
            openapi: Arc::new(OnceLock::new()),
        }
    }
}

/// The complete application and its OpenAPI document (already adjusted to `auth`).
pub(crate) fn app(state: ApiState, auth: Auth) -> (Router, utoipa::openapi::OpenApi) {
    let (router, mut doc) = OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(status_page::page))
        .routes(routes!(routes::get_status))
        .routes(routes!(routes::list_clusters, routes::add_cluster))
        .routes(routes!(routes::get_cluster, routes::delete_cluster))
        .routes(routes!(routes::get_remote))
        .routes(routes!(routes::get_control_file))
        .routes(routes!(status_page::lag_history))
        .routes(routes!(actions::partial_upload))
        .routes(routes!(actions::gc))
        .routes(routes!(actions::term_bump))
        .routes(routes!(actions::metrics))
        .routes(routes!(actions::openapi))
        .split_for_parts();
    openapi::apply_auth(&mut doc, &auth);
    let _ = state
        .openapi
        .set(doc.to_pretty_json().unwrap_or_else(|_| "{}".into()));
    let router = router
        .fallback(error::route_not_found)
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(
            auth,
            auth::require_token,
        ))
        .layer(CatchPanicLayer::new())
        .layer(axum::middleware::from_fn(error::normalize));
    (router, doc)
}

/// Binds the API address; the error is one line naming the address and the cause.
pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on --http-addr {addr} (is another safekeeper or service using it?)")
    })
}

/// Serves until `cancel` fires, then finishes the requests in flight.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    cancel: CancellationToken,
) -> Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
        .context("the HTTP server failed")
}
