//! The manager's units of work: starting uploads and GC, handling their completion, local WAL
//! removal, and the shutdown sequence. See the parent module for the invariants.

use std::collections::BTreeSet;

use anyhow::Result;
use control_file::names::TimelineId;
use control_file::names::{PartialName, history_file_name};
use control_file::{ClusterState, HistoryObject, Lsn, ObjectStatus, PartialObject};
use tokio::time::timeout;
use tracing::{debug, info, warn};

use super::{FINAL_UPLOAD_TIMEOUT, Manager, TaskDone};
use crate::wal::store::list_completed_segments;

impl Manager {
    /// Starts uploads of completed segments at or above `backup_lsn`, up to the parallelism.
    pub(super) fn schedule_full_uploads(&mut self) {
        let Ok(st) = self.state() else { return };
        let seg_size = st.wal_segment_size;
        let first = st.backup_lsn.segment_number(seg_size);
        // Segments strictly below the flush LSN's segment are complete and renamed locally.
        let end = self.flush_lsn.segment_number(seg_size);
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
                !self.full_done.contains(s) && !self.wal_dir.join(name).exists()
            })
            .collect();
        if !missing.is_empty() {
            warn!(
                first = missing[0],
                count = missing.len(),
                "segments in a gap: never uploaded"
            );
            self.full_missing.extend(missing);
            self.advance_backup(TimelineId::default());
            return;
        }
        let candidates: Vec<(TimelineId, u64)> = (first..end)
            .map(|s| (timeline_of_segment(st, s), s))
            .filter(|(tli, s)| {
                !self.full_in_flight.contains(s)
                    && !self.full_done.contains(s)
                    && !st.remote.contains_full_segment(*tli, *s)
                    && history_uploaded(st, *tli)
            })
            .take(
                self.settings
                    .upload_parallelism
                    .saturating_sub(self.full_in_flight.len()),
            )
            .collect();
        let Some(&(_, last)) = candidates.last() else {
            return;
        };
        // Make every object about to be created implied by the control file (see invariants).
        let needed = Lsn::from_segment(last + 1, seg_size).min(self.flush_lsn);
        if st.flush_lsn < needed {
            let (flush, commit) = (self.flush_lsn, self.commit_lsn);
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
            self.full_in_flight.insert(segno);
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

    /// Uploads local `.history` files the control file does not list as uploaded.
    pub(super) fn schedule_history_uploads(&mut self) {
        let Ok(st) = self.state() else { return };
        let Ok(entries) = std::fs::read_dir(&self.wal_dir) else {
            self.history_scan = true;
            return;
        };
        let mut wanted = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Ok(timeline) = control_file::names::parse_history_file_name(name) else {
                continue;
            };
            let uploaded = st
                .remote
                .history
                .iter()
                .any(|h| h.timeline == timeline && h.status == ObjectStatus::Uploaded);
            if !uploaded && !self.history_in_flight.contains(&timeline) {
                wanted.push((timeline, entry.metadata().map(|m| m.len()).unwrap_or(0)));
            }
        }
        for (timeline, size) in wanted {
            // Intent first: the object is listed before it can exist.
            let intent = self.update(Box::new(move |s| {
                s.remote.history.retain(|h| h.timeline != timeline);
                s.remote.history.push(HistoryObject {
                    timeline,
                    status: ObjectStatus::InProgress,
                    size,
                    crc32c: 0,
                });
            }));
            if let Err(e) = intent {
                self.history_scan = true;
                self.note_failure("recording a history upload", &e);
                return;
            }
            let Some(o) = self.offloader.clone() else {
                return;
            };
            self.history_in_flight.insert(timeline);
            let cancel = self.storage_cancel.clone();
            self.tasks.spawn(async move {
                let result = o.upload_history(timeline, &cancel).await;
                TaskDone::History { timeline, result }
            });
        }
    }

    /// Steps 1-2 of the partial protocol: choose the name, persist the intent, start the PUT.
    pub(super) async fn start_partial(&mut self) {
        if self.partial_in_flight.is_some() {
            return;
        }
        let Ok(st) = self.state() else { return };
        let seg_size = st.wal_segment_size;
        let commit = self.commit_lsn.min(self.flush_lsn);
        // At a segment boundary there is nothing partial: the full segment covers it.
        if commit == Lsn::INVALID || commit.is_segment_start(seg_size) {
            return;
        }
        let segno = commit.segment_number(seg_size);
        if st.remote.contains_full_segment(st.timeline, segno) || !history_uploaded(st, st.timeline)
        {
            return;
        }
        let name = PartialName {
            timeline: st.timeline,
            segno,
            commit_lsn: commit,
            term: st.term_at(Lsn(commit.0 - 1)),
            sk_id: self.sk_id,
        };
        let already = st
            .remote
            .partials
            .iter()
            .any(|p| p.name == name && p.status == ObjectStatus::Uploaded);
        if already {
            return;
        }
        let Some(o) = self.offloader.clone() else {
            return;
        };
        let (data, crc) = match o.read_partial(&name).await {
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
        };
        let intent = self.update(Box::new(move |s| {
            s.remote.partials.retain(|p| p.name != entry.name);
            s.remote.partials.push(entry);
        }));
        if let Err(e) = intent {
            self.note_failure("recording a partial upload", &e);
            return;
        }
        fail::fail_point!("partial-after-intent", |_| crate::failpoint::crash(
            "partial-after-intent"
        ));
        self.partial_in_flight = Some(name.clone());
        let cancel = self.storage_cancel.clone();
        self.tasks.spawn(async move {
            let result = o.upload_partial(&name, data, crc, &cancel).await;
            TaskDone::Partial { name, result }
        });
    }

    /// GC (step 4): deletes `Deleting` entries and `InProgress` ones with no upload in flight.
    pub(super) fn start_gc(&mut self) {
        self.gc_wanted = false;
        if self.gc_in_flight.is_some() {
            return;
        }
        let Ok(st) = self.state() else {
            for w in self.gc_waiters.drain(..) {
                let _ = w.send(Ok(Vec::new()));
            }
            return;
        };
        let seg = st.wal_segment_size;
        let uploaded: Vec<&PartialName> = st
            .remote
            .partials
            .iter()
            .filter(|p| p.status == ObjectStatus::Uploaded)
            .map(|p| &p.name)
            .collect();
        let mut names: Vec<String> = st
            .remote
            .partials
            .iter()
            .filter(|p| match p.status {
                ObjectStatus::Deleting => true,
                ObjectStatus::InProgress => self.partial_in_flight.as_ref() != Some(&p.name),
                ObjectStatus::Uploaded => false,
            })
            .filter(|p| !uploaded.contains(&&p.name))
            .map(|p| p.name.to_file_name(seg))
            .collect();
        names.extend(
            st.remote
                .history
                .iter()
                .filter(|h| {
                    h.status == ObjectStatus::Deleting
                        || (h.status == ObjectStatus::InProgress
                            && !self.history_in_flight.contains(&h.timeline))
                })
                .map(|h| history_file_name(h.timeline)),
        );
        if names.is_empty() {
            for w in self.gc_waiters.drain(..) {
                let _ = w.send(Ok(Vec::new()));
            }
            return;
        }
        let Some(o) = self.offloader.clone() else {
            return;
        };
        self.gc_in_flight = Some(names.clone());
        let cancel = self.storage_cancel.clone();
        self.tasks.spawn(async move {
            let result = o.delete(&names, &cancel).await;
            TaskDone::Gc { names, result }
        });
    }

    pub(super) fn on_task_done(&mut self, done: Result<TaskDone, tokio::task::JoinError>) {
        let done = match done {
            Ok(d) => d,
            Err(e) => {
                warn!(error = %e, "a background task panicked");
                return;
            }
        };
        match done {
            TaskDone::Full {
                timeline,
                segno,
                result,
            } => {
                self.full_in_flight.remove(&segno);
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
                        self.full_done.insert(segno);
                        self.advance_backup(timeline);
                    }
                    Err(e) => self.note_failure("full segment upload", &e),
                }
            }
            TaskDone::Partial { name, result } => self.finish_partial(name, result),
            TaskDone::History { timeline, result } => {
                self.history_in_flight.remove(&timeline);
                match result {
                    Ok(up) => {
                        self.note_success();
                        let r = self.update(Box::new(move |s| {
                            for h in s
                                .remote
                                .history
                                .iter_mut()
                                .filter(|h| h.timeline == timeline)
                            {
                                h.status = ObjectStatus::Uploaded;
                                h.size = up.bytes;
                                h.crc32c = up.crc32c;
                            }
                        }));
                        if let Err(e) = r {
                            self.note_failure("recording a history upload", &e);
                        }
                    }
                    Err(e) => {
                        self.history_scan = true;
                        self.note_failure("history upload", &e);
                    }
                }
            }
            TaskDone::Gc { names, result } => {
                self.gc_in_flight = None;
                match result {
                    Ok(()) => {
                        fail::fail_point!("gc-after-delete", |_| crate::failpoint::crash(
                            "gc-after-delete"
                        ));
                        let seg = self.state().map(|s| s.wal_segment_size).unwrap_or(0);
                        let gone: BTreeSet<String> = names.iter().cloned().collect();
                        let r = self.update(Box::new(move |s| {
                            s.remote
                                .partials
                                .retain(|p| !gone.contains(&p.name.to_file_name(seg)));
                            s.remote
                                .history
                                .retain(|h| !gone.contains(&history_file_name(h.timeline)));
                        }));
                        match r {
                            Ok(()) => {
                                let n = names.len() as u64;
                                self.io.offload_tx.send_modify(|o| o.gc_deleted += n);
                                for w in self.gc_waiters.drain(..) {
                                    let _ = w.send(Ok(names.clone()));
                                }
                            }
                            Err(e) => self.note_failure("recording GC", &e),
                        }
                    }
                    Err(e) => {
                        let msg = format!("{e:#}");
                        self.note_failure("GC", &e);
                        for w in self.gc_waiters.drain(..) {
                            let _ = w.send(Err(anyhow::anyhow!("{msg}")));
                        }
                        self.gc_wanted = true;
                    }
                }
            }
        }
        self.publish(self.control.as_ref().map(|c| c.state()));
    }

    /// Step 3 of the partial protocol: the new version is Uploaded, every older one Deleting.
    fn finish_partial(&mut self, name: PartialName, result: Result<()>) {
        self.partial_in_flight = None;
        let seg = self.state().map(|s| s.wal_segment_size).unwrap_or(0);
        match result {
            Ok(()) => {
                fail::fail_point!("partial-after-put", |_| crate::failpoint::crash(
                    "partial-after-put"
                ));
                self.note_success();
                let done = name.clone();
                // Only older versions of the same segment are superseded: a partial of another
                // segment stays until that segment's full object is up (step 5), and the final
                // partial of an ended timeline is the only copy of its tail, kept for good.
                let r = self.update(Box::new(move |s| {
                    for p in s.remote.partials.iter_mut() {
                        if p.name == done {
                            p.status = ObjectStatus::Uploaded;
                        } else if p.status == ObjectStatus::Uploaded
                            && p.name.timeline == done.timeline
                            && p.name.segno == done.segno
                        {
                            p.status = ObjectStatus::Deleting;
                        }
                    }
                }));
                let file_name = name.to_file_name(seg);
                match r {
                    Ok(()) => {
                        fail::fail_point!("partial-after-uploaded", |_| crate::failpoint::crash(
                            "partial-after-uploaded"
                        ));
                        self.io.offload_tx.send_modify(|o| o.partial_uploaded += 1);
                        for w in self.partial_waiters.drain(..) {
                            let _ = w.send(Ok(Some(file_name.clone())));
                        }
                        self.gc_wanted = true;
                    }
                    Err(e) => {
                        self.note_failure("recording a partial upload", &e);
                        for w in self.partial_waiters.drain(..) {
                            let _ = w.send(Err(anyhow::anyhow!("{e:#}")));
                        }
                    }
                }
            }
            Err(e) => {
                let msg = format!("{e:#}");
                self.note_failure("partial upload", &e);
                for w in self.partial_waiters.drain(..) {
                    let _ = w.send(Err(anyhow::anyhow!("{msg}")));
                }
                // The InProgress entry stays listed; GC removes the object if it was created.
                self.gc_wanted = true;
            }
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
            if self.full_done.remove(&next) {
                uploaded.push(next);
            } else if !self.full_missing.remove(&next) {
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
            let superseded: Vec<bool> = s
                .remote
                .partials
                .iter()
                .map(|p| {
                    s.remote
                        .contains_full_segment(p.name.timeline, p.name.segno)
                })
                .collect();
            for (p, gone) in s.remote.partials.iter_mut().zip(superseded) {
                if gone {
                    p.status = ObjectStatus::Deleting;
                }
            }
        }));
        match r {
            Ok(()) => {
                debug!(backup_lsn = %Lsn::from_segment(next, seg_size), "backup LSN advanced");
                self.gc_wanted = true;
                self.remove_local_wal(next);
            }
            Err(e) => {
                // Not recorded: upload them again later (idempotent).
                self.full_done.extend(uploaded);
                self.note_failure("recording uploaded segments", &e);
            }
        }
    }

    /// Removes completed local segments below `backup_segno` beyond the newest retention bytes.
    fn remove_local_wal(&mut self, backup_segno: u64) {
        let Ok(st) = self.state() else { return };
        let seg_size = u64::from(st.wal_segment_size);
        let timeline = st.timeline;
        let segments = match list_completed_segments(&self.wal_dir, st.wal_segment_size) {
            Ok(mut s) => {
                s.retain(|seg| seg.timeline == timeline);
                s
            }
            Err(e) => {
                warn!(error = %format!("{e:#}"), "cannot list local WAL");
                return;
            }
        };
        let keep_newest = (self.settings.local_retention / seg_size).max(1) as usize;
        let removable = segments.len().saturating_sub(keep_newest);
        for seg in segments.iter().take(removable) {
            if seg.segno >= backup_segno {
                break;
            }
            match std::fs::remove_file(&seg.path) {
                Ok(()) => debug!(segment = %seg.path.display(), "removed local segment (uploaded)"),
                Err(e) => {
                    warn!(segment = %seg.path.display(), error = %e, "cannot remove local segment")
                }
            }
        }
    }

    /// After the follower stopped: record its final LSNs, upload the final partial (bounded),
    /// stop everything else.
    pub(super) async fn shutdown(mut self) -> Result<()> {
        self.on_progress();
        self.persist_lsns();
        let final_upload = async {
            // Let an upload already running finish, then make sure the newest one is up.
            while let Some(done) = self.tasks.join_next().await {
                self.on_task_done(done);
            }
            self.start_partial().await;
            while let Some(done) = self.tasks.join_next().await {
                self.on_task_done(done);
            }
            // Leave no superseded version behind on a clean stop.
            if self.gc_wanted {
                self.start_gc();
                while let Some(done) = self.tasks.join_next().await {
                    self.on_task_done(done);
                }
            }
        };
        if timeout(FINAL_UPLOAD_TIMEOUT, final_upload).await.is_err() {
            warn!("final uploads did not finish in time; the next start resumes them");
        }
        self.storage_cancel.cancel();
        while let Some(done) = self.tasks.join_next().await {
            self.on_task_done(done);
        }
        self.persist_lsns();
        info!(newest_partial = ?self.newest_uploaded_partial(), "manager stopped");
        Ok(())
    }
}

/// The timeline whose file holds segment `segno` of the history this safekeeper follows: the
/// timeline of the last term that starts before the segment's end (a timeline that starts
/// inside a segment owns that segment's file).
pub(super) fn timeline_of_segment(st: &ClusterState, segno: u64) -> TimelineId {
    let end = Lsn::from_segment(segno + 1, st.wal_segment_size);
    st.term_history
        .iter()
        .rev()
        .find(|t| t.start_lsn < end)
        .map(|t| t.timeline)
        .unwrap_or(st.timeline)
}

/// A timeline's WAL goes remote only after its history file: restore must be able to find the
/// history of any WAL it finds. The first timeline this safekeeper followed needs none.
pub(super) fn history_uploaded(st: &ClusterState, timeline: TimelineId) -> bool {
    let first = st.term_history.first().map(|t| t.timeline);
    first == Some(timeline)
        || timeline == 1
        || st
            .remote
            .history
            .iter()
            .any(|h| h.timeline == timeline && h.status == ObjectStatus::Uploaded)
}
