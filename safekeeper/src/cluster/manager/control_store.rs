//! The in-memory copy of one cluster's control file and the rule for writing it back.
//!
//! Owns: the path and the last state known to be on disk. The state is saved through
//! `control_file::save` (temp file, fsync, rename, directory fsync) and only when it differs from
//! what is on disk, so an idle cluster causes no writes.
//!
//! Invariant: `flush_lsn` is only ever recorded after the WAL store fsynced that far, and
//! `commit_lsn <= flush_lsn` (the control file rejects anything else on save).
//!
//! Space: a save that lets space be freed never depends on the space it would free. The cluster
//! directory holds a reserve file (`wal::space::Reserve`); such a save ([`lets_space_be_freed`]:
//! `backup_lsn` advanced, or `flush_lsn` entered a new segment so the completed one may be
//! uploaded) that fails for lack of space takes a slice of the reserve ([`SAVE_ROOM`], or twice
//! the file when that is larger) and tries once more, so the bookkeeping that leads to removing
//! uploaded segments succeeds on a full disk. Other saves (partial and GC bookkeeping, LSN moves
//! within a segment) never spend the reserve: they fail and are retried. The reserve is filled again at a later save
//! once the room for it and the next segment is free. A temp file left by a crashed save is
//! removed on load.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use control_file::{ClusterState, Lsn};
use tracing::{debug, warn};

#[cfg(test)]
use crate::wal::space::RESERVE_BYTES;
use crate::wal::space::{self, PREALLOC_SUFFIX, Reserve, Statvfs};

/// The least of the reserve one save takes on a full disk.
const SAVE_ROOM: u64 = 64 << 10;

/// A cluster's control file: the state in memory and the path it is saved to.
pub(crate) struct ControlStore {
    path: PathBuf,
    state: ClusterState,
    on_disk: ClusterState,
    /// The space reserve of the cluster directory (released by a save on a full disk).
    reserve: Reserve,
}

impl ControlStore {
    /// Loads the control file at `path`, or `None` when there is none yet.
    pub(crate) fn load(path: &Path) -> Result<Option<ControlStore>> {
        remove_stale_temp_files(path)?;
        if !path.exists() {
            return Ok(None);
        }
        let state = control_file::load(path)
            .with_context(|| format!("cannot use control file {}", path.display()))?;
        let store = ControlStore {
            path: path.to_path_buf(),
            on_disk: state.clone(),
            reserve: reserve_of(path),
            state,
        };
        store.restore_reserve();
        Ok(Some(store))
    }

    /// Creates the control file for a cluster seen for the first time, durably, before any WAL
    /// of it is written.
    pub(crate) fn create(path: &Path, state: ClusterState) -> Result<ControlStore> {
        let reserve = reserve_of(path);
        save(path, &state, None)?;
        let store = ControlStore {
            path: path.to_path_buf(),
            on_disk: state.clone(),
            state,
            reserve,
        };
        store.restore_reserve();
        Ok(store)
    }

    pub(crate) fn state(&self) -> &ClusterState {
        &self.state
    }

    /// Applies `change` and saves the result durably before returning.
    pub(crate) fn update(&mut self, change: impl FnOnce(&mut ClusterState)) -> Result<()> {
        let mut next = self.state.clone();
        change(&mut next);
        if next != self.on_disk {
            self.restore_reserve();
            let reserve = lets_space_be_freed(&self.on_disk, &next).then_some(&self.reserve);
            save(&self.path, &next, reserve)?;
            self.on_disk = next.clone();
        }
        self.state = next;
        Ok(())
    }

    /// Re-creates the reserve when it is missing and there is room for it beyond the next
    /// segment (so it never takes what ingest needs first). Best effort: a reserve that cannot
    /// be made yet is tried again at the next save.
    fn restore_reserve(&self) {
        if self.reserve.missing() == 0 {
            return;
        }
        if let Err(e) = self
            .reserve
            .ensure(&Statvfs, u64::from(self.state.wal_segment_size))
        {
            warn!(error = %format!("{e:#}"), "cannot create the space reserve");
        }
    }

    /// Records the durable and the acknowledged WAL positions (never moving them backwards).
    /// An error (a full disk first of all) leaves them unrecorded: callers that need them on disk
    /// (uploads, see `full.rs`) must not go on.
    pub(crate) fn record_lsns(&mut self, flush_lsn: Lsn, commit_lsn: Lsn) -> Result<()> {
        if flush_lsn <= self.state.flush_lsn && commit_lsn <= self.state.commit_lsn {
            return Ok(());
        }
        self.update(|s| {
            s.flush_lsn = s.flush_lsn.max(flush_lsn);
            s.commit_lsn = s.commit_lsn.max(commit_lsn.min(s.flush_lsn));
        })
    }
}

/// Whether saving `next` over `on_disk` is a step towards freeing local space, and so may spend
/// the reserve: `backup_lsn` advanced (segments below it may be removed), or `flush_lsn` entered
/// a new segment (a completed segment may only be uploaded once it is recorded, see `full.rs`).
/// Partial and GC bookkeeping and LSN moves within a segment free nothing locally.
fn lets_space_be_freed(on_disk: &ClusterState, next: &ClusterState) -> bool {
    let seg_size = next.wal_segment_size;
    next.backup_lsn > on_disk.backup_lsn
        || next.flush_lsn.segment_number(seg_size) > on_disk.flush_lsn.segment_number(seg_size)
}

/// The reserve file lives next to the control file, in the cluster directory.
fn reserve_of(path: &Path) -> Reserve {
    Reserve::new(path.parent().unwrap_or(Path::new(".")))
}

/// Removes the temp files of a save or a reserve creation that a crash interrupted.
fn remove_stale_temp_files(path: &Path) -> Result<()> {
    let reserve = reserve_of(path);
    for tmp in [
        control_file::temp_path(path),
        control_file::with_suffix(reserve.path(), PREALLOC_SUFFIX),
    ] {
        match std::fs::remove_file(&tmp) {
            Ok(()) => {
                tracing::info!(path = %tmp.display(), "removed the temp file of an unfinished write")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", tmp.display())),
        }
    }
    Ok(())
}

/// Saves durably; on a full disk, when `reserve` is given, takes a slice of it and tries once more.
fn save(path: &Path, state: &ClusterState, reserve: Option<&Reserve>) -> Result<()> {
    save_with(path, state, reserve, &control_file::save)
}

/// [`save`] through `write` (the real one is `control_file::save`; tests inject a full disk).
fn save_with(
    path: &Path,
    state: &ClusterState,
    reserve: Option<&Reserve>,
    write: &dyn Fn(&Path, &ClusterState) -> Result<(), control_file::ControlFileError>,
) -> Result<()> {
    let started = std::time::Instant::now();
    if let Err(e) = write(path, state).map_err(anyhow::Error::new) {
        let context = || format!("cannot save control file {}", path.display());
        let Some(reserve) = reserve.filter(|_| space::is_out_of_space(&e)) else {
            return Err(e.context(context()));
        };
        let room = std::fs::metadata(path)
            .map_or(0, |m| 2 * m.len())
            .max(SAVE_ROOM);
        if !reserve.release(room)? {
            return Err(e.context(format!("{}; the space reserve is used up", context())));
        }
        write(path, state).with_context(|| {
            format!("{} even with room taken from the space reserve", context())
        })?;
    }
    debug!(path = %path.display(), flush_lsn = %state.flush_lsn, commit_lsn = %state.commit_lsn,
           elapsed_us = started.elapsed().as_micros() as u64, "control file saved");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> ClusterState {
        ClusterState::new(1, "main", 42, 16 << 20, 15, 1, Lsn(16 << 20))
    }

    fn enospc(p: &Path) -> control_file::ControlFileError {
        control_file::ControlFileError::Io {
            path: p.to_path_buf(),
            op: "write temp file",
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        }
    }

    /// A full disk whose only room is what the reserve gives back: a write succeeds only after
    /// the reserve shrank. Saves that record uploads succeed, one slice each, until the reserve
    /// is used up; then the error says so and the last saved file stays valid.
    #[test]
    fn saves_that_record_uploads_take_slices_of_the_reserve_on_a_full_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("safekeeper.control");
        let reserve = reserve_of(&path);
        std::fs::write(reserve.path(), vec![0u8; RESERVE_BYTES as usize]).unwrap();
        let last = std::cell::Cell::new(reserve.held());
        let full_disk = |p: &Path, st: &ClusterState| {
            if reserve.held() >= last.get() {
                return Err(enospc(p));
            }
            last.set(reserve.held());
            control_file::save(p, st)
        };
        let mut st = state();
        let slices = RESERVE_BYTES / SAVE_ROOM;
        for i in 1..=slices {
            st.backup_lsn = Lsn((16 + i) << 24);
            save_with(&path, &st, Some(&reserve), &full_disk).unwrap();
            assert_eq!(reserve.held(), RESERVE_BYTES - i * SAVE_ROOM);
        }
        st.backup_lsn = Lsn(1 << 40);
        let err = save_with(&path, &st, Some(&reserve), &full_disk).unwrap_err();
        assert!(space::is_out_of_space(&err), "{err:#}");
        assert!(format!("{err:#}").contains("used up"), "{err:#}");
        assert_eq!(
            control_file::load(&path).unwrap().backup_lsn,
            Lsn((16 + slices) << 24)
        );
    }

    /// A save that records nothing but LSNs never spends the reserve.
    #[test]
    fn other_saves_and_other_errors_keep_the_reserve() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("safekeeper.control");
        let reserve = reserve_of(&path);
        std::fs::write(reserve.path(), vec![0u8; 4096]).unwrap();
        let full = |p: &Path, _: &ClusterState| Err(enospc(p));
        let err = save_with(&path, &state(), None, &full).unwrap_err();
        assert!(space::is_out_of_space(&err), "{err:#}");
        let broken = |p: &Path, _: &ClusterState| {
            Err(control_file::ControlFileError::Io {
                path: p.to_path_buf(),
                op: "fsync temp file",
                source: std::io::Error::from_raw_os_error(libc::EIO),
            })
        };
        assert!(save_with(&path, &state(), Some(&reserve), &broken).is_err());
        assert_eq!(reserve.held(), 4096);
    }

    /// Which saves may spend the reserve: those without which nothing can be freed.
    #[test]
    fn only_steps_towards_freeing_space_may_spend_the_reserve() {
        let old = state(); // flush_lsn = backup_lsn = start of segment 1
        let mut next = old.clone();
        next.flush_lsn = Lsn((16 << 20) + 8192);
        next.commit_lsn = next.flush_lsn;
        assert!(
            !lets_space_be_freed(&old, &next),
            "an LSN move within a segment"
        );
        next.remote.history.clear();
        next.term += 1;
        assert!(!lets_space_be_freed(&old, &next), "other bookkeeping");
        next.flush_lsn = Lsn(32 << 20);
        assert!(
            lets_space_be_freed(&old, &next),
            "a completed segment to record"
        );
        let mut uploaded = old.clone();
        uploaded.backup_lsn = Lsn(32 << 20);
        uploaded.flush_lsn = Lsn(32 << 20);
        assert!(lets_space_be_freed(&next, &uploaded), "backup_lsn advanced");
    }

    #[test]
    fn load_removes_temp_files_of_a_crashed_save_and_creates_the_reserve() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("safekeeper.control");
        control_file::save(&path, &state()).unwrap();
        let tmp = control_file::temp_path(&path);
        std::fs::write(&tmp, b"half a control file").unwrap();
        let reserve_tmp = control_file::with_suffix(reserve_of(&path).path(), PREALLOC_SUFFIX);
        std::fs::write(&reserve_tmp, b"half a reserve").unwrap();
        let store = ControlStore::load(&path).unwrap().unwrap();
        assert!(!tmp.exists() && !reserve_tmp.exists());
        assert_eq!(store.state().flush_lsn, state().flush_lsn);
        let len = std::fs::metadata(reserve_of(&path).path()).unwrap().len();
        assert_eq!(len, space::RESERVE_BYTES);
    }
}
