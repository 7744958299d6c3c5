//! When a cluster's manager wakes: the follower's LSNs are sampled at most every
//! [`PROGRESS_SAMPLE`] and only when they changed, and the control file, GC and audits are looked
//! at every [`PERSIST_INTERVAL`] while the cluster is busy, every [`QUIET_PERSIST_INTERVAL`] once
//! it is quiet. So a busy cluster pays a bounded number of wake-ups per second whatever its
//! commit rate, and an idle one almost none (a hundred idle clusters in one process).
//!
//! Invariant: quiet means nothing can become due by time alone sooner than the slow interval:
//! no WAL for [`QUIET_AFTER`], no task in flight, no partial pending, no retry, no audit due, no
//! GC waiter. A partial pending has its own timer in the task loop.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::time::sleep_until;

use super::Manager;
use crate::cluster::status::ClusterStatus;

/// How often the follower's published LSNs are read (uploads start at most this late).
pub(super) const PROGRESS_SAMPLE: Duration = Duration::from_millis(50);
/// How often LSNs from the follower are written to the control file (and GC and audits are
/// looked at again).
pub(super) const PERSIST_INTERVAL: Duration = Duration::from_secs(1);
/// The same for a quiet cluster (see [`Manager::quiet`]).
pub(super) const QUIET_PERSIST_INTERVAL: Duration = Duration::from_secs(10);
/// How long after the follower's last change a cluster with no work in flight counts as quiet.
const QUIET_AFTER: Duration = Duration::from_secs(5);

/// Returns once `progress` holds a value not seen yet, but not before `not_before`; an error
/// when the follower is gone. Cancel-safe (both awaits are).
pub(super) async fn progress_changed(
    progress: &mut watch::Receiver<ClusterStatus>,
    not_before: Instant,
) -> Result<(), watch::error::RecvError> {
    sleep_until(not_before.into()).await;
    progress.changed().await
}

impl Manager {
    /// See the module invariant.
    pub(super) fn quiet(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.progress.changed_at) >= QUIET_AFTER
            && self.tasks.is_empty()
            && self.partial.pending_since.is_none()
            && self.retry.at.is_none()
            && self.audit.due.is_empty()
            && self.gc.waiters.is_empty()
    }
}
