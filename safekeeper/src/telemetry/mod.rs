//! Prometheus metrics: what `GET /metrics` shows, and the names every other module records under;
//! and the log output (`log`: text or JSON lines).
//!
//! Two sources, rendered one after the other into one text exposition:
//! - **Events** (latencies, counts) are recorded where they happen through the `metrics` facade
//!   and kept by a `metrics-exporter-prometheus` recorder installed once per process
//!   ([`install`]): the WAL fsync latency and batch size (`ingest`), object-storage uploads,
//!   failures and retries by kind (`remote_storage::metrics`, layered into the storage stack by
//!   [`crate::process::storage`], so the offload code is untouched).
//! - **State** (LSNs, lag, connection state, reconnects, GC deletions) is read from the clusters'
//!   `watch` channels at scrape time ([`crate::http::metrics`]): nothing is instrumented for it,
//!   it can never drift from what the admin API reports, and a cluster removed at run time disappears from it.
//!
//! Invariants: the two sources never define the same metric family; every family name starts with
//! `safekeeper_`; histograms are true Prometheus histograms (fixed buckets), never summaries.
//! Recording is cheap (an atomic push) so the synchronous-commit path can afford it; the
//! recorder's upkeep task drains histogram samples even when nobody scrapes.

pub(crate) mod log;

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

/// Histogram: seconds one WAL write batch took to fdatasync (label `cluster`).
pub(crate) const WAL_FSYNC_SECONDS: &str = "safekeeper_wal_fsync_seconds";
/// Histogram: bytes written per fdatasync (group-commit batch size; label `cluster`).
pub(crate) const WAL_FLUSH_BATCH_BYTES: &str = "safekeeper_wal_flush_batch_bytes";
/// Counter: scheduled base backups (`run --backup-interval`) by `result` (`ok`, `error`).
pub(crate) const BACKUPS_TOTAL: &str = "safekeeper_backups_total";
/// Gauge: end time (seconds since the Unix epoch) of the newest base backup this process took on
/// its schedule (label `cluster`).
pub(crate) const LAST_BACKUP_END: &str = "safekeeper_last_backup_end_seconds";
/// Upper bounds of the latency histograms, in seconds: 100 µs to 1 min.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];
/// Upper bounds of the batch-size histogram, in bytes: 8 KiB (one WAL page) to 8 MiB (the cap).
const BATCH_BUCKETS: &[f64] = &[
    8192.0, 32768.0, 131072.0, 524288.0, 1048576.0, 2097152.0, 4194304.0, 8388608.0,
];
/// How often histogram samples are folded into buckets when nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder (once; later calls return the same handle). `None` when
/// another recorder was installed first, in which case events are not exported.
pub(crate) fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(WAL_FLUSH_BATCH_BYTES.into()),
                        BATCH_BUCKETS,
                    )
                })
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            Some(handle)
        })
        .clone()
}

/// Keeps the recorder's memory bounded: drains histogram samples until `cancel` fires.
pub(crate) fn spawn_upkeep(handle: PrometheusHandle, cancel: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => handle.run_upkeep(),
            }
        }
    });
}

fn describe() {
    describe_histogram!(
        WAL_FSYNC_SECONDS,
        Unit::Seconds,
        "Time one group-commit batch of WAL took to fdatasync."
    );
    describe_histogram!(
        WAL_FLUSH_BATCH_BYTES,
        Unit::Bytes,
        "WAL bytes written per fdatasync (group-commit batch size)."
    );
    describe_counter!(
        BACKUPS_TOTAL,
        "Scheduled base backups (run --backup-interval) by result (ok, error)."
    );
    describe_gauge!(
        LAST_BACKUP_END,
        Unit::Seconds,
        "End time (Unix seconds) of the newest scheduled base backup this process took."
    );
    // Upload counts, bytes, failures, retries and latency: the storage stack records them.
    remote_storage::metrics::describe();
}
