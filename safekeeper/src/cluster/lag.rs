//! How far behind each stage of a cluster is, in bytes and in seconds.
//!
//! Stages (the admin API and `/metrics` report exactly these):
//! - `flush`: WAL received from the primary but not yet fsynced: `received_lsn - flush_lsn`.
//! - `upload`: acknowledged WAL not yet in remote storage in any form: `commit_lsn - remote_lsn`,
//!   where `remote_lsn = max(backup_lsn, newest uploaded partial's commit LSN)`.
//! - `backup`: acknowledged WAL not yet in a *full* remote segment: `commit_lsn - backup_lsn`.
//!
//! The primary's own end of WAL is not known to a receiver, so the lag of receiving itself is not
//! reported (the primary's `pg_stat_replication` shows it).
//!
//! Seconds are the age of the oldest byte of a stage: how long ago the byte at the downstream
//! position was first seen upstream. A [`LagTracker`] keeps `(lsn, first seen)` samples of the
//! upstream position, taken and coarsened at [`GRANULARITY`] (ages are within that much of the
//! truth) and bounded to [`MAX_SAMPLES`]; bytes already upstream when this process started count from the
//! first observation. Owned by one task per cluster ([`track`]), read by snapshot.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use control_file::Lsn;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cluster::status::{ClusterStatus, OffloadStatus};

/// Upstream positions first seen within this window share one sample.
pub(crate) const GRANULARITY: Duration = Duration::from_millis(10);
/// Bound on samples per tracker; beyond it the newest sample absorbs further progress.
pub(crate) const MAX_SAMPLES: usize = 8192;

/// Age of the oldest byte between a downstream and an upstream position.
#[derive(Debug, Default)]
pub(crate) struct LagTracker {
    /// Strictly increasing LSNs; `(lsn, t)`: every byte below `lsn` was upstream by `t`.
    samples: VecDeque<(Lsn, Instant)>,
}

impl LagTracker {
    /// Records the current positions.
    pub(crate) fn observe(&mut self, upstream: Lsn, downstream: Lsn, now: Instant) {
        while self
            .samples
            .front()
            .is_some_and(|&(lsn, _)| lsn <= downstream)
        {
            self.samples.pop_front();
        }
        // Upstream moved back (a truncation): forget what is gone, keep the oldest time.
        let mut oldest_dropped = None;
        while self.samples.back().is_some_and(|&(lsn, _)| lsn > upstream) {
            oldest_dropped = self.samples.pop_back().map(|(_, t)| t);
        }
        if upstream <= downstream {
            return;
        }
        if let Some(t) = oldest_dropped {
            self.samples.push_back((upstream, t));
            return;
        }
        let full = self.samples.len() >= MAX_SAMPLES;
        match self.samples.back_mut() {
            Some((lsn, _)) if *lsn == upstream => {}
            Some((lsn, t)) if full || now.saturating_duration_since(*t) < GRANULARITY => {
                *lsn = upstream;
            }
            _ => self.samples.push_back((upstream, now)),
        }
    }

    /// Seconds the byte at `downstream` has waited (zero when nothing waits).
    pub(crate) fn age(&self, downstream: Lsn, now: Instant) -> Duration {
        self.samples
            .iter()
            .find(|&&(lsn, _)| lsn > downstream)
            .map(|&(_, t)| now.saturating_duration_since(t))
            .unwrap_or_default()
    }
}

/// Lag of one stage.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct StageLag {
    pub bytes: u64,
    pub seconds: f64,
}

/// Lag of every stage of one cluster.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Lags {
    pub flush: StageLag,
    pub upload: StageLag,
    pub backup: StageLag,
}

/// The trackers of one cluster.
#[derive(Debug, Default)]
pub(crate) struct ClusterLag {
    flush: LagTracker,
    upload: LagTracker,
    backup: LagTracker,
}

impl ClusterLag {
    pub(crate) fn observe(
        &mut self,
        status: &ClusterStatus,
        offload: &OffloadStatus,
        now: Instant,
    ) {
        self.flush
            .observe(status.received_lsn, status.flush_lsn, now);
        self.upload
            .observe(status.commit_lsn, offload.remote_lsn, now);
        self.backup
            .observe(status.commit_lsn, offload.backup_lsn, now);
    }

    /// Lags as of `now` for these positions (call [`ClusterLag::observe`] with them first).
    pub(crate) fn lags(
        &self,
        status: &ClusterStatus,
        offload: &OffloadStatus,
        now: Instant,
    ) -> Lags {
        let stage = |t: &LagTracker, up: Lsn, down: Lsn| StageLag {
            bytes: up.0.saturating_sub(down.0),
            seconds: t.age(down, now).as_secs_f64(),
        };
        Lags {
            flush: stage(&self.flush, status.received_lsn, status.flush_lsn),
            upload: stage(&self.upload, status.commit_lsn, offload.remote_lsn),
            backup: stage(&self.backup, status.commit_lsn, offload.backup_lsn),
        }
    }
}

/// Shared trackers of one cluster, updated by [`track`] and read by the API and `/metrics`.
pub(crate) type SharedLag = Arc<Mutex<ClusterLag>>;

/// Lags for these positions as of now (also records them).
pub(crate) fn current(lag: &SharedLag, status: &ClusterStatus, offload: &OffloadStatus) -> Lags {
    let now = Instant::now();
    match lag.lock() {
        Ok(mut l) => {
            l.observe(status, offload, now);
            l.lags(status, offload, now)
        }
        // A panic elsewhere while holding the lock: report bytes, not ages.
        Err(_) => ClusterLag::default().lags(status, offload, now),
    }
}

/// Follows a cluster's channels until `cancel` fires or they close, recording every change.
pub(crate) async fn track(
    lag: SharedLag,
    mut status: watch::Receiver<ClusterStatus>,
    mut offload: watch::Receiver<OffloadStatus>,
    cancel: CancellationToken,
) {
    loop {
        {
            let (s, o) = (status.borrow_and_update(), offload.borrow_and_update());
            if let Ok(mut l) = lag.lock() {
                l.observe(&s, &o, Instant::now());
            }
        }
        // At most one observation per GRANULARITY: a busy cluster changes its status on every
        // group commit, and finer samples would be merged anyway.
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(GRANULARITY) => {}
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = status.changed() => if r.is_err() { return },
            r = offload.changed() => if r.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn age_is_that_of_the_oldest_waiting_byte() {
        let t0 = Instant::now();
        let mut t = LagTracker::default();
        t.observe(Lsn(100), Lsn(0), t0);
        t.observe(Lsn(200), Lsn(0), t0 + 50 * MS);
        t.observe(Lsn(300), Lsn(0), t0 + 100 * MS);
        assert_eq!(t.age(Lsn(0), t0 + 1000 * MS), 1000 * MS);
        // Bytes below 100 left: the oldest waiting one arrived at 50 ms.
        t.observe(Lsn(300), Lsn(100), t0 + 1000 * MS);
        assert_eq!(t.age(Lsn(100), t0 + 1000 * MS), 950 * MS);
        t.observe(Lsn(300), Lsn(250), t0 + 1000 * MS);
        assert_eq!(t.age(Lsn(250), t0 + 1000 * MS), 900 * MS);
        t.observe(Lsn(300), Lsn(300), t0 + 1000 * MS);
        assert_eq!(t.age(Lsn(300), t0 + 2000 * MS), Duration::ZERO);
        assert!(t.samples.is_empty());
    }

    #[test]
    fn close_observations_share_a_sample_and_memory_is_bounded() {
        let t0 = Instant::now();
        let mut t = LagTracker::default();
        t.observe(Lsn(10), Lsn(0), t0);
        t.observe(Lsn(20), Lsn(0), t0 + MS);
        assert_eq!(t.samples.len(), 1);
        // The later byte reads as old as the sample (an overestimate below GRANULARITY).
        assert_eq!(t.age(Lsn(15), t0 + 5 * MS), 5 * MS);
        for i in 0..(MAX_SAMPLES as u64 * 2) {
            t.observe(Lsn(100 + i), Lsn(0), t0 + GRANULARITY * (i as u32 + 1));
        }
        assert_eq!(t.samples.len(), MAX_SAMPLES);
        assert_eq!(t.age(Lsn(0), t0 + 10 * MS), 10 * MS);
    }

    #[test]
    fn upstream_moving_back_keeps_the_oldest_time() {
        let t0 = Instant::now();
        let mut t = LagTracker::default();
        t.observe(Lsn(100), Lsn(0), t0);
        t.observe(Lsn(200), Lsn(0), t0 + 100 * MS);
        t.observe(Lsn(50), Lsn(0), t0 + 200 * MS);
        assert_eq!(t.age(Lsn(0), t0 + 300 * MS), 300 * MS);
        t.observe(Lsn(50), Lsn(50), t0 + 300 * MS);
        assert_eq!(t.age(Lsn(50), t0 + 300 * MS), Duration::ZERO);
    }

    #[test]
    fn stage_bytes_follow_the_definitions() {
        let mut s = ClusterStatus::new("c");
        s.received_lsn = Lsn(1000);
        s.flush_lsn = Lsn(900);
        s.commit_lsn = Lsn(800);
        let o = OffloadStatus {
            backup_lsn: Lsn(100),
            remote_lsn: Lsn(700),
            ..OffloadStatus::default()
        };
        let now = Instant::now();
        let mut l = ClusterLag::default();
        l.observe(&s, &o, now);
        let lags = l.lags(&s, &o, now + 2 * MS);
        assert_eq!(lags.flush.bytes, 100);
        assert_eq!(lags.upload.bytes, 100);
        assert_eq!(lags.backup.bytes, 700);
        assert!((lags.upload.seconds - 0.002).abs() < 1e-9);
    }
}
