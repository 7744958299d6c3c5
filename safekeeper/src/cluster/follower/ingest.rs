//! The receive loop of one replication session: WAL in, fsync, acknowledgement out.
//!
//! Owns the group-commit rule: write every XLogData message that is already available, then one
//! fdatasync, then one standby status update. Keepalives that ask for a reply are answered in the
//! same round, after the flush, so the reply carries the newest durable position.
//!
//! Invariants:
//! - The flush position sent to the primary is never above `WalStore::flushed_lsn`, which only
//!   moves after an fdatasync returned. `write` is what was received, `apply` is always 0
//!   (invalid), so the safekeeper can never be mistaken for a standby that applies WAL.
//! - The loop never waits on anything but the socket, the disk and its own timers: uploads and
//!   control-file bookkeeping belong to the cluster's manager, which reads the LSNs published
//!   here (only after the fsync that makes them true).

use std::time::Instant;

use anyhow::{Context, Result};
use bytes::Bytes;
use control_file::Lsn;
use tokio::sync::watch;
use tokio::time::sleep_until;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::cluster::config::IngestOptions;
use crate::cluster::status::ClusterStatus;
use crate::pg::{ReplicationMessage, ReplicationStream};
use crate::wal::store::WalStore;

/// Upper bound of bytes written between two fsyncs, so that a firehose of WAL still gets
/// acknowledged regularly.
const MAX_BATCH_BYTES: usize = 8 << 20;

/// Why a session ended without an error.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SessionEnd {
    /// Shutdown was requested; everything received was flushed and acknowledged.
    Cancelled,
    /// The server finished streaming this timeline; the next one starts at `start`.
    EndOfTimeline { next_timeline: u32, start: Lsn },
}

/// Streams until cancelled, the timeline ends, or an error. The caller owns reconnecting.
pub(crate) async fn receive_wal(
    stream: &mut ReplicationStream,
    wal: &mut WalStore,
    status: &watch::Sender<ClusterStatus>,
    options: IngestOptions,
    cancel: &CancellationToken,
) -> Result<SessionEnd> {
    let mut last_status = Instant::now();
    let mut last_received = Instant::now();
    let mut acknowledged = wal.flushed_lsn();
    if stream.is_streaming() {
        send_status(stream, wal, false).await?;
    }
    let mut batch: Vec<(Lsn, Bytes)> = Vec::with_capacity(64);
    // Handles resolved once per session: recording is then an atomic push per batch.
    let cluster = status.borrow().name.clone();
    let fsync_seconds =
        metrics::histogram!(crate::telemetry::WAL_FSYNC_SECONDS, "cluster" => cluster.clone());
    let batch_bytes_hist =
        metrics::histogram!(crate::telemetry::WAL_FLUSH_BATCH_BYTES, "cluster" => cluster);
    loop {
        let first = tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                finish(stream, wal, status, acknowledged).await?;
                return Ok(SessionEnd::Cancelled);
            }
            msg = stream.recv() => {
                last_received = Instant::now();
                msg.context("replication stream failed")?
            }
            _ = sleep_until((last_status + options.status_interval).into()), if stream.is_streaming() => {
                let silent = last_received.elapsed();
                anyhow::ensure!(
                    silent < options.receive_timeout,
                    "no message from the primary for {}s (receive timeout): reconnecting",
                    silent.as_secs()
                );
                // When the primary has been quiet, ask it to answer: silence then means trouble.
                send_status(stream, wal, silent >= options.status_interval).await?;
                last_status = Instant::now();
                continue;
            }
        };

        // Collect everything already available, up to the batch limit.
        let mut reply_requested = false;
        let mut end_of_timeline = None;
        let mut batch_bytes = 0usize;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                ReplicationMessage::XLogData {
                    wal_start, data, ..
                } => {
                    batch_bytes += data.len();
                    batch.push((Lsn(wal_start), data));
                }
                ReplicationMessage::Keepalive {
                    reply_requested: r, ..
                } => reply_requested |= r,
                ReplicationMessage::EndOfTimeline {
                    next_timeline,
                    next_timeline_start,
                } => {
                    end_of_timeline = Some(SessionEnd::EndOfTimeline {
                        next_timeline,
                        start: Lsn(next_timeline_start),
                    });
                    break;
                }
            }
            if batch_bytes >= MAX_BATCH_BYTES {
                break;
            }
            next = stream.try_recv().context("replication stream failed")?;
        }

        // One write pass and one fdatasync for the whole batch.
        let before = wal.flushed_lsn();
        if !batch.is_empty() {
            let fsync_started = Instant::now();
            // Inline on purpose: the write and the fdatasync are the critical path of every
            // synchronous commit, and handing them to another thread costs a wake-up each way.
            for (lsn, data) in batch.drain(..) {
                wal.write(lsn, &data)?;
            }
            let flush_started = Instant::now();
            wal.flush()?;
            fsync_seconds.record(flush_started.elapsed().as_secs_f64());
            batch_bytes_hist.record(batch_bytes as f64);
            debug!(
                bytes = batch_bytes,
                flush_lsn = %wal.flushed_lsn(),
                elapsed_us = fsync_started.elapsed().as_micros() as u64,
                "batch flushed"
            );
        }
        let flushed = wal.flushed_lsn();
        // After the end of a timeline the server accepts no more status updates; the position
        // is reported on the next timeline's stream.
        if end_of_timeline.is_none()
            && stream.is_streaming()
            && (flushed > before || reply_requested)
        {
            send_status(stream, wal, false).await?;
            last_status = Instant::now();
            acknowledged = flushed;
        }
        status.send_modify(|s| {
            s.received_lsn = wal.written_lsn();
            s.flush_lsn = flushed;
            s.commit_lsn = acknowledged;
        });
        if let Some(end) = end_of_timeline {
            info!(?end, "upstream timeline ended");
            return Ok(end);
        }
    }
}

/// Shutdown: everything written is flushed, acknowledged once more, and recorded.
async fn finish(
    stream: &mut ReplicationStream,
    wal: &mut WalStore,
    status: &watch::Sender<ClusterStatus>,
    acknowledged: Lsn,
) -> Result<()> {
    wal.flush()?;
    // The primary may already be gone; the local state must be saved regardless.
    let sent = if stream.is_streaming() {
        send_status(stream, wal, false).await
    } else {
        Ok(())
    };
    let acknowledged = if sent.is_ok() {
        wal.flushed_lsn()
    } else {
        acknowledged
    };
    status.send_modify(|s| {
        s.received_lsn = wal.written_lsn();
        s.flush_lsn = wal.flushed_lsn();
        s.commit_lsn = acknowledged;
    });
    sent
}

async fn send_status(stream: &mut ReplicationStream, wal: &WalStore, reply: bool) -> Result<()> {
    stream
        .send_status_update(wal.written_lsn().0, wal.flushed_lsn().0, 0, reply)
        .await
        .context("cannot send a standby status update")
}
