//! Audits: bounded listings of one segment's objects that teach the manager what the archive
//! holds beyond its control file, so that nothing this safekeeper created is forgotten.
//!
//! When audits run:
//! - At start, the newest segment of the recorded state, *before* any partial upload: requests
//!   of the previous process may have landed that the control file does not show as the newest
//!   version, and no version at or below one of them may be uploaded (invariant (c) of
//!   `bookkeeping.rs`).
//! - Once more [`LATE_REQUEST_GRACE`] after start, over every segment the control file lists
//!   partials of: the previous process's last requests may land after the first audit.
//! - [`LATE_REQUEST_GRACE`] after GC deleted versions of a segment: a request that outlived every
//!   bound (a PUT whose retry the client abandoned) may bring a deleted version back.
//!
//! Invariant kept here: every object of this safekeeper found in a listing and missing from the
//! control file is listed again (`bookkeeping::adopt_listed`): superseded ones as `Deleting`,
//! for GC; others as `InProgress`, so the archive's end stays and nothing is uploaded below it.
//! Objects of other safekeepers are never touched.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use control_file::names::{PartialName, TimelineId, segment_file_name};
use control_file::{ClusterState, Lsn};
use remote_storage::{ListOptions, RemoteStorageExt};
use tracing::{info, warn};

use super::bookkeeping::adopt_listed;
use super::{Manager, TaskDone};

/// How long a request may still land after its client stopped waiting for it (a timed-out,
/// cancelled or killed request whose bytes the server already had). Deletes of keys touched by
/// such a request wait this long, and audits look again after it.
pub(super) const LATE_REQUEST_GRACE: Duration = Duration::from_secs(10);

/// One segment of one timeline: the unit of an audit's listing.
pub(super) type SegmentId = (TimelineId, u64);

/// Audits to run and the one running.
#[derive(Default)]
pub(super) struct Audits {
    /// Segments to list, each not before its time: added at start, by the control file's
    /// creation and after GC; taken by `start_audit`.
    pub(super) due: BTreeMap<SegmentId, Instant>,
    /// The segment being listed now: set by `start_audit`, cleared by `finish_audit`.
    pub(super) in_flight: Option<SegmentId>,
    /// Partial uploads wait until this segment's first audit finished (None: nothing to wait
    /// for): set at start and at the control file's creation, cleared by `finish_audit`.
    pub(super) gate: Option<SegmentId>,
}

impl Audits {
    /// Plans the audits of a process that found `st` on disk (see the module doc).
    pub(super) fn at_start(st: &ClusterState, now: Instant) -> Audits {
        let mut audits = Audits::default();
        let newest = newest_segment(st);
        audits.after_grace(st.remote.partials.iter().map(|p| &p.name), now);
        // The gating audit runs now (its second look is planned when it finishes): partial
        // uploads wait for it, and a stop soon after a start must still upload the tail.
        audits.due.insert(newest, now);
        audits.gate = Some(newest);
        audits
    }

    /// Looks at the segments of `names` once more after the grace.
    pub(super) fn after_grace<'a>(
        &mut self,
        names: impl Iterator<Item = &'a PartialName>,
        now: Instant,
    ) {
        for n in names {
            let at = now + LATE_REQUEST_GRACE;
            let e = self.due.entry((n.timeline, n.segno)).or_insert(at);
            *e = (*e).max(at);
        }
    }
}

/// The newest segment the recorded state knows of: where the archive's end is.
fn newest_segment(st: &ClusterState) -> SegmentId {
    let seg = st.wal_segment_size;
    let from_lsn = |lsn: Lsn| {
        // The WAL just below `lsn` is where its last byte is.
        let last = Lsn(lsn.0.saturating_sub(1));
        last.segment_number(seg)
    };
    let recorded = (st.timeline, from_lsn(st.flush_lsn.max(st.commit_lsn)));
    st.remote
        .partials
        .iter()
        .map(|p| (p.name.timeline, p.name.segno))
        .chain(std::iter::once(recorded))
        .max()
        .unwrap_or(recorded)
}

impl Manager {
    /// Lists the next due segment, if none is being listed.
    pub(super) fn start_audit(&mut self) {
        if self.audit.in_flight.is_some() {
            return;
        }
        let now = Instant::now();
        let Some((&segment, _)) = self.audit.due.iter().find(|(_, at)| **at <= now) else {
            return;
        };
        let (Ok(seg_size), Some(o)) = (
            self.state().map(|s| s.wal_segment_size),
            self.offloader.clone(),
        ) else {
            return;
        };
        self.audit.due.remove(&segment);
        self.audit.in_flight = Some(segment);
        let prefix = format!(
            "{}{}",
            crate::remote::wal_prefix(&self.wiring.cluster),
            segment_file_name(segment.0, segment.1, seg_size)
        );
        let cancel = self.storage_cancel.clone();
        self.tasks.spawn(async move {
            let result = o
                .storage
                .list_all(&prefix, ListOptions::default(), &cancel)
                .await
                .with_context(|| format!("cannot list {prefix}"))
                .map(|objects| {
                    let base = crate::remote::wal_prefix(&o.cluster);
                    objects
                        .into_iter()
                        .filter_map(|m| {
                            let file = m.key.strip_prefix(&base)?;
                            let name = PartialName::parse(file, seg_size).ok()?;
                            Some((name, m.size))
                        })
                        .collect()
                });
            TaskDone::Audit { segment, result }
        });
    }

    /// A listing ended: list what the control file missed, then let GC and uploads go on.
    pub(super) fn finish_audit(
        &mut self,
        segment: SegmentId,
        result: Result<Vec<(PartialName, u64)>>,
    ) {
        self.audit.in_flight = None;
        let listed = match result {
            Ok(listed) => listed,
            Err(e) => {
                if self.audit.gate == Some(segment) {
                    // Uploads wait for this listing: who asked for one learns why now.
                    for w in self.partial.waiters.drain(..) {
                        let _ = w.send(Err(anyhow::anyhow!(
                            "the archive's end is not known yet: {e:#}"
                        )));
                    }
                }
                self.note_failure("listing the archive", &e);
                self.audit.due.insert(segment, Instant::now());
                return;
            }
        };
        let sk_id = self.wiring.sk_id;
        // What the listing adds, worked out on a copy; the same change is then made durably.
        let adopted = match self.state() {
            Ok(st) => adopt_listed(&mut st.clone(), sk_id, &listed),
            Err(_) => Vec::new(),
        };
        if !adopted.is_empty() {
            let r = self.update(Box::new(move |s| {
                adopt_listed(s, sk_id, &listed);
            }));
            if let Err(e) = r {
                self.note_failure("recording objects found in the archive", &e);
                self.audit.due.insert(segment, Instant::now());
                return;
            }
        }
        if !adopted.is_empty() {
            let n = adopted.len() as u64;
            self.io.offload_tx.send_modify(|o| o.objects_adopted += n);
            let seg = self.state().map(|s| s.wal_segment_size).unwrap_or(0);
            let names: Vec<String> = adopted.iter().map(|n| n.to_file_name(seg)).collect();
            warn!(count = names.len(), objects = ?names, "found objects of this safekeeper the control file did not list; listed them again");
            self.gc.wanted = true;
        }
        if self.audit.gate == Some(segment) {
            self.audit.gate = None;
            // Requests of the previous process may still land in this segment: look again.
            let (tli, segno) = segment;
            let at = Instant::now() + LATE_REQUEST_GRACE;
            let e = self.audit.due.entry((tli, segno)).or_insert(at);
            *e = (*e).max(at);
            info!(
                timeline = segment.0,
                segno = segment.1,
                "learned the archive's end; partial uploads may start"
            );
        }
    }
}

impl Manager {
    /// At shutdown: runs the startup audit if it has not finished, so the final partial can go
    /// up (bounded by the caller's timeout; a failure leaves the gate closed).
    pub(super) async fn run_gating_audit(&mut self) {
        // Audits due before it run first (lowest segment first): bounded by their number.
        for _ in 0..=self.audit.due.len() {
            let Some(segment) = self.audit.gate else {
                return;
            };
            self.audit.due.insert(segment, Instant::now());
            self.start_audit();
            if self.audit.in_flight.is_none() {
                return;
            }
            while let Some(done) = self.tasks.join_next().await {
                self.on_task_done(done);
            }
            if self.audit.gate == Some(segment) && self.audit.due.contains_key(&segment) {
                // The listing failed (it was put back as due): give up, the gate stays closed.
                if self.audit.in_flight.is_none() && self.retry.at.is_some() {
                    return;
                }
            }
        }
    }
}
