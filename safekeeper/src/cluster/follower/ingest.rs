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
//! - A full disk (`wal::space::DiskFull`: no room for the next segment) never ends the session
//!   and never drops received WAL: the batch that could not be written is kept, nothing more is
//!   read from the socket (TCP holds the primary back), status updates keep the session alive,
//!   and the batch is retried every [`SPACE_RETRY`] until room appears; only then is anything
//!   more acknowledged. Any other write or fsync error (a raw ENOSPC included) ends the session
//!   and the store is reopened from disk: a failed fsync is never retried.

use std::time::Instant;

use anyhow::{Context, Result};
use bytes::Bytes;
use control_file::Lsn;
use tokio::sync::watch;
use tokio::time::sleep_until;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::cluster::config::IngestOptions;
use crate::cluster::status::{ClusterStatus, ConnectionState, DiskFullInfo};
use crate::pg::{ReplicationMessage, ReplicationStream};
use crate::wal::space::{self, DiskFull};
use crate::wal::store::WalStore;
use crate::wal::stream_check::StreamCheck;

/// Upper bound of bytes written between two fsyncs, so that a firehose of WAL still gets
/// acknowledged regularly.
const MAX_BATCH_BYTES: usize = 8 << 20;
/// How often writing is retried while the disk is full (resuming takes at most this long).
const SPACE_RETRY: std::time::Duration = std::time::Duration::from_millis(500);
/// How often a stall on a full disk is logged again.
const DISK_FULL_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

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
    check: StreamCheck,
    options: IngestOptions,
    cancel: &CancellationToken,
) -> Result<SessionEnd> {
    if stream.is_streaming() {
        send_status(stream, wal, false).await?;
    }
    let mut session = Session::new(wal.flushed_lsn(), status, check, options);
    loop {
        let first = tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                finish(stream, wal, status, session.acknowledged).await?;
                return Ok(SessionEnd::Cancelled);
            }
            msg = stream.recv() => {
                session.last_received = Instant::now();
                msg.context("replication stream failed")?
            }
            _ = sleep_until(session.next_status_due().into()), if stream.is_streaming() => {
                session.on_quiet(stream, wal).await?;
                continue;
            }
        };
        let round = session.collect(stream, first)?;
        if let Err(e) = session.write_and_flush(wal, round.batch_bytes) {
            if !space::is_disk_full(&e) {
                return Err(e);
            }
            let resumed = session
                .wait_for_space(stream, wal, status, cancel, &e, round.batch_bytes)
                .await?;
            if !resumed {
                finish(stream, wal, status, session.acknowledged).await?;
                return Ok(SessionEnd::Cancelled);
            }
        }
        session.acknowledge(stream, wal, &round).await?;
        status.send_modify(|s| {
            s.received_lsn = wal.written_lsn();
            s.flush_lsn = wal.flushed_lsn();
            s.commit_lsn = session.acknowledged;
            s.wal_page_magic = session.check.verified_magic();
            s.local_end_checked = true;
        });
        if let Some(end) = round.end_of_timeline {
            info!(?end, "upstream timeline ended");
            return Ok(end);
        }
    }
}

/// What one round of the receive loop collected besides the WAL itself.
struct Round {
    batch_bytes: usize,
    reply_requested: bool,
    end_of_timeline: Option<SessionEnd>,
}

/// The state of one receive loop: its timers, the batch being assembled, the newest position
/// acknowledged to the primary, and the metric handles (resolved once per session, so recording
/// is an atomic push per batch).
struct Session {
    options: IngestOptions,
    /// Streamed WAL is checked against the cluster's format before any of it is written.
    check: StreamCheck,
    last_status: Instant,
    last_received: Instant,
    /// The newest flush position sent to the primary (never above the store's flushed LSN).
    acknowledged: Lsn,
    /// Reused between rounds; drained by every write pass.
    batch: Vec<(Lsn, Bytes)>,
    fsync_seconds: metrics::Histogram,
    batch_bytes_hist: metrics::Histogram,
}

impl Session {
    fn new(
        acknowledged: Lsn,
        status: &watch::Sender<ClusterStatus>,
        check: StreamCheck,
        options: IngestOptions,
    ) -> Self {
        let cluster = status.borrow().name.clone();
        Session {
            options,
            check,
            last_status: Instant::now(),
            last_received: Instant::now(),
            acknowledged,
            batch: Vec::with_capacity(64),
            fsync_seconds: metrics::histogram!(
                crate::telemetry::WAL_FSYNC_SECONDS, "cluster" => cluster.clone()
            ),
            batch_bytes_hist: metrics::histogram!(
                crate::telemetry::WAL_FLUSH_BATCH_BYTES, "cluster" => cluster
            ),
        }
    }

    fn next_status_due(&self) -> Instant {
        self.last_status + self.options.status_interval
    }

    /// Nothing arrived for a status interval: give up on a silent primary, else send a status
    /// update that asks for an answer when the primary has been quiet (silence then means
    /// trouble).
    async fn on_quiet(&mut self, stream: &mut ReplicationStream, wal: &WalStore) -> Result<()> {
        let silent = self.last_received.elapsed();
        anyhow::ensure!(
            silent < self.options.receive_timeout,
            "no message from the primary for {}s (receive timeout): reconnecting",
            silent.as_secs()
        );
        send_status(stream, wal, silent >= self.options.status_interval).await?;
        self.last_status = Instant::now();
        Ok(())
    }

    /// Collects `first` and every message already available, up to the batch limit or the end
    /// of the timeline.
    fn collect(
        &mut self,
        stream: &mut ReplicationStream,
        first: ReplicationMessage,
    ) -> Result<Round> {
        let mut round = Round {
            batch_bytes: 0,
            reply_requested: false,
            end_of_timeline: None,
        };
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                ReplicationMessage::XLogData {
                    wal_start, data, ..
                } => {
                    self.check.check(Lsn(wal_start), &data)?;
                    round.batch_bytes += data.len();
                    self.batch.push((Lsn(wal_start), data));
                }
                ReplicationMessage::Keepalive {
                    reply_requested, ..
                } => round.reply_requested |= reply_requested,
                ReplicationMessage::EndOfTimeline {
                    next_timeline,
                    next_timeline_start,
                } => {
                    round.end_of_timeline = Some(SessionEnd::EndOfTimeline {
                        next_timeline,
                        start: Lsn(next_timeline_start),
                    });
                    break;
                }
            }
            if round.batch_bytes >= MAX_BATCH_BYTES {
                break;
            }
            next = stream.try_recv().context("replication stream failed")?;
        }
        Ok(round)
    }

    /// One write pass and one fdatasync for the whole batch. Inline on purpose: the write and
    /// the fdatasync are the critical path of every synchronous commit, and handing them to
    /// another thread costs a wake-up each way.
    fn write_and_flush(&mut self, wal: &mut WalStore, batch_bytes: usize) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        // Kept until written: after a full disk the same batch is written again (bytes already
        // written are skipped by `WalStore::write`).
        for (lsn, data) in &self.batch {
            wal.write(*lsn, data)?;
        }
        self.batch.clear();
        let flush_started = Instant::now();
        wal.flush()?;
        self.fsync_seconds
            .record(flush_started.elapsed().as_secs_f64());
        self.batch_bytes_hist.record(batch_bytes as f64);
        debug!(
            bytes = batch_bytes,
            flush_lsn = %wal.flushed_lsn(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "batch flushed"
        );
        Ok(())
    }

    /// Sends the new durable position (or the reply a keepalive asked for). After the end of a
    /// timeline the server accepts no more status updates; the position is reported on the next
    /// timeline's stream.
    async fn acknowledge(
        &mut self,
        stream: &mut ReplicationStream,
        wal: &WalStore,
        round: &Round,
    ) -> Result<()> {
        let flushed = wal.flushed_lsn();
        if round.end_of_timeline.is_none()
            && stream.is_streaming()
            && (flushed > self.acknowledged || round.reply_requested)
        {
            send_status(stream, wal, false).await?;
            self.last_status = Instant::now();
            self.acknowledged = flushed;
        }
        Ok(())
    }
}

impl Session {
    /// The disk is full: acknowledge what is durable, then keep the session alive without
    /// reading, retrying the batch every [`SPACE_RETRY`], until it is written (true) or shutdown
    /// is requested (false). State `disk_full` is published meanwhile, logged once a minute.
    async fn wait_for_space(
        &mut self,
        stream: &mut ReplicationStream,
        wal: &mut WalStore,
        status: &watch::Sender<ClusterStatus>,
        cancel: &CancellationToken,
        first: &anyhow::Error,
        batch_bytes: usize,
    ) -> Result<bool> {
        wal.flush()?;
        if stream.is_streaming() && wal.flushed_lsn() > self.acknowledged {
            send_status(stream, wal, false).await?;
            self.acknowledged = wal.flushed_lsn();
            self.last_status = Instant::now();
        }
        let started = Instant::now();
        let mut info = disk_full_info(first, unix_now());
        log_disk_full(&info, wal, 0);
        status.send_modify(|s| {
            s.connection = ConnectionState::DiskFull;
            s.disk_full = Some(info.clone());
            s.disk_full_stalls += 1;
            s.received_lsn = wal.written_lsn();
            s.flush_lsn = wal.flushed_lsn();
            s.commit_lsn = self.acknowledged;
        });
        let mut last_log = Instant::now();
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(false),
                _ = tokio::time::sleep(SPACE_RETRY) => {}
            }
            if stream.is_streaming() && self.next_status_due() <= Instant::now() {
                send_status(stream, wal, false).await?;
                self.last_status = Instant::now();
            }
            match self.write_and_flush(wal, batch_bytes) {
                Ok(()) => break,
                Err(e) if space::is_disk_full(&e) => {
                    info = disk_full_info(&e, info.since_unix);
                    if last_log.elapsed() >= DISK_FULL_LOG_INTERVAL {
                        log_disk_full(&info, wal, started.elapsed().as_secs());
                        last_log = Instant::now();
                    }
                    let snapshot = info.clone();
                    status.send_modify(|s| s.disk_full = Some(snapshot));
                }
                Err(e) => return Err(e),
            }
        }
        info!(stalled_s = started.elapsed().as_secs(), flush_lsn = %wal.flushed_lsn(),
              "disk space available again: writing and acknowledging WAL again");
        status.send_modify(|s| {
            s.connection = ConnectionState::Streaming;
            s.disk_full = None;
        });
        // Nothing was read while stalled: the primary's silence was ours.
        self.last_received = Instant::now();
        Ok(true)
    }
}

/// The numbers of a full disk, from the error when it carries them, else from the filesystem.
fn disk_full_info(e: &anyhow::Error, since_unix: u64) -> DiskFullInfo {
    match e.chain().find_map(|c| c.downcast_ref::<DiskFull>()) {
        Some(d) => DiskFullInfo {
            since_unix,
            needed_bytes: d.needed,
            available_bytes: d.available,
        },
        None => DiskFullInfo {
            since_unix,
            needed_bytes: 0,
            available_bytes: 0,
        },
    }
}

fn log_disk_full(info: &DiskFullInfo, wal: &WalStore, stalled_s: u64) {
    warn!(
        needed_bytes = info.needed_bytes,
        available_bytes = info.available_bytes,
        flush_lsn = %wal.flushed_lsn(),
        stalled_s,
        "disk full: not acknowledging WAL until space is freed (uploaded segments are removed \
         as their uploads finish)"
    );
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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
