//! Fault injection: a wrapper that makes any storage misbehave on purpose, for tests.
//!
//! Owns [`FaultyStorage`] and [`FaultConfig`]. Put it *under* [`RetryingStorage`] to test that
//! retries recover, or on top of a backend alone to test how callers react to failures.
//!
//! Invariants:
//! - faults are deterministic for a given config: call numbers are counted per wrapper over the
//!   operations the config selects, and probabilistic failures come from an RNG seeded by
//!   `seed` (reseeded whenever the config is replaced);
//! - an injected failure `Before` the call never reaches the inner storage; `After` it does (the
//!   request took effect but its answer was "lost"), which is what makes idempotency testable;
//! - latency is cancellable: a "hung" call returns `Cancelled` as soon as its token fires;
//! - truncation only shortens a `get` body; metadata still describes the full object, exactly
//!   like a connection that delivered a short body.
//!
//! [`RetryingStorage`]: crate::retry::RetryingStorage

use std::future::Future;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use crate::error::{ErrorKind, Op, Result, StorageError};
use crate::object::{GetResult, ListOptions, ObjectMeta, PutOptions, PutPayload};
use crate::storage::RemoteStorage;

/// When an injected failure happens relative to the real call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FaultPoint {
    /// The call fails without reaching the inner storage.
    #[default]
    Before,
    /// The call reaches the inner storage and takes effect, then fails anyway.
    After,
}

/// What to inject. `Default` injects nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultConfig {
    /// Operations subject to faults (and counted). Empty means all.
    pub ops: Vec<Op>,
    /// 1-based numbers of the selected calls that fail, e.g. `[1, 2]` fails the first two.
    pub fail_calls: Vec<u64>,
    /// Probability in `[0, 1]` that any other selected call fails.
    pub fail_probability: f64,
    /// Seed of the RNG behind `fail_probability`.
    pub seed: u64,
    /// Kind of the injected errors (`Transient`, `Permanent`, `Timeout`, `NotFound`, ...).
    pub failure: ErrorKind,
    /// Whether failures happen before or after the real call.
    pub point: FaultPoint,
    /// Delay added before every selected call (use a huge value for a hung request).
    pub latency: Duration,
    /// Cut this many bytes off the end of every `get` body (saturating at empty).
    pub truncate_get_by: u64,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            ops: Vec::new(),
            fail_calls: Vec::new(),
            fail_probability: 0.0,
            seed: 0,
            failure: ErrorKind::Transient,
            point: FaultPoint::Before,
            latency: Duration::ZERO,
            truncate_get_by: 0,
        }
    }
}

impl FaultConfig {
    /// Fail the given selected calls (1-based) with `kind`.
    pub fn fail_calls(calls: impl IntoIterator<Item = u64>, kind: ErrorKind) -> Self {
        FaultConfig {
            fail_calls: calls.into_iter().collect(),
            failure: kind,
            ..Self::default()
        }
    }

    /// Fail each selected call with probability `p`, deterministically for a `seed`.
    pub fn random(p: f64, seed: u64, kind: ErrorKind) -> Self {
        FaultConfig {
            fail_probability: p,
            seed,
            failure: kind,
            ..Self::default()
        }
    }

    /// Delay every selected call by `latency`.
    pub fn latency(latency: Duration) -> Self {
        FaultConfig {
            latency,
            ..Self::default()
        }
    }

    /// Calls that never answer (until cancelled).
    pub fn hang() -> Self {
        Self::latency(Duration::from_secs(24 * 3600))
    }

    /// Only these operations are counted and faulted.
    pub fn only(mut self, ops: impl IntoIterator<Item = Op>) -> Self {
        self.ops = ops.into_iter().collect();
        self
    }

    /// Inject failures after the real call instead of before.
    pub fn after_call(mut self) -> Self {
        self.point = FaultPoint::After;
        self
    }
}

/// What happens to one call.
struct Decision {
    fail: Option<(ErrorKind, u64)>,
    latency: Duration,
    point: FaultPoint,
    truncate_by: u64,
}

/// A storage wrapper that injects failures, latency and truncation.
#[derive(Debug)]
pub struct FaultyStorage {
    inner: Arc<dyn RemoteStorage>,
    state: Mutex<(FaultConfig, StdRng)>,
    calls: AtomicU64,
    injected: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

impl FaultyStorage {
    /// Inject the faults `config` describes into calls to `inner`.
    pub fn new(inner: Arc<dyn RemoteStorage>, config: FaultConfig) -> Self {
        let rng = StdRng::seed_from_u64(config.seed);
        FaultyStorage {
            inner,
            state: Mutex::new((config, rng)),
            calls: AtomicU64::new(0),
            injected: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
        }
    }

    /// Replace the config (e.g. to "heal" the network); resets the call count and reseeds.
    pub fn set_config(&self, config: FaultConfig) {
        let rng = StdRng::seed_from_u64(config.seed);
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = (config, rng);
        self.calls.store(0, Ordering::SeqCst);
    }

    /// Selected calls so far (since the last `set_config`).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Failures injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    /// The most calls that were in flight at once through this wrapper.
    pub fn max_in_flight(&self) -> u64 {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    fn decide(&self, op: Op) -> Decision {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (config, rng) = &mut *state;
        let none = Decision {
            fail: None,
            latency: Duration::ZERO,
            point: config.point,
            truncate_by: 0,
        };
        if !config.ops.is_empty() && !config.ops.contains(&op) {
            return none;
        }
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let p = config.fail_probability.clamp(0.0, 1.0);
        let fail = config.fail_calls.contains(&n) || (p > 0.0 && rng.gen_bool(p));
        Decision {
            fail: fail.then_some((config.failure, n)),
            latency: config.latency,
            point: config.point,
            truncate_by: if op == Op::Get {
                config.truncate_get_by
            } else {
                0
            },
        }
    }

    fn injected_error(&self, op: Op, key: &str, kind: ErrorKind, call: u64) -> StorageError {
        self.injected.fetch_add(1, Ordering::SeqCst);
        tracing::debug!(backend = %self.inner.name(), %op, key, %kind, call, "injecting fault");
        StorageError::new(
            kind,
            op,
            self.inner.name(),
            key,
            format!("injected fault at call #{call}"),
        )
    }

    /// Apply the decision for one call around `fut`.
    async fn around<T>(
        &self,
        op: Op,
        key: &str,
        cancel: &CancellationToken,
        d: Decision,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let _guard = InFlight::enter(self);
        if !d.latency.is_zero() {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(StorageError::cancelled(op, self.inner.name(), key)),
                _ = tokio::time::sleep(d.latency) => {}
            }
        }
        if let (Some((kind, n)), FaultPoint::Before) = (d.fail, d.point) {
            return Err(self.injected_error(op, key, kind, n));
        }
        let result = fut.await;
        if let (Some((kind, n)), FaultPoint::After) = (d.fail, d.point) {
            return Err(self.injected_error(op, key, kind, n));
        }
        result
    }
}

/// Counts calls in flight while alive.
struct InFlight<'a>(&'a FaultyStorage);

impl<'a> InFlight<'a> {
    fn enter(s: &'a FaultyStorage) -> Self {
        let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        s.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(s)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Read a body without verification and cut `by` bytes off its end.
async fn truncated(result: GetResult, by: u64, name: &str) -> Result<GetResult> {
    let (meta, range, mut body) = result.into_parts();
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| crate::object::body_error(e, Op::Get, name, &meta.key))?;
        buf.extend_from_slice(&chunk);
    }
    let keep = (buf.len() as u64).saturating_sub(by) as usize;
    let bytes: Bytes = buf.freeze().slice(..keep);
    let body = futures::stream::once(futures::future::ready(Ok(bytes))).boxed();
    Ok(GetResult::new(name, meta, range, body))
}

impl RemoteStorage for FaultyStorage {
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
        let d = self.decide(Op::Put);
        Box::pin(self.around(
            Op::Put,
            key,
            cancel,
            d,
            self.inner.put(key, payload, opts, cancel),
        ))
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
        range: Option<Range<u64>>,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<GetResult>> {
        let d = self.decide(Op::Get);
        let truncate_by = d.truncate_by;
        Box::pin(async move {
            let result = self
                .around(Op::Get, key, cancel, d, self.inner.get(key, range, cancel))
                .await?;
            if truncate_by == 0 {
                return Ok(result);
            }
            truncated(result, truncate_by, self.inner.name()).await
        })
    }

    fn head<'a>(
        &'a self,
        key: &'a str,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<ObjectMeta>> {
        let d = self.decide(Op::Head);
        Box::pin(self.around(Op::Head, key, cancel, d, self.inner.head(key, cancel)))
    }

    fn get_tags<'a>(
        &'a self,
        key: &'a str,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>>> {
        let d = self.decide(Op::GetTags);
        Box::pin(self.around(
            Op::GetTags,
            key,
            cancel,
            d,
            self.inner.get_tags(key, cancel),
        ))
    }

    /// A list counts as one call; a failure is yielded before any item.
    fn list<'a>(
        &'a self,
        prefix: &'a str,
        opts: ListOptions,
        cancel: &'a CancellationToken,
    ) -> BoxStream<'a, Result<ObjectMeta>> {
        let d = self.decide(Op::List);
        let start = async move {
            let items = self
                .around(Op::List, prefix, cancel, d, async {
                    Ok(self.inner.list(prefix, opts, cancel))
                })
                .await;
            match items {
                Ok(stream) => stream,
                Err(e) => futures::stream::once(futures::future::ready(Err(e))).boxed(),
            }
        };
        futures::stream::once(start).flatten().boxed()
    }

    fn delete_many<'a>(
        &'a self,
        keys: &'a [String],
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<()>> {
        let d = self.decide(Op::Delete);
        let first = keys.first().map(String::as_str).unwrap_or_default();
        Box::pin(self.around(
            Op::Delete,
            first,
            cancel,
            d,
            self.inner.delete_many(keys, cancel),
        ))
    }

    fn copy<'a>(
        &'a self,
        from: &'a str,
        to: &'a str,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<()>> {
        let d = self.decide(Op::Copy);
        Box::pin(self.around(Op::Copy, from, cancel, d, self.inner.copy(from, to, cancel)))
    }
}
