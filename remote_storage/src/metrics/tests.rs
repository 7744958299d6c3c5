//! Proves that [`MetricsStorage`] records what its module doc promises, with a small in-memory
//! recorder installed thread-locally around a current-thread runtime (so parallel tests never see
//! each other's metrics).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use metrics::{
    Counter, CounterFn, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};

use super::*;
use crate::config::RemoteConfig;
use crate::error::Op;
use crate::fault::{FaultConfig, FaultyStorage};
use crate::local::LocalFs;
use crate::retry::RetryConfig;

/// Samples of one histogram.
#[derive(Debug, Default)]
struct Samples(Mutex<Vec<f64>>);

impl HistogramFn for Samples {
    fn record(&self, value: f64) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(value);
    }
}

/// Counters and histograms by `name{label=value,...}`, plus the described names.
#[derive(Debug, Default)]
struct TestRecorder {
    counters: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
    histograms: Mutex<BTreeMap<String, Arc<Samples>>>,
    described: Mutex<Vec<(String, Option<Unit>)>>,
}

fn render(key: &Key) -> String {
    let labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

impl TestRecorder {
    fn counter(&self, name: &str, cluster: &str, kind: &str) -> u64 {
        let key = format!("{name}{{cluster={cluster},kind={kind}}}");
        let counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        counters.get(&key).map_or(0, |c| c.load(Ordering::SeqCst))
    }

    fn samples(&self, name: &str, cluster: &str, kind: &str) -> Vec<f64> {
        let key = format!("{name}{{cluster={cluster},kind={kind}}}");
        let histograms = self
            .histograms
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        histograms.get(&key).map_or_else(Vec::new, |h| {
            h.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
        })
    }

    /// Every series recorded at all, for "nothing else was recorded" checks.
    fn series(&self) -> Vec<String> {
        let counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        let histograms = self
            .histograms
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        counters.keys().chain(histograms.keys()).cloned().collect()
    }

    fn describe(&self, key: KeyName, unit: Option<Unit>) {
        self.described
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((key.as_str().to_string(), unit));
    }
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, _: SharedString) {
        self.describe(key, unit);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, _: SharedString) {
        self.describe(key, unit);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, _: SharedString) {
        self.describe(key, unit);
    }

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        Counter::from_arc(counters.entry(render(key)).or_default().clone())
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let mut histograms = self
            .histograms
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Histogram::from_arc(histograms.entry(render(key)).or_default().clone())
    }
}

// `AtomicU64` is the counter; make sure the trait is what we think it is.
const _: fn(&AtomicU64) = |c| CounterFn::increment(c, 0);

/// Run `f` on a current-thread runtime with `recorder` installed on this thread: every poll, and
/// so every record, happens here.
fn recorded<F: Future<Output = ()>>(recorder: &TestRecorder, f: impl FnOnce() -> F) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    metrics::with_local_recorder(recorder, || rt.block_on(f()));
}

fn quick_retries() -> RemoteConfig {
    RemoteConfig {
        retry: RetryConfig {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
        },
        ..RemoteConfig::default()
    }
}

/// A local backend in a fresh directory, with faults injected right above it.
fn faulty_local(faults: FaultConfig) -> (tempfile::TempDir, Arc<FaultyStorage>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let local = LocalFs::new(dir.path().join("remote")).expect("local storage");
    (dir, Arc::new(FaultyStorage::new(Arc::new(local), faults)))
}

const SEGMENT: &str = "main/wal/000000010000000000000003";
const PARTIAL: &str =
    "db-1/wal/000000010000000000000003_0000000003A1B2C8_0000000000000001_sk1.partial";

/// A caller's labelling, for these tests: keys `<cluster>/wal/<file>` by whether the file is a
/// partial, every other key unrecorded (the safekeeper's real one is `safekeeper::remote`'s).
fn labels(key: &str) -> Option<(&str, &'static str)> {
    let (cluster, rest) = key.split_once('/')?;
    match rest.split_once('/')?.0 {
        "wal" if rest.ends_with(".partial") => Some((cluster, "partial")),
        "wal" => Some((cluster, "full")),
        _ => None,
    }
}

#[test]
fn keys_are_labelled_by_the_callers_rule() {
    assert_eq!(labels(SEGMENT), Some(("main", "full")));
    assert_eq!(labels(PARTIAL), Some(("db-1", "partial")));
    assert_eq!(labels("elsewhere"), None);
}

#[test]
fn successful_uploads_record_count_bytes_and_latency() {
    let recorder = TestRecorder::default();
    let (_dir, faulty) = faulty_local(FaultConfig::default());
    let storage = layer(&quick_retries(), faulty, labels);
    let c = CancellationToken::new();
    recorded(&recorder, || async {
        let opts = PutOptions::default();
        let meta = storage
            .put(SEGMENT, Bytes::from(vec![7u8; 1000]).into(), &opts, &c)
            .await
            .expect("put");
        assert_eq!(meta.size, 1000);
        storage
            .put(SEGMENT, Bytes::from(vec![8u8; 24]).into(), &opts, &c)
            .await
            .expect("put again");
        storage
            .put(PARTIAL, Bytes::from_static(b"abc").into(), &opts, &c)
            .await
            .expect("put partial");
        storage
            .put(
                "archive/index.json",
                Bytes::from_static(b"x").into(),
                &opts,
                &c,
            )
            .await
            .expect("put other");
        // Other operations pass through unrecorded and unchanged.
        let got = storage.get(SEGMENT, None, &c).await.expect("get");
        assert_eq!(got.bytes().await.expect("body"), vec![8u8; 24]);
    });
    assert_eq!(recorder.counter(UPLOADS_TOTAL, "main", "full"), 2);
    assert_eq!(recorder.counter(UPLOAD_BYTES_TOTAL, "main", "full"), 1024);
    assert_eq!(recorder.samples(UPLOAD_SECONDS, "main", "full").len(), 2);
    assert_eq!(recorder.counter(UPLOADS_TOTAL, "db-1", "partial"), 1);
    assert_eq!(recorder.counter(UPLOAD_BYTES_TOTAL, "db-1", "partial"), 3);
    assert_eq!(recorder.counter(UPLOAD_FAILURES_TOTAL, "main", "full"), 0);
    assert_eq!(recorder.counter(UPLOAD_RETRIES_TOTAL, "main", "full"), 0);
    assert!(
        recorder.series().iter().all(|s| !s.contains("archive")),
        "{:?}",
        recorder.series()
    );
    assert_eq!(recorder.series().len(), 6, "{:?}", recorder.series());
}

#[test]
fn retried_attempts_are_counted_below_the_retry_layer() {
    let recorder = TestRecorder::default();
    // The first two puts fail and are retried; the upload still succeeds once.
    let (_dir, faulty) =
        faulty_local(FaultConfig::fail_calls([1, 2], ErrorKind::Transient).only([Op::Put]));
    let storage = layer(&quick_retries(), faulty.clone(), labels);
    let c = CancellationToken::new();
    recorded(&recorder, || async {
        storage
            .put(
                SEGMENT,
                Bytes::from_static(b"wal").into(),
                &PutOptions::default(),
                &c,
            )
            .await
            .expect("put after retries");
    });
    assert_eq!(faulty.injected(), 2);
    assert_eq!(recorder.counter(UPLOAD_RETRIES_TOTAL, "main", "full"), 2);
    assert_eq!(recorder.counter(UPLOADS_TOTAL, "main", "full"), 1);
    assert_eq!(recorder.counter(UPLOAD_FAILURES_TOTAL, "main", "full"), 0);
    let seconds = recorder.samples(UPLOAD_SECONDS, "main", "full");
    assert_eq!(seconds.len(), 1);
    assert!(seconds[0] > 0.0, "{seconds:?}");
}

#[test]
fn final_failures_are_counted_but_cancellations_are_not() {
    let recorder = TestRecorder::default();
    let (_dir, faulty) = faulty_local(FaultConfig::fail_calls(1..=100, ErrorKind::Permanent));
    let storage = layer(&quick_retries(), faulty.clone(), labels);
    recorded(&recorder, || async {
        let c = CancellationToken::new();
        let opts = PutOptions::default();
        let e = storage
            .put(SEGMENT, Bytes::from_static(b"x").into(), &opts, &c)
            .await
            .expect_err("permanent failure");
        assert_eq!(e.kind(), ErrorKind::Permanent);
        c.cancel();
        let e = storage
            .put(PARTIAL, Bytes::from_static(b"x").into(), &opts, &c)
            .await
            .expect_err("cancelled");
        assert_eq!(e.kind(), ErrorKind::Cancelled);
    });
    assert_eq!(recorder.counter(UPLOAD_FAILURES_TOTAL, "main", "full"), 1);
    assert_eq!(recorder.counter(UPLOADS_TOTAL, "main", "full"), 0);
    assert_eq!(
        recorder.counter(UPLOAD_FAILURES_TOTAL, "db-1", "partial"),
        0
    );
    // A permanent error is not retried, so no attempt repeated a failed one.
    assert_eq!(recorder.counter(UPLOAD_RETRIES_TOTAL, "main", "full"), 0);
}

#[test]
fn failed_keys_memory_is_bounded() {
    let (_dir, faulty) = faulty_local(FaultConfig::fail_calls(1..=10_000, ErrorKind::Permanent));
    let attempts = MetricsStorage::new(faulty, Position::Attempts, labels);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let c = CancellationToken::new();
    rt.block_on(async {
        for i in 0..MAX_FAILED_KEYS + 10 {
            let key = format!("main/wal/{i:024}");
            let r = attempts
                .put(&key, Bytes::new().into(), &PutOptions::default(), &c)
                .await;
            assert!(r.is_err());
        }
    });
    let remembered = attempts
        .failed
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .len();
    assert!(remembered <= MAX_FAILED_KEYS, "{remembered}");
}

#[test]
fn describe_registers_every_metric_with_its_unit() {
    let recorder = TestRecorder::default();
    metrics::with_local_recorder(&recorder, describe);
    let described = recorder
        .described
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    assert_eq!(
        described,
        vec![
            (UPLOADS_TOTAL.to_string(), None),
            (UPLOAD_FAILURES_TOTAL.to_string(), None),
            (UPLOAD_RETRIES_TOTAL.to_string(), None),
            (UPLOAD_BYTES_TOTAL.to_string(), Some(Unit::Bytes)),
            (UPLOAD_SECONDS.to_string(), Some(Unit::Seconds)),
        ]
    );
}
