//! Object-storage operations of the offload: put a full segment, put a partial segment version,
//! put a timeline history file, delete superseded objects.
//!
//! Owns nothing but the "how": every function takes what it needs and reports what it did. What
//! to upload, when, and what the control file must say before and after is decided by the
//! cluster's manager (`cluster::manager`), which is the only caller.
//!
//! Invariants kept here:
//! - A full segment object is exactly the 16 MiB (wal_segment_size) local file; a partial object
//!   is exactly the WAL bytes `[segment start, commit_lsn)`: its content is a function of its name,
//!   so a retried upload rewrites identical bytes.
//! - Every object carries its crc32c (verified by the storage on put) and the tag
//!   `safekeeper-kind=full|partial|history`.
//! - An upload of a full segment that already exists with the same size and crc32c is skipped:
//!   uploads are idempotent and a restart does not re-send the archive.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use control_file::names::{PartialName, TimelineId, history_file_name, segment_file_name};
use remote_storage::{ErrorKind, PutOptions, PutPayload, RemoteStorage};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::remote::{KIND_TAG, history_key, partial_key, segment_key};
use crate::wal::store::read_segment_prefix;

/// What an upload did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Uploaded {
    pub bytes: u64,
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
        let crc = crc32c::crc32c(&data);
        let key = segment_key(&self.cluster, timeline, segno, seg_size);
        match self.storage.head(&key, cancel).await {
            Ok(meta) if meta.size == u64::from(seg_size) && meta.crc32c == Some(crc) => {
                debug!(segment = %name, "identical full segment already uploaded");
                return Ok(Uploaded {
                    bytes: data.len() as u64,
                    crc32c: crc,
                    skipped: true,
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot check {key}")),
        }
        let opts = options("full", crc);
        self.storage
            .put(&key, PutPayload::Bytes(data), &opts, cancel)
            .await
            .with_context(|| format!("cannot upload full segment {name}"))?;
        info!(segment = %name, elapsed_ms = started.elapsed().as_millis() as u64, "uploaded full segment");
        Ok(Uploaded {
            bytes: u64::from(seg_size),
            crc32c: crc,
            skipped: false,
        })
    }

    /// Reads the content of partial version `name` from local WAL: `[segment start, commit_lsn)`.
    pub(super) async fn read_partial(&self, name: &PartialName) -> Result<(Bytes, u32)> {
        let (dir, seg_size, name) = (self.wal_dir.clone(), self.seg_size, name.clone());
        tokio::task::spawn_blocking(move || {
            let len = name.commit_offset(seg_size) as usize;
            let data = read_segment_prefix(&dir, name.timeline, name.segno, seg_size, len)?;
            let crc = crc32c::crc32c(&data);
            Ok((Bytes::from(data), crc))
        })
        .await
        .context("partial read task failed")?
    }

    /// Uploads a partial version whose content was read by [`Offloader::read_partial`].
    pub(super) async fn upload_partial(
        &self,
        name: &PartialName,
        data: Bytes,
        crc32c: u32,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let started = Instant::now();
        let key = partial_key(&self.cluster, name, self.seg_size);
        let bytes = data.len();
        let opts = options("partial", crc32c);
        self.storage
            .put(&key, PutPayload::Bytes(data), &opts, cancel)
            .await
            .with_context(|| format!("cannot upload partial segment {key}"))?;
        info!(object = %key, bytes, elapsed_ms = started.elapsed().as_millis() as u64, "uploaded partial segment");
        Ok(())
    }

    /// Uploads the local `<TLI>.history` file.
    pub(super) async fn upload_history(
        &self,
        timeline: TimelineId,
        cancel: &CancellationToken,
    ) -> Result<Uploaded> {
        let path = self.wal_dir.join(history_file_name(timeline));
        let data = read_whole(path).await?;
        let crc = crc32c::crc32c(&data);
        let key = history_key(&self.cluster, timeline);
        let opts = options("history", crc);
        let bytes = data.len() as u64;
        self.storage
            .put(&key, PutPayload::Bytes(data), &opts, cancel)
            .await
            .with_context(|| format!("cannot upload history file {key}"))?;
        Ok(Uploaded {
            bytes,
            crc32c: crc,
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
