//! Retrying retryable failures with exponential backoff and jitter.
//!
//! Owns [`RetryingStorage`], its settings ([`RetryConfig`]) and the backoff schedule (`backoff`).
//!
//! Invariants:
//! - only [`ErrorKind::is_retryable`](crate::error::ErrorKind::is_retryable) errors (transient, timeout) are retried, at most
//!   `max_attempts` attempts in total; anything else is returned at once;
//! - the final error keeps its kind, operation, backend and key, and says how many attempts were
//!   made;
//! - every wait (an attempt, a backoff sleep) ends at once with `Cancelled` when the token fires;
//! - a `get` is retried as a whole, body included: the object is read into memory and verified
//!   inside the attempt, so a connection that dies mid-body is retried too;
//! - a `list` that fails midway resumes after the last key it yielded (`start_after`), so callers
//!   see every key exactly once;
//! - all operations are idempotent at the storage level (puts of a stream reopen the stream), so
//!   retrying an attempt whose answer was lost is safe.

use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt};
use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::error::{Op, Result, StorageError};
use crate::object::{GetResult, ListOptions, ObjectMeta, PutOptions, PutPayload};
use crate::storage::RemoteStorage;

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

/// The sleep before attempt `attempt + 1` (`attempt` ≥ 1): `initial * 2^(attempt-1)` capped at
/// `max`, then "equal jitter": uniformly random in `[d/2, d]`, so concurrent retries spread out
/// but never retry immediately.
pub(crate) fn backoff(config: &RetryConfig, attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let d = config
        .initial_backoff
        .saturating_mul(1u32 << exp)
        .min(config.max_backoff);
    let half = d / 2;
    let jitter =
        rand::thread_rng().gen_range(0..=half.as_micros().min(u128::from(u64::MAX)) as u64);
    half + Duration::from_micros(jitter)
}

/// Retries around another storage.
#[derive(Debug)]
pub struct RetryingStorage {
    inner: Arc<dyn RemoteStorage>,
    config: RetryConfig,
}

impl RetryingStorage {
    /// Retry the retryable failures of `inner` as `config` says.
    pub fn new(inner: Arc<dyn RemoteStorage>, config: RetryConfig) -> Self {
        RetryingStorage { inner, config }
    }

    /// Sleep for the backoff after `attempt`, or return `Cancelled`.
    async fn sleep(
        &self,
        op: Op,
        key: &str,
        attempt: u32,
        error: &StorageError,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let delay = backoff(&self.config, attempt);
        tracing::warn!(backend = %self.inner.name(), %op, key, attempt, max_attempts = self.config.max_attempts,
            delay_ms = delay.as_millis() as u64, error = %error.message(), kind = %error.kind(), "retrying");
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(StorageError::cancelled(op, self.inner.name(), key)),
            _ = tokio::time::sleep(delay) => Ok(()),
        }
    }

    /// Run `attempt` until it succeeds, fails for good, runs out of attempts or is cancelled.
    async fn run<'a, T, F, Fut>(
        &'a self,
        op: Op,
        key: &'a str,
        cancel: &'a CancellationToken,
        mut attempt: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>> + 'a,
    {
        let started = Instant::now();
        let mut n = 1;
        loop {
            let result = tokio::select! {
                biased;
                _ = cancel.cancelled() => Err(StorageError::cancelled(op, self.inner.name(), key)),
                r = attempt() => r,
            };
            match result {
                Ok(v) => {
                    if n > 1 {
                        tracing::info!(backend = %self.inner.name(), %op, key, attempts = n,
                            elapsed_ms = started.elapsed().as_millis() as u64, "succeeded after retries");
                    }
                    return Ok(v);
                }
                Err(e) if e.kind().is_retryable() && n < self.config.max_attempts => {
                    self.sleep(op, key, n, &e, cancel).await?;
                    n += 1;
                }
                Err(e) if n > 1 => {
                    return Err(e.context(format!(
                        "gave up after {n} attempts in {:.1?}",
                        started.elapsed()
                    )));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl RemoteStorage for RetryingStorage {
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
        Box::pin(self.run(Op::Put, key, cancel, move || {
            self.inner.put(key, payload.clone(), opts, cancel)
        }))
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
        range: Option<Range<u64>>,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<GetResult>> {
        Box::pin(self.run(Op::Get, key, cancel, move || {
            let range = range.clone();
            async move {
                let result = self.inner.get(key, range, cancel).await?;
                let (meta, range) = (result.meta.clone(), result.range.clone());
                let bytes = result.bytes().await?;
                let body = futures::stream::once(futures::future::ready(Ok(bytes))).boxed();
                Ok(GetResult::new(self.inner.name(), meta, range, body))
            }
        }))
    }

    fn head<'a>(
        &'a self,
        key: &'a str,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<ObjectMeta>> {
        Box::pin(self.run(Op::Head, key, cancel, move || self.inner.head(key, cancel)))
    }

    fn get_tags<'a>(
        &'a self,
        key: &'a str,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>>> {
        Box::pin(self.run(Op::GetTags, key, cancel, move || {
            self.inner.get_tags(key, cancel)
        }))
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        opts: ListOptions,
        cancel: &'a CancellationToken,
    ) -> BoxStream<'a, Result<ObjectMeta>> {
        struct State<'a> {
            stream: Option<BoxStream<'a, Result<ObjectMeta>>>,
            last_key: Option<String>,
            failures: u32,
            done: bool,
        }
        let initial = State {
            stream: None,
            last_key: opts.start_after.clone(),
            failures: 0,
            done: false,
        };
        futures::stream::unfold(initial, move |mut st| {
            let opts = opts.clone();
            async move {
                loop {
                    if st.done {
                        return None;
                    }
                    let resume = ListOptions {
                        start_after: st.last_key.clone(),
                        ..opts.clone()
                    };
                    let stream = st.stream.get_or_insert_with(|| self.inner.list(prefix, resume, cancel));
                    let next = tokio::select! {
                        biased;
                        _ = cancel.cancelled() => Some(Err(StorageError::cancelled(Op::List, self.inner.name(), prefix))),
                        next = stream.next() => next,
                    };
                    match next {
                        None => return None,
                        Some(Ok(meta)) => {
                            st.last_key = Some(meta.key.clone());
                            st.failures = 0;
                            return Some((Ok(meta), st));
                        }
                        Some(Err(e)) if e.kind().is_retryable() && st.failures + 1 < self.config.max_attempts => {
                            st.failures += 1;
                            st.stream = None;
                            if let Err(cancelled) = self.sleep(Op::List, prefix, st.failures, &e, cancel).await {
                                st.done = true;
                                return Some((Err(cancelled), st));
                            }
                        }
                        Some(Err(e)) => {
                            st.done = true;
                            let e = if st.failures > 0 {
                                e.context(format!("gave up after {} attempts", st.failures + 1))
                            } else {
                                e
                            };
                            return Some((Err(e), st));
                        }
                    }
                }
            }
        })
        .boxed()
    }

    fn delete_many<'a>(
        &'a self,
        keys: &'a [String],
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<()>> {
        let first = keys.first().map(String::as_str).unwrap_or_default();
        Box::pin(self.run(Op::Delete, first, cancel, move || {
            self.inner.delete_many(keys, cancel)
        }))
    }

    fn copy<'a>(
        &'a self,
        from: &'a str,
        to: &'a str,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.run(Op::Copy, from, cancel, move || {
            self.inner.copy(from, to, cancel)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let c = RetryConfig {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        for _ in 0..100 {
            let d1 = backoff(&c, 1);
            assert!(
                d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100),
                "{d1:?}"
            );
            let d3 = backoff(&c, 3);
            assert!(
                d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400),
                "{d3:?}"
            );
            let d9 = backoff(&c, 9);
            assert!(
                d9 >= Duration::from_millis(500) && d9 <= Duration::from_secs(1),
                "{d9:?}"
            );
        }
        assert!(backoff(&c, u32::MAX) <= Duration::from_secs(1));
    }
}
