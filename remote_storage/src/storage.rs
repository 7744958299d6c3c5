//! The contract: the [`RemoteStorage`] trait every backend and wrapper implements, and the
//! [`RemoteStorageExt`] conveniences built only on top of it.
//!
//! Owns the meaning of each operation (documented on the trait's methods) and
//! [`DELETE_BATCH`], the request size `delete_many` is split into.
//!
//! Invariants every implementation keeps (checked by the suite in `tests/conformance/` against
//! every backend and every wrapper stack):
//! - **a visible object is always complete**: `put` is atomic; an interrupted or failed `put`
//!   leaves either the previous object or nothing, never a prefix of the new bytes;
//! - every object written by this crate carries its crc32c, and a whole-object `get` through
//!   [`GetResult::bytes`] never returns bytes that fail it;
//! - `get`, `head` and `get_tags` of a missing key fail with [`ErrorKind::NotFound`]; `delete_many`
//!   of a missing key succeeds;
//! - `list` yields keys in ascending byte order, each once, with nothing internal to a backend;
//! - every operation returns promptly with [`ErrorKind::Cancelled`] once its token is cancelled
//!   (a cancelled `put` may or may not have taken effect, like any request whose answer was lost);
//! - wrappers return their inner storage's [`name`](RemoteStorage::name) and never change the
//!   meaning of an operation, only when and how often it reaches the inner storage.
//!
//! This module depends only on [`error`](crate::error) and [`object`](crate::object).

use std::ops::Range;

use bytes::Bytes;
use futures::TryStreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use tokio_util::sync::CancellationToken;

#[cfg(doc)]
use crate::error::ErrorKind;
use crate::error::Result;
use crate::object::{GetResult, ListOptions, ObjectMeta, PutOptions, PutPayload};

/// Keys per DeleteObjects request (the S3 maximum): backends split `delete_many` into requests of
/// at most this many keys, and the limit layer takes one permit per batch.
pub const DELETE_BATCH: usize = 1000;

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

    /// Delete these keys (in batches of up to [`DELETE_BATCH`] per request). Missing keys are not an error.
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
