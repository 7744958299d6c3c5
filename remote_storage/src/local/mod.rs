//! The local filesystem backend, `file:///abs/path`: the embedded default.
//!
//! Owns the mapping of the [`RemoteStorage`] contract onto a directory tree: reads, listing and
//! deletes here, `put` in `write`, layout and durable file operations in `files`.
//!
//! Invariants:
//! - **a visible object is always complete**: `put` streams into a hidden temp file, fsyncs it,
//!   writes and fsyncs the sidecar, renames the sidecar and then the data into place and fsyncs
//!   the directory; a put that fails, is cancelled or is killed leaves only hidden temp files;
//! - a visible data file always has the sidecar of the put that wrote it (modulo a crash inside
//!   the overwrite window documented on `files::commit`, which `get` detects); concurrent puts
//!   and deletes of one key in this process are serialized at commit by striped key locks;
//! - a key cannot be both an object and a "directory" (`a` and `a/b`): unlike S3, such a put
//!   fails with a permanent error;
//! - `head`, `list` and `get` report the size and crc32c recorded in the sidecar; `get` checks the
//!   bytes on disk against them, so truncation or corruption on disk is an error, never data;
//! - blocking filesystem work runs on tokio's blocking pool; callers are released as soon as their
//!   token is cancelled (the blocking work then finishes or cleans up on its own).

mod files;
mod write;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::error::{ErrorKind, Op, Result, StorageError, io_kind};
use crate::key::{validate_key, validate_prefix};
use crate::object::{GetResult, ListOptions, ObjectMeta, PutOptions, PutPayload};
use crate::storage::{DELETE_BATCH, RemoteStorage};
use files::{ObjectPaths, Sidecar};
use write::KeyLocks;

/// Objects as files under a root directory.
#[derive(Debug, Clone)]
pub struct LocalFs {
    root: PathBuf,
    name: Arc<str>,
    locks: Arc<KeyLocks>,
}

impl LocalFs {
    /// Use `root` (absolute; created if missing) as the storage root.
    pub fn new(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        let name: Arc<str> = Arc::from(format!("file://{}", root.display()));
        let err = |kind, msg: String| StorageError::new(kind, Op::Open, &*name, "", msg);
        if !root.is_absolute() {
            return Err(err(
                ErrorKind::InvalidInput,
                "the root must be an absolute path".into(),
            ));
        }
        files::create_dirs_durable(&root)
            .map_err(|e| err(io_kind(&e), format!("creating root directory: {e}")))?;
        Ok(LocalFs {
            root,
            name,
            locks: Arc::new(KeyLocks::new()),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the bytes of `key` are stored (for tests and tools that read files directly).
    pub fn data_path(&self, key: &str) -> PathBuf {
        ObjectPaths::new(&self.root, key).data
    }

    fn err(&self, kind: ErrorKind, op: Op, key: &str, msg: impl Into<String>) -> StorageError {
        StorageError::new(kind, op, &*self.name, key, msg)
    }

    /// Run blocking filesystem work, releasing the caller as soon as `cancel` fires.
    async fn blocking<T: Send + 'static>(
        &self,
        op: Op,
        key: &str,
        cancel: &CancellationToken,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        if cancel.is_cancelled() {
            return Err(StorageError::cancelled(op, &self.name, key));
        }
        let handle = tokio::task::spawn_blocking(f);
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(StorageError::cancelled(op, &self.name, key)),
            joined = handle => joined.map_err(|e| {
                self.err(ErrorKind::Permanent, op, key, format!("filesystem task failed: {e}"))
            })?,
        }
    }

    async fn get_impl(
        &self,
        key: &str,
        range: Option<Range<u64>>,
        cancel: &CancellationToken,
    ) -> Result<GetResult> {
        validate_key(key).map_err(|m| self.err(ErrorKind::InvalidInput, Op::Get, key, m))?;
        let (root, name, key_owned) = (self.root.clone(), self.name.clone(), key.to_string());
        let (meta, range, bytes) = self
            .blocking(Op::Get, key, cancel, move || {
                use std::io::{Read, Seek, SeekFrom};
                let paths = ObjectPaths::new(&root, &key_owned);
                let ctx = |e: std::io::Error, what: &str| {
                    StorageError::new(
                        io_kind(&e),
                        Op::Get,
                        &*name,
                        &key_owned,
                        format!("{what}: {e}"),
                    )
                };
                let mut file = std::fs::File::open(&paths.data).map_err(|e| ctx(e, "opening"))?;
                let meta = stat_object(&paths, &key_owned, Some(&file))
                    .map_err(|e| ctx(e, "reading metadata"))?;
                let range = clamp_range(range, meta.size).map_err(|m| {
                    StorageError::new(ErrorKind::InvalidInput, Op::Get, &*name, &key_owned, m)
                })?;
                file.seek(SeekFrom::Start(range.start))
                    .map_err(|e| ctx(e, "seeking"))?;
                let want = range.end - range.start;
                let mut buf = Vec::with_capacity(want as usize);
                // Read one byte more than wanted so that a file longer than recorded is noticed
                // on whole-object reads.
                let extra = u64::from(range.end == meta.size);
                file.take(want + extra)
                    .read_to_end(&mut buf)
                    .map_err(|e| ctx(e, "reading"))?;
                Ok((meta, range, Bytes::from(buf)))
            })
            .await?;
        tracing::debug!(backend = %self.name, key, range = ?range, size = bytes.len(), "get");
        let body = futures::stream::once(futures::future::ready(Ok(bytes))).boxed();
        Ok(GetResult::new(&self.name, meta, range, body))
    }

    async fn head_impl(
        &self,
        op: Op,
        key: &str,
        cancel: &CancellationToken,
    ) -> Result<(ObjectMeta, Vec<(String, String)>)> {
        validate_key(key).map_err(|m| self.err(ErrorKind::InvalidInput, op, key, m))?;
        let (root, name, key_owned) = (self.root.clone(), self.name.clone(), key.to_string());
        self.blocking(op, key, cancel, move || {
            let paths = ObjectPaths::new(&root, &key_owned);
            let sidecar = files::read_sidecar(&paths.sidecar);
            let meta = stat_object(&paths, &key_owned, None);
            let ctx = |e: std::io::Error| {
                StorageError::new(io_kind(&e), op, &*name, &key_owned, e.to_string())
            };
            let meta = meta.map_err(ctx)?;
            let mut tags = sidecar.map_err(ctx)?.map(|s| s.tags).unwrap_or_default();
            tags.sort();
            Ok((meta, tags))
        })
        .await
    }

    fn list_impl<'a>(
        &'a self,
        prefix: &'a str,
        opts: ListOptions,
        cancel: &'a CancellationToken,
    ) -> BoxStream<'a, Result<ObjectMeta>> {
        let fut = async move {
            validate_prefix(prefix)
                .map_err(|m| self.err(ErrorKind::InvalidInput, Op::List, prefix, m))?;
            let (root, name, prefix_owned) =
                (self.root.clone(), self.name.clone(), prefix.to_string());
            let metas = self
                .blocking(Op::List, prefix, cancel, move || {
                    let ctx = |e: std::io::Error| {
                        StorageError::new(
                            io_kind(&e),
                            Op::List,
                            &*name,
                            &prefix_owned,
                            format!("listing: {e}"),
                        )
                    };
                    let keys = files::walk_keys(&root, &prefix_owned, opts.start_after.as_deref())
                        .map_err(ctx)?;
                    let mut metas = Vec::with_capacity(keys.len());
                    for key in keys {
                        match stat_object(&ObjectPaths::new(&root, &key), &key, None) {
                            Ok(meta) => metas.push(meta),
                            // Deleted while we were listing.
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                            Err(e) => return Err(ctx(e)),
                        }
                    }
                    Ok(metas)
                })
                .await?;
            tracing::debug!(backend = %self.name, prefix, count = metas.len(), "list");
            Ok::<_, StorageError>(futures::stream::iter(metas.into_iter().map(Ok)))
        };
        futures::stream::once(fut)
            .map(|r| match r {
                Ok(s) => s.boxed(),
                Err(e) => futures::stream::once(futures::future::ready(Err(e))).boxed(),
            })
            .flatten()
            .boxed()
    }

    async fn delete_impl(&self, keys: &[String], cancel: &CancellationToken) -> Result<()> {
        for key in keys {
            validate_key(key).map_err(|m| self.err(ErrorKind::InvalidInput, Op::Delete, key, m))?;
        }
        for batch in keys.chunks(DELETE_BATCH) {
            let (root, name, batch, locks) = (
                self.root.clone(),
                self.name.clone(),
                batch.to_vec(),
                self.locks.clone(),
            );
            let first = batch.first().cloned().unwrap_or_default();
            self.blocking(Op::Delete, &first, cancel, move || {
                let mut dirs = std::collections::BTreeSet::new();
                for key in &batch {
                    let paths = ObjectPaths::new(&root, key);
                    let ctx = |e: std::io::Error| {
                        StorageError::new(io_kind(&e), Op::Delete, &*name, key, e.to_string())
                    };
                    // Data first: an orphaned sidecar is invisible, a data file without one is not.
                    let _guard = locks.lock(key);
                    files::remove_if_exists(&paths.data).map_err(ctx)?;
                    files::remove_if_exists(&paths.sidecar).map_err(ctx)?;
                    dirs.insert(paths.dir);
                }
                for dir in dirs {
                    match files::fsync_dir(&dir) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(StorageError::new(
                                io_kind(&e),
                                Op::Delete,
                                &*name,
                                "",
                                e.to_string(),
                            ));
                        }
                        _ => {}
                    }
                }
                Ok(())
            })
            .await?;
        }
        tracing::debug!(backend = %self.name, count = keys.len(), "delete_many");
        Ok(())
    }

    async fn copy_impl(&self, from: &str, to: &str, cancel: &CancellationToken) -> Result<()> {
        validate_key(to).map_err(|m| self.err(ErrorKind::InvalidInput, Op::Copy, to, m))?;
        let source = self
            .get_impl(from, None, cancel)
            .await
            .map_err(|e| e.context(format!("copy to {to:?}")))?;
        let (_, tags) = self.head_impl(Op::Copy, from, cancel).await?;
        let opts = PutOptions {
            tags,
            metadata: source.meta.metadata.clone(),
            crc32c: source.meta.crc32c,
        };
        let bytes = source
            .bytes()
            .await
            .map_err(|e| e.context(format!("copy to {to:?}")))?;
        self.put_impl(to, PutPayload::Bytes(bytes), &opts, cancel)
            .await?;
        Ok(())
    }
}

/// Metadata of an object from its sidecar, falling back to the data file's size without one.
/// `NotFound` if the data file is missing (or is a directory).
fn stat_object(
    paths: &ObjectPaths,
    key: &str,
    open: Option<&std::fs::File>,
) -> std::io::Result<ObjectMeta> {
    let stat = match open {
        Some(f) => f.metadata()?,
        None => std::fs::metadata(&paths.data)?,
    };
    if !stat.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "not a regular file",
        ));
    }
    let sidecar = files::read_sidecar(&paths.sidecar)?;
    Ok(ObjectMeta {
        key: key.to_string(),
        size: sidecar.as_ref().map_or(stat.len(), |s| s.size),
        crc32c: sidecar.as_ref().and_then(Sidecar::crc),
        metadata: sidecar.map(|s| s.metadata).unwrap_or_default(),
        last_modified: stat.modified().ok(),
    })
}

/// Clamp a requested range to an object of `size` bytes, as S3 does; `None` is the whole object.
pub(crate) fn clamp_range(
    range: Option<Range<u64>>,
    size: u64,
) -> std::result::Result<Range<u64>, String> {
    match range {
        None => Ok(0..size),
        Some(r) if r.start >= r.end => Err(format!("empty range {r:?}")),
        Some(r) if r.start >= size => Err(format!(
            "range {r:?} starts at or past the end of the {size}-byte object"
        )),
        Some(r) => Ok(r.start..r.end.min(size)),
    }
}

impl RemoteStorage for LocalFs {
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
        Box::pin(async move { Ok(self.head_impl(Op::Head, key, cancel).await?.0) })
    }

    fn get_tags<'a>(
        &'a self,
        key: &'a str,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>>> {
        Box::pin(async move { Ok(self.head_impl(Op::GetTags, key, cancel).await?.1) })
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
