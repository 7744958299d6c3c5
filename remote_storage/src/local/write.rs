//! The writing half of the local backend: `put` and the per-key commit locks.
//!
//! Invariant: nothing becomes visible before the payload was fully written, verified against the
//! declared length and crc32c, and fsynced; the sidecar and then the data are renamed into place
//! under the key's lock, and the directory is fsynced (see [`files::commit`]).

use std::time::Instant;

use bytes::Bytes;
use futures::stream::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use super::LocalFs;
use super::files::{self, ObjectPaths, Sidecar, TempPath};
use crate::error::{ErrorKind, Op, Result, StorageError, io_kind};
use crate::key::{validate_key, validate_metadata, validate_tags};
use crate::object::{
    ByteStream, Mismatch, ObjectMeta, PutOptions, PutPayload, Verifier, body_error,
};

/// Striped per-key locks that make the two renames of a commit (and the two removals of a delete)
/// one step with respect to other puts and deletes of the same key in this process, so concurrent
/// writers cannot pair one put's data with another's sidecar.
#[derive(Debug)]
pub(super) struct KeyLocks([std::sync::Mutex<()>; 64]);

impl KeyLocks {
    pub(super) fn new() -> Self {
        KeyLocks(std::array::from_fn(|_| std::sync::Mutex::new(())))
    }

    pub(super) fn lock(&self, key: &str) -> std::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        let stripe = &self.0[(h.finish() % self.0.len() as u64) as usize];
        stripe
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl LocalFs {
    /// `put`, in four steps: validate, create the directories, stream the payload into a
    /// verified and fsynced temp file, then commit it with its sidecar.
    pub(super) async fn put_impl(
        &self,
        key: &str,
        payload: PutPayload,
        opts: &PutOptions,
        cancel: &CancellationToken,
    ) -> Result<ObjectMeta> {
        let started = Instant::now();
        self.validate_put(key, opts)?;
        let paths = ObjectPaths::new(&self.root, key);
        self.create_dirs(&paths, key, cancel).await?;
        let len = payload.len();
        let (data_tmp, crc) = self
            .write_temp_data(&paths, key, payload, opts.crc32c, cancel)
            .await?;
        let sidecar = Sidecar::new(len, crc, opts.tags.clone(), opts.metadata.clone());
        self.commit(paths, data_tmp, &sidecar, key, cancel).await?;
        tracing::debug!(backend = %self.name, key, size = len, crc32c = format_args!("{crc:08x}"),
            elapsed_ms = started.elapsed().as_millis() as u64, "put");
        Ok(ObjectMeta {
            key: key.to_string(),
            size: len,
            crc32c: Some(crc),
            metadata: opts.metadata.clone(),
            last_modified: None,
        })
    }

    /// The key, tags and metadata rules, checked before anything touches the disk.
    fn validate_put(&self, key: &str, opts: &PutOptions) -> Result<()> {
        let invalid = |m: String| self.err(ErrorKind::InvalidInput, Op::Put, key, m);
        validate_key(key).map_err(invalid)?;
        validate_tags(&opts.tags).map_err(invalid)?;
        validate_metadata(&opts.metadata).map_err(invalid)
    }

    /// Create the object's directory and its parents, durably.
    async fn create_dirs(
        &self,
        paths: &ObjectPaths,
        key: &str,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let dir = paths.dir.clone();
        let (name, key_owned) = (self.name.clone(), key.to_string());
        self.blocking(Op::Put, key, cancel, move || {
            files::create_dirs_durable(&dir).map_err(|e| {
                StorageError::new(
                    io_kind(&e),
                    Op::Put,
                    &*name,
                    key_owned,
                    format!("creating directories: {e}"),
                )
            })
        })
        .await
    }

    /// Stream the payload into a hidden temp file, verifying length and crc32c as we go, and
    /// fsync it. Returns the temp file (removed if dropped) and the payload's crc32c.
    async fn write_temp_data(
        &self,
        paths: &ObjectPaths,
        key: &str,
        payload: PutPayload,
        expected_crc: Option<u32>,
        cancel: &CancellationToken,
    ) -> Result<(TempPath, u32)> {
        let io_err = |what: &str, e: std::io::Error| {
            self.err(io_kind(&e), Op::Put, key, format!("{what}: {e}"))
        };
        let mismatch = |m: Mismatch| self.err(m.kind(), Op::Put, key, format!("payload: {m}"));
        let data_tmp = paths.temp("data");
        let mut file = tokio::fs::File::create(data_tmp.path())
            .await
            .map_err(|e| io_err("creating temp file", e))?;
        let mut verifier = Verifier::new(payload.len(), expected_crc);
        let mut stream = payload.open();
        while let Some(chunk) = self.next_payload_chunk(&mut stream, key, cancel).await? {
            verifier.update(&chunk).map_err(mismatch)?;
            file.write_all(&chunk)
                .await
                .map_err(|e| io_err("writing temp file", e))?;
        }
        let crc = verifier.finish().map_err(mismatch)?;
        file.flush()
            .await
            .map_err(|e| io_err("writing temp file", e))?;
        file.sync_all()
            .await
            .map_err(|e| io_err("fsyncing temp file", e))?;
        Ok((data_tmp, crc))
    }

    /// The next chunk of the caller's payload, `None` at its end. A failure of the stream is the
    /// caller's source failing, not the storage: it is reported as invalid input.
    async fn next_payload_chunk(
        &self,
        stream: &mut ByteStream,
        key: &str,
        cancel: &CancellationToken,
    ) -> Result<Option<Bytes>> {
        let chunk = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(StorageError::cancelled(Op::Put, &self.name, key)),
            chunk = stream.next() => chunk,
        };
        match chunk {
            None => Ok(None),
            Some(Ok(c)) => Ok(Some(c)),
            Some(Err(e)) => {
                let e = body_error(e, Op::Put, &self.name, key);
                Err(if e.kind() == ErrorKind::Transient {
                    e.with_kind(ErrorKind::InvalidInput)
                        .context("payload stream failed")
                } else {
                    e
                })
            }
        }
    }

    /// Write the sidecar's temp file, then rename sidecar and data into place under the key's
    /// lock ([`files::commit`]). Cancellation is honoured up to the first rename; after that the
    /// commit runs to completion on the blocking pool even if the caller stops waiting.
    async fn commit(
        &self,
        paths: ObjectPaths,
        mut data_tmp: TempPath,
        sidecar: &Sidecar,
        key: &str,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let sidecar_json = serde_json::to_vec(sidecar)
            .map_err(|e| self.err(ErrorKind::Permanent, Op::Put, key, e.to_string()))?;
        let mut sidecar_tmp = paths.temp("meta");
        // Last chance to back out; once the renames start they run to completion.
        if cancel.is_cancelled() {
            return Err(StorageError::cancelled(Op::Put, &self.name, key));
        }
        let (name, key_owned, locks) = (self.name.clone(), key.to_string(), self.locks.clone());
        let commit = tokio::task::spawn_blocking(move || {
            files::write_temp(&sidecar_tmp, &sidecar_json)
                .and_then(|()| {
                    let _guard = locks.lock(&key_owned);
                    files::commit(&paths, &mut data_tmp, &mut sidecar_tmp)
                })
                .map_err(|e| {
                    StorageError::new(
                        io_kind(&e),
                        Op::Put,
                        &*name,
                        key_owned,
                        format!("committing: {e}"),
                    )
                })
        });
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(StorageError::cancelled(Op::Put, &self.name, key)),
            joined = commit => joined.map_err(|e| self.err(ErrorKind::Permanent, Op::Put, key, e.to_string()))?,
        }
    }
}
