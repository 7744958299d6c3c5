//! Bearer-token authentication of the admin API.
//!
//! With `--http-auth-token-file`, every request needs `Authorization: Bearer <token>` except on
//! the public routes (`--http-auth-public-routes`, default `/metrics`, `/v1/status` and the status
//! page's document at `/`, which holds no data: it reads the API with the token). Without
//! it, nothing is checked (bind the API to a trusted address).
//!
//! Invariants: the token is compared in constant time (no early exit on the first differing
//! byte); a missing, malformed or wrong token is a 401 with `WWW-Authenticate: Bearer` and the
//! usual JSON error body, and never says which of the three it was; the token is never logged.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::error::{ApiError, ErrorCode};

/// The route of each name `--http-auth-public-routes` accepts.
pub(crate) fn public_route_path(name: &str) -> Option<&'static str> {
    match name {
        "metrics" => Some("/metrics"),
        "status" => Some("/v1/status"),
        "openapi" => Some("/v1/openapi.json"),
        "page" => Some("/"),
        _ => None,
    }
}

/// The auth settings of a running server.
#[derive(Clone, Debug, Default)]
pub(crate) struct Auth {
    /// `None`: auth is off.
    token: Option<Arc<[u8]>>,
    /// Paths served without a token.
    public: BTreeSet<&'static str>,
}

impl Auth {
    /// No authentication.
    pub(crate) fn off() -> Auth {
        Auth::default()
    }

    /// Token auth with the named public routes (see [`public_route_path`]).
    pub(crate) fn with_token(token: &str, public: &BTreeSet<String>) -> Result<Auth> {
        ensure!(!token.is_empty(), "the HTTP auth token is empty");
        let public = public
            .iter()
            .map(|n| public_route_path(n).with_context(|| format!("unknown route {n:?}")))
            .collect::<Result<_>>()?;
        Ok(Auth {
            token: Some(token.as_bytes().into()),
            public,
        })
    }

    /// Reads the token from `path`: the file's content without surrounding whitespace.
    pub(crate) fn from_file(path: &Path, public: &BTreeSet<String>) -> Result<Auth> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read the HTTP auth token file {} (--http-auth-token-file)",
                path.display()
            )
        })?;
        Auth::with_token(text.trim(), public)
            .with_context(|| format!("invalid HTTP auth token file {}", path.display()))
    }

    pub(crate) fn enabled(&self) -> bool {
        self.token.is_some()
    }

    /// Whether `path` needs a token.
    pub(crate) fn protects(&self, path: &str) -> bool {
        self.enabled() && !self.public.contains(path)
    }

    /// Whether the `Authorization` header value carries the token.
    fn accepts(&self, header: Option<&HeaderValue>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let Some(presented) = header
            .map(HeaderValue::as_bytes)
            .and_then(|h| h.strip_prefix(b"Bearer "))
        else {
            return false;
        };
        bool::from(presented.ct_eq(token))
    }
}

/// The middleware: lets the request through or answers 401.
pub(crate) async fn require_token(
    State(auth): State<Auth>,
    request: Request,
    next: Next,
) -> Response {
    if !auth.protects(request.uri().path())
        || auth.accepts(request.headers().get(header::AUTHORIZATION))
    {
        return next.run(request).await;
    }
    let mut response = ApiError::new(
        StatusCode::UNAUTHORIZED,
        ErrorCode::Unauthorized,
        "missing or invalid bearer token (Authorization: Bearer <token>)",
    )
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"safekeeper\""),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        let public = ["status".to_string()].into_iter().collect();
        Auth::with_token("s3cret", &public).unwrap()
    }

    #[test]
    fn only_the_exact_bearer_token_is_accepted() {
        let a = auth();
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert!(a.accepts(Some(&h("Bearer s3cret"))));
        assert!(!a.accepts(None));
        assert!(!a.accepts(Some(&h("Bearer s3cre"))));
        assert!(!a.accepts(Some(&h("Bearer s3cret2"))));
        assert!(!a.accepts(Some(&h("Basic s3cret"))));
        assert!(!a.accepts(Some(&h("s3cret"))));
        assert!(Auth::off().accepts(None));
    }

    #[test]
    fn public_routes_are_configurable() {
        let a = auth();
        assert!(!a.protects("/v1/status"));
        assert!(a.protects("/metrics"));
        assert!(a.protects("/v1/clusters"));
        assert!(!Auth::off().protects("/v1/clusters"));
        assert!(Auth::with_token("", &BTreeSet::new()).is_err());
    }
}
