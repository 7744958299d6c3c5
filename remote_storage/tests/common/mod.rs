//! Test harness shared by the integration tests.
//!
//! Owns [`Fixture`]: one storage per test, a backend opened from its URL exactly as the service
//! opens it and wrapped by the stack under test ([`Wrap`]), in its own namespace (a temp
//! directory, or a fresh bucket on the shared moto server), plus the backend-specific back doors
//! the conformance suite needs (corrupting an object behind the storage's back, reading tags
//! without going through the trait, finding leftover temp files). The back doors work whatever
//! the stack, because they go around it.

#![allow(dead_code)]

pub mod moto;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use remote_storage::{
    LimitConfig, RemoteConfig, RemoteLocation, RemoteStorage, RetryConfig, S3Options,
    StaticCredentials,
};

/// Which backend a fixture runs on, with its back doors.
pub enum Backend {
    Local {
        root: PathBuf,
        _dir: tempfile::TempDir,
    },
    S3 {
        client: aws_sdk_s3::Client,
        bucket: String,
        prefix: String,
    },
}

/// How a test stack wraps a bare backend, given the fixture's [`test_config`]: for instance
/// `RemoteConfig::layer` (what `from_url` does), or nothing at all.
pub type Wrap = fn(Arc<dyn RemoteStorage>, &RemoteConfig) -> Arc<dyn RemoteStorage>;

/// The bare backend a URL names, opened the way `from_url` opens it.
pub async fn open_bare(url: &str, config: &RemoteConfig) -> Arc<dyn RemoteStorage> {
    RemoteLocation::parse(url)
        .expect("parse storage URL")
        .open(&config.s3)
        .await
        .unwrap_or_else(|e| panic!("open {url}: {e}"))
}

/// A storage under test.
pub struct Fixture {
    pub storage: Arc<dyn RemoteStorage>,
    pub backend: Backend,
    pub config: RemoteConfig,
}

/// Config for tests: quick retries, timeouts far above anything a healthy test needs.
pub fn test_config(endpoint: Option<String>) -> RemoteConfig {
    RemoteConfig {
        s3: S3Options {
            endpoint,
            region: Some("us-east-1".into()),
            force_path_style: true,
            credentials: Some(StaticCredentials::new("testing", "testing-secret")),
            connect_timeout: Duration::from_secs(5),
        },
        retry: RetryConfig {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(100),
        },
        limits: LimitConfig {
            max_concurrent_requests: 16,
            request_timeout: Duration::from_secs(30),
        },
    }
}

/// A bucket name no other test (or test binary) uses.
pub fn unique_bucket() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "rs-test-{}-{}-{:08x}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        rand::random::<u32>()
    )
}

/// The raw SDK client for the shared moto server.
pub async fn raw_client(endpoint: &str) -> aws_sdk_s3::Client {
    remote_storage::s3::client::build_client(&test_config(Some(endpoint.to_string())).s3).await
}

pub async fn create_bucket(client: &aws_sdk_s3::Client, bucket: &str) {
    if let Err(e) = client.create_bucket().bucket(bucket).send().await {
        panic!(
            "creating bucket {bucket}: {}",
            aws_smithy_types::error::display::DisplayErrorContext(&e)
        );
    }
}

impl Fixture {
    /// A local backend in a fresh temp directory on the default (disk-backed) temp filesystem,
    /// opened from its URL and wrapped by `wrap`. Always `Some` (the `Option` matches
    /// [`Fixture::s3`]).
    pub async fn local(wrap: Wrap) -> Option<Fixture> {
        let dir = tempfile::tempdir().expect("temp dir");
        Some(Self::local_in(dir, wrap).await)
    }

    /// Like [`Fixture::local`], but in RAM (`/dev/shm`) when the system has it, where an fsync
    /// costs nothing. For stacks that test wrappers: the backend on a real disk is covered by
    /// [`Fixture::local`], and the fsync-bound bulk case would otherwise dominate the suite's time
    /// once per stack.
    pub async fn local_in_ram(wrap: Wrap) -> Option<Fixture> {
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        };
        Some(Self::local_in(dir.expect("temp dir"), wrap).await)
    }

    async fn local_in(dir: tempfile::TempDir, wrap: Wrap) -> Fixture {
        let root = dir.path().join("remote");
        let config = test_config(None);
        let backend = open_bare(&format!("file://{}", root.display()), &config).await;
        Fixture {
            storage: wrap(backend, &config),
            backend: Backend::Local { root, _dir: dir },
            config,
        }
    }

    /// An S3 backend on a fresh bucket of the shared moto server, under a two-level prefix,
    /// wrapped by `wrap`. `None` when moto is unavailable outside CI (the test is then skipped).
    pub async fn s3(wrap: Wrap) -> Option<Fixture> {
        let endpoint = moto::shared_endpoint()?;
        let client = raw_client(&endpoint).await;
        let bucket = unique_bucket();
        create_bucket(&client, &bucket).await;
        let prefix = "tenant/sk".to_string();
        let config = test_config(Some(endpoint));
        let backend = open_bare(&format!("s3://{bucket}/{prefix}"), &config).await;
        Some(Fixture {
            storage: wrap(backend, &config),
            backend: Backend::S3 {
                client,
                bucket,
                prefix,
            },
            config,
        })
    }

    pub fn is_s3(&self) -> bool {
        matches!(self.backend, Backend::S3 { .. })
    }

    /// Replace an object's bytes behind the storage's back, keeping its recorded metadata
    /// (local: overwrite the data file, keep the sidecar; S3: a raw PutObject of other bytes
    /// carrying the old user metadata, including the old `crc32c`).
    pub async fn corrupt(&self, key: &str, bytes: &[u8]) {
        match &self.backend {
            Backend::Local { root, .. } => {
                std::fs::write(root.join(key), bytes).expect("overwrite data file");
            }
            Backend::S3 {
                client,
                bucket,
                prefix,
            } => {
                let full = format!("{prefix}/{key}");
                let head = client
                    .head_object()
                    .bucket(bucket)
                    .key(&full)
                    .send()
                    .await
                    .expect("raw head");
                let metadata: HashMap<String, String> =
                    head.metadata().cloned().unwrap_or_default();
                assert!(
                    metadata.contains_key("crc32c"),
                    "object lacks crc32c metadata: {metadata:?}"
                );
                client
                    .put_object()
                    .bucket(bucket)
                    .key(&full)
                    .set_metadata(Some(metadata))
                    .body(Bytes::copy_from_slice(bytes).into())
                    .send()
                    .await
                    .expect("raw put");
            }
        }
    }

    /// Tags read without the trait: S3 GetObjectTagging on the raw client; locally the sidecar.
    pub async fn raw_tags(&self, key: &str) -> Vec<(String, String)> {
        let mut tags: Vec<(String, String)> = match &self.backend {
            Backend::Local { root, .. } => {
                let (dir, name) = key.rsplit_once('/').unwrap_or(("", key));
                let sidecar = root.join(dir).join(format!(".~meta.{name}.json"));
                let json: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(&sidecar).expect("read sidecar"))
                        .expect("parse sidecar");
                json["tags"]
                    .as_array()
                    .expect("tags array")
                    .iter()
                    .map(|t| {
                        (
                            t[0].as_str().expect("tag key").to_string(),
                            t[1].as_str().expect("tag value").to_string(),
                        )
                    })
                    .collect()
            }
            Backend::S3 {
                client,
                bucket,
                prefix,
            } => {
                let out = client
                    .get_object_tagging()
                    .bucket(bucket)
                    .key(format!("{prefix}/{key}"))
                    .send()
                    .await
                    .expect("raw GetObjectTagging");
                out.tag_set()
                    .iter()
                    .map(|t| (t.key().to_string(), t.value().to_string()))
                    .collect()
            }
        };
        tags.sort();
        tags
    }

    /// Internal files (temp files, sidecars) anywhere under a local root; empty for S3.
    pub fn temp_files(&self) -> Vec<PathBuf> {
        match &self.backend {
            Backend::Local { root, .. } => find_files(root, |name| name.starts_with(".~tmp.")),
            Backend::S3 { .. } => Vec::new(),
        }
    }
}

/// Files under `dir` (recursively) whose name satisfies `pred`.
pub fn find_files(dir: &Path, pred: impl Fn(&str) -> bool + Copy) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(find_files(&path, pred));
        } else if entry.file_name().to_str().is_some_and(pred) {
            out.push(path);
        }
    }
    out
}

/// Deterministic test data.
pub fn data(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}
