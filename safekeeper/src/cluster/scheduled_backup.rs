//! Base backups on a schedule inside `safekeeper run` (`--backup-interval`, off by default): one
//! task per followed cluster takes a backup of its primary every interval (the same
//! `backup::take::take_backup` as `safekeeper backup`), then applies the retention policy when
//! one is configured (`--backup-keep-last`, `--backup-keep-within`).
//!
//! Owns only the schedule: when the next backup is due and what a failure delays. The backup's
//! own protocol (intent record first, chunks, completion record last, only once the WAL archive
//! reached its end) and retention's (plan stored before anything is deleted) are
//! `crate::backup`'s.
//!
//! Invariants:
//! - The schedule survives restarts without state of its own: the next backup is due one
//!   interval after the newest complete backup in the remote (or shortly after start when there
//!   is none), so a restart neither skips a due backup nor takes an extra one.
//! - A failed backup is retried after [`RETRY_AFTER`] (or the interval, if shorter), never in a
//!   tight loop, and never stops WAL following: the task only logs and counts.
//! - Shutdown: the cluster's cancellation token ends the wait or the backup in progress (which
//!   then has no completion record, so it is never restored and retention removes it later).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use remote_storage::RemoteStorage;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backup::retention::{Policy, finish_pending, plan, run_plan};
use crate::backup::take::{TakeOptions, take_backup};
use crate::backup::{list_backups, unix_secs};
use crate::cluster::config::ClusterConfig;
use crate::object_format::Compression;
use crate::pg::ConnInfo;

/// A failed backup is tried again this much later (or after the interval, when shorter).
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(300);
/// The first backup of a cluster with none waits this long after start, so the follower is
/// streaming (the backup is complete only once the archive holds WAL up to its end).
const FIRST_DELAY: Duration = Duration::from_secs(5);
/// Incomplete backups (no completion record) older than this are removed by retention.
const INCOMPLETE_AFTER: Duration = Duration::from_secs(24 * 3600);
/// How long a backup waits for the WAL archive to reach its end.
const ARCHIVE_TIMEOUT: Duration = Duration::from_secs(120);

/// `--backup-interval` and the retention policy applied after each backup.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BackupSchedule {
    pub interval: Duration,
    pub keep_last: Option<usize>,
    pub keep_within: Option<Duration>,
}

impl BackupSchedule {
    fn policy(&self) -> Option<Policy> {
        (self.keep_last.is_some() || self.keep_within.is_some()).then_some(Policy {
            keep_last: self.keep_last,
            keep_within: self.keep_within,
            incomplete_after: INCOMPLETE_AFTER,
        })
    }
}

/// When the next backup is due, from the newest complete backup's end (seconds since the epoch)
/// and the current time: one interval after it, or [`FIRST_DELAY`] from now when there is none
/// or it is overdue.
fn next_due(newest_end_unix: Option<f64>, now_unix: f64, interval: Duration) -> Duration {
    let first = FIRST_DELAY.min(interval);
    match newest_end_unix {
        Some(end) => {
            let wait = end + interval.as_secs_f64() - now_unix;
            if wait.is_finite() && wait > first.as_secs_f64() {
                // Never more than an interval: a backup "from the future" (the clock stepped
                // back) must not postpone the next one.
                Duration::from_secs_f64(wait).min(interval)
            } else {
                first
            }
        }
        None => first,
    }
}

/// The schedule of one cluster, until `cancel`.
pub(crate) async fn run_schedule(
    storage: Arc<dyn RemoteStorage>,
    cluster: ClusterConfig,
    compression: Compression,
    schedule: BackupSchedule,
    cancel: CancellationToken,
) {
    let primary = match ConnInfo::parse(&cluster.primary) {
        Ok(p) => p,
        Err(e) => {
            warn!(error = %format!("{e:#}"), "scheduled backups off: the primary's connection string does not parse");
            return;
        }
    };
    let opts = TakeOptions {
        cluster: cluster.name.clone(),
        primary,
        chunk_size: 16 << 20,
        compression,
        fast_checkpoint: true, // like `safekeeper backup` by default
        archive_timeout: ARCHIVE_TIMEOUT,
        wal_segment_size: None,
        progress_bar: false,
    };
    let mut wait = match list_backups(&*storage, &cluster.name, &cancel).await {
        Ok(list) => next_due(
            list.complete.iter().map(|b| b.end_unix).reduce(f64::max),
            unix_secs(SystemTime::now()),
            schedule.interval,
        ),
        Err(e) => {
            warn!(error = %format!("{e:#}"), "cannot list the backups; the first scheduled backup follows shortly");
            FIRST_DELAY.min(schedule.interval)
        }
    };
    loop {
        info!(in_secs = wait.as_secs(), "next scheduled backup");
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        wait = match backup_once(&storage, &opts, &schedule, &cancel).await {
            Ok(()) => schedule.interval,
            Err(e) if cancel.is_cancelled() => {
                info!(error = %format!("{e:#}"), "scheduled backup stopped by shutdown");
                return;
            }
            Err(e) => {
                metrics::counter!(crate::telemetry::BACKUPS_TOTAL, "result" => "error")
                    .increment(1);
                warn!(error = %format!("{e:#}"), "scheduled backup failed; trying again later");
                RETRY_AFTER.min(schedule.interval)
            }
        };
    }
}

/// One backup, then retention when a policy is set.
async fn backup_once(
    storage: &Arc<dyn RemoteStorage>,
    opts: &TakeOptions,
    schedule: &BackupSchedule,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let b = take_backup(storage.clone(), opts, cancel).await?;
    metrics::counter!(crate::telemetry::BACKUPS_TOTAL, "result" => "ok").increment(1);
    metrics::gauge!(crate::telemetry::LAST_BACKUP_END, "cluster" => opts.cluster.clone())
        .set(b.end_unix);
    info!(
        backup = %b.id,
        start_lsn = %crate::pg::format_lsn(b.start_lsn),
        end_lsn = %crate::pg::format_lsn(b.end_lsn),
        stored_bytes = b.stored_bytes(),
        "scheduled backup complete"
    );
    if let Some(policy) = schedule.policy() {
        finish_pending(&**storage, &opts.cluster, cancel).await?;
        let p = plan(&**storage, &opts.cluster, None, &policy, cancel).await?;
        run_plan(&**storage, &opts.cluster, &p, cancel).await?;
        info!(
            deleted_backups = p.backups.len(),
            deleted_wal_objects = p.wal_objects,
            kept = p.kept.len(),
            "retention applied"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn the_next_backup_is_one_interval_after_the_newest() {
        assert_eq!(
            next_due(Some(1000.0), 1000.0 + 600.0, HOUR),
            Duration::from_secs(3000)
        );
    }

    #[test]
    fn none_or_overdue_is_due_shortly() {
        assert_eq!(next_due(None, 5000.0, HOUR), FIRST_DELAY);
        assert_eq!(next_due(Some(0.0), 2.0 * 3600.0, HOUR), FIRST_DELAY);
        // A backup from the future (a clock step back) does not postpone past the interval.
        assert_eq!(next_due(Some(1e12), 1000.0, HOUR), HOUR);
        // An interval shorter than the first delay wins.
        assert_eq!(
            next_due(None, 0.0, Duration::from_secs(2)),
            Duration::from_secs(2)
        );
    }
}
