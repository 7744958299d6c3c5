//! Object storage for the safekeeper: one small async trait over keys, two backends and wrappers
//! that layer behaviour on top.
//!
//! This crate knows nothing about WAL or PostgreSQL: keys are relative paths (see [`key`]) and
//! objects are bytes with a crc32c, tags and user metadata.
//!
//! Layout, one concept per module:
//! - [`RemoteStorage`] (here): the trait every backend and wrapper implements; object-safe, used as
//!   `Arc<dyn RemoteStorage>`.
//! - [`local`]: `file:///abs/path`, the embedded default. [`s3`]: `s3://bucket/prefix`.
//! - [`limit`]: at most N requests in flight, each bounded by a timeout.
//! - [`retry`]: exponential backoff with jitter on retryable errors, cancellable.
//! - [`fault`]: fault injection for tests (failures, latency, truncated downloads).
//! - [`object`], [`error`], [`key`], [`config`], [`location`]: the shared vocabulary.
//!
//! Invariants every backend keeps (checked by the suite in `tests/conformance/` against all of them):
//! - **a visible object is always complete**: `put` is atomic; an interrupted or failed `put`
//!   leaves either the previous object or nothing, never a prefix of the new bytes;
//! - every object written by this crate carries its crc32c, and a whole-object `get` through
//!   [`GetResult::bytes`] never returns bytes that fail it;
//! - `get`, `head` and `get_tags` of a missing key fail with [`ErrorKind::NotFound`]; `delete_many`
//!   of a missing key succeeds;
//! - `list` yields keys in ascending byte order, each once, with nothing internal to a backend;
//! - every operation returns promptly with [`ErrorKind::Cancelled`] once its token is cancelled
//!   (a cancelled `put` may or may not have taken effect, like any request whose answer was lost).

pub mod config;
pub mod error;
pub mod fault;
pub mod key;
pub mod limit;
pub mod local;
pub mod location;
pub mod object;
pub mod retry;
pub mod s3;

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use tokio_util::sync::CancellationToken;

pub use config::{LimitConfig, RemoteConfig, RetryConfig, S3Options, StaticCredentials};
pub use error::{ErrorKind, Op, Result, StorageError};
pub use fault::{FaultConfig, FaultPoint, FaultyStorage};
pub use limit::LimitedStorage;
pub use local::LocalFs;
pub use location::RemoteLocation;
pub use object::{ByteStream, GetResult, ListOptions, ObjectMeta, PutOptions, PutPayload};
pub use retry::RetryingStorage;
pub use s3::S3Storage;

/// Async object storage over relative keys.
///
/// Methods return boxed futures and streams so the trait is object-safe. Every method takes a
/// [`CancellationToken`]; implementations return [`ErrorKind::Cancelled`] promptly once it fires,
/// even if a request is hung.
pub trait RemoteStorage: Send + Sync + std::fmt::Debug {
    /// The backend's name for messages and logs: `file:///abs/path` or `s3://bucket/prefix`.
    /// Wrappers return their inner storage's name. Never contains secrets.
    fn name(&self) -> &str;

    /// Store `payload` under `key`, atomically replacing any previous object, with the tags,
    /// metadata and crc32c from `opts`. If `opts.crc32c` is given, the payload is verified against
    /// it and nothing is stored on mismatch ([`ErrorKind::ChecksumMismatch`]); a stream of another
    /// length than declared fails with [`ErrorKind::LengthMismatch`]. Returns the stored metadata.
    fn put<'a>(
        &'a self,
        key: &'a str,
        payload: PutPayload,
        opts: &'a PutOptions,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<ObjectMeta>>;

    /// Read an object, or the part of it in `range` (end exclusive; clamped to the object's size;
    /// a range starting at or past the end is [`ErrorKind::InvalidInput`]). The body is verified
    /// when read through [`GetResult::bytes`] or [`GetResult::into_verified_stream`].
    fn get<'a>(
        &'a self,
        key: &'a str,
        range: Option<Range<u64>>,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<GetResult>>;

    /// Metadata of one object.
    fn head<'a>(
        &'a self,
        key: &'a str,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<ObjectMeta>>;

    /// The object's tags, sorted by tag key.
    fn get_tags<'a>(
        &'a self,
        key: &'a str,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>>>;

    /// All objects whose key starts with `prefix` (a plain string prefix, not only whole path
    /// components), in ascending byte order, fetched page by page as the stream is polled.
    fn list<'a>(
        &'a self,
        prefix: &'a str,
        opts: ListOptions,
        cancel: &'a CancellationToken,
    ) -> BoxStream<'a, Result<ObjectMeta>>;

    /// Delete these keys (in batches of up to 1000 per request). Missing keys are not an error.
    fn delete_many<'a>(
        &'a self,
        keys: &'a [String],
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<()>>;

    /// Copy an object with its metadata, crc32c and tags to another key.
    fn copy<'a>(
        &'a self,
        from: &'a str,
        to: &'a str,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<()>>;
}

/// Conveniences over [`RemoteStorage`] for every implementation, including `dyn RemoteStorage`.
pub trait RemoteStorageExt: RemoteStorage {
    /// `get` the whole object and verify it.
    fn get_bytes<'a>(
        &'a self,
        key: &'a str,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Bytes>> {
        Box::pin(async move { self.get(key, None, cancel).await?.bytes().await })
    }

    /// `get` a range and verify its length.
    fn get_range_bytes<'a>(
        &'a self,
        key: &'a str,
        range: Range<u64>,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Bytes>> {
        Box::pin(async move { self.get(key, Some(range), cancel).await?.bytes().await })
    }

    /// Collect a whole listing.
    fn list_all<'a>(
        &'a self,
        prefix: &'a str,
        opts: ListOptions,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Vec<ObjectMeta>>> {
        Box::pin(async move { self.list(prefix, opts, cancel).try_collect().await })
    }

    /// Delete one key; missing is fine.
    fn delete<'a>(
        &'a self,
        key: &'a str,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let keys = [key.to_string()];
            self.delete_many(&keys, cancel).await
        })
    }
}

impl<T: RemoteStorage + ?Sized> RemoteStorageExt for T {}

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
    Ok(match location {
        RemoteLocation::Local(path) => Arc::new(LocalFs::new(path)?),
        RemoteLocation::S3 { bucket, prefix } => {
            Arc::new(S3Storage::new(bucket, prefix, s3).await?)
        }
    })
}
