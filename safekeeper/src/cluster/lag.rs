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
//! truth) and bounded to [`MAX_SAMPLES`]; bytes already upstream when this process started count
//! from the first observation.
//!
//! One writer: the per-cluster task [`track`] owns the cluster's [`ClusterLag`], observes the
//! follower's and the manager's status channels (at most once per [`GRANULARITY`], on change),
//! and publishes a [`LagSnapshot`] — the lags as of that observation and the positions they were
//! computed for — on a `watch` channel after each observation. Readers (the cluster set, the
//! admin API, `/metrics`) never touch the trackers: [`LagSnapshot::read`] turns the latest
//! snapshot and the positions the reader shows into the lags as of the read, so what is reported
//! stays what a read-time computation gives:
//! - bytes are computed from the reader's own positions, so they always agree with the LSNs
//!   reported beside them;
//! - a stage with no waiting byte reports zero seconds, and so does one whose bytes waiting at
//!   the snapshot have all left (the ones waiting now were first seen after it);
//! - otherwise the snapshot's age plus the time since the snapshot: exact while the downstream
//!   position has not moved since, an upper bound when it moved forward, and any change of
//!   position is re-sampled within [`GRANULARITY`]. Ages keep growing at read time without the
//!   tracker waking: it republishes on change only (no periodic republication is needed), and
//!   after it stopped (the follower ended) the last snapshot still ages correctly.

use std::collections::VecDeque;
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

impl Lags {
    /// From the stages in the order of [`Positions::stages`].
    fn from_stages([flush, upload, backup]: [StageLag; 3]) -> Lags {
        Lags {
            flush,
            upload,
            backup,
        }
    }

    /// The stages in the order of [`Positions::stages`].
    fn stages(&self) -> [StageLag; 3] {
        [self.flush, self.upload, self.backup]
    }
}

/// The positions a cluster's lags are computed from.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Positions {
    received: Lsn,
    flush: Lsn,
    commit: Lsn,
    remote: Lsn,
    backup: Lsn,
}

impl Positions {
    fn of(status: &ClusterStatus, offload: &OffloadStatus) -> Positions {
        Positions {
            received: status.received_lsn,
            flush: status.flush_lsn,
            commit: status.commit_lsn,
            remote: offload.remote_lsn,
            backup: offload.backup_lsn,
        }
    }

    /// `(upstream, downstream)` of the flush, upload and backup stages.
    fn stages(&self) -> [(Lsn, Lsn); 3] {
        [
            (self.received, self.flush),
            (self.commit, self.remote),
            (self.commit, self.backup),
        ]
    }
}

/// The trackers of one cluster (one per stage, in the order of [`Positions::stages`]), owned by
/// its [`track`] task.
#[derive(Debug, Default)]
pub(crate) struct ClusterLag {
    stages: [LagTracker; 3],
}

impl ClusterLag {
    pub(crate) fn observe(
        &mut self,
        status: &ClusterStatus,
        offload: &OffloadStatus,
        now: Instant,
    ) {
        let positions = Positions::of(status, offload).stages();
        for (tracker, (up, down)) in self.stages.iter_mut().zip(positions) {
            tracker.observe(up, down, now);
        }
    }

    /// Lags as of `now` for these positions (call [`ClusterLag::observe`] with them first).
    pub(crate) fn lags(
        &self,
        status: &ClusterStatus,
        offload: &OffloadStatus,
        now: Instant,
    ) -> Lags {
        let positions = Positions::of(status, offload).stages();
        Lags::from_stages(std::array::from_fn(|i| {
            let (up, down) = positions[i];
            StageLag {
                bytes: up.0.saturating_sub(down.0),
                seconds: self.stages[i].age(down, now).as_secs_f64(),
            }
        }))
    }
}

/// What [`track`] publishes: the lags as of `at`, for the positions they were computed from.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LagSnapshot {
    lags: Lags,
    positions: Positions,
    at: Instant,
}

impl LagSnapshot {
    /// Before the first observation: nothing waits.
    pub(crate) fn empty(at: Instant) -> LagSnapshot {
        LagSnapshot {
            lags: Lags::default(),
            positions: Positions::default(),
            at,
        }
    }

    /// The lags of these positions as of `now` (see the module doc for the rules). Read the
    /// snapshot before the positions, so they are at least as new as it.
    pub(crate) fn read(
        &self,
        status: &ClusterStatus,
        offload: &OffloadStatus,
        now: Instant,
    ) -> Lags {
        let since = now.saturating_duration_since(self.at).as_secs_f64();
        let (current, then) = (
            Positions::of(status, offload).stages(),
            self.positions.stages(),
        );
        let published = self.lags.stages();
        Lags::from_stages(std::array::from_fn(|i| {
            let (up, down) = current[i];
            let bytes = up.0.saturating_sub(down.0);
            // The byte at `down` waited at the snapshot: it is at most as old as the oldest then.
            let waited_then = published[i].bytes > 0 && down < then[i].0;
            let seconds = if bytes > 0 && waited_then {
                published[i].seconds + since
            } else {
                0.0
            };
            StageLag { bytes, seconds }
        }))
    }
}

/// A new channel for [`track`] to publish on.
pub(crate) fn channel() -> (watch::Sender<LagSnapshot>, watch::Receiver<LagSnapshot>) {
    watch::channel(LagSnapshot::empty(Instant::now()))
}

/// The one writer of a cluster's lags: follows its channels until `cancel` fires or they close,
/// recording every change and publishing the resulting snapshot on `lags`.
pub(crate) async fn track(
    lags: watch::Sender<LagSnapshot>,
    mut status: watch::Receiver<ClusterStatus>,
    mut offload: watch::Receiver<OffloadStatus>,
    cancel: CancellationToken,
) {
    let mut lag = ClusterLag::default();
    loop {
        {
            let (s, o) = (status.borrow_and_update(), offload.borrow_and_update());
            let now = Instant::now();
            lag.observe(&s, &o, now);
            lags.send_replace(LagSnapshot {
                lags: lag.lags(&s, &o, now),
                positions: Positions::of(&s, &o),
                at: now,
            });
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

    fn positions(
        received: u64,
        flush: u64,
        commit: u64,
        remote: u64,
    ) -> (ClusterStatus, OffloadStatus) {
        let mut s = ClusterStatus::new("c");
        (s.received_lsn, s.flush_lsn, s.commit_lsn) = (Lsn(received), Lsn(flush), Lsn(commit));
        let o = OffloadStatus {
            backup_lsn: Lsn(0),
            remote_lsn: Lsn(remote),
            ..OffloadStatus::default()
        };
        (s, o)
    }

    /// A snapshot as `track` publishes it.
    fn published(
        l: &mut ClusterLag,
        s: &ClusterStatus,
        o: &OffloadStatus,
        at: Instant,
    ) -> LagSnapshot {
        l.observe(s, o, at);
        LagSnapshot {
            lags: l.lags(s, o, at),
            positions: Positions::of(s, o),
            at,
        }
    }

    #[test]
    fn a_read_matches_a_computation_at_read_time() {
        let t0 = Instant::now();
        let mut l = ClusterLag::default();
        let (s, o) = positions(1000, 1000, 800, 100);
        l.observe(&s, &o, t0);
        let snap = published(&mut l, &s, &o, t0 + 30 * MS);
        // Unchanged positions: the published age, aged to the read.
        let read = snap.read(&s, &o, t0 + 100 * MS);
        let computed = l.lags(&s, &o, t0 + 100 * MS);
        for (r, c) in [
            (read.flush, computed.flush),
            (read.upload, computed.upload),
            (read.backup, computed.backup),
        ] {
            assert_eq!(r.bytes, c.bytes);
            assert!((r.seconds - c.seconds).abs() < 1e-9, "{r:?} {c:?}");
        }
        assert_eq!(read.upload.bytes, 700);
        assert!((read.upload.seconds - 0.1).abs() < 1e-9);
        assert_eq!(read.flush, StageLag::default());
        // Newer positions than the snapshot: bytes follow them; bytes that arrived after the
        // snapshot with nothing waiting before count from zero.
        let (s2, o2) = positions(1500, 1200, 900, 100);
        let read = snap.read(&s2, &o2, t0 + 100 * MS);
        assert_eq!((read.flush.bytes, read.flush.seconds), (300, 0.0));
        assert_eq!(read.upload.bytes, 800);
        assert!((read.upload.seconds - 0.1).abs() < 1e-9);
        // Everything waiting at the snapshot left: the bytes waiting now are newer than it.
        let (s3, o3) = positions(1500, 1500, 1000, 850);
        let read = snap.read(&s3, &o3, t0 + 100 * MS);
        assert_eq!((read.upload.bytes, read.upload.seconds), (150, 0.0));
        // Caught up: zero bytes, zero seconds.
        let (s4, o4) = positions(1500, 1500, 1000, 1000);
        assert_eq!(
            snap.read(&s4, &o4, t0 + 100 * MS).upload,
            StageLag::default()
        );
        // Nothing published yet: bytes, no ages.
        let read = LagSnapshot::empty(t0).read(&s, &o, t0 + 100 * MS);
        assert_eq!((read.upload.bytes, read.upload.seconds), (700, 0.0));
    }

    #[tokio::test]
    async fn the_tracker_publishes_every_change() {
        let (status_tx, status_rx) = watch::channel(ClusterStatus::new("c"));
        let (_offload_tx, offload_rx) = watch::channel(OffloadStatus::default());
        let (lags_tx, mut lags_rx) = channel();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(track(lags_tx, status_rx, offload_rx, cancel.clone()));
        status_tx.send_modify(|s| {
            s.received_lsn = Lsn(500);
            s.commit_lsn = Lsn(400);
        });
        let snap = *lags_rx
            .wait_for(|l| l.positions.received == Lsn(500))
            .await
            .unwrap();
        assert_eq!((snap.lags.flush.bytes, snap.lags.upload.bytes), (500, 400));
        let (s, o) = (status_tx.borrow().clone(), OffloadStatus::default());
        let later = snap.at + 50 * MS;
        assert!(snap.read(&s, &o, later).upload.seconds >= 0.05);
        cancel.cancel();
        task.await.unwrap();
    }
}
