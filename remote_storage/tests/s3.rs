//! S3-only behaviour that the backend-neutral conformance suite cannot express: what the objects
//! look like to other S3 clients, bucket and network failures, the standard environment, and the
//! fault wrapper over a real S3 server.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{create_bucket, data, raw_client, test_config, unique_bucket};
use remote_storage::{
    ErrorKind, FaultConfig, FaultyStorage, LimitConfig, LimitedStorage, Op, PutOptions,
    RemoteConfig, RemoteStorage, RemoteStorageExt, RetryConfig, RetryingStorage, S3Options,
    S3Storage, StaticCredentials, from_url,
};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn objects_carry_crc32c_as_checksum_and_metadata() {
    let Some(endpoint) = common::moto::shared_endpoint() else {
        return;
    };
    let client = raw_client(&endpoint).await;
    let bucket = unique_bucket();
    create_bucket(&client, &bucket).await;
    let storage = from_url(&format!("s3://{bucket}/p"), &test_config(Some(endpoint)))
        .await
        .expect("open");
    let c = CancellationToken::new();
    let bytes = data(123_456, 1);
    let crc = crc32c::crc32c(&bytes);
    storage
        .put("wal/seg", bytes.into(), &PutOptions::default(), &c)
        .await
        .expect("put");

    let head = client
        .head_object()
        .bucket(&bucket)
        .key("p/wal/seg")
        .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
        .send()
        .await
        .expect("raw head");
    let meta_crc = head.metadata().and_then(|m| m.get("crc32c")).cloned();
    assert_eq!(meta_crc, Some(format!("{crc:08x}")));
    let expected_header = aws_smithy_types::base64::encode(crc.to_be_bytes());
    assert_eq!(head.checksum_crc32_c(), Some(expected_header.as_str()));
}

#[tokio::test]
async fn missing_bucket_is_permanent_and_fails_fast() {
    let Some(endpoint) = common::moto::shared_endpoint() else {
        return;
    };
    let mut config = test_config(Some(endpoint));
    config.retry = RetryConfig::default(); // production retries: must not be used up
    let storage = from_url("s3://no-such-bucket-here/p", &config)
        .await
        .expect("open");
    let c = CancellationToken::new();
    let started = Instant::now();
    let none = PutOptions::default();
    let put = storage
        .put("k", Bytes::from_static(b"x").into(), &none, &c)
        .await
        .expect_err("put");
    assert_eq!(put.kind(), ErrorKind::Permanent, "{put}");
    assert!(put.to_string().contains("no-such-bucket-here"), "{put}");
    let get = storage.get_bytes("k", &c).await.expect_err("get");
    assert_eq!(
        get.kind(),
        ErrorKind::Permanent,
        "a missing bucket is not a missing object: {get}"
    );
    let list = storage
        .list_all("", Default::default(), &c)
        .await
        .expect_err("list");
    assert_eq!(list.kind(), ErrorKind::Permanent, "{list}");
    eprintln!("example error: {put}");
    for e in [&put, &get, &list] {
        assert!(
            !e.to_string().contains("attempts"),
            "a permanent error was retried: {e}"
        );
    }
    // Six attempts with production backoff would take several seconds per operation.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn unreachable_endpoint_is_transient_and_retried() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let mut config = test_config(Some(format!("http://127.0.0.1:{port}")));
    config.retry.max_attempts = 2;
    let storage = from_url("s3://bucket/p", &config).await.expect("open");
    let e = storage
        .head("k", &CancellationToken::new())
        .await
        .expect_err("nothing listens");
    assert_eq!(e.kind(), ErrorKind::Transient, "{e}");
    assert!(e.to_string().contains("gave up after 2 attempts"), "{e}");
}

/// A server that accepts connections and never answers: requests hang until cancelled or timed out.
#[tokio::test]
async fn hung_server_requests_are_cancelled_or_time_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let sink = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    let bare = Arc::new(
        S3Storage::new(
            "bucket",
            "p",
            &test_config(Some(format!("http://127.0.0.1:{port}"))).s3,
        )
        .await
        .expect("open"),
    );
    let none = PutOptions::default();

    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        trigger.cancel();
    });
    let started = Instant::now();
    let e = bare
        .put("k", data(1000, 1).into(), &none, &cancel)
        .await
        .expect_err("hung");
    assert_eq!(e.kind(), ErrorKind::Cancelled, "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );

    let limits = LimitConfig {
        max_concurrent_requests: 4,
        request_timeout: Duration::from_millis(200),
    };
    let retry = RetryConfig {
        max_attempts: 2,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(1),
    };
    let layered = RemoteConfig {
        limits,
        retry,
        ..RemoteConfig::default()
    }
    .layer(bare);
    let e = layered
        .get_bytes("k", &CancellationToken::new())
        .await
        .expect_err("hung");
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    sink.abort();
}

#[tokio::test]
async fn retries_over_a_real_server_with_injected_faults() {
    let Some(endpoint) = common::moto::shared_endpoint() else {
        return;
    };
    let client = raw_client(&endpoint).await;
    let bucket = unique_bucket();
    create_bucket(&client, &bucket).await;
    let config = test_config(Some(endpoint));
    let s3: Arc<dyn RemoteStorage> = Arc::new(
        S3Storage::new(&bucket, "p", &config.s3)
            .await
            .expect("open"),
    );
    let faulty = Arc::new(FaultyStorage::new(
        s3,
        FaultConfig::random(0.4, 3, ErrorKind::Transient).after_call(),
    ));
    let limited = Arc::new(LimitedStorage::new(faulty.clone(), config.limits.clone()));
    let storage = RetryingStorage::new(
        limited,
        RetryConfig {
            max_attempts: 10,
            ..config.retry.clone()
        },
    );
    let c = CancellationToken::new();
    let opts = PutOptions {
        tags: vec![("safekeeper-kind".into(), "full".into())],
        ..PutOptions::default()
    };
    for i in 0..10u8 {
        let key = format!("k{i}");
        let bytes = data(10_000, i);
        storage
            .put(&key, bytes.clone().into(), &opts, &c)
            .await
            .expect("put");
        assert_eq!(storage.get_bytes(&key, &c).await.expect("get"), bytes);
        assert_eq!(storage.get_tags(&key, &c).await.expect("tags"), opts.tags);
    }
    let keys: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
    storage.delete_many(&keys, &c).await.expect("delete");
    assert!(faulty.injected() > 0);
    faulty.set_config(FaultConfig::default().only([Op::List]));
    assert!(
        storage
            .list_all("", Default::default(), &c)
            .await
            .expect("list")
            .is_empty()
    );
}

const ENV_CHILD: &str = "REMOTE_STORAGE_ENV_CHILD_BUCKET";

/// With no endpoint, region or credentials configured, the standard AWS environment variables are
/// used. Runs in a child process so the variables do not leak into other tests.
#[tokio::test]
async fn standard_aws_environment_is_honoured() {
    if let Ok(bucket) = std::env::var(ENV_CHILD) {
        let config = RemoteConfig {
            s3: S3Options {
                force_path_style: true,
                ..S3Options::default()
            },
            ..RemoteConfig::default()
        };
        let storage = from_url(&format!("s3://{bucket}/env"), &config)
            .await
            .expect("open");
        let c = CancellationToken::new();
        let none = PutOptions::default();
        storage
            .put("k", Bytes::from_static(b"via env").into(), &none, &c)
            .await
            .expect("put via env config");
        assert_eq!(
            &storage.get_bytes("k", &c).await.expect("get")[..],
            b"via env"
        );
        return;
    }
    let Some(endpoint) = common::moto::shared_endpoint() else {
        return;
    };
    let client = raw_client(&endpoint).await;
    let bucket = unique_bucket();
    create_bucket(&client, &bucket).await;
    let creds = StaticCredentials::new("env-key", "env-secret");
    let status = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "standard_aws_environment_is_honoured",
            "--exact",
            "--test-threads=1",
        ])
        .env(ENV_CHILD, &bucket)
        .env("AWS_ENDPOINT_URL", &endpoint)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", &creds.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &creds.secret_access_key)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run child");
    assert!(status.success(), "child failed: {status}");
    let stored = client
        .head_object()
        .bucket(&bucket)
        .key("env/k")
        .send()
        .await;
    assert!(stored.is_ok(), "object not where AWS_ENDPOINT_URL points");
}
