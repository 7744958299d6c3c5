//! The partial upload protocol: the segment being written goes to object storage as a *partial*
//! object at least every `--partial-interval` while commits arrive, on an explicit request (admin
//! API, the follower before a timeline switch or a gap), and once more at shutdown.
//!
//! A partial *version* of a segment (`SEGMENT_COMMITLSN_TERM_skID.partial` in every listing) is
//! stored as a chain of *pieces* (`chain.rs`): each upload sends only WAL the chain does not hold
//! yet (an increment `[chain end, commit_lsn)`), or, when the chain is full, that plus a run of
//! small tail pieces it replaces (a merge), or the whole prefix when the term has no chain in the
//! segment yet (a base). Each piece's name says which WAL it holds (`PartialName`), so its WAL
//! content is a function of its name and a retried PUT rewrites identical bytes. The control
//! file lists every piece this safekeeper may have created, each `InProgress`, `Uploaded` or
//! `Deleting`, and the control file is always written *before* the storage is touched, so it
//! describes a superset of what exists remotely whatever the crash point.
//!
//! When: an upload is *due* (`partial_due`) when the oldest acknowledged byte of the segment being
//! written that no upload covers is nearly `--partial-interval` old, unless the segment is about
//! to complete (its full upload will cover it sooner, at a fraction of the cost); so about one PUT
//! per interval while WAL arrives, none while it does not, none for a segment filled within
//! the interval. Explicit requests (admin API, the follower before a timeline switch) and
//! shutdown upload at once.
//!
//! The protocol, for one new version `N` of the segment holding `commit_lsn` (the decisions are
//! the pure functions of `bookkeeping.rs`, which also states the invariants they keep):
//! 0. Nothing before the follower published the local WAL end it checked in this process
//!    (`progress.live`), and nothing before the first audit learned what the archive holds of
//!    the newest segment (`audit.rs`).
//! 1. Choose `N` (`start_partial`, `bookkeeping::plan_piece`): the current timeline, segment and
//!    term of `commit_lsn` (clamped to the flush LSN), this safekeeper's id, and where the piece
//!    starts. `N` is uploaded only when it is above every listed version of its segment, or is
//!    the listed best still `InProgress` (a retry of identical bytes): never at a segment
//!    boundary, never when the segment's full object is recorded, never before the timeline's
//!    history file is up.
//! 2. Persist the intent: `N` is listed `InProgress` (with its size and crc32c) in the control
//!    file, then the PUT starts. At most one partial upload runs at a time (`in_flight`), and the
//!    request ledger knows its key is being written.
//! 3. On success (`finish_partial`), in one control file update: `N` becomes `Uploaded` (or
//!    `Deleting` when the full segment was recorded meanwhile), and every `Uploaded` piece the
//!    new best version's chain does not need becomes `Deleting`. On failure `N` stays `InProgress`: the object may exist and be
//!    the archive's end; its key is not deleted before the grace for late requests passed.
//! 4. GC (`gc.rs`) deletes superseded versions whose key no request can still write, and drops
//!    them from the control file only once the delete succeeded.
//! 5. When the segment's full object is recorded and `backup_lsn` passes it (`full.rs`,
//!    `advance_backup`), every partial of that timeline and segment becomes `Deleting`.
//!
//! Invariants:
//! - Every partial that may exist remotely is listed in the control file (step 2 before the PUT,
//!   step 4 removes the entry only after a delete no late request can undo; an audit lists
//!   again whatever shows up anyway).
//! - The best version of a segment is deleted only once something above it is `Uploaded` or the
//!   full segment is recorded: the archive's end never moves back, across restarts too.
//! - A partial of another segment, the final partial of an ended timeline and the last partial
//!   before a gap are the only copies of their WAL and stay.
//! - A timeline's partial goes up only after its history file (`history.rs`).
//! - Every request for an upload is answered exactly once: with the new object's name, with the
//!   newest existing one when nothing needed uploading, or with the error.
//! - The newest `Uploaded` partial (highest term, then commit LSN) is what `remote_lsn` and
//!   `newest_partial` report.

use std::time::{Duration, Instant};

use anyhow::Result;
use control_file::names::PartialName;
use control_file::{Lsn, ObjectStatus, PartialObject};
use tokio::sync::oneshot;

use super::audit::LATE_REQUEST_GRACE;
use super::bookkeeping::{plan_next_piece, record_intent, record_uploaded};
use super::history::history_uploaded;
use super::{Manager, TaskDone};

/// The partial upload and who waits for it.
#[derive(Default)]
pub(super) struct PartialUploads {
    /// The version being uploaded (steps 2-3): set by `start_partial`, cleared by
    /// `finish_partial`; GC leaves its `InProgress` entry alone.
    pub(super) in_flight: Option<PartialName>,
    /// Requests for an upload (follower and admin API): pushed by the request handlers, answered
    /// by `finish_partial`, or by `answer_idle_partial_waiters` when nothing was started.
    pub(super) waiters: Vec<oneshot::Sender<Result<Option<String>>>>,
    /// The follower asked for an upload: set by `handle_request`, taken by the task loop, which
    /// then starts one.
    pub(super) kick: bool,
    /// The end of the WAL the last started upload covers: set by `start_partial`.
    pub(super) covered: Lsn,
    /// When the acknowledged WAL first went past `covered` (or past the start of a new segment):
    /// set by `note_commit_progress`, cleared when an upload covering it starts.
    pub(super) pending_since: Option<Instant>,
    /// Where and when the acknowledged WAL entered the segment being written, for the estimate of
    /// when that segment completes: set by `note_commit_progress`.
    pub(super) segment_entered: Option<(u64, Lsn, Instant)>,
}

/// An upload is due this much (at most a fifth of the interval) before the interval is up, so
/// that with the sampling period and the PUT itself the archive trails the newest commit by
/// about the interval.
const DUE_EARLY: Duration = Duration::from_millis(100);
/// A segment predicted to complete within this fraction of the interval gets no partial upload
/// (its full upload covers the same bytes), unless its oldest pending byte is older than
/// `interval * MAX_DEFER` already.
const COMPLETES_SOON: f64 = 0.3;
const MAX_DEFER: f64 = 1.2;

impl Manager {
    /// Steps 1-2 of the partial protocol: choose the name, persist the intent, start the PUT.
    pub(super) async fn start_partial(&mut self) {
        // Not from the recorded (lagging) LSNs of a previous process, and not before the
        // archive's end is known (`audit.rs`): a version below it must never be uploaded.
        if self.partial.in_flight.is_some() || !self.partial_uploads_ready() {
            return;
        }
        let Ok(st) = self.state() else { return };
        let seg_size = st.wal_segment_size;
        let commit = self.progress.commit_lsn.min(self.progress.flush_lsn);
        // At a segment boundary there is nothing partial: the full segment covers it.
        if commit == Lsn::INVALID || commit.is_segment_start(seg_size) {
            return;
        }
        let segno = commit.segment_number(seg_size);
        if !history_uploaded(st, st.timeline) {
            return;
        }
        let base = PartialName {
            timeline: st.timeline,
            segno,
            commit_lsn: commit,
            term: st.term_at(Lsn(commit.0 - 1)),
            sk_id: self.wiring.sk_id,
            start_lsn: Lsn::from_segment(segno, seg_size),
        };
        let Some((name, level)) = plan_next_piece(st, &base) else {
            return;
        };
        let Some(o) = self.offloader.clone() else {
            return;
        };
        let (data, crc) = match o.read_piece(&name).await {
            Ok(x) => x,
            Err(e) => {
                self.note_failure("reading the partial segment", &e);
                return;
            }
        };
        let entry = PartialObject {
            name: name.clone(),
            status: ObjectStatus::InProgress,
            size: data.len() as u64,
            crc32c: crc,
            level,
        };
        if let Err(e) = self.update(Box::new(move |s| record_intent(s, entry))) {
            self.note_failure("recording a partial upload", &e);
            return;
        }
        fail::fail_point!("partial-after-intent", |_| crate::failpoint::crash(
            "partial-after-intent"
        ));
        if cfg!(feature = "testing") && level > 0 {
            fail::fail_point!("merge-after-intent", |_| crate::failpoint::crash(
                "merge-after-intent"
            ));
        }
        self.partial.in_flight = Some(name.clone());
        self.partial.covered = commit;
        self.partial.pending_since = None;
        self.ledger.started(&name);
        let cancel = self.storage_cancel.clone();
        self.tasks.spawn(async move {
            let result = o.upload_partial(&name, data, &cancel).await;
            TaskDone::Partial { name, result }
        });
    }

    /// Step 3 of the partial protocol: the new version is Uploaded, every lower one Deleting.
    pub(super) fn finish_partial(&mut self, name: PartialName, result: Result<u64>) {
        self.partial.in_flight = None;
        // A failed PUT may still land (an attempt the client gave up on): its key is not
        // deleted before the grace has passed.
        let until = Instant::now() + LATE_REQUEST_GRACE;
        self.ledger.ended(&name, result.is_ok(), until);
        let seg = self.state().map(|s| s.wal_segment_size).unwrap_or(0);
        let sent = match result {
            Ok(sent) => sent,
            Err(e) => {
                let msg = format!("{e:#}");
                self.note_failure("partial upload", &e);
                for w in self.partial.waiters.drain(..) {
                    let _ = w.send(Err(anyhow::anyhow!("{msg}")));
                }
                // The InProgress entry stays listed: the object may exist and be the archive's
                // end. It is retried under the same name, or superseded by the next version; the
                // WAL it was to cover is pending again.
                self.partial.covered = name.start_lsn;
                self.partial.pending_since.get_or_insert(Instant::now());
                return;
            }
        };
        fail::fail_point!("partial-after-put", |_| crate::failpoint::crash(
            "partial-after-put"
        ));
        // A merge (a piece replacing a run of tail pieces) has its own crash points, since the
        // pieces it replaces become superseded by it.
        let merge = cfg!(feature = "testing") && self.is_merge(&name);
        if merge {
            fail::fail_point!("merge-after-put", |_| crate::failpoint::crash(
                "merge-after-put"
            ));
        }
        self.note_success();
        let done = name.clone();
        let r = self.update(Box::new(move |s| record_uploaded(s, &done)));
        match r {
            Ok(()) => {
                fail::fail_point!("partial-after-uploaded", |_| crate::failpoint::crash(
                    "partial-after-uploaded"
                ));
                if merge {
                    fail::fail_point!("merge-after-uploaded", |_| crate::failpoint::crash(
                        "merge-after-uploaded"
                    ));
                }
                self.io.offload_tx.send_modify(|o| {
                    o.partial_uploaded += 1;
                    o.bytes_uploaded += sent;
                });
                // Superseded while in flight (the full segment was recorded): the answer is the
                // newest version that stays.
                let stays = self.state().is_ok_and(|s| {
                    s.remote
                        .partials
                        .iter()
                        .any(|p| p.name == name && p.status == ObjectStatus::Uploaded)
                });
                let answer = if stays {
                    Some(version_file_name(&name, seg))
                } else {
                    self.newest_uploaded_partial()
                };
                for w in self.partial.waiters.drain(..) {
                    let _ = w.send(Ok(answer.clone()));
                }
                self.gc.wanted = true;
            }
            Err(e) => {
                self.note_failure("recording a partial upload", &e);
                for w in self.partial.waiters.drain(..) {
                    let _ = w.send(Err(anyhow::anyhow!("{e:#}")));
                }
            }
        }
    }

    /// Whether `name` is listed as a merge: a piece above level 0, which replaced a run of tail
    /// pieces (for the merge crash points).
    fn is_merge(&self, name: &PartialName) -> bool {
        self.state().is_ok_and(|s| {
            s.remote
                .partials
                .iter()
                .any(|p| p.name == *name && p.level > 0)
        })
    }

    /// Step 0: the follower published its checked local end and the startup audit is done.
    pub(super) fn partial_uploads_ready(&self) -> bool {
        self.progress.live && self.audit.gate.is_none()
    }

    /// Waiters for a partial upload when none is running and uploads may start: nothing needed
    /// uploading, so the answer is the newest existing one. Before step 0 they wait (the task
    /// loop starts their upload once it is ready; a failed audit answers them with its error).
    pub(super) fn answer_idle_partial_waiters(&mut self) {
        if self.partial.in_flight.is_none()
            && !self.partial.waiters.is_empty()
            && self.partial_uploads_ready()
        {
            let newest = self.newest_uploaded_partial();
            for w in self.partial.waiters.drain(..) {
                let _ = w.send(Ok(newest.clone()));
            }
        }
    }

    /// The newest uploaded partial of the history being followed (highest term, then LSN).
    pub(super) fn newest_uploaded_partial_entry(&self) -> Option<&PartialObject> {
        self.control.as_ref().and_then(|c| {
            c.state()
                .remote
                .partials
                .iter()
                .filter(|p| p.status == ObjectStatus::Uploaded)
                .max_by_key(|p| (p.name.term, p.name.commit_lsn))
        })
    }

    /// The version name (`…skID.partial`) of [`Manager::newest_uploaded_partial_entry`].
    pub(super) fn newest_uploaded_partial(&self) -> Option<String> {
        let seg = self.state().ok()?.wal_segment_size;
        self.newest_uploaded_partial_entry()
            .map(|p| version_file_name(&p.name, seg))
    }

    /// Takes in a new acknowledged end (from `on_progress`): WAL past what uploads cover becomes
    /// pending, and entering a new segment restarts the completion estimate.
    pub(super) fn note_commit_progress(&mut self, commit: Lsn, seg_size: u32, now: Instant) {
        if commit == Lsn::INVALID || seg_size == 0 {
            return;
        }
        let segno = commit.segment_number(seg_size);
        let seg_start = Lsn::from_segment(segno, seg_size);
        let p = &mut self.partial;
        if p.segment_entered.is_none_or(|(s, _, _)| s != segno) {
            p.segment_entered = Some((segno, commit, now));
            p.pending_since = None;
        }
        let covered = if p.covered >= seg_start {
            p.covered
        } else {
            seg_start
        };
        if commit > covered && p.pending_since.is_none() {
            p.pending_since = Some(now);
        }
    }

    /// Whether a partial upload is due now (see the module doc, "When").
    pub(super) fn partial_due(&self, now: Instant) -> bool {
        let Some(since) = self.partial.pending_since else {
            return false;
        };
        if self.partial.in_flight.is_some() || self.retry.at.is_some_and(|t| t > now) {
            return false;
        }
        let interval = self.wiring.settings.partial_interval;
        let age = now.saturating_duration_since(since);
        if age + DUE_EARLY.min(interval / 5) < interval {
            return false;
        }
        if age.as_secs_f64() >= interval.as_secs_f64() * MAX_DEFER {
            return true;
        }
        !self.segment_completes_soon(now, interval)
    }

    /// The segment being written will be complete within `COMPLETES_SOON` of the interval, at
    /// the rate the acknowledged WAL has been entering it.
    fn segment_completes_soon(&self, now: Instant, interval: Duration) -> bool {
        let (Some((segno, entered_at_lsn, entered)), Ok(st)) =
            (self.partial.segment_entered, self.state())
        else {
            return false;
        };
        let commit = self.progress.commit_lsn;
        let elapsed = now.saturating_duration_since(entered).as_secs_f64();
        let written = commit.0.saturating_sub(entered_at_lsn.0) as f64;
        if elapsed <= 0.0 || written <= 0.0 {
            return false;
        }
        let end = Lsn::from_segment(segno + 1, st.wal_segment_size);
        let remaining = end.0.saturating_sub(commit.0) as f64;
        remaining / (written / elapsed) <= interval.as_secs_f64() * COMPLETES_SOON
    }
}

/// The name every listing shows for the version a piece ends: `SEGMENT_COMMITLSN_TERM_skID.partial`.
pub(super) fn version_file_name(piece: &PartialName, seg_size: u32) -> String {
    piece.as_version(seg_size).to_file_name(seg_size)
}
