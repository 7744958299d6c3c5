//! The router without a network or a primary: the error shape, auth, and that the OpenAPI
//! document lists exactly the routes served. (test_runner/test_api.py covers a live server.)

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::*;
use crate::cluster::ServiceContext;
use crate::cluster::config::IngestOptions;
use crate::cluster::config::OffloadSettings;

fn app_with(auth: Auth, dir: &std::path::Path) -> (Router, utoipa::openapi::OpenApi) {
    let storage = Arc::new(remote_storage::LocalFs::new(dir.join("remote")).unwrap());
    let ctx = ServiceContext {
        sk_id: 1,
        data_dir: dir.to_path_buf(),
        storage,
        offload: OffloadSettings {
            upload_parallelism: 1,
            partial_interval: Duration::from_secs(10),
            local_retention: 1 << 30,
            compression: Default::default(),
        },
        ingest: IngestOptions {
            status_interval: Duration::from_secs(10),
            receive_timeout: Duration::from_secs(60),
        },
        backup: None,
    };
    let set = ClusterSet::new(ctx, CancellationToken::new(), Some(dir.join("remote")));
    app(ApiState::new(set, 1, dir.to_path_buf(), None), auth)
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    body: Option<(&str, &str)>,
) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
    let mut req = Request::builder().method(method).uri(uri);
    let body = match body {
        Some((content_type, text)) => {
            req = req.header(header::CONTENT_TYPE, content_type);
            Body::from(text.to_string())
        }
        None => Body::empty(),
    };
    let resp = app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (parts.status, parts.headers, json)
}

fn assert_error(json: &serde_json::Value, code: &str) {
    let keys: BTreeSet<_> = json.as_object().unwrap().keys().cloned().collect();
    assert_eq!(
        keys,
        BTreeSet::from(["code".to_string(), "error".to_string()]),
        "{json}"
    );
    assert_eq!(json["code"], code, "{json}");
}

#[tokio::test]
async fn the_document_lists_exactly_the_served_routes() {
    let dir = tempfile::tempdir().unwrap();
    let (app, doc) = app_with(Auth::off(), dir.path());
    let paths: BTreeSet<&str> = doc.paths.paths.keys().map(String::as_str).collect();
    let expected = BTreeSet::from([
        "/",
        "/metrics",
        "/v1/openapi.json",
        "/v1/status",
        "/v1/clusters",
        "/v1/clusters/{name}",
        "/v1/clusters/{name}/remote",
        "/v1/clusters/{name}/control_file",
        "/v1/clusters/{name}/partial_upload",
        "/v1/clusters/{name}/gc",
        "/v1/clusters/{name}/term_bump",
        "/v1/clusters/{name}/lag_history",
    ]);
    assert_eq!(paths, expected);
    let (status, _, served) = call(&app, "GET", "/v1/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(served, serde_json::to_value(&doc).unwrap());
    let (status, _, _) = call(&app, "GET", "/v1/status", None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn every_error_has_the_json_shape() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _) = app_with(Auth::off(), dir.path());
    let (status, _, json) = call(&app, "GET", "/v1/clusters/nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&json, "not_found");
    let (status, _, json) = call(&app, "GET", "/no/such/route", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&json, "not_found");
    let (status, headers, json) = call(&app, "PUT", "/v1/clusters", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers[header::ALLOW], "GET,HEAD,POST");
    assert_error(&json, "method_not_allowed");
    let json_body = |t| Some(("application/json", t));
    let (status, _, json) = call(&app, "POST", "/v1/clusters", json_body("{")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&json, "invalid_json");
    let (status, _, json) = call(&app, "POST", "/v1/clusters", json_body(r#"{"name": "x"}"#)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&json, "invalid_json");
    let (status, _, json) = call(&app, "POST", "/v1/clusters", Some(("text/plain", "{}"))).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_error(&json, "unsupported_media_type");
    let bad_name = r#"{"name": "../x", "primary": "host=127.0.0.1"}"#;
    let (status, _, json) = call(&app, "POST", "/v1/clusters", json_body(bad_name)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&json, "bad_request");
    // The default remote directory is <data-dir>/remote: a cluster there would own the archive.
    let over_remote = r#"{"name": "remote", "primary": "host=127.0.0.1"}"#;
    let (status, _, json) = call(&app, "POST", "/v1/clusters", json_body(over_remote)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
    let (status, _, json) = call(&app, "DELETE", "/v1/clusters/x?purge_local=maybe", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&json, "bad_request");
}

#[tokio::test]
async fn auth_guards_all_but_the_public_routes_and_is_documented_there() {
    let dir = tempfile::tempdir().unwrap();
    let public = BTreeSet::from(["metrics".to_string(), "status".to_string()]);
    let auth = Auth::with_token("t0ken", &public).unwrap();
    let (app, doc) = app_with(auth, dir.path());
    let (status, headers, json) = call(&app, "GET", "/v1/clusters", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers.contains_key(header::WWW_AUTHENTICATE));
    assert_error(&json, "unauthorized");
    for public in ["/v1/status", "/metrics"] {
        assert_eq!(call(&app, "GET", public, None).await.0, StatusCode::OK);
    }
    let req = Request::get("/v1/clusters")
        .header(header::AUTHORIZATION, "Bearer t0ken")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        app.clone().oneshot(req).await.unwrap().status(),
        StatusCode::OK
    );
    let secured = |path: &str| {
        let item = &doc.paths.paths[path];
        let op = item.get.as_ref().or(item.post.as_ref()).unwrap();
        op.security.is_some() && op.responses.responses.contains_key("401")
    };
    assert!(secured("/v1/clusters") && secured("/v1/clusters/{name}/gc"));
    assert!(!secured("/v1/status") && !secured("/metrics"));
}
