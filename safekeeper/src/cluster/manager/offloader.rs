//! Object-storage operations of the offload: put a full segment, put a partial segment version,
//! put a timeline history file, delete superseded objects.
//!
//! Owns nothing but the "how": every function takes what it needs and reports what it did. What
//! to upload, when, and what the control file must say before and after is decided by the
//! cluster's manager (`cluster::manager`), which is the only caller.
//!
//! Invariants kept here:
//! - Every object is encoded by `object_format` (header, zstd or plain payload, crc32c of the
//!   WAL bytes). A full segment object decodes to exactly the wal_segment_size local file; a
//!   partial piece to exactly the WAL bytes `[start_lsn, commit_lsn)` of its name: its WAL content
//!   is a function of its name, so a retried upload rewrites identical bytes.
//! - Every object carries the crc32c of its stored bytes (verified by the storage on put) and the
//!   tag `safekeeper-kind=full|partial|history`.
//! - No request but the PUT on the hot path: a full segment that an earlier process may have
//!   uploaded (at or below the flush LSN recorded at start) is checked with a HEAD first and
//!   skipped when identical, so a restart does not re-send the archive; later ones are new by
//!   construction (recorded segments are never scheduled again).
//! - Compression and encryption run on the blocking pool, never on the manager's task.
//! - With a key ring installed (`crate::encryption`), every object is encrypted with its writing
//!   key and bound to its key. Encryption draws a fresh nonce, so two encodings of the same WAL
//!   differ: a full segment an earlier process uploaded then never matches the HEAD check and is
//!   uploaded again (only those between the last recorded upload and the flush LSN at start).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use control_file::names::{PartialName, TimelineId, history_file_name, segment_file_name};
use remote_storage::{ErrorKind, PutOptions, PutPayload, RemoteStorage};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::object_format::{Compression, encode_object};
use crate::remote::{KIND_TAG, history_key, partial_key, segment_key};
use crate::wal::store::read_segment_range;

/// What an upload did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Uploaded {
    /// Bytes sent (the encoded object), 0 when skipped.
    pub bytes: u64,
    /// WAL (or history) bytes the object holds.
    pub wal_bytes: u64,
    pub crc32c: u32,
    /// The identical object was already there.
    pub skipped: bool,
}

/// Uploads for one cluster: the storage, where the cluster's local WAL is, and under which name.
#[derive(Clone, Debug)]
pub(super) struct Offloader {
    pub storage: Arc<dyn RemoteStorage>,
    pub cluster: String,
    pub wal_dir: PathBuf,
    pub seg_size: u32,
    pub compression: Compression,
    /// Full segments below this number may have been uploaded by an earlier process (they are
    /// at or below the flush LSN recorded when this offloader was made): checked with a HEAD
    /// first. Above it, every segment is new (see the invariants).
    pub head_below: u64,
}

/// `data` encoded for `key` on the blocking pool (encrypted when the process has a key ring),
/// with the crc32c of the encoded bytes.
async fn encode_blocking(
    data: Bytes,
    compression: Compression,
    key: String,
) -> Result<(Bytes, u32)> {
    tokio::task::spawn_blocking(move || {
        let obj = encode_object(&data, &compression, &key);
        let crc = crc32c::crc32c(&obj);
        (obj, crc)
    })
    .await
    .context("encode task failed")
}

fn options(kind: &str, crc32c: u32) -> PutOptions {
    PutOptions {
        tags: vec![(KIND_TAG.to_string(), kind.to_string())],
        crc32c: Some(crc32c),
        ..PutOptions::default()
    }
}

impl Offloader {
    /// Uploads the completed local segment `segno` of `timeline`.
    pub(super) async fn upload_full_segment(
        &self,
        timeline: TimelineId,
        segno: u64,
        cancel: &CancellationToken,
    ) -> Result<Uploaded> {
        let started = Instant::now();
        let name = segment_file_name(timeline, segno, self.seg_size);
        let path = self.wal_dir.join(&name);
        let seg_size = self.seg_size;
        let data = read_whole(path.clone()).await?;
        ensure!(
            data.len() == seg_size as usize,
            "local segment {} has {} bytes, expected {seg_size}",
            path.display(),
            data.len()
        );
        let wal_crc = crc32c::crc32c(&data);
        let key = segment_key(&self.cluster, timeline, segno, seg_size);
        let (obj, obj_crc) = encode_blocking(data, self.compression, key.clone()).await?;
        if segno < self.head_below {
            match self.storage.head(&key, cancel).await {
                Ok(meta) if meta.size == obj.len() as u64 && meta.crc32c == Some(obj_crc) => {
                    debug!(segment = %name, "identical full segment already uploaded");
                    return Ok(Uploaded {
                        bytes: 0,
                        wal_bytes: u64::from(seg_size),
                        crc32c: wal_crc,
                        skipped: true,
                    });
                }
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("cannot check {key}")),
            }
        }
        let sent = obj.len() as u64;
        let opts = options("full", obj_crc);
        self.storage
            .put(&key, PutPayload::Bytes(obj), &opts, cancel)
            .await
            .with_context(|| format!("cannot upload full segment {name}"))?;
        info!(segment = %name, bytes = sent, elapsed_ms = started.elapsed().as_millis() as u64, "uploaded full segment");
        Ok(Uploaded {
            bytes: sent,
            wal_bytes: u64::from(seg_size),
            crc32c: wal_crc,
            skipped: false,
        })
    }

    /// Reads the WAL of piece `name` from local WAL: `[start_lsn, commit_lsn)`, with its crc32c.
    pub(super) async fn read_piece(&self, name: &PartialName) -> Result<(Bytes, u32)> {
        let (dir, seg_size, name) = (self.wal_dir.clone(), self.seg_size, name.clone());
        tokio::task::spawn_blocking(move || {
            let offset = name.start_lsn.segment_offset(seg_size);
            let len = (name.commit_lsn.0 - name.start_lsn.0) as usize;
            let data = read_segment_range(&dir, name.timeline, name.segno, seg_size, offset, len)?;
            let crc = crc32c::crc32c(&data);
            Ok((Bytes::from(data), crc))
        })
        .await
        .context("partial read task failed")?
    }

    /// Uploads a piece whose WAL was read by [`Offloader::read_piece`]; returns the bytes sent.
    pub(super) async fn upload_partial(
        &self,
        name: &PartialName,
        data: Bytes,
        cancel: &CancellationToken,
    ) -> Result<u64> {
        let started = Instant::now();
        let key = partial_key(&self.cluster, name, self.seg_size);
        let wal_bytes = data.len();
        let (obj, obj_crc) = encode_blocking(data, self.compression, key.clone()).await?;
        let sent = obj.len() as u64;
        let opts = options("partial", obj_crc);
        self.storage
            .put(&key, PutPayload::Bytes(obj), &opts, cancel)
            .await
            .with_context(|| format!("cannot upload partial segment {key}"))?;
        info!(object = %key, wal_bytes, bytes = sent, elapsed_ms = started.elapsed().as_millis() as u64, "uploaded partial segment");
        Ok(sent)
    }

    /// Uploads the local `<TLI>.history` file.
    pub(super) async fn upload_history(
        &self,
        timeline: TimelineId,
        cancel: &CancellationToken,
    ) -> Result<Uploaded> {
        let path = self.wal_dir.join(history_file_name(timeline));
        let data = read_whole(path).await?;
        let wal_crc = crc32c::crc32c(&data);
        let wal_bytes = data.len() as u64;
        let key = history_key(&self.cluster, timeline);
        let (obj, obj_crc) = encode_blocking(data, self.compression, key.clone()).await?;
        let bytes = obj.len() as u64;
        let opts = options("history", obj_crc);
        self.storage
            .put(&key, PutPayload::Bytes(obj), &opts, cancel)
            .await
            .with_context(|| format!("cannot upload history file {key}"))?;
        Ok(Uploaded {
            bytes,
            wal_bytes,
            crc32c: wal_crc,
            skipped: false,
        })
    }

    /// Deletes objects by file name (under this cluster's WAL prefix); missing ones are fine.
    pub(super) async fn delete(
        &self,
        file_names: &[String],
        cancel: &CancellationToken,
    ) -> Result<()> {
        if file_names.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = file_names
            .iter()
            .map(|n| format!("{}{n}", crate::remote::wal_prefix(&self.cluster)))
            .collect();
        self.storage
            .delete_many(&keys, cancel)
            .await
            .with_context(|| format!("cannot delete {} superseded object(s)", keys.len()))?;
        info!(count = keys.len(), first = %keys[0], "deleted superseded objects");
        Ok(())
    }
}

async fn read_whole(path: PathBuf) -> Result<Bytes> {
    tokio::task::spawn_blocking(move || read_file(&path))
        .await
        .context("read task failed")?
}

fn read_file(path: &Path) -> Result<Bytes> {
    std::fs::read(path)
        .map(Bytes::from)
        .with_context(|| format!("cannot read {}", path.display()))
}
