//! Upload metrics without touching the code that uploads: a [`RemoteStorage`] wrapper that records
//! the puts going through it with the `metrics` crate facade, placed twice in the storage
//! stack by [`layer`] (and [`open_observed`]):
//!
//! ```text
//! Metrics(Uploads) -> Retrying -> Limited -> Metrics(Attempts) -> backend
//! ```
//!
//! Owns [`MetricsStorage`], its two [`Position`]s, the metric names ([`UPLOADS_TOTAL`] and the
//! other constants) and their descriptions ([`describe`]).
//!
//! Above the retry layer every `put` is one upload as the caller sees it: its latency (queueing
//! and retries included), success or final failure. Below it every `put` is one attempt: an
//! attempt at a key whose previous attempt failed is a retry. The labels `cluster` and `kind` come
//! from the key through the caller's [`KeyLabels`] (this crate knows no key layout); puts of keys
//! it does not label are not recorded.
//!
//! Invariants: the wrapper never changes a request or its result, and every operation other than
//! `put` passes straight through; a cancelled upload is not a failure (shutdown cancels on
//! purpose); the memory of failed keys is bounded ([`MAX_FAILED_KEYS`]). Without an installed
//! recorder every record is a no-op.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use metrics::{Unit, describe_counter, describe_histogram};
use tokio_util::sync::CancellationToken;

use crate::config::RemoteConfig;
use crate::error::{ErrorKind, Result};
use crate::location::RemoteLocation;
use crate::object::{GetResult, ListOptions, ObjectMeta, PutOptions, PutPayload};
use crate::storage::RemoteStorage;

/// Counter: objects stored (labels `cluster`, `kind` = full|partial|history).
pub const UPLOADS_TOTAL: &str = "safekeeper_uploads_total";
/// Counter: uploads that failed after the storage layer's retries (labels `cluster`, `kind`).
pub const UPLOAD_FAILURES_TOTAL: &str = "safekeeper_upload_failures_total";
/// Counter: upload attempts that repeated a failed attempt of the same object (`cluster`, `kind`).
pub const UPLOAD_RETRIES_TOTAL: &str = "safekeeper_upload_retries_total";
/// Counter: bytes stored by successful uploads (labels `cluster`, `kind`).
pub const UPLOAD_BYTES_TOTAL: &str = "safekeeper_upload_bytes_total";
/// Histogram: seconds per upload, retries and queueing included (labels `cluster`, `kind`).
pub const UPLOAD_SECONDS: &str = "safekeeper_upload_seconds";

/// Failed keys remembered for retry counting; beyond this the memory is cleared (a key that
/// failed and was never tried again must not grow it forever).
pub const MAX_FAILED_KEYS: usize = 4096;

/// Register the units and help texts of the metrics above with the installed recorder. Call once,
/// after installing it.
pub fn describe() {
    describe_counter!(UPLOADS_TOTAL, "Objects stored in remote storage, by kind.");
    describe_counter!(
        UPLOAD_FAILURES_TOTAL,
        "Uploads that failed after the storage layer's retries, by kind."
    );
    describe_counter!(
        UPLOAD_RETRIES_TOTAL,
        "Upload attempts that repeated a failed attempt of the same object, by kind."
    );
    describe_counter!(
        UPLOAD_BYTES_TOTAL,
        Unit::Bytes,
        "Bytes stored by successful uploads, by kind."
    );
    describe_histogram!(
        UPLOAD_SECONDS,
        Unit::Seconds,
        "Time per upload including queueing and retries, by kind."
    );
}

/// Which side of the retry layer a [`MetricsStorage`] sits on, and so what it records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// Above the retries: uploads, their bytes, latency and final failures.
    Uploads,
    /// Below the retries: attempts that repeat a failed attempt of the same key.
    Attempts,
}

/// The labels `(cluster, kind)` of a key, or `None` for a key whose puts are not recorded. The
/// caller owns its key layout; the safekeeper labels `<cluster>/wal/<file>` by file kind.
pub type KeyLabels = fn(&str) -> Option<(&str, &'static str)>;

/// The recording wrapper.
#[derive(Debug)]
pub struct MetricsStorage {
    inner: Arc<dyn RemoteStorage>,
    position: Position,
    labels: KeyLabels,
    failed: Mutex<HashSet<String>>,
}

/// `config`'s standard layering ([`RemoteConfig::layer`]) with a recording wrapper on each side of
/// it: `Metrics(Uploads) -> Retrying -> Limited -> Metrics(Attempts) -> backend`.
pub fn layer(
    config: &RemoteConfig,
    backend: Arc<dyn RemoteStorage>,
    labels: KeyLabels,
) -> Arc<dyn RemoteStorage> {
    let attempts = MetricsStorage::wrap(backend, Position::Attempts, labels);
    MetricsStorage::wrap(config.layer(attempts), Position::Uploads, labels)
}

/// Opens the storage at `url` like the crate's `from_url`, with the two recording layers of
/// [`layer`].
pub async fn open_observed(
    url: &str,
    config: &RemoteConfig,
    labels: KeyLabels,
) -> Result<Arc<dyn RemoteStorage>> {
    let backend = RemoteLocation::parse(url)?.open(&config.s3).await?;
    Ok(layer(config, backend, labels))
}

impl MetricsStorage {
    /// Record the puts going through `inner` as `position` says, labelled by `labels`.
    pub fn new(inner: Arc<dyn RemoteStorage>, position: Position, labels: KeyLabels) -> Self {
        MetricsStorage {
            inner,
            position,
            labels,
            failed: Mutex::new(HashSet::new()),
        }
    }

    /// [`new`](Self::new), as a shared trait object.
    pub fn wrap(
        inner: Arc<dyn RemoteStorage>,
        position: Position,
        labels: KeyLabels,
    ) -> Arc<dyn RemoteStorage> {
        Arc::new(Self::new(inner, position, labels))
    }

    fn record(&self, key: &str, started: Instant, result: &Result<ObjectMeta>) {
        let Some((cluster, kind)) = (self.labels)(key) else {
            return;
        };
        let labels = [("cluster", cluster.to_string()), ("kind", kind.to_string())];
        match self.position {
            Position::Uploads => match result {
                Ok(meta) => {
                    metrics::counter!(UPLOADS_TOTAL, &labels).increment(1);
                    metrics::counter!(UPLOAD_BYTES_TOTAL, &labels).increment(meta.size);
                    metrics::histogram!(UPLOAD_SECONDS, &labels)
                        .record(started.elapsed().as_secs_f64());
                }
                // Shutdown cancels uploads on purpose: not a failure of the storage.
                Err(e) if e.kind() == ErrorKind::Cancelled => {}
                Err(_) => metrics::counter!(UPLOAD_FAILURES_TOTAL, &labels).increment(1),
            },
            Position::Attempts => {
                let Ok(mut failed) = self.failed.lock() else {
                    return;
                };
                if failed.remove(key) {
                    metrics::counter!(UPLOAD_RETRIES_TOTAL, &labels).increment(1);
                }
                if result.is_err() {
                    if failed.len() >= MAX_FAILED_KEYS {
                        failed.clear();
                    }
                    failed.insert(key.to_string());
                }
            }
        }
    }
}

impl RemoteStorage for MetricsStorage {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        payload: PutPayload,
        opts: &'a PutOptions,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<ObjectMeta>> {
        Box::pin(async move {
            let started = Instant::now();
            let result = self.inner.put(key, payload, opts, cancel).await;
            self.record(key, started, &result);
            result
        })
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
        range: Option<Range<u64>>,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<GetResult>> {
        self.inner.get(key, range, cancel)
    }

    fn head<'a>(
        &'a self,
        key: &'a str,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<ObjectMeta>> {
        self.inner.head(key, cancel)
    }

    fn get_tags<'a>(
        &'a self,
        key: &'a str,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>>> {
        self.inner.get_tags(key, cancel)
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        opts: ListOptions,
        cancel: &'a CancellationToken,
    ) -> BoxStream<'a, Result<ObjectMeta>> {
        self.inner.list(prefix, opts, cancel)
    }

    fn delete_many<'a>(
        &'a self,
        keys: &'a [String],
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<()>> {
        self.inner.delete_many(keys, cancel)
    }

    fn copy<'a>(
        &'a self,
        from: &'a str,
        to: &'a str,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<()>> {
        self.inner.copy(from, to, cancel)
    }
}

#[cfg(test)]
mod tests;
