//! Failure scenarios: injected faults under the retry layer, hung requests, timeouts, the
//! concurrency cap, and a process killed in the middle of a put.
//!
//! The stacks are built by hand from the public wrappers, so each test states exactly which layers
//! are involved: typically `Retrying(Limited(Faulty(LocalFs)))`.

mod common;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::data;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use remote_storage::{
    ErrorKind, FaultConfig, FaultyStorage, GetResult, LimitConfig, LimitedStorage, ListOptions,
    LocalFs, ObjectMeta, Op, PutOptions, PutPayload, RemoteStorage, RemoteStorageExt, Result,
    RetryConfig, RetryingStorage, StorageError,
};
use tokio_util::sync::CancellationToken;

fn quick_retries(max_attempts: u32) -> RetryConfig {
    RetryConfig {
        max_attempts,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(20),
    }
}

fn limits(timeout: Duration) -> LimitConfig {
    LimitConfig {
        max_concurrent_requests: 8,
        request_timeout: timeout,
    }
}

/// `Retrying(Limited(Faulty(LocalFs)))` in a temp dir; returns the stack and the fault handle.
fn stack(
    faults: FaultConfig,
    retry: RetryConfig,
    limit: LimitConfig,
) -> (
    Arc<dyn RemoteStorage>,
    Arc<FaultyStorage>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let local: Arc<dyn RemoteStorage> = Arc::new(LocalFs::new(dir.path()).expect("local"));
    let faulty = Arc::new(FaultyStorage::new(local, faults));
    let limited = Arc::new(LimitedStorage::new(faulty.clone(), limit));
    (Arc::new(RetryingStorage::new(limited, retry)), faulty, dir)
}

#[tokio::test]
async fn retries_recover_from_transient_failures() {
    let faults = FaultConfig::fail_calls([1, 2], ErrorKind::Transient).only([Op::Put]);
    let (s, faulty, _dir) = stack(faults, quick_retries(5), limits(Duration::from_secs(10)));
    let c = CancellationToken::new();
    let bytes = data(4096, 1);
    s.put("k", bytes.clone().into(), &PutOptions::default(), &c)
        .await
        .expect("put after retries");
    assert_eq!((faulty.calls(), faulty.injected()), (3, 2));
    assert_eq!(s.get_bytes("k", &c).await.expect("get"), bytes);
}

#[tokio::test]
async fn retried_put_whose_answer_was_lost_is_idempotent() {
    // The first put lands but reports a timeout; the retry rewrites the same bytes.
    let faults = FaultConfig::fail_calls([1], ErrorKind::Timeout)
        .only([Op::Put])
        .after_call();
    let (s, faulty, _dir) = stack(faults, quick_retries(3), limits(Duration::from_secs(10)));
    let c = CancellationToken::new();
    let bytes = data(10_000, 2);
    let opts = PutOptions {
        tags: vec![("safekeeper-kind".into(), "partial".into())],
        ..PutOptions::default()
    };
    s.put("k", bytes.clone().into(), &opts, &c)
        .await
        .expect("put");
    assert_eq!(faulty.calls(), 2);
    assert_eq!(s.get_bytes("k", &c).await.expect("get"), bytes);
    assert_eq!(s.get_tags("k", &c).await.expect("tags"), opts.tags);
}

#[tokio::test]
async fn streamed_put_is_reopened_on_retry() {
    let faults = FaultConfig::fail_calls([1], ErrorKind::Transient)
        .only([Op::Put])
        .after_call();
    let (s, faulty, _dir) = stack(faults, quick_retries(3), limits(Duration::from_secs(10)));
    let c = CancellationToken::new();
    let bytes = data(200_000, 3);
    let source = bytes.clone();
    let payload = PutPayload::from_stream_fn(bytes.len() as u64, move || {
        let parts: Vec<io::Result<Bytes>> = source
            .chunks(30_000)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures::stream::iter(parts).boxed()
    });
    s.put("streamed", payload, &PutOptions::default(), &c)
        .await
        .expect("put");
    assert_eq!(faulty.calls(), 2);
    assert_eq!(s.get_bytes("streamed", &c).await.expect("get"), bytes);
}

#[tokio::test]
async fn permanent_failure_fails_fast_with_context() {
    let faults = FaultConfig::fail_calls([1], ErrorKind::Permanent);
    let (s, faulty, _dir) = stack(faults, quick_retries(5), limits(Duration::from_secs(10)));
    let c = CancellationToken::new();
    let started = Instant::now();
    let e = s
        .put("wal/seg", data(10, 1).into(), &PutOptions::default(), &c)
        .await
        .expect_err("must fail");
    assert_eq!(e.kind(), ErrorKind::Permanent);
    assert_eq!(faulty.calls(), 1, "a permanent error must not be retried");
    assert!(started.elapsed() < Duration::from_millis(500));
    let text = e.to_string();
    assert!(
        text.contains("wal/seg") && text.contains("file://") && text.contains("put"),
        "{text}"
    );
}

#[tokio::test]
async fn persistent_transient_failures_give_up_with_a_clear_error() {
    let faults = FaultConfig::random(1.0, 7, ErrorKind::Transient);
    let (s, faulty, _dir) = stack(faults, quick_retries(4), limits(Duration::from_secs(10)));
    let c = CancellationToken::new();
    let e = s.head("wal/seg", &c).await.expect_err("must fail");
    assert_eq!(e.kind(), ErrorKind::Transient);
    assert_eq!(faulty.calls(), 4);
    assert!(e.to_string().contains("gave up after 4 attempts"), "{e}");
}

#[tokio::test]
async fn seeded_random_faults_are_survived_and_reproducible() {
    async fn run(seed: u64) -> u64 {
        let faults = FaultConfig::random(0.3, seed, ErrorKind::Transient);
        let (s, faulty, _dir) = stack(faults, quick_retries(12), limits(Duration::from_secs(10)));
        let c = CancellationToken::new();
        for i in 0..20u8 {
            let key = format!("k{i}");
            let bytes = data(1000 + usize::from(i), i);
            s.put(&key, bytes.clone().into(), &PutOptions::default(), &c)
                .await
                .expect("put");
            assert_eq!(s.get_bytes(&key, &c).await.expect("get"), bytes);
            assert_eq!(
                s.head(&key, &c).await.expect("head").size,
                bytes.len() as u64
            );
        }
        assert_eq!(
            s.list_all("", ListOptions::default(), &c)
                .await
                .expect("list")
                .len(),
            20
        );
        faulty.injected()
    }
    let injected = run(42).await;
    assert!(injected > 5, "only {injected} faults injected");
    assert_eq!(run(42).await, injected, "same seed, same faults");
}

#[tokio::test]
async fn truncated_download_is_a_length_error_not_data() {
    let faults = FaultConfig {
        truncate_get_by: 100,
        ..FaultConfig::default()
    };
    let (s, faulty, _dir) = stack(faults, quick_retries(3), limits(Duration::from_secs(10)));
    let c = CancellationToken::new();
    s.put("seg", data(5000, 4).into(), &PutOptions::default(), &c)
        .await
        .expect("put");
    let before = faulty.calls();
    let e = s
        .get_bytes("seg", &c)
        .await
        .expect_err("truncated body returned");
    assert_eq!(e.kind(), ErrorKind::LengthMismatch, "{e}");
    assert_eq!(
        faulty.calls() - before,
        1,
        "a length mismatch is not retried"
    );
    let e = s
        .get_range_bytes("seg", 0..1000, &c)
        .await
        .expect_err("truncated range returned");
    assert_eq!(e.kind(), ErrorKind::LengthMismatch, "{e}");
}

#[tokio::test]
async fn hung_requests_are_cancelled_promptly() {
    let (s, faulty, _dir) = stack(
        FaultConfig::default(),
        quick_retries(3),
        limits(Duration::from_secs(3600)),
    );
    let c = CancellationToken::new();
    s.put("k", data(10, 1).into(), &PutOptions::default(), &c)
        .await
        .expect("put");
    faulty.set_config(FaultConfig::hang());

    let cancel = CancellationToken::new();
    let canceller = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            cancel.cancel();
        })
    };
    let started = Instant::now();
    let none = PutOptions::default();
    let (put, get, list) = tokio::join!(
        s.put("k2", data(10, 2).into(), &none, &cancel),
        s.get_bytes("k", &cancel),
        s.list_all("", ListOptions::default(), &cancel),
    );
    let elapsed = started.elapsed();
    canceller.await.expect("canceller");
    assert_eq!(put.expect_err("put").kind(), ErrorKind::Cancelled);
    assert_eq!(get.expect_err("get").kind(), ErrorKind::Cancelled);
    assert_eq!(list.expect_err("list").kind(), ErrorKind::Cancelled);
    assert!(
        elapsed < Duration::from_secs(2),
        "cancellation took {elapsed:?}"
    );
}

#[tokio::test]
async fn hung_requests_time_out_and_are_retried() {
    let (s, faulty, _dir) = stack(
        FaultConfig::hang(),
        quick_retries(3),
        limits(Duration::from_millis(50)),
    );
    let c = CancellationToken::new();
    let started = Instant::now();
    let e = s.head("k", &c).await.expect_err("must time out");
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert_eq!(faulty.calls(), 3);
    assert!(e.to_string().contains("gave up after 3 attempts"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn concurrency_is_capped() {
    let dir = tempfile::tempdir().expect("temp dir");
    let local: Arc<dyn RemoteStorage> = Arc::new(LocalFs::new(dir.path()).expect("local"));
    let faulty = Arc::new(FaultyStorage::new(
        local,
        FaultConfig::latency(Duration::from_millis(30)),
    ));
    let cap = LimitConfig {
        max_concurrent_requests: 3,
        request_timeout: Duration::from_secs(10),
    };
    let s = LimitedStorage::new(faulty.clone(), cap);
    let c = CancellationToken::new();
    let keys: Vec<String> = (0..12).map(|i| format!("k{i}")).collect();
    let none = PutOptions::default();
    let results: Vec<_> = futures::future::join_all(
        keys.iter()
            .map(|k| s.put(k, Bytes::from_static(b"x").into(), &none, &c)),
    )
    .await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(faulty.max_in_flight(), 3);
    assert_eq!(s.available_permits(), 3, "every permit was returned");
}

/// A wrapper whose first `list` fails with a transient error after `fail_after` items.
#[derive(Debug)]
struct FlakyList {
    inner: Arc<dyn RemoteStorage>,
    fail_after: usize,
    failed: AtomicBool,
}

impl RemoteStorage for FlakyList {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn put<'a>(
        &'a self,
        k: &'a str,
        p: PutPayload,
        o: &'a PutOptions,
        c: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<ObjectMeta>> {
        self.inner.put(k, p, o, c)
    }
    fn get<'a>(
        &'a self,
        k: &'a str,
        r: Option<std::ops::Range<u64>>,
        c: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<GetResult>> {
        self.inner.get(k, r, c)
    }
    fn head<'a>(
        &'a self,
        k: &'a str,
        c: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<ObjectMeta>> {
        self.inner.head(k, c)
    }
    fn get_tags<'a>(
        &'a self,
        k: &'a str,
        c: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>>> {
        self.inner.get_tags(k, c)
    }
    fn list<'a>(
        &'a self,
        p: &'a str,
        o: ListOptions,
        c: &'a CancellationToken,
    ) -> BoxStream<'a, Result<ObjectMeta>> {
        let inner = self.inner.list(p, o, c);
        if self.failed.swap(true, Ordering::SeqCst) {
            return inner;
        }
        let err = StorageError::new(
            ErrorKind::Transient,
            Op::List,
            self.name(),
            p,
            "connection reset mid-list",
        );
        inner
            .take(self.fail_after)
            .chain(futures::stream::iter([Err(err)]))
            .boxed()
    }
    fn delete_many<'a>(
        &'a self,
        k: &'a [String],
        c: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<()>> {
        self.inner.delete_many(k, c)
    }
    fn copy<'a>(
        &'a self,
        f: &'a str,
        t: &'a str,
        c: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<()>> {
        self.inner.copy(f, t, c)
    }
}

#[tokio::test]
async fn list_resumes_after_a_midway_failure_without_duplicates() {
    let dir = tempfile::tempdir().expect("temp dir");
    let local: Arc<dyn RemoteStorage> = Arc::new(LocalFs::new(dir.path()).expect("local"));
    let c = CancellationToken::new();
    let keys: Vec<String> = (0..25).map(|i| format!("p/{i:02}")).collect();
    for k in &keys {
        local
            .put(
                k,
                Bytes::from_static(b"x").into(),
                &PutOptions::default(),
                &c,
            )
            .await
            .expect("put");
    }
    let flaky = Arc::new(FlakyList {
        inner: local,
        fail_after: 10,
        failed: AtomicBool::new(false),
    });
    let s = RetryingStorage::new(flaky.clone(), quick_retries(3));
    let listed: Vec<String> = s
        .list_all("p/", ListOptions::default(), &c)
        .await
        .expect("list")
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert!(flaky.failed.load(Ordering::SeqCst));
    assert_eq!(listed, keys);
}

const CRASH_ROOT_ENV: &str = "REMOTE_STORAGE_CRASH_CHILD_ROOT";

/// The child half of `killed_put_leaves_no_visible_object`: start a put whose stream delivers
/// 4 MiB and then stalls forever, so the parent can kill this process mid-write.
async fn crash_child(root: &str) {
    let storage = LocalFs::new(root).expect("child storage");
    let payload = PutPayload::from_stream_fn(16 << 20, || {
        let head = futures::stream::iter((0..4).map(|i| Ok(Bytes::from(vec![i as u8; 1 << 20]))));
        head.chain(futures::stream::pending()).boxed()
    });
    let c = CancellationToken::new();
    let _ = storage
        .put("crash/seg", payload, &PutOptions::default(), &c)
        .await;
    unreachable!("the stream never ends");
}

#[tokio::test]
async fn killed_put_leaves_no_visible_object() {
    if let Ok(root) = std::env::var(CRASH_ROOT_ENV) {
        return crash_child(&root).await;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let exe = std::env::current_exe().expect("test binary");
    let mut child = std::process::Command::new(exe)
        .args([
            "killed_put_leaves_no_visible_object",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_ROOT_ENV, dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn child");
    // Wait until the child has written part of the object, then SIGKILL it by PID.
    let started = Instant::now();
    let temp = loop {
        let temps = common::find_files(dir.path(), |n| n.starts_with(".~tmp."));
        if let Some(t) = temps
            .iter()
            .find(|t| std::fs::metadata(t).is_ok_and(|m| m.len() >= 1 << 20))
        {
            break t.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "child never started writing"
        );
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "child exited early"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().expect("kill child");
    child.wait().expect("reap child");

    let storage = LocalFs::new(dir.path()).expect("storage");
    let c = CancellationToken::new();
    assert!(temp.exists(), "the half-written temp file is still on disk");
    assert_eq!(
        storage
            .head("crash/seg", &c)
            .await
            .expect_err("visible")
            .kind(),
        ErrorKind::NotFound
    );
    assert!(
        storage
            .list_all("", ListOptions::default(), &c)
            .await
            .expect("list")
            .is_empty()
    );
    // The key is usable again.
    let bytes = data(1000, 5);
    storage
        .put(
            "crash/seg",
            bytes.clone().into(),
            &PutOptions::default(),
            &c,
        )
        .await
        .expect("put");
    assert_eq!(
        storage.get_bytes("crash/seg", &c).await.expect("get"),
        bytes
    );
}
