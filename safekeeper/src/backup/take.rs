//! `safekeeper backup`: one base backup over the replication protocol, streamed into remote
//! objects without local staging.
//!
//! Steps, in this order (the order is the crash-safety argument, see the module docs of
//! [`super`]): `BASE_BACKUP` up to its start position; `intent.json`; the tar stream of each
//! archive cut into chunks of `chunk_size` decoded bytes, each encoded and stored while the next
//! one is read (at most [`IN_FLIGHT`] chunks in memory); the manifest; the end position; a wait
//! until the WAL archive holds the WAL up to the end position (without it the backup cannot be
//! restored); `backup.json`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use bytes::{Bytes, BytesMut};
use indicatif::{ProgressBar, ProgressStyle};
use remote_storage::RemoteStorage;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::{
    ArchiveRecord, BackupRecord, COMPLETION, Chunk, INTENT, Intent, MANIFEST, backup_key,
    put_object, rfc3339, unix_secs,
};
use crate::archive::Archive;
use crate::object_format::Compression;
use crate::pg::basebackup::{BaseBackupMessage, BaseBackupOptions, BaseBackupStream};
use crate::pg::{ConnInfo, ReplicationConnection, SessionKind, format_lsn};

/// Chunks encoded or uploading at once (bounds memory to about this many chunk sizes).
pub(crate) const IN_FLIGHT: usize = 3;

/// What `take_backup` needs.
#[derive(Debug, Clone)]
pub(crate) struct TakeOptions {
    pub cluster: String,
    pub primary: ConnInfo,
    pub chunk_size: usize,
    pub compression: Compression,
    pub fast_checkpoint: bool,
    /// How long to wait for the WAL archive to reach the backup's end.
    pub archive_timeout: Duration,
    /// Segment size flag of the archive, if given.
    pub wal_segment_size: Option<u32>,
    pub progress_bar: bool,
}

/// Chunks of the archive being received, and their uploads.
struct Chunker<'a> {
    storage: &'a Arc<dyn RemoteStorage>,
    opts: &'a TakeOptions,
    id: &'a str,
    cancel: &'a CancellationToken,
    buf: BytesMut,
    archives: Vec<ArchiveRecord>,
    uploads: JoinSet<Result<(usize, usize, Chunk)>>,
    bytes: u64,
}

impl Chunker<'_> {
    fn new_archive(&mut self, name: String, location: String) -> Result<()> {
        if !name.ends_with(".tar") || name.contains('/') {
            bail!("the server sent an archive named {name:?}; expected <name>.tar");
        }
        self.archives.push(ArchiveRecord {
            name,
            location,
            chunks: Vec::new(),
        });
        Ok(())
    }

    async fn data(&mut self, mut data: Bytes) -> Result<()> {
        while !data.is_empty() {
            let n = (self.opts.chunk_size - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data.split_to(n));
            if self.buf.len() == self.opts.chunk_size {
                self.cut().await?;
            }
        }
        Ok(())
    }

    /// Stores what was received of the current archive as its next chunk.
    async fn cut(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let Some(archive) = self.archives.len().checked_sub(1) else {
            bail!("the server sent data before naming an archive");
        };
        let index = self.archives[archive].chunks.len();
        let name = format!("{}.{index:06}", self.archives[archive].name);
        let key = backup_key(&self.opts.cluster, self.id, &name);
        // A placeholder keeps the chunk's position; the upload fills it in.
        self.archives[archive].chunks.push(Chunk {
            key: key.clone(),
            bytes: 0,
            stored_bytes: 0,
            crc32c: 0,
        });
        let data = self.buf.split().freeze();
        self.bytes += data.len() as u64;
        while self.uploads.len() >= IN_FLIGHT {
            self.join_one().await?;
        }
        let storage = Arc::clone(self.storage);
        let compression = self.opts.compression;
        let cancel = self.cancel.clone();
        self.uploads.spawn(async move {
            let bytes = data.len() as u64;
            let (stored, crc) = put_object(&*storage, &key, data, &compression, &cancel).await?;
            debug!(key = %key, bytes, stored, "stored backup chunk");
            Ok((
                archive,
                index,
                Chunk {
                    key,
                    bytes,
                    stored_bytes: stored,
                    crc32c: crc,
                },
            ))
        });
        Ok(())
    }

    async fn join_one(&mut self) -> Result<()> {
        if let Some(done) = self.uploads.join_next().await {
            let (archive, index, chunk) = done.context("upload task failed")??;
            self.archives[archive].chunks[index] = chunk;
        }
        Ok(())
    }

    async fn join_all(&mut self) -> Result<()> {
        while !self.uploads.is_empty() {
            self.join_one().await?;
        }
        Ok(())
    }
}

/// What is known once the server accepted `BASE_BACKUP`.
struct Begun {
    started: SystemTime,
    stamp: String,
    label: String,
    system_identifier: u64,
    server_version_num: u32,
}

/// Connects and starts `BASE_BACKUP`; a refusal is one line with advice.
async fn begin(opts: &TakeOptions) -> Result<(BaseBackupStream, Begun)> {
    let started = SystemTime::now();
    let (mut conn, _) = ReplicationConnection::connect_any(&opts.primary)
        .await
        .map_err(|e| refused(&e.into()))?;
    let ident = conn
        .identify_system()
        .await
        .map_err(|e| refused(&e.into()))?;
    let server_version_num = conn
        .server_version_num()
        .await
        .map_err(|e| refused(&e.into()))?;
    if server_version_num < 150000 {
        bail!("the primary runs PostgreSQL {server_version_num}; backup needs 15 or newer");
    }
    let stamp = humantime::format_rfc3339_seconds(started)
        .to_string()
        .replace(['-', ':'], "");
    let label = format!("safekeeper {} {stamp}", opts.cluster);
    let stream = conn
        .base_backup(&BaseBackupOptions {
            label: label.clone(),
            fast_checkpoint: opts.fast_checkpoint,
            progress: opts.progress_bar,
        })
        .await
        .map_err(|e| refused(&e.into()))?;
    let begun = Begun {
        started,
        stamp,
        label,
        system_identifier: ident.system_identifier,
        server_version_num,
    };
    Ok((stream, begun))
}

/// Takes one backup; returns its completion record.
pub(crate) async fn take_backup(
    storage: Arc<dyn RemoteStorage>,
    opts: &TakeOptions,
    cancel: &CancellationToken,
) -> Result<BackupRecord> {
    let (mut stream, begun) = begin(opts).await?;
    let Begun {
        started,
        stamp,
        label,
        system_identifier,
        server_version_num,
    } = begun;
    let start = stream.start;
    let id = format!("{:016X}_{stamp}", start.lsn);
    debug!(backup = %id, start_lsn = %format_lsn(start.lsn), timeline = start.timeline, "backup started");
    write_intent(&*storage, opts, &id, started, cancel).await?;
    let total = stream
        .tablespaces
        .iter()
        .filter_map(|t| t.size)
        .sum::<u64>();
    let mut chunker = Chunker {
        storage: &storage,
        opts,
        id: &id,
        cancel,
        buf: BytesMut::with_capacity(opts.chunk_size),
        archives: Vec::new(),
        uploads: JoinSet::new(),
        bytes: 0,
    };
    let manifest = receive(
        &mut stream,
        &mut chunker,
        progress(opts.progress_bar, total),
    )
    .await?;
    let Some(end) = stream.end() else {
        bail!("the backup ended without an end position");
    };
    stream.close().await;
    let ended = SystemTime::now();
    let archives = std::mem::take(&mut chunker.archives);
    debug!(backup = %id, end_lsn = %format_lsn(end.lsn), bytes = chunker.bytes, "backup stream ended");
    let manifest_key = backup_key(&opts.cluster, &id, MANIFEST);
    let (stored, crc) = put_object(
        &*storage,
        &manifest_key,
        manifest.clone(),
        &opts.compression,
        cancel,
    )
    .await?;
    let record = BackupRecord {
        format: 1,
        id: id.clone(),
        cluster: opts.cluster.clone(),
        label,
        server_version_num,
        system_identifier,
        timeline: start.timeline,
        start_lsn: start.lsn,
        end_lsn: end.lsn,
        end_timeline: end.timeline,
        start_time: rfc3339(started),
        end_time: rfc3339(ended),
        end_unix: unix_secs(ended),
        next_xid: next_xid(&opts.primary).await,
        archives,
        manifest: super::Chunk {
            key: manifest_key,
            bytes: manifest.len() as u64,
            stored_bytes: stored,
            crc32c: crc,
        },
    };
    wait_for_archive(&*storage, opts, end.lsn, end.timeline, cancel).await?;
    fail::fail_point!("backup-before-completion", |_| crate::failpoint::crash(
        "backup-before-completion"
    ));
    let completion_key = backup_key(&opts.cluster, &id, COMPLETION);
    put_object(
        &*storage,
        &completion_key,
        Bytes::from(serde_json::to_vec_pretty(&record)?),
        &opts.compression,
        cancel,
    )
    .await?;
    debug!(backup = %id, "backup complete");
    Ok(record)
}

/// Stores `intent.json`, before any chunk.
async fn write_intent(
    storage: &dyn RemoteStorage,
    opts: &TakeOptions,
    id: &str,
    started: SystemTime,
    cancel: &CancellationToken,
) -> Result<()> {
    let intent = Intent {
        id: id.to_string(),
        started_at: rfc3339(started),
        started_unix: unix_secs(started) as u64,
        chunk_pattern: "<archive>.<NNNNNN>".into(),
    };
    let key = backup_key(&opts.cluster, id, INTENT);
    let body = Bytes::from(serde_json::to_vec_pretty(&intent)?);
    put_object(storage, &key, body, &opts.compression, cancel).await?;
    Ok(())
}

/// Reads the CopyOut stream into chunks; returns the manifest.
async fn receive(
    stream: &mut BaseBackupStream,
    chunker: &mut Chunker<'_>,
    bar: Option<ProgressBar>,
) -> Result<Bytes> {
    let mut manifest: Option<BytesMut> = None;
    let mut done_before = 0u64;
    let mut last_log = Instant::now();
    while let Some(msg) = stream.next().await? {
        match msg {
            BaseBackupMessage::NewArchive { name, location } => {
                chunker.cut().await?;
                if let Some(bar) = &bar {
                    done_before = bar.position();
                }
                chunker.new_archive(name, location)?;
            }
            BaseBackupMessage::Data(data) => match &mut manifest {
                Some(m) => m.extend_from_slice(&data),
                None => chunker.data(data).await?,
            },
            BaseBackupMessage::Progress(n) => {
                if let Some(bar) = &bar {
                    bar.set_position(done_before + n);
                }
            }
            BaseBackupMessage::ManifestStart => {
                chunker.cut().await?;
                manifest = Some(BytesMut::new());
            }
        }
        if bar.is_none() && last_log.elapsed() >= Duration::from_secs(10) {
            last_log = Instant::now();
            info!(bytes = chunker.bytes, "backup in progress");
        }
    }
    chunker.cut().await?;
    chunker.join_all().await?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    match manifest {
        Some(m) => Ok(m.freeze()),
        None => bail!("the server sent no backup manifest"),
    }
}

fn progress(enabled: bool, total: u64) -> Option<ProgressBar> {
    if !enabled {
        return None;
    }
    let style = ProgressStyle::with_template(
        "{spinner} backup {bytes}/{total_bytes} {bytes_per_sec} eta {eta} [{wide_bar}]",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    Some(ProgressBar::new(total).with_style(style))
}

/// The next transaction ID after the backup's end, read in a regular session; `None` (and a log
/// line) if that session cannot be had, e.g. a user without access to any database. Only
/// `restore --xid` needs it.
async fn next_xid(info: &ConnInfo) -> Option<u64> {
    let result = async {
        let mut conn = ReplicationConnection::connect_with(info, 0, SessionKind::Regular).await?;
        let rows = conn
            .simple_query("SELECT pg_snapshot_xmax(pg_current_snapshot())::text")
            .await;
        conn.close().await;
        rows
    }
    .await;
    match result {
        Ok(rows) => rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .and_then(|t| t.parse().ok()),
        Err(e) => {
            info!(error = %e, "cannot read the next transaction ID; restore --xid will not use this backup");
            None
        }
    }
}

/// Waits until the WAL archive of the cluster holds the WAL up to `end_lsn` on `timeline` (a
/// full segment past it, or a partial reaching it).
async fn wait_for_archive(
    storage: &dyn RemoteStorage,
    opts: &TakeOptions,
    end_lsn: u64,
    timeline: u32,
    cancel: &CancellationToken,
) -> Result<()> {
    let deadline = Instant::now() + opts.archive_timeout;
    loop {
        let archive = Archive::load(storage, &opts.cluster, opts.wal_segment_size, cancel).await?;
        let reached = super::window::wal_end(&archive, timeline);
        if reached.is_some_and(|r| r >= end_lsn) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the WAL archive did not reach the backup's end {} on timeline {timeline} within {:?} \
                 (it ends at {}): is a safekeeper following this cluster and offloading to this remote? \
                 The backup is incomplete and will not be used",
                format_lsn(end_lsn),
                opts.archive_timeout,
                reached.map_or("nothing".into(), format_lsn)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// An error from the primary with the advice for it in front.
fn refused(e: &anyhow::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "the primary refused the backup: {}",
        crate::hints::with_hint(e)
    )
}
