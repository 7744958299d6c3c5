//! Timeline history uploads: finding local `.history` files the control file does not list as
//! uploaded, uploading them, and recording the result.
//!
//! Invariants kept here:
//! - A history object is listed `InProgress` in the control file before its PUT, and becomes
//!   `Uploaded` only after the PUT succeeded.
//! - A timeline's WAL goes remote only after its history file ([`history_uploaded`], checked
//!   before full and partial uploads): restore must be able to find the history of any WAL it
//!   finds.

use std::collections::BTreeSet;

use anyhow::Result;
use control_file::names::TimelineId;
use control_file::{ClusterState, HistoryObject, ObjectStatus};

use super::offloader::Uploaded;
use super::{Manager, TaskDone};

/// History files being uploaded, and whether to look for new ones.
pub(super) struct HistoryUploads {
    /// Timelines whose history upload runs now: added by `schedule_history_uploads`, removed by
    /// `finish_history`; GC leaves their `InProgress` entries alone.
    pub(super) in_flight: BTreeSet<TimelineId>,
    /// Look for local history files to upload: set at start, after a timeline change and after a
    /// failed history upload (they only appear at a timeline switch); taken by `schedule`.
    pub(super) scan: bool,
}

impl Manager {
    /// Uploads local `.history` files the control file does not list as uploaded.
    pub(super) fn schedule_history_uploads(&mut self) {
        let Ok(st) = self.state() else { return };
        let Ok(entries) = std::fs::read_dir(&self.wiring.wal_dir) else {
            self.history.scan = true;
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
            if !uploaded && !self.history.in_flight.contains(&timeline) {
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
                self.history.scan = true;
                self.note_failure("recording a history upload", &e);
                return;
            }
            let Some(o) = self.offloader.clone() else {
                return;
            };
            self.history.in_flight.insert(timeline);
            let cancel = self.storage_cancel.clone();
            self.tasks.spawn(async move {
                let result = o.upload_history(timeline, &cancel).await;
                TaskDone::History { timeline, result }
            });
        }
    }

    /// A history upload ended: record it `Uploaded`, or look again after the back-off.
    pub(super) fn finish_history(&mut self, timeline: TimelineId, result: Result<Uploaded>) {
        self.history.in_flight.remove(&timeline);
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
                self.history.scan = true;
                self.note_failure("history upload", &e);
            }
        }
    }
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
