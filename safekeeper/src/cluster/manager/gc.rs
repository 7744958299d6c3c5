//! GC of remote objects (step 4 of the partial protocol, see `partial.rs`): deleting superseded
//! partials and abandoned uploads, then dropping their entries from the control file.
//!
//! Invariants kept here:
//! - GC deletes only superseded partial versions (`bookkeeping::deletable`) and `Deleting`
//!   history entries, and never a key a request may still write: one running now, or one that
//!   ended without a clear answer less than the grace ago, or (for a previous process's
//!   requests) less than the grace after start (`bookkeeping::RequestLedger`).
//! - Entries leave the control file only after the delete succeeded, so a crash anywhere leaves
//!   a superset of what exists remotely; the segments are audited again after the grace.
//! - At most one delete runs at a time; every GC request is answered (with the deleted names,
//!   nothing, or the error).
//! - Deletes are batched: a pass starts at most every [`GC_SPACING`] unless asked for (admin
//!   API, shutdown), so superseded pieces of many uploads and segments go in one request and
//!   deletes never double the request count of the uploads.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Result;
use control_file::ObjectStatus;
use control_file::names::{PartialName, history_file_name};
use tokio::sync::oneshot;

use super::bookkeeping::{deletable, record_deleted};
use super::{Manager, TaskDone};

/// Least time between two GC passes nobody asked for (see the invariants).
pub(super) const GC_SPACING: Duration = Duration::from_secs(10);

/// The GC pass: whether one runs, who waits for it, and whether another is due.
pub(super) struct Gc {
    /// Names being deleted now: set by `start_gc`, cleared by `finish_gc`.
    pub(super) in_flight: Option<Vec<String>>,
    /// When the last pass that deleted something started: set by `start_gc`; reset at shutdown.
    pub(super) last_started: Option<Instant>,
    /// Admin requests (`GcNow`) answered by the pass that finishes next: pushed by
    /// `handle_command`, drained by `start_gc` (nothing to delete) or `finish_gc`.
    pub(super) waiters: Vec<oneshot::Sender<Result<Vec<String>>>>,
    /// A pass is due: set at start and whenever something became deletable (a partial uploaded
    /// or failed, `backup_lsn` advanced, a delete failed); cleared by `start_gc`.
    pub(super) wanted: bool,
}

impl Manager {
    /// GC (step 4): deletes `Deleting` entries and `InProgress` ones with no upload in flight.
    pub(super) fn start_gc(&mut self) {
        let now = Instant::now();
        let spaced = self
            .gc
            .last_started
            .is_none_or(|t| now.saturating_duration_since(t) >= GC_SPACING);
        if self.gc.in_flight.is_some() || (!spaced && self.gc.waiters.is_empty()) {
            // Due again later (the task loop asks on every turn while `wanted`).
            return;
        }
        self.gc.wanted = false;
        self.ledger.prune(now);
        let Ok(st) = self.state() else {
            for w in self.gc.waiters.drain(..) {
                let _ = w.send(Ok(Vec::new()));
            }
            return;
        };
        let seg = st.wal_segment_size;
        let mut names: Vec<String> = deletable(st, &self.ledger, now)
            .iter()
            .map(|n| n.to_file_name(seg))
            .collect();
        // A history file's content is a function of its timeline: a failed upload is retried,
        // never deleted (a delete racing the retry could remove the uploaded file).
        names.extend(
            st.remote
                .history
                .iter()
                .filter(|h| {
                    h.status == ObjectStatus::Deleting
                        && !self.history.in_flight.contains(&h.timeline)
                })
                .map(|h| history_file_name(h.timeline)),
        );
        if names.is_empty() {
            for w in self.gc.waiters.drain(..) {
                let _ = w.send(Ok(Vec::new()));
            }
            return;
        }
        let Some(o) = self.offloader.clone() else {
            return;
        };
        self.gc.in_flight = Some(names.clone());
        self.gc.last_started = Some(now);
        let cancel = self.storage_cancel.clone();
        self.tasks.spawn(async move {
            let result = o.delete(&names, &cancel).await;
            TaskDone::Gc { names, result }
        });
    }

    /// A delete ended: drop the deleted entries from the control file and answer the waiters;
    /// on failure keep every entry and try again after the back-off.
    pub(super) fn finish_gc(&mut self, names: Vec<String>, result: Result<()>) {
        self.gc.in_flight = None;
        match result {
            Ok(()) => {
                fail::fail_point!("gc-after-delete", |_| crate::failpoint::crash(
                    "gc-after-delete"
                ));
                let seg = self.state().map(|s| s.wal_segment_size).unwrap_or(0);
                let gone: BTreeSet<String> = names.iter().cloned().collect();
                let deleted: Vec<PartialName> = self
                    .state()
                    .map(|s| {
                        s.remote
                            .partials
                            .iter()
                            .filter(|p| gone.contains(&p.name.to_file_name(seg)))
                            .map(|p| p.name.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                // A request that outlived every bound could bring a version back: look again
                // where a request ended without a clear answer (or a previous process's might).
                let doubtful: Vec<&PartialName> =
                    deleted.iter().filter(|n| self.ledger.doubtful(n)).collect();
                self.audit.after_grace(doubtful.into_iter(), Instant::now());
                for n in &deleted {
                    self.ledger.forget(n);
                }
                let r = self.update(Box::new(move |s| {
                    record_deleted(s, &deleted);
                    s.remote
                        .history
                        .retain(|h| !gone.contains(&history_file_name(h.timeline)));
                }));
                match r {
                    Ok(()) => {
                        let n = names.len() as u64;
                        self.io.offload_tx.send_modify(|o| o.gc_deleted += n);
                        for w in self.gc.waiters.drain(..) {
                            let _ = w.send(Ok(names.clone()));
                        }
                    }
                    Err(e) => self.note_failure("recording GC", &e),
                }
            }
            Err(e) => {
                let msg = format!("{e:#}");
                self.note_failure("GC", &e);
                for w in self.gc.waiters.drain(..) {
                    let _ = w.send(Err(anyhow::anyhow!("{msg}")));
                }
                self.gc.wanted = true;
            }
        }
    }
}
