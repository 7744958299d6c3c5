//! Bounding how many requests run and for how long.
//!
//! Owns [`LimitedStorage`], a wrapper that gives every request (one attempt of one operation) a
//! permit from a shared semaphore and a deadline, and its settings ([`LimitConfig`]).
//!
//! Invariants:
//! - at most `max_concurrent_requests` requests are in flight in the wrapped storage at any time;
//!   a `get` keeps its permit until its body has been read or dropped, a `list` takes one for each
//!   item it waits for (so for each page it fetches), a `delete_many` one per 1000 keys;
//! - a request's clock starts only once it holds a permit: waiting in the queue is not a timeout;
//! - no request runs past `request_timeout` (for `get`, until the response and then between body
//!   chunks): it fails with [`ErrorKind::Timeout`], which is retryable;
//! - waiting for a permit, a response or a chunk ends at once with `Cancelled` when the token fires.

use std::future::Future;
use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::error::{ErrorKind, Op, Result, StorageError};
use crate::object::{GetResult, ListOptions, ObjectMeta, PutOptions, PutPayload};
use crate::storage::{DELETE_BATCH, RemoteStorage};

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

/// A concurrency cap and per-request timeout around another storage.
#[derive(Debug)]
pub struct LimitedStorage {
    inner: Arc<dyn RemoteStorage>,
    semaphore: Arc<Semaphore>,
    config: LimitConfig,
}

impl LimitedStorage {
    /// Bound the requests to `inner` as `config` says (at least one request may always run).
    pub fn new(inner: Arc<dyn RemoteStorage>, config: LimitConfig) -> Self {
        let permits = config
            .max_concurrent_requests
            .clamp(1, Semaphore::MAX_PERMITS);
        LimitedStorage {
            inner,
            semaphore: Arc::new(Semaphore::new(permits)),
            config,
        }
    }

    /// Permits currently free (for tests and metrics).
    pub fn available_permits(&self) -> usize {
        self.semaphore.available_permits()
    }

    async fn permit(
        &self,
        op: Op,
        key: &str,
        cancel: &CancellationToken,
    ) -> Result<OwnedSemaphorePermit> {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(StorageError::cancelled(op, self.inner.name(), key)),
            p = self.semaphore.clone().acquire_owned() => p.map_err(|_| {
                StorageError::new(ErrorKind::Permanent, op, self.inner.name(), key, "request limiter closed")
            }),
        }
    }

    /// Run one request under a permit and the timeout.
    async fn limited<T>(
        &self,
        op: Op,
        key: &str,
        cancel: &CancellationToken,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let _permit = self.permit(op, key, cancel).await?;
        deadline(&self.config, self.inner.name(), op, key, cancel, fut).await
    }
}

/// `fut` bounded by the request timeout and the token.
async fn deadline<T>(
    config: &LimitConfig,
    backend: &str,
    op: Op,
    key: &str,
    cancel: &CancellationToken,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(StorageError::cancelled(op, backend, key)),
        r = tokio::time::timeout(config.request_timeout, fut) => r.unwrap_or_else(|_| {
            Err(StorageError::new(
                ErrorKind::Timeout,
                op,
                backend,
                key,
                format!("no answer within the request timeout of {:?}", config.request_timeout),
            ))
        }),
    }
}

impl RemoteStorage for LimitedStorage {
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
        Box::pin(self.limited(
            Op::Put,
            key,
            cancel,
            self.inner.put(key, payload, opts, cancel),
        ))
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
        range: Option<Range<u64>>,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<GetResult>> {
        Box::pin(async move {
            let permit = self.permit(Op::Get, key, cancel).await?;
            let result = deadline(
                &self.config,
                self.inner.name(),
                Op::Get,
                key,
                cancel,
                self.inner.get(key, range, cancel),
            )
            .await?;
            let (meta, range, body) = result.into_parts();
            // The body keeps the permit, and each chunk gets the timeout and the token.
            let state = (
                body,
                permit,
                self.config.clone(),
                cancel.clone(),
                self.inner.name().to_string(),
                key.to_string(),
            );
            let body = futures::stream::unfold(Some(state), |state| async move {
                let (mut body, permit, config, cancel, backend, key) = state?;
                let next = deadline(&config, &backend, Op::Get, &key, &cancel, async {
                    Ok(body.next().await)
                })
                .await;
                match next {
                    Ok(Some(item)) => {
                        Some((item, Some((body, permit, config, cancel, backend, key))))
                    }
                    Ok(None) => None,
                    Err(e) => Some((Err(io::Error::other(e)), None)),
                }
            })
            .boxed();
            Ok(GetResult::new(self.inner.name(), meta, range, body))
        })
    }

    fn head<'a>(
        &'a self,
        key: &'a str,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<ObjectMeta>> {
        Box::pin(self.limited(Op::Head, key, cancel, self.inner.head(key, cancel)))
    }

    fn get_tags<'a>(
        &'a self,
        key: &'a str,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>>> {
        Box::pin(self.limited(Op::GetTags, key, cancel, self.inner.get_tags(key, cancel)))
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        opts: ListOptions,
        cancel: &'a CancellationToken,
    ) -> BoxStream<'a, Result<ObjectMeta>> {
        let inner = self.inner.list(prefix, opts, cancel);
        futures::stream::unfold(Some(inner), move |state| async move {
            let mut inner = state?;
            let next = self
                .limited(Op::List, prefix, cancel, async { Ok(inner.next().await) })
                .await;
            match next {
                Ok(Some(item)) => Some((item, Some(inner))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        })
        .boxed()
    }

    /// One permit and one timeout per batch of [`DELETE_BATCH`] keys (one S3 request each).
    fn delete_many<'a>(
        &'a self,
        keys: &'a [String],
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            for batch in keys.chunks(DELETE_BATCH) {
                let first = batch.first().map(String::as_str).unwrap_or_default();
                self.limited(
                    Op::Delete,
                    first,
                    cancel,
                    self.inner.delete_many(batch, cancel),
                )
                .await?;
            }
            Ok(())
        })
    }

    fn copy<'a>(
        &'a self,
        from: &'a str,
        to: &'a str,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.limited(Op::Copy, from, cancel, self.inner.copy(from, to, cancel)))
    }
}
