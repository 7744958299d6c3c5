//! Configuration knobs and their defaults, and the standard layering of a backend.
//!
//! Owns [`RemoteConfig`] (what `from_url` needs) and its [`layer`](RemoteConfig::layer) order,
//! [`S3Options`] and [`StaticCredentials`]. The settings of each wrapper live with the wrapper
//! ([`RetryConfig`] in [`retry`](crate::retry), [`LimitConfig`] in [`limit`](crate::limit)) and are
//! re-exported here; this module depends on those two, never the other way round.
//!
//! Invariants: every knob has a default that is safe for production; `Debug` output of any config
//! never shows a secret (the secret key and session token are redacted); `layer` always puts the
//! limits below the retries.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use crate::limit::LimitConfig;
use crate::limit::LimitedStorage;
pub use crate::retry::RetryConfig;
use crate::retry::RetryingStorage;
use crate::storage::RemoteStorage;

/// Everything needed to open a storage by URL.
#[derive(Debug, Clone, Default)]
pub struct RemoteConfig {
    /// S3 connection options (ignored for `file://`).
    pub s3: S3Options,
    /// How the retry layer retries.
    pub retry: RetryConfig,
    /// How the limit layer bounds requests.
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
    /// The access key ID (not a secret; shown by `Debug`).
    pub access_key_id: String,
    /// The secret access key (redacted by `Debug`).
    pub secret_access_key: String,
    /// A session token for temporary credentials (redacted by `Debug`).
    pub session_token: Option<String>,
}

impl StaticCredentials {
    /// A key pair without a session token.
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
