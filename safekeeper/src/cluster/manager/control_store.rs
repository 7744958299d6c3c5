//! The in-memory copy of one cluster's control file and the rule for writing it back.
//!
//! Owns: the path and the last state known to be on disk. The state is saved through
//! `control_file::save` (temp file, fsync, rename, directory fsync) and only when it differs from
//! what is on disk, so an idle cluster causes no writes.
//!
//! Invariant: `flush_lsn` is only ever recorded after the WAL store fsynced that far, and
//! `commit_lsn <= flush_lsn` (the control file rejects anything else on save).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use control_file::{ClusterState, Lsn};
use tracing::debug;

/// A cluster's control file: the state in memory and the path it is saved to.
pub(crate) struct ControlStore {
    path: PathBuf,
    state: ClusterState,
    on_disk: ClusterState,
}

impl ControlStore {
    /// Loads the control file at `path`, or `None` when there is none yet.
    pub(crate) fn load(path: &Path) -> Result<Option<ControlStore>> {
        if !path.exists() {
            return Ok(None);
        }
        let state = control_file::load(path)
            .with_context(|| format!("cannot use control file {}", path.display()))?;
        Ok(Some(ControlStore {
            path: path.to_path_buf(),
            on_disk: state.clone(),
            state,
        }))
    }

    /// Creates the control file for a cluster seen for the first time, durably, before any WAL
    /// of it is written.
    pub(crate) fn create(path: &Path, state: ClusterState) -> Result<ControlStore> {
        save(path, &state)?;
        Ok(ControlStore {
            path: path.to_path_buf(),
            on_disk: state.clone(),
            state,
        })
    }

    pub(crate) fn state(&self) -> &ClusterState {
        &self.state
    }

    /// Applies `change` and saves the result durably before returning.
    pub(crate) fn update(&mut self, change: impl FnOnce(&mut ClusterState)) -> Result<()> {
        let mut next = self.state.clone();
        change(&mut next);
        if next != self.on_disk {
            save(&self.path, &next)?;
            self.on_disk = next.clone();
        }
        self.state = next;
        Ok(())
    }

    /// Records the durable and the acknowledged WAL positions (never moving them backwards).
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

fn save(path: &Path, state: &ClusterState) -> Result<()> {
    let started = std::time::Instant::now();
    control_file::save(path, state)
        .with_context(|| format!("cannot save control file {}", path.display()))?;
    debug!(path = %path.display(), flush_lsn = %state.flush_lsn, commit_lsn = %state.commit_lsn,
           elapsed_us = started.elapsed().as_micros() as u64, "control file saved");
    Ok(())
}
