//! Full-segment uploads: which completed segments to upload and when, what their completion
//! records, and how `backup_lsn` advances over them (step 5 of the partial protocol, see
//! `partial.rs`, happens here: a full segment supersedes that segment's partials).
//!
//! Invariants kept here:
//! - Before a full segment is uploaded, the recorded `flush_lsn` is advanced past it, so every
//!   full segment that may exist remotely is in the recorded ranges or in
//!   `[backup_lsn, flush_lsn)` of the current timeline.
//! - `backup_lsn` only advances over segments whose upload finished, in order, or that lie in a
//!   gap below the current term's start and exist nowhere (`missing`).
//! - A partial is superseded only by the full segment of its own timeline and number, never by
//!   a gap (after which its partial is the only copy of that WAL).
//! - A timeline's segments are uploaded only once its history file is (`history.rs`).

use std::collections::BTreeSet;

use anyhow::Result;
use control_file::names::TimelineId;
use control_file::{ClusterState, Lsn};
use tracing::{debug, warn};

use super::bookkeeping::record_full_segments;
use super::history::history_uploaded;
use super::offloader::Uploaded;
use super::{Manager, TaskDone};

/// Full segments between `backup_lsn` and the flush LSN's segment, by segment number.
#[derive(Default)]
pub(super) struct FullUploads {
    /// Uploads running now: added by `schedule_full_uploads`, removed by `finish_full`.
    pub(super) in_flight: BTreeSet<u64>,
    /// Uploaded but not yet under `backup_lsn` (an earlier one is still running): added by
    /// `finish_full`, taken by `advance_backup`, cleared at a timeline switch.
    pub(super) done: BTreeSet<u64>,
    /// Segments below the current term's start that exist nowhere (a gap the upstream could not
    /// fill): added by `schedule_full_uploads`, passed by `advance_backup` without an object.
    pub(super) missing: BTreeSet<u64>,
}

impl Manager {
    /// Starts uploads of completed segments at or above `backup_lsn`, up to the parallelism.
    pub(super) fn schedule_full_uploads(&mut self) {
        let Ok(st) = self.state() else { return };
        let seg_size = st.wal_segment_size;
        let first = st.backup_lsn.segment_number(seg_size);
        // Segments strictly below the flush LSN's segment are complete and renamed locally.
        let end = self.progress.flush_lsn.segment_number(seg_size);
        // Below the current term's start, a segment with no local file lies in a gap the
        // upstream could not fill (see `cluster/switch.rs`): nothing to upload, ever.
        let floor = st
            .term_history
            .last()
            .map(|t| t.start_lsn.segment_number(seg_size))
            .unwrap_or(0);
        let missing: Vec<u64> = (first..end.min(floor))
            .filter(|s| {
                let name = control_file::names::segment_file_name(
                    timeline_of_segment(st, *s),
                    *s,
                    seg_size,
                );
                !self.full.done.contains(s) && !self.wiring.wal_dir.join(name).exists()
            })
            .collect();
        if !missing.is_empty() {
            warn!(
                first = missing[0],
                count = missing.len(),
                "segments in a gap: never uploaded"
            );
            self.full.missing.extend(missing);
            self.advance_backup(TimelineId::default());
            return;
        }
        let candidates: Vec<(TimelineId, u64)> = (first..end)
            .map(|s| (timeline_of_segment(st, s), s))
            .filter(|(tli, s)| {
                !self.full.in_flight.contains(s)
                    && !self.full.done.contains(s)
                    && !st.remote.contains_full_segment(*tli, *s)
                    && history_uploaded(st, *tli)
            })
            .take(
                self.wiring
                    .settings
                    .upload_parallelism
                    .saturating_sub(self.full.in_flight.len()),
            )
            .collect();
        let Some(&(_, last)) = candidates.last() else {
            return;
        };
        // Make every object about to be created implied by the control file (see invariants).
        let needed = Lsn::from_segment(last + 1, seg_size).min(self.progress.flush_lsn);
        if st.flush_lsn < needed {
            let (flush, commit) = (self.progress.flush_lsn, self.progress.commit_lsn);
            if let Some(c) = self.control.as_mut() {
                if let Err(e) = c.record_lsns(flush, commit) {
                    self.note_failure("recording the flush LSN before uploads", &e);
                    return;
                }
            }
        }
        let Some(offloader) = self.offloader.clone() else {
            return;
        };
        for (timeline, segno) in candidates {
            self.full.in_flight.insert(segno);
            let (o, cancel) = (offloader.clone(), self.storage_cancel.clone());
            self.tasks.spawn(async move {
                let result = o.upload_full_segment(timeline, segno, &cancel).await;
                TaskDone::Full {
                    timeline,
                    segno,
                    result,
                }
            });
        }
        self.publish(self.control.as_ref().map(|c| c.state()));
    }

    /// A full upload ended: on success count it and advance `backup_lsn` as far as possible.
    pub(super) fn finish_full(
        &mut self,
        timeline: TimelineId,
        segno: u64,
        result: Result<Uploaded>,
    ) {
        self.full.in_flight.remove(&segno);
        match result {
            Ok(up) => {
                fail::fail_point!("full-after-put", |_| crate::failpoint::crash(
                    "full-after-put"
                ));
                self.note_success();
                self.io.offload_tx.send_modify(|o| {
                    o.full_uploaded += u64::from(!up.skipped);
                    o.bytes_uploaded += if up.skipped { 0 } else { up.bytes };
                });
                self.full.done.insert(segno);
                self.advance_backup(timeline);
            }
            Err(e) => self.note_failure("full segment upload", &e),
        }
    }

    /// Advances `backup_lsn` over the uploaded segments that directly follow it (step 5: the
    /// partials of those segments become `Deleting`), then removes local WAL past retention.
    fn advance_backup(&mut self, _timeline: TimelineId) {
        let Ok(st) = self.state() else { return };
        let seg_size = st.wal_segment_size;
        let start = st.backup_lsn.segment_number(seg_size);
        let mut next = start;
        let mut uploaded = Vec::new();
        loop {
            if self.full.done.remove(&next) {
                uploaded.push(next);
            } else if !self.full.missing.remove(&next) {
                break;
            }
            next += 1;
        }
        if next == start {
            return;
        }
        let recorded = uploaded.clone();
        let r = self.update(Box::new(move |s| {
            for segno in recorded {
                let timeline = timeline_of_segment(s, segno);
                s.remote.add_full_segment(timeline, segno);
            }
            s.backup_lsn = s.backup_lsn.max(Lsn::from_segment(next, seg_size));
            // Step 5: a partial is superseded only by the full segment of its own timeline and
            // number (not by a gap, after which its partial is the only copy of that WAL).
            record_full_segments(s);
        }));
        match r {
            Ok(()) => {
                debug!(backup_lsn = %Lsn::from_segment(next, seg_size), "backup LSN advanced");
                self.gc.wanted = true;
                self.remove_local_wal(next);
            }
            Err(e) => {
                // Not recorded: upload them again later (idempotent).
                self.full.done.extend(uploaded);
                self.note_failure("recording uploaded segments", &e);
            }
        }
    }
}

/// The timeline whose file holds segment `segno` of the history this safekeeper follows: the
/// timeline of the last term that starts before the segment's end (a timeline that starts
/// inside a segment owns that segment's file).
fn timeline_of_segment(st: &ClusterState, segno: u64) -> TimelineId {
    let end = Lsn::from_segment(segno + 1, st.wal_segment_size);
    st.term_history
        .iter()
        .rev()
        .find(|t| t.start_lsn < end)
        .map(|t| t.timeline)
        .unwrap_or(st.timeline)
}
