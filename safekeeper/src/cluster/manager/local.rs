//! Local WAL removal: deleting completed local segments once they are safely in remote storage.
//! Called by `full.rs` each time `backup_lsn` advanced; holds no state of its own.
//!
//! Invariant kept here: a local segment is removed only when it is below `backup_lsn`, of the
//! current timeline, and outside the newest `local_retention` bytes of completed segments; the
//! newest completed segment is kept (at least one is retained) — unless space is short: when
//! the data directory cannot take the next segment, uploaded segments inside the retention, the
//! newest included, are freed too, oldest first (`wal::space`), because a local copy of WAL that
//! is already in remote storage is worth less than acknowledging new WAL. Freeing before the
//! follower needs the room keeps the segment switch from stalling.

use std::sync::Arc;

use control_file::Lsn;
use tracing::{debug, warn};

use super::Manager;
use crate::wal::space::{self, SpacePolicy, Statvfs};
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
                // The follower freed it first (see `wal::space`).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(segment = %seg.path.display(), error = %e, "cannot remove local segment")
                }
            }
        }
        self.free_space_for_next_segment(backup_segno, seg_size);
    }

    /// When the data directory cannot take the next segment (plus the reserve, while it is
    /// released), frees uploaded segments below `backup_segno` beyond what the retention keeps.
    fn free_space_for_next_segment(&self, backup_segno: u64, seg_size: u64) {
        let Ok(st) = self.state() else { return };
        let backup_lsn = Lsn::from_segment(backup_segno, st.wal_segment_size);
        let policy = SpacePolicy {
            probe: Arc::new(Statvfs),
            backup_lsn: Arc::new(move || Some(backup_lsn)),
            reserve: Some(self.wiring.wal_dir.with_file_name(space::RESERVE_FILE_NAME)),
            spare: false,
        };
        let dir = &self.wiring.wal_dir;
        if let Err(e) = policy.make_room(dir, st.wal_segment_size, st.timeline, seg_size) {
            debug!(error = %format!("{e:#}"), "not enough uploaded local WAL to free for the next segment");
        }
    }
}
