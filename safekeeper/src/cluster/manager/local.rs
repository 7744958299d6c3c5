//! Local WAL removal: deleting completed local segments once they are safely in remote storage.
//! Called by `full.rs` each time `backup_lsn` advanced; holds no state of its own.
//!
//! Invariant kept here: a local segment is removed only when it is below `backup_lsn`, of the
//! current timeline, and outside the newest `local_retention` bytes of completed segments; the
//! newest completed segment is always kept (at least one is retained).

use tracing::{debug, warn};

use super::Manager;
use crate::wal::store::list_completed_segments;

impl Manager {
    /// Removes completed local segments below `backup_segno` beyond the newest retention bytes.
    pub(super) fn remove_local_wal(&mut self, backup_segno: u64) {
        let Ok(st) = self.state() else { return };
        let seg_size = u64::from(st.wal_segment_size);
        let timeline = st.timeline;
        let segments = match list_completed_segments(&self.wiring.wal_dir, st.wal_segment_size) {
            Ok(mut s) => {
                s.retain(|seg| seg.timeline == timeline);
                s
            }
            Err(e) => {
                warn!(error = %format!("{e:#}"), "cannot list local WAL");
                return;
            }
        };
        let keep_newest = (self.wiring.settings.local_retention / seg_size).max(1) as usize;
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
}
