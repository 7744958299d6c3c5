//! The one object-storage stack every cluster of a `safekeeper run` shares, so its concurrency
//! limit is shared fairly among them:
//!
//! ```text
//! metrics(uploads) -> retry -> limit (semaphore + per-request timeout) -> metrics(attempts) -> backend
//! ```
//!
//! Above the retry layer every `put` is one upload as the manager sees it (latency with queueing
//! and retries, success or final failure); below it every `put` is one attempt, and an attempt at
//! a key whose previous attempt failed is a retry. The wrappers live in `remote_storage`
//! (`metrics`, `retry`, `limit`) and never change a request or its result.

use std::sync::Arc;

use anyhow::{Context, Result};
use remote_storage::RemoteStorage;

use crate::remote::S3Args;

/// Opens the storage at `url` (`file:///path` or `s3://bucket/prefix`) with the whole stack.
pub(crate) async fn open_shared(url: &str, s3: &S3Args) -> Result<Arc<dyn RemoteStorage>> {
    remote_storage::metrics::open_observed(url, &s3.remote_config(), crate::remote::key_labels)
        .await
        .with_context(|| format!("cannot open remote storage {url}"))
}
