//! The S3 backend, `s3://bucket/prefix`, on `aws-sdk-s3` (works with S3-compatible servers).
//!
//! Owns the mapping of the [`RemoteStorage`] contract onto S3 requests: reads and listing here,
//! writes (put, delete, copy) in `write`, the client setup in [`client`], body conversion in
//! `body`, error classification in `errors`.
//!
//! Invariants:
//! - **a visible object is always complete**: one PutObject per object, with `Content-Length`;
//!   S3 makes an object visible only once its whole body arrived, and a payload that fails or
//!   mismatches is aborted before its last byte (see `body`);
//! - every object carries its crc32c twice: as `x-amz-checksum-crc32c` (checked by the server on
//!   upload) and as user metadata `crc32c` (8 hex digits), which `head`/`get` return and `get`
//!   verifies — so bytes replaced behind our back are detected;
//! - keys are `prefix/key`; nothing outside `prefix/` is ever read, listed or written;
//! - each call is exactly one request (a page for `list`, 1000 keys for `delete_many`) and
//!   returns `Cancelled` as soon as its token fires.

mod body;
pub mod client;
mod errors;
mod write;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::ops::Range;
use std::time::SystemTime;

use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;

use crate::config::S3Options;
use crate::error::{ErrorKind, Op, Result, StorageError};
use crate::key::{CRC32C_META_KEY, crc_from_hex, validate_key, validate_prefix};
use crate::object::{GetResult, ListOptions, ObjectMeta, PutOptions, PutPayload, cancellable_body};
use crate::storage::RemoteStorage;
use errors::map_sdk_error;

/// How many HEAD requests `list` with metadata runs at once.
const LIST_HEAD_CONCURRENCY: usize = 8;

/// Objects in an S3 bucket under a key prefix.
#[derive(Debug, Clone)]
pub struct S3Storage {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    name: String,
}

impl S3Storage {
    /// Storage in `bucket` under `prefix` (no leading/trailing `/`; `""` for the bucket root),
    /// with a client built from `opts`. Does not contact S3.
    pub async fn new(bucket: &str, prefix: &str, opts: &S3Options) -> Result<Self> {
        let client = client::build_client(opts).await;
        let mut storage = Self::from_client(client, bucket, prefix)?;
        if let Some(endpoint) = &opts.endpoint {
            storage.name = format!("{} (endpoint {endpoint})", storage.name);
        }
        Ok(storage)
    }

    /// Storage over an existing client.
    pub fn from_client(client: aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Result<Self> {
        let prefix = prefix.trim_matches('/').to_string();
        let name = if prefix.is_empty() {
            format!("s3://{bucket}")
        } else {
            format!("s3://{bucket}/{prefix}")
        };
        if !prefix.is_empty() {
            validate_key(&prefix).map_err(|m| {
                StorageError::new(
                    ErrorKind::InvalidInput,
                    Op::Open,
                    &name,
                    "",
                    format!("prefix: {m}"),
                )
            })?;
        }
        Ok(S3Storage {
            client,
            bucket: bucket.to_string(),
            prefix,
            name,
        })
    }

    /// The underlying SDK client (for tests and tools).
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    /// The bucket this storage uses.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The full S3 key of `key`.
    pub fn full_key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    fn err(&self, kind: ErrorKind, op: Op, key: &str, msg: impl Into<String>) -> StorageError {
        StorageError::new(kind, op, &self.name, key, msg)
    }

    /// Run one SDK request, mapping its error, released as soon as `cancel` fires.
    async fn request<T, E>(
        &self,
        op: Op,
        key: &str,
        cancel: &CancellationToken,
        fut: impl Future<
            Output = std::result::Result<
                T,
                aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
            >,
        >,
    ) -> Result<T>
    where
        E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(StorageError::cancelled(op, &self.name, key)),
            r = fut => r.map_err(|e| map_sdk_error(e, op, &self.name, key)),
        }
    }

    async fn get_impl(
        &self,
        key: &str,
        range: Option<Range<u64>>,
        cancel: &CancellationToken,
    ) -> Result<GetResult> {
        validate_key(key).map_err(|m| self.err(ErrorKind::InvalidInput, Op::Get, key, m))?;
        let mut request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(key));
        if let Some(r) = &range {
            if r.start >= r.end {
                return Err(self.err(
                    ErrorKind::InvalidInput,
                    Op::Get,
                    key,
                    format!("empty range {r:?}"),
                ));
            }
            request = request.range(format!("bytes={}-{}", r.start, r.end - 1));
        }
        let out = self.request(Op::Get, key, cancel, request.send()).await?;
        let body_len = out.content_length().unwrap_or(0).max(0) as u64;
        let size = match (&range, out.content_range()) {
            (Some(_), Some(cr)) => parse_total(cr).ok_or_else(|| {
                self.err(
                    ErrorKind::Transient,
                    Op::Get,
                    key,
                    format!("bad Content-Range {cr:?}"),
                )
            })?,
            (Some(_), None) => body_len, // the server ignored the range and sent the whole object
            (None, _) => body_len,
        };
        let range = match range {
            Some(r) if out.content_range().is_some() => r.start..r.end.min(size),
            _ => 0..size,
        };
        let meta = object_meta(key, size, out.metadata(), out.last_modified());
        tracing::debug!(backend = %self.name, key, range = ?range, "get");
        let failed = StorageError::cancelled(Op::Get, &self.name, key);
        let body = cancellable_body(body::response_stream(out.body), cancel.clone(), failed);
        Ok(GetResult::new(&self.name, meta, range, body))
    }

    async fn head_impl(&self, key: &str, cancel: &CancellationToken) -> Result<ObjectMeta> {
        validate_key(key).map_err(|m| self.err(ErrorKind::InvalidInput, Op::Head, key, m))?;
        let request = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.full_key(key));
        let out = self.request(Op::Head, key, cancel, request.send()).await?;
        let size = out.content_length().unwrap_or(0).max(0) as u64;
        Ok(object_meta(key, size, out.metadata(), out.last_modified()))
    }

    async fn get_tags_impl(
        &self,
        key: &str,
        cancel: &CancellationToken,
    ) -> Result<Vec<(String, String)>> {
        validate_key(key).map_err(|m| self.err(ErrorKind::InvalidInput, Op::GetTags, key, m))?;
        let request = self
            .client
            .get_object_tagging()
            .bucket(&self.bucket)
            .key(self.full_key(key));
        let out = self
            .request(Op::GetTags, key, cancel, request.send())
            .await?;
        let mut tags: Vec<(String, String)> = out
            .tag_set()
            .iter()
            .map(|t| (t.key().to_string(), t.value().to_string()))
            .collect();
        tags.sort();
        Ok(tags)
    }

    /// One ListObjectsV2 page: the objects on it and the token of the next page, if any.
    async fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        token: Option<String>,
        cancel: &CancellationToken,
    ) -> Result<(Vec<ObjectMeta>, Option<String>)> {
        let full_prefix = if self.prefix.is_empty() {
            prefix.to_string()
        } else {
            format!("{}/{prefix}", self.prefix)
        };
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let mut request = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(full_prefix);
        match token {
            Some(token) => request = request.continuation_token(token),
            None => request = request.set_start_after(start_after.map(|s| self.full_key(s))),
        }
        let out = self
            .request(Op::List, prefix, cancel, request.send())
            .await?;
        let items = out
            .contents()
            .iter()
            .filter_map(|o| {
                let key = o.key()?.strip_prefix(strip.as_str())?.to_string();
                if let Err(why) = validate_key(&key) {
                    // Written by some other tool; the local backend skips such names too.
                    tracing::warn!(backend = %self.name, key, why, "skipping an object whose name is not a valid key");
                    return None;
                }
                Some(ObjectMeta {
                    key,
                    size: o.size().unwrap_or(0).max(0) as u64,
                    crc32c: None,
                    metadata: BTreeMap::new(),
                    last_modified: o.last_modified().and_then(|t| SystemTime::try_from(*t).ok()),
                })
            })
            .collect();
        let next = if out.is_truncated() == Some(true) {
            out.next_continuation_token().map(str::to_string)
        } else {
            None
        };
        Ok((items, next))
    }

    fn list_impl<'a>(
        &'a self,
        prefix: &'a str,
        opts: ListOptions,
        cancel: &'a CancellationToken,
    ) -> BoxStream<'a, Result<ObjectMeta>> {
        if let Err(m) = validate_prefix(prefix) {
            let e = self.err(ErrorKind::InvalidInput, Op::List, prefix, m);
            return futures::stream::once(futures::future::ready(Err(e))).boxed();
        }
        let start_after = opts.start_after.clone();
        // State: None = finished; Some(token) = fetch the page after `token` (None = first page).
        let pages = futures::stream::try_unfold(Some(None::<String>), move |state| {
            let start_after = start_after.clone();
            async move {
                let Some(token) = state else { return Ok(None) };
                let (items, next) = self
                    .list_page(prefix, start_after.as_deref(), token, cancel)
                    .await?;
                tracing::debug!(backend = %self.name, prefix, count = items.len(), more = next.is_some(), "list page");
                Ok(Some((items, next.map(Some))))
            }
        });
        let objects = pages
            .map_ok(|items| futures::stream::iter(items.into_iter().map(Ok)))
            .try_flatten();
        if !opts.with_metadata {
            return objects.boxed();
        }
        objects
            .map(move |item| async move {
                let listed = item?;
                match self.head_impl(&listed.key, cancel).await {
                    Ok(meta) => Ok(Some(meta)),
                    Err(e) if e.is_not_found() => Ok(None), // deleted since it was listed
                    Err(e) => Err(e.context("head during list")),
                }
            })
            .buffered(LIST_HEAD_CONCURRENCY)
            .try_filter_map(|m| futures::future::ready(Ok(m)))
            .boxed()
    }
}

/// Total object size from a `Content-Range: bytes a-b/total` header.
fn parse_total(content_range: &str) -> Option<u64> {
    content_range.rsplit_once('/')?.1.parse().ok()
}

/// Metadata from a GET/HEAD response: our `crc32c` entry is taken out of the user metadata.
fn object_meta(
    key: &str,
    size: u64,
    metadata: Option<&HashMap<String, String>>,
    last_modified: Option<&aws_smithy_types::DateTime>,
) -> ObjectMeta {
    let mut user: BTreeMap<String, String> = metadata
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    let crc32c = user
        .remove(CRC32C_META_KEY)
        .as_deref()
        .and_then(crc_from_hex);
    ObjectMeta {
        key: key.to_string(),
        size,
        crc32c,
        metadata: user,
        last_modified: last_modified.and_then(|t| SystemTime::try_from(*t).ok()),
    }
}

impl RemoteStorage for S3Storage {
    fn name(&self) -> &str {
        &self.name
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        payload: PutPayload,
        opts: &'a PutOptions,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<ObjectMeta>> {
        Box::pin(self.put_impl(key, payload, opts, cancel))
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
        range: Option<Range<u64>>,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<GetResult>> {
        Box::pin(self.get_impl(key, range, cancel))
    }

    fn head<'a>(
        &'a self,
        key: &'a str,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<ObjectMeta>> {
        Box::pin(self.head_impl(key, cancel))
    }

    fn get_tags<'a>(
        &'a self,
        key: &'a str,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>>> {
        Box::pin(self.get_tags_impl(key, cancel))
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        opts: ListOptions,
        cancel: &'a CancellationToken,
    ) -> BoxStream<'a, Result<ObjectMeta>> {
        self.list_impl(prefix, opts, cancel)
    }

    fn delete_many<'a>(
        &'a self,
        keys: &'a [String],
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.delete_impl(keys, cancel))
    }

    fn copy<'a>(
        &'a self,
        from: &'a str,
        to: &'a str,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.copy_impl(from, to, cancel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_total() {
        assert_eq!(parse_total("bytes 0-9/100"), Some(100));
        assert_eq!(parse_total("bytes */100"), Some(100));
        assert_eq!(parse_total("garbage"), None);
    }

    #[test]
    fn crc_is_taken_out_of_user_metadata() {
        let mut m = HashMap::new();
        m.insert("crc32c".to_string(), "e3069283".to_string());
        m.insert("term".to_string(), "7".to_string());
        let meta = object_meta("k", 9, Some(&m), None);
        assert_eq!(meta.crc32c, Some(0xE3069283));
        assert_eq!(meta.metadata.len(), 1);
        assert_eq!(meta.metadata.get("term").map(String::as_str), Some("7"));
    }
}
