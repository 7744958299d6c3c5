//! Object storage for the safekeeper: one small async trait over keys, two backends and wrappers
//! that layer behaviour on top.
//!
//! This crate knows nothing about WAL or PostgreSQL: keys are relative paths (see [`key`]) and
//! objects are bytes with a crc32c, tags and user metadata. (The one exception is [`metrics`],
//! which labels uploads by the safekeeper's key layout, see there.)
//!
//! Layout, one concept per module; each module's `crate::` imports only point down this list, so
//! the modules form a DAG and the crate root only re-exports and composes:
//! - [`error`], [`key`]: the error type and the key rules (no dependencies).
//! - [`object`]: the values crossing the interface, and checksum verification.
//! - [`storage`]: the [`RemoteStorage`] trait every backend and wrapper implements (object-safe,
//!   used as `Arc<dyn RemoteStorage>`), and [`RemoteStorageExt`].
//! - [`limit`]: at most N requests in flight, each bounded by a timeout ([`LimitConfig`]).
//! - [`retry`]: exponential backoff with jitter on retryable errors, cancellable ([`RetryConfig`]).
//! - [`fault`]: fault injection for tests (failures, latency, truncated downloads).
//! - [`config`]: [`RemoteConfig`], S3 options, and the standard layering `Retrying(Limited(_))`.
//! - [`local`]: `file:///abs/path`, the embedded default. [`s3`]: `s3://bucket/prefix`.
//! - [`location`]: URL parsing, and opening the backend a URL names.
//! - [`metrics`]: upload metrics around the standard layering (the service's stack).
//!
//! The contract every backend and wrapper keeps is stated on [`storage`]; the suite in
//! `tests/conformance/` checks it against every backend and every wrapper stack.

#![deny(
    rustdoc::broken_intra_doc_links,
    rustdoc::private_intra_doc_links,
    rustdoc::bare_urls,
    unreachable_pub
)]
#![warn(missing_debug_implementations, missing_docs)]

pub mod config;
pub mod error;
pub mod fault;
pub mod key;
pub mod limit;
pub mod local;
pub mod location;
pub mod metrics;
pub mod object;
pub mod retry;
pub mod s3;
pub mod storage;

use std::sync::Arc;

pub use self::metrics::MetricsStorage;
pub use config::{LimitConfig, RemoteConfig, RetryConfig, S3Options, StaticCredentials};
pub use error::{ErrorKind, Op, Result, StorageError};
pub use fault::{FaultConfig, FaultPoint, FaultyStorage};
pub use limit::LimitedStorage;
pub use local::LocalFs;
pub use location::RemoteLocation;
pub use object::{ByteStream, GetResult, ListOptions, ObjectMeta, PutOptions, PutPayload};
pub use retry::RetryingStorage;
pub use s3::S3Storage;
pub use storage::{DELETE_BATCH, RemoteStorage, RemoteStorageExt};

/// Open the storage a URL names (`file:///abs/path` or `s3://bucket[/prefix]`) with the limit and
/// retry layers of `config` on top: `Retrying(Limited(backend))`.
pub async fn from_url(url: &str, config: &RemoteConfig) -> Result<Arc<dyn RemoteStorage>> {
    let location = RemoteLocation::parse(url)?;
    let backend = open_backend(&location, &config.s3).await?;
    Ok(config.layer(backend))
}

/// Open the bare backend for a location, without limit or retry layers.
pub async fn open_backend(
    location: &RemoteLocation,
    s3: &S3Options,
) -> Result<Arc<dyn RemoteStorage>> {
    location.open(s3).await
}
