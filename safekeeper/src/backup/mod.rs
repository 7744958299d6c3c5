//! Base backups in remote storage: their key layout, the records that say what a backup is, and
//! which points in time the archive can restore to (the *recoverable window*).
//!
//! Layout, under the cluster's prefix (beside `<cluster>/wal/`):
//!
//! ```text
//! <cluster>/basebackups/<ID>/intent.json          written first: the backup exists, in progress
//! <cluster>/basebackups/<ID>/<archive>.<NNNNNN>   the tar stream of one archive, cut in chunks
//! <cluster>/basebackups/<ID>/backup_manifest      PostgreSQL's manifest, as the server sent it
//! <cluster>/basebackups/<ID>/backup.json          written last: the completion record
//! ```
//!
//! `<ID>` is `<START LSN, 16 hex digits>_<UTC start time YYYYMMDDTHHMMSSZ>`, so IDs sort in the
//! order backups started. Every object is one `object_format` object (header, crc32c, zstd), so
//! a damaged or truncated chunk fails its own checks and is reported by its key.
//!
//! Invariants:
//! - Intent before action: `intent.json` exists before any chunk; `backup.json` is written only
//!   after every chunk and the manifest were stored and the WAL archive reached the backup's end
//!   LSN. A backup is *complete*, and restore considers it, only when `backup.json` exists; its
//!   chunk list (keys, decoded sizes, crc32c) is the only list restore reads, so stray objects
//!   under the ID never enter a restore.
//! - A backup without `backup.json` is *incomplete*: a crashed or running `safekeeper backup`.
//!   `backup.json` is never written by anyone but the process that wrote the intent, so a cleanup
//!   may remove an incomplete backup only once its objects are older than any backup can run
//!   (`remote retention --incomplete-after`, default 24h); `remote ls` lists incomplete backups.
//!
//! Submodules: [`take`] (the `backup` command's work), [`restore`] (the `restore` command's),
//! [`retention`] (`remote retention`: deleting what a policy no longer keeps), [`window`] (the
//! recoverable window),
//! [`tar`] (unpacking PostgreSQL's tar format), [`manifest`] (checking files against the
//! manifest).

pub(crate) mod manifest;
pub(crate) mod restore;
pub(crate) mod retention;
pub(crate) mod take;
pub(crate) mod tar;
pub(crate) mod window;

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use remote_storage::{ListOptions, PutOptions, PutPayload, RemoteStorage, RemoteStorageExt};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::object_format::{self, Compression};
use crate::remote::KIND_TAG;

/// Name of the intent object.
pub(crate) const INTENT: &str = "intent.json";
/// Name of the completion record.
pub(crate) const COMPLETION: &str = "backup.json";
/// Name of the manifest object.
pub(crate) const MANIFEST: &str = "backup_manifest";

/// Key prefix of one cluster's backups (ends with `/`).
pub(crate) fn backups_prefix(cluster: &str) -> String {
    format!("{cluster}/basebackups/")
}

/// Key of an object of backup `id`.
pub(crate) fn backup_key(cluster: &str, id: &str, name: &str) -> String {
    format!("{}{id}/{name}", backups_prefix(cluster))
}

/// The intent: what `backup.json` will complete.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Intent {
    pub id: String,
    pub started_at: String,
    pub started_unix: u64,
    /// Chunks are `<archive>.<NNNNNN>` under the ID, counted from 0 per archive.
    pub chunk_pattern: String,
}

/// One stored chunk of an archive's tar stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Chunk {
    pub key: String,
    /// Decoded (tar) bytes.
    pub bytes: u64,
    /// Bytes of the stored object.
    pub stored_bytes: u64,
    /// crc32c of the decoded bytes.
    pub crc32c: u32,
}

/// One archive of the backup (`base.tar`, or `<oid>.tar` of a tablespace).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ArchiveRecord {
    pub name: String,
    /// The tablespace location for tablespace archives, empty for `base.tar`.
    pub location: String,
    pub chunks: Vec<Chunk>,
}

/// The completion record (`backup.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct BackupRecord {
    pub format: u32,
    pub id: String,
    pub cluster: String,
    pub label: String,
    pub server_version_num: u32,
    pub system_identifier: u64,
    pub timeline: u32,
    pub start_lsn: u64,
    pub end_lsn: u64,
    pub end_timeline: u32,
    pub start_time: String,
    pub end_time: String,
    /// `end_time` as seconds since the Unix epoch (what restore compares).
    pub end_unix: f64,
    /// The next transaction ID once the backup had ended, if it could be read: every
    /// transaction with this ID or a later one committed after the backup's end.
    pub next_xid: Option<u64>,
    pub archives: Vec<ArchiveRecord>,
    pub manifest: Chunk,
}

impl BackupRecord {
    /// Decoded bytes of every archive.
    pub(crate) fn tar_bytes(&self) -> u64 {
        self.archives
            .iter()
            .flat_map(|a| &a.chunks)
            .map(|c| c.bytes)
            .sum()
    }

    /// Stored bytes of every chunk and the manifest.
    pub(crate) fn stored_bytes(&self) -> u64 {
        self.archives
            .iter()
            .flat_map(|a| &a.chunks)
            .map(|c| c.stored_bytes)
            .sum::<u64>()
            + self.manifest.stored_bytes
    }
}

/// What a listing of `<cluster>/basebackups/` holds.
#[derive(Debug, Clone, Default)]
pub(crate) struct BackupList {
    /// Complete backups, oldest first.
    pub complete: Vec<BackupRecord>,
    /// IDs of backups with an intent but no completion record (running or crashed).
    pub incomplete: Vec<String>,
}

/// Lists the backups of `cluster` and reads every completion record.
pub(crate) async fn list_backups(
    storage: &dyn RemoteStorage,
    cluster: &str,
    cancel: &CancellationToken,
) -> Result<BackupList> {
    let prefix = backups_prefix(cluster);
    let metas = storage
        .list_all(&prefix, ListOptions::default(), cancel)
        .await
        .with_context(|| format!("cannot list {prefix}"))?;
    let mut ids = std::collections::BTreeMap::<String, bool>::new();
    for m in &metas {
        let Some((id, name)) = m.key[prefix.len()..].split_once('/') else {
            continue;
        };
        let complete = ids.entry(id.to_string()).or_default();
        *complete |= name == COMPLETION;
    }
    let complete_ids: Vec<String> = ids
        .iter()
        .filter(|(_, c)| **c)
        .map(|(id, _)| id.clone())
        .collect();
    let complete = futures::stream::iter(complete_ids)
        .map(|id| async move {
            let key = backup_key(cluster, &id, COMPLETION);
            let bytes = get_object(storage, &key, cancel).await?;
            serde_json::from_slice::<BackupRecord>(&bytes)
                .with_context(|| format!("{key}: not a backup completion record"))
        })
        .buffered(8)
        .try_collect()
        .await?;
    Ok(BackupList {
        complete,
        incomplete: ids
            .into_iter()
            .filter(|(_, c)| !c)
            .map(|(id, _)| id)
            .collect(),
    })
}

/// Reads and decodes one object; errors name the key.
pub(crate) async fn get_object(
    storage: &dyn RemoteStorage,
    key: &str,
    cancel: &CancellationToken,
) -> Result<Bytes> {
    let raw = storage
        .get_bytes(key, cancel)
        .await
        .with_context(|| format!("cannot read {key}"))?;
    let decoded = object_format::decode(raw, key).map_err(|e| anyhow!("{key} is damaged: {e}"))?;
    Ok(decoded.data)
}

/// Encodes and stores one object tagged `kind`; returns (stored bytes, crc32c of `data`).
pub(crate) async fn put_object(
    storage: &dyn RemoteStorage,
    key: &str,
    data: Bytes,
    compression: &Compression,
    cancel: &CancellationToken,
) -> Result<(u64, u32)> {
    let compression = *compression;
    let name = key.to_string();
    // Encrypted with the process's writing key when it has a key ring, like WAL objects, and
    // bound to its name.
    let (obj, crc) = tokio::task::spawn_blocking(move || {
        let crc = crc32c::crc32c(&data);
        (
            object_format::encode_object(&data, &compression, &name),
            crc,
        )
    })
    .await
    .context("encoding task failed")?;
    let stored = obj.len() as u64;
    let opts = PutOptions {
        tags: vec![(KIND_TAG.to_string(), "basebackup".to_string())],
        crc32c: Some(crc32c::crc32c(&obj)),
        ..PutOptions::default()
    };
    storage
        .put(key, PutPayload::Bytes(obj), &opts, cancel)
        .await
        .with_context(|| format!("cannot store {key}"))?;
    Ok((stored, crc))
}

/// Seconds since the Unix epoch as a float (sub-second precision for time targets).
pub(crate) fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// A time in RFC 3339 with microseconds (`2026-12-02T15:41:28.123456Z`), which PostgreSQL reads
/// as a `timestamptz`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}
