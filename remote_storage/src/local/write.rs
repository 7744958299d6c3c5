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
use super::files::{self, ObjectPaths, Sidecar};
use crate::error::{ErrorKind, Op, Result, StorageError, io_kind};
use crate::key::{validate_key, validate_metadata, validate_tags};
use crate::object::{ObjectMeta, PutOptions, PutPayload, Verifier, body_error};

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
    pub(super) async fn put_impl(
        &self,
        key: &str,
        payload: PutPayload,
        opts: &PutOptions,
        cancel: &CancellationToken,
    ) -> Result<ObjectMeta> {
        let started = Instant::now();
        let invalid = |m: String| self.err(ErrorKind::InvalidInput, Op::Put, key, m);
        validate_key(key).map_err(invalid)?;
        validate_tags(&opts.tags).map_err(invalid)?;
        validate_metadata(&opts.metadata).map_err(invalid)?;
        let io_err = |what: &str, e: std::io::Error| {
            self.err(io_kind(&e), Op::Put, key, format!("{what}: {e}"))
        };

        let paths = ObjectPaths::new(&self.root, key);
        let dir = paths.dir.clone();
        self.blocking(Op::Put, key, cancel, {
            let (name, key) = (self.name.clone(), key.to_string());
            move || {
                files::create_dirs_durable(&dir).map_err(|e| {
                    StorageError::new(
                        io_kind(&e),
                        Op::Put,
                        &*name,
                        key,
                        format!("creating directories: {e}"),
                    )
                })
            }
        })
        .await?;

        // Stream the payload into a hidden temp file, verifying length and crc32c as we go.
        let mut data_tmp = paths.temp("data");
        let mut file = tokio::fs::File::create(data_tmp.path())
            .await
            .map_err(|e| io_err("creating temp file", e))?;
        let len = payload.len();
        let mut verifier = Verifier::new(len, opts.crc32c);
        let mut stream = payload.open();
        loop {
            let chunk = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(StorageError::cancelled(Op::Put, &self.name, key)),
                chunk = stream.next() => chunk,
            };
            let chunk: Bytes = match chunk {
                None => break,
                Some(Ok(c)) => c,
                Some(Err(e)) => {
                    let e = body_error(e, Op::Put, &self.name, key);
                    return Err(if e.kind() == ErrorKind::Transient {
                        // The caller's source failed, not the storage.
                        e.with_kind(ErrorKind::InvalidInput)
                            .context("payload stream failed")
                    } else {
                        e
                    });
                }
            };
            verifier
                .update(&chunk)
                .map_err(|m| self.err(m.kind(), Op::Put, key, format!("payload: {m}")))?;
            file.write_all(&chunk)
                .await
                .map_err(|e| io_err("writing temp file", e))?;
        }
        let crc = verifier
            .finish()
            .map_err(|m| self.err(m.kind(), Op::Put, key, format!("payload: {m}")))?;
        file.flush()
            .await
            .map_err(|e| io_err("writing temp file", e))?;
        file.sync_all()
            .await
            .map_err(|e| io_err("fsyncing temp file", e))?;
        drop(file);

        let sidecar = Sidecar::new(len, crc, opts.tags.clone(), opts.metadata.clone());
        let sidecar_json = serde_json::to_vec(&sidecar)
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
            _ = cancel.cancelled() => return Err(StorageError::cancelled(Op::Put, &self.name, key)),
            joined = commit => joined.map_err(|e| self.err(ErrorKind::Permanent, Op::Put, key, e.to_string()))??,
        }
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
}
