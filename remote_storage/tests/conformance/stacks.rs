//! The wrapper stacks the conformance suite runs every case through, each a [`Wrap`]: a function
//! from a bare backend (and the fixture's test config) to the storage under test.
//!
//! The contract of `RemoteStorage` must hold whatever wraps a backend, so each wrapper of the
//! crate appears in at least one stack: retries and limits in [`from_url`] and [`service`],
//! metrics in [`service`], fault injection in [`faulty_retry`].
//!
//! [`Wrap`]: crate::common::Wrap

use std::sync::Arc;
use std::time::Duration;

use remote_storage::{
    ErrorKind, FaultConfig, FaultyStorage, RemoteConfig, RemoteStorage, RetryConfig,
    RetryingStorage,
};

/// The backend alone: the contract is the backend's, with nothing to hide its mistakes.
pub(crate) fn bare(backend: Arc<dyn RemoteStorage>, _: &RemoteConfig) -> Arc<dyn RemoteStorage> {
    backend
}

/// What `from_url` returns: `Retrying -> Limited -> backend`.
pub(crate) fn from_url(
    backend: Arc<dyn RemoteStorage>,
    config: &RemoteConfig,
) -> Arc<dyn RemoteStorage> {
    config.layer(backend)
}

/// The stack the service runs:
/// `Metrics(Uploads) -> Retrying -> Limited -> Metrics(Attempts) -> backend`.
pub(crate) fn service(
    backend: Arc<dyn RemoteStorage>,
    config: &RemoteConfig,
) -> Arc<dyn RemoteStorage> {
    // Every key recorded, under one label pair: the suite checks behaviour, not the labels.
    remote_storage::metrics::layer(config, backend, |_| Some(("conformance", "object")))
}

/// Probability that each fault layer of [`faulty_retry`] fails a call.
const FAULT_PROBABILITY: f64 = 0.1;

/// `Retrying -> Faulty(lost request) -> Faulty(lost answer) -> backend`, injecting only faults
/// the retry layer absorbs: transient failures of one call in ten *before* it reaches the
/// backend (the request was lost) and, independently, of one in ten *after* it took effect (the
/// answer was lost, so the retry repeats a request that already happened). Deterministic per
/// seed; with 12 attempts the chance that one operation exhausts them is about 0.19^12 ≈ 2e-9.
/// Backoffs are a few milliseconds, so the faults cost the suite almost no time.
pub(crate) fn faulty_retry(
    backend: Arc<dyn RemoteStorage>,
    _: &RemoteConfig,
) -> Arc<dyn RemoteStorage> {
    let lost_answers = FaultConfig::random(FAULT_PROBABILITY, 2, ErrorKind::Transient).after_call();
    let lost_requests = FaultConfig::random(FAULT_PROBABILITY, 1, ErrorKind::Transient);
    let faulty = Arc::new(FaultyStorage::new(backend, lost_answers));
    let faulty = Arc::new(FaultyStorage::new(faulty, lost_requests));
    let retry = RetryConfig {
        max_attempts: 12,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(4),
    };
    Arc::new(RetryingStorage::new(faulty, retry))
}
