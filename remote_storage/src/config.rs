//! Configuration knobs and their defaults.
//!
//! Owns [`RemoteConfig`] (what `from_url` needs), [`RetryConfig`], [`LimitConfig`], [`S3Options`]
//! and [`StaticCredentials`].
//!
//! Invariants: every knob has a default that is safe for production; `Debug` output of any config
//! never shows a secret (the secret key and session token are redacted).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::RemoteStorage;
use crate::limit::LimitedStorage;
use crate::retry::RetryingStorage;

/// Everything needed to open a storage by URL.
#[derive(Debug, Clone, Default)]
pub struct RemoteConfig {
    /// S3 connection options (ignored for `file://`).
    pub s3: S3Options,
    pub retry: RetryConfig,
    pub limits: LimitConfig,
}

impl RemoteConfig {
    /// Put this config's layers on a bare backend: `Retrying(Limited(backend))`. Limits sit below
    /// retries so that a request waiting in backoff does not hold a concurrency permit, and so the
    /// per-request timeout starts only once a request may actually run.
    pub fn layer(&self, backend: Arc<dyn RemoteStorage>) -> Arc<dyn RemoteStorage> {
        let limited = Arc::new(LimitedStorage::new(backend, self.limits.clone()));
        Arc::new(RetryingStorage::new(limited, self.retry.clone()))
    }
}

/// How [`RetryingStorage`] retries retryable errors (transient, timeout).
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Attempts in total, including the first (1 = no retries).
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubles for each further one.
    pub initial_backoff: Duration,
    /// Backoff ceiling.
    pub max_backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// How [`LimitedStorage`] bounds requests.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitConfig {
    /// Requests in flight at once, across all callers of this storage.
    pub max_concurrent_requests: usize,
    /// Bound on one request (one attempt). For `get` it bounds the wait for the response and then
    /// each wait for the next body chunk; for `list`, each page.
    pub request_timeout: Duration,
}

impl Default for LimitConfig {
    fn default() -> Self {
        LimitConfig {
            max_concurrent_requests: 32,
            // Long enough for a 16 MiB segment over a slow link, short enough that a hung
            // connection is abandoned well within a partial-upload interval's patience.
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// How to reach S3 (or an S3-compatible server).
#[derive(Debug, Clone)]
pub struct S3Options {
    /// Custom endpoint (`--s3-endpoint`), e.g. `http://127.0.0.1:5000`. When `None`, the standard
    /// `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_S3` environment variables and profile settings are
    /// honoured by the SDK, and otherwise AWS itself is used.
    pub endpoint: Option<String>,
    /// Region; when `None`, the standard chain (env `AWS_REGION`, profile, instance metadata).
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most S3-compatible servers.
    pub force_path_style: bool,
    /// Static credentials; when `None`, the standard AWS chain (env, profile, SSO, web identity,
    /// ECS and EC2 instance roles).
    pub credentials: Option<StaticCredentials>,
    /// TCP/TLS connect timeout.
    pub connect_timeout: Duration,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            endpoint: None,
            region: None,
            force_path_style: false,
            credentials: None,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// An access key pair, for tests and S3-compatible servers. Its `Debug` redacts the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl StaticCredentials {
    pub fn new(access_key_id: impl Into<String>, secret_access_key: impl Into<String>) -> Self {
        StaticCredentials {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token: None,
        }
    }
}

impl fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"** redacted **")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "** redacted **"),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_secrets() {
        let mut creds = StaticCredentials::new("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG");
        creds.session_token = Some("FQoGZXIvYXdzEJr".into());
        let opts = S3Options {
            credentials: Some(creds),
            ..S3Options::default()
        };
        let s = format!("{opts:?}");
        assert!(s.contains("AKIDEXAMPLE"), "{s}");
        assert!(!s.contains("wJalrXUtnFEMI"), "{s}");
        assert!(!s.contains("FQoGZXIvYXdzEJr"), "{s}");
    }
}
