//! The observer: one task per `safekeeper run` that looks at every cluster every
//! [`SAMPLE_INTERVAL`] and keeps what the moment-to-moment snapshots cannot show.
//!
//! - **Upload-lag history**, in memory, for the status page's chart: one sample per interval over
//!   the last [`HISTORY`] (a ring buffer per cluster, dropped when the cluster is removed).
//! - **State-change log lines**, one per transition an operator cares about, at the level it
//!   deserves: the primary lost and back, the cluster stopped on a permanent error, the disk full
//!   and free again, remote storage failing and recovered, a new gap. The follower and the manager
//!   log every attempt and failure as it happens; these lines say when the *state* changed, so a
//!   flapping connection is one "lost" line and one "back" line, not one line per retry.
//! - **Whether the primary waits for this safekeeper**: a probe of `synchronous_standby_names`
//!   while streaming (`sync_standby`), logged when it changes and exported as
//!   `safekeeper_sync_standby`.
//!
//! Invariants: it only reads `watch` snapshots (the same ones the API serves), never blocks a
//! cluster, and holds its lock only to copy samples; memory is bounded by `HISTORY /
//! SAMPLE_INTERVAL` samples per followed cluster.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::cluster_set::{ClusterEntry, ClusterSet};
use super::sync_standby;
use crate::cluster::status::{ClusterStatus, ConnectionState, OffloadStatus};

/// How often every cluster is sampled.
pub(crate) const SAMPLE_INTERVAL: Duration = Duration::from_secs(2);
/// How far back the upload-lag history reaches.
pub(crate) const HISTORY: Duration = Duration::from_secs(15 * 60);
const CAPACITY: usize = (HISTORY.as_secs() / SAMPLE_INTERVAL.as_secs()) as usize;

/// One point of the upload-lag chart.
#[derive(Clone, Copy, Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct LagSample {
    /// When it was taken, in milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// Acknowledged WAL not in remote storage (commit - remote), bytes.
    pub bytes: u64,
    /// Age of the oldest acknowledged byte not in remote storage, seconds.
    pub seconds: f64,
}

/// What the observer keeps of one cluster.
#[derive(Default)]
struct Watched {
    samples: VecDeque<LagSample>,
    seen: Option<Seen>,
    /// Whether the primary names this safekeeper in `synchronous_standby_names` (`None`:
    /// not known yet, or the last probe failed).
    sync_standby: Option<bool>,
    /// When the last probe started; one runs at a time.
    probed_at: Option<Instant>,
    probing: bool,
}

impl Watched {
    /// Appends a sample, dropping the oldest once [`HISTORY`] is full.
    fn push(&mut self, sample: LagSample) {
        if self.samples.len() == CAPACITY {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }
}

/// The part of a snapshot that transitions are detected on.
#[derive(Clone, Debug)]
struct Seen {
    /// The connection state as published (`snake_case`, e.g. `streaming`, `disk_full`).
    state: String,
    gaps: u64,
    upload_failures: u64,
    uploads: u64,
    /// Since when uploads have been failing with no success since.
    storage_failing_since: Option<Instant>,
    /// `upload_failures` just before they started failing.
    failures_before: u64,
    /// Since when the cluster has not been streaming after it was.
    lost_since: Option<Instant>,
    /// The loss since `lost_since` has been logged.
    lost_reported: bool,
}

/// Shared between the observer task (the writer) and the HTTP handlers (readers).
#[derive(Default)]
pub(crate) struct Observer {
    clusters: Mutex<HashMap<String, Watched>>,
}

impl Observer {
    /// The upload-lag samples of `cluster`, oldest first (empty for an unknown cluster).
    pub(crate) fn lag_history(&self, cluster: &str) -> Vec<LagSample> {
        let clusters = self.clusters.lock().unwrap_or_else(PoisonError::into_inner);
        clusters
            .get(cluster)
            .map(|w| w.samples.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Whether uploads of `cluster` have been failing with no success since the first failure.
    pub(crate) fn storage_failing(&self, cluster: &str) -> bool {
        let clusters = self.clusters.lock().unwrap_or_else(PoisonError::into_inner);
        clusters
            .get(cluster)
            .and_then(|w| w.seen.as_ref())
            .is_some_and(|s| s.storage_failing_since.is_some())
    }

    /// Whether the primary of `cluster` names this safekeeper as a synchronous standby (`None`:
    /// unknown).
    pub(crate) fn sync_standby(&self, cluster: &str) -> Option<bool> {
        let clusters = self.clusters.lock().unwrap_or_else(PoisonError::into_inner);
        clusters.get(cluster).and_then(|w| w.sync_standby)
    }

    /// Samples every cluster of `set` each [`SAMPLE_INTERVAL`] until `cancel` fires.
    pub(crate) fn spawn(self: Arc<Self>, set: Arc<ClusterSet>, cancel: CancellationToken) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => self.sample(&set.list()),
                }
            }
        });
    }

    fn sample(self: &Arc<Self>, entries: &[Arc<ClusterEntry>]) {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut clusters = self.clusters.lock().unwrap_or_else(PoisonError::into_inner);
        clusters.retain(|name, _| entries.iter().any(|e| e.name() == name));
        for entry in entries {
            let (status, offload, lags) = entry.snapshot();
            let watched = clusters.entry(entry.name().to_string()).or_default();
            watched.push(LagSample {
                unix_ms,
                bytes: lags.upload.bytes,
                seconds: lags.upload.seconds,
            });
            let mut now = Seen::of(&status, &offload, watched.seen.as_ref());
            if let Some(before) = &watched.seen {
                log_transitions(entry.name(), before, &mut now, &status, &offload);
            }
            // Every interval, and at once on a new session (after a failover it may be another
            // server, with another setting).
            let new_session = watched
                .seen
                .as_ref()
                .is_some_and(|b| b.state != "streaming");
            let due = new_session
                || watched
                    .probed_at
                    .is_none_or(|t| t.elapsed() >= sync_standby::PROBE_INTERVAL);
            if now.state == "streaming" && due && !watched.probing {
                watched.probing = true;
                watched.probed_at = Some(Instant::now());
                self.spawn_probe(entry);
            }
            watched.seen = Some(now);
        }
    }

    /// Asks the primary of `entry` whether it names this safekeeper as a synchronous standby.
    fn spawn_probe(self: &Arc<Self>, entry: &ClusterEntry) {
        let observer = self.clone();
        let (cluster, primary) = (entry.name().to_string(), entry.config.primary.clone());
        let application_name = entry.config.application_name.clone();
        tokio::spawn(async move {
            let listed = sync_standby::probe(&primary)
                .await
                .map(|setting| sync_standby::names_standby(&setting, &application_name));
            let mut clusters = observer
                .clusters
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let Some(watched) = clusters.get_mut(&cluster) else {
                return;
            };
            watched.probing = false;
            let before = watched.sync_standby;
            watched.sync_standby = listed.as_ref().ok().copied();
            match (before, listed) {
                (Some(true), Ok(true)) | (Some(false), Ok(false)) => {}
                (_, Ok(true)) => info!(
                    cluster,
                    application_name,
                    "the primary names this safekeeper in synchronous_standby_names: commits wait for it"
                ),
                (_, Ok(false)) => warn!(
                    cluster,
                    application_name,
                    "not a synchronous standby: the primary's synchronous_standby_names does not name this safekeeper, so commits do not wait for it"
                ),
                (Some(_), Err(e)) => info!(cluster, error = %format!("{e:#}"),
                    "cannot tell whether the primary waits for this safekeeper"),
                (None, Err(_)) => {}
            }
        });
    }

    /// `safekeeper_sync_standby` in Prometheus text format: one sample per cluster whose primary
    /// answered the last probe.
    pub(crate) fn render_metrics(&self) -> String {
        let name = "safekeeper_sync_standby";
        let mut out = format!(
            "# HELP {name} 1 when the primary's synchronous_standby_names names this safekeeper \
             (its commits may wait for it), 0 when not; absent until known.\n# TYPE {name} gauge\n"
        );
        let clusters = self.clusters.lock().unwrap_or_else(PoisonError::into_inner);
        let mut known: Vec<_> = clusters
            .iter()
            .filter_map(|(c, w)| w.sync_standby.map(|s| (c, s)))
            .collect();
        known.sort();
        for (cluster, listed) in known {
            let cluster = cluster
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            out.push_str(&format!(
                "{name}{{cluster=\"{cluster}\"}} {}\n",
                u8::from(listed)
            ));
        }
        out
    }
}

/// The published name of a connection state (`disk_full`, `streaming`, ...).
fn state_name(state: ConnectionState) -> String {
    match serde_json::to_value(state) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{state:?}"),
    }
}

impl Seen {
    fn of(status: &ClusterStatus, offload: &OffloadStatus, before: Option<&Seen>) -> Seen {
        let state = state_name(status.connection);
        let uploads = offload.full_uploaded + offload.partial_uploaded;
        let mut seen = Seen {
            state,
            gaps: status.gaps,
            upload_failures: offload.upload_failures,
            uploads,
            storage_failing_since: None,
            failures_before: offload.upload_failures,
            lost_since: None,
            lost_reported: false,
        };
        if let Some(b) = before {
            let failed_now = offload.upload_failures > b.upload_failures;
            let succeeded_now = uploads > b.uploads;
            seen.storage_failing_since = match b.storage_failing_since {
                Some(_) if succeeded_now && !failed_now => None,
                Some(since) => Some(since),
                None if failed_now => Some(Instant::now()),
                None => None,
            };
            if seen.storage_failing_since.is_some() {
                seen.failures_before = match b.storage_failing_since {
                    Some(_) => b.failures_before,
                    None => b.upload_failures,
                };
            }
            let was_streaming = b.state == "streaming";
            seen.lost_since = match (seen.state.as_str(), b.lost_since) {
                ("streaming" | "stopped", _) => None,
                (_, Some(since)) => Some(since),
                (_, None) if was_streaming => Some(Instant::now()),
                (_, None) => None,
            };
            seen.lost_reported = seen.lost_since.is_some() && b.lost_reported;
        }
        seen
    }
}

/// Logs what changed between two samples of one cluster.
fn log_transitions(
    cluster: &str,
    before: &Seen,
    now: &mut Seen,
    status: &ClusterStatus,
    offload: &OffloadStatus,
) {
    let (flush_lsn, commit_lsn) = (status.flush_lsn.to_string(), status.commit_lsn.to_string());
    let error = status.last_error.as_deref().unwrap_or("");
    if before.state != now.state {
        let (from, to) = (before.state.as_str(), now.state.as_str());
        match (from, to) {
            ("disk_full", _) => info!(cluster, from, to, "disk space available again"),
            (_, "disk_full") => error!(cluster, from, to, %flush_lsn,
                "disk full: acknowledgements stopped until space is freed"),
            (_, "failed") => error!(
                cluster,
                from,
                to,
                error,
                "cluster stopped on a permanent error: its WAL is no longer followed"
            ),
            (_, "streaming") => {
                if let Some(since) = before.lost_since {
                    info!(cluster, from, to, %flush_lsn, %commit_lsn,
                        down_seconds = since.elapsed().as_secs_f64().round(),
                        "primary back: streaming and acknowledging again");
                }
            }
            // Connecting and retrying alternate while the primary is away (the follower logs
            // each attempt), a first connection is the follower's own "streaming" line, and
            // stopped is the process's shutdown: the one line is "lost", below.
            _ => {}
        }
    }
    if now.lost_since.is_some() && !now.lost_reported && now.state == "retrying" {
        warn!(cluster, from = before.state.as_str(), error, %flush_lsn, %commit_lsn,
            "lost the primary: not streaming, so not acknowledging");
        now.lost_reported = true;
    }
    if now.gaps > before.gaps {
        // The follower logged the cause; this is the consequence, for whoever watches errors.
        error!(
            cluster,
            gaps = now.gaps,
            gap = status.last_gap.as_deref().unwrap_or(""),
            "new gap: the archive is not continuous here; recovering past it needs a base backup \
             taken after it"
        );
    }
    match (before.storage_failing_since, now.storage_failing_since) {
        (None, Some(_)) => warn!(
            cluster,
            failures = now.upload_failures,
            error = offload.last_error.as_deref().unwrap_or(""),
            "remote storage failing: uploads are retried with backoff"
        ),
        (Some(since), None) => info!(
            cluster,
            failures = now.upload_failures.saturating_sub(before.failures_before),
            failing_seconds = since.elapsed().as_secs_f64().round(),
            "remote storage recovered: uploads succeed again"
        ),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen_after(
        before: Option<&Seen>,
        f: impl Fn(&mut ClusterStatus, &mut OffloadStatus),
    ) -> Seen {
        let mut status = ClusterStatus::new("main");
        let mut offload = OffloadStatus::default();
        f(&mut status, &mut offload);
        Seen::of(&status, &offload, before)
    }

    #[test]
    fn storage_failing_until_an_upload_succeeds_without_a_new_failure() {
        let ok = seen_after(None, |_, o| o.partial_uploaded = 3);
        assert!(ok.storage_failing_since.is_none());
        let failing = seen_after(Some(&ok), |_, o| {
            o.partial_uploaded = 3;
            o.upload_failures = 1;
        });
        assert!(failing.storage_failing_since.is_some());
        // A success in the same interval as a new failure is not a recovery.
        let mixed = seen_after(Some(&failing), |_, o| {
            o.partial_uploaded = 4;
            o.upload_failures = 2;
        });
        assert!(mixed.storage_failing_since.is_some());
        assert_eq!(
            mixed.failures_before, 0,
            "counted from before the first failure"
        );
        let recovered = seen_after(Some(&mixed), |_, o| {
            o.partial_uploaded = 5;
            o.upload_failures = 2;
        });
        assert!(recovered.storage_failing_since.is_none());
    }

    #[test]
    fn lost_only_after_streaming_and_until_streaming_again() {
        let connecting = seen_after(None, |_, _| {});
        let never = seen_after(Some(&connecting), |s, _| {
            s.connection = ConnectionState::Retrying
        });
        assert!(
            never.lost_since.is_none(),
            "never streamed: nothing was lost"
        );
        let streaming = seen_after(Some(&never), |s, _| {
            s.connection = ConnectionState::Streaming
        });
        let lost = seen_after(Some(&streaming), |s, _| {
            s.connection = ConnectionState::Retrying
        });
        assert!(lost.lost_since.is_some());
        let still = seen_after(Some(&lost), |s, _| {
            s.connection = ConnectionState::Connecting
        });
        assert_eq!(still.lost_since, lost.lost_since);
        let back = seen_after(Some(&still), |s, _| {
            s.connection = ConnectionState::Streaming
        });
        assert!(back.lost_since.is_none());
        assert_eq!(back.state, "streaming");
    }

    #[test]
    fn sync_standby_metric_has_a_sample_only_for_known_answers() {
        let observer = Observer::default();
        {
            let mut clusters = observer.clusters.lock().unwrap();
            clusters.entry("b\"x".into()).or_default().sync_standby = Some(false);
            clusters.entry("a".into()).or_default().sync_standby = Some(true);
            clusters.entry("unknown".into()).or_default();
        }
        let text = observer.render_metrics();
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            samples,
            [
                "safekeeper_sync_standby{cluster=\"a\"} 1",
                "safekeeper_sync_standby{cluster=\"b\\\"x\"} 0"
            ]
        );
        assert!(text.contains("# TYPE safekeeper_sync_standby gauge\n"));
        assert_eq!(observer.sync_standby("a"), Some(true));
        assert_eq!(observer.sync_standby("unknown"), None);
    }

    #[test]
    fn history_keeps_the_newest_samples_of_the_window() {
        assert_eq!(CAPACITY, 450, "15 minutes every 2 s");
        let observer = Observer::default();
        {
            let mut clusters = observer.clusters.lock().unwrap();
            let watched = clusters.entry("main".into()).or_default();
            for i in 0..(CAPACITY as u64 + 10) {
                watched.push(LagSample {
                    unix_ms: i,
                    bytes: i,
                    seconds: 0.0,
                });
            }
        }
        let history = observer.lag_history("main");
        assert_eq!(history.len(), CAPACITY);
        assert_eq!(history[0].unix_ms, 10, "the oldest ones went first");
        assert_eq!(history[CAPACITY - 1].unix_ms, CAPACITY as u64 + 9);
        assert!(observer.lag_history("none").is_empty());
    }
}
