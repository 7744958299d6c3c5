//! Upload metrics without touching the offload code: a [`RemoteStorage`] wrapper that counts the
//! puts going through it, placed twice in the storage stack by [`open_observed`]:
//!
//! ```text
//! Observed(Uploads) -> Retrying -> Limited -> Observed(Attempts) -> backend
//! ```
//!
//! Above the retry layer every `put` is one upload as the manager sees it: its latency (queueing
//! and retries included), success or final failure. Below it every `put` is one attempt: an
//! attempt at a key whose previous attempt failed is a retry. The cluster and the kind
//! (full/partial/history) come from the key (`<cluster>/wal/<file>`, see `remote.rs`).
//!
//! Invariant: the wrapper never changes a request or its result; other operations pass through.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use remote_storage::{
    ErrorKind, GetResult, ListOptions, ObjectMeta, PutOptions, PutPayload, RemoteLocation,
    RemoteStorage,
};
use tokio_util::sync::CancellationToken;

use crate::remote::S3Args;
use crate::telemetry::{
    UPLOAD_BYTES_TOTAL, UPLOAD_FAILURES_TOTAL, UPLOAD_RETRIES_TOTAL, UPLOAD_SECONDS, UPLOADS_TOTAL,
};

/// Failed keys remembered for retry counting; beyond this the memory is cleared (a key that
/// failed and was never tried again must not grow it forever).
const MAX_FAILED_KEYS: usize = 4096;

/// Which side of the retry layer a wrapper sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    Uploads,
    Attempts,
}

/// The counting wrapper.
#[derive(Debug)]
pub(crate) struct ObservedStorage {
    inner: Arc<dyn RemoteStorage>,
    position: Position,
    failed: Mutex<HashSet<String>>,
}

/// Opens the remote storage at `url` like `remote::open_remote`, with the two counting layers.
pub(crate) async fn open_observed(url: &str, s3: &S3Args) -> Result<Arc<dyn RemoteStorage>> {
    let config = s3.remote_config();
    let open = async {
        let location = RemoteLocation::parse(url)?;
        remote_storage::open_backend(&location, &config.s3).await
    };
    let backend = open
        .await
        .with_context(|| format!("cannot open remote storage {url}"))?;
    let attempts = ObservedStorage::wrap(backend, Position::Attempts);
    Ok(ObservedStorage::wrap(
        config.layer(attempts),
        Position::Uploads,
    ))
}

/// `(cluster, kind)` of a key `<cluster>/wal/<file>`; `None` for anything else.
fn classify(key: &str) -> Option<(&str, &'static str)> {
    let (cluster, file) = key.split_once("/wal/")?;
    let kind = if file.ends_with(".partial") {
        "partial"
    } else if file.ends_with(".history") {
        "history"
    } else {
        "full"
    };
    Some((cluster, kind))
}

impl ObservedStorage {
    fn wrap(inner: Arc<dyn RemoteStorage>, position: Position) -> Arc<dyn RemoteStorage> {
        Arc::new(ObservedStorage {
            inner,
            position,
            failed: Mutex::new(HashSet::new()),
        })
    }

    fn record(&self, key: &str, started: Instant, result: &remote_storage::Result<ObjectMeta>) {
        let Some((cluster, kind)) = classify(key) else {
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

impl RemoteStorage for ObservedStorage {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        payload: PutPayload,
        opts: &'a PutOptions,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, remote_storage::Result<ObjectMeta>> {
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
    ) -> BoxFuture<'a, remote_storage::Result<GetResult>> {
        self.inner.get(key, range, cancel)
    }

    fn head<'a>(
        &'a self,
        key: &'a str,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, remote_storage::Result<ObjectMeta>> {
        self.inner.head(key, cancel)
    }

    fn get_tags<'a>(
        &'a self,
        key: &'a str,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, remote_storage::Result<Vec<(String, String)>>> {
        self.inner.get_tags(key, cancel)
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        opts: ListOptions,
        cancel: &'a CancellationToken,
    ) -> BoxStream<'a, remote_storage::Result<ObjectMeta>> {
        self.inner.list(prefix, opts, cancel)
    }

    fn delete_many<'a>(
        &'a self,
        keys: &'a [String],
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, remote_storage::Result<()>> {
        self.inner.delete_many(keys, cancel)
    }

    fn copy<'a>(
        &'a self,
        from: &'a str,
        to: &'a str,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, remote_storage::Result<()>> {
        self.inner.copy(from, to, cancel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_classified_by_cluster_and_kind() {
        assert_eq!(
            classify("main/wal/000000010000000000000003"),
            Some(("main", "full"))
        );
        assert_eq!(
            classify(
                "db-1/wal/000000010000000000000003_0000000003A1B2C8_0000000000000001_sk1.partial"
            ),
            Some(("db-1", "partial"))
        );
        assert_eq!(
            classify("main/wal/00000002.history"),
            Some(("main", "history"))
        );
        assert_eq!(classify("elsewhere"), None);
    }
}
